//! Access control, each refusal before the upgrade, with a healthy client beside the refused ones:
//! API keys, JWT (HS256, RS256, expiry, symbol claims, algorithm confusion), the Origin allow-list,
//! connections per IP, slow handshakes, `/metrics` on its own address, and no WebSocket extensions.

mod support;

use support::WS_CONNECTIONS;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{http_get, start, start_with_workers, tick, upgrade, Client, SseClient, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "k-0123456789abcdef-test";
const HS_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

async fn gateway(extra: &str) -> TestGateway {
    let gw = start(extra, &["AAPL", "MSFT", "NVDA"]);
    for s in ["AAPL", "MSFT", "NVDA"] {
        gw.push(tick(s, 1, &[("bid", "1.00")])).await;
    }
    gw
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_and_never_exported() {
    let gw = gateway(&format!(
        "[access]\nauth = \"api_key\"\napi_keys = [\"{KEY}\"]\n"
    ))
    .await;
    let mut control = Client::connect(&format!("{}?token={KEY}", gw.url())).await;
    control.subscribe(&["AAPL"]).await;

    let (status, head) = upgrade(gw.addr, "/ws", &[]).await;
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(
        upgrade(gw.addr, "/ws?token=wrong-key-0123456789", &[])
            .await
            .0,
        401
    );
    assert_eq!(
        upgrade(
            gw.addr,
            &format!("/ws?token={}", &KEY[..KEY.len() - 1]),
            &[]
        )
        .await
        .0,
        401
    );
    let bearer = format!("Bearer {KEY}");
    assert_eq!(
        upgrade(gw.addr, "/ws", &[("Authorization", &bearer)])
            .await
            .0,
        101
    );

    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"unauthorized\"}")
            .await,
        3.0
    );
    let (status, _, scrape) =
        support::http(gw.addr, "GET", "/metrics", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert!(
        !scrape.contains(KEY),
        "a token never appears in the metrics"
    );
    // The control client was untouched.
    gw.push(tick("AAPL", 2, &[("bid", "1.01")])).await;
    assert_eq!(control.expect("update").await["bid"], "1.01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_symbols_claim_limits_subscriptions_and_expiry_closes_with_1008() {
    let gw = gateway(&format!(
        "[access]\nauth = \"jwt\"\njwt_hs256_secret = \"{HS_SECRET}\"\n"
    ))
    .await;
    let expired = hs256(json!({"exp": unix_now() - 10}));
    assert_eq!(
        upgrade(gw.addr, &format!("/ws?token={expired}"), &[])
            .await
            .0,
        401
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": unix_now() + 60}),
        &EncodingKey::from_secret(b"another-secret-that-is-also-32-bytes-long!"),
    )
    .unwrap();
    assert_eq!(
        upgrade(gw.addr, &format!("/ws?token={forged}"), &[])
            .await
            .0,
        401
    );
    assert_eq!(upgrade(gw.addr, "/ws?token=not.a.jwt", &[]).await.0, 401);

    // A token for AAPL and NV* only.
    let token = hs256(json!({"exp": unix_now() + 3600, "symbols": ["AAPL", "NV*"]}));
    let mut c = Client::connect(&format!("{}?token={token}", gw.url())).await;
    c.send(json!({"op": "subscribe", "symbols": ["AAPL", "NVDA", "MSFT"]}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(ack["symbols"], json!(["AAPL", "NVDA"]));
    assert_eq!(
        ack["rejected"],
        json!([{"symbol": "MSFT", "code": "unauthorized"}])
    );

    // A token that expires during the session.
    let exp = unix_now() + 2;
    let short = hs256(json!({"exp": exp}));
    let mut s = Client::connect(&format!("{}?token={short}", gw.url())).await;
    s.subscribe(&["AAPL"]).await;
    let (code, reason) = s.expect_close().await;
    let closed_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let after_exp = closed_at.as_secs_f64() - exp as f64;
    println!("token expired at {exp}; closed {after_exp:.3} s after expiry");
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    assert!(after_exp >= 0.0, "never before expiry");
    // The long-lived client is unaffected.
    gw.push(tick("AAPL", 2, &[("bid", "1.01")])).await;
    let u = c
        .until(|m| m["type"] == "update" && m["symbol"] == "AAPL")
        .await;
    assert_eq!(u.last().unwrap()["bid"], "1.01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_and_an_hs256_token_signed_with_the_public_key_does_not() {
    let gw = gateway(&format!(
        "[access]\nauth = \"jwt\"\njwt_rs256_public_key_file = \"{}\"\n",
        fixture("jwt-rs256-public.pem")
    ))
    .await;
    let private = std::fs::read(fixture("jwt-rs256-private.pem")).unwrap();
    let good = encode(
        &Header::new(Algorithm::RS256),
        &json!({"exp": unix_now() + 60}),
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    assert_eq!(
        upgrade(
            gw.addr,
            "/ws",
            &[("Authorization", &format!("Bearer {good}"))]
        )
        .await
        .0,
        101
    );
    // Algorithm confusion: HS256 with the public key as the secret.
    let public = std::fs::read(fixture("jwt-rs256-public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": unix_now() + 60}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(
        upgrade(gw.addr, &format!("/ws?token={confused}"), &[])
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_off_the_allow_list_get_403() {
    let gw = gateway("[access]\nallowed_origins = [\"https://trade.example.com\"]\n").await;
    assert_eq!(
        upgrade(gw.addr, "/ws", &[("Origin", "https://evil.example")])
            .await
            .0,
        403
    );
    assert_eq!(
        upgrade(
            gw.addr,
            "/ws",
            &[("Origin", "https://trade.example.com.evil.example")]
        )
        .await
        .0,
        403
    );
    assert_eq!(
        upgrade(gw.addr, "/ws", &[("Origin", "https://trade.example.com")])
            .await
            .0,
        101
    );
    assert_eq!(
        upgrade(gw.addr, "/ws", &[]).await.0,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"origin\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_limited_with_429() {
    let gw = gateway("[limits]\nmax_connections_per_ip = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(gw.client().await);
    }
    let (status, head) = upgrade(gw.addr, "/ws", &[]).await;
    assert_eq!(status, 429, "{head}");
    // One leaves, one more may come; the held ones still work.
    held.pop().unwrap().close().await;
    gw.wait_metric(WS_CONNECTIONS, |v| v == 2.0).await;
    held.push(gw.client().await);
    held[0].subscribe(&["AAPL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_sent_one_byte_at_a_time_is_dropped_while_real_clients_connect() {
    let gw = gateway("[limits]\nhandshake_timeout_ms = 1000\n").await;
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gw.addr
    );
    let started = Instant::now();
    let mut dropped = false;
    for (i, b) in request.bytes().enumerate() {
        if slow.write_all(&[b]).await.is_err() {
            dropped = true;
            break;
        }
        // Meanwhile a real client connects and subscribes.
        if i == 2 {
            let mut c = gw.client().await;
            c.subscribe(&["AAPL"]).await;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                dropped = true;
                break;
            }
            Ok(Ok(n)) => {
                // actix answers 408 Request Timeout, then closes.
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                dropped = true;
                break;
            }
            Err(_) => {}
        }
    }
    println!("slow handshake dropped after {:?}", started.elapsed());
    assert!(
        dropped,
        "a {}-byte request at 10 bytes/s must not complete",
        request.len()
    );
}

/// Regression (issue 26: with one worker, 256 idle sockets from one address made `/healthz` answer
/// in 8.26 s instead of 0.01 s, and 300 sockets that sent `GET /v1/strea` and stopped, 6.91 s).
/// Sockets that are not yet sessions or answered are capped per address (`max_pending_per_ip`):
/// past it a socket gets 429 at once, before anything is read, so one address never fills the
/// places a worker keeps for handshakes. The handshake timeout here is far beyond the test's
/// deadline: a gateway that let the address hold those places would not answer anyone else in
/// time, whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_with_many_idle_or_half_sent_sockets_does_not_hold_up_another() {
    let gw = start_with_workers(
        1,
        "[limits]\nhandshake_timeout_ms = 120000\nmax_pending_per_ip = 8\n",
        &["AAPL"],
    );
    gw.push(tick("AAPL", 1, &[("bid", "1.00")])).await;
    // The other address: 127.0.0.2, loopback too.
    let mut held = Vec::new();
    for i in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut s = socket.connect(gw.addr).await.unwrap();
        if i % 2 == 1 {
            let _ = s.write_all(b"GET /v1/strea").await;
        }
        held.push(s);
    }
    let (status, body) = http_get(gw.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let mut c = gw.client().await;
    c.subscribe(&["AAPL"]).await;
    let sse = SseClient::connect(gw.addr, "/v1/stream?symbols=AAPL", &[]).await;
    assert_eq!(sse.status, 200);
    // Accepted in order: every socket of the other address was answered or admitted before ours.
    // A refused socket has its 429 and its end (or, with unread bytes at the gateway, a reset
    // that may drop the 429); a held one has nothing yet.
    let mut held_open = 0;
    for s in &held {
        let mut buf = [0u8; 64];
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held_open += 1,
            Ok(n) if n > 0 => assert!(buf[..n].starts_with(b"HTTP/1.1 429"), "{:?}", &buf[..n]),
            _ => {}
        }
    }
    println!("300 sockets from one address: {held_open} held, the rest refused at once");
    assert!(held_open <= 8, "{held_open} held");
    assert!(
        gw.metric("quotegw_connections_refused_total{reason=\"pending_per_ip\"}")
            .await
            >= 292.0
    );
    // Released as they go: once they are closed, the address is welcome again.
    drop(held);
    served_again_from(gw.addr, "127.0.0.2").await;
}

/// Found from outside: a socket that sent part of a request and closed kept its place among its
/// address's pending sockets until the handshake deadline (the `/v1/stream` check kept peeking at
/// the bytes it had). A closed socket lets its place go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closed_mid_request_frees_its_place_at_once() {
    let gw = start_with_workers(
        1,
        "[limits]\nhandshake_timeout_ms = 120000\nmax_pending_per_ip = 4\n",
        &["AAPL"],
    );
    let from = || {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        socket
    };
    for head in [
        "G",
        "GET /v1/strea",
        "GET /ws HTTP/1.1\r\nHost: x\r\n",
        "GET /v1/stream?symbols=AAPL HTTP/1.1\r\n",
    ] {
        let mut s = from().connect(gw.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        drop(s);
    }
    // Within the test's deadline (the places would otherwise be held for 120 s).
    served_again_from(gw.addr, "127.0.0.3").await;
}

/// Waits until `/healthz` from the loopback address `ip` is answered 200, failing at the test's
/// deadline: an address locked out of the pending places stays refused.
async fn served_again_from(addr: std::net::SocketAddr, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        if out.starts_with(b"HTTP/1.1 200") {
            return;
        }
        assert!(Instant::now() < deadline, "{ip} stays locked out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One deadline covers a request from its first byte, the `/v1/stream` peek included: a socket
/// that sends the start of a stream request and stops is closed after `handshake_timeout_ms`
/// (it was closed after twice that: the peek waited one timeout, then actix's began afresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_stream_request_is_closed_within_one_handshake_timeout() {
    let gw = gateway("[limits]\nhandshake_timeout_ms = 1000\n").await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /v1/strea").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("closed");
    // Printed, not asserted (no wall-clock thresholds in tests): ~1.0 s, was ~2.0 s.
    println!(
        "half-sent stream request closed after {:?}",
        started.elapsed()
    );
}

/// Regression (issue 26: `/metrics` was on the public listener without auth by default). With
/// auth on and no `metrics_listen`, the public `/metrics` wants the same credential as the data
/// (a Prometheus job sends it as a bearer token), and the failure throttle counts its failures;
/// the probes stay public for load balancers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_metrics_want_a_credential_when_auth_is_on_and_probes_do_not() {
    let gw = gateway(&format!(
        "[access]\nauth = \"api_key\"\napi_keys = [\"{KEY}\"]\n"
    ))
    .await;
    let (status, head, body) = support::http(gw.addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 401, "{head}{body}");
    assert!(!body.contains("quotegw_"), "{body}");
    let (status, _, _) = support::http(
        gw.addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer wrong-key-0123456789")],
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {KEY}");
    let (status, _, body) =
        support::http(gw.addr, "GET", "/metrics", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert!(body.contains("quotegw_connections"));
    assert_eq!(http_get(gw.addr, "/healthz").await.0, 200);
    assert_eq!(http_get(gw.addr, "/readyz").await.0, 200);
    // Without auth (loopback, or anonymous on purpose) anyone may read the data, and the metrics.
    let open = gateway("").await;
    assert_eq!(http_get(open.addr, "/metrics").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_their_own_address() {
    let gw = gateway("metrics_listen = \"127.0.0.1:0\"\n").await;
    let ops = gw.gw.metrics_addr().expect("metrics_listen is set");
    assert_eq!(support::http_get(gw.addr, "/metrics").await.0, 404);
    let (status, body) = support::http_get(ops, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("quotegw_connections"));
    assert_eq!(support::http_get(ops, "/readyz").await.0, 200);
    let mut c = gw.client().await;
    c.subscribe(&["AAPL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_never_negotiated() {
    let gw = gateway("").await;
    let (status, head) = upgrade(
        gw.addr,
        "/ws",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert_eq!(status, 101);
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
}

/// Upgrade requests are answered by the gateway itself (it takes the connection over from actix):
/// one to another path is refused, a plain GET of /ws is told to upgrade, and neither disturbs a
/// connected client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ws_upgrades_and_a_plain_get_of_ws_is_told_to() {
    let gw = gateway("").await;
    let mut control = gw.client().await;
    control.subscribe(&["AAPL"]).await;

    let (status, head) = upgrade(gw.addr, "/metrics", &[]).await;
    assert_eq!(status, 404, "{head}");
    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"not_found\"}")
            .await,
        1.0
    );
    // No Sec-WebSocket-Key: not a WebSocket handshake.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let (status, body) = support::http_get(gw.addr, "/ws").await;
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("Upgrade: websocket"), "{body}");

    gw.push(tick("AAPL", 2, &[("bid", "1.01")])).await;
    let update = control.expect("update").await;
    assert_eq!(update["bid"], "1.01");
}

/// `POST /v1/ticket`: the answer for the credential in its header, and its refusals.
async fn post_ticket(
    gw: &TestGateway,
    headers: &[(&str, &str)],
) -> (u16, String, serde_json::Value) {
    let (status, head, body) = support::http(gw.addr, "POST", "/v1/ticket", headers).await;
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, head, json)
}

/// A ticket admits once, as its credential would: the same symbol grants and the same count
/// against `max_connections_per_token`, on `/ws` and `/v1/stream`, only from the Origin it was
/// issued to, and never again; a credential in the ticket request's URL is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_admits_once_as_its_credential_would() {
    let gw = gateway(&format!(
        "[access]\nauth = \"jwt\"\njwt_hs256_secret = \"{HS_SECRET}\"\n\
         allowed_origins = [\"https://ui.example\", \"https://other.example\"]\n\
         [limits]\nmax_connections_per_token = 3\n"
    ))
    .await;
    let token = hs256(json!({"exp": unix_now() + 3600, "sub": "u1", "symbols": ["AAPL"]}));
    let bearer = format!("Bearer {token}");
    let ui = ("Origin", "https://ui.example");

    let (status, head, answer) = post_ticket(&gw, &[("Authorization", &bearer), ui]).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(answer["expires_in"], 30);
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://ui.example"),
        "{head}"
    );
    let ticket = answer["ticket"].as_str().unwrap().to_string();
    assert!(!ticket.contains(&token) && ticket.len() >= 43);

    // Refusals of the ticket request itself.
    assert_eq!(post_ticket(&gw, &[ui]).await.0, 401, "no credential");
    assert_eq!(
        post_ticket(&gw, &[("Authorization", "Bearer nope"), ui])
            .await
            .0,
        401
    );
    assert_eq!(
        post_ticket(
            &gw,
            &[
                ("Authorization", &bearer),
                ("Origin", "https://evil.example")
            ]
        )
        .await
        .0,
        403
    );
    let (status, _, body) =
        support::http(gw.addr, "POST", &format!("/v1/ticket?token={token}"), &[]).await;
    assert_eq!(status, 400, "a token in the URL: {body}");
    assert_eq!(
        support::http(gw.addr, "GET", "/v1/ticket", &[("Authorization", &bearer)])
            .await
            .0,
        405
    );
    let (status, head, _) = support::http(
        gw.addr,
        "OPTIONS",
        "/v1/ticket",
        &[
            ui,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        head.contains("access-control-allow-methods: get, post"),
        "{head}"
    );

    // From another allowed Origin it is refused, and used up.
    let path = format!("/ws?ticket={ticket}");
    assert_eq!(
        upgrade(gw.addr, &path, &[("Origin", "https://other.example")])
            .await
            .0,
        401
    );
    assert_eq!(
        upgrade(gw.addr, &path, &[ui]).await.0,
        401,
        "used up by the wrong Origin"
    );

    // Admitted once, from its Origin; the second time refused.
    let (_, _, answer) = post_ticket(&gw, &[("Authorization", &bearer), ui]).await;
    let path = format!("/ws?ticket={}", answer["ticket"].as_str().unwrap());
    let (status, held_1) = support::upgrade_held(gw.addr, &path, &[ui]).await;
    assert_eq!(status, 101);
    let (status, head) = upgrade(gw.addr, &path, &[ui]).await;
    assert_eq!(status, 401, "a ticket is good once: {head}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    // A ticket issued without an Origin (not a browser) admits a client without one, with the
    // token's grants: AAPL only.
    let (_, _, answer) = post_ticket(&gw, &[("Authorization", &bearer)]).await;
    let mut c = Client::connect(&format!(
        "{}?ticket={}",
        gw.url(),
        answer["ticket"].as_str().unwrap()
    ))
    .await;
    c.send(json!({"op": "subscribe", "symbols": ["AAPL", "MSFT"]}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(ack["symbols"], json!(["AAPL"]));
    assert_eq!(
        ack["rejected"],
        json!([{"symbol": "MSFT", "code": "unauthorized"}])
    );

    // The SSE stream takes a ticket too; it is the token's third connection.
    let (_, _, answer) = post_ticket(&gw, &[("Authorization", &bearer)]).await;
    let mut sse = SseClient::connect(
        gw.addr,
        &format!(
            "/v1/stream?symbols=AAPL&ticket={}",
            answer["ticket"].as_str().unwrap()
        ),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200, "{}", sse.head);
    assert_eq!(sse.event().await.event, "snapshot");
    // A fourth, by ticket, is past max_connections_per_token as the token itself would be.
    let (_, _, answer) = post_ticket(&gw, &[("Authorization", &bearer)]).await;
    let path = format!("/ws?ticket={}", answer["ticket"].as_str().unwrap());
    assert_eq!(upgrade(gw.addr, &path, &[]).await.0, 429);
    assert_eq!(
        upgrade(gw.addr, &format!("/ws?token={token}"), &[]).await.0,
        429
    );
    // On REST, a ticket is no credential (REST takes the header).
    let (status, _, _) = support::http(
        gw.addr,
        "GET",
        &format!(
            "/v1/quotes?symbols=AAPL&ticket={}",
            answer["ticket"].as_str().unwrap()
        ),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(gw.metric("quotegw_tickets_issued_total").await, 5.0);
    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"bad_ticket\"}")
            .await,
        3.0
    );
    drop(held_1);
    // The ticket's client never noticed any of it.
    assert_eq!(c.expect("snapshot").await["symbol"], "AAPL");
}

/// A client that cannot set headers and must not put the token in the URL offers it as a
/// WebSocket protocol; the gateway answers with `quotegw.v1` only, never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_websocket_protocol_admits_and_is_never_echoed() {
    let gw = gateway(&format!(
        "[access]\nauth = \"api_key\"\napi_keys = [\"{KEY}\"]\n"
    ))
    .await;
    let offer = format!("quotegw.v1, quotegw.bearer.{KEY}");
    let (status, head) = upgrade(gw.addr, "/ws", &[("Sec-WebSocket-Protocol", &offer)]).await;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("sec-websocket-protocol: quotegw.v1\r\n"),
        "{head}"
    );
    assert!(!head.contains(&KEY.to_ascii_lowercase()), "{head}");
    // Without quotegw.v1 among them, no protocol is chosen (none may be echoed but that one).
    let offer = format!("quotegw.bearer.{KEY}");
    let (status, head) = upgrade(gw.addr, "/ws", &[("Sec-WebSocket-Protocol", &offer)]).await;
    assert_eq!(status, 101, "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    let (status, _) = upgrade(
        gw.addr,
        "/ws",
        &[(
            "Sec-WebSocket-Protocol",
            "quotegw.v1, quotegw.bearer.wrong-key-0123",
        )],
    )
    .await;
    assert_eq!(status, 401);
    // A real client with the protocol: the quotes flow.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.url())
            .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("quotegw.v1, quotegw.bearer.{KEY}").parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "quotegw.v1");
    use futures_util::{SinkExt, StreamExt};
    ws.send(r#"{"op":"subscribe","symbols":["AAPL"]}"#.into())
        .await
        .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"ack\""), "{first}");
}

/// Behind a load balancer the ticket request and the stream it opens may reach different gateways:
/// with one `ticket_key` a ticket from one opens a stream on another (once there); without it a
/// gateway refuses another's ticket with the documented 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_ticket_key_redeem_each_others_tickets() {
    let shared = |key: &str| {
        format!(
            "[access]\nauth = \"api_key\"\napi_keys = [\"{KEY}\"]\n\
             ticket_key = \"{key}\"\n"
        )
    };
    let a = gateway(&shared("one secret for all edges, 32+ chars long")).await;
    let b = gateway(&shared("one secret for all edges, 32+ chars long")).await;
    let other = gateway(&format!(
        "[access]\nauth = \"api_key\"\napi_keys = [\"{KEY}\"]\n"
    ))
    .await;
    let bearer = format!("Bearer {KEY}");
    let (status, _, answer) = post_ticket(&a, &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let ticket = answer["ticket"].as_str().unwrap().to_string();
    assert!(!ticket.contains(KEY));
    let mut c = Client::connect(&format!("{}?ticket={ticket}", b.url())).await;
    c.subscribe(&["AAPL"]).await;
    let path = format!("/ws?ticket={ticket}");
    assert_eq!(upgrade(b.addr, &path, &[]).await.0, 401, "used on b");
    assert_eq!(upgrade(other.addr, &path, &[]).await.0, 401, "another key");
    assert_eq!(
        other
            .metric("quotegw_connections_refused_total{reason=\"foreign_ticket\"}")
            .await,
        1.0,
        "told apart from garbage: the operator is told what to configure"
    );
    let (_, _, answer) = post_ticket(&other, &[("Authorization", &bearer)]).await;
    let path = format!("/ws?ticket={}", answer["ticket"].as_str().unwrap());
    assert_eq!(
        upgrade(a.addr, &path, &[]).await.0,
        401,
        "a gateway's own key"
    );
    assert_eq!(upgrade(other.addr, &path, &[]).await.0, 101);
}
