//! `quotegw record`: writes what the configured feeds produce to a recorded-feed file (the format
//! replay reads), so that a live session can be replayed later, deterministically.
//!
//! Feeds run exactly as in the gateway (same adapters, same bounded channel), but their ticks go to
//! the file instead of the index. With `--virtual-time`, simulated feeds generate their ticks without
//! waiting for the clock (timestamps advance at the configured rate), which is how the sample
//! sessions in `feeds/` are made in seconds rather than minutes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, FeedConfig};
use crate::feed::recording::{write_line, RecordWriter};
use crate::feed::simulated::{Generator, Windows};
use crate::feed::{FeedContext, FeedError, FeedEvent, FeedHealth, TICK_CHANNEL_CAPACITY};
use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::model::Tick;
use crate::normalize::normalize;

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("feed '{0}': {1}")]
    Feed(String, crate::feed::FeedError),
    #[error("--virtual-time works with simulated feeds only; feed '{0}' is not one")]
    NotSimulated(String),
    #[error("no feed configured: add a [[feeds]] entry to the config")]
    NoFeeds,
    #[error("--virtual-time records one simulated feed; the config has several")]
    OneVirtualFeed,
}

pub struct RecordOptions<'a> {
    pub to: &'a Path,
    /// Stop after this long (wall clock, or feed time with `virtual_time`); `None`: until `stop`.
    pub duration: Option<Duration>,
    /// Record only these symbols (upper-case); empty: all.
    pub symbols: HashSet<String>,
    pub virtual_time: bool,
}

/// What was written.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ticks: u64,
    pub rejected: u64,
    /// Ticks written at the `ts` of the tick before them, which was later.
    pub restamped: u64,
}

/// Records until the duration passes or `stop` is cancelled.
pub async fn record(
    config: &Config,
    options: RecordOptions<'_>,
    stop: CancellationToken,
) -> Result<Recorded, RecordError> {
    if config.feeds.is_empty() {
        return Err(RecordError::NoFeeds);
    }
    let shown = options.to.display().to_string();
    let write_err = |source| RecordError::Write {
        path: shown.clone(),
        source,
    };
    if options.virtual_time && config.feeds.len() > 1 {
        // Each feed would be generated on its own timeline, and one file is one timeline.
        return Err(RecordError::OneVirtualFeed);
    }
    let mut out = RecordWriter::create(options.to).map_err(write_err)?;
    let mut recorded = Recorded::default();
    let mut line = String::with_capacity(256);
    let mut newest_ts = i64::MIN;
    // Only valid ticks are recorded (the same check the index applies), so a replay never sees a
    // tick the live gateway refused. A recorded file's `ts` never goes down (the format's rule,
    // which replay checks): a tick a live feed stamped before the one ahead of it (an upstream's
    // clock stepping back) is written at that one's `ts` (found from outside: such a recording
    // could not be replayed). Replayed, a print so moved falls in the open bar; live it was late.
    let mut keep =
        |tick: Tick, out: &mut RecordWriter, recorded: &mut Recorded| match normalize(tick) {
            Ok(mut t) if options.symbols.is_empty() || options.symbols.contains(&*t.symbol) => {
                if t.ts < newest_ts {
                    t.ts = newest_ts;
                    recorded.restamped += 1;
                }
                newest_ts = t.ts;
                line.clear();
                write_line(&mut line, &t);
                recorded.ticks += 1;
                out.write_all(line.as_bytes())
            }
            Ok(_) => Ok(()),
            Err(_) => {
                recorded.rejected += 1;
                Ok(())
            }
        };

    if options.virtual_time {
        let duration_ms = options.duration.map_or(i64::MAX, |d| d.as_millis() as i64);
        let start = now_ms();
        for fc in &config.feeds {
            let FeedConfig::Simulated(sim) = fc else {
                return Err(RecordError::NotSimulated(fc.name().to_string()));
            };
            let mut generator = Generator::new(sim.universe(), sim.seed);
            let mut windows = Windows::new(&sim.status_windows);
            let mut transitions = Vec::new();
            for t in generator.opening_ticks(start) {
                keep(t, &mut out, &mut recorded).map_err(write_err)?;
            }
            let rate = i64::from(sim.ticks_per_second);
            for n in 0.. {
                let elapsed = n * 1000 / rate;
                if elapsed >= duration_ms || stop.is_cancelled() {
                    break;
                }
                let ts = start + elapsed;
                windows.transitions(elapsed, ts, &mut transitions);
                for t in transitions.drain(..) {
                    keep(t, &mut out, &mut recorded).map_err(write_err)?;
                }
                let t = generator.next_tick(ts);
                if !windows.suppressed(&t.symbol) {
                    keep(t, &mut out, &mut recorded).map_err(write_err)?;
                }
            }
        }
    } else {
        let (events_tx, mut events_rx) = mpsc::channel(TICK_CHANNEL_CAPACITY);
        let metrics = Arc::new(Metrics::new());
        let feeds_stop = stop.child_token();
        for (id, fc) in config.feeds.iter().enumerate() {
            let feed = fc
                .build()
                .map_err(|e| RecordError::Feed(fc.name().to_string(), e))?;
            let ctx = FeedContext::new(
                id as u16,
                events_tx.clone(),
                feeds_stop.clone(),
                Arc::new(FeedHealth::default()),
                metrics.clone(),
            );
            let name = fc.name().to_string();
            tokio::spawn(async move {
                match feed.run(ctx).await {
                    // The recording stopped first (a signal, --duration): not the feed's failure.
                    Ok(()) | Err(FeedError::IndexClosed) => {}
                    Err(e) => tracing::error!(feed = %name, "feed failed: {e}"),
                }
            });
        }
        drop(events_tx);
        let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
                e = events_rx.recv() => e,
            };
            match event {
                Some(FeedEvent::Tick(t)) => keep(t, &mut out, &mut recorded).map_err(write_err)?,
                Some(FeedEvent::Status { symbol, status, .. }) => {
                    let t = Tick {
                        symbol,
                        ts: now_ms(),
                        status: Some(status),
                        ..Tick::default()
                    };
                    keep(t, &mut out, &mut recorded).map_err(write_err)?;
                }
                // Recording an edge's bus: each state as a whole tick (recorded files have no seq).
                Some(FeedEvent::State { state, .. }) => {
                    let q = state.quote;
                    let size = |n: Option<u64>| n.map(|n| n as i64);
                    let t = Tick {
                        symbol: state.symbol,
                        ts: q.ts,
                        bid: q.bid,
                        ask: q.ask,
                        last: q.last,
                        bid_size: size(q.bid_size),
                        ask_size: size(q.ask_size),
                        last_size: size(q.last_size),
                        volume: size(q.volume),
                        status: Some(q.status),
                        trade: state.prints.trade.map(|t| crate::model::Trade {
                            price: t.price,
                            size: t.size as i64,
                        }),
                        ..Tick::default()
                    };
                    keep(t, &mut out, &mut recorded).map_err(write_err)?;
                }
                // A replay builds its bars from the prints.
                Some(FeedEvent::Bars { .. } | FeedEvent::Delivered(_)) => {}
                None => break, // every feed ended (a replay without loop)
            }
        }
        feeds_stop.cancel();
    }
    out.finish().map_err(write_err)?;
    Ok(recorded)
}
