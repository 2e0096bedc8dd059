//! The `[limits]` section (`LimitsConfig`, which also gives `access` its per-client limits), and
//! the per-connection limits that do not depend on I/O: token buckets for ops and for errors.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::access::ClientLimits;

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

/// `[limits]`: what one connection, one client and one credential may take.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_symbols_per_connection: usize,
    pub max_frame_bytes: usize,
    pub ops_per_second: u32,
    pub ops_burst: u32,
    pub slow_consumer_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub ping_interval_ms: u64,
    pub max_connections_per_ip: usize,
    pub handshake_timeout_ms: u64,
    /// Least time between two frames of updates on one connection (a hard cap an operator may set);
    /// 0, the default, adds no delay: what became due while the worker was busy leaves together.
    pub min_frame_interval_ms: u64,
    /// The share of a worker's time, in percent, its fan-out pass may take before batches grow:
    /// a pass that took `t` owes a wait of `t × (100 − p) / p`, paid by time the worker was idle, and
    /// waited once 1 ms is owed (at most `fanout::duty::MAX_REST`), so a loaded worker writes fewer,
    /// fuller frames instead of one per update. A quiet worker never waits. 100 writes whenever the
    /// worker is free (frames grow only once it is saturated). Workers sharing a core split it
    /// (`fanout::duty`).
    pub fanout_busy_percent: u32,
    /// `SO_SNDBUF` of every WebSocket and SSE session's socket, bytes (the kernel doubles it for its bookkeeping); 0
    /// leaves the kernel's autotuning, which lets one stalled client pin up to `tcp_wmem`'s max.
    pub send_buffer_bytes: usize,
    /// Open connections per credential (an API key, or a JWT `sub`).
    pub max_connections_per_token: usize,
    /// IPv6 clients are counted per prefix of this many bits for the per-IP limits.
    pub ipv6_prefix_len: u8,
    /// Failed authentications of one token from one IP (or IPv6 prefix) within
    /// `auth_failure_window_ms`, after which that token from there gets 429 without being verified,
    /// until the window passes (`Access::check_auth_throttle`: never another token).
    pub auth_failures_per_ip: u32,
    pub auth_failure_window_ms: u64,
    /// Sockets from one IP (or IPv6 prefix) that are not yet sessions or answered (a handshake or
    /// request being sent); past it a new socket gets 429 at once. Trusted proxies are exempt.
    pub max_pending_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_symbols_per_connection: 1000,
            max_frame_bytes: 65_536,
            ops_per_second: 50,
            ops_burst: 100,
            slow_consumer_timeout_ms: 10_000,
            idle_timeout_ms: 45_000,
            ping_interval_ms: 15_000,
            max_connections_per_ip: 256,
            handshake_timeout_ms: 5_000,
            min_frame_interval_ms: 0,
            fanout_busy_percent: 80,
            send_buffer_bytes: 256 * 1024,
            max_connections_per_token: 1000,
            ipv6_prefix_len: 64,
            auth_failures_per_ip: 10,
            auth_failure_window_ms: 60_000,
            max_pending_per_ip: 64,
        }
    }
}

impl LimitsConfig {
    /// The per-client limits `Access` applies.
    pub fn client_limits(&self) -> ClientLimits {
        let limits = self;
        ClientLimits {
            max_per_ip: limits.max_connections_per_ip,
            max_per_token: limits.max_connections_per_token,
            ipv6_prefix_len: limits.ipv6_prefix_len,
            auth_failures: limits.auth_failures_per_ip,
            auth_failure_window: Duration::from_millis(limits.auth_failure_window_ms),
            max_pending_per_ip: limits.max_pending_per_ip,
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
