//! Credentials: where a request carries one (`presented`, `token_of`), and how API keys and JWTs
//! are verified (`Verifier`; keys compared as SHA-256 digests).

use std::time::Duration;

use super::Tier;

pub(super) enum Verifier {
    Off,
    /// Each key's digest with its tier.
    ApiKeys(Vec<([u8; 32], Tier)>),
    Jwt(Box<JwtVerifier>),
}

pub(super) struct JwtVerifier {
    pub(super) key: jsonwebtoken::DecodingKey,
    pub(super) validation: jsonwebtoken::Validation,
    pub(super) symbols_claim: String,
    pub(super) require_symbols_claim: bool,
    pub(super) leeway: Duration,
    pub(super) tier_claim: String,
}

/// The token of a request: `?token=` (browsers cannot set headers on a WebSocket) or a bearer token.
pub fn token_of(query: &str, authorization: Option<&str>) -> Option<String> {
    bearer_of(authorization).or_else(|| single_param(query, "token"))
}

/// The WebSocket protocol (`Sec-WebSocket-Protocol`) a client offers to say it speaks this
/// contract; the only one the gateway ever answers with.
pub const WS_PROTOCOL: &str = "quotegw.v1";

/// The prefix of a WebSocket protocol that carries a token (`quotegw.bearer.<token>`), for clients
/// that can set the protocol list but not headers, and must not put the token in the URL.
pub const BEARER_PROTOCOL_PREFIX: &str = "quotegw.bearer.";

/// What credential a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// None (or one given twice, ambiguous: no credential).
    Nothing,
    /// A token: `Authorization: Bearer`, a `quotegw.bearer.` WebSocket protocol, or `?token=`.
    Token(String),
    /// A ticket (`?ticket=`), which stands for the token it was issued for.
    Ticket(String),
}

impl Presented {
    pub fn token(&self) -> Option<&str> {
        match self {
            Presented::Token(t) => Some(t),
            _ => None,
        }
    }
}

/// The credential of a request, looked for in this order: the `Authorization` header, a
/// `quotegw.bearer.<token>` entry among `protocols` (the `Sec-WebSocket-Protocol` header values of
/// a WebSocket handshake), `?ticket=` (when `tickets`: streams only), then `?token=`. Headers come
/// first because they stay out of logs; the ticket before the token because a page that has a
/// ticket meant it.
pub fn presented(
    query: &str,
    authorization: Option<&str>,
    protocols: &[&str],
    tickets: bool,
) -> Presented {
    if let Some(token) = bearer_of(authorization) {
        return Presented::Token(token);
    }
    let mut offered = protocols
        .iter()
        .flat_map(|h| h.split(','))
        .filter_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL_PREFIX));
    if let (Some(token), None) = (offered.next(), offered.next()) {
        if !token.is_empty() {
            return Presented::Token(token.to_string());
        }
    }
    if tickets {
        if let Some(ticket) = single_param(query, "ticket") {
            return Presented::Ticket(ticket);
        }
    }
    match single_param(query, "token") {
        Some(token) => Presented::Token(token),
        None => Presented::Nothing,
    }
}

/// Whether a handshake's `Sec-WebSocket-Protocol` values offer `quotegw.v1`.
pub fn offers_ws_protocol(protocols: &[&str]) -> bool {
    protocols
        .iter()
        .flat_map(|h| h.split(','))
        .any(|p| p.trim() == WS_PROTOCOL)
}

fn bearer_of(authorization: Option<&str>) -> Option<String> {
    // The scheme is case-insensitive (RFC 7235), followed by spaces or tabs.
    let rest = authorization.and_then(|h| {
        let (scheme, rest) = h.split_at_checked(6)?;
        (scheme.eq_ignore_ascii_case("bearer") && rest.starts_with([' ', '\t'])).then_some(rest)
    })?;
    Some(rest.trim().to_string())
}

/// A query parameter given once. A parameter given twice is no credential: which one a proxy in
/// front would have kept is not ours to guess.
fn single_param(query: &str, name: &str) -> Option<String> {
    let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(key, _)| key == name);
    match (values.next(), values.next()) {
        (Some((_, v)), None) => Some(v.into_owned()),
        _ => None,
    }
}

/// A fixed-length digest of an API key: what keys are compared as.
pub(super) fn digest(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
}
