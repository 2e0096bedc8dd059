//! Scale-out on NATS with a real nats-server (started here, 127.0.0.1, a free port): one ingest
//! assigns `seq` and publishes every symbol's state; edges serve clients from it. Every test is
//! bounded (a few seconds of ticks); waits are polls for a condition with the support's deadline.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::nats::NatsServer;
use support::process::Process;
use support::{http, quotes, start, start_config, tick, Client, TestGateway, DEADLINE};

const SYMBOLS: [&str; 3] = ["AAA", "BBB", "CCC"];

fn ingest_toml(nats: &NatsServer) -> String {
    format!(
        "[publish]\nnats_url = \"{}\"\nheartbeat_ms = 100\ncache_wait_ms = 3000\n",
        nats.url
    )
}

fn edge_toml(nats: &NatsServer) -> String {
    format!(
        "[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{}\"\nstale_after_ms = 800\n",
        nats.url
    )
}

/// Waits until every gateway in `edges` serves exactly what `reference` does for `symbols`.
async fn converge(
    reference: SocketAddr,
    edges: &[SocketAddr],
    symbols: &[&str],
) -> BTreeMap<String, Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let want = quotes(reference, symbols).await;
        let mut all = want.len() == symbols.len();
        let mut differ = Vec::new();
        for &edge in edges {
            let got = quotes(edge, symbols).await;
            if got != want {
                all = false;
                let wrong: Vec<_> = symbols
                    .iter()
                    .filter(|s| got.get(**s) != want.get(**s))
                    .map(|s| (s, got.get(*s).cloned()))
                    .take(3)
                    .collect();
                differ.push((edge, wrong));
            }
        }
        if all {
            return want;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "edges did not converge on {want:?}: {differ:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(gw: &TestGateway) -> bool {
    http(gw.addr, "GET", "/readyz", &[]).await.0 == 200
}

