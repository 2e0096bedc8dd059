//! Stage 6, HTTP, before the upgrade: who may open a WebSocket and what they may subscribe to.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::conflate::lock;

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
    /// (auth = "api_key") accepted keys, each a value or "${ENV_VAR}".
    pub api_keys: Vec<Secret>,
    /// (auth = "jwt") the HS256 shared secret, a value or "${ENV_VAR}".
    pub jwt_hs256_secret: Option<Secret>,
    /// (auth = "jwt") a PEM file with the RS256 public key.
    pub jwt_rs256_public_key_file: Option<String>,
    /// (auth = "jwt") the claim listing what the token may subscribe to: symbols or `PREFIX*`
    /// patterns. A token without the claim may subscribe to everything.
    pub jwt_symbols_claim: String,
    /// Browser Origins allowed to open a WebSocket (exact match, e.g. "https://trade.example.com");
    /// empty: any. Requests without an Origin header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            auth: AuthMode::Off,
            api_keys: Vec::new(),
            jwt_hs256_secret: None,
            jwt_rs256_public_key_file: None,
            jwt_symbols_claim: "symbols".into(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum AccessError {
    #[error("access.{key}: {message}")]
    Config { key: &'static str, message: String },
}

/// Why an upgrade was refused; the `reason` label of `quotegw_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: a browser Origin not on the allow-list.
    Origin,
    /// 401: no token, or a bad one.
    Unauthorized,
    /// 429: too many connections from this IP.
    PerIpLimit,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::PerIpLimit => "per_ip_limit",
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

/// What a granted connection may do.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// When the token stops being valid; the session closes with 1008 then.
    pub expires_at: Option<SystemTime>,
    /// Symbol patterns the token allows; `None`: every symbol.
    pub symbols: Option<Vec<String>>,
}

impl Grant {
    /// Whether `symbol` (upper-case) may be subscribed to.
    pub fn allows(&self, symbol: &str) -> bool {
        match &self.symbols {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => symbol.starts_with(prefix),
                None => p == symbol,
            }),
        }
    }

    /// Time left before expiry (zero when already expired); `None` for tokens that never expire.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

enum Verifier {
    Off,
    ApiKeys(Vec<Vec<u8>>),
    Jwt(Box<JwtVerifier>),
}

struct JwtVerifier {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
    symbols_claim: String,
}

/// The access checks, built once at start.
pub struct Access {
    verifier: Verifier,
    allowed_origins: Vec<String>,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Access {
    pub fn new(config: &AccessConfig, max_per_ip: usize) -> Result<Access, AccessError> {
        let verifier = match config.auth {
            AuthMode::Off => Verifier::Off,
            AuthMode::ApiKey => {
                let keys = config
                    .api_keys
                    .iter()
                    .map(|k| k.resolve().map(String::into_bytes))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| AccessError::Config {
                        key: "api_keys",
                        message,
                    })?;
                if keys.is_empty() || keys.iter().any(|k| k.len() < 16) {
                    return Err(AccessError::Config {
                        key: "api_keys",
                        message: "list at least one key of 16 or more characters".into(),
                    });
                }
                Verifier::ApiKeys(keys)
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
                validation.leeway = 0;
                validation.set_required_spec_claims(&["exp"]);
                Verifier::Jwt(Box::new(JwtVerifier {
                    key,
                    validation,
                    symbols_claim: config.jwt_symbols_claim.clone(),
                }))
            }
        };
        Ok(Access {
            verifier,
            allowed_origins: config.allowed_origins.clone(),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
        })
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
            Verifier::Off => Ok(Grant::default()),
            Verifier::ApiKeys(keys) => {
                let token = token.ok_or(Refusal::Unauthorized)?.as_bytes();
                // Every key is compared, in constant time per key, so the answer's timing does not
                // tell which key (or how much of one) matched.
                let matched = keys.iter().fold(subtle::Choice::from(0), |any, k| {
                    any | k.as_slice().ct_eq(token)
                });
                if bool::from(matched) {
                    Ok(Grant::default())
                } else {
                    Err(Refusal::Unauthorized)
                }
            }
            Verifier::Jwt(jwt) => {
                let JwtVerifier {
                    key,
                    validation,
                    symbols_claim,
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
                let expires_at = UNIX_EPOCH
                    .checked_add(Duration::from_secs(exp))
                    .ok_or(Refusal::Unauthorized)?;
                Ok(Grant {
                    expires_at: Some(expires_at),
                    symbols,
                })
            }
        }
    }

    /// Counts a connection from `ip` in, unless it already has `max_connections_per_ip` open.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refusal> {
        let mut counts = lock(&self.per_ip);
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIpLimit);
        }
        *n += 1;
        Ok(IpGuard {
            access: self.clone(),
            ip,
        })
    }
}

/// Holds one of an IP's connection places while the connection lives.
pub struct IpGuard {
    access: Arc<Access>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.access.per_ip);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip); // the map holds only IPs with open connections
            }
        }
    }
}

/// The token of a request: `?token=` (browsers cannot set headers on a WebSocket) or a bearer token.
pub fn token_of(query: &str, authorization: Option<&str>) -> Option<String> {
    if let Some(bearer) = authorization.and_then(|h| h.strip_prefix("Bearer ")) {
        return Some(bearer.trim().to_string());
    }
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        Some(percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn access(config: AccessConfig) -> Arc<Access> {
        Arc::new(Access::new(&config, 2).unwrap())
    }

    #[test]
    fn api_keys_match_exactly() {
        let a = access(AccessConfig {
            auth: AuthMode::ApiKey,
            api_keys: vec![
                Secret::new("0123456789abcdef"),
                Secret::new("fedcba9876543210"),
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
                api_keys: vec![Secret::new("short")],
                ..AccessConfig::default()
            },
            1
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
    fn secrets_are_redacted() {
        assert!(!format!("{:?}", Secret::new("sk-live-1")).contains("sk-live"));
    }
}
