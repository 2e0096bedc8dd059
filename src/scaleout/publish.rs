//! Scale-out, the ingest's side: every change of a symbol's state goes to NATS, where edges take
//! it (docs/deployment.md). The index lists every change in a `ChangeLog`; this task publishes
//! each one whole (`scaleout::wire`), with the symbol's print count and, on its tick's state, the
//! print, while this ingest holds the lease (`scaleout::lease`); and each symbol whose bars changed,
//! once per pass, on its bars subject.
//!
//! Any number of ingests may run. Each runs its feeds and its index; the one holding the lease
//! publishes, under its term, and heartbeats; the others drop their changes and watch the lease.
//! A standby also watches the leader's states on the bus, so that on taking the lease it goes on
//! from the highest `seq` the leader published for each symbol (`Index::continue_after`), even for
//! a symbol whose cached state was purged or replaced by a bad message; the cache covers what it
//! did not see (it started after the leader published), counts prints on from the leader's count
//! and takes over its bars; then it publishes every symbol under its term. An ingest taking the
//! lease back from itself (its lease lapsed, nobody led since) goes on with its own count and bars
//! instead, so that the prints it took while nobody published reach edges as `trades_lost`.
//!
//! Backpressure: the tick path never waits for NATS. While NATS is slow or away, this task alone
//! waits, and once the change log holds `CHANGE_LOG_CAPACITY` changes it conflates per symbol (one
//! entry per symbol, whatever the ticks; this task then reads the symbol's latest state).
//! When a connection to NATS is (re)made, the stream is ensured and a leader publishes every
//! symbol again, so a NATS server that restarted without its store gets the whole cache back; and
//! every `reconcile_ms` a leader publishes every symbol again, a slice at a time, so a cache that
//! lost a message (purged by hand, a server restored from a backup) converges.
//!
//! A JetStream stream over the state subjects, one message per subject, is the last-value cache:
//! publishes are plain core publishes that the stream captures (no per-tick acknowledgement); a
//! publish NATS refuses (permissions) makes the leader step down, so an ingest that cannot publish
//! never keeps edges live with its heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::index::{Change, ChangeLog, Changes, Index};
use crate::log_limit::LogLimiter;
use crate::metrics::Metrics;
use crate::model::{ms_within, Quote, Symbol};
use crate::model::{BusPrints, BusSeries};
use crate::scaleout::client::{
    check_names, connect, default_prefix, default_stream, ensure_stream, read_cache, server_list,
    ConnectionEvents, LinkMetrics, NatsAuth, NatsTls, PublishError, Security, Storage, StreamError,
    StreamSettings, CACHE_REQUEST_TIMEOUT,
};
use crate::scaleout::lease::{Lease, Step};
use crate::scaleout::wire::{self, State};

/// `[publish]`: this gateway is a scale-out ingest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The NATS server, e.g. "nats://10.0.0.5:4222", or a cluster's servers separated by commas
    /// (`client::server_list`).
    pub nats_url: String,
    /// The JetStream stream that is the last-value cache.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects are `<prefix>.q.<SYMBOL>`, `<prefix>.hb` and `<prefix>.lease`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// Where the cache lives: "memory" (lost when NATS restarts; the leader publishes it again) or
    /// "file".
    #[serde(default)]
    pub storage: Storage,
    /// The stream's size limit in bytes (none by default).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// A symbol whose state has not changed for this long leaves the cache (none by default): a
    /// delisted symbol is forgotten. At least a minute, and above `reconcile_ms`.
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    /// How often the leader says it is alive; edges mark symbols stale after their
    /// `stale_after_ms` without it.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a leader's lease lasts without renewal (renewed every third of it): a standby takes
    /// over within this (and a quarter second) of the leader's death.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Every symbol's state is published again over this interval, a slice at a time.
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_ms: u64,
    /// How long start-up waits for NATS (the stream, the first look at the lease) before going
    /// on and trying in the background.
    #[serde(default = "default_cache_wait_ms")]
    pub cache_wait_ms: u64,
    #[serde(default)]
    pub tls: NatsTls,
    #[serde(default)]
    pub auth: NatsAuth,
}

fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_lease_ms() -> u64 {
    3000
}
fn default_reconcile_ms() -> u64 {
    30_000
}
fn default_cache_wait_ms() -> u64 {
    5000
}

impl PublishConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let within = |key: &str, ms, range| ms_within(&format!("publish.{key}"), ms, range);
        check_names(&self.stream, &self.subject_prefix)
            .map_err(|(k, m)| (format!("publish.{k}"), m))?;
        server_list(&self.nats_url).map_err(|m| ("publish.nats_url".to_string(), m))?;
        within("heartbeat_ms", self.heartbeat_ms, 10..=60_000)?;
        within("lease_ms", self.lease_ms, 100..=600_000)?;
        within("reconcile_ms", self.reconcile_ms, 100..=86_400_000)?;
        within("cache_wait_ms", self.cache_wait_ms, 0..=600_000)?;
        if self.heartbeat_ms >= self.lease_ms {
            return Err((
                "publish.heartbeat_ms".into(),
                format!(
                    "must be below lease_ms ({}): a leader heartbeats several times a lease, and edges' stale_after_ms is a few heartbeats",
                    self.lease_ms
                ),
            ));
        }
        if let Some(age) = self.max_age_ms {
            within(
                "max_age_ms",
                age,
                60_000..=crate::model::MAX_SETTING_MS * 365,
            )?;
            if age <= self.reconcile_ms.max(self.lease_ms) {
                return Err((
                    "publish.max_age_ms".into(),
                    "must be above reconcile_ms and lease_ms (the lease and live symbols would age out)".into(),
                ));
            }
        }
        if self.max_bytes == Some(0) {
            return Err((
                "publish.max_bytes".into(),
                "must be above 0 (leave it out for no limit)".into(),
            ));
        }
        self.security()
            .validate()
            .map_err(|(k, m)| (format!("publish.{k}"), m))
    }

    fn security(&self) -> Security<'_> {
        Security {
            tls: &self.tls,
            auth: &self.auth,
        }
    }

    fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            storage: self.storage,
            max_bytes: self.max_bytes,
            max_age: self.max_age_ms.map(Duration::from_millis),
        }
    }
}

/// Connects, brings the stream to its settings and takes a first look at the lease (within
/// `cache_wait_ms`), and starts the publisher on the current thread; the index must publish its
/// changes to `changes`. A stream NATS cannot bring to its settings, or a NATS that refuses this
/// ingest's credentials, is an error; a NATS away is tried again in the background.
pub async fn start(
    config: PublishConfig,
    index: Arc<Index>,
    changes: Arc<ChangeLog>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    let (client, events) = connect(
        &config.nats_url,
        "quotegw-ingest",
        config.security(),
        LinkMetrics::new(&metrics, "publish"),
    )
    .await?;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(CACHE_REQUEST_TIMEOUT);
    let lease = Lease::new(
        js.clone(),
        &config.stream,
        &config.subject_prefix,
        Duration::from_millis(config.lease_ms),
    );
    for change in ["won", "lost"] {
        metrics.bus_lease_changes.with_label_values(&[change]);
    }
    metrics
        .bus_leader
        .with_label_values(&[&config.stream])
        .set(0);
    metrics.bus_term.with_label_values(&["publish"]).set(0);
    let mut publisher = Publisher {
        client,
        js,
        index,
        changes,
        lease,
        published: metrics.bus_published.clone(),
        metrics,
        merged_seen: 0,
        reconcile: Reconcile::default(),
        watching: None,
        watched: HashMap::new(),
        watching_bars: None,
        watched_bars: HashMap::new(),
        led: None,
        watched_term: 0,
        went_on: HashMap::new(),
        bars_sent: HashMap::new(),
        config,
    };
    let wait = Duration::from_millis(publisher.config.cache_wait_ms);
    match tokio::time::timeout(wait, publisher.first_look()).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            "NATS not reachable within {wait:?}: the stream and the lease are tried in the background"
        ),
    }
    actix_web::rt::spawn(publisher.run(events, shutdown));
    Ok(())
}

