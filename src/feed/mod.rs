//! Stage 1, feeds: the adapters (`simulated`, `replay` of a `recording`, `http_poll`; a scale-out
//! edge's is `scaleout::edge`), the one trait they implement (`adapter`), and the closed config
//! enum that builds them.
//!
//! A new adapter adds a file here and a variant to `config::FeedConfig` (the top level assembles
//! the adapters, the scale-out edge's included); the index and sessions do not change. Feeds may not touch the index or sessions: what they produce goes through
//! `FeedContext`.

pub mod adapter;
pub mod http_poll;
pub mod recording;
pub mod replay;
pub mod simulated;

pub use adapter::{Feed, FeedContext, FeedError, FeedEvent, FeedHealth, TICK_CHANNEL_CAPACITY};
pub use http_poll::HttpPollConfig;
pub use replay::ReplayConfig;
pub use simulated::SimulatedConfig;
