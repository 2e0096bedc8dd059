//! Stage 7, the session over Server-Sent Events: `GET /v1/stream?symbols=...[&max_hz=...]`, for
//! `curl -N`, `EventSource` and networks whose proxies break WebSockets. It is a session like any
//! other: the same slots, conflation, `max_hz`, batching and slow-consumer rule, counted in
//! `max_connections` and the per-client limits, ended at shutdown and token expiry.
//!
//! Like a WebSocket, the stream owns its socket (`WsSocket::raw`), so that a client that stops
//! reading is closed after `slow_consumer_timeout_ms` (actix's response bodies give no way to
//! give up on a stalled socket). The public listener hands a connection here when its first bytes
//! are `GET /v1/stream` (`is_stream_request`); since the gateway does not keep plain HTTP
//! connections alive, every request is the first on its connection. The response is delimited by
//! the connection's end (HTTP/1.1 allows it with `Connection: close`): events need no chunk framing.

use std::time::Duration;

use actix_codec::Decoder;
use actix_http::{h1, StatusCode};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::access::CorsOrigin;
use crate::admit::{admit, Admitted, ClientRequest, Refused};
use crate::frame::Framing;
use crate::http::rest::{resolve, symbols_param, Query};
use crate::protocol::{push_json_str, ErrorCode, OnLag, MAX_HZ_RANGE};
use crate::session::socket::WsSocket;
use crate::session::{wants_for, Connection, Transport};
use crate::state::AppState;
use crate::view::Wants;

