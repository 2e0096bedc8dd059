//! Stage 1, feeds: the scale-out edge (`kind = "nats"`). Instead of polling upstreams, an edge takes
//! every symbol's state from the ingest over NATS (`scaleout::wire`) and serves its clients exactly as an
//! embedded gateway does; it never assigns a `seq` of its own (the index keeps the newest state by
//! `(term, version)`, so a lost, duplicated or reordered message changes nothing).
//!
//! Start and recovery: the feed subscribes to the state subjects first (so nothing is missed),
//! then loads every symbol's last state from the JetStream cache, and only then says it has
//! delivered (`/readyz`), or, when the cache was empty (no ingest has published yet), once the
//! first state arrives: an edge with nothing to show is not ready. It loads again whenever what it holds may be incomplete: a (re)connection
//! to NATS, the client dropping messages for a slow consumer, or heartbeats coming back.
//!
//! Staleness: the edge follows the highest term it has accepted (from a heartbeat or a state). It
//! is live only while heartbeats of that term arrive: a heartbeat of a lower term (an ingest that
//! an ingest started after it superseded) changes nothing, and a state of a lower term is
//! dropped. While NATS is away, or no such heartbeat arrived for `stale_after_ms`, every symbol is
//! `stale` for clients, and an edge that has heard no heartbeat yet loads the cache as `stale`: an
//! old price is never shown as live. The first heartbeat of the highest term reloads the cache
//! and makes the symbols live again.
//!
//! The bus is an input like any feed: a state is dropped and counted
//! (`quotegw_bus_states_dropped_total{reason}`) when its message is over `MAX_STATE_BYTES`, does not
//! decode (`wire::decode_state`: version, symbol, counters within 2^53), names another symbol than
//! its subject, carries a price that is not positive, is of a term below the one followed, or
//! would add a symbol past `max_symbols`.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::feed::adapter::{Feed, FeedContext, FeedError};
use crate::log_limit::{truncated, LogLimiter};
use crate::model::{ms_within, Status, Symbol, MAX_SETTING_MS};
use crate::scaleout::client::{
    check_names, connect, default_prefix, default_stream, read_cache, server_list,
    CACHE_REQUEST_TIMEOUT,
};
use crate::scaleout::wire;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsFeedConfig {
    pub name: String,
    /// The NATS server, e.g. "nats://10.0.0.5:4222", or a cluster's servers separated by commas
    /// (`nats::server_list`).
    pub nats_url: String,
    /// The ingest's stream and subject prefix (`[publish]` there).
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// No ingest heartbeat for this long (or NATS away): every symbol is marked stale.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// Most symbols this edge carries: a state that would add one more is dropped and counted
    /// (`reason="max_symbols"`), so a bad publisher cannot grow the edge's index without bound.
    #[serde(default = "default_max_symbols")]
    pub max_symbols: usize,
}

fn default_stale_after_ms() -> u64 {
    3000
}
fn default_max_symbols() -> usize {
    100_000
}

/// A state message larger than this is dropped unread (a state is a few hundred bytes).
pub const MAX_STATE_BYTES: usize = 4096;

/// Why a state from the bus was dropped: the `reason` label of `quotegw_bus_states_dropped_total`.
pub const DROP_REASONS: [&str; 6] = [
    "too_large",
    "malformed",
    "subject_mismatch",
    "non_positive_price",
    "old_term",
    "max_symbols",
];

impl NatsFeedConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_names(&self.stream, &self.subject_prefix)?;
        server_list(&self.nats_url).map_err(|m| ("nats_url".to_string(), m))?;
        ms_within("stale_after_ms", self.stale_after_ms, 100..=MAX_SETTING_MS)?;
        if !(1..=1_000_000).contains(&self.max_symbols) {
            return Err(("max_symbols".into(), "must be between 1 and 1000000".into()));
        }
        Ok(())
    }
}

pub struct NatsFeed {
    config: NatsFeedConfig,
}

impl NatsFeed {
    pub fn new(config: NatsFeedConfig) -> NatsFeed {
        NatsFeed { config }
    }
}

impl Feed for NatsFeed {
    fn name(&self) -> &str {
        &self.config.name
    }

    /// Unknown until the cache is read: symbols are served from their first state.
    fn symbols(&self) -> Vec<Symbol> {
        Vec::new()
    }

    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>> {
        Box::pin(async move { Edge::new(self.config, ctx).run().await })
    }
}

