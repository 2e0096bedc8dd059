//! Stage 8, HTTP, before the upgrade: who may open a WebSocket and what they may subscribe to.
//!
//! Owns: `Access` and its refusals (here), the `[access]` and `[tiers]` settings (`settings.rs`),
//! credentials (`tokens.rs`), what an admitted client may do (`grants.rs`), the per-client counts
//! (`limits.rs`). May not touch HTTP types, sessions or the index: `admit` applies it to a request.
//!
//! Checks run in this order, each answering before any WebSocket exists, so a refused client costs
//! one small HTTP response: the Origin allow-list (403, cross-site WebSocket hijacking), the token
//! (401), connections per client IP (429), then the global `max_connections` (503, in `admit`).
//!
//! Tokens are API keys (compared in constant time) or JWTs (HS256 or RS256, `exp` required and
//! checked with `jwt_leeway_secs` of leeway; an optional claim lists the symbols or `PREFIX*` patterns the token may
//! subscribe to). A granted connection carries its expiry and symbol patterns into the session,
//! which closes it with 1008 when the token expires. Tokens never reach logs or metrics: only the
//! refusal reason does.

mod grants;
mod limits;
mod settings;
mod tickets;
mod tokens;

pub use grants::{Credential, Grant, Scope};
use limits::{admit, Failures, MAX_TRACKED_FAILING_ADDRESSES};
pub use limits::{ClientGuards, ClientLimits, IpGuard, PendingGuard, TokenGuard};
pub use settings::{
    AccessConfig, ApiKeyEntry, AuthMode, DelayedTierConfig, Secret, ThrottledTierConfig, Tier,
    TiersConfig, DEFAULT_JWT_LEEWAY_SECS,
};
pub use tickets::{
    now_ms as tickets_now_ms, RedeemRefusal, TicketKey, Tickets, MAX_USED, TICKET_TTL,
};
use tokens::{digest, JwtVerifier, Verifier};
pub use tokens::{
    offers_ws_protocol, presented, token_of, Presented, BEARER_PROTOCOL_PREFIX, WS_PROTOCOL,
};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use subtle::{ConditionallySelectable, ConstantTimeEq};
use thiserror::Error;

use crate::sync::lock;

#[derive(Debug, Error)]
pub enum AccessError {
    #[error("access.{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("tiers: {0}")]
    Tiers(String),
}

/// Why an upgrade was refused; the `reason` label of `quotegw_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: a browser Origin not on the allow-list.
    Origin,
    /// 401: no token, or a bad one.
    Unauthorized,
    /// 429: too many connections from this IP (or IPv6 prefix).
    PerIpLimit,
    /// 429: too many connections with this credential (API key, or JWT subject).
    PerTokenLimit,
    /// 429: too many failed authentications of this token from this IP lately; it is not even
    /// verified.
    AuthThrottled,
    /// 429: too many sockets from this IP that are not yet sessions or answered (handshakes,
    /// requests being sent); the socket is answered at once, before its request is read.
    PendingPerIp,
    /// 401: a ticket unknown, used, expired, or shown from another Origin (`tickets.rs`).
    Ticket,
    /// 503: `MAX_USED` tickets were used on this gateway within one ticket lifetime.
    TicketLimit,
    /// 401: a ticket sealed by another gateway's key (gateways behind one load balancer that do
    /// not share `[access] ticket_key`).
    ForeignTicket,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Origin,
        Refusal::Unauthorized,
        Refusal::PerIpLimit,
        Refusal::PerTokenLimit,
        Refusal::AuthThrottled,
        Refusal::PendingPerIp,
        Refusal::Ticket,
        Refusal::TicketLimit,
        Refusal::ForeignTicket,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::PerIpLimit => "per_ip_limit",
            Refusal::PerTokenLimit => "per_token_limit",
            Refusal::AuthThrottled => "auth_throttled",
            Refusal::PendingPerIp => "pending_per_ip",
            Refusal::Ticket => "bad_ticket",
            Refusal::TicketLimit => "ticket_limit",
            Refusal::ForeignTicket => "foreign_ticket",
        }
    }
}

