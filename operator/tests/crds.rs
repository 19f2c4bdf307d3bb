//! The checked-in CRDs (`crds/`, and the Helm chart's copy) match the Rust types, and every
//! CEL rule in them is exercised by a test that expects its rejection.
//!
//! `UPDATE_CRDS=1 cargo test -p loka-operator --test crds` rewrites the files.

use kube::core::cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use loka_operator::crd::{crd_file_name, crds, crds_yaml};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files that must hold exactly the generated CRDs.
fn targets() -> Vec<(PathBuf, String)> {
    let mut t: Vec<(PathBuf, String)> = crds()
        .iter()
        .map(|crd| {
            (
                repo().join("crds").join(crd_file_name(crd)),
                serde_yaml::to_string(crd).unwrap(),
            )
        })
        .collect();
    t.push((
        repo().join("charts/loka/templates/crds/crds.yaml"),
        loka_operator::crd::chart_crds_template(),
    ));
    t
}

#[test]
fn checked_in_crds_are_up_to_date() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (path, want) in targets() {
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated files (run `UPDATE_CRDS=1 cargo test -p loka-operator --test crds`): {stale:?}"
    );
}

#[test]
fn crd_command_output_is_the_crds() {
    let text = crds_yaml();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["metadata"]["name"], "stratumpools.loka.io");
    assert_eq!(docs[1]["metadata"]["name"], "stratumproxies.loka.io");
}

/// The openAPIV3Schema of a checked-in CRD (what a cluster would install).
fn schema(file: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("crds").join(file)).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn pool_schema() -> Value {
    schema("stratumpools.loka.io.yaml")
}
fn proxy_schema() -> Value {
    schema("stratumproxies.loka.io.yaml")
}

