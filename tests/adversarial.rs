//! Hostile clients, each beside a healthy control client whose updates must keep flowing, and each
//! followed by a check that the gateway's connections, file descriptors and memory return to their
//! baseline: JSON bombs, subscription floods, fragmented messages that never finish, and 1,000
//! connections dropped without a close frame. (Message floods, silent clients and clients that stop
//! reading are in `errors.rs` and `slow_consumer.rs`, with the same control-client checks.)

mod support;

use support::WS_CONNECTIONS;

use std::time::Duration;

use serde_json::{json, Value};
use support::{fd_count, rss_bytes, start, tick, Client, RawClient, TestGateway};

/// The memory checks read this process's RSS, so the tests here run one at a time (an async mutex:
/// each test holds it across its awaits; it is not poisoned by a failed test).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Allowed RSS growth after an attack: freed memory is kept by the allocator for reuse rather than
/// returned to the kernel, so "back to baseline" means "no growth proportional to the attack".
const RSS_SLACK: u64 = 16 * 1024 * 1024;

async fn gateway(limits: &str) -> TestGateway {
    let gw = start(&format!("[limits]\n{limits}\n"), &["CTRL", "AAPL"]);
    gw.push(tick("CTRL", 1, &[("bid", "1.00")])).await;
    gw.push(tick("AAPL", 1, &[("bid", "2.00")])).await;
    gw
}

/// The control client's next update arrives: it was not affected.
async fn control_still_served(gw: &TestGateway, c: &mut Client, n: u32) {
    let price = format!("9.{n:02}");
    gw.push(tick("CTRL", 100 + i64::from(n), &[("bid", &price)]))
        .await;
    c.until(|m| m["type"] == "update" && m["bid"] == price.as_str())
        .await;
}

/// Waits for the gateway's connection count, and checks fds and RSS against the baseline.
async fn back_to_baseline(gw: &TestGateway, connections: f64, fds: usize, rss: u64, what: &str) {
    gw.wait_metric(WS_CONNECTIONS, |v| v == connections).await;
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while fd_count() > fds + 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: fds {} vs {fds}",
            fd_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = rss_bytes();
    println!(
        "{what}: connections back to {connections}, fds {} (baseline {fds}), RSS {:.1} MiB (baseline {:.1} MiB)",
        fd_count(),
        now as f64 / 1048576.0,
        rss as f64 / 1048576.0
    );
    assert!(
        now <= rss + RSS_SLACK,
        "{what}: RSS grew by {} bytes",
        now - rss
    );
}

