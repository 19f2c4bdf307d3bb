//! The HTTP API on :9090 (axum): health and probes, config and
//! reload, stats, Prometheus/JSON metrics, WebSocket/SSE streams, admin with JWT, rate
//! limits, and Stratum over WebSocket. Handlers read atomics and snapshots only; nothing
//! here holds a lock the share path waits on.

pub mod auth;
mod config;
pub mod error;
mod health;
pub mod metrics;
pub mod ratelimit;
pub mod sampler;
mod stats;
mod store;
pub mod ws;

pub use store::StoreProbe;

use crate::clock::unix_ms_rfc3339;
use crate::context::Shared;
use crate::settings::Overrides;
use crate::upstream::Control;
use auth::{Auth, Role};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use loka_config::Mode;
use sampler::Sampler;
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
/// Where `POST /config/reload` reads from.
#[derive(Clone)]
pub struct ReloadSource {
    pub path: PathBuf,
    pub overrides: Overrides,
}

pub struct ApiState {
    pub shared: Arc<Shared>,
    pub started_at: SystemTime,
    pub auth: Auth,
    pub limits: ratelimit::Limits,
    pub sampler: Arc<Sampler>,
    pub store: OnceLock<Arc<dyn StoreProbe>>,
    pub reload: OnceLock<ReloadSource>,
    pub system: parking_lot::Mutex<sysinfo::System>,
    pub draining: CancellationToken,
}

/// A secret the admin API needs is missing or too short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{field}: {var} is not set")]
    NotSet { field: &'static str, var: String },
    #[error("admin.jwt_secret_env: {0} must hold at least 32 bytes")]
    TooShort(String),
}

/// Build the state: the JWT secret comes from `admin.jwt_secret_env` (≥ 32 bytes) or is
/// random per process.
pub fn state(shared: Arc<Shared>, stop: CancellationToken) -> Result<Arc<ApiState>, SecretError> {
    let cfg = shared.config();
    let secret = match &cfg.admin.jwt_secret_env {
        Some(var) => {
            let s = std::env::var(var).map_err(|_| SecretError::NotSet {
                field: "admin.jwt_secret_env",
                var: var.clone(),
            })?;
            if s.len() < 32 {
                return Err(SecretError::TooShort(var.clone()));
            }
            s.into_bytes()
        }
        None => (0..32).map(|_| rand::random::<u8>()).collect(),
    };
    let hash = match &cfg.admin.password_hash_env {
        Some(var) => Some(std::env::var(var).map_err(|_| SecretError::NotSet {
            field: "admin.password_hash_env",
            var: var.clone(),
        })?),
        None => Some(cfg.admin.password_hash.clone()),
    };
    let auth = Auth::new(
        cfg.admin.username.clone(),
        hash,
        &secret,
        cfg.admin.token_ttl,
    );
    let sampler = Sampler::spawn(shared.clone(), stop);
    Ok(Arc::new(ApiState {
        limits: ratelimit::Limits::new(&cfg.rate_limiting),
        draining: shared.drain.clone(),
        shared,
        started_at: SystemTime::now(),
        auth,
        sampler,
        store: OnceLock::new(),
        reload: OnceLock::new(),
        system: parking_lot::Mutex::new(sysinfo::System::new()),
    }))
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/live", get(health::live))
        .route("/health/database", get(health::health_database))
        .route("/health/pool", get(health::health_pool))
        .route("/health/system", get(health::health_system))
        .route("/config", get(config::config))
        .route("/config/reload", post(config::config_reload))
        .route("/stats", get(stats::stats))
        .route("/stats/workers", get(stats::stats_workers))
        .route(
            "/stats/workers/{worker}/history",
            get(stats::worker_history),
        )
        .route("/admin/stats", get(stats::admin_stats))
        .route("/auth/token", post(token))
        .route("/metrics/prometheus", get(metrics::prometheus))
        .route("/metrics/json", get(metrics::json))
        .route("/metrics/stream", get(ws::metrics_stream))
        .route("/metrics/events", get(ws::metrics_events))
        .route("/events/connections", get(ws::connection_events))
        .route("/admin/console", get(ws::admin_console))
        .route("/stratum", get(ws::stratum))
        .fallback(|| async { ApiError::not_found("No such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit,
        ))
        .with_state(state)
}

/// Serve until `stop`.
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, stop: CancellationToken) {
    let prune = state.clone();
    let prune_stop = stop.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! { _ = t.tick() => prune.limits.prune(), _ = prune_stop.cancelled() => break }
        }
    });
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

