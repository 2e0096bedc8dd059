//! A connection's op handling (`session::Session`, what every WebSocket runs) against a small index:
//! any sequence of client ops (subscribe and unsubscribe with `max_hz` in and out of range, ping,
//! symbols, arbitrary text), ticks, status changes and drains on a clock the input moves.
//!
//! Checked after every step: nothing panics; each symbol's subscriber list holds this connection
//! exactly when the session says it is subscribed; `quotegw_subscriptions` equals what the session
//! holds; every frame is a JSON array; per symbol no update or status before its snapshot and `seq`
//! only grows. When the session ends (dropped, or closed for abuse) every list is empty and the
//! gauge is 0.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use quotegw::access::Grant;
use quotegw::session::LimitsConfig;
use quotegw::feed::FeedEvent;
use quotegw::frame::Framing;
use quotegw::index::Index;
use quotegw::metrics::Metrics;
use quotegw::model::{Status, Tick};
use quotegw::session::{Session, SessionShared};
use rust_decimal::Decimal;
use serde::Deserialize;

/// Served symbols; ZZZZ is not, so it is always rejected.
const SERVED: [&str; 3] = ["AAPL", "MSFT", "NVDA"];
const NAMES: [&str; 4] = ["AAPL", "MSFT", "NVDA", "ZZZZ"];
const MAX_HZ: [&str; 11] = [
    "", "0.0005", "0.001", "1", "2.5", "1000", "1000.5", "1e-300", "1e308", "-1", "null",
];
const IDS: [&str; 5] = ["1", "\"a\"", "2.50", "12345678901234567890123", "-0"];

struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        self.0.next().copied()
    }
}

fn symbols(mask: u8) -> String {
    let picked: Vec<String> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, s)| {
            // Case-insensitive on input.
            if mask & (0x10 << i) != 0 {
                format!("\"{}\"", s.to_lowercase())
            } else {
                format!("\"{s}\"")
            }
        })
        .collect();
    format!("[{}]", picked.join(","))
}

/// The parts of a server message the checks read. Other members (`id`, prices) are skipped
/// unconverted: an echoed `id` may be a number no f64 holds, and is still JSON.
#[derive(Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    symbol: Option<String>,
    seq: Option<u64>,
    op: Option<String>,
    symbols: Option<Vec<String>>,
}

/// What the client has seen, from the messages alone.
#[derive(Default)]
struct ClientView {
    snapshotted: HashSet<String>,
    last_seq: HashMap<String, u64>,
}

impl ClientView {
    fn check_frame(&mut self, frame: &str) {
        let messages: Vec<Message> = serde_json::from_str(frame)
            .unwrap_or_else(|e| panic!("a frame is not a JSON array of messages ({e}): {frame}"));
        assert!(!messages.is_empty(), "an empty frame");
        for m in messages {
            match (m.kind.as_str(), m.symbol) {
                ("ack", _) if m.op.as_deref() == Some("unsubscribe") => {
                    for s in m.symbols.expect("an ack lists its symbols") {
                        self.snapshotted.remove(&s);
                    }
                }
                ("snapshot", Some(s)) => {
                    let seq = m.seq.expect("seq");
                    let last = self.last_seq.entry(s.clone()).or_default();
                    assert!(seq >= *last, "a snapshot older than what was sent: {s} {seq}");
                    *last = seq;
                    self.snapshotted.insert(s);
                }
                ("update", Some(s)) => {
                    assert!(self.snapshotted.contains(&s), "an update before its snapshot: {s}");
                    let seq = m.seq.expect("seq");
                    let last = self.last_seq.entry(s.clone()).or_default();
                    assert!(seq > *last, "seq went backwards: {s} {seq}");
                    *last = seq;
                }
                ("status", Some(s)) => {
                    assert!(self.snapshotted.contains(&s), "a status before its snapshot: {s}");
                }
                ("ack" | "error" | "pong" | "symbols", _) => {}
                (other, symbol) => panic!("unexpected message {other:?} for {symbol:?}: {frame}"),
            }
        }
    }
}

