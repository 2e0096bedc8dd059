//! Stage 1, feeds: the scale-out edge (`kind = "nats"`). Instead of polling upstreams, an edge takes
//! every symbol's state from the leading ingest over NATS (`scaleout::wire`) and serves its clients
//! exactly as an embedded gateway does; it never assigns a `seq` of its own (the index keeps the
//! newest state by `(term, version)`, so a lost, duplicated or reordered message changes nothing).
//!
//! Start and recovery: the feed subscribes to everything under the prefix first (one subscription,
//! so that a leader's lease, heartbeats and states are read in the order it sent them), then loads
//! the lease and every symbol's last state from the JetStream cache, and only then says it has
//! delivered (`/readyz`), or, when the cache was empty (no ingest has published yet), once the
//! first state arrives: an edge with nothing to show is not ready. It loads again whenever what it
//! holds may be incomplete: a (re)connection to NATS, the client dropping messages for a slow
//! consumer, or a leader heard after none.
//!
//! Terms: the edge follows the term of the lease JetStream stores (`scaleout::lease`), read when
//! a lease message passes on the bus (only a hint: a deposed leader's renewal that JetStream
//! refused reaches subscribers too) or when a heartbeat or state of a higher term arrives (at most
//! every `VERIFY_EVERY`). A state or heartbeat of a lower term is an ingest that lost the lease:
//! its states are dropped (`old_term`), its heartbeats change nothing. One of a higher term that
//! the stored lease does not give is refused (`unleased_term`): a single message on the bus cannot
//! make every edge ignore the next real leader. Only heartbeats of the followed term keep the edge
//! live: while NATS is away, or no such heartbeat arrived for `stale_after_ms`, or the leader
//! released the lease, every symbol is `stale` for clients; an edge that has heard no heartbeat
//! yet loads the cache as `stale`; a cached state of an older term (a symbol the new leader has
//! not published yet) goes in as `stale`. An old price is never shown as live. On following a new
//! term the edge loads the cache again: states of that term that came before it read the lease
//! were dropped.
//!
//! A stream that started over: with memory storage, a restarted NATS server has an empty stream
//! whose sequence, and so its terms, start again from 1. A stored lease of a lower term than the
//! one followed (or of that term by another holder) can only be that, and not something a message
//! on the bus can fake: the edge follows the new stream's terms, and hands its index
//! `(incarnation, term)` so that the new terms order above the old.
//!
//! The bus is an input like any feed: a state is dropped and counted
//! (`quotegw_bus_states_dropped_total{reason}`) when `wire::check_state` refuses it (size, format,
//! subject, prices), for its term, or when it would add a symbol past `max_symbols`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::feed::adapter::{Feed, FeedContext, FeedError};
use crate::log_limit::{truncated, LogLimiter};
use crate::metrics::Metrics;
use crate::model::{ms_within, Status, Symbol, MAX_SETTING_MS};
use crate::scaleout::client::{
    check_names, connect, default_prefix, default_stream, read_cache, server_list, stream_missing,
    ConnectionEvents, LinkMetrics, NatsAuth, NatsTls, Security, CACHE_REQUEST_TIMEOUT,
};
use crate::scaleout::wire;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsFeedConfig {
    pub name: String,
    /// The NATS server, e.g. "nats://10.0.0.5:4222", or a cluster's servers separated by commas
    /// (`client::server_list`).
    pub nats_url: String,
    /// The ingest's stream and subject prefix (`[publish]` there).
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// No heartbeat of the leader for this long (or NATS away): every symbol is marked stale.
    #[serde(default = "default_stale_after_ms")]
    pub stale_after_ms: u64,
    /// Most symbols this edge carries: a state that would add one more is dropped and counted
    /// (`reason="max_symbols"`), so a bad publisher cannot grow the edge's index without bound.
    #[serde(default = "default_max_symbols")]
    pub max_symbols: usize,
    #[serde(default)]
    pub tls: NatsTls,
    #[serde(default)]
    pub auth: NatsAuth,
}

