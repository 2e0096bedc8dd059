//! Start-up: the TOML config, its defaults, and `validate()` with errors that name the file, the key
//! and what to change.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::access::{AccessConfig, AuthMode, Tier, TiersConfig};
use crate::feed::{Feed, FeedError, HttpPollConfig, ReplayConfig, SimulatedConfig};
use crate::model::{ms_within, MAX_SETTING_MS};
use crate::scaleout::publish::PublishConfig;
use crate::session::LimitsConfig;

/// The default config, embedded so that `quotegw` with no flags runs exactly what
/// `config/quotegw.toml` documents.
pub const DEFAULT_CONFIG: &str = include_str!("../config/quotegw.toml");
pub const DEFAULT_CONFIG_NAME: &str = "config/quotegw.toml (embedded default)";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {location}key '{key}': {message}")]
    Invalid {
        path: String,
        /// "line N: " where the parser knows it
        location: String,
        key: String,
        message: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HOST:PORT the HTTP and WebSocket server binds.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// actix worker threads that run the WebSocket sessions; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this HOST:PORT instead of `listen` (e.g.
    /// loopback only, so that metrics are not public).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub tiers: TiersConfig,
    /// Publish every change of a symbol's state to NATS: this gateway is a scale-out ingest.
    #[serde(default)]
    pub publish: Option<PublishConfig>,
    #[serde(default)]
    pub feeds: Vec<FeedConfig>,
    /// How many trade prints each symbol keeps (`index/trades.rs`).
    #[serde(default)]
    pub trades: crate::index::TradesConfig,
    /// Which bar intervals are built and how many bars each keeps (`index/bars.rs`).
    #[serde(default)]
    pub bars: crate::index::BarsConfig,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// A deserializer's message as the operator should read it: never with the value of a string
/// (found from outside: `api_keys = "sk-..."`, a string for a list, printed the key in the error,
/// to the journal), and an `api_keys` entry's shapes spelled out.
fn explain(message: &str) -> String {
    if message.contains("untagged enum ApiKeyEntry") {
        return "each entry is a key (\"...\" or \"${NAME}\") or { key = \"...\", tier = \"realtime\" \
                | \"delayed\" | \"throttled\" }"
            .into();
    }
    // `invalid type: string "<value>", expected ...` (serde escapes quotes inside the value).
    let Some(start) = message.find("string \"") else {
        return message.to_string();
    };
    let value = start + "string \"".len();
    let mut end = None;
    let mut escaped = false;
    for (i, c) in message[value..].char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => {
                end = Some(value + i);
                break;
            }
            _ => escaped = false,
        }
    }
    match end {
        Some(end) => format!("{}a string{}", &message[..start], &message[end + 1..]),
        None => format!("{}a string", &message[..start]),
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown)
    }

    /// The embedded default config.
    pub fn default_config() -> Config {
        Config::parse(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME)
            .expect("the embedded default config is valid (checked by a unit test)")
    }

    /// Parses and validates TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let invalid = |key: String, span: Option<std::ops::Range<usize>>, message: String| {
            let location = span
                // Newlines before the span, plus one: a span at the start of a line (an unknown
                // key) is on that line, not the one before.
                .map(|s| {
                    format!(
                        "line {}: ",
                        text.as_bytes()[..s.start.min(text.len())]
                            .iter()
                            .filter(|b| **b == b'\n')
                            .count()
                            + 1
                    )
                })
                .unwrap_or_default();
            ConfigError::Invalid {
                path: path.to_string(),
                location,
                key,
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid("(syntax)".into(), e.span(), e.message().to_string()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // A feed is an internally tagged enum: serde reads it whole before its variant, and
            // the error loses the key and the line inside it. Read that feed again for them.
            if let Some((key, line, message)) = feed_error(text, &key) {
                return ConfigError::Invalid {
                    path: path.to_string(),
                    location: line.map_or_else(String::new, |l| format!("line {l}: ")),
                    key,
                    message,
                };
            }
            invalid(key, inner.span(), explain(inner.message()))
        })?;
        config
            .validate()
            .map_err(|(key, message)| invalid(key, None, message))?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, uniqueness, addresses. Errors are (key, what to change).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.listen_addr().map_err(|m| ("listen".to_string(), m))?;
        if let Some(m) = &self.metrics_listen {
            let ops = resolve(m).map_err(|e| ("metrics_listen".to_string(), e))?;
            // Found from outside: a start failed binding it as "in use by another process"
            // (the same address, or one the other's wildcard covers).
            let clash = self.listen_addr().is_ok_and(|public| {
                let ip = |a: SocketAddr| a.ip().to_canonical();
                ops.port() == public.port()
                    && (ip(ops) == ip(public)
                        || ops.ip().is_unspecified()
                        || public.ip().is_unspecified())
            });
            if ops.port() != 0 && clash {
                return Err((
                    "metrics_listen".into(),
                    format!("'{m}' is listen's address: give it another port"),
                ));
            }
        }
        if self.workers > 256 {
            return Err((
                "workers".into(),
                "must be between 0 (one per core) and 256".into(),
            ));
        }
        self.check_protected_mode()?;
        self.access.validate()?;
        let l = &self.limits;
        let positive: [(&str, u64); 8] = [
            ("max_connections_per_ip", l.max_connections_per_ip as u64),
            ("max_connections", l.max_connections as u64),
            (
                "max_symbols_per_connection",
                l.max_symbols_per_connection as u64,
            ),
            ("ops_per_second", l.ops_per_second.into()),
            ("ops_burst", l.ops_burst.into()),
            (
                "max_connections_per_token",
                l.max_connections_per_token as u64,
            ),
            ("auth_failures_per_ip", l.auth_failures_per_ip.into()),
            ("max_pending_per_ip", l.max_pending_per_ip as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((format!("limits.{key}"), "must be greater than 0".into()));
            }
        }
        // Every duration has a stated range: an absurd value is refused here rather than
        // overflowing a deadline (`Instant + Duration`) in a connection later.
        let durations: [(&str, u64); 5] = [
            ("slow_consumer_timeout_ms", l.slow_consumer_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("ping_interval_ms", l.ping_interval_ms),
            ("handshake_timeout_ms", l.handshake_timeout_ms),
            ("auth_failure_window_ms", l.auth_failure_window_ms),
        ];
        for (key, value) in durations {
            ms_within(&format!("limits.{key}"), value, 1..=MAX_SETTING_MS)?;
        }
        if self.access.jwt_leeway_secs > 3600 {
            return Err((
                "access.jwt_leeway_secs".into(),
                "must be between 0 and 3600 (seconds)".into(),
            ));
        }
        if l.min_frame_interval_ms > 1000 {
            return Err((
                "limits.min_frame_interval_ms".into(),
                "must be between 0 (no batching window) and 1000".into(),
            ));
        }
        if !(10..=100).contains(&l.fanout_busy_percent) {
            return Err((
                "limits.fanout_busy_percent".into(),
                "must be between 10 and 100 (100: batches grow only when the worker is saturated)"
                    .into(),
            ));
        }
        if !(1..=128).contains(&l.ipv6_prefix_len) {
            return Err((
                "limits.ipv6_prefix_len".into(),
                "must be between 1 and 128 (64: one host's /64)".into(),
            ));
        }
        if l.send_buffer_bytes != 0 && !(4096..=64 * 1024 * 1024).contains(&l.send_buffer_bytes) {
            return Err((
                "limits.send_buffer_bytes".into(),
                "must be 0 (kernel autotuning) or between 4096 and 67108864".into(),
            ));
        }
        if !(256..=16 * 1024 * 1024).contains(&l.max_frame_bytes) {
            return Err((
                "limits.max_frame_bytes".into(),
                "must be between 256 and 16777216".into(),
            ));
        }
        self.check_tiers()?;
        self.trades.validate()?;
        self.bars.parsed()?;
        if let Some(p) = &self.publish {
            p.validate()?;
            if self.feeds.iter().any(|f| matches!(f, FeedConfig::Nats(_))) {
                return Err((
                    "publish".into(),
                    "an edge (a feed of kind \"nats\") cannot also publish: one ingest assigns seq"
                        .into(),
                ));
            }
        }
        if self.feeds.iter().any(|f| matches!(f, FeedConfig::Nats(_))) && self.feeds.len() > 1 {
            return Err((
                "feeds".into(),
                "a feed of kind \"nats\" is the edge's only feed (the ingest does the failover)"
                    .into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, feed) in self.feeds.iter().enumerate() {
            let name = feed.name();
            if name.is_empty() || !names.insert(name) {
                return Err((
                    format!("feeds[{i}].name"),
                    format!("feed names must be non-empty and unique (got '{name}')"),
                ));
            }
            feed.validate()
                .map_err(|(key, m)| (format!("feeds[{i}].{key}"), m))?;
        }
        Ok(())
    }

    /// Protected mode (as Redis has it): `auth = "off"` serves anyone who can reach `listen`. On
    /// loopback that is the machine's own users; anywhere else it must be chosen on purpose.
    fn check_protected_mode(&self) -> Result<(), (String, String)> {
        let addr = self.listen_addr().map_err(|m| ("listen".to_string(), m))?;
        if self.access.auth == AuthMode::Off
            && !self.access.allow_anonymous
            && !addr.ip().is_loopback()
        {
            return Err((
                "access.auth".into(),
                format!(
                    "is \"off\" while listen = {addr} is not a loopback address: anyone who can reach \
                     it could connect. Set [access] auth = \"api_key\" or \"jwt\", or \
                     allow_anonymous = true to serve anyone on purpose"
                ),
            ));
        }
        Ok(())
    }

    fn check_tiers(&self) -> Result<(), (String, String)> {
        let t = &self.tiers;
        if let Some(d) = &t.delayed {
            if d.delay_ms == 0 || d.delay_ms > 86_400_000 {
                return Err((
                    "tiers.delayed.delay_ms".into(),
                    "must be between 1 and 86400000 (a day)".into(),
                ));
            }
            if !(10..=d.delay_ms.max(10)).contains(&d.granularity_ms) {
                return Err((
                    "tiers.delayed.granularity_ms".into(),
                    "must be at least 10 and at most delay_ms".into(),
                ));
            }
        } else if t.default == Tier::Delayed {
            return Err((
                "tiers.default".into(),
                "is \"delayed\", which needs a [tiers.delayed] table".into(),
            ));
        }
        if !(1..=3_600_000).contains(&t.throttled.interval_ms) {
            return Err((
                "tiers.throttled.interval_ms".into(),
                "must be between 1 and 3600000".into(),
            ));
        }
        Ok(())
    }

    /// The listen address, resolved.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.listen)
    }
}

