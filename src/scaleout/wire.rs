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
use crate::model::{valid_symbol, Quote, Status, Symbol};

/// The encoding's version, `v` in every message.
pub const WIRE_VERSION: u64 = 1;

/// A symbol's state as it travels (defined in `model`: the edge's feed hands it to the index).
pub use crate::model::BusState as State;

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
    if [q.bid, q.ask, q.last]
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
    out
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
    Ok(State {
        term: w.term,
        version: w.ver,
        seq: w.seq,
        symbol: Symbol::from(w.symbol.to_ascii_uppercase()),
        quote,
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
