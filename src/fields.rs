//! Stage 1, feeds: exact parsing of upstream JSON values into tick fields, shared by the adapters that
//! read JSON (replay files, HTTP polling).
//!
//! Prices never pass through `f64`: a value is taken as its raw JSON text (`serde_json::RawValue`) and
//! parsed straight to `Decimal`, whether the upstream sent `"189.12"` or `189.12`. A number with more
//! significant digits than `Decimal` holds (28) is an error, never a rounding.

use std::borrow::Cow;

use rust_decimal::Decimal;
use serde_json::value::RawValue;

use crate::model::Status;

/// A price from a JSON string or number; `null` is "not given".
pub fn price(raw: &RawValue) -> Result<Option<Decimal>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let digits: Cow<str> = if text.starts_with('"') {
        Cow::Owned(
            serde_json::from_str::<String>(text)
                .map_err(|_| format!("{text} is not a JSON string"))?,
        )
    } else {
        Cow::Borrowed(text)
    };
    decimal(digits.trim())
        .map(Some)
        .ok_or_else(|| format!("{text} is not an exact decimal price"))
}

/// Parses a decimal without rounding: plain (`189.12`, `-1`) or scientific (`1.5e3`). The mantissa is
/// parsed exactly (an error past 28 digits) and the exponent only moves the scale.
fn decimal(s: &str) -> Option<Decimal> {
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (s, 0),
    };
    let well_formed = !mantissa.is_empty()
        && !mantissa.starts_with('.')
        && !mantissa.ends_with('.')
        && mantissa
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    if !well_formed {
        return None;
    }
    let m = Decimal::from_str_exact(mantissa).ok()?;
    let scale = i64::from(m.scale()) - exp;
    if scale >= 0 {
        Decimal::try_from_i128_with_scale(m.mantissa(), u32::try_from(scale).ok()?).ok()
    } else {
        let factor = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
        Decimal::try_from_i128_with_scale(m.mantissa().checked_mul(factor)?, 0).ok()
    }
}

/// A size or volume: a JSON integer (or an integer in a string); `null` is "not given".
pub fn size(raw: &RawValue) -> Result<Option<i64>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let inner = text.trim_matches('"');
    inner
        .parse::<i64>()
        .map(Some)
        .map_err(|_| format!("{text} is not an integer"))
}

/// A status string: `live`, `stale` or `halted`.
pub fn status(raw: &RawValue) -> Result<Option<Status>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let s: String =
        serde_json::from_str(text).map_err(|_| format!("{text} is not a status string"))?;
    Status::parse(&s)
        .map(Some)
        .ok_or_else(|| format!("status {text} is not live, stale or halted"))
}

/// A millisecond timestamp: a JSON integer.
pub fn timestamp(raw: &RawValue) -> Result<i64, String> {
    raw.get().parse::<i64>().map_err(|_| {
        format!(
            "ts {} is not an integer (Unix epoch milliseconds)",
            raw.get()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn prices_keep_every_digit_from_strings_and_numbers() {
        for (input, want) in [
            (r#""189.12""#, "189.12"),
            ("189.12", "189.12"),
            ("189.10", "189.10"),
            (r#""0.0001""#, "0.0001"),
            ("1234567890123.456789012345", "1234567890123.456789012345"),
            (
                r#""1234567890123.456789012345""#,
                "1234567890123.456789012345",
            ),
            ("1.5e3", "1500"),
            ("15E-1", "1.5"),
        ] {
            let got = price(&raw(input)).unwrap().unwrap();
            assert_eq!(got.to_string(), want, "{input}");
        }
        assert_eq!(price(&raw("null")).unwrap(), None);
    }

    #[test]
    fn what_cannot_be_exact_is_an_error_not_a_rounding() {
        for bad in [
            "12345678901234567890.1234567890123", // 33 significant digits
            r#""abc""#,
            r#""""#,
            "true",
            "[1]",
            r#""1.""#,
            "1e400",
        ] {
            assert!(price(&raw(bad)).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn sizes_and_statuses() {
        assert_eq!(size(&raw("300")).unwrap(), Some(300));
        assert_eq!(size(&raw(r#""300""#)).unwrap(), Some(300));
        assert_eq!(size(&raw("-5")).unwrap(), Some(-5)); // rejected later by normalize, and counted
        assert!(size(&raw("1.5")).is_err());
        assert_eq!(status(&raw(r#""halted""#)).unwrap(), Some(Status::Halted));
        assert!(status(&raw(r#""closed""#)).is_err());
    }
}
