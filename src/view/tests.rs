use super::*;
use crate::delta::client_view::{of_quote, View};
use crate::fanout::ConnPending;
use crate::feed::FeedEvent;
use crate::index::{Index, RECENT_TICKS};
use crate::metrics::Metrics;
use crate::model::Tick;
use proptest::prelude::*;
use rust_decimal::Decimal;

/// What a view keeps of a sent quote gives back every field an update compares, prices by
/// representation (`1.10` stays `1.10`), absent fields absent.
#[test]
fn sent_keeps_what_an_update_compares() {
    let d = |s: &str| Some(s.parse::<Decimal>().unwrap());
    let full = Quote {
        ts: 5,
        bid: d("1.10"),
        ask: d("-0.000000001"),
        last: d("79228162514264337593543950335"),
        bid_size: Some(0),
        ask_size: Some(u64::MAX),
        last_size: Some(7),
        volume: Some(1 << 40),
        status: Status::Halted,
    };
    let some = Quote {
        bid: d("2"),
        volume: Some(3),
        ..Quote::default()
    };
    for q in [full, some, Quote::default()] {
        let back = Sent::of(&q).quote();
        let wire = Quote {
            ts: q.ts,
            status: q.status,
            ..back
        };
        assert!(wire.same_as(&q), "{q:?} came back as {back:?}");
    }
    assert!(std::mem::size_of::<Sent>() < std::mem::size_of::<Quote>());
}

fn index() -> Index {
    Index::new(&["test".to_string()], Arc::new(Metrics::new()))
}

fn tick(bid: i64, ask_size: Option<i64>) -> Tick {
    Tick {
        symbol: "AAPL".into(),
        ts: bid,
        bid: Some(Decimal::new(bid, 2)),
        ask_size,
        ..Tick::default()
    }
}

/// Drains `conn` into frames the way the session writer does, returning the decoded messages.
fn drain(conn: &ConnPending, slots: &mut [SlotView], now: Instant) -> Vec<serde_json::Value> {
    let mut dirty = Vec::new();
    conn.take(&mut dirty);
    let mut frame = FrameBuilder::default();
    let mut stats = EmitStats::default();
    for slot in dirty {
        slots[slot as usize].emit_latest(now, &mut frame, &mut stats);
    }
    match frame.take() {
        None => vec![],
        Some(f) => {
            serde_json::from_str::<Vec<serde_json::Value>>(&f).expect("a frame is a JSON array")
        }
    }
}

/// One connection subscribed to AAPL (one tick in, `seq` 1) that has taken its snapshot.
fn subscribed_after_snapshot() -> (Index, Arc<SymbolEntry>, Arc<ConnPending>, Vec<SlotView>) {
    let idx = index();
    let entry = idx.register("AAPL".into());
    idx.apply(FeedEvent::Tick(tick(100, Some(1))));
    let conn = ConnPending::new();
    let mut slots = vec![SlotView::new(
        entry.subscribe(&conn, 0, true),
        Pacing::default(),
        Wants::default(),
    )];
    let snap = drain(&conn, &mut slots, Instant::now());
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0]["type"], "snapshot");
    assert_eq!(snap[0]["seq"], 1);
    (idx, entry, conn, slots)
}

#[test]
fn a_slow_connection_gets_the_latest_value_once_with_the_merged_count() {
    let (idx, _entry, conn, mut slots) = subscribed_after_snapshot();

    for i in 0..1000 {
        idx.apply(FeedEvent::Tick(tick(101 + i, None)));
    }
    assert_eq!(conn.pending(), 1, "a thousand ticks, one pending slot");
    let msgs = drain(&conn, &mut slots, Instant::now());
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["seq"], 1001);
    assert_eq!(msgs[0]["bid"], "11.00");
    assert_eq!(msgs[0]["conflated"], 999);
    assert!(msgs[0].get("ask_size").is_none());
}

