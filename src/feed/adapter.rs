//! Stage 1, feeds: the one trait every adapter implements ([`Feed`]), what it hands to the index
//! ([`FeedEvent`]) and the context through which it does ([`FeedContext`]).
//!
//! Backpressure, feed → index: a bounded channel (`TICK_CHANNEL_CAPACITY`). A feed that produces
//! faster than the index applies ticks waits in `FeedContext::send`; nothing queues without bound, and
//! what a slow feed does about it (fall behind, skip, poll less often) is the adapter's decision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::{FeedId, Status, Symbol, Tick};

/// Room for this many events between all feeds and the index: ~0.5 s of the default 2,000 ticks/s
/// (enough to absorb a scheduling hiccup), small enough that a stuck index stops feeds quickly.
pub const TICK_CHANNEL_CAPACITY: usize = 1024;

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
        state: crate::model::BusState,
    },
    /// (scale-out edge) a symbol's bars as an ingest published them: applied as they are (newest
    /// by `(term, ver)`), never recomputed.
    Bars {
        feed: FeedId,
        bars: crate::model::BusBars,
    },
    /// (scale-out edge) everything sent before it is what clients need: the index marks the feed
    /// delivered when it gets here, so readiness never runs ahead of what the index holds.
    Delivered(Arc<FeedHealth>),
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

    /// Whether the feed learns its symbols as it runs instead (a scale-out edge, from its cache):
    /// until it says it has delivered (`FeedContext::set_delivered`), clients are refused with
    /// 503 rather than told its symbols are unknown.
    fn learns_symbols(&self) -> bool {
        false
    }

    /// What must hold before the gateway starts serving, checked once at start: an error here is
    /// a start-up error (a credential the upstream refuses), not a feed that retries for ever.
    /// Nothing by default.
    fn prepare(&mut self, _metrics: &Arc<Metrics>) -> BoxFuture<'_, Result<(), FeedError>> {
        Box::pin(async { Ok(()) })
    }

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

    /// (scale-out edge) hands a symbol's bars from the bus to the index.
    pub async fn send_bars(&self, bars: crate::model::BusBars) -> Result<(), FeedError> {
        self.events_tx
            .send(FeedEvent::Bars {
                feed: self.id,
                bars,
            })
            .await
            .map_err(|_| FeedError::IndexClosed)
    }

    /// (scale-out edge) hands a state from the bus to the index; readiness is the feed's to say
    /// (`set_delivered`), once its cache is loaded.
    pub async fn send_state(&self, state: crate::model::BusState) -> Result<(), FeedError> {
        self.events_tx
            .send(FeedEvent::State {
                feed: self.id,
                state,
            })
            .await
            .map_err(|_| FeedError::IndexClosed)
    }

    /// Says the feed has delivered what clients need (`/readyz`, and admission while the gateway
    /// learns its symbols), once the index has applied everything sent before.
    pub async fn set_delivered(&self) -> Result<(), FeedError> {
        self.events_tx
            .send(FeedEvent::Delivered(self.health.clone()))
            .await
            .map_err(|_| FeedError::IndexClosed)
    }

    /// Marks the feed's upstream as reachable (`true`) or down.
    pub fn set_up(&self, up: bool) {
        self.health.up.store(up, Ordering::Relaxed);
    }
}
