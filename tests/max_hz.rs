//! `max_hz` is honoured: a hot symbol ticking ~1,000 times a second reaches a `max_hz = 5` client at
//! most ~5 times a second, each update carrying the latest values and the merged count.
//!
//! The bound is an upper one with slack (a slow machine delivers fewer updates, never more), so the
//! test does not depend on how fast the machine is.

mod support;

use support::WS_CONNECTIONS;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{start, tick};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hz_caps_the_update_rate_and_conflates() {
    let gw = start("", &["HOT"]);
    gw.push(tick("HOT", 1, &[("bid", "1.00")])).await;
    let ticks = gw.ticks.clone();
    let pusher = tokio::spawn(async move {
        let mut i: i64 = 0;
        let mut interval = tokio::time::interval(Duration::from_millis(1));
        loop {
            interval.tick().await;
            i += 1;
            let bid = format!("{}.{:02}", 1 + i / 100, i % 100);
            if ticks
                .send(tick("HOT", 1 + i, &[("bid", &bid)]))
                .await
                .is_err()
            {
                return;
            }
        }
    });

    let mut paced = gw.client().await;
    paced
        .send(json!({"op": "subscribe", "symbols": ["HOT"], "max_hz": 5}))
        .await;
    paced.expect("ack").await;
    paced.expect("snapshot").await;
    let mut unpaced = gw.client().await;
    unpaced
        .send(json!({"op": "subscribe", "symbols": ["HOT"]}))
        .await;
    unpaced.expect("ack").await;
    unpaced.expect("snapshot").await;

    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut paced_updates = 0u32;
    let mut merged = 0u64;
    while started.elapsed() < window {
        if let Ok(m) =
            tokio::time::timeout(window.saturating_sub(started.elapsed()), paced.next()).await
        {
            assert_eq!(m["type"], "update");
            paced_updates += 1;
            merged += m.get("conflated").map_or(0, |c| c.as_u64().unwrap());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Stop the feed before draining, or the unpaced client never falls quiet.
    pusher.abort();
    let mut unpaced_updates = 0u32;
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(100), unpaced.next()).await {
        assert_eq!(m["type"], "update");
        unpaced_updates += 1;
    }
    println!(
        "max_hz=5 over {elapsed:.2} s: {paced_updates} updates standing for {merged} merged ticks; \
         the unpaced client got {unpaced_updates} updates"
    );
    let allowed = (5.0 * elapsed).ceil() as u32 + 1;
    assert!(
        paced_updates <= allowed,
        "{paced_updates} updates in {elapsed:.2} s with max_hz 5"
    );
    assert!(paced_updates >= 1, "paced updates still flow");
    assert!(
        merged > 0,
        "ticks in between were conflated, not dropped silently"
    );
    assert!(
        unpaced_updates > paced_updates,
        "without max_hz the same client gets more"
    );
}

/// Regression (a `max_hz` of 1e-300 panicked the session, which then leaked its subscriptions):
/// `max_hz` outside 0.001..=1000 is a `bad_request` naming the range, the connection and its
/// subscriptions stay as they were, and once every client has gone the gauges are back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hz_out_of_range_is_a_bad_request_and_never_kills_the_session() {
    let gw = start("", &["AAPL", "MSFT", "NVDA"]);
    for (i, s) in ["AAPL", "MSFT", "NVDA"].iter().enumerate() {
        gw.push(tick(s, 1, &[("bid", &format!("{}.00", i + 1))]))
            .await;
    }
    let mut clients = Vec::new();
    for (i, bad) in ["1e-300", "1e-10", "0.0009", "1000.001", "1e308"]
        .iter()
        .enumerate()
    {
        let mut c = gw.client().await;
        c.subscribe(&["AAPL", "MSFT", "NVDA"]).await;
        let op = format!(r#"{{"op":"subscribe","id":{i},"symbols":["AAPL"],"max_hz":{bad}}}"#);
        c.send_text(&op).await;
        let e = c.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_u64()),
            (Some("bad_request"), Some(i as u64)),
            "{e}"
        );
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("0.001") && message.contains("1000"),
            "{message}"
        );
        // The session is alive and keeps its subscriptions: a tick still reaches it.
        c.sync("alive").await;
        clients.push(c);
    }
    assert_eq!(gw.metric("quotegw_subscriptions").await, 15.0);
    gw.push(tick("AAPL", 2, &[("bid", "1.01")])).await;
    for c in &mut clients {
        let u = c.until(|m| m["type"] == "update").await;
        assert_eq!(u.last().unwrap()["bid"], "1.01");
    }
    // The extremes of the range are accepted.
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["MSFT"], "max_hz": 0.001}))
        .await;
    c.expect("ack").await;
    c.expect("snapshot").await;
    c.send(json!({"op": "subscribe", "symbols": ["NVDA"], "max_hz": 1000}))
        .await;
    c.expect("ack").await;
    c.expect("snapshot").await;
    clients.push(c);
    for c in clients {
        c.close().await;
    }
    gw.wait_metric(WS_CONNECTIONS, |v| v == 0.0).await;
    assert_eq!(gw.metric("quotegw_subscriptions").await, 0.0);
}
