//! Statistics: `/stats`, `/stats/workers`, a worker's history, `/admin/stats`.

use super::error::ApiError;
use super::sampler::format_hashrate;
use super::{ApiState, StoreProbe};
use crate::clock::{rfc3339, unix_ms_rfc3339};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Accepted over submitted, in percent with two decimals (0 when nothing was submitted).
fn acceptance_rate(accepted: f64, submitted: f64) -> f64 {
    if submitted == 0.0 {
        0.0
    } else {
        (accepted * 10000.0 / submitted).round() / 100.0
    }
}

pub(super) async fn stats(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let s = &st.shared.stats;
    let rates = st.sampler.latest.read().clone();
    let submitted = s.shares_submitted.load(Relaxed);
    let accepted = s.shares_accepted.load(Relaxed);
    let rejected = s.shares_rejected.load(Relaxed);
    let pool_name = st
        .shared
        .first_pool_name()
        .map(|p| p.to_string())
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
pub(super) struct WorkersQuery {
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

fn store_read_error(e: loka_store::Error) -> ApiError {
    tracing::warn!(error = %e, "reading worker history from the store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        "The share database did not answer; live figures remain at /stats/workers",
    )
}

#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    window: Option<String>,
    bucket: Option<String>,
}

/// `GET /stats/workers/{worker}/history?window=24h&bucket=1h`: one worker's stored shares
/// in time buckets (for charts), read from the database.
pub(super) async fn worker_history(
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

pub(super) async fn stats_workers(
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
            let h = w.hashrates();
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

pub(super) async fn admin_stats(
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
