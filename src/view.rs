//! Stage 5, the per-connection view: what one connection was last sent for one symbol, and the
//! decision of what it is owed now (conflation, pacing, tiers).
//!
//! Memory per connection is bounded by its number of subscribed symbols whatever the tick rate: the
//! worker's shard marks a slot dirty at most once until the connection drains it (`fanout.rs`), and
//! draining reads the symbol's state since the connection's last send. A connection whose changes
//! the index still holds (its last `RECENT_TICKS`, and those of the catch-up window up to
//! `RECENT_MAX`) gets every tick's update (the index's shared bytes, so nothing is encoded per
//! connection); one further behind, or paced by `max_hz`, gets one update from what it was sent to
//! the latest. How many ticks
//! were merged is not counted per tick; it falls out of `seq` (`conflated = seq - last_sent_seq - 1`),
//! because `seq` grows by one per accepted tick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::delta::{encode_snapshot, encode_status, encode_update, with_delayed_ms};
use crate::frame::FrameBuilder;
use crate::index::{CatchUp, HistoryEntry, Published, Subscription, SymbolEntry};
use crate::model::{Quote, Status};

/// What a connection emitted for a symbol in one drain; summed per frame for the metrics.
#[derive(Default, Debug)]
pub struct EmitStats {
    pub snapshots: u64,
    pub updates: u64,
    pub conflated: u64,
    /// When each sent update's tick entered the index, for `quotegw_tick_to_write_seconds`.
    pub tick_in: Vec<Instant>,
}

/// What `SlotView::emit` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Emitted {
    Nothing,
    Wrote,
    /// There is news (or, delayed, there will be), but not before this instant: `max_hz`, a
    /// throttled tier, or a delayed tier's clock. What could go now may have been written.
    NotBefore(Instant),
    /// The client fell behind and asked to be closed rather than conflated (`on_lag: "close"`).
    Lagged,
    /// The symbol's source restarted and its `seq` went down (a scale-out ingest that lost its
    /// state): the connection must start over with fresh snapshots (close 1012).
    Restarted,
}

/// How one subscription is served: what the client asked (`max_hz`, `on_lag`) within what its
/// entitlement tier allows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pacing {
    /// Least time between two updates of the symbol (`max_hz`, or a throttled tier's interval).
    pub min_interval: Option<Duration>,
    /// Close the connection instead of merging ticks when it falls behind (pacing is not lag).
    pub close_on_lag: bool,
    /// Show the symbol as it was this long ago (the delayed tier), from the index's history.
    pub delay: Option<Delay>,
    /// Show the symbol as the index sampled it at the start of every interval of this many ms
    /// (the throttled tier, `SymbolEntry::read_sampled`): never anything fresher.
    pub sample_ms: Option<i64>,
}

/// The delayed tier: the symbol as it was `delay_ms` ago, at the history's granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    pub delay_ms: i64,
    pub granularity_ms: i64,
}

impl Pacing {
    /// `max_hz` as the protocol gives it (parsing bounds it to 0.001..=1000), as a pacing.
    pub fn max_hz(max_hz: Option<f64>) -> Pacing {
        Pacing {
            min_interval: interval(max_hz),
            ..Pacing::default()
        }
    }
}

/// One connection's view of one subscribed symbol: what it was last sent, and its pacing. It holds
/// the connection's subscription: dropping the view leaves the symbol's subscriber list.
pub struct SlotView {
    subscription: Subscription,
    state: ViewState,
}

/// A view without its subscription: what `emit` changes while the subscription's read is held.
struct ViewState {
    sent: Sent,
    /// 0 until the snapshot went out (`seq` starts at 1).
    sent_seq: u64,
    /// The symbol's `version` this connection is up to.
    sent_version: u64,
    /// The symbol's source restarts this connection's view was made under.
    sent_restarts: u64,
    sent_status: Status,
    snapshot_pending: bool,
    /// `None`: unpaced (`Pacing::default()`), as most subscriptions are; boxed, since every view
    /// would otherwise carry the 64 bytes.
    paced: Option<Box<Paced>>,
}

