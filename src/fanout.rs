//! Stage 4, the per-worker fan-out: a tick reaches each worker once, and the worker marks its own
//! connections.
//!
//! Every thread that serves connections (an actix worker) has one [`Shard`]. A symbol's entry in
//! the index lists one [`Link`] per shard that has subscribers for it, and each link lists that
//! shard's subscribers. The ingest task, applying a tick, queues the symbol's links in their
//! shards' inboxes (once per link until the shard takes it: the dedup is the link's `queued` flag)
//! and wakes a shard only when its inbox was empty. So a batch of ticks costs one cross-thread
//! hand-off per worker, not one wake per connection: the expensive part of the old fan-out, where
//! every tick woke every subscribed task on another thread.
//!
//! On its own thread the shard then marks each subscriber's slot ([`ConnPending::mark`]) and, in the
//! same pass, writes each marked connection's frame itself, one connection after the other, through
//! the worker's writer (`WriteNow`, `session::connection::write_now`): whatever was marked while the
//! worker was busy leaves in one frame per connection, back to back, so batches grow by themselves
//! under load and a quiet worker writes at once (this is how uWebSockets corks). Ticks that arrive
//! during the pass join the frames it has still to write, and a pass that took much of the
//! worker's time is followed by a rest (`Duty`), so frames grow before the worker saturates.
//! A connection's task is woken only when the pass cannot write for it: its task is using the
//! socket (a client frame, a socket that did not take a frame), a clock event is pending, or the
//! connection must end. A connection in a batching window (`min_frame_interval_ms`) keeps its marks
//! and is written by the shard when the window ends (`Shard::hold`, `Shard::release`: one timer per
//! worker, not one per connection). News is delivered by the pass only, even when a
//! connection's task writes (`ConnPending::take`): a task delivering it would mark, and so wake,
//! every connection the pass would have written.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::sync::lock;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How often a shard looks at its connections' deadlines: the precision of pings, idle timeouts,
/// token expiry and shutdown.
pub const CLOCK_TICK: Duration = Duration::from_millis(50);

/// The longest rest (`Duty`): bounds the latency a rest adds, whatever the passes took (passes of
/// seconds mean the gateway is far past its capacity, where resting cannot help).
const MAX_REST: Duration = Duration::from_millis(50);

/// What a pass of the shard cost (`Duty`).
#[derive(Clone, Copy)]
struct Cost {
    /// From its start to its end.
    wall: Duration,
    /// Its thread's CPU time; only measured when shards share a core (alone, a pass costs its
    /// length, which its CPU time never exceeds).
    cpu: Duration,
    /// Running shards per core (`shards_per_core`).
    per_core: u32,
}

impl Cost {
    /// The rest this pass owes, so that passes keep the core busy at most `busy_percent` of the
    /// time: the next may start no sooner than its cost × 100 / `busy_percent` after it started.
    ///
    /// The cost of a pass is how long it kept its core busy: its length, when the worker has a
    /// core of its own (whatever preempted it, the ingest or another process, used the core too).
    /// Workers that share a core split `busy_percent`, and a pass then costs its own CPU time, or
    /// its share of its length when the siblings ran in it: their passes are counted by their own
    /// rests.
    fn owes(self, busy_percent: u32) -> Duration {
        let per_core = self.per_core.max(1);
        let cost = self.cpu.max(self.wall / per_core);
        let cycle = cost * 100 * per_core / busy_percent.clamp(1, 100);
        cycle.saturating_sub(self.wall)
    }
}

/// When, and on what CPU time, a pass started.
struct PassStart {
    at: Instant,
    cpu: Option<Duration>,
    per_core: u32,
}

impl PassStart {
    /// Starts timing a pass: two clock reads (system calls) a pass, the CPU time's only where
    /// shards share a core.
    fn now() -> PassStart {
        let per_core = shards_per_core();
        PassStart {
            at: Instant::now(),
            cpu: (per_core > 1).then(thread_cpu),
            per_core,
        }
    }

