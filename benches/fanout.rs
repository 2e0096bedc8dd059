//! Measures the per-tick path inside the gateway, without sockets: one tick applied to the index
//! (normalize, merge into the quote, bump `seq`, encode the shared update once, mark every
//! subscriber's slot), then every one of N in-process connections draining its slot into a frame the
//! way the session writer does (read the latest, emit the delta, take the frame bytes). N = 1, 100 and
//! 1,000; reported per tick, so time / N is the cost of one delivery before the syscall.
//!
//! `shards` splits 1,000 connections × 10 symbols over one and two worker threads, each with its own
//! fan-out shard (`fanout.rs`), to show that a worker per core scales.
//!
//! Run: `cargo bench --bench fanout` (HTML report under target/criterion/). The `in_sync` group is the
//! usual fast-client case (shared bytes, no per-connection encoding); `catch_up` applies 10 ticks
//! before each drain, which every connection receives as 10 shared updates in one frame; `conflated`
//! applies `RECENT_TICKS + 1`, one more than the index keeps, so every connection encodes its own
//! merged delta. Throughput counts deliveries (updates written).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quotegw::fanout::ConnPending;
use quotegw::feed::FeedEvent;
use quotegw::frame::FrameBuilder;
use quotegw::index::{Index, RECENT_TICKS};
use quotegw::metrics::Metrics;
use quotegw::model::Tick;
use quotegw::view::{EmitStats, Pacing, SlotView};
use rust_decimal::Decimal;

struct Conn {
    pending: Arc<ConnPending>,
    slots: Vec<SlotView>,
    dirty: Vec<u32>,
    frame: FrameBuilder,
    stats: EmitStats,
}

impl Conn {
    /// What the session writer does on wake-up, minus the socket write.
    fn drain(&mut self, now: Instant) -> usize {
        self.pending.take(&mut self.dirty);
        for slot in self.dirty.drain(..) {
            self.slots[slot as usize].emit_latest(now, &mut self.frame, &mut self.stats);
        }
        self.stats.tick_in.clear();
        self.frame.take().map_or(0, |f| f.len())
    }
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

fn setup(n: usize) -> (Index, Vec<Conn>) {
    let index = Index::new(&["bench".to_string()], Arc::new(Metrics::new()));
    let entry = index.register("AAPL".into());
    index.apply(FeedEvent::Tick(Tick {
        bid_size: Some(100),
        ask_size: Some(100),
        ..tick(1)
    }));
    let mut conns: Vec<Conn> = (0..n)
        .map(|_| {
            let pending = ConnPending::new();
            Conn {
                slots: vec![SlotView::new(
                    entry.subscribe(&pending, 0, true),
                    Pacing::default(),
                )],
                pending,
                dirty: Vec::new(),
                frame: FrameBuilder::default(),
                stats: EmitStats::default(),
            }
        })
        .collect();
    let now = Instant::now();
    for c in &mut conns {
        c.drain(now); // the snapshots
    }
    (index, conns)
}

/// Applies `ticks_per_drain` ticks, then drains every connection once (`updates_per_drain` each).
fn group(c: &mut Criterion, name: &str, ticks_per_drain: i64, updates_per_drain: u64) {
    let mut group = c.benchmark_group(name);
    for n in [1usize, 100, 1_000] {
        let (index, mut conns) = setup(n);
        let mut i = 2;
        group.throughput(Throughput::Elements(n as u64 * updates_per_drain));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for _ in 0..ticks_per_drain {
                    index.apply(FeedEvent::Tick(tick(i)));
                    i += 1;
                }
                let now = Instant::now();
                let mut bytes = 0;
                for c in &mut conns {
                    bytes += c.drain(now);
                }
                black_box(bytes)
            })
        });
    }
    group.finish();
}

/// Symbols and connections of the `shards` group: every connection subscribes to every symbol.
const SHARD_SYMBOLS: usize = 10;
const SHARD_CONNECTIONS: usize = 1_000;

/// The per-worker fan-out on real threads: each round the bench thread (the ingest) applies one
/// tick to each of `SHARD_SYMBOLS` symbols, then each of `shards` worker threads delivers its
/// shard's news and drains its share of `SHARD_CONNECTIONS` connections, as the worker's task and
/// its connections' flushes do. The same work split over one shard and over two: on a machine with
/// a core per worker, deliveries/s should grow about 2× from one shard to two.
fn shards(c: &mut Criterion) {
    use std::sync::{mpsc, Barrier};
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
        // Start and end of each round; `stop` ends the workers after the last one.
        let barrier = Arc::new(Barrier::new(shards + 1));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (delivered_tx, delivered_rx) = mpsc::sync_channel(2);
        let workers: Vec<_> = (0..shards)
            .map(|_| {
                let (index, symbols, barrier, stop) = (
                    index.clone(),
                    symbols.clone(),
                    barrier.clone(),
                    stop.clone(),
                );
                let delivered_tx = delivered_tx.clone();
                std::thread::spawn(move || {
                    // Connections are created on the worker's thread: its shard serves them.
                    let mut conns: Vec<Conn> = (0..SHARD_CONNECTIONS / shards)
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
                        .collect();
                    let now = Instant::now();
                    for c in &mut conns {
                        c.drain(now); // the snapshots
                    }
                    let mut updates = 0u64;
                    loop {
                        barrier.wait();
                        if stop.load(std::sync::atomic::Ordering::Acquire) {
                            break;
                        }
                        let now = Instant::now();
                        for c in &mut conns {
                            c.drain(now);
                            updates += c.stats.updates;
                            c.stats.updates = 0;
                        }
                        barrier.wait();
                    }
                    delivered_tx.send(updates).unwrap();
                })
            })
            .collect();
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
                barrier.wait(); // the workers drain...
                barrier.wait(); // ...and are done
            })
        });
        stop.store(true, std::sync::atomic::Ordering::Release);
        barrier.wait();
        drop(delivered_tx);
        let updates: u64 = workers
            .into_iter()
            .map(|w| {
                w.join().unwrap();
                delivered_rx.recv().unwrap()
            })
            .sum();
        // Every connection got every tick: the shards lost nothing.
        assert_eq!(
            updates % (SHARD_SYMBOLS * SHARD_CONNECTIONS) as u64,
            0,
            "each round delivers every symbol's tick to every connection"
        );
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    group(c, "in_sync", 1, 1);
    group(c, "catch_up", 10, 10);
    group(c, "conflated", RECENT_TICKS as i64 + 1, 1);
    shards(c);
}

criterion_group!(benches, fanout);
criterion_main!(benches);
