//! Safe by default in production: what a hostile client gets from a gateway deployed beyond
//! loopback. Bounded kernel memory per stalled client, connections per credential, throttled
//! failed authentications, JWTs bound to this service, every frame rate-limited, symbols checked
//! against the contract, and an HTTP upstream that cannot redirect the API key elsewhere.
//! (Protected mode, the open-file limit and the security log are checked on the binary, in
//! `tests/binary.rs`.)

mod support;

use support::WS_CONNECTIONS;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::upstream::{Mode, Upstream};
use support::{
    http, start, tcp_send_queue, tick, upgrade, upgrade_held, Client, RawClient, SseClient,
    TestGateway,
};

const KEY_A: &str = "key-a-0123456789abcdef";
const KEY_B: &str = "key-b-0123456789abcdef";
const HS_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

async fn gateway(toml: &str) -> TestGateway {
    let gw = start(toml, &["AAPL", "MSFT"]);
    for s in ["AAPL", "MSFT"] {
        gw.push(tick(s, 1, &[("bid", "1.00")])).await;
    }
    gw
}

async fn status(gw: &TestGateway, path: &str) -> u16 {
    upgrade(gw.addr, path, &[]).await.0
}

/// The most one stalled client's connection holds unsent in the kernel with `send_buffer_bytes`:
/// the kernel doubles the value for its bookkeeping, and a write made while under it fills the
/// segment it is appending to and then admits one more (each up to 64 KiB on loopback). Seen:
/// 128,647 to 142,848 bytes in most runs, 205,231 at times, as frames fall against segments.
fn kernel_bound(send_buffer_bytes: u64) -> u64 {
    2 * send_buffer_bytes + 2 * 64 * 1024
}

/// Fills a stalled client's connection and returns what the gateway's kernel holds for it.
async fn stalled_send_queue(send_buffer_bytes: u64) -> u64 {
    let gw = start(
        &format!(
            "[limits]\nsend_buffer_bytes = {send_buffer_bytes}\nslow_consumer_timeout_ms = 600000\n\
             [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 500\nticks_per_second = 2000\nseed = 5\n"
        ),
        &[],
    );
    gw.wait_metric("quotegw_ticks_received_total{feed=\"sim\"}", |v| {
        v >= 5000.0
    })
    .await;
    let mut lister = gw.client().await;
    lister.send(json!({"op": "symbols"})).await;
    let all = lister.expect("symbols").await["symbols"].clone();
    lister.close().await;
    let mut c = RawClient::connect(gw.addr).await;
    let op = json!({"op": "subscribe", "symbols": all}).to_string();
    for _ in 0..60 {
        c.send_text(&op).await;
    }
    gw.wait_metric("quotegw_connections_stalled", |v| v == 1.0)
        .await;
    let client = c.tcp.local_addr().unwrap();
    tcp_send_queue(gw.addr, client).expect("the gateway's side of the connection")
}

/// A client that stops reading holds about 2 × `send_buffer_bytes` of unsent data in the kernel,
/// instead of the MiBs autotuning grows to; the slow-consumer clock starts once that is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_clients_unsent_bytes_stay_under_send_buffer_bytes() {
    const SNDBUF: u64 = 64 * 1024;
    let bounded = stalled_send_queue(SNDBUF).await;
    let autotuned = stalled_send_queue(0).await;
    println!(
        "stalled client, bytes unsent in the gateway's kernel: {bounded} with send_buffer_bytes = \
         {SNDBUF} (bound {}), {autotuned} autotuned",
        kernel_bound(SNDBUF)
    );
    assert!(bounded > 0, "the socket is full");
    assert!(bounded <= kernel_bound(SNDBUF), "{bounded} bytes queued");
}

