//! The wire contract of `../shared/PROTOCOL.md`: client ops in, control messages out, error and close
//! codes. Quote messages (snapshot, update, status) are encoded in `delta.rs`.
//!
//! Client ops are parsed with serde_json into the raw text of the members the gateway reads, and then
//! checked field by field, so that every malformed op gets a message that says what to fix rather
//! than a generic serde error, and `id` is echoed exactly as the client wrote it (a DOM parser that
//! turns numbers into f64 or i64 first would echo `2.50` as `2.5`; Cargo.toml says why serde_json).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use thiserror::Error;

use crate::model::valid_symbol;

/// WebSocket close codes the gateway uses (PROTOCOL.md "Close codes", plus RFC 6455's 1002/1007).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The quote source restarted and `seq` may start over (a scale-out ingest that lost its
    /// state): reconnect and take fresh snapshots.
    pub const SERVICE_RESTART: u16 = 1012;
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Every code the gateway sends (exported at 0 from the start).
    pub const ALL: [u16; 9] = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        UNSUPPORTED_DATA,
        INVALID_PAYLOAD,
        POLICY,
        TOO_BIG,
        SERVICE_RESTART,
        SLOW_CONSUMER,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownSymbol,
    InvalidSymbol,
    TooManySymbols,
    RateLimited,
    Unauthorized,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownSymbol,
        ErrorCode::InvalidSymbol,
        ErrorCode::TooManySymbols,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownSymbol => "unknown_symbol",
            ErrorCode::InvalidSymbol => "invalid_symbol",
            ErrorCode::TooManySymbols => "too_many_symbols",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

/// The `max_hz` a client may ask for (PROTOCOL.md): from one update per 1,000 s to 1,000 per
/// second. Bounded here so that no later arithmetic on it (an interval, an instant) can
/// overflow; outside it, `bad_request`.
pub const MAX_HZ_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1000.0;

/// What a subscription wants when the client falls behind (PROTOCOL.md, "Slow consumers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnLag {
    /// Merged updates with `conflated` counts (the default).
    #[default]
    Conflate,
    /// Close the connection (4008) rather than merge: for clients that must see every tick.
    Close,
}

/// How much of a string that is not a symbol `rejected` echoes (PROTOCOL.md, "Symbols").
pub const INVALID_ECHO_CHARS: usize = 40;

/// The `symbols` of an op (or of a REST or SSE request): the symbols by the contract's rule,
/// upper-cased, and the strings that are not symbols, each cut to `INVALID_ECHO_CHARS`. A string
/// that is not a symbol is rejected alone (`invalid_symbol`) and the others are applied, so one
/// typo never costs a client, or every widget sharing its connection, the rest of its quotes.
#[derive(Debug, Default, PartialEq)]
pub struct SymbolList {
    pub valid: Vec<String>,
    pub invalid: Vec<String>,
}

impl SymbolList {
    /// Sorts one string from a client into `valid` or `invalid`.
    pub fn push(&mut self, s: &str) {
        if valid_symbol(s) {
            self.valid.push(normalize_symbol(s));
        } else {
            self.push_invalid(s);
        }
    }

    /// Sets aside a string that is not a symbol, cut for its echo.
    pub fn push_invalid(&mut self, s: &str) {
        self.invalid
            .push(s.chars().take(INVALID_ECHO_CHARS).collect());
    }

    pub fn len(&self) -> usize {
        self.valid.len() + self.invalid.len()
    }