/// Pushes ticks on `symbol` every `every` until aborted.
fn ticking(gw: &TestGateway, symbol: &'static str, every: Duration) -> tokio::task::JoinHandle<()> {
    let ticks = gw.ticks.clone();
    tokio::spawn(async move {
        for i in 100.. {
            let bid = format!("{}.{:02}", i / 100, i % 100);
            if ticks.send(tick(symbol, i, &[("bid", &bid)])).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Reads a client's messages for `symbol`, asserting `seq` never goes backwards, until `pred`.
async fn read_until(
    c: &mut Client,
    last: &mut HashMap<String, u64>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let m = c.next().await;
        if let (Some(s), Some(seq)) = (m["symbol"].as_str(), m["seq"].as_u64()) {
            let prev = last.entry(s.to_string()).or_default();
            assert!(
                seq >= *prev,
                "seq went backwards on one connection: {prev} then {m}"
            );
            *prev = seq;
        }
        if pred(&m) {
            return m;
        }
    }
}

async fn ingest_with_ticks(nats: &NatsServer) -> TestGateway {
    let ingest = start(&ingest_toml(nats), &SYMBOLS);
    for (i, s) in SYMBOLS.iter().enumerate() {
        for n in 0..=i * 3 {
            ingest
                .push(tick(
                    s,
                    1 + n as i64,
                    &[("bid", &format!("{}.{n:02}", 10 + i)), ("ask_size", "100")],
                ))
                .await;
        }
    }
    ingest
}

/// 1. An edge started after the ingest has run serves the ingest's snapshots (values and seq), and
/// is not ready before its cache is loaded: the first time `/readyz` says so, every symbol is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_started_later_serves_the_ingests_snapshots() {
    let nats = NatsServer::start();
    let ingest = ingest_with_ticks(&nats).await;
    let mut ic = ingest.client().await;
    let want = ic.subscribe(&SYMBOLS).await;
    // Give the ingest's publisher its turn, then start the edge.
    converge(ingest.addr, &[ingest.addr], &SYMBOLS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edge = start_config(2, &edge_toml(&nats));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ready(&edge).await {
        assert!(tokio::time::Instant::now() < deadline, "edge never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = quotes(edge.addr, &SYMBOLS).await;
    assert_eq!(first.len(), SYMBOLS.len(), "ready means loaded: {first:?}");
    for w in &want {
        let s = w["symbol"].as_str().unwrap();
        assert_eq!(first[s]["seq"], w["seq"], "the cache's seq: {first:?}");
    }
    // Live once the ingest's heartbeat is heard (the cache alone loads as stale).
    converge(ingest.addr, &[edge.addr], &SYMBOLS).await;
    let mut ec = edge.client().await;
    let got = ec.subscribe(&SYMBOLS).await;
    assert_eq!(got, want, "the same snapshots, seq included");
}

/// Regression (issue 25): `nats_url` is documented as a cluster's servers separated by commas, but
/// a list was handed to the client as one URL, failed to parse, and left an edge up serving
/// nothing. Two nats-servers, the first in the list down: the ingest and the edge both connect
/// through the other, and the edge serves the ingest's quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_list_connects_through_a_live_server_when_the_first_is_down() {
    let mut down = NatsServer::start();
    down.kill();
    let nats = NatsServer::start();
    let list = format!("{}, {}", down.url, nats.url);
    let ingest = start(
        &format!("[publish]\nnats_url = \"{list}\"\nheartbeat_ms = 100\ncache_wait_ms = 3000\n"),
        &SYMBOLS,
    );
    for (i, s) in SYMBOLS.iter().enumerate() {
        ingest
            .push(tick(s, 1, &[("bid", &format!("{}.25", 10 + i))]))
            .await;
    }
    let edge = start_config(
        2,
        &format!(
            "[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{list}\"\nstale_after_ms = 800\n"
        ),
    );
    let got = converge(ingest.addr, &[edge.addr], &SYMBOLS).await;
    assert_eq!(got.len(), SYMBOLS.len());
}

/// 2. One ingest replaying a finite recording, two edges: every symbol's final `(seq, fields)` is
/// identical on both edges and equal to an embedded gateway replaying the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_end_where_an_embedded_gateway_ends() {
    let nats = NatsServer::start();
    let file = format!("{}/feeds/fixtures/small.ndjson", env!("CARGO_MANIFEST_DIR"));
    let replay = format!(
        "[[feeds]]\nkind = \"replay\"\nname = \"rp\"\npath = \"{file}\"\nspeed = \"max\"\nstart_delay_ms = 1500\n"
    );
    let edge_a = start_config(1, &edge_toml(&nats));
    let edge_b = start_config(2, &edge_toml(&nats));
    let ingest = support::start_config(1, &format!("{}{replay}", ingest_toml(&nats)));
    let embedded = support::start_config(1, &replay);
    let symbols = ["AAPL", "MSFT", "NVDA", "SPY", "TSLA"];
    let want = converge(
        embedded.addr,
        &[ingest.addr, edge_a.addr, edge_b.addr],
        &symbols,
    )
    .await;
    // The whole file: each symbol's final seq is its number of ticks in it.
    let mut ticks: HashMap<String, u64> = HashMap::new();
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        let t: Value = serde_json::from_str(line).unwrap();
        *ticks
            .entry(t["symbol"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (symbol, q) in &want {
        assert_eq!(q["seq"].as_u64(), ticks.get(symbol).copied(), "{symbol}");
    }
}

/// 3. nats-server killed and restarted mid-stream (its memory-stored cache is lost): edges go stale
/// within `stale_after_ms`, recover and converge with the ingest; `seq` never goes backwards on a
/// client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_go_stale_while_nats_is_down_and_recover() {
    let mut nats = NatsServer::start();
    let ingest = ingest_with_ticks(&nats).await;
    let edge_a = start_config(1, &edge_toml(&nats));
    let edge_b = start_config(2, &edge_toml(&nats));
    converge(ingest.addr, &[edge_a.addr, edge_b.addr], &SYMBOLS).await;
    let mut clients = vec![edge_a.client().await, edge_b.client().await];
    let mut last: Vec<HashMap<String, u64>> = vec![HashMap::new(), HashMap::new()];
    for c in &mut clients {
        c.subscribe(&SYMBOLS).await;
    }
    let pusher = ticking(&ingest, "AAA", Duration::from_millis(20));
    for (c, l) in clients.iter_mut().zip(&mut last) {
        read_until(c, l, |m| m["type"] == "update").await;
    }
    let leader = "quotegw_bus_leader{stream=\"QUOTEGW\"}";
    assert_eq!(ingest.metric(leader).await, 1.0);
    nats.kill();
    for (c, l) in clients.iter_mut().zip(&mut last) {
        read_until(c, l, |m| {
            m["type"] == "status" && m["symbol"] == "AAA" && m["status"] == "stale"
        })
        .await;
    }
    // Nobody publishes while NATS is away, and the ingest's gauge says so (found from outside:
    // it read 1 through the outage); back to 1 when it leads again.
    ingest.wait_metric(leader, |v| v == 0.0).await;
    nats.run();
    ingest.wait_metric(leader, |v| v == 1.0).await;
    for (c, l) in clients.iter_mut().zip(&mut last) {
        read_until(c, l, |m| {
            m["type"] == "status" && m["symbol"] == "AAA" && m["status"] == "live"
        })
        .await;
        read_until(c, l, |m| m["type"] == "update" && m["symbol"] == "AAA").await;
    }
    pusher.abort();
    converge(ingest.addr, &[edge_a.addr, edge_b.addr], &SYMBOLS).await;
}

/// 4. The ingest killed and restarted: `seq` goes on from the cache under a new term; edge clients
/// stay connected and see no regression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_ingest_continues_seq_from_the_cache() {
    let nats = NatsServer::start();
    let ingest = ingest_with_ticks(&nats).await;
    let edge = start_config(2, &edge_toml(&nats));
    let before = converge(ingest.addr, &[edge.addr], &SYMBOLS).await;
    let mut c = edge.client().await;
    let mut last = HashMap::new();
    c.subscribe(&SYMBOLS).await;
    let TestGateway { gw, .. } = ingest;
    tokio::task::spawn_blocking(move || gw.shutdown())
        .await
        .unwrap()
        .unwrap();
    let ingest = start(&ingest_toml(&nats), &SYMBOLS);
    ingest.push(tick("CCC", 99, &[("bid", "99.99")])).await;
    let m = read_until(&mut c, &mut last, |m| {
        m["type"] == "update" && m["symbol"] == "CCC"
    })
    .await;
    let was = before["CCC"]["seq"].as_u64().unwrap();
    assert_eq!(m["seq"].as_u64(), Some(was + 1), "seq goes on: {m}");
    assert_eq!(m["bid"], "99.99");
    // The other symbols kept their seq and values through the restart, and are stale until the
    // new ingest's feed ticks them: the cache cannot say whether their prices are current.
    let after = converge(ingest.addr, &[edge.addr], &SYMBOLS).await;
    for s in ["AAA", "BBB"] {
        let (mut now, mut was) = (after[s].clone(), before[s].clone());
        assert_eq!(
            (now["status"].take(), was["status"].take()),
            (json!("stale"), json!("live")),
            "{s}"
        );
        assert_eq!(now, was, "{s}");
    }
    ingest.push(tick("AAA", 100, &[("ask", "5.00")])).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while quotes(ingest.addr, &["AAA"]).await["AAA"]["status"] != "live" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tick never made AAA live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = converge(ingest.addr, &[edge.addr], &SYMBOLS).await;
    assert_eq!(
        (after["AAA"]["bid"].clone(), after["AAA"]["ask"].as_str()),
        (before["AAA"]["bid"].clone(), Some("5.00")),
        "the tick goes on top of the cached quote"
    );
    // Found from outside: a symbol seeded from the cache went out with `ver` 0, which every edge
    // refused as malformed.
    assert_eq!(
        edge.metric("quotegw_bus_states_dropped_total{feed=\"bus\",reason=\"malformed\"}")
            .await,
        0.0
    );
}

/// 5. Injected gaps, duplicates and reordered messages: the edge shows the latest state,
/// `conflated` counts the gap, duplicates and late messages produce nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_duplicates_and_reordering_cannot_corrupt_a_quote() {
    let nats = NatsServer::start();
    let edge = start_config(1, &edge_toml(&nats));
    let client = async_nats::connect(&nats.url).await.unwrap();
    let hb = heartbeats(&client, 7);
    let send = |version: u64, seq: u64, bid: i64| {
        assert_eq!(version, seq, "every change here is a tick");
        let client = client.clone();
        async move { publish_state(&client, 7, seq, "GAP", bid).await }
    };
    // An edge with an empty cache is not ready; the first state makes it ready. The edge may
    // not have subscribed yet when the first send goes out, so send it (a duplicate changes
    // nothing) until the edge holds it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    assert!(!ready(&edge).await, "ready with nothing to show");
    // Until then it does not know what it serves: clients are told to come back, never that a
    // symbol it is about to load is unknown (found from outside: a restarted edge did that, and a
    // widget kept its old prices as live).
    let (status, head, _) = http(edge.addr, "GET", "/v1/quotes?symbols=GAP", &[]).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after"), "{head}");
    assert_eq!(support::upgrade(edge.addr, "/ws", &[]).await.0, 503);
    let loading = "quotegw_connections_refused_total{reason=\"loading\"}";
    assert_eq!(edge.metric(loading).await, 2.0);
    while http(edge.addr, "GET", "/v1/quotes?symbols=GAP", &[])
        .await
        .0
        != 200
        || quotes(edge.addr, &["GAP"]).await.is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first state never arrived"
        );
        send(1, 1, 100).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready(&edge).await, "the first state makes the edge ready");
    let mut c = edge.client().await;
    assert_eq!(c.subscribe(&["GAP"]).await[0]["seq"], 1);
    send(2, 2, 200).await;
    send(5, 5, 500).await; // versions 3 and 4 lost: a gap of 2 ticks
    send(5, 5, 500).await; // a duplicate
    send(4, 4, 400).await; // a late one
    send(6, 6, 600).await;
    let seen: Vec<Value> = c.until(|m| m["seq"] == 6).await;
    hb.abort();
    let updates: Vec<(u64, String, u64)> = seen
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["bid"].as_str().unwrap().to_string(),
                m["conflated"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        updates,
        [
            (2, "2.00".into(), 0),
            (5, "5.00".into(), 2),
            (6, "6.00".into(), 0)
        ],
        "the gap counted, the duplicate and the late one dropped"
    );
    assert_eq!(quotes(edge.addr, &["GAP"]).await["GAP"]["bid"], "6.00");
}