/// One leaked key cannot take the whole gateway: `max_connections_per_token` per API key and per
/// JWT `sub`, refused with 429 before the upgrade; other credentials are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_credential() {
    let gw = gateway(&format!(
        "[limits]\nmax_connections_per_token = 2\n\
         [access]\nauth = \"api_key\"\napi_keys = [\"{KEY_A}\", \"{KEY_B}\"]\n"
    ))
    .await;
    let url = |key: &str| format!("{}?token={key}", gw.url());
    let a1 = Client::connect(&url(KEY_A)).await;
    let mut a2 = Client::connect(&url(KEY_A)).await;
    assert_eq!(status(&gw, &format!("/ws?token={KEY_A}")).await, 429);
    let mut b = Client::connect(&url(KEY_B)).await;
    b.subscribe(&["AAPL"]).await;
    a2.subscribe(&["MSFT"]).await;
    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"per_token_limit\"}")
            .await,
        1.0
    );
    a1.close().await;
    gw.wait_metric(WS_CONNECTIONS, |v| v == 2.0).await;
    Client::connect(&url(KEY_A)).await.close().await;

    // JWTs count per `sub`, whichever token carries it.
    let gw = gateway(&format!(
        "[limits]\nmax_connections_per_token = 1\n\
         [access]\nauth = \"jwt\"\njwt_hs256_secret = \"{HS_SECRET}\"\n"
    ))
    .await;
    let t1 = hs256(json!({"sub": "alice", "exp": unix_now() + 600}));
    let t2 = hs256(json!({"sub": "alice", "exp": unix_now() + 601}));
    let bob = hs256(json!({"sub": "bob", "exp": unix_now() + 600}));
    let _alice = Client::connect(&format!("{}?token={t1}", gw.url())).await;
    assert_eq!(status(&gw, &format!("/ws?token={t2}")).await, 429);
    Client::connect(&format!("{}?token={bob}", gw.url()))
        .await
        .close()
        .await;
    // Regression (issue 26): a numeric `sub` was no credential, so each token carrying it
    // escaped the limit. Any `sub` is the credential.
    let n1 = hs256(json!({"sub": 42, "exp": unix_now() + 600}));
    let n2 = hs256(json!({"sub": 42, "exp": unix_now() + 601}));
    let _n = Client::connect(&format!("{}?token={n1}", gw.url())).await;
    assert_eq!(status(&gw, &format!("/ws?token={n2}")).await, 429);
}

/// After `auth_failures_per_ip` failed authentications of one token within the window, that
/// token from that address gets 429 without being verified again; a good token from the same
/// address is still admitted (regression, issue 26: it got 429, so ten bad tokens from anyone
/// behind a proxy locked out every user), and clients already connected are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_throttle_the_failing_token_not_the_address() {
    let gw = gateway(&format!(
        "[limits]\nauth_failures_per_ip = 3\nauth_failure_window_ms = 600000\n\
         [access]\nauth = \"api_key\"\napi_keys = [\"{KEY_A}\"]\n"
    ))
    .await;
    let mut control = Client::connect(&format!("{}?token={KEY_A}", gw.url())).await;
    control.subscribe(&["AAPL"]).await;
    for _ in 0..3 {
        assert_eq!(status(&gw, "/ws?token=wrong-key-0000000000").await, 401);
    }
    assert_eq!(status(&gw, "/ws?token=wrong-key-0000000000").await, 429);
    assert_eq!(status(&gw, &format!("/ws?token={KEY_A}")).await, 101);
    assert_eq!(status(&gw, "/ws?token=wrong-key-0000000000").await, 429);
    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"auth_throttled\"}")
            .await,
        2.0
    );
    gw.push(tick("AAPL", 2, &[("bid", "1.01")])).await;
    assert_eq!(control.expect("update").await["bid"], "1.01");
}