struct Edge {
    config: NatsFeedConfig,
    ctx: FeedContext,
    /// Every symbol a state arrived for: what goes stale when the ingest is away.
    known: HashSet<Symbol>,
    /// The highest term accepted, from a heartbeat or a state (0: none yet).
    term: u64,
    /// No heartbeat of `term` within `stale_after_ms`, NATS away, or none heard yet.
    stale: bool,
    /// `/readyz` was told: the cache is loaded and held at least one state.
    delivered: bool,
    log: LogLimiter,
    /// `quotegw_bus_states_dropped_total`, one per `DROP_REASONS` entry.
    dropped: Vec<prometheus::IntCounter>,
}

impl Edge {
    fn new(config: NatsFeedConfig, ctx: FeedContext) -> Edge {
        let dropped = DROP_REASONS
            .iter()
            .map(|r| {
                ctx.metrics
                    .bus_states_dropped
                    .with_label_values(&[config.name.as_str(), r])
            })
            .collect();
        Edge {
            dropped,
            config,
            ctx,
            known: HashSet::new(),
            term: 0,
            // Until a heartbeat is heard, the cache is only what some ingest left: stale.
            stale: true,
            delivered: false,
            log: LogLimiter::new(5, 1),
        }
    }

    async fn run(mut self) -> Result<(), FeedError> {
        let prefix = self.config.subject_prefix.clone();
        let (client, events) = connect(&self.config.nats_url, "quotegw-edge")
            .await
            .map_err(|e| FeedError::Setup(e.to_string()))?;
        let subscribe = |subject: String| {
            let client = client.clone();
            async move { client.subscribe(subject).await }
        };
        let mut states = subscribe(wire::state_subjects(&prefix))
            .await
            .map_err(|e| FeedError::Setup(format!("cannot subscribe: {e}")))?;
        let mut heartbeats = subscribe(wire::heartbeat_subject(&prefix))
            .await
            .map_err(|e| FeedError::Setup(format!("cannot subscribe: {e}")))?;
        // Ready only once the cache is in: a client never gets a partial edge.
        while !self.reload(&client).await? {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        self.ready_if_any();
        let stale_after = Duration::from_millis(self.config.stale_after_ms);
        let mut last_heartbeat = Instant::now();
        let mut check = tokio::time::interval(stale_after / 4);
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return Ok(()),
                message = states.next() => {
                    let Some(message) = message else {
                        return Err(FeedError::Setup("the NATS subscription ended".into()));
                    };
                    self.take(&message.subject, &message.payload).await?;
                    self.ready_if_any();
                }
                message = heartbeats.next() => {
                    let Some(message) = message else {
                        return Err(FeedError::Setup("the NATS subscription ended".into()));
                    };
                    // Only the leader the edge follows keeps it live: a heartbeat of a lower
                    // term is an ingest a newer one superseded.
                    match wire::decode_heartbeat(&message.payload) {
                        Ok(term) if term >= self.term => self.term = term,
                        Ok(_) => continue,
                        Err(e) => {
                            self.log_dropped(&e);
                            continue;
                        }
                    }
                    last_heartbeat = Instant::now();
                    if self.stale {
                        // The ingest is back: take what it published meanwhile.
                        self.recover(&client).await?;
                    }
                }
                seen = events.next() => {
                    if seen.disconnected {
                        self.mark_stale("NATS connection lost").await?;
                    }
                    if seen.connected && self.stale {
                        // Back on NATS: what the cache holds goes in (as stale), and the
                        // leader's next heartbeat makes it live.
                        self.reload(&client).await?;
                    } else if seen.slow_consumer {
                        // The client dropped messages for us: what we hold may be behind.
                        tracing::warn!(feed = %self.config.name, "slow consumer: reloading from the cache");
                        self.reload(&client).await?;
                    }
                }
                _ = check.tick() => {
                    if !self.stale && last_heartbeat.elapsed() >= stale_after {
                        self.mark_stale("no ingest heartbeat").await?;
                    }
                }
            }
        }
    }

    /// An empty edge (the ingest has published nothing yet) is not ready: a client sent to it
    /// would be told every symbol is unknown.
    fn ready_if_any(&mut self) {
        if !self.delivered && !self.known.is_empty() {
            self.delivered = true;
            self.ctx.set_delivered();
        }
    }

    /// Hands one state message to the index, or drops and counts it (module doc). While the edge
    /// is stale, a state goes in as `stale` (a cache load before any heartbeat, or during an
    /// outage), and the leader's next heartbeat makes it live.
    async fn take(&mut self, subject: &str, payload: &[u8]) -> Result<(), FeedError> {
        let mut state = match self.check(subject, payload) {
            Ok(state) => state,
            Err((reason, why)) => {
                self.dropped[reason].inc();
                self.log_dropped(&why);
                return Ok(());
            }
        };
        self.term = self.term.max(state.term);
        if !self.known.contains(&state.symbol) {
            self.known.insert(state.symbol.clone());
        }
        if self.stale {
            state.quote.status = Status::Stale;
        }
        self.ctx.send_state(state).await
    }

    /// A state message checked like any feed's tick: the index of its `DROP_REASONS` entry and
    /// why, when it is dropped.
    fn check(&self, subject: &str, payload: &[u8]) -> Result<wire::State, (usize, String)> {
        let reason = |name: &str| DROP_REASONS.iter().position(|r| *r == name).unwrap_or(0);
        if payload.len() > MAX_STATE_BYTES {
            return Err((
                reason("too_large"),
                format!(
                    "a state of {} bytes (at most {MAX_STATE_BYTES})",
                    payload.len()
                ),
            ));
        }
        let state = wire::decode_state(payload).map_err(|e| (reason("malformed"), e))?;
        if wire::state_subject(&self.config.subject_prefix, &state.symbol) != subject {
            return Err((
                reason("subject_mismatch"),
                format!("a state of '{}' on subject '{subject}'", state.symbol),
            ));
        }
        let q = &state.quote;
        if [q.bid, q.ask, q.last]
            .into_iter()
            .flatten()
            .any(|p| p <= rust_decimal::Decimal::ZERO)
        {
            return Err((
                reason("non_positive_price"),
                format!("a price of '{}' that is not positive", state.symbol),
            ));
        }
        if state.term < self.term {
            return Err((
                reason("old_term"),
                format!(
                    "a state of '{}' of term {} (following {})",
                    state.symbol, state.term, self.term
                ),
            ));
        }
        if !self.known.contains(&state.symbol) && self.known.len() >= self.config.max_symbols {
            return Err((
                reason("max_symbols"),
                format!(
                    "'{}' would be symbol {} (max_symbols = {})",
                    state.symbol,
                    self.known.len() + 1,
                    self.config.max_symbols
                ),
            ));
        }
        Ok(state)
    }

    fn log_dropped(&self, why: &str) {
        if let Some(suppressed) = self.log.admit(std::time::Instant::now()) {
            tracing::warn!(feed = %self.config.name, suppressed, "message dropped: {}", truncated(why));
        }
    }

    /// Loads every symbol's last state from the cache; false if the cache cannot be read now.
    async fn reload(&mut self, client: &async_nats::Client) -> Result<bool, FeedError> {
        let mut js = async_nats::jetstream::new(client.clone());
        // The feed task reads no state while it waits here: a request lost on a dying connection
        // must not hold it for the client's default 10 s.
        js.set_timeout(CACHE_REQUEST_TIMEOUT);
        let stream = match js.get_stream(&self.config.stream).await {
            Ok(s) => s,
            Err(e) => {
                // No stream yet (no ingest has run) is an empty cache; anything else is a retry.
                let missing = e.to_string().contains("not found");
                if !missing {
                    tracing::warn!(feed = %self.config.name, "cannot read the cache: {e}");
                }
                return Ok(missing);
            }
        };
        let mut payloads = Vec::new();
        let read = read_cache(
            &stream,
            &wire::state_subjects(&self.config.subject_prefix),
            |subject, p| payloads.push((subject.to_string(), p.to_vec())),
        )
        .await;
        if let Err(e) = read {
            tracing::warn!(feed = %self.config.name, "cannot read the cache: {e}");
            return Ok(false);
        }
        for (subject, payload) in payloads {
            self.take(&subject, &payload).await?;
        }
        Ok(true)
    }

    /// Back after an outage: reload, then the symbols are live again (a state equal to the one
    /// held makes its symbol current; a newer one updates it).
    async fn recover(&mut self, client: &async_nats::Client) -> Result<(), FeedError> {
        // Not stale while reloading: what the cache holds of the followed term goes in live.
        self.stale = false;
        if self.reload(client).await? {
            self.ctx.set_up(true);
            tracing::info!(feed = %self.config.name, term = self.term, "an ingest leads: reloaded from the cache");
        } else {
            self.stale = true;
        }
        Ok(())
    }

    async fn mark_stale(&mut self, why: &str) -> Result<(), FeedError> {
        if self.stale {
            return Ok(());
        }
        tracing::warn!(feed = %self.config.name, "{why}: every symbol is stale until the ingest is back");
        self.stale = true;
        self.ctx.set_up(false);
        for symbol in self.known.clone() {
            self.ctx.set_status(symbol, Status::Stale).await?;
        }
        Ok(())
    }
}
