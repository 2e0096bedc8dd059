//! Stage 8, HTTP, admission: the checks every client passes before it gets anything, whatever it
//! asks for (a WebSocket, an SSE stream, a REST snapshot), and the refusal each check answers with.
//! The policy is `access`; this is its order and its HTTP form.
//!
//! Cheapest first, each answered before any session exists: shutting down (503), a scale-out edge
//! whose cache is not in yet (503: it does not know what it serves), the Origin allow-list (403), recent failures of this credential from this client (429, unverified), the
//! token (401), connections from the client's address and with the credential (429), then
//! `max_connections` (503, for streams only: a REST request takes no connection place).
//!
//! The client's address is the peer's, or the one a trusted proxy forwarded (`Access::client_ip`):
//! every per-address rule uses it.

use std::net::{IpAddr, SocketAddr};

use actix_http::StatusCode;

use crate::access::{presented, Admission, ClientGuards, Grant, Presented, RedeemRefusal, Refusal};
use crate::security_log;
use crate::session::{ConnectionGuard, Transport};
use crate::state::AppState;

/// The parts of a request that admission reads.
pub struct ClientRequest<'a> {
    pub origin: Option<&'a str>,
    pub query: &'a str,
    pub authorization: Option<&'a str>,
    /// Every `Sec-WebSocket-Protocol` header value (a token may ride there, `presented`).
    pub protocols: Vec<&'a str>,
    pub peer: Option<SocketAddr>,
    /// Every `X-Forwarded-For` header, in order (read only from a trusted proxy).
    pub forwarded_for: Vec<&'a str>,
    /// The client a trusted load balancer's PROXY protocol header named (`proxied.rs`).
    pub proxied: Option<IpAddr>,
}

impl<'a> ClientRequest<'a> {
    /// The parts of a request with these headers.
    pub fn of(
        headers: &'a actix_http::header::HeaderMap,
        query: &'a str,
        peer: Option<SocketAddr>,
    ) -> ClientRequest<'a> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        ClientRequest {
            origin: header("origin"),
            query,
            authorization: header("authorization"),
            protocols: headers
                .get_all("sec-websocket-protocol")
                .filter_map(|v| v.to_str().ok())
                .collect(),
            peer,
            forwarded_for: headers
                .get_all("x-forwarded-for")
                .filter_map(|v| v.to_str().ok())
                .collect(),
            proxied: None,
        }
    }

    /// With the client its connection's PROXY header named, if any.
    pub fn proxied(mut self, client: Option<IpAddr>) -> ClientRequest<'a> {
        self.proxied = client;
        self
    }

    /// The client's address: the one a PROXY header named (read only from a trusted proxy), or
    /// `Access::client_ip`'s.
    pub fn client_ip(&self, access: &crate::access::Access) -> Option<IpAddr> {
        if self.proxied.is_some() {
            return self.proxied;
        }
        access.client_ip(
            self.peer.map(|p| p.ip()),
            self.forwarded_for.iter().copied(),
        )
    }
}

/// An admitted client: what its token allows and the places it holds (released on `Drop`).
pub struct Admitted {
    pub grant: Grant,
    pub guards: ClientGuards,
    /// Its place in `max_connections` (streams only).
    pub connection: Option<ConnectionGuard>,
    /// How it was admitted, checked again when the settings are reloaded (streams only).
    pub admission: Option<Box<Admission>>,
}

/// A refusal: the HTTP status, the error code of the contract's table for JSON answers, the
/// reason label of `quotegw_connections_refused_total`, and a message saying what to do.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub header: Option<(&'static str, &'static str)>,
    /// The client's address, when a proxy forwarded it (logged beside the peer's).
    pub client: Option<IpAddr>,
}

impl Refused {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Refused {
        Refused {
            status,
            code,
            reason,
            message: message.into(),
            header: None,
            client: None,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Refused {
        self.header = Some((name, value));
        self
    }

    /// A 400 about the request itself.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Refused {
        Refused::new(StatusCode::BAD_REQUEST, code, "bad_request", message)
    }

