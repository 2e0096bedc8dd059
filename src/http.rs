//! Stage 6, HTTP: the WebSocket upgrade at `/ws` (with the refusals that happen before it), the
//! operational endpoints `/metrics`, `/healthz`, `/readyz`, and the ticker widget with its demo pages
//! (`web/`, embedded in the binary so that one file is the whole deployment).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::feed::FeedHealth;
use crate::session::socket::{PeerFd, SocketHandle};
use crate::session::{Connection, SessionShared};

/// What the routes need, shared by every worker.
pub struct AppState {
    pub sessions: Arc<SessionShared>,
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

pub fn routes(cfg: &mut web::ServiceConfig) {
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
    cfg.route("/ws", web::get().to(ws))
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let sessions = &state.sessions;
    let refuse = |reason: &str, message: &'static str| {
        sessions
            .metrics
            .connections_refused
            .with_label_values(&[reason])
            .inc();
        Ok(HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .body(message))
    };
    if sessions.shutdown.is_cancelled() {
        return refuse("shutting_down", "the gateway is shutting down\n");
    }
    // Refused before the upgrade, so that a client over the limit costs one HTTP response.
    let Some(guard) = sessions.admit() else {
        return refuse("max_connections", "too many connections; retry later\n");
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(sessions.limits.max_frame_bytes);
    let (response, body) = response.into_parts();
    let (socket, body) = SocketHandle::new(req.conn_data::<PeerFd>().copied(), body);
    let connection = Connection::new(sessions.clone(), guard, session, socket);
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
