//! Scale-out: one ingest and many edges share one tick stream through NATS (docs/deployment.md).
//!
//! - [`wire`]: the subjects and the encoding of a symbol's state, the contract between the two;
//! - [`client`]: the NATS connection and the JetStream stream that caches every symbol's last state;
//! - [`lease`]: which of the running ingests publishes, and its term (compare-and-set in the stream);
//! - [`publish`]: on an ingest, every change of the index, published in order while it leads, and
//!   its heartbeat;
//! - [`edge`]: on an edge, the feed that reads those states into the edge's own index.
//!
//! Owns nothing the embedded gateway needs: an ingest's index and an edge's sessions are the same
//! code as a single gateway's. May not touch sessions, HTTP or access.

pub mod client;
pub mod edge;
pub mod lease;
pub mod publish;
pub mod wire;
