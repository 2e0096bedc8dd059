//! Scale-out, the wire between one ingest and many edges over NATS: subjects and the encoding of a
//! symbol's state (docs/deployment.md, "What travels", is the contract for other consumers).
//!
//! Quotes are state, not a log: every message carries a symbol's whole state, so a lost, duplicated
//! or reordered message can never corrupt a quote. An edge keeps the newest by `(term, version)`:
//! `term` grows with every ingest start, `version` with every change of the symbol under one term
//! (a tick, with the next `seq`, or a status-only change, with the same `seq`).
//!
//! Encoding, version 1: one JSON object, the quote fields named as on the WebSocket, prices as exact
//! decimal strings:
//! `{"v":1,"term":1796107698261,"ver":1042,"seq":1040,"symbol":"AAPL","ts":1732200000123,
//! "bid":"189.12","ask":"189.14","bid_size":300,"ask_size":500,"last":"189.13","last_size":100,
//! "volume":1234567,"status":"live"}`. A consumer ignores members it does not know and refuses a
//! `v` it does not know.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::delta::encode_snapshot;
use crate::fields;
use crate::model::{valid_symbol, Bar, BusPrints, BusSeries, BusTrade, Quote, Status, Symbol};

/// The encoding's version, `v` in every message.
pub const WIRE_VERSION: u64 = 1;

/// A symbol's state as it travels (defined in `model`: the edge's feed hands it to the index).
pub use crate::model::BusState as State;

/// A symbol's bars as they travel (defined in `model`: the edge's feed hands them to the index).
pub use crate::model::BusBars as Bars;

/// The subject of a symbol's state: `<prefix>.q.<symbol>`, with `%`, `.`, `*` and `>` escaped as
/// `%25`, `%2E`, `%2A`, `%3E` (a subject token may hold none of the last three; symbols may).
pub fn state_subject(prefix: &str, symbol: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 3 + symbol.len());
    s.push_str(prefix);
    s.push_str(".q.");
    for c in symbol.chars() {
        match c {
            '%' => s.push_str("%25"),
            '.' => s.push_str("%2E"),
            '*' => s.push_str("%2A"),
            '>' => s.push_str("%3E"),
            c => s.push(c),
        }
    }
    s
}

/// Every state subject: `<prefix>.q.>`.
pub fn state_subjects(prefix: &str) -> String {
    format!("{prefix}.q.>")
}

/// The ingest's heartbeat subject, `<prefix>.hb`: `{"v":1,"term":...,"ts":...}` every
/// `heartbeat_ms`, kept in the stream too, so an ingest that starts finds the last term.
pub fn heartbeat_subject(prefix: &str) -> String {
    format!("{prefix}.hb")
}

pub fn encode_heartbeat(term: u64, ts_ms: i64) -> String {
    format!(r#"{{"v":{WIRE_VERSION},"term":{term},"ts":{ts_ms}}}"#)
}

/// The term of a heartbeat message.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Heartbeat {
        v: u64,
        term: u64,
    }
    let hb: Heartbeat =
        serde_json::from_slice(bytes).map_err(|e| format!("not a heartbeat: {e}"))?;
    if hb.v != WIRE_VERSION {
        return Err(format!(
            "heartbeat of wire version {} (this gateway reads {WIRE_VERSION})",
            hb.v
        ));
    }
    if hb.term > MAX_COUNTER {
        return Err(format!("term {} is above {MAX_COUNTER}", hb.term));
    }
    Ok(hb.term)
}

/// The lease subject, `<prefix>.lease`: its last message in the stream says which ingest leads
/// (`scaleout::lease`). `{"v":1,"holder":"<id>"}` takes the lease; every later message of the same
/// holder carries the term (`"term":T`, the stream sequence of the message that took it), and one
/// with `"released":true` gives the lease up (a leader shutting down).
pub fn lease_subject(prefix: &str) -> String {
    format!("{prefix}.lease")
}

/// A lease message, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    #[serde(default)]
    pub term: Option<u64>,
    #[serde(default)]
    pub released: bool,
}

