//! Build step: StratumProxy + StratumPool → the proxy's configuration and the Kubernetes objects
//! that run it.
//!
//! Pure functions: no client, no clock, no randomness. The same inputs always give the same
//! objects, so server-side apply is a no-op when nothing changed, and golden files pin them.

use crate::crd::{
    Acknowledge, DEFAULT_DATA_SIZE_LIMIT, Endpoint, PersistentDataVolume, PoolMode, SecretKeyRef,
    ServiceType, StratumPool, StratumProxy,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretKeySelector, SecretProjection, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use loka_config::{AckPolicy, Config, LogFormat, Mode, PoolConfig, TlsListenerConfig};
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// Key of the proxy configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "loka.toml";
/// Where the ConfigMap is mounted in the proxy container.
pub const CONFIG_DIR: &str = "/etc/loka";
/// Writable data directory (embedded SQLite, spool).
pub const DATA_DIR: &str = "/var/lib/loka";
/// Name of the data volume in the pod, and of the StatefulSet's claim template (so a pod's
/// claim is `data-<proxy>-<ordinal>`).
pub const DATA_VOLUME: &str = "data";
/// Pod template annotation carrying the configuration hash: a new hash rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "loka.io/config-hash";
/// Name of the proxy container.
pub const CONTAINER: &str = "proxy";
/// Non-root user and group of the proxy pods (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;
/// Extra seconds of grace on top of the drain timeout when the spec sets none.
pub const GRACE_MARGIN_SECONDS: i64 = 10;
/// Environment variable with the database URL.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";
/// Where the TLS Secret of `spec.tls` is mounted: the whole Secret (no `subPath`), so the
/// kubelet's update of a renewed certificate reaches the running pods, whose proxy reads the
/// files again every `server.tls.reload_interval`.
pub const TLS_DIR: &str = "/etc/loka-tls";
/// Name of the TLS Secret's volume in the pod.
pub const TLS_VOLUME: &str = "tls";
/// Name of the TLS Stratum port of the container and the Services.
pub const TLS_PORT_NAME: &str = "stratum-tls";
/// Where the pools' CA bundles (`caSecretRef`) are mounted, each at `<secret>/<key>`.
pub const POOL_CA_DIR: &str = "/etc/loka-pool-ca";
/// Name of the (projected) volume of the pools' CA bundles.
pub const POOL_CA_VOLUME: &str = "pool-ca";
/// File mode of the TLS Secret's files: read-only for the owner (root) and the pod's
/// `fsGroup`, which the proxy runs in.
pub const TLS_FILE_MODE: i32 = 0o440;

/// Settings of the operator (not of a CR) that shape the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Proxy image when the StratumProxy sets none.
    pub default_image: String,
    /// Whether the monitoring.coreos.com/v1 ServiceMonitor API is installed.
    pub service_monitor_api: bool,
}

/// The controller of the proxy pods, by `dataVolume`: a Deployment (emptyDir) or a
/// StatefulSet (a PersistentVolumeClaim per pod).
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
}

impl Workload {
    /// Metadata of the workload object.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
        }
    }

    /// The pod template.
    pub fn template(&self) -> Option<&PodTemplateSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref().map(|s| &s.template),
            Workload::StatefulSet(s) => s.spec.as_ref().map(|s| &s.template),
        }
    }
}

/// Everything one StratumProxy owns, ready to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    pub config_map: ConfigMap,
    pub workload: Workload,
    /// The StatefulSet's governing Service; only with a StatefulSet.
    pub headless_service: Option<Service>,
    pub stratum_service: Service,
    pub api_service: Service,
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    pub service_monitor: Option<DynamicObject>,
    /// SHA-256 (hex) of the configuration text.
    pub config_hash: String,
}

