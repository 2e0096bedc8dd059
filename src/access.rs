//! Stage 8, HTTP, before the upgrade: who may open a WebSocket and what they may subscribe to.
//!
//! Checks run in this order, each answering before any WebSocket exists, so a refused client costs
//! one small HTTP response: the Origin allow-list (403, cross-site WebSocket hijacking), the token
//! (401), connections per client IP (429), then the global `max_connections` (503, in `http.rs`).
//!
//! Tokens are API keys (compared in constant time) or JWTs (HS256 or RS256, `exp` required and
//! checked with no leeway; an optional claim lists the symbols or `PREFIX*` patterns the token may
//! subscribe to). A granted connection carries its expiry and symbol patterns into the session,
//! which closes it with 1008 when the token expires. Tokens never reach logs or metrics: only the
//! refusal reason does.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};
use thiserror::Error;

use crate::sync::lock;

/// A secret from the config: the value itself, or `${NAME}` to read the environment variable NAME at
/// start. Never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, with `${NAME}` read from the environment; the error names the variable only.
    pub fn resolve(&self) -> Result<String, String> {
        match self.0.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
            Some(var) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            None => Ok(self.0.clone()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may connect (the default: a gateway on loopback or behind an authenticating proxy).
    #[default]
    Off,
    ApiKey,
    Jwt,
}

/// `[access]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// The one switch: "off", "api_key" or "jwt".
    pub auth: AuthMode,
    /// (auth = "api_key") accepted keys, each a value or "${ENV_VAR}", or a table
    /// `{ key = "...", tier = "delayed" }` giving the key its entitlement tier.
    pub api_keys: Vec<ApiKeyEntry>,
    /// (auth = "jwt") the HS256 shared secret, a value or "${ENV_VAR}".
    pub jwt_hs256_secret: Option<Secret>,
    /// (auth = "jwt") a PEM file with the RS256 public key.
    pub jwt_rs256_public_key_file: Option<String>,
    /// (auth = "jwt") the claim listing what the token may subscribe to: symbols or `PREFIX*`
    /// patterns. A token without the claim may subscribe to everything.
    pub jwt_symbols_claim: String,
    /// (auth = "jwt") the `aud` a token must carry, when set (a token minted for another service
    /// is refused).
    pub jwt_audience: Option<String>,
    /// (auth = "jwt") the `iss` a token must carry, when set.
    pub jwt_issuer: Option<String>,
    /// (auth = "jwt") clock skew allowed on `exp` and `nbf`, seconds.
    pub jwt_leeway_secs: u64,
    /// (auth = "jwt") refuse a token without the symbols claim, instead of granting it every symbol.
    pub jwt_require_symbols_claim: bool,
    /// Browser Origins allowed to open a WebSocket (exact match, e.g. "https://trade.example.com");
    /// empty: any. Requests without an Origin header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// With `auth = "off"`, serve a non-loopback `listen` address anyway. Without it that is a
    /// config error (protected mode, as in Redis): anonymous access must be chosen, not defaulted.
    pub allow_anonymous: bool,
    /// Reverse proxies (addresses or CIDRs, e.g. "127.0.0.1", "10.0.0.0/8") whose
    /// `X-Forwarded-For` says who the client is. From any other peer the header is ignored: the
    /// peer is the client. Every per-address rule uses the client's address.
    pub trusted_proxies: Vec<String>,
    /// Every connection from a trusted proxy starts with a PROXY protocol header (v1 or v2), which
    /// names the client (TCP load balancers: HAProxy, nginx `proxy_protocol`, cloud NLBs). A
    /// connection from one without a valid header is dropped; from other peers none is read.
    pub proxy_protocol: bool,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            auth: AuthMode::Off,
            api_keys: Vec::new(),
            jwt_hs256_secret: None,
            jwt_rs256_public_key_file: None,
            jwt_symbols_claim: "symbols".into(),
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway_secs: DEFAULT_JWT_LEEWAY_SECS,
            jwt_require_symbols_claim: false,
            allowed_origins: Vec::new(),
            allow_anonymous: false,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

/// One `api_keys` entry: a key, or a key with its tier.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ApiKeyEntry {
    Key(Secret),
    WithTier { key: Secret, tier: Tier },
}

