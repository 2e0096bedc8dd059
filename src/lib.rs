//! quotegw: a real-time stock-quote streaming gateway.
//!
//! # Layout
//! One tick travels, stage by stage, one room each:
//!
//! 1. [`feed`]: adapters (`feed::simulated`, `feed::replay` of a `feed::recording`,
//!    `feed::http_poll`; on a scale-out edge, `scaleout::edge`) implement one trait
//!    (`feed::adapter`) and hand ticks to a bounded channel; [`fields`] parses upstream JSON values
//!    exactly;
//! 2. [`ingest`]: the one task that applies them in order; [`normalize`] checks every tick
//!    (symbol, prices > 0, sizes ≥ 0) or rejects and counts it;
//! 3. [`index`]: symbol → latest quote, `seq`, failover between sources (`index::entry`), each
//!    worker's copy and catch-up ring (`index::mirror`), the tiers' history (`index::history`)
//!    and, on an ingest, the change log; never waits for a connection;
//! 4. [`fanout`]: one shard per worker: a batch of ticks reaches each worker once
//!    (`fanout::link`), the shard's pass marks its connections' slots (`fanout::pending`, one
//!    pending slot per symbol, latest wins) and writes them, rests as its duty cycle says
//!    (`fanout::duty`), and keeps their clocks (`fanout::clock`);
//! 5. [`view`]: per connection and symbol, what it was last sent and what it is owed now (every
//!    change, or one merged update when it fell behind; `max_hz`, tiers, `on_lag`);
//! 6. [`delta`] and [`frame`]: the messages' JSON, and their layout as WebSocket frames or SSE
//!    events;
//! 7. [`session`]: a connection (`session::task` serves it; `session::reader` turns client frames
//!    into ops; `session::writer` turns dirty slots into frames, from the shard's pass or the
//!    task) on its socket (`session::socket`), closing slow consumers with 4008;
//! 8. [`http`]: `/ws`, `/v1/quotes` and `/v1/symbols` (`http::rest`), `/v1/stream` (`http::sse`),
//!    `/metrics`, `/healthz`, `/readyz` and the widget, each after [`admit`], which applies
//!    [`access`] (Origin, tokens, per-client limits, grants) to the client named by [`proxied`]
//!    (the PROXY protocol) or a trusted proxy's `X-Forwarded-For`; [`state`] is what they share.
//!
//! [`scaleout`] carries one ingest's changes to many edges over NATS. [`protocol`] holds the wire
//! contract, [`model`] the shared types, [`config`] the TOML config (each section's struct is its
//! component's), [`metrics`] the Prometheus registry, [`security_log`] the rate-limited log of
//! refusals and abuse closes (on [`log_limit`]), [`sync`] the poison-tolerant lock, [`app`] the
//! wiring and graceful shutdown, and [`record`] the `quotegw record` command (feeds → a
//! recorded-feed file). A module imports only from stages below it; `tests/layering.rs` checks
//! that no two import each other.
#![forbid(unsafe_code)]

pub mod access;
pub mod admit;
pub mod app;
pub mod config;
pub mod delta;
pub mod fanout;
pub mod feed;
pub mod fields;
pub mod frame;
pub mod http;
pub mod index;
pub mod ingest;
pub mod log_limit;
pub mod metrics;
pub mod model;
pub mod normalize;
pub mod protocol;
pub mod proxied;
pub mod record;
pub mod scaleout;
pub mod security_log;
pub mod session;
pub mod state;
pub mod sync;
pub mod view;

pub use app::{Gateway, Plan, RunningGateway, StartError};
pub use config::Config;
