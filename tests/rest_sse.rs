//! Beyond WebSocket, on the same index, slots and conflation: REST snapshots (`/v1/quotes`,
//! `/v1/symbols`) and the Server-Sent Events stream (`/v1/stream`), read by real HTTP clients as
//! the bytes arrive, with the access rules of `/ws`.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{http, start_with_workers, tick, SseClient, TestGateway, WS_CONNECTIONS};

const KEY: &str = "k-0123456789abcdef-rest";
const HS_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
const SSE_CONNECTIONS: &str = "quotegw_connections{transport=\"sse\"}";

async fn gateway(workers: usize, toml: &str) -> TestGateway {
    let gw = start_with_workers(workers, toml, &["AAPL", "MSFT", "NVDA", "NEW"]);
    for (s, bid) in [("AAPL", "189.10"), ("MSFT", "425.00"), ("NVDA", "140.50")] {
        gw.push(tick(s, 1, &[("bid", bid), ("ask_size", "100")]))
            .await;
    }
    gw
}

fn body_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The same snapshot objects as a WebSocket client gets, for the symbols served; the rest
/// rejected as in an ack; exactly as the contract's errors otherwise.
async fn rest_snapshots_are_the_websocket_snapshots(workers: usize) {
    let gw = gateway(workers, "").await;
    let mut ws = gw.client().await;
    let ws_snaps = ws.subscribe(&["AAPL", "MSFT"]).await;
    let (status, head, body) =
        http(gw.addr, "GET", "/v1/quotes?symbols=aapl,MSFT,ZZZZ,NEW", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    let v = body_json(&body);
    assert_eq!(
        v["quotes"],
        Value::Array(ws_snaps.clone()),
        "byte-for-byte the WS snapshots"
    );
    // NEW is served but has no quote yet: in neither list.
    assert_eq!(
        v["rejected"],
        json!([{"symbol": "ZZZZ", "code": "unknown_symbol"}])
    );

    let (status, _, body) = http(gw.addr, "GET", "/v1/symbols", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body_json(&body)["symbols"],
        json!(["AAPL", "MSFT", "NEW", "NVDA"])
    );

    for (path, code) in [
        ("/v1/quotes", "bad_request"),
        ("/v1/quotes?symbols=", "bad_request"),
        ("/v1/quotes?symbols=A,B,C,D", "too_many_symbols"),
    ] {
        let limits = if code == "too_many_symbols" {
            "[limits]\nmax_symbols_per_connection = 3\n"
        } else {
            ""
        };
        let gw2;
        let addr = if limits.is_empty() {
            gw.addr
        } else {
            gw2 = gateway(workers, limits).await;
            gw2.addr
        };
        let (status, _, body) = http(addr, "GET", path, &[]).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body_json(&body)["error"]["code"], code, "{path}: {body}");
        assert!(body_json(&body)["error"]["message"].is_string());
    }
}

