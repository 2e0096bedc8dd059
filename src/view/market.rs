//! What one connection was sent of a symbol's trades and bars, and what it is owed now
//! (PROTOCOL.md, "Trades and bars"). A `SlotView` holds one when its subscription asked for
//! `trades` or `bars`; most hold none.
//!
//! Trades are never merged and never paced: every print after the connection's cursor goes out
//! with its quote's news, in order, whatever `max_hz` says. A connection further behind than the
//! symbol's tape is told what it lost (`trades_lost`, exact count and `seq` range), or closed with
//! 4008 under `on_lag: "close"`. Bars: each final bar exactly once (never merged away: they are
//! counted, `Series::finals_total`, and read back from the entry), the open bar when it changed,
//! at most as often as `max_hz` allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::delta::{encode_trades_lost, with_delayed_ms};
use crate::frame::FrameBuilder;
use crate::index::{Published, SymbolEntry, TapeCursor};

use super::{EmitStats, Emitted};

/// What a subscription asked for beside quotes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    pub trades: bool,
    /// The bar interval, by its place in the index's `Market::intervals`.
    pub bars: Option<usize>,
}

impl Wants {
    pub fn any(&self) -> bool {
        self.trades || self.bars.is_some()
    }
}

/// One connection's place in a symbol's trades and bars.
pub struct MarketView {
    wants: Wants,
    /// Where it is in the tape (set at its first snapshot).
    tape: TapeCursor,
    /// `tape` is a place this connection reached: a later snapshot (a re-subscribe) keeps it.
    tape_held: bool,
    bars: BarCursor,
    /// `bars` is this interval's: a re-subscribe to the same interval keeps the finals count.
    bars_held: bool,
}

#[derive(Default)]
struct BarCursor {
    /// Final bars of the interval it is up to (`Series::finals_total`).
    finals_seen: u64,
    /// The open bar last sent: its start and trade count, which every change of a bar moves.
    sent_open: Option<(i64, u64)>,
    /// When the open bar may be sent again (`max_hz`).
    next_at: Option<Instant>,
}

impl MarketView {
    pub fn new(wants: Wants) -> MarketView {
        MarketView {
            wants,
            tape: TapeCursor::default(),
            tape_held: false,
            bars: BarCursor::default(),
            bars_held: false,
        }
    }

    /// The same connection subscribes the symbol again, wanting `wants`: the trades go on from
    /// where it is (none lost, none twice: found from outside, a re-subscribe dropped the prints
    /// not yet sent), and so do final bars of the same interval; the open bar goes again with the
    /// new snapshot.
    pub fn resubscribed(self, wants: Wants) -> MarketView {
        MarketView {
            wants,
            tape: self.tape,
            tape_held: self.tape_held && self.wants.trades && wants.trades,
            bars: BarCursor {
                finals_seen: self.bars.finals_seen,
                ..BarCursor::default()
            },
            bars_held: self.bars_held && self.wants.bars == wants.bars,
        }
    }