/// For an error at `feeds[N]` itself: the key inside that feed, its line, and the message, found by
/// deserializing the feed's table as its `kind`'s config with the path kept.
fn feed_error(text: &str, key: &str) -> Option<(String, Option<usize>, String)> {
    let index: usize = key
        .strip_prefix("feeds[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    let doc: toml::Table = toml::from_str(text).ok()?;
    let mut feed = doc
        .get("feeds")?
        .as_array()?
        .get(index)?
        .as_table()?
        .clone();
    let kind = feed.remove("kind")?;
    let feed = toml::Value::Table(feed);
    fn inner<T: serde::de::DeserializeOwned>(
        feed: toml::Value,
    ) -> Option<serde_path_to_error::Error<toml::de::Error>> {
        serde_path_to_error::deserialize::<_, T>(feed).err()
    }
    let err = match kind.as_str()? {
        "simulated" => inner::<crate::feed::SimulatedConfig>(feed),
        "replay" => inner::<crate::feed::ReplayConfig>(feed),
        "http_poll" => inner::<crate::feed::HttpPollConfig>(feed),
        "nats" => inner::<crate::scaleout::edge::NatsFeedConfig>(feed),
        _ => None,
    }?;
    let inner_key = err.path().to_string();
    let message = explain(err.into_inner().message());
    // The line: where the key (an unknown field's path is the field) is set in that feed.
    let first = inner_key.split(['.', '[']).next().unwrap_or("");
    let line = line_in_feed(text, index, first);
    let key = match inner_key.as_str() {
        "." | "" => key.to_string(),
        k => format!("{key}.{k}"),
    };
    Some((key, line, message))
}

/// The line (1-based) of `name = ...` in the `index`-th `[[feeds]]` table of `text` (its
/// sub-tables included, up to the next `[[...]]`).
fn line_in_feed(text: &str, index: usize, name: &str) -> Option<usize> {
    if name.is_empty() {
        return None;
    }
    let mut seen = 0;
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("[[") {
            inside = line.starts_with("[[feeds]]") && {
                seen += 1;
                seen == index + 1
            };
            continue;
        }
        if inside
            && line
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(n + 1);
        }
    }
    None
}

