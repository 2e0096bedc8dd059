//! The delayed tier's history (each symbol's past states, kept for the delay) and the throttled
//! tier's sample (the states taken once per interval).

use crate::model::Quote;

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
pub(super) struct Sampled {
    /// The interval (its start, epoch ms) of the latest change; `i64::MIN` for a state that has
    /// been there since before any interval looked at (a seeded one).
    pub(super) last_interval_ms: i64,
    /// The state after the latest change.
    pub(super) last: Option<HistoryEntry>,
    /// The state when `last_interval_ms`'s interval began: the last one before it.
    pub(super) at_start: Option<HistoryEntry>,
}

impl Sampled {
    /// The sample at `now_ms`, and when the next interval begins if a later state waits for it.
    pub(super) fn at(&self, interval_ms: i64, now_ms: i64) -> PastState {
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
