//! OHLCV bars of a symbol's trades, one series per configured interval, built where `seq` is
//! assigned (this index) so that every client and every edge sees the same bars.
//!
//! A bar covers `[start, start + interval)` of the trades' own `ts`, UTC-aligned (`start` is a
//! multiple of the interval since the epoch). Open is the first trade's price, close the last's;
//! high and low are by value, and among prices of equal value the first one printed keeps its
//! representation (`189.1` and `189.10` are one value, and the wire shows the first). An interval
//! with no trade has no bar. A bar ends on the feed's clock (`Series::close_until`): when a trade
//! of the symbol or any tick of its feed carries a later `ts`, or, for a feed stamped by the wall
//! clock, when the wall clock passes its end plus `grace_ms` (`Index::close_bars`). A trade whose
//! `ts` falls before the open bar or in an interval already ended is late: no bar takes it
//! (counted in `quotegw_bar_late_trades_total`). So a recording replayed with its own timestamps
//! builds the bars it built live, bit for bit.
//!
//! Memory: a kept bar is `Bar`, 112 bytes; `keep` final bars per interval and symbol that traded
//! (so 390 × 3 intervals ≈ 128 KiB for a symbol trading in every interval; docs/benchmarks.md has
//! the measured figures at 500 and 10,000 symbols).

use std::collections::VecDeque;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::delta::encode_bar;
pub use crate::model::Bar;
use crate::model::{BusSeries, FeedId};

/// `[bars]`: which intervals are built and how many final bars each keeps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BarsConfig {
    /// Bar intervals, e.g. `["1s", "1m", "5m"]`: a number and `s`, `m` or `h`, dividing a day.
    #[serde(default = "default_intervals")]
    pub intervals: Vec<String>,
    /// Final bars kept per symbol and interval (`GET /v1/bars`): 390 one-minute bars are a
    /// trading day.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// How long after an interval's end a wall-clock feed's bar stays open for late ticks.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

fn default_intervals() -> Vec<String> {
    vec!["1s".into(), "1m".into(), "5m".into()]
}

fn default_keep() -> usize {
    390
}

fn default_grace_ms() -> u64 {
    1000
}

impl Default for BarsConfig {
    fn default() -> Self {
        BarsConfig {
            intervals: default_intervals(),
            keep: default_keep(),
            grace_ms: default_grace_ms(),
        }
    }
}

/// The most intervals a gateway builds.
pub const MAX_BAR_INTERVALS: usize = 8;

/// The most final bars a series may keep.
pub const MAX_BARS_KEEP: usize = 100_000;

/// A configured interval: its name on the wire and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarInterval {
    pub name: String,
    pub ms: i64,
}

impl BarsConfig {
    /// The intervals, checked: `Err((key, what to change))`.
    pub fn parsed(&self) -> Result<Vec<BarInterval>, (String, String)> {
        let bad = |what: String| Err(("bars.intervals".to_string(), what));
        if self.intervals.len() > MAX_BAR_INTERVALS {
            return bad(format!("at most {MAX_BAR_INTERVALS} intervals"));
        }
        let mut out: Vec<BarInterval> = Vec::new();
        for name in &self.intervals {
            let Some(ms) = interval_ms(name) else {
                return bad(format!(
                    "'{name}' is not an interval: a number and s, m or h (e.g. \"1s\", \"1m\", \"5m\", \"1h\") that divides a day"
                ));
            };
            if out.iter().any(|i| i.ms == ms) {
                return bad(format!("'{name}' is listed twice"));
            }
            out.push(BarInterval {
                name: name.clone(),
                ms,
            });
        }
        if !(1..=MAX_BARS_KEEP).contains(&self.keep) {
            return Err((
                "bars.keep".into(),
                format!("must be between 1 and {MAX_BARS_KEEP}"),
            ));
        }
        crate::model::ms_within("bars.grace_ms", self.grace_ms, 0..=60_000)?;
        Ok(out)
    }
}

