//! Stage 3, the symbol index: symbol → latest quote, `seq`, status and subscribers; applies each
//! tick and fans it out.
//!
//! Concurrency: one ingest task applies feed events in order; connection tasks on the actix workers
//! read quotes and change subscriptions. Each symbol has two std mutexes, never held across an
//! `.await` and never nested with a connection's lock the other way round:
//! - `state` (quote, seq, the ring of recent changes) is held to apply a tick, which includes
//!   encoding its shared update once (about a microsecond), and for a copy out: into a worker
//!   shard's `Mirror` once per change, which that worker's connections then read (taken before
//!   `state`, by the shard's thread only);
//! - `links` (one per worker shard with subscribers, `fanout.rs`) is held while the ingest task
//!   queues the change for each shard: a handful of entries, whatever the connections.
//!
//! Failover: a symbol served by several feeds has one *active* source, the first feed in config
//! order whose view of it is fresh (not marked stale by that feed since its last tick). Ticks from
//! the others only update their shadow quote (counted in `quotegw_ticks_standby_total`). When the
//! active source goes stale the next fresh one takes over, and when a higher-priority feed ticks
//! again it takes back, on that tick: each switch publishes the new source's full quote as one tick,
//! so `seq` keeps growing, clients get an ordinary update, and the prices are ones the new source
//! has sent while fresh. Only a whole view is switched to: one that covers every field clients
//! hold (a standby that has sent part of a quote waits, and the symbol is `stale` meanwhile). A status event alone never switches back: it would publish what the
//! recovering feed had before its outage. With no fresh source at all the symbol's status is `stale`.
//!
//! Every change a client is told about (a tick, a status-only change) is a new `version`; the ring
//! of recent changes is kept by version, so a connection that keeps up gets every status transition
//! in its place among the updates.
//!
//! Backpressure, index → connection: the fan-out never awaits and never queues per tick. It only
//! queues the symbol for each worker shard with subscribers (at most once until the shard takes
//! it), and the shard marks each connection's slot dirty (`ConnPending::mark`, at most one entry per
//! subscribed symbol); the connection later reads what happened since it last sent.
//! The symbol keeps its last `RECENT_TICKS` updates encoded (once, shared by every connection), so a
//! connection a few ticks behind gets each of them; one further behind cannot keep up and gets one
//! merged update instead. That is the conflation, and it is why a slow client costs the ingest task
//! no more than a fast one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use dashmap::DashMap;
use prometheus::IntGauge;

use crate::delta::{encode_status, encode_update};
use crate::fanout::{ConnPending, Link};
use crate::feed::FeedEvent;
use crate::frame::one_message_frame;
use crate::metrics::{FeedCounters, Metrics};
use crate::model::{FeedId, Quote, Status, Symbol, Tick};
use crate::normalize::normalize;
use crate::sync::lock;

/// How many of a symbol's latest changes (ticks, and status changes) stay encoded for connections
/// that are behind, whatever their age. A batch of ticks arriving together (a feed's poll, a
/// replay's 10 ms step) is far smaller.
pub const RECENT_TICKS: usize = 64;

/// The most changes a symbol's ring keeps: past `RECENT_TICKS`, a change stays while it is younger
/// than the index's catch-up window (`Index::keep_catch_up_for`), so a symbol ticking faster than
/// 64 per window is not conflated for clients that keep up. Memory: about 170 bytes per kept change
/// (its encoded frame and this header), so at most ~700 KiB for a symbol ticking over 15,000 times
/// a second with a 16 ms batching window, and in all about (tick rate × window × 170 B) for
/// symbols that have subscribers. Each worker with subscribers to the symbol keeps a copy of the
/// ring (`Mirror`), so that bound counts once for the index and once per such worker.
pub const RECENT_MAX: usize = 4096;

/// How much longer than the batching window a change stays in the ring: a client that keeps up
/// reads at least once per window plus one pass of its worker over its connections, which a loaded
/// or preempted worker can stretch to tens of milliseconds.
pub const CATCH_UP_MARGIN: Duration = Duration::from_millis(250);

/// A symbol's latest state as one read sees it: the head copied, the changes borrowed from the
/// index (or a worker's mirror of it) for as long as the read lasts.
#[derive(Clone, Copy, Debug)]
pub struct Published<'a> {
    pub seq: u64,
    /// How many times the symbol's source restarted with a lower `seq` (see `index.rs`).
    pub restarts: u64,
    /// The symbol's change counter (ticks and status-only changes), see `index.rs`.
    pub version: u64,
    pub quote: Quote,
    pub tick_in: Option<Instant>,
    /// The changes after the connection's last `version` up to `version`, oldest first, when the
    /// index still holds them all; empty otherwise.
    pub catch_up: CatchUp<'a>,
}

/// Changes of a symbol's ring, oldest first: the ring's two slices.
#[derive(Clone, Copy, Default)]
pub struct CatchUp<'a>(&'a [Recent], &'a [Recent]);

