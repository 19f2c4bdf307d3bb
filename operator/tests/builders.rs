//! Builders: golden YAML of every object built from the fixtures in `tests/fixtures/<case>/`,
//! plus the properties the proxy depends on.
//!
//! `UPDATE_GOLDEN=1 cargo test -p loka-operator --test builders` rewrites `tests/golden/`.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use loka_config::Config;
use loka_operator::controller::build::{self, BuildOptions, Objects, Workload};
use loka_operator::controller::validate::validate;
use loka_operator::crd::{
    AccessMode, ClaimRetentionPolicy, DataVolume, EmptyDirDataVolume, Retention, StratumPool,
    StratumProxy,
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
    assert_eq!(volume_names(pod(&o.workload)), ["config", "tmp"]);
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