/// Behind a reverse proxy every client's connection comes from the proxy's address (issue 26: ten
/// bad tokens from anyone locked out every user, and `max_connections_per_ip` capped the whole
/// proxy). With `trusted_proxies`, the client's address is the one the proxy forwards: one
/// client's bad tokens never refuse another's good one, on `/ws`, REST and SSE; the per-IP limit
/// applies per real client; and from a peer that is not a trusted proxy a forged
/// `X-Forwarded-For` changes nothing. The test is the proxy (127.0.0.1, trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_is_limited_on_its_own() {
    let limits = "[limits]\nauth_failures_per_ip = 3\nauth_failure_window_ms = 600000\n\
                  max_connections_per_ip = 2\n";
    let gw = gateway(&format!(
        "{limits}[access]\nauth = \"api_key\"\napi_keys = [\"{KEY_A}\"]\n\
         trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n"
    ))
    .await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let bad = "/ws?token=wrong-key-0000000000";
    let good = format!("/ws?token={KEY_A}");
    // Client A fails until its bad token is throttled; B, behind the same proxy, is not.
    for _ in 0..3 {
        assert_eq!(upgrade(gw.addr, bad, &from("203.0.113.1")).await.0, 401);
    }
    assert_eq!(upgrade(gw.addr, bad, &from("203.0.113.1")).await.0, 429);
    assert_eq!(upgrade(gw.addr, &good, &from("203.0.113.2")).await.0, 101);
    assert_eq!(upgrade(gw.addr, &good, &from("203.0.113.1")).await.0, 101);
    let rest = |token: &str| format!("/v1/quotes?symbols=AAPL&token={token}");
    let (s, _, _) = http(
        gw.addr,
        "GET",
        &rest("wrong-key-0000000000"),
        &from("203.0.113.1"),
    )
    .await;
    assert_eq!(s, 429, "the same bad token over REST");
    let (s, _, _) = http(gw.addr, "GET", &rest(KEY_A), &from("203.0.113.2")).await;
    assert_eq!(s, 200);
    let sse = SseClient::connect(
        gw.addr,
        &format!("/v1/stream?symbols=AAPL&token={KEY_A}"),
        &from("203.0.113.2"),
    )
    .await;
    assert_eq!(sse.status, 200);
    drop(sse);
    // Per real client: two connections each, whatever the proxy carries for others.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (s, c) = upgrade_held(gw.addr, &good, &from("198.51.100.3")).await;
        assert_eq!(s, 101);
        held.push(c);
    }
    assert_eq!(upgrade(gw.addr, &good, &from("198.51.100.3")).await.0, 429);
    let (s, c) = upgrade_held(gw.addr, &good, &from("198.51.100.4")).await;
    assert_eq!(s, 101, "another client behind the same proxy");
    held.push(c);
    // A client's own X-Forwarded-For is to the left of what the proxy appends: never read.
    let forged = [("X-Forwarded-For", "198.51.100.99, 198.51.100.3")];
    assert_eq!(upgrade(gw.addr, &good, &forged).await.0, 429);
    drop(held);

    // From a peer that is not a trusted proxy, the header is ignored: every connection is the
    // peer's, whatever it claims.
    let untrusted = gateway(&format!(
        "{limits}[access]\nauth = \"api_key\"\napi_keys = [\"{KEY_A}\"]\n\
         trusted_proxies = [\"10.0.0.0/8\"]\n"
    ))
    .await;
    let mut held = Vec::new();
    for ip in ["192.0.2.1", "192.0.2.2"] {
        let (s, c) = upgrade_held(untrusted.addr, &good, &from(ip)).await;
        assert_eq!(s, 101);
        held.push(c);
    }
    assert_eq!(
        upgrade(untrusted.addr, &good, &from("192.0.2.3")).await.0,
        429,
        "a forged X-Forwarded-For from an untrusted peer"
    );
    for _ in 0..3 {
        let _ = upgrade(untrusted.addr, bad, &from("192.0.2.4")).await;
    }
    assert_eq!(
        upgrade(untrusted.addr, bad, &from("192.0.2.5")).await.0,
        429
    );
}

