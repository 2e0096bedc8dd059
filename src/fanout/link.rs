//! A symbol's link to one worker's shard (`Link`): that shard's subscribers of the symbol, queued
//! in the shard's inbox (at most once until taken) when the symbol changes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use super::{ConnPending, Shard};

/// One shard's subscribers to one symbol. Listed in the symbol's entry while it has subscribers;
/// only its shard's thread touches `subs` (subscribe, unsubscribe, deliver), so that lock is never
/// contended.
pub struct Link {
    pub(super) shard: Arc<Shard>,
    /// In the shard's inbox, not yet delivered.
    pub(super) queued: AtomicBool,
    /// Live subscribers (marked on every change), read by the ingest without a lock.
    pub(super) live: AtomicUsize,
    pub(super) subs: Mutex<Vec<Subscriber>>,
}

pub(super) struct Subscriber {
    pub(super) conn: Arc<ConnPending>,
    pub(super) slot: u32,
    /// Marked on every change; a delayed subscriber is not (its news comes from the clock).
    pub(super) live: bool,
}

impl Link {
    pub fn new(shard: Arc<Shard>) -> Arc<Link> {
        Arc::new(Link {
            shard,
            queued: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            subs: Mutex::new(Vec::new()),
        })
    }

    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// Ingest side: the symbol changed. Never awaits, never grows past one inbox entry per link.
    pub fn queue(self: &Arc<Self>) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shard.push(self.clone());
        }
    }

    pub fn add(&self, conn: &Arc<ConnPending>, slot: u32, live: bool) {
        lock(&self.subs).push(Subscriber {
            conn: conn.clone(),
            slot,
            live,
        });
        if live {
            self.live.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes a subscriber: `Some(live)` if it was there, and whether the link is now empty.
    pub fn remove(&self, conn_id: u64, slot: u32) -> (Option<bool>, bool) {
        let mut subs = lock(&self.subs);
        let removed = subs
            .iter()
            .position(|s| s.slot == slot && s.conn.id() == conn_id)
            .map(|i| subs.swap_remove(i).live);
        if removed == Some(true) {
            self.live.fetch_sub(1, Ordering::AcqRel);
        }
        (removed, subs.is_empty())
    }
}
