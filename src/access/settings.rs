//! The `[access]` and `[tiers]` sections: authentication mode, API keys (kept as `Secret`s),
//! JWT settings, allowed origins, trusted proxies, and the tiers a credential may grant.

use std::fmt;

use serde::Deserialize;

/// A secret from the config: the value itself, or `${NAME}` to read the environment variable NAME at
/// start. Never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// Whether the value as written (not an `${NAME}`'s) begins or ends with whitespace.
    pub fn has_edge_space(&self) -> bool {
        self.0.trim() != self.0
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

impl AuthMode {
    /// Its value in the config.
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::ApiKey => "api_key",
            AuthMode::Jwt => "jwt",
        }
    }
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
    /// The key tickets (`POST /v1/ticket`) are sealed with, a value or "${ENV_VAR}" of at least
    /// 32 characters: the same on every gateway behind one load balancer, so that a ticket from
    /// one opens a stream on another. Unset: each gateway makes its own at start.
    pub ticket_key: Option<Secret>,
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

impl AccessConfig {
    /// What can be checked without the environment or key files: each `allowed_origins` entry is
    /// an Origin as browsers send one (found from outside: `https://ui.example/` was accepted and
    /// then matched no page, locking every browser out). Errors are (key, what to change).
    pub fn validate(&self) -> Result<(), (String, String)> {
        // Credentials the chosen mode would ignore: `api_keys` with `auth` forgotten would serve
        // anyone (found from outside: accepted without a word).
        let jwt = self.jwt_hs256_secret.is_some() || self.jwt_rs256_public_key_file.is_some();
        let ignored = match self.auth {
            AuthMode::Off if !self.api_keys.is_empty() => Some("api_keys are"),
            AuthMode::Off if jwt => Some("a JWT key is"),
            AuthMode::ApiKey if jwt => Some("a JWT key is"),
            AuthMode::Jwt if !self.api_keys.is_empty() => Some("api_keys are"),
            _ => None,
        };
        if let Some(what) = ignored {
            return Err((
                "access.auth".into(),
                format!(
                    "is \"{}\", but {what} set, which it would ignore: set the auth mode they \
                     are for, or remove them",
                    self.auth.name()
                ),
            ));
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            if let Some(problem) = origin_problem(origin) {
                // Named by place when it has credentials in it (`user:password@`): never printed.
                let shown = if origin.contains('@') {
                    format!("entry {}", i + 1)
                } else {
                    format!("{origin:?}")
                };
                return Err((
                    "access.allowed_origins".into(),
                    format!(
                        "{shown} {problem}; write each as browsers send it, e.g. \
                         \"https://trade.example.com\" or \"http://localhost:3000\""
                    ),
                ));
            }
        }
        for (i, entry) in self.api_keys.iter().enumerate() {
            let key = &entry.parts().0;
            if key.has_edge_space() {
                return Err((
                    "access.api_keys".into(),
                    format!(
                        "entry {} begins or ends with whitespace, which a bearer token never \
                         does (it is trimmed): remove it",
                        i + 1
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Why `o` can never equal a browser's `Origin` header (`scheme://host[:port]`, lower case, no
/// default port, nothing after), if it cannot.
fn origin_problem(o: &str) -> Option<&'static str> {
    if o == "null" {
        return Some("is what sandboxed frames and local files send: any page can pose as one");
    }
    let Some((scheme, rest)) = o.split_once("://") else {
        return Some("has no scheme (https://)");
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        return Some("has a scheme browsers do not send (lower case, like https)");
    }
    if rest.is_empty() {
        return Some("has no host");
    }
    if rest.contains(['/', '?', '#']) {
        return Some("has a path, query or trailing slash, which an Origin never has");
    }
    if rest.contains('*') {
        return Some("has a wildcard: list each Origin exactly");
    }
    if rest.contains(['@', ' ', '\t']) {
        return Some("is not an Origin");
    }
    if rest.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("has capitals: browsers send the host in lower case");
    }
    if !rest.is_ascii() {
        return Some("has characters browsers send in punycode (xn--...): write that form");
    }
    let default_port = match scheme {
        "https" | "wss" => ":443",
        "http" | "ws" => ":80",
        _ => "",
    };
    if !default_port.is_empty() && rest.ends_with(default_port) && !rest.ends_with(']') {
        return Some("names the scheme's default port, which browsers leave out");
    }
    None
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
            ticket_key: None,
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
    pub(super) fn parts(&self) -> (&Secret, Option<Tier>) {
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
    pub(super) fn parse(s: &str) -> Option<Tier> {
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
    /// At most one update per symbol per this many ms, whatever `max_hz` asks (open bars too).
    pub interval_ms: u64,
    /// Whether the tier may subscribe to trade prints (`"trades": true`, `GET /v1/trades`).
    pub trades: bool,
}

impl Default for ThrottledTierConfig {
    fn default() -> Self {
        ThrottledTierConfig {
            interval_ms: 1000,
            trades: false,
        }
    }
}

/// Clock skew tolerated on a JWT's `exp` and `nbf` by default: seconds of difference between the
/// issuer's clock and ours are normal; minutes are a misconfigured clock.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 5;