impl<'a> CatchUp<'a> {
    /// The last `n` changes of `ring` (`n` ≤ its length).
    fn last(ring: &'a VecDeque<Recent>, n: usize) -> CatchUp<'a> {
        let start = ring.len() - n;
        let (a, b) = ring.as_slices();
        match a.get(start..) {
            Some(a) => CatchUp(a, b),
            None => CatchUp(&[], &b[start - a.len()..]),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a Recent> + 'a {
        self.0.iter().chain(self.1)
    }

    pub fn first(&self) -> Option<&'a Recent> {
        self.iter().next()
    }
}

/// As one list: where a ring's slices split is no part of what it holds.
impl std::fmt::Debug for CatchUp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One change, encoded once by the index as a frame: a tick's update (against the tick before it,
/// followed by a `status` message when the tick changed the status), or a status-only change.
#[derive(Clone, Debug)]
pub struct Recent {
    pub frame: ByteString,
    /// Bytes of the update object in `frame` (0: a status-only change), so that an SSE stream can
    /// take the messages apart without parsing.
    pub update_len: u32,
    /// The symbol's `seq` after the change.
    pub seq: u64,
    /// When the tick entered the index; `None` for a status-only change (no update in it).
    pub tick_in: Option<Instant>,
    /// When the change was applied: how long the ring keeps it past `RECENT_TICKS`.
    pub at: Instant,
}

pub struct Index {
    symbols: DashMap<Symbol, Arc<SymbolEntry>>,
    feeds: Vec<FeedCounters>,
    /// `quotegw_subscriptions`, kept by the subscriber lists themselves (see `Subscription`).
    subscriptions: IntGauge,
    history: Option<HistoryConfig>,
    sample_ms: Option<i64>,
    keep_for: Duration,
    changes: Option<Arc<ChangeLog>>,
}

/// Every change of every symbol, in order, for one consumer (a scale-out ingest's publisher, which
/// sends each to NATS). Backpressure is decided here: the tick path never waits for the consumer.
/// While it keeps up, every change is kept whole (up to `CHANGE_LOG_CAPACITY` between two reads,
/// about 10 MiB); past that (NATS away or too slow) changes are conflated per symbol: the symbol is
/// listed once, however many ticks pass, and the consumer reads its latest state when it gets to
/// it (an edge counts the `seq` it skipped in `conflated`).
#[derive(Default)]
pub struct ChangeLog {
    pending: Mutex<Changes>,
    notify: tokio::sync::Notify,
}

/// What a `ChangeLog`'s consumer takes in one read.
#[derive(Default)]
pub struct Changes {
    /// Each change whole, in the order they happened.
    pub states: Vec<Change>,
    /// Symbols changed while `states` was full, or all of them (`mark_all`), each once: publish
    /// their latest state (`SymbolEntry::read`), after `states`.
    pub behind: Vec<Arc<SymbolEntry>>,
}

/// One change of a symbol's state, as published to clients.
pub struct Change {
    pub symbol: Symbol,
    pub version: u64,
    pub seq: u64,
    pub quote: Quote,
}

/// How many changes a `ChangeLog` keeps whole between two reads of its consumer.
pub const CHANGE_LOG_CAPACITY: usize = 65_536;

impl ChangeLog {
    /// Called under the symbol's state lock, so a symbol's changes are listed in version order.
    fn record(&self, entry: &Arc<SymbolEntry>, st: &SymbolState) {
        let mut pending = lock(&self.pending);
        if pending.states.len() < CHANGE_LOG_CAPACITY {
            pending.states.push(Change {
                symbol: entry.symbol.clone(),
                version: st.version,
                seq: st.seq,
                quote: st.quote,
            });
        } else if !entry.queued.swap(true, Ordering::AcqRel) {
            pending.behind.push(entry.clone());
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// Every symbol, as changed: a consumer that must send everything again (a new NATS server).
    pub fn mark_all(&self, index: &Index) {
        let mut pending = lock(&self.pending);
        for e in index.symbols.iter() {
            if !e.queued.swap(true, Ordering::AcqRel) {
                pending.behind.push(e.value().clone());
            }
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// Waits for changes, then takes them all into `out` (left empty by the caller). A symbol in
    /// `behind` is unlisted before its state is read, so a change after the read is listed again.
    pub async fn take(&self, out: &mut Changes) {
        loop {
            std::mem::swap(&mut *lock(&self.pending), out);
            if !out.states.is_empty() || !out.behind.is_empty() {
                for e in &out.behind {
                    e.queued.store(false, Ordering::Release);
                }
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// How much of each symbol's past the index keeps, for the delayed entitlement tier: the latest
/// state per `granularity_ms` bucket, for `keep_ms`. Memory per symbol is at most
/// `keep_ms / granularity_ms + 2` entries of `size_of::<HistoryEntry>()` bytes, less for a symbol
/// that ticks less often than once a bucket (docs/protocol.md, "Entitlement tiers").
#[derive(Clone, Copy, Debug)]
pub struct HistoryConfig {
    pub keep_ms: i64,
    pub granularity_ms: i64,
}

/// A symbol's state at the end of one history bucket.
#[derive(Clone, Copy, Debug)]
pub struct HistoryEntry {
    /// The bucket's start, Unix epoch ms (gateway clock).
    pub bucket_ms: i64,
    pub seq: u64,
    pub quote: Quote,
}

/// The throttled tier's view of a symbol (`Index::sample_every`): the state it had when the
/// current interval began, the interval starting on a multiple of `interval_ms` (Unix epoch).
/// Kept beside the quote, so that every path a throttled credential reads through (a snapshot, a
/// re-subscribe, REST, a reconnect, a second connection) sees this one sample and nothing fresher.
/// Two states a symbol.
#[derive(Clone, Copy, Debug)]
struct Sampled {
    /// The interval (its start, epoch ms) of the latest change; `i64::MIN` for a state that has
    /// been there since before any interval looked at (a seeded one).
    last_interval_ms: i64,
    /// The state after the latest change.
    last: Option<HistoryEntry>,
    /// The state when `last_interval_ms`'s interval began: the last one before it.
    at_start: Option<HistoryEntry>,
}

impl Sampled {
    /// The sample at `now_ms`, and when the next interval begins if a later state waits for it.
    fn at(&self, interval_ms: i64, now_ms: i64) -> PastState {
        let start = now_ms - now_ms.rem_euclid(interval_ms);
        if start > self.last_interval_ms {
            // No change since this interval began: the latest state is the sample.
            PastState {
                entry: self.last,
                next_end_ms: None,
            }
        } else {
            PastState {
                entry: self.at_start,
                next_end_ms: Some(self.last_interval_ms.saturating_add(interval_ms)),
            }
        }
    }
}

impl Default for Sampled {
    fn default() -> Self {
        Sampled {
            last_interval_ms: i64::MIN,
            last: None,
            at_start: None,
        }
    }
}

/// A symbol as it was: the last complete bucket before the time asked for, and when the next
/// bucket kept ends (`None`: none is kept yet).
#[derive(Clone, Copy, Debug)]
pub struct PastState {
    pub entry: Option<HistoryEntry>,
    pub next_end_ms: Option<i64>,
}

pub struct SymbolEntry {
    pub symbol: Symbol,
    state: Mutex<SymbolState>,
    /// One link per worker shard with subscribers to this symbol (`fanout.rs`): a change is handed
    /// to each worker once, and the worker marks its own connections.
    links: Mutex<Vec<ShardLink>>,
    /// +1 for every change of `state` a reader may see (under the state lock), so that a shard's
    /// `Mirror` knows without the lock whether it is current.
    generation: AtomicU64,
    /// Every subscriber (the gauge and the invariants), and those the fan-out marks (whether a
    /// change's shared bytes are worth encoding), read without the lock.
    subscriber_count: AtomicUsize,
    live_count: AtomicUsize,
    subscriptions: IntGauge,
    history: Option<HistoryConfig>,
    /// The throttled tier's interval, when it is sampled (`Index::sample_every`).
    sample_ms: Option<i64>,
    /// Listed in the `ChangeLog` and not yet read by its consumer.
    queued: std::sync::atomic::AtomicBool,
    /// Where every change goes (a scale-out ingest), besides this entry's subscribers.
    changes: Option<Arc<ChangeLog>>,
}

#[derive(Default)]
struct SymbolState {
    seq: u64,
    /// How many times the symbol's source restarted with a lower `seq` (a scale-out ingest that
    /// lost its state): a connection that saw another count must start over (close 1012).
    restarts: u64,
    /// (scale-out edge) the newest `(term, version)` applied from the bus.
    remote: Option<(u64, u64)>,
    /// +1 for every change a client is told about: each tick (with its `seq`) and each status-only
    /// change (same `seq`). Connections catch up by version, so a status flip between two ticks
    /// keeps its place among them.
    version: u64,
    quote: Quote,
    /// When the latest tick entered the index: the start of `quotegw_tick_to_write_seconds`.
    tick_in: Option<Instant>,
    /// The changes of the last versions (`version - recent.len() + 1 ..= version`), each encoded
    /// once for every subscriber; empty when the latest change had no subscriber.
    recent: VecDeque<Recent>,
    /// How long a change stays in `recent` past the first `RECENT_TICKS` (`Index::keep_catch_up_for`).
    keep_for: Duration,
    /// The latest state per time bucket, oldest first (only with a `HistoryConfig`).
    history: VecDeque<HistoryEntry>,
    /// The throttled tier's sample (only with `Index::sample_every`).
    sampled: Option<Box<Sampled>>,
    /// Every feed that has ticked this symbol, in priority (`FeedId`) order; usually one.
    sources: Vec<Source>,
    /// The feed whose quote is published; kept while every source is stale, so that the same feed
    /// recovering is not a switch.
    active: Option<FeedId>,
}

/// One feed's view of a symbol: created by the feed's first tick for it, never by a status event.
struct Source {
    feed: FeedId,
    quote: Quote,
    /// False from the feed saying its data for the symbol is stale (an upstream outage) until its
    /// next tick: only a tick shows the feed has current prices again.
    fresh: bool,
}

impl SymbolState {
    fn head(&self) -> Head {
        Head {
            seq: self.seq,
            restarts: self.restarts,
            version: self.version,
            quote: self.quote,
            tick_in: self.tick_in,
        }
    }

    /// The feed's source, created on its first tick: empty, or, for a symbol seeded from a
    /// scale-out cache before any feed ticked (`Index::seed`), the seeded quote, so that a partial
    /// first tick updates it instead of blanking what it leaves out.
    fn source_for_tick(&mut self, feed: FeedId) -> &mut Source {
        let seeded = self.active.is_none() && self.seq > 0;
        let i = match self.sources.binary_search_by_key(&feed, |s| s.feed) {
            Ok(i) => i,
            Err(i) => {
                // A tick is current: the seeded quote's `stale` is not the feed's.
                let quote = if seeded {
                    Quote {
                        status: Status::default(),
                        ..self.quote
                    }
                } else {
                    Quote::default()
                };
                self.sources.insert(
                    i,
                    Source {
                        feed,
                        quote,
                        fresh: true,
                    },
                );
                i
            }
        };
        &mut self.sources[i]
    }

    fn source(&mut self, feed: FeedId) -> Option<&mut Source> {
        self.sources.iter_mut().find(|s| s.feed == feed)
    }

    /// The feed that should be published: the first fresh source that is the active one or whose
    /// view is whole, covering every field the published quote has. A switch publishes the new
    /// source's view as it is, and a standby that has sent only part of a quote (a replay's first
    /// lines, a feed that joined late) would blank the rest for every client; until its view is
    /// whole it stays a standby, and with no other fresh source the symbol is `stale` with the
    /// last prices it had.
    fn preferred(&self) -> Option<&Source> {
        self.sources
            .iter()
            .find(|s| s.fresh && (self.active == Some(s.feed) || s.quote.covers(&self.quote)))
    }

    /// Publishes a new quote as the next `seq`, encoding the shared update (and the status change it
    /// carries, if any) when anyone listens.
    fn publish(&mut self, symbol: &str, now: Quote, listeners: bool) {
        let seq = self.seq + 1;
        self.publish_at(symbol, now, seq, listeners);
    }

    /// Publishes a quote at `seq`: the next one for a tick; for a state from a scale-out ingest,
    /// the ingest's (ticks it merged before this one count in `conflated`, and a lower `seq` is a
    /// restarted source, counted in `restarts`).
    fn publish_at(&mut self, symbol: &str, now: Quote, seq: u64, listeners: bool) {
        let prev = self.quote;
        let prev_seq = self.seq;
        if seq < prev_seq {
            self.restarts += 1;
        }
        self.quote = now;
        self.seq = seq;
        let tick_in = Instant::now();
        self.tick_in = Some(tick_in);
        let conflated = seq.saturating_sub(prev_seq + 1);
        // The first tick has no update: subscribers get a snapshot.
        let first = prev_seq == 0;
        self.record(listeners && !first, || {
            let mut update_len = 0;
            let frame = one_message_frame(|s| {
                let start = s.len();
                encode_update(s, symbol, seq, &prev, &now, conflated);
                update_len = s.len() - start;
                if now.status != prev.status {
                    s.push(',');
                    encode_status(s, symbol, now.status);
                }
            });
            Recent {
                frame,
                update_len: update_len as u32,
                seq,
                tick_in: Some(tick_in),
                at: tick_in,
            }
        });
    }

    /// Publishes a status change without a tick: a new version with the same `seq`.
    fn publish_status(&mut self, symbol: &str, status: Status, listeners: bool) {
        self.quote.status = status;
        let seq = self.seq;
        self.record(listeners, || Recent {
            frame: one_message_frame(|s| encode_status(s, symbol, status)),
            update_len: 0,
            seq,
            tick_in: None,
            at: Instant::now(),
        });
    }

    /// Keeps the state just published as its time bucket's latest, and forgets what is older than
    /// any delayed client can still be shown.
    fn remember(&mut self, history: HistoryConfig, now_ms: i64) {
        let g = history.granularity_ms;
        let entry = HistoryEntry {
            bucket_ms: now_ms - now_ms.rem_euclid(g),
            seq: self.seq,
            quote: self.quote,
        };
        match self.history.back_mut() {
            Some(last) if last.bucket_ms == entry.bucket_ms => *last = entry,
            _ => self.history.push_back(entry),
        }
        // The entry before the oldest one still wanted stays: it is the state at that time.
        let oldest_wanted = now_ms - history.keep_ms - g;
        while self.history.len() > 1 && self.history[1].bucket_ms + g <= oldest_wanted {
            self.history.pop_front();
        }
    }

    /// Keeps the state just published for the throttled tier's sample: the first change of a new
    /// interval makes the state before it the one that interval began with.
    fn sample(&mut self, interval_ms: i64, now_ms: i64) {
        let start = now_ms - now_ms.rem_euclid(interval_ms);
        let current = HistoryEntry {
            bucket_ms: start,
            seq: self.seq,
            quote: self.quote,
        };
        let s = self.sampled.get_or_insert_with(Box::default);
        if s.last_interval_ms != start {
            s.at_start = s.last;
            s.last_interval_ms = start;
        }
        s.last = Some(current);
    }

    /// Counts a change as the next version and keeps its encoding in the ring. With no subscriber
    /// nobody would read the bytes; the ring then restarts so that it stays contiguous up to
    /// `version`.
    fn record(&mut self, keep: bool, change: impl FnOnce() -> Recent) {
        self.version += 1;
        if keep {
            let change = change();
            // Past the first `RECENT_TICKS`, a change leaves once older than the catch-up window.
            while let Some(oldest) = self.recent.front() {
                let full = self.recent.len() >= RECENT_MAX;
                let aged = change.at.saturating_duration_since(oldest.at) >= self.keep_for;
                if self.recent.len() < RECENT_TICKS || (!full && !aged) {
                    break;
                }
                self.recent.pop_front();
            }
            self.recent.push_back(change);
        } else {
            self.recent.clear();
        }
    }
}

impl Index {
    /// `feeds` are the feed names in `FeedId` order.
    pub fn new(feeds: &[String], metrics: Arc<Metrics>) -> Index {
        Index {
            symbols: DashMap::new(),
            feeds: feeds.iter().map(|f| metrics.feed_counters(f)).collect(),
            subscriptions: metrics.subscriptions.clone(),
            history: None,
            sample_ms: None,
            keep_for: Duration::ZERO,
            changes: None,
        }
    }

    /// Keeps each symbol's past (for the delayed tier); set before any symbol is registered.
    pub fn keep_history(&mut self, history: HistoryConfig) {
        self.history = Some(history);
    }

    /// Keeps each symbol's sample for the throttled tier, every `interval_ms`; set before any
    /// symbol is registered.
    pub fn sample_every(&mut self, interval_ms: i64) {
        self.sample_ms = Some(interval_ms.max(1));
    }

    /// How long each symbol keeps its encoded changes for connections behind, past the first
    /// `RECENT_TICKS` (at most `RECENT_MAX`): the batching window plus `CATCH_UP_MARGIN`, so that
    /// no client that keeps up is conflated whatever a symbol's rate. Set before any symbol is
    /// registered; zero (the default) keeps exactly `RECENT_TICKS`.
    pub fn keep_catch_up_for(&mut self, window: Duration) {
        self.keep_for = window;
    }

    /// Declares a symbol as served, before any tick for it.
    pub fn register(&self, symbol: Symbol) -> Arc<SymbolEntry> {
        self.symbols
            .entry(symbol.clone())
            .or_insert_with(|| {
                Arc::new(SymbolEntry {
                    symbol,
                    state: Mutex::new(SymbolState {
                        keep_for: self.keep_for,
                        ..SymbolState::default()
                    }),
                    links: Mutex::new(Vec::new()),
                    generation: AtomicU64::new(0),
                    subscriber_count: AtomicUsize::new(0),
                    live_count: AtomicUsize::new(0),
                    subscriptions: self.subscriptions.clone(),
                    history: self.history,
                    sample_ms: self.sample_ms,
                    queued: Default::default(),
                    changes: self.changes.clone(),
                })
            })
            .clone()
    }

    pub fn lookup(&self, symbol: &str) -> Option<Arc<SymbolEntry>> {
        self.symbols.get(symbol).map(|e| e.value().clone())
    }

    /// A symbol no feed declared (a replayed file, an upstream listing a new ticker, a state from
    /// the bus) becomes served on its first valid tick or state. The read lock first: the write
    /// lock is taken only for a new symbol.
    fn lookup_or_register(&self, symbol: &Symbol) -> Arc<SymbolEntry> {
        self.lookup(symbol)
            .unwrap_or_else(|| self.register(symbol.clone()))
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
                feed,
                symbol,
                status,
            } => self.set_status(feed, &symbol, status),
            FeedEvent::State { feed, state } => self.apply_state(feed, &state),
        }
    }

    /// Sends every change to `changes` from now on (a scale-out ingest's publisher); set before
    /// any feed runs.
    pub fn publish_changes(&mut self, changes: Arc<ChangeLog>) {
        self.changes = Some(changes);
    }

    /// Starts a symbol from a state kept elsewhere (a scale-out ingest's cache): its `seq` goes on
    /// from there instead of restarting at 1, and its quote is what the next tick updates. It is
    /// `stale` until a feed ticks it: the cache cannot say whether its price is still current.
    pub fn seed(&self, symbol: Symbol, seq: u64, quote: Quote) {
        let entry = self.register(symbol);
        let mut st = lock(&entry.state);
        if st.seq == 0 {
            st.seq = seq;
            st.quote = Quote {
                status: Status::Stale,
                ..quote
            };
            if entry.sample_ms.is_some() {
                // There before any interval a throttled client looks at: its sample at once.
                st.sampled = Some(Box::new(Sampled {
                    last: Some(HistoryEntry {
                        bucket_ms: i64::MIN,
                        seq: st.seq,
                        quote: st.quote,
                    }),
                    ..Sampled::default()
                }));
            }
            entry.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// (scale-out edge) a symbol's whole state from the bus: kept if it is newer than what the
    /// entry has, by `(term, version)`; a duplicate or a late message changes nothing.
    fn apply_state(&self, feed: FeedId, state: &crate::scaleout::wire::State) {
        if let Some(c) = self.counters(feed) {
            c.received.inc();
        }
        self.lookup_or_register(&state.symbol)
            .apply_state(feed, state);
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
        let published = self.lookup_or_register(&tick.symbol).apply(&tick);
        if let (false, Some(c)) = (published, counters) {
            c.standby.inc();
        }
    }

    fn set_status(&self, feed: FeedId, symbol: &str, status: Status) {
        if let Some(entry) = self.lookup(symbol) {
            entry.set_feed_status(feed, status);
        }
    }
}

impl SymbolEntry {
    /// Applies a normalized tick; false when its feed is a standby for this symbol (nothing was
    /// published).
    fn apply(self: &Arc<Self>, tick: &Tick) -> bool {
        let listeners = self.live_count.load(Ordering::Relaxed) > 0;
        {
            let mut st = lock(&self.state);
            let source = st.source_for_tick(tick.feed);
            merge(&mut source.quote, tick);
            source.fresh = true;
            let quote = source.quote;
            match st.preferred().map(|s| s.feed) {
                Some(f) if f == tick.feed && st.active == Some(f) => {
                    // The usual case: the tick's own fields on top of the published quote.
                    let mut now = st.quote;
                    merge(&mut now, tick);
                    // A tick from a feed that was stale makes the symbol live again.
                    now.status = quote.status;
                    st.publish(&self.symbol, now, listeners);
                }
                Some(f) if f == tick.feed => {
                    // First tick, or this feed takes (back) over on a fresh tick: publish its whole
                    // view, which this tick has just brought up to date.
                    st.active = Some(f);
                    st.publish(&self.symbol, quote, listeners);
                }
                _ => return false,
            }
            self.published(&mut st);
        }
        self.fan_out();
        true
    }

    /// After every change, under the state lock: keeps it in the history (delayed tier) and the
    /// sample (throttled tier), and lists it for a scale-out ingest's publisher.
    fn published(self: &Arc<Self>, st: &mut SymbolState) {
        self.generation.fetch_add(1, Ordering::Release);
        if self.history.is_some() || self.sample_ms.is_some() {
            let now_ms = crate::model::now_ms();
            if let Some(history) = self.history {
                st.remember(history, now_ms);
            }
            if let Some(interval) = self.sample_ms {
                st.sample(interval, now_ms);
            }
        }
        if let Some(changes) = &self.changes {
            changes.record(self, st);
        }
    }

    /// A feed says its data for this symbol is stale, or live (or halted) again.
    ///
    /// A status event never creates a source and never makes one fresh: a feed recovering from an
    /// outage is taken back on its first tick (`apply`), so the quote published then is one the
    /// feed has just sent, never the one it had before the outage. Going stale can still move the
    /// symbol to the next fresh feed, whose prices are current.
    fn set_feed_status(self: &Arc<Self>, feed: FeedId, status: Status) {
        let listeners = self.live_count.load(Ordering::Relaxed) > 0;
        {
            let mut st = lock(&self.state);
            let Some(source) = st.source(feed) else {
                return; // this feed has not ticked the symbol: nothing of its own to mark
            };
            match status {
                Status::Stale => source.fresh = false,
                // Halted or live from a feed that is current; from a stale one, wait for its tick.
                _ if source.fresh => source.quote.status = status,
                _ => return,
            }
            match st.preferred().map(|s| (s.feed, s.quote)) {
                Some((f, quote)) if st.active != Some(f) => {
                    // Failover: the next fresh feed's whole view, as the next seq.
                    st.active = Some(f);
                    st.publish(&self.symbol, quote, listeners);
                }
                preferred => {
                    let published = preferred.map_or(Status::Stale, |(_, q)| q.status);
                    if st.quote.status == published {
                        return;
                    }
                    st.publish_status(&self.symbol, published, listeners);
                }
            }
            self.published(&mut st);
        }
        self.fan_out();
    }

    /// (scale-out edge) applies a state from the bus, publishing it when it is news. The bus's
    /// source is this feed's source, so staleness (`set_feed_status`) works as for any feed; a
    /// state equal to the one held makes a stale source current again (a reload after an outage).
    fn apply_state(self: &Arc<Self>, feed: FeedId, state: &crate::scaleout::wire::State) {
        let listeners = self.live_count.load(Ordering::Relaxed) > 0;
        {
            let mut st = lock(&self.state);
            let key = (state.term, state.version);
            match st.remote {
                Some(held) if key < held => return, // late or reordered
                Some(held) if key == held => {
                    let source = st.source_for_tick(feed);
                    if source.fresh {
                        return; // a duplicate
                    }
                    source.fresh = true;
                    if st.quote.status == state.quote.status {
                        return;
                    }
                    st.publish_status(&self.symbol, state.quote.status, listeners);
                }
                held => {
                    let restarted = held.is_some_and(|(term, _)| state.term > term);
                    if state.seq < st.seq && !restarted {
                        return; // an older state under the same term: cannot be newer
                    }
                    st.remote = Some(key);
                    let source = st.source_for_tick(feed);
                    source.quote = state.quote;
                    source.fresh = true;
                    st.active = Some(feed);
                    if state.seq != st.seq {
                        st.publish_at(&self.symbol, state.quote, state.seq, listeners);
                    } else if state.quote.same_as(&st.quote) {
                        return;
                    } else if st.quote.status != state.quote.status
                        && state.quote.same_as(&Quote {
                            status: state.quote.status,
                            ..st.quote
                        })
                    {
                        // A status-only change: a new version with the same seq.
                        st.publish_status(&self.symbol, state.quote.status, listeners);
                    } else {
                        // Same seq, other values: only a restarted source says that. A connection
                        // holding this seq cannot be sent an update with it: it starts over.
                        st.restarts += 1;
                        st.publish_at(&self.symbol, state.quote, state.seq, listeners);
                    }
                }
            }
            self.published(&mut st);
        }
        self.fan_out();
    }

    /// Hands the change to every worker shard with live subscribers (at most once until the shard
    /// takes it). Never awaits (see module doc).
    fn fan_out(&self) {
        for l in lock(&self.links).iter() {
            l.link.queue();
        }
    }

    /// The symbol as it was at `at_ms` (gateway clock): the state at the end of the last complete
    /// history bucket before it, so a delayed client never sees a tick later than its delay allows.
    pub fn read_past(&self, at_ms: i64) -> PastState {
        let Some(g) = self.history.map(|h| h.granularity_ms) else {
            return PastState {
                entry: None,
                next_end_ms: None,
            };
        };
        let st = lock(&self.state);
        let done = st.history.partition_point(|e| e.bucket_ms + g <= at_ms);
        PastState {
            entry: done.checked_sub(1).map(|i| st.history[i]),
            next_end_ms: st.history.get(done).map(|e| e.bucket_ms + g),
        }
    }

    /// The throttled tier's sample at `now_ms` (gateway clock): the state the symbol had when the
    /// current interval began, and when the next interval begins if a later state is waiting
    /// for it (`None`: nothing newer yet; a change marks the subscribers).
    pub fn read_sampled(&self, now_ms: i64) -> PastState {
        let Some(interval) = self.sample_ms else {
            return PastState {
                entry: None,
                next_end_ms: None,
            };
        };
        let st = lock(&self.state);
        match st.sampled.as_deref() {
            Some(s) => s.at(interval, now_ms),
            None => PastState {
                entry: None,
                next_end_ms: None,
            },
        }
    }

    /// The latest state, or `None` before the first tick (a subscriber's snapshot waits for it).
    pub fn read(&self) -> Option<Published<'static>> {
        static NO_CHANGES: VecDeque<Recent> = VecDeque::new();
        read_from(&lock(&self.state).head(), &NO_CHANGES, None)
    }

    /// Calls `f` with the latest state plus, for a connection last sent `version = after`, the
    /// encoded changes since, when the ring still holds all of them (otherwise `catch_up` is
    /// empty), under the symbol's lock.
    pub fn read_since<R>(
        &self,
        after: Option<u64>,
        f: impl FnOnce(Option<Published<'_>>) -> R,
    ) -> R {
        let st = lock(&self.state);
        f(read_from(&st.head(), &st.recent, after))
    }

    /// Brings a shard's mirror of this symbol up to date: one lock of the symbol per change and
    /// shard, whatever the number of the shard's connections reading it. Called with the mirror
    /// locked, once its generation was seen to differ (generations only grow).
    fn refresh(&self, m: &mut Mirror) {
        let st = lock(&self.state);
        // Read under the lock: the generation of exactly the state copied.
        let generation = self.generation.load(Ordering::Acquire);
        // The mirror's ring is always the whole ring of its last refresh, and the ring is
        // contiguous up to `version`: when every change since is still in it, they follow on.
        let behind = (st.version - m.head.version) as usize;
        let new = if m.generation != u64::MAX && behind <= st.recent.len() {
            st.recent.len() - behind
        } else {
            m.recent.clear();
            0
        };
        // The bytes are the shard's own: reads clone them (a reference count), and a count
        // shared by every worker's connections would bounce between their cores.
        m.recent.extend(st.recent.range(new..).map(|r| Recent {
            frame: ByteString::from(&*r.frame),
            ..r.clone()
        }));
        while m.recent.len() > st.recent.len() {
            m.recent.pop_front();
        }
        m.head = st.head();
        m.generation = generation;
    }

    /// Adds a subscriber and marks its slot, so its snapshot goes out now (or at the first tick).
    /// A `live` subscriber is marked on every change; a delayed one only counts (its news comes
    /// from the clock). The subscription lasts as long as the returned guard.
    pub fn subscribe(
        self: &Arc<Self>,
        conn: &Arc<ConnPending>,
        slot: u32,
        live: bool,
    ) -> Subscription {
        let (link, mirror) = {
            let mut links = lock(&self.links);
            let l = match links
                .iter()
                .position(|l| Arc::ptr_eq(l.link.shard(), conn.shard()))
            {
                Some(i) => &links[i],
                None => {
                    links.push(ShardLink {
                        link: Link::new(conn.shard().clone()),
                        mirror: Arc::new(Mutex::new(Mirror::default())),
                    });
                    &links[links.len() - 1]
                }
            };
            (l.link.clone(), l.mirror.clone())
        };
        link.add(conn, slot, live);
        self.subscriber_count.fetch_add(1, Ordering::Relaxed);
        if live {
            self.live_count.fetch_add(1, Ordering::Relaxed);
        }
        self.subscriptions.inc();
        conn.mark(slot);
        Subscription {
            entry: self.clone(),
            link,
            mirror,
            conn_id: conn.id(),
            slot,
        }
    }

    fn unsubscribe(&self, link: &Arc<Link>, conn_id: u64, slot: u32) {
        let (removed, empty) = link.remove(conn_id, slot);
        if let Some(live) = removed {
            if live {
                self.live_count.fetch_sub(1, Ordering::Relaxed);
            }
            self.subscriber_count.fetch_sub(1, Ordering::Relaxed);
            self.subscriptions.dec();
        }
        if empty {
            // Only the link's own worker adds to it, and this runs on that worker: it stays empty.
            lock(&self.links).retain(|l| !Arc::ptr_eq(&l.link, link));
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscriber_count.load(Ordering::Relaxed)
    }
}

/// One connection's place in one symbol's subscriber list, left when the guard is dropped.
///
/// Cleanup lives in `Drop` (as mini-redis ties its cleanup to guards) so that no way a connection
/// can end (a close, a panic unwinding its task, a task cancelled mid-flight, the runtime dropping
/// tasks at shutdown) leaves it in the fan-out, and `quotegw_subscriptions` is at every moment the
/// sum of the subscriber lists.
pub struct Subscription {
    entry: Arc<SymbolEntry>,
    link: Arc<Link>,
    /// The shard's copy of the symbol's state, which the connection reads.
    mirror: Arc<Mutex<Mirror>>,
    conn_id: u64,
    slot: u32,
}

impl Subscription {
    pub fn entry(&self) -> &Arc<SymbolEntry> {
        &self.entry
    }

    /// `SymbolEntry::read_since`, from the connection's shard's mirror of the symbol: the symbol's
    /// own lock and bytes are touched once per change and shard, not once per connection. `f`
    /// runs under the mirror's lock, which only the shard's thread takes.
    pub fn read_since<R>(
        &self,
        after: Option<u64>,
        f: impl FnOnce(Option<Published<'_>>) -> R,
    ) -> R {
        let mut m = lock(&self.mirror);
        if m.generation != self.entry.generation.load(Ordering::Acquire) {
            self.entry.refresh(&mut m);
        }
        f(read_from(&m.head, &m.recent, after))
    }
}

/// A symbol's link to one worker shard, and that shard's mirror of the symbol.
struct ShardLink {
    link: Arc<Link>,
    mirror: Arc<Mutex<Mirror>>,
}

/// One worker shard's copy of a symbol's latest state and ring of recent changes, refreshed by the
/// first of the shard's connections to read after a change (`Subscription::read_since`). Only the
/// shard's thread locks it, so its lock and the reference counts of its bytes stay in that core's
/// cache, where every connection reading the symbol itself would make them bounce between the
/// workers' cores (the in-process `shards` bench: 1.26 × from one shard to two before).
struct Mirror {
    /// The symbol's `generation` copied; `u64::MAX` before the first refresh.
    generation: u64,
    head: Head,
    recent: VecDeque<Recent>,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror {
            generation: u64::MAX,
            head: Head::default(),
            recent: VecDeque::new(),
        }
    }
}

/// A symbol's latest state, without its ring.
#[derive(Clone, Copy, Default)]
struct Head {
    seq: u64,
    restarts: u64,
    version: u64,
    quote: Quote,
    tick_in: Option<Instant>,
}

/// The latest state plus, for a connection last sent `version = after`, the changes since from
/// `recent` (the ring up to `head.version`) when it still holds all of them.
fn read_from<'a>(
    head: &Head,
    recent: &'a VecDeque<Recent>,
    after: Option<u64>,
) -> Option<Published<'a>> {
    if head.seq == 0 {
        return None;
    }
    let mut catch_up = CatchUp::default();
    if let Some(sent) = after.filter(|&sent| sent < head.version) {
        let behind = (head.version - sent) as usize;
        if behind <= recent.len() {
            catch_up = CatchUp::last(recent, behind);
        }
    }
    Some(Published {
        seq: head.seq,
        restarts: head.restarts,
        version: head.version,
        quote: head.quote,
        tick_in: head.tick_in,
        catch_up,
    })
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.unsubscribe(&self.link, self.conn_id, self.slot);
    }
}

/// Applies a partial tick's fields to a quote (a field the tick leaves out is unchanged).
fn merge(q: &mut Quote, tick: &Tick) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn tick(feed: FeedId, bid: i64) -> FeedEvent {
        FeedEvent::Tick(Tick {
            feed,
            symbol: "X".into(),
            ts: bid,
            bid: Some(Decimal::new(bid, 2)),
            ..Tick::default()
        })
    }

    fn status(feed: FeedId, status: Status) -> FeedEvent {
        FeedEvent::Status {
            feed,
            symbol: "X".into(),
            status,
        }
    }

    /// A shard's connections read the symbol from the shard's mirror: whatever happened (ticks,
    /// status-only changes, a stretch with no live subscriber, when the ring is not kept), a read
    /// from the mirror is the read from the symbol itself, for every `after`.
    #[test]
    fn a_read_from_the_shards_mirror_is_the_read_from_the_symbol() {
        let mut index = Index::new(&["feed".into()], Arc::new(Metrics::new()));
        // The ring keeps its last `RECENT_TICKS` only, so that it drops changes the rounds below
        // made (and the mirror must drop them too).
        index.keep_catch_up_for(Duration::ZERO);
        let entry = index.register("X".into());
        let conn = ConnPending::new();
        // A delayed subscriber keeps the shard's link (and mirror) when no live one is left.
        let _delayed = entry.subscribe(&conn, 0, false);
        let mut live = Some(entry.subscribe(&conn, 1, true));
        let mut reader = entry.subscribe(&conn, 2, true);
        let mut bid = 100;
        for round in 0..400 {
            match round % 5 {
                0..=2 => {
                    bid += 1;
                    index.apply(tick(0, bid));
                }
                3 => index.apply(status(0, [Status::Halted, Status::Live][round % 2])),
                _ => {}
            }
            // Rounds 10-19: no live subscriber (the ring is cleared, the mirror not read); then
            // a new one reads first.
            match round {
                10 => {
                    live = None;
                    drop(std::mem::replace(
                        &mut reader,
                        entry.subscribe(&conn, 3, false),
                    ));
                }
                20 => {
                    reader = entry.subscribe(&conn, 4, true);
                    live = Some(entry.subscribe(&conn, 5, true));
                }
                _ => {}
            }
            // Not read every round: the mirror then catches up several changes at once.
            if (10..20).contains(&round) && round % 3 != 0 || round > 20 && round % 7 > 1 {
                continue;
            }
            let version = entry.read().map_or(0, |p| p.version);
            for after in std::iter::once(None).chain((0..=version + 1).map(Some)) {
                let from_symbol = entry.read_since(after, |p| format!("{p:?}"));
                let from_mirror = reader.read_since(after, |p| format!("{p:?}"));
                assert_eq!(from_mirror, from_symbol, "round {round}, after {after:?}");
            }
        }
        drop(live);
    }

    /// A scale-out ingest's publisher gets every change whole and in order, status-only ones
    /// included; once it is `CHANGE_LOG_CAPACITY` changes behind, one entry per symbol.
    #[test]
    fn the_change_log_keeps_every_change_until_its_consumer_is_far_behind() {
        let mut index = Index::new(&["feed".into()], Arc::new(Metrics::new()));
        let log = Arc::new(ChangeLog::default());
        index.publish_changes(log.clone());
        let take = || {
            let mut out = Changes::default();
            futures_util::FutureExt::now_or_never(log.take(&mut out)).expect("changes pending");
            out
        };
        index.apply(tick(0, 100));
        index.apply(tick(0, 101));
        index.apply(status(0, Status::Halted));
        index.apply(tick(0, 102));
        let got = take();
        let seen: Vec<(u64, u64, String, Status)> = got
            .states
            .iter()
            .map(|c| {
                (
                    c.version,
                    c.seq,
                    c.quote.bid.unwrap().to_string(),
                    c.quote.status,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, 1, "1.00".into(), Status::Live),
                (2, 2, "1.01".into(), Status::Live),
                (3, 2, "1.01".into(), Status::Halted),
                (4, 3, "1.02".into(), Status::Halted), // a tick does not end a halt
            ]
        );
        assert!(got.behind.is_empty());
        for i in 0..CHANGE_LOG_CAPACITY as i64 + 10 {
            index.apply(tick(0, 200 + i));
        }
        let got = take();
        assert_eq!(got.states.len(), CHANGE_LOG_CAPACITY);
        assert_eq!(
            got.behind.len(),
            1,
            "one entry for the rest, however many ticks"
        );
        let latest = got.behind[0].read().unwrap();
        assert_eq!(latest.seq, 3 + CHANGE_LOG_CAPACITY as u64 + 10);
        // Read: the next change is kept whole again.
        index.apply(tick(0, 1));
        assert_eq!((take().states.len(), take_is_empty(&log)), (1, true));
    }

    fn take_is_empty(log: &ChangeLog) -> bool {
        let mut out = Changes::default();
        futures_util::FutureExt::now_or_never(log.take(&mut out)).is_none()
    }

    #[test]
    fn the_primary_wins_while_fresh_the_secondary_takes_over_and_seq_keeps_growing() {
        let index = Index::new(
            &["primary".into(), "secondary".into()],
            Arc::new(Metrics::new()),
        );
        let entry = index.register("X".into());
        let state = |e: &SymbolEntry| {
            let p = e.read().unwrap();
            (p.seq, p.quote.bid.unwrap().to_string(), p.quote.status)
        };
        index.apply(tick(1, 200));
        assert_eq!(state(&entry), (1, "2.00".into(), Status::Live));
        index.apply(tick(0, 100)); // the primary's first tick takes over
        assert_eq!(state(&entry), (2, "1.00".into(), Status::Live));
        index.apply(tick(1, 201)); // standby: kept as the secondary's shadow, not published
        assert_eq!(state(&entry), (2, "1.00".into(), Status::Live));
        index.apply(status(0, Status::Stale)); // failover to the secondary's latest view
        assert_eq!(state(&entry), (3, "2.01".into(), Status::Live));
        index.apply(tick(1, 202));
        assert_eq!(state(&entry), (4, "2.02".into(), Status::Live));
        index.apply(status(1, Status::Stale)); // nobody fresh: stale, same seq
        assert_eq!(state(&entry), (4, "2.02".into(), Status::Stale));
        // The primary says it is live again: nothing is published until it sends a price.
        index.apply(status(0, Status::Live));
        assert_eq!(state(&entry), (4, "2.02".into(), Status::Stale));
        index.apply(tick(0, 101)); // its first fresh tick takes the symbol back, with that price
        assert_eq!(state(&entry), (5, "1.01".into(), Status::Live));
    }

    /// Regression (issue 25): a failover to a standby that had sent only part of a quote published
    /// its partial view, nulls and all. A switch publishes only a whole quote: until the standby's
    /// view covers what clients hold, the symbol is stale with its last prices, then the standby
    /// takes over on the tick that completes its view.
    #[test]
    fn a_switch_publishes_only_a_whole_quote() {
        let index = Index::new(
            &["primary".into(), "secondary".into()],
            Arc::new(Metrics::new()),
        );
        let entry = index.register("X".into());
        let whole = |feed, n: i64| {
            FeedEvent::Tick(Tick {
                feed,
                symbol: "X".into(),
                ts: n,
                bid: Some(Decimal::new(n, 2)),
                ask: Some(Decimal::new(n + 1, 2)),
                last: Some(Decimal::new(n, 2)),
                volume: Some(n),
                ..Tick::default()
            })
        };
        index.apply(whole(0, 100));
        index.apply(tick(1, 200)); // the standby has only a bid so far
        index.apply(status(0, Status::Stale));
        let p = entry.read().unwrap();
        assert_eq!(
            (p.seq, p.quote.status),
            (1, Status::Stale),
            "no switch to a partial view"
        );
        assert_eq!(p.quote.ask, Some(Decimal::new(101, 2)), "nothing blanked");
        index.apply(tick(1, 201)); // still partial: a standby's shadow, not published
        assert_eq!(entry.read().unwrap().seq, 1);
        index.apply(whole(1, 300)); // whole now: it takes over with its own view
        let p = entry.read().unwrap();
        assert_eq!((p.seq, p.quote.status), (2, Status::Live));
        assert_eq!(
            (p.quote.bid, p.quote.ask, p.quote.volume),
            (
                Some(Decimal::new(300, 2)),
                Some(Decimal::new(301, 2)),
                Some(300)
            )
        );
        // A late higher-priority feed whose first tick is partial does not take back either.
        let fresh = Index::new(&["a".into(), "b".into()], Arc::new(Metrics::new()));
        let e = fresh.register("X".into());
        fresh.apply(whole(1, 500));
        fresh.apply(tick(0, 600));
        let p = e.read().unwrap();
        assert_eq!((p.seq, p.quote.bid), (1, Some(Decimal::new(500, 2))));
        fresh.apply(whole(0, 700));
        assert_eq!(e.read().unwrap().quote.bid, Some(Decimal::new(700, 2)));
    }

    #[test]
    fn fail_back_never_publishes_the_recovering_feeds_pre_outage_quote() {
        let index = Index::new(
            &["primary".into(), "secondary".into()],
            Arc::new(Metrics::new()),
        );
        let entry = index.register("X".into());
        index.apply(tick(0, 100));
        index.apply(tick(1, 200));
        index.apply(status(0, Status::Stale)); // failover: the secondary's current price
        let p = entry.read().unwrap();
        assert_eq!(
            (p.seq, p.quote.bid.unwrap().to_string()),
            (2, "2.00".into())
        );
        index.apply(tick(1, 201));
        // Recovery announced before any price: the published quote stays the secondary's.
        index.apply(status(0, Status::Live));
        let p = entry.read().unwrap();
        assert_eq!(
            (p.seq, p.quote.bid.unwrap().to_string()),
            (3, "2.01".into())
        );
        assert_eq!(p.quote.status, Status::Live);
    }

    #[test]
    fn a_status_event_from_a_feed_that_never_ticked_the_symbol_changes_nothing() {
        let index = Index::new(
            &["primary".into(), "secondary".into()],
            Arc::new(Metrics::new()),
        );
        let entry = index.register("X".into());
        index.apply(tick(1, 200)); // only the secondary serves X
        for s in [Status::Stale, Status::Live, Status::Stale, Status::Live] {
            index.apply(status(0, s));
            let p = entry.read().unwrap();
            assert_eq!(
                (
                    p.seq,
                    p.version,
                    p.quote.bid.unwrap().to_string(),
                    p.quote.status
                ),
                (1, 1, "2.00".into(), Status::Live)
            );
        }
        // The secondary's own outage is a status-only change: a new version, the same seq and price.
        index.apply(status(1, Status::Stale));
        let p = entry.read().unwrap();
        assert_eq!((p.seq, p.version, p.quote.status), (1, 2, Status::Stale));
        assert_eq!(p.quote.bid.unwrap().to_string(), "2.00");
    }

    #[test]
    fn status_changes_keep_their_place_among_the_updates_in_the_ring() {
        let index = Index::new(&["only".into()], Arc::new(Metrics::new()));
        let entry = index.register("X".into());
        let conn = ConnPending::new();
        let _sub = entry.subscribe(&conn, 0, true);
        index.apply(tick(0, 100)); // version 1: the snapshot's
        index.apply(tick(0, 101));
        index.apply(status(0, Status::Stale));
        index.apply(tick(0, 102)); // live again, with a price
        let (messages, seq_version) = entry.read_since(Some(1), |p| {
            let p = p.unwrap();
            (catch_up_messages(p.catch_up), (p.seq, p.version))
        });
        assert_eq!(
            messages,
            [
                "update 2",
                "status \"stale\"",
                "update 3",
                "status \"live\""
            ]
        );
        assert_eq!(seq_version, (3, 4));
    }

    /// Each message of `changes`: its type, and its status or seq.
    fn catch_up_messages(changes: CatchUp<'_>) -> Vec<String> {
        changes
            .iter()
            .flat_map(|r| {
                serde_json::from_str::<Vec<serde_json::Value>>(&r.frame)
                    .unwrap()
                    .into_iter()
                    .map(|m| {
                        format!(
                            "{} {}",
                            m["type"].as_str().unwrap(),
                            m.get("status").or(m.get("seq")).unwrap()
                        )
                    })
            })
            .collect()
    }

    /// Regression (issue 13: a symbol ticking more than 64 times in one batching window was merged
    /// for every client): the ring keeps every change of the catch-up window, up to `RECENT_MAX`,
    /// and exactly `RECENT_TICKS` without a window.
    #[test]
    fn the_ring_keeps_the_catch_up_window_not_a_fixed_count() {
        let behind_after = |window: Duration, ticks: i64| {
            let mut index = Index::new(&["only".into()], Arc::new(Metrics::new()));
            index.keep_catch_up_for(window);
            let entry = index.register("X".into());
            let conn = ConnPending::new();
            let _sub = entry.subscribe(&conn, 0, true);
            for bid in 0..ticks {
                index.apply(tick(0, 100 + bid));
            }
            // A client that got the first tick's snapshot and has read nothing since.
            entry.read_since(Some(1), |p| {
                let p = p.unwrap();
                (p.catch_up.len(), p.catch_up.first().map(|r| r.seq))
            })
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(behind_after(hour, 1_001), (1_000, Some(2)), "every change");
        assert_eq!(
            behind_after(Duration::ZERO, 1_001),
            (0, None),
            "1,000 behind with only RECENT_TICKS kept: conflated"
        );
        assert_eq!(behind_after(Duration::ZERO, RECENT_TICKS as i64 + 1).0, 64);
        assert_eq!(
            behind_after(hour, RECENT_MAX as i64 + 2),
            (0, None),
            "past RECENT_MAX: conflated, memory stays bounded"
        );
    }

    #[test]
    fn a_single_feed_going_stale_and_back_changes_only_the_status() {
        let index = Index::new(&["only".into()], Arc::new(Metrics::new()));
        let entry = index.register("X".into());
        index.apply(tick(0, 100));
        index.apply(status(0, Status::Stale));
        let p = entry.read().unwrap();
        assert_eq!((p.seq, p.quote.status), (1, Status::Stale));
        index.apply(tick(0, 101)); // a tick means the upstream answers again
        let p = entry.read().unwrap();
        assert_eq!((p.seq, p.quote.status), (2, Status::Live));
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    /// The throttled tier's sample is the state at the start of the current interval: a change
    /// shows only from the next interval on, several changes in one interval show as the last
    /// of them, and an interval without a change keeps showing the latest state.
    #[test]
    fn the_sample_is_the_state_when_the_interval_began() {
        let mut st = SymbolState::default();
        let bid = |p: PastState| p.entry.map(|e| e.quote.bid.unwrap().to_string());
        let change = |st: &mut SymbolState, seq: u64, at_ms: i64| {
            st.seq = seq;
            st.quote.bid = Some(rust_decimal::Decimal::new(seq as i64, 2));
            st.sample(1000, at_ms);
        };
        let at = |st: &SymbolState, now_ms| st.sampled.as_deref().unwrap().at(1000, now_ms);
        change(&mut st, 100, 10_200);
        let p = at(&st, 10_300);
        assert_eq!(
            (bid(p), p.next_end_ms),
            (None, Some(11_000)),
            "no state before it"
        );
        assert_eq!(bid(at(&st, 11_000)), Some("1.00".into()));
        change(&mut st, 101, 11_100);
        change(&mut st, 102, 11_900);
        let p = at(&st, 11_950);
        assert_eq!((bid(p), p.next_end_ms), (Some("1.00".into()), Some(12_000)));
        let p = at(&st, 12_000);
        assert_eq!((bid(p), p.next_end_ms), (Some("1.02".into()), None));
        assert_eq!(bid(at(&st, 99_000)), Some("1.02".into()), "quiet intervals");
        // A change after quiet intervals: the interval it falls in begins with the state before.
        change(&mut st, 103, 99_500);
        assert_eq!(bid(at(&st, 99_600)), Some("1.02".into()));
        assert_eq!(bid(at(&st, 100_000)), Some("1.03".into()));
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    /// The delayed tier's memory, as docs/protocol.md states it: one entry per symbol per
    /// granularity bucket in which it changed, kept for the delay.
    #[test]
    fn history_keeps_the_latest_state_per_bucket_for_the_delay() {
        assert_eq!(
            std::mem::size_of::<HistoryEntry>(),
            152,
            "docs/protocol.md quotes this"
        );
        let history = HistoryConfig {
            keep_ms: 1000,
            granularity_ms: 100,
        };
        let mut st = SymbolState::default();
        for ms in (0..3000).step_by(10) {
            st.seq += 1;
            st.remember(history, 1_000_000 + ms);
        }
        // 3 s of ticks every 10 ms: one entry per 100 ms bucket, for the last second and a bucket.
        assert!(st.history.len() <= 13, "{}", st.history.len());
        assert_eq!(st.history.back().unwrap().seq, 300);
        let w: Vec<i64> = st.history.iter().map(|e| e.bucket_ms).collect();
        assert!(w.windows(2).all(|p| p[1] - p[0] == 100), "{w:?}");
    }
}
