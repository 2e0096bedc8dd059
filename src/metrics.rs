//! Observability for every stage, in one registry: what `/metrics` serves.
//!
//! No label per symbol or per connection (cardinality): per-feed and per-code labels only, resolved to
//! handles once so that the hot path never looks a label up.

use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::normalize::RejectReason;
use crate::protocol::ErrorCode;

/// Tick-to-write latency buckets, seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub subscriptions: IntGauge,
    pub connections_stalled: IntGauge,
    pub ticks_received: IntCounterVec,
    pub ticks_rejected: IntCounterVec,
    pub updates_sent: IntCounterVec,
    pub updates_conflated: IntCounter,
    pub snapshots_sent: IntCounter,
    pub frames_sent: IntCounter,
    pub bytes_sent: IntCounter,
    pub fanout_rest_seconds: Counter,
    pub slow_consumer_closes: IntCounter,
    pub client_errors: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub tickets_issued: IntCounter,
    pub closes: IntCounterVec,
    pub tick_to_write: Histogram,
    pub feed_up: IntGaugeVec,
    pub feed_bad_lines: IntCounterVec,
    pub ticks_standby: IntCounterVec,
    pub poll_requests: IntCounterVec,
    pub poll_errors: IntCounterVec,
    pub poll_seconds: HistogramVec,
    pub bus_published: IntCounter,
    pub bus_states_dropped: IntCounterVec,
    pub bus_connected: IntGaugeVec,
    pub bus_reconnects: IntCounterVec,
    pub bus_reloads: IntCounterVec,
    pub bus_heartbeat_age: GaugeVec,
    pub bus_term: IntGaugeVec,
    pub bus_leader: IntGaugeVec,
    pub bus_lease_changes: IntCounterVec,
    pub bus_changelog_depth: IntGauge,
    pub bus_changelog_merged: IntCounter,
    pub trades_received: IntCounterVec,
    pub trades_sent: IntCounterVec,
    pub trades_lost: IntCounterVec,
    pub bars_sent: IntCounterVec,
    pub bars_finalized: IntCounterVec,
    pub bar_late_trades: IntCounter,
}

/// The counters of one feed, resolved once.
#[derive(Clone)]
pub struct FeedCounters {
    pub received: IntCounter,
    pub standby: IntCounter,
    pub trades: IntCounter,
    rejected: Vec<IntCounter>,
}

