//! The memory of trades and bars: each symbol's tape (`[trades] keep` prints) and bar history
//! (`[bars] keep` final bars per interval), filled to their bounds, counted by a counting global
//! allocator around the index (the gateway's own structures, no process noise).
//!
//! `cargo bench --bench market_memory` measures 500 and 10,000 symbols with the default config
//! (keep 128 prints; 1 s, 1 m and 5 m bars, keep 390); `cargo test` runs it once on 50 symbols as a
//! smoke check.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use quotegw::feed::FeedEvent;
use quotegw::index::{BarsConfig, Index, TradesConfig};
use quotegw::metrics::Metrics;
use quotegw::model::{Symbol, Tick, Trade};
use rust_decimal::Decimal;

/// The system allocator, counting the bytes it has handed out and not got back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What one run found: bytes per symbol with only quotes, then with full tapes and bar histories.
struct Figures {
    quotes: f64,
    full: f64,
}

/// Registers `n` symbols, gives each a quote, then prints enough trades (one a minute for 390 × 5
/// minutes of feed time, plus a burst to fill the tape) to fill every bound.
fn measure(n: usize) -> Figures {
    let metrics = Arc::new(Metrics::new());
    let trades = TradesConfig::default();
    let bars = BarsConfig::default();
    let intervals = bars.parsed().expect("the default intervals");
    let before = LIVE.load(Ordering::Relaxed);
    let mut index = Index::new(&["feed".to_string()], metrics.clone());
    // Not on the wall clock: the feed's ts alone ends bars, as for a recording.
    index.trade_market(&trades, &intervals, &bars, vec![false], &metrics);
    let symbols: Vec<Symbol> = (0..n).map(|i| Symbol::from(format!("S{i:05}"))).collect();
    let t0 = 1_795_000_000_000i64;
    for s in &symbols {
        index.apply(FeedEvent::Tick(Tick {
            symbol: s.clone(),
            ts: t0,
            bid: Some(Decimal::new(10_000, 2)),
            ask: Some(Decimal::new(10_001, 2)),
            ..Tick::default()
        }));
    }
    let quotes = LIVE.load(Ordering::Relaxed) - before;
    let minutes = 390 * 5 + 1;
    let print = |s: &Symbol, ts: i64, cents: i64| {
        let price = Decimal::new(cents, 2);
        index.apply(FeedEvent::Tick(Tick {
            symbol: s.clone(),
            ts,
            last: Some(price),
            last_size: Some(100),
            trade: Some(Trade { price, size: 100 }),
            ..Tick::default()
        }));
    };
    for m in 0..minutes {
        for (i, s) in symbols.iter().enumerate() {
            print(s, t0 + m * 60_000, 10_000 + (m + i as i64) % 100);
        }
    }
    // The last minute's burst fills every tape to its bound.
    for k in 0..trades.keep as i64 {
        for s in &symbols {
            print(s, t0 + minutes * 60_000 + k, 10_050);
        }
    }
    let full = LIVE.load(Ordering::Relaxed) - before;
    drop(index);
    Figures {
        quotes: quotes as f64 / n as f64,
        full: full as f64 / n as f64,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if bench { &[500, 10_000] } else { &[50] };
    for &n in sizes {
        let f = measure(n);
        let market = f.full - f.quotes;
        println!(
            "{n:>6} symbols: {:.0} B/symbol with quotes only, {:.0} B/symbol with a full tape (128 prints) and full bar histories (1s, 1m, 5m × 390): trades and bars {:.1} KiB/symbol, {:.1} MiB in all",
            f.quotes,
            f.full,
            market / 1024.0,
            market * n as f64 / (1024.0 * 1024.0)
        );
        // The stated bounds (docs/protocol.md): ~150 B a print, 96 B a bar, plus the containers.
        assert!(market > 0.0);
        assert!(
            market < 128.0 * 200.0 + 3.0 * 390.0 * 130.0,
            "trades and bars of one symbol past their stated bound: {market:.0} B"
        );
    }
}
