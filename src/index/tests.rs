use super::*;
use crate::fanout::ConnPending;
use rust_decimal::Decimal;

fn tick(feed: FeedId, bid: i64) -> FeedEvent {
    FeedEvent::Tick(Tick {
        feed,
        symbol: "X".into(),
        ts: bid,
        bid: Some(Decimal::new(bid, 2)),
        ..Tick::default()
    })
}

fn status(feed: FeedId, status: Status) -> FeedEvent {
    FeedEvent::Status {
        feed,
        symbol: "X".into(),
        status,
    }
}

/// A shard's connections read the symbol from the shard's mirror: whatever happened (ticks,
/// status-only changes, a stretch with no live subscriber, when the ring is not kept), a read
/// from the mirror is the read from the symbol itself, for every `after`.
#[test]
fn a_read_from_the_shards_mirror_is_the_read_from_the_symbol() {
    let mut index = Index::new(&["feed".into()], Arc::new(Metrics::new()));
    // The ring keeps its last `RECENT_TICKS` only, so that it drops changes the rounds below
    // made (and the mirror must drop them too).
    index.keep_catch_up_for(Duration::ZERO);
    let entry = index.register("X".into());
    let conn = ConnPending::new();
    // A delayed subscriber keeps the shard's link (and mirror) when no live one is left.
    let _delayed = entry.subscribe(&conn, 0, false);
    let mut live = Some(entry.subscribe(&conn, 1, true));
    let mut reader = entry.subscribe(&conn, 2, true);
    let mut bid = 100;
    for round in 0..400 {
        match round % 5 {
            0..=2 => {
                bid += 1;
                index.apply(tick(0, bid));
            }
            3 => index.apply(status(0, [Status::Halted, Status::Live][round % 2])),
            _ => {}
        }
        // Rounds 10-19: no live subscriber (the ring is cleared, the mirror not read); then
        // a new one reads first.
        match round {
            10 => {
                live = None;
                drop(std::mem::replace(
                    &mut reader,
                    entry.subscribe(&conn, 3, false),
                ));
            }
            20 => {
                reader = entry.subscribe(&conn, 4, true);
                live = Some(entry.subscribe(&conn, 5, true));
            }
            _ => {}
        }
        // Not read every round: the mirror then catches up several changes at once.
        if (10..20).contains(&round) && round % 3 != 0 || round > 20 && round % 7 > 1 {
            continue;
        }
        let version = entry.read().map_or(0, |p| p.version);
        for after in std::iter::once(None).chain((0..=version + 1).map(Some)) {
            let from_symbol = entry.read_since(after, |p| format!("{p:?}"));
            let from_mirror = reader.read_since(after, |p| format!("{p:?}"));
            assert_eq!(from_mirror, from_symbol, "round {round}, after {after:?}");
        }
    }
    drop(live);
}

/// A scale-out ingest's publisher gets every change whole and in order, status-only ones
/// included; once it is `CHANGE_LOG_CAPACITY` changes behind, one entry per symbol.
#[test]
fn the_change_log_keeps_every_change_until_its_consumer_is_far_behind() {
    let mut index = Index::new(&["feed".into()], Arc::new(Metrics::new()));
    let log = Arc::new(ChangeLog::default());
    index.publish_changes(log.clone());
    let take = || {
        let mut out = Changes::default();
        futures_util::FutureExt::now_or_never(log.take(&mut out)).expect("changes pending");
        out
    };
    index.apply(tick(0, 100));
    index.apply(tick(0, 101));
    index.apply(status(0, Status::Halted));
    index.apply(tick(0, 102));
    let got = take();
    let seen: Vec<(u64, u64, String, Status)> = got
        .states
        .iter()
        .map(|c| {
            (
                c.version,
                c.seq,
                c.quote.bid.unwrap().to_string(),
                c.quote.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, 1, "1.00".into(), Status::Live),
            (2, 2, "1.01".into(), Status::Live),
            (3, 2, "1.01".into(), Status::Halted),
            (4, 3, "1.02".into(), Status::Halted), // a tick does not end a halt
        ]
    );
    assert!(got.behind.is_empty());
    for i in 0..CHANGE_LOG_CAPACITY as i64 + 10 {
        index.apply(tick(0, 200 + i));
    }
    let got = take();
    assert_eq!(got.states.len(), CHANGE_LOG_CAPACITY);
    assert_eq!(
        got.behind.len(),
        1,
        "one entry for the rest, however many ticks"
    );
    let latest = got.behind[0].read().unwrap();
    assert_eq!(latest.seq, 3 + CHANGE_LOG_CAPACITY as u64 + 10);
    // Read: the next change is kept whole again.
    index.apply(tick(0, 1));
    assert_eq!((take().states.len(), take_is_empty(&log)), (1, true));
}

