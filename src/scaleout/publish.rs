//! Scale-out, the ingest's side: every change of a symbol's state goes to NATS, where edges take
//! it (docs/deployment.md). The index lists every change in a `ChangeLog`; this task publishes
//! each one whole (`scaleout::wire`).
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

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::index::{Change, ChangeLog, Changes, Index};
use crate::log_limit::LogLimiter;
use crate::model::ms_within;
use crate::scaleout::client::{
    check_names, connect, default_prefix, default_stream, ensure_stream, read_cache, server_list,
    ConnectionEvents, PublishError, Storage,
};
use crate::scaleout::wire::{self, State};

/// `[publish]`: this gateway is a scale-out ingest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The NATS server, e.g. "nats://10.0.0.5:4222", or a cluster's servers separated by commas
    /// (`nats::server_list`).
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
        server_list(&self.nats_url).map_err(|m| ("publish.nats_url".to_string(), m))?;
        ms_within("publish.heartbeat_ms", self.heartbeat_ms, 10..=60_000)?;
        ms_within("publish.cache_wait_ms", self.cache_wait_ms, 0..=600_000)
    }
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
        &wire::heartbeat_subject(&config.subject_prefix),
        |_, payload| {
            if let Ok(term) = wire::decode_heartbeat(payload) {
                last_term = last_term.max(term);
            }
        },
    )
    .await?;
    read_cache(
        &stream,
        &wire::state_subjects(&config.subject_prefix),
        |_, payload| {
            if let Ok(state) = wire::decode_state(payload) {
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
    let term = (last_term + 1).max(crate::model::now_ms().max(0) as u64);
    // Every symbol goes out when the publisher sees the connection's `Connected` event (the first
    // connection raises it too), not here as well.
    tracing::info!(term, "publishing to NATS");
    let heartbeat_client = client.clone();
    let hb_subject = wire::heartbeat_subject(&config.subject_prefix);
    let every = Duration::from_millis(config.heartbeat_ms);
    let hb_shutdown = shutdown.clone();
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = hb_shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hb = wire::encode_heartbeat(term, crate::model::now_ms());
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
                let subject = wire::state_subject(&config.subject_prefix, &change.symbol);
                let state = State {
                    term,
                    version: change.version,
                    seq: change.seq,
                    symbol: change.symbol,
                    quote: change.quote,
                };
                match client
                    .publish(subject, wire::encode_state(&state).into())
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
