//! The wire contract of `../shared/PROTOCOL.md`: client ops in, control messages out, error and close
//! codes. Quote messages (snapshot, update, status) are encoded in `delta.rs`.
//!
//! Client ops are parsed with simd-json into a borrowed value and then checked field by field, so that
//! every malformed op gets a message that says what to fix rather than a generic serde error.

use bytestring::ByteString;
use simd_json::{BorrowedValue, StaticNode};
use thiserror::Error;

/// WebSocket close codes the gateway uses (PROTOCOL.md "Close codes", plus RFC 6455's 1002/1007).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Every code the gateway sends (exported at 0 from the start).
    pub const ALL: [u16; 8] = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        UNSUPPORTED_DATA,
        INVALID_PAYLOAD,
        POLICY,
        TOO_BIG,
        SLOW_CONSUMER,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownSymbol,
    TooManySymbols,
    RateLimited,
    Unauthorized,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownSymbol,
        ErrorCode::TooManySymbols,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownSymbol => "unknown_symbol",
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

/// A client op, parsed and checked.
#[derive(Debug, PartialEq)]
pub enum Op {
    Subscribe {
        symbols: Vec<String>,
        max_hz: Option<f64>,
    },
    Unsubscribe {
        symbols: Vec<String>,
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

/// Parses one text frame into a request.
pub fn parse_request(text: &str) -> Result<Request, OpError> {
    // simd-json parses in place, so it needs its own mutable copy; ops are small and rate-limited.
    let mut buf = text.as_bytes().to_vec();
    let value = simd_json::to_borrowed_value(&mut buf).map_err(|e| OpError {
        code: ErrorCode::BadJson,
        id: None,
        message: format!("the frame is not valid JSON: {e}"),
    })?;
    let BorrowedValue::Object(obj) = value else {
        return Err(OpError {
            code: ErrorCode::BadJson,
            id: None,
            message: "a client frame must be one JSON object".into(),
        });
    };

    let id = match obj.get("id") {
        None => None,
        Some(v @ BorrowedValue::String(_))
        | Some(
            v @ BorrowedValue::Static(StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_)),
        ) => Some(simd_json::prelude::Writable::encode(v)),
        Some(_) => {
            return Err(OpError::bad_request(
                &None,
                "'id' must be a number or a string",
            ))
        }
    };

    let op = match obj.get("op") {
        Some(BorrowedValue::String(op)) => op.as_ref(),
        _ => return Err(OpError::bad_request(&id, "missing string field 'op'")),
    };

    let op = match op {
        "subscribe" => {
            let symbols = symbol_list(obj.get("symbols"), "subscribe", &id)?;
            let max_hz = match obj.get("max_hz") {
                None | Some(BorrowedValue::Static(StaticNode::Null)) => None,
                Some(v) => match number(v) {
                    Some(hz) if MAX_HZ_RANGE.contains(&hz) => Some(hz),
                    _ => {
                        return Err(OpError::bad_request(
                            &id,
                            "'max_hz' must be a number from 0.001 to 1000 (updates per second per symbol)",
                        ))
                    }
                },
            };
            Op::Subscribe { symbols, max_hz }
        }
        "unsubscribe" => Op::Unsubscribe {
            symbols: symbol_list(obj.get("symbols"), "unsubscribe", &id)?,
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

fn number(v: &BorrowedValue) -> Option<f64> {
    match v {
        BorrowedValue::Static(StaticNode::I64(n)) => Some(*n as f64),
        BorrowedValue::Static(StaticNode::U64(n)) => Some(*n as f64),
        BorrowedValue::Static(StaticNode::F64(n)) => Some(*n),
        _ => None,
    }
}

fn symbol_list(
    v: Option<&BorrowedValue>,
    op: &str,
    id: &Option<String>,
) -> Result<Vec<String>, OpError> {
    let Some(BorrowedValue::Array(items)) = v else {
        return Err(OpError::bad_request(
            id,
            format!("{op} needs a non-empty array 'symbols'"),
        ));
    };
    if items.is_empty() {
        return Err(OpError::bad_request(
            id,
            format!("{op} needs a non-empty array 'symbols'"),
        ));
    }
    items
        .iter()
        .map(|s| match s {
            BorrowedValue::String(s) => Ok(normalize_symbol(s)),
            _ => Err(OpError::bad_request(
                id,
                "'symbols' must contain only strings",
            )),
        })
        .collect()
}

/// Symbols are case-insensitive on input and upper-case on output.
pub fn normalize_symbol(s: &str) -> String {
    s.trim().to_uppercase()
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

/// Builds one server frame: a JSON array of messages (PROTOCOL.md: "every frame the server sends is a
/// JSON array"). A frame holding only one shared, pre-encoded update is that update's own bytes, not a
/// copy: the serialize-once, send-many case.
#[derive(Default)]
pub struct FrameBuilder {
    buf: String,
    count: usize,
    /// A lone shared message (already `[...]`), kept by reference until a second message arrives.
    single_shared: Option<ByteString>,
    /// The last frame's length: the next frame's buffer is allocated at that size when it starts,
    /// so an idle connection holds no buffer between frames.
    capacity_hint: usize,
}

impl FrameBuilder {
    /// Appends a message written by `encode`.
    pub fn push(&mut self, encode: impl FnOnce(&mut String)) {
        self.separator();
        encode(&mut self.buf);
        self.count += 1;
    }

    /// Appends a shared one-message frame (`[{...}]`, as the index encodes each tick's update).
    pub fn push_shared(&mut self, one_message_frame: &ByteString) {
        if self.count == 0 {
            self.single_shared = Some(one_message_frame.clone());
        } else {
            self.separator();
            self.buf.push_str(inner(one_message_frame));
        }
        self.count += 1;
    }

    fn separator(&mut self) {
        if self.count == 0 || self.single_shared.is_some() {
            self.buf.reserve(self.capacity_hint);
        }
        if let Some(single) = self.single_shared.take() {
            self.buf.push('[');
            self.buf.push_str(inner(&single));
            self.buf.push(',');
        } else if self.count == 0 {
            self.buf.push('[');
        } else {
            self.buf.push(',');
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn messages(&self) -> usize {
        self.count
    }

    /// Bytes so far (the shared case counts its own length).
    pub fn len_bytes(&self) -> usize {
        self.single_shared
            .as_ref()
            .map_or(self.buf.len(), |s| s.len())
    }

    /// The finished frame, or `None` when nothing was pushed; the builder is empty again after.
    pub fn take(&mut self) -> Option<ByteString> {
        if self.count == 0 {
            return None;
        }
        self.count = 0;
        if let Some(single) = self.single_shared.take() {
            return Some(single);
        }
        self.buf.push(']');
        self.capacity_hint = self.buf.len();
        Some(ByteString::from(std::mem::take(&mut self.buf)))
    }
}

/// `{...}` of a `[{...}]` one-message frame.
fn inner(one_message_frame: &str) -> &str {
    &one_message_frame[1..one_message_frame.len() - 1]
}

/// Wraps one encoded message as a frame, the form in which the index shares each tick's update.
pub fn one_message_frame(encode: impl FnOnce(&mut String)) -> ByteString {
    let mut s = String::with_capacity(192);
    s.push('[');
    encode(&mut s);
    s.push(']');
    ByteString::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_request(text).unwrap_err().code
    }

    #[test]
    fn parses_every_op() {
        assert_eq!(
            parse_request(r#"{"op":"subscribe","id":1,"symbols":["aapl"," msft"],"max_hz":2.5}"#),
            Ok(Request {
                id: Some("1".into()),
                op: Op::Subscribe {
                    symbols: vec!["AAPL".into(), "MSFT".into()],
                    max_hz: Some(2.5)
                }
            })
        );
        assert_eq!(
            parse_request(r#"{"op":"unsubscribe","id":"x","symbols":["AAPL"]}"#)
                .unwrap()
                .id,
            Some(r#""x""#.into())
        );
        assert_eq!(
            parse_request(r#"{"op":"symbols"}"#).unwrap().op,
            Op::Symbols
        );
        assert_eq!(
            parse_request(r#"{"op":"ping","id":3}"#).unwrap().op,
            Op::Ping
        );
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code("\"op\""), ErrorCode::BadJson);
        assert_eq!(code(r#"{"op":"sub"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"symbols":[]}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","symbols":[]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","symbols":"AAPL"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","symbols":[1]}"#),
            ErrorCode::BadRequest
        );
        for hz in [
            "0", "-1", "\"5\"", "true", "[]", "1e-300", "0.0009", "1000.5", "1e308",
        ] {
            let op = format!(r#"{{"op":"subscribe","symbols":["A"],"max_hz":{hz}}}"#);
            assert_eq!(code(&op), ErrorCode::BadRequest, "{op}");
        }
        assert_eq!(code(r#"{"op":"ping","id":{}}"#), ErrorCode::BadRequest);
    }

    #[test]
    fn json_bombs_are_bad_json_not_crashes() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(code(&deep), ErrorCode::BadJson);
        let deep_obj =
            r#"{"op":"ping","x":"#.to_string() + &"[".repeat(10_000) + &"]".repeat(10_000) + "}";
        assert_eq!(code(&deep_obj), ErrorCode::BadJson);
        // An out-of-range number is refused by the parser rather than turned into infinity.
        assert!(parse_request(r#"{"op":"subscribe","symbols":["A"],"max_hz":1e400}"#).is_err());
        let ws = " ".repeat(64 * 1024) + r#"{"op":"ping"}"#;
        assert_eq!(parse_request(&ws).unwrap().op, Op::Ping);
    }

    #[test]
    fn the_id_is_echoed_verbatim() {
        let mut out = String::new();
        let req = parse_request(r#"{"op":"ping","id":"a\"b"}"#).unwrap();
        encode_pong(&mut out, req.id.as_deref());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], "a\"b");
    }

    #[test]
    fn frames_are_arrays_and_share_a_lone_update() {
        let shared = one_message_frame(|s| s.push_str(r#"{"u":1}"#));
        let mut f = FrameBuilder::default();
        assert!(f.take().is_none());
        f.push_shared(&shared);
        let one = f.take().unwrap();
        assert_eq!(&*one, r#"[{"u":1}]"#);
        assert_eq!(
            one.as_bytes().as_ptr(),
            shared.as_bytes().as_ptr(),
            "no copy"
        );
        f.push_shared(&shared);
        f.push(|s| s.push_str(r#"{"a":2}"#));
        f.push_shared(&shared);
        assert_eq!(&*f.take().unwrap(), r#"[{"u":1},{"a":2},{"u":1}]"#);
        f.push(|s| s.push_str("{}"));
        assert_eq!(&*f.take().unwrap(), "[{}]");
    }

    #[test]
    fn encodes_control_messages() {
        let mut out = String::new();
        encode_ack(
            &mut out,
            Some("1"),
            "subscribe",
            &["AAPL", "MSFT"],
            &[("ZZZZ", ErrorCode::UnknownSymbol)],
        );
        assert_eq!(
            out,
            r#"{"type":"ack","id":1,"op":"subscribe","symbols":["AAPL","MSFT"],"rejected":[{"symbol":"ZZZZ","code":"unknown_symbol"}]}"#
        );
        out.clear();
        encode_error(&mut out, None, ErrorCode::BadRequest, "line\nbreak");
        assert_eq!(
            out,
            r#"{"type":"error","code":"bad_request","message":"line\nbreak"}"#
        );
        out.clear();
        push_json_str(&mut out, "\u{1}é");
        assert_eq!(out, "\"\\u0001é\"");
    }
}