fn default_stale_after_ms() -> u64 {
    3000
}
fn default_max_symbols() -> usize {
    100_000
}

/// Why a state from the bus was dropped: the `reason` label of `quotegw_bus_states_dropped_total`
/// (the first four are `wire::check_state`'s).
pub const DROP_REASONS: [&str; 7] = [
    "too_large",
    "malformed",
    "subject_mismatch",
    "non_positive_price",
    "old_term",
    "unleased_term",
    "max_symbols",
];

/// What a lease message meant to the edge.
#[derive(PartialEq, Eq)]
enum Lease {
    Same,
    /// The followed leader released the lease (it is shutting down: nobody publishes until the
    /// next one).
    Released,
    /// A new term, read from the stored lease, is followed from now on.
    Followed,
}

/// How often a flood of messages of an unannounced term may make the edge read the stored lease.
const VERIFY_EVERY: Duration = Duration::from_millis(50);

/// The stream's start-overs an edge counts (`incarnation << 53` plus a term fits a u64).
const MAX_INCARNATION: u64 = 2047;

/// The most messages a reload takes off the subscription before the cache's states
/// (`take_queued`): what a burst can queue in the time of a cache read.
const MAX_TAKEN_QUEUED: usize = 100_000;

/// The subjects an edge reads, by kind.
struct Subjects {
    states: String,
    bars: String,
    heartbeat: String,
    lease: String,
}

/// Why an edge loaded the cache: the `reason` label of `quotegw_bus_reloads_total`.
const RELOAD_REASONS: [&str; 4] = ["start", "reconnect", "slow_consumer", "leader"];

impl NatsFeedConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_names(&self.stream, &self.subject_prefix)?;
        server_list(&self.nats_url).map_err(|m| ("nats_url".to_string(), m))?;
        ms_within("stale_after_ms", self.stale_after_ms, 100..=MAX_SETTING_MS)?;
        if !(1..=1_000_000).contains(&self.max_symbols) {
            return Err(("max_symbols".into(), "must be between 1 and 1000000".into()));
        }
        self.security().validate()
    }

    fn security(&self) -> Security<'_> {
        Security {
            tls: &self.tls,
            auth: &self.auth,
        }
    }
}

pub struct NatsFeed {
    config: NatsFeedConfig,
    /// Made by `prepare`, so that a NATS that refuses the edge stops the start.
    connection: Option<(async_nats::Client, Arc<ConnectionEvents>)>,
}

impl NatsFeed {
    pub fn new(config: NatsFeedConfig) -> NatsFeed {
        NatsFeed {
            config,
            connection: None,
        }
    }
}

impl Feed for NatsFeed {
    fn name(&self) -> &str {
        &self.config.name
    }

    /// Unknown until the cache is read: symbols are served from their first state.
    fn learns_symbols(&self) -> bool {
        true
    }

    fn symbols(&self) -> Vec<Symbol> {
        Vec::new()
    }

    fn prepare(&mut self, metrics: &Arc<Metrics>) -> BoxFuture<'_, Result<(), FeedError>> {
        let link = LinkMetrics::new(metrics, &self.config.name);
        Box::pin(async move {
            let connection = connect(
                &self.config.nats_url,
                "quotegw-edge",
                self.config.security(),
                link,
            )
            .await
            .map_err(|e| FeedError::Setup(e.to_string()))?;
            self.connection = Some(connection);
            Ok(())
        })
    }

    fn run(self: Box<Self>, ctx: FeedContext) -> BoxFuture<'static, Result<(), FeedError>> {
        Box::pin(async move {
            let NatsFeed { config, connection } = *self;
            let (client, events) = match connection {
                Some(c) => c,
                None => connect(
                    &config.nats_url,
                    "quotegw-edge",
                    config.security(),
                    LinkMetrics::new(&ctx.metrics, &config.name),
                )
                .await
                .map_err(|e| FeedError::Setup(e.to_string()))?,
            };
            Edge::new(config, ctx).run(client, events).await
        })
    }
}

