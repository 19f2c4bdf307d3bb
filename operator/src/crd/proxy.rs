//! `StratumProxy`: a set of proxy pods mining for one `StratumPool`, and how they are exposed.
// `printcolumn(type_ = "string", ...)` repeats on purpose.
#![allow(clippy::duplicated_attributes)]

use super::{Condition, SecretKeyRef, conditions_schema};
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default Stratum port of the proxy.
pub const DEFAULT_STRATUM_PORT: i32 = 3333;
/// Default HTTP API port of the proxy (`/ready`, `/live`, `/metrics/prometheus`).
pub const DEFAULT_API_PORT: i32 = 9090;
/// Default TLS Stratum port of the proxy (`tls.port`).
pub const DEFAULT_TLS_PORT: i32 = 3334;

/// Loka Stratum proxies for one StratumPool: a Deployment (or, with a persistent data volume, a
/// StatefulSet and its headless Service), its ConfigMap, Services, a PodDisruptionBudget and
/// (with the Prometheus Operator) a ServiceMonitor.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "loka.io",
    version = "v1alpha1",
    kind = "StratumProxy",
    plural = "stratumproxies",
    shortname = "sproxy",
    category = "loka",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "StratumProxyStatus",
    doc = "Loka Stratum proxies mining for one StratumPool.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolRef.name"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.terminationGracePeriodSeconds) || self.terminationGracePeriodSeconds > self.drainTimeoutSeconds").message("terminationGracePeriodSeconds must exceed drainTimeoutSeconds, or pods are killed while draining"))]
#[x_kube(validation = Rule::new("!has(self.tls) || (self.tls.port != self.ports.stratum && self.tls.port != self.ports.api)").message("tls.port must be distinct from ports.stratum and ports.api"))]
#[x_kube(validation = Rule::new("!has(self.service.tlsNodePort) || has(self.tls)").message("service.tlsNodePort needs tls"))]
pub struct StratumProxySpec {
    /// The StratumPool (same namespace) these proxies mine for.
    pub pool_ref: PoolRef,
    /// Number of proxy pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Proxy image; the operator's default (`--proxy-image`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Image pull policy (Kubernetes' default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Container ports, also used by the Services.
    #[serde(default)]
    pub ports: Ports,
    /// The Stratum Service miners connect to.
    #[serde(default)]
    pub service: StratumService,
    /// A second Stratum port for miners speaking TLS (`stratum+ssl://`), beside the plain
    /// one, on the same Services. Without it the proxies speak plain Stratum only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListener>,
    /// Share store. Without it each pod keeps an embedded SQLite file in its data volume
    /// (`dataVolume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Database>,
    /// Where each pod's data directory (`/var/lib/loka`) lives: the spool that holds shares
    /// while the database is away, and the embedded SQLite file when `database` is unset.
    /// Unset or `emptyDir`: a Deployment whose pods keep it in an emptyDir, lost (with any
    /// spooled shares) when the pod is deleted. `persistent`: a StatefulSet with a
    /// PersistentVolumeClaim per pod, which survives pod deletion and rescheduling.
    #[serde(default)]
    pub data_volume: DataVolume,
    /// When a miner hears "accepted": `validated` (at once; a killed pod can lose the shares
    /// of its last 100 ms) or `durable` (once the share is committed to the database or
    /// written to the pod's spool; costs each submit a database round-trip).
    #[serde(default)]
    pub acknowledge: Acknowledge,
    /// Nice levels the proxy's share-writer thread runs below its miners' sessions, so the
    /// writer's batch bursts do not delay their replies (0 = same priority); the proxy's
    /// default (10) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 19))]
    pub writer_nice: Option<i32>,
    /// Compute resources of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Metrics and traces.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Seconds a terminating pod has to move miners away and flush shares.
    #[serde(default = "default_drain")]
    #[schemars(range(min = 1, max = 3600))]
    pub drain_timeout_seconds: i32,
    /// Pod termination grace period; `drainTimeoutSeconds + 10` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7200))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Most miner connections per pod (the proxy's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4_000_000))]
    pub max_connections: Option<i32>,
    /// Log filter of the proxy, e.g. `info` or `loka_proxy=debug,info`.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256))]
    pub log_level: String,
    /// The PodDisruptionBudget.
    #[serde(default)]
    pub pod_disruption_budget: DisruptionBudget,
    /// Extra settings of the proxy pods.
    #[serde(default)]
    pub pod: PodSettings,
}

/// When accepted shares are answered (`storage.acknowledge` of the proxy).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Acknowledge {
    #[default]
    Validated,
    Durable,
}