/// 6. A slow edge (its process stopped with SIGSTOP past the server's write deadline) is cut by
/// NATS; when it runs again it reloads and converges, and the other edge is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_edge_reloads_and_converges_while_the_other_is_unaffected() {
    let nats = NatsServer::start();
    let many: Vec<String> = (0..200).map(|i| format!("S{i:03}")).collect();
    let symbols: Vec<&str> = many.iter().map(String::as_str).collect();
    let ingest = start(&ingest_toml(&nats), &symbols);
    for s in &symbols {
        ingest.push(tick(s, 1, &[("bid", "1.00")])).await;
    }
    let fast = start_config(1, &edge_toml(&nats));
    let slow = Process::spawn(&format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\n{}",
        edge_toml(&nats)
    ));
    let slow_addr = slow.addr();
    converge(ingest.addr, &[fast.addr, slow_addr], &symbols[..5]).await;
    let mut watcher = fast.client().await;
    watcher.subscribe(&["S000"]).await;
    // A heavy stream of states while the slow edge is stopped.
    let ticks = ingest.ticks.clone();
    let all = many.clone();
    let pusher = tokio::spawn(async move {
        for i in 0i64.. {
            let s = &all[(i % 200) as usize];
            let bid = format!("{}.{:02}", 2 + i / 100, i % 100);
            if ticks
                .send(tick(s, 2 + i, &[("bid", &bid), ("volume", &i.to_string())]))
                .await
                .is_err()
            {
                return;
            }
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    slow.signal("STOP");
    // Meanwhile the other edge's client keeps getting updates, and nothing goes stale for it.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut updates = 0;
    while tokio::time::Instant::now() < until {
        let m = watcher.next().await;
        assert_ne!(m["status"], "stale", "the other edge is unaffected: {m}");
        updates += 1;
    }
    slow.signal("CONT");
    pusher.abort();
    println!("the running edge's client got {updates} updates while the other was stopped");
    converge(ingest.addr, &[fast.addr, slow_addr], &symbols).await;
    // It did fall behind and reload (cut by NATS, or told it dropped messages), not just catch up.
    let log = slow.log_text();
    drop(slow);
    let reloads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reloaded from the cache") || l.contains("reloading from the cache"))
        .collect();
    println!("the stopped edge: {reloads:?}");
    assert!(!reloads.is_empty(), "the stopped edge reloaded: {log:?}");
}

/// 7. A client that moves from edge A to edge B mid-stream gets a snapshot with `seq` at least
/// the last it saw, and the same values as any edge at that `seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_between_edges_never_goes_back() {
    let nats = NatsServer::start();
    let ingest = ingest_with_ticks(&nats).await;
    let edge_a = start_config(1, &edge_toml(&nats));
    let edge_b = start_config(2, &edge_toml(&nats));
    converge(ingest.addr, &[edge_a.addr, edge_b.addr], &SYMBOLS).await;
    let pusher = ticking(&ingest, "AAA", Duration::from_millis(5));
    let mut a = edge_a.client().await;
    let mut last = HashMap::new();
    a.subscribe(&["AAA"]).await;
    for _ in 0..20 {
        read_until(&mut a, &mut last, |m| m["type"] == "update").await;
    }
    let seen = last["AAA"];
    drop(a); // the edge died, or the load balancer moved the client
    let mut b = edge_b.client().await;
    b.send(json!({"op": "subscribe", "symbols": ["AAA"]})).await;
    b.expect("ack").await;
    let snap = b.expect("snapshot").await;
    assert!(
        snap["seq"].as_u64().unwrap() >= seen,
        "{snap} after seq {seen}"
    );
    pusher.abort();
    let finale = converge(ingest.addr, &[edge_a.addr, edge_b.addr], &SYMBOLS).await;
    let mut again = edge_a.client().await;
    assert_eq!(
        again.subscribe(&["AAA"]).await[0],
        finale["AAA"],
        "the same values at one seq"
    );
}

/// 8. The ingest restarts after NATS lost its (memory) cache: a new term starts `seq` over. A client
/// of the edge that held the old `seq` is closed with 1012 (never shown a `seq` going down); a
/// client that subscribes afterwards gets the new state; a symbol the new ingest has not ticked
/// yet keeps serving its last state, stale, until it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_that_lost_the_cache_ends_the_old_seq_with_1012() {
    let mut nats = NatsServer::start();
    let ingest = ingest_with_ticks(&nats).await;
    let edge = start_config(2, &edge_toml(&nats));
    let before = converge(ingest.addr, &[edge.addr], &SYMBOLS).await;
    let mut c = edge.client().await;
    let mut last = HashMap::new();
    c.subscribe(&["CCC"]).await;
    let TestGateway { gw, .. } = ingest;
    tokio::task::spawn_blocking(move || gw.shutdown())
        .await
        .unwrap()
        .unwrap();
    nats.kill();
    nats.run(); // memory storage: the cache is gone
    let ingest = start(&ingest_toml(&nats), &SYMBOLS);
    ingest.push(tick("CCC", 99, &[("bid", "99.99")])).await;
    // Bounded as a whole: pings alone would keep a per-frame deadline from ever firing.
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match c.try_next().await {
                Ok(m) => {
                    if let (Some(s), Some(seq)) = (m["symbol"].as_str(), m["seq"].as_u64()) {
                        let prev = last.entry(s.to_string()).or_insert(0);
                        assert!(
                            seq >= *prev,
                            "seq went down on a connection: {prev} then {m}"
                        );
                        *prev = seq;
                    }
                }
                Err(support::Closed::Code(code, reason)) => return (code, reason),
                Err(other) => panic!("ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the client holding the old seq is closed");
    assert_eq!(closed.0, 1012, "{}", closed.1);
    let mut fresh = edge.client().await;
    let snap = &fresh.subscribe(&["CCC"]).await[0];
    assert_eq!(
        (snap["seq"].as_u64(), snap["bid"].as_str()),
        (Some(1), Some("99.99"))
    );
    assert!(
        before["CCC"]["seq"].as_u64().unwrap() > 1,
        "the old seq was higher"
    );
    let aaa = &quotes(edge.addr, &["AAA"]).await["AAA"];
    assert_eq!(
        (aaa["seq"].clone(), aaa["status"].as_str()),
        (before["AAA"]["seq"].clone(), Some("stale")),
        "an old price is never shown as live"
    );
}

/// A leader the test plays: stores the lease record that gives `term` in the stream (created as
/// an ingest creates it), then publishes a heartbeat of `term` every 100 ms until aborted.
fn heartbeats(client: &async_nats::Client, term: u64) -> tokio::task::JoinHandle<()> {
    play_leader(client, term, true)
}

/// An ingest that lost the lease and goes on (a paused one, resumed): its lease renewals reach
/// subscribers, but JetStream refused them, so the stored lease is not its.
fn superseded_heartbeats(client: &async_nats::Client, term: u64) -> tokio::task::JoinHandle<()> {
    play_leader(client, term, false)
}

fn play_leader(
    client: &async_nats::Client,
    term: u64,
    stored: bool,
) -> tokio::task::JoinHandle<()> {
    use quotegw::scaleout::wire::{
        encode_heartbeat, encode_lease, heartbeat_subject, lease_subject, LeaseRecord,
    };
    let client = client.clone();
    let lease = LeaseRecord {
        holder: format!("test-{term}"),
        term: Some(term),
        released: false,
    };
    tokio::spawn(async move {
        if stored {
            let js = async_nats::jetstream::new(client.clone());
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "QUOTEGW".into(),
                subjects: vec![
                    "quotegw.q.>".into(),
                    "quotegw.hb".into(),
                    "quotegw.lease".into(),
                ],
                max_messages_per_subject: 1,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .unwrap();
            js.publish(lease_subject("quotegw"), encode_lease(&lease).into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Renewals as a leader sends them, expecting a last sequence: one that is not the
        // stream's is refused by JetStream (a deposed leader's), and still reaches subscribers.
        let mut expect = async_nats::HeaderMap::new();
        expect.insert("Nats-Expected-Last-Subject-Sequence", "999999999");
        loop {
            let _ = client
                .publish_with_headers(
                    lease_subject("quotegw"),
                    expect.clone(),
                    encode_lease(&lease).into(),
                )
                .await;
            let _ = client
                .publish(
                    heartbeat_subject("quotegw"),
                    encode_heartbeat(term, 0).into(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A state of `symbol` as an ingest of `term` would publish it, on its own subject.
async fn publish_state(client: &async_nats::Client, term: u64, seq: u64, symbol: &str, bid: i64) {
    use quotegw::model::{Quote, Status};
    use quotegw::scaleout::wire::{encode_state, state_subject, State};
    let state = State {
        term,
        version: seq,
        seq,
        symbol: symbol.into(),
        quote: Quote {
            ts: seq as i64,
            bid: Some(rust_decimal::Decimal::new(bid, 2)),
            status: Status::Live,
            ..Quote::default()
        },
        prints: Default::default(),
    };
    client
        .publish(
            state_subject("quotegw", symbol),
            encode_state(&state).into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// Waits until `symbol` is served with `status`.
async fn wait_status(gw: &TestGateway, symbol: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(q) = quotes(gw.addr, &[symbol]).await.remove(symbol) {
            if q["status"] == status {
                return q;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{symbol} never {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression (issue 28): an ingest that a newer one superseded kept heartbeating, and its
/// heartbeats kept every edge live on the newer one's frozen prices. An edge follows the highest
/// term it accepted: a lower term's heartbeat keeps nothing live, its states are dropped
/// (`old_term`), and the symbol goes stale until the followed term's heartbeats come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_terms_heartbeat_keeps_no_edge_live() {
    let nats = NatsServer::start();
    let edge = start_config(1, &edge_toml(&nats));
    let client = async_nats::connect(&nats.url).await.unwrap();
    let newer = heartbeats(&client, 20);
    // The edge may subscribe after the first sends, and a state that comes before the first
    // heartbeat goes in as stale: send it (a duplicate changes nothing else) until it is live.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while quotes(edge.addr, &["TERM"])
        .await
        .get("TERM")
        .is_none_or(|q| q["status"] != "live")
    {
        assert!(tokio::time::Instant::now() < deadline, "never live");
        publish_state(&client, 20, 1, "TERM", 100).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The newer ingest dies; the older one goes on heartbeating and publishing.
    newer.abort();
    let older = superseded_heartbeats(&client, 10);
    publish_state(&client, 10, 7, "TERM", 700).await;
    let q = wait_status(&edge, "TERM", "stale").await;
    // And it stays stale: for three times `stale_after_ms`, never live, never the old term's price.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_state(&client, 10, 8, "TERM", 800).await;
        let now = quotes(edge.addr, &["TERM"]).await.remove("TERM").unwrap();
        assert_eq!(now["status"], "stale", "{now}");
        assert_eq!(
            (now["seq"].clone(), now["bid"].clone()),
            (q["seq"].clone(), q["bid"].clone())
        );
    }
    assert!(
        edge.metric("quotegw_bus_states_dropped_total{feed=\"bus\",reason=\"old_term\"}")
            .await
            >= 2.0
    );
    older.abort();
    // A refused renewal of a higher term (after a stream that started over, a deposed leader
    // renews its old, higher term): on the bus, but not the stored lease. Nothing follows it.
    let ghost = superseded_heartbeats(&client, 50);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish_state(&client, 50, 9, "TERM", 900).await;
        let now = quotes(edge.addr, &["TERM"]).await.remove("TERM").unwrap();
        assert_eq!(
            (now["status"].as_str(), now["bid"].clone()),
            (Some("stale"), q["bid"].clone())
        );
    }
    ghost.abort();
    assert!(
        edge.metric("quotegw_bus_states_dropped_total{feed=\"bus\",reason=\"unleased_term\"}")
            .await
            >= 2.0
    );
    // The followed term's heartbeats again, and its state (an ingest's cache would hold it; this
    // test made none): live.
    let back = heartbeats(&client, 20);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while quotes(edge.addr, &["TERM"]).await["TERM"]["status"] != "live" {
        assert!(tokio::time::Instant::now() < deadline, "never live again");
        publish_state(&client, 20, 1, "TERM", 100).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back.abort();
}

/// The bus is an input like any feed: each poisoned state is dropped and counted by reason, never
/// applied or cached, and the edge goes on with the valid ones (a member it does not know is
/// ignored, as the wire format says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_states_are_dropped_and_counted_and_the_rest_goes_on() {
    use quotegw::scaleout::wire::state_subject;
    let nats = NatsServer::start();
    let edge = start_config(1, &edge_toml(&nats));
    let client = async_nats::connect(&nats.url).await.unwrap();
    let hb = heartbeats(&client, 5);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while quotes(edge.addr, &["GOOD"]).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no state arrived");
        publish_state(&client, 5, 1, "GOOD", 100).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = |symbol: &str, bid: &str, extra: &str| {
        format!(
            r#"{{"v":1,"term":5,"ver":2,"seq":2,"symbol":"{symbol}","ts":2,"bid":"{bid}","status":"live"{extra}}}"#
        )
    };
    let poison: Vec<(&str, String, String)> = vec![
        (
            "subject_mismatch",
            state_subject("quotegw", "GOOD"),
            state("EVIL", "9.99", ""),
        ),
        (
            "non_positive_price",
            state_subject("quotegw", "GOOD"),
            state("GOOD", "-1.00", ""),
        ),
        (
            "non_positive_price",
            state_subject("quotegw", "GOOD"),
            state("GOOD", "0", ""),
        ),
        (
            "too_large",
            state_subject("quotegw", "GOOD"),
            state(
                "GOOD",
                "9.99",
                &format!(r#","pad":"{}""#, "x".repeat(100 << 10)),
            ),
        ),
        (
            "malformed",
            state_subject("quotegw", "GOOD"),
            "not json".into(),
        ),
        (
            "malformed",
            state_subject("quotegw", "GOOD"),
            state("GOOD", "9.99", "").replace(r#""term":5"#, r#""term":9007199254740992"#),
        ),
        // The largest term the wire takes, which no lease announced: had it been followed, no
        // real leader's term could ever be again.
        (
            "unleased_term",
            state_subject("quotegw", "GOOD"),
            state("GOOD", "9.99", "").replace(r#""term":5"#, r#""term":9007199254740991"#),
        ),
        (
            "unleased_term",
            state_subject("quotegw", "GOOD"),
            state("GOOD", "9.99", "").replace(r#""term":5"#, r#""term":6"#),
        ),
    ];
    let dropped = |reason: &str| {
        format!("quotegw_bus_states_dropped_total{{feed=\"bus\",reason=\"{reason}\"}}")
    };
    // States sent before the edge heard the test's lease were dropped as unleased too.
    let before_poison = edge.metric(&dropped("unleased_term")).await;
    for (_, subject, payload) in &poison {
        client
            .publish(subject.clone(), payload.clone().into())
            .await
            .unwrap();
    }
    // A valid state with a member this gateway does not know: applied.
    client
        .publish(
            state_subject("quotegw", "GOOD"),
            state("GOOD", "3.00", r#","future":1"#)
                .replace(r#""ver":2,"seq":2"#, r#""ver":3,"seq":3"#)
                .into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let q = quotes(edge.addr, &["GOOD", "EVIL"]).await;
        if q.get("GOOD").is_some_and(|g| g["seq"] == 3) {
            assert_eq!(q["GOOD"]["bid"], "3.00", "{q:?}");
            assert!(!q.contains_key("EVIL"), "{q:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{q:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reason in [
        "subject_mismatch",
        "non_positive_price",
        "too_large",
        "malformed",
        "unleased_term",
    ] {
        let mut want = poison.iter().filter(|(r, _, _)| *r == reason).count() as f64;
        if reason == "unleased_term" {
            want += before_poison;
        }
        assert_eq!(edge.metric(&dropped(reason)).await, want, "{reason}");
    }
    hb.abort();
    // The next real ingest leads, and the edge follows it, the term-2^53−1 state notwithstanding.
    let ingest = start(&ingest_toml(&nats), &["GOOD"]);
    ingest.push(tick("GOOD", 10, &[("bid", "7.00")])).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let q = quotes(edge.addr, &["GOOD"]).await;
        if q.get("GOOD")
            .is_some_and(|g| g["bid"] == "7.00" && g["status"] == "live")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{q:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An edge started while no ingest runs serves the cache as `stale` (never an old price as live),
/// and goes live when an ingest leads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_started_without_an_ingest_serves_the_cache_as_stale() {
    let nats = NatsServer::start();
    let ingest = ingest_with_ticks(&nats).await;
    let first = start_config(1, &edge_toml(&nats));
    converge(ingest.addr, &[first.addr], &SYMBOLS).await;
    drop(ingest);
    let edge = start_config(2, &edge_toml(&nats));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !ready(&edge).await {
        assert!(tokio::time::Instant::now() < deadline, "edge never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cached = quotes(edge.addr, &SYMBOLS).await;
    assert_eq!(cached.len(), SYMBOLS.len(), "{cached:?}");
    for q in cached.values() {
        assert_eq!(q["status"], "stale", "{q}");
    }
    // Still stale a while later: no ingest, no heartbeat.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for q in quotes(edge.addr, &SYMBOLS).await.values() {
        assert_eq!(q["status"], "stale", "{q}");
    }
    // An ingest leads again; a symbol is live once its feed ticks it (docs/deployment.md: the
    // cache cannot say whether a cached price is current).
    let ingest = start(&ingest_toml(&nats), &SYMBOLS);
    for (i, s) in SYMBOLS.iter().enumerate() {
        ingest
            .push(tick(s, 100 + i as i64, &[("bid", "20.00")]))
            .await;
    }
    for s in SYMBOLS {
        assert_eq!(wait_status(&edge, s, "live").await["bid"], "20.00");
    }
    drop(ingest);
}