struct Edge {
    config: NatsFeedConfig,
    ctx: FeedContext,
    /// Every symbol a state arrived for: what goes stale when the leader is away.
    known: HashSet<Symbol>,
    /// The highest term a lease message announced (0: none yet): the one followed.
    term: u64,
    /// The holder of the lease of `term`: one term is one win, by one holder, in a stream's life.
    holder: String,
    /// How many times the stream started over (module doc, "A stream that started over").
    incarnation: u64,
    /// When the stored lease was last read (`verify`), so that a flood of messages of an
    /// unannounced term asks JetStream at most every `VERIFY_EVERY`.
    verified_at: Option<Instant>,
    /// No heartbeat of `term` within `stale_after_ms`, NATS away, the lease released, or none
    /// heard yet.
    stale: bool,
    /// `/readyz` was told: the cache is loaded and held at least one state.
    delivered: bool,
    /// While loading the cache: a state of an older term goes in as stale rather than dropped.
    loading: bool,
    /// Heartbeats and lease messages `take_queued` took off the subscription: read next.
    held_back: VecDeque<async_nats::Message>,
    subjects: Subjects,
    log: LogLimiter,
    metrics: EdgeMetrics,
}

/// The edge's metrics, resolved once.
struct EdgeMetrics {
    /// `quotegw_bus_states_dropped_total`, one per `DROP_REASONS` entry.
    dropped: Vec<prometheus::IntCounter>,
    /// `quotegw_bus_reloads_total`, one per `RELOAD_REASONS` entry.
    reloads: Vec<prometheus::IntCounter>,
    heartbeat_age: prometheus::Gauge,
    term: prometheus::IntGauge,
}

impl Edge {
    fn new(config: NatsFeedConfig, ctx: FeedContext) -> Edge {
        let m = &ctx.metrics;
        let name = config.name.as_str();
        let metrics = EdgeMetrics {
            dropped: DROP_REASONS
                .iter()
                .map(|r| m.bus_states_dropped.with_label_values(&[name, r]))
                .collect(),
            reloads: RELOAD_REASONS
                .iter()
                .map(|r| m.bus_reloads.with_label_values(&[name, r]))
                .collect(),
            heartbeat_age: m.bus_heartbeat_age.with_label_values(&[name]),
            term: m.bus_term.with_label_values(&[name]),
        };
        let prefix = &config.subject_prefix;
        let subjects = Subjects {
            states: wire::state_subject(prefix, ""),
            bars: wire::bars_subject(prefix, ""),
            heartbeat: wire::heartbeat_subject(prefix),
            lease: wire::lease_subject(prefix),
        };
        Edge {
            subjects,
            metrics,
            config,
            ctx,
            known: HashSet::new(),
            term: 0,
            holder: String::new(),
            incarnation: 0,
            verified_at: None,
            // Until a heartbeat is heard, the cache is only what some ingest left: stale.
            stale: true,
            delivered: false,
            loading: false,
            held_back: VecDeque::new(),
            log: LogLimiter::new(5, 1),
        }
    }

