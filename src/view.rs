//! Stage 5, the per-connection view: what one connection was last sent for one symbol, and the
//! decision of what it is owed now (conflation, pacing, tiers).
//!
//! Memory per connection is bounded by its number of subscribed symbols whatever the tick rate: the
//! worker's shard marks a slot dirty at most once until the connection drains it (`fanout`), and
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

mod market;
pub use market::{MarketView, Wants};

/// What a connection emitted for a symbol in one drain; summed per frame for the metrics.
#[derive(Default, Debug)]
pub struct EmitStats {
    pub snapshots: u64,
    pub updates: u64,
    pub conflated: u64,
    /// When each sent update's tick entered the index, for `quotegw_tick_to_write_seconds`.
    pub tick_in: Vec<Instant>,
    pub trades: u64,
    /// Prints reported lost (the sum of `trades_lost` counts).
    pub trades_lost: u64,
    pub bars: u64,
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
    /// Trades and bars, when the subscription asked for them (boxed: most do not).
    market: Option<Box<MarketView>>,
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
    pub fn new(subscription: Subscription, pacing: Pacing, wants: Wants) -> SlotView {
        SlotView {
            subscription,
            market: wants.any().then(|| Box::new(MarketView::new(wants))),
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

    /// Subscribing again re-sends the snapshot and applies the new pacing, and the new choice of
    /// trades and bars (PROTOCOL.md).
    pub fn resubscribe(&mut self, pacing: Pacing, wants: Wants) {
        self.state.snapshot_pending = true;
        self.state.paced = Paced::new(pacing);
        let held = self.market.take();
        self.market = wants.any().then(|| {
            Box::new(match held {
                Some(m) => m.resubscribed(wants),
                None => MarketView::new(wants),
            })
        });
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
            market,
        } = self;
        let entry = subscription.entry();
        let symbol = &*entry.symbol;
        subscription.read_since(after, |latest| {
            let before_snapshot = state.snapshot_pending;
            let quote = state.emit(symbol, latest.as_ref(), now, frame, stats);
            let (Some(mv), Some(p)) = (market.as_deref_mut(), latest.as_ref()) else {
                return quote;
            };
            if matches!(quote, Emitted::Lagged | Emitted::Restarted) || state.snapshot_pending {
                return quote;
            }
            let pacing = state.pacing();
            if before_snapshot {
                mv.start(symbol, entry, p, pacing.min_interval, now, frame, stats);
                return quote;
            }
            let (close_on_lag, min_interval) = (pacing.close_on_lag, pacing.min_interval);
            let more = mv.emit(
                symbol,
                entry,
                p,
                close_on_lag,
                min_interval,
                now,
                frame,
                stats,
            );
            both(quote, more)
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
        let cutoff_ms = now_ms - delay.delay_ms;
        let past = self.entry().read_past(cutoff_ms);
        let before_snapshot = self.state.snapshot_pending;
        let mut wrote =
            match self.write_state(past.entry, Some(delay.delay_ms as u64), frame, stats) {
                Ok(wrote) => wrote,
                Err(restarted) => return restarted,
            };
        // The next look: when the next kept bucket ends, delayed; with none kept yet, no change
        // can show before the current bucket ends, delayed.
        let g = delay.granularity_ms;
        let mut due_ms = past
            .next_end_ms
            .unwrap_or(now_ms - now_ms.rem_euclid(g) + g)
            + delay.delay_ms;
        // Trades and final bars as the index took them `delay_ms` ago, each when it becomes due.
        let close_on_lag = self.state.pacing().close_on_lag;
        if let (Some(mv), Some(e)) = (self.market.as_deref_mut(), past.entry) {
            let entry = self.subscription.entry();
            let symbol = &*entry.symbol;
            if before_snapshot && !self.state.snapshot_pending {
                mv.start_delayed(entry, cutoff_ms, e.seq);
            } else if !self.state.snapshot_pending {
                match mv.emit_until(
                    symbol,
                    entry,
                    Some(delay.delay_ms as u64),
                    cutoff_ms,
                    close_on_lag,
                    frame,
                    stats,
                ) {
                    Err(lagged) => return lagged,
                    Ok((more, next)) => {
                        wrote |= more;
                        if let Some(at) = next {
                            due_ms = due_ms.min(at + delay.delay_ms);
                        }
                    }
                }
            }
        }
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
        let before_snapshot = self.state.snapshot_pending;
        let quote = self.emit_sample(now_ms, now, frame, stats);
        // Trades (when the tier allows them) and final bars as the index held them when the
        // current interval began, like the sample: nothing fresher (found from outside: the open
        // bar showed the tier live prices).
        let Some(mv) = self.market.as_deref_mut() else {
            return quote;
        };
        let Some(interval) = self.state.pacing().sample_ms.filter(|&ms| ms > 0) else {
            return quote;
        };
        if matches!(quote, Emitted::Restarted) || self.state.snapshot_pending {
            return quote;
        }
        let entry = self.subscription.entry();
        let symbol = &*entry.symbol;
        let cutoff_ms = now_ms - now_ms.rem_euclid(interval);
        if before_snapshot {
            mv.start_delayed(entry, cutoff_ms, self.state.sent_seq);
            return quote;
        }
        let close_on_lag = self.state.pacing().close_on_lag;
        let more = match mv.emit_until(symbol, entry, None, cutoff_ms, close_on_lag, frame, stats) {
            Err(lagged) => return lagged,
            Ok((wrote, None)) if wrote => Emitted::Wrote,
            Ok((_, None)) => Emitted::Nothing,
            // Due when the interval after the one it came in begins.
            Ok((wrote, Some(at_ms))) => look_again(
                at_ms - at_ms.rem_euclid(interval) + interval,
                now_ms,
                now,
                wrote,
            ),
        };
        both(quote, more)
    }

    /// The throttled tier's quote: the sample, at most as often as `max_hz` allows.
    fn emit_sample(
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

/// What a slot did, from what its quote and its trades and bars did.
fn both(a: Emitted, b: Emitted) -> Emitted {
    use Emitted::*;
    match (a, b) {
        (Lagged, _) | (_, Lagged) => Lagged,
        (Restarted, _) | (_, Restarted) => Restarted,
        (NotBefore(x), NotBefore(y)) => NotBefore(x.min(y)),
        (NotBefore(x), _) | (_, NotBefore(x)) => NotBefore(x),
        (Wrote, _) | (_, Wrote) => Wrote,
        (Nothing, Nothing) => Nothing,
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
mod tests;
