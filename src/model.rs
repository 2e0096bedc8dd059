//! Stage 0, the vocabulary every stage shares: symbols, partial ticks, full quotes, status.
//!
//! Prices are `rust_decimal::Decimal` from feed to wire. Two decimals are "the same" here only when
//! their representation is (mantissa and scale), not merely their value: a feed that moves from
//! `"189.10"` to `"189.1"` has changed what a client must display, and the protocol promises prices
//! leave the gateway byte-identical to how they entered.

use std::sync::Arc;

use rust_decimal::Decimal;

/// An upper-case ticker. `Arc<str>` so that a tick, the index and every subscribed connection share
/// one allocation per symbol.
pub type Symbol = Arc<str>;

/// Longest symbol, in bytes (PROTOCOL.md: 1–32 characters, all ASCII).
pub const MAX_SYMBOL_LEN: usize = 32;

/// The symbol rule of PROTOCOL.md, said the same way everywhere a symbol is refused.
pub const SYMBOL_RULE: &str =
    "a symbol is 1-32 printable ASCII characters other than space, '\"', '\\' and ','";

/// Whether `s` is a symbol as PROTOCOL.md defines it: 1–32 printable ASCII characters other than
/// space, `"`, `\` and `,` (so it can sit in a JSON string, a comma-separated query and a NATS
/// subject without escaping surprises). Case is not checked: symbols are upper-cased after.
pub fn valid_symbol(s: &str) -> bool {
    (1..=MAX_SYMBOL_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b','))
}

/// The longest any duration setting (`*_ms`) may be: a day. Far beyond every sensible value, and
/// far inside what `Instant + Duration` and the millisecond clocks hold, so that no value a
/// config accepts can overflow a deadline.
pub const MAX_SETTING_MS: u64 = 86_400_000;

/// Checks a duration setting against its stated range: `Err((key, what to change))` outside it.
pub fn ms_within(
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), (String, String)> {
    if range.contains(&value) {
        return Ok(());
    }
    Err((
        key.to_string(),
        format!(
            "must be between {} and {} (milliseconds)",
            range.start(),
            range.end()
        ),
    ))
}

/// Index of a feed in the gateway's feed list; ticks carry it so that metrics and (later) failover
/// know where a tick came from without a string per tick.
pub type FeedId = u16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Live,
    Stale,
    Halted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Live => "live",
            Status::Stale => "stale",
            Status::Halted => "halted",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "live" => Some(Status::Live),
            "stale" => Some(Status::Stale),
            "halted" => Some(Status::Halted),
            _ => None,
        }
    }
}

/// A partial upstream tick: a field left `None` is unchanged since the symbol's last tick.
///
/// Sizes and volume are signed so that a feed's negative value reaches the index's validation and is
/// counted as rejected, instead of being silently wrapped or clamped by the adapter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tick {
    pub feed: FeedId,
    pub symbol: Symbol,
    /// Unix epoch milliseconds as the feed gave it (receipt time where the feed has none).
    pub ts: i64,
    pub bid: Option<Decimal>,
    pub ask: Option<Decimal>,
    pub last: Option<Decimal>,
    pub bid_size: Option<i64>,
    pub ask_size: Option<i64>,
    pub last_size: Option<i64>,
    pub volume: Option<i64>,
    pub status: Option<Status>,
    /// The trade print this tick reports, if any (PROTOCOL.md, "Trades and bars"). Each feed says
    /// how it detects one: a recorded line or a simulated trade sets `last` and `last_size`
    /// (`Trade::of_fields`); the HTTP poller infers one from `last` and `volume` moving.
    pub trade: Option<Trade>,
}

/// One trade print: its price and size (signed like the sizes above, so that a feed's negative
/// size reaches normalize and is rejected there).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trade {
    pub price: Decimal,
    pub size: i64,
}

impl Trade {
    /// The rule of recorded lines and the simulated market: a tick that sets `last` and a
    /// positive `last_size` is a trade at that price and size (a `last_size` of 0 is a quote that
    /// carries the last price, e.g. the opening quote).
    pub fn of_fields(last: Option<Decimal>, last_size: Option<i64>) -> Option<Trade> {
        match (last, last_size) {
            (Some(price), Some(size)) if size != 0 => Some(Trade { price, size }),
            _ => None,
        }
    }
}

/// The full latest state of one symbol, as a snapshot shows it.
///
/// `status` travels in its own `status` message, never inside an `update` (see docs/protocol.md).
#[derive(Clone, Copy, Debug, Default)]
pub struct Quote {
    pub ts: i64,
    pub bid: Option<Decimal>,
    pub ask: Option<Decimal>,
    pub last: Option<Decimal>,
    pub bid_size: Option<u64>,
    pub ask_size: Option<u64>,
    pub last_size: Option<u64>,
    pub volume: Option<u64>,
    pub status: Status,
}