/// A HOST:PORT address, resolved.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("'{addr}' is not a HOST:PORT address: {e}"))?
        .next()
        .ok_or_else(|| format!("'{addr}' resolves to no address"))
}

/// The `[[feeds]]` entries of the config: a closed set, so that the compiler points at every place a
/// new adapter must be handled.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedConfig {
    Simulated(SimulatedConfig),
    Replay(ReplayConfig),
    HttpPoll(HttpPollConfig),
    /// A scale-out edge: states from an ingest over NATS instead of upstreams.
    Nats(crate::scaleout::edge::NatsFeedConfig),
}

impl FeedConfig {
    /// Its `kind` in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedConfig::Simulated(_) => "simulated",
            FeedConfig::Replay(_) => "replay",
            FeedConfig::HttpPoll(_) => "http_poll",
            FeedConfig::Nats(_) => "nats",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            FeedConfig::Simulated(c) => &c.name,
            FeedConfig::Replay(c) => &c.name,
            FeedConfig::HttpPoll(c) => &c.name,
            FeedConfig::Nats(c) => &c.name,
        }
    }

    /// Whether the feed stamps its ticks with the wall clock (a simulated market, a polled
    /// upstream, a restamped replay), so that the wall clock ends its bars too (`index::Market`).
    /// A replay with its recorded timestamps ends bars by them only: replayed, it builds the bars
    /// it built live.
    pub fn wall_clock(&self) -> bool {
        match self {
            FeedConfig::Simulated(_) | FeedConfig::HttpPoll(_) => true,
            FeedConfig::Replay(c) => c.restamp,
            FeedConfig::Nats(_) => false,
        }
    }

    /// Checks the adapter's own keys; errors are (key, what to change).
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            FeedConfig::Simulated(c) => c.validate(),
            FeedConfig::Replay(c) => c.validate(),
            FeedConfig::HttpPoll(c) => c.validate(),
            FeedConfig::Nats(c) => c.validate(),
        }
    }

    pub fn build(&self) -> Result<Box<dyn Feed>, FeedError> {
        match self {
            FeedConfig::Simulated(c) => Ok(Box::new(crate::feed::simulated::SimulatedFeed::new(
                c.clone(),
            ))),
            FeedConfig::Replay(c) => Ok(Box::new(crate::feed::replay::ReplayFeed::new(c.clone())?)),
            FeedConfig::HttpPoll(c) => Ok(Box::new(crate::feed::http_poll::HttpPollFeed::new(
                c.clone(),
            )?)),
            FeedConfig::Nats(c) => Ok(Box::new(crate::scaleout::edge::NatsFeed::new(c.clone()))),
        }
    }
}

#[cfg(test)]
mod tests;
