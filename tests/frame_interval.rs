//! `limits.min_frame_interval_ms`: after a frame, a connection's updates wait out the interval and
//! leave together in the next one; none is dropped or merged for it.
//!
//! The frame count is bounded from above by the test's own clock (every frame starts at least one
//! interval after the one before, so a slow machine only makes the bound looser), and every update
//! is checked by `seq`: nothing about the test depends on how fast the machine is.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use support::{start, tick, DEADLINE};
use tokio_tungstenite::tungstenite::Message;

const INTERVAL_MS: u64 = 100;
/// Ticks pushed, 20 ms apart: ~5 per interval, far under the 64 recent updates the index keeps per
/// symbol, so even a gateway thread stalled for a second is not conflated.
const TICKS: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_symbol_leaves_in_one_frame_per_interval_with_every_update() {
    let gw = start(
        &format!("[limits]\nmin_frame_interval_ms = {INTERVAL_MS}\n"),
        &["HOT"],
    );
    gw.push(tick("HOT", 1, &[("bid", "1.00")])).await;

    let mut client = gw.client().await;
    let started = Instant::now();
    let snapshot = client.subscribe(&["HOT"]).await.remove(0);
    let first_seq = snapshot["seq"].as_u64().expect("snapshot seq");

    let pusher = gw.push_paced("HOT", TICKS, Duration::from_millis(20));

    let last_wanted = first_seq + TICKS as u64;
    let mut last_seq = first_seq;
    let (mut frames, mut updates) = (0u64, 0u64);
    while last_seq < last_wanted {
        let msg = tokio::time::timeout(DEADLINE, client.ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("connection open")
            .expect("a frame");
        let Message::Text(text) = msg else {
            continue; // pings
        };
        let Value::Array(msgs) = serde_json::from_str(&text).expect("frames are JSON") else {
            panic!("a frame is a JSON array: {text}");
        };
        frames += 1;
        for m in msgs {
            assert_eq!(m["type"], "update", "{m}");
            assert!(m.get("conflated").is_none(), "nothing merged: {m}");
            let seq = m["seq"].as_u64().expect("seq");
            assert_eq!(seq, last_seq + 1, "every update, in order");
            last_seq = seq;
            updates += 1;
        }
    }
    let elapsed = started.elapsed();
    pusher.await.expect("pusher");

    // The snapshot's frame started no earlier than `started`, and each update frame at least one
    // interval after the previous frame.
    let bound = elapsed.as_millis() as u64 / INTERVAL_MS;
    println!(
        "{updates} updates in {frames} frames over {} ms (at most {bound} frames allowed)",
        elapsed.as_millis()
    );
    assert_eq!(updates, TICKS as u64);
    assert!(
        frames <= bound,
        "{frames} frames in {} ms with a {INTERVAL_MS} ms interval",
        elapsed.as_millis()
    );
}
