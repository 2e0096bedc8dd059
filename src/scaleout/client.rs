//! The NATS plumbing both sides of a scale-out share (docs/deployment.md): the ingest's publisher
//! (`scaleout::publish`) and the edge's feed (`scaleout::edge`) connect, watch the connection, ensure the
//! stream that is the last-value cache, and read it, the same way. The message format is `scaleout::wire`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::Notify;

use crate::scaleout::wire;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    #[default]
    Memory,
    File,
}

pub fn default_stream() -> String {
    "QUOTEGW".into()
}
pub fn default_prefix() -> String {
    "quotegw".into()
}

/// Checks a stream name and subject prefix NATS will take.
pub fn check_names(stream: &str, prefix: &str) -> Result<(), (String, String)> {
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !token_ok(stream) {
        return Err(("stream".into(), "letters, digits, '_' and '-' only".into()));
    }
    if !prefix.split('.').all(token_ok) {
        return Err((
            "subject_prefix".into(),
            "dot-separated tokens of letters, digits, '_' and '-'".into(),
        ));
    }
    Ok(())
}

/// `tls`: TLS to NATS. The server's certificate is checked against `ca_file` (or the system's
/// roots); with `cert_file` and `key_file` the gateway shows a client certificate (mutual TLS).
/// A `tls://` URL, or any of these set, makes TLS required.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `auth`: how the gateway proves who it is to NATS, one of a creds file (JWT and nkey, the
/// decentralized auth of `nsc`), an nkey seed file, a user and password, or a token. (A user and
/// password or a token in the URL work too.)
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuth {
    pub creds_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

/// What a NATS connection needs besides its URL: `tls` and `auth` of `[publish]` or an edge feed.
#[derive(Clone, Copy, Debug)]
pub struct Security<'a> {
    pub tls: &'a NatsTls,
    pub auth: &'a NatsAuth,
}

impl Security<'_> {
    /// Checked at start: files readable, one way to authenticate, a certificate with its key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let readable = |key: &str, path: &Option<PathBuf>| match path {
            Some(p) => std::fs::metadata(p)
                .and_then(|_| std::fs::File::open(p))
                .map(|_| ())
                .map_err(|e| (key.to_string(), format!("cannot read {}: {e}", p.display()))),
            None => Ok(()),
        };
        let (tls, auth) = (self.tls, self.auth);
        readable("tls.ca_file", &tls.ca_file)?;
        readable("tls.cert_file", &tls.cert_file)?;
        readable("tls.key_file", &tls.key_file)?;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err((
                "tls".into(),
                "cert_file and key_file go together (a client certificate and its key)".into(),
            ));
        }
        readable("auth.creds_file", &auth.creds_file)?;
        readable("auth.nkey_seed_file", &auth.nkey_seed_file)?;
        let ways = [
            auth.creds_file.is_some(),
            auth.nkey_seed_file.is_some(),
            auth.user.is_some() || auth.password.is_some(),
            auth.token.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err((
                "auth".into(),
                "one of creds_file, nkey_seed_file, user and password, or token".into(),
            ));
        }
        if auth.user.is_some() != auth.password.is_some() {
            return Err(("auth".into(), "user and password go together".into()));
        }
        Ok(())
    }

    fn wants_tls(&self) -> bool {
        self.tls.ca_file.is_some() || self.tls.cert_file.is_some()
    }

    /// The client's options for this link: credentials, TLS, name, events.
    async fn options(
        &self,
        name: &str,
        servers: &[async_nats::ServerAddr],
        events: &Arc<ConnectionEvents>,
    ) -> Result<async_nats::ConnectOptions, String> {
        let auth = self.auth;
        // Credentials in the URL (`nats://user:pass@host`, `nats://token@host`): the client
        // library does not send them itself (found from outside), so they are taken here, from
        // the first server that has them, unless `auth` says otherwise.
        let from_url = servers.iter().find_map(|s| {
            s.username()
                .map(|u| (u.to_string(), s.password().map(str::to_string)))
        });
        let explicit = auth.creds_file.is_some()
            || auth.nkey_seed_file.is_some()
            || auth.user.is_some()
            || auth.token.is_some();
        let mut options = match &auth.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| format!("auth.creds_file {}: {e}", path.display()))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(path) = &auth.nkey_seed_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.nkey_seed_file {}: {e}", path.display()))?;
            options = options.nkey(seed.trim().to_string());
        }
        if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &auth.token {
            options = options.token(token.clone());
        }
        match from_url {
            Some((user, Some(password))) if !explicit => {
                options = options.user_and_password(user, password);
            }
            Some((token, None)) if !explicit => options = options.token(token),
            _ => {}
        }
        if let Some(ca) = &self.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.wants_tls() {
            options = options.require_tls(true);
        }
        let seen = events.clone();
        Ok(options
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                seen.note(&event);
                async {}
            }))
    }
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("cannot reach NATS at {url}: {message}")]
    Connect { url: String, message: String },
    /// NATS answered and refused (a credential, a certificate), or this gateway's TLS settings
    /// cannot be used (a key that is not the certificate's): retrying cannot help.
    #[error("cannot connect to NATS at {url}, and retrying cannot help: {message}")]
    Refused { url: String, message: String },
    #[error("the scale-out stream: {0}")]
    Stream(String),
}