/// What a connection was last sent of a symbol, as far as the next update's delta needs it: the
/// prices and sizes (an update always carries `ts`, and the status goes in its own message,
/// `ViewState::sent_status`). 88 bytes where a `Quote` takes 136, in every subscription.
#[derive(Clone, Copy, Default)]
struct Sent {
    /// bid, ask, last.
    prices: [Decimal; 3],
    /// bid_size, ask_size, last_size, volume.
    sizes: [u64; 4],
    /// Bit i: price i is present; bit 3 + i: size i is.
    present: u8,
}

impl Sent {
    fn of(q: &Quote) -> Sent {
        let mut sent = Sent::default();
        for (i, price) in [q.bid, q.ask, q.last].into_iter().enumerate() {
            if let Some(price) = price {
                sent.prices[i] = price;
                sent.present |= 1 << i;
            }
        }
        let sizes = [q.bid_size, q.ask_size, q.last_size, q.volume];
        for (i, size) in sizes.into_iter().enumerate() {
            if let Some(size) = size {
                sent.sizes[i] = size;
                sent.present |= 1 << (3 + i);
            }
        }
        sent
    }

    /// The fields `encode_update` compares (`ts` and `status` are not among them).
    fn quote(&self) -> Quote {
        let price = |i: usize| (self.present & (1 << i) != 0).then_some(self.prices[i]);
        let size = |i: usize| (self.present & (1 << (3 + i)) != 0).then_some(self.sizes[i]);
        Quote {
            bid: price(0),
            ask: price(1),
            last: price(2),
            bid_size: size(0),
            ask_size: size(1),
            last_size: size(2),
            volume: size(3),
            ..Quote::default()
        }
    }
}

struct Paced {
    pacing: Pacing,
    /// When the next update may go.
    next_at: Option<Instant>,
}

impl Paced {
    /// An update went `now`: when the next may go under the pacing.
    fn went(paced: &mut Option<Box<Paced>>, now: Instant) {
        if let Some(p) = paced {
            // Checked: `min_interval` comes from a client's number; an instant past the clock's
            // range would panic the connection's task.
            p.next_at = p.pacing.min_interval.and_then(|d| now.checked_add(d));
        }
    }

    fn new(pacing: Pacing) -> Option<Box<Paced>> {
        (pacing != UNPACED).then(|| {
            Box::new(Paced {
                pacing,
                next_at: None,
            })
        })
    }
}

const UNPACED: Pacing = Pacing {
    min_interval: None,
    close_on_lag: false,
    delay: None,
    sample_ms: None,
};

impl SlotView {
    pub fn new(subscription: Subscription, pacing: Pacing) -> SlotView {
        SlotView {
            subscription,
            state: ViewState {
                sent: Sent::default(),
                sent_seq: 0,
                sent_version: 0,
                sent_restarts: 0,
                sent_status: Status::Live,
                snapshot_pending: true,
                paced: Paced::new(pacing),
            },
        }
    }

    pub fn entry(&self) -> &Arc<SymbolEntry> {
        self.subscription.entry()
    }

    /// Subscribing again re-sends the snapshot and applies the new pacing (PROTOCOL.md).
    pub fn resubscribe(&mut self, pacing: Pacing) {
        self.state.snapshot_pending = true;
        self.state.paced = Paced::new(pacing);
    }

    #[cfg(test)]
    fn catch_up_after(&self) -> Option<u64> {
        self.state.catch_up_after()
    }

    /// Reads the symbol's state since this connection's last send and writes what it is owed (see
    /// `emit`). The read borrows the changes from the worker's mirror of the symbol, so catching
    /// up copies their bytes into the frame once and clones nothing.
    pub fn emit_latest(
        &mut self,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        if let Some(delay) = self.state.pacing().delay {
            return self.emit_delayed(delay, crate::model::now_ms(), now, frame, stats);
        }
        if self.state.pacing().sample_ms.is_some() {
            return self.emit_sampled(crate::model::now_ms(), now, frame, stats);
        }
        let after = self.state.catch_up_after();
        let SlotView {
            subscription,
            state,
        } = self;
        let symbol = &*subscription.entry().symbol;
        subscription.read_since(after, |latest| {
            state.emit(symbol, latest.as_ref(), now, frame, stats)
        })
    }

