//! Wiring: feeds → index → sessions, the threads they run on, and graceful shutdown.
//!
//! Threads: `quotegw-main` runs an actix System whose own thread hosts the feeds and the one ingest
//! task that applies their events to the index; actix starts `workers` more threads (one per core by
//! default) that run the HTTP server and every WebSocket connection task, plus its accept thread.
//!
//! Reload (SIGHUP in `main.rs`): `Reloader` puts new access settings in force (module `access`,
//! `LiveAccess`) and wakes every session to check its admission again.
//!
//! Shutdown (SIGINT/SIGTERM in `main.rs`, or `RunningGateway::shutdown`): one cancellation token
//! stops accepting, makes every connection close with 1001, and stops the feeds; the gateway waits
//! at most `SHUTDOWN_GRACE_SECS` for the sessions and actix 1 s more for HTTP requests before
//! dropping them, so the process exits within 5 s.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix_http::HttpService;
use actix_http::KeepAlive;
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, Service, ServiceFactory,
    ServiceFactoryExt,
};
use actix_web::dev::AppConfig;
use actix_web::{web, App, HttpServer};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, AuthMode, LiveAccess, Tier};
use crate::config::{Config, FeedConfig};
use crate::fanout::Alerts;
use crate::feed::{Feed, FeedContext, FeedError, FeedHealth, TICK_CHANNEL_CAPACITY};
use crate::http::{ops_routes, routes, sse, upgrade};
use crate::index::{ChangeLog, HistoryConfig, Index, CATCH_UP_MARGIN};
use crate::ingest;
use crate::metrics::Metrics;
use crate::session::SessionShared;
use crate::state::AppState;
use tokio::net::TcpStream;

/// How long the gateway waits for sessions after the shutdown signal; they close with 1001 within
/// about a second (their close grace), so this is a backstop that keeps exit under 5 s.
const SHUTDOWN_GRACE_SECS: u64 = 3;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("no feed configured: add a [[feeds]] entry to the config")]
    NoFeeds,
    #[error("feed '{name}': {source}")]
    Feed { name: String, source: FeedError },
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid listen address: {0}")]
    Listen(String),
    #[error("cannot start the gateway thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error("cannot raise the open-file limit (RLIMIT_NOFILE): {0}")]
    FdLimit(std::io::Error),
    #[error(
        "limits.max_connections needs {needed} file descriptors (connections, each worker's headroom \
         for refusals, listeners and feeds), but the hard open-file limit is {limit}: raise it \
         (`ulimit -Hn`, systemd LimitNOFILE=) or lower limits.max_connections"
    )]
    TooFewFds { needed: u64, limit: u64 },
}

/// A gateway to start: a config plus, optionally, feeds built in code (embedders, tests).
pub struct Gateway {
    config: Config,
    extra_feeds: Vec<Box<dyn Feed>>,
}

/// Applies a reloaded config to a running gateway (`RunningGateway::reloader`).
#[derive(Clone)]
pub struct Reloader {
    access: Arc<LiveAccess>,
    alerts: Arc<Alerts>,
    /// The config the gateway started with: what a reload cannot change.
    config: Arc<Config>,
    one_at_a_time: Arc<std::sync::Mutex<()>>,
}

