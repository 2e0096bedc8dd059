//! Scale-out, the ingest's side: every change of a symbol's state goes to NATS, where edges take
//! it (docs/deployment.md). The index lists every change in a `ChangeLog`; this task publishes
//! each one whole (`bus.rs`).
//!
//! Backpressure: the tick path never waits for NATS. While NATS is slow or away, this task alone
//! waits, and once the change log holds `CHANGE_LOG_CAPACITY` changes it conflates per symbol (one
//! entry per symbol, whatever the ticks; this task then reads the symbol's latest state).
//! When a connection to NATS is (re)made, every symbol is published again and the stream ensured,
//! so a NATS server that restarted without its store gets the whole cache back.
//!
//! A JetStream stream over the state subjects, one message per subject, is the last-value cache:
//! publishes are plain core publishes that the stream captures (no per-tick acknowledgement). At
//! start the ingest reads the cache: each symbol's `seq` goes on from it, and the new term is above
//! the last one (and at least the start time in ms, so a lost cache still gives a higher term).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, State};
use crate::index::{Change, ChangeLog, Changes, Index};
use crate::log_limit::LogLimiter;

/// `[publish]`: this gateway is a scale-out ingest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The NATS server(s), e.g. "nats://10.0.0.5:4222" (comma-separated for a cluster).
    pub nats_url: String,
    /// The JetStream stream that is the last-value cache.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects are `<prefix>.q.<SYMBOL>` and `<prefix>.hb`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// Where the cache lives: "memory" (lost when NATS restarts; the ingest publishes it again) or
    /// "file".
    #[serde(default)]
    pub storage: Storage,
    /// How often the ingest says it is alive; edges mark symbols stale after their
    /// `stale_after_ms` without it.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long start-up waits for NATS to read the cache before going on under a new term
    /// (edges then see `seq` start over, and close their clients with 1012).
    #[serde(default = "default_cache_wait_ms")]
    pub cache_wait_ms: u64,
}

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
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_cache_wait_ms() -> u64 {
    5000
}

impl PublishConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_names(&self.stream, &self.subject_prefix)
            .map_err(|(k, m)| (format!("publish.{k}"), m))?;
        if !(10..=60_000).contains(&self.heartbeat_ms) {
            return Err((
                "publish.heartbeat_ms".into(),
                "must be between 10 and 60000".into(),
            ));
        }
        Ok(())
    }
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

/// Connects to NATS with an event channel (reconnects, slow-consumer notices), retrying the first
/// connection in the background so a gateway starts while NATS is away.
pub async fn connect(
    url: &str,
    name: &str,
) -> Result<(async_nats::Client, Arc<ConnectionEvents>), PublishError> {
    let events = Arc::new(ConnectionEvents::default());
    let seen = events.clone();
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            seen.note(&event);
            async {}
        })
        .connect(url)
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
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("{}…{}", &u[..scheme + 3], &u[at..]),
            _ => u.to_string(),
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
        subjects: vec![bus::state_subjects(prefix), bus::heartbeat_subject(prefix)],
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
    mut each: impl FnMut(&[u8]),
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
        each(&message.payload);
        let info = message.info().map_err(|e| e.to_string())?;
        if info.stream_sequence >= last {
            break;
        }
        pending = info.pending;
    }
    Ok(())
}

/// Reads the cache into the index (each symbol's `seq` and quote) and returns the new term.
async fn load(
    config: &PublishConfig,
    client: &async_nats::Client,
    index: &Index,
) -> Result<u64, String> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = ensure_stream(&js, &config.stream, &config.subject_prefix, config.storage).await?;
    let mut last_term = 0;
    let mut seeded = 0;
    read_cache(
        &stream,
        &bus::heartbeat_subject(&config.subject_prefix),
        |payload| {
            if let Ok(term) = bus::decode_heartbeat(payload) {
                last_term = last_term.max(term);
            }
        },
    )
    .await?;
    read_cache(
        &stream,
        &bus::state_subjects(&config.subject_prefix),
        |payload| {
            if let Ok(state) = bus::decode_state(payload) {
                last_term = last_term.max(state.term);
                index.seed(state.symbol, state.seq, state.quote);
                seeded += 1;
            }
        },
    )
    .await?;
    tracing::info!(symbols = seeded, last_term, "read the scale-out cache");
    Ok(last_term)
}