    async fn run(
        mut self,
        client: async_nats::Client,
        events: Arc<ConnectionEvents>,
    ) -> Result<(), FeedError> {
        let mut messages = client
            .subscribe(format!("{}.>", self.config.subject_prefix))
            .await
            .map_err(|e| FeedError::Setup(format!("cannot subscribe: {e}")))?;
        // Ready only once the cache is in: a client never gets a partial edge.
        while !self.reload(&client, &mut messages, "start").await? {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let stale_after = Duration::from_millis(self.config.stale_after_ms);
        let mut last_heartbeat = Instant::now();
        // The first connection's event is not a reconnection: the load above was its load.
        let mut connected_before = false;
        // A tenth of stale_after_ms: symbols go stale at most that late (found from outside: a
        // quarter was up to 0.75 s past the documented bound).
        let mut check = tokio::time::interval((stale_after / 10).max(Duration::from_millis(10)));
        loop {
            // Messages a reload took off the subscription and held back (`reload`) go first.
            let message = match self.held_back.pop_front() {
                Some(m) => m,
                None => tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => return Ok(()),
                    message = messages.next() => match message {
                        Some(m) => m,
                        None => return Err(FeedError::Setup("the NATS subscription ended".into())),
                    },
                    seen = events.next() => {
                        if seen.disconnected {
                            self.mark_stale("NATS connection lost").await?;
                        }
                        let reconnected = seen.connected && std::mem::replace(&mut connected_before, true);
                        if reconnected && self.stale {
                            // Back on NATS: what the cache holds goes in (as stale), and the
                            // leader's next heartbeat makes it live.
                            self.reload(&client, &mut messages, "reconnect").await?;
                        } else if seen.slow_consumer {
                            // The client dropped messages for us: what we hold may be behind.
                            tracing::warn!(feed = %self.config.name, "slow consumer: reloading from the cache");
                            self.reload(&client, &mut messages, "slow_consumer").await?;
                        }
                        continue;
                    }
                    _ = check.tick() => {
                        let age = last_heartbeat.elapsed();
                        self.metrics.heartbeat_age.set(age.as_secs_f64());
                        if !self.stale && age >= stale_after {
                            self.mark_stale("no heartbeat of the leader").await?;
                        }
                        continue;
                    }
                },
            };
            let subject = message.subject.as_str();
            if subject.starts_with(&self.subjects.states) {
                if self.take(Some(&client), subject, &message.payload).await? == Lease::Followed {
                    self.reload(&client, &mut messages, "leader").await?;
                }
                self.ready_if_any().await?;
            } else if subject.starts_with(&self.subjects.bars) {
                if self
                    .take_bars(Some(&client), subject, &message.payload)
                    .await?
                    == Lease::Followed
                {
                    self.reload(&client, &mut messages, "leader").await?;
                }
            } else if subject == self.subjects.heartbeat {
                let (ours, lease) = self.heartbeat(&client, &message.payload).await;
                if lease == Lease::Followed && !self.stale {
                    self.reload(&client, &mut messages, "leader").await?;
                }
                if ours {
                    last_heartbeat = Instant::now();
                    if self.stale {
                        // A leader is heard: take what it published meanwhile.
                        self.recover(&client, &mut messages).await?;
                    }
                }
            } else if subject == self.subjects.lease {
                // Only a hint to read the stored lease: a renewal JetStream refused (a
                // deposed leader's) reaches subscribers too.
                match self.verify(&client, true).await {
                    Lease::Released => {
                        self.mark_stale("the leader released the lease").await?;
                    }
                    // States of the new term that came before it was read were dropped.
                    Lease::Followed if !self.stale => {
                        self.reload(&client, &mut messages, "leader").await?;
                    }
                    _ => {}
                }
            }
        }
    }

    /// A heartbeat: true when it is the followed leader's (a heartbeat of a lower term is an
    /// ingest that lost the lease; of a higher one, a term to check against the stored lease).
    async fn heartbeat(&mut self, client: &async_nats::Client, payload: &[u8]) -> (bool, Lease) {
        let term = match wire::decode_heartbeat(payload) {
            Ok(term) => term,
            Err(e) => {
                self.log_dropped(&e);
                return (false, Lease::Same);
            }
        };
        let mut lease = Lease::Same;
        if term > self.term {
            lease = self.verify(client, false).await;
            if term > self.term {
                self.log_dropped(&format!(
                    "a heartbeat of term {term}, which the stored lease does not give (following {})",
                    self.term
                ));
            }
        }
        (term == self.term && term > 0, lease)
    }

