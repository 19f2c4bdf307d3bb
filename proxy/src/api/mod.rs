//! The HTTP API on :9090 (axum), as the seed documents it: health and probes, config and
//! reload, stats, Prometheus/JSON metrics, WebSocket/SSE streams, admin with JWT, rate
//! limits, and Stratum over WebSocket. Handlers read atomics and snapshots only; nothing
//! here holds a lock the share path waits on.

pub mod auth;
pub mod error;
pub mod metrics;
pub mod ratelimit;
pub mod sampler;
pub mod ws;

use crate::clock::{now_rfc3339, rfc3339, unix_ms_rfc3339};
use crate::context::Shared;
use crate::settings::Overrides;
use crate::upstream::Control;
use auth::{Auth, Role};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use loka_config::Mode;
use parking_lot::RwLock;
use sampler::{Sampler, format_hashrate};
use serde::Deserialize;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the API needs to know about the share store (implemented for `loka_store::StoreHandle`).
pub trait StoreProbe: Send + Sync + 'static {
    /// Usable: writes succeed, or the spool takes them without loss.
    fn ready(&self) -> bool;
    /// The database itself answers (else shares are going to the spool).
    fn database_up(&self) -> bool;
    /// Body of `/health/database` (the seed's shape).
    fn health(&self) -> futures::future::BoxFuture<'_, Value>;
    /// Events waiting in the writer's queue (not yet in the database or the spool).
    fn queue_depth(&self) -> u64;
    /// Bytes held in the spool.
    fn spool_bytes(&self) -> u64;
    /// Workers with activity within `window`, from the database (at most `limit`).
    fn worker_stats(
        &self,
        window: Duration,
        limit: i64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<loka_store::stats::WorkerStats>, String>>;
    /// One worker's shares over `window` in buckets of `bucket`, from the database.
    fn worker_history(
        &self,
        worker: String,
        window: Duration,
        bucket: Duration,
    ) -> futures::future::BoxFuture<'_, Result<Vec<loka_store::stats::HistoryPoint>, String>>;
}

impl StoreProbe for loka_store::StoreHandle {
    fn worker_stats(
        &self,
        window: Duration,
        limit: i64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<loka_store::stats::WorkerStats>, String>> {
        Box::pin(async move {
            self.store()
                .worker_stats(window, limit, None)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn worker_history(
        &self,
        worker: String,
        window: Duration,
        bucket: Duration,
    ) -> futures::future::BoxFuture<'_, Result<Vec<loka_store::stats::HistoryPoint>, String>> {
        Box::pin(async move {
            self.store()
                .worker_history(&worker, window, bucket)
                .await
                .map_err(|e| e.to_string())
        })
    }
    fn ready(&self) -> bool {
        let s = self.status();
        s.db_up || (s.spool_errors == 0 && s.records_lost == 0)
    }
    fn database_up(&self) -> bool {
        self.status().db_up
    }
    fn health(&self) -> futures::future::BoxFuture<'_, Value> {
        Box::pin(async move {
            serde_json::to_value(loka_store::StoreHandle::health(self).await).unwrap_or(Value::Null)
        })
    }
    fn queue_depth(&self) -> u64 {
        let s = self.status();
        s.queue_depth + s.pending
    }
    fn spool_bytes(&self) -> u64 {
        self.status().spool_bytes
    }
}

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
    /// Pools as last applied (config or admin console), for reload diffs.
    pub pools: RwLock<Vec<crate::upstream::conn::PoolEndpoint>>,
}

/// Accepted over submitted, in percent with two decimals (0 when nothing was submitted).
fn acceptance_rate(accepted: f64, submitted: f64) -> f64 {
    if submitted == 0.0 {
        0.0
    } else {
        (accepted * 10000.0 / submitted).round() / 100.0
    }
}

fn uptime_text(d: Duration) -> String {
    let s = d.as_secs();
    format!(
        "{}d {}h {}m {}s",
        s / 86400,
        (s % 86400) / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

/// Build the state: the JWT secret comes from `admin.jwt_secret_env` (≥ 32 bytes) or is
/// random per process.
pub fn state(
    shared: Arc<Shared>,
    pools: Vec<crate::upstream::conn::PoolEndpoint>,
    stop: CancellationToken,
) -> Result<Arc<ApiState>, String> {
    let cfg = shared.config();
    let secret = match &cfg.admin.jwt_secret_env {
        Some(var) => {
            let s = std::env::var(var)
                .map_err(|_| format!("admin.jwt_secret_env: {var} is not set"))?;
            if s.len() < 32 {
                return Err(format!(
                    "admin.jwt_secret_env: {var} must hold at least 32 bytes"
                ));
            }
            s.into_bytes()
        }
        None => (0..32).map(|_| rand::random::<u8>()).collect(),
    };
    let hash = match &cfg.admin.password_hash_env {
        Some(var) => Some(
            std::env::var(var).map_err(|_| format!("admin.password_hash_env: {var} is not set"))?,
        ),
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
        pools: RwLock::new(pools),
    }))
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/live", get(live))
        .route("/health/database", get(health_database))
        .route("/health/pool", get(health_pool))
        .route("/health/system", get(health_system))
        .route("/config", get(config))
        .route("/config/reload", post(config_reload))
        .route("/stats", get(stats))
        .route("/stats/workers", get(stats_workers))
        .route("/stats/workers/{worker}/history", get(worker_history))
        .route("/admin/stats", get(admin_stats))
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

impl ApiState {
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
        let pools = self.pools.read().clone();
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
                })
            })
            .collect()
    }
}

