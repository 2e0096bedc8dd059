//! The shard's clock: one tick every `CLOCK_TICK` for all of a worker's connections, on a
//! millisecond count (`clock_ms`) a connection's deadline fits in one atomic.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a shard looks at its connections' deadlines: the precision of pings, idle timeouts,
/// token expiry and shutdown.
pub const CLOCK_TICK: Duration = Duration::from_millis(50);

/// `ConnPending::due`: no deadline.
pub(super) const NEVER: u64 = u64::MAX;

/// The clock's origin: deadlines are milliseconds since this instant.
pub(super) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn clock_ms(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}