/// The `Access-Control-Allow-Origin` a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsOrigin<'a> {
    /// No allow-list: `*`.
    Any,
    /// This Origin is on the allow-list: echoed.
    Echo(&'a str),
    /// Not on the list (or no Origin header while a list is set): no header, the browser refuses.
    Refused,
}

/// The access checks, built once at start.
pub struct Access {
    /// The key tickets are sealed with (`[access] ticket_key`), when gateways share one.
    ticket_key: Option<TicketKey>,
    verifier: Verifier,
    allowed_origins: Vec<String>,
    limits: ClientLimits,
    default_tier: Tier,
    delayed_offered: bool,
    /// The counts: one set for the process, kept across reloads (`Access::reloaded`).
    counts: Arc<Counts>,
    trusted_proxies: Vec<ipnet::IpNet>,
    proxy_protocol: bool,
}

/// The per-client counts `Access` keeps (`limits.rs`), whatever settings are in force.
#[derive(Default)]
struct Counts {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Sockets not yet sessions or answered, per peer address (`admit_pending`).
    pending: Mutex<HashMap<IpAddr, usize>>,
    per_token: Mutex<HashMap<Credential, usize>>,
    /// Keyed by the client's address and its credential's fingerprint (`fingerprint`).
    failures: Mutex<HashMap<(IpAddr, u64), Failures>>,
    /// Keys the credentials' fingerprints: random per process, so that nobody can make two
    /// tokens collide on purpose.
    fingerprints: std::hash::RandomState,
}

/// The access checks in force: replaced whole when the config is reloaded (SIGHUP), the counts
/// kept; each connection then checks its admission against the new ones (`Access::still_admits`).
pub struct LiveAccess {
    current: std::sync::RwLock<Arc<Access>>,
}

impl LiveAccess {
    pub fn new(access: Access) -> LiveAccess {
        LiveAccess {
            current: std::sync::RwLock::new(Arc::new(access)),
        }
    }

    /// The checks in force now.
    pub fn get(&self) -> Arc<Access> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `access` in force for every request from now on.
    pub fn replace(&self, access: Access) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(access);
    }
}

/// What a connection keeps of how it was admitted, to be checked again when the settings change:
/// its Origin, and its credential as an API key's digest or, for a JWT, the token itself (its
/// signature can only be checked again with it).
#[derive(Debug)]
pub struct Admission {
    origin: Option<Box<str>>,
    proof: Proof,
}

#[derive(Debug)]
enum Proof {
    Anonymous,
    ApiKey([u8; 32]),
    Jwt(Box<str>),
}

impl Access {
    pub fn new(
        config: &AccessConfig,
        limits: ClientLimits,
        tiers: &TiersConfig,
    ) -> Result<Access, AccessError> {
        Access::build(config, limits, tiers, Arc::default())
    }

    /// New settings with this one's counts (a reload): connections open now stay counted. The
    /// remembered authentication failures go: a token refused before may verify now (a key added,
    /// or added back), and the throttle must never refuse a token that verifies.
    pub fn reloaded(
        &self,
        config: &AccessConfig,
        limits: ClientLimits,
        tiers: &TiersConfig,
    ) -> Result<Access, AccessError> {
        let access = Access::build(config, limits, tiers, self.counts.clone())?;
        lock(&self.counts.failures).clear();
        Ok(access)
    }

    /// How a connection admitted with `token` from `origin` was admitted (`still_admits`).
    pub fn admission(&self, origin: Option<&str>, token: Option<&str>) -> Admission {
        let proof = match (&self.verifier, token) {
            (Verifier::ApiKeys(_), Some(t)) => Proof::ApiKey(digest(t.as_bytes())),
            (Verifier::Jwt(_), Some(t)) => Proof::Jwt(t.into()),
            _ => Proof::Anonymous,
        };
        Admission {
            origin: origin.map(Into::into),
            proof,
        }
    }

