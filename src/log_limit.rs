//! Log lines that a client or an upstream can provoke are limited, and what they quote from it is
//! cut short: a flood of refusals or a hostile upstream putting megabytes into a field must not
//! fill the disk or drown the lines an operator needs.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Instant;

use crate::sync::lock;

/// A token bucket for log lines: a burst, then a steady rate; lines over it are counted, and the
/// next line let through says how many were suppressed.
pub struct LogLimiter {
    burst: f64,
    per_second: f64,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(burst: u32, per_second: u32) -> LogLimiter {
        LogLimiter {
            burst: burst as f64,
            per_second: per_second as f64,
            state: Mutex::new(LimiterState {
                tokens: burst as f64,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = lock(&self.state);
        let elapsed = s
            .last
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        s.last = Some(now);
        s.tokens = (s.tokens + elapsed * self.per_second).min(self.burst);
        if s.tokens < 1.0 {
            s.suppressed += 1;
            return None;
        }
        s.tokens -= 1.0;
        Some(std::mem::take(&mut s.suppressed))
    }
}

/// Longest text quoted from outside in a log line.
pub const QUOTED_MAX_CHARS: usize = 200;

/// `text`, cut to `QUOTED_MAX_CHARS` characters with a note of how long it was.
pub fn truncated(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(QUOTED_MAX_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes in all)", &text[..cut], text.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_the_count_of_what_was_held_back() {
        let l = LogLimiter::new(2, 1);
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn long_text_is_cut() {
        assert_eq!(truncated("short"), "short");
        let long = "é".repeat(1_000_000);
        let cut = truncated(&long);
        assert!(cut.chars().count() < QUOTED_MAX_CHARS + 40, "{}", cut.len());
        assert!(cut.ends_with("(2000000 bytes in all)"), "{cut}");
    }
}