async fn health(State(st): State<Arc<ApiState>>) -> Response {
    let s = &st.shared.stats;
    let cfg = st.shared.config();
    let rates = st.sampler.latest.read().clone();
    let (db, db_ok) = st.store_state();
    let pool_ok = st.pool_connected();
    let healthy = db_ok && pool_ok;
    let active = s.connections_current.load(Relaxed);
    let max = u64::from(cfg.server.max_connections);
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "uptime": uptime_text(s.started.elapsed()),
        "version": env!("CARGO_PKG_VERSION"),
        "build": option_env!("LOKA_BUILD").unwrap_or("dev"),
        "timestamp": now_rfc3339(),
        "connections": {
            "active": active,
            "total": s.connections_total.load(Relaxed),
            "max": max,
            "utilization": if max == 0 { 0.0 } else { active as f64 / max as f64 },
        },
        "services": {
            "database": db,
            "pool_connection": if pool_ok { "healthy" } else { "unhealthy" },
            "metrics": "healthy",
            "monitoring": "healthy",
        },
        "performance": {
            "memory_usage_bytes": rates.memory_bytes,
            "memory_usage_mb": (rates.memory_bytes as f64 / 1048576.0 * 10.0).round() / 10.0,
            "cpu_usage_percent": (rates.cpu_percent * 10.0).round() / 10.0,
            "threads_active": tokio::runtime::Handle::current().metrics().num_workers(),
            "threads_total": rates.threads,
        },
        "pools": st.pools_json(),
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn ready(State(st): State<Arc<ApiState>>) -> Response {
    let pool_ok = st.pool_connected();
    let (_, db_ok) = st.store_state();
    let draining = st.draining.is_cancelled();
    let ready = pool_ok && db_ok && !draining;
    let body = json!({
        "ready": ready,
        "services": {
            "database": if db_ok { "ready" } else { "not_ready" },
            "pool_connection": if pool_ok { "ready" } else { "not_ready" },
        },
        "draining": draining,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn live() -> Json<Value> {
    Json(json!({"alive": true, "pid": std::process::id(), "timestamp": now_rfc3339()}))
}

async fn health_database(State(st): State<Arc<ApiState>>) -> Response {
    match st.store.get() {
        Some(s) => {
            let body = s.health().await;
            let ok = s.ready();
            (
                (if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }),
                Json(body),
            )
                .into_response()
        }
        None => Json(json!({
            "status": "disabled",
            "connection_pool": {"active": 0, "idle": 0, "max": 0},
            "query_performance": {"avg_response_time_ms": 0.0, "slow_queries": 0},
            "migrations": {"current_version": Value::Null, "pending": 0},
        }))
        .into_response(),
    }
}

async fn health_pool(State(st): State<Arc<ApiState>>) -> Response {
    let ok = st.pool_connected();
    let body =
        json!({"status": if ok { "healthy" } else { "unhealthy" }, "pools": st.pools_json()});
    (
        (if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }),
        Json(body),
    )
        .into_response()
}

async fn health_system(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let st2 = st.clone();
    let body = tokio::task::spawn_blocking(move || system_json(&st2))
        .await
        .unwrap_or(Value::Null);
    Json(body)
}

fn system_json(st: &ApiState) -> Value {
    let mut sys = st.system.lock();
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let load = sysinfo::System::load_average();
    // A container's limit, when there is one, is the memory that counts.
    let (total, available) = match sys.cgroup_limits() {
        Some(c) if c.total_memory > 0 && c.total_memory < sys.total_memory() => {
            (c.total_memory, c.free_memory)
        }
        _ => (sys.total_memory(), sys.available_memory()),
    };
    let used = total.saturating_sub(available);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let disks = sysinfo::Disks::new_with_refreshed_list();
    let disk = disks
        .list()
        .iter()
        .filter(|d| cwd.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len());
    let (disk_total, disk_free) = disk.map_or((0, 0), |d| (d.total_space(), d.available_space()));
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut interfaces: Vec<Value> = networks
        .iter()
        .map(|(name, n)| {
            json!({
                "name": name,
                "bytes_sent": n.total_transmitted(),
                "bytes_received": n.total_received(),
                "errors": n.total_errors_on_received() + n.total_errors_on_transmitted(),
            })
        })
        .collect();
    interfaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mem_pct = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    let disk_pct = if disk_total == 0 {
        0.0
    } else {
        (disk_total - disk_free) as f64 * 100.0 / disk_total as f64
    };
    let cpu = f64::from(sys.global_cpu_usage());
    let status = if mem_pct > 95.0 || disk_pct > 95.0 {
        "degraded"
    } else {
        "healthy"
    };
    let mb = |b: u64| b / 1_048_576;
    let gb = |b: u64| (b as f64 / 1_073_741_824.0 * 10.0).round() / 10.0;
    json!({
        "status": status,
        "resources": {
            "cpu": {"usage_percent": (cpu * 10.0).round() / 10.0, "cores": sys.cpus().len(), "load_avg": [load.one, load.five, load.fifteen]},
            "memory": {"usage_percent": (mem_pct * 10.0).round() / 10.0, "used_mb": mb(used), "total_mb": mb(total), "available_mb": mb(available)},
            "disk": {"usage_percent": (disk_pct * 10.0).round() / 10.0, "free_gb": gb(disk_free), "total_gb": gb(disk_total)},
            "network": {"interfaces": interfaces},
        }
    })
}

async fn config(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let cfg = crate::settings::sanitized(&st.shared.config());
    let primary = cfg.pools.first();
    let full = serde_json::to_value(&cfg).unwrap_or(Value::Null);
    let mut body = json!({
        "server": {
            "port": cfg.server.port,
            "bind_address": cfg.server.bind_address,
            "max_connections": cfg.server.max_connections,
        },
        "pool": primary.map(|p| json!({"name": p.name, "host": p.host, "port": p.port, "username": p.username})),
        "limiter": {
            "connections": cfg.server.max_connections,
            "jobs_ttl": format!("{}s", cfg.upstream.job_timeout.as_secs()),
            "submissions_ttl": format!("{}s", cfg.mining.ntime_window_secs),
        },
        "features": {
            "metrics_enabled": true,
            "monitoring_enabled": true,
            "auth_required": st.auth.enabled(),
        },
    });
    // Everything else, sanitised, for operators who want the whole picture.
    for key in [
        "mining",
        "vardiff",
        "upstream",
        "pools",
        "storage",
        "rate_limiting",
        "metrics",
        "api",
    ] {
        body[key] = full[key].clone();
    }
    body["admin"] = json!({"username": cfg.admin.username, "token_ttl": format!("{}s", cfg.admin.token_ttl.as_secs())});
    Json(body)
}

async fn config_reload(
    State(st): State<Arc<ApiState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    st.auth.require_admin(&headers, None)?;
    let Some(src) = st.reload.get() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFIG_NO_FILE",
            "The proxy was started without --config; nothing to reload",
        ));
    };
    let text = tokio::fs::read_to_string(&src.path).await.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CONFIG_UNREADABLE",
            format!("Cannot read {}: {e}", src.path.display()),
        )
    })?;
    let new = crate::settings::build(Some(&text), &src.overrides).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CONFIG_INVALID",
            "The new configuration is invalid; the old one stays in force",
        )
        .with_details(json!({ "errors": e.0 }))
    })?;
    let pools = crate::upstream::resolve_pools(&new, |v| std::env::var(v).ok()).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CONFIG_INVALID",
            "The new configuration is invalid; the old one stays in force",
        )
        .with_details(json!({ "errors": [e] }))
    })?;
    let crate::reload::ReloadPlan {
        config: new,
        requires_restart: restart,
    } = crate::reload::plan(&st.shared.config(), new);
    let old = st.shared.config();
    let mut applied = vec![
        "vardiff (new connections)",
        "server limits per IP and timeouts",
        "mining rules",
    ];
    let pools_changed =
        format!("{:?}", *st.pools.read()) != format!("{pools:?}") || old.pools != new.pools;
    if pools_changed {
        if let Some(u) = &st.shared.upstream {
            u.control
                .send(Control::SetPools(pools.clone()))
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "POOL_UNAVAILABLE",
                        "The upstream task is not running",
                    )
                })?;
        }
        st.shared.set_upstream_pools(pools.clone());
        *st.pools.write() = pools;
        applied.push("pools");
    }
    st.shared.replace_config(Arc::new(new));
    tracing::info!(?applied, ?restart, "configuration reloaded");
    Ok(Json(json!({
        "status": "success",
        "message": "Configuration reloaded successfully",
        "timestamp": now_rfc3339(),
        "applied": applied,
        "requires_restart": restart,
    })))
}