/// Reference to a StratumPool in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PoolRef {
    /// Name of the StratumPool.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Ports of the proxy container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.stratum != self.api").message("ports.stratum and ports.api must be distinct"))]
pub struct Ports {
    /// Stratum port miners connect to.
    #[serde(default = "default_stratum_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub stratum: i32,
    /// HTTP API port (`/ready`, `/live`, `/metrics/prometheus`).
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub api: i32,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            stratum: DEFAULT_STRATUM_PORT,
            api: DEFAULT_API_PORT,
        }
    }
}

/// The TLS Stratum port and its certificate.
///
/// The certificate and key come from a `kubernetes.io/tls` Secret (keys `tls.crt` and
/// `tls.key`, what `kubectl create secret tls` and cert-manager's Certificate write), mounted
/// whole and read-only at `/etc/loka-tls`. The proxy reads the two files again every
/// `reloadIntervalSeconds`, so a renewed certificate serves new connections without a restart
/// and without dropping connected miners. The operator never reads the Secret: the pods depend
/// on its name only, and a change of its content rolls no pod. A Secret that does not exist
/// keeps new pods from starting (the kubelet cannot mount it), which a rollout shows as stalled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsListener {
    /// Name of the `kubernetes.io/tls` Secret (same namespace) with `tls.crt` (the certificate
    /// chain, the server's certificate first) and `tls.key` (its private key: PKCS#8, PKCS#1
    /// or SEC1).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("tls.secretName must be a Secret name (a lowercase RFC 1123 subdomain)"))]
    pub secret_name: String,
    /// TLS Stratum port miners connect to (container and Services).
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Seconds between reads of the certificate files; the proxy's default (30) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub reload_interval_seconds: Option<i32>,
}

/// Kubernetes Service type of the Stratum Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The Stratum Service. `LoadBalancer` gets `externalTrafficPolicy: Local` so the proxy sees
/// the miners' own addresses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'").message("nodePort needs service type NodePort or LoadBalancer"))]
#[x_kube(validation = Rule::new("!has(self.tlsNodePort) || self.type != 'ClusterIP'").message("tlsNodePort needs service type NodePort or LoadBalancer"))]
#[x_kube(validation = Rule::new("!has(self.nodePort) || !has(self.tlsNodePort) || self.nodePort != self.tlsNodePort").message("nodePort and tlsNodePort must be distinct"))]
#[x_kube(validation = Rule::new("self.type == 'LoadBalancer' || !has(self.loadBalancerSourceRanges) || size(self.loadBalancerSourceRanges) == 0").message("loadBalancerSourceRanges need service type LoadBalancer"))]
pub struct StratumService {
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Fixed node port for the Stratum port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
    /// Fixed node port for the TLS Stratum port (`tls.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tls_node_port: Option<i32>,
    /// Annotations of the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Client CIDRs allowed through the load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub load_balancer_source_ranges: Vec<String>,
    /// Load balancer implementation class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
}

/// The share store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Database {
    /// Secret key holding a `postgres://` URL, given to the pods as `DATABASE_URL`.
    pub url_secret_ref: SecretKeyRef,
}

/// Default `sizeLimit` of the emptyDir data volume.
pub const DEFAULT_DATA_SIZE_LIMIT: &str = "1Gi";

/// The pods' data directory: `emptyDir` (the default) or `persistent`, not both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.emptyDir) || !has(self.persistent)").message("dataVolume takes emptyDir or persistent, not both"))]
pub struct DataVolume {
    /// An emptyDir per pod (what applies when neither is set): shares spooled while the
    /// database is away, and the embedded SQLite file, are lost when the pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirDataVolume>,
    /// A PersistentVolumeClaim per pod: the proxies run as a StatefulSet (pods
    /// `<name>-0`, `<name>-1`, ...; claims `data-<name>-<ordinal>`) governed by the headless
    /// Service `<name>-headless`. A pod deleted or rescheduled comes back with the same
    /// ordinal and claim and replays its spool on start. The StratumProxy's name may then have
    /// at most 52 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<PersistentDataVolume>,
}

/// The emptyDir data volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirDataVolume {
    /// Most the directory may hold, e.g. `1Gi` (a whole number, optionally with a decimal
    /// fraction, and an optional suffix Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E); the
    /// kubelet evicts a pod that exceeds it.
    #[serde(default = "default_size_limit")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]*([.][0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("sizeLimit must be a quantity such as 1Gi or 500Mi"))]
    pub size_limit: String,
}

impl Default for EmptyDirDataVolume {
    fn default() -> Self {
        Self {
            size_limit: default_size_limit(),
        }
    }
}