    /// Whether these settings admit a connection admitted so (a reload): its Origin, and its
    /// credential (an API key still listed, a JWT that still verifies; no credential only with
    /// `auth = "off"`).
    pub fn still_admits(&self, a: &Admission) -> bool {
        if self.check_origin(a.origin.as_deref()).is_err() {
            return false;
        }
        match (&self.verifier, &a.proof) {
            (Verifier::Off, _) => true,
            (Verifier::ApiKeys(keys), Proof::ApiKey(d)) => keys.iter().any(|(k, _)| k == d),
            (Verifier::Jwt(_), Proof::Jwt(t)) => self.authorize(Some(t)).is_ok(),
            _ => false,
        }
    }

    fn build(
        config: &AccessConfig,
        limits: ClientLimits,
        tiers: &TiersConfig,
        counts: Arc<Counts>,
    ) -> Result<Access, AccessError> {
        if config.proxy_protocol && config.trusted_proxies.is_empty() {
            return Err(AccessError::Config {
                key: "proxy_protocol",
                message: "is true, but trusted_proxies lists no proxy to read the header from"
                    .into(),
            });
        }
        let delayed_offered = tiers.delayed.is_some();
        if tiers.default == Tier::Delayed && !delayed_offered {
            return Err(AccessError::Tiers(
                "default = \"delayed\" needs a [tiers.delayed] table".into(),
            ));
        }
        let verifier = match config.auth {
            AuthMode::Off => Verifier::Off,
            AuthMode::ApiKey => {
                let keys = config
                    .api_keys
                    .iter()
                    .map(|entry| {
                        let (key, tier) = entry.parts();
                        let tier = tier.unwrap_or(tiers.default);
                        if tier == Tier::Delayed && !delayed_offered {
                            return Err(
                                "a key with tier = \"delayed\" needs a [tiers.delayed] table"
                                    .to_string(),
                            );
                        }
                        key.resolve().map(|k| (k, tier))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| AccessError::Config {
                        key: "api_keys",
                        message,
                    })?;
                if keys.iter().any(|(k, _)| k.trim() != k) {
                    return Err(AccessError::Config {
                        key: "api_keys",
                        message: "a key (from the environment) begins or ends with whitespace, \
                                  which a bearer token never does (it is trimmed): remove it"
                            .into(),
                    });
                }
                if keys.is_empty() || keys.iter().any(|(k, _)| k.len() < 16) {
                    return Err(AccessError::Config {
                        key: "api_keys",
                        message: "list at least one key of 16 or more characters".into(),
                    });
                }
                // One key twice (pasted again during a rotation) would have two tiers and be
                // matched twice; which entry wins is not ours to guess.
                for (i, (key, _)) in keys.iter().enumerate() {
                    if let Some(j) = keys[..i].iter().position(|(k, _)| k == key) {
                        return Err(AccessError::Config {
                            key: "api_keys",
                            message: format!(
                                "entries {} and {} are the same key: list each key once",
                                j + 1,
                                i + 1
                            ),
                        });
                    }
                }
                // Kept as digests: every comparison is of 32 bytes with 32 bytes, so its timing
                // says nothing about a key's length either.
                Verifier::ApiKeys(
                    keys.into_iter()
                        .map(|(k, tier)| (digest(k.as_bytes()), tier))
                        .collect(),
                )
            }
            AuthMode::Jwt => {
                use jsonwebtoken::{Algorithm, DecodingKey, Validation};
                let (key, algorithm) = match (&config.jwt_hs256_secret, &config.jwt_rs256_public_key_file) {
                    (Some(secret), None) => {
                        let secret = secret.resolve().map_err(|message| AccessError::Config {
                            key: "jwt_hs256_secret",
                            message,
                        })?;
                        if secret.len() < 32 {
                            return Err(AccessError::Config {
                                key: "jwt_hs256_secret",
                                message: "use a secret of at least 32 bytes".into(),
                            });
                        }
                        (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
                    }
                    (None, Some(path)) => {
                        let pem = std::fs::read(path).map_err(|e| AccessError::Config {
                            key: "jwt_rs256_public_key_file",
                            message: format!("cannot read {path}: {e}"),
                        })?;
                        let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| AccessError::Config {
                            key: "jwt_rs256_public_key_file",
                            message: format!("{path} is not an RSA public key in PEM: {e}"),
                        })?;
                        (key, Algorithm::RS256)
                    }
                    _ => {
                        return Err(AccessError::Config {
                            key: "auth",
                            message: "auth = \"jwt\" needs exactly one of jwt_hs256_secret and jwt_rs256_public_key_file".into(),
                        })
                    }
                };
                // Only the configured algorithm: a token cannot pick a weaker one (alg confusion).
                let mut validation = Validation::new(algorithm);
                validation.leeway = config.jwt_leeway_secs;
                validation.validate_nbf = true;
                let mut required = vec!["exp"];
                match &config.jwt_audience {
                    Some(aud) => {
                        validation.set_audience(&[aud]);
                        required.push("aud");
                    }
                    // Without a configured audience a token's `aud` is not ours to judge.
                    None => validation.validate_aud = false,
                }
                if let Some(iss) = &config.jwt_issuer {
                    validation.set_issuer(&[iss]);
                    required.push("iss");
                }
                validation.set_required_spec_claims(&required);
                Verifier::Jwt(Box::new(JwtVerifier {
                    key,
                    validation,
                    symbols_claim: config.jwt_symbols_claim.clone(),
                    require_symbols_claim: config.jwt_require_symbols_claim,
                    leeway: Duration::from_secs(config.jwt_leeway_secs),
                    tier_claim: tiers.jwt_claim.clone(),
                }))
            }
        };
        let ticket_key = match &config.ticket_key {
            None => None,
            Some(secret) => {
                let secret = secret.resolve().map_err(|message| AccessError::Config {
                    key: "ticket_key",
                    message,
                })?;
                if secret.len() < 32 {
                    return Err(AccessError::Config {
                        key: "ticket_key",
                        message: "must be at least 32 characters (e.g. `openssl rand -hex 32`)"
                            .into(),
                    });
                }
                Some(TicketKey::from_secret(&secret))
            }
        };
        Ok(Access {
            verifier,
            ticket_key,
            allowed_origins: config.allowed_origins.clone(),
            limits,
            default_tier: tiers.default,
            delayed_offered,
            counts,
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .map(|p| parse_net(p))
                .collect::<Result<_, _>>()
                .map_err(|message| AccessError::Config {
                    key: "trusted_proxies",
                    message,
                })?,
            proxy_protocol: config.proxy_protocol,
        })
    }

    /// Whether a connection from `peer` starts with a PROXY protocol header to read.
    pub fn reads_proxy_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol && self.is_trusted_proxy(peer)
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
    /// address in `X-Forwarded-For` (every header of it, in order) that is not a trusted proxy
    /// itself: proxies append the address they got the request from, so what a client writes
    /// into the header itself stands to the left of that and is never reached. A right-most
    /// entry that is not an address (a misconfigured proxy) leaves the peer's address.
    pub fn client_ip<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let peer = peer?;
        if !self.is_trusted_proxy(peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                break;
            };
            client = ip;
            if !self.is_trusted_proxy(ip) {
                break;
            }
        }
        Some(client)
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The credential a failed authentication is counted under: a keyed hash of the token as
    /// sent (none at all is a credential too).
    pub fn fingerprint(&self, token: Option<&str>) -> u64 {
        use std::hash::BuildHasher;
        self.counts.fingerprints.hash_one(token)
    }

