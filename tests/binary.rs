//! The `quotegw` binary itself: a bad config fails at start naming file, key and reason;
//! `check-config`; SIGHUP reloads the access settings; SIGTERM closes every WebSocket with 1001 and
//! the process exits.

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
async fn sighup_without_a_config_file_changes_nothing_and_sigterm_closes_every_websocket_with_1001()
{
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

    // Regression: SIGHUP (a closing terminal, logrotate, an operator's habit) took its default
    // action and ended the process at once, every client reset. Without a config file there is
    // nothing to reload: it is logged, and every client still gets news after it.
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for c in &mut clients {
        c.sync("after-hup").await;
        c.until(|m| m["type"] == "update").await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );

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

/// A gateway process whose stderr lines are collected, and the address it logged.
struct Logged {
    child: std::process::Child,
    addr: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Logged {
    /// Starts `command` (which must log its address) and waits for the address.
    fn start(mut command: Command) -> Logged {
        let mut child = command
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = addr_tx.try_send(rest.split_whitespace().next().unwrap().to_string());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(support::DEADLINE)
            .expect("the gateway logs its address");
        Logged { child, addr, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("quotegw-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Protected mode: `auth = "off"` on a non-loopback address is a config error saying how to
/// choose; with `allow_anonymous = true` (or auth on) the gateway serves a non-loopback address,
/// reached here through 127.0.0.1.
#[tokio::test]
async fn anonymous_access_off_loopback_must_be_chosen() {
    let out = quotegw().args(["--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access.auth") && err.contains("not a loopback address"),
        "{err}"
    );
    assert!(err.contains("allow_anonymous = true"), "{err}");

    let path = config_file(
        "anonymous.toml",
        "listen = \"0.0.0.0:0\"\nworkers = 2\n[access]\nallow_anonymous = true\n\
         [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 20\nticks_per_second = 200\n",
    );
    let mut command = quotegw();
    command.arg("--config").arg(&path);
    let gw = Logged::start(command);
    let port = gw.addr.rsplit(':').next().unwrap();
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
    c.send(json!({"op": "subscribe", "symbols": ["AAPL"]}))
        .await;
    c.expect("ack").await;
    c.expect("snapshot").await;
}

/// At start the soft open-file limit is raised to the hard one; a hard limit too low for
/// `max_connections` refuses to start, saying what to change.
#[test]
fn the_open_file_limit_is_raised_or_the_start_refused() {
    let under_ulimit = |ulimit: &str| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(format!(
                "ulimit {ulimit} && exec \"$0\" --listen 127.0.0.1:0"
            ))
            .arg(env!("CARGO_BIN_EXE_quotegw"));
        c
    };
    let out = under_ulimit("-n 512").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("limits.max_connections needs") && err.contains("hard open-file limit is 512"),
        "{err}"
    );

    // A soft limit of 1,024 under a higher hard one: raised, and the gateway runs.
    let hard: u64 = String::from_utf8(
        Command::new("bash")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    if hard < 11_000 {
        println!(
            "hard limit {hard}: too low to start the default config; checked the refusal only"
        );
        return;
    }
    let gw = Logged::start(under_ulimit("-Sn 1024"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[3], cols[4], "soft raised to hard: {line}");
}

/// Security events are logged with the peer address and reason, rate-limited, never with the
/// token: refused handshakes and abuse closes.
#[tokio::test]
async fn refusals_and_abuse_closes_are_logged_without_the_token() {
    const SECRET: &str = "leaky-token-that-must-not-be-logged";
    let path = config_file(
        "seclog.toml",
        "listen = \"127.0.0.1:0\"\nworkers = 1\n[access]\nauth = \"api_key\"\n\
         api_keys = [\"good-key-0123456789abcdef\"]\n\
         [limits]\nauth_failures_per_ip = 1000\nmax_frame_bytes = 1024\n\
         [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 20\nticks_per_second = 200\n",
    );
    let mut command = quotegw();
    command.arg("--config").arg(&path);
    let gw = Logged::start(command);
    let addr: std::net::SocketAddr = gw.addr.parse().unwrap();
    for _ in 0..200 {
        let (status, _) = support::upgrade(addr, &format!("/ws?token={SECRET}"), &[]).await;
        assert_eq!(status, 401);
    }
    // The log's limiter lets lines through again after a pause (it refills at 5 lines a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // An abuse close: a frame over max_frame_bytes.
    let mut c = Client::connect(&format!("ws://{addr}/ws?token=good-key-0123456789abcdef")).await;
    c.send_text(&"x".repeat(4096)).await;
    assert_eq!(c.expect_close().await.0, 1009);
    let deadline = Instant::now() + support::DEADLINE;
    while !gw.lines().iter().any(|l| l.contains("connection closed")) {
        assert!(
            Instant::now() < deadline,
            "no close logged: {:?}",
            gw.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = gw.lines();
    assert!(
        lines.iter().all(|l| !l.contains(SECRET)),
        "a token in the log"
    );
    let refused: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("request refused"))
        .collect();
    println!(
        "200 refusals → {} log lines; first: {}",
        refused.len(),
        refused[0]
    );
    assert!(
        refused[0].contains("peer=127.0.0.1:") && refused[0].contains("reason=\"unauthorized\""),
        "{}",
        refused[0]
    );
    assert!(refused[0].contains("status=401"), "{}", refused[0]);
    assert!(refused[0].contains("transport=\"ws\""), "{}", refused[0]);
    // A REST refusal names its transport: it was logged as an upgrade.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, _) = support::http(
        addr,
        "GET",
        &format!("/v1/quotes?symbols=AAPL&token={SECRET}"),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    let deadline = Instant::now() + support::DEADLINE;
    while !gw
        .lines()
        .iter()
        .any(|l| l.contains("request refused") && l.contains("transport=\"rest\""))
    {
        assert!(Instant::now() < deadline, "no REST refusal logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused.len() < 100, "rate-limited: {} lines", refused.len());
    let closed = lines
        .iter()
        .find(|l| l.contains("connection closed"))
        .unwrap();
    assert!(
        closed.contains("code=1009") && closed.contains("peer=127.0.0.1:"),
        "{closed}"
    );
    assert!(closed.contains("suppressed="), "{closed}");
}

/// `quotegw check-config` (like `nginx -t`): what a start would refuse, it refuses with the same
/// error (a feed's file, a JWT key file missing or not a key, a NATS URL, the open-file limit); a
/// valid config is described, and nothing is listened on or connected to: its NATS server and its
/// listen address are sockets this test holds, which see no connection and stay taken.
#[test]
fn check_config_refuses_what_a_start_would_without_listening_or_connecting() {
    let error_line = |out: &std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        err.lines()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or_else(|| panic!("no error line: {err}"))
            .to_string()
    };
    let garbage = config_file("garbage.pem", "not a key\n");
    let feed = "[[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = 5\n";
    for (name, text, says) in [
        (
            "replay.toml",
            "listen = \"127.0.0.1:0\"\n[[feeds]]\nkind = \"replay\"\nname = \"r\"\npath = \"/nonexistent/feed.ndjson\"\n".to_string(),
            "cannot open /nonexistent/feed.ndjson",
        ),
        (
            "jwt-missing.toml",
            format!("listen = \"127.0.0.1:0\"\n[access]\nauth = \"jwt\"\njwt_rs256_public_key_file = \"/nonexistent/key.pem\"\n{feed}"),
            "/nonexistent/key.pem",
        ),
        (
            "jwt-garbage.toml",
            format!("listen = \"127.0.0.1:0\"\n[access]\nauth = \"jwt\"\njwt_rs256_public_key_file = \"{}\"\n{feed}", garbage.display()),
            "garbage.pem",
        ),
        (
            // An [access] error names the file (its key alone would not say which).
            "twice.toml",
            format!("listen = \"127.0.0.1:0\"\n[access]\nauth = \"api_key\"\napi_keys = [\"0123456789abcdef\", \"0123456789abcdef\"]\n{feed}"),
            "twice.toml: access.api_keys: entries 1 and 2 are the same key",
        ),
        (
            // Refused alike (found from outside: a start said the port was in use).
            "same-port.toml",
            format!("listen = \"127.0.0.1:1\"\nmetrics_listen = \"127.0.0.1:1\"\n{feed}"),
            "is listen's address",
        ),
        (
            "nats-url.toml",
            "listen = \"127.0.0.1:0\"\n[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"http://10.0.0.5:4222\"\n".to_string(),
            "nats_url",
        ),
    ] {
        let path = config_file(name, &text);
        let checked = quotegw()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let started = quotegw().arg("--config").arg(&path).output().unwrap();
        assert!(!checked.status.success() && !started.status.success(), "{name}");
        let line = error_line(&checked);
        assert!(line.contains(says), "{name}: {line}");
        assert_eq!(line, error_line(&started), "{name}: the error a start gives");
    }
    // The open-file limit, as a start refuses it.
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 512 && exec \"$0\" check-config")
        .arg(env!("CARGO_BIN_EXE_quotegw"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("hard open-file limit is 512"),
        "{}",
        error_line(&out)
    );

    // Valid: described, with nothing bound or connected.
    let nats = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    nats.set_nonblocking(true).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = config_file(
        "valid.toml",
        &format!(
            "listen = \"{}\"\n{feed}[publish]\nnats_url = \"nats://ingest:s3cret@{}\"\n",
            taken.local_addr().unwrap(),
            nats.local_addr().unwrap()
        ),
    );
    let out = quotegw()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("valid.toml is valid"), "{said}");
    assert!(said.contains("feed 'sim' (simulated): 5 symbols"), "{said}");
    assert!(said.contains("scale-out ingest: stream QUOTEGW"), "{said}");
    assert!(!said.contains("s3cret"), "{said}");
    assert!(
        matches!(nats.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "check-config connected to NATS"
    );
}

/// Waits until `gw` has logged `what` `n` times.
async fn logged_times(gw: &Logged, what: &str, n: usize) {
    let deadline = Instant::now() + support::DEADLINE;
    while gw.lines().iter().filter(|l| l.contains(what)).count() < n {
        assert!(Instant::now() < deadline, "{:?}", gw.lines());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Key rotation without a restart: SIGHUP re-reads the config and applies `[access]`. Under 200
/// connections (100 per key) and an SSE stream, a key taken out closes exactly its clients with
/// 1008 "credential revoked"; the other key's clients keep getting news on the same connections;
/// the new key is admitted and the old one refused; a change that needs a restart is logged as
/// such. A config that fails to load is logged and the keys in force are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_keys_and_closes_only_the_revoked_keys_clients() {
    const A: &str = "key-a-0123456789abcdef";
    const B: &str = "key-b-0123456789abcdef";
    const C: &str = "key-c-0123456789abcdef";
    let config = |keys: &[&str], workers: usize| {
        format!(
            "listen = \"127.0.0.1:0\"\nworkers = {workers}\n[limits]\nmax_connections_per_ip = 1000\n\
             max_connections_per_token = 1000\n[access]\nauth = \"api_key\"\napi_keys = {keys:?}\n\
             [[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = [\"AAPL\", \"MSFT\"]\nticks_per_second = 100\n"
        )
    };
    let path = config_file("rotate.toml", &config(&[A, B], 2));
    let mut command = quotegw();
    command.arg("--config").arg(&path);
    let gw = Logged::start(command);
    let addr: std::net::SocketAddr = gw.addr.parse().unwrap();
    let connect = |key: &'static str| async move {
        let mut c = Client::connect(&format!("ws://{addr}/ws?token={key}")).await;
        c.send(json!({"op": "subscribe", "symbols": ["AAPL"]}))
            .await;
        c.expect("ack").await;
        c
    };
    let mut keeps = Vec::new();
    let mut revoked = Vec::new();
    for _ in 0..100 {
        keeps.push(connect(A).await);
        revoked.push(connect(B).await);
    }
    let mut sse = support::SseClient::connect(
        addr,
        "/v1/stream?symbols=AAPL",
        &[("authorization", &format!("Bearer {B}"))],
    )
    .await;
    assert!(sse.next_event().await.is_some());

    // A client admitted by a ticket for B is B's client; a ticket for B not yet used dies with B.
    let ticket = |key: &'static str| async move {
        let (status, _, body) = support::http(
            addr,
            "POST",
            "/v1/ticket",
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        answer["ticket"].as_str().unwrap().to_string()
    };
    let mut by_ticket =
        Client::connect(&format!("ws://{addr}/ws?ticket={}", ticket(B).await)).await;
    by_ticket.subscribe(&["AAPL"]).await;
    revoked.push(by_ticket);
    let unused = ticket(B).await;

    std::fs::write(&path, config(&[A, C], 3)).unwrap();
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &gw.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    for c in &mut revoked {
        assert_eq!(
            c.expect_close().await,
            (1008, "credential revoked".to_string())
        );
    }
    while sse.next_event().await.is_some() {}
    let (status, _) = support::upgrade(addr, &format!("/ws?ticket={unused}"), &[]).await;
    assert_eq!(status, 401, "a ticket for a revoked key");
    for (i, c) in keeps.iter_mut().enumerate() {
        c.sync(&format!("after-{i}")).await;
        c.until(|m| m["type"] == "update").await;
    }
    let quotes = |key: &'static str| async move {
        support::http(
            addr,
            "GET",
            "/v1/quotes?symbols=AAPL",
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await
        .0
    };
    assert_eq!(
        (quotes(A).await, quotes(B).await, quotes(C).await),
        (200, 401, 200)
    );
    let mut new = connect(C).await;
    new.until(|m| m["type"] == "snapshot").await;
    let logged = |what: &str| gw.lines().iter().any(|l| l.contains(what));
    assert!(
        logged("workers changed but apply only after a restart"),
        "{:?}",
        gw.lines()
    );

    // The revoked key, tried until the failure throttle refuses it unverified, then added back:
    // it verifies again at once (the throttle never refuses a token that verifies).
    let mut refused = 0;
    while refused != 429 {
        refused = quotes(B).await;
        assert!(refused == 401 || refused == 429, "{refused}");
    }
    std::fs::write(&path, config(&[A, B, C], 3)).unwrap();
    hup();
    logged_times(&gw, "SIGHUP: reloaded", 2).await;
    assert_eq!(quotes(B).await, 200, "a key added back verifies at once");

    // Configs that do not load, or that a start would refuse, keep the settings in force: a bad
    // key, an empty file (found from outside: it turned auth off), and `auth = "off"` alone, whose
    // own `listen` is loopback but not the address the gateway is bound to.
    for (n, text) in [
        "[access]\nauth = \"api_key\"\napi_keys = [\"short\"]\n",
        "",
        "listen = \"127.0.0.1:1\"\n[access]\nauth = \"off\"\n",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&path, text).unwrap();
        hup();
        logged_times(&gw, "the config in force is kept", n + 1).await;
        assert_eq!(quotes(C).await, 200, "{text:?}");
        assert_eq!(
            support::http(addr, "GET", "/v1/quotes?symbols=AAPL", &[])
                .await
                .0,
            401,
            "{text:?}: auth stays on"
        );
    }
    assert_eq!((quotes(A).await, quotes(C).await), (200, 200));
    for c in keeps.iter_mut().take(10) {
        c.sync("after-bad").await;
    }
    new.sync("after-bad").await;
}
