//! Start and stop a whole proxy in-process: the binary, the demo and the tests all use this.

use crate::context::Shared;
use crate::events::EventSink;
use crate::listener::{serve, serve_tls, watch_certificate};
use crate::stats::Stats;
use crate::tls::CertificateFiles;
use crate::upstream::UpstreamSettings;
use crate::upstream::conn::PoolEndpoint;
use anyhow::Context;
use loka_config::Config;
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
    /// The TLS port's address, when `server.tls` is set.
    pub tls_addr: Option<SocketAddr>,
    /// The HTTP API's address, when `api.enabled`.
    pub api_addr: Option<SocketAddr>,
    pub api: Option<Arc<crate::api::ApiState>>,
    pub shared: Arc<Shared>,
    tracker: TaskTracker,
    accept: JoinHandle<()>,
    tls_accept: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
}

/// What a drain achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub sessions_left: usize,
    pub elapsed: Duration,
}

/// Validate, bind and start serving. `events`: where share/connection events go (`None`:
/// they are only counted).
pub async fn start(
    cfg: Config,
    pools: Vec<PoolEndpoint>,
    events: Option<EventSink>,
) -> anyhow::Result<ProxyHandle> {
    cfg.validate()?;
    let addr = format!("{}:{}", cfg.server.bind_address, cfg.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("bind Stratum listener on {addr}"))?;
    let stratum_addr = listener.local_addr()?;
    // The certificate is loaded before anything starts: a bad pair stops the proxy here,
    // naming the file.
    let tls = match &cfg.server.tls {
        None => None,
        Some(t) => {
            let certs = Arc::new(
                CertificateFiles::load(t.cert_file.as_ref(), t.key_file.as_ref())
                    .context("server.tls")?,
            );
            let config = crate::tls::server_config(certs.clone()).context("server.tls")?;
            let addr = format!("{}:{}", cfg.server.bind_address, t.port);
            let listener = TcpListener::bind(&addr)
                .await
                .with_context(|| format!("bind Stratum TLS listener on {addr}"))?;
            Some((listener, config, certs, t.clone()))
        }
    };
    let shutdown = CancellationToken::new();
    let settings = UpstreamSettings::from_config(&cfg, pools);
    let (sink, enabled) = match events {
        Some(sink) => (sink, true),
        None => (EventSink::disabled(), false),
    };
    let shared = Shared::new(
        Arc::new(cfg),
        Arc::new(Stats::default()),
        sink,
        enabled,
        settings,
        shutdown.clone(),
    )?;
    let tracker = shared.tracker.clone();
    let (api, api_addr) = if shared.config().api.enabled {
        let cfg = shared.config();
        let addr = format!("{}:{}", cfg.api.bind_address, cfg.api.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("bind HTTP API on {addr}"))?;
        let api_addr = listener.local_addr()?;
        let state = crate::api::state(shared.clone(), shutdown.clone())?;
        tokio::spawn(crate::api::serve(listener, state.clone(), shutdown.clone()));
        tracing::info!(%api_addr, "HTTP API up");
        (Some(state), Some(api_addr))
    } else {
        (None, None)
    };
    let accept = tokio::spawn(serve(listener, shared.clone()));
    tracing::info!(%stratum_addr, mode = %shared.mode, "Stratum listener up");
    let (tls_addr, tls_accept) = match tls {
        None => (None, None),
        Some((listener, config, certs, t)) => {
            let tls_addr = listener.local_addr()?;
            tokio::spawn(watch_certificate(certs, t.reload_interval, shared.clone()));
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let accept = tokio::spawn(serve_tls(
                listener,
                acceptor,
                t.handshake_timeout,
                shared.clone(),
            ));
            tracing::info!(%tls_addr, "Stratum TLS listener up");
            (Some(tls_addr), Some(accept))
        }
    };
    Ok(ProxyHandle {
        stratum_addr,
        tls_addr,
        tls_accept,
        api_addr,
        api,
        shared,
        tracker,
        accept,
        shutdown,
    })
}

impl ProxyHandle {
    /// Let the API report on share storage (`/health/database`, readiness, queue depth).
    pub fn set_store_probe(&self, probe: Arc<dyn crate::api::StoreProbe>) {
        if let Some(api) = &self.api {
            let _ = api.store.set(probe);
        }
    }

    /// Enable `POST /config/reload` from this file (with the same command-line overrides).
    pub fn set_reload_source(&self, source: crate::api::ReloadSource) {
        if let Some(api) = &self.api {
            let _ = api.reload.set(source);
        }
    }

