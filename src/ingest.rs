//! Stage 2, the ingest: the one task that applies every feed's events to the index, in order.
//!
//! Feeds send `FeedEvent`s into one bounded channel (`feed/adapter.rs`, `TICK_CHANNEL_CAPACITY`); this
//! task takes up to `INGEST_BATCH` of them per wake-up and applies each (`Index::apply`: normalize,
//! failover, `seq`, the shared encoding, the hand-off to each worker's shard). One task keeps `seq`
//! assignment trivially ordered and the index's locks uncontended by other writers; a batch of
//! ticks applied together reaches each worker as one hand-off (`fanout`).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::feed::FeedEvent;
use crate::index::Index;

/// The ingest task applies up to this many queued feed events per wake-up.
pub const INGEST_BATCH: usize = 256;

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