/// The persistent data volume: one PersistentVolumeClaim per pod, from the StatefulSet's
/// claim template. `size`, `storageClassName` and `accessModes` form that template, which a
/// StatefulSet cannot change, so they are fixed once set (and existing claims keep what they
/// were created with): to change them, remove `persistent`, delete the claims, and set it
/// again.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.size == oldSelf.size && self.accessModes == oldSelf.accessModes && (has(self.storageClassName) ? has(oldSelf.storageClassName) && self.storageClassName == oldSelf.storageClassName : !has(oldSelf.storageClassName))").message("size, storageClassName and accessModes of dataVolume.persistent cannot change: they form the StatefulSet's claim template"))]
pub struct PersistentDataVolume {
    /// Storage requested by each pod's claim, e.g. `10Gi` (a whole number, optionally with a
    /// decimal fraction, and an optional suffix Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E).
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]*([.][0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("size must be a quantity such as 10Gi or 500Mi"))]
    pub size: String,
    /// StorageClass of the claims; the cluster's default class when unset, no class when
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Access modes of the claims. Each pod has its own claim, so `ReadWriteOnce` (the
    /// default) suffices.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1, max = 3))]
    pub access_modes: Vec<AccessMode>,
    /// What happens to the claims (and the spools in them) when pods go away.
    #[serde(default)]
    pub claim_retention_policy: ClaimRetentionPolicy,
}

/// Access mode of a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteOncePod,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// The StatefulSet's `persistentVolumeClaimRetentionPolicy` (Kubernetes 1.27 and later;
/// older clusters ignore it and always retain).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRetentionPolicy {
    /// When the StatefulSet is deleted (the StratumProxy is deleted, or switched to
    /// emptyDir): `Retain` (default) keeps the claims, and a StatefulSet of the same name
    /// later reuses them and replays their spools; `Delete` deletes them with any spool left
    /// in them.
    #[serde(default)]
    pub when_deleted: Retention,
    /// When `replicas` goes down: `Retain` (default) keeps the claims of the removed pods
    /// until scaled back up, when the returning pods replay their spools; `Delete` deletes
    /// them with any spool left in them.
    #[serde(default)]
    pub when_scaled: Retention,
}

/// Whether claims are kept or deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

impl Retention {
    pub fn as_str(self) -> &'static str {
        match self {
            Retention::Retain => "Retain",
            Retention::Delete => "Delete",
        }
    }
}

/// Metrics and traces.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// OTLP endpoint for traces (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("otlpEndpoint must be an http:// or https:// URL"))]
    pub otlp_endpoint: Option<String>,
    /// ServiceMonitor, created only when the Prometheus Operator API is installed.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSettings,
}

/// ServiceMonitor settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSettings {
    /// Create a ServiceMonitor when the monitoring.coreos.com API exists.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Scrape interval.
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s|m|h)$')").message("interval must be a duration such as 30s or 1m"))]
    pub interval: String,
    /// Extra labels (e.g. the `release` label a Prometheus selects on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceMonitorSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_interval(),
            labels: BTreeMap::new(),
        }
    }
}

/// The PodDisruptionBudget.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Create a PodDisruptionBudget.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pods that may be evicted at once.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,
}

impl Default for DisruptionBudget {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

/// Extra settings of the proxy pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// Observed state of a StratumProxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StratumProxyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with PascalCase reasons.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Pods of the current Deployment or StatefulSet (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Pods passing `/ready`.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods (scale subresource, for HorizontalPodAutoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where miners and scrapers reach the proxies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// SHA-256 of the proxy configuration the pods run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// A named address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Endpoint {
    /// `stratum`, `stratum-tls`, `stratum-external`, `stratum-tls-external` or `api`.
    pub name: String,
    /// e.g. `stratum+tcp://proxy.mining.svc:3333` or `stratum+ssl://proxy.mining.svc:3334`.
    pub url: String,
}

fn default_replicas() -> i32 {
    1
}
fn default_one() -> i32 {
    1
}
fn default_true() -> bool {
    true
}
fn default_stratum_port() -> i32 {
    DEFAULT_STRATUM_PORT
}
fn default_api_port() -> i32 {
    DEFAULT_API_PORT
}
fn default_tls_port() -> i32 {
    DEFAULT_TLS_PORT
}
fn default_drain() -> i32 {
    20
}
fn default_log_level() -> String {
    "info".into()
}
fn default_size_limit() -> String {
    DEFAULT_DATA_SIZE_LIMIT.into()
}
fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}
fn default_interval() -> String {
    "30s".into()
}
