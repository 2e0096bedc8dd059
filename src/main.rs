//! The `quotegw` binary: flags, config, logging, then run the gateway until SIGINT or SIGTERM;
//! SIGHUP reloads what can change live (`RunningGateway::reload`).

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use quotegw::{Config, Gateway, StartError};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Real-time stock-quote streaming gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); without it the embedded default (config/quotegw.toml) runs.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config's `listen`.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check the config as a start would (feeds' settings and files, key files, JWT keys, NATS
    /// URLs, addresses, the open-file limit) without listening or connecting; print what it would
    /// run. Exits 0, or 1 with the error a start would give.
    CheckConfig,
    /// Write what the configured feeds produce to a recorded-feed file (gzip when it ends in .gz).
    Record {
        /// The file to write (.ndjson or .ndjson.gz).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// Stop after this many seconds (default: at Ctrl-C, or when every feed has ended).
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Record only these symbols.
        #[arg(long, value_name = "A,B", value_delimiter = ',')]
        symbols: Vec<String>,
        /// Generate a simulated feed without waiting for the clock (timestamps advance at its rate).
        #[arg(long)]
        virtual_time: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // Registered first, before flags, logging or config, so that from the process's first
    // moments SIGHUP (a closing terminal, a logrotate script, an operator's habit) never takes its
    // default action, which ends the process at once: every client's connection reset, no 1001.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal-handling runtime")?;
    let mut signals = {
        let _in_runtime = runtime.enter();
        Signals::new()?
    };

    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // actix-http logs every malformed request at ERROR, without a peer or a rate limit: a
            // client could flood the log. Refusals the gateway makes are logged, rate-limited,
            // by `security_log`.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,actix_http::h1::dispatcher=off".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log file or journal gets plain text to grep.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default_config(),
    };
    if let Some(listen) = cli.listen.clone() {
        config.listen = listen;
        config
            .validate()
            .map_err(|(key, message)| anyhow::anyhow!("--listen: {key}: {message}"))?;
    }

    match cli.command {
        Some(Command::Record {
            to,
            duration,
            symbols,
            virtual_time,
        }) => return record(&config, &to, duration, symbols, virtual_time, signals),
        Some(Command::CheckConfig) => {
            let shown = cli.config.as_ref().map_or_else(
                || "the embedded default config".to_string(),
                |p| p.display().to_string(),
            );
            let plan = Gateway::new(config).check().map_err(in_file(&cli.config))?;
            println!("quotegw: {shown} is valid; it would run:");
            for line in plan.lines {
                println!("  {line}");
            }
            return Ok(());
        }
        None => {}
    }

    let gateway = Gateway::new(config).start().map_err(in_file(&cli.config))?;
    match gateway.metrics_addr() {
        Some(ops) => tracing::info!(
            "quotegw listening on http://{} (WebSocket at /ws); metrics at http://{ops}/metrics",
            gateway.local_addr()
        ),
        None => tracing::info!(
            "quotegw listening on http://{} (WebSocket at /ws, metrics at /metrics)",
            gateway.local_addr()
        ),
    }

    runtime.block_on(async {
        loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    Received::Stop => {
                        tracing::info!("signal received, shutting down");
                        break;
                    }
                    Received::Hangup => {
                        // Off the signal loop: a config file that blocks on read must not hold
                        // SIGTERM. Reloads run one at a time.
                        let (reloader, path, listen) =
                            (gateway.reloader(), cli.config.clone(), cli.listen.clone());
                        tokio::task::spawn_blocking(move || {
                            reload(&reloader, path.as_deref(), listen.as_deref())
                        });
                    }
                },
                // A failure after the listener was bound (a feed or NATS refusing at start) ends
                // the process at once, with its error, rather than at the next signal.
                _ = gateway.stopped() => break,
            }
        }
    });
    gateway
        .shutdown()
        .context("the server stopped with an error")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: the config file read again and what can change live applied; a config that does not
/// load is logged and the one in force kept.
fn reload(gateway: &quotegw::app::Reloader, path: Option<&std::path::Path>, listen: Option<&str>) {
    let Some(path) = path else {
        tracing::warn!(
            "SIGHUP: no --config file to reload (the embedded default runs): nothing changed"
        );
        return;
    };
    let config = match Config::load(path) {
        // `--listen` holds over the file, as at start.
        Ok(c) => Config {
            listen: listen.map_or(c.listen, str::to_string),
            ..c
        },
        Err(e) => {
            tracing::error!("SIGHUP: {e}; the config in force is kept");
            return;
        }
    };
    match gateway.reload(&config) {
        Ok(restart) => {
            tracing::info!(
                "SIGHUP: reloaded {}: [access] and the per-client [limits] apply now; connections they no longer admit are closed with 1008",
                path.display()
            );
            if !restart.is_empty() {
                tracing::warn!(
                    "SIGHUP: {} changed but apply only after a restart",
                    restart.join(", ")
                );
            }
        }
        Err(e) => tracing::error!(
            "SIGHUP: {}: {e}; the config in force is kept",
            path.display()
        ),
    }
}

/// A start error, with the config file named when the error is about `[access]` (its key alone,
/// `access.api_keys`, would not say which file; the other errors name their feed or address).
fn in_file(path: &Option<PathBuf>) -> impl FnOnce(StartError) -> anyhow::Error + '_ {
    move |e| match (&e, path) {
        (StartError::Access(_), Some(path)) => anyhow::anyhow!("{}: {e}", path.display()),
        _ => e.into(),
    }
}

/// What a signal asks of the gateway.
enum Received {
    Stop,
    Hangup,
}

/// The signals the gateway answers: SIGINT and SIGTERM stop it gracefully; SIGHUP reloads.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers (inside a runtime).
    fn new() -> anyhow::Result<Signals> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot listen for {name}"))
        };
        Ok(Signals {
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next signal. Any runtime may wait here, not only the one that installed the
    /// handlers: they are the process's (tokio's signal registry is global and never uninstalls
    /// one).
    async fn next(&mut self) -> Received {
        tokio::select! {
            _ = self.int.recv() => Received::Stop,
            _ = self.term.recv() => Received::Stop,
            _ = self.hup.recv() => Received::Hangup,
        }
    }
}

fn record(
    config: &Config,
    to: &std::path::Path,
    duration: Option<f64>,
    symbols: Vec<String>,
    virtual_time: bool,
    mut signals: Signals,
) -> anyhow::Result<()> {
    let duration = duration
        .map(|s| {
            std::time::Duration::try_from_secs_f64(s)
                .map_err(|_| anyhow::anyhow!("--duration must be a number of seconds ≥ 0"))
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let recorded = runtime.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        // SIGINT, SIGTERM and SIGHUP (the terminal closing) all end the recording cleanly: the
        // file is flushed and, gzipped, finished.
        tokio::spawn(async move {
            // SIGHUP too: the terminal closing.
            signals.next().await;
            on_signal.cancel();
        });
        let options = quotegw::record::RecordOptions {
            to,
            duration,
            symbols: symbols.iter().map(|s| s.to_uppercase()).collect(),
            virtual_time,
        };
        quotegw::record::record(config, options, stop).await
    })?;
    tracing::info!(
        ticks = recorded.ticks,
        rejected = recorded.rejected,
        restamped = recorded.restamped,
        "recorded to {}",
        to.display()
    );
    Ok(())
}
