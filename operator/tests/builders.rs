//! Builders: golden YAML of every object built from the fixtures in `tests/fixtures/<case>/`,
//! plus the properties the proxy depends on.
//!
//! `UPDATE_GOLDEN=1 cargo test -p loka-operator --test builders` rewrites `tests/golden/`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServicePort, Volume};
use loka_config::Config;
use loka_operator::controller::build::{self, BuildOptions, Objects, Workload};
use loka_operator::controller::validate::validate;
use loka_operator::crd::{
    AccessMode, ClaimRetentionPolicy, DataVolume, EmptyDirDataVolume, Retention, SecretKeyRef,
    ServiceType, StratumPool, StratumProxy, TlsListener,
};
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixture(case: &str) -> (StratumProxy, StratumPool) {
    let read =
        |f: &str| std::fs::read_to_string(dir().join("fixtures").join(case).join(f)).unwrap();
    (
        serde_yaml::from_str(&read("proxy.yaml")).unwrap(),
        serde_yaml::from_str(&read("pool.yaml")).unwrap(),
    )
}

fn opts(service_monitor_api: bool) -> BuildOptions {
    BuildOptions {
        default_image: "ghcr.io/loka-stratum/loka-proxy:0.1.0".into(),
        service_monitor_api,
    }
}

fn objects(case: &str, service_monitor_api: bool) -> Objects {
    let (proxy, pool) = fixture(case);
    let config = validate(&proxy, &pool).expect("fixture is valid");
    build::build(&proxy, &pool, &config, &opts(service_monitor_api))
}

/// Stands in for the proxy configuration text in golden files: that text is
/// `loka_config::Config::to_toml()`, which changes whenever the shared config crate gains a
/// field, so it is pinned by `configmap_is_what_the_proxy_reads` and `config_follows_the_pool`
/// instead.
const CONFIG_PLACEHOLDER: &str = "<loka_config::Config::to_toml()>";
const HASH_PLACEHOLDER: &str = "<sha256 of loka.toml>";

/// All objects as one multi-document YAML stream, in apply order.
fn render(o: &Objects) -> String {
    let mut config_map = serde_json::to_value(&o.config_map).unwrap();
    config_map["data"][build::CONFIG_KEY] = CONFIG_PLACEHOLDER.into();
    let mut workload = match &o.workload {
        Workload::Deployment(d) => serde_json::to_value(d).unwrap(),
        Workload::StatefulSet(s) => serde_json::to_value(s).unwrap(),
    };
    workload["spec"]["template"]["metadata"]["annotations"][build::CONFIG_HASH_ANNOTATION] =
        HASH_PLACEHOLDER.into();
    let mut docs: Vec<Value> = vec![config_map];
    if let Some(headless) = &o.headless_service {
        docs.push(serde_json::to_value(headless).unwrap());
    }
    docs.extend([
        workload,
        serde_json::to_value(&o.stratum_service).unwrap(),
        serde_json::to_value(&o.api_service).unwrap(),
    ]);
    if let Some(pdb) = &o.pod_disruption_budget {
        docs.push(serde_json::to_value(pdb).unwrap());
    }
    if let Some(sm) = &o.service_monitor {
        docs.push(serde_json::to_value(sm).unwrap());
    }
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect()
}

fn check_golden(name: &str, text: &str) {
    let path = dir().join("golden").join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    pretty_assertions::assert_eq!(
        want,
        text,
        "{} is stale: UPDATE_GOLDEN=1 cargo test -p loka-operator --test builders",
        path.display()
    );
}

#[test]
fn golden_basic() {
    check_golden("basic", &render(&objects("basic", false)));
}

#[test]
fn golden_full() {
    check_golden("full", &render(&objects("full", true)));
}

#[test]
fn golden_persistent() {
    check_golden("persistent", &render(&objects("persistent", false)));
}