impl ApiKeyEntry {
    fn parts(&self) -> (&Secret, Option<Tier>) {
        match self {
            ApiKeyEntry::Key(k) => (k, None),
            ApiKeyEntry::WithTier { key, tier } => (key, Some(*tier)),
        }
    }

    /// The tier the entry gives its key, if it names one.
    pub fn tier(&self) -> Option<Tier> {
        self.parts().1
    }

    /// The key (a value or "${ENV_VAR}").
    pub fn key(&self) -> &Secret {
        self.parts().0
    }
}

impl From<Secret> for ApiKeyEntry {
    fn from(key: Secret) -> ApiKeyEntry {
        ApiKeyEntry::Key(key)
    }
}

/// An entitlement tier: how fresh the data a credential may see is. Exchanges license real-time
/// data per user; delayed and snapshot-rate data are licensed apart and shown to users without
/// real-time rights.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Every tick as it happens.
    #[default]
    Realtime,
    /// Every message shows the quote as it was `[tiers.delayed] delay_ms` ago.
    Delayed,
    /// At most one update per symbol per `[tiers.throttled] interval_ms`.
    Throttled,
}

impl Tier {
    fn parse(s: &str) -> Option<Tier> {
        match s {
            "realtime" => Some(Tier::Realtime),
            "delayed" => Some(Tier::Delayed),
            "throttled" => Some(Tier::Throttled),
            _ => None,
        }
    }
}

/// `[tiers]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TiersConfig {
    /// The tier of a credential that names none (and of every client with `auth = "off"`).
    pub default: Tier,
    /// (auth = "jwt") the claim naming a token's tier.
    pub jwt_claim: String,
    /// The delayed tier. Absent: it is not offered (a credential naming it is refused) and the
    /// index keeps no history.
    pub delayed: Option<DelayedTierConfig>,
    pub throttled: ThrottledTierConfig,
}