    /// Reads the lease JetStream stores and follows it (`follow`): what an edge trusts, where a
    /// lease message on the bus may be a refused renewal. `force`: read it even if it was read
    /// within `VERIFY_EVERY`.
    async fn verify(&mut self, client: &async_nats::Client, force: bool) -> Lease {
        if !force && self.verified_at.is_some_and(|t| t.elapsed() < VERIFY_EVERY) {
            return Lease::Same;
        }
        self.verified_at = Some(Instant::now());
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(CACHE_REQUEST_TIMEOUT);
        let subject = &self.subjects.lease;
        let stored = async {
            let stream = js.get_stream_no_info(&self.config.stream).await.ok()?;
            let m = stream.get_last_raw_message_by_subject(subject).await.ok()?;
            wire::decode_lease(&m.payload).ok()
        }
        .await;
        match stored {
            Some(record) => self.follow(record),
            None => Lease::Same,
        }
    }

    /// A stored lease record: a higher term is followed from now on; a lower one (or the same by
    /// another holder) can only be a stream that started over (module doc), whose terms the edge
    /// then follows from its own.
    fn follow(&mut self, record: wire::LeaseRecord) -> Lease {
        // Taken, not yet announced: the next record says the term.
        let Some(term) = record.term else {
            return Lease::Same;
        };
        if term == self.term && record.holder == self.holder {
            return if record.released {
                Lease::Released
            } else {
                Lease::Same
            };
        }
        if term <= self.term {
            self.start_over();
        }
        tracing::info!(feed = %self.config.name, term, holder = %record.holder, "following a new leader");
        self.term = term;
        self.holder = record.holder;
        self.metrics.term.set(term as i64);
        if record.released {
            Lease::Released
        } else {
            Lease::Followed
        }
    }

    /// Follows the stream's terms from 0: the index is handed `(incarnation, term)`, so the new
    /// stream's terms order above the old one's.
    fn start_over(&mut self) {
        tracing::warn!(feed = %self.config.name, was = self.term, "the scale-out stream started over (NATS lost its store): following its terms from now on");
        self.incarnation = (self.incarnation + 1).min(MAX_INCARNATION);
        self.term = 0;
        self.holder.clear();
        self.metrics.term.set(0);
    }

    /// An empty edge (the ingest has published nothing yet) is not ready: a client sent to it
    /// would be told every symbol is unknown.
    async fn ready_if_any(&mut self) -> Result<(), FeedError> {
        if !self.delivered && !self.known.is_empty() {
            self.delivered = true;
            self.ctx.set_delivered().await?;
        }
        Ok(())
    }

    /// Hands one state message to the index, or drops and counts it (module doc). While the edge
    /// is stale, a state goes in as `stale` (a cache load before any heartbeat, or during an
    /// outage), and the leader's next heartbeat makes it live.
    async fn take(
        &mut self,
        client: Option<&async_nats::Client>,
        subject: &str,
        payload: &[u8],
    ) -> Result<Lease, FeedError> {
        let state = match wire::check_state(&self.config.subject_prefix, subject, payload) {
            Ok(state) => state,
            Err(refused) => {
                self.drop_state(refused.reason, &refused.why);
                return Ok(Lease::Same);
            }
        };
        let (lease, admitted) = self
            .admit(client, &state.symbol, state.term, "a state")
            .await;
        let Some(older) = admitted else {
            return Ok(lease);
        };
        let mut state = state;
        if self.stale || older {
            state.quote.status = Status::Stale;
        }
        state.term = self.index_term(state.term);
        self.ctx.send_state(state).await?;
        Ok(lease)
    }

    /// A state or bars message (`what`) that passed the wire's checks, for its term and the
    /// symbol cap (`check`), a higher term than followed first checked against the stored lease
    /// (a new leader's first messages may come before the edge read its lease): whether it is of
    /// an older term, or `None` when it was dropped and counted; and what reading the lease did.
    async fn admit(
        &mut self,
        client: Option<&async_nats::Client>,
        symbol: &Symbol,
        term: u64,
        what: &str,
    ) -> (Lease, Option<bool>) {
        let mut lease = Lease::Same;
        if let (Some(client), true) = (client, term > self.term) {
            lease = self.verify(client, false).await;
        }
        match self.check(symbol, term, what) {
            Ok(older) => {
                if !self.known.contains(symbol) {
                    self.known.insert(symbol.clone());
                }
                (lease, Some(older))
            }
            Err((reason, why)) => {
                self.drop_state(reason, &why);
                (lease, None)
            }
        }
    }

