//! The last resort of a connection's close: tearing its TCP socket down when actix cannot.
//!
//! actix-http never times out a blocked write: for a peer that stopped reading, the dispatcher waits
//! for writability forever, and a close frame queued behind ~2.8 MiB of unread data never leaves.
//! After its own grace period the gateway shuts the socket down (`shutdown(2)`), which fails the
//! dispatcher's pending write so that actix drops the connection and frees its file descriptor.
//!
//! Why a raw fd and `unsafe`: `HttpServer::on_connect` only lends the `TcpStream`. Duplicating the fd
//! there would be safe but would double the fds per connection, and this machine's hard limit is
//! 20,000: 10,000 connections would not fit. Recording the fd number is sound because the number is
//! only used while `alive` is true, see `SocketHandle::shut_down`.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::Bytes;

/// The connection's fd number, recorded by `on_connect` into the connection's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerFd(pub RawFd);

/// Lets a connection task shut its own socket down.
pub struct SocketHandle {
    fd: Option<RawFd>,
    alive: Rc<Cell<bool>>,
}

impl SocketHandle {
    /// Wraps the WebSocket response body so that `alive` turns false as soon as actix drops it.
    pub fn new(fd: Option<PeerFd>, body: BoxBody) -> (SocketHandle, TrackedBody) {
        let alive = Rc::new(Cell::new(true));
        (
            SocketHandle {
                fd: fd.map(|f| f.0),
                alive: alive.clone(),
            },
            TrackedBody { inner: body, alive },
        )
    }

    /// Shuts the socket down in both directions, if actix still holds it.
    #[allow(unsafe_code)]
    pub fn shut_down(&self) {
        use std::os::fd::FromRawFd;
        let Some(fd) = self.fd else { return };
        if !self.alive.get() {
            return;
        }
        // SAFETY: `alive` is true only while actix's response body for this connection exists, and
        // the body is dropped no later than the dispatcher that owns the TcpStream with this fd, so
        // the fd is open and still this connection's. The dispatcher and this task run on the same
        // actix worker thread (handler tasks are spawned locally), so nothing can close the fd between
        // the check above and the call below. ManuallyDrop: the fd stays owned by actix.
        let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The WebSocket response body, unchanged, plus the `alive` flag.
pub struct TrackedBody {
    inner: BoxBody,
    alive: Rc<Cell<bool>>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.alive.set(false);
    }
}

impl MessageBody for TrackedBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_next(cx)
    }
}