#[test]
fn configmap_is_what_the_proxy_reads() {
    for case in ["basic", "full", "persistent"] {
        let (proxy, pool) = fixture(case);
        let config = validate(&proxy, &pool).unwrap();
        let o = build::build(&proxy, &pool, &config, &opts(true));
        let text = &o.config_map.data.as_ref().unwrap()[build::CONFIG_KEY];
        let read = Config::from_toml(text).unwrap();
        assert_eq!(read, config);
        read.validate().unwrap();
        assert_eq!(o.config_hash, build::sha256_hex(text));
    }
}

#[test]
fn config_follows_the_pool() {
    let (proxy, pool) = fixture("full");
    let c = validate(&proxy, &pool).unwrap();
    assert_eq!(c.mining.mode, loka_config::Mode::Passthrough);
    assert!(c.mining.forward_worker_names);
    // Failover order: priority, then list order.
    let names: Vec<_> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["primary", "primary-eu", "backup"]);
    assert_eq!(c.pools[2].username, "farm1-backup");
    assert_eq!(
        c.pools[2].password_env.as_deref(),
        Some("LOKA_POOL_PASSWORD_BACKUP")
    );
    assert_eq!(
        c.pools[0].password_env.as_deref(),
        Some("LOKA_POOL_PASSWORD")
    );
    assert!(c.pools.iter().all(|p| p.password.is_none()));
    assert_eq!(c.vardiff.min_difficulty.to_string(), "0.001");
    assert_eq!(c.server.port, 3334);
    assert_eq!(c.api.port, 9091);
    assert_eq!(c.server.drain_timeout.as_secs(), 45);
    assert_eq!(c.server.max_connections, 50000);
    assert!(
        c.storage.database_url.is_empty(),
        "the URL comes from DATABASE_URL"
    );
    assert_eq!(c.storage.acknowledge, loka_config::AckPolicy::Durable);
    assert_eq!(c.storage.writer_nice, 5);
    let (proxy, pool) = fixture("basic");
    let basic = validate(&proxy, &pool).unwrap();
    assert_eq!(basic.storage.acknowledge, loka_config::AckPolicy::Validated);
    assert_eq!(basic.storage.writer_nice, 10, "the proxy's default");
}

fn pod(w: &Workload) -> &PodSpec {
    w.template().unwrap().spec.as_ref().unwrap()
}

#[test]
fn deployment_is_locked_down() {
    let o = objects("basic", false);
    let p = pod(&o.workload);
    let c = &p.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let psc = p.security_context.as_ref().unwrap();
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(p.automount_service_account_token, Some(false));
    // Grace period exceeds the drain timeout (20 s default).
    assert_eq!(p.termination_grace_period_seconds, Some(30));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&c.readiness_probe), "/ready");
    assert_eq!(probe_path(&c.liveness_probe), "/live");
    let ports: Vec<_> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [3333, 9090]);
    // Secrets only by reference.
    for e in c.env.as_ref().unwrap() {
        assert!(e.value.is_none() || !e.name.contains("PASSWORD"), "{e:?}");
    }
}

#[test]
fn config_change_rolls_the_pods() {
    let (proxy, mut pool) = fixture("basic");
    let hash = |pool: &StratumPool| {
        let c = validate(&proxy, pool).unwrap();
        let o = build::build(&proxy, pool, &c, &opts(false));
        o.workload
            .template()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[build::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let before = hash(&pool);
    assert_eq!(before, hash(&pool), "deterministic");
    pool.spec.vardiff.initial_difficulty = 1024.0;
    assert_ne!(before, hash(&pool));
}

#[test]
fn load_balancer_keeps_miner_addresses() {
    let full = objects("full", true);
    let spec = full.stratum_service.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    let basic = objects("basic", false);
    let spec = basic.stratum_service.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.external_traffic_policy, None);
}

#[test]
fn service_monitor_only_with_the_api() {
    assert!(objects("full", true).service_monitor.is_some());
    assert!(objects("full", false).service_monitor.is_none());
    let (mut proxy, pool) = fixture("full");
    proxy.spec.telemetry.service_monitor.enabled = false;
    let c = validate(&proxy, &pool).unwrap();
    assert!(
        build::build(&proxy, &pool, &c, &opts(true))
            .service_monitor
            .is_none()
    );
}

#[test]
fn everything_is_owned_by_the_proxy() {
    let o = objects("full", true);
    let metas = [
        &o.config_map.metadata,
        o.workload.metadata(),
        &o.stratum_service.metadata,
        &o.api_service.metadata,
        &o.pod_disruption_budget.as_ref().unwrap().metadata,
        &o.service_monitor.as_ref().unwrap().metadata,
    ];
    for m in metas {
        let refs = m.owner_references.as_ref().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].kind, "StratumProxy");
        assert_eq!(refs[0].name, "edge");
        assert_eq!(refs[0].uid, "6f1c0c9e-0000-4000-8000-000000000012");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(m.namespace.as_deref(), Some("mining"));
    }
}