    /// Stop accepting, tell miners to reconnect, and wait for sessions to end (up to
    /// `deadline`); then stop the upstream side.
    pub async fn drain(self, deadline: Duration) -> DrainReport {
        let started = Instant::now();
        self.shared.drain.cancel();
        let _ = self.accept.await;
        if let Some(tls) = self.tls_accept {
            let _ = tls.await;
        }
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

/// Open the share store and start its writer; returns the handle (status, health, shutdown)
/// and the sender to give [`start`]. The database may be down: the writer then spools until
/// it is reachable (migrations are retried before the first write).
pub async fn start_storage(
    cfg: &Config,
) -> anyhow::Result<(Arc<loka_store::StoreHandle>, EventSink)> {
    use loka_store::{PoolInfo, Store, WriteHold, WriterOptions, spawn_writer};
    let s = &cfg.storage;
    let store = Store::connect_lazy(s).context("storage.database_url")?;
    let pools: Vec<PoolInfo> = cfg.pools.iter().map(PoolInfo::from).collect();
    // Migrate and record the pools now if the database answers; otherwise the writer does it.
    let prepare = async {
        if s.run_migrations {
            store.migrate().await?;
        }
        store.upsert_pools(&pools).await
    };
    // Bounded: a dead database must not hold up mining (the writer retries in the background).
    let ready = match tokio::time::timeout(Duration::from_secs(3), prepare).await {
        Ok(Ok(())) => {
            let m = store.migration_status().await.ok();
            tracing::info!(backend = ?store.backend(), migrations = ?m, "share store ready");
            true
        }
        Ok(Err(e)) if !e.is_transient() => {
            return Err(anyhow::Error::new(e).context("preparing the share store"));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "share store unreachable at start; spooling until it is back");
            false
        }
        Err(_) => {
            tracing::warn!("share store slow at start; spooling until it answers");
            false
        }
    };
    let (tx, rx) = mpsc::channel(s.queue_capacity);
    let hold = WriteHold::default();
    let handle = spawn_writer(
        store,
        rx,
        WriterOptions {
            dedicated_thread: true,
            database_ready: ready,
            hold: hold.clone(),
            ..WriterOptions::from_config(s, &pools)
        },
        s.queue_capacity,
    )
    .with_context(|| format!("opening the spool in {}", s.spool_path().display()))?;
    Ok((Arc::new(handle), EventSink::from_sender(tx).with_hold(hold)))
}

/// `loka-proxy earnings …`: record and distribute earnings; prints JSON.
pub async fn earnings(
    cfg: &Config,
    cmd: crate::settings::EarningsCommand,
) -> anyhow::Result<String> {
    use crate::settings::EarningsCommand as C;
    use loka_store::accounting::{EarningStatus, Method, NewEarning};
    use loka_store::{PoolInfo, Store};
    let store = Store::open(&cfg.storage)
        .await
        .context("opening the share store")?;
    let pools: Vec<PoolInfo> = cfg.pools.iter().map(PoolInfo::from).collect();
    store.upsert_pools(&pools).await?;
    let parse_time = |s: &Option<String>| -> anyhow::Result<_> {
        s.as_deref()
            .map(|t| {
                loka_store::chrono::DateTime::parse_from_rfc3339(t)
                    .map(|d| d.to_utc())
                    .with_context(|| format!("{t:?} is not an RFC 3339 time"))
            })
            .transpose()
    };
    let method = |name: &str,
                  window: Option<rust_decimal::Decimal>,
                  since: Option<_>|
     -> anyhow::Result<Method> {
        match name {
            "proportional" => Ok(Method::Proportional { since }),
            "pplns" => Ok(Method::Pplns {
                window: window.context("--window (total difficulty) is required with pplns")?,
            }),
            o => anyhow::bail!("{o:?} is not a method (proportional, pplns)"),
        }
    };
    let out = match cmd {
        C::Add {
            pool,
            amount,
            fee,
            tx,
            block_hash,
            block_height,
            status,
            earned_at,
            distribute,
            window,
        } => {
            let e = NewEarning {
                pool,
                amount_btc: amount,
                fee_btc: fee,
                transaction_hash: tx,
                block_hash,
                block_height,
                status: status
                    .parse::<EarningStatus>()
                    .map_err(anyhow::Error::msg)?,
                earned_at: parse_time(&earned_at)?,
            };
            let id = store.add_earning(&e).await?;
            match distribute {
                Some(m) => {
                    let d = store.distribute(id, &method(&m, window, None)?).await?;
                    serde_json::to_string_pretty(&d)?
                }
                None => serde_json::to_string_pretty(&store.earning(id).await?)?,
            }
        }
        C::Distribute {
            earning,
            method: m,
            window,
            since,
            dry_run,
        } => {
            let id: loka_store::uuid::Uuid = earning
                .parse()
                .with_context(|| format!("{earning:?} is not an earning id"))?;
            let how = method(&m, window, parse_time(&since)?)?;
            let d = if dry_run {
                store.preview_distribution(id, &how).await?
            } else {
                store.distribute(id, &how).await?
            };
            serde_json::to_string_pretty(&d)?
        }
        C::List { limit } => serde_json::to_string_pretty(&store.earnings(limit).await?)?,
        C::Summary => serde_json::to_string_pretty(&store.miner_earnings_summary().await?)?,
    };
    store.close().await;
    Ok(out)
}