    /// The term the index orders by: a stream that started over starts its terms over, so the
    /// index is given (incarnation, term) as one number (terms are below 2^53).
    fn index_term(&self, term: u64) -> u64 {
        term + (self.incarnation << 53)
    }

    /// Hands one bars message to the index, checked as a state is (`take`), or drops and counts it.
    /// Bars of an older term from the cache go in: they are the bars that were, and a new
    /// leader's replace them.
    async fn take_bars(
        &mut self,
        client: Option<&async_nats::Client>,
        subject: &str,
        payload: &[u8],
    ) -> Result<Lease, FeedError> {
        let mut bars = match wire::check_bars(&self.config.subject_prefix, subject, payload) {
            Ok(bars) => bars,
            Err(refused) => {
                self.drop_state(refused.reason, &refused.why);
                return Ok(Lease::Same);
            }
        };
        let (lease, admitted) = self.admit(client, &bars.symbol, bars.term, "bars").await;
        if admitted.is_some() {
            bars.term = self.index_term(bars.term);
            self.ctx.send_bars(bars).await?;
        }
        Ok(lease)
    }

    /// Counts and logs a dropped state by its `DROP_REASONS` name.
    fn drop_state(&self, reason: &str, why: &str) {
        let i = DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.metrics.dropped[i].inc();
        self.log_dropped(why);
    }

    /// A state or bars message (`what`) that passed the wire's checks, checked for its term and
    /// the symbol cap: whether it is of an older term (taken only from the cache, a state as
    /// stale), or the name of its `DROP_REASONS` entry and why.
    fn check(
        &self,
        symbol: &Symbol,
        term: u64,
        what: &str,
    ) -> Result<bool, (&'static str, String)> {
        let older = term < self.term;
        if older && !self.loading {
            return Err((
                "old_term",
                format!(
                    "{what} of '{symbol}' of term {term} (following {})",
                    self.term
                ),
            ));
        }
        if term > self.term {
            return Err((
                "unleased_term",
                format!(
                    "{what} of '{symbol}' of term {term}, which the stored lease does not give (following {})",
                    self.term
                ),
            ));
        }
        if !self.known.contains(symbol) && self.known.len() >= self.config.max_symbols {
            return Err((
                "max_symbols",
                format!(
                    "'{symbol}' would be symbol {} (max_symbols = {})",
                    self.known.len() + 1,
                    self.config.max_symbols
                ),
            ));
        }
        Ok(older)
    }

    fn log_dropped(&self, why: &str) {
        if let Some(suppressed) = self.log.admit(std::time::Instant::now()) {
            tracing::warn!(feed = %self.config.name, suppressed, "message dropped: {}", truncated(why));
        }
    }

