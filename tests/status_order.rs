//! Status transitions under batching: a replayed file flips FLIP between halted, live and stale
//! 1–5 ms apart with updates between the flips, a dozen changes inside one batching window (16 ms). A client
//! that keeps up must see every transition, each in its place among the updates (PROTOCOL.md,
//! delta rule 4), with the gateway's default config and with one and two workers.
//!
//! Regression: the index kept only updates in its ring of recent changes, and a connection compared
//! only the final status, so a `halted` → `live` flip inside one frame window was never sent and a
//! status came after all the updates of its batch.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use support::start_with_workers;

/// Each symbol's ticks in file order: its optional `status`.
fn statuses(path: &Path) -> BTreeMap<String, Vec<Option<String>>> {
    let mut out: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let t: Value = serde_json::from_str(line).unwrap();
        let status = t.get("status").and_then(Value::as_str).map(str::to_string);
        out.entry(t["symbol"].as_str().unwrap().to_string())
            .or_default()
            .push(status);
    }
    out
}

/// What a client that keeps up must receive for a symbol after a snapshot at `seq` with `status`,
/// for one pass of the looped file: every tick is an update with the next `seq`, followed by a
/// status message when the tick changed the status.
fn expected(ticks: &[Option<String>], seq: u64, status: &str) -> Vec<String> {
    let mut current = status.to_string();
    let mut out = Vec::new();
    for j in seq + 1..=seq + ticks.len() as u64 {
        out.push(format!("update {j}"));
        if let Some(s) = &ticks[((j - 1) % ticks.len() as u64) as usize] {
            if *s != current {
                out.push(format!("status {s}"));
                current = s.clone();
            }
        }
    }
    out
}

async fn every_status_transition_reaches_a_client_that_keeps_up_in_order(workers: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/fixtures/status-flips.ndjson");
    let ticks = statuses(&path);
    // Looped, so the check does not depend on when the client subscribes: after its snapshot it
    // must get one whole pass of the file exactly.
    let gw = start_with_workers(
        workers,
        &format!(
            "[[feeds]]\nkind = \"replay\"\nname = \"flips\"\npath = \"{}\"\nloop = true\n",
            path.display()
        ),
        &[],
    );
    gw.wait_metric("quotegw_ticks_received_total{feed=\"flips\"}", |v| {
        v >= 40.0
    })
    .await;
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["FLIP", "CALM"]}))
        .await;
    c.expect("ack").await;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while want.len() < ticks.len()
        || want
            .iter()
            .any(|(s, w)| got.get(s).map_or(0, Vec::len) < w.len())
    {
        let m = c.next().await;
        let symbol = m["symbol"].as_str().expect("a quote message").to_string();
        match m["type"].as_str().unwrap() {
            "snapshot" => {
                let seq = m["seq"].as_u64().unwrap();
                let status = m["status"].as_str().unwrap();
                assert!(!want.contains_key(&symbol), "one snapshot: {m}");
                want.insert(symbol.clone(), expected(&ticks[&symbol], seq, status));
            }
            "update" => {
                assert!(m.get("conflated").is_none(), "a client that keeps up: {m}");
                got.entry(symbol)
                    .or_default()
                    .push(format!("update {}", m["seq"]));
            }
            "status" => {
                let status = m["status"].as_str().unwrap();
                got.entry(symbol)
                    .or_default()
                    .push(format!("status {status}"));
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    for (symbol, w) in &want {
        assert_eq!(&got[symbol][..w.len()], &w[..], "{symbol}");
    }
    let flips = want["FLIP"]
        .iter()
        .filter(|m| m.starts_with("status"))
        .count();
    assert_eq!(
        flips, 10,
        "one pass of the file changes FLIP's status 10 times"
    );
}

crate::with_one_and_two_workers!(every_status_transition_reaches_a_client_that_keeps_up_in_order);