/// Name of the ConfigMap of a proxy.
pub fn config_map_name(proxy: &str) -> String {
    format!("{proxy}-config")
}
/// Name of the API (metrics) Service of a proxy.
pub fn api_service_name(proxy: &str) -> String {
    format!("{proxy}-api")
}
/// Name of the headless Service governing a proxy's StatefulSet.
pub fn headless_service_name(proxy: &str) -> String {
    format!("{proxy}-headless")
}

/// Labels every owned object carries.
pub fn labels(proxy: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(proxy);
    l.insert("app.kubernetes.io/component".into(), "stratum-proxy".into());
    l.insert("app.kubernetes.io/part-of".into(), "loka-stratum".into());
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "loka-operator".into(),
    );
    l
}

/// Labels that select the pods of a proxy.
pub fn selector_labels(proxy: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "loka-proxy".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), proxy.to_string()),
    ])
}

/// The pod selector as a label-selector string (for the scale subresource).
pub fn selector_string(proxy: &str) -> String {
    selector_labels(proxy)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Environment variable holding the password of a Secret reference. The pool-wide password is
/// `LOKA_POOL_PASSWORD`; an upstream's own is `LOKA_POOL_PASSWORD_<NAME>`.
pub fn password_env(upstream: Option<&str>) -> String {
    match upstream {
        None => "LOKA_POOL_PASSWORD".into(),
        Some(name) => format!(
            "LOKA_POOL_PASSWORD_{}",
            name.to_ascii_uppercase().replace('-', "_")
        ),
    }
}

fn decimal(v: f64) -> Decimal {
    Decimal::from_f64(v).unwrap_or_default()
}

fn seconds(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// Path in the proxy container of the CA bundle a `caSecretRef` names.
pub fn pool_ca_file(r: &SecretKeyRef) -> String {
    format!("{POOL_CA_DIR}/{}/{}", r.name, r.key)
}

/// Upstreams in failover order (lowest priority first, ties in list order) with the password
/// Secret each uses, if any.
pub fn ordered_upstreams(pool: &StratumPool) -> Vec<(PoolConfig, Option<(String, SecretKeyRef)>)> {
    let mut ups: Vec<_> = pool.spec.upstreams.iter().enumerate().collect();
    ups.sort_by_key(|(i, u)| (u.priority, *i));
    ups.into_iter()
        .map(|(_, u)| {
            let secret = match (&u.password_secret_ref, &pool.spec.password_secret_ref) {
                (Some(own), _) => Some((password_env(Some(&u.name)), own.clone())),
                (None, Some(shared)) => Some((password_env(None), shared.clone())),
                (None, None) => None,
            };
            let cfg = PoolConfig {
                name: u.name.clone(),
                host: u.host.clone(),
                port: u16::try_from(u.port).unwrap_or(0),
                username: u
                    .account
                    .clone()
                    .unwrap_or_else(|| pool.spec.account.clone()),
                password: None,
                password_env: secret.as_ref().map(|(env, _)| env.clone()),
                // Set as written, so the configuration's validation names a CA or fingerprint
                // given without `tls`.
                tls: u.tls,
                tls_ca_file: u.ca_secret_ref.as_ref().map(pool_ca_file),
                tls_fingerprint: u.tls_fingerprint.clone(),
            };
            (cfg, secret)
        })
        .collect()
}

/// The proxy configuration for a StratumProxy mining for a StratumPool. Not yet validated:
/// see [`super::validate`].
pub fn proxy_config(proxy: &StratumProxy, pool: &StratumPool) -> Config {
    let s = &proxy.spec;
    let p = &pool.spec;
    let mut c = Config::default();
    c.server.port = u16::try_from(s.ports.stratum).unwrap_or(0);
    c.server.drain_timeout = seconds(s.drain_timeout_seconds);
    if let Some(max) = s.max_connections {
        c.server.max_connections = u32::try_from(max).unwrap_or(0);
    }
    c.api.port = u16::try_from(s.ports.api).unwrap_or(0);
    c.server.tls = s.tls.as_ref().map(|t| {
        let defaults = TlsListenerConfig::default();
        TlsListenerConfig {
            port: u16::try_from(t.port).unwrap_or(0),
            cert_file: format!("{TLS_DIR}/tls.crt"),
            key_file: format!("{TLS_DIR}/tls.key"),
            reload_interval: t
                .reload_interval_seconds
                .map_or(defaults.reload_interval, seconds),
            ..defaults
        }
    });
    c.mining.mode = match p.mode {
        PoolMode::Aggregate => Mode::Aggregate,
        PoolMode::Passthrough => Mode::Passthrough,
    };
    c.mining.forward_worker_names = p.forward_worker_names;
    c.vardiff.enabled = p.vardiff.enabled;
    c.vardiff.initial_difficulty = decimal(p.vardiff.initial_difficulty);
    c.vardiff.min_difficulty = decimal(p.vardiff.min_difficulty);
    c.vardiff.max_difficulty = decimal(p.vardiff.max_difficulty);
    c.vardiff.target_shares_per_minute = p.vardiff.target_shares_per_minute;
    c.vardiff.retarget_interval = seconds(p.vardiff.retarget_interval_seconds);
    c.pools = ordered_upstreams(pool)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    // The database URL, if any, comes from the DATABASE_URL environment variable.
    c.storage.sqlite_path = format!("{DATA_DIR}/loka.db");
    c.storage.acknowledge = match s.acknowledge {
        Acknowledge::Validated => AckPolicy::Validated,
        Acknowledge::Durable => AckPolicy::Durable,
    };
    if let Some(nice) = s.writer_nice {
        // Out of range (the schema forbids it) fails the configuration's validation.
        c.storage.writer_nice = u8::try_from(nice).unwrap_or(u8::MAX);
    }
    c.logging.format = LogFormat::Json;
    c.logging.level = s.log_level.clone();
    c
}

/// SHA-256 of a text, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn owner(proxy: &StratumProxy) -> Vec<OwnerReference> {
    // Reconciled objects always come from the API server, which sets the uid; a proxy without
    // one yields no owner reference rather than a panic.
    proxy.controller_owner_ref(&()).into_iter().collect()
}

fn meta(proxy: &StratumProxy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: proxy.namespace(),
        labels: Some(labels(&proxy.name_any())),
        owner_references: Some(owner(proxy)),
        ..Default::default()
    }
}

