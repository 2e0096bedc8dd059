//! Test support: a real gateway on 127.0.0.1:0 with a scripted feed the test drives, and a real
//! WebSocket client (tokio-tungstenite) that checks the framing rules on every frame it reads.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod fault_proxy;
pub mod nats;
pub mod process;
pub mod prometheus;
pub mod upstream;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use quotegw::feed::{Feed, FeedContext, FeedError};
use quotegw::model::{Status, Symbol, Tick};
use quotegw::{Config, Gateway, RunningGateway};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The series of open WebSocket connections in `/metrics`.
pub const WS_CONNECTIONS: &str = "quotegw_connections{transport=\"ws\"}";

/// How long a test waits for something that should happen; reaching it fails the test. It bounds a
/// broken run, it is not a performance threshold.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestGateway {
    pub gw: RunningGateway,
    pub addr: SocketAddr,
    /// Ticks sent here enter the gateway through the `Feed` trait, like any adapter's.
    pub ticks: mpsc::Sender<Tick>,
    /// With auth on, `/metrics` on the public listener wants a credential, as Prometheus sends:
    /// the config's first API key, or an HS256 JWT minted for the scrape.
    metrics_token: Option<String>,
}

/// The credential a test's scrapes of `/metrics` send (`TestGateway::metric`).
fn metrics_token(config: &Config) -> Option<String> {
    use quotegw::access::AuthMode;
    let access = &config.access;
    match access.auth {
        AuthMode::Off => None,
        AuthMode::ApiKey => access.api_keys.first()?.key().resolve().ok(),
        AuthMode::Jwt => {
            let secret = access.jwt_hs256_secret.as_ref()?.resolve().ok()?;
            let mut claims = serde_json::json!({"sub": "test-metrics", "exp": now_ms() / 1000 + 3600, "symbols": []});
            if let Some(aud) = &access.jwt_audience {
                claims["aud"] = aud.as_str().into();
            }
            if let Some(iss) = &access.jwt_issuer {
                claims["iss"] = iss.as_str().into();
            }
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .ok()
        }
    }
}

/// A feed whose ticks come from the test.
struct ScriptedFeed {
    symbols: Vec<Symbol>,
    rx: mpsc::Receiver<Tick>,
}

impl Feed for ScriptedFeed {
    fn name(&self) -> &str {
        "scripted"
    }

    fn symbols(&self) -> Vec<Symbol> {
        self.symbols.clone()
    }

    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>> {
        let mut rx = self.rx;
        Box::pin(async move {
            ctx.set_up(true);
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    t = rx.recv() => match t {
                        Some(t) => ctx.send(t).await?,
                        None => return Ok(()),
                    }
                }
            }
        })
    }
}

/// Starts a gateway: `toml` is appended to a config that listens on 127.0.0.1:0 with one worker;
/// `symbols` are served by the scripted feed.
pub fn start(toml: &str, symbols: &[&str]) -> TestGateway {
    start_with_workers(1, toml, symbols)
}

/// A gateway with only the feeds of its config (a scale-out edge, whose feed is NATS): `ticks` goes
/// nowhere.
pub fn start_config(workers: usize, toml: &str) -> TestGateway {
    let text = format!("listen = \"127.0.0.1:0\"\nworkers = {workers}\n{toml}");
    let config = Config::parse(&text, "test config").expect("test config is valid");
    let metrics_token = metrics_token(&config);
    let gw = Gateway::new(config).start().expect("gateway starts");
    let (ticks, _) = mpsc::channel(1);
    TestGateway {
        addr: gw.local_addr(),
        gw,
        ticks,
        metrics_token,
    }
}