/// Every `x-kubernetes-validations` entry under a schema node.
fn rules(node: &Value, out: &mut Vec<Value>) {
    match node {
        Value::Object(m) => {
            if let Some(Value::Array(r)) = m.get("x-kubernetes-validations") {
                out.extend(r.iter().cloned());
            }
            m.values().for_each(|v| rules(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| rules(v, out)),
        _ => {}
    }
}

fn all_rules() -> Vec<Value> {
    let mut out = Vec::new();
    rules(&pool_schema(), &mut out);
    rules(&proxy_schema(), &mut out);
    out
}

#[test]
fn rules_use_only_rule_and_message() {
    // Kubernetes 1.26 knows `rule` and `message` only (messageExpression, reason and fieldPath
    // came later).
    for r in all_rules() {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, BTreeSet::from(["message", "rule"]), "{r}");
    }
}

/// Schema nodes that carry rules, for compile and cost checks.
fn rule_nodes(node: &Value, out: &mut Vec<Value>) {
    match node {
        Value::Object(m) => {
            if m.contains_key("x-kubernetes-validations") {
                out.push(node.clone());
            }
            m.values().for_each(|v| rule_nodes(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| rule_nodes(v, out)),
        _ => {}
    }
}

#[test]
fn rules_compile_within_the_cost_budget() {
    let mut nodes = Vec::new();
    rule_nodes(&pool_schema(), &mut nodes);
    rule_nodes(&proxy_schema(), &mut nodes);
    assert!(nodes.len() >= 8);
    for node in nodes {
        let compiled = compile_schema(&node);
        assert!(
            !compiled.has_errors(),
            "{:?}",
            compiled.compilation_errors()
        );
        for r in node["x-kubernetes-validations"].as_array().unwrap() {
            let rule = r["rule"].as_str().unwrap();
            // Scope warnings are skipped: the analyser mistakes comprehension variables
            // (`self.all(u, ...)`) for unknown globals. Cost and bounds are what matter.
            let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| w.kind != WarningKind::WrongScope)
                .collect();
            assert!(warnings.is_empty(), "{rule}: {warnings:?}");
        }
    }
}

/// A SHA-256 fingerprint as `openssl x509 -fingerprint -sha256` prints it.
const FINGERPRINT: &str = "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08";

fn pool() -> Value {
    json!({
        "apiVersion": "loka.io/v1alpha1",
        "kind": "StratumPool",
        "metadata": { "name": "main", "namespace": "mining" },
        "spec": {
            "account": "farm1",
            "passwordSecretRef": { "name": "pool", "key": "password" },
            "upstreams": [
                { "name": "primary", "host": "stratum.pool.example", "port": 3333 },
                { "name": "backup", "host": "10.0.0.7", "port": 443, "priority": 10,
                  "account": "farm1-backup", "tls": true,
                  "caSecretRef": { "name": "backup-ca", "key": "ca.crt" },
                  "tlsFingerprint": FINGERPRINT }
            ],
            "vardiff": { "minDifficulty": 0.001, "initialDifficulty": 512, "maxDifficulty": 65536 }
        }
    })
}

fn proxy() -> Value {
    json!({
        "apiVersion": "loka.io/v1alpha1",
        "kind": "StratumProxy",
        "metadata": { "name": "edge", "namespace": "mining" },
        "spec": {
            "poolRef": { "name": "main" },
            "replicas": 2,
            "service": { "type": "LoadBalancer", "nodePort": 30333, "tlsNodePort": 30334,
                         "loadBalancerSourceRanges": ["10.0.0.0/8"] },
            "tls": { "secretName": "edge-tls" },
            "telemetry": { "otlpEndpoint": "http://otel-collector:4317",
                           "serviceMonitor": { "interval": "15s" } },
            "drainTimeoutSeconds": 30,
            "terminationGracePeriodSeconds": 45,
            "dataVolume": { "persistent": { "size": "10Gi", "storageClassName": "fast" } }
        }
    })
}

fn messages(schema: &Value, obj: &Value) -> Vec<String> {
    update_messages(schema, obj, None)
}

/// Messages for `obj` replacing `old` (transition rules see both).
fn update_messages(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(schema, obj, old) {
        Ok(()) => vec![],
        Err(errs) => errs.iter().map(|e| e.message.clone()).collect(),
    }
}

#[test]
fn valid_samples_pass() {
    assert_eq!(messages(&pool_schema(), &pool()), Vec::<String>::new());
    assert_eq!(messages(&proxy_schema(), &proxy()), Vec::<String>::new());
    // Minimal objects pass once the schema defaults are in.
    let minimal_pool = json!({"spec": {"account": "a",
        "upstreams": [{"name": "p", "host": "h", "port": 1}]}});
    assert_eq!(
        messages(&pool_schema(), &minimal_pool),
        Vec::<String>::new()
    );
    let minimal_proxy = json!({"spec": {"poolRef": {"name": "main"}}});
    assert_eq!(
        messages(&proxy_schema(), &minimal_proxy),
        Vec::<String>::new()
    );
}

/// A change to a valid sample, the rule message it must trigger, and any other message the
/// same change necessarily triggers too. Kind `proxy update` validates the change as an update
/// of the unchanged sample (for transition rules, which only updates trigger).
struct Case {
    kind: &'static str,
    mutate: fn(&mut Value),
    message: &'static str,
    also: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["upstreams"] = json!([]),
            message: "at least one upstream is required",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["upstreams"][1]["name"] = json!("primary"),
            message: "upstream names must be unique",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["upstreams"][0]["name"] = json!("Primary_Pool"),
            message: "upstream name must be a lowercase RFC 1123 label",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["upstreams"][0]["host"] = json!("stratum+tcp://pool.example"),
            message: "host must be a host name or IP address, without scheme or path",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| {
                o["spec"]["vardiff"] =
                    json!({"minDifficulty": 0, "initialDifficulty": 0, "maxDifficulty": 1})
            },
            message: "minDifficulty must be greater than zero",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| {
                o["spec"]["vardiff"] =
                    json!({"minDifficulty": 100, "initialDifficulty": 100, "maxDifficulty": 10})
            },
            message: "minDifficulty must not exceed maxDifficulty",
            also: &["initialDifficulty must lie between minDifficulty and maxDifficulty"],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["vardiff"]["initialDifficulty"] = json!(1_000_000),
            message: "initialDifficulty must lie between minDifficulty and maxDifficulty",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["vardiff"]["targetSharesPerMinute"] = json!(0),
            message: "targetSharesPerMinute must be greater than zero",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["upstreams"][1]["tlsFingerprint"] = json!("9f86d081884c7d65"),
            message: "tlsFingerprint must be a SHA-256 fingerprint: 64 hex digits, or 32 pairs separated by colons",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| {
                o["spec"]["upstreams"][1]["tlsFingerprint"] = json!(FINGERPRINT.replace('F', "G"))
            },
            message: "tlsFingerprint must be a SHA-256 fingerprint: 64 hex digits, or 32 pairs separated by colons",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| o["spec"]["upstreams"][1]["tls"] = json!(false),
            message: "tlsFingerprint and caSecretRef need tls: true",
            also: &[],
        },
        Case {
            kind: "pool",
            mutate: |o| {
                o["spec"]["upstreams"][0]["caSecretRef"] = json!({"name": "ca", "key": "ca.crt"})
            },
            message: "tlsFingerprint and caSecretRef need tls: true",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["ports"] = json!({"stratum": 9090}),
            message: "ports.stratum and ports.api must be distinct",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["tls"]["port"] = json!(3333),
            message: "tls.port must be distinct from ports.stratum and ports.api",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["tls"]["port"] = json!(9090),
            message: "tls.port must be distinct from ports.stratum and ports.api",
            also: &[],
        },
        Case {
            kind: "proxy",
            // The default TLS port (3334) against a Stratum port moved onto it.
            mutate: |o| o["spec"]["ports"] = json!({"stratum": 3334}),
            message: "tls.port must be distinct from ports.stratum and ports.api",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["tls"]["secretName"] = json!("Edge_TLS"),
            message: "tls.secretName must be a Secret name (a lowercase RFC 1123 subdomain)",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["tls"]["secretName"] = json!("edge-tls."),
            message: "tls.secretName must be a Secret name (a lowercase RFC 1123 subdomain)",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| {
                o["spec"].as_object_mut().unwrap().remove("tls");
            },
            message: "service.tlsNodePort needs tls",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["service"] = json!({"tlsNodePort": 30334}),
            message: "tlsNodePort needs service type NodePort or LoadBalancer",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["service"]["tlsNodePort"] = json!(30333),
            message: "nodePort and tlsNodePort must be distinct",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["service"] = json!({"nodePort": 30333}),
            message: "nodePort needs service type NodePort or LoadBalancer",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| {
                o["spec"]["service"] =
                    json!({"type": "NodePort", "loadBalancerSourceRanges": ["10.0.0.0/8"]})
            },
            message: "loadBalancerSourceRanges need service type LoadBalancer",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["telemetry"]["otlpEndpoint"] = json!("otel-collector:4317"),
            message: "otlpEndpoint must be an http:// or https:// URL",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["telemetry"]["serviceMonitor"]["interval"] = json!("often"),
            message: "interval must be a duration such as 30s or 1m",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["dataVolume"]["emptyDir"] = json!({}),
            message: "dataVolume takes emptyDir or persistent, not both",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["dataVolume"] = json!({"emptyDir": {"sizeLimit": "1 GB"}}),
            message: "sizeLimit must be a quantity such as 1Gi or 500Mi",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["dataVolume"]["persistent"]["size"] = json!("10GB"),
            message: "size must be a quantity such as 10Gi or 500Mi",
            also: &[],
        },
        Case {
            kind: "proxy update",
            mutate: |o| o["spec"]["dataVolume"]["persistent"]["size"] = json!("20Gi"),
            message: "size, storageClassName and accessModes of dataVolume.persistent cannot change: they form the StatefulSet's claim template",
            also: &[],
        },
        Case {
            kind: "proxy",
            mutate: |o| o["spec"]["terminationGracePeriodSeconds"] = json!(30),
            message: "terminationGracePeriodSeconds must exceed drainTimeoutSeconds, or pods are killed while draining",
            also: &[],
        },
    ]
}

