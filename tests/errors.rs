//! Every error reply and close code of PROTOCOL.md, each with the fate of the offending connection
//! asserted and a healthy control client beside it whose updates keep flowing.

mod support;

use support::WS_CONNECTIONS;

use futures_util::SinkExt;
use serde_json::json;
use support::{start, tick, Client, TestGateway};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const SYMBOLS: &[&str] = &["CTRL", "AAPL", "MSFT", "IBM", "KO"];

async fn gateway(limits: &str) -> TestGateway {
    let gw = start(&format!("[limits]\n{limits}\n"), SYMBOLS);
    for (i, s) in SYMBOLS.iter().enumerate() {
        gw.push(tick(s, 1, &[("bid", &format!("{}.00", i + 1))]))
            .await;
    }
    gw
}

/// A client subscribed to CTRL, with its snapshot read.
async fn control(gw: &TestGateway) -> Client {
    let mut c = gw.client().await;
    c.subscribe(&["CTRL"]).await;
    c
}

/// The control client still gets a fresh update: the misbehaving one did not affect it.
async fn control_still_served(gw: &TestGateway, c: &mut Client, n: u32) {
    let price = format!("9.{n:02}");
    gw.push(tick("CTRL", 100 + i64::from(n), &[("bid", &price)]))
        .await;
    let msgs = c
        .until(|m| m["type"] == "update" && m["bid"] == price.as_str())
        .await;
    assert!(msgs.iter().all(|m| m["type"] == "update"), "{msgs:?}");
}

async fn assert_open(c: &mut Client) {
    c.send(json!({"op": "ping", "id": "alive"})).await;
    let m = c.until(|m| m["type"] == "pong").await;
    assert_eq!(m.last().unwrap()["id"], "alive");
}