#[test]
fn an_in_sync_connection_gets_the_shared_bytes() {
    let (idx, entry, _conn, mut slots) = subscribed_after_snapshot();
    idx.apply(FeedEvent::Tick(tick(101, None)));
    let mut frame = FrameBuilder::default();
    let shared = entry.read_since(slots[0].catch_up_after(), |latest| {
        slots[0].emit(
            latest.as_ref(),
            Instant::now(),
            &mut frame,
            &mut EmitStats::default(),
        );
        latest.unwrap().catch_up.first().unwrap().frame.clone()
    });
    let f = frame.take().unwrap();
    assert_eq!(f.as_bytes().as_ptr(), shared.as_bytes().as_ptr());
}

#[test]
fn a_connection_a_few_ticks_behind_gets_every_tick_in_one_frame() {
    let (idx, _entry, conn, mut slots) = subscribed_after_snapshot();
    for i in 0..RECENT_TICKS as i64 {
        idx.apply(FeedEvent::Tick(tick(101 + i, None)));
    }
    let msgs = drain(&conn, &mut slots, Instant::now());
    assert_eq!(msgs.len(), RECENT_TICKS, "one update per tick");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["seq"], 2 + i as u64);
        assert!(m.get("conflated").is_none(), "{m}");
    }
    assert_eq!(msgs[RECENT_TICKS - 1]["bid"], "1.64");
    // One tick more than the index keeps: the connection is not keeping up, one merged update.
    for i in 0..=RECENT_TICKS as i64 {
        idx.apply(FeedEvent::Tick(tick(200 + i, None)));
    }
    let msgs = drain(&conn, &mut slots, Instant::now());
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["conflated"], RECENT_TICKS as u64);
}

#[test]
fn max_hz_defers_and_then_sends_the_latest() {
    let idx = index();
    let entry = idx.register("AAPL".into());
    idx.apply(FeedEvent::Tick(tick(100, None)));
    let conn = ConnPending::new();
    let mut slots = vec![SlotView::new(
        entry.subscribe(&conn, 0, true),
        Pacing::max_hz(Some(2.0)),
        Wants::default(),
    )];
    let t0 = Instant::now();
    assert_eq!(drain(&conn, &mut slots, t0).len(), 1);
    idx.apply(FeedEvent::Tick(tick(101, None)));
    let mut frame = FrameBuilder::default();
    let latest = entry.read();
    let r = slots[0].emit(
        latest.as_ref(),
        t0 + Duration::from_millis(100),
        &mut frame,
        &mut EmitStats::default(),
    );
    assert_eq!(r, Emitted::NotBefore(t0 + Duration::from_millis(500)));
    assert!(frame.is_empty());
    idx.apply(FeedEvent::Tick(tick(102, None)));
    let latest = entry.read();
    let r = slots[0].emit(
        latest.as_ref(),
        t0 + Duration::from_millis(500),
        &mut frame,
        &mut EmitStats::default(),
    );
    assert_eq!(r, Emitted::Wrote);
    let msgs: Vec<serde_json::Value> = serde_json::from_str(&frame.take().unwrap()).unwrap();
    assert_eq!(
        (msgs[0]["bid"].as_str(), msgs[0]["conflated"].as_u64()),
        (Some("1.02"), Some(1))
    );
}

#[test]
fn max_hz_paces_updates_but_not_status_changes() {
    let idx = index();
    let entry = idx.register("AAPL".into());
    idx.apply(FeedEvent::Tick(tick(100, None)));
    let conn = ConnPending::new();
    let mut slots = vec![SlotView::new(
        entry.subscribe(&conn, 0, true),
        Pacing::max_hz(Some(0.001)),
        Wants::default(),
    )];
    let t0 = Instant::now();
    assert_eq!(drain(&conn, &mut slots, t0).len(), 1, "the snapshot");
    idx.apply(FeedEvent::Tick(Tick {
        bid: Some(Decimal::new(101, 2)),
        status: Some(Status::Halted),
        ..tick(101, None)
    }));
    // 1 s later, 999 s before the next update may go: the halt, alone.
    let msgs = drain(&conn, &mut slots, t0 + Duration::from_secs(1));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        (msgs[0]["type"].as_str(), msgs[0]["status"].as_str()),
        (Some("status"), Some("halted"))
    );
    // When due, the price, and the status is not sent twice.
    let mut frame = FrameBuilder::default();
    let r = slots[0].emit(
        entry.read().as_ref(),
        t0 + Duration::from_secs(1000),
        &mut frame,
        &mut EmitStats::default(),
    );
    assert_eq!(r, Emitted::Wrote);
    let msgs: Vec<serde_json::Value> = serde_json::from_str(&frame.take().unwrap()).unwrap();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        (msgs[0]["type"].as_str(), msgs[0]["bid"].as_str()),
        (Some("update"), Some("1.01"))
    );
}

