//! Per-connection limits that do not depend on I/O: token buckets for ops and for errors.

use std::time::Instant;

/// Errors a connection may provoke in a burst before it is closed with 1008 ("repeated abuse").
pub const ABUSE_ERROR_BURST: u32 = 20;
/// Errors per second a connection may keep provoking indefinitely without being closed.
pub const ABUSE_ERRORS_PER_SECOND: u32 = 2;

/// A token bucket: `capacity` tokens, refilled continuously at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    // As configured (u32), not f64: two buckets in every connection.
    capacity: u32,
    per_second: u32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32, capacity: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            per_second,
            tokens: f64::from(capacity),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens =
            (self.tokens + elapsed * f64::from(self.per_second)).min(f64::from(self.capacity));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, t0);
        assert_eq!((0..150).filter(|_| b.take(t0)).count(), 100);
        // One second later, 50 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..150).filter(|_| b.take(t1)).count(), 50);
        // Never more than the capacity, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..150).filter(|_| b.take(t2)).count(), 100);
    }
}