/// `nats_url`: one server, or a comma-separated list of a cluster's servers, each parsed as the
/// client will parse it (checked at start, so that a typo is a config error rather than a feed
/// that never connects). The error names the entry, without its credentials.
pub fn server_list(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err(
                    "an empty server in the list: give one URL, or several separated by commas"
                        .to_string(),
                );
            }
            let shown = || without_credentials(url);
            let addr = url
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("'{}': {e}", shown()))?;
            // What the client would take but never reach: a port 0, or a path, query or fragment
            // (`nats:/host`, `nats//host` parse as a host called "nats" with a path).
            let parsed = addr.clone().into_inner();
            if addr.port() == 0
                || !matches!(parsed.path(), "" | "/")
                || parsed.query().is_some()
                || parsed.fragment().is_some()
            {
                return Err(format!(
                    "'{}' is not a NATS server URL: give nats://HOST:PORT (or tls://, ws://, wss://)",
                    shown()
                ));
            }
            Ok(addr)
        })
        .collect()
}

/// The metrics of one NATS link (`link` = "publish" on an ingest, the feed's name on an edge).
#[derive(Clone)]
pub struct LinkMetrics {
    pub connected: prometheus::IntGauge,
    pub reconnects: prometheus::IntCounter,
}

impl LinkMetrics {
    pub fn new(metrics: &crate::metrics::Metrics, link: &str) -> LinkMetrics {
        LinkMetrics {
            connected: metrics.bus_connected.with_label_values(&[link]),
            reconnects: metrics.bus_reconnects.with_label_values(&[link]),
        }
    }
}

/// Connects to NATS with an event channel (reconnects, slow-consumer notices, refused publishes).
/// A NATS that is not reachable at start is retried in the background, so a gateway starts while
/// NATS is away; one that answers and refuses (credentials, TLS) is an error now, since retrying
/// cannot help. With a list, the client tries every server in a random order (a cluster: any one
/// is as good as another), on the first connection and on every reconnect.
pub async fn connect(
    url: &str,
    name: &str,
    security: Security<'_>,
    metrics: LinkMetrics,
) -> Result<(async_nats::Client, Arc<ConnectionEvents>), PublishError> {
    let shown = || without_credentials(url);
    let servers = server_list(url).map_err(|message| PublishError::Connect {
        url: shown(),
        message,
    })?;
    let events = Arc::new(ConnectionEvents {
        metrics: Some(metrics),
        ..ConnectionEvents::default()
    });
    let servers_ref = &servers;
    let options = |events| async move {
        security
            .options(name, servers_ref, events)
            .await
            .map_err(|message| PublishError::Refused {
                url: shown(),
                message,
            })
    };
    match options(&events).await?.connect(servers.clone()).await {
        Ok(client) => return Ok((client, events)),
        Err(e) if refused(&e) => {
            return Err(PublishError::Refused {
                url: shown(),
                message: e.to_string(),
            })
        }
        Err(e) => tracing::warn!(
            "NATS at {} not reachable ({e}): connecting in the background",
            shown()
        ),
    }
    let client = options(&events)
        .await?
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| PublishError::Connect {
            url: shown(),
            message: e.to_string(),
        })?;
    Ok((client, events))
}

/// A first connection that NATS answered and refused: credentials, or TLS (a certificate the other
/// side does not trust arrives as an I/O error from the TLS stack, named by its message).
fn refused(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind;
    let message = e.to_string();
    match e.kind() {
        ConnectErrorKind::Authentication
        | ConnectErrorKind::AuthorizationViolation
        | ConnectErrorKind::Tls => true,
        // rustls's errors: a certificate refused either way, an alert from the server, or a
        // server that answered TLS with plain text (TLS configured for a plain-text NATS).
        ConnectErrorKind::Io => [
            "certificate",
            "fatal alert",
            "corrupt message",
            "InvalidContentType",
        ]
        .iter()
        .any(|m| message.contains(m)),
        _ => false,
    }
}

/// What happened to a NATS connection since its owner last looked. Each kind is kept as a flag,
/// not queued: none is ever lost (a queue that was full would drop the one reconnection that
/// asks to refill the cache), and a burst of slow-consumer events is one reload.
pub struct ConnectionEvents {
    connected: AtomicBool,
    disconnected: AtomicBool,
    slow_consumer: AtomicBool,
    refused: AtomicBool,
    notify: Notify,
    metrics: Option<LinkMetrics>,
    log: crate::log_limit::LogLimiter,
}

