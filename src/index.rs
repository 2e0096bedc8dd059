//! Stage 3, the symbol index: symbol → latest quote, `seq`, status and subscribers; applies each
//! tick and fans it out.
//!
//! Concurrency: one ingest task applies feed events in order; connection tasks on the actix workers
//! read quotes and change subscriptions. Each symbol has two std mutexes, never held across an
//! `.await` and never nested with a connection's lock the other way round:
//! - `state` (quote, seq, the shared update bytes) is held for a copy in or out, a few hundred ns;
//! - `subscribers` is held while the ingest task marks each subscriber's slot dirty, so a reader of
//!   `state` never waits behind a 1,000-connection fan-out.
//!
//! Backpressure, index → connection: the fan-out never awaits and never queues per tick. It only
//! marks the connection's slot for the symbol dirty (`ConnPending::mark`, at most one entry per
//! subscribed symbol) and wakes its task; the task later reads whatever is latest. That is the
//! conflation, and it is why a slow client costs the ingest task no more than a fast one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytestring::ByteString;
use dashmap::DashMap;

use crate::conflate::{lock, ConnPending, Published};
use crate::delta::encode_update;
use crate::feed::FeedEvent;
use crate::metrics::{FeedCounters, Metrics};
use crate::model::{FeedId, Quote, Status, Symbol, Tick};
use crate::normalize::normalize;
use crate::protocol::one_message_frame;

pub struct Index {
    symbols: DashMap<Symbol, Arc<SymbolEntry>>,
    feeds: Vec<FeedCounters>,
}

pub struct SymbolEntry {
    pub symbol: Symbol,
    state: Mutex<SymbolState>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Read without the lock to decide whether a tick's shared update is worth encoding.
    subscriber_count: AtomicUsize,
}

#[derive(Default)]
struct SymbolState {
    seq: u64,
    quote: Quote,
    /// When the latest tick entered the index: the start of `quotegw_tick_to_write_seconds`.
    tick_in: Option<Instant>,
    /// The latest tick's update as a one-message frame, encoded once for every in-sync subscriber.
    shared: Option<ByteString>,
}

struct Subscriber {
    conn: Arc<ConnPending>,
    slot: u32,
}

impl Index {
    /// `feeds` are the feed names in `FeedId` order.
    pub fn new(feeds: &[String], metrics: Arc<Metrics>) -> Index {
        Index {
            symbols: DashMap::new(),
            feeds: feeds.iter().map(|f| metrics.feed_counters(f)).collect(),
        }
    }

    /// Declares a symbol as served, before any tick for it.
    pub fn register(&self, symbol: Symbol) -> Arc<SymbolEntry> {
        self.symbols
            .entry(symbol.clone())
            .or_insert_with(|| {
                Arc::new(SymbolEntry {
                    symbol,
                    state: Mutex::new(SymbolState::default()),
                    subscribers: Mutex::new(Vec::new()),
                    subscriber_count: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    pub fn lookup(&self, symbol: &str) -> Option<Arc<SymbolEntry>> {
        self.symbols.get(symbol).map(|e| e.value().clone())
    }

    /// Every served symbol, sorted (the `symbols` op).
    pub fn symbols_sorted(&self) -> Vec<Symbol> {
        let mut v: Vec<Symbol> = self.symbols.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Applies one feed event: the ingest task's whole job.
    pub fn apply(&self, event: FeedEvent) {
        match event {
            FeedEvent::Tick(tick) => self.apply_tick(tick),
            FeedEvent::Status {
                feed: _,
                symbol,
                status,
            } => self.set_status(&symbol, status),
        }
    }

    fn counters(&self, feed: FeedId) -> Option<&FeedCounters> {
        self.feeds.get(usize::from(feed))
    }

    fn apply_tick(&self, tick: Tick) {
        let counters = self.counters(tick.feed);
        if let Some(c) = counters {
            c.received.inc();
        }
        let tick = match normalize(tick) {
            Ok(t) => t,
            Err(reason) => {
                if let Some(c) = counters {
                    c.rejected(reason).inc();
                }
                return;
            }
        };
        // A symbol no feed declared (a replayed file, an upstream listing a new ticker) becomes
        // served on its first valid tick.
        let entry = match self.lookup(&tick.symbol) {
            Some(e) => e,
            None => self.register(tick.symbol.clone()),
        };
        entry.apply(&tick);
    }

    fn set_status(&self, symbol: &str, status: Status) {
        if let Some(entry) = self.lookup(symbol) {
            let changed = {
                let mut st = lock(&entry.state);
                let changed = st.quote.status != status;
                st.quote.status = status;
                changed
            };
            if changed {
                entry.fan_out();
            }
        }
    }
}

impl SymbolEntry {
    fn apply(&self, tick: &Tick) {
        let in_sync_subscribers = self.subscriber_count.load(Ordering::Relaxed) > 0;
        {
            let mut st = lock(&self.state);
            let prev = st.quote;
            let q = &mut st.quote;
            q.ts = tick.ts;
            // normalize() rejected negative sizes, so the casts below cannot wrap.
            q.bid = tick.bid.or(q.bid);
            q.ask = tick.ask.or(q.ask);
            q.last = tick.last.or(q.last);
            q.bid_size = tick.bid_size.map(|n| n as u64).or(q.bid_size);
            q.ask_size = tick.ask_size.map(|n| n as u64).or(q.ask_size);
            q.last_size = tick.last_size.map(|n| n as u64).or(q.last_size);
            q.volume = tick.volume.map(|n| n as u64).or(q.volume);
            q.status = tick.status.unwrap_or(q.status);
            let now = st.quote;
            st.seq += 1;
            st.tick_in = Some(Instant::now());
            // The first tick has no update (subscribers get a snapshot), and with no subscriber
            // nobody would read the bytes.
            st.shared = (st.seq > 1 && in_sync_subscribers).then(|| {
                one_message_frame(|s| encode_update(s, &self.symbol, st.seq, &prev, &now, 0))
            });
        }
        self.fan_out();
    }

    /// Marks every subscriber's slot for this symbol dirty. Never awaits (see module doc).
    fn fan_out(&self) {
        for sub in lock(&self.subscribers).iter() {
            sub.conn.mark(sub.slot);
        }
    }

    /// The latest state, or `None` before the first tick (a subscriber's snapshot waits for it).
    pub fn read(&self) -> Option<Published> {
        let st = lock(&self.state);
        (st.seq > 0).then(|| Published {
            seq: st.seq,
            quote: st.quote,
            tick_in: st.tick_in,
            shared: st.shared.clone(),
        })
    }

    /// Adds a subscriber and marks its slot, so its snapshot goes out now (or at the first tick).
    pub fn subscribe(&self, conn: &Arc<ConnPending>, slot: u32) {
        lock(&self.subscribers).push(Subscriber {
            conn: conn.clone(),
            slot,
        });
        self.subscriber_count.fetch_add(1, Ordering::Relaxed);
        conn.mark(slot);
    }

    pub fn unsubscribe(&self, conn: &ConnPending, slot: u32) {
        let mut subs = lock(&self.subscribers);
        if let Some(i) = subs
            .iter()
            .position(|s| s.slot == slot && s.conn.id() == conn.id())
        {
            subs.swap_remove(i);
            self.subscriber_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscriber_count.load(Ordering::Relaxed)
    }
}
