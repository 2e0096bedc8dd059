//! Stage 6, encode: which fields changed, and the JSON of `snapshot`, `update` and `status` messages.
//!
//! This is the per-update hot path, so it writes JSON by hand into a reused `String` (no serde, no
//! intermediate value). Field order is fixed and matches `docs/protocol.md`.

use std::fmt::Write as _;

use rust_decimal::Decimal;

use crate::model::{same_price, Bar, Quote, Status};
use crate::protocol::push_json_str;

/// Encodes a full `snapshot` of `quote` at `seq`.
pub fn encode_snapshot(out: &mut String, symbol: &str, seq: u64, quote: &Quote) {
    out.push_str(r#"{"type":"snapshot","symbol":"#);
    push_json_str(out, symbol);
    push_head_numbers(out, seq, quote.ts);
    push_price(out, "bid", quote.bid);
    push_price(out, "ask", quote.ask);
    push_size(out, "bid_size", quote.bid_size);
    push_size(out, "ask_size", quote.ask_size);
    push_price(out, "last", quote.last);
    push_size(out, "last_size", quote.last_size);
    push_size(out, "volume", quote.volume);
    out.push_str(r#","status":""#);
    out.push_str(quote.status.as_str());
    out.push_str("\"}");
}

/// Encodes an `update` carrying only the fields of `now` that differ from `sent`, the values this
/// connection last received. `conflated` is the number of upstream ticks merged into this update
/// beyond one; it is left out when zero, as the protocol says.
///
/// The same function builds the shared per-tick update (with `sent` = the previous quote and
/// `conflated` = 0), which is why a fast client's bytes and a per-connection encode cannot drift.
pub fn encode_update(
    out: &mut String,
    symbol: &str,
    seq: u64,
    sent: &Quote,
    now: &Quote,
    conflated: u64,
) {
    out.push_str(r#"{"type":"update","symbol":"#);
    push_json_str(out, symbol);
    push_head_numbers(out, seq, now.ts);
    if !same_price(sent.bid, now.bid) {
        push_price(out, "bid", now.bid);
    }
    if !same_price(sent.ask, now.ask) {
        push_price(out, "ask", now.ask);
    }
    if sent.bid_size != now.bid_size {
        push_size(out, "bid_size", now.bid_size);
    }
    if sent.ask_size != now.ask_size {
        push_size(out, "ask_size", now.ask_size);
    }
    if !same_price(sent.last, now.last) {
        push_price(out, "last", now.last);
    }
    if sent.last_size != now.last_size {
        push_size(out, "last_size", now.last_size);
    }
    if sent.volume != now.volume {
        push_size(out, "volume", now.volume);
    }
    if conflated > 0 {
        out.push_str(r#","conflated":"#);
        out.push_str(itoa::Buffer::new().format(conflated));
    }
    out.push('}');
}

/// Encodes a `status` message.
pub fn encode_status(out: &mut String, symbol: &str, status: Status) {
    out.push_str(r#"{"type":"status","symbol":"#);
    push_json_str(out, symbol);
    out.push_str(r#","status":""#);
    out.push_str(status.as_str());
    out.push_str("\"}");
}

/// Encodes a `trade` message (PROTOCOL.md, "Trades and bars"): the print of the tick at `seq`.
pub fn encode_trade(out: &mut String, symbol: &str, seq: u64, ts: i64, price: Decimal, size: u64) {
    out.push_str(r#"{"type":"trade","symbol":"#);
    push_json_str(out, symbol);
    push_head_numbers(out, seq, ts);
    push_price(out, "price", Some(price));
    push_size(out, "size", Some(size));
    out.push('}');
}

/// Encodes a `trades_lost` message: `count` prints, with `seq` from `from_seq` to `to_seq`, that a
/// connection was not sent.
pub fn encode_trades_lost(out: &mut String, symbol: &str, count: u64, from_seq: u64, to_seq: u64) {
    let mut buf = itoa::Buffer::new();
    out.push_str(r#"{"type":"trades_lost","symbol":"#);
    push_json_str(out, symbol);
    out.push_str(r#","count":"#);
    out.push_str(buf.format(count));
    out.push_str(r#","from_seq":"#);
    out.push_str(buf.format(from_seq));
    out.push_str(r#","to_seq":"#);
    out.push_str(buf.format(to_seq));
    out.push('}');
}

/// Encodes a `bar` message.
pub fn encode_bar(out: &mut String, symbol: &str, interval: &str, bar: &Bar, is_final: bool) {
    let mut buf = itoa::Buffer::new();
    out.push_str(r#"{"type":"bar","symbol":"#);
    push_json_str(out, symbol);
    out.push_str(r#","interval":"#);
    push_json_str(out, interval);
    out.push_str(r#","start":"#);
    out.push_str(buf.format(bar.start));
    push_price(out, "open", Some(bar.open));
    push_price(out, "high", Some(bar.high));
    push_price(out, "low", Some(bar.low));
    push_price(out, "close", Some(bar.close));
    push_size(out, "volume", Some(bar.volume));
    push_size(out, "trades", Some(bar.trades));
    out.push_str(if is_final {
        r#","final":true}"#
    } else {
        r#","final":false}"#
    });
}

/// Writes a message with `"delayed_ms":N` as its last member (PROTOCOL.md: present only for a
/// delayed entitlement).
pub fn with_delayed_ms(
    out: &mut String,
    delayed_ms: Option<u64>,
    encode: impl FnOnce(&mut String),
) {
    encode(out);
    if let Some(ms) = delayed_ms {
        out.pop(); // the closing brace
        out.push_str(r#","delayed_ms":"#);
        out.push_str(itoa::Buffer::new().format(ms));
        out.push('}');
    }
}

fn push_head_numbers(out: &mut String, seq: u64, ts: i64) {
    let mut buf = itoa::Buffer::new();
    out.push_str(r#","seq":"#);
    out.push_str(buf.format(seq));
    out.push_str(r#","ts":"#);
    out.push_str(buf.format(ts));
}

fn push_price(out: &mut String, name: &str, price: Option<Decimal>) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    match price {
        // Decimal's Display keeps the scale it was parsed with ("0.10" stays "0.10") and never
        // uses an exponent, which is what makes prices byte-identical end to end.
        Some(p) => {
            out.push('"');
            // Writing into a String cannot fail.
            let _ = write!(out, "{p}");
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

fn push_size(out: &mut String, name: &str, size: Option<u64>) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    match size {
        Some(n) => out.push_str(itoa::Buffer::new().format(n)),
        None => out.push_str("null"),
    }
}

/// A client-side view built only from wire messages: what a careful client holds. Used by the unit
/// and property tests here and in `view.rs` to check the gateway against the protocol text.
#[cfg(test)]
pub(crate) mod client_view {
    use std::collections::BTreeMap;

    /// Field name → its JSON text as received (prices keep their exact string).
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct View {
        pub seq: u64,
        pub fields: BTreeMap<String, String>,
    }

    impl View {
        pub fn from_snapshot(msg: &serde_json::Value) -> View {
            assert_eq!(msg["type"], "snapshot");
            let mut v = View::default();
            v.apply(msg);
            v
        }

        /// Applies a snapshot, update or status message.
        pub fn apply(&mut self, msg: &serde_json::Value) {
            for (k, val) in msg.as_object().expect("every message is an object") {
                match k.as_str() {
                    "type" | "symbol" | "conflated" => {}
                    "seq" => self.seq = val.as_u64().expect("seq is an integer"),
                    _ => {
                        self.fields.insert(k.clone(), val.to_string());
                    }
                }
            }
        }
    }

    /// The view a fresh snapshot of `quote` would give.
    pub fn of_quote(symbol: &str, seq: u64, quote: &crate::model::Quote) -> View {
        let mut s = String::new();
        super::encode_snapshot(&mut s, symbol, seq, quote);
        View::from_snapshot(&serde_json::from_str(&s).expect("snapshot is valid JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::client_view::{of_quote, View};
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn snapshot_has_every_field_and_exact_prices() {
        let q = Quote {
            ts: 1732200000123,
            bid: Some(dec("0.1")),
            ask: Some(dec("123456.789")),
            last: None,
            bid_size: Some(300),
            ask_size: Some(500),
            last_size: None,
            volume: Some(0),
            status: Status::Halted,
        };
        let mut s = String::new();
        encode_snapshot(&mut s, "AAPL", 7, &q);
        assert_eq!(
            s,
            r#"{"type":"snapshot","symbol":"AAPL","seq":7,"ts":1732200000123,"bid":"0.1","ask":"123456.789","bid_size":300,"ask_size":500,"last":null,"last_size":null,"volume":0,"status":"halted"}"#
        );
    }

    #[test]
    fn update_carries_only_changed_fields() {
        let a = Quote {
            bid: Some(dec("189.12")),
            ask: Some(dec("189.14")),
            ..Quote::default()
        };
        let b = Quote {
            ts: 5,
            bid: Some(dec("189.13")),
            ..a
        };
        let mut s = String::new();
        encode_update(&mut s, "AAPL", 1047, &a, &b, 4);
        assert_eq!(
            s,
            r#"{"type":"update","symbol":"AAPL","seq":1047,"ts":5,"bid":"189.13","conflated":4}"#
        );
    }

    #[test]
    fn a_change_of_scale_alone_is_sent() {
        let a = Quote {
            bid: Some(dec("1.10")),
            ..Quote::default()
        };
        let b = Quote {
            bid: Some(dec("1.1")),
            ..a
        };
        let mut s = String::new();
        encode_update(&mut s, "X", 2, &a, &b, 0);
        assert!(s.contains(r#""bid":"1.1""#), "{s}");
    }

    #[test]
    fn symbols_are_escaped() {
        let mut s = String::new();
        encode_status(&mut s, "<img src=x onerror=\"alert(1)\">\\", Status::Stale);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["symbol"], "<img src=x onerror=\"alert(1)\">\\");
    }

    fn arb_price() -> impl Strategy<Value = Option<Decimal>> {
        prop_oneof![
            Just(None),
            (1i64..10_000_000, 0u32..8).prop_map(|(m, s)| Some(Decimal::new(m, s))),
        ]
    }

    fn arb_size() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![Just(None), (0u64..1_000_000).prop_map(Some)]
    }

    prop_compose! {
        fn arb_quote()(ts in 0i64..2_000_000_000_000, bid in arb_price(), ask in arb_price(),
                       last in arb_price(), bid_size in arb_size(), ask_size in arb_size(),
                       last_size in arb_size(), volume in arb_size()) -> Quote {
            Quote { ts, bid, ask, last, bid_size, ask_size, last_size, volume, status: Status::Live }
        }
    }

    proptest! {
        /// Applying an update to the client's view of `a` gives exactly the view of `b`.
        #[test]
        fn applying_an_update_gives_the_new_quote(a in arb_quote(), b in arb_quote(), conflated in 0u64..5) {
            let mut view: View = of_quote("SYM", 1, &a);
            let mut s = String::new();
            encode_update(&mut s, "SYM", 2 + conflated, &a, &b, conflated);
            let msg: serde_json::Value = serde_json::from_str(&s).unwrap();
            view.apply(&msg);
            prop_assert_eq!(view, of_quote("SYM", 2 + conflated, &b));
        }

        /// An update never carries a field whose representation did not change.
        #[test]
        fn updates_are_minimal(a in arb_quote(), b in arb_quote()) {
            let mut s = String::new();
            encode_update(&mut s, "SYM", 2, &a, &b, 0);
            let msg: serde_json::Value = serde_json::from_str(&s).unwrap();
            let before = of_quote("SYM", 1, &a);
            for (k, v) in msg.as_object().unwrap() {
                if ["type", "symbol", "seq", "ts"].contains(&k.as_str()) { continue; }
                prop_assert_ne!(before.fields.get(k), Some(&v.to_string()), "field {} unchanged but sent", k);
            }
        }
    }
}
