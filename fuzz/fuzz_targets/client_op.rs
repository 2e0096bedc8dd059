//! Client ops (`protocol::parse_request`): any text a client sends. Never panics; whatever parses
//! has upper-case symbols (and what is not a symbol set aside, cut to 40 characters), and the ack
//! and error the gateway would answer with are valid JSON (the echoed `id` included, digit for
//! digit, whatever its size, and every rejected string escaped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quotegw::protocol::{encode_ack, encode_error, parse_request, Op};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut out = String::new();
    match parse_request(text) {
        Ok(req) => {
            if let Op::Subscribe { symbols, .. } | Op::Unsubscribe { symbols } = &req.op {
                assert!(!symbols.is_empty());
                assert!(symbols.valid.iter().all(|s| *s == s.to_ascii_uppercase()));
                // What is not a symbol is echoed (cut) in `rejected`, JSON-escaped.
                assert!(symbols.invalid.iter().all(|s| s.chars().count() <= 40));
                let names: Vec<&str> = symbols.valid.iter().map(String::as_str).collect();
                let rejected: Vec<_> = symbols.rejections().collect();
                encode_ack(&mut out, req.id.as_deref(), "subscribe", &names, &rejected);
            } else {
                return;
            }
        }
        Err(e) => encode_error(&mut out, e.id.as_deref(), e.code, &e.message),
    }
    // Syntax only: an echoed `id` is the client's own number text, which may be beyond what an f64
    // holds (`1e400`) and is still JSON.
    if let Err(err) = serde_json::from_str::<&serde_json::value::RawValue>(&out) {
        panic!("the reply is not JSON ({err}): {out}");
    }
});