/// Tokens as on `/ws` (a bearer header or `?token=`), the JWT's symbols claim as `rejected`
/// entries and a filtered `/v1/symbols`, CORS for allowed Origins (preflight included), 401/403 as
/// JSON errors.
async fn rest_follows_the_access_rules_of_the_websocket(workers: usize) {
    let gw = gateway(
        workers,
        &format!(
            "[access]\nauth = \"jwt\"\njwt_hs256_secret = \"{HS_SECRET}\"\n\
             allowed_origins = [\"https://trade.example\"]\n"
        ),
    )
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "symbols": ["AAPL", "NV*"]}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let (status, head, body) = http(gw.addr, "GET", "/v1/quotes?symbols=AAPL", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(body_json(&body)["error"]["code"], "unauthorized");
    let (status, _, body) = http(
        gw.addr,
        "GET",
        "/v1/quotes?symbols=AAPL,MSFT",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = body_json(&body);
    assert_eq!(v["quotes"][0]["symbol"], "AAPL");
    assert_eq!(
        v["rejected"],
        json!([{"symbol": "MSFT", "code": "unauthorized"}])
    );
    let (status, _, body) = http(gw.addr, "GET", &format!("/v1/symbols?token={token}"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body_json(&body)["symbols"], json!(["AAPL", "NVDA"]));

    // CORS: an allowed Origin is echoed; another is refused with 403; the preflight allows the
    // Authorization header.
    let allowed = [
        ("Origin", "https://trade.example"),
        ("Authorization", bearer.as_str()),
    ];
    let (status, head, _) = http(gw.addr, "GET", "/v1/quotes?symbols=AAPL", &allowed).await;
    assert_eq!(status, 200);
    assert!(
        head.contains("access-control-allow-origin: https://trade.example"),
        "{head}"
    );
    assert!(head.contains("vary: origin"), "{head}");
    let evil = [
        ("Origin", "https://evil.example"),
        ("Authorization", bearer.as_str()),
    ];
    let (status, _, body) = http(gw.addr, "GET", "/v1/quotes?symbols=AAPL", &evil).await;
    assert_eq!(
        (status, body_json(&body)["error"]["code"].as_str()),
        (403, Some("unauthorized"))
    );
    let (status, head, _) = http(
        gw.addr,
        "OPTIONS",
        "/v1/quotes?symbols=AAPL",
        &[
            ("Origin", "https://trade.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        head.contains("access-control-allow-headers: authorization"),
        "{head}"
    );
    // A preflight from a refused Origin is a refusal like the request it stands for, counted:
    // a browser never sends that request.
    let refused = "quotegw_connections_refused_total{reason=\"origin\"}";
    let before = gw.metric(refused).await;
    let (status, _, _) = http(
        gw.addr,
        "OPTIONS",
        "/v1/ticket",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(gw.metric(refused).await, before + 1.0);
}

/// What a client applying the events gets, per symbol: the snapshot, then each update on top.
#[derive(Default)]
struct Reconstructed(HashMap<String, serde_json::Map<String, Value>>);

impl Reconstructed {
    fn apply(&mut self, e: &support::SseEvent) {
        let symbol = e.data["symbol"].as_str().unwrap().to_string();
        assert_eq!(e.event, e.data["type"], "the event is the message type");
        match e.event.as_str() {
            "snapshot" => {
                assert_eq!(e.id, format!("{symbol}:{}", e.data["seq"]));
                self.0.insert(symbol, e.data.as_object().unwrap().clone());
            }
            "update" => {
                assert_eq!(e.id, format!("{symbol}:{}", e.data["seq"]));
                let view = self
                    .0
                    .get_mut(&symbol)
                    .expect("no update before its snapshot");
                assert!(
                    e.data["seq"].as_u64() > view["seq"].as_u64(),
                    "seq only grows"
                );
                for (k, v) in e.data.as_object().unwrap() {
                    if k != "type" && k != "conflated" {
                        view.insert(k.clone(), v.clone());
                    }
                }
            }
            "status" => {
                let view = self
                    .0
                    .get_mut(&symbol)
                    .expect("no status before its snapshot");
                view.insert("status".into(), e.data["status"].clone());
            }
            other => panic!("unexpected event {other}"),
        }
    }

    /// The view as a snapshot object, to compare with a WebSocket client's fresh snapshot.
    fn as_snapshot(&self, symbol: &str) -> Value {
        let mut v = self.0[symbol].clone();
        v.insert("type".into(), json!("snapshot"));
        Value::Object(v)
    }
}

/// `curl -N` reads an SSE stream as it arrives: `event:` is the message type, `id:` SYMBOL:seq,
/// `data:` the message as on `/ws`; snapshot first, updates rebuild the quote; comments keep the
/// stream alive; a reconnect with `Last-Event-ID` starts with fresh snapshots; it counts as an
/// `sse` connection and ends cleanly at shutdown.
async fn an_sse_stream_reconstructs_the_quote_like_a_websocket(workers: usize) {
    let gw = gateway(workers, "[limits]\nping_interval_ms = 200\n").await;
    let mut sse = SseClient::connect(gw.addr, "/v1/stream?symbols=AAPL,msft,ZZZZ", &[]).await;
    assert_eq!(sse.status, 200);
    assert!(
        sse.head.contains("content-type: text/event-stream"),
        "{}",
        sse.head
    );
    assert!(sse.head.contains("cache-control: no-store"), "{}", sse.head);
    let mut view = Reconstructed::default();
    for _ in 0..2 {
        let e = sse.event().await;
        assert_eq!(e.event, "snapshot");
        view.apply(&e);
    }
    assert!(
        sse.comments
            .iter()
            .any(|c| c == "rejected ZZZZ unknown_symbol"),
        "{:?}",
        sse.comments
    );
    gw.wait_metric(SSE_CONNECTIONS, |v| v == 1.0).await;
    for i in 2..40 {
        let price = format!("189.{i:02}");
        gw.push(tick(
            "AAPL",
            i,
            &[("bid", &price), ("volume", &i.to_string())],
        ))
        .await;
        if i % 10 == 0 {
            gw.push(tick("MSFT", i, &[("status", "halted")])).await;
        }
    }
    while view.0["AAPL"]["seq"] != 39 {
        let e = sse.event().await;
        view.apply(&e);
    }
    while view.0["MSFT"]["seq"] != 4 {
        let e = sse.event().await;
        view.apply(&e);
    }
    let mut ws = gw.client().await;
    let fresh = ws.subscribe(&["AAPL", "MSFT"]).await;
    assert_eq!(view.as_snapshot("AAPL"), fresh[0]);
    assert_eq!(view.as_snapshot("MSFT"), fresh[1]);
    // Nothing to send for a while: comments keep proxies from closing the stream.
    let before = sse.comments.len();
    while sse.comments.len() < before + 2 {
        gw.push(tick("NVDA", 50, &[("bid", "140.51")])).await;
        tokio::time::timeout(Duration::from_millis(300), sse.next_event())
            .await
            .ok();
    }
    assert!(
        sse.comments[before..].iter().any(|c| c == "ping"),
        "{:?}",
        sse.comments
    );

    // A reconnect, even with Last-Event-ID: fresh snapshots (quotes are state).
    let mut again = SseClient::connect(
        gw.addr,
        "/v1/stream?symbols=AAPL",
        &[("Last-Event-ID", "AAPL:2")],
    )
    .await;
    let e = again.event().await;
    assert_eq!(
        (e.event.as_str(), e.data["seq"].as_u64()),
        ("snapshot", Some(39))
    );
    drop(again);

    // Shutdown ends the stream, with a comment saying why.
    let TestGateway { gw: running, .. } = gw;
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .unwrap()
        .expect("clean shutdown");
    while sse.next_event().await.is_some() {}
    assert!(
        sse.comments.iter().any(|c| c == "gateway shutting down"),
        "{:?}",
        sse.comments
    );
}

/// A stream is a session like any other: refused (JSON error) when no symbol is left, without a
/// token, or over the limits; `max_hz` paces it.
async fn sse_streams_are_refused_and_paced_like_sessions(workers: usize) {
    let gw = gateway(
        workers,
        &format!(
            "[limits]\nmax_connections_per_ip = 2\n[access]\nauth = \"api_key\"\napi_keys = [\"{KEY}\"]\n"
        ),
    )
    .await;
    let mut c = SseClient::connect(gw.addr, "/v1/stream?symbols=AAPL", &[]).await;
    assert_eq!(c.status, 401);
    assert_eq!(body_json(&c.body().await)["error"]["code"], "unauthorized");
    let mut c = SseClient::connect(
        gw.addr,
        &format!("/v1/stream?symbols=ZZZZ&token={KEY}"),
        &[],
    )
    .await;
    assert_eq!(c.status, 400);
    assert_eq!(
        body_json(&c.body().await)["error"]["code"],
        "unknown_symbol"
    );
    let mut c = SseClient::connect(
        gw.addr,
        &format!("/v1/stream?symbols=AAPL&max_hz=0&token={KEY}"),
        &[],
    )
    .await;
    assert_eq!(c.status, 400);
    assert_eq!(body_json(&c.body().await)["error"]["code"], "bad_request");

    let auth = format!("Bearer {KEY}");
    let headers = [("Authorization", auth.as_str())];
    let mut paced = SseClient::connect(gw.addr, "/v1/stream?symbols=AAPL&max_hz=2", &headers).await;
    assert_eq!(paced.status, 200);
    let _second = SseClient::connect(gw.addr, "/v1/stream?symbols=MSFT", &headers).await;
    // The third from this address: per-IP limit, counted across transports.
    let mut third = SseClient::connect(gw.addr, "/v1/stream?symbols=MSFT", &headers).await;
    assert_eq!(third.status, 429);
    assert_eq!(
        body_json(&third.body().await)["error"]["code"],
        "rate_limited"
    );

    assert_eq!(paced.event().await.event, "snapshot");
    let pusher = {
        let ticks = gw.ticks.clone();
        tokio::spawn(async move {
            for i in 0..300i64 {
                let bid = format!("190.{:02}", i % 100);
                if ticks
                    .send(tick("AAPL", 10 + i, &[("bid", &bid)]))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Read for 1.2 s at least, and on until an update has said what it merged (a loaded machine
    // may push few ticks in 1.2 s: seen in CI, one update and nothing merged yet).
    let started = std::time::Instant::now();
    let mut updates = 0;
    let mut conflated = 0;
    while started.elapsed() < Duration::from_millis(1200) || conflated == 0 {
        assert!(started.elapsed() < support::DEADLINE, "nothing merged");
        if let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(100), paced.next_event()).await
        {
            updates += 1;
            conflated += e.data["conflated"].as_u64().unwrap_or(0);
        }
    }
    let elapsed = started.elapsed();
    pusher.abort();
    println!("max_hz=2 over {elapsed:?}: {updates} updates, {conflated} ticks merged");
    // At most one update per 500 ms, plus the first: an upper bound a slow machine only eases.
    let allowed = (elapsed.as_millis() / 500) as usize + 2;
    assert!(
        updates <= allowed,
        "at most one update per 500 ms (plus the first): {updates} in {elapsed:?}"
    );
}

/// A reader that falls behind is conflated (it finds merged updates when it reads again) and, once
/// it stops reading for `slow_consumer_timeout_ms`, closed; a WebSocket client beside it is
/// unaffected. Merging starts once the reader is further behind than the index's catch-up window
/// (the batching window + 250 ms): the reader stalls its socket, stays stalled past that, reads a
/// little (its connection then writes what it is owed, merged), and stops.
async fn a_slow_sse_reader_is_conflated_then_closed(workers: usize) {
    let gw = start_with_workers(
        workers,
        "[limits]\nslow_consumer_timeout_ms = 3000\nsend_buffer_bytes = 16384\n\
         [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 500\nticks_per_second = 20000\nseed = 7\n",
        &[],
    );
    gw.wait_metric("quotegw_ticks_received_total{feed=\"sim\"}", |v| {
        v >= 5000.0
    })
    .await;
    let (_, _, body) = http(gw.addr, "GET", "/v1/symbols", &[]).await;
    let all: Vec<String> = body_json(&body)["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let mut slow = SseClient::connect(
        gw.addr,
        &format!("/v1/stream?symbols={}", all.join(",")),
        &[],
    )
    .await;
    assert_eq!(slow.status, 200);
    for _ in 0..all.len() {
        assert_eq!(slow.event().await.event, "snapshot");
    }
    let mut fast = gw.client().await;
    fast.subscribe(&["AAPL"]).await;
    // The slow reader reads nothing until its socket is full and has stayed full for longer than
    // the catch-up window; the fast client keeps reading.
    let stalled = gw.wait_metric("quotegw_connections_stalled", |v| v >= 1.0);
    tokio::pin!(stalled);
    let mut fast_seq = 0;
    loop {
        tokio::select! {
            _ = &mut stalled => break,
            m = fast.next() => fast_seq = m["seq"].as_u64().unwrap_or(fast_seq),
        }
    }
    let behind = tokio::time::sleep(Duration::from_millis(600));
    tokio::pin!(behind);
    loop {
        tokio::select! {
            _ = &mut behind => break,
            m = fast.next() => fast_seq = m["seq"].as_u64().unwrap_or(fast_seq),
        }
    }
    // Reading makes room: the connection writes what it is owed, merged where it is further
    // behind than the window. The reader reads until it sees a merge (bounded: a reader that kept
    // reading would catch up, and nothing would be merged any more), then nothing more.
    let mut merged = 0;
    for _ in 0..100_000 {
        merged += slow.event().await.data["conflated"].as_u64().unwrap_or(0);
        if merged > 0 {
            break;
        }
    }
    let closed = gw.wait_metric("quotegw_slow_consumer_closes_total", |v| v >= 1.0);
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = &mut closed => break,
            m = fast.next() => fast_seq = m["seq"].as_u64().unwrap_or(fast_seq),
        }
    }
    // What it reads now: what the kernel held, merged updates among it, then the end.
    while let Some(e) = slow.next_event().await {
        merged += e.data["conflated"].as_u64().unwrap_or(0);
    }
    println!("slow SSE reader: {merged} ticks merged before it was closed");
    assert!(merged > 0, "conflated before it was closed");
    gw.wait_metric(SSE_CONNECTIONS, |v| v == 0.0).await;
    // And the fast client is still served: an update newer than it had.
    fast.until(|m| m["type"] == "update" && m["seq"].as_u64() > Some(fast_seq))
        .await;
    assert_eq!(gw.metric(WS_CONNECTIONS).await, 1.0);
}

/// 1,000 SSE streams beside WebSocket clients: every one gets its snapshot and the update that
/// follows, and the two transports are counted apart.
async fn a_thousand_sse_streams_beside_websocket_clients(workers: usize) {
    let gw = gateway(workers, "[limits]\nmax_connections_per_ip = 5000\n").await;
    let mut streams = Vec::new();
    for i in 0..1000 {
        let symbols = ["AAPL", "MSFT", "NVDA"][i % 3];
        let mut s =
            SseClient::connect(gw.addr, &format!("/v1/stream?symbols={symbols}"), &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.event().await.event, "snapshot");
        streams.push(s);
    }
    let mut ws = Vec::new();
    for _ in 0..50 {
        let mut c = gw.client().await;
        c.subscribe(&["AAPL", "MSFT", "NVDA"]).await;
        ws.push(c);
    }
    gw.wait_metric(SSE_CONNECTIONS, |v| v == 1000.0).await;
    assert_eq!(gw.metric(WS_CONNECTIONS).await, 50.0);
    for (s, bid) in [("AAPL", "200.00"), ("MSFT", "500.00"), ("NVDA", "150.00")] {
        gw.push(tick(s, 99, &[("bid", bid)])).await;
    }
    for s in &mut streams {
        let e = s.event().await;
        assert_eq!(e.event, "update");
        assert_eq!(e.data["seq"], 2);
    }
    for c in &mut ws {
        for _ in 0..3 {
            c.expect("update").await;
        }
    }
    drop(streams);
    gw.wait_metric(SSE_CONNECTIONS, |v| v == 0.0).await;
    assert_eq!(
        gw.metric("quotegw_updates_sent_total{transport=\"sse\"}")
            .await,
        1000.0
    );
}

/// Sends `request` on a fresh connection and reads the answer until the gateway closes it.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(support::DEADLINE, s.read(&mut chunk))
            .await
            .expect("an answer before the test's deadline")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        // A stream does not end: its first snapshot is enough.
        if out.windows(15).any(|w| w == b"event: snapshot") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Regression (issue 26). A connection's first request is routed on its parsed head: a stream
/// request in absolute form, after an empty line, or with its path percent-encoded is a stream
/// (each got 503 "open /v1/stream as the first request"); and a malformed request that looks
/// like one is answered at once (each got no answer and held its socket for the whole handshake
/// timeout, here far beyond the test's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_requests_are_routed_on_their_parsed_head_and_malformed_ones_answered_at_once() {
    let gw = gateway(2, "[limits]\nhandshake_timeout_ms = 120000\n").await;
    let host = gw.addr.to_string();
    for request in [
        format!("GET http://{host}/v1/stream?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("\r\nGET /v1/stream?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        format!("GET /v1/strea%6D?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        // A head past the first peek's 1 KiB (cookies), under the 16 KiB limit.
        format!(
            "GET /v1/stream?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\nCookie: {}\r\n\r\n",
            "c".repeat(4096)
        ),
        "GET /v1/stream?symbols=AAPL HTTP/1.0\r\n\r\n".to_string(),
    ] {
        let answer = raw_exchange(gw.addr, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("event: snapshot"),
            "{request:?}: {answer}"
        );
    }
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (what, request) in [
        ("no Host", "GET /v1/stream?symbols=AAPL HTTP/1.1\r\n\r\n".to_string()),
        ("bad version", format!("GET /v1/stream?symbols=AAPL HTTP/1.7\r\nHost: {host}\r\n\r\n")),
        ("> 96 headers", format!("GET /v1/stream?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\n{many_headers}\r\n")),
        ("TE + CL", format!("GET /v1/stream?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")),
        ("HTTP/0.9", "GET /v1/stream?symbols=AAPL\r\n\r\n".to_string()),
    ] {
        let answer = raw_exchange(gw.addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 4"), "{what}: {answer:?}");
    }
    // A stream request whose head is over 16 KiB (large cookies): 431 from the stream, at once
    // (found from outside: the routes answered 503 "open /v1/stream as the first request").
    let cookie = "c".repeat(17 * 1024);
    let answer = raw_exchange(
        gw.addr,
        format!("GET /v1/stream?symbols=AAPL HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    // And one whose request line alone is over the limit (a long query; found from outside: 503
    // for any line past the limit by more than a header's worth).
    for long in [17 * 1024, 40 * 1024] {
        let query = "a".repeat(long);
        let answer = raw_exchange(
            gw.addr,
            format!("GET /v1/stream?symbols=AAPL&x={query} HTTP/1.1\r\nHost: {host}\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{long}: {answer:.200}");
    }
    // Counted like any refusal.
    assert!(
        gw.metric("quotegw_connections_refused_total{reason=\"bad_request\"}")
            .await
            >= 1.0
    );
}

crate::with_one_and_two_workers!(
    rest_snapshots_are_the_websocket_snapshots,
    rest_follows_the_access_rules_of_the_websocket,
    an_sse_stream_reconstructs_the_quote_like_a_websocket,
    sse_streams_are_refused_and_paced_like_sessions,
    a_slow_sse_reader_is_conflated_then_closed,
    a_thousand_sse_streams_beside_websocket_clients,
);
