//! Start-up: the TOML config, its defaults, and `validate()` with errors that name the file, the key
//! and what to change.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::access::{AccessConfig, AuthMode, Tier, TiersConfig};
use crate::feed::FeedConfig;
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
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
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
                .map(|s| {
                    format!(
                        "line {}: ",
                        text[..s.start.min(text.len())].lines().count().max(1)
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
            invalid(key, inner.span(), inner.message().to_string())
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
            resolve(m).map_err(|e| ("metrics_listen".to_string(), e))?;
        }
        if self.workers > 256 {
            return Err((
                "workers".into(),
                "must be between 0 (one per core) and 256".into(),
            ));
        }
        self.check_protected_mode()?;
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
    let message = err.into_inner().message().to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid_and_matches_the_issue() {
        let c = Config::parse(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.limits.max_symbols_per_connection, 1000);
        assert_eq!(c.limits.max_frame_bytes, 65_536);
        assert_eq!((c.limits.ops_per_second, c.limits.ops_burst), (50, 100));
        assert_eq!(c.limits.slow_consumer_timeout_ms, 10_000);
        assert_eq!(c.limits.idle_timeout_ms, 45_000);
        assert_eq!(c.limits.min_frame_interval_ms, 0);
        assert_eq!(
            c.limits.min_frame_interval_ms,
            LimitsConfig::default().min_frame_interval_ms,
            "a config without [limits] gets the same batching window as the documented default"
        );
        assert_eq!(
            c.limits.fanout_busy_percent,
            LimitsConfig::default().fanout_busy_percent,
        );
        assert_eq!(c.feeds.len(), 1);
    }

    fn err(text: &str) -> String {
        Config::parse(text, "my.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = err("[limits]\nmax_frame_bytes = \"big\"\n");
        assert!(
            e.starts_with("my.toml: line 2: key 'limits.max_frame_bytes':"),
            "{e}"
        );
        let e = err("lisen = \"x\"\n");
        assert!(e.contains("unknown field") && e.contains("lisen"), "{e}");
        let e = err("[limits]\nops_per_second = 0\n");
        assert_eq!(
            e,
            "my.toml: key 'limits.ops_per_second': must be greater than 0"
        );
        let e = err("[limits]\nmin_frame_interval_ms = 5000\n");
        assert_eq!(
            e,
            "my.toml: key 'limits.min_frame_interval_ms': must be between 0 (no batching window) and 1000"
        );
        assert!(Config::parse("[limits]\nmin_frame_interval_ms = 0\n", "my.toml").is_ok());
        for busy in [0, 9, 101] {
            let e = err(&format!("[limits]\nfanout_busy_percent = {busy}\n"));
            assert_eq!(
                e,
                "my.toml: key 'limits.fanout_busy_percent': must be between 10 and 100 (100: batches grow only when the worker is saturated)"
            );
        }
        assert!(Config::parse("[limits]\nfanout_busy_percent = 100\n", "my.toml").is_ok());
        let e = err("[[feeds]]\nkind = \"simulated\"\nname = \"a\"\nticks_per_second = 0\n");
        assert!(e.contains("key 'feeds[0].ticks_per_second'"), "{e}");
        let e = err("[[feeds]]\nkind = \"carrier-pigeon\"\nname = \"a\"\n");
        assert!(
            e.contains("feeds[0]") && e.contains("carrier-pigeon"),
            "{e}"
        );
        let e = err("listen = \"nonsense\"\n");
        assert!(e.contains("key 'listen'"), "{e}");
        let e = err("x = [\n");
        assert!(e.starts_with("my.toml: "), "{e}");
        let e = err("[limits]\nipv6_prefix_len = 0\n");
        assert!(e.contains("key 'limits.ipv6_prefix_len'"), "{e}");
        let e = err("[limits]\nsend_buffer_bytes = 100\n");
        assert!(e.contains("key 'limits.send_buffer_bytes'"), "{e}");
    }

    /// Regression (issue 25): `ping_interval_ms` and `idle_timeout_ms` had no upper bound, and an
    /// absurd value overflowed `Instant + Duration` in every connection. Every duration in the
    /// config has a stated range, refused at start.
    #[test]
    fn every_duration_has_a_stated_range() {
        let huge = u64::MAX;
        for key in [
            "limits.ping_interval_ms",
            "limits.idle_timeout_ms",
            "limits.slow_consumer_timeout_ms",
            "limits.handshake_timeout_ms",
            "limits.auth_failure_window_ms",
        ] {
            let (table, name) = key.split_once('.').unwrap();
            let e = err(&format!("[{table}]\n{name} = {huge}\n"));
            assert_eq!(
                e,
                format!("my.toml: key '{key}': must be between 1 and 86400000 (milliseconds)")
            );
            assert!(Config::parse(&format!("[{table}]\n{name} = 86400000\n"), "ok").is_ok());
        }
        let poll = "url = \"http://h/q?s={symbols}\"\nsymbols = [\"A\"]\n[feeds.response]\nshape = \"array\"\nfields = { bid = \"b\" }\n";
        let feeds = [
            ("http_poll", "interval_ms", poll),
            ("http_poll", "timeout_ms", poll),
            ("http_poll", "stale_after_ms", poll),
            ("http_poll", "backoff_max_ms", poll),
            ("replay", "start_delay_ms", "path = \"x.ndjson\"\n"),
            (
                "nats",
                "stale_after_ms",
                "nats_url = \"nats://127.0.0.1:4222\"\n",
            ),
        ];
        for (kind, key, rest) in feeds {
            let text =
                format!("[[feeds]]\nkind = \"{kind}\"\nname = \"f\"\n{key} = {huge}\n{rest}");
            let e = err(&text);
            assert!(
                e.starts_with(&format!("my.toml: key 'feeds[0].{key}': must be between")),
                "{kind}: {e}"
            );
        }
        let e =
            err("[publish]\nnats_url = \"nats://127.0.0.1:4222\"\ncache_wait_ms = 99999999999\n");
        assert!(
            e.contains("key 'publish.cache_wait_ms': must be between"),
            "{e}"
        );
        let e = err("[access]\njwt_leeway_secs = 99999999999\n");
        assert!(e.contains("key 'access.jwt_leeway_secs'"), "{e}");
    }

    /// Regression (issue 25): a NATS server list that the client cannot parse was a feed failing
    /// after start (logged once) with an empty gateway left up; it is a start-up error naming the
    /// file and key. A well-formed list, spaces and all, is fine.
    #[test]
    fn a_nats_server_list_is_checked_at_start() {
        let edge = |url: &str| {
            format!("[[feeds]]\nkind = \"nats\"\nname = \"bus\"\nnats_url = \"{url}\"\n")
        };
        let ingest = |url: &str| format!("[publish]\nnats_url = \"{url}\"\n");
        let ok = "nats://127.0.0.1:4222, nats://user:pw@10.0.0.6:4222,10.0.0.7";
        assert!(Config::parse(&edge(ok), "e.toml").is_ok());
        assert!(Config::parse(&ingest(ok), "i.toml").is_ok());
        let e = err(&edge("nats://127.0.0.1:4222,nats://u:secret@h:port"));
        assert!(
            e.starts_with(
                "my.toml: key 'feeds[0].nats_url': 'nats://…@h:port': NATS server URL is invalid"
            ),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
        let e = err(&ingest("nats://127.0.0.1:4222,"));
        assert!(
            e.starts_with("my.toml: key 'publish.nats_url': an empty server"),
            "{e}"
        );
        let e = err(&edge("http://127.0.0.1:4222"));
        assert!(e.contains("key 'feeds[0].nats_url'"), "{e}");
        // Credentials without a scheme are never echoed either, and what the client would take
        // but never reach is refused (found from outside: a host called "nats", port 0).
        let e = err(&ingest("nats://127.0.0.1:4222,u:s3cretPW@127.0.0.1:99999"));
        assert!(
            e.contains("'…@127.0.0.1:99999'") && !e.contains("s3cret"),
            "{e}"
        );
        for bad in [
            "nats:/u:s3cretPW@127.0.0.1:4222",
            "nats//u:s3cretPW@127.0.0.1:4222",
            "nats://127.0.0.1:0",
            "nats://127.0.0.1:4222/x",
            "nats://127.0.0.1:4222?x=1",
        ] {
            let e = err(&edge(bad));
            assert!(
                e.starts_with("my.toml: key 'feeds[0].nats_url':") && !e.contains("s3cret"),
                "{bad}: {e}"
            );
        }
    }

    /// Found from outside: every mistake inside a `[[feeds]]` table was reported at `line 1: key
    /// 'feeds[0]'` (or another feed's first line); it names the key and its line.
    #[test]
    fn a_mistake_inside_a_feed_names_its_key_and_line() {
        let text = "listen = \"127.0.0.1:0\"\n\
                    [[feeds]]\nkind = \"simulated\"\nname = \"a\"\n\
                    [[feeds]]\nkind = \"replay\"\nname = \"b\"\npath = \"x.ndjson\"\n\
                    start_delay_ms = \"x\"\n";
        assert_eq!(
            Config::parse(text, "my.toml").unwrap_err().to_string(),
            "my.toml: line 9: key 'feeds[1].start_delay_ms': invalid type: string \"x\", expected u64"
        );
        let e = err("[[feeds]]\nkind = \"simulated\"\nname = \"a\"\nticks_per_secnd = 5\n");
        assert!(
            e.starts_with(
                "my.toml: line 4: key 'feeds[0].ticks_per_secnd': unknown field `ticks_per_secnd`"
            ),
            "{e}"
        );
        let e = err("[[feeds]]\nkind = \"simulated\"\nname = \"a\"\nticks_per_second = -1\n");
        assert!(
            e.starts_with("my.toml: line 4: key 'feeds[0].ticks_per_second': "),
            "{e}"
        );
    }

    #[test]
    fn every_example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = Config::load(&path) {
                    panic!("{}: {e}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked >= 4, "{checked}");
    }

    #[test]
    fn protected_mode_refuses_anonymous_access_off_loopback() {
        let e = err("listen = \"0.0.0.0:8080\"\n");
        assert!(
            e.starts_with("my.toml: key 'access.auth': is \"off\" while listen = 0.0.0.0:8080"),
            "{e}"
        );
        assert!(e.contains("allow_anonymous = true"), "{e}");
        for ok in [
            "listen = \"0.0.0.0:8080\"\n[access]\nallow_anonymous = true\n",
            "listen = \"0.0.0.0:8080\"\n[access]\nauth = \"api_key\"\napi_keys = [\"0123456789abcdef\"]\n",
            "listen = \"127.0.0.1:8080\"\n",
            "listen = \"[::1]:8080\"\n",
            "listen = \"localhost:8080\"\n",
        ] {
            assert!(Config::parse(ok, "ok.toml").is_ok(), "{ok}");
        }
    }
}
