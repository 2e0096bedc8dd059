//! Stage 8, HTTP: the WebSocket upgrade at `/ws` (with the refusals that happen before it), the
//! operational endpoints `/metrics`, `/healthz`, `/readyz`, and the ticker widget with its demo pages
//! (`web/`, embedded in the binary so that one file is the whole deployment); `/v1/quotes` and
//! `/v1/symbols` (`rest.rs`) and `/v1/stream` (`sse.rs`). May not touch the index or fan-out
//! directly: a stream or socket becomes a `session::Connection`.

pub mod rest;
pub mod sse;

use std::sync::atomic::Ordering;

use std::future::Future;

use futures_util::future::TryFutureExt;
use std::time::Duration;

use actix_codec::{Encoder, Framed, FramedParts};
use actix_http::body::BodySize;
use actix_http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use actix_http::{h1, ws, ConnectionType, HttpMessage, Request, Response, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::access::{Access, CorsOrigin};
use crate::admit::{admit, Admitted, ClientRequest, Refused};
use crate::frame::Framing;
use crate::session::socket::WsSocket;
use crate::session::{Connection, Transport};
use crate::state::AppState;

/// The web assets: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    ),
    (
        "/widget/quote-ticker.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/quote-ticker.js"),
    ),
    (
        "/examples/trading.html",
        "text/html; charset=utf-8",
        include_str!("../../web/examples/trading.html"),
    ),
];

/// Browsers and CDNs may keep an asset this long before revalidating it with its `ETag`: short, so
/// that a gateway upgrade reaches browsers within minutes, and a revalidation costs a 304.
const ASSET_CACHE_CONTROL: &str = "public, max-age=300";

/// The public routes: the WebSocket and the widget; with `with_ops`, also `/metrics`, `/healthz` and
/// `/readyz` (otherwise those are served on `metrics_listen` by `ops_routes`).
pub fn routes(cfg: &mut web::ServiceConfig, with_ops: bool) {
    for &(path, content_type, body) in ASSETS {
        let etag = etag_of(body);
        cfg.route(
            path,
            web::get().to(move |req: HttpRequest, state: web::Data<AppState>| {
                let etag = etag.clone();
                async move { asset(&req, &state.access.get(), content_type, body, &etag) }
            }),
        );
    }
    cfg.route("/ws", web::get().to(ws_without_upgrade));
    crate::http::rest::routes(cfg);
    if with_ops {
        // The probes stay public (load balancers call them without credentials); the metrics
        // (connection counts, refusals by reason, feed names) are for whoever may read quotes.
        cfg.route("/metrics", web::get().to(public_metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz));
    }
}

/// `/metrics` on the public listener (no `metrics_listen`): with auth on, only for a request whose
/// credential verifies (a Prometheus job sends its key as a bearer token), under the same failure
/// throttle as the data; with `metrics_listen` set it is not served here at all.
async fn public_metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if state.access.get().auth_required() {
        let proxied = req
            .conn_data::<crate::proxied::ProxiedClient>()
            .map(|c| c.0);
        let request =
            ClientRequest::of(req.headers(), req.query_string(), req.peer_addr()).proxied(proxied);
        // The credential only: a scrape takes no place among a client's connections.
        if let Err(refused) = crate::admit::verify(&state, &request) {
            return crate::http::rest::refusal_as(&state, &req, refused, "metrics");
        }
    }
    metrics(state).await
}