    /// The connection was just sent the symbol's snapshot from `p`: trades from the next print on,
    /// and the open bar now (PROTOCOL.md: "and the current bar when `bars` is set").
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        symbol: &str,
        entry: &Arc<SymbolEntry>,
        p: &Published<'_>,
        min_interval: Option<Duration>,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) {
        if !self.tape_held {
            self.tape = p.tape.cursor_at(p.seq);
            self.tape_held = true;
        }
        if !self.bars_held {
            self.bars = BarCursor::default();
            if let Some(s) = self.wants.bars.and_then(|i| p.bars.get(i)) {
                self.bars.finals_seen = s.finals_total;
            }
            self.bars_held = true;
        }
        // The current bar goes with the snapshot, and starts `max_hz`'s clock (found from outside:
        // the next open bar went milliseconds later).
        self.bars.next_at = None;
        let _ = self.emit_bars(symbol, entry, p, min_interval, now, frame, stats);
    }

    /// (the delayed tier) the connection was just sent the symbol as it was at `cutoff_ms`, at
    /// `seq`: trades from the first print the index took after that, final bars likewise.
    pub fn start_delayed(&mut self, entry: &Arc<SymbolEntry>, cutoff_ms: i64, seq: u64) {
        let (tape, finals) = entry.market_at(cutoff_ms, seq);
        if !self.tape_held {
            self.tape = tape;
            self.tape_held = true;
        }
        if !self.bars_held {
            self.bars = BarCursor {
                finals_seen: self
                    .wants
                    .bars
                    .and_then(|i| finals.get(i).copied())
                    .unwrap_or(0),
                ..BarCursor::default()
            };
            self.bars_held = true;
        }
    }

    /// (the delayed and throttled tiers) the prints and final bars the index took by `cutoff_ms`
    /// (`delay_ms` ago; or when the throttled tier's interval began), each message with
    /// `delayed_ms` when given; no open bar (how it stood then is not kept). Returns whether it
    /// wrote and when the next becomes due (its gateway time), or `Lagged`.
    #[allow(clippy::too_many_arguments)]
    pub fn emit_until(
        &mut self,
        symbol: &str,
        entry: &Arc<SymbolEntry>,
        delayed: Option<u64>,
        cutoff_ms: i64,
        close_on_lag: bool,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Result<(bool, Option<i64>), Emitted> {
        let mut wrote = false;
        let mut due = None;
        if self.wants.trades {
            let (lost, prints, after, next) = entry.trades_until(self.tape, cutoff_ms);
            if let Some(lost) = lost {
                if close_on_lag {
                    return Err(Emitted::Lagged);
                }
                frame.push_quote("trades_lost", symbol, lost.to_seq, |s| {
                    with_delayed_ms(s, delayed, |s| {
                        encode_trades_lost(s, symbol, lost.count, lost.from_seq, lost.to_seq)
                    })
                });
                stats.trades_lost += lost.count;
                wrote = true;
            }
            for (seq, message) in &prints {
                frame.push_quote("trade", symbol, *seq, |s| {
                    with_delayed_ms(s, delayed, |s| s.push_str(message))
                });
                stats.trades += 1;
                wrote = true;
            }
            self.tape = after;
            due = next;
        }
        if let Some(i) = self.wants.bars {
            let (finals, next) = entry.finals_until(i, self.bars.finals_seen, cutoff_ms);
            let interval = entry.interval_name(i);
            for bar in &finals {
                frame.push_quote("bar", symbol, bar.seq, |s| {
                    with_delayed_ms(s, delayed, |s| bar.encode(s, symbol, interval, true))
                });
                stats.bars += 1;
                wrote = true;
            }
            self.bars.finals_seen += finals.len() as u64;
            due = match (due, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok((wrote, due))
    }

    /// Writes the prints and bars this connection is owed after the quote's news; `Lagged` when a
    /// print was lost under `on_lag: "close"`, `NotBefore` when the open bar waits for `max_hz`.
    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        &mut self,
        symbol: &str,
        entry: &Arc<SymbolEntry>,
        p: &Published<'_>,
        close_on_lag: bool,
        min_interval: Option<Duration>,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        let mut wrote = false;
        if self.wants.trades && p.tape.total() > self.tape.next {
            let (lost, prints) = p.tape.since(self.tape);
            if let Some(lost) = lost {
                if close_on_lag {
                    return Emitted::Lagged;
                }
                frame.push_quote("trades_lost", symbol, lost.to_seq, |s| {
                    encode_trades_lost(s, symbol, lost.count, lost.from_seq, lost.to_seq)
                });
                stats.trades_lost += lost.count;
                self.tape.seen_seq = lost.to_seq;
            }
            for print in prints {
                frame.push_quote("trade", symbol, print.seq, |s| s.push_str(&print.message));
                stats.trades += 1;
                self.tape.seen_seq = print.seq;
            }
            self.tape.next = p.tape.total();
            wrote = true;
        }
        let bars = self.emit_bars(symbol, entry, p, min_interval, now, frame, stats);
        match bars {
            Emitted::Nothing if wrote => Emitted::Wrote,
            other => other,
        }
    }

    /// The final bars not sent yet (read from `entry`), then the open bar if it changed and
    /// `min_interval` allows.
    #[allow(clippy::too_many_arguments)]
    fn emit_bars(
        &mut self,
        symbol: &str,
        entry: &Arc<SymbolEntry>,
        p: &Published<'_>,
        min_interval: Option<Duration>,
        now: Instant,
        frame: &mut FrameBuilder,
        stats: &mut EmitStats,
    ) -> Emitted {
        let Some(i) = self.wants.bars else {
            return Emitted::Nothing;
        };
        let Some(series) = p.bars.get(i) else {
            return Emitted::Nothing;
        };
        let interval = entry.interval_name(i);
        let mut wrote = false;
        if series.finals_total > self.bars.finals_seen {
            // Each final bar once, unpaced: a final bar is never merged away. Only up to the
            // count published with `p`: the entry can be ahead of it, and a bar read past that
            // count went again with the next news (seen in CI: a final bar twice).
            for bar in entry.finals_between(i, self.bars.finals_seen, series.finals_total) {
                frame.push_quote("bar", symbol, bar.seq, |s| {
                    bar.encode(s, symbol, interval, true)
                });
                stats.bars += 1;
            }
            self.bars.finals_seen = series.finals_total;
            wrote = true;
        }
        if let Some(bar) = series.open {
            let key = (bar.start, bar.trades);
            if self.bars.sent_open != Some(key) {
                if let Some(at) = self.bars.next_at.filter(|&at| now < at) {
                    return Emitted::NotBefore(at);
                }
                frame.push_quote("bar", symbol, bar.seq, |s| {
                    bar.encode(s, symbol, interval, false)
                });
                stats.bars += 1;
                self.bars.sent_open = Some(key);
                self.bars.next_at = min_interval.and_then(|d| now.checked_add(d));
                wrote = true;
            }
        }
        if wrote {
            Emitted::Wrote
        } else {
            Emitted::Nothing
        }
    }
}
