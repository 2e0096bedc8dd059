//! Session, outbound: dirty slots → frames → the socket, and the slow-consumer timeout.

use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::{Connection, End};
use crate::conflate::Emitted;

/// A frame is sent once it holds this many bytes, so that a drain of many symbols (a 1,000-symbol
/// subscribe, a slow client catching up) leaves as several frames rather than one huge one.
const FRAME_TARGET_BYTES: usize = 32 * 1024;

impl Connection {
    /// Writes everything owed: a pong, then for every dirty (or due deferred) slot whatever its view
    /// says, batched into as few frames as fit `FRAME_TARGET_BYTES`.
    pub(super) async fn flush(&mut self) -> Result<(), End> {
        if let Some(payload) = self.pong_owed.take() {
            let timeout = self.slow_consumer_timeout();
            deliver(timeout, self.session.pong(&payload)).await?;
        }
        let now = Instant::now();
        let mut dirty = std::mem::take(&mut self.scratch);
        self.pending.take(&mut dirty);
        if self.deferred_until.is_some_and(|at| at <= now) {
            // Due or not, every deferred slot is looked at again; emit() defers those still early.
            dirty.append(&mut self.deferred);
            self.deferred_until = None;
        }
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
                self.send_frame().await?;
            }
        }
        dirty.clear();
        self.scratch = dirty;
        self.send_frame().await
    }

    /// Hands the current frame to the socket and accounts for it.
    async fn send_frame(&mut self) -> Result<(), End> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        let bytes = frame.len() as u64;
        let timeout = self.slow_consumer_timeout();
        deliver(timeout, self.session.text(frame)).await?;
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
        Ok(())
    }

    pub(super) async fn send_ping(&mut self) -> Result<(), End> {
        let timeout = self.slow_consumer_timeout();
        deliver(timeout, self.session.ping(b"")).await
    }

    fn slow_consumer_timeout(&self) -> Duration {
        Duration::from_millis(self.shared.limits.slow_consumer_timeout_ms)
    }
}

/// Awaits one send into actix-ws, for at most `timeout`.
///
/// actix-ws queues 32 messages and then the socket buffers ~2.8 MiB before a send blocks; a send
/// that stays blocked for the whole timeout means the socket accepted nothing in that time, which
/// is the protocol's definition of a slow consumer (close 4008).
async fn deliver(
    timeout: Duration,
    send: impl std::future::Future<Output = Result<(), actix_ws::Closed>>,
) -> Result<(), End> {
    let mut send = std::pin::pin!(send);
    // Nearly every send completes at once (actix-ws has room): only a blocked one arms a timer.
    let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
    let done = match first {
        Poll::Ready(done) => done,
        Poll::Pending => match tokio::time::timeout(timeout, send).await {
            Ok(done) => done,
            Err(_elapsed) => return Err(End::SlowConsumer),
        },
    };
    done.map_err(|actix_ws::Closed| End::Gone)
}
