//! `GET /config` and `POST /config/reload` (the reload itself is the pure plan of
//! [`crate::reload`]).

use super::ApiState;
use super::error::ApiError;
use crate::clock::now_rfc3339;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;

pub(super) async fn config(State(st): State<Arc<ApiState>>) -> Json<Value> {
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

pub(super) async fn config_reload(
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
        .with_details(json!({ "errors": [e.to_string()] }))
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
    // Compared whole, passwords too (a changed password_env value is a change).
    if st.shared.pools() != pools || old.pools != new.pools {
        st.set_pools(pools).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "POOL_UNAVAILABLE",
                e.to_string(),
            )
        })?;
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
