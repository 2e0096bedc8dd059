//! `max_hz` is honoured: a hot symbol ticking ~1,000 times a second reaches a `max_hz = 5` client at
//! most ~5 times a second, each update carrying the latest values and the merged count.
//!
//! The bound is an upper one with slack (a slow machine delivers fewer updates, never more), so the
//! test does not depend on how fast the machine is.

mod support;

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
