//! The upgraded TCP connection, owned by its session: WebSocket frames in and out, with no queue,
//! task or buffer between the session and the kernel.
//!
//! Why not actix-ws: its `Session` sends every frame through a channel to actix-http's dispatcher,
//! which copies it into an 8 KiB write buffer and keeps an 8 KiB read buffer for the connection's
//! whole life: 16 KiB per idle connection, and a copy, a channel hop and a wake-up per frame. Here the frame the session built goes to the socket in one
//! syscall (`send` of a small frame copied with its header, or `sendmsg` of header + shared
//! payload bytes), and the read buffer exists only while bytes are waiting
//! to be parsed. Frames are parsed by actix-http's WebSocket codec, the same one actix-ws uses.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame, OpCode, ProtocolError};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bytes asked of the kernel per read. Clients send small ops, so one read nearly always holds all.
const READ_CHUNK: usize = 4096;
/// Frames up to this size (header included) are copied and written with `send` (`try_write_frame`).
const SEND_COPY_BYTES: usize = 1024;
/// Most buffers handed to one `sendmsg` when a backlog drains.
const WRITE_SLICES: usize = 16;
/// At most this much is read and thrown away after our close frame, while waiting for the peer's.
const LINGER_DISCARD_BYTES: usize = 64 * 1024;

/// Why a send did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The socket took no byte for the whole timeout: the peer is not reading.
    #[error("the socket accepted nothing for {0:?}")]
    Stalled(Duration),
    /// The peer is gone (reset, broken pipe).
    #[error("socket write failed: {0}")]
    Io(#[from] io::Error),
}

pub struct WsSocket {
    io: TcpStream,
    /// Bytes as they are, no WebSocket framing: an SSE stream over an HTTP response (what the
    /// client sends is read and dropped, only its end matters).
    raw: bool,
    codec: Codec,
    read_closed: bool,
    /// At most 16 MiB (`config.rs`): 4 bytes beside the two flags, not 8 of their own.
    max_frame_bytes: u32,
    /// Received bytes not yet parsed into a frame; no allocation while there are none.
    read_buf: BytesMut,
    /// Frame bytes the kernel has not taken yet, in order; `None` unless the peer reads slower
    /// than we write (boxed: an empty queue inline would take 32 bytes of every connection).
    #[allow(clippy::box_collection)] // 8 bytes inline, for the rare backlog
    unsent: Option<Box<VecDeque<Bytes>>>,
}

impl WsSocket {
    /// `leftover`: bytes that arrived after the handshake request, already read by actix.
    pub fn new(io: TcpStream, leftover: &[u8], max_frame_bytes: usize) -> WsSocket {
        WsSocket {
            io,
            raw: false,
            codec: Codec::new().max_size(max_frame_bytes),
            max_frame_bytes: u32::try_from(max_frame_bytes).unwrap_or(u32::MAX),
            read_buf: BytesMut::from(leftover),
            read_closed: false,
            unsent: None,
        }
    }

    /// A socket that carries bytes as they are (an SSE response): `start` writes payloads without a
    /// frame header, `recv` only waits for the client to close, and `close` sends no close frame.
    pub fn raw(io: TcpStream) -> WsSocket {
        WsSocket {
            raw: true,
            ..WsSocket::new(io, &[], 0)
        }
    }

