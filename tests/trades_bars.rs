//! Trades and bars (PROTOCOL.md, "Trades and bars") against real WebSocket clients, SSE and REST:
//! a replayed recording checked against an OHLCV computed here from the file (not with the
//! gateway's code), a client that stops reading past the tape, and final bars sent exactly once
//! under batching windows, `max_hz` and a slow client.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::{http, start, tick, RawClient, SseClient, DEADLINE};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("feeds/fixtures")
        .join(name)
}

/// One trade print as the file says it: (seq, ts, price text, size).
type Print = (u64, i64, String, u64);

/// One bar: (start, [open, high, low, close] as text, volume, trades).
type Bar = (i64, [String; 4], u64, u64);

/// What the file holds, computed here: every symbol's prints (a line with `last` and a positive
/// `last_size`, `seq` = its line count for the symbol), and the feed's last `ts`.
fn prints_of(path: &Path) -> (BTreeMap<String, Vec<Print>>, i64) {
    let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
    let mut prints: BTreeMap<String, Vec<Print>> = BTreeMap::new();
    let mut last_ts = 0;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let symbol = v["symbol"].as_str().unwrap().to_string();
        let seq = seqs.entry(symbol.clone()).or_default();
        *seq += 1;
        let ts = v["ts"].as_i64().unwrap();
        last_ts = ts;
        if let (Some(price), Some(size)) = (v["last"].as_str(), v["last_size"].as_u64()) {
            if size > 0 {
                prints
                    .entry(symbol)
                    .or_default()
                    .push((*seq, ts, price.to_string(), size));
            }
        }
    }
    (prints, last_ts)
}

/// OHLCV of `prints` per `ms` interval aligned to the epoch, the way a spreadsheet would: group,
/// then first, highest, lowest, last, sum, count.
fn ohlcv(prints: &[Print], ms: i64) -> Vec<Bar> {
    let mut groups: BTreeMap<i64, Vec<&Print>> = BTreeMap::new();
    for p in prints {
        groups.entry(p.1.div_euclid(ms) * ms).or_default().push(p);
    }
    groups
        .into_iter()
        .map(|(start, g)| {
            let value = |p: &&Print| Decimal::from_str(&p.2).unwrap();
            let high = g
                .iter()
                .max_by(|a, b| value(a).cmp(&value(b)).then(b.0.cmp(&a.0)));
            let low = g
                .iter()
                .min_by(|a, b| value(a).cmp(&value(b)).then(a.0.cmp(&b.0)));
            (
                start,
                [
                    g[0].2.clone(),
                    high.unwrap().2.clone(),
                    low.unwrap().2.clone(),
                    g[g.len() - 1].2.clone(),
                ],
                g.iter().map(|p| p.3).sum(),
                g.len() as u64,
            )
        })
        .collect()
}

fn bar_of(m: &Value) -> Bar {
    let s = |k: &str| m[k].as_str().unwrap().to_string();
    (
        m["start"].as_i64().unwrap(),
        [s("open"), s("high"), s("low"), s("close")],
        m["volume"].as_u64().unwrap(),
        m["trades"].as_u64().unwrap(),
    )
}

fn print_of(m: &Value) -> Print {
    (
        m["seq"].as_u64().unwrap(),
        m["ts"].as_i64().unwrap(),
        m["price"].as_str().unwrap().to_string(),
        m["size"].as_u64().unwrap(),
    )
}

/// What a client that keeps up was sent, per symbol: its snapshot's `seq`, and the bars it holds
/// open.
struct Followed {
    snapshot_seq: BTreeMap<String, u64>,
    open_bars: BTreeMap<String, Bar>,
}

