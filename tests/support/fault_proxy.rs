//! A TCP proxy between the HTTP poller and its upstream that injects the faults a real network has:
//! connection resets, stalls, and responses cut off halfway.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Accept, then reset the connection (SO_LINGER 0) without answering.
    Reset,
    /// Accept and read the request, then never answer.
    Stall,
    /// Forward the request, then send only the first half of the upstream's response and close.
    HalfResponse,
}

#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FaultProxy {
            addr: listener.local_addr().unwrap(),
            fault: Arc::new(Mutex::new(Fault::None)),
        };
        let fault = proxy.fault.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = *fault.lock().unwrap();
                tokio::spawn(serve(client, upstream, mode));
            }
        });
        proxy
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Fault) {
    match fault {
        Fault::Reset => {
            let _ = client.set_zero_linger();
        }
        Fault::Stall => {
            let _ = read_request(&mut client).await;
            // Hold the connection open, answering nothing, until the poller gives up.
            let mut sink = [0u8; 64];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Fault::None | Fault::HalfResponse => {
            let Some(request) = read_request(&mut client).await else {
                return;
            };
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            if up.write_all(&request).await.is_err() {
                return;
            }
            let mut response = Vec::new();
            let _ = up.read_to_end(&mut response).await;
            let cut = if fault == Fault::HalfResponse {
                response.len() / 2
            } else {
                response.len()
            };
            let _ = client.write_all(&response[..cut]).await;
            let _ = client.shutdown().await;
        }
    }
}