    /// Writes into `frame` what this connection is owed for the symbol, given its latest state
    /// (`None`: no tick yet, so no snapshot yet either).
    pub fn emit(
        &mut self,
        latest: Option<&Published<'_>>,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        let symbol = &*self.subscription.entry().symbol;
        self.state.emit(symbol, latest, now, frame, stats)
    }
    /// The delayed tier: what this connection is owed of the symbol as it was `delay_ms` before
    /// `now_ms`, and when to look again. Every message carries `delayed_ms`; ticks within one
    /// history bucket arrive merged (`conflated` counts them), as the tier's granularity says.
    fn emit_delayed(
        &mut self,
        delay: Delay,
        now_ms: i64,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        let past = self.entry().read_past(now_ms - delay.delay_ms);
        let wrote = match self.write_state(past.entry, Some(delay.delay_ms as u64), frame, stats) {
            Ok(wrote) => wrote,
            Err(restarted) => return restarted,
        };
        // The next look: when the next kept bucket ends, delayed; with none kept yet, no change
        // can show before the current bucket ends, delayed.
        let g = delay.granularity_ms;
        let due_ms = past
            .next_end_ms
            .unwrap_or(now_ms - now_ms.rem_euclid(g) + g)
            + delay.delay_ms;
        look_again(due_ms, now_ms, now, wrote)
    }

    /// The throttled tier: what this connection is owed of the symbol's sample at `now_ms` (the
    /// state it had when the current interval began), and when to look again: when the next
    /// interval begins, if a newer state waits for it. A slower `max_hz` paces on top.
    fn emit_sampled(
        &mut self,
        now_ms: i64,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        if !self.state.snapshot_pending {
            if let Some(at) = self.state.next_at().filter(|&at| now < at) {
                return Emitted::NotBefore(at);
            }
        }
        let sample = self.entry().read_sampled(now_ms);
        let sent_seq = self.state.sent_seq;
        let wrote = match self.write_state(sample.entry, None, frame, stats) {
            Ok(wrote) => wrote,
            Err(restarted) => return restarted,
        };
        if self.state.sent_seq != sent_seq {
            Paced::went(&mut self.state.paced, now);
        }
        match sample.next_end_ms {
            Some(due_ms) => look_again(due_ms, now_ms, now, wrote),
            None if wrote => Emitted::Wrote,
            None => Emitted::Nothing,
        }
    }

    /// Writes what this connection is owed to hold `entry` (a past or sampled state of the
    /// symbol): its snapshot, or an update from what it holds and the status; every message with
    /// `delayed_ms` when given. True when it wrote; `Err(Restarted)` when `seq` went down.
    fn write_state(
        &mut self,
        entry: Option<HistoryEntry>,
        delayed_ms: Option<u64>,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Result<bool, Emitted> {
        let symbol = &*self.subscription.entry().symbol;
        let st = &mut self.state;
        let Some(e) = entry else {
            return Ok(false);
        };
        let mut wrote = false;
        if st.snapshot_pending {
            frame.push_quote("snapshot", symbol, e.seq, |s| {
                with_delayed_ms(s, delayed_ms, |s| {
                    encode_snapshot(s, symbol, e.seq, &e.quote)
                })
            });
            st.snapshot_pending = false;
            st.sent_status = e.quote.status;
            stats.snapshots += 1;
            wrote = true;
        } else {
            if e.seq < st.sent_seq {
                // The source restarted (an edge whose ingest lost its cache): `seq` went down.
                return Err(Emitted::Restarted);
            }
            if e.seq > st.sent_seq {
                let conflated = e.seq - st.sent_seq - 1;
                frame.push_quote("update", symbol, e.seq, |s| {
                    with_delayed_ms(s, delayed_ms, |s| {
                        encode_update(s, symbol, e.seq, &st.sent.quote(), &e.quote, conflated)
                    })
                });
                stats.updates += 1;
                stats.conflated += conflated;
                wrote = true;
            }
            if e.quote.status != st.sent_status {
                frame.push_quote("status", symbol, e.seq, |s| {
                    with_delayed_ms(s, delayed_ms, |s| encode_status(s, symbol, e.quote.status))
                });
                st.sent_status = e.quote.status;
                wrote = true;
            }
        }
        st.sent_seq = e.seq;
        st.sent = Sent::of(&e.quote);
        Ok(wrote)
    }
}

/// `NotBefore` the instant `due_ms` (gateway clock) stands for, at least 1 ms from now.
fn look_again(due_ms: i64, now_ms: i64, now: Instant, wrote: bool) -> Emitted {
    let wait = Duration::from_millis(due_ms.saturating_sub(now_ms).max(1) as u64);
    match now.checked_add(wait) {
        Some(at) => Emitted::NotBefore(at),
        None if wrote => Emitted::Wrote,
        None => Emitted::Nothing,
    }
}

impl ViewState {
    fn pacing(&self) -> &Pacing {
        self.paced.as_ref().map_or(&UNPACED, |p| &p.pacing)
    }

