//! Per-client limits: the counts per IP (or IPv6 prefix), per credential and of pending sockets,
//! held by guards that release on drop, and the remembered authentication failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

use super::{Access, Credential, Refusal};

/// The per-client limits `Access` applies (from `[limits]`).
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_per_ip: usize,
    pub max_per_token: usize,
    /// IPv6 clients are counted per prefix of this many bits (one host owns a whole /64).
    pub ipv6_prefix_len: u8,
    /// Failed authentications from one IP (or prefix) within `auth_failure_window` before further
    /// attempts are refused with 429 unverified.
    pub auth_failures: u32,
    pub auth_failure_window: Duration,
    /// Sockets from one IP (or prefix) that are not yet sessions or answered.
    pub max_pending_per_ip: usize,
}

/// Most (address, credential) pairs whose recent authentication failures are remembered. Past it,
/// expired entries are dropped first; if none has expired, a new pair is not tracked (its failures
/// are still refused one by one, each costing a verification), so the table stays bounded against
/// a client that owns many addresses or sends many tokens.
pub(super) const MAX_TRACKED_FAILING_ADDRESSES: usize = 65_536;

/// Recent failed authentications of one credential from one address.
pub(super) struct Failures {
    pub(super) count: u32,
    pub(super) since: Instant,
}

/// Counts one more connection under `key`, unless `max` are open.
pub(super) fn admit<K: std::hash::Hash + Eq>(
    counts: &Mutex<HashMap<K, usize>>,
    key: K,
    max: usize,
    refusal: Refusal,
) -> Result<(), Refusal> {
    let mut counts = lock(counts);
    let n = counts.entry(key).or_insert(0);
    if *n >= max {
        return Err(refusal);
    }
    *n += 1;
    Ok(())
}

/// Counts one connection under `key` out; the map holds only keys with open connections.
pub(super) fn release<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut counts = lock(counts);
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Holds one of an IP's connection places while the connection lives.
pub struct IpGuard {
    pub(super) access: Arc<Access>,
    pub(super) ip: IpAddr,
}

impl IpGuard {
    /// The address the connection is counted under (the client's, a trusted proxy's forward).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        release(&self.access.counts.per_ip, &self.ip);
    }
}

/// Holds one of an address's places for sockets not yet sessions or answered (`None`: a trusted
/// proxy's socket, not counted).
pub struct PendingGuard {
    pub(super) access: Arc<Access>,
    pub(super) ip: Option<IpAddr>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(ip) = &self.ip {
            release(&self.access.counts.pending, ip);
        }
    }
}

/// Holds one of a credential's connection places while the connection lives.
pub struct TokenGuard {
    pub(super) access: Arc<Access>,
    pub(super) credential: Credential,
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        release(&self.access.counts.per_token, &self.credential);
    }
}

/// The places an admitted connection holds in the per-client counts.
#[derive(Default)]
pub struct ClientGuards {
    pub ip: Option<IpGuard>,
    pub token: Option<TokenGuard>,
}
