//! The replay adapter against the fixtures in `feeds/fixtures/`: determinism, speed, loop, bad lines,
//! truncated gzip, `ts` going backwards, exact prices, and record → replay giving the same file.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::start;

/// The determinism test needs a client that is never conflated, so the replays here run one at a
/// time: a `"max"` replay beside it would compete for the same two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("feeds/fixtures")
        .join(name)
}

fn replay(path: &Path, extra: &str) -> String {
    format!(
        "[[feeds]]\nkind = \"replay\"\nname = \"rp\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// Valid ticks per symbol in a plain fixture (what the final `seq` must be).
fn counts(path: &Path) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            *c.entry(v["symbol"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    c
}

/// Ticks of the opening burst (every symbol's first ticks share a timestamp) may already be in a
/// subscriber's snapshot: which ones depends on scheduling, so hashing starts after them.
const OPENING_SEQS: u64 = 10;

/// What one client saw during a replay: the quote it held after each `(symbol, seq)` (its snapshot
/// with every update applied, serialized), whether anything was conflated, and the final `seq` per
/// symbol.
struct Received {
    views: BTreeMap<(String, u64), String>,
    conflated: bool,
    last_seqs: BTreeMap<String, u64>,
}

/// One replay at `speed`, subscribed before the first tick.
async fn receive_replay(speed: &str) -> Received {
    let path = fixture("small.ndjson");
    let want = counts(&path);
    let gw = start(
        &replay(&path, &format!("speed = {speed}\nstart_delay_ms = 2000")),
        &[],
    );
    let mut c = gw.client().await;
    let symbols: Vec<&str> = want.keys().map(String::as_str).collect();
    c.send(json!({"op": "subscribe", "symbols": symbols})).await;
    c.expect("ack").await;
    let mut current: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut got = Received {
        views: BTreeMap::new(),
        conflated: false,
        last_seqs: BTreeMap::new(),
    };
    while got.last_seqs != want {
        let m = c.next().await;
        let symbol = m["symbol"].as_str().unwrap().to_string();
        let view = current.entry(symbol.clone()).or_default();
        match m["type"].as_str().unwrap() {
            "snapshot" => {
                assert!(
                    m["seq"].as_u64().unwrap() <= OPENING_SEQS,
                    "subscribed early: {m}"
                );
                *view = m.as_object().unwrap().clone();
            }
            "update" => {
                got.conflated |= m.get("conflated").is_some();
                for (k, v) in m.as_object().unwrap() {
                    view.insert(k.clone(), v.clone());
                }
            }
            _ => {
                view.insert("status".into(), m["status"].clone());
                continue;
            }
        }
        let seq = m["seq"].as_u64().unwrap();
        got.last_seqs.insert(symbol.clone(), seq);
        if seq > OPENING_SEQS {
            view.remove("type");
            view.remove("conflated");
            got.views
                .insert((symbol, seq), Value::Object(view.clone()).to_string());
        }
    }
    got
}

/// Three replays of the same file give the same messages. A client is conflated only when its
/// writer falls more than `RECENT_TICKS` ticks of a symbol behind, which a stall of the shared
/// 2-core machine can still cause; such a run has to agree with the others on every `seq` it did
/// receive, and the test keeps going until it has three unconflated runs to compare whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_file_gives_the_same_messages_every_run() {
    let _serial = SERIAL.lock().await;
    const ATTEMPTS: usize = 8;
    let want = counts(&fixture("small.ndjson"));
    let mut whole: Vec<BTreeMap<(String, u64), String>> = Vec::new();
    let mut partial = Vec::new();
    for _ in 0..ATTEMPTS {
        let run = receive_replay("0.5").await;
        assert_eq!(run.last_seqs, want, "final seq = ticks per symbol");
        if run.conflated {
            partial.push(run.views);
        } else {
            whole.push(run.views);
        }
        if whole.len() == 3 {
            break;
        }
    }
    println!(
        "{} unconflated runs, {} conflated by scheduling",
        whole.len(),
        partial.len()
    );
    assert!(
        whole.len() == 3,
        "three unconflated runs in {ATTEMPTS} (the file is small and slow enough)"
    );
    assert!(
        whole.windows(2).all(|w| w[0] == w[1]),
        "unconflated runs differ"
    );
    for views in &partial {
        for (key, view) in views {
            assert_eq!(
                Some(view),
                whole[0].get(key),
                "conflated run differs at {key:?}"
            );
        }
    }
    let hashes: Vec<u64> = whole
        .iter()
        .map(|v| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            h.finish()
        })
        .collect();
    println!("three runs, hashes {hashes:x?}");
}

/// After a replay at `"max"`, every symbol's snapshot (seq and prices) from a fresh subscriber.
async fn final_snapshots(extra: &str) -> HashMap<String, Value> {
    let path = fixture("small.ndjson");
    let want = counts(&path);
    let total: u64 = want.values().sum();
    let gw = start(&replay(&path, extra), &[]);
    gw.wait_metric("quotegw_ticks_received_total{feed=\"rp\"}", |v| {
        v >= total as f64
    })
    .await;
    let mut c = gw.client().await;
    let symbols: Vec<&str> = want.keys().map(String::as_str).collect();
    c.subscribe(&symbols)
        .await
        .into_iter()
        .map(|s| (s["symbol"].as_str().unwrap().to_string(), s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_max_gives_the_same_seq_and_prices_every_run() {
    let _serial = SERIAL.lock().await;
    let want = counts(&fixture("small.ndjson"));
    let a = final_snapshots("speed = \"max\"").await;
    let b = final_snapshots("speed = \"max\"").await;
    assert_eq!(a, b);
    for (symbol, n) in want {
        assert_eq!(a[&symbol]["seq"], n, "{symbol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_restarts_at_the_end_and_seq_keeps_growing() {
    let _serial = SERIAL.lock().await;
    let path = fixture("small.ndjson");
    let total: u64 = counts(&path).values().sum();
    let gw = start(&replay(&path, "speed = \"max\"\nloop = true"), &[]);
    gw.wait_metric("quotegw_ticks_received_total{feed=\"rp\"}", |v| {
        v >= 3.0 * total as f64
    })
    .await;
    let mut c = gw.client().await;
    let snap = c.subscribe(&["AAPL"]).await.remove(0);
    assert!(snap["seq"].as_u64().unwrap() > 2 * counts(&path)["AAPL"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_keeps_the_recorded_timing_scaled() {
    let _serial = SERIAL.lock().await;
    // Lower bounds only: pacing never plays faster than the recording allows, however fast the
    // machine; a slow machine only makes a run longer.
    let path = fixture("small.ndjson");
    let total: u64 = counts(&path).values().sum();
    let span_ms = {
        let ts: Vec<i64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["ts"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        ts.last().unwrap() - ts[0]
    };
    for speed in [1.0, 4.0] {
        let started = Instant::now();
        let gw = start(&replay(&path, &format!("speed = {speed:?}")), &[]);
        gw.wait_metric("quotegw_ticks_received_total{feed=\"rp\"}", |v| {
            v >= total as f64
        })
        .await;
        let took = started.elapsed();
        let floor = Duration::from_millis((span_ms as f64 / speed) as u64);
        println!("speed {speed}: {total} ticks spanning {span_ms} ms played in {took:?}");
        assert!(
            took >= floor,
            "speed {speed} played in {took:?} < {floor:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_replay_byte_identical() {
    let _serial = SERIAL.lock().await;
    let gw = start(&replay(&fixture("exact.ndjson"), "speed = \"max\""), &[]);
    gw.wait_metric("quotegw_ticks_received_total{feed=\"rp\"}", |v| v >= 3.0)
        .await;
    let mut c = gw.client().await;
    let s = c.subscribe(&["EXACT"]).await.remove(0);
    assert_eq!(s["seq"], 3);
    assert_eq!(
        s["bid"], "0.1000",
        "0.1000 as a JSON number keeps its scale"
    );
    assert_eq!(s["ask"], "150", "1.5e2 is exactly 150");
    assert_eq!(
        s["last"], "12345678901234567.8901",
        "21 significant digits survive"
    );
}

fn quotegw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quotegw"))
}

fn config_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quotegw-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{body}")).unwrap();
    path
}

/// Runs the gateway until every `wanted` text appeared in its log, then stops it; returns the log.
fn log_until(config: &Path, wanted: &[&str]) -> String {
    let mut child = quotegw()
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
            if wanted.iter().all(|w| log.contains(w.as_str())) {
                break;
            }
        }
        let _ = tx.try_send(log);
    });
    let log = rx.recv_timeout(support::DEADLINE);
    let _ = child.kill();
    let _ = child.wait();
    log.expect("the expected log lines appear")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_skipped_logged_with_file_and_line_and_counted() {
    let _serial = SERIAL.lock().await;
    let path = fixture("bad-lines.ndjson");
    let gw = start(&replay(&path, "speed = \"max\""), &[]);
    // 572 valid ticks + one with a negative price, which validation refuses.
    gw.wait_metric("quotegw_ticks_received_total{feed=\"rp\"}", |v| v >= 573.0)
        .await;
    gw.wait_metric("quotegw_feed_bad_lines_total{feed=\"rp\"}", |v| v >= 2.0)
        .await;
    assert_eq!(
        gw.metric("quotegw_ticks_rejected_total{feed=\"rp\",reason=\"non_positive_price\"}")
            .await,
        1.0
    );
    // The rest of the data is intact: the final seq of every symbol counts every accepted tick.
    let mut c = gw.client().await;
    let snap = c.subscribe(&["MSFT"]).await.remove(0);
    assert_eq!(snap["seq"], counts(&fixture("small.ndjson"))["MSFT"]);

    let log = log_until(
        &config_file("bad.toml", &replay(&path, "speed = \"max\"")),
        &[
            "bad-lines.ndjson:11: skipped",
            "bad-lines.ndjson:21: skipped",
        ],
    );
    assert!(log.contains("not a JSON object"), "{log}");
    assert!(log.contains("'bid'"), "{log}");
}

/// A line whose symbol the contract does not take is rejected (`bad_symbol`), and the symbol is
/// never listed: `/v1/symbols` and the `symbols` op offer only what a client can subscribe to
/// (found from outside: the replay's scan listed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_with_a_bad_symbol_is_rejected_and_never_listed() {
    let _serial = SERIAL.lock().await;
    let path =
        std::env::temp_dir().join(format!("quotegw-bad-symbol-{}.ndjson", std::process::id()));
    std::fs::write(
        &path,
        concat!(
            r#"{"ts":1700000000000,"symbol":"AAPL","bid":"1.00"}"#,
            "\n",
            r#"{"ts":1700000000001,"symbol":"a b","bid":"1.00"}"#,
            "\n",
            r#"{"ts":1700000000002,"symbol":"MSFT","bid":"2.00"}"#,
            "\n",
        ),
    )
    .unwrap();
    let gw = start(&replay(&path, "speed = \"max\""), &[]);
    gw.wait_metric(
        "quotegw_ticks_rejected_total{feed=\"rp\",reason=\"bad_symbol\"}",
        |v| v == 1.0,
    )
    .await;
    let mut c = gw.client().await;
    c.send(serde_json::json!({"op": "symbols"})).await;
    assert_eq!(
        c.expect("symbols").await["symbols"],
        serde_json::json!(["AAPL", "MSFT"])
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_gzip_plays_what_it_has_and_reports_where_it_broke() {
    let _serial = SERIAL.lock().await;
    let path = fixture("truncated.ndjson.gz");
    let gw = start(&replay(&path, "speed = \"max\""), &[]);
    gw.wait_metric("quotegw_feed_bad_lines_total{feed=\"rp\"}", |v| v >= 1.0)
        .await;
    let received = gw.metric("quotegw_ticks_received_total{feed=\"rp\"}").await;
    assert!(received > 100.0 && received < 572.0, "{received}");
    let log = log_until(
        &config_file("gz.toml", &replay(&path, "speed = \"max\"")),
        &["truncated.ndjson.gz:", "cannot be read past here"],
    );
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn unusable_files_fail_at_start_with_file_line_and_reason() {
    let out = quotegw()
        .arg("--config")
        .arg(config_file(
            "back.toml",
            &replay(&fixture("backwards-ts.ndjson"), ""),
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backwards-ts.ndjson:51"), "{err}");
    assert!(err.contains("non-decreasing"), "{err}");

    let out = quotegw()
        .arg("--config")
        .arg(config_file(
            "missing.toml",
            &replay(Path::new("/nonexistent/x.ndjson"), ""),
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open /nonexistent/x.ndjson"), "{err}");
}

#[test]
fn record_then_replay_gives_the_same_file() {
    let dir = std::env::temp_dir().join(format!("quotegw-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("small.ndjson");
    for name in ["copy.ndjson", "copy.ndjson.gz"] {
        let out_path = dir.join(name);
        let status = quotegw()
            .arg("record")
            .arg("--config")
            .arg(config_file("rec.toml", &replay(&src, "speed = \"max\"")))
            .arg("--to")
            .arg(&out_path)
            .status()
            .unwrap();
        assert!(status.success());
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut quotegw::feed::recording::open(&out_path).unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, std::fs::read_to_string(&src).unwrap(), "{name}");
    }
}
