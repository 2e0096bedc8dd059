//! Stage 7, the WebSocket session: one task per connection, on the actix worker that accepted it.
//!
//! [`Session`] is the part of a connection without I/O: the ops a client sends (`reader.rs`:
//! limits, subscribe, unsubscribe), the per-symbol views, and the frames its dirty slots drain into
//! (`writer.rs`). [`Connection`] adds the socket (`socket.rs`) and the clocks (ping, idle, token
//! expiry, batching, shutdown); its task (`task.rs`) reads, answers ops and handles clock events.
//! Both types are defined here and their methods live in the file of their role: serving
//! (`task.rs`), reading (`reader.rs`), writing (`writer.rs`). News is written by the worker's
//! shard in its pass (`fanout`, through `writer.rs`'s `write_from_pass` and
//! `Connection::write_now`) while the task is parked, and by the task when the pass hands it back
//! (a full socket, a window, an end). Both run on the worker's one thread and take the connection
//! in turn (a `RefCell`: the pass skips a connection its task holds), so the order the protocol
//! needs comes for free: an op's `ack` is written before the snapshots it causes, and after an
//! unsubscribe's `ack` there is no slot left to write from.
//!
//! Frames go from the session to the kernel with nothing queued in between. While a frame waits for
//! a socket that does not take it, the task reads nothing: a client that does not read is not
//! served, and its ops wait in TCP. The wait is bounded by `slow_consumer_timeout_ms` (close 4008),
//! and shutdown and token expiry still end it; the index never waits for any of this.
//!
//! Everything a connection registers is released by a guard's `Drop` (`ConnectionGuard`, the
//! per-IP guard, and each subscription inside its `SlotView`), so a panic, a cancelled task or a
//! runtime dropping tasks at shutdown leaves nothing behind in the index or the counts.

mod limits;
mod reader;
pub mod socket;
mod task;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::{CloseReason, ProtocolError};
use bytes::BytesMut;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use crate::access::{ClientGuards, Grant, Scope, Tier, TiersConfig};
use crate::fanout::ConnPending;
use crate::frame::{FrameBuilder, Framing};
use crate::index::Index;
use crate::metrics::Metrics;
use crate::model::Symbol;
use crate::protocol::{close, ErrorCode, OnLag};
use crate::view::{Delay, Pacing, SlotView, Wants};
pub use limits::LimitsConfig;
use limits::{TokenBucket, ABUSE_ERRORS_PER_SECOND, ABUSE_ERROR_BURST};
use socket::WsSocket;

/// A fragmented text message being reassembled (`max_frame_bytes` bounds its total).
struct Fragments {
    text: bool,
    buf: BytesMut,
}

pub struct Connection {
    session: Session,
    socket: WsSocket,
    last_heard: TokioInstant,
    // The three rare states are boxed: every idle connection would otherwise carry their 104
    // bytes (a pong owed, a fragmented message, an end found by the shard's pass).
    pong_owed: Option<Box<bytes::Bytes>>,
    fragments: Option<Box<Fragments>>,
    /// When the token expires (`None`: never, or beyond the clock's range).
    expires: Option<TokioInstant>,
    /// Set by a write from the shard's pass that found the connection's end (`write_now`): the
    /// task, woken for it, ends the connection.
    ending: Option<Box<End>>,
    /// When the next ping is due.
    next_ping: TokioInstant,
    /// Set after a frame leaves under `min_frame_interval_ms` (`hold`): until then, news waits.
    held_until: Option<std::time::Instant>,
    /// How it was admitted, checked again after a reload of the access settings (boxed: 8 bytes
    /// inline for what is read once per reload).
    admission: Option<Box<Readmission>>,
    _guards: (ConnectionGuard, ClientGuards),
}

/// A connection's admission and the reload (`Alerts::reloads`) it was last checked against.
struct Readmission {
    admission: crate::access::Admission,
    reloads_seen: u64,
}

/// What every connection shares.
pub struct SessionShared {
    pub index: Arc<Index>,
    pub metrics: Arc<Metrics>,
    pub limits: LimitsConfig,
    pub tiers: TiersConfig,
    pub shutdown: CancellationToken,
    /// `closing` is set when the gateway shuts down (after `shutdown` is cancelled), `reloads`
    /// grows when the access settings are reloaded: the worker shards' clocks wake every session,
    /// which then closes with 1001, or checks its admission again (`fanout`, `Shard::tick`).
    pub alerts: Arc<crate::fanout::Alerts>,
    /// The access checks in force.
    pub access: Arc<crate::access::LiveAccess>,
    pub connections: AtomicUsize,
}

