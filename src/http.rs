//! Stage 6, HTTP: the WebSocket upgrade at `/ws` (with the refusals that happen before it), the
//! operational endpoints `/metrics`, `/healthz`, `/readyz`, and the ticker widget with its demo pages
//! (`web/`, embedded in the binary so that one file is the whole deployment).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::access::{token_of, Access};
use crate::feed::FeedHealth;
use crate::session::socket::{PeerFd, SocketHandle};
use crate::session::{Connection, SessionShared};

/// What the routes need, shared by every worker.
pub struct AppState {
    pub sessions: Arc<SessionShared>,
    pub access: Arc<Access>,
    /// (feed name, health) in `FeedId` order.
    pub feeds: Vec<(String, Arc<FeedHealth>)>,
}

/// The web assets: (path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "/widget/quote-ticker.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/quote-ticker.js"),
    ),
    (
        "/examples/trading.html",
        "text/html; charset=utf-8",
        include_str!("../web/examples/trading.html"),
    ),
];

/// The public routes: the WebSocket and the widget; with `with_ops`, also `/metrics`, `/healthz` and
/// `/readyz` (otherwise those are served on `metrics_listen` by `ops_routes`).
pub fn routes(cfg: &mut web::ServiceConfig, with_ops: bool) {
    for &(path, content_type, body) in ASSETS {
        cfg.route(
            path,
            web::get().to(move || async move {
                HttpResponse::Ok()
                    .content_type(content_type)
                    // Short, so that a gateway upgrade reaches browsers within minutes.
                    .insert_header(("Cache-Control", "public, max-age=300"))
                    .body(body)
            }),
        );
    }
    cfg.route("/ws", web::get().to(ws));
    if with_ops {
        ops_routes(cfg);
    }
}

pub fn ops_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let sessions = &state.sessions;
    let refused =
        |reason: &str, mut response: actix_web::HttpResponseBuilder, message: &'static str| {
            sessions
                .metrics
                .connections_refused
                .with_label_values(&[reason])
                .inc();
            Ok(response.body(message))
        };
    let unavailable = || {
        let mut r = HttpResponse::ServiceUnavailable();
        r.insert_header(("Retry-After", "5"));
        r
    };
    if sessions.shutdown.is_cancelled() {
        return refused(
            "shutting_down",
            unavailable(),
            "the gateway is shutting down\n",
        );
    }
    // Everything below is refused before the upgrade, so a refused client costs one HTTP response.
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let access = &state.access;
    if let Err(r) = access.check_origin(header("origin")) {
        return refused(
            r.reason(),
            HttpResponse::Forbidden(),
            "this Origin may not open a WebSocket here\n",
        );
    }
    let token = token_of(req.query_string(), header("authorization"));
    let grant = match access.authorize(token.as_deref()) {
        Ok(g) => g,
        Err(r) => {
            let mut response = HttpResponse::Unauthorized();
            response.insert_header(("WWW-Authenticate", "Bearer"));
            return refused(
                r.reason(),
                response,
                "a valid token is needed: ?token=... or Authorization: Bearer ...\n",
            );
        }
    };
    let ip_guard = match req.peer_addr().map(|a| access.admit_ip(a.ip())) {
        Some(Ok(g)) => Some(g),
        Some(Err(r)) => {
            let mut response = HttpResponse::TooManyRequests();
            response.insert_header(("Retry-After", "5"));
            return refused(
                r.reason(),
                response,
                "too many connections from this address\n",
            );
        }
        None => None,
    };
    let Some(guard) = sessions.admit() else {
        return refused(
            "max_connections",
            unavailable(),
            "too many connections; retry later\n",
        );
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(sessions.limits.max_frame_bytes);
    let (response, body) = response.into_parts();
    let (socket, body) = SocketHandle::new(req.conn_data::<PeerFd>().copied(), body);
    let connection = Connection::new(sessions.clone(), (guard, ip_guard), grant, session, socket);
    // Spawned on this worker's local set: the connection task and actix's dispatcher for this socket
    // share a thread (SocketHandle relies on it).
    actix_web::rt::spawn(connection.run(stream));
    Ok(response.set_body(body.boxed()))
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
