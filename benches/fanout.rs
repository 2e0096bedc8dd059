//! Measures the per-tick path inside the gateway, without sockets: one tick applied to the index
//! (normalize, merge into the quote, bump `seq`, encode the shared update once, mark every
//! subscriber's slot), then the worker's shard pass (`Shard::run_pass`, the gateway's own) handing
//! each of N in-process connections to a writer that drains its slot into a frame the way the
//! session writer does (read the latest, emit the delta, take the frame bytes). N = 1, 100 and
//! 1,000; reported per tick, so time / N is the cost of one delivery before the syscall.
//!
//! `shards` splits 1,000 connections × 10 symbols over one and two worker threads, each with its own
//! fan-out shard (`fanout`), to show that a worker per core scales. The bench allocates with
//! mimalloc, the gateway with glibc's malloc (see `ALLOC`).
//!
//! Run: `cargo bench --bench fanout` (HTML report under target/criterion/). The `in_sync` group is the
//! usual fast-client case (shared bytes, no per-connection encoding); `catch_up` applies 10 ticks
//! before each drain, which every connection receives as 10 shared updates in one frame; `conflated`
//! applies `RECENT_TICKS + 1`, one more than the index keeps, so every connection encodes its own
//! merged delta. Throughput counts deliveries (updates written).

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quotegw::fanout::{ConnPending, Pass, Shard};
use quotegw::feed::FeedEvent;
use quotegw::frame::FrameBuilder;
use quotegw::index::{Index, RECENT_TICKS};
use quotegw::metrics::Metrics;
use quotegw::model::Tick;
use quotegw::view::{EmitStats, Pacing, SlotView, Wants};
use rust_decimal::Decimal;

/// Per-thread heaps: under glibc's malloc, the `shards` group's two threads shared arena locks in
/// some runs and not in others (Cargo.toml says more), which made its figure the allocator's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Conn {
    pending: Arc<ConnPending>,
    slots: Vec<SlotView>,
    dirty: Vec<u32>,
    frame: FrameBuilder,
    stats: EmitStats,
}

impl Conn {
    /// What the session writer does with its marks (`Connection::write_now`), minus the socket
    /// write. `task`: taken as the connection's task takes them (its snapshots), else as the
    /// shard's pass does.
    fn drain(&mut self, now: Instant, task: bool) -> usize {
        if task {
            self.pending.take_marks(&mut self.dirty);
        } else if !self.pending.take_marks_for_pass(&mut self.dirty) {
            return 0;
        }
        for slot in self.dirty.drain(..) {
            self.slots[slot as usize].emit_latest(now, &mut self.frame, &mut self.stats);
        }
        self.stats.tick_in.clear();
        self.frame.take().map_or(0, |f| f.len())
    }
}

thread_local! {
    /// This thread's connections, found by the shard's pass through their `writer_key`, as the
    /// gateway's worker finds its own (`session/writer.rs`, `write_from_pass`).
    static CONNS: RefCell<Vec<Conn>> = const { RefCell::new(Vec::new()) };
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    static PASS: RefCell<Pass> = RefCell::default();
}

/// The bench's `PassHooks::write`: drains the connection the pass hands it.
fn write(pending: &ConnPending) -> bool {
    let key = pending.writer_key().expect("registered") as usize;
    let now = NOW.get().expect("set by the round");
    CONNS.with_borrow_mut(|conns| black_box(conns[key].drain(now, false)));
    true
}

/// Puts `conns` on this thread's registry, after their snapshots (taken as their tasks do).
fn register(mut conns: Vec<Conn>) {
    let now = Instant::now();
    for (key, c) in conns.iter_mut().enumerate() {
        c.drain(now, true);
        c.stats.updates = 0;
        c.pending.set_writer_key(Some(key as u32));
    }
    CONNS.set(conns);
}

/// One pass of this thread's shard over what the ingest applied: the updates it wrote.
fn run_pass() -> u64 {
    NOW.set(Some(Instant::now()));
    PASS.with_borrow_mut(|pass| Shard::current().run_pass(pass, write));
    CONNS.with_borrow_mut(|conns| {
        conns
            .iter_mut()
            .map(|c| std::mem::take(&mut c.stats.updates))
            .sum()
    })
}

fn tick(i: i64) -> Tick {
    // Alternates which fields change, like the simulated feed's quote and trade ticks.
    let px = Decimal::new(18_900 + i % 500, 2);
    if i % 3 == 0 {
        Tick {
            symbol: "AAPL".into(),
            ts: 1_700_000_000_000 + i,
            last: Some(px),
            last_size: Some(100),
            volume: Some(1_000 + i),
            ..Tick::default()
        }
    } else {
        Tick {
            symbol: "AAPL".into(),
            ts: 1_700_000_000_000 + i,
            bid: Some(px),
            ask: Some(px + Decimal::new(1, 2)),
            bid_size: Some(300),
            ..Tick::default()
        }
    }
}

/// `n` connections on this thread's shard, registered for its pass.
fn setup(n: usize) -> Index {
    let index = Index::new(&["bench".to_string()], Arc::new(Metrics::new()));
    let entry = index.register("AAPL".into());
    index.apply(FeedEvent::Tick(Tick {
        bid_size: Some(100),
        ask_size: Some(100),
        ..tick(1)
    }));
    let conns: Vec<Conn> = (0..n)
        .map(|_| {
            let pending = ConnPending::new();
            Conn {
                slots: vec![SlotView::new(
                    entry.subscribe(&pending, 0, true),
                    Pacing::default(),
                    Wants::default(),
                )],
                pending,
                dirty: Vec::new(),
                frame: FrameBuilder::default(),
                stats: EmitStats::default(),
            }
        })
        .collect();
    register(conns);
    index
}

