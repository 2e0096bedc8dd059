//! The part of a connection its shard touches (`ConnPending`): which of its slots have news (at
//! most one mark per slot: the conflation), its clock flag, and its task's wake-up.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::lock;

use super::clock::{clock_ms, NEVER};
use super::Shard;

pub(super) static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// The part of a connection its shard touches: which of its slots have news, and its wake-up.
pub struct ConnPending {
    pub(super) id: u64,
    pub(super) shard: Arc<Shard>,
    /// Its marks and its task's wake-up, behind one lock: a mark is one lock and at most one wake.
    pub(super) dirty: Mutex<Dirty>,
    /// When the connection next needs its clock (`clock_ms`), or `NEVER`.
    pub(super) due: AtomicU64,
    /// Closed: the shard's clock forgets it.
    pub(super) gone: AtomicBool,
    /// `Alerts::reloads` when the shard's clock last woke it for one.
    pub(super) reloads_seen: AtomicU64,
    /// Where the worker's writer finds the connection (`WriteFromPass`), or `NO_WRITER`.
    pub(super) writer_key: AtomicU32,
}

pub(super) const NO_WRITER: u32 = u32::MAX;

#[derive(Default)]
pub(super) struct Dirty {
    /// Slots with news, each at most once.
    pub(super) list: Vec<u32>,
    /// Which slots are in `list`.
    pub(super) flags: SlotBits,
    /// The shard's clock fired for this connection (a deadline passed, or its gateway closes).
    pub(super) clock: bool,
    pub(super) closed: bool,
    /// A wake-up the task has not seen yet (`wake` before the task waited).
    pub(super) woken: bool,
    /// The connection task, while it waits (`poll_wait`). Not a `Notify`: its `Notified` future
    /// would add 80 bytes to every connection's task.
    pub(super) waker: Option<Waker>,
}

/// A set of slot ids: the first 64 in a word of their own, since most connections hold fewer
/// symbols than that and an allocation would be part of every idle connection.
#[derive(Default)]
pub(super) struct SlotBits {
    pub(super) low: u64,
    pub(super) high: Vec<u64>,
}

impl SlotBits {
    /// Adds `slot`; false if it was there.
    pub(super) fn set(&mut self, slot: u32) -> bool {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        let w = if word == 0 {
            &mut self.low
        } else {
            if self.high.len() < word {
                self.high.resize(word, 0);
            }
            &mut self.high[word - 1]
        };
        let was = *w & bit != 0;
        *w |= bit;
        !was
    }

    pub(super) fn clear(&mut self, slot: u32) {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        if word == 0 {
            self.low &= !bit;
        } else if let Some(w) = self.high.get_mut(word - 1) {
            *w &= !bit;
        }
    }
}

impl Dirty {
    /// Appends the marked slots to `out` and clears them.
    pub(super) fn move_into(&mut self, out: &mut Vec<u32>) {
        for &slot in &self.list {
            self.flags.clear(slot);
        }
        if out.is_empty() {
            // No copy: `out` takes the list, and the list `out`'s empty buffer.
            std::mem::swap(&mut self.list, out);
        } else {
            out.append(&mut self.list);
        }
    }
}

impl ConnPending {
    /// A connection served by this thread's shard.
    pub fn new() -> Arc<ConnPending> {
        Arc::new(ConnPending {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            shard: Shard::current(),
            dirty: Mutex::new(Dirty::default()),
            due: AtomicU64::new(NEVER),
            gone: AtomicBool::new(false),
            reloads_seen: AtomicU64::new(0),
            writer_key: AtomicU32::new(NO_WRITER),
        })
    }

    /// When this connection next needs a clock event (`None`: never, until its gateway closes).
    pub fn set_due(&self, at: Option<Instant>) {
        self.due
            .store(at.map_or(NEVER, clock_ms), Ordering::Release);
    }

