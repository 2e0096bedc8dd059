//! A session blocked on a full socket (its client stopped reading) still sees shutdown and token
//! expiry: it leaves the index at once and closes with 1001 or 1008 (after the unsent bytes, if the
//! socket takes them within the close grace; with a reset otherwise), instead of waiting out
//! `slow_consumer_timeout_ms` (set to 10 minutes here) or being dropped by actix without a close.
//!
//! Regression: the wait for the socket watched only the slow-consumer timeout.

mod support;

use support::WS_CONNECTIONS;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use support::{start_with_workers, RawClient, TestGateway};

const HS_SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
const FEED: &str = "[[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 500\nticks_per_second = 2000\nseed = 3\n";
const LIMITS: &str = "[limits]\nslow_consumer_timeout_ms = 600000\n";

/// Connects a client that never reads (with `?token=` when given), subscribes it to every symbol
/// over and over (each subscribe re-sends 500 snapshots) until its session waits on the full socket.
async fn stalled_client(gw: &TestGateway, token: Option<&str>) -> RawClient {
    gw.wait_metric("quotegw_ticks_received_total{feed=\"sim\"}", |v| {
        v >= 5000.0
    })
    .await;
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    let mut lister = support::Client::connect(&format!("{}{query}", gw.url())).await;
    lister.send(json!({"op": "symbols"})).await;
    let all = lister.expect("symbols").await["symbols"].clone();
    lister.close().await;
    let mut c = RawClient::connect_unread(gw.addr, &format!("/ws{query}")).await;
    let op = json!({"op": "subscribe", "symbols": all}).to_string();
    // 90 × ~70 KB of snapshots: far more than the kernel's buffers on both sides hold.
    for _ in 0..90 {
        c.send_text(&op).await;
    }
    gw.wait_metric("quotegw_connections_stalled", |v| v == 1.0)
        .await;
    assert_eq!(gw.metric("quotegw_subscriptions").await, 500.0);
    c
}

/// Reads what the gateway had sent: it ends with the close frame, or with a reset when the close
/// could not leave within its grace (this client was not reading then).
async fn read_to_end(c: &mut RawClient, code: u16) {
    let (_, close) = c.read_to_close().await;
    if let Some((got, reason)) = close {
        assert_eq!(got, code, "{reason}");
    }
}

async fn shutdown_reaches_a_session_blocked_on_a_full_socket(workers: usize) {
    let gw = start_with_workers(workers, &format!("{LIMITS}{FEED}"), &[]);
    let mut c = stalled_client(&gw, None).await;
    let metrics = gw.gw.metrics().clone();
    let TestGateway { gw: running, .. } = gw;
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .unwrap()
        .expect("the gateway stops");
    assert_eq!(
        metrics.closes.with_label_values(&["1001"]).get(),
        1,
        "the blocked session took the 1001 close path (not dropped by actix)"
    );
    assert_eq!(metrics.subscriptions.get(), 0);
    assert_eq!(metrics.connections.with_label_values(&["ws"]).get(), 0);
    assert_eq!(metrics.connections_stalled.get(), 0);
    read_to_end(&mut c, 1001).await;
}

async fn token_expiry_reaches_a_session_blocked_on_a_full_socket(workers: usize) {
    let gw = start_with_workers(
        workers,
        &format!("[access]\nauth = \"jwt\"\njwt_hs256_secret = \"{HS_SECRET}\"\n{LIMITS}{FEED}"),
        &[],
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Long enough to fill the socket first (checked below), short against the 10-minute timeout.
    let exp = now + 10;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "blocked", "exp": exp}),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = stalled_client(&gw, Some(&token)).await;
    let stalled_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        stalled_at < exp,
        "the socket filled before the token expired"
    );
    gw.wait_metric("quotegw_closes_total{code=\"1008\"}", |v| v == 1.0)
        .await;
    gw.wait_metric("quotegw_subscriptions", |v| v == 0.0).await;
    gw.wait_metric("quotegw_connections_stalled", |v| v == 0.0)
        .await;
    read_to_end(&mut c, 1008).await;
    gw.wait_metric(WS_CONNECTIONS, |v| v == 0.0).await;
}

crate::with_one_and_two_workers!(
    shutdown_reaches_a_session_blocked_on_a_full_socket,
    token_expiry_reaches_a_session_blocked_on_a_full_socket,
);