async fn stats(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let s = &st.shared.stats;
    let rates = st.sampler.latest.read().clone();
    let submitted = s.shares_submitted.load(Relaxed);
    let accepted = s.shares_accepted.load(Relaxed);
    let rejected = s.shares_rejected.load(Relaxed);
    let pool_name = st
        .pools
        .read()
        .first()
        .map(|p| p.name.to_string())
        .unwrap_or_default();
    let (jobs, difficulty) = match &st.shared.upstream {
        Some(u) => (
            u.status.jobs_received.load(Relaxed),
            u.work
                .borrow()
                .as_ref()
                .map(|w| w.upstream_difficulty.to_f64()),
        ),
        None => (0, None),
    };
    let uptime = s.started.elapsed().as_secs_f64();
    let protocol = s.protocol_errors.load(Relaxed);
    let refused = s.connections_refused.load(Relaxed);
    let upstream_rejected = st
        .shared
        .upstream
        .as_ref()
        .map_or(0, |u| u.status.submits_rejected.load(Relaxed));
    let total_errors = protocol + refused + upstream_rejected;
    let workers = s.workers();
    let latency = s.submit_latency.snapshot();
    Json(json!({
        "connections": {
            "current": s.connections_current.load(Relaxed),
            "peak": s.connections_peak.load(Relaxed),
            "total": s.connections_total.load(Relaxed),
            "rate": {"current": rates.connections_per_sec, "peak": rates.connections_per_sec_peak},
            "by_pool": { pool_name: s.connections_current.load(Relaxed) },
        },
        "mining": {
            "shares": {
                "submitted": submitted,
                "accepted": accepted,
                "rejected": rejected,
                "acceptance_rate": acceptance_rate(accepted as f64, submitted as f64),
                "block_candidates": s.block_candidates.load(Relaxed),
                "forwarded": s.shares_forwarded.load(Relaxed),
            },
            "jobs": {
                "distributed": s.jobs_distributed.load(Relaxed),
                "current_difficulty": difficulty,
                "average_time": if jobs == 0 { 0.0 } else { (uptime / jobs as f64 * 10.0).round() / 10.0 },
            },
            "hashrate": {
                "estimated": format_hashrate(rates.total_hashrate(1)),
                "workers": workers.iter().filter(|w| w.connections.load(Relaxed) > 0).count(),
            },
        },
        "performance": {
            "response_time": {
                "mean": latency.mean() * 1000.0,
                "p95": latency.quantile(0.95) * 1000.0,
                "p99": latency.quantile(0.99) * 1000.0,
            },
            "throughput": {"messages_per_second": rates.messages_per_sec, "bytes_per_second": rates.bytes_per_sec},
        },
        "errors": {
            "total": total_errors,
            "rate": rates.errors_per_sec,
            "by_type": {
                "protocol_error": protocol,
                "auth_failed": s.rejects(loka_stratum::error::ErrorCode::Unauthorized),
                "pool_error": upstream_rejected,
                "connection_error": refused,
            },
        },
    }))
}

