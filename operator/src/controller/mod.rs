//! The controllers: StratumProxy (read → validate → build → apply → status) and StratumPool
//! (validate → status).
//!
//! [`validate`] and [`build`] get no client (pure, unit-tested); [`apply`] and the status
//! write are the thin IO shell around them. A StratumPool change re-reconciles every
//! StratumProxy that references it.

pub mod apply;
pub mod build;
pub mod status;
pub mod validate;

use crate::crd::{StratumPool, StratumProxy, StratumProxySpec};
use crate::metrics::Metrics;
use crate::{Error, FIELD_MANAGER, Result};
use build::{BuildOptions, endpoints, selector_string};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use status::{Outcome, proxy_status, ready_condition};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Requeue after a successful reconcile (a safety net: owned objects and pools are watched).
pub const RESYNC: Duration = Duration::from_secs(300);
/// First retry after an error; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Label every owned object carries; the owned-object watches select on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=loka-operator";

/// Shared state of the reconcilers.
pub struct Context {
    pub client: Client,
    pub opts: BuildOptions,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The clock for condition transition times (fixed in tests).
    clock: fn() -> Time,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Context {
    pub fn new(
        client: Client,
        opts: BuildOptions,
        metrics: Arc<Metrics>,
        reporter: Reporter,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            opts,
            metrics,
            failures: Mutex::new(HashMap::new()),
            clock: now,
        }
    }

    /// Use a fixed clock (tests).
    pub fn with_clock(mut self, clock: fn() -> Time) -> Self {
        self.clock = clock;
        self
    }

    fn failed(&self, key: String) -> u32 {
        let mut f = self.failures.lock();
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().remove(key);
    }
}

fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// Delay before retrying after `failures` consecutive errors: 5 s, 10 s, 20 s, … ≤ 5 min.
pub fn backoff(failures: u32) -> Duration {
    loka_config::Backoff::new(MIN_BACKOFF, MAX_BACKOFF).delay(failures)
}

/// An Event to publish about a StratumProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Events for notable transitions between two statuses: the Ready condition changing, and a
/// new configuration rolling out.
pub fn notices(
    old: Option<&crate::crd::StratumProxyStatus>,
    new: &crate::crd::StratumProxyStatus,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let old_ready = old.and_then(|s| ready_condition(&s.conditions));
    if let Some(r) = ready_condition(&new.conditions) {
        let changed = old_ready.is_none_or(|o| o.status != r.status || o.reason != r.reason);
        if changed {
            out.push(Notice {
                warning: r.status != "True"
                    && r.reason != status::reasons::PROXIES_NOT_READY
                    && r.reason != status::reasons::SCALED_TO_ZERO,
                reason: r.reason.clone(),
                note: r.message.clone(),
            });
        }
    }
    if let (Some(old_hash), Some(new_hash)) =
        (old.and_then(|s| s.config_hash.as_ref()), &new.config_hash)
        && old_hash != new_hash
    {
        out.push(Notice {
            warning: false,
            reason: "ConfigChanged".into(),
            note: format!(
                "proxy configuration changed (sha256 {}), rolling the pods",
                &new_hash[..12.min(new_hash.len())]
            ),
        });
    }
    out
}

/// Server-side apply of a status, with the operator's field manager.
async fn write_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Reconcile one StratumProxy.
pub async fn reconcile_proxy(proxy: Arc<StratumProxy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_proxy_inner(&proxy, &ctx).await;
    ctx.metrics.reconciled("stratumproxy", started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&key(proxy.as_ref()));
    }
    result
}

