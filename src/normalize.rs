//! Stage 2, normalize: the checks every tick passes before it reaches the index, whatever feed it
//! came from. A tick that cannot be right is rejected whole and counted, never forwarded.

use rust_decimal::Decimal;

use crate::model::{valid_symbol, Symbol, Tick};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    NonPositivePrice = 0,
    NegativeSize = 1,
    BadSymbol = 2,
}

impl RejectReason {
    pub const ALL: [RejectReason; 3] = [
        RejectReason::NonPositivePrice,
        RejectReason::NegativeSize,
        RejectReason::BadSymbol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NonPositivePrice => "non_positive_price",
            RejectReason::NegativeSize => "negative_size",
            RejectReason::BadSymbol => "bad_symbol",
        }
    }
}

/// Validates a tick and upper-cases its symbol (symbols are upper-case on the wire).
pub fn normalize(mut tick: Tick) -> Result<Tick, RejectReason> {
    let s = &*tick.symbol;
    if !valid_symbol(s) {
        return Err(RejectReason::BadSymbol);
    }
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        tick.symbol = Symbol::from(s.to_ascii_uppercase());
    }
    if [tick.bid, tick.ask, tick.last]
        .into_iter()
        .flatten()
        .any(|p| p <= Decimal::ZERO)
    {
        return Err(RejectReason::NonPositivePrice);
    }
    if [tick.bid_size, tick.ask_size, tick.last_size, tick.volume]
        .into_iter()
        .flatten()
        .any(|n| n < 0)
    {
        return Err(RejectReason::NegativeSize);
    }
    Ok(tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(symbol: &str) -> Tick {
        Tick {
            symbol: symbol.into(),
            ..Tick::default()
        }
    }

    #[test]
    fn rejects_what_cannot_be_right() {
        let t = |f: fn(&mut Tick)| {
            let mut t = tick("AAPL");
            f(&mut t);
            normalize(t).map(|_| ())
        };
        assert_eq!(
            t(|t| t.bid = Some(Decimal::ZERO)),
            Err(RejectReason::NonPositivePrice)
        );
        assert_eq!(
            t(|t| t.last = Some(Decimal::new(-1, 2))),
            Err(RejectReason::NonPositivePrice)
        );
        assert_eq!(
            t(|t| t.ask_size = Some(-100)),
            Err(RejectReason::NegativeSize)
        );
        assert_eq!(t(|t| t.volume = Some(-1)), Err(RejectReason::NegativeSize));
        assert_eq!(
            t(|t| t.bid_size = Some(0)),
            Ok(()),
            "a zero size is an empty side, not wrong"
        );
        assert_eq!(
            normalize(tick("")).map(|_| ()),
            Err(RejectReason::BadSymbol)
        );
        assert_eq!(
            normalize(tick("A\nB")).map(|_| ()),
            Err(RejectReason::BadSymbol)
        );
        assert_eq!(&*normalize(tick("brk.b")).unwrap().symbol, "BRK.B");
        for bad in ["A B", "A,B", "A\"B", &"X".repeat(33)] {
            assert_eq!(
                normalize(tick(bad)).map(|_| ()),
                Err(RejectReason::BadSymbol),
                "{bad}"
            );
        }
    }
}
