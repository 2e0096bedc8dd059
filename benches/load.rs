//! The load harness: a real quotegw process (the release binary, simulated feed) and N real WebSocket
//! clients on 127.0.0.1, measuring what users see end to end: delivered updates/s, tick-to-client
//! latency (the feed stamps `ts` at emission, in ms; one host, one clock), `seq` regressions and gaps
//! not explained by `conflated`, snapshot-before-update, server CPU-seconds per million deliveries
//! (`/proc/PID/stat`) and server RSS (`/proc/PID/status`).
//!
//! Run: `cargo bench --bench load -- <workload> [flags]`, e.g.
//!   cargo bench --bench load -- idle --clients 1000          # RSS per idle connection
//!   cargo bench --bench load -- fanout --clients 1000 --symbols-per-client 1 --universe 1 --rate 2000
//!   cargo bench --bench load -- ramp --clients 1000 --universe 1   # highest clean rate into N clients
//!   cargo bench --bench load -- run w2 --server bun --runs 3   # a comparison workload (W0..W4)
//! against quotegw or a peer (benches/peers/); benches/compare.sh runs all of them, see
//! docs/benchmarks.md. Every phase is bounded (setup 60 s, teardown 20 s, 10 s per handshake), so a
//! server that cannot keep up yields a report, never a hang.
//! `--transport sse` has the clients read `/v1/stream` instead of WebSockets (quotegw only), e.g.
//!   cargo bench --bench load -- fanout --clients 1000 --symbols-per-client 10 --transport sse
//! `--topology edge` measures a scale-out edge (docs/deployment.md): nats-server and an ingest
//! playing the feed run on the harness's core, the edge on the server's, e.g.
//!   cargo bench --bench load -- fanout --clients 200 --symbols-per-client 10 --rate 20000 --topology edge
//! `QUOTEGW_LOAD_LIMITS` adds lines to the gateway's `[limits]` (to compare settings on one
//! workload, e.g. `QUOTEGW_LOAD_LIMITS="send_buffer_bytes = 0"`).
//! `cargo bench --bench load -- --help` lists every flag. Each run prints a readable table and one JSON
//! line (prefixed `RESULT `). The server runs on core 0 and the harness on core 1 (`taskset`) unless
//! `--no-pin`. Under `cargo test` (no `--bench` argument) it runs a few-second smoke run that asserts
//! correctness only, never speed.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The gateway's `max_connections` here: above W0's 10,000 clients, and within what the open-file
/// limit of a machine like this one (20,000) can hold, which the gateway checks at start.
const MAX_CONNECTIONS: usize = 12_000;
/// Latency histogram resolution: 1 ms buckets (the resolution of `ts`), the last one open-ended.
const LATENCY_BUCKETS_MS: usize = 10_000;
/// Clients connect this many at a time, so the accept backlog never overflows.
const CONNECT_CONCURRENCY: usize = 100;
/// Small client buffers so that 10,000 clients fit in the harness's memory.
const CLIENT_READ_BUFFER: usize = 4096;
/// How long all clients may take to connect and receive every snapshot, and how long they may take
/// to close at the end: a server that cannot keep up makes a run fail or report, never hang.
const SETUP_LIMIT: Duration = Duration::from_secs(60);
const TEARDOWN_LIMIT: Duration = Duration::from_secs(20);

#[derive(Parser, Debug)]
#[command(about = "quotegw load harness (see the first comment of benches/load.rs)")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug, Clone)]
enum Workload {
    /// One of the comparison workloads (W0..W5, Hot1k..Hot5k, defined in `preset`), against
    /// quotegw or a peer.
    Run {
        #[arg(value_enum)]
        preset: Preset,
        #[arg(long, value_enum, default_value = "quotegw")]
        server: ServerKind,
        /// Runs; the median (by deliveries/s, or highest clean rate for W1) is reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long)]
        duration_s: Option<u64>,
        #[arg(long)]
        workers: Option<usize>,
        #[arg(long)]
        no_pin: bool,
        /// Subscribe with trades and 1 s bars too (quotegw only): the cost of trades and bars.
        #[arg(long)]
        market: bool,
    },
    /// Connections that subscribe (--symbols-per-client) and then idle (the feed ticks once a
    /// second): server RSS per connection.
    Idle(Common),
    /// Clients subscribed while the feed ticks at --rate for --duration-s.
    Fanout(Common),
    /// Fanout at rising rates (×1.5 from --rate) until p99 ≥ 50 ms, gaps or conflation appear.
    Ramp(Common),
}

/// The comparison workloads of docs/benchmarks.md, defined once.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Preset {
    /// 10,000 idle connections, 1 symbol each: RSS per connection.
    W0,
    /// 1,000 clients on 1 hot symbol, rate ramped from 1,000/s: highest rate with p99 < 50 ms, no loss.
    W1,
    /// 5,000 clients × 20 symbols, Zipf over 500, 10,000 ticks/s.
    W2,
    /// W2 with 5% of clients reading 10 messages/s.
    W3,
    /// W2 with 200 connects and disconnects per second.
    W4,
    /// 2,000 clients × 10 symbols, Zipf over 500, 5,000 ticks/s drawn uniformly over the 500: a
    /// rate every server sustains (issue 13's multi-symbol workload).
    W5,
    /// 1,000 clients on 1 hot symbol at a fixed 1,000 ticks/s (issue 13).
    Hot1k,
    /// The same at 2,000 ticks/s.
    Hot2k,
    /// The same at 3,000 ticks/s.
    Hot3k,
    /// The same at 5,000 ticks/s: past one core for every server; shows how each degrades.
    Hot5k,
}

