//! Stage 5, the WebSocket session: one task per connection, on the actix worker that accepted it.
//!
//! The task owns everything about its connection: it reads client frames (`reader.rs`: ops, limits),
//! owns the per-symbol views, and drains dirty slots into frames (`writer.rs`). Doing both in one task
//! keeps the order the protocol needs for free: an op's `ack` is written before the snapshots it
//! causes, and after an unsubscribe's `ack` there is no slot left to write from.
//!
//! The task owns the TCP socket too (`socket.rs`): frames go from the session to the kernel with
//! nothing queued in between. While a frame waits for a socket that does not take it, the task
//! reads nothing: a client that does not read is not served, and its ops wait in TCP. The wait is
//! bounded by `slow_consumer_timeout_ms` (close 4008); the index never waits for any of this.

mod limits;
mod reader;
pub mod socket;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, Frame, ProtocolError};
use bytes::BytesMut;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::access::{Grant, IpGuard};
use crate::config::LimitsConfig;
use crate::conflate::{ConnPending, EmitStats, Recent, SlotView};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::model::Symbol;
use crate::protocol::{close, FrameBuilder};
use limits::{TokenBucket, ABUSE_ERRORS_PER_SECOND, ABUSE_ERROR_BURST};
use socket::{SendError, WsSocket};

/// How long a close frame may take to leave (shutdown, idle, protocol errors) before the socket is
/// shut down without it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The least time a slow consumer's 4008 close frame gets to leave (it waits behind everything the
/// client has not read); past it, and past one more `slow_consumer_timeout_ms`, the socket is shut.
const SLOW_CONSUMER_CLOSE_GRACE_MIN: Duration = Duration::from_secs(5);

/// What every connection shares.
pub struct SessionShared {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    pub limits: LimitsConfig,
    pub shutdown: CancellationToken,
    pub connections: AtomicUsize,
}

impl SessionShared {
    /// Counts a connection in, unless `max_connections` are open: the caller then refuses the upgrade.
    pub fn admit(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.connections.inc();
        Some(ConnectionGuard(self.clone()))
    }
}