fn take_is_empty(log: &ChangeLog) -> bool {
    let mut out = Changes::default();
    futures_util::FutureExt::now_or_never(log.take(&mut out)).is_none()
}

#[test]
fn the_primary_wins_while_fresh_the_secondary_takes_over_and_seq_keeps_growing() {
    let index = Index::new(
        &["primary".into(), "secondary".into()],
        Arc::new(Metrics::new()),
    );
    let entry = index.register("X".into());
    let state = |e: &SymbolEntry| {
        let p = e.read().unwrap();
        (p.seq, p.quote.bid.unwrap().to_string(), p.quote.status)
    };
    index.apply(tick(1, 200));
    assert_eq!(state(&entry), (1, "2.00".into(), Status::Live));
    index.apply(tick(0, 100)); // the primary's first tick takes over
    assert_eq!(state(&entry), (2, "1.00".into(), Status::Live));
    index.apply(tick(1, 201)); // standby: kept as the secondary's shadow, not published
    assert_eq!(state(&entry), (2, "1.00".into(), Status::Live));
    index.apply(status(0, Status::Stale)); // failover to the secondary's latest view
    assert_eq!(state(&entry), (3, "2.01".into(), Status::Live));
    index.apply(tick(1, 202));
    assert_eq!(state(&entry), (4, "2.02".into(), Status::Live));
    index.apply(status(1, Status::Stale)); // nobody fresh: stale, same seq
    assert_eq!(state(&entry), (4, "2.02".into(), Status::Stale));
    // The primary says it is live again: nothing is published until it sends a price.
    index.apply(status(0, Status::Live));
    assert_eq!(state(&entry), (4, "2.02".into(), Status::Stale));
    index.apply(tick(0, 101)); // its first fresh tick takes the symbol back, with that price
    assert_eq!(state(&entry), (5, "1.01".into(), Status::Live));
}

/// Regression (issue 25): a failover to a standby that had sent only part of a quote published
/// its partial view, nulls and all. A switch publishes only a whole quote: until the standby's
/// view covers what clients hold, the symbol is stale with its last prices, then the standby
/// takes over on the tick that completes its view.
#[test]
fn a_switch_publishes_only_a_whole_quote() {
    let index = Index::new(
        &["primary".into(), "secondary".into()],
        Arc::new(Metrics::new()),
    );
    let entry = index.register("X".into());
    let whole = |feed, n: i64| {
        FeedEvent::Tick(Tick {
            feed,
            symbol: "X".into(),
            ts: n,
            bid: Some(Decimal::new(n, 2)),
            ask: Some(Decimal::new(n + 1, 2)),
            last: Some(Decimal::new(n, 2)),
            volume: Some(n),
            ..Tick::default()
        })
    };
    index.apply(whole(0, 100));
    index.apply(tick(1, 200)); // the standby has only a bid so far
    index.apply(status(0, Status::Stale));
    let p = entry.read().unwrap();
    assert_eq!(
        (p.seq, p.quote.status),
        (1, Status::Stale),
        "no switch to a partial view"
    );
    assert_eq!(p.quote.ask, Some(Decimal::new(101, 2)), "nothing blanked");
    index.apply(tick(1, 201)); // still partial: a standby's shadow, not published
    assert_eq!(entry.read().unwrap().seq, 1);
    index.apply(whole(1, 300)); // whole now: it takes over with its own view
    let p = entry.read().unwrap();
    assert_eq!((p.seq, p.quote.status), (2, Status::Live));
    assert_eq!(
        (p.quote.bid, p.quote.ask, p.quote.volume),
        (
            Some(Decimal::new(300, 2)),
            Some(Decimal::new(301, 2)),
            Some(300)
        )
    );
    // A late higher-priority feed whose first tick is partial does not take back either.
    let fresh = Index::new(&["a".into(), "b".into()], Arc::new(Metrics::new()));
    let e = fresh.register("X".into());
    fresh.apply(whole(1, 500));
    fresh.apply(tick(0, 600));
    let p = e.read().unwrap();
    assert_eq!((p.seq, p.quote.bid), (1, Some(Decimal::new(500, 2))));
    fresh.apply(whole(0, 700));
    assert_eq!(e.read().unwrap().quote.bid, Some(Decimal::new(700, 2)));
}