    fn next_at(&self) -> Option<Instant> {
        self.paced.as_ref().and_then(|p| p.next_at)
    }

    /// The `version` after which this connection wants every change (`SymbolEntry::read_since`):
    /// none before its snapshot, and none when paced, which asks for merged updates.
    fn catch_up_after(&self) -> Option<u64> {
        (!self.snapshot_pending && self.pacing().min_interval.is_none())
            .then_some(self.sent_version)
    }

    /// `SlotView::emit`, for `symbol`.
    fn emit(
        &mut self,
        symbol: &str,
        latest: Option<&Published<'_>>,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        let Some(p) = latest else {
            return Emitted::Nothing;
        };
        if self.snapshot_pending {
            frame.push_quote("snapshot", symbol, p.seq, |s| {
                encode_snapshot(s, symbol, p.seq, &p.quote)
            });
            self.snapshot_pending = false;
            self.sent_status = p.quote.status;
            self.sent_restarts = p.restarts;
            self.sent_version = p.version;
            self.sent_seq = p.seq;
            self.sent = Sent::of(&p.quote);
            Paced::went(&mut self.paced, now);
            stats.snapshots += 1;
            return Emitted::Wrote;
        }
        if p.version <= self.sent_version {
            return Emitted::Nothing;
        }
        if p.restarts != self.sent_restarts {
            // `seq` went down: no update can follow what this connection holds.
            return Emitted::Restarted;
        }
        if let Some(at) = self.next_at().filter(|&at| now < at) {
            // Pacing is for updates, not status: a halt reaches a paced client at once (a status
            // newer than the prices it holds, never older). The prices follow when due.
            if p.quote.status != self.sent_status {
                frame.push_quote("status", symbol, p.seq, |s| {
                    encode_status(s, symbol, p.quote.status)
                });
                self.sent_status = p.quote.status;
            }
            return Emitted::NotBefore(at);
        }
        let behind = p.version - self.sent_version;
        let pacing = *self.pacing();
        if p.catch_up.len() as u64 == behind && pacing.min_interval.is_none() {
            // Keeping up: every change as the index encoded it once for everyone, status flips in
            // their place among the updates. On an edge a change may already skip a `seq` (the
            // ingest merged ticks, or NATS lost one): a merge all the same for `on_lag: "close"`.
            if pacing.close_on_lag && skips_a_seq(p.catch_up, self.sent_seq) {
                return Emitted::Lagged;
            }
            for recent in p.catch_up.iter() {
                frame.push_shared(
                    &recent.frame,
                    recent.update_len as usize,
                    symbol,
                    recent.seq,
                );
                if let Some(tick_in) = recent.tick_in {
                    stats.tick_in.push(tick_in);
                    stats.updates += 1;
                }
            }
        } else {
            // Behind, or paced: one update from what this connection has to the latest, then the
            // latest status (never one older than the prices it follows).
            if p.seq > self.sent_seq {
                let conflated = p.seq - self.sent_seq - 1;
                if conflated > 0 && pacing.close_on_lag && pacing.min_interval.is_none() {
                    // Merging is what this client asked never to get: it is closed instead.
                    return Emitted::Lagged;
                }
                frame.push_quote("update", symbol, p.seq, |s| {
                    encode_update(s, symbol, p.seq, &self.sent.quote(), &p.quote, conflated)
                });
                stats.updates += 1;
                stats.conflated += conflated;
                stats.tick_in.extend(p.tick_in);
                Paced::went(&mut self.paced, now);
            }
            if p.quote.status != self.sent_status {
                frame.push_quote("status", symbol, p.seq, |s| {
                    encode_status(s, symbol, p.quote.status)
                });
            }
        }
        self.sent_status = p.quote.status;
        self.sent_version = p.version;
        self.sent_seq = p.seq;
        self.sent = Sent::of(&p.quote);
        Emitted::Wrote
    }
}

