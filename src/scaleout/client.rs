//! The NATS plumbing both sides of a scale-out share (docs/deployment.md): the ingest's publisher
//! (`scaleout::publish`) and the edge's feed (`scaleout::edge`) connect, watch the connection, ensure the
//! stream that is the last-value cache, and read it, the same way. The message format is `scaleout::wire`.

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

#[derive(Debug, Error)]
pub enum PublishError {
    #[error("cannot reach NATS at {url}: {message}")]
    Connect { url: String, message: String },
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

/// Connects to NATS with an event channel (reconnects, slow-consumer notices), retrying the first
/// connection in the background so a gateway starts while NATS is away. With a list, the client
/// tries every server in a random order (a cluster: any one is as good as another), on the first
/// connection and on every reconnect.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<(async_nats::Client, Arc<ConnectionEvents>), PublishError> {
    let servers = server_list(url).map_err(|message| PublishError::Connect {
        url: without_credentials(url),
        message,
    })?;
    let events = Arc::new(ConnectionEvents::default());
    let seen = events.clone();
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            seen.note(&event);
            async {}
        })
        .connect(servers)
        .await
        .map_err(|e| PublishError::Connect {
            url: without_credentials(url),
            message: e.to_string(),
        })?;
    Ok((client, events))
}

/// What happened to a NATS connection since its owner last looked. Each kind is kept as a flag,
/// not queued: none is ever lost (a queue that was full would drop the one reconnection that
/// asks to refill the cache), and a burst of slow-consumer events is one reload.
#[derive(Default)]
pub struct ConnectionEvents {
    connected: AtomicBool,
    disconnected: AtomicBool,
    slow_consumer: AtomicBool,
    notify: Notify,
}

/// The kinds of event seen since the last look (a disconnection and a reconnection may both be).
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub connected: bool,
    pub disconnected: bool,
    pub slow_consumer: bool,
}

impl ConnectionEvents {
    fn note(&self, event: &async_nats::Event) {
        let flag = match event {
            async_nats::Event::Connected => &self.connected,
            async_nats::Event::Disconnected => &self.disconnected,
            async_nats::Event::SlowConsumer(_) => &self.slow_consumer,
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
            };
            if seen.connected || seen.disconnected || seen.slow_consumer {
                return seen;
            }
            self.notify.notified().await;
        }
    }
}

/// A NATS URL as it may be logged: `nats://user:secret@host` shows as `nats://…@host`.
fn without_credentials(url: &str) -> String {
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

/// The stream that is the cache, created (or brought to this config) if needed.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    prefix: &str,
    storage: Storage,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    js.get_or_create_stream(Config {
        name: name.to_string(),
        subjects: vec![
            wire::state_subjects(prefix),
            wire::heartbeat_subject(prefix),
        ],
        max_messages_per_subject: 1,
        discard: DiscardPolicy::Old,
        storage: match storage {
            Storage::Memory => StorageType::Memory,
            Storage::File => StorageType::File,
        },
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
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