#[tokio::test]
async fn bad_json_and_bad_request_answer_an_error_and_keep_the_connection() {
    let gw = gateway("").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    let cases = [
        (r#"{"op":"subscribe","symbols":["#, "bad_json", None),
        ("[1,2,3]", "bad_json", None),
        ("\"just a string\"", "bad_json", None),
        (r#"{"op":"launch","id":7}"#, "bad_request", Some(json!(7))),
        (r#"{"id":"x"}"#, "bad_request", Some(json!("x"))),
        (
            r#"{"op":"subscribe","id":1,"symbols":[]}"#,
            "bad_request",
            Some(json!(1)),
        ),
        (
            r#"{"op":"subscribe","id":2,"symbols":"AAPL"}"#,
            "bad_request",
            Some(json!(2)),
        ),
        (
            r#"{"op":"subscribe","id":3,"symbols":["AAPL"],"max_hz":0}"#,
            "bad_request",
            Some(json!(3)),
        ),
        (
            r#"{"op":"subscribe","id":4,"symbols":["AAPL"],"max_hz":"fast"}"#,
            "bad_request",
            Some(json!(4)),
        ),
        (
            r#"{"op":"unsubscribe","id":5}"#,
            "bad_request",
            Some(json!(5)),
        ),
    ];
    for (i, (frame, code, id)) in cases.iter().enumerate() {
        c.send_text(frame).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], *code, "{frame} → {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert_eq!(e.get("id"), id.as_ref(), "{frame} → {e}");
        assert_open(&mut c).await;
        control_still_served(&gw, &mut ctrl, i as u32).await;
    }
    let e = gw
        .metric("quotegw_client_errors_total{code=\"bad_json\"}")
        .await;
    assert_eq!(e, 3.0);
    // The subscription a bad op was about was not applied.
    c.send(json!({"op": "unsubscribe", "symbols": ["AAPL"]}))
        .await;
    c.expect("ack").await;
}

#[tokio::test]
async fn too_many_symbols_applies_nothing() {
    let gw = gateway("max_symbols_per_connection = 3").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    c.subscribe(&["AAPL", "MSFT"]).await;
    c.send(json!({"op": "subscribe", "id": 9, "symbols": ["IBM", "KO", "AAPL"]}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("too_many_symbols"), Some(9))
    );
    // A subscribe naming more symbols than the limit is refused without looking them up.
    let many: Vec<String> = (0..4).map(|i| format!("S{i}")).collect();
    c.send(json!({"op": "subscribe", "symbols": many})).await;
    assert_eq!(c.expect("error").await["code"], "too_many_symbols");
    // Nothing of the refused op was applied: one more symbol still fits, and only one.
    c.send(json!({"op": "subscribe", "symbols": ["IBM"]})).await;
    assert_eq!(c.expect("ack").await["symbols"], json!(["IBM"]));
    c.expect("snapshot").await;
    gw.push(tick("KO", 2, &[("bid", "5.50")])).await;
    gw.push(tick("AAPL", 2, &[("bid", "2.50")])).await;
    let u = c.expect("update").await;
    assert_eq!(u["symbol"], "AAPL", "KO was never subscribed: {u}");
    control_still_served(&gw, &mut ctrl, 1).await;
}

#[tokio::test]
async fn rate_limited_ops_are_refused_then_repeated_abuse_closes_with_1008() {
    let gw = gateway("ops_per_second = 1\nops_burst = 5").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    for i in 0..8 {
        c.send(json!({"op": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..8 {
        let m = c.next().await;
        match m["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => {
                assert_eq!(m["code"], "rate_limited");
                limited += 1;
            }
            _ => panic!("{m}"),
        }
    }
    // The burst passes; what comes faster than the rate is refused (a token may refill meanwhile).
    assert!(
        (5..=6).contains(&pongs) && limited >= 2,
        "pongs {pongs}, limited {limited}"
    );
    control_still_served(&gw, &mut ctrl, 1).await;

    // Keep flooding: errors pile up past the abuse limit and the connection is closed with 1008.
    for i in 0..100 {
        if c.ws
            .send(Message::text(format!("{{\"op\":\"ping\",\"id\":{i}}}")))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
    control_still_served(&gw, &mut ctrl, 2).await;
    assert!(
        gw.metric("quotegw_client_errors_total{code=\"rate_limited\"}")
            .await
            >= 20.0
    );
}

#[tokio::test]
async fn garbage_floods_close_with_1008() {
    let gw = gateway("").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    for _ in 0..40 {
        if c.ws.send(Message::text("not json")).await.is_err() {
            break;
        }
    }
    let mut errors = 0;
    let closed = loop {
        match c.try_next().await {
            Ok(m) => {
                assert_eq!(m["code"], "bad_json");
                errors += 1;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        closed,
        support::Closed::Code(
            1008,
            "repeated bad requests; fix the client before reconnecting".into()
        )
    );
    assert!(
        errors >= 20,
        "each bad frame was answered before the close: {errors}"
    );
    control_still_served(&gw, &mut ctrl, 1).await;
    assert_eq!(gw.metric("quotegw_closes_total{code=\"1008\"}").await, 1.0);
}

#[tokio::test]
async fn a_binary_frame_closes_with_1003() {
    let gw = gateway("").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(c.expect_close().await.0, 1003);
    control_still_served(&gw, &mut ctrl, 1).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let gw = gateway("").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await;
    assert_eq!(c.expect_close().await.0, 1007);
    // In a fragmented message too.
    let mut c = gw.client().await;
    c.send_raw(Message::Frame(Frame::message(
        vec![b'{', 0xc3],
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_raw(Message::Frame(Frame::message(
        vec![0x28, b'}'],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    assert_eq!(c.expect_close().await.0, 1007);
    control_still_served(&gw, &mut ctrl, 1).await;
}

#[tokio::test]
async fn frames_that_break_rfc_6455_close_with_1002() {
    let gw = gateway("").await;
    let mut ctrl = control(&gw).await;
    // A continuation frame with no message to continue.
    let mut c = support::RawClient::connect(gw.addr).await;
    c.send_frame(true, 0x0, b"}").await.unwrap();
    let (_, close) = c.read_to_close().await;
    assert_eq!(close.map(|c| c.0), Some(1002));
    // A reserved opcode.
    let mut c = support::RawClient::connect(gw.addr).await;
    c.send_frame(true, 0x3, b"x").await.unwrap();
    let (_, close) = c.read_to_close().await;
    assert_eq!(close, Some((1002, "websocket protocol error".to_string())));
    control_still_served(&gw, &mut ctrl, 1).await;
}

#[tokio::test]
async fn oversized_frames_and_messages_close_with_1009() {
    let gw = gateway("max_frame_bytes = 4096").await;
    let mut ctrl = control(&gw).await;
    let mut c = gw.client().await;
    c.send_text(&format!(
        "{{\"op\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    ))
    .await;
    assert_eq!(c.expect_close().await.0, 1009);
    // Just under the limit is fine.
    let mut c = gw.client().await;
    c.send_text(&format!(
        "{{\"op\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(4000)
    ))
    .await;
    c.expect("pong").await;
    // Fragments that together pass the limit, and never finish.
    c.send_raw(Message::Frame(Frame::message(
        vec![b' '; 3000],
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_raw(Message::Frame(Frame::message(
        vec![b' '; 3000],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await;
    assert_eq!(c.expect_close().await.0, 1009);
    control_still_served(&gw, &mut ctrl, 1).await;
    assert_eq!(gw.metric("quotegw_closes_total{code=\"1009\"}").await, 2.0);
}

#[tokio::test]
async fn connections_over_max_connections_get_503_before_the_upgrade() {
    let gw = gateway("max_connections = 2").await;
    let mut ctrl = control(&gw).await;
    let _second = gw.client().await;
    let err = tokio_tungstenite::connect_async(gw.url())
        .await
        .expect_err("third is refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other}"),
    }
    control_still_served(&gw, &mut ctrl, 1).await;
    assert_eq!(
        gw.metric("quotegw_connections_refused_total{reason=\"max_connections\"}")
            .await,
        1.0
    );
    // A place frees up when a connection ends.
    drop(_second);
    gw.wait_metric(WS_CONNECTIONS, |v| v == 1.0).await;
    let _third = gw.client().await;
}

#[tokio::test]
async fn server_pings_and_closes_connections_that_answer_nothing() {
    let gw = gateway("idle_timeout_ms = 1500\nping_interval_ms = 300").await;
    // A client that reads (tungstenite answers pings) stays open well past the idle timeout.
    let mut live = control(&gw).await;
    // A client that never reads, so never answers a ping.
    let mut silent = support::RawClient::connect(gw.addr).await;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(4500) {
        live.send(json!({"op": "ping"})).await;
        live.expect("pong").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        live.pings_seen >= 2,
        "server pings arrive: {}",
        live.pings_seen
    );
    let (frames, close) = silent.read_to_close().await;
    assert_eq!(close, Some((1000, "idle timeout".to_string())));
    assert!(
        frames.iter().any(|f| f.opcode == 0x9),
        "it was pinged before: {frames:?}"
    );
    control_still_served(&gw, &mut live, 1).await;
}