    /// Without repeats, each list keeping first occurrences in their order.
    pub fn deduped(self) -> SymbolList {
        fn dedup(items: Vec<String>) -> Vec<String> {
            let keep: Vec<bool> = {
                let mut seen = std::collections::HashSet::with_capacity(items.len());
                items.iter().map(|s| seen.insert(s.as_str())).collect()
            };
            items
                .into_iter()
                .zip(keep)
                .filter_map(|(s, keep)| keep.then_some(s))
                .collect()
        }
        SymbolList {
            valid: dedup(self.valid),
            invalid: dedup(self.invalid),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(string, invalid_symbol)` for each string that is not a symbol, as `rejected` lists them.
    pub fn rejections(&self) -> impl Iterator<Item = (&str, ErrorCode)> {
        self.invalid
            .iter()
            .map(|s| (s.as_str(), ErrorCode::InvalidSymbol))
    }
}

/// A client op, parsed and checked.
#[derive(Debug, PartialEq)]
pub enum Op {
    Subscribe {
        symbols: SymbolList,
        max_hz: Option<f64>,
        on_lag: OnLag,
        /// Every trade print of these symbols (`"trades": true`).
        trades: bool,
        /// Bars of this interval (`"bars": "1m"`); the session checks the gateway offers it.
        bars: Option<String>,
    },
    Unsubscribe {
        symbols: SymbolList,
    },
    Symbols,
    Ping,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::Symbols => "symbols",
            Op::Ping => "ping",
        }
    }
}

/// One client frame: the op and the `id` to echo, kept as its JSON text.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub op: Op,
}

/// Why a client frame was refused; `id` is echoed when it could be read.
#[derive(Debug, Error, PartialEq)]
#[error("{code:?}: {message}")]
pub struct OpError {
    pub code: ErrorCode,
    pub id: Option<String>,
    pub message: String,
}

impl OpError {
    fn bad_request(id: &Option<String>, message: impl Into<String>) -> OpError {
        OpError {
            code: ErrorCode::BadRequest,
            id: id.clone(),
            message: message.into(),
        }
    }
}

/// The members of a client op the gateway reads, each kept as its raw JSON text until it is checked
/// on its own (so every mistake gets a message naming the field, and `id` is echoed as sent).
/// Other members are skipped without being converted, so a number of any size anywhere is fine.
#[derive(Deserialize)]
struct RawOp<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    symbols: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    max_hz: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    on_lag: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    trades: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    bars: Option<&'a RawValue>,
}

/// A member that is there, `null` included (serde would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame into a request.
pub fn parse_request(text: &str) -> Result<Request, OpError> {
    let bad_json = |message: String| OpError {
        code: ErrorCode::BadJson,
        id: None,
        message,
    };
    // A derived struct would also accept an array (its fields by position); an op is an object.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Err(e) => bad_json(format!("the frame is not valid JSON: {e}")),
            Ok(_) => bad_json("a client frame must be one JSON object".into()),
        });
    }
    let raw: RawOp = serde_json::from_str(text).map_err(|e| match e.classify() {
        // A key given twice: the op is ambiguous, so neither value is used.
        serde_json::error::Category::Data => OpError::bad_request(&None, e.to_string()),
        _ => bad_json(format!("the frame is not valid JSON: {e}")),
    })?;

    // Echoed verbatim, whatever its size or form (`2.50` stays `2.50`): valid JSON text already.
    let id = match raw.id.map(RawValue::get) {
        None => None,
        Some(v)
            if v.starts_with('"')
                || v.starts_with('-')
                || v.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            Some(v.to_string())
        }
        Some(_) => {
            return Err(OpError::bad_request(
                &None,
                "'id' must be a number or a string",
            ))
        }
    };

    let op = match raw.op.map(|v| serde_json::from_str::<Cow<str>>(v.get())) {
        Some(Ok(op)) => op,
        _ => return Err(OpError::bad_request(&id, "missing string field 'op'")),
    };

    let op = match op.as_ref() {
        "subscribe" => {
            let symbols = symbol_list(raw.symbols, "subscribe", &id)?;
            let max_hz = match raw.max_hz.map(RawValue::get) {
                None | Some("null") => None,
                Some(v) => match serde_json::from_str::<f64>(v) {
                    Ok(hz) if MAX_HZ_RANGE.contains(&hz) => Some(hz),
                    _ => {
                        return Err(OpError::bad_request(
                            &id,
                            "'max_hz' must be a number from 0.001 to 1000 (updates per second per symbol)",
                        ))
                    }
                },
            };
            let on_lag = match raw.on_lag.map(RawValue::get) {
                None | Some("null") | Some(r#""conflate""#) => OnLag::Conflate,
                Some(r#""close""#) => OnLag::Close,
                Some(_) => {
                    return Err(OpError::bad_request(
                        &id,
                        r#"'on_lag' must be "conflate" or "close""#,
                    ))
                }
            };
            let trades = match raw.trades.map(RawValue::get) {
                None | Some("null") | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(OpError::bad_request(&id, "'trades' must be true or false")),
            };
            let bars = match raw.bars.map(RawValue::get) {
                None | Some("null") => None,
                Some(v) => match serde_json::from_str::<Cow<str>>(v) {
                    Ok(name) if name.len() <= 16 => Some(name.into_owned()),
                    _ => {
                        return Err(OpError::bad_request(
                            &id,
                            "'bars' must be an interval string such as \"1m\"",
                        ))
                    }
                },
            };
            Op::Subscribe {
                symbols,
                max_hz,
                on_lag,
                trades,
                bars,
            }
        }
        "unsubscribe" => Op::Unsubscribe {
            symbols: symbol_list(raw.symbols, "unsubscribe", &id)?,
        },
        "symbols" => Op::Symbols,
        "ping" => Op::Ping,
        other => {
            let mut shown: String = other.chars().take(32).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(OpError::bad_request(
                &id,
                format!("unknown op '{shown}'; expected subscribe, unsubscribe, symbols or ping"),
            ));
        }
    };
    Ok(Request { id, op })
}

fn symbol_list(v: Option<&RawValue>, op: &str, id: &Option<String>) -> Result<SymbolList, OpError> {
    let not_a_list = || OpError::bad_request(id, format!("{op} needs a non-empty array 'symbols'"));
    let v = v.ok_or_else(not_a_list)?.get();
    match serde_json::from_str::<Vec<Cow<str>>>(v) {
        Ok(items) if items.is_empty() => Err(not_a_list()),
        Ok(items) => {
            let mut list = SymbolList::default();
            for s in &items {
                list.push(s);
            }
            Ok(list)
        }
        // Which mistake it was: not an array, an array of something else, or a string that is
        // not Unicode (a lone surrogate escape, `"\ud800"`: valid JSON, as a cut-off emoji is).
        // Structural mistakes refuse the whole op (`bad_request`); a string that is merely not a
        // symbol does not (`SymbolList`).
        Err(_) => {
            let items = serde_json::from_str::<Vec<&RawValue>>(v).map_err(|_| not_a_list())?;
            let mut list = SymbolList::default();
            for item in items {
                let raw = item.get();
                match serde_json::from_str::<Cow<str>>(raw) {
                    Ok(s) => list.push(&s),
                    // Echoed as the client wrote it, escapes and all, without the quotes.
                    Err(_) if raw.starts_with('"') => list.push_invalid(&raw[1..raw.len() - 1]),
                    Err(_) => {
                        return Err(OpError::bad_request(
                            id,
                            "'symbols' must contain only strings",
                        ))
                    }
                }
            }
            Ok(list)
        }
    }
}

/// Symbols are case-insensitive on input and upper-case on output (they are ASCII: `valid_symbol`).
pub fn normalize_symbol(s: &str) -> String {
    s.to_ascii_uppercase()
}

/// Appends `s` as a JSON string literal (quotes and escapes included).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn push_id(out: &mut String, id: Option<&str>) {
    if let Some(id) = id {
        out.push_str(r#","id":"#);
        out.push_str(id);
    }
}

fn push_str_array<'a>(out: &mut String, items: impl IntoIterator<Item = &'a str>) {
    out.push('[');
    for (i, s) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, s);
    }
    out.push(']');
}

/// `{"type":"ack",...}` for a subscribe or unsubscribe.
pub fn encode_ack(
    out: &mut String,
    id: Option<&str>,
    op: &str,
    symbols: &[&str],
    rejected: &[(&str, ErrorCode)],
) {
    out.push_str(r#"{"type":"ack""#);
    push_id(out, id);
    out.push_str(r#","op":"#);
    push_json_str(out, op);
    out.push_str(r#","symbols":"#);
    push_str_array(out, symbols.iter().copied());
    out.push_str(r#","rejected":["#);
    for (i, (symbol, code)) in rejected.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"symbol":"#);
        push_json_str(out, symbol);
        out.push_str(r#","code":""#);
        out.push_str(code.as_str());
        out.push_str("\"}");
    }
    out.push_str("]}");
}

pub fn encode_error(out: &mut String, id: Option<&str>, code: ErrorCode, message: &str) {
    out.push_str(r#"{"type":"error""#);
    push_id(out, id);
    out.push_str(r#","code":""#);
    out.push_str(code.as_str());
    out.push_str(r#"","message":"#);
    push_json_str(out, message);
    out.push('}');
}

pub fn encode_symbols<'a>(
    out: &mut String,
    id: Option<&str>,
    symbols: impl IntoIterator<Item = &'a str>,
) {
    out.push_str(r#"{"type":"symbols""#);
    push_id(out, id);
    out.push_str(r#","symbols":"#);
    push_str_array(out, symbols);
    out.push('}');
}

pub fn encode_pong(out: &mut String, id: Option<&str>) {
    out.push_str(r#"{"type":"pong""#);
    push_id(out, id);
    out.push('}');
}

#[cfg(test)]
mod tests;
