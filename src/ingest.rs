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
///
/// Bars end here too (`Index::close_bars`): after every batch, since a tick of a later `ts` ends
/// its feed's bars, and every `BAR_CLOCK` while no event comes, since the wall clock ends a live
/// feed's bars when its symbols stop trading.
pub fn spawn(index: Arc<Index>, mut events: mpsc::Receiver<FeedEvent>) {
    actix_web::rt::spawn(async move {
        let mut batch = Vec::with_capacity(INGEST_BATCH);
        let mut clock = tokio::time::interval(BAR_CLOCK);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = events.recv_many(&mut batch, INGEST_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for event in batch.drain(..) {
                        index.apply(event);
                    }
                }
                _ = clock.tick() => {}
            }
            index.close_bars(crate::model::now_ms());
        }
    });
}

/// How often the ingest task looks at the wall clock for bars to end while no event comes.
const BAR_CLOCK: std::time::Duration = std::time::Duration::from_millis(100);
