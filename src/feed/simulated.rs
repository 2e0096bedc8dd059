//! Stage 1, the simulated feed (the embedded default): random-walk quotes and trades for ≥ 500
//! symbols, Zipf-skewed so that a few symbols are hot, deterministic for a seed.
//!
//! `Generator` is pure (seed in, tick contents out) and `SimulatedFeed` only paces it against the
//! clock, so a seed always yields the same sequence of symbols, prices and sizes; only `ts` (the
//! emission time) depends on when it runs.

use std::time::Duration;

use futures_util::future::BoxFuture;
use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{Feed, FeedContext, FeedError};
use crate::model::now_ms;
use crate::model::{Status, Symbol, Tick, Trade};

/// Well-known tickers first (with a plausible starting price in dollars); generated ones follow.
const WELL_KNOWN: &[(&str, u32)] = &[
    ("AAPL", 228),
    ("MSFT", 425),
    ("NVDA", 140),
    ("AMZN", 205),
    ("GOOGL", 175),
    ("META", 575),
    ("TSLA", 340),
    ("BRK.B", 470),
    ("AVGO", 170),
    ("JPM", 240),
    ("LLY", 780),
    ("V", 310),
    ("UNH", 590),
    ("XOM", 120),
    ("MA", 520),
    ("COST", 910),
    ("HD", 410),
    ("PG", 170),
    ("JNJ", 155),
    ("WMT", 90),
    ("NFLX", 880),
    ("ABBV", 175),
    ("BAC", 46),
    ("CRM", 330),
    ("ORCL", 185),
    ("KO", 63),
    ("CVX", 160),
    ("MRK", 100),
    ("AMD", 140),
    ("PEP", 160),
    ("ADBE", 510),
    ("TMO", 530),
    ("LIN", 460),
    ("ACN", 360),
    ("MCD", 295),
    ("CSCO", 58),
    ("ABT", 115),
    ("WFC", 72),
    ("IBM", 220),
    ("GE", 180),
    ("INTU", 640),
    ("QCOM", 160),
    ("TXN", 200),
    ("DIS", 110),
    ("VZ", 42),
    ("AMGN", 290),
    ("CAT", 390),
    ("PFE", 26),
    ("NOW", 1000),
    ("ISRG", 530),
    ("SPGI", 510),
    ("UBER", 72),
    ("T", 22),
    ("PM", 130),
    ("GS", 590),
    ("CMCSA", 43),
    ("RTX", 120),
    ("AXP", 290),
    ("BKNG", 5000),
    ("NEE", 75),
    ("LOW", 270),
    ("HON", 225),
    ("UNP", 240),
    ("PGR", 250),
    ("MS", 130),
    ("BLK", 1000),
    ("SYK", 385),
    ("ETN", 340),
    ("C", 70),
    ("ELV", 410),
    ("SCHW", 78),
    ("BSX", 88),
    ("TJX", 120),
    ("VRTX", 470),
    ("LMT", 540),
    ("ADP", 300),
    ("MDT", 87),
    ("PLD", 115),
    ("BMY", 58),
    ("CB", 285),
    ("MMC", 225),
    ("SBUX", 98),
    ("ADI", 220),
    ("PANW", 380),
    ("DE", 420),
    ("GILD", 90),
    ("FI", 200),
    ("INTC", 24),
    ("MU", 105),
    ("SO", 88),
    ("BA", 155),
    ("NKE", 78),
    ("UPS", 130),
    ("ANET", 400),
    ("AMT", 210),
    ("MO", 54),
    ("LRCX", 72),
    ("KLAC", 650),
    ("SHW", 380),
    ("PYPL", 88),
    ("SPY", 600),
    ("QQQ", 510),
];

/// Exponent of the Zipf distribution over symbols: with 500 symbols the hottest takes ~15% of ticks.
const ZIPF_EXPONENT: f64 = 1.0;
/// Seed of the generated ticker names (fixed: the universe must not change with `seed`).
const UNIVERSE_SEED: u64 = 0x5eed_0f71;
/// Share of ticks that are trades; the rest are quote changes.
const TRADE_PERCENT: u64 = 30;