/// `start` with `workers` actix workers: with more than one, sessions live on several threads and
/// every fan-out crosses threads, as in the default of one worker per core that users run.
pub fn start_with_workers(workers: usize, toml: &str, symbols: &[&str]) -> TestGateway {
    let text = format!("listen = \"127.0.0.1:0\"\nworkers = {workers}\n{toml}");
    let config = Config::parse(&text, "test config").expect("test config is valid");
    let metrics_token = metrics_token(&config);
    let (ticks, rx) = mpsc::channel(4096);
    let feed = ScriptedFeed {
        symbols: symbols.iter().map(|s| Symbol::from(*s)).collect(),
        rx,
    };
    let gw = Gateway::new(config)
        .with_feed(Box::new(feed))
        .start()
        .expect("gateway starts");
    TestGateway {
        addr: gw.local_addr(),
        gw,
        ticks,
        metrics_token,
    }
}

impl TestGateway {
    pub async fn push(&self, tick: Tick) {
        self.ticks
            .send(tick)
            .await
            .expect("gateway feed is running");
    }

    /// Pushes `count` ticks of `symbol` from a task, one every `every`, with `ts` 2, 3, … and bids
    /// 1.01, 1.02, …. A stalled pusher does not catch up in a burst: tests that bound ticks per
    /// interval (to stay inside what the index keeps for clients behind) rely on it.
    pub fn push_paced(
        &self,
        symbol: &str,
        count: i64,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (ticks, symbol) = (self.ticks.clone(), symbol.to_string());
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 1..=count {
                interval.tick().await;
                let bid = format!("{}.{:02}", 1 + i / 100, i % 100);
                ticks
                    .send(tick(&symbol, 1 + i, &[("bid", &bid)]))
                    .await
                    .expect("gateway feed is running");
            }
        })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// One sample of a metric from `/metrics` (exact series text, e.g. `quotegw_connections` or
    /// `quotegw_client_errors_total{code="bad_json"}`); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        match &self.metrics_token {
            None => metric(self.addr, series).await,
            Some(token) => {
                let bearer = format!("Bearer {token}");
                let (status, _, body) =
                    http(self.addr, "GET", "/metrics", &[("Authorization", &bearer)]).await;
                assert_eq!(status, 200, "/metrics with the test's credential: {body}");
                sample(&body, series)
            }
        }
    }

    /// Waits until `series` satisfies `pred`, failing the test at `DEADLINE`.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let v = self.metric(series).await;
            if pred(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stuck at {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out[9..12].parse().expect("status code");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A WebSocket upgrade request for `path` with `headers`.
fn upgrade_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Sends a WebSocket upgrade request for `path` with `headers` and returns the response's status and
/// head (status line and headers, lower-cased), closing the connection.
pub async fn upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(upgrade_request(addr, path, headers).as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head[9..12].parse().expect("status code");
    (status, head)
}

/// `upgrade`, keeping the connection open (and unread) for as long as the caller holds it.
pub async fn upgrade_held(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(upgrade_request(addr, path, headers).as_bytes())
        .await
        .expect("write");
    // Byte by byte up to the head's end, so that nothing after it is taken from the stream.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut byte))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status code");
    (status, s)
}

pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    sample(&body, series)
}

/// One sample of `series` in a scrape; 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// Builds a tick from (field, value) pairs; prices are parsed exactly from their text.
pub fn tick(symbol: &str, ts: i64, fields: &[(&str, &str)]) -> Tick {
    let mut t = Tick {
        symbol: Symbol::from(symbol),
        ts,
        ..Tick::default()
    };
    for (k, v) in fields {
        let price = || Some(Decimal::from_str_exact(v).expect("a decimal"));
        let int = || Some(i64::from_str(v).expect("an integer"));
        match *k {
            "bid" => t.bid = price(),
            "ask" => t.ask = price(),
            "last" => t.last = price(),
            "bid_size" => t.bid_size = int(),
            "ask_size" => t.ask_size = int(),
            "last_size" => t.last_size = int(),
            "volume" => t.volume = int(),
            "status" => t.status = Status::parse(v),
            other => panic!("unknown tick field {other}"),
        }
    }
    // As a recorded line: `last` with a positive `last_size` is a trade print.
    t.trade = quotegw::model::Trade::of_fields(t.last, t.last_size);
    t
}

/// Runs each listed test (an `async fn(workers: usize)` of the test file) twice: with one worker
/// and with two (the test binary's runtime has two threads either way). The tests are named
/// `one_worker::NAME` and `two_workers::NAME`.
#[macro_export]
macro_rules! with_one_and_two_workers {
    ($($name:ident),+ $(,)?) => {
        mod one_worker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(1).await
                }
            )+
        }
        mod two_workers {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(2).await
                }
            )+
        }
    };
}

