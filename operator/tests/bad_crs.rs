//! No panic is reachable from a custom resource: the `full` and `persistent` fixtures with any
//! of their fields replaced by any JSON value (wrong types, negative or huge numbers, empty or
//! odd strings, nulls) either fail to decode (the API server's schema would refuse them), fail
//! validation naming what was wrong, or build objects whose configuration the proxy reads
//! back and accepts.

use loka_config::Config;
use loka_operator::controller::build::{self, BuildOptions};
use loka_operator::controller::validate::validate;
use loka_operator::crd::{StratumPool, StratumProxy};
use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;

fn load(case: &str, file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
        .join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// JSON pointers of every value under `spec` (objects and arrays included).
fn paths(v: &Value, at: String, out: &mut Vec<String>) {
    if at.starts_with("/spec") {
        out.push(at.clone());
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                paths(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                paths(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(65_535),
            Just(65_536),
            Just(i64::MAX)
        ]
        .prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        prop_oneof![
            Just(String::new()),
            Just("-".to_string()),
            Just("a.b".to_string()),
            Just("0.000000001".to_string()),
            Just("1e400".to_string()),
            Just("x".repeat(300)),
            ".{0,20}",
        ]
        .prop_map(Value::from),
        Just(Value::Array(vec![])),
        Just(Value::Object(Default::default())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn any_field_of_any_value_never_panics(
        case in prop_oneof![Just("full"), Just("persistent")],
        picks in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>(), value()), 1..4)
    ) {
        let mut proxy = load(case, "proxy.yaml");
        let mut pool = load(case, "pool.yaml");
        for (in_pool, index, v) in picks {
            let doc = if in_pool { &mut pool } else { &mut proxy };
            let mut p = Vec::new();
            paths(doc, String::new(), &mut p);
            let target = &p[index.index(p.len())];
            if let Some(slot) = doc.pointer_mut(target) {
                *slot = v;
            }
        }
        let (Ok(proxy), Ok(pool)) = (
            serde_json::from_value::<StratumProxy>(proxy),
            serde_json::from_value::<StratumPool>(pool),
        ) else {
            return Ok(());
        };
        match validate(&proxy, &pool) {
            Err(errors) => prop_assert!(!errors.is_empty()),
            Ok(config) => {
                let opts = BuildOptions {
                    default_image: "ghcr.io/loka-stratum/loka-proxy:0.1.0".into(),
                    service_monitor_api: true,
                };
                let objects = build::build(&proxy, &pool, &config, &opts);
                let text = objects.config_map.data.as_ref().unwrap()[build::CONFIG_KEY].clone();
                let read = Config::from_toml(&text).expect("the proxy reads what the operator wrote");
                prop_assert!(read.validate().is_ok());
            }
        }
    }
}