/// One static asset, with the headers that let a page on another origin load it and a CDN cache it.
///
/// Module scripts are always fetched in CORS mode, so a trading UI on its own origin that embeds
/// `<script type="module" src="https://quotes.example.com/widget/quote-ticker.js">` needs
/// `Access-Control-Allow-Origin`, or the browser blocks the widget. The allow-list is the one the
/// WebSocket applies (`access.allowed_origins`): an allowed Origin is echoed, any Origin gets `*`
/// when the list is empty. The files are public, so CORS here only decides which pages may run
/// them; the WebSocket still refuses Origins off the list on its own.
fn asset(
    req: &HttpRequest,
    access: &Access,
    content_type: &'static str,
    body: &'static str,
    etag: &str,
) -> HttpResponse {
    let origin = req.headers().get("origin").and_then(|v| v.to_str().ok());
    let revalidated = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if revalidated {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(("ETag", etag))
        .insert_header(("Cache-Control", ASSET_CACHE_CONTROL));
    match access.cors_origin(origin) {
        CorsOrigin::Any => {
            response.insert_header(("Access-Control-Allow-Origin", "*"));
        }
        CorsOrigin::Echo(allowed) => {
            response.insert_header(("Access-Control-Allow-Origin", allowed));
        }
        CorsOrigin::Refused => {}
    }
    if access.cors_varies_by_origin() {
        // A shared cache must not give one Origin's answer to another.
        response.insert_header(("Vary", "Origin"));
    }
    if revalidated {
        return response.finish();
    }
    response.content_type(content_type).body(body)
}

/// A strong `ETag` from the content (FNV-1a, 64 bits): the same file gives the same tag on every
/// gateway and every build, so a CDN in front of several gateways keeps one copy.
fn etag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

pub fn ops_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// A plain `GET /ws` (no `Upgrade` header): upgrade requests never reach the routes, see `upgrade`.
async fn ws_without_upgrade() -> HttpResponse {
    HttpResponse::build(StatusCode::UPGRADE_REQUIRED)
        .insert_header(("Upgrade", "websocket"))
        .body("/ws is a WebSocket endpoint: send Upgrade: websocket\n")
}

/// Every request that asks for `Connection: Upgrade` comes here instead of the routes: actix-http
/// hands over the connection, so the gateway owns the socket from the handshake on (see
/// `session/socket.rs` for why). `/ws` becomes a session; anything refused gets one HTTP response
/// and the connection is closed.
///
/// The session runs as its own task on this worker, and actix's connection task ends with the
/// handshake: the session's memory is then its own state, not that plus actix's HTTP dispatcher,
/// which the task would otherwise carry for the whole session (`session::task` checks the size
/// of a connection's future in a unit test). `max_connections` caps sessions; actix's own cap counts
/// the sockets that are not sessions yet (`app.rs`, `HANDSHAKES_PER_WORKER`).
pub fn upgrade(
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    state: web::Data<AppState>,
) -> impl Future<Output = Result<(), actix_web::Error>> {
    handshake(req, framed, state).map_ok(|admitted| {
        if let Some(connection) = admitted {
            tokio::task::spawn_local(connection.run());
        }
    })
}

/// Answers the upgrade request: 101 and the session's `Connection`, or a refusal and `None`.
async fn handshake(
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
    state: web::Data<AppState>,
) -> Result<Option<Connection>, actix_web::Error> {
    let sessions = &state.sessions;
    let FramedParts {
        mut io,
        mut codec,
        read_buf,
        mut write_buf,
        ..
    } = framed.into_parts();
    let admitted = admit_upgrade(&state, &req);
    let (response, body, size) = match &admitted {
        Ok(_) => (
            handshake_response(&req).message_body(())?,
            "",
            BodySize::None,
        ),
        Err(refusal) => {
            refusal.record(&state, req.peer_addr(), "ws");
            let mut response = Response::with_body(refusal.status, ());
            if let Some((name, value)) = refusal.header {
                response.headers_mut().insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
                .head_mut()
                .set_connection_type(ConnectionType::Close);
            let body = refusal.message.as_str();
            (response, body, BodySize::Sized(body.len() as u64))
        }
    };
    codec.encode(h1::Message::Item((response, size)), &mut write_buf)?;
    write_buf.extend_from_slice(body.as_bytes());
    let limits = &sessions.limits;
    let handshake_timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let sent = tokio::time::timeout(handshake_timeout, io.write_all(&write_buf)).await;
    let Ok(admitted) = admitted else {
        let _ = tokio::time::timeout(handshake_timeout, io.shutdown()).await;
        return Ok(None);
    };
    if !matches!(sent, Ok(Ok(()))) {
        return Ok(None); // the client did not take its own handshake response
    }
    // Small frames, sent as soon as they are ready: latency over packet count.
    let _ = io.set_nodelay(true);
    // Kernel memory per connection is bounded here: autotuned, the send buffer of a client that
    // stopped reading grows to `tcp_wmem`'s max (MiBs), which no gateway limit would see.
    if limits.send_buffer_bytes > 0 {
        let _ = socket2::SockRef::from(&io).set_send_buffer_size(limits.send_buffer_bytes);
    }
    let socket = WsSocket::new(io, &read_buf, limits.max_frame_bytes);
    let Admitted {
        grant,
        guards,
        connection,
        admission,
    } = admitted;
    let connection = connection.expect("a stream is admitted with a connection place");
    Ok(Some(Connection::new(
        sessions.clone(),
        ((connection, guards), admission),
        grant,
        socket,
        Framing::JsonArray,
    )))
}

/// A freshly accepted socket's place among its address's sockets not yet sessions or answered
/// (`Access::admit_pending`); `None` when the address has too many (or the socket is already
/// gone), after a 429 written without reading or waiting: the caller drops the socket.
pub fn admit_pending(
    io: &tokio::net::TcpStream,
    state: &AppState,
) -> Option<crate::access::PendingGuard> {
    let peer = io.peer_addr().ok()?;
    match state.access.get().admit_pending(peer.ip()) {
        Ok(guard) => Some(guard),
        Err(r) => {
            let refused = Refused::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                r.reason(),
                "too many unfinished requests from this address\n",
            );
            refused.record(state, Some(peer), "tcp");
            let _ = io.try_write(
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\nconnection: close\r\n\
                  content-length: 0\r\n\r\n",
            );
            None
        }
    }
}

/// The client a trusted load balancer's PROXY protocol header names, read from the start of `io`
/// when `[access] proxy_protocol` is on and the peer is a trusted proxy (`Ok(None)` otherwise, or
/// for a header that names no client). `Err` when such a connection has no valid header: it is
/// counted, logged and dropped.
pub async fn proxy_header(
    io: &mut TcpStream,
    state: &AppState,
    deadline: tokio::time::Instant,
) -> Result<Option<std::net::IpAddr>, ()> {
    let Ok(peer) = io.peer_addr() else {
        return Err(());
    };
    if !state.access.get().reads_proxy_header(peer.ip()) {
        return Ok(None);
    }
    crate::proxied::read_header(io, deadline)
        .await
        .map_err(|_| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "proxy_header",
                "a connection from a trusted proxy must start with a PROXY protocol header\n",
            )
            .record_as_security_event(state, Some(peer), "tcp");
        })
}