/// A WebSocket client that reads server frames as the protocol says: each is a JSON array.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    queue: VecDeque<Value>,
    pub pings_seen: usize,
}

/// How a read ended when it did not yield a message.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16, String),
    /// The TCP connection ended without a close frame.
    NoCloseFrame(String),
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket upgrade");
        Client {
            ws,
            queue: VecDeque::new(),
            pings_seen: 0,
        }
    }

    pub async fn send(&mut self, op: Value) {
        self.send_text(&op.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next message, or how the connection closed.
    pub async fn try_next(&mut self) -> Result<Value, Closed> {
        // One deadline for the message, not per frame: the server's pings are frames too, and
        // would otherwise keep a wait for a message that never comes from ever failing.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(v) = self.queue.pop_front() {
                return Ok(v);
            }
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a message within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).expect("server frames are JSON");
                    let Value::Array(msgs) = v else {
                        panic!("server frame is not a JSON array: {text}")
                    };
                    assert!(!msgs.is_empty(), "empty frame");
                    self.queue.extend(msgs);
                }
                Some(Ok(Message::Ping(_))) => self.pings_seen += 1,
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(f) => Closed::Code(u16::from(f.code), f.reason.to_string()),
                        None => Closed::Code(u16::from(CloseCode::Status), String::new()),
                    })
                }
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(e)) => return Err(Closed::NoCloseFrame(e.to_string())),
                None => return Err(Closed::NoCloseFrame("stream ended".into())),
            }
        }
    }

    /// The next frame's text as it arrived (no message may be queued from an earlier frame).
    pub async fn next_text(&mut self) -> String {
        assert!(
            self.queue.is_empty(),
            "messages of an earlier frame are unread"
        );
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame within the deadline");
            match frame {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_))) => self.pings_seen += 1,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        self.try_next().await.expect("connection open")
    }

    /// The next message, which must be of type `ty`.
    pub async fn expect(&mut self, ty: &str) -> Value {
        let m = self.next().await;
        assert_eq!(m["type"], ty, "expected {ty}, got {m}");
        m
    }

    /// Subscribes to symbols that all have quotes: reads the ack and one snapshot each, returned in
    /// order.
    pub async fn subscribe(&mut self, symbols: &[&str]) -> Vec<Value> {
        self.send(serde_json::json!({"op": "subscribe", "symbols": symbols}))
            .await;
        let ack = self.expect("ack").await;
        assert_eq!(ack["rejected"], serde_json::json!([]), "{ack}");
        let mut snapshots = Vec::new();
        for _ in symbols {
            snapshots.push(self.expect("snapshot").await);
        }
        snapshots
    }

    /// Reads until a message matches `pred`; returns every message read, the match last.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let m = self.next().await;
            let done = pred(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }

    /// Reads (and discards) messages until the close frame; returns its code and reason.
    /// Closes the connection from the client side (1000) and waits for the server's echo.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Some(Ok(_)) = self.ws.next().await {}
    }

    /// Reads until the server's close frame, within the deadline (messages before it are
    /// skipped: a connection that keeps getting news and is never closed fails here).
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.try_next())
                .await
                .expect("a close frame within the deadline");
            match next {
                Ok(_) => continue,
                Err(Closed::Code(code, reason)) => return (code, reason),
                Err(other) => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    }

    /// A round trip through the connection's op queue: everything the server wrote before the pong
    /// is returned.
    pub async fn sync(&mut self, id: &str) -> Vec<Value> {
        self.send(serde_json::json!({"op": "ping", "id": id})).await;
        self.until(|m| m["type"] == "pong" && m["id"] == id).await
    }
}