impl FeedCounters {
    pub fn rejected(&self, reason: RejectReason) -> &IntCounter {
        &self.rejected[reason as usize]
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            // Names are constants of this file and unique, so registration cannot fail.
            r.register(Box::new(c.clone()))
                .expect("metric names in metrics.rs are unique");
            c
        }
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric name"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"),
            )
        };
        let m = Metrics {
            connections: reg(&registry, IntGaugeVec::new(Opts::new("quotegw_connections", "Open client connections, by transport (ws: WebSocket, sse: /v1/stream)."), &["transport"]).expect("valid metric name")),
            subscriptions: reg(&registry, IntGauge::new("quotegw_subscriptions", "Symbol subscriptions over all connections.").expect("valid metric name")),
            connections_stalled: reg(&registry, IntGauge::new("quotegw_connections_stalled", "Connections whose socket is full: the session waits for the client to read (a slow consumer in the making; closed with 4008 after slow_consumer_timeout_ms).").expect("valid metric name")),
            ticks_received: counter_vec("quotegw_ticks_received_total", "Ticks handed to the index by each feed.", &["feed"]),
            ticks_rejected: counter_vec("quotegw_ticks_rejected_total", "Ticks refused by validation (never forwarded), by feed and reason.", &["feed", "reason"]),
            updates_sent: counter_vec("quotegw_updates_sent_total", "Update messages handed to sockets, by transport (ws, sse).", &["transport"]),
            updates_conflated: counter("quotegw_updates_conflated_total", "Upstream ticks merged into a later update instead of being sent on their own (the sum of 'conflated')."),
            snapshots_sent: counter("quotegw_snapshots_sent_total", "Snapshot messages handed to sockets."),
            frames_sent: counter("quotegw_frames_sent_total", "Frames handed to sockets: WebSocket text frames, and SSE writes."),
            bytes_sent: counter("quotegw_bytes_sent_total", "Payload bytes of the frames handed to sockets."),
            fanout_rest_seconds: reg(&registry, Counter::new("quotegw_fanout_rest_seconds_total", "Time the workers' fan-out rested between busy passes (limits.fanout_busy_percent): latency traded for fuller frames under load.").expect("valid metric name")),
            slow_consumer_closes: counter("quotegw_slow_consumer_closes_total", "Connections closed with 4008 because their socket accepted nothing for slow_consumer_timeout_ms."),
            client_errors: counter_vec("quotegw_client_errors_total", "Error replies to client ops, by code.", &["code"]),
            tickets_issued: counter("quotegw_tickets_issued_total", "Tickets issued by POST /v1/ticket (a refused one is counted in quotegw_connections_refused_total{reason=\"bad_ticket\"})."),
            connections_refused: counter_vec("quotegw_connections_refused_total", "Requests refused before anything was served (WebSocket upgrades, SSE streams, REST and /metrics requests, sockets over max_pending_per_ip), by reason.", &["reason"]),
            closes: counter_vec("quotegw_closes_total", "Connections closed by the gateway, by close code.", &["code"]),
            tick_to_write: reg(&registry, Histogram::with_opts(
                HistogramOpts::new("quotegw_tick_to_write_seconds", "From a tick entering the index to its update's bytes handed to the socket.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            ).expect("valid histogram")),
            feed_up: reg(&registry, IntGaugeVec::new(Opts::new("quotegw_feed_up", "1 while the feed is delivering (http_poll: some of its symbols had a good answer within stale_after_ms; a NATS edge: the ingest is heard)."), &["feed"]).expect("valid metric name")),
            feed_bad_lines: counter_vec("quotegw_feed_bad_lines_total", "Lines of a replayed file skipped as invalid (each logged with file:line).", &["feed"]),
            ticks_standby: counter_vec("quotegw_ticks_standby_total", "Ticks from a feed that is not the active source of their symbol (failover standby), kept as that feed's shadow quote.", &["feed"]),
            poll_requests: counter_vec("quotegw_poll_requests_total", "HTTP polls sent to the upstream, by feed.", &["feed"]),
            poll_errors: counter_vec("quotegw_poll_errors_total", "Failed HTTP polls, by feed and kind (connect, timeout, status, redirect: refused to another host or from https to http, body, decode, bad_quote: one quote of a good answer dropped).", &["feed", "kind"]),
            poll_seconds: reg(&registry, HistogramVec::new(
                HistogramOpts::new("quotegw_poll_seconds", "Duration of each HTTP poll, request to parsed body.")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["feed"],
            ).expect("valid histogram")),
            bus_published: counter("quotegw_bus_published_total", "Symbol states and bars messages a scale-out ingest published to NATS (conflated per symbol while NATS is slow or away)."),
            bus_states_dropped: counter_vec("quotegw_bus_states_dropped_total", "States a scale-out edge dropped from the bus, by reason (too_large, malformed, subject_mismatch, non_positive_price, old_term, unleased_term, max_symbols).", &["feed", "reason"]),
            bus_connected: reg(&registry, IntGaugeVec::new(Opts::new("quotegw_bus_connected", "1 while the NATS connection is up, by link (publish: the ingest's; an edge: its feed's name)."), &["link"]).expect("valid metric name")),
            bus_reconnects: counter_vec("quotegw_bus_reconnects_total", "NATS connections lost, by link.", &["link"]),
            bus_reloads: counter_vec("quotegw_bus_reloads_total", "Cache loads of a scale-out edge, by feed and reason (start, reconnect, slow_consumer, leader: a leader heard after none).", &["feed", "reason"]),
            bus_heartbeat_age: reg(&registry, GaugeVec::new(Opts::new("quotegw_bus_heartbeat_age_seconds", "Seconds since a scale-out edge last heard its leader's heartbeat (since start, before the first), by feed."), &["feed"]).expect("valid metric name")),
            bus_term: reg(&registry, IntGaugeVec::new(Opts::new("quotegw_bus_term", "The scale-out term: on an ingest (link publish), the one it leads under (0 standing by); on an edge, the one it follows."), &["link"]).expect("valid metric name")),
            bus_leader: reg(&registry, IntGaugeVec::new(Opts::new("quotegw_bus_leader", "1 while this scale-out ingest holds the lease of the stream and publishes; 0 while it stands by (exported by ingests only)."), &["stream"]).expect("valid metric name")),
            bus_lease_changes: counter_vec("quotegw_bus_lease_changes_total", "Leases this scale-out ingest took (won) or lost (lost: taken by another, not renewed in time, or stepped down on refused publishes).", &["change"]),
            bus_changelog_depth: reg(&registry, IntGauge::new("quotegw_bus_changelog_depth", "Changes a scale-out ingest's publisher took in its last read of the change log (how far behind the index it was).").expect("valid metric name")),
            bus_changelog_merged: counter("quotegw_bus_changelog_merged_total", "Changes a scale-out ingest merged into a symbol's latest state because its change log was full (NATS slow or away)."),
            trades_received: counter_vec("quotegw_trades_received_total", "Trade prints each feed reported that the index published (a standby feed's are not).", &["feed"]),
            trades_sent: counter_vec("quotegw_trades_sent_total", "Trade messages handed to sockets, by transport (ws, sse).", &["transport"]),
            trades_lost: counter_vec("quotegw_trades_lost_total", "Trade prints connections fell too far behind to be sent (the sum of trades_lost counts), by transport.", &["transport"]),
            bars_sent: counter_vec("quotegw_bars_sent_total", "Bar messages handed to sockets (open and final), by transport.", &["transport"]),
            bars_finalized: counter_vec("quotegw_bars_finalized_total", "Bars ended (final), by interval.", &["interval"]),
            bar_late_trades: counter("quotegw_bar_late_trades_total", "Trades whose ts fell before their symbol's open bar or in an interval already ended: in no bar."),
            registry,
        };
        for transport in ["ws", "sse"] {
            m.connections.with_label_values(&[transport]);
            m.updates_sent.with_label_values(&[transport]);
            m.trades_sent.with_label_values(&[transport]);
            m.trades_lost.with_label_values(&[transport]);
            m.bars_sent.with_label_values(&[transport]);
        }
        // Every error code appears from the start, so dashboards and alerts see 0 rather than nothing.
        for code in ErrorCode::ALL {
            m.client_errors.with_label_values(&[code.as_str()]);
        }
        for code in crate::protocol::close::ALL {
            m.closes
                .with_label_values(&[itoa::Buffer::new().format(code)]);
        }
        for reason in ["max_connections", "shutting_down", "loading"]
            .into_iter()
            .chain(crate::access::Refusal::ALL.map(|r| r.reason()))
        {
            m.connections_refused.with_label_values(&[reason]);
        }
        m
    }

    /// Resolves (and so exports at 0) the counters of a feed.
    pub fn feed_counters(&self, feed: &str) -> FeedCounters {
        self.feed_up.with_label_values(&[feed]);
        self.feed_bad_lines.with_label_values(&[feed]);
        FeedCounters {
            received: self.ticks_received.with_label_values(&[feed]),
            standby: self.ticks_standby.with_label_values(&[feed]),
            trades: self.trades_received.with_label_values(&[feed]),
            rejected: RejectReason::ALL
                .iter()
                .map(|r| self.ticks_rejected.with_label_values(&[feed, r.as_str()]))
                .collect(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a malformed metric family, which the registry prevents.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