impl SessionShared {
    /// For unit tests: `index` served with the default limits, nothing shutting down.
    #[cfg(test)]
    pub(crate) fn with_defaults(index: Arc<Index>, metrics: Arc<Metrics>) -> Arc<SessionShared> {
        SessionShared::standalone(index, metrics, LimitsConfig::default())
    }

    /// Sessions of `index` under `limits`, outside a running gateway (the fuzz targets, tests):
    /// the default access settings and tiers, nothing shutting down. What a gateway shares is
    /// assembled in `app.rs` from its config.
    pub fn standalone(
        index: Arc<Index>,
        metrics: Arc<Metrics>,
        limits: LimitsConfig,
    ) -> Arc<SessionShared> {
        Arc::new(SessionShared {
            index,
            metrics,
            limits,
            tiers: Default::default(),
            shutdown: CancellationToken::new(),
            alerts: Default::default(),
            access: Arc::new(crate::access::LiveAccess::new(
                crate::access::Access::new(
                    &Default::default(),
                    LimitsConfig::default().client_limits(),
                    &Default::default(),
                )
                .expect("the default access settings are valid"),
            )),
            connections: AtomicUsize::new(0),
        })
    }
}

/// How a connection reaches its client: the `transport` label of the metrics that tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket (`/ws`).
    Ws,
    /// Server-Sent Events (`/v1/stream`).
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }

    fn of(framing: Framing) -> Transport {
        match framing {
            Framing::JsonArray => Transport::Ws,
            Framing::Sse => Transport::Sse,
        }
    }
}

impl SessionShared {
    /// Counts a connection in, unless `max_connections` are open (streams of every transport
    /// together): the caller then refuses it.
    pub fn admit(self: &Arc<Self>, transport: Transport) -> Option<ConnectionGuard> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= self.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let gauge = self
            .metrics
            .connections
            .with_label_values(&[transport.as_str()]);
        gauge.inc();
        Some(ConnectionGuard {
            shared: self.clone(),
            gauge,
        })
    }
}

/// Holds one place in `max_connections` for as long as the connection task runs.
pub struct ConnectionGuard {
    shared: Arc<SessionShared>,
    gauge: prometheus::IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Why a connection ends.
#[derive(Debug, PartialEq)]
pub enum End {
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

/// One connection's protocol state, without I/O: what it is subscribed to, what each symbol's view
/// was last sent, the frame being built, and the op limits. Ops go in as text (`on_text`), frames
/// come out (`begin_flush`, `fill_frame`, `take_frame`); `Connection` moves them to and from the
/// socket. Public so that the session fuzz target drives it exactly as a connection does.
pub struct Session {
    shared: Arc<SessionShared>,
    pending: Arc<ConnPending>,
    /// Subscribed symbols: slot id → view (which holds the subscription). Slot ids are reused, so
    /// the vector never outgrows the most symbols this connection held at once.
    slots: Vec<Option<SlotView>>,
    free_slots: Vec<u32>,
    /// The subscribed slots in their symbols' order, for finding a symbol's slot by binary
    /// search: 4 bytes a symbol, where a map keyed by symbol took ~120 for a connection's first.
    by_symbol: Vec<u32>,
    /// Slots held back by `max_hz` (boxed: only paced connections have any).
    deferred: Option<Box<Deferred>>,
    frame: FrameBuilder,
    /// The slots of the flush in progress, and how far `fill_frame` got through them.
    work: Vec<u32>,
    work_done: usize,
    ops: TokenBucket,
    errors: TokenBucket,
    /// What the token allows (its expiry is the connection's).
    scope: Scope,
    /// `quotegw_updates_sent_total` for this connection's transport, resolved once.
    updates_sent: prometheus::IntCounter,
}

/// Slots held back by `max_hz`, and when the earliest of them may go.
struct Deferred {
    slots: Vec<u32>,
    until: Instant,
}

impl Session {
    pub fn new(
        shared: Arc<SessionShared>,
        grant: Grant,
        framing: Framing,
        now: Instant,
    ) -> Session {
        let limits = &shared.limits;
        let updates_sent = shared
            .metrics
            .updates_sent
            .with_label_values(&[Transport::of(framing).as_str()]);
        Session {
            ops: TokenBucket::new(limits.ops_per_second, limits.ops_burst, now),
            errors: TokenBucket::new(ABUSE_ERRORS_PER_SECOND, ABUSE_ERROR_BURST, now),
            shared,
            pending: ConnPending::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_symbol: Vec::new(),
            deferred: None,
            frame: FrameBuilder::new(framing),
            work: Vec::new(),
            work_done: 0,
            updates_sent,
            scope: grant.into_scope(),
        }
    }

