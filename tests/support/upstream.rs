//! A local HTTP upstream for the polling adapter: answers `GET` with the body the test sets, or with
//! the fault the test picks (HTTP 500, a stall past the poller's timeout, garbage, a reset), or stops
//! listening altogether (a vendor's API gone: every connection refused).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::Client;

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Good,
    Status500,
    Stall(Duration),
    Garbage,
    /// Close the connection without answering.
    Reset,
    /// Answer 302 with this `Location`.
    Redirect(String),
}

#[derive(Clone)]
pub struct Upstream {
    pub base: String,
    state: Arc<Mutex<(Mode, String)>>,
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    /// Every request head received (request line and headers).
    heads: Arc<Mutex<Vec<String>>>,
    /// The accept loop, which owns the listener: aborting it closes the port.
    accept: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl Upstream {
    pub async fn start(body: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let up = Upstream {
            base,
            state: Arc::new(Mutex::new((Mode::Good, body.to_string()))),
            requests: Arc::default(),
            heads: Arc::default(),
            accept: Arc::default(),
        };
        let serving = up.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let up = serving.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    up.heads
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..got]).into_owned());
                    up.requests
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (mode, body) = up.state.lock().unwrap().clone();
                    if let Mode::Redirect(location) = &mode {
                        let response = format!(
                            "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = sock.write_all(response.as_bytes()).await;
                        let _ = sock.shutdown().await;
                        return;
                    }
                    let (status, body) = match mode {
                        Mode::Good => ("200 OK", body),
                        Mode::Status500 => ("500 Internal Server Error", "oops".to_string()),
                        Mode::Stall(d) => {
                            tokio::time::sleep(d).await;
                            ("200 OK", body)
                        }
                        Mode::Garbage => ("200 OK", "{\"data\": [ {\"sym\": ".to_string()),
                        Mode::Reset | Mode::Redirect(_) => return,
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        *up.accept.lock().unwrap() = Some(accept.abort_handle());
        up
    }

    /// Stops listening: from now on every connection to `base` is refused, as when the upstream's
    /// process is gone. (An exchange already under way finishes.)
    pub fn stop(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn set(&self, mode: Mode) {
        self.state.lock().unwrap().0 = mode;
    }

    pub fn set_body(&self, body: &str) {
        self.state.lock().unwrap().1 = body.to_string();
    }
}

/// Reads messages until `pred` matches, checking that every price the client is sent is one the
/// upstream served: the gateway may show an old price, never a wrong one.
pub async fn until_served(
    c: &mut Client,
    served: &HashSet<String>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let m = c.next().await;
        for field in ["bid", "ask", "last"] {
            if let Some(p) = m.get(field).and_then(serde_json::Value::as_str) {
                assert!(served.contains(p), "a price the upstream never sent: {m}");
            }
        }
        if pred(&m) {
            return m;
        }
    }
}
