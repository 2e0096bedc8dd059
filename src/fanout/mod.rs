//! Stage 4, the per-worker fan-out: a tick reaches each worker once, and the worker marks its own
//! connections.
//!
//! Owns: the `Shard` and its pass and batching windows (here), the pass's duty cycle (`duty.rs`),
//! the connections' clock (`clock.rs`), a connection's marks (`pending.rs`), a symbol's link to a
//! shard (`link.rs`). May not touch the index's data, views or sockets: it writes through the
//! `PassHooks` the session gives it.
//!
//! Every thread that serves connections (an actix worker) has one [`Shard`]. A symbol's entry in
//! the index lists one [`Link`] per shard that has subscribers for it, and each link lists that
//! shard's subscribers. The ingest task, applying a tick, queues the symbol's links in their
//! shards' inboxes (once per link until the shard takes it: the dedup is the link's `queued` flag)
//! and wakes a shard only when its inbox was empty. So a batch of ticks costs one cross-thread
//! hand-off per worker, not one wake per connection (a wake per subscribed task on another thread
//! would be the most expensive part of a tick).
//!
//! On its own thread the shard then marks each subscriber's slot ([`ConnPending::mark`]) and, in the
//! same pass, writes each marked connection's frame itself, one connection after the other, through
//! the worker's `PassHooks::write` (`session/writer.rs`, `write_from_pass`): whatever was marked while the
//! worker was busy leaves in one frame per connection, back to back, so batches grow by themselves
//! under load and a quiet worker writes at once (this is how uWebSockets corks). Ticks that arrive
//! during the pass join the frames it has still to write, and a pass that took much of the
//! worker's time is followed by a rest (`Duty`), so frames grow before the worker saturates.
//! A connection's task is woken only when the pass cannot write for it: its task is using the
//! socket (a client frame, a socket that did not take a frame), a clock event is pending, or the
//! connection must end. A connection in a batching window (`min_frame_interval_ms`) keeps its marks
//! and is written by the shard when the window ends (`Shard::hold`, `Shard::release`: one timer per
//! worker, not one per connection). News is delivered by the pass only, even when a
//! connection's task writes (`ConnPending::take_marks`): a task delivering it would mark, and so
//! wake, every connection the pass would have written.
//!
//! The shard is also its connections' clock: each connection says when it next needs the time
//! (`ConnPending::set_due`: its next ping, idle check or token expiry), and one tick of the shard
//! every `CLOCK_TICK` wakes those that are due, and all of them when their gateway shuts down. No
//! connection arms a timer of its own, so a wake-up polls no timers, and an idle connection's task
//! holds none.
//!
//! The shard is a consumer of the index's changes like `ChangeLog` (a scale-out ingest's
//! publisher): when ticks come from NATS on an edge, they enter the index as states and reach the
//! shards through the same links.

mod clock;
mod duty;
mod link;
mod pending;

pub use clock::CLOCK_TICK;
pub use link::Link;

pub use pending::ConnPending;

use std::collections::VecDeque;
#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::sync::lock;

use clock::{clock_ms, NEVER};
use duty::{Duty, PassStart, SHARDS_RUNNING};

thread_local! {
    /// The shard of connections created on this thread.
    static CURRENT: Arc<Shard> = Arc::new(Shard::default());
}

/// What makes a shard's clock wake every connection of a gateway at once: the gateway closing,
/// or its access settings reloaded (each connection then checks how it was admitted again).
#[derive(Default)]
pub struct Alerts {
    pub closing: AtomicBool,
    /// +1 for every reload.
    pub reloads: std::sync::atomic::AtomicU64,
}

