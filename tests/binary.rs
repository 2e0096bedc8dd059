//! The `quotegw` binary itself: a bad config fails at start naming file, key and reason; SIGTERM
//! closes every WebSocket with 1001 and the process exits.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::Client;

fn quotegw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quotegw"))
}

#[test]
fn a_bad_config_fails_at_start_with_file_key_and_reason() {
    let dir = std::env::temp_dir().join(format!("quotegw-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax_frame_bytes = -5"
    )
    .unwrap();
    let out = quotegw().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("limits.max_frame_bytes"), "{err}");
    assert!(err.contains("line 3"), "{err}");

    let out = quotegw()
        .arg("--config")
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );

    let out = quotegw()
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[tokio::test]
async fn sigterm_closes_every_websocket_with_1001_and_exits() {
    // The default config (embedded simulated feed), on a free port.
    let mut child = quotegw()
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = addr_tx.try_send(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(support::DEADLINE)
        .expect("the gateway logs its address");
    let url = format!("ws://{addr}/ws");

    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&url).await;
        c.send(json!({"op": "subscribe", "symbols": ["AAPL", "MSFT"]}))
            .await;
        c.expect("ack").await;
        c.until(|m| m["type"] == "update").await;
        clients.push(c);
    }

    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for c in &mut clients {
        let (code, reason) = c.expect_close().await;
        assert_eq!((code, reason.as_str()), (1001, "gateway shutting down"));
    }
    let deadline = Instant::now() + support::DEADLINE;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "exited {:?} after SIGTERM in {:?}",
        exit.code(),
        signalled.elapsed()
    );
    assert!(exit.success(), "clean exit: {exit:?}");
}