/// The least time between two updates of one symbol for a `max_hz`. Parsing bounds `max_hz` to
/// `protocol::MAX_HZ_RANGE` (0.001 to 1000, so 1 ms to 1000 s); the conversion is checked anyway,
/// since a client supplied the number.
pub fn interval(max_hz: Option<f64>) -> Option<Duration> {
    max_hz.and_then(|hz| Duration::try_from_secs_f64(1.0 / hz).ok())
}

/// Whether the updates in `changes`, after `sent_seq`, skip a `seq` (status-only changes keep theirs).
fn skips_a_seq(changes: CatchUp<'_>, sent_seq: u64) -> bool {
    let mut last = sent_seq;
    for r in changes.iter().filter(|r| r.update_len > 0) {
        if r.seq > last + 1 {
            return true;
        }
        last = r.seq;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::client_view::{of_quote, View};
    use crate::fanout::ConnPending;
    use crate::feed::FeedEvent;
    use crate::index::{Index, RECENT_TICKS};
    use crate::metrics::Metrics;
    use crate::model::Tick;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    /// What a view keeps of a sent quote gives back every field an update compares, prices by
    /// representation (`1.10` stays `1.10`), absent fields absent.
    #[test]
    fn sent_keeps_what_an_update_compares() {
        let d = |s: &str| Some(s.parse::<Decimal>().unwrap());
        let full = Quote {
            ts: 5,
            bid: d("1.10"),
            ask: d("-0.000000001"),
            last: d("79228162514264337593543950335"),
            bid_size: Some(0),
            ask_size: Some(u64::MAX),
            last_size: Some(7),
            volume: Some(1 << 40),
            status: Status::Halted,
        };
        let some = Quote {
            bid: d("2"),
            volume: Some(3),
            ..Quote::default()
        };
        for q in [full, some, Quote::default()] {
            let back = Sent::of(&q).quote();
            let wire = Quote {
                ts: q.ts,
                status: q.status,
                ..back
            };
            assert!(wire.same_as(&q), "{q:?} came back as {back:?}");
        }
        assert!(std::mem::size_of::<Sent>() < std::mem::size_of::<Quote>());
    }

    fn index() -> Index {
        Index::new(&["test".to_string()], Arc::new(Metrics::new()))
    }

    fn tick(bid: i64, ask_size: Option<i64>) -> Tick {
        Tick {
            symbol: "AAPL".into(),
            ts: bid,
            bid: Some(Decimal::new(bid, 2)),
            ask_size,
            ..Tick::default()
        }
    }

    /// Drains `conn` into frames the way the session writer does, returning the decoded messages.
    fn drain(conn: &ConnPending, slots: &mut [SlotView], now: Instant) -> Vec<serde_json::Value> {
        let mut dirty = Vec::new();
        conn.take(&mut dirty);
        let mut frame = FrameBuilder::default();
        let mut stats = EmitStats::default();
        for slot in dirty {
            slots[slot as usize].emit_latest(now, &mut frame, &mut stats);
        }
        match frame.take() {
            None => vec![],
            Some(f) => {
                serde_json::from_str::<Vec<serde_json::Value>>(&f).expect("a frame is a JSON array")
            }
        }
    }

    /// One connection subscribed to AAPL (one tick in, `seq` 1) that has taken its snapshot.
    fn subscribed_after_snapshot() -> (Index, Arc<SymbolEntry>, Arc<ConnPending>, Vec<SlotView>) {
        let idx = index();
        let entry = idx.register("AAPL".into());
        idx.apply(FeedEvent::Tick(tick(100, Some(1))));
        let conn = ConnPending::new();
        let mut slots = vec![SlotView::new(
            entry.subscribe(&conn, 0, true),
            Pacing::default(),
        )];
        let snap = drain(&conn, &mut slots, Instant::now());
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0]["type"], "snapshot");
        assert_eq!(snap[0]["seq"], 1);
        (idx, entry, conn, slots)
    }

    #[test]
    fn a_slow_connection_gets_the_latest_value_once_with_the_merged_count() {
        let (idx, _entry, conn, mut slots) = subscribed_after_snapshot();

        for i in 0..1000 {
            idx.apply(FeedEvent::Tick(tick(101 + i, None)));
        }
        assert_eq!(conn.pending(), 1, "a thousand ticks, one pending slot");
        let msgs = drain(&conn, &mut slots, Instant::now());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0]["seq"], 1001);
        assert_eq!(msgs[0]["bid"], "11.00");
        assert_eq!(msgs[0]["conflated"], 999);
        assert!(msgs[0].get("ask_size").is_none());
    }

    #[test]
    fn an_in_sync_connection_gets_the_shared_bytes() {
        let (idx, entry, _conn, mut slots) = subscribed_after_snapshot();
        idx.apply(FeedEvent::Tick(tick(101, None)));
        let mut frame = FrameBuilder::default();
        let shared = entry.read_since(slots[0].catch_up_after(), |latest| {
            slots[0].emit(
                latest.as_ref(),
                Instant::now(),
                &mut frame,
                &mut EmitStats::default(),
            );
            latest.unwrap().catch_up.first().unwrap().frame.clone()
        });
        let f = frame.take().unwrap();
        assert_eq!(f.as_bytes().as_ptr(), shared.as_bytes().as_ptr());
    }

    #[test]
    fn a_connection_a_few_ticks_behind_gets_every_tick_in_one_frame() {
        let (idx, _entry, conn, mut slots) = subscribed_after_snapshot();
        for i in 0..RECENT_TICKS as i64 {
            idx.apply(FeedEvent::Tick(tick(101 + i, None)));
        }
        let msgs = drain(&conn, &mut slots, Instant::now());
        assert_eq!(msgs.len(), RECENT_TICKS, "one update per tick");
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m["seq"], 2 + i as u64);
            assert!(m.get("conflated").is_none(), "{m}");
        }
        assert_eq!(msgs[RECENT_TICKS - 1]["bid"], "1.64");
        // One tick more than the index keeps: the connection is not keeping up, one merged update.
        for i in 0..=RECENT_TICKS as i64 {
            idx.apply(FeedEvent::Tick(tick(200 + i, None)));
        }
        let msgs = drain(&conn, &mut slots, Instant::now());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0]["conflated"], RECENT_TICKS as u64);
    }

    #[test]
    fn max_hz_defers_and_then_sends_the_latest() {
        let idx = index();
        let entry = idx.register("AAPL".into());
        idx.apply(FeedEvent::Tick(tick(100, None)));
        let conn = ConnPending::new();
        let mut slots = vec![SlotView::new(
            entry.subscribe(&conn, 0, true),
            Pacing::max_hz(Some(2.0)),
        )];
        let t0 = Instant::now();
        assert_eq!(drain(&conn, &mut slots, t0).len(), 1);
        idx.apply(FeedEvent::Tick(tick(101, None)));
        let mut frame = FrameBuilder::default();
        let latest = entry.read();
        let r = slots[0].emit(
            latest.as_ref(),
            t0 + Duration::from_millis(100),
            &mut frame,
            &mut EmitStats::default(),
        );
        assert_eq!(r, Emitted::NotBefore(t0 + Duration::from_millis(500)));
        assert!(frame.is_empty());
        idx.apply(FeedEvent::Tick(tick(102, None)));
        let latest = entry.read();
        let r = slots[0].emit(
            latest.as_ref(),
            t0 + Duration::from_millis(500),
            &mut frame,
            &mut EmitStats::default(),
        );
        assert_eq!(r, Emitted::Wrote);
        let msgs: Vec<serde_json::Value> = serde_json::from_str(&frame.take().unwrap()).unwrap();
        assert_eq!(
            (msgs[0]["bid"].as_str(), msgs[0]["conflated"].as_u64()),
            (Some("1.02"), Some(1))
        );
    }

    #[test]
    fn max_hz_paces_updates_but_not_status_changes() {
        let idx = index();
        let entry = idx.register("AAPL".into());
        idx.apply(FeedEvent::Tick(tick(100, None)));
        let conn = ConnPending::new();
        let mut slots = vec![SlotView::new(
            entry.subscribe(&conn, 0, true),
            Pacing::max_hz(Some(0.001)),
        )];
        let t0 = Instant::now();
        assert_eq!(drain(&conn, &mut slots, t0).len(), 1, "the snapshot");
        idx.apply(FeedEvent::Tick(Tick {
            bid: Some(Decimal::new(101, 2)),
            status: Some(Status::Halted),
            ..tick(101, None)
        }));
        // 1 s later, 999 s before the next update may go: the halt, alone.
        let msgs = drain(&conn, &mut slots, t0 + Duration::from_secs(1));
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(
            (msgs[0]["type"].as_str(), msgs[0]["status"].as_str()),
            (Some("status"), Some("halted"))
        );
        // When due, the price, and the status is not sent twice.
        let mut frame = FrameBuilder::default();
        let r = slots[0].emit(
            entry.read().as_ref(),
            t0 + Duration::from_secs(1000),
            &mut frame,
            &mut EmitStats::default(),
        );
        assert_eq!(r, Emitted::Wrote);
        let msgs: Vec<serde_json::Value> = serde_json::from_str(&frame.take().unwrap()).unwrap();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(
            (msgs[0]["type"].as_str(), msgs[0]["bid"].as_str()),
            (Some("update"), Some("1.01"))
        );
    }

    /// A scale-out edge: states keep the ingest's seq (a gap is `conflated`), and a seq that goes
    /// down under a new term (an ingest that lost its cache) ends the connections that held the
    /// old one, which then start over with fresh snapshots.
    #[test]
    fn a_restarted_source_ends_the_views_that_held_the_old_seq() {
        use crate::scaleout::wire::State;
        let idx = index();
        let state = |term, version, seq, bid| FeedEvent::State {
            feed: 0,
            state: State {
                term,
                version,
                seq,
                symbol: "AAPL".into(),
                quote: Quote {
                    ts: 1,
                    bid: Some(Decimal::new(bid, 2)),
                    ..Quote::default()
                },
            },
        };
        idx.apply(state(1, 10, 100, 100));
        let entry = idx.lookup("AAPL").unwrap();
        let conn = ConnPending::new();
        let mut slots = vec![SlotView::new(
            entry.subscribe(&conn, 0, true),
            Pacing::default(),
        )];
        let strict = ConnPending::new();
        let never_merge = Pacing {
            close_on_lag: true,
            ..Pacing::default()
        };
        let mut strict_slots = vec![SlotView::new(
            entry.subscribe(&strict, 0, true),
            never_merge,
        )];
        let snap = drain(&conn, &mut slots, Instant::now());
        assert_eq!(snap[0]["seq"], 100);
        assert_eq!(
            drain(&strict, &mut strict_slots, Instant::now())[0]["seq"],
            100
        );
        idx.apply(state(1, 12, 103, 103)); // two states lost on the way
        let msgs = drain(&conn, &mut slots, Instant::now());
        assert_eq!(
            (msgs[0]["seq"].as_u64(), msgs[0]["conflated"].as_u64()),
            (Some(103), Some(2))
        );
        // A client that asked never to be sent a merge is closed instead, though it kept up.
        strict.take(&mut Vec::new());
        let emitted = strict_slots[0].emit_latest(
            Instant::now(),
            &mut FrameBuilder::default(),
            &mut EmitStats::default(),
        );
        assert_eq!(emitted, Emitted::Lagged);
        idx.apply(state(1, 11, 101, 101)); // a late one: nothing
        assert!(drain(&conn, &mut slots, Instant::now()).is_empty());
        idx.apply(state(2, 1, 5, 500)); // a new term with a lower seq: the source restarted
        let mut dirty = Vec::new();
        conn.take(&mut dirty);
        let mut frame = FrameBuilder::default();
        let emitted = slots[0].emit_latest(Instant::now(), &mut frame, &mut EmitStats::default());
        assert_eq!(emitted, Emitted::Restarted);
        // A new connection simply gets the new state.
        let conn2 = ConnPending::new();
        let mut fresh = vec![SlotView::new(
            entry.subscribe(&conn2, 0, true),
            Pacing::default(),
        )];
        assert_eq!(drain(&conn2, &mut fresh, Instant::now())[0]["seq"], 5);
    }

    #[test]
    fn nothing_before_the_first_tick_then_a_snapshot() {
        let idx = index();
        let entry = idx.register("AAPL".into());
        let conn = ConnPending::new();
        let mut slots = vec![SlotView::new(
            entry.subscribe(&conn, 0, true),
            Pacing::default(),
        )];
        assert!(drain(&conn, &mut slots, Instant::now()).is_empty());
        idx.apply(FeedEvent::Tick(tick(100, None)));
        let msgs = drain(&conn, &mut slots, Instant::now());
        assert_eq!(msgs[0]["type"], "snapshot");
        assert_eq!(msgs[0]["ask"], serde_json::Value::Null);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Tick {
            bid: Option<i64>,
            ask: Option<i64>,
            size: Option<i64>,
            status: Option<u8>,
        },
        Drain,
        Resubscribe,
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (proptest::option::of(1i64..50), proptest::option::of(1i64..50),
                  proptest::option::of(0i64..5), proptest::option::weighted(0.1, 0u8..3))
                .prop_map(|(bid, ask, size, status)| Step::Tick { bid, ask, size, status }),
            2 => Just(Step::Drain),
            1 => Just(Step::Resubscribe),
        ]
    }

    proptest! {
        /// Whatever the interleaving of ticks and drains: the first message is a snapshot, seq only
        /// grows, the update's `conflated` is exactly the ticks skipped, and after every drain the
        /// client's view equals the gateway's latest quote (latest value wins).
        #[test]
        fn conflation_keeps_the_client_exact(steps in proptest::collection::vec(arb_step(), 1..60)) {
            let idx = index();
            let entry = idx.register("AAPL".into());
            let conn = ConnPending::new();
            let mut slots = vec![SlotView::new(entry.subscribe(&conn, 0, true), Pacing::default())];
            let mut view: Option<View> = None;
            let mut status = "live".to_string();
            for step in steps.iter().chain([Step::Drain].iter()) {
                match step {
                    Step::Tick { bid, ask, size, status } => {
                        idx.apply(FeedEvent::Tick(Tick {
                            symbol: "AAPL".into(), ts: 7,
                            bid: bid.map(|b| Decimal::new(b, 1)), ask: ask.map(|a| Decimal::new(a, 2)),
                            bid_size: *size,
                            status: status.map(|s| [Status::Live, Status::Stale, Status::Halted][s as usize]),
                            ..Tick::default()
                        }));
                    }
                    Step::Resubscribe => {
                        slots[0].resubscribe(Pacing::default());
                        conn.mark(0);
                    }
                    Step::Drain => {
                        for msg in drain(&conn, &mut slots, Instant::now()) {
                            match msg["type"].as_str().unwrap() {
                                "snapshot" => {
                                    if let Some(v) = &view {
                                        prop_assert!(msg["seq"].as_u64().unwrap() >= v.seq);
                                    }
                                    status = msg["status"].as_str().unwrap().to_string();
                                    view = Some(View::from_snapshot(&msg));
                                }
                                "update" => {
                                    let v = view.as_mut().expect("no update before the snapshot");
                                    let seq = msg["seq"].as_u64().unwrap();
                                    prop_assert!(seq > v.seq, "seq only grows");
                                    let conflated = msg.get("conflated").map_or(0, |c| c.as_u64().unwrap());
                                    prop_assert!(conflated > 0 || msg.get("conflated").is_none(), "conflated is absent when 0");
                                    prop_assert_eq!(conflated, seq - v.seq - 1);
                                    v.apply(&msg);
                                }
                                "status" => {
                                    prop_assert!(view.is_some(), "no status before the snapshot");
                                    status = msg["status"].as_str().unwrap().to_string();
                                }
                                other => prop_assert!(false, "unexpected {}", other),
                            }
                        }
                        if let (Some(v), Some(p)) = (&view, entry.read()) {
                            let mut expect = of_quote("AAPL", p.seq, &p.quote);
                            expect.fields.remove("status");
                            let mut got = v.clone();
                            got.fields.remove("status");
                            prop_assert_eq!(got, expect);
                            prop_assert_eq!(status.as_str(), p.quote.status.as_str());
                        }
                    }
                }
            }
        }
    }
}
