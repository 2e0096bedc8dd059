//! The HTTP-poll feed through a fault proxy (connection reset, stall, half response): the gateway
//! keeps serving, marks the symbols stale, recovers, and never sends a price the upstream did not
//! serve. Prints how long each fault took to show as `stale` and to recover.

mod support;

use std::collections::HashSet;
use std::time::Instant;

use serde_json::json;
use support::fault_proxy::{Fault, FaultProxy};
use support::start;
use support::upstream::{until_served as until, Upstream};

const BODY: &str =
    r#"{"quotes":{"AAPL":{"bid":"189.12","ask":"189.14"},"MSFT":{"bid":"425.01","ask":"425.03"}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_stalls_and_half_responses_mark_stale_and_recover_without_a_wrong_price() {
    let up = Upstream::start(BODY).await;
    let upstream_addr = up.base.trim_start_matches("http://").parse().unwrap();
    let proxy = FaultProxy::start(upstream_addr).await;
    let gw = start(
        &format!(
            r#"
[[feeds]]
kind = "http_poll"
name = "vendor"
url = "http://{}/q?s={{symbols}}"
symbols = ["AAPL", "MSFT"]
interval_ms = 50
timeout_ms = 300
stale_after_ms = 600
backoff_max_ms = 300
[feeds.response]
shape = "by_symbol"
root = "quotes"
fields = {{ bid = "bid", ask = "ask" }}
"#,
            proxy.addr
        ),
        &[],
    );
    let served: HashSet<String> = ["189.12", "189.14", "425.01", "425.03"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["AAPL", "MSFT"]}))
        .await;
    c.expect("ack").await;
    until(&mut c, &served, |m| {
        m["type"] == "snapshot" && m["symbol"] == "MSFT"
    })
    .await;

    for (fault, kind) in [
        (Fault::Reset, "body"),
        (Fault::Stall, "timeout"),
        (Fault::HalfResponse, "body"),
    ] {
        let started = Instant::now();
        proxy.set(fault);
        until(&mut c, &served, |m| {
            m["type"] == "status" && m["status"] == "stale"
        })
        .await;
        let to_stale = started.elapsed();
        c.send(json!({"op": "ping", "id": 1})).await;
        until(&mut c, &served, |m| m["type"] == "pong").await;
        let recovering = Instant::now();
        proxy.set(Fault::None);
        until(&mut c, &served, |m| {
            m["type"] == "status" && m["status"] == "live"
        })
        .await;
        let errors = gw
            .metric(&format!(
                "quotegw_poll_errors_total{{feed=\"vendor\",kind=\"{kind}\"}}"
            ))
            .await
            + gw.metric("quotegw_poll_errors_total{feed=\"vendor\",kind=\"connect\"}")
                .await
            + gw.metric("quotegw_poll_errors_total{feed=\"vendor\",kind=\"decode\"}")
                .await;
        println!(
            "{fault:?}: stale after {to_stale:?}, live {:?} after the fault cleared; poll errors so far {errors}",
            recovering.elapsed()
        );
        assert!(errors >= 1.0);
    }
    // The quotes the client holds are still exactly what the upstream served.
    let mut fresh = gw.client().await;
    let snaps = fresh.subscribe(&["AAPL", "MSFT"]).await;
    assert_eq!(snaps[0]["bid"], "189.12");
    assert_eq!(snaps[1]["ask"], "425.03");
}