async fn reply(c: &mut Client, text: &str) -> Value {
    c.send_text(text).await;
    c.next().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bombs_get_errors_and_nothing_else() {
    let _serial = SERIAL.lock().await;
    let gw = gateway("").await;
    let mut ctrl = gw.client().await;
    ctrl.subscribe(&["CTRL"]).await;
    let (fds, rss) = (fd_count(), rss_bytes());
    let mut c = gw.client().await;

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        reply(&mut c, &deep).await["code"],
        "bad_json",
        "nesting 10,000 deep"
    );
    // Valid JSON, nested 10,000 deep, in a member the gateway does not read: skipped without
    // recursion (the frame size bounds it); the op it lacks is the error.
    let deep_obj = format!(
        "{{\"op\":\"ping\",\"x\":{}1{}}}",
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    assert_eq!(reply(&mut c, &deep_obj).await["type"], "pong");
    let deep_no_op = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    assert_eq!(reply(&mut c, &deep_no_op).await["code"], "bad_request");
    let unclosed = "{\"a\":".repeat(10_000);
    assert_eq!(reply(&mut c, &unclosed).await["code"], "bad_json");

    let huge_hz = reply(
        &mut c,
        r#"{"op":"subscribe","symbols":["AAPL"],"max_hz":1e400}"#,
    )
    .await;
    assert!(
        huge_hz["type"] == "error"
            && ["bad_json", "bad_request"].contains(&huge_hz["code"].as_str().unwrap()),
        "1e400 is refused: {huge_hz}"
    );
    // A 30-digit id is echoed as its text, digit for digit (docs/protocol.md); a 30-digit
    // max_hz is out of range.
    c.send_text(r#"{"op":"ping","id":123456789012345678901234567890}"#)
        .await;
    let frame = c.next_text().await;
    assert_eq!(
        frame,
        r#"[{"type":"pong","id":123456789012345678901234567890}]"#
    );
    let big_hz = reply(
        &mut c,
        r#"{"op":"subscribe","symbols":["AAPL"],"max_hz":123456789012345678901234567890}"#,
    )
    .await;
    assert_eq!(big_hz["code"], "bad_request", "{big_hz}");
    // Nothing of those ops was applied, and the connection works.
    c.subscribe(&["AAPL"]).await;
    // A key the gateway reads, given twice: ambiguous, so refused (docs/protocol.md).
    let dup = reply(&mut c, r#"{"op":"ping","op":"subscribe","id":5}"#).await;
    assert_eq!(dup["code"], "bad_request", "{dup}");
    // 64 KiB of whitespace: within max_frame_bytes, so parsed, and empty.
    let blank = " ".repeat(65_536);
    assert_eq!(reply(&mut c, &blank).await["code"], "bad_json");
    let padded = format!(
        "{}{{\"op\":\"ping\",\"id\":\"padded\"}}",
        " ".repeat(60_000)
    );
    assert_eq!(reply(&mut c, &padded).await["id"], "padded");

    control_still_served(&gw, &mut ctrl, 1).await;
    c.close().await;
    back_to_baseline(&gw, 1.0, fds, rss, "json bombs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_floods_are_refused_whole() {
    let _serial = SERIAL.lock().await;
    let gw = gateway("max_frame_bytes = 1048576").await;
    let mut ctrl = gw.client().await;
    ctrl.subscribe(&["CTRL"]).await;
    let (fds, rss) = (fd_count(), rss_bytes());
    let mut c = gw.client().await;

    let many: Vec<String> = (0..10_000).map(|i| format!("S{i}")).collect();
    c.send(json!({"op": "subscribe", "id": 1, "symbols": many}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("too_many_symbols"), Some(1))
    );

    // Strings longer than the contract's 32 characters: each rejected alone (`invalid_symbol`),
    // its echo cut to 40 characters, so the ack stays small whatever the client sent.
    let long: Vec<String> = (0..100)
        .map(|i| format!("{i}{}", "X".repeat(300)))
        .collect();
    c.send(json!({"op": "subscribe", "id": 2, "symbols": long}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(ack["id"], 2);
    assert_eq!(ack["symbols"], json!([]));
    let rejected = ack["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 100);
    assert!(rejected
        .iter()
        .all(|r| r["code"] == "invalid_symbol"
            && r["symbol"].as_str().unwrap().chars().count() == 40));
    // Served-looking but unknown symbols: each rejected in the ack.
    let unknown: Vec<String> = (0..100).map(|i| format!("NOPE{i}")).collect();
    c.send(json!({"op": "subscribe", "id": 3, "symbols": unknown}))
        .await;
    let ack = c.expect("ack").await;
    assert_eq!(ack["symbols"], json!([]));
    assert_eq!(ack["rejected"].as_array().unwrap().len(), 100);
    assert!(ack["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["code"] == "unknown_symbol"));

    // Nothing was applied: a normal subscribe still works.
    c.subscribe(&["AAPL"]).await;
    assert_eq!(gw.metric("quotegw_subscriptions").await, 2.0);
    control_still_served(&gw, &mut ctrl, 2).await;
    c.close().await;
    back_to_baseline(&gw, 1.0, fds, rss, "subscription flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_that_never_finish_are_closed() {
    let _serial = SERIAL.lock().await;
    let gw =
        gateway("idle_timeout_ms = 1000\nping_interval_ms = 200\nmax_frame_bytes = 4096").await;
    let mut ctrl = gw.client().await;
    ctrl.subscribe(&["CTRL"]).await;
    let (fds, rss) = (fd_count(), rss_bytes());

    // A first fragment and then silence: the idle timeout closes it.
    let mut stalled = RawClient::connect(gw.addr).await;
    stalled.send_frame(false, 0x1, b"{\"op\":").await.unwrap();
    // The control client answers (a ping op every 300 ms) while the stalled one says nothing.
    let keep_alive = async {
        loop {
            ctrl.send(json!({"op": "ping"})).await;
            ctrl.until(|m| m["type"] == "pong").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (_, close) = tokio::select! {
        closed = stalled.read_to_close() => closed,
        _ = keep_alive => unreachable!("the keep-alive loop never ends"),
    };
    assert_eq!(close, Some((1000, "idle timeout".to_string())));

    // Continuations forever: closed with 1009 once the message passes max_frame_bytes.
    let mut endless = RawClient::connect(gw.addr).await;
    endless.send_frame(false, 0x1, b"[").await.unwrap();
    let mut sent = 1;
    while endless.send_frame(false, 0x0, &[b' '; 1000]).await.is_ok() && sent < 100_000 {
        sent += 1000;
        if sent > 8192 {
            break;
        }
    }
    let (_, close) = endless.read_to_close().await;
    assert_eq!(close.map(|(c, _)| c), Some(1009), "after {sent} bytes");

    control_still_served(&gw, &mut ctrl, 3).await;
    back_to_baseline(&gw, 1.0, fds, rss, "unfinished fragments").await;
}

/// A header announcing a 1 GiB frame is refused from the header, without waiting for (and buffering)
/// the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_a_gigabyte_is_refused_before_its_payload() {
    let _serial = SERIAL.lock().await;
    let gw = gateway("max_frame_bytes = 4096").await;
    let mut ctrl = gw.client().await;
    ctrl.subscribe(&["CTRL"]).await;
    let (fds, rss) = (fd_count(), rss_bytes());

    let mut liar = RawClient::connect(gw.addr).await;
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 30).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]); // the mask; no payload follows
    liar.send_bytes(&head).await.unwrap();
    let (_, close) = liar.read_to_close().await;
    assert_eq!(close.map(|(c, _)| c), Some(1009));

    control_still_served(&gw, &mut ctrl, 2).await;
    back_to_baseline(&gw, 1.0, fds, rss, "gigabyte frame header").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_dropped_without_a_close_frame_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let gw = gateway("max_connections_per_ip = 2000").await;
    let mut ctrl = gw.client().await;
    ctrl.subscribe(&["CTRL"]).await;
    // The first rounds warm the allocator up (it keeps freed memory for reuse and settles after a
    // couple of rounds: 29, 35, 36, 36.4, 36.6 MiB at peak over five rounds); the last must not grow
    // memory beyond what the one before left: no per-connection leak.
    let mut baseline = (0, 0);
    for round in 0..3u32 {
        let mut dropped = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let mut raw = RawClient::connect(gw.addr).await;
            raw.send_text(r#"{"op":"subscribe","symbols":["CTRL","AAPL"]}"#)
                .await;
            dropped.push(raw);
        }
        gw.wait_metric("quotegw_subscriptions", |v| v == 2001.0)
            .await;
        let peak = rss_bytes();
        // Half vanish with a FIN, half with a reset (SO_LINGER 0); none sends a close frame.
        for (i, raw) in dropped.into_iter().enumerate() {
            if i % 2 == 0 {
                let _ = raw.tcp.set_zero_linger();
            }
            drop(raw);
        }
        control_still_served(&gw, &mut ctrl, 10 + round).await;
        gw.wait_metric("quotegw_subscriptions", |v| v == 1.0).await;
        gw.wait_metric(WS_CONNECTIONS, |v| v == 1.0).await;
        println!(
            "round {round}: 1,000 dropped connections, RSS at peak {:.1} MiB",
            peak as f64 / 1048576.0
        );
        if round == 1 {
            baseline = (fd_count(), rss_bytes());
        }
    }
    back_to_baseline(
        &gw,
        1.0,
        baseline.0,
        baseline.1,
        "1,000 dropped connections, third round",
    )
    .await;
    control_still_served(&gw, &mut ctrl, 9).await;
}