#[test]
fn invalid_pool_names_every_problem() {
    let (proxy, mut pool) = fixture("basic");
    pool.spec.upstreams[0].port = 0;
    pool.spec.account = String::new();
    let errs = validate(&proxy, &pool).unwrap_err();
    assert!(
        errs.iter().any(|e| e.starts_with("pools[0].port")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("pools[0].username")),
        "{errs:?}"
    );
}

/// A writerNice outside 0..=19 (admitted by an older CRD, or with the schema bypassed) is
/// refused by name, not wrapped or clamped.
#[test]
fn an_out_of_range_writer_nice_is_named() {
    for bad in [-1, 20, 1_000] {
        let (mut proxy, pool) = fixture("basic");
        proxy.spec.writer_nice = Some(bad);
        let errs = validate(&proxy, &pool).unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with("storage.writer_nice")),
            "{bad}: {errs:?}"
        );
    }
}

/// The example farm in `manifests/examples/farm` (what the README and the GitOps examples
/// apply) decodes into the CRD types, validates, and builds the proxies' StatefulSet (it keeps
/// its spool on a claim per pod, as durable acknowledgement wants).
#[test]
fn the_example_farm_is_valid() {
    let farm = dir().join("../../manifests/examples/farm");
    let read = |f: &str| std::fs::read_to_string(farm.join(f)).unwrap();
    let proxy: StratumProxy = serde_yaml::from_str(&read("proxy.yaml")).unwrap();
    let pool: StratumPool = serde_yaml::from_str(&read("pool.yaml")).unwrap();
    let config = validate(&proxy, &pool).expect("the example is valid");
    assert_eq!(config.pools.len(), 2);
    let objects = build::build(&proxy, &pool, &config, &opts(true));
    let sts = stateful_set(&objects);
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        claim_size(sts),
        proxy.spec.data_volume.persistent.as_ref().unwrap().size
    );
}

fn stateful_set(o: &Objects) -> &StatefulSet {
    match &o.workload {
        Workload::StatefulSet(s) => s,
        Workload::Deployment(_) => panic!("expected a StatefulSet"),
    }
}

fn claim_size(sts: &StatefulSet) -> String {
    let claims = sts
        .spec
        .as_ref()
        .unwrap()
        .volume_claim_templates
        .as_ref()
        .unwrap();
    claims[0]
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"]
        .0
        .clone()
}

fn volume_names(p: &PodSpec) -> Vec<&str> {
    p.volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect()
}

