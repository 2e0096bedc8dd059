//! Stage 3, the symbol index: symbol → latest quote, `seq`, status and subscribers; applies each
//! tick and fans it out.
//!
//! Owns: `Index` and the change log (here), a symbol's entry with failover and subscriptions
//! (`entry.rs`), each worker's copy and catch-up ring (`mirror.rs`), the tiers' history
//! (`history.rs`). May not touch sessions, sockets or HTTP: it hands changes to `fanout` links
//! and never waits for a connection.
//!
//! Concurrency: one ingest task applies feed events in order; connection tasks on the actix workers
//! read quotes and change subscriptions. Each symbol has two std mutexes, never held across an
//! `.await` and never nested with a connection's lock the other way round:
//! - `state` (quote, seq, the ring of recent changes) is held to apply a tick, which includes
//!   encoding its shared update once (about a microsecond), and for a copy out: into a worker
//!   shard's `Mirror` once per change, which that worker's connections then read (taken before
//!   `state`, by the shard's thread only);
//! - `links` (one per worker shard with subscribers, `fanout`) is held while the ingest task
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

mod bars;
mod entry;
mod history;
mod mirror;
mod trades;

pub use bars::{interval_ms, Bar, BarInterval, BarsConfig, Series, MAX_BAR_INTERVALS};
use entry::SymbolState;
pub use entry::{Subscription, SymbolEntry};
use history::Sampled;
pub use history::{HistoryConfig, HistoryEntry, PastState};
pub use mirror::{CatchUp, Published, Recent};
pub use trades::{Lost, Print, Tape, TapeCursor, TradesConfig};

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{IntCounter, IntGauge};

use crate::feed::FeedEvent;
use crate::metrics::{FeedCounters, Metrics};
use crate::model::{BusPrints, FeedId, Quote, Status, Symbol, Tick};
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

pub struct Index {
    symbols: DashMap<Symbol, Arc<SymbolEntry>>,
    feeds: Vec<FeedCounters>,
    /// `quotegw_subscriptions`, kept by the subscriber lists themselves (see `Subscription`).
    subscriptions: IntGauge,
    history: Option<HistoryConfig>,
    sample_ms: Option<i64>,
    keep_for: Duration,
    changes: Option<Arc<ChangeLog>>,
    market: Arc<Market>,
    /// Per feed, the latest `ts` of its accepted ticks: the clock that ends its symbols' bars.
    clocks: Vec<AtomicI64>,
    /// Per feed, the clock at the last sweep for ended bars (`close_bars`; the ingest task only).
    swept: Mutex<Vec<i64>>,
}

/// What the index builds from trades (PROTOCOL.md, "Trades and bars"): each symbol's tape
/// (`trades.rs`) and bars (`bars.rs`), and how a feed's clock ends bars.
pub struct Market {
    pub trades_keep: usize,
    pub intervals: Vec<BarInterval>,
    pub bars_keep: usize,
    pub grace_ms: i64,
    /// Per feed (`FeedId` order): whether its ticks are stamped by the wall clock (simulated,
    /// polled, a restamped replay), so that the wall clock ends its bars too, `grace_ms` late.
    pub wall_clock: Vec<bool>,
    finalized: Vec<IntCounter>,
    late: IntCounter,
}

impl Market {
    fn new(
        trades: &TradesConfig,
        bars: &[BarInterval],
        bars_config: &BarsConfig,
        wall_clock: Vec<bool>,
        metrics: &Metrics,
    ) -> Market {
        Market {
            trades_keep: trades.keep,
            intervals: bars.to_vec(),
            bars_keep: bars_config.keep,
            grace_ms: bars_config.grace_ms as i64,
            wall_clock,
            finalized: bars
                .iter()
                .map(|i| metrics.bars_finalized.with_label_values(&[&i.name]))
                .collect(),
            late: metrics.bar_late_trades.clone(),
        }
    }

    /// The interval called `name`, by its place in `intervals`.
    pub fn interval(&self, name: &str) -> Option<usize> {
        self.intervals.iter().position(|i| i.name == name)
    }

    /// The offered intervals, for messages: `1s, 1m, 5m`.
    pub fn interval_names(&self) -> String {
        if self.intervals.is_empty() {
            return "none ([bars] intervals is empty: this gateway builds no bars)".into();
        }
        let names: Vec<&str> = self.intervals.iter().map(|i| i.name.as_str()).collect();
        names.join(", ")
    }
}

impl Index {
    /// Builds tapes and bars as configured: `wall_clock` per feed, in `FeedId` order (see
    /// `Market`). Set before any symbol is registered; `Index::new` builds the defaults with
    /// every feed on the wall clock.
    pub fn trade_market(
        &mut self,
        trades: &TradesConfig,
        bars: &[BarInterval],
        bars_config: &BarsConfig,
        wall_clock: Vec<bool>,
        metrics: &Metrics,
    ) {
        self.market = Arc::new(Market::new(trades, bars, bars_config, wall_clock, metrics));
    }

