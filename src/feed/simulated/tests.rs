use super::*;

fn config(n: usize) -> SimulatedConfig {
    SimulatedConfig {
        name: "sim".into(),
        symbols: SymbolsSpec::Count(n),
        ticks_per_second: 2000,
        seed: 7,
        status_windows: Vec::new(),
    }
}

#[test]
fn universe_starts_with_well_known_tickers_and_is_unique() {
    let u = config(500).universe();
    assert_eq!(u.len(), 500);
    assert_eq!(&*u[0], "AAPL");
    let set: std::collections::HashSet<_> = u.iter().collect();
    assert_eq!(set.len(), 500);
    assert_eq!(
        u,
        config(500).universe(),
        "the universe does not depend on the seed"
    );
}

#[test]
fn same_seed_same_ticks() {
    let u = config(500).universe();
    let mut a = Generator::new(u.clone(), 7);
    let mut b = Generator::new(u.clone(), 7);
    let mut c = Generator::new(u, 8);
    let ta: Vec<Tick> = (0..2000).map(|_| a.next_tick(0)).collect();
    let tb: Vec<Tick> = (0..2000).map(|_| b.next_tick(0)).collect();
    let tc: Vec<Tick> = (0..2000).map(|_| c.next_tick(0)).collect();
    assert_eq!(ta, tb);
    assert_ne!(ta, tc);
}

#[test]
fn ticks_are_plausible_and_skewed() {
    let u = config(500).universe();
    let mut g = Generator::new(u.clone(), 1);
    let mut counts = std::collections::HashMap::<Symbol, u64>::new();
    let mut books: std::collections::HashMap<Symbol, (Decimal, Decimal)> = g
        .opening_ticks(0)
        .into_iter()
        .map(|t| (t.symbol.clone(), (t.bid.unwrap(), t.ask.unwrap())))
        .collect();
    let mut trades = 0;
    let (mut odd_lots, mut repeats, mut last_trade) = (0, 0, None);
    for _ in 0..50_000 {
        let t = g.next_tick(0);
        *counts.entry(t.symbol.clone()).or_default() += 1;
        let book = books.get_mut(&t.symbol).unwrap();
        if let Some(b) = t.bid {
            book.0 = b;
        }
        if let Some(a) = t.ask {
            book.1 = a;
        }
        assert!(book.0 < book.1, "bid < ask for {}", t.symbol);
        for p in [t.bid, t.ask, t.last].into_iter().flatten() {
            assert!(p.scale() == 2 && p > Decimal::ZERO, "cent grid: {p}");
        }
        for s in [t.bid_size, t.ask_size].into_iter().flatten() {
            assert!(s > 0 && s % 100 == 0, "round lots: {s}");
        }
        let is_trade = t.last.is_some();
        trades += is_trade as u32;
        assert_eq!(
            t.trade.is_some(),
            is_trade,
            "a trade tick carries its print"
        );
        if let Some(trade) = t.trade {
            assert_eq!((Some(trade.price), Some(trade.size)), (t.last, t.last_size));
            assert!(trade.size > 0);
            odd_lots += (trade.size < 100) as u32;
            if last_trade.as_ref() == Some(&t.symbol) && t.symbol != u[0] {
                repeats += 1;
            }
            last_trade = Some(t.symbol.clone());
        } else {
            last_trade = None;
        }
        assert_eq!(
            is_trade,
            t.volume.is_some(),
            "trades carry volume, quotes do not"
        );
        assert!(
            is_trade
                != (t.bid.is_some()
                    || t.ask.is_some()
                    || t.bid_size.is_some()
                    || t.ask_size.is_some())
        );
    }
    // 30% of draws, plus bursts (5% of those start 2 to 8 more): about 35% of ticks.
    assert!(
        (15_000..20_000).contains(&trades),
        "~35% trades, got {trades}"
    );
    assert!(
        (trades / 8..trades / 3).contains(&odd_lots),
        "about a fifth odd lots: {odd_lots} of {trades}"
    );
    // Back-to-back trades of one (not the hottest) symbol are rare by chance: bursts make them.
    assert!(repeats > trades / 50, "bursts: {repeats} of {trades}");
    let hottest = counts[&u[0]];
    let median = counts.get(&u[250]).copied().unwrap_or(0);
    assert!(
        hottest > 20 * median.max(1),
        "Zipf skew: {hottest} vs {median}"
    );
}