impl Default for TiersConfig {
    fn default() -> Self {
        TiersConfig {
            default: Tier::Realtime,
            jwt_claim: "tier".into(),
            delayed: None,
            throttled: ThrottledTierConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayedTierConfig {
    /// How old what a delayed client sees is, ms (15 minutes, the common exchange rule).
    pub delay_ms: u64,
    /// The history keeps a symbol's latest state per bucket of this many ms: ticks within one
    /// bucket reach a delayed client merged.
    pub granularity_ms: u64,
}

impl Default for DelayedTierConfig {
    fn default() -> Self {
        DelayedTierConfig {
            delay_ms: 900_000,
            granularity_ms: 250,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottledTierConfig {
    /// At most one update per symbol per this many ms, whatever `max_hz` asks.
    pub interval_ms: u64,
}

impl Default for ThrottledTierConfig {
    fn default() -> Self {
        ThrottledTierConfig { interval_ms: 1000 }
    }
}

/// Clock skew tolerated on a JWT's `exp` and `nbf` by default: seconds of difference between the
/// issuer's clock and ours are normal; minutes are a misconfigured clock.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 5;

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
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Origin,
        Refusal::Unauthorized,
        Refusal::PerIpLimit,
        Refusal::PerTokenLimit,
        Refusal::AuthThrottled,
        Refusal::PendingPerIp,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::PerIpLimit => "per_ip_limit",
            Refusal::PerTokenLimit => "per_token_limit",
            Refusal::AuthThrottled => "auth_throttled",
            Refusal::PendingPerIp => "pending_per_ip",
        }
    }
}

/// Who a token is, for `max_connections_per_token`: never the token itself, which stays out of
/// memory once verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The n-th configured API key.
    ApiKey(usize),
    /// A JWT's `sub`.
    Subject(String),
    /// A JWT without `sub`: a hash of the token, so each such token counts on its own.
    Token(u64),
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

/// What a granted connection may do.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// When the token stops being valid; the session closes with 1008 then.
    pub expires_at: Option<SystemTime>,
    /// Symbol patterns the token allows; `None`: every symbol.
    pub symbols: Option<Vec<String>>,
    /// Who the token is (`None` with `auth = "off"`).
    pub credential: Option<Credential>,
    /// What the token may see.
    pub tier: Tier,
}

impl Grant {
    /// Whether `symbol` (upper-case) may be subscribed to.
    pub fn allows(&self, symbol: &str) -> bool {
        allows(self.symbols.as_deref(), symbol)
    }

    /// What a connection keeps of the grant while it is served.
    pub fn into_scope(self) -> Scope {
        Scope {
            symbols: self.symbols.map(Box::new),
            tier: self.tier,
        }
    }

    /// Time left before expiry (zero when already expired); `None` for tokens that never expire.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// What a connection keeps of its grant while it is served: 16 bytes where the whole grant takes
/// 72 in every connection (its expiry goes to the connection's clock, its credential to the
/// connection's `TokenGuard`).
#[derive(Debug)]
pub struct Scope {
    /// Boxed: most deployments grant every symbol, and a `Vec` would take 24 bytes inline.
    #[allow(clippy::box_collection)] // 8 bytes inline, for the rare grant with a list
    symbols: Option<Box<Vec<String>>>,
    pub tier: Tier,
}

impl Scope {
    /// Whether `symbol` (upper-case) may be subscribed to.
    pub fn allows(&self, symbol: &str) -> bool {
        allows(self.symbols.as_deref().map(Vec::as_slice), symbol)
    }
}

/// `patterns` (`None`: every symbol) allow `symbol`: an exact name, or a prefix ending in `*`.
fn allows(patterns: Option<&[String]>, symbol: &str) -> bool {
    match patterns {
        None => true,
        Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => symbol.starts_with(prefix),
            None => p == symbol,
        }),
    }
}

enum Verifier {
    Off,
    /// Each key's digest with its tier.
    ApiKeys(Vec<([u8; 32], Tier)>),
    Jwt(Box<JwtVerifier>),
}

struct JwtVerifier {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    symbols_claim: String,
    require_symbols_claim: bool,
    leeway: Duration,
    tier_claim: String,
}

/// The per-client limits `Access` applies (from `[limits]`).
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub max_per_ip: usize,
    pub max_per_token: usize,
    /// IPv6 clients are counted per prefix of this many bits (one host owns a whole /64).
    pub ipv6_prefix_len: u8,
    /// Failed authentications from one IP (or prefix) within `auth_failure_window` before further
    /// attempts are refused with 429 unverified.
    pub auth_failures: u32,
    pub auth_failure_window: Duration,
    /// Sockets from one IP (or prefix) that are not yet sessions or answered.
    pub max_pending_per_ip: usize,
}

/// Most (address, credential) pairs whose recent authentication failures are remembered. Past it,
/// expired entries are dropped first; if none has expired, a new pair is not tracked (its failures
/// are still refused one by one, each costing a verification), so the table stays bounded against
/// a client that owns many addresses or sends many tokens.
const MAX_TRACKED_FAILING_ADDRESSES: usize = 65_536;

/// Recent failed authentications of one credential from one address.
struct Failures {
    count: u32,
    since: Instant,
}

