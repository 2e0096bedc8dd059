//! The subscription life cycle of PROTOCOL.md against a real gateway and a real WebSocket client:
//! ack, snapshot first, minimal updates that reproduce the gateway's quote, unsubscribe, re-subscribe,
//! the `symbols` and `ping` ops, and exact decimals end to end.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::{start_with_workers, tick};

/// A client-side quote: field → JSON text, built only from messages.
#[derive(Debug, Default, Clone, PartialEq)]
struct View {
    seq: u64,
    fields: BTreeMap<String, String>,
}

impl View {
    fn apply(&mut self, m: &Value) {
        for (k, v) in m.as_object().unwrap() {
            match k.as_str() {
                "type" | "symbol" | "conflated" => {}
                "seq" => self.seq = v.as_u64().unwrap(),
                _ => {
                    self.fields.insert(k.clone(), v.to_string());
                }
            }
        }
    }
}

async fn subscribe_ack_snapshot_updates_reproduce_the_quote(workers: usize) {
    let gw = start_with_workers(workers, "", &["AAPL", "MSFT"]);
    gw.push(tick(
        "AAPL",
        1,
        &[
            ("bid", "189.12"),
            ("ask", "189.14"),
            ("bid_size", "300"),
            ("ask_size", "500"),
        ],
    ))
    .await;
    gw.push(tick("MSFT", 1, &[("bid", "425.00"), ("ask", "425.02")]))
        .await;

    let mut a = gw.client().await;
    a.send(json!({"op": "subscribe", "id": 1, "symbols": ["aapl", "MSFT", "ZZZZ", "AAPL"]}))
        .await;
    let ack = a.expect("ack").await;
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["op"], "subscribe");
    assert_eq!(
        ack["symbols"],
        json!(["AAPL", "MSFT"]),
        "upper-cased and de-duplicated"
    );
    assert_eq!(
        ack["rejected"],
        json!([{"symbol": "ZZZZ", "code": "unknown_symbol"}])
    );

    let mut views: BTreeMap<String, View> = BTreeMap::new();
    for _ in 0..2 {
        let s = a.expect("snapshot").await;
        for f in [
            "seq",
            "ts",
            "bid",
            "ask",
            "bid_size",
            "ask_size",
            "last",
            "last_size",
            "volume",
            "status",
        ] {
            assert!(
                s.get(f).is_some(),
                "snapshot has every field: {f} missing in {s}"
            );
        }
        assert_eq!(s["status"], "live");
        let mut v = View::default();
        v.apply(&s);
        views.insert(s["symbol"].as_str().unwrap().to_string(), v);
    }
    assert_eq!(views["AAPL"].fields["bid"], "\"189.12\"");
    assert_eq!(views["AAPL"].fields["last"], "null");

    // A deterministic pseudo-random walk of partial ticks on both symbols.
    let mut x: u64 = 12345;
    let mut seqs = BTreeMap::from([("AAPL", 1u64), ("MSFT", 1u64)]);
    for i in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let sym = if x >> 63 == 0 { "AAPL" } else { "MSFT" };
        let price = format!("{}.{:02}", 100 + (x >> 40) % 50, (x >> 20) % 100);
        let size = format!("{}", 100 * (1 + (x >> 10) % 9));
        let fields: Vec<(&str, &str)> = match (x >> 8) % 4 {
            0 => vec![("bid", &price)],
            1 => vec![("ask", &price), ("ask_size", &size)],
            2 => vec![("last", &price), ("last_size", &size), ("volume", "1000")],
            _ => vec![("bid_size", &size)],
        };
        gw.push(tick(sym, 2 + i, &fields)).await;
        *seqs.get_mut(sym).unwrap() += 1;
    }

    // Read until both symbols reached their last seq, applying updates in order.
    while views.iter().any(|(s, v)| v.seq < seqs[s.as_str()]) {
        let m = a.next().await;
        assert_eq!(m["type"], "update", "only updates now: {m}");
        let v = views.get_mut(m["symbol"].as_str().unwrap()).unwrap();
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > v.seq, "seq strictly increasing");
        let conflated = m.get("conflated").map_or(0, |c| c.as_u64().unwrap());
        assert_eq!(
            seq - v.seq - 1,
            conflated,
            "conflated counts exactly the merged ticks"
        );
        v.apply(&m);
    }

    // A fresh subscriber's snapshot at the same seq equals what the updates built.
    let mut b = gw.client().await;
    b.send(json!({"op": "subscribe", "symbols": ["AAPL", "MSFT"]}))
        .await;
    let ack = b.expect("ack").await;
    assert!(ack.get("id").is_none(), "no id given, none echoed");
    for _ in 0..2 {
        let s = b.expect("snapshot").await;
        let mut fresh = View::default();
        fresh.apply(&s);
        assert_eq!(&fresh, &views[s["symbol"].as_str().unwrap()]);
    }
}

