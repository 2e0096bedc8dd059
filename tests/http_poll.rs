//! The HTTP polling adapter against a local upstream the test starts: exact prices from strings and
//! 25-digit JSON numbers, every fault (HTTP 500, stalls past `timeout_ms`, garbage, resets, one bad
//! quote), staleness and recovery, and failover between two feeds with `seq` continuity.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::upstream::{until_served as until, Mode, Upstream};
use support::{start, start_with_workers};

fn poll_feed(name: &str, base: &str, symbols: &str) -> String {
    format!(
        r#"
[[feeds]]
kind = "http_poll"
name = "{name}"
base = "{base}"
url = "{{base}}/v1/quotes?symbols={{symbols}}"
symbols = {symbols}
batch_size = 2
interval_ms = 50
timeout_ms = 300
stale_after_ms = 600
backoff_max_ms = 300
headers = {{ X-Api-Key = "secret-key-123" }}
[feeds.response]
shape = "array"
root = "data"
symbol = "sym"
fields = {{ bid = "b", ask = "a", volume = "v" }}
"#
    )
}

fn body(quotes: &[(&str, &str, &str)]) -> String {
    // Prices are inserted raw: a quoted string or a bare JSON number, exactly as given.
    let items: Vec<String> = quotes
        .iter()
        .map(|(s, b, a)| format!(r#"{{"sym":"{s}","b":{b},"a":{a},"v":100}}"#))
        .collect();
    format!(r#"{{"data":[{}]}}"#, items.join(","))
}

fn status_is(symbol: &'static str, status: &'static str) -> impl Fn(&Value) -> bool {
    move |m| m["type"] == "status" && m["symbol"] == symbol && m["status"] == status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_survives_every_fault_marks_stale_recovers_and_never_sends_a_wrong_price() {
    let aapl = "189.1234567890123456789012345"; // 28 significant digits, as a string
    let msft = "1.234567890123456789012345"; // 25 significant digits, as a bare JSON number
    let up = Upstream::start(&body(&[
        ("AAPL", &format!("\"{aapl}\""), "\"189.20\""),
        ("MSFT", msft, "2"),
    ]))
    .await;
    let mut served: HashSet<String> = [aapl, "189.20", msft, "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let gw = start(&poll_feed("up", &up.base, r#"["AAPL", "MSFT"]"#), &[]);
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["AAPL", "MSFT"]}))
        .await;
    c.expect("ack").await;
    let mut snaps = Vec::new();
    while snaps.len() < 2 {
        let m = until(&mut c, &served, |m| m["type"] == "snapshot").await;
        snaps.push(m);
    }
    snaps.sort_by_key(|m| m["symbol"].as_str().unwrap().to_string());
    assert_eq!(snaps[0]["bid"], aapl, "digits survive from a JSON string");
    assert_eq!(snaps[1]["bid"], msft, "digits survive from a JSON number");

    // A change upstream becomes one update with only what changed.
    served.insert("189.13".into());
    up.set_body(&body(&[
        ("AAPL", "\"189.13\"", "\"189.20\""),
        ("MSFT", msft, "2"),
    ]));
    let u = until(&mut c, &served, |m| m["type"] == "update").await;
    assert_eq!(
        (u["symbol"].as_str(), u["bid"].as_str()),
        (Some("AAPL"), Some("189.13"))
    );
    assert!(u.get("ask").is_none(), "only changed fields: {u}");

    for (fault, kind) in [
        (Mode::Status500, "status"),
        (Mode::Stall(Duration::from_millis(1500)), "timeout"),
        (Mode::Garbage, "decode"),
        (Mode::Reset, "body"),
    ] {
        up.set(fault.clone());
        until(&mut c, &served, status_is("AAPL", "stale")).await;
        // The gateway keeps serving while its upstream is down.
        c.send(json!({"op": "ping", "id": kind})).await;
        until(&mut c, &served, |m| m["type"] == "pong").await;
        let errors = gw
            .metric(&format!(
                "quotegw_poll_errors_total{{feed=\"up\",kind=\"{kind}\"}}"
            ))
            .await;
        assert!(errors >= 1.0, "{fault:?} counted as {kind}");
        up.set(Mode::Good);
        until(&mut c, &served, status_is("AAPL", "live")).await;
        println!("{fault:?}: stale, then live again; poll errors of kind {kind}: {errors}");
    }

    // One bad quote in a good answer: dropped and counted, the other symbol still updates.
    served.insert("1.5".into());
    up.set_body(&body(&[
        ("AAPL", "\"not-a-price\"", "\"189.20\""),
        ("MSFT", "1.5", "2"),
    ]));
    // (A recovery is a tick with the whole answer: its update may carry no changed field.)
    let u = until(&mut c, &served, |m| {
        m["type"] == "update" && m.get("bid").is_some()
    })
    .await;
    assert_eq!(
        (u["symbol"].as_str(), u["bid"].as_str()),
        (Some("MSFT"), Some("1.5"))
    );
    gw.wait_metric(
        "quotegw_poll_errors_total{feed=\"up\",kind=\"bad_quote\"}",
        |v| v >= 1.0,
    )
    .await;
    let polls = gw.metric("quotegw_poll_requests_total{feed=\"up\"}").await;
    assert!(polls > 10.0, "{polls} polls");
}

async fn failover_follows_the_primary_and_seq_keeps_growing(workers: usize) {
    let primary = Upstream::start(&body(&[("X", "\"1.00\"", "\"1.01\"")])).await;
    let secondary = Upstream::start(&body(&[("X", "\"2.00\"", "\"2.01\"")])).await;
    let served: HashSet<String> = ["1.00", "1.01", "2.00", "2.01"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let config = format!(
        "{}{}",
        poll_feed("primary", &primary.base, r#"["X"]"#),
        poll_feed("secondary", &secondary.base, r#"["X"]"#)
    );
    let gw = start_with_workers(workers, &config, &[]);
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["X"]})).await;
    c.expect("ack").await;
    let mut last_seq = 0;
    let mut seen = Vec::new();
    let mut step = |m: &Value| {
        if let Some(seq) = m["seq"].as_u64() {
            assert!(
                seq > last_seq || m["type"] == "snapshot",
                "seq only grows: {m}"
            );
            last_seq = seq;
        }
        seen.push(m.clone());
    };
    // The primary wins while it is live.
    let m = until(&mut c, &served, |m| {
        m.get("bid").is_some_and(|b| b == "1.00")
    })
    .await;
    step(&m);
    // The primary fails: the secondary takes over, as an ordinary update with the next seq.
    primary.set(Mode::Status500);
    let m = until(&mut c, &served, |m| {
        m.get("bid").is_some_and(|b| b == "2.00")
    })
    .await;
    assert_eq!(m["type"], "update");
    step(&m);
    // Both fail: stale.
    secondary.set(Mode::Status500);
    let m = until(&mut c, &served, status_is("X", "stale")).await;
    step(&m);
    // The primary recovers: live, its prices, seq still growing.
    primary.set(Mode::Good);
    let mut live = false;
    let mut back = false;
    while !(live && back) {
        let m = until(&mut c, &served, |_| true).await;
        live |= status_is("X", "live")(&m);
        back |= m.get("bid").is_some_and(|b| b == "1.00");
        step(&m);
    }
    println!("failover sequence: {seen:?}");
}

/// A client's reconstruction of one symbol, from the messages alone.
#[derive(Default)]
struct Seen {
    seq: u64,
    bid: Option<String>,
    ask: Option<String>,
}

impl Seen {
    fn apply(&mut self, m: &Value) {
        let seq = m["seq"].as_u64().expect("quote messages carry seq");
        assert!(
            seq > self.seq || (m["type"] == "snapshot" && seq >= self.seq),
            "seq only grows: {m}"
        );
        self.seq = seq;
        for (field, slot) in [("bid", &mut self.bid), ("ask", &mut self.ask)] {
            match m.get(field) {
                Some(Value::String(p)) => *slot = Some(p.clone()),
                Some(other) => {
                    panic!("{field} {other} published for a symbol that had prices: {m}")
                }
                None => {}
            }
        }
    }

    fn quote(&self) -> (&str, &str) {
        (
            self.bid.as_deref().unwrap_or("-"),
            self.ask.as_deref().unwrap_or("-"),
        )
    }
}

/// Regression (fail-back published the recovering feed's old or empty quote): two upstreams that
/// disagree on every price. Through fail-over and fail-back every quote a client holds is one the
/// serving feed sent while serving: never the primary's pre-outage quote after it recovers, never a
/// null price for a symbol that had one (Y, which the primary starts serving only after its outage).
async fn fail_back_publishes_the_recovering_feeds_fresh_quote_never_its_old_or_empty_one(
    workers: usize,
) {
    let primary = Upstream::start(&body(&[("X", "\"1.00\"", "\"1.01\"")])).await;
    let secondary = Upstream::start(&body(&[
        ("X", "\"2.00\"", "\"2.01\""),
        ("Y", "\"5.00\"", "\"5.01\""),
    ]))
    .await;
    let config = format!(
        "{}{}",
        poll_feed("primary", &primary.base, r#"["X", "Y"]"#),
        poll_feed("secondary", &secondary.base, r#"["X", "Y"]"#)
    );
    let gw = start_with_workers(workers, &config, &[]);
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["X", "Y"]}))
        .await;
    c.expect("ack").await;
    let mut x = Seen::default();
    let mut y = Seen::default();
    // Reads until X and Y show `want`, checking every quote message against what may be shown.
    async fn read_until(
        c: &mut support::Client,
        x: &mut Seen,
        y: &mut Seen,
        allowed_x: &[(&str, &str)],
        want: [(&str, &str); 2],
    ) {
        let allowed_y = [("-", "-"), ("5.00", "5.01"), ("3.00", "3.01")];
        while x.quote() != want[0] || y.quote() != want[1] {
            let m = c.next().await;
            let (seen, allowed) = match m["symbol"].as_str() {
                Some("X") => (&mut *x, allowed_x),
                Some("Y") => (&mut *y, &allowed_y[..]),
                _ => panic!("unexpected message {m}"),
            };
            if m["type"] == "status" {
                continue;
            }
            seen.apply(&m);
            assert!(
                allowed.contains(&seen.quote()),
                "a quote no serving feed sent: {:?} after {m}",
                seen.quote()
            );
        }
    }
    // The primary serves X; only the secondary has Y.
    let before_outage = [("-", "-"), ("1.00", "1.01"), ("2.00", "2.01")];
    read_until(
        &mut c,
        &mut x,
        &mut y,
        &before_outage,
        [("1.00", "1.01"), ("5.00", "5.01")],
    )
    .await;
    // Long enough for the primary to have marked Y (absent from its answers) stale: polls are
    // `interval_ms` (50) apart and `stale_after_ms` is 600.
    gw.wait_metric("quotegw_poll_requests_total{feed=\"primary\"}", |v| {
        v >= 30.0
    })
    .await;

    // The primary fails: the secondary's current X.
    primary.set(Mode::Status500);
    read_until(
        &mut c,
        &mut x,
        &mut y,
        &before_outage,
        [("2.00", "2.01"), ("5.00", "5.01")],
    )
    .await;

    // While it is down its prices move, and it starts listing Y; then it answers again.
    primary.set_body(&body(&[
        ("X", "\"1.50\"", "\"1.51\""),
        ("Y", "\"3.00\"", "\"3.01\""),
    ]));
    let failed_polls = gw
        .wait_metric(
            "quotegw_poll_errors_total{feed=\"primary\",kind=\"status\"}",
            |v| v >= 1.0,
        )
        .await;
    assert!(failed_polls >= 1.0);
    primary.set(Mode::Good);
    // Fail-back: straight from the secondary's quote to the primary's fresh one. The pre-outage
    // 1.00/1.01 and an empty quote (null prices) are no longer allowed.
    let after = [("2.00", "2.01"), ("1.50", "1.51")];
    read_until(
        &mut c,
        &mut x,
        &mut y,
        &after,
        [("1.50", "1.51"), ("3.00", "3.01")],
    )
    .await;
    println!(
        "fail-back with {workers} worker(s): X seq {}, Y seq {}",
        x.seq, y.seq
    );
}

/// Regression (issue 25): `quotegw_feed_up` followed the HTTP side only, and stayed 1 while every
/// answer lacked the feed's symbols, though the dashboard's panel and alert promise "delivering".
/// It is 1 while some symbol had a good answer within `stale_after_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_up_follows_what_the_answers_deliver_not_the_http_status() {
    const UP: &str = "quotegw_feed_up{feed=\"up\"}";
    const POLLS: &str = "quotegw_poll_requests_total{feed=\"up\"}";
    let up = Upstream::start(r#"{"data":[]}"#).await;
    let gw = start(&poll_feed("up", &up.base, r#"["AAPL", "MSFT"]"#), &[]);
    // Twenty good HTTP answers with none of its symbols: not delivering.
    gw.wait_metric(POLLS, |v| v >= 20.0).await;
    assert_eq!(gw.metric(UP).await, 0.0, "answers without its symbols");
    up.set_body(&body(&[("AAPL", "\"1.00\"", "\"1.01\"")]));
    gw.wait_metric(UP, |v| v == 1.0).await;
    // Answers that name only other symbols: down once its symbols go stale.
    up.set_body(&body(&[("ZZZZ", "\"1.00\"", "\"1.01\"")]));
    gw.wait_metric(UP, |v| v == 0.0).await;
    up.set_body(&body(&[("MSFT", "\"2.00\"", "\"2.01\"")]));
    gw.wait_metric(UP, |v| v == 1.0).await;
    // Answers that name its symbols but carry no mapped field (every field null, or a vendor
    // that renamed them; found from outside): not delivering either.
    up.set_body(r#"{"data":[{"sym":"AAPL","b":null,"a":null},{"sym":"MSFT","bid":"2.00"}]}"#);
    gw.wait_metric(UP, |v| v == 0.0).await;
    up.set_body(&body(&[("MSFT", "\"2.00\"", "\"2.01\"")]));
    gw.wait_metric(UP, |v| v == 1.0).await;
    up.set(Mode::Status500);
    gw.wait_metric(UP, |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_come_from_the_environment_reach_the_upstream_and_never_the_log() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let up = Upstream::start(&body(&[("AAPL", "\"1.00\"", "\"1.01\"")])).await;
    let config = poll_feed("up", &up.base, r#"["AAPL"]"#)
        .replace("\"secret-key-123\"", "\"${QUOTEGW_TEST_KEY}\"");
    let dir = std::env::temp_dir().join(format!("quotegw-poll-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("poll.toml");
    std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{config}")).unwrap();

    // Without the variable the start fails, naming the variable and not a value.
    let out = Command::new(env!("CARGO_BIN_EXE_quotegw"))
        .arg("--config")
        .arg(&path)
        .env_remove("QUOTEGW_TEST_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("QUOTEGW_TEST_KEY is not set"));

    // With it, and the most verbose logging, through a success and a failure.
    let mut child = Command::new(env!("CARGO_BIN_EXE_quotegw"))
        .arg("--config")
        .arg(&path)
        .env("QUOTEGW_TEST_KEY", "sk-live-0123456789")
        .env("RUST_LOG", "trace")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while up.requests.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream was never polled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    up.set(Mode::Status500);
    let seen = up.requests.load(std::sync::atomic::Ordering::Relaxed);
    while up.requests.load(std::sync::atomic::Ordering::Relaxed) < seen + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream was not polled again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = reader.join().unwrap();
    assert!(log.contains("poll failed"), "the failure is logged");
    assert!(
        !log.contains("sk-live-0123456789"),
        "the key never appears in the log"
    );
    let heads = up.heads();
    assert!(
        heads.iter().any(|h| h
            .to_ascii_lowercase()
            .contains("x-api-key: sk-live-0123456789")),
        "the key reaches the upstream: {:?}",
        heads.first()
    );
}

/// A hostile upstream cannot fill the log: a quote whose bad value is a megabyte long, polled every
/// 50 ms, is logged cut short, a few lines and then about one a second, each saying how many were
/// held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_upstreams_values_are_logged_short_and_rate_limited() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let huge = "9".repeat(1 << 20);
    let up = Upstream::start(&body(&[("AAPL", &format!("\"{huge}x\""), "\"1.01\"")])).await;
    let dir = std::env::temp_dir().join(format!("quotegw-poll-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("poll.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n{}",
            poll_feed("up", &up.base, r#"["AAPL"]"#)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quotegw"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // 60 polls, each with the bad quote.
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while up.requests.load(std::sync::atomic::Ordering::Relaxed) < 60 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream was not polled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = reader.join().unwrap();
    let dropped: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("quote dropped"))
        .collect();
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    println!(
        "{} polls of a 1 MiB bad value: {} 'quote dropped' lines, the longest log line {longest} bytes",
        up.requests.load(std::sync::atomic::Ordering::Relaxed),
        dropped.len()
    );
    assert!(!dropped.is_empty(), "the bad quote is logged");
    assert!(longest < 1000, "log lines are cut short: {longest} bytes");
    assert!(dropped.len() < 30, "rate-limited: {} lines", dropped.len());
    assert!(
        dropped
            .iter()
            .any(|l| l.contains("suppressed=") && !l.contains("suppressed=0")),
        "a line says how many were held back"
    );
}

crate::with_one_and_two_workers!(
    failover_follows_the_primary_and_seq_keeps_growing,
    fail_back_publishes_the_recovering_feeds_fresh_quote_never_its_old_or_empty_one,
);

/// A poller that maps `volume` infers a print from each rise of it (two trades between polls look
/// like one, their summed size at the latest `last`), none from a `last` that moves alone or a
/// fall of `volume` (a new session), and none from the first answer; one without `volume` prints
/// `last_size` when `last` moves. Every print reaches a `trades` subscriber and `/v1/trades`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_infers_trades_from_volume_or_last() {
    let answer = |sym: &str, last: &str, extra: &str| {
        format!(r#"{{"data":[{{"sym":"{sym}","b":"9.99","a":"10.20","l":"{last}"{extra}}}]}}"#)
    };
    let with_volume = Upstream::start(&answer("AAA", "10.00", r#","v":100"#)).await;
    let without = Upstream::start(&answer("BBB", "20.00", r#","ls":10"#)).await;
    let feed = |name: &str, base: &str, symbol: &str, fields: &str| {
        format!(
            "[[feeds]]\nkind = \"http_poll\"\nname = \"{name}\"\nbase = \"{base}\"\n\
             url = \"{{base}}/q?s={{symbols}}\"\nsymbols = [\"{symbol}\"]\ninterval_ms = 30\n\
             [feeds.response]\nshape = \"array\"\nroot = \"data\"\nsymbol = \"sym\"\n\
             fields = {{ {fields} }}\n"
        )
    };
    let gw = start(
        &(feed(
            "vol",
            &with_volume.base,
            "AAA",
            r#"bid = "b", ask = "a", last = "l", volume = "v""#,
        ) + &feed(
            "novol",
            &without.base,
            "BBB",
            r#"bid = "b", ask = "a", last = "l", last_size = "ls""#,
        )),
        &[],
    );
    let mut c = gw.client().await;
    c.send(json!({"op": "subscribe", "symbols": ["AAA", "BBB"], "trades": true}))
        .await;
    c.expect("ack").await;
    let mut trades = Vec::new();
    let is = |symbol: &'static str, field: &'static str, value: Value| {
        move |m: &Value| m["symbol"] == symbol && m.get(field) == Some(&value)
    };
    let trade =
        |symbol: &'static str| move |m: &Value| m["type"] == "trade" && m["symbol"] == symbol;
    // Both snapshots, in whichever order they come (waiting for one, then the other, hung when
    // the second came first).
    let (mut aaa, mut bbb) = (false, false);
    while !(aaa && bbb) {
        let m = c.next().await;
        assert!(m["type"] != "trade", "nothing from first answers: {m}");
        aaa |= is("AAA", "volume", json!(100))(&m);
        bbb |= is("BBB", "last", json!("20.00"))(&m);
    }
    // AAA: a rise of 50 at 10.05; a last that moves alone; a rise of 250 (two trades, one print).
    with_volume.set_body(&answer("AAA", "10.05", r#","v":150"#));
    trades.extend(trades_until(&mut c, trade("AAA")).await);
    with_volume.set_body(&answer("AAA", "10.07", r#","v":150"#));
    trades.extend(trades_until(&mut c, is("AAA", "last", json!("10.07"))).await);
    with_volume.set_body(&answer("AAA", "10.10", r#","v":400"#));
    trades.extend(trades_until(&mut c, trade("AAA")).await);
    // A new session: volume falls; not a trade.
    with_volume.set_body(&answer("AAA", "10.11", r#","v":5"#));
    trades.extend(trades_until(&mut c, is("AAA", "volume", json!(5))).await);
    // BBB (no volume): a new last prints last_size.
    without.set_body(&answer("BBB", "20.02", r#","ls":30"#));
    trades.extend(trades_until(&mut c, trade("BBB")).await);
    // Nothing else was printed: the frame after the last print holds no trade.
    for m in c.sync("end").await {
        assert!(m["type"] != "trade", "{m}");
    }
    assert_eq!(
        trades,
        [
            (json!("AAA"), json!("10.05"), json!(50)),
            (json!("AAA"), json!("10.10"), json!(250)),
            (json!("BBB"), json!("20.02"), json!(30)),
        ]
    );
    let (status, _, body) = support::http(gw.addr, "GET", "/v1/trades?symbol=AAA", &[]).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let sizes: Vec<&Value> = v["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["size"])
        .collect();
    assert_eq!(sizes, [&json!(50), &json!(250)], "{body}");
}

/// Reads until a message matches `pred`; returns the prints read, the match included.
async fn trades_until(
    c: &mut support::Client,
    pred: impl Fn(&Value) -> bool,
) -> Vec<(Value, Value, Value)> {
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(support::DEADLINE, c.next())
            .await
            .unwrap_or_else(|_| panic!("no message matched within the deadline; prints {seen:?}"));
        if m["type"] == "trade" {
            seen.push((m["symbol"].clone(), m["price"].clone(), m["size"].clone()));
        }
        if pred(&m) {
            return seen;
        }
    }
}

/// Found from outside: `quotegw record` of a poller whose upstream clock stepped back wrote a line
/// with a `ts` before the one above it, a file replay refuses. The recorder keeps `ts`
/// non-decreasing (the stepped-back tick is written at the time of the one before), and the
/// recording replays: the same prints, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_a_poller_whose_clock_steps_back_replays() {
    let answer = |ts: i64, last: &str, volume: u64| {
        format!(
            r#"{{"data":[{{"sym":"CLK","t":{ts},"b":"9.99","a":"10.20","l":"{last}","v":{volume}}}]}}"#
        )
    };
    let up = Upstream::start(&answer(1_795_000_010_000, "10.00", 100)).await;
    let dir = std::env::temp_dir().join(format!("quotegw-clock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("poll.toml");
    std::fs::write(
        &config,
        format!(
            "[[feeds]]\nkind = \"http_poll\"\nname = \"clk\"\nbase = \"{}\"\n\
             url = \"{{base}}/q?s={{symbols}}\"\nsymbols = [\"CLK\"]\ninterval_ms = 30\n\
             [feeds.response]\nshape = \"array\"\nroot = \"data\"\nsymbol = \"sym\"\n\
             fields = {{ ts = \"t\", bid = \"b\", ask = \"a\", last = \"l\", volume = \"v\" }}\n",
            up.base
        ),
    )
    .unwrap();
    let recording = dir.join("clk.ndjson");
    let record = std::process::Command::new(env!("CARGO_BIN_EXE_quotegw"))
        .arg("record")
        .arg("--config")
        .arg(&config)
        .arg("--duration")
        .arg("3")
        .arg("--to")
        .arg(&recording)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A print at 10.05, then one the upstream stamps 5 s earlier, then one after.
    for (ts, last, volume) in [
        (1_795_000_011_000, "10.05", 150),
        (1_795_000_006_000, "10.07", 170),
        (1_795_000_012_000, "10.09", 200),
    ] {
        tokio::time::sleep(Duration::from_millis(600)).await;
        up.set_body(&answer(ts, last, volume));
    }
    let out = tokio::task::spawn_blocking(move || record.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&recording).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ts: Vec<i64> = lines.iter().map(|l| l["ts"].as_i64().unwrap()).collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "ts never goes down: {ts:?}"
    );
    let prints: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| l["last_size"].as_u64().unwrap_or(0) > 0)
        .map(|l| {
            (
                l["last"].as_str().unwrap(),
                l["last_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        prints,
        [("10.05", 50), ("10.07", 20), ("10.09", 30)],
        "{text}"
    );
    // And it replays: the gateway serves the same prints.
    let gw = start(
        &format!(
            "[[feeds]]\nkind = \"replay\"\nname = \"rp\"\npath = \"{}\"\nspeed = \"max\"\n",
            recording.display()
        ),
        &[],
    );
    gw.wait_metric("quotegw_trades_received_total{feed=\"rp\"}", |v| v == 3.0)
        .await;
    let (status, _, body) = support::http(gw.addr, "GET", "/v1/trades?symbol=CLK", &[]).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let sizes: Vec<&Value> = v["trades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["size"])
        .collect();
    assert_eq!(sizes, [&json!(50), &json!(20), &json!(30)], "{body}");
}