/// The default data volume is the Deployment's emptyDir of 1Gi, and `emptyDir.sizeLimit`
/// sets its limit; no StatefulSet or headless Service.
#[test]
fn the_default_data_volume_is_an_empty_dir() {
    let o = objects("basic", false);
    assert!(matches!(o.workload, Workload::Deployment(_)));
    assert!(o.headless_service.is_none());
    let data = |o: &Objects| {
        pod(&o.workload)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == build::DATA_VOLUME)
            .and_then(|v| v.empty_dir.as_ref())
            .and_then(|e| e.size_limit.as_ref())
            .map(|q| q.0.clone())
    };
    assert_eq!(data(&o).as_deref(), Some("1Gi"));
    let (mut proxy, pool) = fixture("basic");
    proxy.spec.data_volume = DataVolume {
        empty_dir: Some(EmptyDirDataVolume {
            size_limit: "5Gi".into(),
        }),
        persistent: None,
    };
    let c = validate(&proxy, &pool).unwrap();
    let o = build::build(&proxy, &pool, &c, &opts(false));
    assert_eq!(data(&o).as_deref(), Some("5Gi"));
}

/// With a persistent data volume the pods are the Deployment's pods, run by a StatefulSet: the
/// same template except that the `data` volume comes from a claim template, mounted at the
/// same place.
#[test]
fn a_persistent_data_volume_makes_a_stateful_set_of_the_same_pods() {
    let (proxy, pool) = fixture("persistent");
    let config = validate(&proxy, &pool).unwrap();
    let o = build::build(&proxy, &pool, &config, &opts(false));
    let mut as_deployment = proxy.clone();
    as_deployment.spec.data_volume = DataVolume::default();
    let d = build::build(&as_deployment, &pool, &config, &opts(false));
    assert!(matches!(d.workload, Workload::Deployment(_)));
    assert_eq!(o.config_hash, d.config_hash);

    let sts = stateful_set(&o);
    let spec = sts.spec.as_ref().unwrap();
    // Same labels, annotations (config hash included), containers and security; only the
    // data volume differs.
    let (mut want, got) = (d.workload.template().unwrap().clone(), &spec.template);
    want.spec
        .as_mut()
        .unwrap()
        .volumes
        .as_mut()
        .unwrap()
        .retain(|v| v.name != build::DATA_VOLUME);
    assert_eq!(&want, got);
    assert_eq!(volume_names(pod(&o.workload)), ["config", "tls", "tmp"]);
    let mount = pod(&o.workload).containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == build::DATA_VOLUME)
        .unwrap();
    assert_eq!(mount.mount_path, build::DATA_DIR);
    assert_eq!(mount.read_only, None);

    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.selector.match_labels,
        Some(build::selector_labels("edge"))
    );
    assert_eq!(spec.service_name.as_deref(), Some("edge-headless"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some(build::DATA_VOLUME));
    let claim = claims[0].spec.as_ref().unwrap();
    assert_eq!(
        claim.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    assert_eq!(claim.storage_class_name.as_deref(), Some("standard"));
    assert_eq!(claim_size(sts), "10Gi");
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));

    // The governing Service: headless, selecting the same pods, not scraped (the
    // ServiceMonitor selects `loka.io/service: api`).
    let headless: &Service = o.headless_service.as_ref().unwrap();
    assert_eq!(headless.metadata.name.as_deref(), Some("edge-headless"));
    assert_eq!(
        headless.metadata.labels.as_ref().unwrap()["loka.io/service"],
        "headless"
    );
    let hs = headless.spec.as_ref().unwrap();
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.selector, Some(build::selector_labels("edge")));
    for m in [&sts.metadata, &headless.metadata] {
        let refs = m.owner_references.as_ref().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].uid, "6f1c0c9e-0000-4000-8000-000000000022");
        assert_eq!(refs[0].controller, Some(true));
    }
}

#[test]
fn claim_settings_reach_the_stateful_set() {
    let (mut proxy, pool) = fixture("persistent");
    let data = proxy.spec.data_volume.persistent.as_mut().unwrap();
    data.storage_class_name = None;
    data.access_modes = vec![AccessMode::ReadWriteOncePod];
    data.claim_retention_policy = ClaimRetentionPolicy {
        when_deleted: Retention::Delete,
        when_scaled: Retention::Delete,
    };
    let c = validate(&proxy, &pool).unwrap();
    let o = build::build(&proxy, &pool, &c, &opts(false));
    let spec = stateful_set(&o).spec.as_ref().unwrap();
    let claim = spec.volume_claim_templates.as_ref().unwrap()[0]
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        claim.storage_class_name, None,
        "the cluster's default class"
    );
    assert_eq!(
        claim.access_modes.as_deref(),
        Some(&["ReadWriteOncePod".to_string()][..])
    );
    let retention = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
    assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
}

