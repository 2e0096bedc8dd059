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
//! Staleness: while NATS is away, or no ingest heartbeat arrived for `stale_after_ms`, every symbol
//! is `stale` for clients: an old price is never shown as live. A reload (or a new state) makes
//! them live again.

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
}

fn default_stale_after_ms() -> u64 {
    3000
}

impl NatsFeedConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_names(&self.stream, &self.subject_prefix)?;
        server_list(&self.nats_url).map_err(|m| ("nats_url".to_string(), m))?;
        ms_within("stale_after_ms", self.stale_after_ms, 100..=MAX_SETTING_MS)
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
    stale: bool,
    /// `/readyz` was told: the cache is loaded and held at least one state.
    delivered: bool,
    log: LogLimiter,
    bad_messages: prometheus::IntCounter,
}

impl Edge {
    fn new(config: NatsFeedConfig, ctx: FeedContext) -> Edge {
        let bad_messages = ctx
            .metrics
            .feed_bad_lines
            .with_label_values(&[&config.name]);
        Edge {
            bad_messages,
            config,
            ctx,
            known: HashSet::new(),
            stale: false,
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
        self.ctx.set_up(true);
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
                    self.take(&message.payload).await?;
                    self.ready_if_any();
                }
                message = heartbeats.next() => {
                    if message.is_none() {
                        return Err(FeedError::Setup("the NATS subscription ended".into()));
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
                        self.recover(&client).await?;
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

    /// Hands one state message to the index.
    async fn take(&mut self, payload: &[u8]) -> Result<(), FeedError> {
        match wire::decode_state(payload) {
            Ok(state) => {
                if !self.known.contains(&state.symbol) {
                    self.known.insert(state.symbol.clone());
                }
                self.ctx.send_state(state).await
            }
            Err(e) => {
                self.bad_messages.inc();
                if let Some(suppressed) = self.log.admit(std::time::Instant::now()) {
                    tracing::warn!(feed = %self.config.name, suppressed, "message dropped: {}", truncated(&e));
                }
                Ok(())
            }
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
            |p| payloads.push(p.to_vec()),
        )
        .await;
        if let Err(e) = read {
            tracing::warn!(feed = %self.config.name, "cannot read the cache: {e}");
            return Ok(false);
        }
        for payload in payloads {
            self.take(&payload).await?;
        }
        Ok(true)
    }

    /// Back after an outage: reload, then the symbols are live again (a state equal to the one
    /// held makes its symbol current; a newer one updates it).
    async fn recover(&mut self, client: &async_nats::Client) -> Result<(), FeedError> {
        if self.reload(client).await? {
            self.stale = false;
            self.ctx.set_up(true);
            tracing::info!(feed = %self.config.name, "ingest reachable again: reloaded from the cache");
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