impl Reloader {
    /// Applies what a reload (SIGHUP) changes without a restart: `[access]` (API keys, JWT keys,
    /// audience, issuer, allowed origins, proxies) and the per-client `[limits]`
    /// (`max_connections_per_ip`, `max_connections_per_token`, `max_pending_per_ip`,
    /// `ipv6_prefix_len`, `auth_failures_per_ip`, `auth_failure_window_ms`). Every connection then
    /// checks how it was admitted against them: one whose Origin or credential they no longer
    /// admit closes with 1008 ("credential revoked"), the others are untouched. An error (a key
    /// file unreadable, a JWT key that does not parse) keeps the settings in force. Returns the
    /// sections that differ from the running config but need a restart.
    ///
    /// The new config must be one the gateway would start with, on the address it is bound to
    /// (`listen` as running: protected mode judges the address clients reach), checked as
    /// `Gateway::check` does: a truncated file that parses but lists no feed, or a feed whose file
    /// is gone, is refused like a start would refuse it, and the settings in force are kept.
    pub fn reload(&self, config: &Config) -> Result<Vec<&'static str>, ReloadError> {
        let _one = crate::sync::lock(&self.one_at_a_time);
        let running = Config {
            listen: self.config.listen.clone(),
            ..config.clone()
        };
        running
            .validate()
            .map_err(|(key, message)| ReloadError::Config(format!("{key}: {message}")))?;
        Gateway::new(running).check()?;
        // The running tiers: the index keeps the past the delayed tier reads only if it was
        // configured at start.
        let access = self.access.get().reloaded(
            &config.access,
            config.limits.client_limits(),
            &self.config.tiers,
        )?;
        self.access.replace(access);
        self.alerts
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let (old, new) = (&*self.config, config);
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let session_limits = |c: &Config| {
            let mut l = c.limits.clone();
            let o = &old.limits;
            l.max_connections_per_ip = o.max_connections_per_ip;
            l.max_connections_per_token = o.max_connections_per_token;
            l.max_pending_per_ip = o.max_pending_per_ip;
            l.ipv6_prefix_len = o.ipv6_prefix_len;
            l.auth_failures_per_ip = o.auth_failures_per_ip;
            l.auth_failure_window_ms = o.auth_failure_window_ms;
            l
        };
        let mut restart = Vec::new();
        for (name, a, b) in [
            (
                "listen",
                &old.listen as &dyn std::fmt::Debug,
                &new.listen as &dyn std::fmt::Debug,
            ),
            ("workers", &old.workers, &new.workers),
            ("metrics_listen", &old.metrics_listen, &new.metrics_listen),
            ("feeds", &old.feeds, &new.feeds),
            ("publish", &old.publish, &new.publish),
            ("tiers", &old.tiers, &new.tiers),
            ("trades", &old.trades, &new.trades),
            ("bars", &old.bars, &new.bars),
        ] {
            if differs(a, b) {
                restart.push(name);
            }
        }
        if differs(&session_limits(old), &session_limits(new)) {
            restart.push("limits (other than the per-client ones)");
        }
        Ok(restart)
    }
}

/// Why a reload was refused (the settings in force are kept).
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// What a config would run (`Gateway::check`), one line per part.
pub struct Plan {
    pub lines: Vec<String>,
}

/// A started gateway.
pub struct RunningGateway {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Cancelled when the server has stopped, for whatever reason.
    stopped: CancellationToken,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    /// What a reload replaces, and the config it started with (what a reload cannot change).
    access: Arc<LiveAccess>,
    alerts: Arc<Alerts>,
    config: Config,
}

impl Gateway {
    pub fn new(config: Config) -> Gateway {
        Gateway {
            config,
            extra_feeds: Vec::new(),
        }
    }

    /// Adds a feed built in code, after those of the config.
    pub fn with_feed(mut self, feed: Box<dyn Feed>) -> Gateway {
        self.extra_feeds.push(feed);
        self
    }

    /// The config's feeds, built (their settings checked, files opened), then those built in code.
    fn build_feeds(&mut self) -> Result<Vec<Box<dyn Feed>>, StartError> {
        let mut feeds: Vec<Box<dyn Feed>> = Vec::new();
        for fc in &self.config.feeds {
            feeds.push(fc.build().map_err(|source| StartError::Feed {
                name: fc.name().to_string(),
                source,
            })?);
        }
        feeds.append(&mut self.extra_feeds);
        if feeds.is_empty() {
            return Err(StartError::NoFeeds);
        }
        Ok(feeds)
    }