/// Percent of trades (outside a burst) that start one.
const BURST_PERCENT: u64 = 5;
/// Pacing granularity: ticks are emitted in batches this often.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// After a stall (the index applying backpressure, a busy machine) catch up at most this many
/// batches' worth at once rather than bursting the whole backlog.
const MAX_CATCH_UP_BATCHES: u64 = 10;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    pub name: String,
    #[serde(default = "default_symbols")]
    pub symbols: SymbolsSpec,
    #[serde(default = "default_rate")]
    pub ticks_per_second: u32,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Scripted stretches where a symbol is `halted` or `stale` (no ticks, then `live` again), in
    /// seconds from the feed's start: `[{ symbol = "TSLA", status = "halted", from_s = 60, to_s = 90 }]`.
    #[serde(default)]
    pub status_windows: Vec<StatusWindow>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusWindow {
    pub symbol: String,
    pub status: WindowStatus,
    pub from_s: u64,
    pub to_s: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WindowStatus {
    Halted,
    Stale,
}

/// Applies the status windows to the generated stream: a status tick when a window opens, no ticks
/// for the symbol inside it, a `live` tick when it closes.
pub struct Windows {
    windows: Vec<(Symbol, Status, i64, i64)>,
    /// 0 = not yet open, 1 = open, 2 = closed.
    phase: Vec<u8>,
}

impl Windows {
    pub fn new(config: &[StatusWindow]) -> Windows {
        Windows {
            windows: config
                .iter()
                .map(|w| {
                    let status = match w.status {
                        WindowStatus::Halted => Status::Halted,
                        WindowStatus::Stale => Status::Stale,
                    };
                    let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
                    (
                        Symbol::from(w.symbol.to_uppercase()),
                        status,
                        ms(w.from_s),
                        ms(w.to_s),
                    )
                })
                .collect(),
            phase: vec![0; config.len()],
        }
    }

    /// Status transitions due at `elapsed_ms`, as ticks stamped `ts`.
    pub fn transitions(&mut self, elapsed_ms: i64, ts: i64, out: &mut Vec<Tick>) {
        for (i, (symbol, status, from, to)) in self.windows.iter().enumerate() {
            let (next, status) = match self.phase[i] {
                0 if elapsed_ms >= *from => (1, *status),
                1 if elapsed_ms >= *to => (2, Status::Live),
                _ => continue,
            };
            self.phase[i] = next;
            out.push(Tick {
                symbol: symbol.clone(),
                ts,
                status: Some(status),
                ..Tick::default()
            });
        }
    }

    /// Whether a generated tick for `symbol` is suppressed (its window is open).
    pub fn suppressed(&self, symbol: &str) -> bool {
        self.windows
            .iter()
            .zip(&self.phase)
            .any(|((s, ..), p)| *p == 1 && &**s == symbol)
    }
}

/// `symbols = 500` (well-known tickers first, then generated) or `symbols = ["AAPL", "MSFT"]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum SymbolsSpec {
    Count(usize),
    List(Vec<String>),
}

fn default_symbols() -> SymbolsSpec {
    SymbolsSpec::Count(500)
}
fn default_rate() -> u32 {
    2000
}
fn default_seed() -> u64 {
    42
}

impl SimulatedConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        match &self.symbols {
            SymbolsSpec::Count(n) if !(1..=100_000).contains(n) => {
                return Err((
                    "symbols".into(),
                    "a count must be between 1 and 100000".into(),
                ))
            }
            SymbolsSpec::List(l) if l.is_empty() => {
                return Err(("symbols".into(), "the list must not be empty".into()))
            }
            SymbolsSpec::List(l) => {
                if let Some(bad) = l.iter().find(|s| !valid_ticker(s)) {
                    return Err((
                        "symbols".into(),
                        format!("'{bad}' is not a ticker (1-16 of A-Z 0-9 . - _)"),
                    ));
                }
            }
            SymbolsSpec::Count(_) => {}
        }
        for (i, w) in self.status_windows.iter().enumerate() {
            if w.to_s <= w.from_s
                || !self
                    .universe()
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&w.symbol))
            {
                return Err((
                    format!("status_windows[{i}]"),
                    "needs one of the feed's symbols and to_s > from_s".into(),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.ticks_per_second) {
            return Err((
                "ticks_per_second".into(),
                "must be between 1 and 1000000".into(),
            ));
        }
        Ok(())
    }

    /// The symbol universe this config describes, in rank order (rank 0 is the hottest).
    pub fn universe(&self) -> Vec<Symbol> {
        match &self.symbols {
            SymbolsSpec::List(l) => l.iter().map(|s| Symbol::from(s.to_uppercase())).collect(),
            SymbolsSpec::Count(n) => generated_universe(*n),
        }
    }
}