/// Build every object of a StratumProxy from its validated configuration.
pub fn build(
    proxy: &StratumProxy,
    pool: &StratumPool,
    config: &Config,
    opts: &BuildOptions,
) -> Objects {
    let name = proxy.name_any();
    let toml = config.to_toml();
    let config_hash = sha256_hex(&toml);
    let config_map = ConfigMap {
        metadata: meta(proxy, config_map_name(&name)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), toml)])),
        ..Default::default()
    };
    let template = pod_template(proxy, pool, &config_hash, opts);
    let (workload, headless_service) = match &proxy.spec.data_volume.persistent {
        Some(data) => (
            Workload::StatefulSet(stateful_set(proxy, template, data)),
            Some(headless_service(proxy)),
        ),
        None => (Workload::Deployment(deployment(proxy, template)), None),
    };
    Objects {
        config_map,
        workload,
        headless_service,
        stratum_service: stratum_service(proxy),
        api_service: api_service(proxy),
        pod_disruption_budget: proxy
            .spec
            .pod_disruption_budget
            .enabled
            .then(|| pod_disruption_budget(proxy)),
        service_monitor: (opts.service_monitor_api && proxy.spec.telemetry.service_monitor.enabled)
            .then(|| service_monitor(proxy)),
        config_hash,
    }
}

