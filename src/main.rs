//! The `quotegw` binary: flags, config, logging, then run the gateway until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use quotegw::{Config, Gateway};

/// Real-time stock-quote streaming gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); without it the embedded default (config/quotegw.toml) runs.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the config's `listen`.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
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