impl Default for ConnectionEvents {
    fn default() -> Self {
        ConnectionEvents {
            connected: AtomicBool::default(),
            disconnected: AtomicBool::default(),
            slow_consumer: AtomicBool::default(),
            refused: AtomicBool::default(),
            notify: Notify::default(),
            metrics: None,
            // One line a second at most: a NATS that keeps refusing is retried every few seconds.
            log: crate::log_limit::LogLimiter::new(1, 1),
        }
    }
}

/// The kinds of event seen since the last look (a disconnection and a reconnection may both be).
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub connected: bool,
    pub disconnected: bool,
    pub slow_consumer: bool,
    /// NATS refused a publish (permissions).
    pub refused: bool,
}

impl ConnectionEvents {
    fn note(&self, event: &async_nats::Event) {
        use async_nats::{Event, ServerError};
        if let Some(m) = &self.metrics {
            match event {
                Event::Connected => m.connected.set(1),
                Event::Disconnected => {
                    m.connected.set(0);
                    m.reconnects.inc();
                }
                _ => {}
            }
        }
        let flag = match event {
            Event::Connected => &self.connected,
            Event::Disconnected => &self.disconnected,
            Event::SlowConsumer(_) => &self.slow_consumer,
            Event::ServerError(ServerError::Other(e))
                if e.to_ascii_lowercase()
                    .contains("permissions violation for publish") =>
            {
                tracing::error!("NATS refused a publish: {e}");
                &self.refused
            }
            // A NATS that refuses a reconnection (a credential, a certificate) is retried; it
            // says so at warn level, not only in the client library's info lines.
            Event::ServerError(ServerError::AuthorizationViolation) | Event::ClientError(_) => {
                if let Some(suppressed) = self.log.admit(std::time::Instant::now()) {
                    tracing::warn!(suppressed, "connecting to NATS: {event}");
                }
                return;
            }
            _ => return,
        };
        flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits until something happened, and says what.
    pub async fn next(&self) -> Seen {
        loop {
            let seen = Seen {
                connected: self.connected.swap(false, Ordering::AcqRel),
                disconnected: self.disconnected.swap(false, Ordering::AcqRel),
                slow_consumer: self.slow_consumer.swap(false, Ordering::AcqRel),
                refused: self.refused.swap(false, Ordering::AcqRel),
            };
            if seen.connected || seen.disconnected || seen.slow_consumer || seen.refused {
                return seen;
            }
            self.notify.notified().await;
        }
    }
}

/// A NATS URL as it may be logged: `nats://user:secret@host` shows as `nats://…@host`.
pub fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|u| {
            // Whatever precedes the last '@' after the scheme (or from the start, without one)
            // is user information: never shown.
            let from = u.find("://").map_or(0, |scheme| scheme + 3);
            match u[from..].rfind('@') {
                Some(at) => format!("{}…{}", &u[..from], &u[from + at..]),
                None => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The settings of the stream that are the ingest's to decide (`[publish]`).
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    pub storage: Storage,
    /// The stream's size limit in bytes (None: no limit).
    pub max_bytes: Option<u64>,
    /// How long a symbol's last state stays without a newer one (None: for ever): delisted
    /// symbols leave the cache.
    pub max_age: Option<Duration>,
}

/// Why the stream could not be ensured.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The stream cannot be what the cache needs (storage, retention, an update NATS refused):
    /// the operator must act; a start-up error.
    #[error("{0}")]
    Settings(String),
    /// JetStream did not answer (NATS away, a timeout): tried again later.
    #[error("{0}")]
    Unavailable(String),
}

/// The stream that is the cache, created, or brought to the settings it needs: the subjects, one
/// message per subject, no other count or size limit than `max_bytes`, `max_age`. The rest of an
/// existing stream's configuration (replicas, placement) is the operator's and kept. What NATS
/// cannot change in place (storage, retention) is an error naming the setting.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    prefix: &str,
    settings: StreamSettings,
) -> Result<async_nats::jetstream::stream::Stream, StreamError> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    use StreamError::{Settings, Unavailable};
    let storage = match settings.storage {
        Storage::Memory => StorageType::Memory,
        Storage::File => StorageType::File,
    };
    let shape = |c: &mut Config| {
        c.subjects = vec![
            wire::state_subjects(prefix),
            wire::bars_subjects(prefix),
            wire::heartbeat_subject(prefix),
            wire::lease_subject(prefix),
        ];
        c.max_messages_per_subject = 1;
        c.max_messages = -1;
        c.discard = DiscardPolicy::Old;
        c.discard_new_per_subject = false;
        c.max_bytes = settings
            .max_bytes
            .map_or(-1, |b| b.min(i64::MAX as u64) as i64);
        c.max_age = settings.max_age.unwrap_or_default();
        // NATS refuses a duplicate window longer than max_age (its default is 2 minutes; the
        // cache does not use it): found from outside, lowering max_age failed the update.
        if let Some(age) = settings.max_age {
            if c.duplicate_window.is_zero() || c.duplicate_window > age {
                c.duplicate_window = age;
            }
        }
        if c.max_message_size > 0 {
            c.max_message_size = -1;
        }
    };
    // Twice at most: two ingests starting together may both find no stream and both create it;
    // the one that lost the race reads the stream the other made and goes on from there.
    let mut stream = None;
    for _ in 0..2 {
        match js.get_stream(name).await {
            Ok(found) => {
                stream = Some(found);
                break;
            }
            Err(e) if stream_missing(&e) => {
                let mut config = Config {
                    name: name.to_string(),
                    storage,
                    ..Default::default()
                };
                shape(&mut config);
                match js.create_stream(config).await {
                    Ok(created) => return Ok(created),
                    Err(e) => {
                        let message = format!("cannot create stream '{name}': {e}");
                        match e.kind() {
                            async_nats::jetstream::context::CreateStreamErrorKind::JetStream(j)
                                if j.error_code()
                                    == async_nats::jetstream::ErrorCode::STREAM_NAME_EXIST =>
                            {
                                continue;
                            }
                            async_nats::jetstream::context::CreateStreamErrorKind::JetStream(_) => {
                                return Err(Settings(message))
                            }
                            _ => return Err(Unavailable(message)),
                        }
                    }
                }
            }
            Err(e) => return Err(Unavailable(format!("cannot read stream '{name}': {e}"))),
        }
    }
    let Some(mut stream) = stream else {
        return Err(Unavailable(format!(
            "stream '{name}' was created by another ingest meanwhile and cannot be read yet"
        )));
    };
    let have = stream.cached_info().config.clone();
    let named = |t: StorageType| match t {
        StorageType::Memory => "memory",
        StorageType::File => "file",
    };
    if have.storage != storage {
        return Err(Settings(format!(
            "stream '{name}' keeps its messages in {} storage and storage = \"{}\" is asked: NATS \
             cannot change a stream's storage in place. Delete the stream (nats stream rm {name}; \
             the leader fills the new one) or set storage = \"{}\"",
            named(have.storage),
            named(storage),
            named(have.storage)
        )));
    }
    if have.retention != RetentionPolicy::Limits {
        return Err(Settings(format!(
            "stream '{name}' has retention {:?}: the cache needs limits retention, which NATS cannot \
             set in place. Delete the stream (nats stream rm {name}) or name another one",
            have.retention
        )));
    }
    let mut want = have.clone();
    shape(&mut want);
    if want != have {
        js.update_stream(&want).await.map_err(|e| {
            let message =
                format!("cannot bring stream '{name}' to the settings the cache needs: {e}");
            match e.kind() {
                async_nats::jetstream::context::CreateStreamErrorKind::JetStream(_) => {
                    Settings(message)
                }
                _ => Unavailable(message),
            }
        })?;
        tracing::info!(
            stream = name,
            "brought the scale-out stream to its settings"
        );
        stream
            .info()
            .await
            .map_err(|e| Unavailable(format!("cannot read stream '{name}': {e}")))?;
    }
    Ok(stream)
}

