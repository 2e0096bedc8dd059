use super::*;

fn code(text: &str) -> ErrorCode {
    parse_request(text).unwrap_err().code
}

#[test]
fn parses_every_op() {
    assert_eq!(
        parse_request(r#"{"op":"subscribe","id":1,"symbols":["aapl","msft"],"max_hz":2.5}"#),
        Ok(Request {
            id: Some("1".into()),
            op: Op::Subscribe {
                symbols: SymbolList {
                    valid: vec!["AAPL".into(), "MSFT".into()],
                    invalid: vec![],
                },
                max_hz: Some(2.5),
                on_lag: OnLag::Conflate,
                trades: false,
                bars: None,
            }
        })
    );
    let Op::Subscribe { trades, bars, .. } =
        parse_request(r#"{"op":"subscribe","symbols":["A"],"trades":true,"bars":"1m"}"#)
            .unwrap()
            .op
    else {
        panic!("a subscribe")
    };
    assert_eq!((trades, bars.as_deref()), (true, Some("1m")));
    for bad in [
        r#"{"op":"subscribe","symbols":["A"],"trades":"yes"}"#,
        r#"{"op":"subscribe","symbols":["A"],"trades":1}"#,
        r#"{"op":"subscribe","symbols":["A"],"bars":60}"#,
        r#"{"op":"subscribe","symbols":["A"],"bars":"xxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    ] {
        assert_eq!(
            parse_request(bad).unwrap_err().code,
            ErrorCode::BadRequest,
            "{bad}"
        );
    }
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

/// A string that is not a symbol is rejected alone (PROTOCOL.md, "Symbols"): the op parses, its
/// symbols are kept, and the ack lists the string, cut to 40 characters and JSON-escaped.
#[test]
fn a_string_that_is_not_a_symbol_is_set_aside_not_a_bad_request() {
    let long = "X".repeat(33) + "é" + &"Y".repeat(50);
    let text = format!(
        r#"{{"op":"subscribe","id":1,"symbols":["aapl","<img src=x onerror=alert(1)>","","a b","{long}","MSFT","q\"\n"]}}"#
    );
    let Op::Subscribe { symbols, .. } = parse_request(&text).unwrap().op else {
        panic!("a subscribe");
    };
    assert_eq!(symbols.valid, ["AAPL", "MSFT"]);
    let cut: String = ("X".repeat(33) + "é" + &"Y".repeat(50))
        .chars()
        .take(40)
        .collect();
    assert_eq!(
        symbols.invalid,
        [
            "<img src=x onerror=alert(1)>",
            "",
            "a b",
            cut.as_str(),
            "q\"\n"
        ]
    );
    let mut out = String::new();
    let rejected: Vec<_> = symbols.rejections().collect();
    encode_ack(
        &mut out,
        Some("1"),
        "subscribe",
        &["AAPL", "MSFT"],
        &rejected,
    );
    let ack: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ack["rejected"][0]["code"], "invalid_symbol");
    assert_eq!(
        ack["rejected"][3]["symbol"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        40
    );
    assert_eq!(ack["rejected"][4]["symbol"], "q\"\n");
    // Only strings that are not symbols: still an op (an ack rejecting each), not an error.
    let only_bad = parse_request(r#"{"op":"unsubscribe","symbols":["a,b"]}"#).unwrap();
    assert_eq!(
        only_bad.op,
        Op::Unsubscribe {
            symbols: SymbolList {
                valid: vec![],
                invalid: vec!["a,b".into()]
            }
        }
    );
    // A list that is not a list of strings is still the op's structure: bad_request.
    assert_eq!(
        code(r#"{"op":"subscribe","symbols":["AAPL",1]}"#),
        ErrorCode::BadRequest
    );
    // A string that is not Unicode (a lone surrogate escape: a cut-off emoji) is a string
    // that is not a symbol, echoed as written (found from outside: it refused the op).
    let Op::Subscribe { symbols, .. } =
        parse_request(r#"{"op":"subscribe","symbols":["\ud800x","aapl"]}"#)
            .unwrap()
            .op
    else {
        panic!("a subscribe");
    };
    assert_eq!(symbols.valid, ["AAPL"]);
    assert_eq!(symbols.invalid, [r"\ud800x"]);
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
    // Deep nesting inside a member the gateway does not read is valid JSON, skipped without
    // recursion (the frame size bounds it); inside one it reads, it is the wrong type.
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    let deep_obj = format!(r#"{{"op":"ping","x":{nested}}}"#);
    assert_eq!(parse_request(&deep_obj).unwrap().op, Op::Ping);
    let deep_symbols = format!(r#"{{"op":"subscribe","symbols":{nested}}}"#);
    assert_eq!(code(&deep_symbols), ErrorCode::BadRequest);
    let deep_id = format!(r#"{{"op":"ping","id":{nested}}}"#);
    assert_eq!(code(&deep_id), ErrorCode::BadRequest);
    let unclosed = r#"{"op":"ping","x":"#.to_string() + &"[".repeat(10_000);
    assert_eq!(code(&unclosed), ErrorCode::BadJson);
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
    // Regression: numbers came back re-encoded (2.50 as 2.5), and one past 64 bits made the
    // whole frame bad_json. Any JSON number is echoed as its text.
    for id in [
        "2.50",
        "12345678901234567890123",
        "-0",
        "1e400",
        "0.1000000000000000000000000001",
        r#""\u00e9""#,
    ] {
        let req = parse_request(&format!(r#"{{"op":"ping","id":{id}}}"#)).unwrap();
        assert_eq!(req.id.as_deref(), Some(id));
        let mut out = String::new();
        encode_pong(&mut out, req.id.as_deref());
        assert_eq!(out, format!(r#"{{"type":"pong","id":{id}}}"#));
    }
    // And in errors, for an op that parsed as an object.
    let e = parse_request(r#"{"op":"nope","id":99999999999999999999999}"#).unwrap_err();
    assert_eq!(e.id.as_deref(), Some("99999999999999999999999"));
    for bad in ["null", "true", "{}", "[]"] {
        let op = format!(r#"{{"op":"ping","id":{bad}}}"#);
        assert_eq!(code(&op), ErrorCode::BadRequest, "{op}");
    }
}

#[test]
fn on_lag_is_conflate_or_close() {
    let op = |v: &str| parse_request(&format!(r#"{{"op":"subscribe","symbols":["A"]{v}}}"#));
    let on_lag = |v: &str| match op(v).unwrap().op {
        Op::Subscribe { on_lag, .. } => on_lag,
        other => panic!("{other:?}"),
    };
    assert_eq!(on_lag(""), OnLag::Conflate);
    assert_eq!(on_lag(r#","on_lag":"conflate""#), OnLag::Conflate);
    assert_eq!(on_lag(r#","on_lag":"close""#), OnLag::Close);
    for bad in [r#""CLOSE""#, "1", r#""drop""#] {
        assert_eq!(
            op(&format!(r#","on_lag":{bad}"#)).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }
}

#[test]
fn a_key_given_twice_is_a_bad_request() {
    let e = parse_request(r#"{"op":"ping","op":"symbols"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("duplicate field `op`"), "{}", e.message);
    // Members the gateway does not read may repeat.
    assert_eq!(
        parse_request(r#"{"op":"ping","x":1,"x":2}"#).unwrap().op,
        Op::Ping
    );
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
