//! A symbol's tape: its recent trade prints, each encoded once as the `trade` message every
//! subscriber is sent, in a ring bounded by `[trades] keep`.
//!
//! Trades are events, never merged: a connection keeps a cursor (the number of the next print it
//! wants, `TapeCursor`) and reads every print after it. One that fell further behind than the ring
//! reaches is told exactly what it missed (`Lost`: how many prints, and their `seq` range), then gets
//! what the ring still holds. Backpressure is decided here: the ring's bound is the most a symbol
//! holds for its slowest reader, so a client that stops reading costs memory per symbol, never per
//! trade.
//!
//! Memory: about 150 bytes per kept print (its message, ~90 bytes, and this record), so with the
//! default `keep` of 128 at most ~19 KiB per symbol that trades, and once more per worker with
//! subscribers to it (its mirror shares the bytes; only the records are its own).

use std::collections::VecDeque;

use bytestring::ByteString;
use serde::Deserialize;

/// `[trades]`: how many prints each symbol keeps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TradesConfig {
    /// Prints kept per symbol: how far behind a connection may fall before `trades_lost`, and
    /// what `GET /v1/trades` can return.
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_keep() -> usize {
    128
}

impl Default for TradesConfig {
    fn default() -> Self {
        TradesConfig {
            keep: default_keep(),
        }
    }
}

/// The most prints a symbol may keep.
pub const MAX_TRADES_KEEP: usize = 65_536;

impl TradesConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if (1..=MAX_TRADES_KEEP).contains(&self.keep) {
            Ok(())
        } else {
            Err((
                "trades.keep".into(),
                format!("must be between 1 and {MAX_TRADES_KEEP}"),
            ))
        }
    }
}

/// One print as kept: its `seq` and its encoded `trade` message.
#[derive(Clone, Debug)]
pub struct Print {
    pub seq: u64,
    pub ts: i64,
    /// When the index took it (gateway clock, ms): the delayed tier sees it `delay_ms` later.
    pub at_ms: i64,
    pub message: ByteString,
}

/// A symbol's recent prints.
#[derive(Clone, Debug, Default)]
pub struct Tape {
    /// Prints ever recorded: the number the next one gets.
    total: u64,
    ring: VecDeque<Print>,
    /// `seq` of the newest print that left the ring (0: none has).
    gone_seq: u64,
}

/// Prints a reader was not sent and can no longer be: how many and their `seq` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    pub count: u64,
    /// The first `seq` after what the reader last got of the symbol (its snapshot or a print): the
    /// lost prints lie in `from_seq..=to_seq`, and are the only prints there.
    pub from_seq: u64,
    pub to_seq: u64,
}

/// Where a reader is in a symbol's tape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapeCursor {
    /// The number of the next print it wants.
    pub next: u64,
    /// The `seq` it last got of the symbol (snapshot or print).
    pub seen_seq: u64,
}

impl Tape {
    /// No print (a static's value).
    pub const EMPTY: Tape = Tape {
        total: 0,
        ring: VecDeque::new(),
        gone_seq: 0,
    };

    pub fn push(&mut self, print: Print, keep: usize) {
        while self.ring.len() >= keep {
            if let Some(gone) = self.ring.pop_front() {
                self.gone_seq = gone.seq;
            }
        }
        super::bars::grow_within(&mut self.ring, keep);
        self.ring.push_back(print);
        self.total += 1;
    }

    /// (scale-out edge) `count` prints that will never arrive (the ingest's publisher merged the
    /// states that carried them), the last of them at `to_seq`. The ring restarts after them: its
    /// numbering must stay contiguous, so a reader still in it is told it lost those too.
    pub fn skip(&mut self, count: u64, to_seq: u64) {
        self.ring.clear();
        self.total += count;
        self.gone_seq = to_seq;
    }

    /// The cursor of a reader that has seen the symbol up to `seq` and wants what prints next.
    pub fn cursor_at(&self, seq: u64) -> TapeCursor {
        TapeCursor {
            next: self.total,
            seen_seq: seq,
        }
    }

    /// What `cursor` is owed: the prints it lost, then those the ring holds after it.
    pub fn since(&self, cursor: TapeCursor) -> (Option<Lost>, impl Iterator<Item = &Print>) {
        let first = self.total - self.ring.len() as u64;
        let lost = (cursor.next < first).then(|| Lost {
            count: first - cursor.next,
            from_seq: cursor.seen_seq + 1,
            to_seq: self.gone_seq,
        });
        let skip = cursor
            .next
            .saturating_sub(first)
            .min(self.ring.len() as u64) as usize;
        (lost, self.ring.range(skip..))
    }