#[derive(Deserialize)]
struct WorkersQuery {
    limit: Option<usize>,
    offset: Option<usize>,
    status: Option<String>,
    /// With a share store: also list workers seen in the database within this window (e.g.
    /// `24h`) that are not connected now, as `offline`, with their stored shares.
    window: Option<String>,
}

/// Longest window the database read side is asked for.
const MAX_HISTORY_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);

/// A duration query parameter (`90s`, `10m`, `24h`, `7d`), checked against `max`.
fn duration_param(name: &str, value: &str, max: Duration) -> Result<Duration, ApiError> {
    let d = humantime::parse_duration(value).map_err(|e| {
        ApiError::bad_request(
            "VALIDATION_INVALID_PARAMETER",
            format!("{name}: {value:?} is not a duration like 10m, 24h or 7d ({e})"),
        )
    })?;
    if d.is_zero() || d > max {
        return Err(ApiError::bad_request(
            "VALIDATION_INVALID_PARAMETER",
            format!(
                "{name}: must be more than 0 and at most {}",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn store_for_history(st: &ApiState) -> Result<&Arc<dyn StoreProbe>, ApiError> {
    st.store.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_DISABLED",
            "Share storage is off ([storage] enabled = false): there is no history to read",
        )
    })
}

fn store_read_error(e: String) -> ApiError {
    tracing::warn!(error = %e, "reading worker history from the store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "The share database did not answer; live figures remain at /stats/workers",
    )
}

#[derive(Deserialize)]
struct HistoryQuery {
    window: Option<String>,
    bucket: Option<String>,
}

/// `GET /stats/workers/{worker}/history?window=24h&bucket=1h`: one worker's stored shares
/// in time buckets (for charts), read from the database.
async fn worker_history(
    State(st): State<Arc<ApiState>>,
    axum::extract::Path(worker): axum::extract::Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    let window = match q.window.as_deref() {
        Some(w) => duration_param("window", w, MAX_HISTORY_WINDOW)?,
        None => Duration::from_secs(24 * 3600),
    };
    let bucket = match q.bucket.as_deref() {
        Some(b) => duration_param("bucket", b, window)?,
        None => (window / 24).max(Duration::from_secs(60)).min(window),
    };
    if bucket.as_secs() == 0 || window.as_secs() / bucket.as_secs() > 10_000 {
        return Err(ApiError::bad_request(
            "VALIDATION_INVALID_PARAMETER",
            "bucket: at least 1s and at most 10000 buckets per window",
        ));
    }
    let store = store_for_history(&st)?;
    let points = store
        .worker_history(worker.clone(), window, bucket)
        .await
        .map_err(store_read_error)?;
    let totals = points
        .iter()
        .fold((0i64, 0i64), |(s, a), p| (s + p.submitted, a + p.accepted));
    let points: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({
                "at": rfc3339(p.at),
                "submitted": p.submitted,
                "accepted": p.accepted,
                "rejected": p.submitted - p.accepted,
                "accepted_difficulty": p.accepted_difficulty.to_string(),
                "hashrate": format_hashrate(p.hashrate_hs),
                "hashrate_hs": p.hashrate_hs,
            })
        })
        .collect();
    Ok(Json(json!({
        "worker": worker,
        "window": humantime::format_duration(window).to_string(),
        "bucket": humantime::format_duration(bucket).to_string(),
        "shares": {"submitted": totals.0, "accepted": totals.1, "rejected": totals.0 - totals.1},
        "points": points,
    })))
}

