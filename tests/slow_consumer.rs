//! A client that stops reading while ticks flow at 20,000/s: the gateway's memory stays bounded, a
//! fast client beside it keeps receiving, and the slow one is closed with 4008 (or, if it never
//! reads again, its socket is torn down).
//!
//! Figures (RSS, the fast client's latency) are printed, not asserted against time: run with
//! `cargo test --test slow_consumer -- --nocapture` to see them.

mod support;

use support::WS_CONNECTIONS;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use support::{now_ms, percentile, rss_bytes, start_with_workers, Client, Closed};

const TICKS_PER_SECOND: u32 = 20_000;

/// The two variants measure this process's RSS, so they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn a_client_that_stops_reading_is_closed_with_4008_and_costs_bounded_memory(workers: usize) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let gw = start_with_workers(
        workers,
        &format!(
            "[limits]\nslow_consumer_timeout_ms = 1000\n\
             [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 500\nticks_per_second = {TICKS_PER_SECOND}\nseed = 1\n"
        ),
        &[],
    );
    gw.wait_metric("quotegw_ticks_received_total{feed=\"sim\"}", |v| v >= 500.0)
        .await;

    // The slow clients subscribe to every symbol (the most data), read their snapshots, then stop.
    let mut lister = gw.client().await;
    lister.send(json!({"op": "symbols"})).await;
    let all = lister.expect("symbols").await["symbols"].clone();
    drop(lister);
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = gw.client().await;
        c.send(json!({"op": "subscribe", "symbols": all})).await;
        c.expect("ack").await;
        for _ in 0..500 {
            c.next().await;
        }
        slow.push(c);
    }
    let mut fast = gw.client().await;
    fast.send(json!({"op": "subscribe", "symbols": ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL"]}))
        .await;
    fast.expect("ack").await;

    let rss_start = rss_bytes();
    let mut rss_max = rss_start;
    let mut latencies_ms = Vec::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut updates = 0u64;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    // Read the fast client until the gateway has closed both slow ones.
    loop {
        tokio::select! {
            m = fast.next() => {
                let sym = m["symbol"].as_str().unwrap().to_string();
                let seq = m["seq"].as_u64().unwrap();
                if let Some(prev) = last_seq.insert(sym, seq) {
                    assert!(seq > prev, "seq only grows");
                }
                if m["type"] == "update" {
                    updates += 1;
                    latencies_ms.push((now_ms() - m["ts"].as_i64().unwrap()) as f64);
                }
            }
            _ = poll.tick() => {
                rss_max = rss_max.max(rss_bytes());
                if gw.metric("quotegw_slow_consumer_closes_total").await >= 2.0 {
                    break;
                }
            }
        }
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "slow consumer: RSS at start {:.1} MiB, max while blocked {:.1} MiB (+{:.1} MiB); fast client: {} updates, \
         tick-to-client latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        mib(rss_start),
        mib(rss_max),
        mib(rss_max - rss_start),
        updates,
        percentile(&mut latencies_ms, 50.0),
        percentile(&mut latencies_ms, 99.0),
        percentile(&mut latencies_ms, 100.0),
    );
    assert!(
        updates > 100,
        "the fast client kept receiving: {updates} updates"
    );
    // Conflation bounds the gateway by subscribed symbols, not by ticks: 20,000 ticks/s into two
    // blocked 500-symbol connections for over a second must not grow the process materially.
    assert!(
        rss_max - rss_start < 64 * 1024 * 1024,
        "RSS grew by {:.1} MiB",
        mib(rss_max - rss_start)
    );

    // The fast client goes on reading from here on: one that stopped for the seconds below would
    // be a slow consumer too (its kernel buffers hold well under a second of this feed).
    // The first slow client reads again: it gets what was buffered, then the 4008 close.
    let (code, reason) = while_reading(&mut fast, slow[0].expect_close()).await;
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));

    // The second never reads: after the close grace the gateway tears the socket down, its place in
    // max_connections is freed, and reading it now ends without a close frame.
    while_reading(&mut fast, gw.wait_metric(WS_CONNECTIONS, |v| v == 1.0)).await;
    let mut c: Client = slow.pop().unwrap();
    let end = while_reading(&mut fast, async {
        loop {
            match c.try_next().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    })
    .await;
    assert!(
        matches!(end, Closed::NoCloseFrame(_)),
        "socket torn down, got {end:?}"
    );
    assert_eq!(gw.metric("quotegw_closes_total{code=\"4008\"}").await, 2.0);

    // And the fast client is still served: an update newer than what it had for that symbol.
    let m = fast
        .until(|m| {
            let seen = m["symbol"].as_str().and_then(|s| last_seq.get(s)).copied();
            m["type"] == "update" && m["seq"].as_u64() > seen
        })
        .await;
    let last = m.last().expect("until returns the match last");
    assert_eq!(last["type"], "update", "{last}");
}

/// Runs `work` while reading (and dropping) what `fast` is sent.
async fn while_reading<T>(fast: &mut Client, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = fast.next() => {}
        }
    }
}

crate::with_one_and_two_workers!(
    a_client_that_stops_reading_is_closed_with_4008_and_costs_bounded_memory
);
