//! Settings of the HTTP API: admin authentication, rate limiting, metrics, telemetry.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Admin access (`POST /auth/token` → bearer JWT for `/admin/*`, `/config/reload`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub username: String,
    /// Argon2 PHC string of the admin password (`loka-proxy hash-password` prints one).
    /// Empty (and no `password_hash_env`) disables admin login.
    pub password_hash: String,
    /// Environment variable holding the PHC string instead (e.g. from a Kubernetes Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_hash_env: Option<String>,
    /// Environment variable holding the HS256 signing secret (≥ 32 bytes). Unset: a random
    /// secret per process (tokens do not survive a restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_env: Option<String>,
    /// Lifetime of issued tokens.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub token_ttl: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            username: "admin".into(),
            password_hash: String::new(),
            password_hash_env: None,
            jwt_secret_env: None,
            token_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A limit of requests per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointLimit {
    pub limit: u32,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

/// Rate limiting of the HTTP API per client IP (`[rate_limiting]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Requests per window per IP, over all endpoints without their own limit.
    pub per_ip_limit: u32,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window_size: Duration,
    /// Per-endpoint limits; a key ending in `/*` covers a prefix (e.g. `/admin/*`).
    pub endpoints: BTreeMap<String, EndpointLimit>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        let mut endpoints = BTreeMap::new();
        endpoints.insert(
            "/health".into(),
            EndpointLimit {
                limit: 60,
                window: minute,
            },
        );
        endpoints.insert(
            "/metrics/prometheus".into(),
            EndpointLimit {
                limit: 120,
                window: minute,
            },
        );
        endpoints.insert(
            "/admin/*".into(),
            EndpointLimit {
                limit: 100,
                window: minute,
            },
        );
        endpoints.insert(
            "/auth/token".into(),
            EndpointLimit {
                limit: 10,
                window: minute,
            },
        );
        Self {
            enabled: true,
            per_ip_limit: 1000,
            window_size: minute,
            endpoints,
        }
    }
}

/// Prometheus exposition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Export per-worker series (`worker_name` label). Never labelled by IP.
    pub per_worker_labels: bool,
    /// At most this many workers get their own series; the rest are summed in `_other`.
    pub max_worker_series: usize,
    /// Period of `/metrics/stream` and `/metrics/events` snapshots.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stream_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            per_worker_labels: true,
            max_worker_series: 1000,
            stream_interval: Duration::from_secs(5),
        }
    }
}

/// OpenTelemetry traces.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint (e.g. `http://otel-collector:4317`); empty = no export.
    pub otlp_endpoint: String,
    pub service_name: Option<String>,
}

pub(crate) fn validate(
    admin: &AdminConfig,
    rl: &RateLimitConfig,
    metrics: &MetricsConfig,
    telemetry: &TelemetryConfig,
    e: &mut Vec<String>,
) {
    if !admin.password_hash.is_empty() && !admin.password_hash.starts_with("$argon2") {
        e.push("admin.password_hash: must be an Argon2 PHC string ($argon2id$…)".into());
    }
    if admin.token_ttl.is_zero() || admin.token_ttl > Duration::from_secs(30 * 86400) {
        e.push("admin.token_ttl: must be between 1s and 30 days".into());
    }
    if rl.enabled {
        if rl.per_ip_limit == 0 {
            e.push("rate_limiting.per_ip_limit: must be at least 1".into());
        }
        if rl.window_size.is_zero() {
            e.push("rate_limiting.window_size: must be greater than zero".into());
        }
        for (path, l) in &rl.endpoints {
            if !path.starts_with('/') {
                e.push(format!(
                    "rate_limiting.endpoints.{path:?}: must start with /"
                ));
            }
            if l.limit == 0 || l.window.is_zero() {
                e.push(format!(
                    "rate_limiting.endpoints.{path:?}: limit and window must be positive"
                ));
            }
        }
    }
    if metrics.stream_interval < Duration::from_millis(100) {
        e.push("metrics.stream_interval: must be at least 100ms".into());
    }
    let ep = &telemetry.otlp_endpoint;
    let is_url = ep.starts_with("http://") || ep.starts_with("https://");
    if !ep.is_empty() && !is_url {
        e.push("telemetry.otlp_endpoint: must be an http:// or https:// URL".into());
    }
}
