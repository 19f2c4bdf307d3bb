//! `loka-proxy`: wiring only; the logic lives in the library.

use anyhow::Context;
use clap::Parser;
use loka_config::Config;
use loka_proxy::settings::{self, Cli, Command};
use std::process::ExitCode;

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

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _heap = dhat::Profiler::builder()
        .file_name(std::env::var_os("LOKA_DHAT_FILE").unwrap_or_else(|| "dhat-heap.json".into()))
        .build();
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
        Some(Command::HashPassword) => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err()
                || line.trim_end_matches(['\r', '\n']).is_empty()
            {
                eprintln!("hash-password: give the password on standard input");
                return ExitCode::from(64);
            }
            println!(
                "{}",
                loka_proxy::api::auth::hash_password(line.trim_end_matches(['\r', '\n']))
            );
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig) => match load(&cli) {
            Ok(cfg) => {
                print!("{}", settings::sanitized(&cfg).to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Earnings { ref action }) => {
            let cfg = match load(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime.block_on(async {
                match loka_proxy::runtime::earnings(&cfg, action.clone()).await {
                    Ok(out) => {
                        println!("{out}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("earnings: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Some(Command::Run) | None => {
            let cfg = match load(&cli) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let reload = cli
                .overrides
                .config
                .clone()
                .map(|path| loka_proxy::api::ReloadSource {
                    path,
                    overrides: cli.overrides.clone(),
                });
            runtime.block_on(async {
                // The OTLP exporter (if any) starts inside the runtime.
                let _telemetry = match loka_proxy::telemetry::init(&cfg) {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("telemetry: {e:#}");
                        return ExitCode::from(64);
                    }
                };
                match run(cfg, reload).await {
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

async fn run(cfg: Config, reload: Option<loka_proxy::api::ReloadSource>) -> anyhow::Result<()> {
    // Before anything listens: a SIGTERM that arrives while starting still drains.
    let stop = shutdown_signal()?;
    let pools = loka_proxy::upstream::resolve_pools(&cfg, |var| std::env::var(var).ok())?;
    let drain_timeout = cfg.server.drain_timeout;
    let storage = if cfg.storage.enabled {
        Some(loka_proxy::runtime::start_storage(&cfg).await?)
    } else {
        None
    };
    let events = storage.as_ref().map(|(_, sink)| sink.clone());
    let proxy = loka_proxy::runtime::start(cfg, pools, events)
        .await
        .context("starting the proxy")?;
    if let Some((store, _)) = &storage {
        proxy.set_store_probe(store.clone());
    }
    if let Some(source) = reload {
        proxy.set_reload_source(source);
    }
    stop.await;
    tracing::info!(?drain_timeout, "SIGTERM: draining");
    let report = proxy.drain(drain_timeout).await;
    tracing::info!(sessions_left = report.sessions_left, elapsed = ?report.elapsed, "drained");
    if let Some((store, tx)) = storage {
        drop(tx);
        // What is left of the drain deadline (at least a second) to flush the shares.
        let left = drain_timeout
            .saturating_sub(report.elapsed)
            .max(std::time::Duration::from_secs(1));
        let r = store.shutdown(left).await;
        tracing::info!(
            written = r.written,
            spool_bytes = r.spool_bytes,
            lost = r.records_lost,
            "share store stopped"
        );
    }
    Ok(())
}

/// Registers the SIGTERM handler now; the future completes on SIGTERM or Ctrl-C.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Ok(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}