/// Sends `request` after a PROXY protocol v1 header naming `client`, and returns the status line's
/// code (the gateway closes after one answer, or keeps a WebSocket open: only the head is read).
async fn via_proxy_protocol(addr: std::net::SocketAddr, client: &str, request: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let header = format!("PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n", addr.port());
    s.write_all(format!("{header}{request}").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        let n = tokio::time::timeout(support::DEADLINE, s.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap_or(0);
        if n == 0 {
            return 0; // closed without an answer
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// Behind a TCP load balancer (HAProxy, nginx `proxy_protocol`, a cloud NLB) the client's address
/// comes in a PROXY protocol header before the request (issue 26, the alternative to
/// `X-Forwarded-For`): with `proxy_protocol = true`, every per-address rule counts the client it
/// names, on `/ws`, REST and SSE; a trusted proxy's connection without a valid header is dropped;
/// and a header from a peer that is not a trusted proxy is never read (the request is then bad).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tcp_balancer_the_proxy_protocol_names_each_client() {
    let gw = gateway(&format!(
        "[limits]\nauth_failures_per_ip = 3\nauth_failure_window_ms = 600000\n\
         max_connections_per_ip = 1\n[access]\nauth = \"api_key\"\napi_keys = [\"{KEY_A}\"]\n\
         trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true\n"
    ))
    .await;
    let host = gw.addr;
    let ws = |key: &str| {
        format!(
            "GET /ws?token={key} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let rest = |key: &str| {
        format!("GET /v1/quotes?symbols=AAPL&token={key} HTTP/1.1\r\nHost: {host}\r\n\r\n")
    };
    // Client A's bad token is throttled; B, through the same balancer, is served.
    for _ in 0..3 {
        assert_eq!(
            via_proxy_protocol(gw.addr, "203.0.113.1", &rest("wrong-key-0000000000")).await,
            401
        );
    }
    assert_eq!(
        via_proxy_protocol(gw.addr, "203.0.113.1", &rest("wrong-key-0000000000")).await,
        429
    );
    assert_eq!(
        via_proxy_protocol(gw.addr, "203.0.113.2", &rest(KEY_A)).await,
        200
    );
    let sse = format!("GET /v1/stream?symbols=AAPL&token={KEY_A} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(via_proxy_protocol(gw.addr, "203.0.113.2", &sse).await, 200);
    // One connection per client (max_connections_per_ip = 1), each counted on its own.
    let hold = |client: &'static str| {
        let request = ws(KEY_A);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            let header = format!("PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n", gw.addr.port());
            s.write_all(format!("{header}{request}").as_bytes())
                .await
                .unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf[9..12], b"101", "{client}");
            s
        }
    };
    let _c = hold("198.51.100.3").await;
    assert_eq!(
        via_proxy_protocol(gw.addr, "198.51.100.3", &ws(KEY_A)).await,
        429
    );
    let _d = hold("198.51.100.4").await;
    // A trusted proxy's connection without a header is dropped unanswered.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(support::DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("dropped");
    assert!(
        out.is_empty(),
        "no header, no answer: {}",
        String::from_utf8_lossy(&out)
    );
    // The probe through the balancer is answered.
    let probe = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(
        via_proxy_protocol(gw.addr, "203.0.113.9", &probe).await,
        200
    );
}

/// A JWT is accepted only for this service (`jwt_audience`, `jwt_issuer`, both required claims
/// when set), not before `nbf`, within a small leeway, and only with a symbols claim when
/// `jwt_require_symbols_claim` is on; an `exp` beyond the clock is refused, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_bound_to_this_service() {
    let gw = gateway(&format!(
        "[access]\nauth = \"jwt\"\njwt_hs256_secret = \"{HS_SECRET}\"\n\
         jwt_audience = \"quotes\"\njwt_issuer = \"https://auth.example\"\njwt_leeway_secs = 5\n\
         jwt_require_symbols_claim = true\n"
    ))
    .await;
    let now = unix_now();
    let good = json!({"aud": "quotes", "iss": "https://auth.example", "exp": now + 600, "symbols": ["AAPL"]});
    let with = |change: Value| {
        let mut claims = good.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        format!("/ws?token={}", hs256(claims))
    };
    assert_eq!(status(&gw, &with(json!({}))).await, 101);
    for (what, change) in [
        ("no aud", json!({"aud": null})),
        ("another service's aud", json!({"aud": "billing"})),
        ("no iss", json!({"iss": null})),
        ("another issuer", json!({"iss": "https://evil.example"})),
        ("not before a minute from now", json!({"nbf": now + 60})),
        ("expired past the leeway", json!({"exp": now - 30})),
        ("no symbols claim", json!({"symbols": null})),
        ("exp beyond the clock", json!({"exp": u64::MAX})),
        ("exp as a huge float", json!({"exp": 1e300})),
    ] {
        assert_eq!(status(&gw, &with(change)).await, 401, "{what}");
    }
    // Clock skew within the leeway is tolerated.
    assert_eq!(status(&gw, &with(json!({"nbf": now + 2}))).await, 101);
    assert_eq!(status(&gw, &with(json!({"exp": now - 1}))).await, 101);
    // The gateway is unharmed.
    let mut c = Client::connect(&format!("{}?{}", gw.url(), &with(json!({}))[4..])).await;
    c.subscribe(&["AAPL"]).await;
}

/// Every frame costs a token of the op bucket: a flood of pings (each answered by at most one pong
/// per flush) or of empty continuation frames is closed with 1008 like a flood of ops, and a client
/// beside it is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_continuation_floods_are_rate_limited_and_pongs_coalesced() {
    let gw = gateway("").await;
    let mut control = gw.client().await;
    control.subscribe(&["AAPL"]).await;

    let mut c = RawClient::connect(gw.addr).await;
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.extend_from_slice(&support::masked_frame(true, 0x9, b"p"));
    }
    c.send_bytes(&flood).await.unwrap();
    let (frames, close) = c.read_to_close().await;
    let pongs = frames.iter().filter(|f| f.opcode == 0xA).count();
    println!("2,000 pings in one write: {pongs} pongs, then {close:?}");
    assert!(pongs < 200, "pongs coalesced: {pongs}");
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");

    let mut c = RawClient::connect(gw.addr).await;
    c.send_frame(false, 0x1, b"{").await.unwrap();
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.extend_from_slice(&support::masked_frame(false, 0x0, b""));
    }
    c.send_bytes(&flood).await.unwrap();
    let (_, close) = c.read_to_close().await;
    assert_eq!(close.expect("a close frame").0, 1008);

    gw.push(tick("AAPL", 2, &[("bid", "1.01")])).await;
    assert_eq!(control.expect("update").await["bid"], "1.01");
}