#[test]
fn fail_back_never_publishes_the_recovering_feeds_pre_outage_quote() {
    let index = Index::new(
        &["primary".into(), "secondary".into()],
        Arc::new(Metrics::new()),
    );
    let entry = index.register("X".into());
    index.apply(tick(0, 100));
    index.apply(tick(1, 200));
    index.apply(status(0, Status::Stale)); // failover: the secondary's current price
    let p = entry.read().unwrap();
    assert_eq!(
        (p.seq, p.quote.bid.unwrap().to_string()),
        (2, "2.00".into())
    );
    index.apply(tick(1, 201));
    // Recovery announced before any price: the published quote stays the secondary's.
    index.apply(status(0, Status::Live));
    let p = entry.read().unwrap();
    assert_eq!(
        (p.seq, p.quote.bid.unwrap().to_string()),
        (3, "2.01".into())
    );
    assert_eq!(p.quote.status, Status::Live);
}

#[test]
fn a_status_event_from_a_feed_that_never_ticked_the_symbol_changes_nothing() {
    let index = Index::new(
        &["primary".into(), "secondary".into()],
        Arc::new(Metrics::new()),
    );
    let entry = index.register("X".into());
    index.apply(tick(1, 200)); // only the secondary serves X
    for s in [Status::Stale, Status::Live, Status::Stale, Status::Live] {
        index.apply(status(0, s));
        let p = entry.read().unwrap();
        assert_eq!(
            (
                p.seq,
                p.version,
                p.quote.bid.unwrap().to_string(),
                p.quote.status
            ),
            (1, 1, "2.00".into(), Status::Live)
        );
    }
    // The secondary's own outage is a status-only change: a new version, the same seq and price.
    index.apply(status(1, Status::Stale));
    let p = entry.read().unwrap();
    assert_eq!((p.seq, p.version, p.quote.status), (1, 2, Status::Stale));
    assert_eq!(p.quote.bid.unwrap().to_string(), "2.00");
}

#[test]
fn status_changes_keep_their_place_among_the_updates_in_the_ring() {
    let index = Index::new(&["only".into()], Arc::new(Metrics::new()));
    let entry = index.register("X".into());
    let conn = ConnPending::new();
    let _sub = entry.subscribe(&conn, 0, true);
    index.apply(tick(0, 100)); // version 1: the snapshot's
    index.apply(tick(0, 101));
    index.apply(status(0, Status::Stale));
    index.apply(tick(0, 102)); // live again, with a price
    let (messages, seq_version) = entry.read_since(Some(1), |p| {
        let p = p.unwrap();
        (catch_up_messages(p.catch_up), (p.seq, p.version))
    });
    assert_eq!(
        messages,
        [
            "update 2",
            "status \"stale\"",
            "update 3",
            "status \"live\""
        ]
    );
    assert_eq!(seq_version, (3, 4));
}

/// Each message of `changes`: its type, and its status or seq.
fn catch_up_messages(changes: CatchUp<'_>) -> Vec<String> {
    changes
        .iter()
        .flat_map(|r| {
            serde_json::from_str::<Vec<serde_json::Value>>(&r.frame)
                .unwrap()
                .into_iter()
                .map(|m| {
                    format!(
                        "{} {}",
                        m["type"].as_str().unwrap(),
                        m.get("status").or(m.get("seq")).unwrap()
                    )
                })
        })
        .collect()
}