#[test]
fn every_rule_rejects_its_violation() {
    for case in cases() {
        let (schema, mut obj) = match case.kind {
            "pool" => (pool_schema(), pool()),
            _ => (proxy_schema(), proxy()),
        };
        let old = (case.kind == "proxy update").then(|| obj.clone());
        (case.mutate)(&mut obj);
        let mut want = vec![case.message.to_string()];
        want.extend(case.also.iter().map(|m| m.to_string()));
        assert_eq!(
            update_messages(&schema, &obj, old.as_ref()),
            want,
            "{obj:#}"
        );
    }
}

#[test]
fn every_rule_has_a_rejection_case() {
    let declared: BTreeSet<String> = all_rules()
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect();
    let tested: BTreeSet<String> = cases().iter().map(|c| c.message.to_string()).collect();
    assert_eq!(declared, tested);
}

/// The claim template of a persistent data volume is fixed once set (storageClassName added,
/// changed or removed, accessModes changed); the rest of the proxy, the retention policy, and
/// switching between emptyDir and persistent are not.
#[test]
fn only_the_claim_template_is_fixed() {
    let schema = proxy_schema();
    let fixed = "size, storageClassName and accessModes of dataVolume.persistent cannot change: they form the StatefulSet's claim template";
    let update = |old: &Value, edit: fn(&mut Value)| {
        let mut new = old.clone();
        edit(&mut new);
        update_messages(&schema, &new, Some(old))
    };
    let refused: [fn(&mut Value); 4] = [
        |o| o["spec"]["dataVolume"]["persistent"]["storageClassName"] = json!("slow"),
        |o| {
            o["spec"]["dataVolume"]["persistent"]
                .as_object_mut()
                .unwrap()
                .remove("storageClassName");
        },
        |o| o["spec"]["dataVolume"]["persistent"]["accessModes"] = json!(["ReadWriteOncePod"]),
        |o| o["spec"]["dataVolume"]["persistent"]["size"] = json!("10240Mi"),
    ];
    for edit in refused {
        assert_eq!(update(&proxy(), edit), [fixed]);
    }
    let mut without_class = proxy();
    without_class["spec"]["dataVolume"]["persistent"]
        .as_object_mut()
        .unwrap()
        .remove("storageClassName");
    assert_eq!(
        update(&without_class, |o| o["spec"]["dataVolume"]["persistent"]
            ["storageClassName"] = json!("fast")),
        [fixed]
    );
    let allowed: [fn(&mut Value); 5] = [
        |o| o["spec"]["replicas"] = json!(5),
        |o| {
            o["spec"]["dataVolume"]["persistent"]["claimRetentionPolicy"] =
                json!({"whenDeleted": "Delete", "whenScaled": "Delete"})
        },
        // The default access mode, written out.
        |o| o["spec"]["dataVolume"]["persistent"]["accessModes"] = json!(["ReadWriteOnce"]),
        |o| o["spec"]["dataVolume"] = json!({}),
        |o| o["spec"]["dataVolume"] = json!({"emptyDir": {"sizeLimit": "2Gi"}}),
    ];
    for edit in allowed {
        assert_eq!(update(&proxy(), edit), Vec::<String>::new());
    }
    // From emptyDir to any persistent volume.
    let mut empty = proxy();
    empty["spec"]["dataVolume"] = json!({"emptyDir": {}});
    assert_eq!(
        update(&empty, |o| o["spec"]["dataVolume"] =
            json!({"persistent": {"size": "1Ti"}})),
        Vec::<String>::new()
    );
}