    /// (the delayed tier) the cursor of a reader that has seen the symbol as it was at `cutoff_ms`
    /// (gateway clock), at `seq`: the next print it wants is the first the index took later.
    pub fn cursor_at_time(&self, cutoff_ms: i64, seq: u64) -> TapeCursor {
        let newer = self.ring.len() - self.ring.partition_point(|p| p.at_ms <= cutoff_ms);
        TapeCursor {
            next: self.total - newer as u64,
            seen_seq: seq,
        }
    }

    /// (the delayed tier) `since`, up to the prints taken by `cutoff_ms`, and when the next print
    /// after those becomes due (its `at_ms`).
    pub fn since_until(
        &self,
        cursor: TapeCursor,
        cutoff_ms: i64,
    ) -> (Option<Lost>, Vec<&Print>, Option<i64>) {
        let (lost, rest) = self.since(cursor);
        let mut due = Vec::new();
        let mut next = None;
        for p in rest {
            if p.at_ms > cutoff_ms {
                next = Some(p.at_ms);
                break;
            }
            due.push(p);
        }
        (lost, due, next)
    }

    /// The newest `limit` prints the index took by `cutoff_ms` (`i64::MAX`: all), oldest first
    /// (`GET /v1/trades`; the delayed and throttled tiers' past).
    pub fn last_by(&self, limit: usize, cutoff_ms: i64) -> impl Iterator<Item = &Print> {
        let upto = self.ring.partition_point(|p| p.at_ms <= cutoff_ms);
        self.ring.range(upto.saturating_sub(limit)..upto)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Brings a worker's copy up to this tape: the prints it does not have yet (sharing their
    /// bytes), the ring's bound kept.
    pub fn mirror_into(&self, copy: &mut Tape) {
        let first = self.total - self.ring.len() as u64;
        let have = if copy.total < first || copy.total > self.total {
            copy.ring.clear();
            first
        } else {
            copy.total
        };
        let skip = (have - first) as usize;
        copy.ring.extend(self.ring.range(skip..).cloned());
        while copy.ring.len() > self.ring.len() {
            copy.ring.pop_front();
        }
        copy.total = self.total;
        copy.gone_seq = self.gone_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(seq: u64) -> Print {
        Print {
            seq,
            ts: seq as i64,
            at_ms: seq as i64 * 10,
            message: ByteString::from(format!("{{\"seq\":{seq}}}")),
        }
    }

    #[test]
    fn a_reader_behind_the_ring_is_told_exactly_what_it_lost() {
        let mut t = Tape::default();
        t.push(print(3), 4);
        let c = t.cursor_at(3); // saw seq 3 and its print
        for seq in [5, 6, 8, 9, 10, 12] {
            t.push(print(seq), 4);
        }
        let (lost, rest) = t.since(c);
        assert_eq!(
            lost,
            Some(Lost {
                count: 2,
                from_seq: 4,
                to_seq: 6
            })
        );
        assert_eq!(rest.map(|p| p.seq).collect::<Vec<_>>(), [8, 9, 10, 12]);
        let (lost, rest) = t.since(t.cursor_at(12));
        assert_eq!((lost, rest.count()), (None, 0));
        let newest = |limit, cutoff| t.last_by(limit, cutoff).map(|p| p.seq).collect::<Vec<_>>();
        assert_eq!(newest(2, i64::MAX), [10, 12]);
        assert_eq!(newest(2, 100), [9, 10], "taken by 100 (at_ms is seq × 10)");
    }

    #[test]
    fn prints_skipped_are_lost_to_every_reader_behind_them() {
        let mut t = Tape::default();
        let behind = t.cursor_at(1); // before print 2
        t.push(print(2), 8);
        let current = t.cursor_at(2);
        t.skip(3, 7); // three prints, the last at seq 7, never arrived
        t.push(print(9), 8);
        let (lost, rest) = t.since(current);
        assert_eq!(
            (lost, rest.map(|p| p.seq).collect::<Vec<_>>()),
            (
                Some(Lost {
                    count: 3,
                    from_seq: 3,
                    to_seq: 7
                }),
                vec![9]
            )
        );
        let (lost, _) = t.since(behind);
        assert_eq!(lost.map(|l| (l.count, l.to_seq)), Some((4, 7)));
    }

    #[test]
    fn a_mirror_follows_without_copying_twice() {
        let mut t = Tape::default();
        let mut m = Tape::default();
        for seq in 1..=3 {
            t.push(print(seq), 4);
        }
        t.mirror_into(&mut m);
        for seq in 4..=9 {
            t.push(print(seq), 4);
            if seq == 5 {
                t.mirror_into(&mut m);
            }
        }
        t.mirror_into(&mut m);
        let seqs = |t: &Tape| t.ring.iter().map(|p| p.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&m), seqs(&t));
        assert_eq!((m.total, m.gone_seq), (t.total, t.gone_seq));
    }
}