/// Subscribes `c` to the file's symbols with trades and 1 s bars and reads it until it has every
/// print after its snapshot (in order, with the file's `seq`) and every final 1 s bar the file owes
/// it, each once; then checks that nothing more comes (no final bar twice, no trade twice).
async fn follow_file(
    c: &mut support::Client,
    prints: &BTreeMap<String, Vec<Print>>,
    last_ts: i64,
) -> Followed {
    let symbols: Vec<&str> = prints.keys().map(String::as_str).collect();
    c.send(json!({"op": "subscribe", "symbols": symbols, "trades": true, "bars": "1s"}))
        .await;
    c.expect("ack").await;

    // What the file says this client is owed: prints after its snapshot, and every 1 s bar that
    // ended on the feed's clock (its last tick's ts).
    let mut snapshot_seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut got_prints: BTreeMap<String, Vec<Print>> = BTreeMap::new();
    let mut got_finals: BTreeMap<String, Vec<Bar>> = BTreeMap::new();
    let mut open_bars: BTreeMap<String, Bar> = BTreeMap::new();
    let owed_prints = |snap: &BTreeMap<String, u64>| -> BTreeMap<String, Vec<Print>> {
        prints
            .iter()
            .map(|(s, p)| {
                let after = snap.get(s).copied().unwrap_or(u64::MAX);
                (
                    s.clone(),
                    p.iter().filter(|p| p.0 > after).cloned().collect(),
                )
            })
            .collect()
    };
    // Final bars from the bar of the first print after the snapshot (a bar open at the snapshot
    // may end after it and is sent too; what came before depends on when the snapshot went).
    let first_owed_bar = |symbol: &str, snap: &BTreeMap<String, u64>| -> i64 {
        let after = snap.get(symbol).copied().unwrap_or(u64::MAX);
        prints[symbol]
            .iter()
            .find(|p| p.0 > after)
            .map_or(i64::MAX, |p| p.1.div_euclid(1000) * 1000)
    };
    let owed_finals = |snap: &BTreeMap<String, u64>| -> BTreeMap<String, Vec<Bar>> {
        prints
            .iter()
            .map(|(s, p)| {
                let from = first_owed_bar(s, snap);
                let bars = ohlcv(p, 1000)
                    .into_iter()
                    .filter(|b| b.0 >= from && b.0 + 1000 <= last_ts)
                    .collect();
                (s.clone(), bars)
            })
            .collect()
    };
    let got_owed = |got: &BTreeMap<String, Vec<Bar>>, snap: &BTreeMap<String, u64>| {
        got.iter()
            .map(|(s, bars)| {
                let from = first_owed_bar(s, snap);
                (
                    s.clone(),
                    bars.iter()
                        .filter(|b| b.0 >= from)
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let deadline = tokio::time::Instant::now() + 4 * DEADLINE;
    loop {
        let m = tokio::time::timeout_at(deadline, c.next())
            .await
            .expect("every trade and final bar within the deadline");
        let symbol = m["symbol"].as_str().unwrap_or_default().to_string();
        match m["type"].as_str().unwrap() {
            "snapshot" => {
                snapshot_seq.insert(symbol, m["seq"].as_u64().unwrap());
            }
            "trade" => got_prints.entry(symbol).or_default().push(print_of(&m)),
            "trades_lost" => panic!("a client that keeps up lost trades: {m}"),
            "bar" => {
                assert_eq!(m["interval"], "1s");
                if m["final"] == true {
                    got_finals.entry(symbol).or_default().push(bar_of(&m));
                } else {
                    open_bars.insert(symbol, bar_of(&m));
                }
            }
            _ => {}
        }
        if snapshot_seq.len() == prints.len()
            && got_prints == owed_prints(&snapshot_seq)
            && got_owed(&got_finals, &snapshot_seq) == owed_finals(&snapshot_seq)
        {
            break;
        }
    }
    for symbol in snapshot_seq.keys() {
        let starts: Vec<i64> = got_finals[symbol].iter().map(|b| b.0).collect();
        assert!(
            starts.windows(2).all(|w| w[0] < w[1]),
            "{symbol}: each final bar once, in order"
        );
    }
    // Nothing more comes: no final bar twice, no trade twice.
    let quiet = tokio::time::sleep(Duration::from_millis(700));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            m = c.next() => {
                let final_bar = m["type"] == "bar" && m["final"] == true;
                assert!(m["type"] != "trade" && !final_bar, "after the file ended: {m}");
                if m["type"] == "bar" {
                    open_bars.insert(m["symbol"].as_str().unwrap().to_string(), bar_of(&m));
                }
            }
        }
    }
    Followed {
        snapshot_seq,
        open_bars,
    }
}

/// `GET /v1/bars` (one-minute bars: the finals, then the open one) and `GET /v1/trades` (the last
/// 50) of every symbol at `addr` are the file's.
async fn rest_agrees_with_the_file(
    addr: std::net::SocketAddr,
    prints: &BTreeMap<String, Vec<Print>>,
    last_ts: i64,
) {
    for (symbol, p) in prints {
        let (status, _, body) = http(
            addr,
            "GET",
            &format!("/v1/bars?symbol={}&interval=1m", symbol.to_lowercase()),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let bars = v["bars"].as_array().unwrap();
        let want = ohlcv(p, 60_000);
        assert_eq!(bars.len(), want.len(), "{symbol}: {body}");
        for (i, (b, w)) in bars.iter().zip(&want).enumerate() {
            assert_eq!(&bar_of(b), w, "{symbol} minute {i}");
            assert_eq!(b["final"], w.0 + 60_000 <= last_ts, "{symbol} minute {i}");
            assert_eq!(b["symbol"], symbol.as_str());
        }
        let (status, _, body) = http(
            addr,
            "GET",
            &format!("/v1/trades?symbol={symbol}&limit=50"),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let got: Vec<Print> = v["trades"]
            .as_array()
            .unwrap()
            .iter()
            .map(print_of)
            .collect();
        assert_eq!(got, p[p.len().saturating_sub(50)..], "{symbol}");
    }
}

/// A replayed recording: a client that keeps up gets every trade after its snapshot once, in
/// order, with the file's `seq`; each final 1 s bar once, equal to the file's; and `GET /v1/bars`
/// and `GET /v1/trades` agree with the file too. Two workers, so sessions and the ingest are on
/// different threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_recording_gives_the_files_trades_and_bars() {
    let path = fixture("trades.ndjson");
    let (prints, last_ts) = prints_of(&path);
    let gw = support::start_with_workers(
        2,
        &format!(
            "[trades]\nkeep = 4096\n[[feeds]]\nkind = \"replay\"\nname = \"rp\"\npath = \"{}\"\nspeed = 20\nstart_delay_ms = 1500\n",
            path.display()
        ),
        &[],
    );
    let mut c = gw.client().await;
    let got = follow_file(&mut c, &prints, last_ts).await;
    for (symbol, snap) in &got.snapshot_seq {
        assert!(
            *snap <= 10,
            "{symbol}: subscribed before the replay, snapshot at {snap}"
        );
    }
    let open_bars = got.open_bars;
    // Every open bar the client holds is the file's last bar of its symbol, still open.
    for (symbol, bar) in &open_bars {
        let last = ohlcv(&prints[symbol], 1000).pop().unwrap();
        if bar.0 == last.0 {
            assert_eq!(bar, &last, "{symbol}: the open bar");
        }
    }

    rest_agrees_with_the_file(gw.addr, &prints, last_ts).await;
    // A bad request says what to change; an unknown interval names the offered ones.
    for (path, code) in [
        ("/v1/bars?symbol=AAPL&interval=2m", "bad_request"),
        ("/v1/bars?symbol=AAPL", "bad_request"),
        ("/v1/bars?symbol=ZZZZ&interval=1m", "unknown_symbol"),
        ("/v1/trades?symbol=AAPL&limit=0", "bad_request"),
        ("/v1/trades?symbol=AAPL&limit=-3", "bad_request"),
        ("/v1/trades?symbol=A%22B", "invalid_symbol"),
        ("/v1/trades", "bad_request"),
    ] {
        let (status, _, body) = http(gw.addr, "GET", path, &[]).await;
        assert_eq!(status, 400, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], code, "{path}: {body}");
    }
    let (_, _, body) = http(gw.addr, "GET", "/v1/bars?symbol=AAPL&interval=2m", &[]).await;
    assert!(body.contains("1s, 1m, 5m"), "{body}");
    // More than is kept gets what is kept (4096 prints here; KO printed fewer).
    let (status, _, body) = http(
        gw.addr,
        "GET",
        "/v1/trades?symbol=KO&limit=99999999999",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["trades"].as_array().unwrap().len(), prints["KO"].len());
    let trades_in = gw
        .metric("quotegw_trades_received_total{feed=\"rp\"}")
        .await;
    assert_eq!(
        trades_in as usize,
        prints.values().map(Vec::len).sum::<usize>()
    );
}

/// A client that stops reading falls behind the tape (16 prints here): when it reads again it is
/// told exactly what it lost (`count` and the `seq` range, which hold only prints it did not get),
/// then gets what follows; a client beside it gets everything; one that asked `on_lag: "close"` is
/// closed with 4008 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_the_tape_is_told_exactly_what_it_lost() {
    const PRINTS: i64 = 3000;
    let gw = start(
        "[trades]\nkeep = 16\n[limits]\nsend_buffer_bytes = 4096\nslow_consumer_timeout_ms = 60000\n",
        &["X"],
    );
    gw.push(tick("X", 1, &[("bid", "1.00"), ("ask", "1.01")]))
        .await;
    let mut fast = gw.client().await;
    fast.send(json!({"op": "subscribe", "symbols": ["X"], "trades": true}))
        .await;
    fast.expect("ack").await;
    assert_eq!(fast.expect("snapshot").await["seq"], 1);
    let mut slow = RawClient::connect_unread(gw.addr, "/ws").await;
    slow.send_text(r#"{"op":"subscribe","symbols":["X"],"trades":true}"#)
        .await;
    let mut strict = RawClient::connect_unread(gw.addr, "/ws").await;
    strict
        .send_text(r#"{"op":"subscribe","symbols":["X"],"trades":true,"on_lag":"close"}"#)
        .await;
    // Both snapshots out before the flood.
    for c in [&mut slow, &mut strict] {
        c.read_until_message(|m| m["type"] == "snapshot")
            .await
            .unwrap();
    }
    // Pushed 8 at a time, each batch read by the fast client before the next: it never falls
    // behind the tape, whatever the machine's load, while the other two stop reading.
    let mut all = Vec::new();
    for i in 0..PRINTS {
        let price = format!("{}.{:02}", 2 + i / 100, i % 100);
        let size = (1 + i % 7).to_string();
        gw.push(tick("X", 2 + i, &[("last", &price), ("last_size", &size)]))
            .await;
        if i % 8 == 7 || i == PRINTS - 1 {
            while all.len() < i as usize + 1 {
                let m = fast.next().await;
                match m["type"].as_str().unwrap() {
                    "trade" => all.push(print_of(&m)),
                    "trades_lost" => panic!("the reading client lost trades: {m}"),
                    _ => {}
                }
            }
        }
    }
    let seqs: Vec<u64> = all.iter().map(|p| p.0).collect();
    assert_eq!(seqs, (2..=PRINTS as u64 + 1).collect::<Vec<_>>());

    // The slow client reads now: prints and losses, until the last print.
    let last = PRINTS as u64 + 1;
    let seen = RefCell::new(Vec::<Value>::new());
    slow.read_until_message(|m| {
        if matches!(m["type"].as_str(), Some("trade" | "trades_lost")) {
            seen.borrow_mut().push(m.clone());
        }
        m["type"] == "trade" && m["seq"] == last
    })
    .await
    .expect("the slow client reads on to the last print");
    let mut got = BTreeSet::new();
    let mut lost_total = 0;
    let mut reports = 0;
    let mut prev = 1;
    for m in seen.into_inner() {
        match m["type"].as_str().unwrap() {
            "trade" => {
                let seq = m["seq"].as_u64().unwrap();
                assert!(seq > prev, "in order: {seq} after {prev}");
                assert_eq!(print_of(&m), all[(seq - 2) as usize]);
                got.insert(seq);
                prev = seq;
            }
            _ => {
                let (count, from, to) = (
                    m["count"].as_u64().unwrap(),
                    m["from_seq"].as_u64().unwrap(),
                    m["to_seq"].as_u64().unwrap(),
                );
                assert_eq!(from, prev + 1, "the range starts after what it got: {m}");
                let in_range = all.iter().filter(|p| (from..=to).contains(&p.0)).count();
                assert_eq!(count as usize, in_range, "{m}");
                lost_total += count;
                reports += 1;
                prev = to;
            }
        }
    }
    assert!(reports > 0, "the slow client fell behind the tape");
    assert_eq!(
        got.len() as u64 + lost_total,
        PRINTS as u64,
        "every print either sent or counted lost, once"
    );
    assert_eq!(
        gw.metric("quotegw_trades_lost_total{transport=\"ws\"}")
            .await as u64,
        lost_total
    );
    // The strict client: closed with 4008, not told of losses.
    match strict
        .read_until_message(|m| m["type"] == "trades_lost")
        .await
    {
        Err(Some((code, _))) => assert_eq!(code, 4008),
        other => panic!("on_lag close must close with 4008: {other:?}"),
    }
}

/// Final bars across interval boundaries go exactly once to every client: one under a batching
/// window and `max_hz`, one that stops reading for a while, and an SSE stream; the open bar is
/// paced by `max_hz`, the final ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_bar_is_sent_exactly_once() {
    const BARS: i64 = 30;
    let gw = support::start_with_workers(
        2,
        "[limits]\nmin_frame_interval_ms = 40\nsend_buffer_bytes = 4096\n",
        &["Y"],
    );
    // ts on whole seconds from 1,000,000 ms: 5 prints per second, the feed's own clock ends bars.
    gw.push(tick("Y", 1_000_000, &[("bid", "1.00")])).await;
    let mut paced = gw.client().await;
    paced
        .send(json!({"op": "subscribe", "symbols": ["Y"], "bars": "1s", "max_hz": 2}))
        .await;
    paced.expect("ack").await;
    paced.expect("snapshot").await;
    let mut stalled = RawClient::connect_unread(gw.addr, "/ws").await;
    stalled
        .send_text(r#"{"op":"subscribe","symbols":["Y"],"bars":"1s"}"#)
        .await;
    stalled
        .read_until_message(|m| m["type"] == "snapshot")
        .await
        .unwrap();
    let mut sse = SseClient::connect(gw.addr, "/v1/stream?symbols=Y&bars=1s", &[]).await;
    let mut prints = Vec::new();
    let pushing = std::time::Instant::now();
    for k in 0..=BARS {
        for j in 0..5 {
            let ts = 1_000_000 + k * 1000 + j * 150;
            let price = format!("{}.{:02}", 10 + k, (j * 37 + k) % 100);
            let size = 100 * (j + 1);
            gw.push(tick(
                "Y",
                ts,
                &[("last", &price), ("last_size", &size.to_string())],
            ))
            .await;
            prints.push((0, ts, price, size as u64));
            if k == BARS {
                break; // the last bar's first print ends the one before
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let want: Vec<Bar> = ohlcv(&prints, 1000)
        .into_iter()
        .filter(|b| b.0 < 1_000_000 + BARS * 1000)
        .collect();
    let finals_of = |msgs: &[Value]| -> Vec<Bar> {
        msgs.iter()
            .filter(|m| m["type"] == "bar" && m["final"] == true)
            .map(bar_of)
            .collect()
    };
    let done = |m: &Value| {
        m["type"] == "bar" && m["final"] == true && m["start"] == 1_000_000 + (BARS - 1) * 1000
    };
    let mut msgs = Vec::new();
    let mut opens_at = Vec::new();
    loop {
        let m = paced.next().await;
        if m["type"] == "bar" && m["final"] == false {
            opens_at.push(std::time::Instant::now());
        }
        let last = done(&m);
        msgs.push(m);
        if last {
            break;
        }
    }
    // The open bar sent with the snapshot starts max_hz's clock too (found from outside: the next
    // went milliseconds later). Half the interval leaves room for a late first frame.
    if opens_at.len() >= 2 {
        let gap = opens_at[1].duration_since(opens_at[0]);
        assert!(
            gap >= Duration::from_millis(250),
            "max_hz 2: open bars {gap:?} apart"
        );
    }
    assert_eq!(
        finals_of(&msgs),
        want,
        "paced: every final bar once, in order"
    );
    // max_hz 2: at most two open bars a second (plus the one sent with the snapshot's).
    let allowed = 2 * (pushing.elapsed().as_secs() as usize + 1) + 1;
    let opens = msgs
        .iter()
        .filter(|m| m["type"] == "bar" && m["final"] == false)
        .count();
    assert!(
        opens <= allowed,
        "max_hz 2 paces the open bar: {opens} open bars (at most {allowed})"
    );
    let seen = RefCell::new(Vec::new());
    stalled
        .read_until_message(|m| {
            seen.borrow_mut().push(m.clone());
            done(m)
        })
        .await
        .unwrap();
    assert_eq!(finals_of(&seen.into_inner()), want, "stalled, then read");
    let mut events = Vec::new();
    loop {
        let e = sse.event().await;
        if e.event != "bar" {
            continue;
        }
        let m = e.data;
        let last = done(&m);
        events.push(m);
        if last {
            break;
        }
    }
    assert_eq!(finals_of(&events), want, "SSE");
    // Nothing after the last final bar but the open one, whatever the window and pacing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    paced.send(json!({"op": "ping", "id": "end"})).await;
    for m in paced.until(|m| m["type"] == "pong").await {
        assert!(m["final"] != true, "a final bar twice: {m}");
    }
}

/// Subscribing a held symbol again (the widget does it when a tape or a sparkline joins) keeps the
/// trades going: every print once, in order, none lost (found from outside: the prints not yet sent
/// were dropped without a `trades_lost`), whatever the re-subscribe changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_loses_no_print() {
    const PRINTS: i64 = 600;
    let gw = start("", &["R"]);
    gw.push(tick("R", 1, &[("bid", "1.00")])).await;
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["R"], "trades": true}))
        .await;
    c.expect("ack").await;
    let pusher = {
        let ticks = gw.ticks.clone();
        tokio::spawn(async move {
            for i in 0..PRINTS {
                let price = format!("5.{:02}", i % 100);
                let t = tick("R", 2 + i, &[("last", &price), ("last_size", "7")]);
                ticks.send(t).await.unwrap();
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    let ops = [
        json!({"op": "subscribe", "symbols": ["R"], "trades": true}),
        json!({"op": "subscribe", "symbols": ["R"], "trades": true, "bars": "1s"}),
        json!({"op": "subscribe", "symbols": ["R"], "trades": true, "max_hz": 5}),
    ];
    let mut seqs = Vec::new();
    let mut n = 0;
    while seqs.last() != Some(&(PRINTS as u64 + 1)) {
        let m = c.next().await;
        match m["type"].as_str().unwrap() {
            "trade" => {
                seqs.push(m["seq"].as_u64().unwrap());
                if seqs.len() % 25 == 0 {
                    c.send(ops[n % ops.len()].clone()).await;
                    n += 1;
                }
            }
            "trades_lost" => panic!("a client that keeps up lost prints: {m}"),
            _ => {}
        }
    }
    pusher.await.unwrap();
    assert!(n >= 10, "re-subscribed {n} times");
    assert_eq!(
        seqs,
        (2..=PRINTS as u64 + 1).collect::<Vec<_>>(),
        "every print once, in order"
    );
}

/// What a subscription may ask: an interval the gateway builds, `trades` a boolean; the error says
/// what to change and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trade_and_bar_requests_get_clear_errors() {
    let gw = start("[bars]\nintervals = [\"1s\", \"1m\"]\n", &["Z"]);
    gw.push(tick("Z", 1, &[("bid", "1.00")])).await;
    let mut c = gw.client().await;
    for (op, says) in [
        (
            json!({"op": "subscribe", "symbols": ["Z"], "bars": "5m"}),
            "1s, 1m",
        ),
        (
            json!({"op": "subscribe", "symbols": ["Z"], "bars": 60}),
            "interval",
        ),
        (
            json!({"op": "subscribe", "symbols": ["Z"], "trades": "yes"}),
            "true or false",
        ),
    ] {
        c.send(op).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], "bad_request");
        assert!(e["message"].as_str().unwrap().contains(says), "{e}");
    }
    let snap = c.subscribe(&["Z"]).await;
    assert_eq!(snap[0]["seq"], 1, "the connection goes on");
    let (status, _, body) = http(gw.addr, "GET", "/v1/stream?symbols=Z&bars=5m", &[]).await;
    assert_eq!(status, 400, "{body}");
}

/// Scale-out (a real nats-server): one ingest replays the recording and two edges serve it, one
/// with two workers. A client of each edge gets exactly the trades and final bars the file owes
/// it, as a client of a single gateway does, and both edges answer `GET /v1/bars` and
/// `GET /v1/trades` with the file's: the bars are the ingest's, sent on, never recomputed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_send_the_ingests_trades_and_bars() {
    let nats = support::nats::NatsServer::start();
    let path = fixture("trades.ndjson");
    let (prints, last_ts) = prints_of(&path);
    let _ingest = support::start_config(
        1,
        &format!(
            "[trades]\nkeep = 4096\n[publish]\nnats_url = \"{}\"\nheartbeat_ms = 100\n[[feeds]]\nkind = \"replay\"\nname = \"rp\"\npath = \"{}\"\nspeed = 20\nstart_delay_ms = 2500\n",
            nats.url,
            path.display()
        ),
    );
    let edge = |workers| {
        support::start_config(
            workers,
            &format!(
                "[trades]\nkeep = 4096\n[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{}\"\n",
                nats.url
            ),
        )
    };
    let edges = [edge(2), edge(1)];
    // An edge is ready once it has a symbol: the replay has begun.
    for e in &edges {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while http(e.addr, "GET", "/readyz", &[]).await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "edge not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (mut a, mut b) = (edges[0].client().await, edges[1].client().await);
    tokio::join!(
        follow_file(&mut a, &prints, last_ts),
        follow_file(&mut b, &prints, last_ts)
    );
    for e in &edges {
        rest_agrees_with_the_file(e.addr, &prints, last_ts).await;
    }
}