/// Data volume settings the CRD would refuse (admitted by an older CRD, or with the schema
/// bypassed) are named, not built.
#[test]
fn bad_data_volumes_are_named() {
    let case = |edit: fn(&mut StratumProxy), want: &str| {
        let (mut proxy, pool) = fixture("persistent");
        edit(&mut proxy);
        let errs = validate(&proxy, &pool).unwrap_err();
        assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
    };
    case(
        |p| p.spec.data_volume.empty_dir = Some(EmptyDirDataVolume::default()),
        "dataVolume: takes emptyDir or persistent, not both",
    );
    case(
        |p| p.spec.data_volume.persistent.as_mut().unwrap().size = "ten gigs".into(),
        "dataVolume.persistent.size: \"ten gigs\"",
    );
    case(
        |p| {
            p.spec
                .data_volume
                .persistent
                .as_mut()
                .unwrap()
                .access_modes
                .clear()
        },
        "dataVolume.persistent.accessModes",
    );
    case(
        |p| {
            p.spec.data_volume.persistent = None;
            p.spec.data_volume.empty_dir = Some(EmptyDirDataVolume {
                size_limit: "0".into(),
            });
        },
        "dataVolume.emptyDir.sizeLimit: \"0\"",
    );
    // A StatefulSet's pods need a name of at most 52 characters; a Deployment's do not.
    case(|p| p.metadata.name = Some("a".repeat(53)), "metadata.name");
    let (mut proxy, pool) = fixture("persistent");
    proxy.metadata.name = Some("a".repeat(52));
    validate(&proxy, &pool).unwrap();
    proxy.metadata.name = Some("a".repeat(53));
    proxy.spec.data_volume = DataVolume::default();
    validate(&proxy, &pool).unwrap();
}

fn container(o: &Objects) -> &Container {
    &pod(&o.workload).containers[0]
}

fn volume<'a>(o: &'a Objects, name: &str) -> Option<&'a Volume> {
    pod(&o.workload)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
}

fn service_port<'a>(svc: &'a Service, name: &str) -> Option<&'a ServicePort> {
    svc.spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
}

/// The configuration as the proxy reads it from the ConfigMap.
fn config_map_config(o: &Objects) -> Config {
    Config::from_toml(&o.config_map.data.as_ref().unwrap()[build::CONFIG_KEY]).unwrap()
}