async fn reconcile_proxy_inner(proxy: &StratumProxy, ctx: &Context) -> Result<Action> {
    let name = proxy.name_any();
    let ns = proxy
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    // Read.
    let pools: Api<StratumPool> = Api::namespaced(ctx.client.clone(), &ns);
    let pool_name = &proxy.spec.pool_ref.name;
    let outcome = match pools.get_opt(pool_name).await? {
        None => Outcome::PoolMissing {
            pool: pool_name.clone(),
        },
        // Validate.
        Some(pool) => match validate::validate(proxy, &pool) {
            Err(errors) => Outcome::Invalid { errors },
            Ok(config) => {
                // Build, apply.
                let objects = build::build(proxy, &pool, &config, &ctx.opts);
                let applied = apply::apply(
                    &ctx.client,
                    &ns,
                    &name,
                    &objects,
                    ctx.opts.service_monitor_api,
                )
                .await?;
                Outcome::Applied {
                    endpoints: endpoints(proxy, Some(&applied.stratum_service)),
                    workload: Box::new(applied.workload),
                    config_hash: objects.config_hash,
                    selector: selector_string(&name),
                }
            }
        },
    };
    // Status: written only when it changed.
    let new = proxy_status(proxy, &outcome, &(ctx.clock)());
    if proxy.status.as_ref() != Some(&new) {
        let api: Api<StratumProxy> = Api::namespaced(ctx.client.clone(), &ns);
        write_status(&api, &name, &new).await?;
        let reference = proxy.object_ref(&());
        for n in notices(proxy.status.as_ref(), &new) {
            let event = Event {
                type_: if n.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: n.reason,
                note: Some(n.note),
                action: "Reconcile".into(),
                secondary: None,
            };
            ctx.recorder
                .publish(&event, &reference)
                .await
                .map_err(Error::Event)?;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Log, count and requeue with exponential backoff.
pub fn error_policy(proxy: Arc<StratumProxy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed("stratumproxy", error.metric_label());
    let n = ctx.failed(key(proxy.as_ref()));
    let delay = backoff(n);
    tracing::warn!(proxy = %key(proxy.as_ref()), %error, failures = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Problems of a StratumPool on its own (checked with a default StratumProxy).
pub fn pool_errors(pool: &StratumPool) -> Vec<String> {
    let spec: StratumProxySpec = serde_json::from_value(serde_json::json!({
        "poolRef": { "name": pool.name_any() }
    }))
    .expect("a poolRef alone is a valid StratumProxySpec");
    let probe = StratumProxy::new("pool-check", spec);
    validate::validate(&probe, pool).err().unwrap_or_default()
}

/// Reconcile one StratumPool: its status says whether proxies can use it.
pub async fn reconcile_pool(pool: Arc<StratumPool>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = async {
        let name = pool.name_any();
        let ns = pool
            .namespace()
            .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
        let new = status::pool_status(&pool, &pool_errors(&pool), &(ctx.clock)());
        if pool.status.as_ref() != Some(&new) {
            let api: Api<StratumPool> = Api::namespaced(ctx.client.clone(), &ns);
            write_status(&api, &name, &new).await?;
        }
        Ok(Action::requeue(RESYNC))
    }
    .await;
    ctx.metrics.reconciled("stratumpool", started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&format!("pool:{}", key(pool.as_ref())));
    }
    result
}

fn pool_error_policy(pool: Arc<StratumPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed("stratumpool", error.metric_label());
    let n = ctx.failed(format!("pool:{}", key(pool.as_ref())));
    tracing::warn!(pool = %key(pool.as_ref()), %error, failures = n, "pool reconcile failed");
    Action::requeue(backoff(n))
}

/// StratumProxies (from `proxies`) that reference `pool`.
pub fn proxies_for_pool(
    proxies: &[Arc<StratumProxy>],
    pool: &StratumPool,
) -> Vec<ObjectRef<StratumProxy>> {
    proxies
        .iter()
        .filter(|p| p.namespace() == pool.namespace() && p.spec.pool_ref.name == pool.name_any())
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Run both controllers until `shutdown` is cancelled; in-flight reconciles finish first.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = || watcher::Config::default().labels(MANAGED_BY);
    let proxies = Controller::new(api::<StratumProxy>(&client, ns), watcher::Config::default());
    let store = proxies.store();
    let proxies = proxies
        .owns(api::<ConfigMap>(&client, ns), owned())
        .owns(api::<Deployment>(&client, ns), owned())
        .owns(api::<StatefulSet>(&client, ns), owned())
        .owns(api::<Service>(&client, ns), owned())
        .owns(api::<PodDisruptionBudget>(&client, ns), owned())
        .watches(
            api::<StratumPool>(&client, ns),
            watcher::Config::default(),
            move |pool| proxies_for_pool(&store.state(), &pool),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_proxy, error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "stratumproxy controller");
            }
        });
    let pools = Controller::new(api::<StratumPool>(&client, ns), watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile_pool, pool_error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "stratumpool controller");
            }
        });
    futures::join!(proxies, pools);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::crd::{StratumPoolSpec, StratumProxyStatus};

    fn proxy(ns: &str, name: &str, pool: &str) -> Arc<StratumProxy> {
        let spec: StratumProxySpec =
            serde_json::from_value(serde_json::json!({"poolRef": {"name": pool}})).unwrap();
        let mut p = StratumProxy::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        Arc::new(p)
    }

    #[test]
    fn a_pool_change_reaches_the_proxies_that_use_it() {
        let spec: StratumPoolSpec = serde_json::from_value(serde_json::json!({
            "account": "a", "upstreams": [{"name": "p", "host": "h", "port": 1}]
        }))
        .unwrap();
        let mut pool = StratumPool::new("main", spec);
        pool.metadata.namespace = Some("mining".into());
        let all = [
            proxy("mining", "a", "main"),
            proxy("mining", "b", "other"),
            proxy("elsewhere", "c", "main"),
            proxy("mining", "d", "main"),
        ];
        let names: Vec<String> = proxies_for_pool(&all, &pool)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "d"]);
    }

    #[test]
    fn notices_on_transitions_only() {
        let (proxy, _) = (proxy("mining", "edge", "main"), ());
        let t = Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap());
        let missing = proxy_status(
            &proxy,
            &Outcome::PoolMissing {
                pool: "main".into(),
            },
            &t,
        );
        let n = notices(None, &missing);
        assert_eq!(n.len(), 1);
        assert!(n[0].warning);
        assert_eq!(n[0].reason, "PoolNotFound");
        assert!(notices(Some(&missing), &missing).is_empty());
        let old = StratumProxyStatus {
            config_hash: Some("aaaaaaaaaaaaaaaa".into()),
            ..missing.clone()
        };
        let new = StratumProxyStatus {
            config_hash: Some("bbbbbbbbbbbbbbbb".into()),
            ..missing
        };
        let n = notices(Some(&old), &new);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, "ConfigChanged");
        assert!(!n[0].warning);
    }
}