    /// Clock side: wakes the connection with a clock event. Always the task, whatever its marks:
    /// the event must not depend on who takes them (the shard's write, or the task's own flush
    /// after a client frame), nor wait for a batching window, which would delay pings, the idle
    /// close and shutdown's 1001 by up to the window, or for ever once the marks were taken
    /// elsewhere. One wake per deadline, so this costs nothing the clock did not already.
    pub(super) fn clock_event(&self) {
        {
            let mut d = lock(&self.dirty);
            if d.closed || d.clock {
                return;
            }
            d.clock = true;
        }
        self.wake();
    }

    /// Whether some slot is marked (and not yet taken).
    #[cfg(test)]
    pub(super) fn has_marks(&self) -> bool {
        !lock(&self.dirty).list.is_empty()
    }

    /// Connection side: whether the clock fired since the last call.
    pub fn take_clock(&self) -> bool {
        std::mem::take(&mut lock(&self.dirty).clock)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// There is news for `slot`. Constant time, never awaits, never grows past one entry per
    /// slot: this is where a slow connection's backlog is conflated away. Only the first mark after
    /// a take wakes the connection task, so a hot symbol costs one wake per frame, not per tick.
    pub fn mark(&self, slot: u32) {
        if self.mark_quiet(slot) {
            self.wake();
        }
    }

    /// `mark` without the wake-up: true when the connection had no dirty slot before, and so
    /// needs one (or a write on its behalf, `Shard::run_pass`).
    pub(super) fn mark_quiet(&self, slot: u32) -> bool {
        let mut d = lock(&self.dirty);
        if d.closed || !d.flags.set(slot) {
            return false;
        }
        d.list.push(slot);
        d.list.len() == 1
    }

    /// Wakes the connection's task.
    pub fn wake(&self) {
        let waker = {
            let mut d = lock(&self.dirty);
            d.woken = true;
            d.waker.take()
        };
        // Outside the lock: the task may run (and take the lock) before `wake` returns.
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The task's take (its own flush, after a client frame or a wake-up): appends the dirty slots
    /// to `out` and clears them. The shard's news is left to the shard's pass, which writes it for
    /// every connection in one go: a task delivering it here would turn every connection that pass
    /// would have written into a woken task. A pending clock event stays for `take_clock`.
    pub fn take_marks(&self, out: &mut Vec<u32>) {
        lock(&self.dirty).move_into(out);
    }

    /// The pass's take (`Shard::run_pass` writing this connection): like `take_marks`, but takes
    /// nothing and returns false while a clock event waits, so that the task, which the clock woke
    /// already, handles both in order.
    pub fn take_marks_for_pass(&self, out: &mut Vec<u32>) -> bool {
        let mut d = lock(&self.dirty);
        if d.clock {
            return false;
        }
        d.move_into(out);
        true
    }

    /// Unit tests' take: the shard's news delivered first where no pass runs.
    #[cfg(test)]
    pub(crate) fn take(&self, out: &mut Vec<u32>) {
        if !self.shard.running.load(Ordering::Acquire) {
            self.shard.deliver();
        }
        self.take_marks(out);
    }

    /// The key the worker's writer registered this connection under (`set_writer_key`).
    pub fn writer_key(&self) -> Option<u32> {
        let key = self.writer_key.load(Ordering::Acquire);
        (key != NO_WRITER).then_some(key)
    }

    /// Registers the connection with its worker's writer (`None`: not anymore).
    pub fn set_writer_key(&self, key: Option<u32>) {
        self.writer_key
            .store(key.unwrap_or(NO_WRITER), Ordering::Release);
    }

    /// Ready once the connection was woken (a slot marked, a clock event, the pass handing it a
    /// write) since the last time it was ready.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut d = lock(&self.dirty);
        if std::mem::take(&mut d.woken) {
            return Poll::Ready(());
        }
        if !d.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            d.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Stops accepting marks (the connection is going away) and frees the lists.
    pub fn close(&self) {
        self.gone.store(true, Ordering::Release);
        let mut d = lock(&self.dirty);
        d.closed = true;
        d.list = Vec::new();
        d.flags = SlotBits::default();
        d.waker = None;
    }

    /// Slots waiting (after the shard's news is delivered); never more than the connection's
    /// subscribed symbols.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.shard.deliver();
        lock(&self.dirty).list.len()
    }
}