/// Connects, reads the cache (within `cache_wait_ms`), and starts the publisher and heartbeat tasks
/// on the current thread; the index must publish its changes to `changes`.
pub async fn start(
    config: PublishConfig,
    index: Arc<Index>,
    changes: Arc<ChangeLog>,
    published: prometheus::IntCounter,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    let (client, events) = connect(&config.nats_url, "quotegw-ingest").await?;
    let wait = Duration::from_millis(config.cache_wait_ms);
    let last_term = match tokio::time::timeout(wait, load(&config, &client, &index)).await {
        Ok(Ok(term)) => term,
        Ok(Err(e)) => {
            tracing::warn!(
                "scale-out cache unreadable ({e}): starting a new term, seq may start over"
            );
            0
        }
        Err(_) => {
            tracing::warn!(
                "NATS not reachable within {wait:?}: starting a new term, seq may start over"
            );
            0
        }
    };
    // Above every term seen, and at least now in ms: a cache lost with NATS still gives a higher
    // term than any before it (clocks permitting).
    let term = (last_term + 1).max(crate::feed::now_ms().max(0) as u64);
    // Every symbol goes out when the publisher sees the connection's `Connected` event (the first
    // connection raises it too), not here as well.
    tracing::info!(term, "publishing to NATS");
    let heartbeat_client = client.clone();
    let hb_subject = bus::heartbeat_subject(&config.subject_prefix);
    let every = Duration::from_millis(config.heartbeat_ms);
    let hb_shutdown = shutdown.clone();
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = hb_shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hb = bus::encode_heartbeat(term, crate::feed::now_ms());
            let _ = heartbeat_client
                .publish(hb_subject.clone(), hb.into())
                .await;
        }
    });
    let publisher = Publisher {
        config,
        client,
        index,
        changes,
        term,
        published,
    };
    actix_web::rt::spawn(publisher.run(events, shutdown));
    Ok(())
}

/// The task that publishes what the index's change log lists.
struct Publisher {
    config: PublishConfig,
    client: async_nats::Client,
    index: Arc<Index>,
    changes: Arc<ChangeLog>,
    term: u64,
    published: prometheus::IntCounter,
}

impl Publisher {
    async fn run(self, events: Arc<ConnectionEvents>, shutdown: CancellationToken) {
        let Publisher {
            config,
            client,
            index,
            changes,
            term,
            published,
        } = self;
        let log = LogLimiter::new(5, 1);
        let js = async_nats::jetstream::new(client.clone());
        let mut batch = Changes::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = client.flush().await;
                    return;
                }
                seen = events.next() => {
                    if seen.connected {
                        // A new connection may be a new server: make sure the cache exists, then
                        // fill it with every symbol's state.
                        if let Err(e) = ensure_stream(&js, &config.stream, &config.subject_prefix, config.storage).await {
                            tracing::warn!("cannot ensure the scale-out stream: {e}");
                        }
                        changes.mark_all(&index);
                    }
                    continue;
                }
                _ = changes.take(&mut batch) => {}
            }
            let behind = batch.behind.drain(..).filter_map(|entry| {
                entry.read().map(|p| Change {
                    symbol: entry.symbol.clone(),
                    version: p.version,
                    seq: p.seq,
                    quote: p.quote,
                })
            });
            for change in batch.states.drain(..).chain(behind) {
                let subject = bus::state_subject(&config.subject_prefix, &change.symbol);
                let state = State {
                    term,
                    version: change.version,
                    seq: change.seq,
                    symbol: change.symbol,
                    quote: change.quote,
                };
                match client
                    .publish(subject, bus::encode_state(&state).into())
                    .await
                {
                    Ok(()) => published.inc(),
                    Err(e) => {
                        if let Some(suppressed) = log.admit(std::time::Instant::now()) {
                            tracing::warn!(suppressed, "publishing to NATS failed: {e}");
                        }
                    }
                }
            }
        }
    }
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