/// Regression (issue 13: a symbol ticking more than 64 times in one batching window was merged
/// for every client): the ring keeps every change of the catch-up window, up to `RECENT_MAX`,
/// and exactly `RECENT_TICKS` without a window.
#[test]
fn the_ring_keeps_the_catch_up_window_not_a_fixed_count() {
    let behind_after = |window: Duration, ticks: i64| {
        let mut index = Index::new(&["only".into()], Arc::new(Metrics::new()));
        index.keep_catch_up_for(window);
        let entry = index.register("X".into());
        let conn = ConnPending::new();
        let _sub = entry.subscribe(&conn, 0, true);
        for bid in 0..ticks {
            index.apply(tick(0, 100 + bid));
        }
        // A client that got the first tick's snapshot and has read nothing since.
        entry.read_since(Some(1), |p| {
            let p = p.unwrap();
            (p.catch_up.len(), p.catch_up.first().map(|r| r.seq))
        })
    };
    let hour = Duration::from_secs(3600);
    assert_eq!(behind_after(hour, 1_001), (1_000, Some(2)), "every change");
    assert_eq!(
        behind_after(Duration::ZERO, 1_001),
        (0, None),
        "1,000 behind with only RECENT_TICKS kept: conflated"
    );
    assert_eq!(behind_after(Duration::ZERO, RECENT_TICKS as i64 + 1).0, 64);
    assert_eq!(
        behind_after(hour, RECENT_MAX as i64 + 2),
        (0, None),
        "past RECENT_MAX: conflated, memory stays bounded"
    );
}

#[test]
fn a_single_feed_going_stale_and_back_changes_only_the_status() {
    let index = Index::new(&["only".into()], Arc::new(Metrics::new()));
    let entry = index.register("X".into());
    index.apply(tick(0, 100));
    index.apply(status(0, Status::Stale));
    let p = entry.read().unwrap();
    assert_eq!((p.seq, p.quote.status), (1, Status::Stale));
    index.apply(tick(0, 101)); // a tick means the upstream answers again
    let p = entry.read().unwrap();
    assert_eq!((p.seq, p.quote.status), (2, Status::Live));
}

/// Ticks of "X" that each print a trade, `ts` 400 ms apart (so 1 s bars end as they go).
fn trades(n: i64) -> Vec<FeedEvent> {
    (1..=n)
        .map(|i| {
            let price = Decimal::new(10_000 + i, 2);
            FeedEvent::Tick(Tick {
                feed: 0,
                symbol: "X".into(),
                ts: 1_000_000 + i * 400,
                last: Some(price),
                last_size: Some(100 + i),
                trade: Some(crate::model::Trade {
                    price,
                    size: 100 + i,
                }),
                ..Tick::default()
            })
        })
        .collect()
}

fn as_state(term: u64, c: &Change) -> FeedEvent {
    FeedEvent::State {
        feed: 0,
        state: crate::model::BusState {
            term,
            version: c.version,
            seq: c.seq,
            symbol: c.symbol.clone(),
            quote: c.quote,
            prints: c.prints,
        },
    }
}