/// Representation equality of two optional prices: `1.0` and `1.00` differ (see module doc).
pub fn same_price(a: Option<Decimal>, b: Option<Decimal>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.mantissa() == b.mantissa() && a.scale() == b.scale(),
        _ => false,
    }
}

impl Quote {
    /// Whether this quote has a value for every field `other` has one for: publishing it in
    /// place of `other` would blank nothing.
    pub fn covers(&self, other: &Quote) -> bool {
        let has = |mine: bool, theirs: bool| mine || !theirs;
        has(self.bid.is_some(), other.bid.is_some())
            && has(self.ask.is_some(), other.ask.is_some())
            && has(self.last.is_some(), other.last.is_some())
            && has(self.bid_size.is_some(), other.bid_size.is_some())
            && has(self.ask_size.is_some(), other.ask_size.is_some())
            && has(self.last_size.is_some(), other.last_size.is_some())
            && has(self.volume.is_some(), other.volume.is_some())
    }

    /// Equality as a client sees it: every wire field, prices by representation.
    pub fn same_as(&self, other: &Quote) -> bool {
        self.ts == other.ts
            && same_price(self.bid, other.bid)
            && same_price(self.ask, other.ask)
            && same_price(self.last, other.last)
            && self.bid_size == other.bid_size
            && self.ask_size == other.ask_size
            && self.last_size == other.last_size
            && self.volume == other.volume
            && self.status == other.status
    }
}

/// (scale-out) a symbol's whole state as an ingest publishes it (`scaleout::wire`) and an edge
/// hands it to its index: `seq` as the ingest assigned it, under its `term` and `version`.
#[derive(Clone, Debug)]
pub struct BusState {
    pub term: u64,
    pub version: u64,
    pub seq: u64,
    pub symbol: Symbol,
    pub quote: Quote,
    pub prints: BusPrints,
}

/// One OHLCV bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub start: i64,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: u64,
    pub trades: u64,
    /// `seq` of the bar's last trade (an SSE event's id).
    pub seq: u64,
    /// The feed of the bar's last trade: whose clock ends it.
    pub feed: FeedId,
    /// When it ended (gateway clock, ms; 0 while open): the delayed tier sees it `delay_ms` later.
    pub ended_ms: i64,
}

/// (scale-out) a symbol's trade prints as an ingest counts them, on each of its states: how many
/// it has printed and the `seq` of the latest, and that print itself when it is this state's tick.
/// An edge counts the prints it never got from these (`trades_lost`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BusPrints {
    pub count: u64,
    pub last_seq: u64,
    pub trade: Option<BusTrade>,
}

/// (scale-out) the print a state's tick carried, and the `seq` of the print before it (0: none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BusTrade {
    pub price: Decimal,
    pub size: u64,
    pub prev_seq: u64,
}

/// (scale-out) a symbol's bars as an ingest publishes them (`scaleout::wire`): per interval, its
/// open bar and the final bars since the last such message (at least the latest on a full one).
#[derive(Clone, Debug)]
pub struct BusBars {
    pub term: u64,
    pub version: u64,
    pub symbol: Symbol,
    pub series: Vec<BusSeries>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BusSeries {
    pub interval: String,
    pub open: Option<Bar>,
    /// Oldest first.
    pub finals: Vec<Bar>,
}

/// Wall-clock Unix epoch milliseconds: the `ts` of ticks a feed stamps itself (simulated ticks,
/// restamped replays, polled quotes without an upstream timestamp).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn symbols_follow_the_contract() {
        for ok in [
            "AAPL",
            "BRK.B",
            "a",
            "X".repeat(32).as_str(),
            "^GSPC",
            "EUR/USD",
            "ES=F",
        ] {
            assert!(valid_symbol(ok), "{ok}");
        }
        for bad in [
            "",
            " AAPL",
            "AA PL",
            "A\"B",
            "A\\B",
            "A,B",
            "A\nB",
            "É",
            "X".repeat(33).as_str(),
            "A\u{7f}",
        ] {
            assert!(!valid_symbol(bad), "{bad:?}");
        }
    }

    #[test]
    fn prices_compare_by_representation() {
        let a = Decimal::from_str("189.10").unwrap();
        let b = Decimal::from_str("189.1").unwrap();
        assert_eq!(a, b, "rust_decimal compares by value");
        assert!(
            !same_price(Some(a), Some(b)),
            "the wire must see the change of scale"
        );
        assert!(same_price(Some(a), Some(a)));
        assert!(!same_price(Some(a), None));
    }
}