/// One worker's fan-out: the inbox the ingest task fills and the task that empties it.
#[derive(Default)]
pub struct Shard {
    /// Links with news, each at most once (`Link::queued`).
    inbox: Mutex<Vec<Arc<Link>>>,
    /// Set (under the inbox's lock) when the inbox holds something: lets a connection's `take`
    /// skip the lock when there is nothing to deliver.
    news: AtomicBool,
    notify: Notify,
    /// Whether this shard's delivery task runs (`ensure_running`).
    running: AtomicBool,
    /// Links queued and delivered, for the unit tests.
    #[cfg(test)]
    delivered: AtomicUsize,
    /// The connections this shard keeps time for (`clock_in`), and their gateway's `Alerts`.
    clocked: Mutex<Vec<(Arc<ConnPending>, Arc<Alerts>)>>,
    /// Connections in a batching window (`min_frame_interval_ms`), with the window's end, in
    /// that order: every window is as long, so the order they were pushed in (`hold`) is it. One
    /// entry per frame written in the last window (24 bytes), so at most one per connection
    /// unless its client's ops made it flush again (rate-limited, `ops_per_second`).
    held: Mutex<VecDeque<(Instant, Arc<ConnPending>)>>,
}

impl Shard {
    /// This thread's shard.
    pub fn current() -> Arc<Shard> {
        CURRENT.with(Arc::clone)
    }