/// The path of a stream.
const STREAM_PATH: &str = "/v1/stream";
/// Most headers a request may have (actix-http's limit: past it, actix answers 431).
const MAX_HEADERS: usize = 96;
/// A request head larger than this is refused (431).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Whether a new connection's first request is `GET /v1/stream`, decided on its parsed head
/// (httparse, as actix parses it), peeked without taking it: the connection goes to actix
/// otherwise, bytes intact. So a request line in absolute form (`GET http://host/v1/stream`),
/// after a leading empty line, or with its path percent-encoded (`/v1/strea%6D`) is a stream like
/// any other, and a head that does not parse is actix's to answer (400, 431). A client that sends
/// its head slowly is looked at again with growing pauses, until `deadline` (the whole request's).
pub async fn is_stream_request(io: &TcpStream, deadline: tokio::time::Instant) -> bool {
    // Most heads fit in 1 KiB: the buffer grows to the limit only for one that does not.
    let mut buf = vec![0u8; 1024];
    let mut pause = Duration::from_millis(2);
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, io.ready(tokio::io::Interest::READABLE)).await {
            // The client closed its side: actix reads what it sent, meets the end and lets the
            // socket (and its place among its address's pending sockets) go at once.
            Ok(Ok(ready)) if ready.is_read_closed() => return false,
            Ok(Ok(_)) => {}
            _ => return false,
        }
        let n = match io.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 {
            return false;
        }
        if n > seen {
            seen = n;
            let head = &buf[..n];
            // Most connections are not streams: a method other than GET needs no parse.
            let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n'));
            if let Some(start) = start {
                let method = &head[start..];
                if !b"GET ".starts_with(&method[..method.len().min(4)]) {
                    return false;
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let is_stream = |req: &httparse::Request| {
                req.method == Some("GET") && req.path.is_some_and(is_stream_path)
            };
            let grow = match req.parse(head) {
                Ok(httparse::Status::Complete(_)) => return is_stream(&req),
                Ok(httparse::Status::Partial) if n < buf.len() => false,
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => true,
                // A stream request whose head is over the limit: the stream answers it (431),
                // not the routes (which would say to open it as the first request), also when
                // its request line alone is (a long query: httparse has no path yet).
                Ok(httparse::Status::Partial) => {
                    return is_stream(&req) || long_target_is_stream(head);
                }
                // Malformed: actix answers it.
                Err(_) => return false,
            };
            if grow {
                buf.resize(MAX_HEAD_BYTES, 0);
                seen = 0;
                continue;
            }
        }
        // Part of a head: wait for the rest (peeking does not consume, so the socket stays
        // readable; pause rather than spin).
        if tokio::time::Instant::now() + pause > deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Whether a `GET` whose request line does not fit the head limit names the stream: its path ends
/// at the query's `?` (or a `#`) within what was read.
fn long_target_is_stream(head: &[u8]) -> bool {
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let Some(target) = head[start..].strip_prefix(b"GET ") else {
        return false;
    };
    let target = target.split(|&b| b == b' ').next().unwrap_or(&[]);
    match target.iter().position(|&b| b == b'?' || b == b'#') {
        Some(end) => std::str::from_utf8(&target[..end]).is_ok_and(is_stream_path),
        None => false,
    }
}

/// Whether a request target (origin or absolute form) names the stream, its path percent-decoded.
fn is_stream_path(target: &str) -> bool {
    let path = match target.split_once("://") {
        // Absolute form: the path starts after the authority.
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .is_ok_and(|p| p == STREAM_PATH)
}

/// Serves a connection whose request is `GET /v1/stream`: reads the request (by `deadline`, the
/// same that covered the peek), admits it, answers with the event stream (or a JSON error) and
/// runs the session until it ends.
pub async fn serve(
    mut io: TcpStream,
    state: actix_web::web::Data<AppState>,
    deadline: tokio::time::Instant,
    proxied: Option<std::net::IpAddr>,
) {
    let limits = &state.sessions.limits;
    let handshake_timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let peer = io.peer_addr().ok();
    let req = match tokio::time::timeout_at(deadline, read_head(&mut io)).await {
        Ok(Ok(req)) => req,
        Ok(Err(refused)) => {
            // Answered at once, as actix would, rather than held until the deadline.
            refused.record(&state, peer, "sse");
            let _ = respond_error(&mut io, &refused, None, handshake_timeout).await;
            return;
        }
        Err(_) => return, // too slow: the deadline closes it, as actix's would
    };
    let header = |name| req.head().headers.get(name).and_then(|v| v.to_str().ok());
    let origin = header("origin");
    let cors = match state.access.get().cors_origin(origin) {
        CorsOrigin::Any => Some("*".to_string()),
        CorsOrigin::Echo(o) => Some(o.to_string()),
        CorsOrigin::Refused => None,
    };
    let query = req.uri().query().unwrap_or("");
    let admitted = admit(
        &state,
        &ClientRequest::of(&req.head().headers, query, peer).proxied(proxied),
        Some(Transport::Sse),
    )
    .and_then(|admitted| stream_request(&state, query, admitted));
    let start = match admitted {
        Ok(start) => start,
        Err(refusal) => {
            refusal.record(&state, peer, "sse");
            let _ = respond_error(&mut io, &refusal, cors.as_deref(), handshake_timeout).await;
            return;
        }
    };
    let StreamStart {
        admitted:
            Admitted {
                grant,
                guards,
                connection: place,
                admission,
            },
        symbols,
        rejected,
        max_hz,
        on_lag,
        wants,
    } = start;
    let place = place.expect("a stream is admitted with a connection place");
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
         cache-control: no-store\r\nconnection: close\r\nx-accel-buffering: no\r\n",
    );
    if let Some(cors) = &cors {
        head.push_str("access-control-allow-origin: ");
        head.push_str(cors);
        head.push_str("\r\nvary: Origin\r\n");
    }
    head.push_str("\r\n");
    // How long a client waits before reconnecting (EventSource's default is ~3 s), and what was
    // refused, as comments a client may read or ignore.
    head.push_str("retry: 1000\n\n");
    for (symbol, code) in &rejected {
        head.push_str(": rejected ");
        if *code == ErrorCode::InvalidSymbol {
            // Any text a client sent, a line break included: one JSON string, so it stays one
            // comment line and can never start an event of its own.
            push_json_str(&mut head, symbol);
        } else {
            head.push_str(symbol);
        }
        head.push(' ');
        head.push_str(code.as_str());
        head.push_str("\n\n");
    }
    if !matches!(
        tokio::time::timeout(handshake_timeout, io.write_all(head.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = io.set_nodelay(true);
    if limits.send_buffer_bytes > 0 {
        let _ = socket2::SockRef::from(&io).set_send_buffer_size(limits.send_buffer_bytes);
    }
    let mut connection = Connection::new(
        state.sessions.clone(),
        ((place, guards), admission),
        grant,
        WsSocket::raw(io),
        Framing::Sse,
    );
    connection.subscribe_at_start(symbols, max_hz, on_lag, wants);
    // Its own task, like a WebSocket session (`http::upgrade`): actix's connection task ends here.
    tokio::task::spawn_local(connection.run());
}

/// What an admitted stream asks for.
struct StreamStart {
    admitted: Admitted,
    /// The symbols it gets, and those it asked for but does not (with why).
    symbols: Vec<String>,
    rejected: Vec<(String, ErrorCode)>,
    max_hz: Option<f64>,
    on_lag: OnLag,
    /// `trades=true`, `bars=1m`.
    wants: Wants,
}

/// Reads the query of an admitted stream: `symbols` (required), `max_hz`, `on_lag`, `trades`,
/// `bars`. Symbols the
/// token may not have or the gateway does not serve are reported, not fatal, unless none is left.
fn stream_request(
    state: &AppState,
    query: &str,
    admitted: Admitted,
) -> Result<StreamStart, Refused> {
    let params = Query::parse(query);
    let symbols = symbols_param(&params, state.sessions.limits.max_symbols_per_connection)?;
    let max_hz =
        match params.get("max_hz")? {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(hz) if MAX_HZ_RANGE.contains(&hz) => Some(hz),
                _ => return Err(Refused::bad_request(
                    "bad_request",
                    "'max_hz' must be a number from 0.001 to 1000 (updates per second per symbol)",
                )),
            },
        };
    let on_lag = match params.get("on_lag")? {
        None | Some("conflate") => OnLag::Conflate,
        Some("close") => OnLag::Close,
        Some(_) => {
            return Err(Refused::bad_request(
                "bad_request",
                r#"'on_lag' must be "conflate" or "close""#,
            ))
        }
    };
    let trades = match params.get("trades")? {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => {
            return Err(Refused::bad_request(
                "bad_request",
                "'trades' must be true or false",
            ))
        }
    };
    let wants = wants_for(
        state.sessions.index.market(),
        &state.sessions.tiers,
        admitted.grant.tier,
        trades,
        params.get("bars")?,
    )
    .map_err(|(code, message)| match code {
        ErrorCode::Unauthorized => Refused::new(
            StatusCode::FORBIDDEN,
            "unauthorized",
            "bad_request",
            message,
        ),
        _ => Refused::bad_request("bad_request", message),
    })?;
    let (symbols, rejected) = resolve(state, &admitted.grant, symbols);
    if symbols.is_empty() {
        let unauthorized = rejected.iter().any(|(_, c)| *c == ErrorCode::Unauthorized);
        let status = if unauthorized {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        let code = rejected.first().map_or("bad_request", |(_, c)| c.as_str());
        return Err(Refused::new(
            status,
            code,
            "bad_request",
            "none of the symbols can be streamed",
        ));
    }
    Ok(StreamStart {
        admitted,
        symbols,
        rejected,
        max_hz,
        on_lag,
        wants,
    })
}

/// Reads an HTTP/1 request head (a GET has no body), with actix-http's parser; a refusal (400,
/// 431) for one that is malformed, too large, or an HTTP/1.1 request without `Host`.
async fn read_head(io: &mut TcpStream) -> Result<actix_http::Request, Refused> {
    let bad = |message: &str| Refused::bad_request("bad_request", message.to_string());
    let mut codec = h1::Codec::default();
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(h1::Message::Item(req))) => {
                if req.version() == actix_http::Version::HTTP_11
                    && !req.head().headers.contains_key("host")
                {
                    return Err(bad("an HTTP/1.1 request needs a Host header"));
                }
                return Ok(req);
            }
            Ok(_) => {}
            Err(e) => return Err(bad(&format!("not a valid HTTP/1 request: {e}"))),
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(Refused::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "bad_request",
                "bad_request",
                "the request head is over 16 KiB",
            ));
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(bad("the request ended before its head did")),
            Ok(_) => {}
        }
    }
}

/// A refusal as JSON, then the connection's end.
async fn respond_error(
    io: &mut TcpStream,
    refusal: &Refused,
    cors: Option<&str>,
    timeout: Duration,
) -> std::io::Result<()> {
    let body = refusal.json_body();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         connection: close\r\ncontent-length: {}\r\n",
        refusal.status.as_u16(),
        refusal.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some((name, value)) = refusal.header {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(cors) = cors {
        head.push_str(&format!(
            "access-control-allow-origin: {cors}\r\nvary: Origin\r\n"
        ));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    tokio::time::timeout(timeout, async {
        io.write_all(head.as_bytes()).await?;
        io.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}
