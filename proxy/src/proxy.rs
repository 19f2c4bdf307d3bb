//! Start and stop a whole proxy in-process: the binary, the demo and the tests all use this.

use crate::events::{Event, EventSink};
use crate::server::{Shared, serve};
use crate::stats::Stats;
use crate::upstream::UpstreamSettings;
use crate::upstream::conn::PoolEndpoint;
use anyhow::Context;
use loka_config::{Config, Mode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running proxy.
pub struct ProxyHandle {
    pub stratum_addr: SocketAddr,
    pub shared: Arc<Shared>,
    tracker: TaskTracker,
    accept: JoinHandle<()>,
    shutdown: CancellationToken,
}

/// What a drain achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub sessions_left: usize,
    pub elapsed: Duration,
}

/// Pool endpoints with passwords resolved through `lookup` (the environment, in `main`).
pub fn resolve_pools(
    cfg: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<PoolEndpoint>, String> {
    cfg.pools
        .iter()
        .map(|p| {
            let password = match (&p.password, &p.password_env) {
                (Some(pw), _) => pw.clone(),
                (None, Some(var)) => lookup(var).ok_or_else(|| {
                    format!(
                        "pools[{}].password_env: environment variable {var} is not set",
                        p.name
                    )
                })?,
                (None, None) => "x".to_string(),
            };
            Ok(PoolEndpoint {
                name: Arc::from(p.name.as_str()),
                host: p.host.clone(),
                port: p.port,
                username: p.username.clone(),
                password,
            })
        })
        .collect()
}

pub fn upstream_settings(cfg: &Config, pools: Vec<PoolEndpoint>) -> UpstreamSettings {
    UpstreamSettings {
        pools,
        timing: cfg.upstream.clone(),
        fold: cfg.mining.mode == Mode::Aggregate,
        prefix_size: cfg.mining.extranonce_prefix_size,
        min_miner_extranonce2: cfg.mining.min_miner_extranonce2_size,
        max_miner_extranonce2: cfg.mining.max_miner_extranonce2_size,
        version_mask: cfg.version_rolling_mask(),
        max_jobs: cfg.mining.max_jobs,
        forward_worker_names: cfg.mining.forward_worker_names,
    }
}

/// Validate, bind and start serving. `events`: where share/connection events go (`None`:
/// they are only counted).
pub async fn start(
    cfg: Config,
    pools: Vec<PoolEndpoint>,
    events: Option<mpsc::Sender<Event>>,
) -> anyhow::Result<ProxyHandle> {
    cfg.validate()?;
    let addr = format!("{}:{}", cfg.server.bind_address, cfg.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind Stratum listener on {addr}"))?;
    let stratum_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let settings = upstream_settings(&cfg, pools);
    let (sink, enabled) = match events {
        Some(tx) => (EventSink::from_sender(tx), true),
        None => (EventSink::disabled(), false),
    };
    let shared = Shared::new(
        Arc::new(cfg),
        Arc::new(Stats::default()),
        sink,
        enabled,
        settings,
        shutdown.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let tracker = TaskTracker::new();
    let accept = tokio::spawn(serve(listener, shared.clone(), tracker.clone()));
    tracing::info!(%stratum_addr, mode = %shared.mode, "Stratum listener up");
    Ok(ProxyHandle {
        stratum_addr,
        shared,
        tracker,
        accept,
        shutdown,
    })
}

impl ProxyHandle {
    /// Stop accepting, tell miners to reconnect, and wait for sessions to end (up to
    /// `deadline`); then stop the upstream side.
    pub async fn drain(self, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        self.shared.drain.cancel();
        let _ = self.accept.await;
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, self.tracker.wait()).await;
        let left = self.tracker.len();
        self.shutdown.cancel();
        DrainReport {
            sessions_left: left,
            elapsed: started.elapsed(),
        }
    }
}