/// `"5m"` → 300,000; `None` unless a positive number of s, m or h that divides a day (so that
/// bars align to UTC days as well as to the epoch).
pub fn interval_ms(name: &str) -> Option<i64> {
    let unit = match name.as_bytes().last()? {
        b's' => 1000,
        b'm' => 60_000,
        b'h' => 3_600_000,
        _ => return None,
    };
    let digits = &name[..name.len() - 1];
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let ms = n * unit;
    (ms > 0 && 86_400_000 % ms == 0 && !digits.starts_with('0')).then_some(ms)
}

impl Bar {
    fn first(start: i64, price: Decimal, size: u64, seq: u64, feed: FeedId) -> Bar {
        Bar {
            start,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: size,
            trades: 1,
            seq,
            feed,
            ended_ms: 0,
        }
    }

    fn add(&mut self, price: Decimal, size: u64, seq: u64, feed: FeedId) {
        if price > self.high {
            self.high = price;
        }
        if price < self.low {
            self.low = price;
        }
        self.close = price;
        self.volume = self.volume.saturating_add(size);
        self.trades += 1;
        self.seq = seq;
        self.feed = feed;
    }

    /// Appends the bar's message.
    pub fn encode(&self, out: &mut String, symbol: &str, interval: &str, is_final: bool) {
        encode_bar(out, symbol, interval, self, is_final);
    }
}

/// One interval's bars of one symbol: the open bar and the last final ones.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub open: Option<Bar>,
    /// The last `keep` final bars, oldest first.
    pub finals: VecDeque<Bar>,
    /// Bars finalized so far: a reader up to `n` wants the last `finals_total - n`.
    pub finals_total: u64,
}

/// What one trade did to a series.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Into the open bar, and how many bars it ended first (0 or 1).
    Taken { ended: u64 },
    /// Before the open bar or in an interval already ended: in no bar.
    Late,
}

impl Series {
    /// Adds a trade at `ts` to the bar of its interval (`ms` long), ending the open bar first when
    /// the trade is past it; `now_ms` is the gateway's clock.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        ms: i64,
        keep: usize,
        ts: i64,
        price: Decimal,
        size: u64,
        seq: u64,
        feed: FeedId,
        now_ms: i64,
    ) -> Added {
        let start = ts - ts.rem_euclid(ms);
        let ended = self.close_until(ms, keep, ts, now_ms);
        match &mut self.open {
            Some(bar) if bar.start == start => bar.add(price, size, seq, feed),
            Some(_) => return Added::Late, // before the open bar
            None => {
                if self.finals.back().is_some_and(|b| b.start >= start) {
                    return Added::Late; // its interval has ended
                }
                self.open = Some(Bar::first(start, price, size, seq, feed));
            }
        }
        Added::Taken { ended }
    }

    /// Ends the open bar if `clock_ms` is at or past its end (at `now_ms`, the gateway's clock);
    /// the number of bars ended (0 or 1).
    pub fn close_until(&mut self, ms: i64, keep: usize, clock_ms: i64, now_ms: i64) -> u64 {
        match self.open {
            Some(bar) if bar.start + ms <= clock_ms => {
                self.open = None;
                self.push_final(bar, keep, now_ms);
                1
            }
            _ => 0,
        }
    }

    /// Keeps `bar` as the next final bar, ended at `now_ms` (the gateway's clock).
    fn push_final(&mut self, mut bar: Bar, keep: usize, now_ms: i64) {
        bar.ended_ms = now_ms;
        if self.finals.len() >= keep {
            self.finals.pop_front();
        }
        grow_within(&mut self.finals, keep);
        self.finals.push_back(bar);
        self.finals_total += 1;
    }

    /// (scale-out) the series as the leading ingest published it (`BusSeries`): its final bars
    /// newer (by `start`) than the newest held, in order, then its open bar. Bars are told apart by
    /// `start`, so a message read twice, or a full one repeating bars already held, adds nothing
    /// and sends no reader a final bar twice. Held final bars newer than anything the message has
    /// go first: the publisher does not have them (a bad message's, or a leader's that ran ahead),
    /// so the next message corrects them. Returns how many final bars it took.
    pub fn adopt(&mut self, bus: &BusSeries, keep: usize, feed: FeedId, now_ms: i64) -> u64 {
        let newest = bus.finals.iter().chain(&bus.open).map(|b| b.start).max();
        if let Some(newest) = newest {
            while self.finals.back().is_some_and(|b| b.start > newest) {
                self.finals.pop_back();
                self.finals_total -= 1;
            }
        }
        let mut taken = 0;
        for bar in &bus.finals {
            if self.finals.back().is_some_and(|b| b.start >= bar.start) {
                continue;
            }
            self.push_final(Bar { feed, ..*bar }, keep, now_ms);
            taken += 1;
        }
        let newest_final = self.finals.back().map_or(i64::MIN, |b| b.start);
        self.open = bus
            .open
            .filter(|b| b.start > newest_final)
            .map(|b| Bar { feed, ..b });
        taken
    }

    /// (the delayed tier) how many of the bars finalized so far had ended by `cutoff_ms`.
    pub fn finals_by(&self, cutoff_ms: i64) -> u64 {
        let later = self.finals.len() - self.finals.partition_point(|b| b.ended_ms <= cutoff_ms);
        self.finals_total - later as u64
    }

    /// The final bars after the first `seen` (of `finals_total`), those still kept.
    pub fn finals_after(&self, seen: u64) -> impl Iterator<Item = &Bar> {
        self.finals_between(seen, self.finals_total)
    }

    /// The final bars numbered `seen + 1 ..= upto` (of `finals_total`), those still kept: a reader
    /// that counts itself up to `upto` must not be given a bar finalized after that, or it would
    /// be given that one again.
    pub fn finals_between(&self, seen: u64, upto: u64) -> impl Iterator<Item = &Bar> {
        let upto = upto.min(self.finals_total);
        let first_kept = self.finals_total - self.finals.len() as u64;
        let from = seen.clamp(first_kept, upto.max(first_kept));
        let to = upto.max(first_kept);
        self.finals
            .range((from - first_kept) as usize..(to - first_kept) as usize)
    }
}

