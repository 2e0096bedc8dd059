//! Session, the connection's task: a `Session` on its socket, driven by one select loop over client
//! frames, its shard's wake-ups (marks, and clock events: ping, idle, token expiry and shutdown)
//! and `max_hz`'s timer (the batching window is the shard's); and the close paths.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, Frame, ProtocolError};
use tokio::time::{Instant, Sleep};

use super::socket::{SendError, WsSocket};
use super::writer::{pass_hooks, Registered};
use super::{Connection, ConnectionGuard, End, Readmission, Session, SessionShared};
use crate::access::Grant;
use crate::access::{Admission, ClientGuards};
use crate::fanout::ConnPending;
use crate::frame::Framing;
use crate::protocol::close;
use crate::security_log;

/// How long a close frame may take to leave (shutdown, idle, protocol errors) before the socket is
/// shut down without it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The least time a slow consumer's 4008 close frame gets to leave (it waits behind everything the
/// client has not read); past it, and past one more `slow_consumer_timeout_ms`, the socket is shut.
const SLOW_CONSUMER_CLOSE_GRACE_MIN: Duration = Duration::from_secs(5);

impl Connection {
    /// An SSE stream's one subscription, made before its task starts (a stream sends no ops).
    pub fn subscribe_at_start(
        &mut self,
        symbols: Vec<String>,
        max_hz: Option<f64>,
        on_lag: crate::protocol::OnLag,
        wants: crate::view::Wants,
    ) {
        let pacing = self.session.pacing(max_hz, on_lag);
        let symbols = crate::protocol::SymbolList {
            valid: symbols,
            invalid: Vec::new(),
        };
        self.session
            .subscribe(None, symbols, pacing, wants, std::time::Instant::now());
    }

    pub fn new(
        shared: Arc<SessionShared>,
        (guards, admission): ((ConnectionGuard, ClientGuards), Option<Box<Admission>>),
        grant: Grant,
        socket: WsSocket,
        framing: Framing,
    ) -> Connection {
        let now = Instant::now();
        let reloads_seen = shared.alerts.reloads.load(Ordering::Acquire);
        let admission = admission.map(|a| {
            Box::new(Readmission {
                admission: *a,
                reloads_seen,
            })
        });
        // Checked: the expiry comes from a token's `exp`, which may be far beyond the clock's range.
        let expires = grant.remaining().and_then(|left| now.checked_add(left));
        let next_ping = now + Duration::from_millis(shared.limits.ping_interval_ms);
        Connection {
            session: Session::new(shared, grant, framing, now.into_std()),
            socket,
            last_heard: now,
            pong_owed: None,
            fragments: None,
            expires,
            ending: None,
            next_ping,
            held_until: None,
            admission,
            _guards: guards,
        }
    }