/// Symbols follow the contract (1–32 printable ASCII characters other than space, `"`, `\` and
/// `,`): in a client's subscribe such a string is rejected alone (`invalid_symbol`, echoed cut to
/// 40 characters) and the op's other symbols are applied; a feed's tick for such a symbol is
/// rejected and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_outside_the_contract_are_refused_from_clients_and_feeds() {
    let gw = gateway("").await;
    let mut c = gw.client().await;
    for bad in [
        "A B",
        "A,B",
        "A\"B",
        "A\\B",
        " AAPL",
        "",
        "ÄPFEL",
        &"X".repeat(33),
        &"Z".repeat(41),
    ] {
        c.send(json!({"op": "subscribe", "symbols": ["MSFT", bad]}))
            .await;
        let ack = c.expect("ack").await;
        let echo: String = bad.chars().take(40).collect();
        assert_eq!(ack["symbols"], json!(["MSFT"]), "{bad:?}: {ack}");
        assert_eq!(
            ack["rejected"],
            json!([{"symbol": echo, "code": "invalid_symbol"}]),
            "{bad:?}"
        );
        assert_eq!(c.expect("snapshot").await["symbol"], "MSFT");
    }
    // Only MSFT was applied, once.
    assert_eq!(gw.metric("quotegw_subscriptions").await, 1.0);

    for bad in ["A,B", "SPACE BAR", &"Y".repeat(40)] {
        gw.push(tick(bad, 2, &[("bid", "1.00")])).await;
    }
    gw.wait_metric(
        "quotegw_ticks_rejected_total{feed=\"scripted\",reason=\"bad_symbol\"}",
        |v| v == 3.0,
    )
    .await;
    c.send(json!({"op": "symbols"})).await;
    assert_eq!(
        c.expect("symbols").await["symbols"],
        json!(["AAPL", "MSFT"])
    );
}

/// The HTTP poller follows no redirect to another host: reqwest would forward custom headers such
/// as `X-Api-Key` there. The poll fails (counted as `redirect`), the other host sees no request,
/// and the symbol goes stale rather than live on someone else's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_redirect_the_api_key_to_another_host() {
    let elsewhere = Upstream::start(r#"{"data":[{"sym":"X","b":"6.66","a":"6.67","v":1}]}"#).await;
    let up = Upstream::start(r#"{"data":[{"sym":"X","b":"1.00","a":"1.01","v":1}]}"#).await;
    let config = format!(
        r#"
[[feeds]]
kind = "http_poll"
name = "up"
base = "{}"
url = "{{base}}/v1/quotes?symbols={{symbols}}"
symbols = ["X"]
interval_ms = 50
timeout_ms = 300
stale_after_ms = 600
backoff_max_ms = 200
headers = {{ X-Api-Key = "secret-key-123" }}
[feeds.response]
shape = "array"
root = "data"
symbol = "sym"
fields = {{ bid = "b", ask = "a", volume = "v" }}
"#,
        up.base
    );
    let gw = start(&config, &[]);
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["X"]})).await;
    c.expect("ack").await;
    let snap = c.expect("snapshot").await;
    assert_eq!(snap["bid"], "1.00");
    up.set(Mode::Redirect(format!(
        "{}/v1/quotes?symbols=X",
        elsewhere.base
    )));
    let m = c.until(|m| m["type"] == "status").await;
    assert_eq!(m.last().unwrap()["status"], "stale");
    assert!(m.iter().all(|m| m.get("bid").is_none()), "{m:?}");
    gw.wait_metric(
        "quotegw_poll_errors_total{feed=\"up\",kind=\"redirect\"}",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        elsewhere
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the other host saw no request (and no key)"
    );
    // (Redirects within the upstream's own host are followed: `redirect_allowed`'s unit test.)
}
