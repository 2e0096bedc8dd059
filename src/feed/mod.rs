//! Stage 1, feeds: the adapters (`simulated`, `replay` of a `recording`, `http_poll`; a scale-out
//! edge's is `scaleout::edge`), the one trait they implement (`adapter`), and the closed config
//! enum that builds them.
//!
//! A new adapter adds a variant to `FeedConfig` and a file here; the index and sessions do not
//! change. Feeds may not touch the index or sessions: what they produce goes through
//! `FeedContext`.

pub mod adapter;
pub mod http_poll;
pub mod recording;
pub mod replay;
pub mod simulated;

use serde::Deserialize;

pub use adapter::{Feed, FeedContext, FeedError, FeedEvent, FeedHealth, TICK_CHANNEL_CAPACITY};
pub use http_poll::HttpPollConfig;
pub use replay::ReplayConfig;
pub use simulated::SimulatedConfig;

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
    pub fn name(&self) -> &str {
        match self {
            FeedConfig::Simulated(c) => &c.name,
            FeedConfig::Replay(c) => &c.name,
            FeedConfig::HttpPoll(c) => &c.name,
            FeedConfig::Nats(c) => &c.name,
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
            FeedConfig::Simulated(c) => Ok(Box::new(simulated::SimulatedFeed::new(c.clone()))),
            FeedConfig::Replay(c) => Ok(Box::new(replay::ReplayFeed::new(c.clone())?)),
            FeedConfig::HttpPoll(c) => Ok(Box::new(http_poll::HttpPollFeed::new(c.clone())?)),
            FeedConfig::Nats(c) => Ok(Box::new(crate::scaleout::edge::NatsFeed::new(c.clone()))),
        }
    }
}