    /// Serves the connection until it ends, then closes it as the protocol says.
    ///
    /// Not an `async fn`: rustc keeps an `async fn`'s by-value argument twice in its future (the
    /// argument and the body's own binding of it), and this future is every connection's task.
    /// The connection itself lives beside the task, shared with the worker's shard, which writes
    /// its news without waking the task when it can (`write_now`).
    #[allow(clippy::manual_async_fn)] // on purpose, see above and `task_size` below
    pub fn run(self) -> impl std::future::Future<Output = ()> {
        // Moved to the heap before the future is made: a value the `async` block captured would
        // keep its space in the future for the task's whole life.
        let pending = self.session.pending().clone();
        let this = Rc::new(RefCell::new(self));
        async move {
            // The worker's fan-out task, started by its first connection (`fanout`).
            {
                let shared = &this.borrow().session.shared;
                pending.shard().ensure_running(pass_hooks(shared));
            }
            let end = {
                let _registered = Registered::new(&pending, &this);
                serve(&this, &pending).await
            };
            // Always the only strong reference by now: the registry holds a `Weak`, and a write
            // from the shard holds its `Rc` only while it runs, never across an await.
            let Ok(this) = Rc::try_unwrap(this) else {
                return;
            };
            // Its own statement: a temporary in the awaited expression would keep the moved-out
            // connection's space in this future.
            let close = this.into_inner().finish(end);
            close.await;
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
        // At once, not after the goodbye: the close below may wait on the socket for its grace.
        self.session.leave_all();
        let shared = self.session.shared.clone();
        let metrics = &shared.metrics;
        // A 4008 waits behind everything the client has not read (a lagging `on_lag: "close"`
        // client is reading, but behind a backlog): it gets a slow consumer's grace.
        let slow_grace = Duration::from_millis(shared.limits.slow_consumer_timeout_ms)
            .max(SLOW_CONSUMER_CLOSE_GRACE_MIN);
        let (code, reason, grace) = match end {
            End::Gone => return,
            End::ClientClosed(reason) => {
                // Echoed, as RFC 6455 §5.5.1 asks.
                self.socket.close(reason, CLOSE_GRACE).await;
                return;
            }
            End::SlowConsumer => {
                metrics.slow_consumer_closes.inc();
                (close::SLOW_CONSUMER, "slow consumer", slow_grace)
            }
            End::Close(close::SLOW_CONSUMER, reason) => (close::SLOW_CONSUMER, reason, slow_grace),
            End::Close(code, reason) => (code, reason, CLOSE_GRACE),
        };
        metrics
            .closes
            .with_label_values(&[itoa::Buffer::new().format(code)])
            .inc();
        if matches!(code, close::POLICY | close::TOO_BIG | close::SLOW_CONSUMER) {
            let client = self._guards.1.ip.as_ref().map(|g| g.ip());
            security_log::closed(self.socket.peer_addr(), client, code, reason);
        } else {
            tracing::debug!(code, reason, "closing connection");
        }
        if self.session.framing() == Framing::Sse {
            // An SSE stream has no close frame: a last comment says why it ends.
            self.session.comment(reason);
            if let Some(last) = self.session.take_frame() {
                let _ = self
                    .socket
                    .start(actix_http::ws::OpCode::Text, last.into_bytes());
            }
        }
        let close = CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_string()),
        };
        self.socket.close(Some(close), grace).await;
    }
}

/// Serves a connection until it ends: one select loop over client frames, dirty slots and clock
/// events, and `max_hz`'s timer.
///
/// The connection is shared with the worker's shard, which writes its news itself when it can
/// (`write_now`). This loop borrows it only while it handles an event, and keeps the borrow across
/// a wait for a full socket on purpose: a shard pass meanwhile finds the connection busy and wakes
/// this task instead, so one connection's writes never interleave.
#[allow(clippy::await_holding_refcell_ref)] // on purpose, see above
#[allow(clippy::manual_async_fn)] // not an `async fn`: it would keep both arguments twice
fn serve<'a>(
    this: &'a RefCell<Connection>,
    pending: &'a Arc<ConnPending>,
) -> impl Future<Output = End> + 'a {
    // This future is part of every connection's task, idle ones included: it keeps only what
    // must survive a wait (the two references, the timer), and decides what to do about an event
    // without awaiting (`Connection::on_event`), so that no event is kept while it writes.
    async move {
        {
            // The worker's shard keeps this connection's time (`fanout`): pings, the idle
            // timeout, token expiry, shutdown and the end of a batching window arrive through
            // `pending`, so the loop below arms no timer of its own but `max_hz`'s.
            let conn = this.borrow();
            pending
                .shard()
                .clock_in(pending.clone(), conn.session.shared.alerts.clone());
            pending.set_due(conn.deadline());
        }
        // `max_hz`'s timer, boxed: only connections that use it have one.
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        loop {
            let due = this
                .borrow()
                .session
                .deferred_until()
                .map(Instant::from_std);
            match (due, timer.as_mut()) {
                (None, _) => timer = None,
                (Some(at), Some(sleep)) if sleep.deadline() != at => sleep.as_mut().reset(at),
                (Some(_), Some(_)) => {}
                (Some(at), None) => timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            let event = tokio::select! {
                biased;
                msg = std::future::poll_fn(|cx| this.borrow_mut().socket.poll_recv(cx)) => Event::Frame(msg),
                // Marks the shard could not write itself, and clock events.
                _ = std::future::poll_fn(|cx| pending.poll_wait(cx)) => Event::Woken,
                _ = std::future::poll_fn(|cx| timer.as_mut().map_or(Poll::Pending, |t| t.as_mut().poll(cx))), if timer.is_some() => Event::Timer,
            };
            let mut conn = this.borrow_mut();
            let (ping, drain, flush) = match conn.on_event(event, pending) {
                Step::End(end) => return end,
                Step::Write { ping, drain, flush } => (ping, drain, flush),
            };
            if ping {
                if let Err(end) = conn.ping_boxed().await {
                    return end;
                }
            }
            if drain {
                if let Err(end) = conn.drain_boxed().await {
                    return end;
                }
            }
            if flush {
                let flushed = conn.flush_boxed().await;
                // An end the client's ops found: what they wrote (an error reply) went first.
                if let Some(end) = conn.ending.take() {
                    return *end;
                }
                match flushed {
                    Err(end) => return end,
                    // Batching is decided here and in the shard's pass. By default (no interval)
                    // news is written as soon as the worker gets to it: the shard's pass writes
                    // every connection it marked, back to back (`write_now`), and what became due
                    // while the worker was busy leaves in that one frame, so frames grow by
                    // themselves under load (the way uWebSockets corks) and a quiet gateway writes
                    // at once. With `min_frame_interval_ms`, after a frame, updates wait out the
                    // interval (`hold`) and then leave together, written by the shard when the
                    // window ends: a hard cap on frames per connection, for fewer writes at up to
                    // that much latency.
                    Ok(true) => conn.hold(std::time::Instant::now()),
                    Ok(false) => {}
                }
            }
        }
    }
}

