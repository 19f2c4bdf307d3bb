//! Status step: the StratumProxy status from what the reconcile found and applied.
//!
//! [`proxy_status`] is pure (the clock is an argument). A condition keeps its
//! `lastTransitionTime` while its status is unchanged, so an unchanged world gives an equal
//! status and the controller writes nothing (no reconcile storms).

use super::build::Workload;
use crate::crd::conditions::{DEGRADED, PROGRESSING, READY};
use crate::crd::{
    Condition, Endpoint, StratumPool, StratumPoolStatus, StratumProxy, StratumProxyStatus,
};
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
    /// Objects applied; the workload (Deployment or StatefulSet) as the API server returned it.
    Applied {
        workload: Box<Workload>,
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

/// The rollout state of a workload, whichever kind it is.
#[derive(Debug, Clone, PartialEq, Default)]
struct Observed {
    /// The controller has seen the latest spec.
    observed: bool,
    replicas: i32,
    ready: i32,
    available: i32,
    updated: i32,
    /// Every pod runs the latest revision (a StatefulSet's `currentRevision` reaches its
    /// `updateRevision` only once its rolling update is complete).
    revision_current: bool,
    /// Why the rollout is stuck, if the controller says it is.
    stalled: Option<String>,
}

impl Observed {
    fn of(workload: &Workload) -> Self {
        match workload {
            Workload::Deployment(d) => {
                let st = d.status.clone().unwrap_or_default();
                let conds = st.conditions.unwrap_or_default();
                let stalled = conds
                    .iter()
                    .any(|c| {
                        (c.type_ == "Progressing" && c.status == "False")
                            || (c.type_ == "ReplicaFailure" && c.status == "True")
                    })
                    .then(|| {
                        conds
                            .iter()
                            .find(|c| c.status != "True" || c.type_ == "ReplicaFailure")
                            .and_then(|c| c.message.clone())
                            .unwrap_or_default()
                    });
                Observed {
                    observed: st.observed_generation.unwrap_or(0)
                        >= d.metadata.generation.unwrap_or(0),
                    replicas: st.replicas.unwrap_or(0),
                    ready: st.ready_replicas.unwrap_or(0),
                    available: st.available_replicas.unwrap_or(0),
                    updated: st.updated_replicas.unwrap_or(0),
                    revision_current: true,
                    stalled,
                }
            }
            // The StatefulSet controller sets no conditions and has no progress deadline: a
            // stuck rollout (say, a claim that cannot bind) stays Progressing and not Ready.
            Workload::StatefulSet(s) => {
                let st = s.status.clone().unwrap_or_default();
                Observed {
                    observed: st.observed_generation.unwrap_or(0)
                        >= s.metadata.generation.unwrap_or(0),
                    replicas: st.replicas,
                    ready: st.ready_replicas.unwrap_or(0),
                    available: st.available_replicas.unwrap_or(0),
                    updated: st.updated_replicas.unwrap_or(0),
                    revision_current: st.update_revision.is_none()
                        || st.current_revision == st.update_revision,
                    stalled: None,
                }
            }
        }
    }
}

/// (ready, progressing, degraded) as (status, reason, message) from a workload.
fn rollout(desired: i32, workload: &Workload) -> [(bool, &'static str, String); 3] {
    let Observed {
        observed,
        replicas: total,
        ready,
        available,
        updated,
        revision_current,
        stalled,
    } = Observed::of(workload);
    let done = observed
        && revision_current
        && updated >= desired
        && total == desired
        && available >= desired;
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
    let degraded = match stalled {
        Some(why) => (true, ROLLOUT_STALLED, format!("rollout stalled: {why}")),
        None => (false, AS_EXPECTED, String::new()),
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
        Outcome::Applied { workload, .. } => rollout(proxy.spec.replicas, workload),
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
        workload,
        config_hash,
        endpoints,
        selector,
    } = outcome
    {
        let observed = Observed::of(workload);
        status.replicas = observed.replicas;
        status.ready_replicas = observed.ready;
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
    use k8s_openapi::api::apps::v1::{
        Deployment, DeploymentCondition, DeploymentStatus, StatefulSet, StatefulSetStatus,
    };
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

    fn deployment(replicas: i32, ready: i32, updated: i32) -> Box<Workload> {
        Box::new(Workload::Deployment(Deployment {
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
        }))
    }

    fn applied(workload: Box<Workload>) -> Outcome {
        Outcome::Applied {
            workload,
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

    fn stateful_set(ready: i32, updated: i32, current: &str, update: &str) -> Box<Workload> {
        Box::new(Workload::StatefulSet(StatefulSet {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(3),
                ..Default::default()
            },
            status: Some(StatefulSetStatus {
                observed_generation: Some(3),
                replicas: 2,
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                updated_replicas: Some(updated),
                current_replicas: Some(2 - updated),
                current_revision: Some(current.into()),
                update_revision: Some(update.into()),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn a_stateful_set_is_done_when_every_pod_runs_the_update_revision() {
        let s = proxy_status(
            &proxy(2),
            &applied(stateful_set(2, 2, "edge-7f", "edge-7f")),
            &at(100),
        );
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "False");
        assert_eq!(get(&s, PROGRESSING).reason, ROLLOUT_COMPLETE);
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!((s.replicas, s.ready_replicas), (2, 2));
    }

    #[test]
    fn a_stateful_set_rolls_out_until_its_current_revision_catches_up() {
        // One of two pods replaced: not ready, rolling out.
        let s = proxy_status(
            &proxy(2),
            &applied(stateful_set(1, 1, "edge-7f", "edge-8c")),
            &at(100),
        );
        assert_eq!(get(&s, READY).status, "False");
        assert_eq!(get(&s, PROGRESSING).reason, ROLLING_OUT);
        assert_eq!(get(&s, PROGRESSING).message, "1/2 proxies up to date");
        assert_eq!((s.replicas, s.ready_replicas), (2, 1));
        // Both replaced and ready, but the controller has not yet recorded the update as
        // complete (currentRevision still the old one): still rolling out.
        let s = proxy_status(
            &proxy(2),
            &applied(stateful_set(2, 2, "edge-7f", "edge-8c")),
            &at(100),
        );
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(get(&s, PROGRESSING).reason, ROLLING_OUT);
    }

    #[test]
    fn a_stalled_deployment_is_degraded() {
        let mut d = deployment(2, 1, 2);
        if let Workload::Deployment(d) = d.as_mut() {
            d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet \"edge-5d\" has timed out progressing.".into()),
                ..Default::default()
            }]);
        }
        let s = proxy_status(&proxy(2), &applied(d), &at(100));
        let degraded = get(&s, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, ROLLOUT_STALLED);
        assert!(degraded.message.contains("timed out progressing"));
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
