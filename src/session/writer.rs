//! Session, outbound: dirty slots → frames (`Session`), frames → the socket and the slow-consumer
//! timeout (`Connection`).

use std::cell::RefCell;
use std::rc::{Rc, Weak as RcWeak};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix_http::ws::OpCode;
use bytes::Bytes;
use bytestring::ByteString;
use prometheus::local::LocalHistogram;

use super::{Connection, End, Session, SessionShared};
use crate::fanout::{ConnPending, PassHooks};
use crate::metrics::Metrics;
use crate::protocol::close;
use crate::view::{EmitStats, Emitted};

/// A frame is sent once it holds this many bytes, so that a drain of many symbols (a 1,000-symbol
/// subscribe, a slow client catching up) leaves as several frames rather than one huge one.
const FRAME_TARGET_BYTES: usize = 32 * 1024;

thread_local! {
    /// What the frame being built holds (updates, snapshots, when each update's tick came in),
    /// until the socket takes it (`frame_sent`). One per worker, not per connection: a frame is
    /// filled and handed to its socket without an await in between, and the rare frame that must
    /// wait for its socket takes its counts along (`Connection::send_frame`).
    static FRAME_STATS: RefCell<EmitStats> = RefCell::default();
}

thread_local! {
    /// This worker's `quotegw_tick_to_write_seconds` observations, per gateway (a process may run
    /// several, as the tests do), published by `publish_latency` at the end of every shard pass
    /// and clock tick rather than per frame: one buffer per worker instead of one per connection
    /// (192 bytes each), and one flush per pass.
    static LATENCY: RefCell<Vec<(Weak<Metrics>, LocalHistogram)>> = const { RefCell::new(Vec::new()) };
}

/// Records `seconds` of tick-to-write for the gateway of `metrics`, on this worker's buffer.
fn observe_latency(metrics: &Arc<Metrics>, seconds: impl Iterator<Item = f64>) {
    LATENCY.with_borrow_mut(|all| {
        // Held `Weak`s keep their allocation, so an address is never a later gateway's.
        let i = match all
            .iter()
            .position(|(m, _)| std::ptr::eq(m.as_ptr(), Arc::as_ptr(metrics)))
        {
            Some(i) => i,
            None => {
                all.push((Arc::downgrade(metrics), metrics.tick_to_write.local()));
                all.len() - 1
            }
        };
        for s in seconds {
            all[i].1.observe(s);
        }
    });
}

/// Publishes this worker's buffered tick-to-write observations (the shard's `end_of_pass`), and
/// forgets the buffers of gateways that are gone.
pub fn publish_latency() {
    let _ = LATENCY.try_with(|all| {
        all.borrow_mut().retain(|(metrics, local)| {
            local.flush();
            metrics.strong_count() > 0
        })
    });
}

impl Session {
    /// Starts a flush: every dirty slot, and every deferred one once the earliest is due.
    pub fn begin_flush(&mut self, now: Instant) {
        self.keep_unfinished_work();
        self.pending.take_marks(&mut self.work);
        self.add_due_deferred(now);
    }

    /// `begin_flush` for a write made by the worker's shard in its pass (`Connection::write_now`):
    /// the slots it marked. False, and nothing taken, while a clock event waits for the task.
    pub fn begin_flush_in_pass(&mut self, now: Instant) -> bool {
        self.keep_unfinished_work();
        if !self.pending.take_marks_for_pass(&mut self.work) {
            return false;
        }
        self.add_due_deferred(now);
        true
    }

    /// Slots a flush has not reached yet (its last frame did not fit the socket) stay first in line.
    fn keep_unfinished_work(&mut self) {
        self.work.drain(..self.work_done);
        self.work_done = 0;
    }

    fn add_due_deferred(&mut self, now: Instant) {
        if let Some(mut d) = self.deferred.take_if(|d| d.until <= now) {
            // Due or not, every deferred slot is looked at again; emit() defers those still early.
            self.work.append(&mut d.slots);
        }
    }

