//! A string that is not a symbol is rejected alone (PROTOCOL.md, "Symbols": `invalid_symbol`,
//! echoed cut to 40 characters), and the op's other symbols are applied: on `/ws`, `/v1/quotes`
//! and `/v1/stream` alike, with two workers, and with another client beside it unaffected.

mod support;

use serde_json::{json, Value};
use support::{http, start_with_workers, tick, SseClient, TestGateway};

/// What a trading page's widget once sent with a typo'd attribute, and worse.
const HOSTILE: &str = "<img src=x onerror=window.__xss=1>";

async fn gateway() -> TestGateway {
    let gw = start_with_workers(2, "", &["AAPL", "MSFT"]);
    gw.push(tick("AAPL", 1, &[("bid", "189.10")])).await;
    gw.push(tick("MSFT", 1, &[("bid", "425.00")])).await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ops_reject_a_non_symbol_alone_and_apply_the_rest() {
    let gw = gateway().await;
    let long = "Z".repeat(60);
    let mut mixed = gw.client().await;
    let mut clean = gw.client().await;
    clean.subscribe(&["MSFT"]).await;

    mixed
        .send(json!({"op": "subscribe", "id": 1, "symbols": ["aapl", HOSTILE, "MSFT", "", long, "A\nB", HOSTILE]}))
        .await;
    let ack = mixed.expect("ack").await;
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["symbols"], json!(["AAPL", "MSFT"]), "{ack}");
    assert_eq!(
        ack["rejected"],
        json!([
            {"symbol": HOSTILE, "code": "invalid_symbol"},
            {"symbol": "", "code": "invalid_symbol"},
            {"symbol": "Z".repeat(40), "code": "invalid_symbol"},
            {"symbol": "A\nB", "code": "invalid_symbol"},
        ]),
        "each string once, cut to 40 characters"
    );
    let snaps: Vec<Value> = vec![
        mixed.expect("snapshot").await,
        mixed.expect("snapshot").await,
    ];
    let mut got: Vec<&str> = snaps
        .iter()
        .map(|s| s["symbol"].as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ["AAPL", "MSFT"]);

    // Only non-symbols: an ack rejecting each, not an error; the connection goes on.
    mixed
        .send(json!({"op": "subscribe", "id": 2, "symbols": ["a b"]}))
        .await;
    let ack = mixed.expect("ack").await;
    assert_eq!(ack["symbols"], json!([]));
    assert_eq!(
        ack["rejected"],
        json!([{"symbol": "a b", "code": "invalid_symbol"}])
    );
    mixed
        .send(json!({"op": "unsubscribe", "id": 3, "symbols": ["AAPL", "a,b"]}))
        .await;
    let ack = mixed.expect("ack").await;
    assert_eq!(ack["symbols"], json!(["AAPL"]));
    assert_eq!(
        ack["rejected"],
        json!([{"symbol": "a,b", "code": "invalid_symbol"}])
    );
    // A structurally bad op is still refused whole.
    mixed
        .send(json!({"op": "subscribe", "id": 4, "symbols": ["MSFT", 7]}))
        .await;
    let e = mixed.expect("error").await;
    assert_eq!(
        (e["id"].clone(), e["code"].clone()),
        (json!(4), json!("bad_request"))
    );

    // Both clients still get MSFT's news; the first no longer gets AAPL's.
    gw.push(tick("AAPL", 2, &[("bid", "189.20")])).await;
    gw.push(tick("MSFT", 2, &[("bid", "425.50")])).await;
    for c in [&mut mixed, &mut clean] {
        let u = c.until(|m| m["type"] == "update").await;
        let u = u.last().unwrap();
        assert_eq!(
            (u["symbol"].clone(), u["bid"].clone()),
            (json!("MSFT"), json!("425.50"))
        );
    }
    let rest = mixed.sync("s").await;
    assert!(rest.iter().all(|m| m["symbol"] != "AAPL"), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_quotes_reject_a_non_symbol_alone() {
    let gw = gateway().await;
    let path =
        "/v1/quotes?symbols=aapl,%3Cimg%20src%3Dx%20onerror%3Dwindow.__xss%3D1%3E,A%20B,MSFT,ZZZZ";
    let (status, _, body) = http(gw.addr, "GET", path, &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let symbols: Vec<&str> = v["quotes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(symbols, ["AAPL", "MSFT"]);
    assert_eq!(
        v["rejected"],
        json!([
            {"symbol": HOSTILE, "code": "invalid_symbol"},
            {"symbol": "A B", "code": "invalid_symbol"},
            {"symbol": "ZZZZ", "code": "unknown_symbol"},
        ])
    );
    // Nothing but non-symbols: still an answer, with each rejected.
    let (status, _, body) = http(gw.addr, "GET", "/v1/quotes?symbols=A%22B", &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["quotes"], json!([]));
    assert_eq!(v["rejected"][0]["code"], "invalid_symbol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_rejects_a_non_symbol_alone_in_one_comment_line() {
    let gw = gateway().await;
    // A line break in the string must not start an event of its own.
    let path = "/v1/stream?symbols=AAPL,x%0Adata:%20%7B%7D%0A%0Aevent:%20snapshot,msft";
    let mut sse = SseClient::connect(gw.addr, path, &[]).await;
    assert_eq!(sse.status, 200);
    let mut got = [sse.event().await, sse.event().await];
    got.sort_by(|a, b| a.data["symbol"].as_str().cmp(&b.data["symbol"].as_str()));
    assert_eq!(got[0].event, "snapshot");
    assert_eq!(got[0].data["symbol"], "AAPL");
    assert_eq!(got[1].data["symbol"], "MSFT");
    let rejected = r#"rejected "x\ndata: {}\n\nevent: snapshot" invalid_symbol"#;
    assert!(
        sse.comments.iter().any(|c| c == rejected),
        "{:?}",
        sse.comments
    );
    gw.push(tick("MSFT", 2, &[("bid", "425.50")])).await;
    let e = sse.event().await;
    assert_eq!(
        (e.event.as_str(), e.data["bid"].clone()),
        ("update", json!("425.50"))
    );
    // With no symbol left, the stream is refused with the first rejection's code.
    let mut none = SseClient::connect(gw.addr, "/v1/stream?symbols=A%20B", &[]).await;
    assert_eq!(none.status, 400);
    let body: Value = serde_json::from_str(&none.body().await).unwrap();
    assert_eq!(body["error"]["code"], "invalid_symbol");
}