    /// How a subscription is served: what the client asked within what its tier allows.
    pub fn pacing(&self, max_hz: Option<f64>, on_lag: OnLag) -> Pacing {
        let mut pacing = Pacing::max_hz(max_hz);
        pacing.close_on_lag = on_lag == OnLag::Close;
        let tiers = &self.shared.tiers;
        match self.scope.tier {
            Tier::Realtime => {}
            Tier::Throttled => {
                // The index's sample, which changes at most once per interval; a max_hz slower
                // than that paces on top (the slower one wins).
                let interval = tiers.throttled.interval_ms;
                pacing.sample_ms = Some(interval as i64);
                pacing.min_interval = pacing
                    .min_interval
                    .filter(|d| *d > Duration::from_millis(interval));
            }
            Tier::Delayed => {
                // Access refuses the delayed tier when it is not configured.
                if let Some(d) = &tiers.delayed {
                    pacing.delay = Some(Delay {
                        delay_ms: d.delay_ms as i64,
                        granularity_ms: d.granularity_ms as i64,
                    });
                }
            }
        }
        pacing
    }

    /// What a subscription asks for beside quotes, checked (`wants_for`).
    pub fn wants(&self, trades: bool, bars: Option<&str>) -> Result<Wants, (ErrorCode, String)> {
        wants_for(
            self.shared.index.market(),
            &self.shared.tiers,
            self.scope.tier,
            trades,
            bars,
        )
    }

    /// How this connection's messages are framed.
    pub fn framing(&self) -> Framing {
        self.frame.framing()
    }

    /// (SSE) a comment line into the next write.
    pub fn comment(&mut self, text: &str) {
        self.frame.push_comment(text);
    }

    /// The symbols this connection is subscribed to, in order.
    pub fn subscribed(&self) -> impl Iterator<Item = &Symbol> {
        self.by_symbol
            .iter()
            .filter_map(|&slot| self.slots[slot as usize].as_ref())
            .map(|view| &view.entry().symbol)
    }

    /// When the earliest slot held back by `max_hz` may go.
    pub fn deferred_until(&self) -> Option<Instant> {
        self.deferred.as_ref().map(|d| d.until)
    }

    /// The wake-up the index fires when a slot is marked.
    pub fn pending(&self) -> &Arc<ConnPending> {
        &self.pending
    }

    /// Leaves every symbol now (the close path, which may then wait on the socket for a while).
    pub fn leave_all(&mut self) {
        self.pending.close();
        self.slots.clear();
        self.free_slots.clear();
        self.by_symbol.clear();
        self.deferred = None;
    }
}

/// What a subscription (a `subscribe` op, or a stream's query) asks for beside quotes, checked:
/// the interval must be one the index builds, and a throttled credential gets trades only when
/// `[tiers.throttled] trades` allows them (its bars are paced like its quotes; the delayed tier
/// gets both, delayed).
pub fn wants_for(
    market: &crate::index::Market,
    tiers: &TiersConfig,
    tier: Tier,
    trades: bool,
    bars: Option<&str>,
) -> Result<Wants, (ErrorCode, String)> {
    let bars = match bars {
        None => None,
        Some(name) => match market.interval(name) {
            Some(i) => Some(i),
            None => {
                let shown: String = name.chars().take(16).collect();
                return Err((
                    ErrorCode::BadRequest,
                    format!(
                        "'bars' must be one of the intervals this gateway builds: {} (got '{shown}')",
                        market.interval_names()
                    ),
                ));
            }
        },
    };
    if trades && tier == Tier::Throttled && !tiers.throttled.trades {
        return Err((
            ErrorCode::Unauthorized,
            "this credential's tier does not include trades ([tiers.throttled] trades)".into(),
        ));
    }
    Ok(Wants { trades, bars })
}
