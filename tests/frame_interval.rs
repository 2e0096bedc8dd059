//! `limits.min_frame_interval_ms`: after a frame, a connection's updates wait out the interval and
//! leave together in the next one; none is dropped or merged for it. With one worker and with two
//! (each worker's shard holds its own connections' windows and writes them when they end).
//!
//! The frame count is bounded from above by the test's own clock (every frame starts at least one
//! interval after the one before, so a slow machine only makes the bound looser), and every update
//! is checked by `seq`: nothing about the test depends on how fast the machine is.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use support::{start_with_workers, tick, Client, DEADLINE};
use tokio_tungstenite::tungstenite::Message;

const INTERVAL_MS: u64 = 100;
/// Ticks pushed, 20 ms apart: ~5 per interval, far under the 64 recent updates the index keeps per
/// symbol, so even a gateway thread stalled for a second is not conflated.
const TICKS: i64 = 100;

/// Clients on the hot symbol: with two workers, some of them on each.
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_symbol_leaves_in_one_frame_per_interval_with_every_update() {
    every_update_in_one_frame_per_interval(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_symbol_leaves_in_one_frame_per_interval_with_every_update_two_workers() {
    every_update_in_one_frame_per_interval(2).await;
}

async fn every_update_in_one_frame_per_interval(workers: usize) {
    let gw = start_with_workers(
        workers,
        &format!("[limits]\nmin_frame_interval_ms = {INTERVAL_MS}\n"),
        &["HOT"],
    );
    gw.push(tick("HOT", 1, &[("bid", "1.00")])).await;

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = gw.client().await;
        let started = Instant::now();
        let snapshot = client.subscribe(&["HOT"]).await.remove(0);
        let first_seq = snapshot["seq"].as_u64().expect("snapshot seq");
        clients.push(read_updates(client, started, first_seq));
    }
    let pusher = gw.push_paced("HOT", TICKS, Duration::from_millis(20));
    let counts = futures_util::future::join_all(clients).await;
    pusher.await.expect("pusher");

    for (frames, updates, elapsed) in counts {
        // The snapshot's frame started no earlier than `started`, and each update frame at least
        // one interval after the previous frame.
        let bound = elapsed.as_millis() as u64 / INTERVAL_MS;
        println!(
            "{workers} worker(s): {updates} updates in {frames} frames over {} ms (at most {bound} frames allowed)",
            elapsed.as_millis()
        );
        assert_eq!(updates, TICKS as u64);
        assert!(
            frames <= bound,
            "{frames} frames in {} ms with a {INTERVAL_MS} ms interval",
            elapsed.as_millis()
        );
    }
}

/// Reads `client`'s frames until the last tick's update: (frames, updates, time since `started`).
/// Every update must come, in order, none merged.
async fn read_updates(
    mut client: Client,
    started: Instant,
    first_seq: u64,
) -> (u64, u64, Duration) {
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
    (frames, updates, started.elapsed())
}