/// The task that leads or stands by, and publishes what the index's change log lists.
struct Publisher {
    config: PublishConfig,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    index: Arc<Index>,
    changes: Arc<ChangeLog>,
    lease: Lease,
    metrics: Arc<Metrics>,
    published: prometheus::IntCounter,
    /// `ChangeLog::merged` at the last look (the metric counts the difference).
    merged_seen: u64,
    reconcile: Reconcile,
    /// While standing by: the subscription to the leader's states, and per symbol the last state
    /// of the leader's term seen there (module doc).
    watching: Option<async_nats::Subscriber>,
    watched: HashMap<Symbol, Published>,
    /// While standing by: the subscription to the leader's bars, and per symbol its bars as they
    /// stand (`merge_bars`), which a new leader takes over (`Index::adopt_bars`).
    watching_bars: Option<async_nats::Subscriber>,
    watched_bars: HashMap<Symbol, wire::Bars>,
    /// The term this ingest last led under: taking the lease again with the last states on the
    /// bus still of that term, it goes on with its own prints and bars (module doc).
    led: Option<u64>,
    /// The term of the states in `watched`.
    watched_term: u64,
    /// At the last takeover, each symbol's `version` once it went on from the published state.
    went_on: HashMap<Symbol, u64>,
    /// Per symbol, how many final bars of each interval were published under this term (the next
    /// bars message carries those after).
    bars_sent: HashMap<Symbol, Vec<u64>>,
}

/// A symbol's last state on the bus, as a new leader goes on from it: its `seq`, quote and prints.
type Published = (u64, Quote, BusPrints);

/// Keeps a symbol's bars as the leader publishes them: the newest message's open bar, and the
/// final bars of every message (up to `wire::BUS_FINALS` per interval, by `start`), so that a
/// leader taking over has what edges were sent.
fn merge_bars(held: &mut HashMap<Symbol, wire::Bars>, bars: wire::Bars) {
    let Some(h) = held.get_mut(&bars.symbol) else {
        held.insert(bars.symbol.clone(), bars);
        return;
    };
    let newer = (bars.term, bars.version) >= (h.term, h.version);
    for s in bars.series {
        let Some(hs) = h.series.iter_mut().find(|x| x.interval == s.interval) else {
            h.series.push(s);
            continue;
        };
        let mut finals = std::mem::take(&mut hs.finals);
        finals.extend(s.finals);
        finals.sort_by_key(|b| b.start);
        finals.dedup_by_key(|b| b.start);
        let from = finals.len().saturating_sub(wire::BUS_FINALS);
        hs.finals = finals.split_off(from);
        if newer {
            hs.open = s.open;
        }
        let newest_final = hs.finals.last().map_or(i64::MIN, |b| b.start);
        hs.open = hs.open.filter(|b| b.start > newest_final);
    }
    if newer {
        (h.term, h.version) = (bars.term, bars.version);
    }
}

