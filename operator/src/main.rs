//! `loka-operator`: `crd` prints the CRDs; `run` runs the controllers. Wiring only: the logic
//! is in the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::runtime::events::Reporter;
use loka_operator::controller::{self, Context, build::BuildOptions};
use loka_operator::http::{HttpState, router};
use loka_operator::lease::{LeaderElector, LeaseConfig};
use loka_operator::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "loka-operator",
    version,
    about = "Kubernetes operator for Loka Stratum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML) to stdout.
    Crd,
    /// Run the controllers.
    Run(RunArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ServiceMonitorMode {
    /// Create ServiceMonitors when the monitoring.coreos.com/v1 API exists (checked at start).
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "LOKA_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Proxy image for StratumProxies that set none.
    #[arg(
        long,
        env = "LOKA_PROXY_IMAGE",
        default_value = concat!("ghcr.io/loka-stratum/loka-proxy:", env!("CARGO_PKG_VERSION"))
    )]
    proxy_image: String,
    /// Elect a leader through a Lease (needed when running more than one replica).
    #[arg(long, env = "LOKA_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "LOKA_LEASE_NAME", default_value = "loka-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity of this replica in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    #[arg(long, value_enum, env = "LOKA_SERVICE_MONITOR", default_value = "auto")]
    service_monitor: ServiceMonitorMode,
    #[arg(long, value_enum, env = "LOKA_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", loka_operator::crd::crds_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// Cancel `token` on SIGTERM or Ctrl-C.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

async fn service_monitor_api(client: &Client) -> bool {
    match client
        .list_api_group_resources("monitoring.coreos.com/v1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
        Err(e) => {
            tracing::info!(error = %e, "no ServiceMonitor API; ServiceMonitors are not created");
            false
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    let http_stop = CancellationToken::new();
    let http = tokio::spawn({
        let app = router(HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        });
        let stop = http_stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }
    });

    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("loka-operator-{}", std::process::id()));
    let service_monitor_api = match args.service_monitor {
        ServiceMonitorMode::Always => true,
        ServiceMonitorMode::Never => false,
        ServiceMonitorMode::Auto => service_monitor_api(&client).await,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        BuildOptions {
            default_image: args.proxy_image.clone(),
            service_monitor_api,
        },
        metrics.clone(),
        Reporter {
            controller: "loka-operator".into(),
            instance: Some(identity.clone()),
        },
    ));
    ready.store(true, Ordering::Relaxed);

    // Controllers stop on shutdown, or when leadership is lost.
    let stop = shutdown.child_token();
    let stop_renewing = CancellationToken::new();
    let mut holder = None;
    if args.leader_elect {
        let elector = Arc::new(LeaderElector::new(
            client.clone(),
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args.lease_namespace.clone(),
                identity: identity.clone(),
                duration: Duration::from_secs(args.lease_duration_seconds),
                renew_every: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
            },
        ));
        tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
        if !elector.acquire(&shutdown).await {
            http_stop.cancel();
            let _ = http.await;
            return Ok(());
        }
        tracing::info!(%identity, "leading");
        metrics.set_leader(true);
        let (renew_stop, lost) = (stop_renewing.clone(), stop.clone());
        holder = Some(tokio::spawn(async move {
            elector.hold(&renew_stop, &lost).await;
        }));
    } else {
        metrics.set_leader(true);
    }

    controller::run(ctx, args.namespace.clone(), stop.clone()).await;
    let lost = stop.is_cancelled() && !shutdown.is_cancelled();
    metrics.set_leader(false);
    stop_renewing.cancel();
    if let Some(h) = holder {
        let _ = h.await;
    }
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    if lost {
        anyhow::bail!("lost leadership; exiting so the pod restarts as a candidate");
    }
    tracing::info!("stopped");
    Ok(())
}