async fn rate_limit(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match st.limits.check(peer.ip(), req.uri().path()) {
        ratelimit::Decision::Refuse(resp) => resp,
        ratelimit::Decision::Allow(headers) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().extend(headers);
            resp
        }
    }
}

/// The upstream task has ended (the proxy is stopping): pools cannot be changed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the upstream task is not running")]
pub struct UpstreamGone;

impl ApiState {
    /// New pools (a reload, the admin console): to the aggregate upstream, which reconnects,
    /// and to passthrough sessions started from now on. The one place pools change.
    pub async fn set_pools(
        &self,
        pools: Vec<crate::upstream::conn::PoolEndpoint>,
    ) -> Result<(), UpstreamGone> {
        if let Some(u) = &self.shared.upstream {
            u.control
                .send(Control::SetPools(pools.clone()))
                .await
                .map_err(|_| UpstreamGone)?;
        }
        self.shared.set_upstream_pools(pools);
        Ok(())
    }

    fn pool_connected(&self) -> bool {
        match &self.shared.upstream {
            Some(u) => u.status.connected.load(Relaxed),
            // Passthrough: each miner has its own upstream; the proxy itself is fine.
            None => true,
        }
    }

    /// (status for `/health`, usable). A database that is down while the spool takes the
    /// shares is `degraded` but still usable: nothing is lost.
    fn store_state(&self) -> (&'static str, bool) {
        match self.store.get() {
            None => ("disabled", true),
            Some(s) if s.database_up() => ("healthy", true),
            Some(s) if s.ready() => ("degraded", true),
            Some(_) => ("unhealthy", false),
        }
    }

    fn pools_json(&self) -> Vec<Value> {
        let pools = self.shared.pools();
        let errors = self.shared.pool_errors();
        let (detail, jobs, sent, last_job, connected) = match &self.shared.upstream {
            Some(u) => (
                Some(u.status.detail.lock().clone()),
                u.status.jobs_received.load(Relaxed),
                u.status.submits_sent.load(Relaxed),
                u.status.last_job_unix_ms.load(Relaxed),
                u.status.connected.load(Relaxed),
            ),
            None => (None, 0, 0, 0, false),
        };
        pools
            .iter()
            .map(|p| {
                let active = connected && detail.as_ref().and_then(|d| d.active_pool.as_deref()) == Some(&*p.name);
                let latency = detail.as_ref().and_then(|d| d.latency).map(|l| l.as_secs_f64() * 1000.0);
                let failed = errors.get(&p.name);
                json!({
                    "name": &*p.name,
                    "host": format!("{}:{}", p.host, p.port),
                    "status": if active { "connected" } else if self.shared.mode == Mode::Passthrough { "per_miner" } else { "standby" },
                    "connected": active,
                    "latency_ms": if active { latency } else { None },
                    "last_job": if active { unix_ms_rfc3339(last_job) } else { None },
                    "last_message": if active { unix_ms_rfc3339(last_job) } else { None },
                    "jobs_received": if active { jobs } else { 0 },
                    "shares_submitted": if active { sent } else { 0 },
                    "tls": p.tls.is_some(),
                    "last_error_at": failed.as_ref().and_then(|(_, at)| unix_ms_rfc3339(*at)),
                    "last_error": failed.map(|(e, _)| e),
                })
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<Role>,
}

async fn token(
    State(st): State<Arc<ApiState>>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError::bad_request(
            "VALIDATION_BAD_BODY",
            format!("Expected {{\"username\",\"password\"}}: {e}"),
        )
    })?;
    let (token, exp) = st.auth.issue(
        &req.username,
        &req.password,
        req.role.unwrap_or(Role::Admin),
    )?;
    Ok(Json(
        json!({"token": token, "expires_at": unix_ms_rfc3339(exp * 1000)}),
    ))
}