/// A scale-out edge: states keep the ingest's seq (a gap is `conflated`), and a seq that goes
/// down under a new term (an ingest that lost its cache) ends the connections that held the
/// old one, which then start over with fresh snapshots.
#[test]
fn a_restarted_source_ends_the_views_that_held_the_old_seq() {
    use crate::model::BusState as State;
    let idx = index();
    let state = |term, version, seq, bid| FeedEvent::State {
        feed: 0,
        state: State {
            term,
            version,
            seq,
            symbol: "AAPL".into(),
            quote: Quote {
                ts: 1,
                bid: Some(Decimal::new(bid, 2)),
                ..Quote::default()
            },
            prints: Default::default(),
        },
    };
    idx.apply(state(1, 10, 100, 100));
    let entry = idx.lookup("AAPL").unwrap();
    let conn = ConnPending::new();
    let mut slots = vec![SlotView::new(
        entry.subscribe(&conn, 0, true),
        Pacing::default(),
        Wants::default(),
    )];
    let strict = ConnPending::new();
    let never_merge = Pacing {
        close_on_lag: true,
        ..Pacing::default()
    };
    let mut strict_slots = vec![SlotView::new(
        entry.subscribe(&strict, 0, true),
        never_merge,
        Wants::default(),
    )];
    let snap = drain(&conn, &mut slots, Instant::now());
    assert_eq!(snap[0]["seq"], 100);
    assert_eq!(
        drain(&strict, &mut strict_slots, Instant::now())[0]["seq"],
        100
    );
    idx.apply(state(1, 12, 103, 103)); // two states lost on the way
    let msgs = drain(&conn, &mut slots, Instant::now());
    assert_eq!(
        (msgs[0]["seq"].as_u64(), msgs[0]["conflated"].as_u64()),
        (Some(103), Some(2))
    );
    // A client that asked never to be sent a merge is closed instead, though it kept up.
    strict.take(&mut Vec::new());
    let emitted = strict_slots[0].emit_latest(
        Instant::now(),
        &mut FrameBuilder::default(),
        &mut EmitStats::default(),
    );
    assert_eq!(emitted, Emitted::Lagged);
    idx.apply(state(1, 11, 101, 101)); // a late one: nothing
    assert!(drain(&conn, &mut slots, Instant::now()).is_empty());
    idx.apply(state(2, 1, 5, 500)); // a new term with a lower seq: the source restarted
    let mut dirty = Vec::new();
    conn.take(&mut dirty);
    let mut frame = FrameBuilder::default();
    let emitted = slots[0].emit_latest(Instant::now(), &mut frame, &mut EmitStats::default());
    assert_eq!(emitted, Emitted::Restarted);
    // A new connection simply gets the new state.
    let conn2 = ConnPending::new();
    let mut fresh = vec![SlotView::new(
        entry.subscribe(&conn2, 0, true),
        Pacing::default(),
        Wants::default(),
    )];
    assert_eq!(drain(&conn2, &mut fresh, Instant::now())[0]["seq"], 5);
}