async fn stats_workers(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<WorkersQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    // Offline workers from the database, when asked (read before the live snapshot).
    let stored = match q.window.as_deref() {
        Some(w) => {
            let window = duration_param("window", w, MAX_HISTORY_WINDOW)?;
            let store = store_for_history(&st)?;
            let rows = store
                .worker_stats(window, 100_000)
                .await
                .map_err(store_read_error)?;
            Some(rows)
        }
        None => None,
    };
    let rates = st.sampler.latest.read().hashrates.clone();
    let pool = st
        .shared
        .upstream
        .as_ref()
        .and_then(|u| u.work.borrow().as_ref().map(|w| w.pool.to_string()))
        .unwrap_or_default();
    let now = crate::clock::unix_ms();
    let mut workers = st.shared.stats.workers();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    let status_of = |w: &crate::stats::WorkerStats| {
        let last = w.last_activity_unix_ms.load(Relaxed);
        if w.connections.load(Relaxed) == 0 {
            "offline"
        } else if now.saturating_sub(last) > 5 * 60 * 1000 {
            "idle"
        } else {
            "active"
        }
    };
    // Stored workers the proxy does not know now (it restarted, or they left long ago).
    let mut offline: Vec<loka_store::stats::WorkerStats> = match stored {
        Some(rows) if !rows.is_empty() => {
            let known: std::collections::HashSet<&str> =
                workers.iter().map(|w| w.name.as_str()).collect();
            rows.into_iter()
                .filter(|r| !known.contains(r.worker_name.as_str()))
                .collect()
        }
        _ => Vec::new(),
    };
    offline.sort_by(|a, b| a.worker_name.cmp(&b.worker_name));
    let total = workers.len() + offline.len();
    let active = workers.iter().filter(|w| status_of(w) == "active").count();
    let live = workers
        .iter()
        .filter(|w| q.status.as_deref().is_none_or(|s| s == status_of(w)));
    let offline_wanted = q.status.as_deref().is_none_or(|s| s == "offline");
    let skip = q.offset.unwrap_or(0);
    let mut list: Vec<Value> = live
        .clone()
        .skip(skip)
        .take(limit)
        .map(|w| {
            let submitted = w.submitted.load(Relaxed);
            let accepted = w.accepted.load(Relaxed);
            let h = rates.get(&w.name).copied().unwrap_or([0.0; 4]);
            json!({
                "id": w.name,
                "pool": pool,
                "connected_at": unix_ms_rfc3339(w.first_seen_unix_ms),
                "last_activity": unix_ms_rfc3339(w.last_activity_unix_ms.load(Relaxed)),
                "shares": {
                    "submitted": submitted,
                    "accepted": accepted,
                    "rejected": w.rejected.load(Relaxed),
                    "acceptance_rate": acceptance_rate(accepted as f64, submitted as f64),
                },
                "hashrate": format_hashrate(h[1]),
                "hashrate_hs": {"1m": h[0], "10m": h[1], "1h": h[2], "24h": h[3]},
                "difficulty": w.difficulty(),
                "connections": w.connections.load(Relaxed),
                "status": status_of(w),
            })
        })
        .collect();
    if offline_wanted && list.len() < limit {
        let skip = skip.saturating_sub(live.count());
        list.extend(offline.iter().skip(skip).take(limit - list.len()).map(|r| {
            json!({
                "id": r.worker_name,
                "pool": r.pool,
                "connected_at": r.connected_at.map(rfc3339),
                "last_activity": r.last_activity.map(rfc3339),
                "shares": {
                    "submitted": r.submitted,
                    "accepted": r.accepted,
                    "rejected": r.rejected,
                    "acceptance_rate": acceptance_rate(r.accepted as f64, r.submitted as f64),
                },
                "hashrate": format_hashrate(r.hashrate_hs),
                "hashrate_hs": {"window": r.hashrate_hs},
                "difficulty": Value::Null,
                "connections": 0,
                "status": "offline",
                "source": "database",
            })
        }));
    }
    Ok(Json(
        json!({"total_workers": total, "active_workers": active, "workers": list}),
    ))
}