/// What woke the serving loop.
enum Event {
    Frame(Option<Result<Frame, ProtocolError>>),
    /// Woken by its shard: marks, a clock event, or a write the pass handed back.
    Woken,
    /// `max_hz`'s timer.
    Timer,
}

/// What the serving loop does about an event (`Connection::on_event`).
enum Step {
    End(End),
    /// A ping first if `ping`; then, if `drain`, the rest of a frame the socket did not take
    /// (news waits for its window); then, if `flush`, what is pending.
    Write {
        ping: bool,
        drain: bool,
        flush: bool,
    },
}

impl Connection {
    /// An SSE client sends nothing after its request, by design: only a WebSocket can be idle. A
    /// dead SSE client is found by writing to it (the ping comments at the latest).
    fn is_sse(&self) -> bool {
        self.session.framing() == Framing::Sse
    }

    /// After a reload of the access settings: whether they still admit this connection (its
    /// Origin, its credential); checked once per reload.
    fn still_admitted(&mut self) -> bool {
        let shared = &self.session.shared;
        let Some(a) = self.admission.as_deref_mut() else {
            return true;
        };
        let reloads = shared.alerts.reloads.load(Ordering::Acquire);
        if a.reloads_seen == reloads {
            return true;
        }
        a.reloads_seen = reloads;
        shared.access.get().still_admits(&a.admission)
    }

