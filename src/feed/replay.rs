//! Stage 1, feeds: the replay adapter (`kind = "replay"`), which plays a recorded feed file
//! (`recording.rs`) back into the index at its recorded timing, faster, or as fast as the index takes
//! it, once or in a loop.
//!
//! Start-up reads the whole file once: it learns the symbols (so clients can subscribe before the
//! first tick) and fails the start on what makes the file unusable (missing, unreadable, no valid
//! tick, `ts` going backwards). Playing streams the file again from a reader thread, so memory does
//! not grow with the file. Bad lines are skipped, logged as `file:line: reason` on the first pass and
//! counted in `quotegw_feed_bad_lines_total` on every pass.
//!
//! Determinism: the file fixes the ticks and their order, and the index gives `seq` in arrival
//! order, so the same file gives the same ticks and `seq` values on every run at any speed (the
//! speed only changes how many a slow client sees conflated).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::recording::{Line, Reader};
use super::{Feed, FeedContext, FeedError};
use crate::model::{ms_within, Symbol, MAX_SETTING_MS};

/// Lines the reader thread hands over at once. The pacing task frees room in the channel one chunk at
/// a time, so the reader thread wakes once per chunk rather than once per tick (a wake per line
/// costs two context switches per tick on the gateway's core).
const CHUNK_LINES: usize = 256;

/// Chunks read ahead of the pacing task (4,096 lines): enough to keep `speed = "max"` busy, bounded.
const READ_AHEAD_CHUNKS: usize = 16;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    pub name: String,
    /// A `.ndjson` or `.ndjson.gz` file, relative to the working directory.
    pub path: PathBuf,
    #[serde(default)]
    pub speed: Speed,
    /// Start again from the first line after the last.
    #[serde(default, rename = "loop")]
    pub looped: bool,
    /// Wait this long before the first tick (gives clients time to subscribe, e.g. in tests).
    #[serde(default)]
    pub start_delay_ms: u64,
    /// Replace each tick's `ts` with the time it is sent: a recording replayed as if live (load
    /// tests measure tick-to-client latency from `ts`). Default false: the recorded `ts`.
    #[serde(default)]
    pub restamp: bool,
}

/// `speed = 1.0` keeps the recorded timing, `10.0` plays ten times faster, `"max"` as fast as the
/// index takes ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    Max,
    Factor(f64),
}

impl Default for Speed {
    fn default() -> Self {
        Speed::Factor(1.0)
    }
}

impl<'de> Deserialize<'de> for Speed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(x) if x.is_finite() && x > 0.0 => Ok(Speed::Factor(x)),
            Raw::Text(s) if s == "max" => Ok(Speed::Max),
            _ => Err(serde::de::Error::custom(
                "speed must be a number > 0 (1.0 = recorded timing) or \"max\"",
            )),
        }
    }
}

impl ReplayConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.path.as_os_str().is_empty() {
            return Err((
                "path".into(),
                "must name a .ndjson or .ndjson.gz file".into(),
            ));
        }
        ms_within("start_delay_ms", self.start_delay_ms, 0..=MAX_SETTING_MS)
    }
}

/// What the start-up pass learned about the file.
#[derive(Debug)]
pub struct Scan {
    pub symbols: Vec<Symbol>,
    pub ticks: u64,
    pub bad_lines: u64,
    /// Where and why the file could not be read to its end, if it could not.
    pub broken: Option<(u64, String)>,
}