/// Applies `ticks_per_drain` ticks, then drains every connection once (`updates_per_drain` each).
fn group(c: &mut Criterion, name: &str, ticks_per_drain: i64, updates_per_drain: u64) {
    let mut group = c.benchmark_group(name);
    for n in [1usize, 100, 1_000] {
        let index = setup(n);
        let mut i = 2;
        group.throughput(Throughput::Elements(n as u64 * updates_per_drain));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for _ in 0..ticks_per_drain {
                    index.apply(FeedEvent::Tick(tick(i)));
                    i += 1;
                }
                black_box(run_pass())
            })
        });
    }
    group.finish();
}

/// Symbols and connections of the `shards` group: every connection subscribes to every symbol.
const SHARD_SYMBOLS: usize = 10;
const SHARD_CONNECTIONS: usize = 1_000;

/// The per-worker fan-out on real threads: each round one tick to each of `SHARD_SYMBOLS` symbols
/// is applied to the index, then each of `shards` worker threads delivers its shard's news and
/// drains its share of `SHARD_CONNECTIONS` connections, as the worker's task and its connections'
/// flushes do. The same work split over one shard and over two: on a machine with a core per
/// worker, deliveries/s should grow about 2× from one shard to two.
///
/// The bench's thread is the ingest and the first worker, and the others wait for a round by
/// spinning: one thread per core, as the gateway runs one worker per core, and no futex sleep
/// per round (a cost of the bench that no worker pays: the gateway's shards never wait for each
/// other or for the ingest).
fn shards(c: &mut Criterion) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut group = c.benchmark_group("shards");
    group.throughput(Throughput::Elements(
        (SHARD_SYMBOLS * SHARD_CONNECTIONS) as u64,
    ));
    for shards in [1usize, 2] {
        let index = Arc::new(Index::new(&["bench".to_string()], Arc::new(Metrics::new())));
        let symbols: Vec<String> = (0..SHARD_SYMBOLS).map(|i| format!("S{i}")).collect();
        for s in &symbols {
            index.register(s.as_str().into());
            index.apply(FeedEvent::Tick(Tick {
                symbol: s.as_str().into(),
                ..tick(1)
            }));
        }
        // Rounds started by the bench's thread, and rounds finished by each other worker, summed.
        let started = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let share = SHARD_CONNECTIONS / shards;
        let others: Vec<_> = (1..shards)
            .map(|_| {
                let (index, symbols) = (index.clone(), symbols.clone());
                let (started, finished, stop) = (started.clone(), finished.clone(), stop.clone());
                std::thread::spawn(move || {
                    register(shard_connections(&index, &symbols, share));
                    finished.fetch_add(1, Ordering::Release); // ready
                    let mut updates = 0u64;
                    let mut round = 0;
                    loop {
                        while started.load(Ordering::Acquire) == round {
                            if stop.load(Ordering::Acquire) {
                                return updates;
                            }
                            std::hint::spin_loop();
                        }
                        round += 1;
                        updates += run_pass();
                        finished.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        let helpers = (shards - 1) as u64;
        let wait_for_others = |rounds: u64| {
            while finished.load(Ordering::Acquire) < helpers * (rounds + 1) {
                std::hint::spin_loop();
            }
        };
        // Connections are created on their worker's thread, whose shard serves them: the other
        // workers' first, then this thread's.
        wait_for_others(0);
        register(shard_connections(&index, &symbols, share));
        let mut updates = 0u64;
        let mut i = 2;
        group.bench_with_input(BenchmarkId::from_parameter(shards), &shards, |b, _| {
            b.iter(|| {
                for s in &symbols {
                    index.apply(FeedEvent::Tick(Tick {
                        symbol: s.as_str().into(),
                        ..tick(i)
                    }));
                }
                i += 1;
                let round = started.fetch_add(1, Ordering::Release) + 1;
                updates += run_pass();
                wait_for_others(round);
            })
        });
        stop.store(true, Ordering::Release);
        for other in others {
            updates += other.join().unwrap();
        }
        // Every connection got every tick: the shards lost nothing.
        assert_eq!(
            updates,
            (SHARD_SYMBOLS * SHARD_CONNECTIONS) as u64 * (i as u64 - 2),
            "each round delivers every symbol's tick to every connection"
        );
    }
    group.finish();
}

/// `n` connections subscribed to every symbol, on the calling thread's shard.
fn shard_connections(index: &Index, symbols: &[String], n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let pending = ConnPending::new();
            let slots = symbols
                .iter()
                .enumerate()
                .map(|(slot, s)| {
                    let entry = index.lookup(s).unwrap();
                    SlotView::new(
                        entry.subscribe(&pending, slot as u32, true),
                        Pacing::default(),
                        Wants::default(),
                    )
                })
                .collect();
            Conn {
                slots,
                pending,
                dirty: Vec::new(),
                frame: FrameBuilder::default(),
                stats: EmitStats::default(),
            }
        })
        .collect()
}

fn fanout(c: &mut Criterion) {
    group(c, "in_sync", 1, 1);
    group(c, "catch_up", 10, 10);
    group(c, "conflated", RECENT_TICKS as i64 + 1, 1);
    shards(c);
}

criterion_group!(benches, fanout);
criterion_main!(benches);