    /// The next frame from the client; `None` once the client closed its side. Polled (the
    /// session's task holds the connection only while it polls: the shard's pass writes between).
    /// Cancel-safe: partial frames stay in `read_buf`. Readiness is awaited with
    /// `poll_read_ready`, which keeps this task's waker in the socket's own slot: the session
    /// polls for client frames on every wake-up, and the `readable()` future would add and remove
    /// a waiter (under a lock) each time.
    pub(super) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, ProtocolError>>> {
        loop {
            match self.parse() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if self.read_closed {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(self.io.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(ProtocolError::Io(e))));
            }
            self.read_buf.reserve(READ_CHUNK);
            match self.io.try_read_buf(&mut self.read_buf) {
                Ok(0) => self.read_closed = true,
                Ok(_) => {}
                // Readiness was stale; the next poll_read_ready registers for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(ProtocolError::Io(e)))),
            }
        }
    }

    /// The next frame already received, without waiting for the socket.
    pub fn recv_buffered(&mut self) -> Result<Option<Frame>, ProtocolError> {
        self.parse()
    }

    /// The client's address, for the security log.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.io.peer_addr().ok()
    }

    fn parse(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.raw {
            // Nothing a client sends on an SSE stream means anything.
            self.read_buf.clear();
        }
        if self.read_buf.is_empty() {
            // Idle connections hold no read buffer (the biggest part of an idle connection's
            // cost), not even an empty one with no capacity left: it may still share the buffer
            // its frames were split from.
            self.read_buf = BytesMut::new();
            return Ok(None);
        }
        // The codec waits for a whole frame before it checks the size; refuse from the header, so
        // that a client announcing a huge frame cannot make us buffer it first.
        if declared_len(&self.read_buf).is_some_and(|len| len > u64::from(self.max_frame_bytes)) {
            self.read_buf = BytesMut::new();
            return Err(ProtocolError::Overflow);
        }
        self.codec.decode(&mut self.read_buf)
    }

    /// Starts sending one unfragmented frame: written at once if the socket takes it (the common
    /// case: no allocation, no copy, one syscall), otherwise the rest waits in `unsent` for `drain`.
    pub fn start(&mut self, opcode: OpCode, payload: Bytes) -> io::Result<()> {
        let mut head = [0u8; 10];
        let head_len = if self.raw {
            0
        } else {
            frame_head(&mut head, opcode, payload.len())
        };
        let head = &head[..head_len];
        if self.is_drained() {
            let written = match self.try_write_frame(head, &payload) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if written >= head_len {
                let rest = written - head_len;
                if rest < payload.len() {
                    self.queue().push_back(payload.slice(rest..));
                }
                return Ok(());
            }
            self.queue()
                .push_back(Bytes::copy_from_slice(&head[written..]));
        } else if !head.is_empty() {
            self.queue().push_back(Bytes::copy_from_slice(head));
        }
        if !payload.is_empty() {
            self.queue().push_back(payload);
        }
        Ok(())
    }

    /// The queue of unsent bytes, made when the kernel first leaves some.
    fn queue(&mut self) -> &mut VecDeque<Bytes> {
        self.unsent.get_or_insert_default()
    }

    /// One attempt to write a frame's header and payload, without waiting.
    ///
    /// A small frame (nearly every update frame) is copied into one buffer on the stack and
    /// handed to `send(2)`: measured, that is cheaper in the kernel than `writev(2)`'s file layer
    /// and its iovec import (docs/benchmarks.md), and the copy is a few hundred bytes. Larger
    /// frames go uncopied with `sendmsg(2)`, which skips the file layer too.
    fn try_write_frame(&self, head: &[u8], payload: &[u8]) -> io::Result<usize> {
        let len = head.len() + payload.len();
        if len > SEND_COPY_BYTES {
            return self.try_send_vectored(&[IoSlice::new(head), IoSlice::new(payload)]);
        }
        let mut buf = [0u8; SEND_COPY_BYTES];
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..len].copy_from_slice(payload);
        // `try_io`: a `WouldBlock` clears the socket's readiness, as tokio's own writes do.
        self.io.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(&self.io).send(&buf[..len])
        })
    }

    /// `sendmsg(2)` rather than tokio's `writev(2)`: a socket's own call, without the file layer
    /// (docs/benchmarks.md, "Decisions these figures back").
    fn try_send_vectored(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.io.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(&self.io).send_vectored(slices)
        })
    }

    /// Whether everything started has reached the kernel.
    pub fn is_drained(&self) -> bool {
        self.unsent.as_ref().is_none_or(|q| q.is_empty())
    }

    /// Writes what is left of the started frames. `Stalled` if the socket accepts nothing for
    /// `stall`: every byte it takes restarts the clock.
    pub async fn drain(&mut self, stall: Duration) -> Result<(), SendError> {
        while let Some(unsent) = self.unsent.as_ref().filter(|q| !q.is_empty()) {
            let slices: Vec<IoSlice<'_>> = unsent
                .iter()
                .take(WRITE_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            match self.try_send_vectored(&slices) {
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(stall, self.io.writable()).await {
                        Ok(ready) => ready?,
                        Err(_elapsed) => return Err(SendError::Stalled(stall)),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        // A drained backlog leaves no buffer behind.
        self.unsent = None;
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(unsent) = self.unsent.as_mut() else {
                return;
            };
            let Some(front) = unsent.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            unsent.pop_front();
        }
    }

    /// Sends a close frame (after whatever is unsent), then closes politely: our side is shut so
    /// the client sees the close and then end-of-stream, and what the client still sends is read
    /// and dropped until it closes too. Closing a socket with unread bytes in it would make the
    /// kernel send a reset, and a reset can destroy the close frame before the client reads it.
    /// Everything is bounded by `grace`; past it the connection is reset.
    pub async fn close(mut self, reason: Option<CloseReason>, grace: Duration) {
        // RFC 6455 §5.5.1: the code, then the reason in UTF-8 (ours are short constants).
        let mut payload = Vec::new();
        if let Some(reason) = reason {
            payload.extend_from_slice(&u16::from(reason.code).to_be_bytes());
            payload.extend_from_slice(reason.description.unwrap_or_default().as_bytes());
        }
        let polite = async {
            if !self.raw {
                self.start(OpCode::Close, payload.into()).ok()?;
            }
            self.drain(grace).await.ok()?;
            self.io.shutdown().await.ok()?;
            self.read_until_closed().await;
            Some(())
        };
        if tokio::time::timeout(grace, polite)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            self.reset();
        }
    }

    async fn read_until_closed(&mut self) {
        let mut discarded = 0;
        let mut scratch = [0u8; 1024];
        while discarded < LINGER_DISCARD_BYTES {
            if self.io.readable().await.is_err() {
                return;
            }
            match self.io.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Drops the connection at once, with a reset: for peers that take nothing (slow consumers past
    /// their grace). Their unsent data would otherwise sit in the kernel until TCP gives up.
    pub fn reset(self) {
        let _ = self.io.set_zero_linger();
    }
}

/// Writes the header of an unmasked, final frame of `len` payload bytes (RFC 6455 §5.2); returns
/// its length.
fn frame_head(head: &mut [u8; 10], opcode: OpCode, len: usize) -> usize {
    head[0] = 0x80 | u8::from(opcode);
    if len < 126 {
        head[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// The payload length a frame header announces, once enough of the header has arrived.
fn declared_len(buf: &[u8]) -> Option<u64> {
    let len7 = buf.get(1)? & 0x7f;
    match len7 {
        126 => Some(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?).into()),
        127 => Some(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => Some(n.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames we write parse as the same frames in a client's codec.
    #[test]
    fn headers_round_trip_through_a_client_codec() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let payload = vec![b'x'; len];
            let mut head = [0u8; 10];
            let n = frame_head(&mut head, OpCode::Text, len);
            let mut wire = BytesMut::from(&head[..n]);
            wire.extend_from_slice(&payload);
            assert_eq!(declared_len(&wire), Some(len as u64));
            let mut client = Codec::new().client_mode().max_size(1 << 20);
            match client.decode(&mut wire).unwrap() {
                Some(Frame::Text(got)) => assert_eq!(got.len(), len),
                other => panic!("{len}: {other:?}"),
            }
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn a_partial_header_announces_nothing_yet() {
        assert_eq!(declared_len(&[0x81]), None);
        assert_eq!(declared_len(&[0x81, 0xfe, 0x01]), None);
        assert_eq!(declared_len(&[0x81, 0xfe, 0x01, 0x00]), Some(256));
    }
}