fn valid_ticker(s: &str) -> bool {
    (1..=16).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `n` tickers: the well-known list, then four-letter names from a fixed-seed PRNG (not the feed's
/// seed, so that the universe a client subscribes to does not change with the price path).
fn generated_universe(n: usize) -> Vec<Symbol> {
    let mut out: Vec<Symbol> = WELL_KNOWN
        .iter()
        .take(n)
        .map(|(s, _)| Symbol::from(*s))
        .collect();
    let mut seen: std::collections::HashSet<Symbol> = out.iter().cloned().collect();
    let mut rng = Pcg64Mcg::seed_from_u64(UNIVERSE_SEED);
    while out.len() < n {
        let name: String = (0..4)
            .map(|_| (b'A' + below(&mut rng, 26) as u8) as char)
            .collect();
        let sym = Symbol::from(name);
        if seen.insert(sym.clone()) {
            out.push(sym);
        }
    }
    out
}

/// Uniform integer in `0..n` (Lemire's multiply-shift; the tiny bias is irrelevant here).
fn below(rng: &mut Pcg64Mcg, n: u64) -> u64 {
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

fn unit(rng: &mut Pcg64Mcg) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Per-symbol simulated book, in cents and shares.
#[derive(Clone, Debug)]
struct Book {
    bid: i64,
    spread: i64,
    bid_size: i64,
    ask_size: i64,
    last: i64,
    volume: i64,
}

/// The deterministic tick generator.
pub struct Generator {
    symbols: Vec<Symbol>,
    books: Vec<Book>,
    /// Cumulative Zipf weights, normalised to end at 1.0.
    cdf: Vec<f64>,
    rng: Pcg64Mcg,
    /// A burst under way: the symbol's index and how many more trades it prints back to back
    /// (an order sweeping the book, as real tapes show after news or a large order).
    burst: Option<(usize, u32)>,
}

impl Generator {
    pub fn new(symbols: Vec<Symbol>, seed: u64) -> Generator {
        let mut rng = Pcg64Mcg::seed_from_u64(seed);
        let books = symbols
            .iter()
            .map(|s| {
                let dollars = WELL_KNOWN
                    .iter()
                    .find(|(k, _)| **k == **s)
                    .map(|(_, p)| *p as i64)
                    .unwrap_or_else(|| 5 + below(&mut rng, 495) as i64);
                let bid = dollars * 100 + below(&mut rng, 100) as i64;
                let spread = 1 + below(&mut rng, 3) as i64;
                Book {
                    bid,
                    spread,
                    bid_size: lot(&mut rng),
                    ask_size: lot(&mut rng),
                    last: bid,
                    volume: 0,
                }
            })
            .collect();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..symbols.len())
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(ZIPF_EXPONENT);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Generator {
            symbols,
            books,
            cdf,
            rng,
            burst: None,
        }
    }

    /// A full tick per symbol: the opening quote every subscriber's snapshot starts from.
    pub fn opening_ticks(&self, ts: i64) -> Vec<Tick> {
        self.symbols
            .iter()
            .zip(&self.books)
            .map(|(symbol, b)| Tick {
                symbol: symbol.clone(),
                ts,
                bid: Some(cents(b.bid)),
                ask: Some(cents(b.bid + b.spread)),
                last: Some(cents(b.last)),
                bid_size: Some(b.bid_size),
                ask_size: Some(b.ask_size),
                last_size: Some(0),
                volume: Some(0),
                ..Tick::default()
            })
            .collect()
    }

    /// The next tick: a trade (last, last_size, volume, and the `Trade` itself) or a quote change
    /// (only what moved). Trades come from the Zipf draw like quotes (so tail symbols are quiet),
    /// and one in `BURST_PERCENT` starts a burst: 2 to 8 more trades of that symbol in a row,
    /// walking away from the price one cent at a time.
    pub fn next_tick(&mut self, ts: i64) -> Tick {
        let (i, in_burst) = match self.burst.take() {
            Some((i, left)) => {
                if left > 1 {
                    self.burst = Some((i, left - 1));
                }
                (i, true)
            }
            None => {
                let u = unit(&mut self.rng);
                let i = self
                    .cdf
                    .partition_point(|&c| c < u)
                    .min(self.symbols.len() - 1);
                (i, false)
            }
        };
        let rng = &mut self.rng;
        let b = &mut self.books[i];
        let mut tick = Tick {
            symbol: self.symbols[i].clone(),
            ts,
            ..Tick::default()
        };
        if in_burst || below(rng, 100) < TRADE_PERCENT {
            b.last = if in_burst {
                // A sweep takes the next level: up or down a cent, within the day's sense.
                (b.last + if below(rng, 2) == 0 { 1 } else { -1 }).max(1)
            } else {
                // Trades print at the bid or the ask, sometimes inside the spread.
                match below(rng, 3) {
                    0 => b.bid,
                    1 => b.bid + b.spread,
                    _ => b.bid + below(rng, b.spread as u64 + 1) as i64,
                }
            };
            if !in_burst && below(rng, 100) < BURST_PERCENT {
                self.burst = Some((i, 2 + below(rng, 7) as u32));
            }
            let size = trade_size(rng);
            b.volume += size;
            tick.last = Some(cents(b.last));
            tick.last_size = Some(size);
            tick.volume = Some(b.volume);
            tick.trade = Some(Trade {
                price: cents(b.last),
                size,
            });
        } else {
            // A random walk on the cent grid, with steps that scale with the price.
            let max_step = (b.bid / 20_000).max(1) as u64;
            let step = below(rng, 2 * max_step + 1) as i64 - max_step as i64;
            let spread = 1 + below(rng, 3) as i64;
            let (old_bid, old_ask) = (b.bid, b.bid + b.spread);
            b.bid = (b.bid + step).max(1);
            b.spread = spread;
            if b.bid != old_bid {
                tick.bid = Some(cents(b.bid));
            }
            if b.bid + b.spread != old_ask {
                tick.ask = Some(cents(b.bid + b.spread));
            }
            match below(rng, 3) {
                0 => {
                    b.bid_size = lot(rng);
                    tick.bid_size = Some(b.bid_size);
                }
                1 => {
                    b.ask_size = lot(rng);
                    tick.ask_size = Some(b.ask_size);
                }
                _ if tick.bid.is_none() && tick.ask.is_none() => {
                    b.bid_size = lot(rng);
                    tick.bid_size = Some(b.bid_size);
                }
                _ => {}
            }
        }
        tick
    }
}

/// A round-lot size: 100 to 5,000 shares in steps of 100.
fn lot(rng: &mut Pcg64Mcg) -> i64 {
    (1 + below(rng, 50) as i64) * 100
}

/// A trade's size as tapes show them: a fifth odd lots (1 to 99 shares), most round lots of 100
/// to 1,000, and one in ten a block of 1,100 to 5,000.
fn trade_size(rng: &mut Pcg64Mcg) -> i64 {
    match below(rng, 100) {
        0..20 => 1 + below(rng, 99) as i64,
        20..90 => (1 + below(rng, 10) as i64) * 100,
        _ => (11 + below(rng, 40) as i64) * 100,
    }
}

fn cents(c: i64) -> Decimal {
    Decimal::new(c, 2)
}

pub struct SimulatedFeed {
    config: SimulatedConfig,
    symbols: Vec<Symbol>,
}

impl SimulatedFeed {
    pub fn new(config: SimulatedConfig) -> Self {
        let symbols = config.universe();
        SimulatedFeed { config, symbols }
    }
}

impl Feed for SimulatedFeed {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn symbols(&self) -> Vec<Symbol> {
        self.symbols.clone()
    }

    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>> {
        Box::pin(async move {
            let mut generator = Generator::new(self.symbols, self.config.seed);
            let mut windows = Windows::new(&self.config.status_windows);
            let mut transitions = Vec::new();
            ctx.set_up(true);
            for tick in generator.opening_ticks(now_ms()) {
                ctx.send(tick).await?;
            }
            let rate = u64::from(self.config.ticks_per_second);
            let started = tokio::time::Instant::now();
            let mut emitted: u64 = 0;
            let mut interval = tokio::time::interval(BATCH_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let max_batch =
                (rate * BATCH_INTERVAL.as_millis() as u64 / 1000).max(1) * MAX_CATCH_UP_BATCHES;
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = interval.tick() => {}
                }
                let due = (started.elapsed().as_micros() as u64).saturating_mul(rate) / 1_000_000;
                let n = due.saturating_sub(emitted);
                // Behind by more than the catch-up allowance: drop the backlog (a live feed does not
                // replay the past) and count from here.
                let n = if n > max_batch {
                    emitted = due - max_batch;
                    max_batch
                } else {
                    n
                };
                let ts = now_ms();
                windows.transitions(started.elapsed().as_millis() as i64, ts, &mut transitions);
                for t in transitions.drain(..) {
                    ctx.send(t).await?;
                }
                for _ in 0..n {
                    let tick = generator.next_tick(ts);
                    if !windows.suppressed(&tick.symbol) {
                        ctx.send(tick).await?;
                    }
                }
                emitted += n;
            }
            ctx.set_up(false);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