#[test]
fn nothing_before_the_first_tick_then_a_snapshot() {
    let idx = index();
    let entry = idx.register("AAPL".into());
    let conn = ConnPending::new();
    let mut slots = vec![SlotView::new(
        entry.subscribe(&conn, 0, true),
        Pacing::default(),
        Wants::default(),
    )];
    assert!(drain(&conn, &mut slots, Instant::now()).is_empty());
    idx.apply(FeedEvent::Tick(tick(100, None)));
    let msgs = drain(&conn, &mut slots, Instant::now());
    assert_eq!(msgs[0]["type"], "snapshot");
    assert_eq!(msgs[0]["ask"], serde_json::Value::Null);
}

#[derive(Clone, Debug)]
enum Step {
    Tick {
        bid: Option<i64>,
        ask: Option<i64>,
        size: Option<i64>,
        status: Option<u8>,
    },
    Drain,
    Resubscribe,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (proptest::option::of(1i64..50), proptest::option::of(1i64..50),
              proptest::option::of(0i64..5), proptest::option::weighted(0.1, 0u8..3))
            .prop_map(|(bid, ask, size, status)| Step::Tick { bid, ask, size, status }),
        2 => Just(Step::Drain),
        1 => Just(Step::Resubscribe),
    ]
}

proptest! {
    /// Whatever the interleaving of ticks and drains: the first message is a snapshot, seq only
    /// grows, the update's `conflated` is exactly the ticks skipped, and after every drain the
    /// client's view equals the gateway's latest quote (latest value wins).
    #[test]
    fn conflation_keeps_the_client_exact(steps in proptest::collection::vec(arb_step(), 1..60)) {
        let idx = index();
        let entry = idx.register("AAPL".into());
        let conn = ConnPending::new();
        let mut slots = vec![SlotView::new(entry.subscribe(&conn, 0, true), Pacing::default(), Wants::default())];
        let mut view: Option<View> = None;
        let mut status = "live".to_string();
        for step in steps.iter().chain([Step::Drain].iter()) {
            match step {
                Step::Tick { bid, ask, size, status } => {
                    idx.apply(FeedEvent::Tick(Tick {
                        symbol: "AAPL".into(), ts: 7,
                        bid: bid.map(|b| Decimal::new(b, 1)), ask: ask.map(|a| Decimal::new(a, 2)),
                        bid_size: *size,
                        status: status.map(|s| [Status::Live, Status::Stale, Status::Halted][s as usize]),
                        ..Tick::default()
                    }));
                }
                Step::Resubscribe => {
                    slots[0].resubscribe(Pacing::default(), Wants::default());
                    conn.mark(0);
                }
                Step::Drain => {
                    for msg in drain(&conn, &mut slots, Instant::now()) {
                        match msg["type"].as_str().unwrap() {
                            "snapshot" => {
                                if let Some(v) = &view {
                                    prop_assert!(msg["seq"].as_u64().unwrap() >= v.seq);
                                }
                                status = msg["status"].as_str().unwrap().to_string();
                                view = Some(View::from_snapshot(&msg));
                            }
                            "update" => {
                                let v = view.as_mut().expect("no update before the snapshot");
                                let seq = msg["seq"].as_u64().unwrap();
                                prop_assert!(seq > v.seq, "seq only grows");
                                let conflated = msg.get("conflated").map_or(0, |c| c.as_u64().unwrap());
                                prop_assert!(conflated > 0 || msg.get("conflated").is_none(), "conflated is absent when 0");
                                prop_assert_eq!(conflated, seq - v.seq - 1);
                                v.apply(&msg);
                            }
                            "status" => {
                                prop_assert!(view.is_some(), "no status before the snapshot");
                                status = msg["status"].as_str().unwrap().to_string();
                            }
                            other => prop_assert!(false, "unexpected {}", other),
                        }
                    }
                    if let (Some(v), Some(p)) = (&view, entry.read()) {
                        let mut expect = of_quote("AAPL", p.seq, &p.quote);
                        expect.fields.remove("status");
                        let mut got = v.clone();
                        got.fields.remove("status");
                        prop_assert_eq!(got, expect);
                        prop_assert_eq!(status.as_str(), p.quote.status.as_str());
                    }
                }
            }
        }
    }
}