/// Holds one place in `max_connections` for as long as the connection task runs.
pub struct ConnectionGuard(Arc<SessionShared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The gateway closes with this code and reason.
    Close(u16, &'static str),
    /// The client sent a close frame; it is echoed.
    ClientClosed(Option<CloseReason>),
    /// The socket accepted nothing for `slow_consumer_timeout_ms`.
    SlowConsumer,
    /// The peer is gone; nothing to send.
    Gone,
}

impl End {
    fn from_protocol_error(e: &ProtocolError) -> End {
        match e {
            ProtocolError::Overflow => End::Close(close::TOO_BIG, "frame over max_frame_bytes"),
            ProtocolError::Io(_) => End::Gone,
            _ => End::Close(close::PROTOCOL_ERROR, "websocket protocol error"),
        }
    }
}

/// A fragmented text message being reassembled (`max_frame_bytes` bounds its total).
struct Fragments {
    text: bool,
    buf: BytesMut,
}

pub struct Connection {
    shared: Arc<SessionShared>,
    socket: WsSocket,
    pending: Arc<ConnPending>,
    /// Subscribed symbols: slot id → view. Slot ids are reused, so the vector never outgrows the
    /// most symbols this connection held at once.
    slots: Vec<Option<SlotView>>,
    free_slots: Vec<u32>,
    by_symbol: HashMap<Symbol, u32>,
    /// Slots held back by `max_hz`, and when the earliest of them may go.
    deferred: Vec<u32>,
    deferred_until: Option<Instant>,
    frame: FrameBuilder,
    stats: EmitStats,
    scratch: Vec<u32>,
    /// Lent to `SlotView::emit_latest` for each read, so catching up allocates nothing.
    catch_up: Vec<Recent>,
    ops: TokenBucket,
    errors: TokenBucket,
    last_heard: Instant,
    pong_owed: Option<bytes::Bytes>,
    fragments: Option<Fragments>,
    latency: prometheus::local::LocalHistogram,
    /// What the token allows, and when it expires.
    grant: Grant,
    _guards: (ConnectionGuard, Option<IpGuard>),
}

impl Connection {
    pub fn new(
        shared: Arc<SessionShared>,
        guards: (ConnectionGuard, Option<IpGuard>),
        grant: Grant,
        socket: WsSocket,
    ) -> Connection {
        let now = Instant::now();
        let limits = &shared.limits;
        Connection {
            ops: TokenBucket::new(limits.ops_per_second, limits.ops_burst, now.into_std()),
            errors: TokenBucket::new(ABUSE_ERRORS_PER_SECOND, ABUSE_ERROR_BURST, now.into_std()),
            latency: shared.metrics.tick_to_write.local(),
            shared,
            socket,
            pending: ConnPending::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_symbol: HashMap::new(),
            deferred: Vec::new(),
            deferred_until: None,
            frame: FrameBuilder::default(),
            stats: EmitStats::default(),
            scratch: Vec::new(),
            catch_up: Vec::new(),
            last_heard: now,
            pong_owed: None,
            fragments: None,
            grant,
            _guards: guards,
        }
    }

    /// Serves the connection until it ends, then closes it as the protocol says.
    pub async fn run(mut self) {
        let end = self.serve().await;
        self.finish(end).await;
    }

    async fn serve(&mut self) -> End {
        let limits = &self.shared.limits;
        let ping_every = Duration::from_millis(limits.ping_interval_ms);
        let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let shutdown = self.shared.shutdown.clone();
        // Registered once: a future made per loop turn would join and leave the token's waiter
        // list, under its lock, on every wake-up of every connection.
        let shutdown = shutdown.cancelled();
        let pending = self.pending.clone();
        let frame_interval = Duration::from_millis(limits.min_frame_interval_ms);
        // Set after a frame leaves: until then, news waits (see the flush below).
        let mut held_until: Option<Instant> = None;
        let expires = self.grant.remaining().map(|left| Instant::now() + left);
        // Timers armed once and re-armed when due, not per wake-up: a busy connection wakes for
        // every frame, and registering timers each time costs as much as the frame's own work.
        let expiry = tokio::time::sleep_until(expires.unwrap_or_else(Instant::now));
        let idle = tokio::time::sleep_until(self.last_heard + idle_timeout);
        tokio::pin!(expiry, idle, shutdown);
        enum Event {
            Expired,
            Shutdown,
            Frame(Option<Result<Frame, ProtocolError>>),
            Dirty,
            Timer,
            Ping,
            Idle,
        }
        loop {
            // One timer: the end of the frame interval, or else a `max_hz` slot coming due (flush
            // looks at those after the interval anyway).
            let timer = held_until.or(self.deferred_until);
            let event = tokio::select! {
                biased;
                _ = &mut shutdown => Event::Shutdown,
                _ = &mut expiry, if expires.is_some() => Event::Expired,
                msg = self.socket.recv() => Event::Frame(msg),
                // Not listened to within the frame interval: the index keeps marking slots, and
                // the timer below collects them all into one frame.
                _ = pending.wait(), if held_until.is_none() => Event::Dirty,
                _ = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => Event::Timer,
                _ = &mut idle => Event::Idle,
                _ = ping.tick() => Event::Ping,
            };
            match event {
                Event::Expired => return End::Close(close::POLICY, "token expired"),
                Event::Shutdown => return End::Close(close::GOING_AWAY, "gateway shutting down"),
                Event::Idle => {
                    let due = self.last_heard + idle_timeout;
                    if due > Instant::now() {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    return End::Close(close::NORMAL, "idle timeout");
                }
                Event::Frame(None) => return End::Gone,
                Event::Frame(Some(Err(e))) => return End::from_protocol_error(&e),
                Event::Frame(Some(Ok(msg))) => {
                    self.last_heard = Instant::now();
                    if let Some(end) = self.on_message(msg) {
                        // What the op already wrote (an error reply) goes out before the close.
                        let _ = self.flush().await;
                        return end;
                    }
                }
                Event::Dirty => {}
                Event::Timer => held_until = None,
                Event::Ping => {
                    if let Err(end) = self.send_ping().await {
                        return end;
                    }
                    if held_until.is_some() {
                        continue;
                    }
                }
            }
            let started = Instant::now();
            match self.flush().await {
                Err(end) => return end,
                // Batching is decided here: after a frame, updates wait out `min_frame_interval_ms`
                // and then leave together. A connection that was quiet gets its next update at
                // once; a hot one costs one write per interval instead of one per tick (a write to
                // a socket costs far more than adding an update to a frame).
                Ok(true) if !frame_interval.is_zero() => {
                    held_until = Some(started + frame_interval);
                }
                Ok(_) => {}
            }
        }
    }

    /// Leaves the index, then closes as `end` says: the close frame goes after everything already
    /// written, and a connection whose close cannot leave within its grace is reset.
    ///
    /// Boxed: the close path's futures are bigger than the whole serving state, and every idle
    /// connection would otherwise carry their space in its task.
    fn finish(self, end: End) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(self.close(end))
    }

    async fn close(mut self, end: End) {
        self.pending.close();
        for (slot, view) in self.slots.drain(..).enumerate() {
            if let Some(view) = view {
                view.entry.unsubscribe(&self.pending, slot as u32);
                self.shared.metrics.subscriptions.dec();
            }
        }
        let metrics = &self.shared.metrics;
        let (code, reason, grace) = match end {
            End::Gone => return,
            End::ClientClosed(reason) => {
                // Echoed, as RFC 6455 §5.5.1 asks.
                self.socket.close(reason, CLOSE_GRACE).await;
                return;
            }
            End::SlowConsumer => {
                metrics.slow_consumer_closes.inc();
                let grace = Duration::from_millis(self.shared.limits.slow_consumer_timeout_ms)
                    .max(SLOW_CONSUMER_CLOSE_GRACE_MIN);
                (close::SLOW_CONSUMER, "slow consumer", grace)
            }
            End::Close(code, reason) => (code, reason, CLOSE_GRACE),
        };
        metrics
            .closes
            .with_label_values(&[itoa::Buffer::new().format(code)])
            .inc();
        tracing::debug!(code, reason, "closing connection");
        let close = CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_string()),
        };
        self.socket.close(Some(close), grace).await;
    }
}

impl From<SendError> for End {
    fn from(e: SendError) -> End {
        match e {
            SendError::Stalled(_) => End::SlowConsumer,
            SendError::Io(_) => End::Gone,
        }
    }
}