    pub fn market(&self) -> &Arc<Market> {
        &self.market
    }

    /// Ends the bars whose interval is over on their feed's clock: its latest tick's `ts`, or for
    /// a wall-clock feed the wall clock `grace_ms` ago, whichever is later. Called by the ingest
    /// task after every batch of events and every 100 ms; it walks the symbols only when some
    /// feed's clock has entered a new period (the intervals' greatest common divisor) since the
    /// last walk (at most once per period and feed: 10,000 symbols cost about a millisecond a
    /// second).
    pub fn close_bars(&self, now_ms: i64) {
        let m = &self.market;
        // Every interval's boundaries are boundaries of their greatest common divisor.
        let Some(period) = m.intervals.iter().map(|i| i.ms).reduce(gcd) else {
            return;
        };
        let clock = |feed: usize| {
            let ticked = self
                .clocks
                .get(feed)
                .map_or(i64::MIN, |c| c.load(Ordering::Relaxed));
            if m.wall_clock.get(feed).copied().unwrap_or(false) {
                ticked.max(now_ms - m.grace_ms)
            } else {
                ticked
            }
        };
        {
            let mut swept = lock(&self.swept);
            let mut due = false;
            for (feed, last) in swept.iter_mut().enumerate() {
                let c = clock(feed);
                if c.div_euclid(period) > last.div_euclid(period) {
                    due = true;
                }
                *last = (*last).max(c);
            }
            if !due {
                return;
            }
        }
        for e in self.symbols.iter() {
            e.value()
                .close_bars(&|feed: FeedId| clock(usize::from(feed)));
        }
    }

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
            market: Arc::new(Market::new(
                &TradesConfig::default(),
                &BarsConfig::default()
                    .parsed()
                    .expect("the default intervals parse"),
                &BarsConfig::default(),
                vec![true; feeds.len()],
                &metrics,
            )),
            clocks: feeds.iter().map(|_| AtomicI64::new(i64::MIN)).collect(),
            swept: Mutex::new(vec![i64::MIN; feeds.len()]),
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
                        bars: vec![Series::default(); self.market.intervals.len()],
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
                    bars_queued: Default::default(),
                    changes: self.changes.clone(),
                    market: self.market.clone(),
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
            FeedEvent::Bars { feed, bars } => self
                .lookup_or_register(&bars.symbol)
                .apply_bars(feed, &bars),
            FeedEvent::Delivered(health) => health
                .delivered
                .store(true, std::sync::atomic::Ordering::Release),
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
    pub fn seed(&self, symbol: Symbol, seq: u64, quote: Quote) -> u64 {
        let entry = self.register(symbol);
        let mut st = lock(&entry.state);
        if st.seq == 0 {
            st.seq = seq;
            st.quote = Quote {
                status: Status::Stale,
                ..quote
            };
            // A change clients (and a scale-out publisher, as `ver`) see: versions start at 1
            // (found from outside: a seeded symbol went out with `ver` 0, which edges refuse).
            st.version += 1;
            st.recent.clear();
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
        st.version
    }

    /// (scale-out ingest taking the lease) a symbol's last state as the previous leader published
    /// it: this index's `seq` for the symbol goes on above it, so that no client of an edge is ever
    /// sent a lower `seq` than it holds. A symbol this index has not ticked is seeded (`seed`); one
    /// it has is published again as the next `seq` after the cached one.
    /// Its prints on the bus are counted on from `prints`, the previous leader's count, unless
    /// `own` (the previous leader was this ingest: its own count goes on). Returns the symbol's
    /// `version` once it goes on: later changes are the new leader's to publish.
    pub fn continue_after(
        &self,
        symbol: Symbol,
        seq: u64,
        quote: Quote,
        prints: BusPrints,
        own: bool,
    ) -> u64 {
        match self.register(symbol.clone()).go_on_after(seq, prints, own) {
            Some(version) => version,
            None => self.seed(symbol, seq, quote),
        }
    }

    /// (scale-out ingest taking the lease) a symbol's bars as the previous leader published them,
    /// which its own go on from: every edge keeps the bars it was sent.
    pub fn adopt_bars(&self, bars: &crate::model::BusBars) {
        if let Some(entry) = self.lookup(&bars.symbol) {
            let feed = lock(&entry.state).active.unwrap_or(0);
            entry.apply_bars(feed, bars);
        }
    }

    /// (scale-out edge) a symbol's whole state from the bus: kept if it is newer than what the
    /// entry has, by `(term, version)`; a duplicate or a late message changes nothing.
    fn apply_state(&self, feed: FeedId, state: &crate::model::BusState) {
        let counters = self.counters(feed);
        if let Some(c) = counters {
            c.received.inc();
        }
        let printed = self
            .lookup_or_register(&state.symbol)
            .apply_state(feed, state);
        if let (Some(c), true) = (counters, printed) {
            c.trades.inc();
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
        if let Some(clock) = self.clocks.get(usize::from(tick.feed)) {
            clock.fetch_max(tick.ts, Ordering::Relaxed);
        }
        let published = self.lookup_or_register(&tick.symbol).apply(&tick);
        if let Some(c) = counters {
            if !published {
                c.standby.inc();
            } else if tick.trade.is_some() {
                c.trades.inc();
            }
        }
    }

    fn set_status(&self, feed: FeedId, symbol: &str, status: Status) {
        if let Some(entry) = self.lookup(symbol) {
            entry.set_feed_status(feed, status);
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
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
    /// Changes merged into a symbol's latest state because `states` was full (a metric).
    merged: std::sync::atomic::AtomicU64,
}

/// What a `ChangeLog`'s consumer takes in one read.
#[derive(Default)]
pub struct Changes {
    /// Each change whole, in the order they happened.
    pub states: Vec<Change>,
    /// Symbols changed while `states` was full, or all of them (`mark_all`), each once: publish
    /// their latest state (`SymbolEntry::bus_change`), after `states`.
    pub behind: Vec<Arc<SymbolEntry>>,
    /// Symbols whose bars changed, each once (always conflated: the consumer reads them whole,
    /// `SymbolEntry::bus_bars`).
    pub bars: Vec<Arc<SymbolEntry>>,
}

impl Changes {
    /// Its symbols are no longer listed: a change from now on lists them again.
    fn unlist(&self) {
        for e in &self.behind {
            e.queued.store(false, Ordering::Release);
        }
        for e in &self.bars {
            e.bars_queued.store(false, Ordering::Release);
        }
    }
}

/// One change of a symbol's state, as published to clients.
pub struct Change {
    pub symbol: Symbol,
    pub version: u64,
    pub seq: u64,
    pub quote: Quote,
    pub prints: BusPrints,
}

/// How many changes a `ChangeLog` keeps whole between two reads of its consumer.
pub const CHANGE_LOG_CAPACITY: usize = 65_536;

impl ChangeLog {
    /// Called under the symbol's state lock, so a symbol's changes are listed in version order.
    fn record(&self, entry: &Arc<SymbolEntry>, st: &SymbolState) {
        let mut pending = lock(&self.pending);
        if pending.states.len() < CHANGE_LOG_CAPACITY {
            pending.states.push(st.change(&entry.symbol));
        } else {
            self.merged.fetch_add(1, Ordering::Relaxed);
            if !entry.queued.swap(true, Ordering::AcqRel) {
                pending.behind.push(entry.clone());
            }
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// The symbol's bars changed (called under its state lock).
    fn bars_changed(&self, entry: &Arc<SymbolEntry>) {
        if !entry.bars_queued.swap(true, Ordering::AcqRel) {
            lock(&self.pending).bars.push(entry.clone());
            self.notify.notify_one();
        }
    }

    /// Drops every change listed so far but those `keep` says (a consumer that will read every
    /// symbol anew, `mark_all`).
    pub fn discard_but(&self, keep: impl Fn(&Change) -> bool) {
        let mut dropped = std::mem::take(&mut *lock(&self.pending));
        dropped.unlist();
        let kept: Vec<Change> = dropped.states.drain(..).filter(|c| keep(c)).collect();
        if !kept.is_empty() {
            let mut pending = lock(&self.pending);
            // Ahead of anything recorded meanwhile: a symbol's changes stay in version order.
            let later = std::mem::replace(&mut pending.states, kept);
            pending.states.extend(later);
        }
    }

    /// How many changes were merged into a symbol's latest state so far (the log was full).
    pub fn merged(&self) -> u64 {
        self.merged.load(Ordering::Relaxed)
    }

    /// Every symbol, as changed: a consumer that must send everything again (a new NATS server).
    pub fn mark_all(&self, index: &Index) {
        let mut pending = lock(&self.pending);
        for e in index.symbols.iter() {
            if !e.queued.swap(true, Ordering::AcqRel) {
                pending.behind.push(e.value().clone());
            }
            if !e.bars_queued.swap(true, Ordering::AcqRel) {
                pending.bars.push(e.value().clone());
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
            if !out.states.is_empty() || !out.behind.is_empty() || !out.bars.is_empty() {
                out.unlist();
                return;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod sample_tests;
#[cfg(test)]
mod tests;