fn secret_env(name: String, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Environment of the proxy container: Secrets only through `secretKeyRef`.
fn env(proxy: &StratumProxy, pool: &StratumPool) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (_, secret) in ordered_upstreams(pool) {
        if let Some((var, r)) = secret
            && seen.insert(var.clone())
        {
            env.push(secret_env(var, &r));
        }
    }
    if let Some(db) = &proxy.spec.database {
        env.push(secret_env(DATABASE_URL_ENV.into(), &db.url_secret_ref));
    }
    if let Some(otlp) = &proxy.spec.telemetry.otlp_endpoint {
        env.push(value_env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp));
        env.push(value_env("OTEL_SERVICE_NAME", &proxy.name_any()));
    }
    env
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The pools' CA bundles (`caSecretRef` of each upstream) as one projected volume, each key at
/// `<secret>/<key>` ([`pool_ca_file`]); none when no upstream names one. Sorted by Secret and
/// key, so the order of the upstreams does not change the pod template.
fn pool_ca_volume(pool: &StratumPool) -> Option<Volume> {
    let mut keys: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for r in pool
        .spec
        .upstreams
        .iter()
        .filter_map(|u| u.ca_secret_ref.as_ref())
    {
        keys.entry(&r.name).or_default().insert(&r.key);
    }
    if keys.is_empty() {
        return None;
    }
    let sources = keys
        .into_iter()
        .map(|(name, keys)| VolumeProjection {
            secret: Some(SecretProjection {
                name: name.into(),
                items: Some(
                    keys.into_iter()
                        .map(|key| KeyToPath {
                            key: key.into(),
                            path: format!("{name}/{key}"),
                            ..Default::default()
                        })
                        .collect(),
                ),
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    Some(Volume {
        name: POOL_CA_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str, limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(limit.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Grace period given to a terminating pod: the spec's, or the drain timeout plus a margin.
pub fn termination_grace_period(proxy: &StratumProxy) -> i64 {
    proxy
        .spec
        .termination_grace_period_seconds
        .unwrap_or(i64::from(proxy.spec.drain_timeout_seconds) + GRACE_MARGIN_SECONDS)
}

/// The pod template of both workloads. With a persistent data volume the `data` volume is not
/// in it: the StatefulSet's claim template of that name provides it.
fn pod_template(
    proxy: &StratumProxy,
    pool: &StratumPool,
    config_hash: &str,
    opts: &BuildOptions,
) -> PodTemplateSpec {
    let name = proxy.name_any();
    let s = &proxy.spec;
    let mut pod_labels = s.pod.labels.clone();
    pod_labels.extend(labels(&name));
    // The pod template depends on the Secrets' names only, never on their content: a renewed
    // certificate reaches the pods through their volumes and rolls nothing.
    let pool_ca = pool_ca_volume(pool);
    let mut pod_annotations = s.pod.annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    pod_annotations.insert(
        "kubectl.kubernetes.io/default-container".into(),
        CONTAINER.into(),
    );
    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            s.image
                .clone()
                .unwrap_or_else(|| opts.default_image.clone()),
        ),
        image_pull_policy: s.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ]),
        ports: Some(
            [
                Some(container_port("stratum", s.ports.stratum)),
                s.tls
                    .as_ref()
                    .map(|t| container_port(TLS_PORT_NAME, t.port)),
                Some(container_port("http", s.ports.api)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        env: Some(env(proxy, pool)),
        resources: s.resources.clone(),
        startup_probe: Some(http_probe("/live", 2, 60)),
        readiness_probe: Some(http_probe("/ready", 5, 2)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(
            [
                Some(volume_mount("config", CONFIG_DIR, true)),
                s.tls
                    .as_ref()
                    .map(|_| volume_mount(TLS_VOLUME, TLS_DIR, true)),
                pool_ca
                    .as_ref()
                    .map(|_| volume_mount(POOL_CA_VOLUME, POOL_CA_DIR, true)),
                Some(volume_mount(DATA_VOLUME, DATA_DIR, false)),
                Some(volume_mount("tmp", "/tmp", false)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let config_volume = Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&name),
            items: Some(vec![KeyToPath {
                key: CONFIG_KEY.into(),
                path: CONFIG_KEY.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let data_volume = match &s.data_volume.persistent {
        Some(_) => None,
        None => Some(empty_dir(
            DATA_VOLUME,
            s.data_volume
                .empty_dir
                .as_ref()
                .map_or(DEFAULT_DATA_SIZE_LIMIT, |e| e.size_limit.as_str()),
        )),
    };
    let tls_volume = s.tls.as_ref().map(|t| Volume {
        name: TLS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(t.secret_name.clone()),
            default_mode: Some(TLS_FILE_MODE),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    let volumes = std::iter::once(config_volume)
        .chain(tls_volume)
        .chain(pool_ca)
        .chain(data_volume)
        .chain([empty_dir("tmp", "64Mi")])
        .collect();
    let pod = PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        service_account_name: s.pod.service_account_name.clone(),
        termination_grace_period_seconds: Some(termination_grace_period(proxy)),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(volumes),
        node_selector: (!s.pod.node_selector.is_empty()).then(|| s.pod.node_selector.clone()),
        tolerations: (!s.pod.tolerations.is_empty()).then(|| s.pod.tolerations.clone()),
        affinity: s.pod.affinity.clone(),
        topology_spread_constraints: (!s.pod.topology_spread_constraints.is_empty())
            .then(|| s.pod.topology_spread_constraints.clone()),
        priority_class_name: s.pod.priority_class_name.clone(),
        image_pull_secrets: (!s.pod.image_pull_secrets.is_empty())
            .then(|| s.pod.image_pull_secrets.clone()),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(pod),
    }
}

fn deployment(proxy: &StratumProxy, template: PodTemplateSpec) -> Deployment {
    let name = proxy.name_any();
    let s = &proxy.spec;
    Deployment {
        metadata: meta(proxy, name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            revision_history_limit: Some(5),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            ..Default::default()
        }),
        status: None,
    }
}

/// The StatefulSet of a proxy with a persistent data volume: the same pod template as the
/// Deployment, and one claim `data` per pod mounted at [`DATA_DIR`]. Pods start and stop in
/// parallel (they share nothing); updates replace them one at a time, each pod stopping
/// (draining) before its replacement, which gets the same claim, starts.
fn stateful_set(
    proxy: &StratumProxy,
    template: PodTemplateSpec,
    data: &PersistentDataVolume,
) -> StatefulSet {
    let name = proxy.name_any();
    let retention = &data.claim_retention_policy;
    // The API server refuses any change to a StatefulSet's claim templates, so this one holds
    // only the spec's fixed settings (the CRD forbids changing them) and labels that cannot
    // change either (the selector's).
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(&name)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(
                data.access_modes
                    .iter()
                    .map(|m| m.as_str().to_string())
                    .collect(),
            ),
            storage_class_name: data.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(data.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    StatefulSet {
        metadata: meta(proxy, name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(proxy.spec.replicas),
            revision_history_limit: Some(5),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            service_name: Some(headless_service_name(&name)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.when_deleted.as_str().into()),
                    when_scaled: Some(retention.when_scaled.as_str().into()),
                },
            ),
            volume_claim_templates: Some(vec![claim]),
            template,
            ..Default::default()
        }),
        status: None,
    }
}

/// The headless Service that governs the StatefulSet (stable DNS names for its pods).
fn headless_service(proxy: &StratumProxy) -> Service {
    let name = proxy.name_any();
    let mut metadata = meta(proxy, headless_service_name(&name));
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("loka.io/service".into(), "headless".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(
                [
                    Some(service_port("stratum", proxy.spec.ports.stratum, None)),
                    proxy
                        .spec
                        .tls
                        .as_ref()
                        .map(|t| service_port(TLS_PORT_NAME, t.port, None)),
                    Some(service_port("http", proxy.spec.ports.api, None)),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// A TCP Service port targeting the container port of the same name.
fn service_port(name: &str, port: i32, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        node_port,
        ..Default::default()
    }
}

fn stratum_service(proxy: &StratumProxy) -> Service {
    let name = proxy.name_any();
    let svc = &proxy.spec.service;
    let mut metadata = meta(proxy, name.clone());
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("loka.io/service".into(), "stratum".into());
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    let lb = svc.type_ == ServiceType::LoadBalancer;
    let node_ports = svc.type_ != ServiceType::ClusterIP;
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(&name)),
            ports: Some(
                [
                    Some(service_port(
                        "stratum",
                        proxy.spec.ports.stratum,
                        svc.node_port.filter(|_| node_ports),
                    )),
                    proxy.spec.tls.as_ref().map(|t| {
                        service_port(
                            TLS_PORT_NAME,
                            t.port,
                            svc.tls_node_port.filter(|_| node_ports),
                        )
                    }),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            // Keep the miners' own addresses: the proxy limits and accounts per IP.
            external_traffic_policy: lb.then(|| "Local".into()),
            load_balancer_source_ranges: (lb && !svc.load_balancer_source_ranges.is_empty())
                .then(|| svc.load_balancer_source_ranges.clone()),
            load_balancer_class: svc.load_balancer_class.clone().filter(|_| lb),
            ..Default::default()
        }),
        status: None,
    }
}

fn api_service(proxy: &StratumProxy) -> Service {
    let name = proxy.name_any();
    let mut metadata = meta(proxy, api_service_name(&name));
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("loka.io/service".into(), "api".into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![service_port("http", proxy.spec.ports.api, None)]),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_disruption_budget(proxy: &StratumProxy) -> PodDisruptionBudget {
    let name = proxy.name_any();
    PodDisruptionBudget {
        metadata: meta(proxy, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                proxy.spec.pod_disruption_budget.max_unavailable,
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Prometheus Operator's ServiceMonitor resource.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn service_monitor(proxy: &StratumProxy) -> DynamicObject {
    let name = proxy.name_any();
    let sm = &proxy.spec.telemetry.service_monitor;
    let mut metadata = meta(proxy, name.clone());
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .extend(sm.labels.clone());
    let mut match_labels = selector_labels(&name);
    match_labels.insert("loka.io/service".into(), "api".into());
    let mut obj = DynamicObject::new(&name, &service_monitor_resource());
    obj.metadata = metadata;
    obj.data = serde_json::json!({
        "spec": {
            "selector": { "matchLabels": match_labels },
            "endpoints": [{
                "port": "http",
                "path": "/metrics/prometheus",
                "interval": sm.interval,
            }],
        }
    });
    obj
}

/// Endpoints miners and scrapers use, from the proxy and (when applied) its Stratum Service.
pub fn endpoints(proxy: &StratumProxy, stratum_service: Option<&Service>) -> Vec<Endpoint> {
    let name = proxy.name_any();
    let ns = proxy.namespace().unwrap_or_default();
    let tls_port = proxy.spec.tls.as_ref().map(|t| t.port);
    let mut out = vec![Endpoint {
        name: "stratum".into(),
        url: format!("stratum+tcp://{name}.{ns}.svc:{}", proxy.spec.ports.stratum),
    }];
    if let Some(port) = tls_port {
        out.push(Endpoint {
            name: "stratum-tls".into(),
            url: format!("stratum+ssl://{name}.{ns}.svc:{port}"),
        });
    }
    let ingress = stratum_service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten();
    for ing in ingress {
        if let Some(host) = ing.ip.as_ref().or(ing.hostname.as_ref()) {
            out.push(Endpoint {
                name: "stratum-external".into(),
                url: format!("stratum+tcp://{host}:{}", proxy.spec.ports.stratum),
            });
            if let Some(port) = tls_port {
                out.push(Endpoint {
                    name: "stratum-tls-external".into(),
                    url: format!("stratum+ssl://{host}:{port}"),
                });
            }
        }
    }
    out.push(Endpoint {
        name: "api".into(),
        url: format!(
            "http://{}.{ns}.svc:{}",
            api_service_name(&name),
            proxy.spec.ports.api
        ),
    });
    out
}