    fn workers(&self) -> usize {
        match self.config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    fn access(&self) -> Result<Access, StartError> {
        Ok(Access::new(
            &self.config.access,
            self.config.limits.client_limits(),
            &self.config.tiers,
        )?)
    }

    /// Everything `start` checks before it listens, without listening or connecting (`quotegw
    /// check-config`, like `nginx -t`): the config (parsed and validated by `Config::load`), each
    /// feed's settings and files, the access keys, the addresses, the open-file limit. What it would
    /// run, or the error a start would fail with. A port already in use is found only by starting.
    pub fn check(mut self) -> Result<Plan, StartError> {
        let feeds = self.build_feeds()?;
        let workers = self.workers();
        let (needed, limit) = fds_needed(&self.config, workers);
        let limit = limit.map_err(StartError::FdLimit)?;
        if limit < needed {
            return Err(StartError::TooFewFds { needed, limit });
        }
        self.access()?;
        let c = &self.config;
        c.listen_addr().map_err(StartError::Listen)?;
        let mut lines = vec![match &c.metrics_listen {
            Some(m) => format!("listen {} (WebSocket at /ws), metrics on {m}", c.listen),
            None => format!(
                "listen {} (WebSocket at /ws, metrics at /metrics)",
                c.listen
            ),
        }];
        lines.push(format!(
            "workers {workers}; at most {} connections ({needed} file descriptors of a hard limit of {limit})",
            c.limits.max_connections
        ));
        for (feed, fc) in feeds.iter().zip(&c.feeds) {
            lines.push(format!(
                "feed '{}' ({}): {} symbols declared",
                feed.name(),
                fc.kind(),
                feed.symbols().len()
            ));
        }
        lines.push(format!(
            "access: auth {}, {} API keys, {} allowed origins{}, tickets sealed with {}",
            c.access.auth.name(),
            c.access.api_keys.len(),
            c.access.allowed_origins.len(),
            if c.access.allowed_origins.is_empty() {
                " (any)"
            } else {
                ""
            },
            if c.access.ticket_key.is_some() {
                "ticket_key (good on every gateway that has it)"
            } else {
                "a key of this process (good on this gateway only)"
            }
        ));
        if let Some(p) = &c.publish {
            lines.push(format!(
                "scale-out ingest: stream {}, subjects {}.>, NATS {}",
                p.stream,
                p.subject_prefix,
                crate::scaleout::client::without_credentials(&p.nats_url)
            ));
        }
        Ok(Plan { lines })
    }

    /// Binds the listen address and starts everything on its own threads.
    pub fn start(mut self) -> Result<RunningGateway, StartError> {
        let feeds = self.build_feeds()?;
        let workers = self.workers();
        raise_fd_limit(&self.config, workers)?;
        let access = Arc::new(LiveAccess::new(self.access()?));
        let alerts = Arc::new(Alerts::default());
        let addr = self.config.listen_addr().map_err(StartError::Listen)?;
        let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind {
            addr: self.config.listen.clone(),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.config.listen.clone(),
            source,
        })?;
        // Bound here, like `listen`, so that a taken port fails the start rather than a thread.
        let metrics_listener = match &self.config.metrics_listen {
            Some(m) => {
                let addr = crate::config::resolve(m).map_err(StartError::Listen)?;
                Some(TcpListener::bind(addr).map_err(|source| StartError::Bind {
                    addr: m.clone(),
                    source,
                })?)
            }
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
                addr: self.config.metrics_listen.clone().unwrap_or_default(),
                source,
            })?),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let started = self.config.clone();
        let (token, m, config) = (shutdown.clone(), metrics.clone(), self.config);
        let (live, alerted) = (access.clone(), alerts.clone());
        let stopped = CancellationToken::new();
        let ended = stopped.clone().drop_guard();
        let thread = std::thread::Builder::new()
            .name("quotegw-main".into())
            .spawn(move || {
                // Whatever the end (a start-up error of a feed or of the publisher included),
                // `stopped` says so.
                let _ended = ended;
                actix_web::rt::System::new().block_on(run(
                    config,
                    workers,
                    feeds,
                    Listeners {
                        public: listener,
                        ops: metrics_listener,
                    },
                    (live, alerted),
                    token,
                    m,
                ))
            })
            .map_err(StartError::Thread)?;
        Ok(RunningGateway {
            addr,
            metrics_addr,
            shutdown,
            stopped,
            metrics,
            thread: Some(thread),
            access,
            alerts,
            config: started,
        })
    }
}

