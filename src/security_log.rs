//! Security events, logged: refused handshakes (401, 403, 429, 503), abuse closes (1008, 1009) and
//! slow-consumer closes (4008), each with the peer's address and the reason, never a token. Users
//! ask "why was my client disconnected" and operators "who is hammering us": the metrics count
//! these, the log names them.
//!
//! Rate-limited for the whole process (a flood of refusals must not fill the disk or drown the
//! first lines): a burst of 20 lines, then 5 a second; lines over the limit are counted and the next
//! line logged says how many were suppressed.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::log_limit::LogLimiter;

static LIMITER: LogLimiter = LogLimiter::new(20, 5);

fn admit() -> Option<u64> {
    LIMITER.admit(Instant::now())
}

/// A request refused before anything was served: a WebSocket upgrade, an SSE stream or a REST
/// request (`transport`). `client` is the address a trusted proxy forwarded, when it differs
/// from the peer's.
pub fn refused(
    peer: Option<SocketAddr>,
    client: Option<IpAddr>,
    transport: &str,
    status: u16,
    reason: &str,
) {
    if let Some(suppressed) = admit() {
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let client = client.map_or_else(|| "-".to_string(), |c| c.to_string());
        tracing::warn!(
            target: "quotegw::security",
            %peer,
            %client,
            transport,
            status,
            reason,
            suppressed,
            "request refused"
        );
    }
}

/// A connection closed by the gateway for abuse (1008, 1009) or as a slow consumer (4008);
/// `client` is the address it is counted under.
pub fn closed(peer: Option<SocketAddr>, client: Option<IpAddr>, code: u16, reason: &str) {
    if let Some(suppressed) = admit() {
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        let client = client.map_or_else(|| "-".to_string(), |c| c.to_string());
        tracing::warn!(
            target: "quotegw::security",
            %peer,
            %client,
            code,
            reason,
            suppressed,
            "connection closed"
        );
    }
}
