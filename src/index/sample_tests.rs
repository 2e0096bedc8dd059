use super::*;

/// The throttled tier's sample is the state at the start of the current interval: a change
/// shows only from the next interval on, several changes in one interval show as the last
/// of them, and an interval without a change keeps showing the latest state.
#[test]
fn the_sample_is_the_state_when_the_interval_began() {
    let mut st = SymbolState::default();
    let bid = |p: PastState| p.entry.map(|e| e.quote.bid.unwrap().to_string());
    let change = |st: &mut SymbolState, seq: u64, at_ms: i64| {
        st.seq = seq;
        st.quote.bid = Some(rust_decimal::Decimal::new(seq as i64, 2));
        st.sample(1000, at_ms);
    };
    let at = |st: &SymbolState, now_ms| st.sampled.as_deref().unwrap().at(1000, now_ms);
    change(&mut st, 100, 10_200);
    let p = at(&st, 10_300);
    assert_eq!(
        (bid(p), p.next_end_ms),
        (None, Some(11_000)),
        "no state before it"
    );
    assert_eq!(bid(at(&st, 11_000)), Some("1.00".into()));
    change(&mut st, 101, 11_100);
    change(&mut st, 102, 11_900);
    let p = at(&st, 11_950);
    assert_eq!((bid(p), p.next_end_ms), (Some("1.00".into()), Some(12_000)));
    let p = at(&st, 12_000);
    assert_eq!((bid(p), p.next_end_ms), (Some("1.02".into()), None));
    assert_eq!(bid(at(&st, 99_000)), Some("1.02".into()), "quiet intervals");
    // A change after quiet intervals: the interval it falls in begins with the state before.
    change(&mut st, 103, 99_500);
    assert_eq!(bid(at(&st, 99_600)), Some("1.02".into()));
    assert_eq!(bid(at(&st, 100_000)), Some("1.03".into()));
}