    /// Writes what the flush's slots are owed into the frame, until the frame holds
    /// `FRAME_TARGET_BYTES` or every slot is done; `Ok(true)` when every slot is done. A
    /// subscription made with `on_lag: "close"` that fell behind ends the connection (4008).
    pub fn fill_frame(&mut self, now: Instant) -> Result<bool, End> {
        while let Some(&slot) = self.work.get(self.work_done) {
            self.work_done += 1;
            let Some(view) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue; // unsubscribed since it was marked
            };
            let emitted =
                FRAME_STATS.with_borrow_mut(|stats| view.emit_latest(now, &mut self.frame, stats));
            match emitted {
                Emitted::NotBefore(at) => match &mut self.deferred {
                    Some(d) => {
                        if !d.slots.contains(&slot) {
                            d.slots.push(slot);
                        }
                        d.until = d.until.min(at);
                    }
                    None => {
                        self.deferred = Some(Box::new(super::Deferred {
                            slots: vec![slot],
                            until: at,
                        }))
                    }
                },
                Emitted::Lagged => {
                    return Err(End::Close(
                        close::SLOW_CONSUMER,
                        "lagged: subscribed with on_lag close",
                    ))
                }
                Emitted::Restarted => {
                    return Err(End::Close(
                        close::SERVICE_RESTART,
                        "the quote source restarted: reconnect for fresh snapshots",
                    ))
                }
                Emitted::Nothing | Emitted::Wrote => {}
            }
            if self.frame.len_bytes() >= FRAME_TARGET_BYTES {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The frame built so far (replies, snapshots, updates), or `None` when nothing was written.
    pub fn take_frame(&mut self) -> Option<ByteString> {
        self.frame.take()
    }

    /// Accounts for a frame the socket has taken (`handed`: when), and starts the next one's counts.
    pub fn frame_sent(&mut self, bytes: usize, handed: Instant) {
        FRAME_STATS.with_borrow_mut(|stats| self.frame_sent_with(bytes, handed, stats));
    }

    /// The counts of the frame just built, for a frame that waits for its socket: the worker's
    /// other connections build theirs meanwhile.
    fn take_frame_stats() -> EmitStats {
        FRAME_STATS.with_borrow_mut(std::mem::take)
    }

    /// `frame_sent` with the frame's counts (`s`, cleared).
    fn frame_sent_with(&self, bytes: usize, handed: Instant, s: &mut EmitStats) {
        let m = &self.shared.metrics;
        m.frames_sent.inc();
        m.bytes_sent.inc_by(bytes as u64);
        if s.updates > 0 {
            self.updates_sent.inc_by(s.updates);
            m.updates_conflated.inc_by(s.conflated);
        }
        if s.snapshots > 0 {
            m.snapshots_sent.inc_by(s.snapshots);
        }
        if s.trades + s.trades_lost + s.bars > 0 {
            let transport = match self.frame.framing() {
                crate::frame::Framing::JsonArray => "ws",
                crate::frame::Framing::Sse => "sse",
            };
            m.trades_sent
                .with_label_values(&[transport])
                .inc_by(s.trades);
            m.trades_lost
                .with_label_values(&[transport])
                .inc_by(s.trades_lost);
            m.bars_sent.with_label_values(&[transport]).inc_by(s.bars);
            s.trades = 0;
            s.trades_lost = 0;
            s.bars = 0;
        }
        if !s.tick_in.is_empty() {
            observe_latency(
                m,
                s.tick_in
                    .drain(..)
                    .map(|tick_in| handed.saturating_duration_since(tick_in).as_secs_f64()),
            );
        }
        s.updates = 0;
        s.conflated = 0;
        s.snapshots = 0;
    }
}

impl Connection {
    /// Writes everything owed: a pong, then for every dirty (or due deferred) slot whatever its view
    /// says, batched into as few frames as fit `FRAME_TARGET_BYTES`. True when a frame left.
    pub(super) async fn flush(&mut self) -> Result<bool, End> {
        // What a write from the shard's pass left unsent goes first (`write_now`).
        self.drained().await?;
        if let Some(payload) = self.pong_owed.take() {
            self.send(OpCode::Pong, *payload).await?;
        }
        let now = Instant::now();
        self.session.begin_flush(now);
        let mut sent = false;
        loop {
            let done = self.session.fill_frame(now);
            sent |= self.send_frame().await?;
            if done? {
                return Ok(sent);
            }
        }
    }

    /// Writes the connection's marked slots now, from its worker's shard pass
    /// (`fanout::Shard::run_pass`), without waking its task: true when everything marked
    /// left and the socket took all of it, or when the connection is in its batching window (its
    /// marks wait, and the shard writes it when the window ends: `hold`). False leaves the rest to
    /// the task, which the shard then wakes: a clock event is pending, a frame did not fit the
    /// socket (the task waits for it, with the slow-consumer timeout), `max_hz` moved a deadline
    /// (the task's timer), or the connection must end (`ending`).
    ///
    /// Backpressure stays where it was: nothing waits here, and a socket that does not take a
    /// frame hands the connection back to its task, which stops writing until the socket drains.
    pub(super) fn write_now(&mut self) -> bool {
        if self.ending.is_some() || self.pong_owed.is_some() || !self.socket.is_drained() {
            return false;
        }
        let now = Instant::now();
        if self.is_held(now) {
            // The marks wait: the shard hands the connection over again when its window ends.
            return true;
        }
        let deferred_before = self.session.deferred_until();
        if !self.session.begin_flush_in_pass(now) {
            return false;
        }
        loop {
            let done = self.session.fill_frame(now);
            match self.start_frame() {
                // `now` for the time handed: one clock read per write, microseconds early.
                Ok(Some(bytes)) => {
                    self.session.frame_sent(bytes, now);
                    // The write's first frame starts the window (its later frames are this
                    // write's too).
                    if !self.is_held(now) {
                        self.hold(now);
                    }
                }
                Ok(None) => {}
                Err(end) => {
                    self.ending = Some(Box::new(end));
                    return false;
                }
            }
            match done {
                Err(end) => {
                    self.ending = Some(Box::new(end));
                    return false;
                }
                Ok(true) => break,
                Ok(false) if !self.socket.is_drained() => return false,
                Ok(false) => {}
            }
        }
        self.socket.is_drained() && self.session.deferred_until() == deferred_before
    }

    /// Hands the current frame to the socket and accounts for it; false when there was none.
    pub(super) async fn send_frame(&mut self) -> Result<bool, End> {
        let Some(bytes) = self.start_frame()? else {
            return Ok(false);
        };
        // A frame that must wait takes its counts along: the worker's other connections fill
        // their frames meanwhile.
        let waits = (!self.socket.is_drained()).then(Session::take_frame_stats);
        self.drained().await?;
        match waits {
            None => self.session.frame_sent(bytes, Instant::now()),
            Some(mut stats) => self
                .session
                .frame_sent_with(bytes, Instant::now(), &mut stats),
        }
        Ok(true)
    }

    /// Starts the frame built so far on the socket, without waiting (the part of a write the
    /// shard's pass and the task share): its length, or `None` when nothing was built.
    fn start_frame(&mut self) -> Result<Option<usize>, End> {
        let Some(frame) = self.session.take_frame() else {
            return Ok(None);
        };
        let bytes = frame.len();
        self.socket
            .start(OpCode::Text, frame.into_bytes())
            .map_err(|_| End::Gone)?;
        Ok(Some(bytes))
    }

    pub(super) async fn send_ping(&mut self) -> Result<(), End> {
        self.send(OpCode::Ping, Bytes::new()).await
    }

    /// Sends one frame and waits until the kernel has all of it.
    async fn send(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), End> {
        self.socket.start(opcode, payload).map_err(|_| End::Gone)?;
        self.drained().await
    }

    /// Waits until the kernel has every frame started.
    ///
    /// Backpressure is decided here: nearly always the socket takes the frame at once and nothing
    /// waits. When it does not (the client's receive window and the kernel's send buffer are full),
    /// the session stops reading and writing until it does, while the index keeps merging this
    /// connection's updates into its slots. A socket that accepts no byte for
    /// `slow_consumer_timeout_ms` is a slow consumer (close 4008). Shutdown and token expiry still
    /// end the wait: the close then goes after the unsent bytes if the socket takes them within
    /// the close grace, and the connection is reset otherwise.
    pub(super) async fn drained(&mut self) -> Result<(), End> {
        if self.socket.is_drained() {
            return Ok(());
        }
        // Boxed: only a connection whose socket is full waits here, and the wait's timers would
        // otherwise be part of every connection's task, idle ones included.
        Box::pin(self.wait_for_socket()).await
    }

    async fn wait_for_socket(&mut self) -> Result<(), End> {
        let shared = &self.session.shared;
        let stall = Duration::from_millis(shared.limits.slow_consumer_timeout_ms);
        let _stalled = Stalled::new(&shared.metrics.connections_stalled);
        let expires = self.expires;
        tokio::select! {
            drained = self.socket.drain(stall) => drained.map_err(End::from),
            _ = shared.shutdown.cancelled() => Err(End::Close(close::GOING_AWAY, "gateway shutting down")),
            _ = tokio::time::sleep_until(expires.unwrap_or_else(tokio::time::Instant::now)), if expires.is_some() => {
                Err(End::Close(close::POLICY, "token expired"))
            }
        }
    }
}

thread_local! {
    /// This worker's connections, for its shard's writes (`write_now`): a connection's
    /// `writer_key` is its index here.
    static WRITERS: RefCell<Writers> = RefCell::default();
}

#[derive(Default)]
struct Writers {
    conns: Vec<RcWeak<RefCell<Connection>>>,
    free: Vec<u32>,
}

/// A connection's place in `WRITERS` and in its shard's clock, for as long as its task serves it.
/// Released on drop, so a task that is cancelled or panics leaves no entry behind in either: the
/// polite close (`Session::leave_all`) is not the only way out.
pub(super) struct Registered<'a> {
    pending: &'a ConnPending,
    key: u32,
}

impl<'a> Registered<'a> {
    pub(super) fn new(pending: &'a ConnPending, conn: &Rc<RefCell<Connection>>) -> Registered<'a> {
        let key = WRITERS.with_borrow_mut(|w| match w.free.pop() {
            Some(key) => {
                w.conns[key as usize] = Rc::downgrade(conn);
                key
            }
            None => {
                w.conns.push(Rc::downgrade(conn));
                (w.conns.len() - 1) as u32
            }
        });
        pending.set_writer_key(Some(key));
        Registered { pending, key }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        // No more marks, and the shard's clock forgets the connection at its next tick.
        self.pending.close();
        self.pending.set_writer_key(None);
        // `try_with`: a runtime dropped at thread exit may drop this after the registry.
        let _ = WRITERS.try_with(|w| {
            let mut w = w.borrow_mut();
            w.conns[self.key as usize] = RcWeak::new();
            w.free.push(self.key);
        });
    }
}

/// What the worker's shard calls on its connections (`fanout::PassHooks`).
pub(super) fn pass_hooks(shared: &SessionShared) -> PassHooks {
    PassHooks {
        write: write_from_pass,
        end_of_pass: publish_latency,
        busy_percent: shared.limits.fanout_busy_percent,
        rested: shared.metrics.fanout_rest_seconds.clone(),
    }
}

/// The shard pass's way onto a connection (`fanout::PassHooks::write`): writes its news
/// (`Connection::write_now`) unless its task is using it (then the borrow fails, and the shard
/// wakes the task).
fn write_from_pass(pending: &ConnPending) -> bool {
    let Some(key) = pending.writer_key() else {
        return false;
    };
    let Some(conn) = WRITERS.with_borrow(|w| w.conns.get(key as usize).and_then(RcWeak::upgrade))
    else {
        return false;
    };
    let Ok(mut conn) = conn.try_borrow_mut() else {
        return false;
    };
    conn.write_now()
}

struct Stalled<'a>(&'a prometheus::IntGauge);

impl<'a> Stalled<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Stalled<'a> {
        gauge.inc();
        Stalled(gauge)
    }
}

impl Drop for Stalled<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