    /// The JSON body of REST and SSE refusals: `{"error":{"code":...,"message":...}}`.
    pub fn json_body(&self) -> String {
        let mut out = String::from(r#"{"error":{"code":""#);
        out.push_str(self.code);
        out.push_str(r#"","message":"#);
        crate::protocol::push_json_str(&mut out, self.message.trim_end());
        out.push_str("}}");
        out
    }

    /// Counts the refusal, and logs it when it is a security event (not a 400 or a 404), naming
    /// the transport asked for (`ws`, `sse`, `rest`, `metrics`, `tcp`).
    pub fn record(&self, state: &AppState, peer: Option<SocketAddr>, transport: &str) {
        let event = self.status != StatusCode::NOT_FOUND && self.status != StatusCode::BAD_REQUEST;
        self.count_and_log(state, peer, transport, event);
    }

    /// `record` for a refusal that is a security event whatever its status (a trusted proxy's
    /// connection without its PROXY header: a misconfigured balancer, or someone posing as one).
    pub fn record_as_security_event(
        &self,
        state: &AppState,
        peer: Option<SocketAddr>,
        transport: &str,
    ) {
        self.count_and_log(state, peer, transport, true);
    }

    fn count_and_log(
        &self,
        state: &AppState,
        peer: Option<SocketAddr>,
        transport: &str,
        log: bool,
    ) {
        state
            .sessions
            .metrics
            .connections_refused
            .with_label_values(&[self.reason])
            .inc();
        if log {
            security_log::refused(
                peer,
                self.client,
                transport,
                self.status.as_u16(),
                self.reason,
            );
        }
    }
}

/// Runs every check on `req`. A stream (`transport`) also takes a place in `max_connections`.
pub fn admit(
    state: &AppState,
    req: &ClientRequest,
    transport: Option<Transport>,
) -> Result<Admitted, Refused> {
    with_client(state, req, |client| {
        admit_client(state, req, transport, client)
    })
}

/// The credential check alone, with the failure throttle (a `/metrics` scrape on the public
/// listener, which takes no connection place).
pub fn verify(state: &AppState, req: &ClientRequest) -> Result<Grant, Refused> {
    let token = presented(req.query, req.authorization, &req.protocols, false);
    with_client(state, req, |client| {
        authorize(&state.access.get(), token.token(), client)
    })
}

/// Runs `check` with the key the client is counted under (`Access::client_key` of its address),
/// and names the client in a refusal when a proxy forwarded it (logged beside the peer).
fn with_client<T>(
    state: &AppState,
    req: &ClientRequest,
    check: impl FnOnce(Option<IpAddr>) -> Result<T, Refused>,
) -> Result<T, Refused> {
    let access = state.access.get();
    let forwarded = req.client_ip(&access);
    check(forwarded.map(|ip| access.client_key(ip))).map_err(|mut r| {
        r.client = forwarded.filter(|ip| Some(*ip) != req.peer.map(|p| p.ip()));
        r
    })
}

/// The Origin allow-list's answer for `origin` (403 off the list), as every route gives it.
pub fn check_origin(access: &crate::access::Access, origin: Option<&str>) -> Result<(), Refused> {
    access.check_origin(origin).map_err(|r| {
        Refused::new(
            StatusCode::FORBIDDEN,
            "unauthorized",
            r.reason(),
            "this Origin may not use this gateway\n",
        )
    })
}

/// `token`, verified, unless it failed too often from `client` lately.
fn authorize(
    access: &crate::access::Access,
    token: Option<&str>,
    client: Option<IpAddr>,
) -> Result<Grant, Refused> {
    let now = std::time::Instant::now();
    let credential = access.fingerprint(token);
    if let Some(client) = client.filter(|_| access.auth_required()) {
        access
            .check_auth_throttle(client, credential, now)
            .map_err(|r| {
                Refused::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    r.reason(),
                    "this token failed too often from this address\n",
                )
                .with_header("retry-after", "5")
            })?;
    }
    access.authorize(token).map_err(|r| {
        if let Some(client) = client {
            access.auth_failed(client, credential, now);
        }
        Refused::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            r.reason(),
            "a valid token is needed: Authorization: Bearer ..., ?ticket=... (POST /v1/ticket) or ?token=...\n",
        )
        .with_header("www-authenticate", "Bearer")
    })
}

fn admit_client(
    state: &AppState,
    req: &ClientRequest,
    transport: Option<Transport>,
    client: Option<IpAddr>,
) -> Result<Admitted, Refused> {
    let sessions = &state.sessions;
    let unavailable = |reason, message: &str| {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limited",
            reason,
            message,
        )
        .with_header("retry-after", "5")
    };
    let too_many = |r: Refusal, message: &str| {
        Refused::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            r.reason(),
            message,
        )
        .with_header("retry-after", "5")
    };
    if sessions.shutdown.is_cancelled() {
        return Err(unavailable(
            "shutting_down",
            "the gateway is shutting down\n",
        ));
    }
    if state
        .learning
        .iter()
        .any(|h| !h.delivered.load(std::sync::atomic::Ordering::Acquire))
    {
        // Found from outside: an edge restarted answered every subscribe `unknown_symbol` until
        // its cache was in, and a widget kept its old prices as live.
        return Err(unavailable(
            "loading",
            "the gateway is loading its symbols; retry shortly\n",
        ));
    }
    let access = &state.access.get();
    check_origin(access, req.origin)?;
    // A ticket stands for its token: from here on, admitted exactly as that token would be.
    let token = match presented(
        req.query,
        req.authorization,
        &req.protocols,
        transport.is_some(),
    ) {
        Presented::Ticket(ticket) => state
            .tickets
            .redeem(
                access.ticket_key(),
                &ticket,
                req.origin,
                crate::access::tickets_now_ms(),
            )
            .map_err(|r| match r {
                RedeemRefusal::Full => Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limited",
                    Refusal::TicketLimit.reason(),
                    "too many tickets used lately; retry later\n",
                )
                .with_header("retry-after", "5"),
                RedeemRefusal::OtherKey => Refused::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    Refusal::ForeignTicket.reason(),
                    "this ticket is another gateway's (they do not share [access] ticket_key): \
                     POST /v1/ticket for a new one\n",
                )
                .with_header("www-authenticate", "Bearer"),
                _ => Refused::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    Refusal::Ticket.reason(),
                    "this ticket is not this gateway's, or used, expired or from another \
                     Origin: POST /v1/ticket for a new one\n",
                )
                .with_header("www-authenticate", "Bearer"),
            })?,
        Presented::Token(token) => Some(token),
        Presented::Nothing => None,
    };
    let grant = authorize(access, token.as_deref(), client)?;
    let mut guards = ClientGuards::default();
    if let Some(client) = client {
        guards.ip = Some(
            access
                .admit_ip(client)
                .map_err(|r| too_many(r, "too many connections from this address\n"))?,
        );
    }
    if let Some(credential) = grant.credential.clone() {
        guards.token = Some(
            access
                .admit_token(credential)
                .map_err(|r| too_many(r, "too many connections with this token\n"))?,
        );
    }
    let connection = match transport {
        None => None,
        Some(transport) => Some(sessions.admit(transport).ok_or_else(|| {
            unavailable("max_connections", "too many connections; retry later\n")
        })?),
    };
    let admission = connection
        .is_some()
        .then(|| Box::new(access.admission(req.origin, token.as_deref())));
    Ok(Admitted {
        grant,
        guards,
        connection,
        admission,
    })
}