async fn unsubscribe_stops_updates_after_its_ack_and_resubscribe_resends_the_snapshot(
    workers: usize,
) {
    let gw = start_with_workers(workers, "", &["AAPL", "MSFT"]);
    gw.push(tick("AAPL", 1, &[("bid", "1.00")])).await;
    gw.push(tick("MSFT", 1, &[("bid", "2.00")])).await;
    let mut c = gw.client().await;
    c.subscribe(&["AAPL", "MSFT"]).await;

    // Ticks keep flowing for AAPL while the unsubscribe is in flight.
    let pusher = {
        let ticks = gw.ticks.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                let p = format!("1.{:02}", i % 100);
                ticks
                    .send(tick("AAPL", 2 + i, &[("bid", &p)]))
                    .await
                    .unwrap();
            }
        })
    };
    c.send(json!({"op": "unsubscribe", "id": "u", "symbols": ["aapl"]}))
        .await;
    let before = c.until(|m| m["type"] == "ack").await;
    let ack = before.last().unwrap();
    assert_eq!(
        (ack["id"].as_str(), ack["op"].as_str()),
        (Some("u"), Some("unsubscribe"))
    );
    assert_eq!(ack["symbols"], json!(["AAPL"]));
    pusher.await.unwrap();
    // MSFT's last tick is applied after every AAPL tick above: once it shows, they all went through.
    gw.push(tick("MSFT", 600, &[("bid", "2.50")])).await;
    let after = c
        .until(|m| m["symbol"] == "MSFT" && m["bid"] == "2.50")
        .await;
    for m in &after {
        assert_ne!(
            m["symbol"], "AAPL",
            "nothing for AAPL after the unsubscribe ack: {m}"
        );
    }

    // Subscribing again re-sends the snapshot, with the latest values.
    c.send(json!({"op": "subscribe", "symbols": ["AAPL"]}))
        .await;
    c.expect("ack").await;
    let s = c.expect("snapshot").await;
    assert_eq!(
        (s["symbol"].as_str(), s["seq"].as_u64()),
        (Some("AAPL"), Some(501))
    );
    // And subscribing to a symbol already held re-sends its snapshot too.
    c.send(json!({"op": "subscribe", "symbols": ["MSFT"]}))
        .await;
    c.expect("ack").await;
    let s = c.expect("snapshot").await;
    assert_eq!(
        (s["symbol"].as_str(), s["bid"].as_str()),
        (Some("MSFT"), Some("2.50"))
    );
}

async fn a_symbol_without_a_quote_gets_its_snapshot_at_the_first_tick(workers: usize) {
    let gw = start_with_workers(workers, "", &["AAPL", "NEW"]);
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["NEW"]})).await;
    let ack = c.expect("ack").await;
    assert_eq!(
        ack["symbols"],
        json!(["NEW"]),
        "declared by the feed, so served before any tick"
    );
    gw.push(tick("NEW", 5, &[("last", "10.5")])).await;
    let s = c.expect("snapshot").await;
    assert_eq!(
        (s["seq"].as_u64(), s["last"].as_str(), s["bid"].clone()),
        (Some(1), Some("10.5"), Value::Null)
    );
    gw.push(tick("NEW", 6, &[("bid", "10.4")])).await;
    let u = c.expect("update").await;
    assert_eq!(
        u,
        json!({"type": "update", "symbol": "NEW", "seq": 2, "ts": 6, "bid": "10.4"})
    );
}

async fn symbols_and_ping_ops(workers: usize) {
    let gw = start_with_workers(workers, "", &["MSFT", "AAPL"]);
    let mut c = gw.client().await;
    c.send(json!({"op": "symbols", "id": 4})).await;
    assert_eq!(
        c.next().await,
        json!({"type": "symbols", "id": 4, "symbols": ["AAPL", "MSFT"]})
    );
    c.send(json!({"op": "ping", "id": "abc"})).await;
    assert_eq!(c.next().await, json!({"type": "pong", "id": "abc"}));
    c.send(json!({"op": "ping", "id": 12.5})).await;
    assert_eq!(c.next().await, json!({"type": "pong", "id": 12.5}));
}