pub fn encode_lease(record: &LeaseRecord) -> String {
    let mut out = format!(r#"{{"v":{WIRE_VERSION},"holder":"#);
    crate::protocol::push_json_str(&mut out, &record.holder);
    if let Some(term) = record.term {
        out.push_str(r#","term":"#);
        out.push_str(itoa::Buffer::new().format(term));
    }
    if record.released {
        out.push_str(r#","released":true"#);
    }
    out.push('}');
    out
}

pub fn decode_lease(bytes: &[u8]) -> Result<LeaseRecord, String> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u64,
        #[serde(flatten)]
        record: LeaseRecord,
    }
    let l: Versioned =
        serde_json::from_slice(bytes).map_err(|e| format!("not a lease message: {e}"))?;
    if l.v != WIRE_VERSION {
        return Err(format!(
            "lease of wire version {} (this gateway reads {WIRE_VERSION})",
            l.v
        ));
    }
    if l.record.term.is_some_and(|t| t > MAX_COUNTER) {
        return Err(format!("term above {MAX_COUNTER}"));
    }
    Ok(l.record)
}

/// Why a state from the bus is refused by its content alone (`check_state`), the `reason` label
/// of `quotegw_bus_states_dropped_total`.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub why: String,
}

/// A state message larger than this is refused unread (a state is a few hundred bytes).
pub const MAX_STATE_BYTES: usize = 4096;

/// A state message as it arrived on `subject`, checked like any feed's tick: bounded size, the
/// wire format (`decode_state`: version, symbol, counters within 2^53), the symbol its subject
/// names, positive prices. Whether its term is the one to follow is the reader's to decide.
pub fn check_state(prefix: &str, subject: &str, payload: &[u8]) -> Result<State, Refused> {
    let refused = |reason, why| Refused { reason, why };
    if payload.len() > MAX_STATE_BYTES {
        return Err(refused(
            "too_large",
            format!(
                "a state of {} bytes (at most {MAX_STATE_BYTES})",
                payload.len()
            ),
        ));
    }
    let state = decode_state(payload).map_err(|e| refused("malformed", e))?;
    if state_subject(prefix, &state.symbol) != subject {
        return Err(refused(
            "subject_mismatch",
            format!("a state of '{}' on subject '{subject}'", state.symbol),
        ));
    }
    let q = &state.quote;
    let traded = state.prints.trade.map(|t| t.price);
    if [q.bid, q.ask, q.last, traded]
        .into_iter()
        .flatten()
        .any(|p| p <= rust_decimal::Decimal::ZERO)
    {
        return Err(refused(
            "non_positive_price",
            format!("a price of '{}' that is not positive", state.symbol),
        ));
    }
    Ok(state)
}