fn check_lists(shared: &SessionShared, session: Option<&Session>) {
    let held: HashSet<&str> = session
        .map(|s| s.subscribed().map(|s| &**s).collect())
        .unwrap_or_default();
    for symbol in SERVED {
        let entry = shared.index.lookup(symbol).expect("served");
        assert_eq!(
            entry.subscriber_count(),
            usize::from(held.contains(symbol)),
            "{symbol}: the subscriber list and the session disagree"
        );
    }
    assert_eq!(
        shared.metrics.subscriptions.get(),
        held.len() as i64,
        "quotegw_subscriptions is not what the session holds"
    );
}

fuzz_target!(|data: &[u8]| {
    let metrics = Arc::new(Metrics::new());
    let index = Arc::new(Index::new(&["a".into(), "b".into()], metrics.clone()));
    for symbol in SERVED {
        index.register(symbol.into());
    }
    let shared = SessionShared::standalone(
        index.clone(),
        metrics.clone(),
        LimitsConfig {
            max_symbols_per_connection: 2,
            ..LimitsConfig::default()
        },
    );
    let start = Instant::now();
    let mut now = start;
    let mut session = Session::new(shared.clone(), Grant::default(), Framing::JsonArray, now);
    let mut client = ClientView::default();
    let mut input = Bytes(data.iter());
    let mut ts = 0;
    while let Some(op) = input.next() {
        let arg = input.next().unwrap_or(0);
        let mut text = None;
        match op % 8 {
            0 => {
                let hz = MAX_HZ[usize::from(input.next().unwrap_or(0)) % MAX_HZ.len()];
                let hz = if hz.is_empty() { String::new() } else { format!(r#","max_hz":{hz}"#) };
                let on_lag = if arg & 0x80 != 0 { r#","on_lag":"close""# } else { "" };
                text = Some(format!(r#"{{"op":"subscribe","symbols":{}{hz}{on_lag}}}"#, symbols(arg)));
            }
            1 => text = Some(format!(r#"{{"op":"unsubscribe","symbols":{}}}"#, symbols(arg))),
            2 => {
                let id = IDS[usize::from(arg) % IDS.len()];
                text = Some(format!(r#"{{"op":"ping","id":{id}}}"#));
            }
            3 => text = Some(r#"{"op":"symbols"}"#.to_string()),
            4 => {
                let raw: Vec<u8> = (0..arg % 64).filter_map(|_| input.next()).collect();
                text = Some(String::from_utf8_lossy(&raw).into_owned());
            }
            5 => {
                ts += 1;
                index.apply(FeedEvent::Tick(Tick {
                    feed: u16::from(arg & 1),
                    symbol: SERVED[usize::from(arg >> 1) % SERVED.len()].into(),
                    ts,
                    bid: Some(Decimal::new(i64::from(arg) + 1, 2)),
                    status: [None, None, None, Some(Status::Halted), Some(Status::Live)]
                        [usize::from(arg >> 3) % 5],
                    ..Tick::default()
                }));
            }
            6 => index.apply(FeedEvent::Status {
                feed: u16::from(arg & 1),
                symbol: SERVED[usize::from(arg >> 1) % SERVED.len()].into(),
                status: [Status::Stale, Status::Live, Status::Halted][usize::from(arg >> 3) % 3],
            }),
            _ => {
                now += Duration::from_millis(u64::from(arg) * 8);
                // The worker's pass marks the connection (the gateway's path); a write it cannot
                // make hands the connection to its task, which flushes as below.
                quotegw::fanout::Shard::current()
                    .run_pass(&mut quotegw::fanout::Pass::default(), |_| false);
                session.begin_flush(now);
                loop {
                    let done = session.fill_frame(now);
                    if let Some(frame) = session.take_frame() {
                        client.check_frame(&frame);
                        session.frame_sent(frame.len(), now);
                    }
                    match done {
                        Ok(true) => break,
                        Ok(false) => {}
                        // Closed for lag (on_lag close): the connection ends.
                        Err(_) => {
                            drop(session);
                            check_lists(&shared, None);
                            return;
                        }
                    }
                }
            }
        }
        if let Some(text) = text {
            if session.on_text(&text, now).is_some() {
                // Closed for abuse: what was written goes out, then the connection ends.
                if let Some(frame) = session.take_frame() {
                    client.check_frame(&frame);
                }
                check_lists(&shared, Some(&session));
                break;
            }
        }
        check_lists(&shared, Some(&session));
    }
    drop(session);
    check_lists(&shared, None);
});