/// The next message of a subscription, or never without one.
async fn next_message(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Where the reconcile is: the symbols of this round, and how far it got.
#[derive(Default)]
struct Reconcile {
    symbols: Vec<Symbol>,
    next: usize,
}

/// A round of the reconcile is this many slices, one per `reconcile_ms / RECONCILE_SLICES`.
const RECONCILE_SLICES: u32 = 20;

impl Publisher {
    /// At start: the stream (its settings are an error now, not in the background) and the
    /// lease, so that a sole ingest leads before its feeds tick.
    async fn first_look(&mut self) -> Result<(), PublishError> {
        match ensure_stream(
            &self.js,
            &self.config.stream,
            &self.config.subject_prefix,
            self.config.stream_settings(),
        )
        .await
        {
            Ok(_) => {}
            Err(StreamError::Settings(e)) => return Err(PublishError::Stream(e)),
            Err(StreamError::Unavailable(e)) => {
                tracing::warn!("the scale-out stream: {e}; trying again in the background");
                return Ok(());
            }
        }
        self.watch().await;
        let step = self.lease.step().await;
        self.stepped(step).await;
        if self.lease.leading().is_none() {
            let leader = self.lease.leader().map_or("", |r| r.holder.as_str());
            tracing::info!(
                this = self.lease.holder(),
                leader,
                "another ingest holds the scale-out lease: standing by"
            );
        }
        Ok(())
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Standing by: subscribes to the states on the bus (once).
    async fn watch(&mut self) {
        if self.watching.is_none() {
            let subject = wire::state_subjects(&self.config.subject_prefix);
            match self.client.subscribe(subject).await {
                Ok(s) => self.watching = Some(s),
                Err(e) => tracing::warn!("cannot watch the leader's states: {e}"),
            }
        }
        if self.watching_bars.is_none() {
            let subject = wire::bars_subjects(&self.config.subject_prefix);
            match self.client.subscribe(subject).await {
                Ok(s) => self.watching_bars = Some(s),
                Err(e) => tracing::warn!("cannot watch the leader's bars: {e}"),
            }
        }
    }

    /// Bars the leader published, seen while standing by (of the term the lease announced).
    fn watched_bars(&mut self, message: async_nats::Message) {
        let Some(term) = self.lease.leader().and_then(|r| r.term) else {
            return;
        };
        let prefix = &self.config.subject_prefix;
        if let Ok(bars) = wire::check_bars(prefix, &message.subject, &message.payload) {
            if bars.term == term {
                merge_bars(&mut self.watched_bars, bars);
            }
        }
    }

    /// A state the leader published, seen while standing by: kept when it is of the term the
    /// lease announced (a state of another term is an old leader's or no leader's).
    fn watched_state(&mut self, message: async_nats::Message) {
        let Some(term) = self.lease.leader().and_then(|r| r.term) else {
            return;
        };
        let prefix = &self.config.subject_prefix;
        if let Ok(state) = wire::check_state(prefix, &message.subject, &message.payload) {
            if state.term == term {
                self.watched_term = self.watched_term.max(term);
                let held =
                    self.watched
                        .entry(state.symbol)
                        .or_insert((0, state.quote, state.prints));
                if state.seq >= held.0 {
                    *held = (state.seq, state.quote, state.prints);
                }
            }
        }
    }

    fn set_leader_gauge(&self, publishing: bool) {
        self.metrics
            .bus_leader
            .with_label_values(&[&self.config.stream])
            .set(publishing.into());
    }

    async fn run(mut self, events: Arc<ConnectionEvents>, shutdown: CancellationToken) {
        let log = LogLimiter::new(5, 1);
        let mut batch = Changes::default();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        let slice = (Duration::from_millis(self.config.reconcile_ms) / RECONCILE_SLICES)
            .max(Duration::from_millis(10));
        let mut reconcile = tokio::time::interval(slice);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_step = Instant::now() + self.lease.next_step_in();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = self.client.flush().await;
                    self.lease.release().await;
                    let _ = self.client.flush().await;
                    return;
                }
                seen = events.next() => {
                    if seen.refused {
                        // An ingest that cannot publish must not lead: its heartbeats would keep
                        // edges live on prices it cannot send.
                        let bench = Duration::from_millis(self.config.lease_ms) * 10;
                        let step = self.lease.step_down("NATS refused a publish (permissions)", bench);
                        self.stepped(step).await;
                    }
                    // `quotegw_bus_leader` says who publishes: nothing does while NATS is away
                    // (found from outside: it read 1 through a whole outage). The lease, kept or
                    // lost, is settled when the connection is back.
                    if seen.disconnected {
                        self.set_leader_gauge(false);
                    }
                    if seen.connected {
                        // A new connection may be a new server: make sure the cache exists, then
                        // fill it with every symbol's state.
                        // In its own task: a JetStream still starting on a restarted server must not
                        // hold the lease's renewal, or a standby takes over a leader that is alive.
                        let (js, stream, prefix, settings) = (self.js.clone(), self.config.stream.clone(), self.config.subject_prefix.clone(), self.config.stream_settings());
                        actix_web::rt::spawn(async move {
                            match ensure_stream(&js, &stream, &prefix, settings).await {
                                Ok(_) => {}
                                Err(StreamError::Settings(e)) => tracing::error!("the scale-out stream: {e}"),
                                Err(StreamError::Unavailable(e)) => tracing::warn!("the scale-out stream: {e}"),
                            }
                        });
                        // A leader renews at once on a new connection: a stream that started over
                        // has lost its lease, and the running leader takes the new one first.
                        next_step = Instant::now() + Duration::from_millis(100);
                        if self.lease.leading().is_none() {
                            self.watch().await;
                        }
                        if self.lease.leading().is_some() {
                            self.set_leader_gauge(true);
                            self.publish_all();
                        }
                    }
                    continue;
                }
                message = next_message(&mut self.watching) => {
                    if let Some(message) = message {
                        self.watched_state(message);
                    }
                    continue;
                }
                message = next_message(&mut self.watching_bars) => {
                    if let Some(message) = message {
                        self.watched_bars(message);
                    }
                    continue;
                }
                // Nothing that publishes runs while the connection is down: a publish would wait
                // for it, holding this task (the lease's renewal with it) until the client is
                // back (found from outside: a standby took over a leader stuck so after a NATS
                // restart). The change log conflates meanwhile; the next connection's event
                // resumes them.
                _ = tokio::time::sleep_until(next_step), if self.connected() => {
                    let step = self.lease.step().await;
                    if self.stepped(step).await {
                        // Edges go live on the new leader's heartbeat: send it now, not up to
                        // heartbeat_ms later.
                        heartbeat.reset_immediately();
                    }
                    next_step = Instant::now() + self.lease.next_step_in();
                    continue;
                }
                _ = heartbeat.tick(), if self.connected() => {
                    if let Some(term) = self.lease.leading() {
                        let hb = wire::encode_heartbeat(term, crate::model::now_ms());
                        let subject = wire::heartbeat_subject(&self.config.subject_prefix);
                        if let Err(e) = self.client.publish(subject, hb.into()).await {
                            if let Some(suppressed) = log.admit(std::time::Instant::now()) {
                                tracing::warn!(suppressed, "publishing to NATS failed: {e}");
                            }
                        }
                    }
                    continue;
                }
                _ = reconcile.tick(), if self.connected() => {
                    self.reconcile_slice().await;
                    continue;
                }
                _ = self.changes.take(&mut batch), if self.connected() => {}
            }
            self.metrics
                .bus_changelog_depth
                .set((batch.states.len() + batch.behind.len()) as i64);
            let merged = self.changes.merged();
            self.metrics
                .bus_changelog_merged
                .inc_by(merged - self.merged_seen);
            self.merged_seen = merged;
            let behind = batch
                .behind
                .drain(..)
                .filter_map(|entry| entry.bus_change());
            // A standby reads its changes too (the log stays short) and drops them: the leader
            // publishes the same symbols, and this ingest publishes every symbol when it leads.
            let mut leading = true;
            for change in batch.states.drain(..).chain(behind) {
                leading &= self.publish(change).await;
            }
            // After the states: an edge that gets a symbol's bars has had the prints in them. A
            // standby does not read them (it sends every symbol's whole when it takes the lease).
            if self.lease.leading().is_none() {
                batch.bars.clear();
            }
            for entry in std::mem::take(&mut batch.bars) {
                let sent = self.bars_sent.entry(entry.symbol.clone()).or_default();
                if let Some(bars) = entry.bus_bars(sent, wire::BUS_FINALS) {
                    leading &= self.publish_bars(&entry.symbol, bars).await;
                }
            }
            if !leading {
                if let Some(suppressed) = log.admit(std::time::Instant::now()) {
                    tracing::debug!(suppressed, "not leading: changes dropped");
                }
            }
        }
    }

    /// Every symbol's state and bars again, as they are now, the bars with their last final ones
    /// (a new term, a NATS server that may have lost its store).
    fn publish_all(&mut self) {
        self.bars_sent.clear();
        self.changes.mark_all(&self.index);
    }

    /// Publishes a symbol's bars under the current term; false when this ingest does not lead.
    async fn publish_bars(
        &self,
        symbol: &Symbol,
        (version, series): (u64, Vec<BusSeries>),
    ) -> bool {
        let Some(term) = self.lease.leading() else {
            return false;
        };
        let subject = wire::bars_subject(&self.config.subject_prefix, symbol);
        let bars = wire::Bars {
            term,
            version,
            symbol: symbol.clone(),
            series,
        };
        self.send(subject, wire::encode_bars(&bars)).await;
        true
    }

    /// One message, counted; a failure is the connection's (its events say so).
    async fn send(&self, subject: String, payload: String) {
        match self.client.publish(subject, payload.into()).await {
            Ok(()) => self.published.inc(),
            Err(e) => tracing::debug!("publishing to NATS failed: {e}"),
        }
    }

    /// Publishes one change under the current term; false when this ingest does not lead (the
    /// lease is checked for every message: one that expired stops the publishing at once).
    async fn publish(&self, change: Change) -> bool {
        let Some(term) = self.lease.leading() else {
            return false;
        };
        let subject = wire::state_subject(&self.config.subject_prefix, &change.symbol);
        let state = State {
            term,
            version: change.version,
            seq: change.seq,
            symbol: change.symbol,
            quote: change.quote,
            prints: change.prints,
        };
        self.send(subject, wire::encode_state(&state)).await;
        true
    }

    /// Every symbol again over `reconcile_ms`: this tick's share of the round.
    async fn reconcile_slice(&mut self) {
        if self.lease.leading().is_none() {
            return;
        }
        if self.reconcile.next >= self.reconcile.symbols.len() {
            self.reconcile.symbols = self.index.symbols_sorted();
            self.reconcile.next = 0;
        }
        let per_slice = self
            .reconcile
            .symbols
            .len()
            .div_ceil(RECONCILE_SLICES as usize);
        let end = (self.reconcile.next + per_slice).min(self.reconcile.symbols.len());
        for i in self.reconcile.next..end {
            let Some(entry) = self.index.lookup(&self.reconcile.symbols[i]) else {
                continue;
            };
            let Some(change) = entry.bus_change() else {
                continue;
            };
            if !self.publish(change).await {
                return;
            }
            // Whole: the last final bars of each interval too, for a cache that lost them.
            if let Some(bars) = entry.bus_bars(&mut Vec::new(), wire::BUS_FINALS) {
                self.publish_bars(&entry.symbol, bars).await;
            }
        }
        self.reconcile.next = end;
    }

    /// What a step of the lease means for this ingest; true when it has just taken the lease (or
    /// renewed it after it had lapsed).
    async fn stepped(&mut self, step: Step) -> bool {
        match step {
            Step::Same => false,
            Step::Resumed => {
                tracing::warn!("the scale-out lease had lapsed by this ingest's clock and nobody took it: leading again, publishing every symbol");
                self.publish_all();
                true
            }
            Step::Won(term) => {
                // The leader now: its own states need no watching.
                for mut s in [self.watching.take(), self.watching_bars.take()]
                    .into_iter()
                    .flatten()
                {
                    let _ = s.unsubscribe().await;
                }
                self.metrics
                    .bus_lease_changes
                    .with_label_values(&["won"])
                    .inc();
                match self.continue_from_cache(term).await {
                    Ok(n) => tracing::info!(
                        term,
                        holder = self.lease.holder(),
                        symbols = n,
                        "took the scale-out lease: publishing, seq going on from the cache"
                    ),
                    Err(e) => {
                        tracing::warn!(term, "took the scale-out lease; {e}: seq may start over")
                    }
                }
                // What the change log holds from before each symbol's seq went on from the last
                // published one (this ingest's own ticks while standing by, and while the cache
                // was read): published under the new term, it would be a lower seq than clients
                // hold (found from outside: 1012s after quick failovers and rolling deploys). It
                // goes; every symbol's state as it is now goes out instead. What came after stays:
                // its prints are counted on the bus (dropped, edges would count them lost).
                let from = std::mem::take(&mut self.went_on);
                self.changes
                    .discard_but(|c| from.get(&c.symbol).is_some_and(|v| c.version > *v));
                self.publish_all();
                self.set_leader_gauge(true);
                self.metrics
                    .bus_term
                    .with_label_values(&["publish"])
                    .set(term as i64);
                true
            }
            Step::Lost(why) => {
                self.metrics
                    .bus_lease_changes
                    .with_label_values(&["lost"])
                    .inc();
                self.set_leader_gauge(false);
                self.metrics.bus_term.with_label_values(&["publish"]).set(0);
                tracing::warn!("no longer the scale-out leader ({why}): standing by");
                self.watch().await;
                false
            }
        }
    }

    /// Goes on from each symbol's last published `seq`: what this ingest saw the leader publish
    /// (standing by) first, so that a cache read cut short loses none of it, then what the cache
    /// holds (states of this term or before that pass the bus's checks; `continue_after` keeps
    /// the higher). The prints are counted on from the published count and the published bars
    /// taken over, unless the last published states are this ingest's own (it led, its lease
    /// lapsed, and nobody led since): then its own count and bars go on, so that the prints it
    /// took while standing by, which nobody published, reach edges as `trades_lost`.
    async fn continue_from_cache(&mut self, term: u64) -> Result<usize, String> {
        // Each symbol's highest seq, watched or cached, taken once: two steps would put the lower
        // one in the change log too.
        let mut last = std::mem::take(&mut self.watched);
        let mut bars = std::mem::take(&mut self.watched_bars);
        let mut newest_term = std::mem::take(&mut self.watched_term);
        let prefix = self.config.subject_prefix.clone();
        let js = self.js.clone();
        let stream_name = self.config.stream.clone();
        let read = async {
            let stream = js
                .get_stream(&stream_name)
                .await
                .map_err(|e| format!("the cache is unreadable ({e})"))?;
            let mut n = 0;
            read_cache(
                &stream,
                &wire::state_subjects(&prefix),
                |subject, payload| match wire::check_state(&prefix, subject, payload) {
                    Ok(state) if state.term <= term => {
                        n += 1;
                        newest_term = newest_term.max(state.term);
                        let held =
                            last.entry(state.symbol)
                                .or_insert((0, state.quote, state.prints));
                        if state.seq > held.0 {
                            *held = (state.seq, state.quote, state.prints);
                        }
                    }
                    Ok(state) => tracing::warn!(
                        term = state.term,
                        "a cached state of a term no lease gave: skipped"
                    ),
                    Err(refused) => tracing::warn!("a cached state skipped: {}", refused.why),
                },
            )
            .await
            .map_err(|e| format!("the cache is unreadable ({e})"))?;
            let has_bars = stream
                .cached_info()
                .config
                .subjects
                .contains(&wire::bars_subjects(&prefix));
            if has_bars {
                read_cache(
                    &stream,
                    &wire::bars_subjects(&prefix),
                    |subject, payload| {
                        if let Ok(b) = wire::check_bars(&prefix, subject, payload) {
                            if b.term <= term {
                                merge_bars(&mut bars, b);
                            }
                        }
                    },
                )
                .await
                .map_err(|e| format!("the cache is unreadable ({e})"))?;
            }
            Ok::<usize, String>(n)
        };
        // Bounded, so that the lease is renewed in time; what was watched goes on regardless.
        let wait = Duration::from_millis(self.config.lease_ms) / 2;
        let read = tokio::time::timeout(wait, read)
            .await
            .unwrap_or_else(|_| Err("the cache took too long to read".into()));
        let own = self.led.is_some_and(|t| t == newest_term);
        for (symbol, (seq, quote, prints)) in last {
            let version = self
                .index
                .continue_after(symbol.clone(), seq, quote, prints, own);
            self.went_on.insert(symbol, version);
        }
        if !own {
            for b in bars.into_values() {
                self.index.adopt_bars(&b);
            }
        }
        self.led = Some(term);
        read
    }
}
