//! Credentials: where a request carries one (`token_of`), and how API keys and JWTs are verified
//! (`Verifier`; keys compared as SHA-256 digests).

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
    // The scheme is case-insensitive (RFC 7235), followed by spaces or tabs.
    let bearer = authorization.and_then(|h| {
        let (scheme, rest) = h.split_at_checked(6)?;
        (scheme.eq_ignore_ascii_case("bearer") && rest.starts_with([' ', '\t'])).then_some(rest)
    });
    if let Some(bearer) = bearer {
        return Some(bearer.trim().to_string());
    }
    // A token given twice is no credential: which one a proxy in front would have kept is not ours
    // to guess.
    let mut tokens = form_urlencoded::parse(query.as_bytes()).filter(|(key, _)| key == "token");
    match (tokens.next(), tokens.next()) {
        (Some((_, token)), None) => Some(token.into_owned()),
        _ => None,
    }
}

/// A fixed-length digest of an API key: what keys are compared as.
pub(super) fn digest(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
}