    fn ping_every(&self) -> Duration {
        Duration::from_millis(self.session.shared.limits.ping_interval_ms)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.session.shared.limits.idle_timeout_ms)
    }

    /// When the shard's clock must next wake this connection: its next ping, idle check or token
    /// expiry.
    fn deadline(&self) -> Option<std::time::Instant> {
        let idle = (!self.is_sse()).then(|| self.last_heard + self.idle_timeout());
        [Some(self.next_ping), idle, self.expires]
            .into_iter()
            .flatten()
            .min()
            .map(Instant::into_std)
    }

    /// A frame left at `now`: under `min_frame_interval_ms`, news waits out the interval, and the
    /// worker's shard writes it when the window ends (`Shard::hold`).
    pub(super) fn hold(&mut self, now: std::time::Instant) {
        let interval = self.session.shared.limits.min_frame_interval_ms;
        if interval == 0 {
            return;
        }
        let until = now + Duration::from_millis(interval);
        self.held_until = Some(until);
        let pending = self.session.pending();
        pending.shard().hold(until, pending);
    }

    /// Whether news must wait for the end of a batching window.
    pub(super) fn is_held(&self, now: std::time::Instant) -> bool {
        self.held_until.is_some_and(|until| now < until)
    }

    /// Handles what woke the serving loop, and says what it must write (the loop awaits the
    /// writes, so that nothing of the event is kept in the task while it does).
    fn on_event(&mut self, event: Event, pending: &ConnPending) -> Step {
        // A write from the shard's pass found the end (`write_now`), and woke this task for it.
        if let Some(end) = self.ending.take() {
            return Step::End(*end);
        }
        match event {
            Event::Frame(None) => Step::End(End::Gone),
            Event::Frame(Some(Err(e))) => Step::End(End::from_protocol_error(&e)),
            Event::Frame(Some(Ok(msg))) => {
                // An end the ops found waits for the flush: their reply goes out before the close.
                self.ending = self.on_messages(msg).map(Box::new);
                Step::Write {
                    ping: false,
                    drain: false,
                    flush: true,
                }
            }
            Event::Woken => {
                let mut ping = false;
                if pending.take_clock() {
                    let now = Instant::now();
                    if self.session.shared.alerts.closing.load(Ordering::Acquire) {
                        return Step::End(End::Close(close::GOING_AWAY, "gateway shutting down"));
                    }
                    if !self.still_admitted() {
                        return Step::End(End::Close(close::POLICY, "credential revoked"));
                    }
                    if self.expires.is_some_and(|at| at <= now) {
                        return Step::End(End::Close(close::POLICY, "token expired"));
                    }
                    if !self.is_sse() && self.last_heard + self.idle_timeout() <= now {
                        return Step::End(End::Close(close::NORMAL, "idle timeout"));
                    }
                    if self.next_ping <= now {
                        self.next_ping = now + self.ping_every();
                        ping = true;
                    }
                    pending.set_due(self.deadline());
                }
                // Within the frame interval, news waits for the shard's `release`; the rest of the
                // frame that started the interval does not (a flush writes it first).
                let held = self.is_held(std::time::Instant::now());
                Step::Write {
                    ping,
                    drain: held && !self.socket.is_drained(),
                    flush: !held,
                }
            }
            // A `max_hz` slot came due.
            Event::Timer => Step::Write {
                ping: false,
                drain: false,
                flush: true,
            },
        }
    }

    /// The ping (a comment line on SSE), boxed for the same reason as `flush_boxed`: once per
    /// `ping_interval_ms`, its future would otherwise be part of every idle connection's task.
    fn ping_boxed(&mut self) -> Pin<Box<dyn Future<Output = Result<(), End>> + '_>> {
        Box::pin(async move {
            if self.is_sse() {
                // A comment line: proxies see traffic, clients ignore it.
                self.session.comment("ping");
                self.send_frame().await.map(|_| ())
            } else {
                self.send_ping().await
            }
        })
    }

    /// `drained`, boxed like `flush_boxed`: only a connection whose socket is full waits in it.
    fn drain_boxed(&mut self) -> Pin<Box<dyn Future<Output = Result<(), End>> + '_>> {
        Box::pin(self.drained())
    }

    /// `flush`, boxed: the serving loop is every connection's task, and flush's future (about
    /// 200 bytes) would otherwise be part of it while the connection idles. Most news leaves
    /// from the shard's pass (`write_now`), so the task flushes rarely.
    fn flush_boxed(&mut self) -> Pin<Box<dyn Future<Output = Result<bool, End>> + '_>> {
        Box::pin(self.flush())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rust_decimal::Decimal;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::feed::FeedEvent;
    use crate::index::Index;
    use crate::metrics::Metrics;
    use crate::model::Tick;
    use crate::session::Transport;

    const SYMBOLS: [&str; 3] = ["AAPL", "MSFT", "NVDA"];

    /// A masked client text frame (RFC 6455 §5.3: clients mask).
    fn client_text(text: &str) -> Vec<u8> {
        let mask = [7u8, 1, 2, 3];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn shared() -> Arc<SessionShared> {
        let metrics = Arc::new(Metrics::new());
        let index = Arc::new(Index::new(&["test".into()], metrics.clone()));
        for (i, symbol) in SYMBOLS.iter().enumerate() {
            index.apply(FeedEvent::Tick(Tick {
                symbol: (*symbol).into(),
                ts: 1,
                bid: Some(Decimal::new(100 + i as i64, 2)),
                ..Tick::default()
            }));
        }
        SessionShared::with_defaults(index, metrics)
    }

    fn subscribers(shared: &SessionShared) -> Vec<usize> {
        SYMBOLS
            .iter()
            .map(|s| shared.index.lookup(s).unwrap().subscriber_count())
            .collect()
    }

    /// Regression (a panicking session leaked its subscriptions): a connection task dropped while
    /// it serves (cancelled, as a panic unwinding it or the runtime dropping it at shutdown would
    /// end it) leaves every subscriber list and the gauges as if it never existed.
    #[tokio::test]
    async fn a_connection_task_dropped_mid_flight_leaves_no_subscription_behind() {
        let shared = shared();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let guard = shared
            .admit(Transport::Ws)
            .expect("a place for one connection");
        let connection = Connection::new(
            shared.clone(),
            ((guard, ClientGuards::default()), None),
            Grant::default(),
            WsSocket::new(server, &[], 65_536),
            Framing::JsonArray,
        );
        let local = tokio::task::LocalSet::new();
        let task = local.spawn_local(connection.run());
        local
            .run_until(async {
                client
                    .write_all(&client_text(
                        r#"{"op":"subscribe","symbols":["AAPL","MSFT","NVDA"]}"#,
                    ))
                    .await
                    .unwrap();
                // The ack and the snapshots arrive once the session has subscribed.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while got.windows(8).filter(|w| w == b"snapshot").count() < SYMBOLS.len() {
                    let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
                        .await
                        .expect("snapshots within the deadline")
                        .unwrap();
                    assert!(n > 0, "the session closed");
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(subscribers(&shared), [1, 1, 1]);
                assert_eq!(shared.metrics.subscriptions.get(), 3);
                assert_eq!(
                    shared.metrics.connections.with_label_values(&["ws"]).get(),
                    1
                );
                task.abort();
                assert!(task.await.unwrap_err().is_cancelled());
            })
            .await;
        assert_eq!(
            subscribers(&shared),
            [0, 0, 0],
            "every subscriber list is empty"
        );
        assert_eq!(shared.metrics.subscriptions.get(), 0);
        assert_eq!(
            shared.metrics.connections.with_label_values(&["ws"]).get(),
            0
        );
        // Nor its shard's clock, from the clock's next tick.
        let shard = crate::fanout::Shard::current();
        shard.tick(std::time::Instant::now());
        assert_eq!(
            shard.clocked(),
            0,
            "the clock forgot the dropped connection"
        );
        // And the fan-out no longer reaches it.
        shared.index.apply(FeedEvent::Tick(Tick {
            symbol: "AAPL".into(),
            ts: 2,
            bid: Some(Decimal::new(1, 0)),
            ..Tick::default()
        }));
        assert_eq!(subscribers(&shared), [0, 0, 0]);
    }
}

