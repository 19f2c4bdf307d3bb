//! Status step: the StratumProxy status from what the reconcile found and applied.
//!
//! [`proxy_status`] is pure (the clock is an argument). A condition keeps its
//! `lastTransitionTime` while its status is unchanged, so an unchanged world gives an equal
//! status and the controller writes nothing (no reconcile storms).

use crate::crd::conditions::{DEGRADED, PROGRESSING, READY};
use crate::crd::{
    Condition, Endpoint, StratumPool, StratumPoolStatus, StratumProxy, StratumProxyStatus,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Reasons of the conditions (PascalCase).
pub mod reasons {
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PROXIES_READY: &str = "ProxiesReady";
    pub const PROXIES_NOT_READY: &str = "ProxiesNotReady";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const ROLLOUT_STALLED: &str = "RolloutStalled";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const VALID: &str = "Valid";
}
use reasons::*;

/// What one reconcile of a StratumProxy found.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The referenced StratumPool does not exist.
    PoolMissing { pool: String },
    /// The spec (with its pool) does not make a valid proxy configuration.
    Invalid { errors: Vec<String> },
    /// Objects applied; the Deployment as the API server returned it.
    Applied {
        deployment: Box<Deployment>,
        config_hash: String,
        endpoints: Vec<Endpoint>,
        selector: String,
    },
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// (ready, progressing, degraded) as (status, reason, message) from a Deployment.
fn rollout(desired: i32, d: &Deployment) -> [(bool, &'static str, String); 3] {
    let st = d.status.clone().unwrap_or_default();
    let observed = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let conds = st.conditions.unwrap_or_default();
    let stalled = conds.iter().any(|c| {
        (c.type_ == "Progressing" && c.status == "False")
            || (c.type_ == "ReplicaFailure" && c.status == "True")
    });
    let done = observed && updated >= desired && total == desired && available >= desired;
    let ready_c = if desired == 0 {
        (false, SCALED_TO_ZERO, "replicas is 0".to_string())
    } else if ready >= desired && available >= desired {
        (
            true,
            PROXIES_READY,
            format!("{ready}/{desired} proxies ready"),
        )
    } else {
        (
            false,
            PROXIES_NOT_READY,
            format!("{ready}/{desired} proxies ready"),
        )
    };
    let progressing = if done {
        (
            false,
            ROLLOUT_COMPLETE,
            format!("{updated}/{desired} proxies up to date"),
        )
    } else {
        (
            true,
            ROLLING_OUT,
            format!("{updated}/{desired} proxies up to date"),
        )
    };
    let degraded = if stalled {
        let why = conds
            .iter()
            .find(|c| c.status != "True" || c.type_ == "ReplicaFailure")
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        (true, ROLLOUT_STALLED, format!("rollout stalled: {why}"))
    } else {
        (false, AS_EXPECTED, String::new())
    };
    [ready_c, progressing, degraded]
}

/// The status a StratumProxy should have after a reconcile with `outcome`.
pub fn proxy_status(proxy: &StratumProxy, outcome: &Outcome, now: &Time) -> StratumProxyStatus {
    let old = proxy.status.clone().unwrap_or_default();
    let generation = proxy.metadata.generation;
    let [ready, progressing, degraded] = match outcome {
        Outcome::PoolMissing { pool } => {
            let msg = format!("StratumPool {pool:?} not found in this namespace");
            [
                (false, POOL_NOT_FOUND, msg.clone()),
                (false, POOL_NOT_FOUND, msg.clone()),
                (true, POOL_NOT_FOUND, msg),
            ]
        }
        Outcome::Invalid { errors } => {
            let msg = errors.join("; ");
            [
                (false, INVALID_SPEC, msg.clone()),
                (false, INVALID_SPEC, msg.clone()),
                (true, INVALID_SPEC, msg),
            ]
        }
        Outcome::Applied { deployment, .. } => rollout(proxy.spec.replicas, deployment),
    };
    let conditions = [
        (READY, ready),
        (PROGRESSING, progressing),
        (DEGRADED, degraded),
    ]
    .into_iter()
    .map(|(t, (ok, reason, msg))| condition(t, ok, reason, msg, generation, now, &old.conditions))
    .collect();
    let mut status = StratumProxyStatus {
        observed_generation: generation,
        conditions,
        ..old
    };
    if let Outcome::Applied {
        deployment,
        config_hash,
        endpoints,
        selector,
    } = outcome
    {
        let st = deployment.status.clone().unwrap_or_default();
        status.replicas = st.replicas.unwrap_or(0);
        status.ready_replicas = st.ready_replicas.unwrap_or(0);
        status.selector = Some(selector.clone());
        status.endpoints = endpoints.clone();
        status.config_hash = Some(config_hash.clone());
    }
    status
}

/// The `Ready` condition of a status, if any.
pub fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// The status of a StratumPool: whether its settings make a usable proxy configuration.
pub fn pool_status(pool: &StratumPool, errors: &[String], now: &Time) -> StratumPoolStatus {
    let old = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let ready = if errors.is_empty() {
        (true, VALID, String::new())
    } else {
        (false, INVALID_SPEC, errors.join("; "))
    };
    let primary = super::build::ordered_upstreams(pool)
        .first()
        .map(|(p, _)| format!("{}:{}", p.host, p.port));
    StratumPoolStatus {
        observed_generation: generation,
        conditions: vec![condition(
            READY,
            ready.0,
            ready.1,
            ready.2,
            generation,
            now,
            &old.conditions,
        )],
        primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PoolRef, StratumProxySpec};
    use k8s_openapi::api::apps::v1::DeploymentStatus;
    use k8s_openapi::jiff::Timestamp;

    fn proxy(replicas: i32) -> StratumProxy {
        let mut p = StratumProxy::new(
            "edge",
            serde_json::from_value::<StratumProxySpec>(serde_json::json!({
                "poolRef": {"name": "main"}, "replicas": replicas
            }))
            .unwrap(),
        );
        p.metadata.generation = Some(2);
        assert_eq!(
            p.spec.pool_ref,
            PoolRef {
                name: "main".into()
            }
        );
        p
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn deployment(replicas: i32, ready: i32, updated: i32) -> Box<Deployment> {
        Box::new(Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(4),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(4),
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                updated_replicas: Some(updated),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn applied(d: Box<Deployment>) -> Outcome {
        Outcome::Applied {
            deployment: d,
            config_hash: "abc".into(),
            endpoints: vec![],
            selector: "a=b".into(),
        }
    }

    fn get<'a>(s: &'a StratumProxyStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_all_pods_ready() {
        let s = proxy_status(&proxy(2), &applied(deployment(2, 2, 2)), &at(100));
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, READY).reason, PROXIES_READY);
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!((s.replicas, s.ready_replicas), (2, 2));
        assert_eq!(s.config_hash.as_deref(), Some("abc"));
    }

    #[test]
    fn progressing_during_rollout() {
        let s = proxy_status(&proxy(3), &applied(deployment(3, 1, 1)), &at(100));
        assert_eq!(get(&s, READY).status, "False");
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, PROGRESSING).reason, ROLLING_OUT);
    }

    #[test]
    fn missing_pool_is_a_clear_condition() {
        let s = proxy_status(
            &proxy(1),
            &Outcome::PoolMissing {
                pool: "main".into(),
            },
            &at(1),
        );
        let r = get(&s, READY);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", POOL_NOT_FOUND)
        );
        assert!(r.message.contains("\"main\""));
        assert_eq!(get(&s, DEGRADED).status, "True");
    }

    #[test]
    fn unchanged_world_gives_an_equal_status() {
        let mut p = proxy(2);
        let first = proxy_status(&p, &applied(deployment(2, 2, 2)), &at(100));
        p.status = Some(first.clone());
        let again = proxy_status(&p, &applied(deployment(2, 2, 2)), &at(500));
        assert_eq!(first, again);
        // A transition gets the new time; unchanged conditions keep theirs.
        let changed = proxy_status(&p, &applied(deployment(2, 1, 2)), &at(900));
        assert_eq!(get(&changed, READY).last_transition_time, at(900));
        assert_eq!(get(&changed, DEGRADED).last_transition_time, at(100));
    }
}
