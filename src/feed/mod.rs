//! Stage 1, feeds: the one trait every adapter implements, the closed config enum that builds them,
//! and the context through which they hand ticks to the index.
//!
//! Backpressure, feed → index: a bounded channel (`TICK_CHANNEL_CAPACITY`). A feed that produces
//! faster than the index applies ticks waits in `FeedContext::send`; nothing queues without bound, and
//! what a slow feed does about it (fall behind, skip, poll less often) is the adapter's decision.
//!
//! A new adapter (replay, HTTP polling, NATS) adds a variant to `FeedConfig` and a file here; the index
//! and sessions do not change.

pub mod fields;
pub mod http_poll;
pub mod nats;
pub mod recording;
pub mod replay;
pub mod simulated;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::{FeedId, Status, Symbol, Tick};

pub use http_poll::HttpPollConfig;
pub use replay::ReplayConfig;
pub use simulated::SimulatedConfig;

/// Room for this many events between all feeds and the index: ~0.5 s of the default 2,000 ticks/s
/// (enough to absorb a scheduling hiccup), small enough that a stuck index stops feeds quickly.
pub const TICK_CHANNEL_CAPACITY: usize = 1024;

/// Wall-clock Unix epoch milliseconds: the `ts` of ticks a feed stamps itself (simulated ticks,
/// restamped replays, polled quotes without an upstream timestamp).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a feed hands to the index.
#[derive(Clone, Debug)]
pub enum FeedEvent {
    /// An upstream tick: applied, given the next `seq`, fanned out.
    Tick(Tick),
    /// A status decided by the feed rather than by an upstream tick (e.g. `stale` when the upstream
    /// stops answering). Does not advance `seq`.
    Status {
        feed: FeedId,
        symbol: Symbol,
        status: Status,
    },
    /// (scale-out edge) a symbol's whole state as an ingest published it, with its `seq`: the
    /// index keeps the newest by `(term, version)` and assigns no `seq` of its own.
    State {
        feed: FeedId,
        state: crate::bus::State,
    },
}

#[derive(Debug, Error)]
pub enum FeedError {
    #[error("the index stopped taking ticks (gateway shutting down)")]
    IndexClosed,
    #[error("{0}")]
    Setup(String),
}

/// An upstream source of ticks.
pub trait Feed: Send {
    fn name(&self) -> &str;

    /// Every symbol this feed serves, known before it starts, so that clients can subscribe (and list
    /// them with the `symbols` op) before the first tick.
    fn symbols(&self) -> Vec<Symbol>;

    /// Produces ticks into `ctx` until `ctx.shutdown` is cancelled or the source ends.
    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>>;
}

/// Liveness of one feed, read by `/readyz` and the `quotegw_feed_up` gauge.
#[derive(Debug, Default)]
pub struct FeedHealth {
    pub up: AtomicBool,
    pub delivered: AtomicBool,
}

/// Everything a running feed needs from the gateway.
pub struct FeedContext {
    pub id: FeedId,
    pub shutdown: CancellationToken,
    /// For the adapter's own metrics (poll latency, bad lines), labelled with its name.
    pub metrics: Arc<Metrics>,
    events_tx: mpsc::Sender<FeedEvent>,
    health: Arc<FeedHealth>,
}

impl FeedContext {
    pub fn new(
        id: FeedId,
        events_tx: mpsc::Sender<FeedEvent>,
        shutdown: CancellationToken,
        health: Arc<FeedHealth>,
        metrics: Arc<Metrics>,
    ) -> Self {
        FeedContext {
            id,
            shutdown,
            metrics,
            events_tx,
            health,
        }
    }

    /// Hands a tick to the index, waiting while the index is behind (the feed → index backpressure).
    pub async fn send(&self, mut tick: Tick) -> Result<(), FeedError> {
        tick.feed = self.id;
        self.events_tx
            .send(FeedEvent::Tick(tick))
            .await
            .map_err(|_| FeedError::IndexClosed)?;
        if !self.health.delivered.load(Ordering::Relaxed) {
            self.health.delivered.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sets a symbol's status without an upstream tick.
    pub async fn set_status(&self, symbol: Symbol, status: Status) -> Result<(), FeedError> {
        self.events_tx
            .send(FeedEvent::Status {
                feed: self.id,
                symbol,
                status,
            })
            .await
            .map_err(|_| FeedError::IndexClosed)
    }

    /// (scale-out edge) hands a state from the bus to the index; readiness is the feed's to say
    /// (`set_delivered`), once its cache is loaded.
    pub async fn send_state(&self, state: crate::bus::State) -> Result<(), FeedError> {
        self.events_tx
            .send(FeedEvent::State {
                feed: self.id,
                state,
            })
            .await
            .map_err(|_| FeedError::IndexClosed)
    }

    /// Says the feed has delivered what clients need (`/readyz`).
    pub fn set_delivered(&self) {
        self.health.delivered.store(true, Ordering::Relaxed);
    }

    /// Marks the feed's upstream as reachable (`true`) or down.
    pub fn set_up(&self, up: bool) {
        self.health.up.store(up, Ordering::Relaxed);
    }
}

/// The `[[feeds]]` entries of the config: a closed set, so that the compiler points at every place a
/// new adapter must be handled.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedConfig {
    Simulated(SimulatedConfig),
    Replay(ReplayConfig),
    HttpPoll(HttpPollConfig),
    /// A scale-out edge: states from an ingest over NATS instead of upstreams.
    Nats(nats::NatsFeedConfig),
}

impl FeedConfig {
    pub fn name(&self) -> &str {
        match self {
            FeedConfig::Simulated(c) => &c.name,
            FeedConfig::Replay(c) => &c.name,
            FeedConfig::HttpPoll(c) => &c.name,
            FeedConfig::Nats(c) => &c.name,
        }
    }

    /// Checks the adapter's own keys; errors are (key, what to change).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            FeedConfig::Simulated(c) => c.validate(),
            FeedConfig::Replay(c) => c.validate(),
            FeedConfig::HttpPoll(c) => c.validate(),
            FeedConfig::Nats(c) => c.validate(),
        }
    }

    pub fn build(&self) -> Result<Box<dyn Feed>, FeedError> {
        match self {
            FeedConfig::Simulated(c) => Ok(Box::new(simulated::SimulatedFeed::new(c.clone()))),
            FeedConfig::Replay(c) => Ok(Box::new(replay::ReplayFeed::new(c.clone())?)),
            FeedConfig::HttpPoll(c) => Ok(Box::new(http_poll::HttpPollFeed::new(c.clone())?)),
            FeedConfig::Nats(c) => Ok(Box::new(nats::NatsFeed::new(c.clone()))),
        }
    }
}
