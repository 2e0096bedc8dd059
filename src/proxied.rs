//! Stage 8, HTTP, before the request: the PROXY protocol header (v1 text or v2 binary, as HAProxy,
//! nginx's `proxy_protocol` and cloud TCP load balancers send it) that a trusted load balancer puts
//! before a connection's first byte to say whose connection it is. Read only from
//! `[access] trusted_proxies`, and only with `[access] proxy_protocol = true`; parsed by the `ppp`
//! crate. The address it names is the client's for every per-address rule (`admit.rs`).

use std::cell::Cell;
use std::net::IpAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The client a PROXY protocol header named, kept with its connection (actix's connection data,
/// `on_connect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxiedClient(pub IpAddr);

/// The longest header read: v1 is at most 107 bytes, v2 16 plus its addresses and TLVs.
const MAX_HEADER_BYTES: usize = 4096;

thread_local! {
    /// The client of the connection this worker is handing to actix-http (`hand_over`), taken by
    /// `on_connect` while actix-http's `call` builds the connection, before it first awaits.
    static HANDED_OVER: Cell<Option<IpAddr>> = const { Cell::new(None) };
}

/// Why a connection from a trusted proxy was dropped before its request.
#[derive(Debug, PartialEq, Eq)]
pub enum NoHeader {
    /// It did not start with a valid PROXY header.
    Invalid,
    /// It closed, or the deadline passed, before a whole header came.
    Incomplete,
}

/// Reads (consumes) the PROXY header that starts `io`, by `deadline`: the client's address, or
/// `None` for a header that names none (`LOCAL`, `UNKNOWN`: the balancer's own health check).
pub async fn read_header(
    io: &mut TcpStream,
    deadline: tokio::time::Instant,
) -> Result<Option<IpAddr>, NoHeader> {
    let mut buf = vec![0u8; MAX_HEADER_BYTES];
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, io.ready(tokio::io::Interest::READABLE)).await {
            Ok(Ok(ready)) if !ready.is_read_closed() => {}
            _ => return Err(NoHeader::Incomplete),
        }
        let n = io.peek(&mut buf).await.map_err(|_| NoHeader::Incomplete)?;
        if n == 0 {
            return Err(NoHeader::Incomplete);
        }
        if n > seen {
            seen = n;
            use ppp::PartialResult;
            let parsed = ppp::HeaderResult::parse(&buf[..n]);
            if !parsed.is_incomplete() {
                let (len, client) = match parsed {
                    ppp::HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(h.addresses)),
                    ppp::HeaderResult::V2(Ok(h)) => (h.len(), v2_source(h.addresses)),
                    _ => return Err(NoHeader::Invalid),
                };
                // Consumed exactly: what follows is the request, for the session or actix.
                io.read_exact(&mut buf[..len])
                    .await
                    .map_err(|_| NoHeader::Incomplete)?;
                return Ok(client);
            }
            if n == buf.len() || whole_yet_incomplete(&buf[..n]) {
                return Err(NoHeader::Invalid);
            }
        }
        // Part of a header: wait for the rest (peeking leaves the socket readable, so `ready`
        // does not wait: the deadline is checked here).
        let pause = std::time::Duration::from_millis(2);
        if tokio::time::Instant::now() + pause > deadline {
            return Err(NoHeader::Incomplete);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Whether `bytes` hold a whole header by its own framing (a v1 line up to its CRLF, a v2 header
/// up to the length it states) that the parser still calls incomplete: a malformed one, which
/// more bytes cannot mend.
fn whole_yet_incomplete(bytes: &[u8]) -> bool {
    const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if bytes.starts_with(V2_SIGNATURE) {
        return bytes.len() >= 16
            && bytes.len() >= 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    }
    bytes.windows(2).any(|w| w == b"\r\n")
}

fn v1_source(addresses: ppp::v1::Addresses) -> Option<IpAddr> {
    match addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(a.source_address.into()),
        ppp::v1::Addresses::Tcp6(a) => Some(a.source_address.into()),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(addresses: ppp::v2::Addresses) -> Option<IpAddr> {
    match addresses {
        ppp::v2::Addresses::IPv4(a) => Some(a.source_address.into()),
        ppp::v2::Addresses::IPv6(a) => Some(a.source_address.into()),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    }
}

/// Names the client of the connection about to be handed to actix-http (its `call`, on this
/// worker's thread, with no await between this and `on_connect`).
pub fn hand_over(client: Option<IpAddr>) {
    HANDED_OVER.with(|c| c.set(client));
}

/// actix-http's `on_connect_ext`: keeps the handed-over client with the connection's data, so
/// that every request on it can read it (`conn_data::<ProxiedClient>()`).
pub fn on_connect(_io: &TcpStream, data: &mut actix_http::Extensions) {
    if let Some(client) = HANDED_OVER.with(Cell::take) {
        data.insert(ProxiedClient(client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both versions, as load balancers send them, read to their last byte; a health check's
    /// header names no client; anything else is refused.
    #[tokio::test]
    async fn headers_of_both_versions_are_read_exactly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90,
        ]);
        type Read = Result<Option<IpAddr>, NoHeader>;
        let cases: Vec<(Vec<u8>, Read)> = vec![
            (
                b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8080\r\nGET /".to_vec(),
                Ok(Some("203.0.113.9".parse().unwrap())),
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 5555 8080\r\nGET /".to_vec(),
                Ok(Some("2001:db8::7".parse().unwrap())),
            ),
            (b"PROXY UNKNOWN\r\nGET /".to_vec(), Ok(None)),
            (
                [v2, b"GET /".to_vec()].concat(),
                Ok(Some("198.51.100.7".parse().unwrap())),
            ),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Err(NoHeader::Invalid)),
            (
                b"PROXY TCP4 nonsense\r\nGET /".to_vec(),
                Err(NoHeader::Invalid),
            ),
        ];
        for (bytes, want) in cases {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut client, &bytes)
                .await
                .unwrap();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            let got = read_header(&mut server, deadline).await;
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&bytes));
            if got.is_ok() {
                let mut rest = [0u8; 5];
                server.read_exact(&mut rest).await.unwrap();
                assert_eq!(&rest, b"GET /", "the request follows, untouched");
            }
        }
    }
}
