//! Per worker, a copy of a symbol's head and its ring of recent changes (`Mirror`), refreshed
//! once per change by the worker's shard, so that its connections read without touching the
//! symbol's own lock; and what a read returns (`Published`, with the `CatchUp` a connection that
//! fell a few changes behind is owed). May not touch subscriptions or feeds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytestring::ByteString;

use super::bars::Series;
use super::trades::Tape;
use crate::fanout::Link;
use crate::model::Quote;

/// A symbol's latest state as one read sees it: the head copied, the changes borrowed from the
/// index (or a worker's mirror of it) for as long as the read lasts.
#[derive(Clone, Copy, Debug)]
pub struct Published<'a> {
    pub seq: u64,
    /// How many times the symbol's source restarted with a lower `seq` (see `index`).
    pub restarts: u64,
    /// The symbol's change counter (ticks and status-only changes), see `index`.
    pub version: u64,
    pub quote: Quote,
    pub tick_in: Option<Instant>,
    /// The changes after the connection's last `version` up to `version`, oldest first, when the
    /// index still holds them all; empty otherwise.
    pub catch_up: CatchUp<'a>,
    /// The symbol's recent trade prints.
    pub tape: &'a Tape,
    /// Per configured interval, the open bar and how many have ended (a worker's mirror keeps no
    /// final bars: `SymbolEntry::finals_between` reads them).
    pub bars: &'a [Series],
}

/// Changes of a symbol's ring, oldest first: the ring's two slices.
#[derive(Clone, Copy, Default)]
pub struct CatchUp<'a>(&'a [Recent], &'a [Recent]);

impl<'a> CatchUp<'a> {
    /// The last `n` changes of `ring` (`n` ≤ its length).
    pub(super) fn last(ring: &'a VecDeque<Recent>, n: usize) -> CatchUp<'a> {
        let start = ring.len() - n;
        let (a, b) = ring.as_slices();
        match a.get(start..) {
            Some(a) => CatchUp(a, b),
            None => CatchUp(&[], &b[start - a.len()..]),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a Recent> + 'a {
        self.0.iter().chain(self.1)
    }

    pub fn first(&self) -> Option<&'a Recent> {
        self.iter().next()
    }
}

/// As one list: where a ring's slices split is no part of what it holds.
impl std::fmt::Debug for CatchUp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One change, encoded once by the index as a frame: a tick's update (against the tick before it,
/// followed by a `status` message when the tick changed the status), or a status-only change.
#[derive(Clone, Debug)]
pub struct Recent {
    pub frame: ByteString,
    /// Bytes of the update object in `frame` (0: a status-only change), so that an SSE stream can
    /// take the messages apart without parsing.
    pub update_len: u32,
    /// The symbol's `seq` after the change.
    pub seq: u64,
    /// When the tick entered the index; `None` for a status-only change (no update in it).
    pub tick_in: Option<Instant>,
    /// When the change was applied: how long the ring keeps it past `RECENT_TICKS`.
    pub at: Instant,
}

/// A symbol's link to one worker shard, and that shard's mirror of the symbol.
pub(super) struct ShardLink {
    pub(super) link: Arc<Link>,
    pub(super) mirror: Arc<Mutex<Mirror>>,
}

/// One worker shard's copy of a symbol's latest state and ring of recent changes, refreshed by the
/// first of the shard's connections to read after a change (`Subscription::read_since`). Only the
/// shard's thread locks it, so its lock and the reference counts of its bytes stay in that core's
/// cache, where every connection reading the symbol itself would make them bounce between the
/// workers' cores.
pub(super) struct Mirror {
    /// The symbol's `generation` copied; `u64::MAX` before the first refresh.
    pub(super) generation: u64,
    pub(super) head: Head,
    pub(super) recent: VecDeque<Recent>,
    pub(super) tape: Tape,
    pub(super) bars: Vec<Series>,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror {
            generation: u64::MAX,
            head: Head::default(),
            recent: VecDeque::new(),
            tape: Tape::default(),
            bars: Vec::new(),
        }
    }
}

/// A symbol's latest state, without its ring.
#[derive(Clone, Copy, Default)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) restarts: u64,
    pub(super) version: u64,
    pub(super) quote: Quote,
    pub(super) tick_in: Option<Instant>,
}

/// The latest state plus, for a connection last sent `version = after`, the changes since from
/// `recent` (the ring up to `head.version`) when it still holds all of them.
pub(super) fn read_from<'a>(
    head: &Head,
    recent: &'a VecDeque<Recent>,
    tape: &'a Tape,
    bars: &'a [Series],
    after: Option<u64>,
) -> Option<Published<'a>> {
    if head.seq == 0 {
        return None;
    }
    let mut catch_up = CatchUp::default();
    if let Some(sent) = after.filter(|&sent| sent < head.version) {
        let behind = (head.version - sent) as usize;
        if behind <= recent.len() {
            catch_up = CatchUp::last(recent, behind);
        }
    }
    Some(Published {
        seq: head.seq,
        restarts: head.restarts,
        version: head.version,
        quote: head.quote,
        tick_in: head.tick_in,
        catch_up,
        tape,
        bars,
    })
}
