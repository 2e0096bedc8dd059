//! Session, outbound: dirty slots → frames → the socket, and the slow-consumer timeout.

use std::time::Duration;

use actix_http::ws::OpCode;
use bytes::Bytes;
use tokio::time::Instant;

use super::{Connection, End};
use crate::conflate::Emitted;

/// A frame is sent once it holds this many bytes, so that a drain of many symbols (a 1,000-symbol
/// subscribe, a slow client catching up) leaves as several frames rather than one huge one.
const FRAME_TARGET_BYTES: usize = 32 * 1024;

impl Connection {
    /// Writes everything owed: a pong, then for every dirty (or due deferred) slot whatever its view
    /// says, batched into as few frames as fit `FRAME_TARGET_BYTES`. True when a frame left.
    pub(super) async fn flush(&mut self) -> Result<bool, End> {
        if let Some(payload) = self.pong_owed.take() {
            self.send(OpCode::Pong, payload).await?;
        }
        let now = Instant::now();
        let mut dirty = std::mem::take(&mut self.scratch);
        self.pending.take(&mut dirty);
        if self.deferred_until.is_some_and(|at| at <= now) {
            // Due or not, every deferred slot is looked at again; emit() defers those still early.
            dirty.append(&mut self.deferred);
            self.deferred_until = None;
        }
        let mut sent = false;
        for &slot in &dirty {
            let Some(view) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue; // unsubscribed since it was marked
            };
            if let Emitted::NotBefore(at) = view.emit_latest(
                &mut self.catch_up,
                now.into_std(),
                &mut self.frame,
                &mut self.stats,
            ) {
                let at = Instant::from_std(at);
                if !self.deferred.contains(&slot) {
                    self.deferred.push(slot);
                }
                self.deferred_until = Some(self.deferred_until.map_or(at, |d| d.min(at)));
            }
            if self.frame.len_bytes() >= FRAME_TARGET_BYTES {
                sent |= self.send_frame().await?;
            }
        }
        dirty.clear();
        self.scratch = dirty;
        Ok(self.send_frame().await? | sent)
    }

    /// Hands the current frame to the socket and accounts for it; false when there was none.
    async fn send_frame(&mut self) -> Result<bool, End> {
        let Some(frame) = self.frame.take() else {
            return Ok(false);
        };
        let bytes = frame.len() as u64;
        self.send(OpCode::Text, frame.into_bytes()).await?;
        let handed = std::time::Instant::now();
        let m = &self.shared.metrics;
        m.frames_sent.inc();
        m.bytes_sent.inc_by(bytes);
        let s = &mut self.stats;
        if s.updates > 0 {
            m.updates_sent.inc_by(s.updates);
            m.updates_conflated.inc_by(s.conflated);
        }
        if s.snapshots > 0 {
            m.snapshots_sent.inc_by(s.snapshots);
        }
        for tick_in in s.tick_in.drain(..) {
            self.latency
                .observe(handed.saturating_duration_since(tick_in).as_secs_f64());
        }
        self.latency.flush();
        s.updates = 0;
        s.conflated = 0;
        s.snapshots = 0;
        Ok(true)
    }

    pub(super) async fn send_ping(&mut self) -> Result<(), End> {
        self.send(OpCode::Ping, Bytes::new()).await
    }

    /// Sends one frame and waits until the kernel has all of it.
    ///
    /// Backpressure is decided here: nearly always the socket takes the frame at once and nothing
    /// waits. When it does not (the client's receive window and the kernel's send buffer are full),
    /// the session stops reading and writing until it does, while the index keeps merging this
    /// connection's updates into its slots. A socket that accepts no byte for
    /// `slow_consumer_timeout_ms` is a slow consumer (close 4008).
    async fn send(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), End> {
        self.socket.start(opcode, payload).map_err(|_| End::Gone)?;
        if !self.socket.is_drained() {
            let stall = Duration::from_millis(self.shared.limits.slow_consumer_timeout_ms);
            self.socket.drain(stall).await?;
        }
        Ok(())
    }
}