async fn prices_leave_byte_identical_to_how_they_entered(workers: usize) {
    let gw = start_with_workers(workers, "", &["X"]);
    let prices = [
        "0.1",
        "123456.789",
        "0.0001",
        "189.10",
        "189.1",
        "100",
        "0.00000000000000000001",
        "12345678901234567.8901234567",
    ];
    gw.push(tick("X", 1, &[("bid", prices[0])])).await;
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["X"]})).await;
    c.expect("ack").await;
    let s = c.expect("snapshot").await;
    assert_eq!(s["bid"], prices[0]);
    for (i, p) in prices.iter().enumerate().skip(1) {
        gw.push(tick("X", 1 + i as i64, &[("bid", p), ("last", p)]))
            .await;
        let u = c.expect("update").await;
        assert_eq!(
            (u["bid"].as_str(), u["last"].as_str()),
            (Some(*p), Some(*p)),
            "{u}"
        );
    }
    // Same check on the raw bytes of a fresh snapshot (no JSON parser in between).
    let mut raw = gw.client().await;
    raw.send(json!({"op": "subscribe", "symbols": ["X"]})).await;
    use futures_util::StreamExt;
    let mut text = String::new();
    while !text.contains("snapshot") {
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = raw.ws.next().await {
            text.push_str(&t);
        }
    }
    let last = prices.last().unwrap();
    assert!(text.contains(&format!("\"bid\":\"{last}\"")), "{text}");
}

async fn invalid_ticks_are_rejected_counted_and_never_forwarded(workers: usize) {
    let gw = start_with_workers(workers, "", &["AAPL"]);
    gw.push(tick("AAPL", 1, &[("bid", "10.00")])).await;
    let mut c = gw.client().await;
    c.subscribe(&["AAPL"]).await;
    gw.push(tick("AAPL", 2, &[("bid", "0")])).await;
    gw.push(tick("AAPL", 3, &[("ask", "-1.5")])).await;
    gw.push(tick("AAPL", 4, &[("bid", "10.01"), ("bid_size", "-100")]))
        .await;
    gw.push(tick("AAPL", 5, &[("bid", "10.02")])).await;
    let u = c.expect("update").await;
    assert_eq!(
        u,
        json!({"type": "update", "symbol": "AAPL", "seq": 2, "ts": 5, "bid": "10.02"})
    );
    let series = "quotegw_ticks_rejected_total{feed=\"scripted\",reason=";
    assert_eq!(
        gw.metric(&format!("{series}\"non_positive_price\"}}"))
            .await,
        2.0
    );
    assert_eq!(
        gw.metric(&format!("{series}\"negative_size\"}}")).await,
        1.0
    );
    assert_eq!(
        gw.metric("quotegw_ticks_received_total{feed=\"scripted\"}")
            .await,
        5.0
    );
}

/// Every update written is timed in `quotegw_tick_to_write_seconds`, whichever writes it (the
/// worker's shard pass or the connection's task): workers buffer the observations and publish them
/// after each pass, so a regression there leaves the histogram empty.
async fn every_update_written_is_timed_from_tick_to_write(workers: usize) {
    let gw = start_with_workers(workers, "", &["AAPL"]);
    gw.push(tick("AAPL", 1, &[("bid", "1.00")])).await;
    let mut a = gw.client().await;
    a.send(json!({"op": "subscribe", "symbols": ["AAPL"]}))
        .await;
    a.expect("ack").await;
    a.expect("snapshot").await;
    for i in 2..=6 {
        gw.push(tick("AAPL", i, &[("bid", &format!("1.0{i}"))]))
            .await;
        a.expect("update").await;
    }
    gw.wait_metric("quotegw_tick_to_write_seconds_count", |v| v >= 5.0)
        .await;
}

crate::with_one_and_two_workers!(
    every_update_written_is_timed_from_tick_to_write,
    subscribe_ack_snapshot_updates_reproduce_the_quote,
    unsubscribe_stops_updates_after_its_ack_and_resubscribe_resends_the_snapshot,
    a_symbol_without_a_quote_gets_its_snapshot_at_the_first_tick,
    symbols_and_ping_ops,
    prices_leave_byte_identical_to_how_they_entered,
    invalid_ticks_are_rejected_counted_and_never_forwarded,
);