fn preset(p: Preset, server: ServerKind) -> (&'static str, Common) {
    let w2 = Common {
        clients: 5000,
        symbols_per_client: 20,
        universe: 500,
        rate: 10_000,
        duration_s: 10,
        workers: 1,
        slow_clients: 0,
        slow_rate: 10,
        no_pin: false,
        server,
        // Every server plays the same recorded ticks (restamped at emission).
        source: Source::File,
        churn_per_s: 0,
        transport: Transport::Ws,
        topology: Topology::Embedded,
        market: false,
    };
    match p {
        Preset::W0 => (
            "idle",
            Common {
                clients: 10_000,
                symbols_per_client: 1,
                rate: 1,
                ..w2
            },
        ),
        Preset::W1 => (
            "ramp",
            Common {
                clients: 1000,
                symbols_per_client: 1,
                universe: 1,
                rate: 1000,
                duration_s: 5,
                ..w2
            },
        ),
        Preset::W2 => ("fanout", w2),
        Preset::W5 => (
            "fanout",
            Common {
                clients: 2000,
                symbols_per_client: 10,
                rate: 5000,
                source: Source::Uniform,
                ..w2
            },
        ),
        Preset::Hot1k | Preset::Hot2k | Preset::Hot3k | Preset::Hot5k => (
            "fanout",
            Common {
                clients: 1000,
                symbols_per_client: 1,
                universe: 1,
                rate: match p {
                    Preset::Hot1k => 1000,
                    Preset::Hot2k => 2000,
                    Preset::Hot3k => 3000,
                    _ => 5000,
                },
                ..w2
            },
        ),
        Preset::W3 => (
            "fanout",
            Common {
                slow_clients: 250,
                ..w2
            },
        ),
        Preset::W4 => (
            "fanout",
            Common {
                churn_per_s: 200,
                ..w2
            },
        ),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ServerKind {
    Quotegw,
    /// Bun's WebSocket pub/sub (uWebSockets), benches/peers/bun.mjs.
    Bun,
    /// Node 20 with `ws`, benches/peers/node-ws.mjs.
    Node,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Source {
    /// quotegw's simulated feed (quotegw only).
    Simulated,
    /// A recorded file of the simulated feed, replayed and restamped by every server alike.
    File,
    /// A file of ticks each moving one symbol's bid, the symbol drawn uniformly (the independent
    /// load client's pattern, issue 13), replayed and restamped by every server alike.
    Uniform,
}

#[derive(clap::Args, Debug, Clone)]
struct Common {
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Symbols per client, drawn Zipf (s = 1) over the universe without repeats.
    #[arg(long, default_value_t = 1)]
    symbols_per_client: usize,
    /// Symbols the simulated feed serves.
    #[arg(long, default_value_t = 500)]
    universe: usize,
    /// Feed ticks per second (total over the universe).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Server worker threads (0 = one per core).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Clients among --clients that read at most --slow-rate messages per second.
    #[arg(long, default_value_t = 0)]
    slow_clients: usize,
    #[arg(long, default_value_t = 10)]
    slow_rate: u32,
    /// Do not pin the server and the harness to separate cores.
    #[arg(long)]
    no_pin: bool,
    #[arg(long, value_enum, default_value = "quotegw")]
    server: ServerKind,
    #[arg(long, value_enum, default_value = "simulated")]
    source: Source,
    /// Extra short-lived clients connected (and, a second later, disconnected) per second.
    #[arg(long, default_value_t = 0)]
    churn_per_s: u32,
    /// How the clients read quotegw: WebSockets, or Server-Sent Events (`/v1/stream`).
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// quotegw alone (`embedded`), or a scale-out `edge` measured behind nats-server and an
    /// ingest that run the feed (both on the harness's core: the edge is alone on its own).
    #[arg(long, value_enum, default_value = "embedded")]
    topology: Topology,
    /// Subscribe with `"trades": true` and `"bars": "1s"` too (quotegw only).
    #[arg(long)]
    market: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Topology {
    Embedded,
    Edge,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
    Ws,
    Sse,
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    symbol: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    conflated: Option<u64>,
    /// A `trades_lost`'s count.
    #[serde(default)]
    count: Option<u64>,
}

/// Shared by all client tasks; atomics so no client waits on another.
struct Stats {
    counting: AtomicBool,
    updates: AtomicU64,
    conflated: AtomicU64,
    trades: AtomicU64,
    trades_lost: AtomicU64,
    bars: AtomicU64,
    snapshots: AtomicU64,
    frames: AtomicU64,
    seq_regressions: AtomicU64,
    gaps: AtomicU64,
    update_before_snapshot: AtomicU64,
    closed_early: AtomicU64,
    /// Clients holding every snapshot they asked for; they keep reading, nobody waits on them.
    ready_clients: AtomicU64,
    ready_changed: tokio::sync::Notify,
    latency_ms: Vec<AtomicU64>,
    fast_latency_ms: Vec<AtomicU64>,
}

impl Stats {
    fn new() -> Stats {
        let hist = || (0..LATENCY_BUCKETS_MS).map(|_| AtomicU64::new(0)).collect();
        Stats {
            counting: AtomicBool::new(false),
            updates: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            trades: AtomicU64::new(0),
            trades_lost: AtomicU64::new(0),
            bars: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            seq_regressions: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            update_before_snapshot: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
            ready_clients: AtomicU64::new(0),
            ready_changed: tokio::sync::Notify::new(),
            latency_ms: hist(),
            fast_latency_ms: hist(),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

fn percentile(hist: &[AtomicU64], p: f64) -> Option<u64> {
    let counts: Vec<u64> = hist.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (ms, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(ms as u64);
        }
    }
    Some(LATENCY_BUCKETS_MS as u64 - 1)
}

/// The gateway under test, a separate process so that its CPU and RSS are its own.
struct Server {
    child: Child,
    addr: String,
    kind: ServerKind,
    /// (scale-out) nats-server and the ingest, stopped with the server.
    helpers: Vec<Child>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    fn start(c: &Common, pin: Option<&str>) -> Server {
        let dir = std::env::temp_dir().join(format!("quotegw-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let source = match (c.server, c.source) {
            (ServerKind::Quotegw, s) | (_, s @ Source::Uniform) => s,
            _ => Source::File,
        };
        let ticks = match source {
            Source::Simulated => None,
            Source::File => Some(ticks_file(c.universe, c.rate)),
            Source::Uniform => Some(uniform_ticks_file(c.universe, c.rate)),
        };
        let root = env!("CARGO_MANIFEST_DIR");
        let peers =
            std::env::var("QUOTEGW_PEERS_DIR").unwrap_or_else(|_| format!("{root}/target/peers"));
        let mut helpers = Vec::new();
        let (program, args): (String, Vec<String>) = match c.server {
            ServerKind::Quotegw => {
                let config = dir.join("load.toml");
                let feed = match &ticks {
                    Some(file) => format!(
                        "kind = \"replay\"\nname = \"sim\"\npath = \"{}\"\nspeed = 1.0\nloop = true\nrestamp = true\n",
                        file.display()
                    ),
                    None => format!(
                        "kind = \"simulated\"\nname = \"sim\"\nsymbols = {}\nticks_per_second = {}\nseed = 42\n",
                        c.universe, c.rate
                    ),
                };
                // Lines for [limits] to compare settings on the same workload, e.g.
                // QUOTEGW_LOAD_LIMITS="send_buffer_bytes = 0".
                let extra = std::env::var("QUOTEGW_LOAD_LIMITS").unwrap_or_default();
                let limits = format!(
                    "[limits]\nmax_connections = {MAX_CONNECTIONS}\n\
                     max_connections_per_ip = 100000\nmax_connections_per_token = 100000\n\
                     max_pending_per_ip = 100000\n\
                     max_symbols_per_connection = 100000\n{extra}\n"
                );
                let feed = match c.topology {
                    Topology::Embedded => feed,
                    Topology::Edge => {
                        // nats-server and an ingest playing the feed, on the harness's core; the
                        // edge (the server measured) takes the states over NATS.
                        let nats_port = free_port();
                        let nats = Command::new("taskset")
                            .args(["-c", "1", "/usr/sbin/nats-server", "-js", "-a", "127.0.0.1"])
                            .args(["-p", &nats_port.to_string(), "-sd"])
                            .arg(dir.join("nats"))
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .expect("start nats-server (apt-get install nats-server)");
                        helpers.push(nats);
                        let url = format!("nats://127.0.0.1:{nats_port}");
                        let ingest_config = dir.join("ingest.toml");
                        std::fs::write(
                            &ingest_config,
                            format!(
                                "listen = \"127.0.0.1:{}\"\nworkers = 1\n[publish]\nnats_url = \"{url}\"\n[[feeds]]\n{feed}",
                                free_port()
                            ),
                        )
                        .expect("write the ingest's config");
                        let ingest = Command::new("taskset")
                            .args(["-c", "1", env!("CARGO_BIN_EXE_quotegw"), "--config"])
                            .arg(&ingest_config)
                            .env("RUST_LOG", "warn")
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .expect("start the ingest");
                        helpers.push(ingest);
                        format!("kind = \"nats\"\nname = \"bus\"\nnats_url = \"{url}\"\n")
                    }
                };
                std::fs::write(
                    &config,
                    format!(
                        "listen = \"127.0.0.1:{port}\"\nworkers = {}\n{limits}[[feeds]]\n{feed}",
                        c.workers
                    ),
                )
                .expect("write config");
                (
                    env!("CARGO_BIN_EXE_quotegw").to_string(),
                    vec!["--config".into(), config.display().to_string()],
                )
            }
            ServerKind::Bun => (
                format!("{peers}/node_modules/.bin/bun"),
                vec![format!("{root}/benches/peers/bun.mjs")],
            ),
            ServerKind::Node => (
                "node".into(),
                vec![format!("{root}/benches/peers/node-ws.mjs")],
            ),
        };
        let mut args = args;
        if c.server != ServerKind::Quotegw {
            let file = ticks.as_ref().expect("peers replay a file");
            args.extend([port.to_string(), file.display().to_string(), "1".into()]);
        }
        let mut cmd = match pin {
            Some(core) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", core, &program]);
                cmd
            }
            None => Command::new(&program),
        };
        let child = cmd
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("PEERS_NODE_MODULES", format!("{peers}/node_modules"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {program}: {e} (peers: run benches/compare.sh, which installs them)")
            });
        let addr = format!("127.0.0.1:{port}");
        let server = Server {
            child,
            addr,
            kind: c.server,
            helpers,
            _dir: TempDir(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = |s: &Server| match s.kind {
            ServerKind::Quotegw => {
                http_get_blocking(&s.addr, "/readyz").map(|(st, _)| st) == Some(200)
            }
            _ => std::net::TcpStream::connect(&s.addr).is_ok(),
        };
        while !ready(&server) {
            assert!(Instant::now() < deadline, "the server did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (user + system CPU seconds, RSS bytes) from /proc.
    fn usage(&self) -> (f64, u64) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cpu = (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second();
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        (cpu, rss_kib * 1024)
    }

    fn metric(&self, series: &str) -> f64 {
        if self.kind != ServerKind::Quotegw {
            return f64::NAN; // the peers have no metrics endpoint
        }
        let Some((_, body)) = http_get_blocking(&self.addr, "/metrics") else {
            return f64::NAN;
        };
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(name, _)| *name == series)
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.helpers.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A recorded file of the simulated feed (`universe` symbols, `rate` ticks/s, seed 42, 30 s), made
/// once with `quotegw record --virtual-time` and cached under target/load-ticks/.
fn ticks_file(universe: usize, rate: u32) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load-ticks");
    std::fs::create_dir_all(&dir).expect("target/load-ticks");
    let file = dir.join(format!("u{universe}-r{rate}-s42.ndjson"));
    if !file.exists() {
        let config = dir.join(format!("u{universe}-r{rate}.toml"));
        std::fs::write(
            &config,
            format!("[[feeds]]\nkind = \"simulated\"\nname = \"sim\"\nsymbols = {universe}\nticks_per_second = {rate}\nseed = 42\n"),
        )
        .expect("write record config");
        let partial = file.with_extension("partial");
        let status = Command::new(env!("CARGO_BIN_EXE_quotegw"))
            .args(["record", "--virtual-time", "--duration", "30", "--config"])
            .arg(&config)
            .arg("--to")
            .arg(&partial)
            .stderr(Stdio::null())
            .status()
            .expect("run quotegw record");
        assert!(status.success(), "quotegw record failed");
        std::fs::rename(&partial, &file).expect("rename the tick file");
    }
    file
}

/// Ticks that each move one symbol's bid by a cent, the symbol drawn uniformly over `universe`
/// (deterministic), `rate` a second for 30 s, after one full quote per symbol (the simulated
/// feed's first lines): made once and cached under target/load-ticks/.
fn uniform_ticks_file(universe: usize, rate: u32) -> std::path::PathBuf {
    let simulated = ticks_file(universe, rate);
    let file = simulated.with_file_name(format!("u{universe}-r{rate}-uniform.ndjson"));
    if file.exists() {
        return file;
    }
    #[derive(Deserialize)]
    struct First {
        ts: i64,
        symbol: String,
        bid: String,
    }
    let text = std::fs::read_to_string(&simulated).expect("read the simulated ticks");
    let mut out = String::new();
    let mut bids = Vec::new();
    let mut t0 = 0;
    for line in text.lines().take(universe) {
        let first: First = serde_json::from_str(line).expect("a simulated tick");
        t0 = first.ts;
        let cents = (first.bid.parse::<f64>().expect("a bid") * 100.0).round() as i64;
        bids.push((first.symbol, cents));
        out.push_str(line);
        out.push('\n');
    }
    let mut rng = 42u64;
    for i in 0..(rate as u64 * 30) {
        // A 64-bit LCG (Knuth's MMIX constants): uniform enough to spread ticks over symbols.
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (symbol, cents) = &mut bids[((rng >> 33) % universe as u64) as usize];
        *cents += if rng & (1 << 20) == 0 { 1 } else { -1 };
        *cents = (*cents).max(1);
        let ts = t0 + 1 + (i * 1000 / rate as u64) as i64;
        out.push_str(&format!(
            "{{\"ts\":{ts},\"symbol\":\"{symbol}\",\"bid\":\"{}.{:02}\"}}\n",
            *cents / 100,
            *cents % 100
        ));
    }
    let partial = file.with_extension("partial");
    std::fs::write(&partial, out).expect("write the uniform ticks");
    std::fs::rename(&partial, &file).expect("rename the uniform ticks");
    file
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn http_get_blocking(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // /metrics is chunked; the chunk-size lines never look like metric samples.
    Some((status, body.to_string()))
}

/// `n` distinct symbols drawn Zipf (s = 1) over `universe` (the `symbols` op's sorted list), so a few
/// symbols have many subscribers and most have few; deterministic per client index.
fn zipf_pick(universe: &[String], n: usize, seed: u64) -> Vec<String> {
    let n = n.min(universe.len());
    let weights: Vec<f64> = (1..=universe.len()).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut picked = Vec::with_capacity(n);
    while picked.len() < n {
        let mut x = next() * total;
        let mut i = 0;
        while i + 1 < weights.len() && x > weights[i] {
            x -= weights[i];
            i += 1;
        }
        if !picked.contains(&universe[i]) {
            picked.push(universe[i].clone());
        }
    }
    picked
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A client's connection: a WebSocket, or the address an SSE stream is opened at (its symbols go
/// in the request, so `client` opens it).
enum Conn {
    Ws(Box<Ws>),
    Sse(String),
}

/// An SSE stream read as it arrives.
struct SseStream {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl SseStream {
    async fn open(addr: &str, symbols: &[String], market: bool) -> Result<SseStream, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "GET /v1/stream?symbols={}{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            symbols.join(","),
            if market { "&trades=true&bars=1s" } else { "" }
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the response head".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if !buf.starts_with(b"HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        buf.drain(..end);
        Ok(SseStream { tcp, buf })
    }

    /// The `data:` of every event complete after the next read, as one JSON array (a read plays
    /// the part of a WebSocket frame); `None` when the stream ended.
    async fn next_batch(&mut self) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; CLIENT_READ_BUFFER];
        loop {
            let mut batch = String::from("[");
            while let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    if batch.len() > 1 {
                        batch.push(',');
                    }
                    batch.push_str(data);
                }
            }
            if batch.len() > 1 {
                batch.push(']');
                return Some(batch);
            }
            match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// What `client` reads from.
enum Reader {
    Ws(Box<Ws>),
    Sse(SseStream),
}

impl Reader {
    /// The next text frame (or batch of events); `None` when the connection ended.
    async fn next_text(&mut self) -> Option<String> {
        match self {
            Reader::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                }
            },
            Reader::Sse(s) => s.next_batch().await,
        }
    }
}

/// Connects one client, retrying a few times; a handshake gets `CONNECT_LIMIT` per attempt, so
/// a server too busy to answer fails the connection instead of stalling the harness.
async fn connect(addr: &str) -> Result<Ws, String> {
    const CONNECT_LIMIT: Duration = Duration::from_secs(10);
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let url = format!("ws://{addr}/ws");
    let mut attempt = 0;
    loop {
        let handshake = tokio_tungstenite::connect_async_with_config(&url, Some(config), true);
        let error = match tokio::time::timeout(CONNECT_LIMIT, handshake).await {
            Ok(Ok((ws, _))) => return Ok(ws),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no handshake within {CONNECT_LIMIT:?}"),
        };
        if attempt == 5 {
            return Err(format!("cannot connect to {url}: {error}"));
        }
        attempt += 1;
        eprintln!("connect failed ({error}), retrying");
        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
    }
}

/// One client: subscribe, wait for every snapshot, then read and check until `stop`.
async fn client(
    conn: Conn,
    symbols: Vec<String>,
    market: bool,
    slow_rate: Option<u32>,
    stats: Arc<Stats>,
    stop: Arc<tokio::sync::Notify>,
) {
    let mut reader = match conn {
        Conn::Ws(mut ws) => {
            let extra = if market {
                r#","trades":true,"bars":"1s""#
            } else {
                ""
            };
            let sub = format!(
                "{{\"op\":\"subscribe\",\"symbols\":{}{extra}}}",
                serde_json::to_string(&symbols).expect("strings serialize")
            );
            ws.send(Message::text(sub)).await.expect("send subscribe");
            Reader::Ws(ws)
        }
        Conn::Sse(addr) => match SseStream::open(&addr, &symbols, market).await {
            Ok(s) => Reader::Sse(s),
            Err(e) => {
                eprintln!("cannot open the stream: {e}");
                stats.closed_early.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    // (last seq) per symbol; None until the snapshot.
    let mut last: HashMap<String, Option<u64>> =
        symbols.iter().map(|s| (s.clone(), None)).collect();
    let mut waiting_snapshots = symbols.len();
    let mut signalled = false;
    let signal_ready = || {
        stats.ready_clients.fetch_add(1, Ordering::Relaxed);
        stats.ready_changed.notify_one();
    };
    if waiting_snapshots == 0 {
        signal_ready();
        signalled = true;
    }
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let pause = slow_rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
    loop {
        let msg = tokio::select! {
            _ = &mut stopped => break,
            m = reader.next_text() => m,
        };
        let Some(text) = msg else {
            stats.closed_early.fetch_add(1, Ordering::Relaxed);
            break;
        };
        let counting = stats.counting.load(Ordering::Relaxed);
        let received = now_ms();
        let msgs: Vec<Msg> = serde_json::from_str(&text).expect("a server frame is a JSON array");
        if counting {
            stats.frames.fetch_add(1, Ordering::Relaxed);
        }
        for m in msgs {
            if counting {
                match m.kind {
                    "trade" => {
                        stats.trades.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    "trades_lost" => {
                        let lost = m.count.unwrap_or(0);
                        stats.trades_lost.fetch_add(lost, Ordering::Relaxed);
                        continue;
                    }
                    "bar" => {
                        stats.bars.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    _ => {}
                }
            }
            if matches!(m.kind, "trade" | "trades_lost" | "bar") {
                continue;
            }
            let (Some(symbol), Some(seq)) = (m.symbol, m.seq) else {
                continue;
            };
            let Some(prev) = last.get_mut(symbol) else {
                continue;
            };
            match m.kind {
                "snapshot" => {
                    if prev.is_none() {
                        waiting_snapshots -= 1;
                    }
                    if prev.is_some_and(|p| seq < p) {
                        stats.seq_regressions.fetch_add(1, Ordering::Relaxed);
                    }
                    *prev = Some(seq);
                    stats.snapshots.fetch_add(1, Ordering::Relaxed);
                }
                "update" => {
                    let Some(p) = *prev else {
                        stats.update_before_snapshot.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let merged = m.conflated.unwrap_or(0);
                    if seq <= p {
                        stats.seq_regressions.fetch_add(1, Ordering::Relaxed);
                    } else if seq != p + 1 + merged {
                        stats.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    *prev = Some(seq);
                    if counting {
                        stats.updates.fetch_add(1, Ordering::Relaxed);
                        stats.conflated.fetch_add(merged, Ordering::Relaxed);
                        let ms = (received - m.ts.unwrap_or(received))
                            .clamp(0, LATENCY_BUCKETS_MS as i64 - 1);
                        stats.latency_ms[ms as usize].fetch_add(1, Ordering::Relaxed);
                        if slow_rate.is_none() {
                            stats.fast_latency_ms[ms as usize].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                _ => {}
            }
        }
        if !signalled && waiting_snapshots == 0 {
            signalled = true;
            signal_ready();
        }
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
    if let Reader::Ws(mut ws) = reader {
        let _ = (*ws).close(None).await;
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Report {
    workload: String,
    server: Option<ServerKind>,
    transport: Option<Transport>,
    topology: Option<Topology>,
    clients: usize,
    symbols_per_client: usize,
    universe: usize,
    rate_configured: u32,
    workers: usize,
    seconds: f64,
    ticks_in_per_s: f64,
    deliveries_per_s: f64,
    conflated_per_s: f64,
    frames_per_s: f64,
    latency_ms_p50: Option<u64>,
    latency_ms_p99: Option<u64>,
    latency_ms_p999: Option<u64>,
    fast_latency_ms_p99: Option<u64>,
    seq_regressions: u64,
    gaps: u64,
    update_before_snapshot: u64,
    closed_early: u64,
    server_cpu_s_per_million: Option<f64>,
    /// (--market) trade and bar messages delivered, prints reported lost, and the server's CPU per
    /// message of any kind (updates, trades, bars).
    trades_per_s: f64,
    trades_lost_per_s: f64,
    bars_per_s: f64,
    server_cpu_s_per_million_messages: Option<f64>,
    server_rss_mib: f64,
    server_rss_base_mib: f64,
    rss_per_connection_kib: f64,
    churned_connections: u64,
    /// Clients that held every snapshot within the setup limit (all of them in a valid run).
    ready_clients: u64,
    setup_s: f64,
    connect_failures: u64,
    /// W1's criterion (p99 < 50 ms, nothing conflated or lost, every client ready); set by `ramp`.
    clean: bool,
}

async fn run_once(name: &str, c: &Common, pin: bool) -> Report {
    let server = Server::start(c, pin.then_some("0"));
    // Let the opening ticks land so that every symbol has a snapshot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_base) = server.usage();
    let universe = symbol_list(&server.addr).await;
    let idle = name == "idle";

    let stats = Arc::new(Stats::new());
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(c.clients);
    let mut connected = 0;
    let mut connect_failures = 0u64;
    let setup_started = Instant::now();
    while connected < c.clients && setup_started.elapsed() < SETUP_LIMIT {
        let batch = CONNECT_CONCURRENCY.min(c.clients - connected);
        let remaining = SETUP_LIMIT.saturating_sub(setup_started.elapsed());
        let transport = c.transport;
        let addr = server.addr.clone();
        let batch_connects = futures_util::future::join_all((0..batch).map(|_| {
            let addr = addr.clone();
            async move {
                match transport {
                    Transport::Ws => connect(&addr).await.map(|ws| Conn::Ws(Box::new(ws))),
                    Transport::Sse => Ok(Conn::Sse(addr)),
                }
            }
        }));
        let Ok(conns) = tokio::time::timeout(remaining, batch_connects).await else {
            break;
        };
        for ws in conns {
            let ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    eprintln!("{e}");
                    connect_failures += 1;
                    continue;
                }
            };
            let i = connected;
            connected += 1;
            let symbols = zipf_pick(&universe, c.symbols_per_client, i as u64);
            let slow = (i < c.slow_clients).then_some(c.slow_rate);
            tasks.push(tokio::spawn(client(
                ws,
                symbols,
                c.market,
                slow,
                stats.clone(),
                stop.clone(),
            )));
        }
    }
    let all_ready =
        tokio::time::timeout(SETUP_LIMIT.saturating_sub(setup_started.elapsed()), async {
            while stats.ready_clients.load(Ordering::Relaxed) < c.clients as u64 {
                stats.ready_changed.notified().await;
            }
        })
        .await
        .is_ok();
    let setup_s = setup_started.elapsed().as_secs_f64();
    if !all_ready {
        eprintln!(
            "setup limit: {connected} of {} clients connected, {} hold every snapshot after {setup_s:.0} s",
            c.clients,
            stats.ready_clients.load(Ordering::Relaxed)
        );
    }

    // W4: short-lived clients come and go at `churn_per_s` beside the measured ones.
    let churned = Arc::new(AtomicU64::new(0));
    let churn = (c.churn_per_s > 0).then(|| {
        let (addr, universe, churned, stop) = (
            server.addr.clone(),
            universe.clone(),
            churned.clone(),
            stop.clone(),
        );
        let every = Duration::from_secs_f64(1.0 / f64::from(c.churn_per_s));
        let per_client = c.symbols_per_client;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let stopped = stop.notified();
            tokio::pin!(stopped);
            for i in 0u64.. {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let (addr, symbols) = (
                    addr.clone(),
                    zipf_pick(&universe, per_client, 1_000_000 + i),
                );
                churned.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(mut ws) = connect(&addr).await else {
                        return;
                    };
                    let sub =
                        serde_json::json!({"op": "subscribe", "symbols": symbols}).to_string();
                    let _ = ws.send(Message::text(sub)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    let _ = ws.close(None).await;
                });
            }
        })
    });

    // What the measured server takes in: ticks from its feed, or on an edge, states from NATS.
    let ticks_in = match c.topology {
        Topology::Embedded => "quotegw_ticks_received_total{feed=\"sim\"}",
        Topology::Edge => "quotegw_ticks_received_total{feed=\"bus\"}",
    };
    let ticks0 = server.metric(ticks_in);
    let (cpu0, _) = server.usage();
    let started = Instant::now();
    stats.counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(c.duration_s)).await;
    stats.counting.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let (cpu1, rss) = server.usage();
    let ticks1 = server.metric(ticks_in);
    stop.notify_waiters();
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if tokio::time::timeout(TEARDOWN_LIMIT, futures_util::future::join_all(tasks))
        .await
        .is_err()
    {
        eprintln!("teardown limit: clients still closing are dropped");
        aborts.iter().for_each(|a| a.abort());
    }
    if let Some(churn) = churn {
        churn.abort();
    }
    drop(server);

    let updates = stats.updates.load(Ordering::Relaxed);
    let trades = stats.trades.load(Ordering::Relaxed);
    let bars = stats.bars.load(Ordering::Relaxed);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Report {
        workload: name.to_string(),
        server: Some(c.server),
        transport: Some(c.transport),
        topology: Some(c.topology),
        clients: c.clients,
        symbols_per_client: c.symbols_per_client,
        universe: c.universe,
        rate_configured: c.rate,
        workers: c.workers,
        seconds,
        ticks_in_per_s: (ticks1 - ticks0) / seconds, // NaN (null in JSON) for the peers
        deliveries_per_s: updates as f64 / seconds,
        conflated_per_s: stats.conflated.load(Ordering::Relaxed) as f64 / seconds,
        frames_per_s: stats.frames.load(Ordering::Relaxed) as f64 / seconds,
        latency_ms_p50: percentile(&stats.latency_ms, 50.0),
        latency_ms_p99: percentile(&stats.latency_ms, 99.0),
        latency_ms_p999: percentile(&stats.latency_ms, 99.9),
        fast_latency_ms_p99: percentile(&stats.fast_latency_ms, 99.0),
        seq_regressions: stats.seq_regressions.load(Ordering::Relaxed),
        gaps: stats.gaps.load(Ordering::Relaxed),
        update_before_snapshot: stats.update_before_snapshot.load(Ordering::Relaxed),
        closed_early: stats.closed_early.load(Ordering::Relaxed),
        server_cpu_s_per_million: (!idle && updates > 0)
            .then(|| (cpu1 - cpu0) / updates as f64 * 1e6),
        trades_per_s: trades as f64 / seconds,
        trades_lost_per_s: stats.trades_lost.load(Ordering::Relaxed) as f64 / seconds,
        bars_per_s: bars as f64 / seconds,
        server_cpu_s_per_million_messages: (!idle && updates + trades + bars > 0)
            .then(|| (cpu1 - cpu0) / (updates + trades + bars) as f64 * 1e6),
        server_rss_mib: mib(rss),
        server_rss_base_mib: mib(rss_base),
        rss_per_connection_kib: rss.saturating_sub(rss_base) as f64
            / 1024.0
            / c.clients.max(1) as f64,
        churned_connections: churned.load(Ordering::Relaxed),
        ready_clients: stats.ready_clients.load(Ordering::Relaxed),
        setup_s,
        connect_failures,
        clean: false,
    }
}

/// The served symbols, via the `symbols` op.
async fn symbol_list(addr: &str) -> Vec<String> {
    let mut ws = connect(addr).await.expect("the symbols op connects");
    ws.send(Message::text(r#"{"op":"symbols"}"#))
        .await
        .expect("send symbols op");
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).expect("JSON array");
            if let Some(list) = v[0]["symbols"].as_array() {
                let _ = ws.close(None).await;
                return list
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect();
            }
        }
    }
    panic!("no symbols answer")
}

fn print(r: &Report) {
    let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "{:<7} clients {:>6} × {:>3} sym  rate {:>7}/s  ticks in {:>9.0}/s  deliveries {:>10.0}/s  conflated {:>9.0}/s  \
         latency ms p50 {:>3} p99 {:>4} p999 {:>4}  cpu-s/M {:>6}  RSS {:>7.1} MiB ({:.2} KiB/conn)  \
         regressions {} gaps {} early-update {} closed {}  ready {}/{} after {:.0} s ({} failed connects)",
        r.workload,
        r.clients,
        r.symbols_per_client,
        r.rate_configured,
        r.ticks_in_per_s,
        r.deliveries_per_s,
        r.conflated_per_s,
        opt(r.latency_ms_p50),
        opt(r.latency_ms_p99),
        opt(r.latency_ms_p999),
        r.server_cpu_s_per_million
            .map_or("-".into(), |v| format!("{v:.2}")),
        r.server_rss_mib,
        r.rss_per_connection_kib,
        r.seq_regressions,
        r.gaps,
        r.update_before_snapshot,
        r.closed_early,
        r.ready_clients,
        r.clients,
        r.setup_s,
        r.connect_failures,
    );
    if r.trades_per_s + r.bars_per_s > 0.0 {
        println!(
            "        trades {:.0}/s  lost {:.0}/s  bars {:.0}/s  cpu-s/M messages {}",
            r.trades_per_s,
            r.trades_lost_per_s,
            r.bars_per_s,
            r.server_cpu_s_per_million_messages
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    println!(
        "RESULT {}",
        serde_json::to_string(r).expect("a report serializes")
    );
}

fn clean(r: &Report) -> bool {
    r.ready_clients == r.clients as u64
        && r.latency_ms_p99.is_some_and(|p| p < 50)
        && r.conflated_per_s == 0.0
        && r.gaps == 0
        && r.seq_regressions == 0
}

fn pin_harness() {
    // Core 1 for the harness, core 0 for the server: they never compete for a core.
    let pid = std::process::id().to_string();
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid])
        .stdout(Stdio::null())
        .status();
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let benching = std::env::args().any(|a| a == "--bench");
    if !benching {
        return smoke();
    }
    let cli = Cli::parse_from(args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.workload {
            Workload::Run {
                preset: p,
                server,
                runs,
                duration_s,
                workers,
                no_pin,
                market,
            } => {
                let (kind, mut c) = preset(p, server);
                c.no_pin = no_pin;
                c.market = market;
                if let Some(d) = duration_s {
                    c.duration_s = d;
                }
                if let Some(w) = workers {
                    c.workers = w;
                }
                let pin = !c.no_pin;
                if pin {
                    pin_harness();
                }
                if kind == "ramp" {
                    let mut best = Vec::new();
                    for _ in 0..runs.max(1) {
                        let r = ramp(c.clone(), pin).await;
                        best.push(r);
                    }
                    // A ramp's result is the highest clean step: a run with none ranks below
                    // every run that held one, whatever its first step delivered.
                    best.sort_by(|a, b| {
                        (a.clean, a.deliveries_per_s)
                            .partial_cmp(&(b.clean, b.deliveries_per_s))
                            .unwrap_or(std::cmp::Ordering::Equal)
                    });
                    let median = best[best.len() / 2].clone();
                    println!(
                        "MEDIAN {}",
                        serde_json::to_string(&median).expect("serializes")
                    );
                    return;
                }
                let mut reports = Vec::new();
                for _ in 0..runs.max(1) {
                    let r = run_once(kind, &c, pin).await;
                    print(&r);
                    reports.push(r);
                }
                let key = |r: &Report| {
                    if kind == "idle" {
                        r.rss_per_connection_kib
                    } else {
                        r.deliveries_per_s
                    }
                };
                reports.sort_by(|a, b| key(a).total_cmp(&key(b)));
                let median = reports[reports.len() / 2].clone();
                println!(
                    "MEDIAN {}",
                    serde_json::to_string(&median).expect("serializes")
                );
            }
            Workload::Idle(mut c) => {
                // Idle: one tick a second over the whole universe, so connections carry ~nothing.
                c.rate = 1;
                let pin = !c.no_pin;
                if pin {
                    pin_harness();
                }
                print(&run_once("idle", &c, pin).await)
            }
            Workload::Fanout(c) => {
                let pin = !c.no_pin;
                if pin {
                    pin_harness();
                }
                print(&run_once("fanout", &c, pin).await)
            }
            Workload::Ramp(c) => {
                let pin = !c.no_pin;
                if pin {
                    pin_harness();
                }
                ramp(c, pin).await;
            }
        }
    });
}

/// Runs at rising rates (×1.5) until a run is not clean; returns the last clean run, or, when
/// even the first rate was not clean, that first run with `clean: false` (its figures still say
/// what the server delivered and at what cost).
async fn ramp(mut c: Common, pin: bool) -> Report {
    let mut best: Option<Report> = None;
    loop {
        let mut r = run_once("ramp", &c, pin).await;
        print(&r);
        r.clean = clean(&r);
        if !r.clean {
            let Some(b) = best else {
                println!("no clean rate: the first step already failed; reporting it");
                return r;
            };
            println!(
                "highest clean rate: {} ticks/s configured, {:.0} deliveries/s into {} clients (p99 {} ms)",
                b.rate_configured,
                b.deliveries_per_s,
                b.clients,
                b.latency_ms_p99.unwrap_or(0)
            );
            return b;
        }
        best = Some(r);
        c.rate = (f64::from(c.rate) * 1.5) as u32;
    }
}

/// `cargo test` runs this: a few dozen clients for a few seconds, correctness only.
fn smoke() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let c = Common {
        clients: 40,
        symbols_per_client: 5,
        universe: 50,
        rate: 500,
        duration_s: 3,
        workers: 1,
        slow_clients: 4,
        slow_rate: 5,
        no_pin: true,
        server: ServerKind::Quotegw,
        source: Source::Simulated,
        churn_per_s: 5,
        transport: Transport::Ws,
        topology: Topology::Embedded,
        market: true,
    };
    for transport in [Transport::Ws, Transport::Sse] {
        smoke_run(
            &runtime,
            &Common {
                transport,
                ..c.clone()
            },
        );
    }
}

fn smoke_run(runtime: &tokio::runtime::Runtime, c: &Common) {
    let r = runtime.block_on(run_once("smoke", c, false));
    print(&r);
    assert!(r.deliveries_per_s > 0.0, "updates were delivered");
    assert!(
        r.trades_per_s > 0.0,
        "trades were delivered (the smoke run asks for them)"
    );
    assert!(r.bars_per_s > 0.0, "bars were delivered");
    assert_eq!(r.seq_regressions, 0, "seq never goes backwards");
    assert_eq!(r.gaps, 0, "every seq gap is accounted for by `conflated`");
    assert_eq!(
        r.update_before_snapshot, 0,
        "every snapshot comes before its updates"
    );
    assert_eq!(r.closed_early, 0, "no client was closed during the run");
    assert_eq!(
        r.ready_clients, r.clients as u64,
        "every client received every snapshot"
    );
}
