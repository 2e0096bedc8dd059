//! The duty cycle of a worker's fan-out: how long a pass took (`PassStart`, `Cost`, the thread's
//! CPU time) and the rest it owes before the next (`Duty`), so that a loaded worker writes fewer,
//! fuller frames instead of one per update, and never starves its other tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest rest (`Duty`): bounds the latency a rest adds, whatever the passes took (passes of
/// seconds mean the gateway is far past its capacity, where resting cannot help).
pub(super) const MAX_REST: Duration = Duration::from_millis(50);

/// What a pass of the shard cost (`Duty`).
#[derive(Clone, Copy)]
pub(super) struct Cost {
    /// From its start to its end.
    pub(super) wall: Duration,
    /// Its thread's CPU time; only measured when shards share a core (alone, a pass costs its
    /// length, which its CPU time never exceeds).
    pub(super) cpu: Duration,
    /// Running shards per core (`shards_per_core`).
    pub(super) per_core: u32,
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
    pub(super) fn owes(self, busy_percent: u32) -> Duration {
        let per_core = self.per_core.max(1);
        let cost = self.cpu.max(self.wall / per_core);
        let cycle = cost * 100 * per_core / busy_percent.clamp(1, 100);
        cycle.saturating_sub(self.wall)
    }
}

/// When, and on what CPU time, a pass started.
pub(super) struct PassStart {
    pub(super) at: Instant,
    pub(super) cpu: Option<Duration>,
    pub(super) per_core: u32,
}

impl PassStart {
    /// Starts timing a pass: two clock reads (system calls) a pass, the CPU time's only where
    /// shards share a core.
    pub(super) fn now() -> PassStart {
        let per_core = shards_per_core();
        PassStart {
            at: Instant::now(),
            cpu: (per_core > 1).then(thread_cpu),
            per_core,
        }
    }

    /// What the pass has cost so far.
    pub(super) fn cost(&self) -> Cost {
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
pub(super) struct Duty {
    pub(super) owed: Duration,
}

impl Duty {
    /// After a pass that began `idle` after the last one ended (or its rest): the rest to take
    /// now, if any.
    pub(super) fn after(
        &mut self,
        idle: Duration,
        pass: Cost,
        busy_percent: u32,
    ) -> Option<Duration> {
        self.owed = self.owed.saturating_sub(idle) + pass.owes(busy_percent);
        if self.owed < Duration::from_millis(1) {
            return None;
        }
        Some(std::mem::take(&mut self.owed).min(MAX_REST))
    }
}

/// The calling thread's CPU time.
pub(super) fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Shards whose task runs, in the whole process (`Shard::ensure_running`).
pub(super) static SHARDS_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// How many running shards share a core: `limits.fanout_busy_percent` is a share of a core, so
/// workers that share one (more workers than the cores this process may run on) split it. One
/// per core, the default, gives each its whole share.
pub(super) fn shards_per_core() -> u32 {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    SHARDS_RUNNING
        .load(Ordering::Relaxed)
        .div_ceil(cores)
        .max(1) as u32
}
