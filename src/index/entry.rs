//! One symbol's entry: the latest quote, `seq`, status and failover between its sources
//! (`SymbolState`), its subscribers' links per worker, and a connection's `Subscription` to it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use prometheus::IntGauge;

use crate::delta::{encode_status, encode_trade, encode_update};
use crate::fanout::{ConnPending, Link};
use crate::frame::one_message_frame;
use rust_decimal::Decimal;

use crate::model::{
    BusBars, BusPrints, BusSeries, BusState, BusTrade, FeedId, Quote, Status, Symbol, Tick, Trade,
};
use crate::sync::lock;

use super::bars::{Added, Bar, Series};
use super::history::{HistoryConfig, HistoryEntry, PastState, Sampled};
use super::mirror::{read_from, Head, Mirror, Published, Recent, ShardLink};
use super::trades::{Lost, Print, Tape, TapeCursor};
use super::{Change, ChangeLog, Market, RECENT_MAX, RECENT_TICKS};

/// Restarted sources, logged: each closes the clients that held the symbol with 1012, which an
/// operator should be able to trace (a handful a second at most: a restart is every symbol at once).
static RESTARTS_LOG: crate::log_limit::LogLimiter = crate::log_limit::LogLimiter::new(5, 1);

pub struct SymbolEntry {
    pub symbol: Symbol,
    pub(super) state: Mutex<SymbolState>,
    /// One link per worker shard with subscribers to this symbol (`fanout`): a change is handed
    /// to each worker once, and the worker marks its own connections.
    pub(super) links: Mutex<Vec<ShardLink>>,
    /// +1 for every change of `state` a reader may see (under the state lock), so that a shard's
    /// `Mirror` knows without the lock whether it is current.
    pub(super) generation: AtomicU64,
    /// Every subscriber (the gauge and the invariants), and those the fan-out marks (whether a
    /// change's shared bytes are worth encoding), read without the lock.
    pub(super) subscriber_count: AtomicUsize,
    pub(super) live_count: AtomicUsize,
    pub(super) subscriptions: IntGauge,
    pub(super) history: Option<HistoryConfig>,
    /// The throttled tier's interval, when it is sampled (`Index::sample_every`).
    pub(super) sample_ms: Option<i64>,
    /// Listed in the `ChangeLog` and not yet read by its consumer.
    pub(super) queued: std::sync::atomic::AtomicBool,
    /// Its bars listed in the `ChangeLog` and not yet read.
    pub(super) bars_queued: std::sync::atomic::AtomicBool,
    /// Where every change goes (a scale-out ingest), besides this entry's subscribers.
    pub(super) changes: Option<Arc<ChangeLog>>,
    /// How trades become the tape and bars.
    pub(super) market: Arc<Market>,
}

#[derive(Default)]
pub(super) struct SymbolState {
    pub(super) seq: u64,
    /// How many times the symbol's source restarted with a lower `seq` (a scale-out ingest that
    /// lost its state): a connection that saw another count must start over (close 1012).
    pub(super) restarts: u64,
    /// (scale-out edge) the newest `(term, version)` applied from the bus.
    pub(super) remote: Option<(u64, u64)>,
    /// +1 for every change a client is told about: each tick (with its `seq`) and each status-only
    /// change (same `seq`). Connections catch up by version, so a status flip between two ticks
    /// keeps its place among them.
    pub(super) version: u64,
    pub(super) quote: Quote,
    /// When the latest tick entered the index: the start of `quotegw_tick_to_write_seconds`.
    pub(super) tick_in: Option<Instant>,
    /// The changes of the last versions (`version - recent.len() + 1 ..= version`), each encoded
    /// once for every subscriber; empty when the latest change had no subscriber.
    pub(super) recent: VecDeque<Recent>,
    /// How long a change stays in `recent` past the first `RECENT_TICKS` (`Index::keep_catch_up_for`).
    pub(super) keep_for: Duration,
    /// The latest state per time bucket, oldest first (only with a `HistoryConfig`).
    pub(super) history: VecDeque<HistoryEntry>,
    /// The throttled tier's sample (only with `Index::sample_every`).
    pub(super) sampled: Option<Box<Sampled>>,
    /// Every feed that has ticked this symbol, in priority (`FeedId`) order; usually one.
    pub(super) sources: Vec<Source>,
    /// The feed whose quote is published; kept while every source is stale, so that the same feed
    /// recovering is not a switch.
    pub(super) active: Option<FeedId>,
    /// The recent trade prints (`trades.rs`).
    pub(super) tape: Tape,
    /// One series of bars per configured interval (`bars.rs`, `Market::intervals`).
    pub(super) bars: Vec<Series>,
    /// (scale-out ingest) the prints as published on the bus: counted on from the previous
    /// leader's count when this ingest takes the lease, so that edges see one numbering.
    pub(super) bus_prints: BusPrints,
    /// (scale-out ingest) +1 for every change of the bars (`ver` of the bars message).
    pub(super) bars_version: u64,
    /// (scale-out edge) the ingest's count of prints after the last state that counted them, and
    /// the seq of its last print: what the next state's count is checked against.
    pub(super) bus_in: Option<(u64, u64)>,
    /// (scale-out edge) the newest `(term, ver)` of bars applied from the bus.
    pub(super) bars_remote: Option<(u64, u64)>,
}