    /// Starts this shard's delivery task on the current `LocalSet` unless it runs: called by each
    /// connection task when it starts, so the task exists on every worker that serves connections
    /// (and again on a thread whose runtime was replaced, which dropped the old task).
    ///
    /// `hooks.write` is the worker's writer (`session/writer.rs`, `write_from_pass`): the shard
    /// hands it every connection its pass marked, and wakes the connection's task only for those it
    /// could not write.
    pub fn ensure_running(self: &Arc<Self>, hooks: PassHooks) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let shard = self.clone();
        SHARDS_RUNNING.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_local(async move {
            // Cleared when the task is dropped with its runtime, so the next connection restarts it.
            let _running = Running(shard.clone());
            let mut clock = tokio::time::interval(CLOCK_TICK);
            clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pass = Pass::default();
            let mut duty = Duty::default();
            // When the last pass (or its rest) ended: the time since counts as rest (`Duty`).
            let mut idle_since = Instant::now();
            // The end of the first batching window (`held`): one timer for the worker, not one per
            // windowed connection.
            let mut release = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
            loop {
                let release_at = shard.next_release().map(tokio::time::Instant::from_std);
                if let Some(at) = release_at.filter(|&at| at != release.deadline()) {
                    release.as_mut().reset(at);
                }
                // Not biased: under load `notified` is ready after every pass, and a biased select
                // would never get to the windows' or the clock's branch.
                let started = tokio::select! {
                    _ = shard.notify.notified() => {
                        let started = PassStart::now();
                        // Windows that ended leave with this pass (their news is the oldest).
                        shard.release(started.at, hooks.write);
                        shard.run_pass(&mut pass, hooks.write);
                        Some(started)
                    }
                    _ = &mut release, if release_at.is_some() => {
                        let started = PassStart::now();
                        shard.release(started.at, hooks.write);
                        Some(started)
                    }
                    _ = clock.tick() => {
                        shard.tick(Instant::now());
                        None
                    }
                };
                if let Some(started) = started {
                    // Backpressure on the whole worker: passes that took much of its time are
                    // followed by a rest, so the next pass finds more ticks per connection and
                    // writes fewer, fuller frames, and windows that end meanwhile leave a little
                    // later, with more in them (`Duty`). Ticks meanwhile wait in the inbox (one
                    // link per symbol) and the symbols' rings, never dropped.
                    let idle = started.at.saturating_duration_since(idle_since);
                    let cost = started.cost();
                    idle_since = started.at + cost.wall;
                    if let Some(rest) = duty.after(idle, cost, hooks.busy_percent) {
                        tokio::time::sleep(rest).await;
                        hooks.rested.inc_by(rest.as_secs_f64());
                        idle_since = Instant::now();
                    }
                }
                (hooks.end_of_pass)();
                // Under load the inbox has news again by the end of every pass, and `notified`
                // would be ready at once forever: the pass yields to the worker's other tasks
                // (handshakes, client ops, writes handed back) after each turn, so none starves.
                tokio::task::yield_now().await;
            }
        });
    }

    /// One pass of the shard: marks every subscriber of every queued link, then writes each marked
    /// connection's frame right here, one after the other (uWebSockets' cork: what the pass
    /// marked leaves in one frame per connection, back to back). A connection `write` cannot
    /// serve at once (its task is busy with the socket, a clock event is pending, the frame did not
    /// fit the socket) is woken and writes from its own task; one in its batching window is
    /// written by `release` when the window ends.
    ///
    /// Ticks that arrive during the pass are delivered between its writes: a connection still to
    /// be written in this pass is marked already, so its frame takes the new ticks along; one the
    /// new ticks mark afresh (written earlier in this pass, or not in it) is written first in the
    /// next pass, so a pass covers the connections it started with and ends.
    pub fn run_pass(&self, pass: &mut Pass, write: WriteFromPass) {
        let Pass { writing, next } = pass;
        // Left over from the last pass: theirs is the oldest news.
        std::mem::swap(writing, next);
        self.deliver_with(|conn| writing.push(conn.clone()));
        for conn in writing.drain(..) {
            if !write(&conn) {
                conn.wake();
            }
            self.deliver_with(|conn| next.push(conn.clone()));
        }
        if !next.is_empty() {
            // The next pass comes whether or not another tick does.
            self.notify.notify_one();
        }
    }

    /// A frame left for `conn` under `min_frame_interval_ms`: until `until`, its news waits (its
    /// writes say so without waking its task), then the shard's `release` writes it. Called in
    /// frame order, so `until` never decreases.
    pub fn hold(&self, until: Instant, conn: &Arc<ConnPending>) {
        let first = {
            let mut held = lock(&self.held);
            held.push_back((until, conn.clone()));
            held.len() == 1
        };
        if first {
            // The shard's task arms its timer for it after the pass this starts.
            self.notify.notify_one();
        }
    }

    fn next_release(&self) -> Option<Instant> {
        lock(&self.held).front().map(|&(at, _)| at)
    }

    /// Hands every connection whose window ended by `now` to the writer, in one pass like
    /// `run_pass`'s. All of them, marked or not: what waits for the window's end is not
    /// only marks but also the rest of a flush whose frame reached `FRAME_TARGET_BYTES` while
    /// the socket was full (the session's unfinished work), which only the writer sees. A
    /// connection with nothing owed costs one write that writes nothing.
    fn release(&self, now: Instant, write: WriteFromPass) {
        loop {
            let conn = {
                let mut held = lock(&self.held);
                match held.front() {
                    Some(&(at, _)) if at <= now => held.pop_front().map(|(_, c)| c),
                    _ => None,
                }
            };
            let Some(conn) = conn else { break };
            // A connection written again since it was held (its task's flush) is held later
            // once more, and its write here says so.
            if !write(&conn) {
                conn.wake();
            }
        }
    }

    /// How many connections the clock keeps time for (closed ones until its next tick).
    #[cfg(test)]
    pub(crate) fn clocked(&self) -> usize {
        lock(&self.clocked).len()
    }

    /// Keeps time for `conn` (until it closes): it gets a clock event when its deadline
    /// (`ConnPending::set_due`) passes, and at once when its gateway's `alerts` say so.
    pub fn clock_in(&self, conn: Arc<ConnPending>, alerts: Arc<Alerts>) {
        conn.reloads_seen
            .store(alerts.reloads.load(Ordering::Acquire), Ordering::Relaxed);
        lock(&self.clocked).push((conn, alerts));
    }

    /// One clock tick: wakes every connection that is due, whose gateway is closing or whose
    /// access settings were reloaded since, and forgets closed ones. Atomic loads only, for every
    /// connection of the worker.
    pub fn tick(&self, now: Instant) {
        let now_ms = clock_ms(now);
        lock(&self.clocked).retain(|(conn, alerts)| {
            if conn.gone.load(Ordering::Acquire) {
                return false;
            }
            let due = conn.due.load(Ordering::Acquire) <= now_ms;
            let reloads = alerts.reloads.load(Ordering::Acquire);
            let reloaded = conn.reloads_seen.load(Ordering::Relaxed) != reloads;
            if due || reloaded || alerts.closing.load(Ordering::Acquire) {
                conn.reloads_seen.store(reloads, Ordering::Relaxed);
                // Fired once per deadline: the connection sets its next one when it handles this.
                conn.due.store(NEVER, Ordering::Release);
                conn.clock_event();
            }
            true
        });
    }

    /// Ingest side: `link` has news. The first link queued after a delivery wakes the shard: one
    /// cross-thread wake per worker per batch of ticks.
    fn push(&self, link: Arc<Link>) {
        let wake = {
            let mut inbox = lock(&self.inbox);
            inbox.push(link);
            self.news.store(true, Ordering::Release);
            inbox.len() == 1
        };
        if wake {
            self.notify.notify_one();
        }
    }

    /// `run_pass` without the writes, for unit tests that take marks themselves.
    #[cfg(test)]
    pub(crate) fn deliver(&self) {
        self.deliver_with(|conn| conn.wake());
    }

    /// Worker side: marks the slot of every live subscriber of every queued link, calling
    /// `first_mark` for each connection that had no dirty slot before. Never awaits; a slot already
    /// marked is left as it is (`ConnPending::mark`), so this costs one mark per subscriber per
    /// pass whatever the number of ticks behind it.
    fn deliver_with(&self, mut first_mark: impl FnMut(&Arc<ConnPending>)) {
        if !self.news.load(Ordering::Acquire) {
            return;
        }
        let links = {
            let mut inbox = lock(&self.inbox);
            self.news.store(false, Ordering::Release);
            std::mem::take(&mut *inbox)
        };
        #[cfg(test)]
        self.delivered.fetch_add(links.len(), Ordering::Relaxed);
        for link in links {
            // Cleared before the marks, and with an acquiring swap: a tick applied after this
            // queues the link again, and the connections marked below read every tick before it.
            link.queued.swap(false, Ordering::AcqRel);
            for sub in lock(&link.subs).iter().filter(|s| s.live) {
                if sub.conn.mark_quiet(sub.slot) {
                    first_mark(&sub.conn);
                }
            }
        }
    }

    /// How many queued links this shard has delivered.
    #[cfg(test)]
    pub(crate) fn delivered(&self) -> usize {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// The connections of the shard's pass (`Shard::run_pass`): its kept allocations.
#[derive(Default)]
pub struct Pass {
    /// Being written in this pass.
    writing: Vec<Arc<ConnPending>>,
    /// Marked afresh during the last pass: written first in the next one.
    next: Vec<Arc<ConnPending>>,
}

struct Running(Arc<Shard>);

impl Drop for Running {
    fn drop(&mut self) {
        SHARDS_RUNNING.fetch_sub(1, Ordering::Relaxed);
        self.0.running.store(false, Ordering::Release);
    }
}

/// The worker's writer: writes a connection's marked slots at once, from the shard's pass, and
/// says whether it did, or left them for the end of the connection's batching window (`hold`);
/// false: the connection's task must be woken to do it.
pub type WriteFromPass = fn(&ConnPending) -> bool;

/// What the shard's task calls on its worker's connections (`Shard::ensure_running`).
#[derive(Clone)]
pub struct PassHooks {
    /// Per connection its pass marked.
    pub write: WriteFromPass,
    /// After every pass and clock tick: publishes what the worker buffers (its latency
    /// observations).
    pub end_of_pass: fn(),
    /// `limits.fanout_busy_percent`: how much of the worker's time passes may take (`Duty`).
    pub busy_percent: u32,
    /// Counts the rests (`quotegw_fanout_rest_seconds_total`).
    pub rested: prometheus::Counter,
}

#[cfg(test)]
mod tests;