/// The 101 answer: `quotegw.v1` when the client offered it, never another protocol (a token offered
/// as `quotegw.bearer.<token>` is not echoed: it would then sit in the response too).
fn handshake_response(req: &Request) -> actix_http::ResponseBuilder {
    let mut response = ws::handshake_response(req.head());
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .filter_map(|v| v.to_str().ok())
        .collect();
    if crate::access::offers_ws_protocol(&offered) {
        response.insert_header(("sec-websocket-protocol", crate::access::WS_PROTOCOL));
    }
    response
}

/// The checks of a WebSocket upgrade: what makes it one, then admission (`admit.rs`).
fn admit_upgrade(state: &AppState, req: &Request) -> Result<Admitted, Refused> {
    if req.path() != "/ws" {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            "bad_request",
            "not_found",
            "only /ws accepts an upgrade\n",
        ));
    }
    if let Err(e) = ws::verify_handshake(req.head()) {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad_handshake",
            format!("not a WebSocket handshake: {e}\n"),
        ));
    }
    let proxied = req
        .conn_data::<crate::proxied::ProxiedClient>()
        .map(|c| c.0);
    admit(
        state,
        &ClientRequest::of(
            req.headers(),
            req.uri().query().unwrap_or(""),
            req.peer_addr(),
        )
        .proxied(proxied),
        Some(Transport::Ws),
    )
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.sessions.metrics;
    for (name, health) in &state.feeds {
        m.feed_up
            .with_label_values(&[name])
            .set(health.up.load(Ordering::Relaxed).into());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

/// Ready once every feed has delivered a tick, so a load balancer sends no client to a gateway that
/// has nothing to show it.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let waiting: Vec<&str> = state
        .feeds
        .iter()
        .filter(|(_, h)| !h.delivered.load(Ordering::Relaxed))
        .map(|(name, _)| name.as_str())
        .collect();
    if waiting.is_empty() {
        HttpResponse::Ok().body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable().body(format!(
            "waiting for feeds to deliver: {}\n",
            waiting.join(", ")
        ))
    }
}