/// The stream does not exist (no ingest ever ran on this NATS, or it was deleted).
pub fn stream_missing(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(j)
        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// How long one request to JetStream about the cache (or one message of a cache read) may take
/// before the read fails and is tried again later.
pub const CACHE_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Every message the cache holds under `filter`, by its last state per subject, up to the last
/// one stored when the read starts: a read never chases an ingest that keeps publishing (what comes
/// later reaches an edge on its subscription, which is made before the read).
pub async fn read_cache(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    mut each: impl FnMut(&str, &[u8]),
) -> Result<(), String> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let last = stream
        .get_info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::LastPerSubject,
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut pending = consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while pending > 0 {
        let next = tokio::time::timeout(CACHE_REQUEST_TIMEOUT, messages.next()).await;
        let Some(message) = next.map_err(|_| "the cache stopped sending")? else {
            return Err("the cache's consumer ended".into());
        };
        let message = message.map_err(|e| e.to_string())?;
        each(&message.subject, &message.payload);
        let info = message.info().map_err(|e| e.to_string())?;
        if info.stream_sequence >= last {
            break;
        }
        pending = info.pending;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_credentials_never_reach_a_message() {
        assert_eq!(
            without_credentials("nats://ingest:s3cret@10.0.0.5:4222,nats://10.0.0.6:4222"),
            "nats://…@10.0.0.5:4222,nats://10.0.0.6:4222"
        );
    }
}
