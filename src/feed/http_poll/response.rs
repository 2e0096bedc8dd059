//! An upstream's JSON response mapped to ticks: where the quotes are (`ResponseConfig`: its root,
//! an array or an object by symbol), which member holds each quote field, and the exact parsing of
//! each value (`crate::fields`).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::has_values;
use crate::fields;
use crate::model::Tick;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `[{"symbol": "AAPL", "bid": ...}, ...]`
    Array,
    /// `{"AAPL": {"bid": ...}, ...}`
    BySymbol,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    pub shape: Shape,
    /// Dotted path to the array or object inside the body (`"data.quotes"`); empty: the body itself.
    #[serde(default)]
    pub root: String,
    /// (shape = "array") the field that holds the symbol.
    #[serde(default = "default_symbol_field")]
    pub symbol: String,
    /// Quote field → upstream field (a dotted path for nested objects). Keys: ts, bid, ask, last,
    /// bid_size, ask_size, last_size, volume, status. Unmapped fields are not read; without `ts` the
    /// receipt time is used.
    pub fields: HashMap<String, String>,
}

pub(super) fn default_symbol_field() -> String {
    "symbol".into()
}

pub(super) const QUOTE_FIELDS: [&str; 9] = [
    "ts",
    "bid",
    "ask",
    "last",
    "bid_size",
    "ask_size",
    "last_size",
    "volume",
    "status",
];

/// Follows a dotted path through nested objects.
pub(super) fn at_path<'a>(mut value: &'a RawValue, path: &str) -> Result<&'a RawValue, String> {
    if path.is_empty() {
        return Ok(value);
    }
    for key in path.split('.') {
        let obj: HashMap<String, &RawValue> = serde_json::from_str(value.get())
            .map_err(|_| format!("expected an object at '{key}' of '{path}'"))?;
        value = obj
            .get(key)
            .copied()
            .ok_or_else(|| format!("no '{key}' (path '{path}')"))?;
    }
    Ok(value)
}

/// A mapped response: (symbol, parsed tick) for every good quote, and why each bad one was dropped.
pub type Mapped = (Vec<(String, Tick)>, Vec<String>);

/// Maps a response body to (symbol, parsed tick) pairs. A quote that does not parse is an error of
/// its own (second list), so that one bad symbol never hides or corrupts the others.
pub fn map_response(body: &[u8], response: &ResponseConfig) -> Result<Mapped, String> {
    let root: &RawValue = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let root = at_path(root, &response.root)?;
    let items: Vec<(Option<String>, &RawValue)> = match response.shape {
        Shape::Array => serde_json::from_str::<Vec<&RawValue>>(root.get())
            .map_err(|_| "expected a JSON array of quotes".to_string())?
            .into_iter()
            .map(|v| (None, v))
            .collect(),
        Shape::BySymbol => serde_json::from_str::<HashMap<String, &RawValue>>(root.get())
            .map_err(|_| "expected a JSON object keyed by symbol".to_string())?
            .into_iter()
            .map(|(k, v)| (Some(k), v))
            .collect(),
    };
    let mut quotes = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for (key, item) in items {
        match map_quote(key, item, response) {
            Ok(q) => quotes.push(q),
            Err(e) => bad.push(e),
        }
    }
    Ok((quotes, bad))
}

pub(super) fn map_quote(
    key: Option<String>,
    item: &RawValue,
    response: &ResponseConfig,
) -> Result<(String, Tick), String> {
    let symbol = match key {
        Some(k) => k,
        None => {
            let raw = at_path(item, &response.symbol)?;
            serde_json::from_str::<String>(raw.get())
                .map_err(|_| format!("symbol {} is not a string", raw.get()))?
        }
    };
    let mut tick = Tick::default();
    for (field, path) in &response.fields {
        let raw = match at_path(item, path) {
            Ok(r) => r,
            Err(_) => continue, // a field the upstream left out is "not given"
        };
        let wrap = |e: String| format!("{symbol}: {field}: {e}");
        match field.as_str() {
            "ts" => tick.ts = fields::timestamp(raw).map_err(wrap)?,
            "bid" => tick.bid = fields::price(raw).map_err(wrap)?,
            "ask" => tick.ask = fields::price(raw).map_err(wrap)?,
            "last" => tick.last = fields::price(raw).map_err(wrap)?,
            "bid_size" => tick.bid_size = fields::size(raw).map_err(wrap)?,
            "ask_size" => tick.ask_size = fields::size(raw).map_err(wrap)?,
            "last_size" => tick.last_size = fields::size(raw).map_err(wrap)?,
            "volume" => tick.volume = fields::size(raw).map_err(wrap)?,
            "status" => tick.status = fields::status(raw).map_err(wrap)?,
            _ => {} // validate() refused other keys
        }
    }
    if !has_values(&tick) {
        // Names the symbol but delivers nothing (every field null, or the vendor renamed its
        // fields): not an answer for it, so that it goes stale, and fails over, as for silence.
        return Err(format!(
            "{symbol}: no mapped field has a value (see [feeds.response] fields)"
        ));
    }
    Ok((symbol.to_uppercase(), tick))
}