/// `spec.tls`: the whole Secret mounted read-only at /etc/loka-tls (no subPath, so a renewed
/// certificate reaches the running pod), `[server.tls]` in the ConfigMap naming its two files,
/// and the `stratum-tls` port on the container and the Stratum Service.
#[test]
fn tls_mounts_the_secret_and_configures_the_listener() {
    let o = objects("full", true);
    let tls = volume(&o, build::TLS_VOLUME).unwrap();
    let secret = tls.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("edge-tls"));
    assert_eq!(secret.items, None, "the whole Secret, every key");
    assert_eq!(secret.default_mode, Some(0o440));
    let c = container(&o);
    let mounts: Vec<_> = c.volume_mounts.iter().flatten().collect();
    let mount = mounts.iter().find(|m| m.name == build::TLS_VOLUME).unwrap();
    assert_eq!(mount.mount_path, "/etc/loka-tls");
    assert_eq!(mount.read_only, Some(true));
    assert!(
        mounts
            .iter()
            .all(|m| m.sub_path.is_none() && m.sub_path_expr.is_none())
    );

    let read = config_map_config(&o);
    let listener = read.server.tls.as_ref().unwrap();
    assert_eq!(listener.port, 3335);
    assert_eq!(listener.cert_file, "/etc/loka-tls/tls.crt");
    assert_eq!(listener.key_file, "/etc/loka-tls/tls.key");
    assert_eq!(listener.reload_interval.as_secs(), 60);
    assert_eq!(
        listener.handshake_timeout.as_secs(),
        10,
        "the proxy's default"
    );
    assert_eq!(read.server.port, 3334, "the plain port stays");
    let text = &o.config_map.data.as_ref().unwrap()[build::CONFIG_KEY];
    assert!(text.contains("[server.tls]"), "{text}");

    let ports: Vec<_> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("stratum", 3334), ("stratum-tls", 3335), ("http", 9091)]
    );
    let svc_port = service_port(&o.stratum_service, "stratum-tls").unwrap();
    assert_eq!(svc_port.port, 3335);
    assert_eq!(
        svc_port.target_port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("stratum-tls".into())
        )
    );
    assert_eq!(svc_port.protocol.as_deref(), Some("TCP"));
    assert!(service_port(&o.api_service, "stratum-tls").is_none());

    // The persistent fixture: the default port, the proxy's reload interval, and the port on
    // the headless Service too.
    let o = objects("persistent", false);
    let listener = config_map_config(&o).server.tls.unwrap();
    assert_eq!(listener.port, 3334);
    assert_eq!(listener.reload_interval.as_secs(), 30);
    let headless = o.headless_service.as_ref().unwrap();
    assert_eq!(service_port(headless, "stratum-tls").unwrap().port, 3334);
    assert_eq!(
        service_port(&o.stratum_service, "stratum-tls")
            .unwrap()
            .port,
        3334
    );

    // Without tls: no volume, no port, no [server.tls].
    let o = objects("basic", false);
    assert!(volume(&o, build::TLS_VOLUME).is_none());
    assert!(service_port(&o.stratum_service, "stratum-tls").is_none());
    assert!(config_map_config(&o).server.tls.is_none());
}