/// An ingest's states carry its prints; an edge that misses some of those states (the
/// publisher merged them) tells a reader exactly how many prints it lost and their range, takes a
/// state read twice once, and counts on afresh from a source that started over.
#[test]
fn an_edge_counts_exactly_the_prints_it_never_got() {
    let metrics = Arc::new(Metrics::new());
    let mut ingest = Index::new(&["feed".into()], metrics.clone());
    let log = Arc::new(ChangeLog::default());
    ingest.publish_changes(log.clone());
    for t in trades(10) {
        ingest.apply(t);
    }
    let mut taken = Changes::default();
    futures_util::FutureExt::now_or_never(log.take(&mut taken)).unwrap();
    let states: Vec<Change> = taken.states.drain(..).collect();
    assert_eq!(states.len(), 10);
    assert_eq!(
        states.iter().map(|c| c.prints.count).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(states.iter().all(|c| c.prints.trade.is_some()));
    assert_eq!(states[4].prints.trade.unwrap().prev_seq, 4);

    let edge = Index::new(&["nats".into()], metrics);
    for c in &states[..3] {
        edge.apply(as_state(1, c));
    }
    edge.apply(as_state(1, &states[1])); // read twice
    let entry = edge.lookup("X").unwrap();
    let read = |cursor| entry.trades_until(cursor, i64::MAX);
    let (lost, prints, cursor, _) = read(TapeCursor::default());
    assert_eq!(lost, None);
    assert_eq!(prints.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        prints[0].1,
        r#"{"type":"trade","symbol":"X","seq":1,"ts":1000400,"price":"100.01","size":101}"#,
        "the ingest's print, byte for byte"
    );
    // States 4 to 6 were merged away: the next state with a print says what is missing.
    for c in &states[6..] {
        edge.apply(as_state(1, c));
    }
    let (lost, prints, cursor, _) = read(cursor);
    assert_eq!(
        lost,
        Some(Lost {
            count: 3,
            from_seq: 4,
            to_seq: 6
        })
    );
    assert_eq!(
        prints.iter().map(|p| p.0).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    // A state without a print of its own (a status change, the reconcile) counts the prints
    // before it: one more was merged away.
    let mut status_only = ingest.lookup("X").unwrap().bus_change().unwrap();
    status_only.version += 2;
    status_only.seq += 1;
    status_only.prints.count += 1;
    status_only.prints.last_seq = status_only.seq;
    status_only.prints.trade = None;
    edge.apply(as_state(1, &status_only));
    let (lost, prints, cursor, _) = read(cursor);
    assert_eq!(
        (lost.map(|l| (l.count, l.to_seq)), prints.len()),
        (Some((1, 11)), 0)
    );
    // A source that started over (a new term, counting from 1) is counted on from there.
    let mut restarted = Index::new(&["feed".into()], Arc::new(Metrics::new()));
    let log2 = Arc::new(ChangeLog::default());
    restarted.publish_changes(log2.clone());
    restarted.apply(trades(1).remove(0));
    futures_util::FutureExt::now_or_never(log2.take(&mut taken)).unwrap();
    edge.apply(as_state(2, &taken.states[0]));
    let (lost, prints, _, _) = read(cursor);
    assert_eq!((lost, prints.len()), (None, 1));
}

/// An edge takes the ingest's bars as published: the same final bars, once each, whatever it
/// reads twice or late.
#[test]
fn an_edge_sends_the_ingests_bars() {
    let metrics = Arc::new(Metrics::new());
    let mut ingest = Index::new(&["feed".into()], metrics.clone());
    ingest.publish_changes(Arc::new(ChangeLog::default()));
    let edge = Index::new(&["nats".into()], metrics);
    let mut sent = Vec::new();
    let mut messages = Vec::new();
    // What the publisher sends after a pass.
    let mut publish = |sent: &mut Vec<u64>| {
        let (version, series) = ingest.lookup("X").unwrap().bus_bars(sent, 8).unwrap();
        messages.push(crate::model::BusBars {
            term: 1,
            version,
            symbol: "X".into(),
            series,
        });
    };
    for (i, t) in trades(40).into_iter().enumerate() {
        ingest.apply(t);
        if i % 3 == 0 {
            publish(&mut sent);
        }
    }
    publish(&mut sent);
    let x = ingest.lookup("X").unwrap();
    for (i, m) in messages.iter().enumerate() {
        edge.apply(FeedEvent::Bars {
            feed: 0,
            bars: m.clone(),
        });
        if i == 5 {
            // Read again, and an older one late.
            for again in [m, &messages[2]] {
                edge.apply(FeedEvent::Bars {
                    feed: 0,
                    bars: again.clone(),
                });
            }
        }
    }
    let e = edge.lookup("X").unwrap();
    let fields = |(finals, open): (Vec<Bar>, Option<Bar>)| {
        (
            finals
                .iter()
                .map(|b| {
                    (
                        b.start, b.open, b.high, b.low, b.close, b.volume, b.trades, b.seq,
                    )
                })
                .collect::<Vec<_>>(),
            open.map(|b| (b.start, b.close, b.volume)),
        )
    };
    for i in 0..2 {
        let want = fields(x.bars(i, 1000, None));
        assert!(!want.0.is_empty() || i == 1);
        assert_eq!(fields(e.bars(i, 1000, None)), want, "interval {i}");
    }
}