pub fn encode_state(state: &State) -> String {
    // The snapshot's JSON carries every quote field as the WebSocket shows it; the bus's own
    // members go first.
    let mut body = String::with_capacity(256);
    encode_snapshot(&mut body, &state.symbol, state.seq, &state.quote);
    let fields = body.split_once(r#","ts":"#).map_or("", |(_, rest)| rest);
    let mut out = String::with_capacity(body.len() + 64);
    out.push_str(r#"{"v":"#);
    out.push_str(itoa::Buffer::new().format(WIRE_VERSION));
    out.push_str(r#","term":"#);
    out.push_str(itoa::Buffer::new().format(state.term));
    out.push_str(r#","ver":"#);
    out.push_str(itoa::Buffer::new().format(state.version));
    out.push_str(r#","seq":"#);
    out.push_str(itoa::Buffer::new().format(state.seq));
    out.push_str(r#","symbol":"#);
    crate::protocol::push_json_str(&mut out, &state.symbol);
    out.push_str(r#","ts":"#);
    out.push_str(fields);
    push_prints(&mut out, &state.prints);
    out
}

/// The state's prints members before its closing brace (none before the symbol's first print):
/// `"prints":N,"print_seq":S`, and, when this state's tick was the print,
/// `"trade":{"price":"189.13","size":100,"prev_seq":S0}`.
fn push_prints(out: &mut String, prints: &BusPrints) {
    if prints.count == 0 {
        return;
    }
    let mut buf = itoa::Buffer::new();
    out.pop();
    out.push_str(r#","prints":"#);
    out.push_str(buf.format(prints.count));
    out.push_str(r#","print_seq":"#);
    out.push_str(buf.format(prints.last_seq));
    if let Some(t) = prints.trade {
        out.push_str(r#","trade":{"price":""#);
        out.push_str(&t.price.to_string());
        out.push_str(r#"","size":"#);
        out.push_str(buf.format(t.size));
        out.push_str(r#","prev_seq":"#);
        out.push_str(buf.format(t.prev_seq));
        out.push('}');
    }
    out.push('}');
}

#[derive(Deserialize)]
struct Wire<'a> {
    v: u64,
    term: u64,
    ver: u64,
    seq: u64,
    symbol: String,
    ts: i64,
    #[serde(borrow)]
    bid: Option<&'a RawValue>,
    #[serde(borrow)]
    ask: Option<&'a RawValue>,
    #[serde(borrow)]
    last: Option<&'a RawValue>,
    bid_size: Option<u64>,
    ask_size: Option<u64>,
    last_size: Option<u64>,
    volume: Option<u64>,
    status: String,
    #[serde(default)]
    prints: u64,
    #[serde(default)]
    print_seq: u64,
    #[serde(borrow)]
    trade: Option<WireTrade<'a>>,
}

#[derive(Deserialize)]
struct WireTrade<'a> {
    #[serde(borrow)]
    price: &'a RawValue,
    size: u64,
    prev_seq: u64,
}

/// Decodes a state message; prices from their text, exactly.
/// The largest `term`, `ver` and `seq` taken: the largest integer every JSON reader holds exactly
/// (a JavaScript client's `seq`), and far from `u64` overflow when an ingest adds 1 to a cached one.
pub const MAX_COUNTER: u64 = (1 << 53) - 1;

pub fn decode_state(bytes: &[u8]) -> Result<State, String> {
    let w: Wire = serde_json::from_slice(bytes).map_err(|e| format!("not a state message: {e}"))?;
    if w.v != WIRE_VERSION {
        return Err(format!(
            "state of wire version {} (this gateway reads {WIRE_VERSION})",
            w.v
        ));
    }
    if !valid_symbol(&w.symbol) {
        return Err(format!("'{}' is not a symbol", w.symbol));
    }
    for (name, n) in [("term", w.term), ("ver", w.ver), ("seq", w.seq)] {
        if n > MAX_COUNTER {
            return Err(format!("{name} {n} is above {MAX_COUNTER}"));
        }
        // A published state has had a tick: every counter starts at 1.
        if n == 0 {
            return Err(format!("{name} 0"));
        }
    }
    let price = |raw: Option<&RawValue>| raw.map_or(Ok(None), fields::price);
    let quote = Quote {
        ts: w.ts,
        bid: price(w.bid)?,
        ask: price(w.ask)?,
        last: price(w.last)?,
        bid_size: w.bid_size,
        ask_size: w.ask_size,
        last_size: w.last_size,
        volume: w.volume,
        status: Status::parse(&w.status).ok_or_else(|| format!("status '{}'", w.status))?,
    };
    let prints = decode_prints(w.seq, w.prints, w.print_seq, w.trade)?;
    Ok(State {
        term: w.term,
        version: w.ver,
        seq: w.seq,
        symbol: Symbol::from(w.symbol.to_ascii_uppercase()),
        quote,
        prints,
    })
}

/// A state's prints members, checked: counts within 2^53, the latest print at or before the
/// state's `seq`, and a `trade` only on the state whose tick it was, after its previous print.
fn decode_prints(
    seq: u64,
    count: u64,
    last_seq: u64,
    trade: Option<WireTrade<'_>>,
) -> Result<BusPrints, String> {
    if count > MAX_COUNTER {
        return Err(format!("prints {count} is above {MAX_COUNTER}"));
    }
    // A print has a tick of its own: never more prints than ticks.
    if (count == 0) != (last_seq == 0) || last_seq > seq || count > seq {
        return Err(format!(
            "prints {count} with print_seq {last_seq} (seq {seq})"
        ));
    }
    let trade = match trade {
        None => None,
        Some(t) => {
            if last_seq != seq || t.prev_seq >= seq {
                return Err(format!(
                    "a trade on a state of seq {seq} with print_seq {last_seq} and prev_seq {}",
                    t.prev_seq
                ));
            }
            if t.size == 0 || t.size > MAX_COUNTER {
                return Err(format!("a trade of size {}", t.size));
            }
            let price = fields::price(t.price)?.ok_or("a trade without a price")?;
            Some(BusTrade {
                price,
                size: t.size,
                prev_seq: t.prev_seq,
            })
        }
    };
    Ok(BusPrints {
        count,
        last_seq,
        trade,
    })
}

/// The subject of a symbol's bars: `<prefix>.b.<symbol>`, escaped as `state_subject` does.
pub fn bars_subject(prefix: &str, symbol: &str) -> String {
    let state = state_subject(prefix, symbol);
    format!("{prefix}.b.{}", &state[prefix.len() + 3..])
}

/// Every bars subject: `<prefix>.b.>`.
pub fn bars_subjects(prefix: &str) -> String {
    format!("{prefix}.b.>")
}

/// The most final bars one bars message carries per interval: what an edge can fill in after its
/// ingest's publisher fell behind (NATS slow or away).
pub const BUS_FINALS: usize = 8;

/// A bars message larger than this is refused unread (8 intervals × 9 bars of ~200 bytes).
pub const MAX_BARS_BYTES: usize = 16 * 1024;

/// Encoding of a symbol's bars, version 1:
/// `{"v":1,"term":T,"ver":V,"symbol":"AAPL","bars":[{"interval":"1m","open":<bar>|null,
/// "finals":[<bar>,...]}]}`, a bar being `{"start":1732200000000,"open":"189.10","high":"189.20",
/// "low":"189.05","close":"189.13","volume":12345,"trades":87,"seq":1042}` (`seq`: its last
/// trade's). `ver` grows with every change of the symbol's bars under one term.
pub fn encode_bars(bars: &Bars) -> String {
    let mut buf = itoa::Buffer::new();
    let mut out = String::with_capacity(128 + 160 * bars.series.len());
    out.push_str(r#"{"v":"#);
    out.push_str(buf.format(WIRE_VERSION));
    out.push_str(r#","term":"#);
    out.push_str(buf.format(bars.term));
    out.push_str(r#","ver":"#);
    out.push_str(buf.format(bars.version));
    out.push_str(r#","symbol":"#);
    crate::protocol::push_json_str(&mut out, &bars.symbol);
    out.push_str(r#","bars":["#);
    for (i, s) in bars.series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"interval":"#);
        crate::protocol::push_json_str(&mut out, &s.interval);
        out.push_str(r#","open":"#);
        match &s.open {
            Some(bar) => push_bar(&mut out, bar),
            None => out.push_str("null"),
        }
        out.push_str(r#","finals":["#);
        for (j, bar) in s.finals.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_bar(&mut out, bar);
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

fn push_bar(out: &mut String, bar: &Bar) {
    use std::fmt::Write as _;
    let _ = write!(
        out,
        r#"{{"start":{},"open":"{}","high":"{}","low":"{}","close":"{}","volume":{},"trades":{},"seq":{}}}"#,
        bar.start, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades, bar.seq
    );
}

#[derive(Deserialize)]
struct WireBars<'a> {
    v: u64,
    term: u64,
    ver: u64,
    symbol: String,
    #[serde(borrow)]
    bars: Vec<WireSeries<'a>>,
}

#[derive(Deserialize)]
struct WireSeries<'a> {
    interval: String,
    #[serde(borrow)]
    open: Option<WireBar<'a>>,
    #[serde(borrow)]
    finals: Vec<WireBar<'a>>,
}

#[derive(Deserialize)]
struct WireBar<'a> {
    start: i64,
    #[serde(borrow)]
    open: &'a RawValue,
    #[serde(borrow)]
    high: &'a RawValue,
    #[serde(borrow)]
    low: &'a RawValue,
    #[serde(borrow)]
    close: &'a RawValue,
    volume: u64,
    trades: u64,
    seq: u64,
}

/// A bars message as it arrived on `subject`, checked like a state (`check_state`): bounded size,
/// the format, the symbol its subject names, and bars that are bars: an interval this gateway could
/// build, starts on its boundaries and rising, positive prices with open and close within low and
/// high, at least one trade. Whether its term is the one to follow is the reader's to decide.
pub fn check_bars(prefix: &str, subject: &str, payload: &[u8]) -> Result<Bars, Refused> {
    let malformed = |why: String| Refused {
        reason: "malformed",
        why,
    };
    if payload.len() > MAX_BARS_BYTES {
        return Err(Refused {
            reason: "too_large",
            why: format!("bars of {} bytes (at most {MAX_BARS_BYTES})", payload.len()),
        });
    }
    let w: WireBars = serde_json::from_slice(payload)
        .map_err(|e| malformed(format!("not a bars message: {e}")))?;
    if w.v != WIRE_VERSION {
        return Err(malformed(format!(
            "bars of wire version {} (this gateway reads {WIRE_VERSION})",
            w.v
        )));
    }
    if !valid_symbol(&w.symbol) {
        return Err(malformed(format!("'{}' is not a symbol", w.symbol)));
    }
    let symbol = Symbol::from(w.symbol.to_ascii_uppercase());
    if bars_subject(prefix, &symbol) != subject {
        return Err(Refused {
            reason: "subject_mismatch",
            why: format!("bars of '{symbol}' on subject '{subject}'"),
        });
    }
    for (name, n) in [("term", w.term), ("ver", w.ver)] {
        if n == 0 || n > MAX_COUNTER {
            return Err(malformed(format!("bars with {name} {n}")));
        }
    }
    if w.bars.len() > crate::index::MAX_BAR_INTERVALS {
        return Err(malformed(format!("bars of {} intervals", w.bars.len())));
    }
    let mut series = Vec::with_capacity(w.bars.len());
    for s in w.bars {
        let ms = crate::index::interval_ms(&s.interval)
            .ok_or_else(|| malformed(format!("bars of interval '{}'", s.interval)))?;
        if s.finals.len() > BUS_FINALS {
            return Err(malformed(format!("{} final bars", s.finals.len())));
        }
        let bar = |b: &WireBar<'_>| -> Result<Bar, Refused> {
            let price = |raw| {
                fields::price(raw)
                    .map_err(&malformed)?
                    .ok_or_else(|| malformed("a bar without a price".into()))
            };
            let bar = Bar {
                start: b.start,
                open: price(b.open)?,
                high: price(b.high)?,
                low: price(b.low)?,
                close: price(b.close)?,
                volume: b.volume,
                trades: b.trades,
                seq: b.seq,
                feed: 0,
                ended_ms: 0,
            };
            let within = |p| bar.low <= p && p <= bar.high;
            if bar.low <= rust_decimal::Decimal::ZERO {
                return Err(Refused {
                    reason: "non_positive_price",
                    why: format!("a bar of '{symbol}' with a price that is not positive"),
                });
            }
            if b.start.rem_euclid(ms) != 0
                || !within(bar.open)
                || !within(bar.close)
                || b.trades == 0
                || b.seq == 0
                || b.seq > MAX_COUNTER
            {
                return Err(malformed(format!(
                    "a {} bar of '{symbol}' that is not a bar (start {}, {} trades)",
                    s.interval, b.start, b.trades
                )));
            }
            Ok(bar)
        };
        let finals = s.finals.iter().map(bar).collect::<Result<Vec<_>, _>>()?;
        let open = s.open.as_ref().map(bar).transpose()?;
        let starts: Vec<i64> = finals.iter().chain(&open).map(|b| b.start).collect();
        if starts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(malformed(format!(
                "{} bars of '{symbol}' out of order",
                s.interval
            )));
        }
        series.push(BusSeries {
            interval: s.interval,
            open,
            finals,
        });
    }
    Ok(Bars {
        term: w.term,
        version: w.ver,
        symbol,
        series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    #[test]
    fn a_state_round_trips_with_exact_prices() {
        let state = State {
            term: 1_796_107_698_261,
            version: 1042,
            seq: 1040,
            symbol: "BRK.B".into(),
            quote: Quote {
                ts: 1_732_200_000_123,
                bid: Some(Decimal::from_str("189.10").unwrap()),
                ask: None,
                last: Some(Decimal::from_str("0.1000000000000000000000000001").unwrap()),
                bid_size: Some(300),
                ask_size: None,
                last_size: Some(0),
                volume: Some(1_234_567),
                status: Status::Halted,
            },
            prints: BusPrints::default(),
        };
        let text = encode_state(&state);
        assert!(text.starts_with(r#"{"v":1,"term":1796107698261,"ver":1042,"seq":1040,"symbol":"BRK.B","ts":1732200000123,"bid":"189.10","ask":null"#), "{text}");
        let back = decode_state(text.as_bytes()).unwrap();
        assert_eq!(
            back.quote.bid.unwrap().to_string(),
            "189.10",
            "the scale survives"
        );
        assert!(back.quote.same_as(&state.quote));
        assert_eq!(
            (back.term, back.version, back.seq, &*back.symbol),
            (state.term, 1042, 1040, "BRK.B")
        );
        assert!(decode_state(text.replace(r#""v":1"#, r#""v":2"#).as_bytes()).is_err());
        // A counter an ingest could not add 1 to, or a JavaScript client could not hold.
        for field in [r#""term":1796107698261"#, r#""ver":1042"#, r#""seq":1040"#] {
            let name = field.split(':').next().unwrap();
            let big = text.replace(field, &format!("{name}:9007199254740992"));
            assert!(
                decode_state(big.as_bytes()).unwrap_err().contains("above"),
                "{big}"
            );
            let max = text.replace(field, &format!("{name}:9007199254740991"));
            assert!(decode_state(max.as_bytes()).is_ok(), "{max}");
        }
        assert_eq!(decode_heartbeat(encode_heartbeat(7, 1).as_bytes()), Ok(7));
    }

    #[test]
    fn prints_travel_on_the_state_of_their_tick() {
        let p = |s: &str| Decimal::from_str(s).unwrap();
        let mut state = State {
            term: 3,
            version: 9,
            seq: 8,
            symbol: "AAPL".into(),
            quote: Quote {
                ts: 5,
                last: Some(p("189.10")),
                ..Quote::default()
            },
            prints: BusPrints {
                count: 4,
                last_seq: 8,
                trade: Some(BusTrade {
                    price: p("189.10"),
                    size: 100,
                    prev_seq: 6,
                }),
            },
        };
        let text = encode_state(&state);
        assert!(
            text.ends_with(r#","status":"live","prints":4,"print_seq":8,"trade":{"price":"189.10","size":100,"prev_seq":6}}"#),
            "{text}"
        );
        let back = check_state("q", "q.q.AAPL", text.as_bytes()).unwrap();
        assert_eq!(back.prints, state.prints);
        assert_eq!(back.prints.trade.unwrap().price.to_string(), "189.10");
        state.prints.trade = None;
        state.seq = 9;
        let text = encode_state(&state);
        assert_eq!(decode_state(text.as_bytes()).unwrap().prints, state.prints);
        // A trade on a state that is not its tick, a count without its seq, a print after the state.
        for bad in [
            text.replace(
                r#""print_seq":8"#,
                r#""print_seq":8,"trade":{"price":"1","size":1,"prev_seq":0}"#,
            ),
            text.replace(r#""prints":4,"#, ""),
            text.replace(r#""print_seq":8"#, r#""print_seq":10"#),
        ] {
            assert!(decode_state(bad.as_bytes()).is_err(), "{bad}");
        }
        let negative = encode_state(&State {
            seq: 8,
            prints: BusPrints {
                trade: Some(BusTrade {
                    price: p("-1"),
                    size: 1,
                    prev_seq: 0,
                }),
                ..state.prints
            },
            ..state.clone()
        });
        assert_eq!(
            check_state("q", "q.q.AAPL", negative.as_bytes())
                .unwrap_err()
                .reason,
            "non_positive_price"
        );
    }

    #[test]
    fn bars_round_trip_and_what_is_not_a_bar_is_refused() {
        let p = |s: &str| Decimal::from_str(s).unwrap();
        let bar = |start, close: &str| Bar {
            start,
            open: p("189.10"),
            high: p("189.20"),
            low: p("189.1"),
            close: p(close),
            volume: 300,
            trades: 3,
            seq: 7,
            feed: 0,
            ended_ms: 0,
        };
        let bars = Bars {
            term: 2,
            version: 5,
            symbol: "BRK.B".into(),
            series: vec![
                BusSeries {
                    interval: "1s".into(),
                    open: Some(bar(3000, "189.15")),
                    finals: vec![bar(1000, "189.1"), bar(2000, "189.20")],
                },
                BusSeries {
                    interval: "1m".into(),
                    open: None,
                    finals: vec![],
                },
            ],
        };
        let text = encode_bars(&bars);
        let subject = bars_subject("q", "BRK.B");
        assert_eq!(subject, "q.b.BRK%2EB");
        let back = check_bars("q", &subject, text.as_bytes()).unwrap();
        assert_eq!((back.term, back.version, &*back.symbol), (2, 5, "BRK.B"));
        assert_eq!(back.series, bars.series);
        assert_eq!(
            back.series[0].finals[0].low.to_string(),
            "189.1",
            "scale kept"
        );
        let refused = |t: String| check_bars("q", &subject, t.as_bytes()).unwrap_err().reason;
        assert_eq!(refused(text.replace("BRK.B", "MSFT")), "subject_mismatch");
        for bad in [
            text.replace(r#""start":3000"#, r#""start":3500"#), // off its boundary
            text.replace(r#""start":3000"#, r#""start":2000"#), // not after the last final
            text.replace(r#""close":"189.15""#, r#""close":"190""#), // above the high
            text.replace(r#""interval":"1m""#, r#""interval":"7s""#),
            text.replace(r#""trades":3,"seq":7}]"#, r#""trades":0,"seq":7}]"#),
            text.replace(r#""v":1"#, r#""v":2"#),
        ] {
            assert_eq!(refused(bad.clone()), "malformed", "{bad}");
        }
        assert_eq!(
            refused(text.replace(r#""low":"189.1""#, r#""low":"-1""#)),
            "non_positive_price"
        );
        assert_eq!(refused(" ".repeat(MAX_BARS_BYTES + 1)), "too_large");
    }

    #[test]
    fn a_lease_record_round_trips() {
        for record in [
            LeaseRecord {
                holder: "a\"b".into(),
                term: None,
                released: false,
            },
            LeaseRecord {
                holder: "x".into(),
                term: Some(42),
                released: true,
            },
        ] {
            assert_eq!(decode_lease(encode_lease(&record).as_bytes()), Ok(record));
        }
        assert!(decode_lease(br#"{"v":1,"holder":"x","term":9007199254740992}"#).is_err());
        assert!(decode_lease(br#"{"v":2,"holder":"x"}"#).is_err());
    }

    #[test]
    fn subjects_escape_what_a_token_cannot_hold() {
        assert_eq!(state_subject("quotegw", "AAPL"), "quotegw.q.AAPL");
        assert_eq!(state_subject("quotegw", "BRK.B"), "quotegw.q.BRK%2EB");
        assert_eq!(state_subject("p", "A*>%"), "p.q.A%2A%3E%25");
    }
}
