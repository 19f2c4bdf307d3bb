//! `StratumPool`: the upstream pools (in failover order), the account and the share rules that a
//! set of proxies mine for.
// `printcolumn(type_ = "string", ...)` repeats on purpose.
#![allow(clippy::duplicated_attributes)]

use super::{Condition, SecretKeyRef, conditions_schema};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An upstream pool account, the endpoints to reach it in failover order, and the share rules
/// (mode, vardiff) the proxies apply for it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "loka.io",
    version = "v1alpha1",
    kind = "StratumPool",
    plural = "stratumpools",
    shortname = "spool",
    category = "loka",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "StratumPoolStatus",
    doc = "Upstream Stratum pools (failover order), the pool account and share rules used by StratumProxies.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.account"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct StratumPoolSpec {
    /// `aggregate`: one upstream session carries many miners; `passthrough`: one upstream
    /// connection per miner.
    #[serde(default)]
    pub mode: PoolMode,
    /// The pool account (user name) shares are submitted for.
    #[schemars(length(min = 1, max = 256))]
    pub account: String,
    /// The Secret key holding the pool password. Read by the proxy pods only, never by the
    /// operator. Without it the proxy sends an empty password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Upstream endpoints. The lowest `priority` is the primary; ties keep list order.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one upstream is required"))]
    #[x_kube(validation = Rule::new("self.all(u, self.exists_one(v, v.name == u.name))").message("upstream names must be unique"))]
    #[schemars(length(max = 16))]
    pub upstreams: Vec<Upstream>,
    /// Per-miner variable difficulty.
    #[serde(default)]
    pub vardiff: Vardiff,
    /// Send `account.worker` upstream instead of the account alone (where the pool allows it).
    #[serde(default)]
    pub forward_worker_names: bool,
}

/// How miners are mapped onto upstream sessions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// One upstream session per account carries many miners (extranonce splitting).
    #[default]
    Aggregate,
    /// One upstream connection per miner.
    Passthrough,
}

/// One upstream Stratum endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tls || (!has(self.tlsFingerprint) && !has(self.caSecretRef))").message("tlsFingerprint and caSecretRef need tls: true"))]
pub struct Upstream {
    /// Unique name of this endpoint (used in metrics and logs).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("upstream name must be a lowercase RFC 1123 label"))]
    pub name: String,
    /// Host name or IP address of the pool, without scheme or port.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('/') && !self.contains(' ')").message("host must be a host name or IP address, without scheme or path"))]
    pub host: String,
    /// TCP port of the pool's Stratum endpoint.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Failover priority: lower is tried first.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// Account for this endpoint only (e.g. a backup pool at another provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub account: Option<String>,
    /// Password Secret for this endpoint only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Speak Stratum over TLS to this endpoint (what a `stratum+ssl://` URL means). The
    /// pool's certificate must name `host` and chain to the proxy image's system roots (or to
    /// `caSecretRef`), unless `tlsFingerprint` alone pins it.
    #[serde(default)]
    pub tls: bool,
    /// SHA-256 fingerprint of the pool's certificate (64 hex digits, or 32 colon-separated
    /// pairs as `openssl x509 -fingerprint -sha256` prints them): only that certificate is
    /// accepted. Alone it is the whole check (a pool's self-signed certificate); with
    /// `caSecretRef` the certificate must pass both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 95))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9a-fA-F]{64}|[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){31})$')").message("tlsFingerprint must be a SHA-256 fingerprint: 64 hex digits, or 32 pairs separated by colons"))]
    pub tls_fingerprint: Option<String>,
    /// A Secret key (e.g. `ca.crt`) holding a PEM bundle of the certificate authorities the
    /// pool's certificate must chain to, instead of the system's roots. Mounted read-only into
    /// the proxy pods (the operator never reads it); the proxy reads it when it starts, so a
    /// changed bundle applies to pods started afterwards (`kubectl rollout restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// Per-miner variable difficulty. Difficulties may be fractional.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minDifficulty > 0.0").message("minDifficulty must be greater than zero"))]
#[x_kube(validation = Rule::new("self.minDifficulty <= self.maxDifficulty").message("minDifficulty must not exceed maxDifficulty"))]
#[x_kube(validation = Rule::new("self.minDifficulty <= self.initialDifficulty && self.initialDifficulty <= self.maxDifficulty").message("initialDifficulty must lie between minDifficulty and maxDifficulty"))]
pub struct Vardiff {
    /// Retarget each miner's difficulty; when off, `initialDifficulty` is fixed.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Difficulty a new miner starts at.
    #[serde(default = "default_initial_difficulty")]
    pub initial_difficulty: f64,
    /// Lowest difficulty vardiff may set.
    #[serde(default = "default_min_difficulty")]
    pub min_difficulty: f64,
    /// Highest difficulty vardiff may set.
    #[serde(default = "default_max_difficulty")]
    pub max_difficulty: f64,
    /// Shares per minute vardiff aims for.
    #[serde(default = "default_target_spm")]
    #[x_kube(validation = Rule::new("self > 0.0").message("targetSharesPerMinute must be greater than zero"))]
    pub target_shares_per_minute: f64,
    /// Seconds between retargets.
    #[serde(default = "default_retarget")]
    #[schemars(range(min = 1, max = 3600))]
    pub retarget_interval_seconds: i32,
}

impl Default for Vardiff {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_difficulty: default_initial_difficulty(),
            min_difficulty: default_min_difficulty(),
            max_difficulty: default_max_difficulty(),
            target_shares_per_minute: default_target_spm(),
            retarget_interval_seconds: default_retarget(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_initial_difficulty() -> f64 {
    16384.0
}
fn default_min_difficulty() -> f64 {
    1.0
}
fn default_max_difficulty() -> f64 {
    // 2^40, the proxy's own default.
    1_099_511_627_776.0
}
fn default_target_spm() -> f64 {
    20.0
}
fn default_retarget() -> i32 {
    60
}

/// Observed state of a StratumPool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StratumPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` tells whether the spec is usable by proxies.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `host:port` of the primary upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
}