/// The access checks, built once at start.
pub struct Access {
    verifier: Verifier,
    allowed_origins: Vec<String>,
    limits: ClientLimits,
    default_tier: Tier,
    delayed_offered: bool,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Sockets not yet sessions or answered, per peer address (`admit_pending`).
    pending: Mutex<HashMap<IpAddr, usize>>,
    per_token: Mutex<HashMap<Credential, usize>>,
    /// Keyed by the client's address and its credential's fingerprint (`fingerprint`).
    failures: Mutex<HashMap<(IpAddr, u64), Failures>>,
    /// Keys the credentials' fingerprints: random per process, so that nobody can make two
    /// tokens collide on purpose.
    fingerprints: std::hash::RandomState,
    trusted_proxies: Vec<ipnet::IpNet>,
    proxy_protocol: bool,
}

impl Access {
    pub fn new(
        config: &AccessConfig,
        limits: ClientLimits,
        tiers: &TiersConfig,
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
                if keys.is_empty() || keys.iter().any(|(k, _)| k.len() < 16) {
                    return Err(AccessError::Config {
                        key: "api_keys",
                        message: "list at least one key of 16 or more characters".into(),
                    });
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
        Ok(Access {
            verifier,
            allowed_origins: config.allowed_origins.clone(),
            limits,
            default_tier: tiers.default,
            delayed_offered,
            per_ip: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            per_token: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            fingerprints: std::hash::RandomState::new(),
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
        self.fingerprints.hash_one(token)
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
                        credential: Some(Credential::ApiKey(index)),
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
        match lock(&self.failures).get(&(client, credential)) {
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
        let mut failures = lock(&self.failures);
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
            &self.per_ip,
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
            &self.pending,
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
            &self.per_token,
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

/// Counts one more connection under `key`, unless `max` are open.
fn admit<K: std::hash::Hash + Eq>(
    counts: &Mutex<HashMap<K, usize>>,
    key: K,
    max: usize,
    refusal: Refusal,
) -> Result<(), Refusal> {
    let mut counts = lock(counts);
    let n = counts.entry(key).or_insert(0);
    if *n >= max {
        return Err(refusal);
    }
    *n += 1;
    Ok(())
}

/// Counts one connection under `key` out; the map holds only keys with open connections.
fn release<K: std::hash::Hash + Eq>(counts: &Mutex<HashMap<K, usize>>, key: &K) {
    let mut counts = lock(counts);
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// Holds one of an IP's connection places while the connection lives.
pub struct IpGuard {
    access: Arc<Access>,
    ip: IpAddr,
}

impl IpGuard {
    /// The address the connection is counted under (the client's, a trusted proxy's forward).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        release(&self.access.per_ip, &self.ip);
    }
}

/// Holds one of an address's places for sockets not yet sessions or answered (`None`: a trusted
/// proxy's socket, not counted).
pub struct PendingGuard {
    access: Arc<Access>,
    ip: Option<IpAddr>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(ip) = &self.ip {
            release(&self.access.pending, ip);
        }
    }
}

/// Holds one of a credential's connection places while the connection lives.
pub struct TokenGuard {
    access: Arc<Access>,
    credential: Credential,
}

impl Drop for TokenGuard {
    fn drop(&mut self) {
        release(&self.access.per_token, &self.credential);
    }
}

/// The places an admitted connection holds in the per-client counts.
#[derive(Default)]
pub struct ClientGuards {
    pub ip: Option<IpGuard>,
    pub token: Option<TokenGuard>,
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
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(percent_decode(value))
    })
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A fixed-length digest of an API key: what keys are compared as.
fn digest(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key).into()
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
mod tests {
    use super::*;

    fn limits() -> ClientLimits {
        ClientLimits {
            max_per_ip: 2,
            max_per_token: 2,
            ipv6_prefix_len: 64,
            auth_failures: 3,
            auth_failure_window: Duration::from_secs(60),
            max_pending_per_ip: 2,
        }
    }

    fn access(config: AccessConfig) -> Arc<Access> {
        Arc::new(Access::new(&config, limits(), &TiersConfig::default()).unwrap())
    }

    #[test]
    fn api_keys_match_exactly() {
        let a = access(AccessConfig {
            auth: AuthMode::ApiKey,
            api_keys: vec![
                Secret::new("0123456789abcdef").into(),
                Secret::new("fedcba9876543210").into(),
            ],
            ..AccessConfig::default()
        });
        assert!(a.authorize(Some("fedcba9876543210")).is_ok());
        assert_eq!(
            a.authorize(Some("fedcba987654321")).unwrap_err(),
            Refusal::Unauthorized
        );
        assert_eq!(a.authorize(None).unwrap_err(), Refusal::Unauthorized);
        assert!(Access::new(
            &AccessConfig {
                auth: AuthMode::ApiKey,
                api_keys: vec![Secret::new("short").into()],
                ..AccessConfig::default()
            },
            limits(),
            &TiersConfig::default()
        )
        .is_err());
    }

    #[test]
    fn origins_and_per_ip_limits() {
        let a = access(AccessConfig {
            allowed_origins: vec!["https://trade.example.com".into()],
            ..AccessConfig::default()
        });
        assert!(a.check_origin(Some("https://trade.example.com")).is_ok());
        assert!(a.check_origin(None).is_ok());
        assert_eq!(
            a.check_origin(Some("https://evil.example")),
            Err(Refusal::Origin)
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let g1 = a.admit_ip(ip).unwrap();
        let _g2 = a.admit_ip(ip).unwrap();
        assert_eq!(a.admit_ip(ip).err(), Some(Refusal::PerIpLimit));
        drop(g1);
        assert!(a.admit_ip(ip).is_ok());
    }

    #[test]
    fn grants_match_symbols_and_patterns() {
        let g = Grant {
            expires_at: None,
            symbols: Some(vec!["AAPL".into(), "NV*".into()]),
            credential: None,
            tier: Tier::Realtime,
        };
        assert!(g.allows("AAPL") && g.allows("NVDA") && !g.allows("MSFT") && !g.allows("AAP"));
        assert!(Grant::default().allows("ANY"));
    }

    #[test]
    fn tokens_come_from_the_query_or_a_bearer_header() {
        assert_eq!(
            token_of("a=1&token=abc%2Bd", None).as_deref(),
            Some("abc+d")
        );
        assert_eq!(token_of("", Some("Bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(token_of("foo=bar", None), None);
    }

    #[test]
    fn ipv6_clients_count_per_prefix_and_credentials_per_key() {
        let a = access(AccessConfig {
            auth: AuthMode::ApiKey,
            api_keys: vec![
                Secret::new("0123456789abcdef").into(),
                Secret::new("fedcba9876543210").into(),
            ],
            ..AccessConfig::default()
        });
        let key = |s: &str| a.client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        let _g1 = a.admit_ip(key("2001:db8::1")).unwrap();
        let _g2 = a.admit_ip(key("2001:db8::2")).unwrap();
        assert_eq!(
            a.admit_ip(key("2001:db8::3")).err(),
            Some(Refusal::PerIpLimit)
        );
        assert!(a.admit_ip(key("2001:db8:0:1::3")).is_ok(), "another /64");

        let grant = a.authorize(Some("fedcba9876543210")).unwrap();
        assert_eq!(grant.credential, Some(Credential::ApiKey(1)));
        let t1 = a.admit_token(Credential::ApiKey(1)).unwrap();
        let _t2 = a.admit_token(Credential::ApiKey(1)).unwrap();
        assert_eq!(
            a.admit_token(Credential::ApiKey(1)).err(),
            Some(Refusal::PerTokenLimit)
        );
        assert!(a.admit_token(Credential::ApiKey(0)).is_ok(), "another key");
        drop(t1);
        assert!(a.admit_token(Credential::ApiKey(1)).is_ok());
    }

    /// Failures are counted per address and credential: a credential that failed too often
    /// from an address is refused unverified for the window, while another credential from the
    /// same address (a good token behind the same proxy) and the same one from elsewhere are not.
    #[test]
    fn failed_authentications_throttle_that_credential_from_that_address_for_the_window() {
        let a = access(AccessConfig::default());
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let (bad, good) = (
            a.fingerprint(Some("bad-token")),
            a.fingerprint(Some("good")),
        );
        assert_ne!(bad, good);
        assert_ne!(
            a.fingerprint(None),
            a.fingerprint(Some("")),
            "none is not empty"
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.check_auth_throttle(ip, bad, t0).is_ok());
            a.auth_failed(ip, bad, t0);
        }
        assert_eq!(
            a.check_auth_throttle(ip, bad, t0),
            Err(Refusal::AuthThrottled)
        );
        assert!(
            a.check_auth_throttle(ip, good, t0).is_ok(),
            "another credential"
        );
        assert!(a
            .check_auth_throttle("10.0.0.10".parse().unwrap(), bad, t0)
            .is_ok());
        let later = t0 + Duration::from_secs(61);
        assert!(
            a.check_auth_throttle(ip, bad, later).is_ok(),
            "the window passed"
        );
        a.auth_failed(ip, bad, later);
        assert!(
            a.check_auth_throttle(ip, bad, later).is_ok(),
            "counting starts again"
        );
    }

    /// Only a trusted proxy's `X-Forwarded-For` is read, and only its right-most hops: what a
    /// client writes into the header itself never becomes its address.
    #[test]
    fn the_client_address_comes_from_a_trusted_proxy_only() {
        let a = access(AccessConfig {
            trusted_proxies: vec!["127.0.0.1".into(), "10.0.0.0/8".into()],
            ..AccessConfig::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client = |peer: &str, xff: &[&str]| a.client_ip(Some(ip(peer)), xff.iter().copied());
        assert_eq!(
            client("127.0.0.1", &["203.0.113.7"]),
            Some(ip("203.0.113.7"))
        );
        // A forged hop left of the one the proxy appended is never reached.
        assert_eq!(
            client("127.0.0.1", &["6.6.6.6, 203.0.113.7"]),
            Some(ip("203.0.113.7"))
        );
        // Through two trusted proxies, over two headers, with ports.
        assert_eq!(
            client("10.1.2.3", &["198.51.100.2:5555", "10.9.9.9"]),
            Some(ip("198.51.100.2"))
        );
        assert_eq!(
            client("::ffff:127.0.0.1", &["[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        // From an untrusted peer the header changes nothing.
        assert_eq!(client("192.0.2.1", &["203.0.113.7"]), Some(ip("192.0.2.1")));
        // No header, garbage on the right, or only proxies: the nearest address known.
        assert_eq!(client("127.0.0.1", &[]), Some(ip("127.0.0.1")));
        assert_eq!(
            client("127.0.0.1", &["203.0.113.7, bogus"]),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            client("127.0.0.1", &["10.0.0.1, 10.0.0.2"]),
            Some(ip("10.0.0.1"))
        );
        let e = Access::new(
            &AccessConfig {
                trusted_proxies: vec!["10.0.0.0/33".into()],
                ..AccessConfig::default()
            },
            crate::session::LimitsConfig::default().client_limits(),
            &TiersConfig::default(),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("trusted_proxies"), "{e}");
    }

    /// The bearer scheme is case-insensitive (RFC 7235), followed by spaces or tabs.
    #[test]
    fn a_bearer_token_is_read_whatever_the_scheme_case() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc", "Bearer\tabc"] {
            assert_eq!(
                token_of("", Some(header)).as_deref(),
                Some("abc"),
                "{header}"
            );
        }
        assert_eq!(token_of("token=q", Some("Basic abc")).as_deref(), Some("q"));
        assert_eq!(token_of("", Some("Bearerabc")), None);
    }

    #[test]
    fn secrets_are_redacted() {
        assert!(!format!("{:?}", Secret::new("sk-live-1")).contains("sk-live"));
    }
}