/// Bytes the kernel holds in the send queue of this process's TCP socket from `local` to
/// `remote` (`tx_queue` in /proc/net/tcp: sent but not acknowledged, plus not yet sent); `None`
/// when there is no such socket.
pub fn tcp_send_queue(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("procfs");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str()) && cols.get(2) == Some(&remote.as_str())).then(|| {
            let tx = cols[4].split(':').next().expect("tx_queue:rx_queue");
            u64::from_str_radix(tx, 16).expect("hex")
        })
    })
}

/// Open file descriptors of this process (the in-process gateway's sockets included).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

/// Resident memory of this process (the in-process gateway included), bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The `p`th percentile (0..=100) of `values`, which it sorts.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[i]
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// A WebSocket client on a bare TCP socket: it does the handshake and then reads only when told, and
/// never answers pings. It plays clients that stop reading, with nothing (like tungstenite's automatic
/// pong) writing behind the test's back.
pub struct RawClient {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

/// One masked client frame (RFC 6455 §5.2): `fin` false starts or continues a fragmented message.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [1u8, 2, 3, 4];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A server frame as the raw client saw it.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient::connect_to(addr, "/ws").await
    }

    /// Connects to `path` (which may carry a query, e.g. `/ws?token=...`).
    pub async fn connect_to(addr: SocketAddr, path: &str) -> RawClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        RawClient::handshake(tcp, addr, path).await
    }

    /// Connects with a fixed, small receive buffer, for a client that stops reading and must stay
    /// stalled. Linux grows an unlocked receive buffer of a socket nobody reads (when its queue
    /// is pruned, up to `tcp_rmem`'s max, 6 MiB by default), so a "stalled" client would still
    /// take megabytes and keep up with a burst; setting SO_RCVBUF before connecting locks it.
    pub async fn connect_unread(addr: SocketAddr, path: &str) -> RawClient {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("connect");
        RawClient::handshake(tcp, addr, path).await
    }

    async fn handshake(mut tcp: TcpStream, addr: SocketAddr, path: &str) -> RawClient {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("handshake");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tcp.read(&mut chunk).await.expect("handshake response");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        buf.drain(..end);
        RawClient { tcp, buf }
    }

    /// Sends a masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(true, 0x1, text.as_bytes())
            .await
            .expect("send");
    }

    /// Sends bytes as they are (a hand-made frame header, say).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// Sends one masked frame: `fin` false starts or continues a fragmented message (opcode 0x0
    /// for a continuation).
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.tcp
            .write_all(&masked_frame(fin, opcode, payload))
            .await
    }

    /// Reads server frames until a close frame or the end of the connection; returns the frames and
    /// the close (code, reason) if one came.
    pub async fn read_to_close(&mut self) -> (Vec<RawFrame>, Option<(u16, String)>) {
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(frame) = self.parse_frame() {
                if frame.opcode == 0x8 {
                    let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                    let reason = String::from_utf8_lossy(&frame.payload[2..]).to_string();
                    return (frames, Some((code, reason)));
                }
                frames.push(frame);
            }
            let read = tokio::time::timeout(DEADLINE, self.tcp.read(&mut chunk))
                .await
                .expect("data or close within the deadline");
            match read {
                Ok(0) | Err(_) => return (frames, None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads server frames until a message matches `pred` (returned) or the connection closes
    /// (its close frame returned, if any).
    pub async fn read_until_message(
        &mut self,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Option<(u16, String)>> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(frame) = self.parse_frame() {
                match frame.opcode {
                    0x8 => {
                        let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                        let reason = String::from_utf8_lossy(&frame.payload[2..]).to_string();
                        return Err(Some((code, reason)));
                    }
                    0x1 => {
                        let msgs: Vec<Value> =
                            serde_json::from_slice(&frame.payload).expect("a JSON array");
                        if let Some(m) = msgs.into_iter().find(|m| pred(m)) {
                            return Ok(m);
                        }
                    }
                    _ => {}
                }
            }
            let read = tokio::time::timeout(DEADLINE, self.tcp.read(&mut chunk))
                .await
                .expect("data or close within the deadline");
            match read {
                Ok(0) | Err(_) => return Err(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse_frame(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < header + len {
            return None;
        }
        let payload = b[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Some(RawFrame { opcode, payload })
    }
}

/// A Server-Sent Events client on a bare TCP socket, reading the stream as it arrives (like
/// `curl -N`): the response head, then events and comments one at a time.
pub struct SseClient {
    pub tcp: TcpStream,
    buf: Vec<u8>,
    /// The response's status and head (lower-cased).
    pub status: u16,
    pub head: String,
    /// Comment lines seen so far (without the leading `: `).
    pub comments: Vec<String>,
}

/// One event: its `event:`, `id:` and `data:` (parsed as JSON).
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: String,
    pub data: Value,
}

impl SseClient {
    /// `GET path_and_query` with `headers`; reads the response head.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.expect("request");
        let mut c = SseClient {
            tcp,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
            comments: Vec::new(),
        };
        let end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(c.fill().await > 0, "closed before the response head");
        };
        c.head = String::from_utf8_lossy(&c.buf[..end]).to_ascii_lowercase();
        c.status = c.head[9..12].parse().expect("status");
        c.buf.drain(..end);
        c
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(DEADLINE, self.tcp.read(&mut chunk))
            .await
            .expect("data within the deadline")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The rest of a non-stream answer (an error's JSON body), until the connection ends.
    pub async fn body(&mut self) -> String {
        while self.fill().await > 0 {}
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next event (comments are collected on the way); `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..i].to_vec()).expect("UTF-8 events");
                self.buf.drain(..i + 2);
                let (mut event, mut id, mut data) = (String::new(), String::new(), None);
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(": ") {
                        self.comments.push(c.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        assert!(data.is_none(), "one data line per event: {block}");
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if line.starts_with("retry: ") {
                    } else {
                        panic!("unexpected line {line:?} in {block:?}");
                    }
                }
                if let Some(data) = data {
                    return Some(SseEvent { event, id, data });
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next event, which must be there.
    pub async fn event(&mut self) -> SseEvent {
        self.next_event().await.expect("an event")
    }
}

/// One HTTP/1.1 request with `headers`; returns the status, the head (lower-cased) and the body
/// (the gateway closes plain HTTP connections after each answer).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("an answer within the deadline")
        .expect("read");
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head[9..12].parse().expect("status code");
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The quotes a gateway serves for `symbols`, by symbol (REST, the same snapshots as on /ws).
pub async fn quotes(
    addr: SocketAddr,
    symbols: &[&str],
) -> std::collections::BTreeMap<String, Value> {
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/v1/quotes?symbols={}", symbols.join(",")),
        &[],
    )
    .await;
    // An edge still loading its cache answers 503: nothing to show yet, as far as a caller
    // polling for quotes is concerned.
    if status == 503 && body.contains("loading its symbols") {
        return Default::default();
    }
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["quotes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["symbol"].as_str().unwrap().to_string(), q.clone()))
        .collect()
}

/// Installs Debian's `packages` (apt arguments) when `bin` is not there, through the script every
/// test install uses (one install at a time across test binaries: see tests/support/apt-install.sh).
pub fn ensure_installed(bin: &str, packages: &[&str]) {
    if std::path::Path::new(bin).exists() {
        return;
    }
    eprintln!("installing Debian's {}", packages.join(" "));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/apt-install.sh");
    let status = std::process::Command::new(script)
        .arg(bin)
        .args(packages)
        .status()
        .expect("tests/support/apt-install.sh runs");
    assert!(
        status.success() && std::path::Path::new(bin).exists(),
        "{bin} could not be installed"
    );
}

/// A free port on 127.0.0.1 and an empty directory of its own for a server (`kind`) to run on it.
pub fn port_and_dir(kind: &str) -> (u16, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("quotegw-{kind}-{}-{port}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory for the server");
    (port, dir)
}
