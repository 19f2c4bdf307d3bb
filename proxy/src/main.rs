//! `loka-proxy`: wiring only; the logic lives in the library.

use anyhow::Context;
use clap::Parser;
use loka_config::{Config, LogFormat};
use loka_proxy::settings::{self, Cli, Command};
use std::process::ExitCode;

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.logging.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match cfg.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    let text = match &cli.overrides.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("cannot read configuration file {}: {e}", path.display());
                return Err(ExitCode::from(64));
            }
        },
        None => None,
    };
    settings::build(text.as_deref(), &cli.overrides).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(64)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Some(Command::Demo { miners, seconds }) => runtime.block_on(async {
            match loka_proxy::demo::run(&cli.overrides, miners, seconds).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
        Some(Command::CheckConfig) => match load(&cli) {
            Ok(cfg) => {
                print!("{}", settings::sanitized(&cfg).to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Run) | None => {
            let cfg = match load(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            runtime.block_on(async {
                match run(cfg).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let pools = loka_proxy::proxy::resolve_pools(&cfg, |var| std::env::var(var).ok())
        .map_err(anyhow::Error::msg)?;
    let drain_timeout = cfg.server.drain_timeout;
    let proxy = loka_proxy::proxy::start(cfg, pools, None)
        .await
        .context("starting the proxy")?;
    shutdown_signal().await;
    tracing::info!(?drain_timeout, "SIGTERM: draining");
    let report = proxy.drain(drain_timeout).await;
    tracing::info!(sessions_left = report.sessions_left, elapsed = ?report.elapsed, "drained");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