impl RunningGateway {
    /// What applies a reload (SIGHUP), to run away from the signal loop (a config file that
    /// blocks on read must not hold SIGTERM).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            access: self.access.clone(),
            alerts: self.alerts.clone(),
            config: Arc::new(self.config.clone()),
            one_at_a_time: Arc::default(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Resolves when the server has stopped: after a shutdown, or on its own when it failed (a
    /// feed or the publisher refused at start); `join` then gives the error.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down gracefully and waits for the server to stop.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.join()
    }

    /// Waits until the gateway stops (after `begin_shutdown`, or if the server fails).
    pub fn join(&mut self) -> std::io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the gateway thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sockets each worker may hold that are not sessions yet (or never will be): HTTP requests, upgrade
/// handshakes, refusals waiting for their answer, widget downloads, `/metrics` scrapes. A session
/// leaves actix's count when its handshake is done (it runs as its own task, see `http::upgrade`),
/// and `max_connections` caps sessions; so actix accepts at most this many more per worker.
const HANDSHAKES_PER_WORKER: usize = 256;
/// File descriptors the gateway needs beside its connections: listeners, epoll and wake-up fds of
/// each thread, feeds' upstream connections and files, logs.
const FD_RESERVE: u64 = 256;

/// The file descriptors the config needs, and the hard `RLIMIT_NOFILE`.
fn fds_needed(config: &Config, workers: usize) -> (u64, std::io::Result<u64>) {
    let sockets = (config.limits.max_connections + HANDSHAKES_PER_WORKER * workers) as u64;
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(_, hard)| hard);
    (sockets + FD_RESERVE, hard)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and refuses to start when even that cannot
/// hold every connection the config allows: a gateway that runs out of descriptors fails accepts,
/// upstream polls and log files at random, long after it started.
fn raise_fd_limit(config: &Config, workers: usize) -> Result<(), StartError> {
    let (needed, _) = fds_needed(config, workers);
    let limit = rlimit::increase_nofile_limit(u64::MAX).map_err(StartError::FdLimit)?;
    if limit < needed {
        return Err(StartError::TooFewFds { needed, limit });
    }
    Ok(())
}

/// The bound sockets: the public one, and the operations one when `metrics_listen` is set.
struct Listeners {
    public: TcpListener,
    ops: Option<TcpListener>,
}

async fn run(
    config: Config,
    workers: usize,
    feeds: Vec<Box<dyn Feed>>,
    listeners: Listeners,
    (access, alerts): (Arc<LiveAccess>, Arc<Alerts>),
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let names: Vec<String> = feeds.iter().map(|f| f.name().to_string()).collect();
    let (index, changes) = build_index(&config, &names, metrics.clone());
    let index = Arc::new(index);
    for feed in &feeds {
        // A feed's list may name what the contract does not take as a symbol (a replay file's
        // bad line): its ticks are rejected at the index, so it is never listed or subscribable.
        for symbol in feed
            .symbols()
            .into_iter()
            .filter(|s| crate::model::valid_symbol(s))
        {
            index.register(symbol);
        }
    }
    // A scale-out ingest takes a first look at the lease before any feed runs: leading, it reads
    // the cache first, so that `seq` goes on from it.
    if let (Some(publish), Some(changes)) = (config.publish.clone(), changes) {
        crate::scaleout::publish::start(
            publish,
            index.clone(),
            changes,
            metrics.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(std::io::Error::other)?;
    }
    let mut feeds = feeds;
    for (feed, name) in feeds.iter_mut().zip(&names) {
        feed.prepare(&metrics)
            .await
            .map_err(|e| std::io::Error::other(format!("feed '{name}': {e}")))?;
    }
    tracing::info!(feeds = ?names, symbols = index.len(), "index ready");

    let (events_tx, events_rx) = mpsc::channel(TICK_CHANNEL_CAPACITY);
    ingest::spawn(index.clone(), events_rx);

    let mut health = Vec::new();
    let mut learning = Vec::new();
    for (id, feed) in feeds.into_iter().enumerate() {
        let h = Arc::new(FeedHealth::default());
        health.push((names[id].clone(), h.clone()));
        if feed.learns_symbols() {
            learning.push(h.clone());
        }
        let ctx = FeedContext::new(
            id as u16,
            events_tx.clone(),
            shutdown.child_token(),
            h.clone(),
            metrics.clone(),
        );
        let name = names[id].clone();
        actix_web::rt::spawn(async move {
            match feed.run(ctx).await {
                Ok(()) => tracing::info!(feed = %name, "feed stopped"),
                Err(e) => tracing::error!(feed = %name, "feed failed: {e}"),
            }
            h.up.store(false, std::sync::atomic::Ordering::Relaxed);
        });
    }
    drop(events_tx);

    let state = web::Data::new(AppState {
        sessions: Arc::new(SessionShared {
            index,
            metrics,
            limits: config.limits.clone(),
            tiers: config.tiers.clone(),
            shutdown: shutdown.clone(),
            alerts,
            access: access.clone(),
            connections: AtomicUsize::new(0),
        }),
        feeds: health,
        learning,
        access,
        tickets: Arc::default(),
    });
    let with_ops = listeners.ops.is_none();
    let public_state = state.clone();
    let sessions = state.sessions.clone();
    // actix-web's HttpServer cannot hand an upgraded connection over, so the public listener is
    // assembled from the parts HttpServer uses (actix-server + actix-http), with `http::upgrade` as
    // actix-http's upgrade service and the routes as its HTTP service.
    let handshake_timeout = Duration::from_millis(config.limits.handshake_timeout_ms);
    let builder = actix_server::Server::build();
    let draining = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        // Sockets not yet sessions, per worker: with `max_connections` for the sessions, all
        // workers together never hold more sockets than `raise_fd_limit` made room for.
        .max_concurrent_connections(HANDSHAKES_PER_WORKER)
        .disable_signals()
        // Only HTTP requests and handshakes by then: the sessions were waited for (below).
        .shutdown_timeout(1)
        .listen("quotegw-public", listeners.public, move || {
            let app = App::new()
                .app_data(public_state.clone())
                .configure(|cfg| routes(cfg, with_ops))
                .into_factory()
                .map_err(|e| e.error_response());
            let upgrade_state = public_state.clone();
            let draining = draining.clone();
            let http = HttpService::build()
                // A client must finish its request within this (slow-loris handshakes are dropped).
                .client_request_timeout(handshake_timeout)
                // One request per connection: so that `/v1/stream` is always a connection's first
                // request, which `sse::is_stream_request` can see (a reverse proxy in front keeps
                // connections to clients alive).
                .keep_alive(KeepAlive::Disabled)
                // The client a PROXY protocol header named (`proxied.rs`), for the routes.
                .on_connect_ext(crate::proxied::on_connect)
                .graceful_shutdown_signal(move || {
                    let draining = draining.clone();
                    async move { draining.notified().await }
                })
                .upgrade(fn_service(move |(req, framed)| {
                    upgrade(req, framed, upgrade_state.clone())
                }))
                // AppConfig only feeds URL generation and connection_info's fallback host, neither
                // of which the routes use.
                .h1(map_config(app, |()| AppConfig::default()))
                .tcp();
            // A connection whose first request is `GET /v1/stream` is an SSE session that owns its
            // socket (`http/sse.rs`); every other goes to actix-http.
            let stream_state = public_state.clone();
            fn_factory(move || {
                let http = http.new_service(());
                let stream_state = stream_state.clone();
                async move {
                    let http = Rc::new(http.await?);
                    Ok::<_, ()>(fn_service(move |io: TcpStream| {
                        let (http, state) = (http.clone(), stream_state.clone());
                        async move {
                            // One deadline for everything before the socket is a session or
                            // answered: the peek below, then the request's head and handling.
                            let deadline = tokio::time::Instant::now() + handshake_timeout;
                            let Some(_pending) = crate::http::admit_pending(&io, &state) else {
                                return Ok(());
                            };
                            let mut io = io;
                            let Ok(proxied) =
                                crate::http::proxy_header(&mut io, &state, deadline).await
                            else {
                                return Ok(());
                            };
                            if sse::is_stream_request(&io, deadline).await {
                                sse::serve(io, state, deadline, proxied).await;
                                Ok(())
                            } else {
                                // `call` takes the client in `on_connect` before it first awaits.
                                crate::proxied::hand_over(proxied);
                                tokio::time::timeout_at(deadline, http.call(io))
                                    .await
                                    .unwrap_or(Ok(()))
                            }
                        }
                    }))
                }
            })
        })?
        .run();
    let mut handles = vec![server.handle()];
    let ops_server = match listeners.ops {
        Some(l) => {
            let s =
                HttpServer::new(move || App::new().app_data(state.clone()).configure(ops_routes))
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .listen(l)?
                    .run();
            handles.push(s.handle());
            Some(s)
        }
        None => None,
    };
    actix_web::rt::spawn(async move {
        shutdown.cancelled().await;
        tracing::info!("shutting down: closing connections with 1001");
        sessions
            .alerts
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        // Sessions are their own tasks on the workers, not actix's connections: each closes with
        // 1001 within its close grace; the workers (and any session still closing) stop after
        // that, or after SHUTDOWN_GRACE_SECS.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(SHUTDOWN_GRACE_SECS);
        while sessions
            .connections
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for handle in handles {
            handle.stop(true).await;
        }
    });
    match ops_server {
        Some(ops) => futures_util::try_join!(server, ops).map(|_| ()),
        None => server.await,
    }
}

/// The index the config asks for: its feeds' counters, the catch-up window (the batching window +
/// `CATCH_UP_MARGIN`), the delayed tier's history, and, on a scale-out ingest, the change log its
/// publisher reads.
fn build_index(
    config: &Config,
    feeds: &[String],
    metrics: Arc<Metrics>,
) -> (Index, Option<Arc<ChangeLog>>) {
    let metrics_for_market = metrics.clone();
    let mut index = Index::new(feeds, metrics);
    index.keep_catch_up_for(
        Duration::from_millis(config.limits.min_frame_interval_ms) + CATCH_UP_MARGIN,
    );
    if let Some(delayed) = &config.tiers.delayed {
        index.keep_history(HistoryConfig {
            keep_ms: delayed.delay_ms as i64,
            granularity_ms: delayed.granularity_ms as i64,
        });
    }
    // The throttled tier's sample (two more states a symbol that ticks), where a credential can
    // be throttled: by default, by an API key's tier, or by a JWT's tier claim.
    let access = &config.access;
    let throttled = config.tiers.default == Tier::Throttled
        || access.auth == AuthMode::Jwt
        || (access.auth == AuthMode::ApiKey
            && access
                .api_keys
                .iter()
                .any(|k| k.tier() == Some(Tier::Throttled)));
    if throttled {
        index.sample_every(config.tiers.throttled.interval_ms as i64);
    }
    // Validated with the config: the intervals parse.
    let intervals = config.bars.parsed().unwrap_or_default();
    let wall_clock = config.feeds.iter().map(FeedConfig::wall_clock).collect();
    index.trade_market(
        &config.trades,
        &intervals,
        &config.bars,
        wall_clock,
        &metrics_for_market,
    );
    let changes = config.publish.as_ref().map(|_| {
        let changes = Arc::new(ChangeLog::default());
        index.publish_changes(changes.clone());
        changes
    });
    (index, changes)
}