async fn admin_stats(
    State(st): State<Arc<ApiState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    st.auth.require_admin(&headers, None)?;
    let s = &st.shared.stats;
    use loka_stratum::error::ErrorCode::*;
    let upstream = st.shared.upstream.as_ref().map(|u| {
        let d = u.status.detail.lock().clone();
        json!({
            "connected": u.status.connected.load(Relaxed),
            "active_pool": d.active_pool.as_deref(),
            "active_host": d.active_host,
            "last_error": d.last_error,
            "failovers": u.status.failovers.load(Relaxed),
            "jobs_received": u.status.jobs_received.load(Relaxed),
            "submits": {
                "sent": u.status.submits_sent.load(Relaxed),
                "accepted": u.status.submits_accepted.load(Relaxed),
                "rejected": u.status.submits_rejected.load(Relaxed),
                "stale": u.status.submits_stale.load(Relaxed),
                "lost": u.status.submits_lost.load(Relaxed),
            },
        })
    });
    let store = match st.store.get() {
        Some(p) => Some(p.health().await),
        None => None,
    };
    let alloc = st.shared.allocator.lock();
    let body = json!({
        "store": store,
        "mode": st.shared.mode.to_string(),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "rejects_by_code": {
            "20": s.rejects(Other), "21": s.rejects(JobNotFound), "22": s.rejects(Duplicate),
            "23": s.rejects(LowDifficulty), "24": s.rejects(Unauthorized), "25": s.rejects(NotSubscribed),
        },
        "block_candidates": s.block_candidates.load(Relaxed),
        "events_dropped": s.events_dropped.load(Relaxed),
        "events_waited": s.events_waited.load(Relaxed),
        "shares_unstored": s.shares_unstored.load(Relaxed),
        "extranonce": {"prefix_size": alloc.size(), "in_use": alloc.in_use(), "capacity": alloc.capacity()},
        "upstream": upstream,
        "store_queue_depth": st.store.get().map(|p| p.queue_depth()),
        "store_spool_bytes": st.store.get().map(|p| p.spool_bytes()),
    });
    Ok(Json(body))
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
