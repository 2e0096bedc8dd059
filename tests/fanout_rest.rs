//! `limits.fanout_busy_percent`: a worker whose fan-out rests after long passes (so that its frames
//! grow under load) still gives every client every update, in order, none merged, with one worker
//! and with two.
//!
//! At 10 % a pass over 200 connections (hundreds of microseconds at least: one send each) is
//! followed by a rest at least 9 × as long (more when the test's gateways' workers outnumber the
//! cores, which then split the share), so rests happen on any machine; the test checks they did
//! (`quotegw_fanout_rest_seconds_total`) and that no update was lost to them. Nothing depends on
//! how fast the machine is: the ticks are paced at 1 ms, far inside the 250 ms the index keeps
//! every change for clients that are behind.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use support::{start_with_workers, tick};

const CLIENTS: usize = 200;
const TICKS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_fan_out_loses_nothing_with_one_worker() {
    every_client_gets_every_update_while_the_fan_out_rests(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_fan_out_loses_nothing_with_two_workers() {
    every_client_gets_every_update_while_the_fan_out_rests(2).await;
}

async fn every_client_gets_every_update_while_the_fan_out_rests(workers: usize) {
    let gw = start_with_workers(workers, "[limits]\nfanout_busy_percent = 10\n", &["HOT"]);
    gw.push(tick("HOT", 1, &[("bid", "1.00")])).await;

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = gw.client().await;
        let snapshot = c.subscribe(&["HOT"]).await.remove(0);
        assert_eq!(snapshot["seq"], 1, "{snapshot}");
        clients.push(c);
    }

    let pusher = gw.push_paced("HOT", TICKS as i64, Duration::from_millis(1));

    let readers = clients
        .into_iter()
        .enumerate()
        .map(|(n, mut c)| async move {
            let (mut seq, mut frames) = (1u64, 0u64);
            while seq < 1 + TICKS {
                let text = c.next_text().await;
                let msgs: Vec<Value> =
                    serde_json::from_str(&text).expect("a frame is a JSON array");
                frames += 1;
                for m in msgs {
                    assert_eq!(m["type"], "update", "client {n}: {m}");
                    assert!(m.get("conflated").is_none(), "client {n}: merged: {m}");
                    assert_eq!(m["seq"], seq + 1, "client {n}: every update, in order: {m}");
                    seq += 1;
                }
            }
            frames
        });
    let frames: u64 = join_all(readers).await.into_iter().sum();
    pusher.await.expect("pusher");

    let updates = CLIENTS as u64 * TICKS;
    println!("{updates} updates in {frames} frames, {workers} worker(s)");
    assert!(
        frames < updates,
        "frames carried more than one update: {frames}"
    );
    let rested = gw.metric("quotegw_fanout_rest_seconds_total").await;
    assert!(rested > 0.0, "the fan-out rested ({rested} s)");
}
