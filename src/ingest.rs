//! Stage 2, the ingest: the one task that applies every feed's events to the index, in order.
//!
//! Feeds send `FeedEvent`s into one bounded channel (`feed/mod.rs`, `TICK_CHANNEL_CAPACITY`); this
//! task takes up to `INGEST_BATCH` of them per wake-up and applies each (`Index::apply`: normalize,
//! failover, `seq`, the shared encoding, the hand-off to each worker's shard). One task keeps `seq`
//! assignment trivially ordered and the index's locks uncontended by other writers; a batch of
//! ticks applied together reaches each worker as one hand-off (`fanout.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::access::{AuthMode, Tier};
use crate::config::Config;
use crate::feed::FeedEvent;
use crate::index::{ChangeLog, HistoryConfig, Index, CATCH_UP_MARGIN};
use crate::metrics::Metrics;

/// The ingest task applies up to this many queued feed events per wake-up.
pub const INGEST_BATCH: usize = 256;

/// The index the config asks for: its feeds' counters, the catch-up window (the batching window +
/// `CATCH_UP_MARGIN`), the delayed tier's history, and, on a scale-out ingest, the change log its
/// publisher reads.
pub fn index(
    config: &Config,
    feeds: &[String],
    metrics: Arc<Metrics>,
) -> (Index, Option<Arc<ChangeLog>>) {
    let mut index = Index::new(feeds, metrics);
    index.keep_catch_up_for(
        Duration::from_millis(config.limits.min_frame_interval_ms) + CATCH_UP_MARGIN,
    );
    if let Some(delayed) = &config.tiers.delayed {
        index.keep_history(HistoryConfig {
            keep_ms: delayed.delay_ms as i64,
            granularity_ms: delayed.granularity_ms as i64,
        });
    }
    // The throttled tier's sample (two more states a symbol that ticks), where a credential can
    // be throttled: by default, by an API key's tier, or by a JWT's tier claim.
    let access = &config.access;
    let throttled = config.tiers.default == Tier::Throttled
        || access.auth == AuthMode::Jwt
        || (access.auth == AuthMode::ApiKey
            && access
                .api_keys
                .iter()
                .any(|k| k.tier() == Some(Tier::Throttled)));
    if throttled {
        index.sample_every(config.tiers.throttled.interval_ms as i64);
    }
    let changes = config.publish.as_ref().map(|_| {
        let changes = Arc::new(ChangeLog::default());
        index.publish_changes(changes.clone());
        changes
    });
    (index, changes)
}

/// Runs the ingest task on the current actix System until every feed's sender is gone.
pub fn spawn(index: Arc<Index>, mut events: mpsc::Receiver<FeedEvent>) {
    actix_web::rt::spawn(async move {
        let mut batch = Vec::with_capacity(INGEST_BATCH);
        while events.recv_many(&mut batch, INGEST_BATCH).await > 0 {
            for event in batch.drain(..) {
                index.apply(event);
            }
        }
    });
}
