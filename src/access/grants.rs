//! What an admitted client may do (`Grant`): its tier, its symbol `Scope`, when its credential
//! expires.

use std::time::{Duration, SystemTime};

use super::Tier;

/// Who a token is, for `max_connections_per_token`: never the token itself, which stays out of
/// memory once verified.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A configured API key, by its digest: the same key is the same credential across reloads.
    ApiKey([u8; 32]),
    /// A JWT's `sub`.
    Subject(String),
    /// A JWT without `sub`: a hash of the token, so each such token counts on its own.
    Token(u64),
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
    pub(super) symbols: Option<Box<Vec<String>>>,
    pub tier: Tier,
}

impl Scope {
    /// Whether `symbol` (upper-case) may be subscribed to.
    pub fn allows(&self, symbol: &str) -> bool {
        allows(self.symbols.as_deref().map(Vec::as_slice), symbol)
    }
}

/// `patterns` (`None`: every symbol) allow `symbol`: an exact name, or a prefix ending in `*`.
pub(super) fn allows(patterns: Option<&[String]>, symbol: &str) -> bool {
    match patterns {
        None => true,
        Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => symbol.starts_with(prefix),
            None => p == symbol,
        }),
    }
}
