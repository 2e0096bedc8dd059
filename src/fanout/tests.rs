use std::sync::Arc;

use rust_decimal::Decimal;

use super::duty::{Cost, MAX_REST};
use super::pending::SlotBits;
use super::*;
use crate::feed::FeedEvent;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::model::Tick;
use std::task::{Context, Waker};

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
    conn.take_marks_for_pass(&mut slots);
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
    shard.run_pass(&mut pass, logging_writer);
    assert_eq!(
        WRITES.with_borrow_mut(|(log, _)| std::mem::take(log)),
        [(a.id(), vec![0]), (b.id(), vec![0, 1])],
        "b's frame took Y's tick, which came after the pass began"
    );
    let next: Vec<u64> = pass.next.iter().map(|c| c.id()).collect();
    assert_eq!(next, [a.id(), b.id()], "X ticked after both were written");
    shard.run_pass(&mut pass, logging_writer);
    assert_eq!(
        WRITES.with_borrow_mut(|(log, _)| std::mem::take(log)),
        [(a.id(), vec![0]), (b.id(), vec![0])]
    );
    assert!(pass.writing.is_empty() && pass.next.is_empty());
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
    let alerts = Arc::new(super::Alerts::default());
    shard.clock_in(conn.clone(), alerts.clone());
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
    alerts.closing.store(true, Ordering::Release);
    shard.tick(ms(1000));
    assert!(poll_wait(&conn) && conn.take_clock());
}

/// A connection whose task is dropped without its polite close (aborted, panicked) leaves the
/// shard's clock at its next tick: `ConnPending::close` runs from a guard's `Drop` in the
/// session (`session/writer.rs`, `Registered`), and the clock forgets what is closed.
#[test]
fn the_clock_forgets_a_closed_connection_at_its_next_tick() {
    let conn = ConnPending::new();
    let shard = conn.shard().clone();
    let before = shard.clocked();
    shard.clock_in(conn.clone(), Arc::default());
    assert_eq!(shard.clocked(), before + 1);
    conn.close();
    shard.tick(Instant::now());
    assert_eq!(shard.clocked(), before);
}

/// A writer whose every write brings news: each pass of the shard leaves its inbox non-empty,
/// as a worker under load sees it.
fn busy_writer(conn: &ConnPending) -> bool {
    conn.take_marks_for_pass(&mut Vec::new());
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
            shard.clock_in(due.clone(), Arc::default());
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
    let passes = finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker's other task, clock and windows ran while the shard always had news");
    assert!(passes > 1, "the shard was busy meanwhile ({passes} passes)");
}