    /// What the pass has cost so far.
    fn cost(&self) -> Cost {
        Cost {
            wall: self.at.elapsed(),
            cpu: self
                .cpu
                .map_or(Duration::ZERO, |t| thread_cpu().saturating_sub(t)),
            per_core: self.per_core,
        }
    }
}

/// The rests the shard owes under `limits.fanout_busy_percent`, kept across passes, so that many
/// short passes back to back (windows ending a few connections at a time) rest as one long pass
/// would; each alone owes less than a rest is worth. Time the worker spent without a pass counts
/// as rest already taken, so a quiet worker never rests. A rest below 1 ms is not taken (the
/// timer's resolution; it waits until the owed time reaches 1 ms), and none is longer than
/// `MAX_REST`, which also forgives the rest of a larger debt.
#[derive(Default)]
struct Duty {
    owed: Duration,
}

impl Duty {
    /// After a pass that began `idle` after the last one ended (or its rest): the rest to take
    /// now, if any.
    fn after(&mut self, idle: Duration, pass: Cost, busy_percent: u32) -> Option<Duration> {
        self.owed = self.owed.saturating_sub(idle) + pass.owes(busy_percent);
        if self.owed < Duration::from_millis(1) {
            return None;
        }
        Some(std::mem::take(&mut self.owed).min(MAX_REST))
    }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Shards whose task runs, in the whole process (`Shard::ensure_running`).
static SHARDS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How many running shards share a core: `limits.fanout_busy_percent` is a share of a core, so
/// workers that share one (more workers than the cores this process may run on) split it. One
/// per core, the default, gives each its whole share.
fn shards_per_core() -> u32 {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    SHARDS_RUNNING
        .load(Ordering::Relaxed)
        .div_ceil(cores)
        .max(1) as u32
}

/// `ConnPending::due`: no deadline.
const NEVER: u64 = u64::MAX;

/// The clock's origin: deadlines are milliseconds since this instant.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn clock_ms(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

thread_local! {
    /// The shard of connections created on this thread.
    static CURRENT: Arc<Shard> = Arc::new(Shard::default());
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
    /// Links queued and delivered, for the fan-out benchmark and tests.
    delivered: AtomicUsize,
    /// The connections this shard keeps time for (`clock_in`), and their gateway's closing flag.
    clocked: Mutex<Vec<(Arc<ConnPending>, Arc<AtomicBool>)>>,
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
    /// `writer` is the worker's writer (`session::connection::write_now`): the shard hands it
    /// every connection its pass marked, and wakes the connection's task only for those it could
    /// not write.
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
            // The end of the first batching window (`held`): one timer for the worker, where each
            // windowed connection once armed its own.
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
                        shard.deliver_and_write(&mut pass, hooks.write);
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
    fn deliver_and_write(&self, pass: &mut Pass, write: WriteFromPass) {
        let Pass { now, next } = pass;
        // Left over from the last pass: theirs is the oldest news.
        std::mem::swap(now, next);
        self.deliver_with(|conn| now.push(conn.clone()));
        for conn in now.drain(..) {
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
    /// `deliver_and_write`'s. All of them, marked or not: what waits for the window's end is not
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
    /// (`ConnPending::set_due`) passes, and at once when `closing` is set (its gateway shuts down).
    pub fn clock_in(&self, conn: Arc<ConnPending>, closing: Arc<AtomicBool>) {
        lock(&self.clocked).push((conn, closing));
    }

    /// One clock tick: wakes every connection that is due or whose gateway is closing, and forgets
    /// closed ones. Atomic loads only, for every connection of the worker.
    pub fn tick(&self, now: Instant) {
        let now_ms = clock_ms(now);
        lock(&self.clocked).retain(|(conn, closing)| {
            if conn.gone.load(Ordering::Acquire) {
                return false;
            }
            let due = conn.due.load(Ordering::Acquire) <= now_ms;
            if due || closing.load(Ordering::Acquire) {
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

    /// Worker side: marks the slot of every live subscriber of every queued link. Never awaits; a
    /// slot already marked is left as it is (`ConnPending::mark`), so this costs one mark per
    /// subscriber per pass whatever the number of ticks behind it.
    pub fn deliver(&self) {
        self.deliver_with(|conn| conn.wake());
    }

    /// `deliver`, calling `first_mark` for each connection that had no dirty slot before.
    fn deliver_with(&self, mut first_mark: impl FnMut(&Arc<ConnPending>)) {
        if !self.news.load(Ordering::Acquire) {
            return;
        }
        let links = {
            let mut inbox = lock(&self.inbox);
            self.news.store(false, Ordering::Release);
            std::mem::take(&mut *inbox)
        };
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
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// The connections of the shard's pass (`Shard::deliver_and_write`): its kept allocations.
#[derive(Default)]
struct Pass {
    /// Being written in this pass.
    now: Vec<Arc<ConnPending>>,
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

/// One shard's subscribers to one symbol. Listed in the symbol's entry while it has subscribers;
/// only its shard's thread touches `subs` (subscribe, unsubscribe, deliver), so that lock is never
/// contended.
pub struct Link {
    shard: Arc<Shard>,
    /// In the shard's inbox, not yet delivered.
    queued: AtomicBool,
    /// Live subscribers (marked on every change), read by the ingest without a lock.
    live: AtomicUsize,
    subs: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    conn: Arc<ConnPending>,
    slot: u32,
    /// Marked on every change; a delayed subscriber is not (its news comes from the clock).
    live: bool,
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

/// The part of a connection its shard touches: which of its slots have news, and its wake-up.
pub struct ConnPending {
    id: u64,
    shard: Arc<Shard>,
    /// Its marks and its task's wake-up, behind one lock: a mark is one lock and at most one wake.
    dirty: Mutex<Dirty>,
    /// When the connection next needs its clock (`clock_ms`), or `NEVER`.
    due: AtomicU64,
    /// Closed: the shard's clock forgets it.
    gone: AtomicBool,
    /// Where the worker's writer finds the connection (`WriteNow`), or `NO_WRITER`.
    writer_key: AtomicU32,
}

const NO_WRITER: u32 = u32::MAX;

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

#[derive(Default)]
struct Dirty {
    /// Slots with news, each at most once.
    list: Vec<u32>,
    /// Which slots are in `list`.
    flags: SlotBits,
    /// The shard's clock fired for this connection (a deadline passed, or its gateway closes).
    clock: bool,
    closed: bool,
    /// A wake-up the task has not seen yet (`wake` before the task waited).
    woken: bool,
    /// The connection task, while it waits (`poll_wait`). Not a `Notify`: its `Notified` future
    /// would add 80 bytes to every connection's task.
    waker: Option<Waker>,
}

/// A set of slot ids: the first 64 in a word of their own, since most connections hold fewer
/// symbols than that and an allocation would be part of every idle connection.
#[derive(Default)]
struct SlotBits {
    low: u64,
    high: Vec<u64>,
}

impl SlotBits {
    /// Adds `slot`; false if it was there.
    fn set(&mut self, slot: u32) -> bool {
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

    fn clear(&mut self, slot: u32) {
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
    fn move_into(&mut self, out: &mut Vec<u32>) {
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
    fn clock_event(&self) {
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
    fn has_marks(&self) -> bool {
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
    /// needs one (or a write on its behalf, `Shard::deliver_and_write`).
    fn mark_quiet(&self, slot: u32) -> bool {
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

    /// Connection side: appends the dirty slots to `out` and clears them. The shard's news is
    /// left to the shard's pass, which writes it for every connection in one go: a task delivering
    /// it here would turn every connection that pass would have written into a woken task. Only
    /// where no pass runs (a thread without the shard's task: unit tests, benchmarks) is it
    /// delivered here.
    pub fn take(&self, out: &mut Vec<u32>) {
        if !self.shard.running.load(Ordering::Acquire) {
            self.shard.deliver();
        }
        lock(&self.dirty).move_into(out);
    }

    /// `take` for a write made by the shard's own pass, whose news is what it just delivered;
    /// takes nothing and returns false while a clock event waits (the task, woken by the clock
    /// already, handles both). Neither `take` touches the clock flag: only `take_clock` does.
    pub fn take_marked(&self, out: &mut Vec<u32>) -> bool {
        let mut d = lock(&self.dirty);
        if d.clock {
            return false;
        }
        d.move_into(out);
        true
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
    pub fn pending(&self) -> usize {
        self.shard.deliver();
        lock(&self.dirty).list.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rust_decimal::Decimal;

    use super::*;
    use crate::feed::FeedEvent;
    use crate::index::Index;
    use crate::metrics::Metrics;
    use crate::model::Tick;

    /// A slot is in the set once, whichever word holds it (the inline one or one on the heap).
    #[test]
    fn slot_bits_hold_each_slot_once_inline_or_not() {
        let mut bits = SlotBits::default();
        let slots = [0u32, 1, 63, 64, 65, 127, 128, 999];
        for &slot in &slots {
            assert!(bits.set(slot), "{slot} was not there");
            assert!(!bits.set(slot), "{slot} set twice");
        }
        bits.clear(64);
        bits.clear(5000); // never set: nothing to do
        for &slot in &slots {
            assert_eq!(bits.set(slot), slot == 64, "{slot}");
        }
        assert!(bits.set(2) && bits.set(62), "neighbours are their own bits");
    }

    /// A pass rests so that passes keep the core busy `busy_percent` of the time; a quiet
    /// worker's short passes never rest, and no rest is longer than `MAX_REST`.
    #[test]
    fn a_pass_rests_in_proportion_to_its_cost_and_never_on_a_quiet_worker() {
        let ms = Duration::from_millis;
        // One pass with nothing owed before it and no idle time before it.
        let rest_after = |pass, busy| Duty::default().after(Duration::ZERO, pass, busy);
        let cost = |wall, cpu, per_core| Cost {
            wall,
            cpu,
            per_core,
        };
        let alone = |wall, cpu| cost(wall, cpu, 1);
        assert_eq!(
            rest_after(alone(ms(8), ms(8)), 80),
            Some(ms(2)),
            "8 ms busy in 10"
        );
        assert_eq!(rest_after(alone(ms(10), ms(10)), 50), Some(ms(10)));
        assert_eq!(rest_after(alone(ms(3), ms(3)), 10), Some(ms(27)));
        assert_eq!(
            rest_after(alone(ms(40), ms(40)), 10),
            Some(MAX_REST),
            "capped"
        );
        assert_eq!(
            rest_after(alone(ms(3), ms(3)), 80),
            None,
            "0.75 ms: under 1 ms"
        );
        let short = Duration::from_micros(300);
        assert_eq!(
            rest_after(alone(short, short), 25),
            None,
            "not for a short pass"
        );
        assert_eq!(rest_after(alone(ms(500), ms(500)), 100), None, "100: never");
        // Alone on its core, what preempted the pass (the ingest) kept the core busy too.
        assert_eq!(rest_after(alone(ms(8), ms(6)), 80), Some(ms(2)));
        // Two workers on one core split the share: 40 % each.
        let shared = |wall, cpu| cost(wall, cpu, 2);
        assert_eq!(
            rest_after(shared(ms(8), ms(8)), 80),
            Some(ms(12)),
            "20 ms cycle"
        );
        // Its sibling ran during its pass: only its own CPU counts (the sibling rests for its own).
        assert_eq!(rest_after(shared(ms(16), ms(8)), 80), Some(ms(4)));
    }

    /// Rests are owed across passes: short passes back to back rest as one long pass would,
    /// idle time between passes counts as rest taken, and a debt over `MAX_REST` is forgiven.
    #[test]
    fn short_passes_back_to_back_owe_a_rest_and_idle_time_pays_it() {
        let us = Duration::from_micros;
        let pass = |wall| Cost {
            wall,
            cpu: wall,
            per_core: 1,
        };
        let mut duty = Duty::default();
        // Windows released 0.8 ms of writes at a time, back to back, at 80 %: each owes 0.2 ms.
        for i in 1..5 {
            assert_eq!(duty.after(Duration::ZERO, pass(us(800)), 80), None, "{i}");
        }
        assert_eq!(
            duty.after(Duration::ZERO, pass(us(800)), 80),
            Some(us(1000)),
            "five of them: 4 ms busy in 5"
        );
        assert_eq!(duty.after(Duration::ZERO, pass(us(800)), 80), None, "paid");
        // The same passes with 0.2 ms between them are 80 % busy already: never a rest.
        let mut duty = Duty::default();
        for i in 0..100 {
            assert_eq!(duty.after(us(200), pass(us(800)), 80), None, "{i}");
        }
        // Idle time pays only what is owed: it is not saved up for later passes.
        let mut duty = Duty::default();
        assert_eq!(
            duty.after(Duration::ZERO, pass(us(3200)), 80),
            None,
            "0.8 owed"
        );
        assert_eq!(
            duty.after(us(900), pass(us(3200)), 80),
            None,
            "0.8 paid, 0.8 owed"
        );
        assert_eq!(
            duty.after(Duration::ZERO, pass(us(3200)), 80),
            Some(us(1600))
        );
        // Past MAX_REST, the rest is capped and the rest of the debt forgiven.
        let mut duty = Duty::default();
        assert_eq!(
            duty.after(Duration::ZERO, pass(Duration::from_secs(1)), 50),
            Some(MAX_REST)
        );
        assert_eq!(duty.after(Duration::ZERO, pass(us(400)), 80), None);
    }

    fn tick(bid: i64) -> FeedEvent {
        tick_on("X", bid)
    }

    /// A batch of ticks is handed to each worker once, whatever the number of connections or
    /// ticks, and the worker marks its own connections: each thread has its shard and its link.
    #[test]
    fn a_batch_of_ticks_reaches_each_shard_once_and_each_shard_marks_its_own_connections() {
        let index = Arc::new(Index::new(&["f".into()], Arc::new(Metrics::new())));
        let entry = index.register("X".into());
        index.apply(tick(100));
        let here: Vec<_> = (0..3).map(|_| ConnPending::new()).collect();
        let subs: Vec<_> = (0..3).map(|i| entry.subscribe(&here[i], 0, true)).collect();
        let shard = Shard::current();
        let (to_other, on_other) = std::sync::mpsc::sync_channel::<()>(1);
        let (ready, other_ready) = std::sync::mpsc::sync_channel(1);
        let other = {
            let entry = entry.clone();
            std::thread::spawn(move || {
                let conn = ConnPending::new();
                let sub = entry.subscribe(&conn, 5, true);
                let mut slots = Vec::new();
                conn.take(&mut slots); // the snapshot's mark
                ready.send(conn.shard().clone()).unwrap();
                on_other.recv().unwrap();
                let other_shard = conn.shard().clone();
                let queued_before = other_shard.delivered();
                slots.clear();
                conn.take(&mut slots);
                let delivered = other_shard.delivered() - queued_before;
                drop(sub);
                (slots, delivered)
            })
        };
        let other_shard = other_ready.recv().unwrap();
        assert!(!Arc::ptr_eq(&shard, &other_shard), "one shard per thread");
        let mut slots = Vec::new();
        for conn in &here {
            conn.take(&mut slots); // the snapshots' marks
            slots.clear();
        }
        let before = shard.delivered();
        for bid in 101..111 {
            index.apply(tick(bid));
        }
        for conn in &here {
            assert_eq!(
                conn.pending(),
                1,
                "every connection of this worker is marked"
            );
        }
        assert_eq!(shard.delivered() - before, 1, "ten ticks, one hand-off");
        to_other.send(()).unwrap();
        let (other_slots, other_delivered) = other.join().unwrap();
        assert_eq!(other_slots, [5], "the other worker marked its connection");
        assert_eq!(other_delivered, 1, "ten ticks, one hand-off there too");
        drop(subs);
        assert_eq!(entry.subscriber_count(), 0);
    }

    thread_local! {
        /// The index the busy writer below feeds, and its next bid.
        static BUSY: std::cell::RefCell<Option<(Arc<Index>, i64)>> = const { std::cell::RefCell::new(None) };
    }

    fn tick_on(symbol: &str, bid: i64) -> FeedEvent {
        FeedEvent::Tick(Tick {
            symbol: symbol.into(),
            ts: bid,
            bid: Some(Decimal::new(bid, 2)),
            ..Tick::default()
        })
    }

    /// What `logging_writer` wrote (connection id, the slots it took), and ticks it applies during
    /// its writes, one per write, last first.
    type WriteLog = (Vec<(u64, Vec<u32>)>, Vec<(Arc<Index>, FeedEvent)>);

    thread_local! {
        static WRITES: std::cell::RefCell<WriteLog> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        /// Every connection `logging_writer` was handed, with news or not.
        static CALLS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A writer that logs what it took, then lets the next scripted tick arrive, as if it had
    /// come while the pass was writing.
    fn logging_writer(conn: &ConnPending) -> bool {
        let mut slots = Vec::new();
        conn.take_marked(&mut slots);
        slots.sort_unstable();
        CALLS.with_borrow_mut(|calls| calls.push(conn.id()));
        let arriving = WRITES.with_borrow_mut(|(log, during)| {
            // As the gateway's writer: nothing owed, no frame.
            if !slots.is_empty() {
                log.push((conn.id(), slots));
            }
            during.pop()
        });
        if let Some((index, tick)) = arriving {
            index.apply(tick);
        }
        true
    }

    /// Ticks that arrive during a pass join the frames the pass has still to write; a connection
    /// they mark after its frame left is written first in the next pass, which comes without
    /// another tick.
    #[test]
    fn ticks_during_a_pass_join_the_frames_still_to_write_and_the_rest_lead_the_next_pass() {
        let index = Arc::new(Index::new(&["f".into()], Arc::new(Metrics::new())));
        let (x, y) = (index.register("X".into()), index.register("Y".into()));
        index.apply(tick_on("X", 100));
        index.apply(tick_on("Y", 100));
        let (a, b) = (ConnPending::new(), ConnPending::new());
        let _subs = [
            x.subscribe(&a, 0, true),
            x.subscribe(&b, 0, true),
            y.subscribe(&b, 1, true),
        ];
        // The snapshots' marks.
        a.take(&mut Vec::new());
        b.take(&mut Vec::new());
        let shard = a.shard();
        // Y ticks while `a` is written, X while `b` is.
        WRITES.set((
            Vec::new(),
            vec![
                (index.clone(), tick_on("X", 102)),
                (index.clone(), tick_on("Y", 101)),
            ],
        ));
        index.apply(tick_on("X", 101));
        let mut pass = Pass::default();
        shard.deliver_and_write(&mut pass, logging_writer);
        assert_eq!(
            WRITES.with_borrow_mut(|(log, _)| std::mem::take(log)),
            [(a.id(), vec![0]), (b.id(), vec![0, 1])],
            "b's frame took Y's tick, which came after the pass began"
        );
        let next: Vec<u64> = pass.next.iter().map(|c| c.id()).collect();
        assert_eq!(next, [a.id(), b.id()], "X ticked after both were written");
        shard.deliver_and_write(&mut pass, logging_writer);
        assert_eq!(
            WRITES.with_borrow_mut(|(log, _)| std::mem::take(log)),
            [(a.id(), vec![0]), (b.id(), vec![0])]
        );
        assert!(pass.now.is_empty() && pass.next.is_empty());
    }

    /// With a batching window, a held connection is written by the shard when its window ends,
    /// with the news that came meanwhile; windows end in the order they began.
    #[test]
    fn held_connections_are_written_when_their_window_ends_if_news_came() {
        let index = Arc::new(Index::new(&["f".into()], Arc::new(Metrics::new())));
        let x = index.register("X".into());
        index.apply(tick_on("X", 100));
        let (a, b) = (ConnPending::new(), ConnPending::new());
        let _subs = [x.subscribe(&a, 0, true), x.subscribe(&b, 0, true)];
        a.take(&mut Vec::new());
        b.take(&mut Vec::new());
        let shard = a.shard();
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        shard.hold(ms(10), &a);
        shard.hold(ms(20), &b);
        assert_eq!(shard.next_release(), Some(ms(10)));
        index.apply(tick_on("X", 101));
        shard.deliver();
        let written = |now| {
            shard.release(now, logging_writer);
            WRITES.with_borrow_mut(|(log, _)| std::mem::take(log))
        };
        assert_eq!(written(ms(5)), [], "both windows still open");
        assert_eq!(written(ms(10)), [(a.id(), vec![0])]);
        assert_eq!(shard.next_release(), Some(ms(20)));
        assert_eq!(written(ms(30)), [(b.id(), vec![0])]);
        assert_eq!(shard.next_release(), None);
        // No news in its window: no frame when it ends.
        shard.hold(ms(40), &a);
        assert_eq!(written(ms(40)), []);
        assert_eq!(shard.next_release(), None);
    }

    /// Regression (a 1,000 ms window, a 4 KiB send buffer, 600 symbols: 185-370 snapshots at
    /// once and the rest 6.5 s later, with the first ping): the rest of a flush split at
    /// `FRAME_TARGET_BYTES` is the session's unfinished work, not marks, and `release` skipped a
    /// connection without marks. Every window that ends is handed to the writer, which alone
    /// knows what it still owes.
    #[test]
    fn every_ended_window_is_handed_to_the_writer_marked_or_not() {
        let (a, b) = (ConnPending::new(), ConnPending::new());
        let shard = a.shard();
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        b.mark_quiet(3);
        shard.hold(ms(10), &a);
        shard.hold(ms(10), &b);
        CALLS.with_borrow_mut(Vec::clear);
        shard.release(ms(10), logging_writer);
        assert_eq!(CALLS.with_borrow_mut(std::mem::take), [a.id(), b.id()]);
        assert_eq!(
            WRITES.with_borrow_mut(|(log, _)| std::mem::take(log)),
            [(b.id(), vec![3])]
        );
    }

    fn poll_wait(conn: &ConnPending) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        conn.poll_wait(&mut cx).is_ready()
    }

    /// Regression (`min_frame_interval_ms` 1000, pings every 200 ms: 68 of 108 connections lost
    /// their pings and idle close until their symbol ticked again, and 67 of 108 got no 1001 at
    /// shutdown): a clock event that found marks did not wake the task, leaving it to the
    /// shard's next write; when the task's own flush (a client frame) took the marks instead,
    /// the event stayed pending and unseen, and every later one returned early on it. However
    /// the marks are taken, the task hears each clock event.
    #[test]
    fn a_clock_event_reaches_the_task_whoever_takes_the_marks() {
        let conn = ConnPending::new();
        let shard = conn.shard().clone();
        let closing = Arc::new(AtomicBool::new(false));
        shard.clock_in(conn.clone(), closing.clone());
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        for round in 0..3u64 {
            // The shard's pass marks (no wake: it writes itself), then the clock fires.
            assert!(conn.mark_quiet(round as u32));
            conn.set_due(Some(ms(100 * round)));
            shard.tick(ms(100 * round + 50));
            // A client frame: the task's flush takes the marks before it looks at the clock.
            let mut taken = Vec::new();
            conn.take(&mut taken);
            assert_eq!(taken, [round as u32]);
            assert!(poll_wait(&conn), "round {round}: the task was woken");
            assert!(conn.take_clock(), "round {round}: and hears the clock");
            assert!(!poll_wait(&conn));
        }
        // Shutdown, with marks waiting: heard at once, not when a write comes.
        conn.mark_quiet(7);
        closing.store(true, Ordering::Release);
        shard.tick(ms(1000));
        assert!(poll_wait(&conn) && conn.take_clock());
    }

    /// A connection whose task is dropped without its polite close (aborted, panicked) leaves the
    /// shard's clock at its next tick: `ConnPending::close` runs from a guard's `Drop` in the
    /// session (`session::connection`), and the clock forgets what is closed.
    #[test]
    fn the_clock_forgets_a_closed_connection_at_its_next_tick() {
        let conn = ConnPending::new();
        let shard = conn.shard().clone();
        let before = shard.clocked();
        shard.clock_in(conn.clone(), Arc::new(AtomicBool::new(false)));
        assert_eq!(shard.clocked(), before + 1);
        conn.close();
        shard.tick(Instant::now());
        assert_eq!(shard.clocked(), before);
    }

    /// A writer whose every write brings news: each pass of the shard leaves its inbox non-empty,
    /// as a worker under load sees it.
    fn busy_writer(conn: &ConnPending) -> bool {
        conn.take_marked(&mut Vec::new());
        BUSY.with_borrow_mut(|busy| {
            if let Some((index, next)) = busy.as_mut() {
                *next += 1;
                index.apply(tick(*next));
            }
        });
        true
    }

    /// Regression: under load the shard's inbox has news again by the end of every pass, and the
    /// pass never gave the worker back, so handshakes and client ops on that worker starved
    /// (clients not served after 30 s at 5,000 ticks/s). The pass must yield after each turn. And
    /// its own clock and batching windows must not starve behind the news either.
    #[test]
    fn a_shard_with_news_after_every_pass_still_lets_the_workers_other_tasks_run() {
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let index = Arc::new(Index::new(&["f".into()], Arc::new(Metrics::new())));
                let entry = index.register("X".into());
                index.apply(tick(100));
                let conn = ConnPending::new();
                let _sub = entry.subscribe(&conn, 0, true);
                BUSY.set(Some((index.clone(), 1_000)));
                conn.shard().ensure_running(PassHooks {
                    write: busy_writer,
                    end_of_pass: || {},
                    busy_percent: 100,
                    rested: prometheus::Counter::new("rested", "-").unwrap(),
                });
                // The snapshot's mark, then the first news; every write brings the next.
                conn.take(&mut Vec::new());
                index.apply(tick(101));
                // Another task of this worker, e.g. a handshake: it must get its turns.
                let other = tokio::task::spawn_local(async {
                    for _ in 0..100 {
                        tokio::task::yield_now().await;
                    }
                });
                other.await.unwrap();
                // The shard's clock and its batching windows get their turns too: a connection
                // that is due gets its clock event, and a held one with news is written.
                let (due, held) = (ConnPending::new(), ConnPending::new());
                let shard = conn.shard();
                shard.clock_in(due.clone(), Arc::new(AtomicBool::new(false)));
                due.set_due(Some(Instant::now()));
                held.mark(0);
                shard.hold(Instant::now(), &held);
                let mut clocked = false;
                while !clocked || held.has_marks() {
                    clocked |= due.take_clock();
                    tokio::task::yield_now().await;
                }
                let passes = conn.shard().delivered();
                BUSY.set(None);
                done.send(passes).unwrap();
            });
        });
        // A liveness check, not a timing: a starving worker never answers at all.
        let passes = finished.recv_timeout(Duration::from_secs(120)).expect(
            "the worker's other task, clock and windows ran while the shard always had news",
        );
        assert!(passes > 1, "the shard was busy meanwhile ({passes} passes)");
    }
}