/// One feed's view of a symbol: created by the feed's first tick for it, never by a status event.
pub(super) struct Source {
    pub(super) feed: FeedId,
    pub(super) quote: Quote,
    /// False from the feed saying its data for the symbol is stale (an upstream outage) until its
    /// next tick: only a tick shows the feed has current prices again.
    pub(super) fresh: bool,
}

impl SymbolState {
    pub(super) fn head(&self) -> Head {
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
    pub(super) fn source_for_tick(&mut self, feed: FeedId) -> &mut Source {
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

    pub(super) fn source(&mut self, feed: FeedId) -> Option<&mut Source> {
        self.sources.iter_mut().find(|s| s.feed == feed)
    }

    /// The feed that should be published: the first fresh source that is the active one or whose
    /// view is whole, covering every field the published quote has. A switch publishes the new
    /// source's view as it is, and a standby that has sent only part of a quote (a replay's first
    /// lines, a feed that joined late) would blank the rest for every client; until its view is
    /// whole it stays a standby, and with no other fresh source the symbol is `stale` with the
    /// last prices it had.
    pub(super) fn preferred(&self) -> Option<&Source> {
        self.sources
            .iter()
            .find(|s| s.fresh && (self.active == Some(s.feed) || s.quote.covers(&self.quote)))
    }

    /// Publishes a new quote as the next `seq`, encoding the shared update (and the status change it
    /// carries, if any) when anyone listens.
    pub(super) fn publish(&mut self, symbol: &str, now: Quote, listeners: bool) {
        let seq = self.seq + 1;
        self.publish_at(symbol, now, seq, listeners);
    }

    /// Publishes a quote at `seq`: the next one for a tick; for a state from a scale-out ingest,
    /// the ingest's (ticks it merged before this one count in `conflated`, and a lower `seq` is a
    /// restarted source, counted in `restarts`).
    pub(super) fn publish_at(&mut self, symbol: &str, now: Quote, seq: u64, listeners: bool) {
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
    pub(super) fn publish_status(&mut self, symbol: &str, status: Status, listeners: bool) {
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
    pub(super) fn remember(&mut self, history: HistoryConfig, now_ms: i64) {
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
    pub(super) fn sample(&mut self, interval_ms: i64, now_ms: i64) {
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

    /// The change just published, as a scale-out publisher sends it: with the prints counted so far
    /// and, when this change's tick was the latest print, that print.
    pub(super) fn change(&self, symbol: &Symbol) -> Change {
        let mut prints = self.bus_prints;
        if prints.last_seq != self.seq {
            prints.trade = None;
        }
        Change {
            symbol: symbol.clone(),
            version: self.version,
            seq: self.seq,
            quote: self.quote,
            prints,
        }
    }

    /// Counts a change as the next version and keeps its encoding in the ring. With no subscriber
    /// nobody would read the bytes; the ring then restarts so that it stays contiguous up to
    /// `version`.
    pub(super) fn record(&mut self, keep: bool, change: impl FnOnce() -> Recent) {
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

impl SymbolEntry {
    /// Applies a normalized tick; false when its feed is a standby for this symbol (nothing was
    /// published).
    pub(super) fn apply(self: &Arc<Self>, tick: &Tick) -> bool {
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
            if let Some(trade) = tick.trade {
                self.trade(&mut st, trade, tick.ts, tick.feed);
            }
            self.published(&mut st);
        }
        self.fan_out();
        true
    }

    /// A published tick's trade print, under the state lock: onto the tape and into each
    /// interval's bar.
    fn trade(self: &Arc<Self>, st: &mut SymbolState, trade: Trade, ts: i64, feed: FeedId) {
        let m = &self.market;
        // normalize() rejected a size below 0 and of_fields a size of 0.
        let size = trade.size as u64;
        let seq = st.seq;
        let now_ms = crate::model::now_ms();
        self.print(st, trade.price, size, ts, now_ms);
        let prev_seq = st.bus_prints.last_seq;
        st.bus_prints = BusPrints {
            count: st.bus_prints.count + 1,
            last_seq: seq,
            trade: Some(BusTrade {
                price: trade.price,
                size,
                prev_seq,
            }),
        };
        let mut changed = false;
        for (i, (series, interval)) in st.bars.iter_mut().zip(&m.intervals).enumerate() {
            let added = series.add(
                interval.ms,
                m.bars_keep,
                ts,
                trade.price,
                size,
                seq,
                feed,
                now_ms,
            );
            match added {
                Added::Taken { ended } => {
                    m.finalized[i].inc_by(ended);
                    changed = true;
                }
                Added::Late => m.late.inc(),
            }
        }
        if changed {
            self.bars_changed(st);
        }
    }

    /// A print at the symbol's current `seq` onto the tape, encoded once for every subscriber and
    /// `GET /v1/trades`.
    fn print(&self, st: &mut SymbolState, price: Decimal, size: u64, ts: i64, now_ms: i64) {
        let seq = st.seq;
        let mut message = String::with_capacity(112);
        encode_trade(&mut message, &self.symbol, seq, ts, price, size);
        st.tape.push(
            Print {
                seq,
                ts,
                at_ms: now_ms,
                message: ByteString::from(message),
            },
            self.market.trades_keep,
        );
    }

    /// The bars changed: a new version for a scale-out publisher, which sends them.
    fn bars_changed(self: &Arc<Self>, st: &mut SymbolState) {
        st.bars_version += 1;
        if let Some(changes) = &self.changes {
            changes.bars_changed(self);
        }
    }

    /// Ends the bars whose interval is over by their feed's clock (`Index::close_bars`), and tells
    /// the subscribers when one did.
    pub(super) fn close_bars(self: &Arc<Self>, clock: &dyn Fn(FeedId) -> i64) {
        {
            let mut st = lock(&self.state);
            let m = &self.market;
            let now_ms = crate::model::now_ms();
            let mut ended = 0;
            for (i, (series, interval)) in st.bars.iter_mut().zip(&m.intervals).enumerate() {
                if let Some(bar) = series.open {
                    let n = series.close_until(interval.ms, m.bars_keep, clock(bar.feed), now_ms);
                    m.finalized[i].inc_by(n);
                    ended += n;
                }
            }
            if ended == 0 {
                return;
            }
            self.bars_changed(&mut st);
            self.generation.fetch_add(1, Ordering::Release);
        }
        self.fan_out();
    }

    /// (scale-out ingest) the latest change as the publisher sends it (`None` before the first
    /// tick): for a symbol listed behind, and for the reconcile.
    pub fn bus_change(&self) -> Option<Change> {
        let st = lock(&self.state);
        (st.seq > 0).then(|| st.change(&self.symbol))
    }

    /// (scale-out ingest) the bars as the publisher sends them (`None` before any): per interval
    /// the open bar and the final bars after the first `sent[i]`, the latest one at least (at most
    /// `most`), with `sent` brought up to date; an empty `sent` gets the latest `most` of each (a
    /// full message).
    pub fn bus_bars(&self, sent: &mut Vec<u64>, most: usize) -> Option<(u64, Vec<BusSeries>)> {
        let st = lock(&self.state);
        if st.bars_version == 0 {
            return None;
        }
        sent.resize(st.bars.len(), 0);
        let series = st
            .bars
            .iter()
            .zip(&self.market.intervals)
            .zip(sent.iter_mut())
            .map(|((s, interval), sent)| {
                // The latest final bar always goes along: the cache (one message per symbol) then
                // always has it, for an edge that reloads (its message may have been lost).
                let from = (*sent).min(s.finals_total.saturating_sub(1));
                let finals: Vec<Bar> = s.finals_after(from).copied().collect();
                *sent = s.finals_total;
                BusSeries {
                    interval: interval.name.clone(),
                    open: s.open,
                    finals: finals[finals.len().saturating_sub(most)..].to_vec(),
                }
            })
            .collect();
        Some((st.bars_version, series))
    }

    /// (scale-out edge) a symbol's bars from the bus, applied as published when newer than what
    /// the entry has by `(term, ver)`: the edge builds no bars of its own, so every edge sends the
    /// ingest's. An interval this gateway does not offer is left out. (A scale-out ingest taking
    /// the lease takes its predecessor's so, `Index::adopt_bars`.)
    pub(super) fn apply_bars(self: &Arc<Self>, feed: FeedId, bars: &BusBars) {
        {
            let mut st = lock(&self.state);
            let key = (bars.term, bars.version);
            if st.bars_remote.is_some_and(|held| key < held) {
                return; // late or reordered
            }
            st.bars_remote = Some(key);
            let m = &self.market;
            let now_ms = crate::model::now_ms();
            let mut changed = false;
            for bus in &bars.series {
                let Some(i) = m.interval(&bus.interval) else {
                    continue;
                };
                let series = &mut st.bars[i];
                let (open, total) = (series.open, series.finals_total);
                let taken = series.adopt(bus, m.bars_keep, feed, now_ms);
                m.finalized[i].inc_by(taken);
                changed |= series.finals_total != total || series.open != open;
            }
            if !changed {
                return;
            }
            self.generation.fetch_add(1, Ordering::Release);
        }
        self.fan_out();
    }

    /// The name of bar interval `i` (`Market::intervals`).
    pub fn interval_name(&self, i: usize) -> &str {
        self.market.intervals.get(i).map_or("", |i| i.name.as_str())
    }

    /// The final bars of interval `i` numbered `seen + 1 ..= upto`, those still kept (a
    /// connection catching up on final bars to the count its mirror published; the mirror keeps
    /// only the open ones). The entry may have finalized more since: those go with the next news.
    pub fn finals_between(&self, i: usize, seen: u64, upto: u64) -> Vec<Bar> {
        let st = lock(&self.state);
        st.bars
            .get(i)
            .map(|s| s.finals_between(seen, upto).copied().collect())
            .unwrap_or_default()
    }

    /// (the delayed tier) the prints after `cursor` that the index took by `cutoff_ms`, what was
    /// lost before them, the cursor after them, and when the next one becomes due.
    pub fn trades_until(&self, cursor: TapeCursor, cutoff_ms: i64) -> DelayedPrints {
        let st = lock(&self.state);
        let (lost, prints, next) = st.tape.since_until(cursor, cutoff_ms);
        let mut after = cursor;
        if let Some(l) = lost {
            after.next += l.count;
            after.seen_seq = l.to_seq;
        }
        let out: Vec<(u64, ByteString)> =
            prints.iter().map(|p| (p.seq, p.message.clone())).collect();
        after.next += out.len() as u64;
        if let Some((seq, _)) = out.last() {
            after.seen_seq = *seq;
        }
        (lost, out, after, next)
    }

    /// (the delayed tier) where a reader that sees the symbol as it was at `cutoff_ms`, at `seq`,
    /// starts: its tape cursor, and per interval how many final bars it has seen.
    pub fn market_at(&self, cutoff_ms: i64, seq: u64) -> (TapeCursor, Vec<u64>) {
        let st = lock(&self.state);
        (
            st.tape.cursor_at_time(cutoff_ms, seq),
            st.bars.iter().map(|s| s.finals_by(cutoff_ms)).collect(),
        )
    }

    /// (the delayed tier) the final bars of interval `i` after the first `seen` that had ended by
    /// `cutoff_ms`, and when the next one ended (due then, delayed).
    pub fn finals_until(&self, i: usize, seen: u64, cutoff_ms: i64) -> (Vec<Bar>, Option<i64>) {
        let st = lock(&self.state);
        let Some(s) = st.bars.get(i) else {
            return (Vec::new(), None);
        };
        let mut out = Vec::new();
        for b in s.finals_after(seen) {
            if b.ended_ms > cutoff_ms {
                return (out, Some(b.ended_ms));
            }
            out.push(*b);
        }
        (out, None)
    }

    /// `GET /v1/bars`: the last `limit` final bars of interval `i`, oldest first, and the open one.
    /// With `cutoff_ms` (the delayed tier's past): only the final bars that had ended by then, and
    /// no open bar (how it stood then is not kept).
    pub fn bars(&self, i: usize, limit: usize, cutoff_ms: Option<i64>) -> (Vec<Bar>, Option<Bar>) {
        let st = lock(&self.state);
        let Some(s) = st.bars.get(i) else {
            return (Vec::new(), None);
        };
        let upto = match cutoff_ms {
            Some(c) => s.finals.partition_point(|b| b.ended_ms <= c),
            None => s.finals.len(),
        };
        let open = if cutoff_ms.is_some() { None } else { s.open };
        let skip = upto.saturating_sub(limit);
        (s.finals.range(skip..upto).copied().collect(), open)
    }

    /// `GET /v1/trades`: the last `limit` prints' messages taken by `cutoff_ms` (the delayed tier's
    /// past; `i64::MAX` for all), oldest first.
    pub fn trades(&self, limit: usize, cutoff_ms: i64) -> Vec<ByteString> {
        let st = lock(&self.state);
        st.tape
            .last_by(limit, cutoff_ms)
            .map(|p| p.message.clone())
            .collect()
    }

    /// After every change, under the state lock: keeps it in the history (delayed tier) and the
    /// sample (throttled tier), and lists it for a scale-out ingest's publisher.
    pub(super) fn published(self: &Arc<Self>, st: &mut SymbolState) {
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
    pub(super) fn set_feed_status(self: &Arc<Self>, feed: FeedId, status: Status) {
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

    /// (scale-out ingest taking the lease) publishes the quote this index holds again, as the next
    /// `seq` after `cached` when it is not above it already, and returns the version then; `None`
    /// when the symbol has not ticked here (nothing to go on from).
    pub(super) fn go_on_after(
        self: &Arc<Self>,
        cached: u64,
        prints: BusPrints,
        own: bool,
    ) -> Option<u64> {
        let listeners = self.live_count.load(Ordering::Relaxed) > 0;
        let version;
        {
            let mut st = lock(&self.state);
            // The bus counts prints on from the previous leader's count: another ingest's prints
            // from before were never published. This ingest's own (it led before) go on, counted.
            if !own || st.seq == 0 {
                st.bus_prints = BusPrints {
                    trade: None,
                    ..prints
                };
            }
            if st.seq == 0 {
                return None;
            }
            if st.seq > cached {
                return Some(st.version);
            }
            let quote = st.quote;
            st.publish_at(&self.symbol, quote, cached + 1, listeners);
            self.published(&mut st);
            version = st.version;
        }
        self.fan_out();
        Some(version)
    }

    /// (scale-out edge) applies a state from the bus, publishing it when it is news. The bus's
    /// source is this feed's source, so staleness (`set_feed_status`) works as for any feed; a
    /// state equal to the one held makes a stale source current again (a reload after an outage).
    /// True when the state brought a print.
    pub(super) fn apply_state(self: &Arc<Self>, feed: FeedId, state: &BusState) -> bool {
        let listeners = self.live_count.load(Ordering::Relaxed) > 0;
        let printed;
        {
            let mut st = lock(&self.state);
            let key = (state.term, state.version);
            match st.remote {
                Some(held) if key < held => return false, // late or reordered
                Some(held) if key == held => {
                    // A duplicate, or the same state again after an outage or a load as stale
                    // (an edge that has heard no leader yet): only its status can be news.
                    let source = st.source_for_tick(feed);
                    source.fresh = true;
                    source.quote.status = state.quote.status;
                    if st.quote.status == state.quote.status {
                        return false;
                    }
                    st.publish_status(&self.symbol, state.quote.status, listeners);
                    printed = false;
                }
                held => {
                    let restarted = held.is_some_and(|(term, _)| state.term > term);
                    if state.seq < st.seq && !restarted {
                        return false; // an older state under the same term: cannot be newer
                    }
                    st.remote = Some(key);
                    let source = st.source_for_tick(feed);
                    source.quote = state.quote;
                    source.fresh = true;
                    st.active = Some(feed);
                    if state.seq < st.seq {
                        if let Some(suppressed) = RESTARTS_LOG.admit(Instant::now()) {
                            tracing::warn!(
                                symbol = %self.symbol,
                                was = st.seq,
                                now = state.seq,
                                suppressed,
                                "the quote source restarted (a lower seq under a new term): clients holding the symbol are closed with 1012"
                            );
                        }
                    }
                    let mut news = true;
                    if state.seq != st.seq {
                        st.publish_at(&self.symbol, state.quote, state.seq, listeners);
                    } else if state.quote.same_as(&st.quote) {
                        news = false;
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
                    // After the publish: a print is at the symbol's current seq.
                    printed = self.follow_prints(&mut st, state);
                    if !news && !printed {
                        return false;
                    }
                }
            }
            self.published(&mut st);
        }
        self.fan_out();
        printed
    }

    /// (scale-out edge) the prints a state from the bus accounts for: its own print onto the tape,
    /// and the prints the ingest counted that never arrived (their states were merged while its
    /// publisher was behind) as skipped, so that readers are told exactly what they lost. True when
    /// the state brought a print. Every state here is newer than the last (`apply_state`), so a
    /// count below the one held is a source that started over (a new leader that does not go on
    /// from it), or follows a count that was wrong: the count goes on from the new one, nothing
    /// counted lost. So is a gap that more prints than ticks would need: it cannot be true.
    fn follow_prints(&self, st: &mut SymbolState, state: &BusState) -> bool {
        let p = state.prints;
        if p.count == 0 {
            return false;
        }
        // The prints counted before this state's own, and the seq of the last of them.
        let before = p.count - u64::from(p.trade.is_some());
        let to_seq = p.trade.map_or(p.last_seq, |t| t.prev_seq);
        let expected = match st.bus_in {
            Some((n, _)) if p.count == n => return false, // had them
            // The gap's prints each have a seq after the last print held, up to `to_seq`.
            Some((n, held_seq)) if p.count > n && before - n <= to_seq.saturating_sub(held_seq) => {
                n
            }
            _ => before,
        };
        st.bus_in = Some((p.count, p.last_seq));
        if before > expected {
            st.tape.skip(before - expected, to_seq);
        }
        let Some(t) = p.trade else {
            return false;
        };
        self.print(st, t.price, t.size, state.quote.ts, crate::model::now_ms());
        true
    }

    /// Hands the change to every worker shard with live subscribers (at most once until the shard
    /// takes it). Never awaits (see module doc).
    pub(super) fn fan_out(&self) {
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
        static NO_TAPE: Tape = Tape::EMPTY;
        read_from(&lock(&self.state).head(), &NO_CHANGES, &NO_TAPE, &[], None)
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
        f(read_from(&st.head(), &st.recent, &st.tape, &st.bars, after))
    }

    /// Brings a shard's mirror of this symbol up to date: one lock of the symbol per change and
    /// shard, whatever the number of the shard's connections reading it. Called with the mirror
    /// locked, once its generation was seen to differ (generations only grow).
    pub(super) fn refresh(&self, m: &mut Mirror) {
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
        st.tape.mirror_into(&mut m.tape);
        // Only the open bars: a connection reads final ones from the entry, once per interval.
        m.bars.clear();
        m.bars.extend(st.bars.iter().map(|s| Series {
            open: s.open,
            finals: VecDeque::new(),
            finals_total: s.finals_total,
        }));
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

    pub(super) fn unsubscribe(&self, link: &Arc<Link>, conn_id: u64, slot: u32) {
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

/// (the delayed tier) what `SymbolEntry::trades_until` found: the prints lost before the cursor,
/// the due prints (`seq` and message), the cursor after them, and when the next becomes due.
pub type DelayedPrints = (
    Option<Lost>,
    Vec<(u64, ByteString)>,
    TapeCursor,
    Option<i64>,
);

/// One connection's place in one symbol's subscriber list, left when the guard is dropped.
///
/// Cleanup lives in `Drop` (as mini-redis ties its cleanup to guards) so that no way a connection
/// can end (a close, a panic unwinding its task, a task cancelled mid-flight, the runtime dropping
/// tasks at shutdown) leaves it in the fan-out, and `quotegw_subscriptions` is at every moment the
/// sum of the subscriber lists.
pub struct Subscription {
    pub(super) entry: Arc<SymbolEntry>,
    pub(super) link: Arc<Link>,
    /// The shard's copy of the symbol's state, which the connection reads.
    pub(super) mirror: Arc<Mutex<Mirror>>,
    pub(super) conn_id: u64,
    pub(super) slot: u32,
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
        let m = &*m;
        f(read_from(&m.head, &m.recent, &m.tape, &m.bars, after))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.unsubscribe(&self.link, self.conn_id, self.slot);
    }
}

/// Applies a partial tick's fields to a quote (a field the tick leaves out is unchanged).
pub(super) fn merge(q: &mut Quote, tick: &Tick) {
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