#[cfg(test)]
mod task_size {
    use super::*;

    /// The size of what `f` returns for an `A`, without calling it.
    fn future_size<A, F: FnOnce(A) -> Fut, Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    fn future_size2<A, B, F: FnOnce(A, B) -> Fut, Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every connection's task is `run`'s future, idle ones included: it holds the serving loop's
    /// future and two pointers, and the connection once, beside it on the heap (shared with the
    /// worker's shard), not inside it (an `async fn run(self)` would hold it twice, and an `async`
    /// block capturing it once for the task's whole life).
    #[test]
    fn a_connection_task_holds_its_connection_once() {
        let run = future_size(&Connection::run);
        let serve =
            future_size2::<&'static RefCell<Connection>, &'static Arc<ConnPending>, _, _>(&serve);
        let connection = std::mem::size_of::<Connection>();
        println!("run {run} B = serve {serve} B + state; connection {connection} B on the heap");
        assert!(
            run < connection,
            "run's future ({run} B) holds the {connection}-byte connection"
        );
        assert!(run <= serve + 64, "run {run}, serve {serve}");
        // Tokio aligns a task's cell to 128 bytes (header 32, scheduler and id 16, trailer 48, the
        // future's stage, 8 more than the future): up to 152 bytes of future it takes 256 bytes
        // per connection, past it 384.
        assert!(
            run <= 152,
            "run's future is {run} B: the task cell grows to 384 B"
        );
    }
}