/// Makes room for one more in a ring bounded by `keep`: doubling as usual, but never past `keep`,
/// so a full ring holds exactly `keep` (doubling alone would hold up to twice the stated memory).
pub(super) fn grow_within<T>(ring: &mut VecDeque<T>, keep: usize) {
    if ring.len() == ring.capacity() {
        let want = (ring.capacity() * 2).max(4).min(keep.max(1));
        ring.reserve_exact(want.saturating_sub(ring.len()).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    #[test]
    fn intervals_parse_and_divide_a_day() {
        assert_eq!(interval_ms("1s"), Some(1000));
        assert_eq!(interval_ms("5m"), Some(300_000));
        assert_eq!(interval_ms("1h"), Some(3_600_000));
        for bad in [
            "", "s", "0s", "7s", "01m", "1d", "-1s", "1.5m", "1 m", "99999h",
        ] {
            assert_eq!(interval_ms(bad), None, "{bad}");
        }
        let c = BarsConfig {
            intervals: vec!["1m".into(), "60s".into()],
            ..BarsConfig::default()
        };
        assert!(c.parsed().unwrap_err().1.contains("twice"));
    }

    /// An independent OHLCV: group by interval, then fold, the way a spreadsheet would.
    fn naive(trades: &[(i64, Decimal, u64)], ms: i64) -> Vec<(i64, [String; 4], u64, u64)> {
        let mut out: Vec<(i64, [String; 4], u64, u64)> = Vec::new();
        let mut groups: Vec<(i64, Vec<(Decimal, u64)>)> = Vec::new();
        let mut newest = i64::MIN;
        for &(ts, p, n) in trades {
            let start = ts.div_euclid(ms) * ms;
            if start < newest {
                continue; // late: its interval has ended
            }
            newest = start;
            match groups.last_mut() {
                Some((s, g)) if *s == start => g.push((p, n)),
                _ => groups.push((start, vec![(p, n)])),
            }
        }
        for (start, g) in groups {
            let mut high = g[0].0;
            let mut low = g[0].0;
            for &(p, _) in &g {
                // The first of equal values keeps its representation.
                if p > high {
                    high = p;
                }
                if p < low {
                    low = p;
                }
            }
            out.push((
                start,
                [
                    g[0].0.to_string(),
                    high.to_string(),
                    low.to_string(),
                    g[g.len() - 1].0.to_string(),
                ],
                g.iter().map(|t| t.1).sum(),
                g.len() as u64,
            ));
        }
        out
    }

    proptest! {
        #[test]
        fn bars_equal_a_naive_recomputation(
            steps in proptest::collection::vec((0i64..4_000, 1i64..2_000, 0u32..3, 1u64..1_000), 1..300),
            ms in prop::sample::select(vec![1000i64, 60_000, 300_000]),
        ) {
            // Timestamps mostly rising, sometimes going back (late trades); prices at 1-3 decimals.
            let mut ts = 1_732_200_000_000i64;
            let mut trades = Vec::new();
            for (i, &(dt, cents, scale, size)) in steps.iter().enumerate() {
                ts += if i % 17 == 5 { -dt * 3 } else { dt * 40 };
                let price = Decimal::new(cents * 10i64.pow(scale), 2 + scale);
                trades.push((ts, price, size));
            }
            let mut s = Series::default();
            for (seq, &(ts, p, n)) in trades.iter().enumerate() {
                s.add(ms, 100_000, ts, p, n, seq as u64 + 1, 0, 0);
            }
            s.close_until(ms, 100_000, i64::MAX, 0);
            let got: Vec<_> = s
                .finals
                .iter()
                .map(|b| (b.start, [b.open.to_string(), b.high.to_string(), b.low.to_string(), b.close.to_string()], b.volume, b.trades))
                .collect();
            prop_assert_eq!(got, naive(&trades, ms));
        }
    }

    #[test]
    fn a_bar_ends_once_and_keeps_its_bound() {
        let p = |s: &str| Decimal::from_str(s).unwrap();
        let mut s = Series::default();
        assert_eq!(
            s.add(1000, 2, 1_500, p("1.00"), 5, 1, 0, 7),
            Added::Taken { ended: 0 }
        );
        assert_eq!(s.close_until(1000, 2, 1_999, 8), 0);
        assert_eq!(s.close_until(1000, 2, 2_000, 9), 1);
        assert_eq!(s.close_until(1000, 2, 9_000, 10), 0, "ended once");
        assert_eq!(
            s.finals[0].ended_ms, 9,
            "when it ended, by the gateway's clock"
        );
        assert_eq!(s.add(1000, 2, 1_800, p("1.01"), 5, 2, 0, 11), Added::Late);
        for (i, ts) in [2_100, 3_100, 4_100].into_iter().enumerate() {
            s.add(1000, 2, ts, p("1.02"), 1, 3 + i as u64, 0, 20 + i as i64);
        }
        // Ended at 9, 21 and 22: what a reader delayed to each time has seen.
        assert_eq!(
            (s.finals_by(20), s.finals_by(21), s.finals_by(99)),
            (1, 2, 3)
        );
        assert_eq!(s.finals_total, 3);
        assert_eq!(s.finals.len(), 2, "keep bounds the history");
        assert_eq!(s.finals_after(1).count(), 2);
        // A reader counting itself up to 2 (a mirror published before the third) gets the second.
        let between = |seen, upto| {
            s.finals_between(seen, upto)
                .map(|b| b.start)
                .collect::<Vec<_>>()
        };
        assert_eq!(between(1, 2), [2000]);
        assert_eq!(between(0, 2), [2000], "the first is no longer kept");
        assert_eq!(between(0, 1), Vec::<i64>::new());
        assert_eq!(between(2, 9), [3000], "never past finals_total");
        assert_eq!(between(3, 2), Vec::<i64>::new());
        assert_eq!(
            s.finals_after(2).map(|b| b.start).collect::<Vec<_>>(),
            [3000]
        );
        assert_eq!(s.open.unwrap().start, 4000);
    }
}