/// Reads the whole file once; errors are what make the file unusable.
pub fn scan(path: &Path) -> Result<Scan, FeedError> {
    let shown = path.display();
    let mut reader =
        Reader::open(path).map_err(|e| FeedError::Setup(format!("cannot open {shown}: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut scan = Scan {
        symbols: Vec::new(),
        ticks: 0,
        bad_lines: 0,
        broken: None,
    };
    let mut prev_ts: Option<(i64, u64)> = None;
    while let Some(item) = reader.next() {
        match item {
            Line::Tick(t) => {
                let line = reader.line();
                if let Some((prev, prev_line)) = prev_ts {
                    if t.ts < prev {
                        return Err(FeedError::Setup(format!(
                            "{shown}:{line}: ts {} is before line {prev_line}'s {prev}; ts must be non-decreasing through the file",
                            t.ts
                        )));
                    }
                }
                prev_ts = Some((t.ts, line));
                if seen.insert(t.symbol.clone()) {
                    scan.symbols.push(t.symbol.clone());
                }
                scan.ticks += 1;
            }
            Line::Bad { .. } => scan.bad_lines += 1,
            Line::Broken { line, reason } => scan.broken = Some((line, reason)),
        }
    }
    if scan.ticks == 0 {
        return Err(FeedError::Setup(format!(
            "{shown} holds no valid tick ({} bad lines{})",
            scan.bad_lines,
            scan.broken
                .as_ref()
                .map_or(String::new(), |(l, r)| format!("; line {l}: {r}"))
        )));
    }
    Ok(scan)
}

pub struct ReplayFeed {
    config: ReplayConfig,
    scan: Scan,
}

impl ReplayFeed {
    pub fn new(config: ReplayConfig) -> Result<ReplayFeed, FeedError> {
        let scan = scan(&config.path)?;
        tracing::info!(
            feed = %config.name,
            path = %config.path.display(),
            ticks = scan.ticks,
            symbols = scan.symbols.len(),
            bad_lines = scan.bad_lines,
            "replay file scanned"
        );
        Ok(ReplayFeed { config, scan })
    }
}

/// Reads passes of the file into `lines_tx` until the receiver is gone (or after one pass).
fn read_passes(path: PathBuf, looped: bool, lines_tx: mpsc::Sender<(u32, Vec<Line>)>) {
    for pass in 0u32.. {
        let reader = match Reader::open(&path) {
            Ok(r) => r,
            Err(e) => {
                let broken = Line::Broken {
                    line: 0,
                    reason: format!("cannot open: {e}"),
                };
                let _ = lines_tx.blocking_send((pass, vec![broken]));
                return;
            }
        };
        let mut chunk = Vec::with_capacity(CHUNK_LINES);
        for item in reader {
            chunk.push(item);
            if chunk.len() == CHUNK_LINES {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_LINES));
                if lines_tx.blocking_send((pass, full)).is_err() {
                    return;
                }
            }
        }
        if !chunk.is_empty() && lines_tx.blocking_send((pass, chunk)).is_err() {
            return;
        }
        if !looped {
            return;
        }
    }
}

impl Feed for ReplayFeed {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn symbols(&self) -> Vec<Symbol> {
        self.scan.symbols.clone()
    }

    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>> {
        Box::pin(async move {
            let ReplayConfig {
                name,
                path,
                speed,
                looped,
                start_delay_ms,
                restamp,
            } = self.config;
            let bad_lines = ctx.metrics.feed_bad_lines.with_label_values(&[&name]);
            let (lines_tx, mut lines_rx) = mpsc::channel(READ_AHEAD_CHUNKS);
            let reader_path = path.clone();
            std::thread::Builder::new()
                .name(format!("replay-{name}"))
                .spawn(move || read_passes(reader_path, looped, lines_tx))
                .map_err(|e| FeedError::Setup(format!("cannot start the reader thread: {e}")))?;

            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(start_delay_ms)) => {}
            }
            ctx.set_up(true);
            // Pacing: a tick recorded at `ts` is due at `started + (ts - first_ts) / speed`. A later
            // pass continues the timeline where the previous one ended.
            let started = Instant::now();
            let mut first_ts: Option<i64> = None;
            let mut offset_ms: i64 = 0;
            let mut last_ts: i64 = 0;
            let mut current_pass = 0;
            'play: loop {
                let chunk = tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    chunk = lines_rx.recv() => chunk,
                };
                // A chunk never spans two passes (`read_passes`).
                let Some((pass, lines)) = chunk else { break };
                if pass != current_pass {
                    current_pass = pass;
                    // The next pass starts right after the previous one's last tick.
                    offset_ms = last_ts - first_ts.unwrap_or(last_ts) + offset_ms + 1;
                    first_ts = None;
                }
                for item in lines {
                    match item {
                        Line::Tick(mut tick) => {
                            let first = *first_ts.get_or_insert(tick.ts);
                            let at_ms = tick.ts - first + offset_ms;
                            last_ts = tick.ts;
                            if let Speed::Factor(f) = speed {
                                let due =
                                    started + Duration::from_secs_f64(at_ms as f64 / 1000.0 / f);
                                tokio::select! {
                                    _ = ctx.shutdown.cancelled() => break 'play,
                                    _ = tokio::time::sleep_until(due) => {}
                                }
                            }
                            if restamp {
                                tick.ts = crate::model::now_ms();
                            } else if pass > 0 {
                                // Keep `ts` non-decreasing across passes, as clients expect of a feed.
                                tick.ts = first + at_ms;
                            }
                            ctx.send(tick).await?;
                        }
                        Line::Bad { line, reason } => {
                            bad_lines.inc();
                            if pass == 0 {
                                tracing::warn!(feed = %name, "{}:{line}: skipped: {reason}", path.display());
                            }
                        }
                        Line::Broken { line, reason } => {
                            bad_lines.inc();
                            if pass == 0 {
                                tracing::warn!(feed = %name, "{}:{line}: {reason}", path.display());
                            }
                        }
                    }
                }
            }
            ctx.set_up(false);
            Ok(())
        })
    }
}
