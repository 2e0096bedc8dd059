//! The `quotegw` binary: flags, config, logging, then run the gateway until SIGINT or SIGTERM.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use quotegw::{Config, Gateway};

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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log file or journal gets plain text to grep.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default_config(),
    };
    if let Some(listen) = cli.listen {
        config.listen = listen;
        config
            .validate()
            .map_err(|(key, message)| anyhow::anyhow!("--listen: {key}: {message}"))?;
    }

    if let Some(Command::Record {
        to,
        duration,
        symbols,
        virtual_time,
    }) = cli.command
    {
        return record(&config, &to, duration, symbols, virtual_time);
    }

    let gateway = Gateway::new(config).start()?;
    tracing::info!(
        "quotegw listening on http://{} (WebSocket at /ws, metrics at /metrics)",
        gateway.local_addr()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal-handling runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("signal received, shutting down");
    gateway
        .shutdown()
        .context("the server stopped with an error")?;
    tracing::info!("stopped");
    Ok(())
}

fn record(
    config: &Config,
    to: &std::path::Path,
    duration: Option<f64>,
    symbols: Vec<String>,
    virtual_time: bool,
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
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
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
        "recorded to {}",
        to.display()
    );
    Ok(())
}
