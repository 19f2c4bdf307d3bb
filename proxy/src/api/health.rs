//! Health and probes: `/health`, `/ready`, `/live`, `/health/database`, `/health/pool`,
//! `/health/system`.

use super::ApiState;
use crate::clock::now_rfc3339;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

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

pub(super) async fn health(State(st): State<Arc<ApiState>>) -> Response {
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

pub(super) async fn ready(State(st): State<Arc<ApiState>>) -> Response {
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

pub(super) async fn live() -> Json<Value> {
    Json(json!({"alive": true, "pid": std::process::id(), "timestamp": now_rfc3339()}))
}

pub(super) async fn health_database(State(st): State<Arc<ApiState>>) -> Response {
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

pub(super) async fn health_pool(State(st): State<Arc<ApiState>>) -> Response {
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

pub(super) async fn health_system(State(st): State<Arc<ApiState>>) -> Json<Value> {
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
