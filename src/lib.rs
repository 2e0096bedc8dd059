//! quotegw: a real-time stock-quote streaming gateway.
//!
//! # Layout
//! One tick travels, stage by stage, one module each:
//!
//! 1. [`feed`]: adapters (one trait, one config enum) produce ticks into a bounded channel;
//! 2. [`ingest`]: the one task that applies them in order; [`normalize`] checks every tick
//!    (symbol, prices > 0, sizes ≥ 0) or rejects and counts it;
//! 3. [`index`]: symbol → latest quote, `seq`, the recent changes encoded once, and one link per
//!    worker with subscribers; never waits for a connection;
//! 4. [`fanout`]: one shard per worker: a batch of ticks reaches each worker once, and the worker
//!    marks its own connections' slots (one pending slot per symbol, latest wins) and keeps their
//!    clocks;
//! 5. [`view`]: per connection and symbol, what it was last sent and what it is owed now (every
//!    change, or one merged update when it fell behind; `max_hz`, tiers, `on_lag`);
//! 6. [`delta`] and [`frame`]: the messages' JSON, and their layout as WebSocket frames or SSE
//!    events;
//! 7. [`session`]: one task per connection that reads ops and drains its slots into frames, and
//!    its socket (`session::socket`), closing slow consumers with 4008;
//! 8. [`http`]: `/ws` (after [`admit`], which applies [`access`]: Origin, token, per-client limits,
//!    the client's address from a trusted proxy's `X-Forwarded-For` or [`proxied`] header),
//!    [`rest`] (`/v1/quotes`, `/v1/symbols`), `/v1/stream` (an SSE session, `session::sse`),
//!    `/metrics`, `/healthz`, `/readyz`, and the widget.
//!
//! [`protocol`] holds the wire contract, [`model`] the shared types, [`config`] the TOML config,
//! [`metrics`] the Prometheus registry, [`security_log`] the rate-limited log of refusals and abuse
//! closes, [`app`] the wiring and graceful shutdown, and [`record`] the `quotegw record` command
//! (feeds → a recorded-feed file).
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

pub use app::{Gateway, RunningGateway, StartError};
pub use config::Config;