    /// The Origin check: `origin` is the request's Origin header, if any.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), Refusal> {
        match origin {
            Some(o)
                if !self.allowed_origins.is_empty()
                    && !self.allowed_origins.iter().any(|a| a == o) =>
            {
                Err(Refusal::Origin)
            }
            _ => Ok(()),
        }
    }

    /// What a cross-origin read of the gateway's files may see (`Access-Control-Allow-Origin`):
    /// the same allow-list as the WebSocket's Origin check.
    pub fn cors_origin<'a>(&self, origin: Option<&'a str>) -> CorsOrigin<'a> {
        match origin {
            _ if self.allowed_origins.is_empty() => CorsOrigin::Any,
            Some(o) if self.allowed_origins.iter().any(|a| a == o) => CorsOrigin::Echo(o),
            _ => CorsOrigin::Refused,
        }
    }

    /// Whether the CORS answer depends on the request's Origin (so caches must key on it).
    pub fn cors_varies_by_origin(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    /// The token check: `token` from `?token=` or `Authorization: Bearer`.
    pub fn authorize(&self, token: Option<&str>) -> Result<Grant, Refusal> {
        match &self.verifier {
            Verifier::Off => Ok(Grant {
                tier: self.default_tier,
                ..Grant::default()
            }),
            Verifier::ApiKeys(keys) => {
                let token = digest(token.ok_or(Refusal::Unauthorized)?.as_bytes());
                // Every key's digest is compared, in constant time per key, so the answer's timing
                // does not tell which key (or how much of one, or how long one) matched.
                let mut matched = subtle::Choice::from(0);
                let mut index = 0u64;
                for (i, (k, _)) in keys.iter().enumerate() {
                    let eq = k.ct_eq(&token);
                    index.conditional_assign(&(i as u64), eq);
                    matched |= eq;
                }
                if bool::from(matched) {
                    let index = index as usize;
                    Ok(Grant {
                        credential: Some(Credential::ApiKey(keys[index].0)),
                        tier: keys[index].1,
                        ..Grant::default()
                    })
                } else {
                    Err(Refusal::Unauthorized)
                }
            }
            Verifier::Jwt(jwt) => {
                let JwtVerifier {
                    key,
                    validation,
                    symbols_claim,
                    require_symbols_claim,
                    leeway,
                    tier_claim,
                } = jwt.as_ref();
                let token = token.ok_or(Refusal::Unauthorized)?;
                let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
                    token, key, validation,
                )
                .map_err(|_| Refusal::Unauthorized)?;
                let exp = data
                    .claims
                    .get("exp")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or(Refusal::Unauthorized)?;
                let symbols = match data.claims.get(symbols_claim) {
                    None if *require_symbols_claim => return Err(Refusal::Unauthorized),
                    None => None,
                    Some(serde_json::Value::Array(items)) => Some(
                        items
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_uppercase)
                                    .ok_or(Refusal::Unauthorized)
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                    Some(_) => return Err(Refusal::Unauthorized),
                };
                // Checked: an `exp` past what the clock can represent would panic the addition.
                // The session ends where verification would start refusing: `exp` + leeway.
                let expires_at = UNIX_EPOCH
                    .checked_add(Duration::from_secs(exp))
                    .and_then(|at| at.checked_add(*leeway))
                    .ok_or(Refusal::Unauthorized)?;
                // Any `sub` is the credential, whatever its JSON type: a number is as much a
                // subject as a string (a type that changed would otherwise escape the per-token
                // limit with a token per connection).
                let credential = match data.claims.get("sub") {
                    Some(serde_json::Value::String(sub)) => Credential::Subject(sub.clone()),
                    Some(sub) if !sub.is_null() => Credential::Subject(sub.to_string()),
                    _ => {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        token.hash(&mut h);
                        Credential::Token(h.finish())
                    }
                };
                let tier = match data.claims.get(tier_claim) {
                    None => self.default_tier,
                    Some(v) => v
                        .as_str()
                        .and_then(Tier::parse)
                        .filter(|t| *t != Tier::Delayed || self.delayed_offered)
                        .ok_or(Refusal::Unauthorized)?,
                };
                Ok(Grant {
                    expires_at: Some(expires_at),
                    symbols,
                    credential: Some(credential),
                    tier,
                })
            }
        }
    }

    /// Whether auth is on (tokens are checked at all).
    /// The configured ticket key, if any (else each gateway's own, `Tickets`).
    pub fn ticket_key(&self) -> Option<&TicketKey> {
        self.ticket_key.as_ref()
    }

    pub fn auth_required(&self) -> bool {
        !matches!(self.verifier, Verifier::Off)
    }

    /// The address a client is counted under: an IPv4 address, or an IPv6 address cut to
    /// `ipv6_prefix_len` bits (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u32::from(self.limits.ipv6_prefix_len.min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    IpAddr::V6((u128::from(v6) & mask).into())
                }
            },
        }
    }

    /// Refuses (429, unverified) a credential that failed `auth_failures_per_ip` times from this
    /// client within the window: a client repeating a bad token (a stale one, a guess) cannot
    /// make the gateway verify it again and again. Counted per address *and* credential, so it
    /// can never refuse a token that verifies: one client's bad tokens never lock out another
    /// client behind the same address (a proxy's, a NAT's), nor the same client's good token.
    pub fn check_auth_throttle(
        &self,
        client: IpAddr,
        credential: u64,
        now: Instant,
    ) -> Result<(), Refusal> {
        match lock(&self.counts.failures).get(&(client, credential)) {
            Some(f)
                if f.count >= self.limits.auth_failures
                    && now.duration_since(f.since) < self.limits.auth_failure_window =>
            {
                Err(Refusal::AuthThrottled)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication of `credential` (`fingerprint`) from `client`.
    pub fn auth_failed(&self, client: IpAddr, credential: u64, now: Instant) {
        let window = self.limits.auth_failure_window;
        let client = (client, credential);
        let mut failures = lock(&self.counts.failures);
        if failures.len() >= MAX_TRACKED_FAILING_ADDRESSES && !failures.contains_key(&client) {
            failures.retain(|_, f| now.duration_since(f.since) < window);
            if failures.len() >= MAX_TRACKED_FAILING_ADDRESSES {
                return;
            }
        }
        let f = failures.entry(client).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.duration_since(f.since) >= window {
            *f = Failures {
                count: 0,
                since: now,
            };
        }
        f.count = f.count.saturating_add(1);
    }

    /// Counts a connection from `client` (a `client_key`) in, unless it already has
    /// `max_connections_per_ip` open.
    pub fn admit_ip(self: &Arc<Self>, client: IpAddr) -> Result<IpGuard, Refusal> {
        admit(
            &self.counts.per_ip,
            client,
            self.limits.max_per_ip,
            Refusal::PerIpLimit,
        )?;
        Ok(IpGuard {
            access: self.clone(),
            ip: client,
        })
    }

    /// Counts a freshly accepted socket from `peer` in, unless its address already has
    /// `max_pending_per_ip` sockets that are not yet sessions or answered: so that one address
    /// cannot fill the places a worker keeps for handshakes and requests (every other client
    /// would wait in the kernel's backlog). A trusted proxy carries many clients' requests and is
    /// not counted; its clients are, once their request names them (`admit`).
    pub fn admit_pending(self: &Arc<Self>, peer: IpAddr) -> Result<PendingGuard, Refusal> {
        if self.is_trusted_proxy(peer) {
            return Ok(PendingGuard {
                access: self.clone(),
                ip: None,
            });
        }
        let ip = self.client_key(peer);
        admit(
            &self.counts.pending,
            ip,
            self.limits.max_pending_per_ip,
            Refusal::PendingPerIp,
        )?;
        Ok(PendingGuard {
            access: self.clone(),
            ip: Some(ip),
        })
    }

    /// Counts a connection with `credential` in, unless it already has `max_connections_per_token`
    /// open: one leaked key cannot take the whole gateway.
    pub fn admit_token(self: &Arc<Self>, credential: Credential) -> Result<TokenGuard, Refusal> {
        admit(
            &self.counts.per_token,
            credential.clone(),
            self.limits.max_per_token,
            Refusal::PerTokenLimit,
        )?;
        Ok(TokenGuard {
            access: self.clone(),
            credential,
        })
    }
}

/// An address or a CIDR of `trusted_proxies`.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or a CIDR (e.g. \"10.0.0.0/8\")"))
}

/// One `X-Forwarded-For` hop: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests;
