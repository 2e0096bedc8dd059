//! quotegw: a real-time stock-quote streaming gateway.
//!
//! # Layout
//! One tick travels, stage by stage:
//!
//! 1. [`feed`]: adapters (one trait, one config enum) produce ticks into a bounded channel;
//! 2. [`normalize`]: every tick is checked (symbol, prices > 0, sizes ≥ 0) or rejected and counted;
//! 3. [`index`]: symbol → latest quote, `seq`, subscribers; applies the tick and marks each
//!    subscriber's slot dirty, never waiting for a connection;
//! 4. [`conflate`], [`delta`] and [`frame`]: per connection, one pending slot per symbol (latest
//!    wins) and the update against what that connection was last sent, encoded once when it is the
//!    tick's own, laid out as WebSocket frames or SSE events;
//! 5. [`session`]: one task per WebSocket that reads ops and drains its slots into frames, closing
//!    slow consumers with 4008;
//! 6. [`http`]: `/ws` (after [`admit`], which applies [`access`]: Origin, token, per-client limits),
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
pub mod bus;
pub mod config;
pub mod conflate;
pub mod delta;
pub mod fanout;
pub mod feed;
pub mod frame;
pub mod http;
pub mod index;
pub mod log_limit;
pub mod metrics;
pub mod model;
pub mod normalize;
pub mod protocol;
pub mod publish;
pub mod record;
pub mod rest;
pub mod security_log;
pub mod session;
pub mod sync;

pub use app::{Gateway, RunningGateway, StartError};
pub use config::Config;