/// The TLS endpoints in the status: in-cluster, and beside each load-balancer address.
#[test]
fn tls_endpoints() {
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
    let (proxy, _) = fixture("full");
    let mut svc = objects("full", false).stratum_service;
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("198.51.100.7".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    let got: Vec<_> = build::endpoints(&proxy, Some(&svc))
        .into_iter()
        .map(|e| (e.name, e.url))
        .collect();
    let want = [
        ("stratum", "stratum+tcp://edge.mining.svc:3334"),
        ("stratum-tls", "stratum+ssl://edge.mining.svc:3335"),
        ("stratum-external", "stratum+tcp://198.51.100.7:3334"),
        ("stratum-tls-external", "stratum+ssl://198.51.100.7:3335"),
        ("api", "http://edge-api.mining.svc:9091"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(n, u)| (n.to_string(), u.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// `service.tlsNodePort` goes on the TLS port as `service.nodePort` goes on the plain one:
/// only for NodePort and LoadBalancer Services.
#[test]
fn the_tls_node_port_follows_the_service_type() {
    let (mut proxy, pool) = fixture("full");
    proxy.spec.service.node_port = Some(30333);
    proxy.spec.service.tls_node_port = Some(30334);
    let node_ports = |proxy: &StratumProxy| {
        let c = validate(proxy, &pool).unwrap();
        let o = build::build(proxy, &pool, &c, &opts(false));
        (
            service_port(&o.stratum_service, "stratum")
                .unwrap()
                .node_port,
            service_port(&o.stratum_service, "stratum-tls")
                .unwrap()
                .node_port,
        )
    };
    for t in [ServiceType::NodePort, ServiceType::LoadBalancer] {
        proxy.spec.service.type_ = t;
        assert_eq!(node_ports(&proxy), (Some(30333), Some(30334)), "{t:?}");
    }
    proxy.spec.service.type_ = ServiceType::ClusterIP;
    proxy.spec.service.load_balancer_source_ranges.clear();
    assert_eq!(node_ports(&proxy), (None, None));
}

/// The pod template depends on the TLS Secret's name only: the builders take no Secret, so a
/// renewed certificate (new content, same name) builds the same objects and rolls nothing.
/// Another Secret name changes the volume (the pods must mount the other Secret) but not the
/// proxy configuration.
#[test]
fn the_pod_template_names_the_secret_and_nothing_else() {
    let (mut proxy, pool) = fixture("full");
    let build = |proxy: &StratumProxy| {
        let c = validate(proxy, &pool).unwrap();
        build::build(proxy, &pool, &c, &opts(true))
    };
    let first = build(&proxy);
    assert_eq!(first, build(&proxy));
    let template = serde_json::to_string(first.workload.template().unwrap()).unwrap();
    assert_eq!(template.matches("edge-tls").count(), 1, "{template}");
    proxy.spec.tls.as_mut().unwrap().secret_name = "edge-tls-2".into();
    let renamed = build(&proxy);
    assert_eq!(renamed.config_hash, first.config_hash);
    assert_eq!(renamed.config_map, first.config_map);
    let mut back = renamed.workload.template().unwrap().clone();
    let vols = back.spec.as_mut().unwrap().volumes.as_mut().unwrap();
    let secret = vols
        .iter_mut()
        .find(|v| v.name == build::TLS_VOLUME)
        .and_then(|v| v.secret.as_mut())
        .unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("edge-tls-2"));
    secret.secret_name = Some("edge-tls".into());
    assert_eq!(&back, first.workload.template().unwrap());
}

/// Upstream TLS settings reach the pools of the ConfigMap's configuration, a `caSecretRef` as
/// the path of its key in the projected `pool-ca` volume.
#[test]
fn pool_tls_reaches_the_config_map() {
    let o = objects("full", true);
    let read = config_map_config(&o);
    let by_name = |n: &str| read.pools.iter().find(|p| p.name == n).unwrap();
    let primary = by_name("primary");
    assert!(!primary.tls);
    assert_eq!(
        (&primary.tls_ca_file, &primary.tls_fingerprint),
        (&None, &None)
    );
    let eu = by_name("primary-eu");
    assert!(eu.tls);
    assert_eq!(eu.tls_ca_file, None);
    assert_eq!(
        eu.tls_fingerprint.as_deref(),
        Some(
            "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08"
        )
    );
    assert!(eu.tls_fingerprint_bytes().is_some());
    let backup = by_name("backup");
    assert!(backup.tls);
    assert_eq!(
        backup.tls_ca_file.as_deref(),
        Some("/etc/loka-pool-ca/backup-pool-ca/ca.crt")
    );
    assert_eq!(backup.tls_fingerprint, None);
    let text = &o.config_map.data.as_ref().unwrap()[build::CONFIG_KEY];
    assert!(
        text.contains("tls_ca_file = \"/etc/loka-pool-ca/backup-pool-ca/ca.crt\""),
        "{text}"
    );

    let projected = volume(&o, build::POOL_CA_VOLUME)
        .unwrap()
        .projected
        .as_ref()
        .unwrap();
    let sources = projected.sources.as_ref().unwrap();
    assert_eq!(sources.len(), 1);
    let secret = sources[0].secret.as_ref().unwrap();
    assert_eq!(secret.name, "backup-pool-ca");
    let items = secret.items.as_ref().unwrap();
    assert_eq!(
        (items[0].key.as_str(), items[0].path.as_str()),
        ("ca.crt", "backup-pool-ca/ca.crt")
    );
    let mount = container(&o)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == build::POOL_CA_VOLUME)
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/etc/loka-pool-ca", Some(true))
    );
    assert!(volume(&objects("basic", false), build::POOL_CA_VOLUME).is_none());
}

/// CA references: one projected source per Secret, each key once, sorted; the order of the
/// upstreams does not change the pod template.
#[test]
fn pool_ca_keys_are_grouped_by_secret() {
    let (proxy, mut pool) = fixture("full");
    let r = |name: &str, key: &str| {
        Some(SecretKeyRef {
            name: name.into(),
            key: key.into(),
        })
    };
    for u in &mut pool.spec.upstreams {
        u.tls = true;
    }
    pool.spec.upstreams[0].ca_secret_ref = r("zeta-ca", "ca.crt");
    pool.spec.upstreams[1].ca_secret_ref = r("alpha-ca", "b.pem");
    pool.spec.upstreams[2].ca_secret_ref = r("alpha-ca", "a.pem");
    let sources = |pool: &StratumPool| {
        let c = validate(&proxy, pool).unwrap();
        let o = build::build(&proxy, pool, &c, &opts(false));
        let v = volume(&o, build::POOL_CA_VOLUME).unwrap().clone();
        let paths: Vec<Vec<String>> = v
            .projected
            .as_ref()
            .unwrap()
            .sources
            .iter()
            .flatten()
            .map(|s| {
                let s = s.secret.as_ref().unwrap();
                s.items.iter().flatten().map(|i| i.path.clone()).collect()
            })
            .collect();
        (paths, o.workload.template().unwrap().spec.clone())
    };
    let (paths, _) = sources(&pool);
    assert_eq!(
        paths,
        [
            vec!["alpha-ca/a.pem".to_string(), "alpha-ca/b.pem".to_string()],
            vec!["zeta-ca/ca.crt".to_string()],
        ]
    );
    // The same key for two upstreams is mounted once.
    pool.spec.upstreams[0].ca_secret_ref = r("alpha-ca", "a.pem");
    let (paths, before) = sources(&pool);
    assert_eq!(
        paths,
        [vec![
            "alpha-ca/a.pem".to_string(),
            "alpha-ca/b.pem".to_string()
        ]]
    );
    pool.spec.upstreams.reverse();
    assert_eq!(sources(&pool).1, before);
}

/// TLS settings the CRD would refuse (admitted by an older CRD, or with the schema bypassed)
/// are named, not built.
#[test]
fn bad_tls_settings_are_named() {
    let case = |edit: &dyn Fn(&mut StratumProxy, &mut StratumPool), want: &str| {
        let (mut proxy, mut pool) = fixture("full");
        edit(&mut proxy, &mut pool);
        let errs = validate(&proxy, &pool).unwrap_err();
        assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
    };
    for port in [0, -1, 65_536] {
        case(&|p, _| tls(p).port = port, "tls.port");
    }
    case(
        &|p, _| tls(p).port = 3334,
        "server.tls.port: 3334 is also server.port",
    );
    case(
        &|p, _| tls(p).port = 9091,
        "server.tls.port: 9091 is also api.port",
    );
    case(&|p, _| tls(p).secret_name = String::new(), "tls.secretName");
    case(
        &|p, _| tls(p).secret_name = "Edge_TLS".into(),
        "tls.secretName",
    );
    case(
        &|p, _| tls(p).reload_interval_seconds = Some(0),
        "tls.reloadIntervalSeconds",
    );
    case(
        &|_, pool| pool.spec.upstreams[0].ca_secret_ref.as_mut().unwrap().key = "a/b".into(),
        "upstreams[0].caSecretRef.key: \"a/b\"",
    );
    case(
        &|_, pool| pool.spec.upstreams[0].ca_secret_ref.as_mut().unwrap().name = "..".into(),
        "upstreams[0].caSecretRef.name",
    );
    // Failover order: backup (priority 10) is pools[2], primary-eu pools[1].
    case(
        &|_, pool| pool.spec.upstreams[0].tls = false,
        "pools[2].tls: tls_ca_file and tls_fingerprint need tls = true",
    );
    case(
        &|_, pool| pool.spec.upstreams[2].tls_fingerprint = Some("9f86".into()),
        "pools[1].tls_fingerprint",
    );
}

fn tls(p: &mut StratumProxy) -> &mut TlsListener {
    p.spec.tls.as_mut().unwrap()
}
