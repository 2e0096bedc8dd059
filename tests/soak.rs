//! A bounded soak: the simulated feed at 2,000 ticks/s while clients connect, subscribe, unsubscribe
//! and leave (politely or by dropping the TCP connection) for `QUOTEGW_SOAK_SECS` (default 120 s in
//! the test run, half of it against a gateway with two workers and half with one; the documented long mode is `QUOTEGW_SOAK_SECS=1800 cargo test --release --test
//! soak -- --nocapture`). Every message is checked as it arrives (`seq` never goes backwards, no
//! update before its snapshot); at the end file descriptors and memory are back to their baseline
//! and nothing panicked.

mod support;

use support::WS_CONNECTIONS;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg32;
use serde_json::json;
use support::{fd_count, rss_bytes, start_with_workers, Client, Closed};

const CLIENTS: usize = 40;
/// Memory kept by the allocator for reuse is not a leak; a leak grows with the churn.
const RSS_SLACK: u64 = 32 * 1024 * 1024;

#[derive(Default)]
struct Totals {
    messages: AtomicU64,
    connections: AtomicU64,
    regressions: AtomicU64,
    early_updates: AtomicU64,
}

/// One client's life: a few subscribe/unsubscribe rounds, reading and checking throughout.
async fn life(url: String, universe: Arc<Vec<String>>, seed: u64, totals: Arc<Totals>) {
    let mut rng = Pcg32::seed_from_u64(seed);
    let mut c = Client::connect(&url).await;
    totals.connections.fetch_add(1, Ordering::Relaxed);
    let mut last: HashMap<String, u64> = HashMap::new();
    let rounds = 1 + rng.next_u32() % 4;
    for _ in 0..rounds {
        let n = 1 + (rng.next_u32() % 20) as usize;
        let picks: Vec<&str> = (0..n)
            .map(|_| universe[(rng.next_u32() as usize) % universe.len()].as_str())
            .collect();
        let op = if rng.next_u32() % 4 == 0 {
            "unsubscribe"
        } else {
            "subscribe"
        };
        c.send(json!({"op": op, "symbols": picks})).await;
        let until = Instant::now() + Duration::from_millis(200 + u64::from(rng.next_u32() % 800));
        while Instant::now() < until {
            let m = match tokio::time::timeout(Duration::from_millis(50), c.try_next()).await {
                Err(_) => continue,
                Ok(Ok(m)) => m,
                Ok(Err(Closed::Code(code, reason))) => {
                    panic!("closed by the gateway: {code} {reason}")
                }
                Ok(Err(e)) => panic!("connection lost: {e:?}"),
            };
            totals.messages.fetch_add(1, Ordering::Relaxed);
            let (Some(symbol), Some(seq)) = (m["symbol"].as_str(), m["seq"].as_u64()) else {
                if m["type"] == "ack" && m["op"] == "unsubscribe" {
                    for s in m["symbols"].as_array().unwrap() {
                        last.remove(s.as_str().unwrap());
                    }
                }
                continue;
            };
            match m["type"].as_str() {
                Some("snapshot") => {
                    if last.get(symbol).is_some_and(|&p| seq < p) {
                        totals.regressions.fetch_add(1, Ordering::Relaxed);
                    }
                    last.insert(symbol.to_string(), seq);
                }
                Some("update") => match last.get(symbol) {
                    None => {
                        totals.early_updates.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(&p) if seq <= p => {
                        totals.regressions.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {
                        last.insert(symbol.to_string(), seq);
                    }
                },
                _ => {}
            }
        }
    }
    // Leave politely half the time; otherwise just drop the TCP connection.
    if rng.next_u32() % 2 == 0 {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_for_minutes_leaves_no_leak_no_regression_no_panic() {
    let secs: u64 = std::env::var("QUOTEGW_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let panics = Arc::new(AtomicU64::new(0));
    let hook_panics = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook_panics.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));
    // Two workers (the default on this 2-core machine: sessions and fan-out cross threads), then
    // one; one after the other, since file descriptors and RSS are measured for the whole process.
    for workers in [2, 1] {
        churn(workers, secs / 2).await;
        assert_eq!(panics.load(Ordering::Relaxed), 0, "nothing panicked");
    }
}

async fn churn(workers: usize, secs: u64) {
    let gw = start_with_workers(
        workers,
        "[[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 200\nticks_per_second = 2000\n",
        &[],
    );
    gw.wait_metric("quotegw_ticks_received_total{feed=\"sim\"}", |v| v > 1000.0)
        .await;
    let universe = {
        let mut c = gw.client().await;
        c.send(json!({"op": "symbols"})).await;
        let list = c.expect("symbols").await;
        c.close().await;
        Arc::new(
            list["symbols"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        )
    };
    gw.wait_metric(WS_CONNECTIONS, |v| v == 0.0).await;
    let totals = Arc::new(Totals::default());
    let (fds_before, rss_before) = (fd_count(), rss_bytes());
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut seed = 0;
    let mut live = tokio::task::JoinSet::new();
    while started.elapsed() < Duration::from_secs(secs) {
        while live.len() < CLIENTS {
            seed += 1;
            live.spawn(life(gw.url(), universe.clone(), seed, totals.clone()));
        }
        if let Some(done) = live.join_next().await {
            done.expect("a client's life ends without a panic");
        }
        if samples.len() as u64 <= started.elapsed().as_secs() / 10 {
            samples.push((started.elapsed().as_secs(), fd_count(), rss_bytes()));
        }
    }
    while let Some(done) = live.join_next().await {
        done.expect("a client's life ends without a panic");
    }
    gw.wait_metric(WS_CONNECTIONS, |v| v == 0.0).await;
    gw.wait_metric("quotegw_subscriptions", |v| v == 0.0).await;
    let deadline = Instant::now() + support::DEADLINE;
    while fd_count() > fds_before + 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (fds_after, rss_after) = (fd_count(), rss_bytes());
    for (t, fds, rss) in &samples {
        println!(
            "t={t:>4}s fds {fds:>5} RSS {:.1} MiB",
            *rss as f64 / 1048576.0
        );
    }
    println!(
        "soak {secs}s with {workers} worker(s): {} connections, {} messages checked; fds {fds_before} → {fds_after}, RSS {:.1} → {:.1} MiB",
        totals.connections.load(Ordering::Relaxed),
        totals.messages.load(Ordering::Relaxed),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert_eq!(
        totals.regressions.load(Ordering::Relaxed),
        0,
        "seq never goes backwards"
    );
    assert_eq!(
        totals.early_updates.load(Ordering::Relaxed),
        0,
        "no update before its snapshot"
    );
    assert!(
        fds_after <= fds_before + 4,
        "fds {fds_before} → {fds_after}"
    );
    assert!(
        rss_after <= rss_before + RSS_SLACK,
        "RSS {rss_before} → {rss_after}"
    );
    assert!(
        totals.connections.load(Ordering::Relaxed) > CLIENTS as u64,
        "there was churn"
    );
    tokio::task::spawn_blocking(move || gw.gw.shutdown())
        .await
        .expect("the shutdown thread ends")
        .expect("the gateway stops cleanly");
}