    /// Loads the lease and every symbol's last state from the cache; false if the cache cannot
    /// be read now.
    async fn reload(
        &mut self,
        client: &async_nats::Client,
        messages: &mut async_nats::Subscriber,
        why: &str,
    ) -> Result<bool, FeedError> {
        let mut js = async_nats::jetstream::new(client.clone());
        // The feed task reads no state while it waits here: a request lost on a dying connection
        // must not hold it for the client's default 10 s.
        js.set_timeout(CACHE_REQUEST_TIMEOUT);
        let stream = match js.get_stream(&self.config.stream).await {
            Ok(s) => s,
            Err(e) => {
                // No stream yet (no ingest has run) is an empty cache; anything else is a retry.
                let missing = stream_missing(&e);
                if !missing {
                    tracing::warn!(feed = %self.config.name, "cannot read the cache: {e}");
                }
                return Ok(missing);
            }
        };
        if let Some(i) = RELOAD_REASONS.iter().position(|r| *r == why) {
            self.metrics.reloads[i].inc();
        }
        let mut lease = None;
        let mut payloads = Vec::new();
        let mut bars = Vec::new();
        let prefix = &self.config.subject_prefix;
        // A stream made by an ingest from before bars travelled has no bars subject (a filter on
        // it is an error): its cache has no bars.
        let bars_subjects = wire::bars_subjects(prefix);
        let has_bars = stream
            .cached_info()
            .config
            .subjects
            .contains(&bars_subjects);
        let read = async {
            read_cache(&stream, &self.subjects.lease, |_, p| {
                lease = Some(p.to_vec())
            })
            .await?;
            read_cache(&stream, &wire::state_subjects(prefix), |subject, p| {
                payloads.push((subject.to_string(), p.to_vec()))
            })
            .await?;
            if !has_bars {
                return Ok(());
            }
            read_cache(&stream, &bars_subjects, |subject, p| {
                bars.push((subject.to_string(), p.to_vec()))
            })
            .await
        };
        if let Err(e) = read.await {
            tracing::warn!(feed = %self.config.name, "cannot read the cache: {e}");
            return Ok(false);
        }
        // The stored lease (a leader that released it there is stale already: no heartbeat
        // follows).
        if let Some(record) = lease.and_then(|l| wire::decode_lease(&l).ok()) {
            self.follow(record);
        }
        self.take_queued(client, messages).await?;
        self.loading = true;
        for (subject, payload) in payloads {
            if let Err(e) = self.take(None, &subject, &payload).await {
                self.loading = false;
                return Err(e);
            }
        }
        for (subject, payload) in bars {
            if let Err(e) = self.take_bars(None, &subject, &payload).await {
                self.loading = false;
                return Err(e);
            }
        }
        self.loading = false;
        // States taken from the queue count too (never a partial edge: only once all is in).
        self.ready_if_any().await?;
        Ok(true)
    }

    /// The states and bars already queued on the subscription, taken before the cache's: NATS
    /// delivered each of them before it answered the cache read, so the cache holds them or
    /// newer. Taken after, they would be older than the cache's and dropped, and their prints
    /// counted lost (seen at failovers: a few prints per symbol). Heartbeats and lease messages
    /// among them are held back for the run loop, in order.
    async fn take_queued(
        &mut self,
        client: &async_nats::Client,
        messages: &mut async_nats::Subscriber,
    ) -> Result<(), FeedError> {
        use futures_util::FutureExt as _;
        // Bounded: a flood arriving while this runs is the run loop's to read.
        for _ in 0..MAX_TAKEN_QUEUED {
            let Some(Some(message)) = messages.next().now_or_never() else {
                break;
            };
            let subject = message.subject.as_str();
            // A new term among them is read from the cache (just loaded) or the lease (`admit`).
            if subject.starts_with(&self.subjects.states) {
                self.take(Some(client), subject, &message.payload).await?;
            } else if subject.starts_with(&self.subjects.bars) {
                self.take_bars(Some(client), subject, &message.payload)
                    .await?;
            } else {
                self.held_back.push_back(message);
            }
        }
        Ok(())
    }

    /// A leader is heard after none: reload, then the symbols are live again (a state equal to the
    /// one held makes its symbol current; a newer one updates it).
    async fn recover(
        &mut self,
        client: &async_nats::Client,
        messages: &mut async_nats::Subscriber,
    ) -> Result<(), FeedError> {
        // Not stale while reloading: what the cache holds of the followed term goes in live.
        self.stale = false;
        if self.reload(client, messages, "leader").await? {
            self.ctx.set_up(true);
            tracing::info!(feed = %self.config.name, term = self.term, "a leader is heard: reloaded from the cache");
        } else {
            self.stale = true;
        }
        Ok(())
    }

    async fn mark_stale(&mut self, why: &str) -> Result<(), FeedError> {
        if self.stale {
            return Ok(());
        }
        tracing::warn!(feed = %self.config.name, "{why}: every symbol is stale until a leader is heard");
        self.stale = true;
        self.ctx.set_up(false);
        for symbol in self.known.clone() {
            self.ctx.set_status(symbol, Status::Stale).await?;
        }
        Ok(())
    }
}