/// The TLS settings: ports in 1..=65535 by the schema, the fingerprint in either written form
/// and any case, the Secret name any subdomain.
#[test]
fn tls_settings_accept_what_they_should() {
    let spec = &proxy_schema()["properties"]["spec"]["properties"];
    let tls = &spec["tls"]["properties"];
    for port in [&tls["port"], &spec["service"]["properties"]["tlsNodePort"]] {
        assert_eq!(
            (port["minimum"].as_f64(), port["maximum"].as_f64()),
            (Some(1.0), Some(65535.0))
        );
    }
    assert_eq!(tls["port"]["default"], 3334);
    assert_eq!(spec["tls"]["required"], json!(["secretName"]));
    let pool_ok = |fingerprint: &str| {
        let mut p = pool();
        p["spec"]["upstreams"][1]["tlsFingerprint"] = json!(fingerprint);
        messages(&pool_schema(), &p)
    };
    for good in [
        FINGERPRINT.to_string(),
        FINGERPRINT.to_lowercase(),
        FINGERPRINT.replace(':', ""),
    ] {
        assert_eq!(pool_ok(&good), Vec::<String>::new(), "{good}");
    }
    // TLS with the system's roots: no CA, no fingerprint.
    let mut p = pool();
    p["spec"]["upstreams"][0]["tls"] = json!(true);
    assert_eq!(messages(&pool_schema(), &p), Vec::<String>::new());
    for name in ["edge-tls", "edge.tls.example", "a"] {
        let mut o = proxy();
        o["spec"]["tls"] = json!({"secretName": name, "port": 3335, "reloadIntervalSeconds": 5});
        assert_eq!(
            messages(&proxy_schema(), &o),
            Vec::<String>::new(),
            "{name}"
        );
    }
}

#[test]
fn typed_validate_cel_matches() {
    // The derive's client-side check on typed objects agrees with the schema walk.
    use loka_operator::crd::{StratumPool, StratumProxy};
    let p: StratumPool = serde_json::from_value(pool()).unwrap();
    p.validate_cel().unwrap();
    let mut bad = proxy();
    bad["spec"]["ports"] = json!({"stratum": 9090, "api": 9090});
    let bad: StratumProxy = serde_json::from_value(bad).unwrap();
    assert!(bad.validate_cel().is_err());
}

#[test]
fn crd_subcommand_prints_the_checked_in_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loka-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut on_disk = String::new();
    for crd in crds() {
        on_disk.push_str("---\n");
        on_disk.push_str(
            &std::fs::read_to_string(repo().join("crds").join(crd_file_name(&crd))).unwrap(),
        );
    }
    assert_eq!(printed, on_disk);
}
