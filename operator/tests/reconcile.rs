//! The reconcile loop against a mocked API server (`tower-test`) under a real kube `Client`:
//! each scenario lists the exact requests (method, path, query, body) the reconciler must make,
//! in order, and nothing else.

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use loka_operator::controller::build::{self, BuildOptions, Workload};
use loka_operator::controller::validate::validate;
use loka_operator::controller::{Context, error_policy, reconcile_pool, reconcile_proxy};
use loka_operator::crd::{StratumPool, StratumProxy};
use loka_operator::metrics::Metrics;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower_test::mock::{Handle, pair};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const SSA: &str = "?&force=true&fieldManager=loka-operator";

fn fixed_clock() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_767_225_600).unwrap())
}

fn fixture(case: &str) -> (StratumProxy, StratumPool) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
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

fn context(service_monitor_api: bool) -> (Arc<Context>, ApiHandle) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let reporter = Reporter {
        controller: "loka-operator".into(),
        instance: Some("test".into()),
    };
    let ctx = Context::new(
        client,
        opts(service_monitor_api),
        Arc::new(Metrics::default()),
        reporter,
    )
    .with_clock(fixed_clock);
    (Arc::new(ctx), handle)
}

/// One expected request and the answer to give.
struct Step {
    method: Method,
    uri: String,
    /// Exact JSON body expected (None: not checked here, see `check`).
    body: Option<Value>,
    /// Extra check on the body.
    check: Option<fn(&Value)>,
    status: StatusCode,
    reply: Reply,
}

enum Reply {
    Json(Value),
    /// Echo the request body back (what an apply returns, near enough).
    Echo,
    /// Echo, with this `status` merged in (e.g. a Deployment's rollout state).
    EchoWithStatus(Value),
    /// This object with the request's `status` (what a status apply returns).
    StatusOf(Value),
}

fn step(method: Method, uri: impl Into<String>) -> Step {
    Step {
        method,
        uri: uri.into(),
        body: None,
        check: None,
        status: StatusCode::OK,
        reply: Reply::Echo,
    }
}

impl Step {
    fn body(mut self, v: Value) -> Self {
        self.body = Some(v);
        self
    }
    fn check(mut self, f: fn(&Value)) -> Self {
        self.check = Some(f);
        self
    }
    fn reply(mut self, status: StatusCode, v: Value) -> Self {
        self.status = status;
        self.reply = Reply::Json(v);
        self
    }
    fn status_of(mut self, obj: Value) -> Self {
        self.reply = Reply::StatusOf(obj);
        self
    }
    fn with_status(mut self, s: Value) -> Self {
        self.reply = Reply::EchoWithStatus(s);
        self
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

const POOL: &str = "/apis/loka.io/v1alpha1/namespaces/mining/stratumpools/main";
const PROXY_STATUS: &str = "/apis/loka.io/v1alpha1/namespaces/mining/stratumproxies/edge/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/mining/events?";

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/mining/deployments/edge";
const STATEFUL_SET: &str = "/apis/apps/v1/namespaces/mining/statefulsets/edge";
const HEADLESS: &str = "/api/v1/namespaces/mining/services/edge-headless";

fn deployment(o: &build::Objects) -> &k8s_openapi::api::apps::v1::Deployment {
    match &o.workload {
        Workload::Deployment(d) => d,
        Workload::StatefulSet(_) => panic!("expected a Deployment"),
    }
}

fn stateful_set(o: &build::Objects) -> &k8s_openapi::api::apps::v1::StatefulSet {
    match &o.workload {
        Workload::StatefulSet(s) => s,
        Workload::Deployment(_) => panic!("expected a StatefulSet"),
    }
}

fn ready_deployment_status() -> Value {
    json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
           "availableReplicas": 1, "updatedReplicas": 1})
}

/// A reconcile's requests up to its status write: the pool read, then [`apply_steps`].
fn reconcile_steps(proxy: &StratumProxy, pool: &StratumPool, sm: bool) -> Vec<Step> {
    let mut steps = vec![step(Method::GET, POOL).reply(StatusCode::OK, pool_json(pool))];
    steps.extend(apply_steps(proxy, pool, sm));
    steps
}

/// The apply requests for a valid fixture, bodies exactly the built objects.
fn apply_steps(proxy: &StratumProxy, pool: &StratumPool, sm: bool) -> Vec<Step> {
    let config = validate(proxy, pool).unwrap();
    let o = build::build(proxy, pool, &config, &opts(sm));
    let mut steps = vec![
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/configmaps/edge-config{SSA}"),
        )
        .body(v(&o.config_map)),
        step(
            Method::PATCH,
            format!("/apis/apps/v1/namespaces/mining/deployments/edge{SSA}"),
        )
        .body(v(deployment(&o)))
        .with_status(ready_deployment_status()),
        // No StatefulSet of this proxy to replace.
        step(Method::GET, STATEFUL_SET).reply(StatusCode::NOT_FOUND, not_found()),
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/services/edge{SSA}"),
        )
        .body(v(&o.stratum_service)),
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/services/edge-api{SSA}"),
        )
        .body(v(&o.api_service)),
        step(
            Method::PATCH,
            format!("/apis/policy/v1/namespaces/mining/poddisruptionbudgets/edge{SSA}"),
        )
        .body(v(o.pod_disruption_budget.as_ref().unwrap())),
    ];
    if sm {
        steps.push(
            step(
                Method::PATCH,
                format!(
                    "/apis/monitoring.coreos.com/v1/namespaces/mining/servicemonitors/edge{SSA}"
                ),
            )
            .body(v(o.service_monitor.as_ref().unwrap())),
        );
    }
    steps
}

fn v<T: serde::Serialize>(x: &T) -> Value {
    serde_json::to_value(x).unwrap()
}

fn pool_json(pool: &StratumPool) -> Value {
    serde_json::to_value(pool).unwrap()
}

/// First reconcile of the basic fixture: get pool, apply everything, write status, publish
/// Ready; the status written.
async fn first_reconcile(proxy: StratumProxy, pool: StratumPool) -> Value {
    let (action, bodies) = first_reconcile_checking(
        proxy,
        pool,
        |b| {
            assert_eq!(b["apiVersion"], "loka.io/v1alpha1");
            assert_eq!(b["kind"], "StratumProxy");
            let conds = b["status"]["conditions"].as_array().unwrap();
            let ready = conds.iter().find(|c| c["type"] == "Ready").unwrap();
            assert_eq!(ready["status"], "True");
            assert_eq!(ready["reason"], "ProxiesReady");
            assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
            assert_eq!(b["status"]["observedGeneration"], 1);
            assert_eq!(b["status"]["readyReplicas"], 1);
            assert_eq!(
                b["status"]["selector"],
                "app.kubernetes.io/instance=edge,app.kubernetes.io/name=loka-proxy"
            );
            assert_eq!(
                b["status"]["endpoints"][0]["url"],
                "stratum+tcp://edge.mining.svc:3333"
            );
        },
        |b| {
            assert_eq!(b["reason"], "ProxiesReady");
            assert_eq!(b["type"], "Normal");
            assert_eq!(b["regarding"]["kind"], "StratumProxy");
            assert_eq!(b["regarding"]["name"], "edge");
            assert_eq!(b["reportingController"], "loka-operator");
        },
    )
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    bodies[bodies.len() - 2]["status"].clone()
}

/// First reconcile of a valid proxy: get pool, apply everything, write status (checked by
/// `status`), publish an event (checked by `event`); what it asks for next and the bodies of
/// the requests, in order.
async fn first_reconcile_checking(
    proxy: StratumProxy,
    pool: StratumPool,
    status: fn(&Value),
    event: fn(&Value),
) -> (Action, Vec<Value>) {
    let (ctx, handle) = context(false);
    let mut steps = reconcile_steps(&proxy, &pool, false);
    steps.push(
        step(Method::PATCH, format!("{PROXY_STATUS}{SSA}"))
            .status_of(v(&proxy))
            .check(status),
    );
    steps.push(step(Method::POST, EVENTS).check(event));
    let server = tokio::spawn(serve(handle, steps));
    let action = reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    (action, server.await.unwrap().0)
}

#[tokio::test]
async fn first_reconcile_applies_everything_then_writes_status() {
    let (proxy, pool) = fixture("basic");
    first_reconcile(proxy, pool).await;
}

#[tokio::test]
async fn unchanged_world_writes_no_status() {
    let (mut proxy, pool) = fixture("basic");
    let status = first_reconcile(proxy.clone(), pool.clone()).await;
    proxy.status = Some(serde_json::from_value(status).unwrap());
    let (ctx, handle) = context(false);
    let steps = reconcile_steps(&proxy, &pool, false);
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    server.await.unwrap();
}

/// Serve `steps` in order (checking each request), then require silence; returns the request
/// bodies and the handle.
async fn serve(mut handle: ApiHandle, steps: Vec<Step>) -> (Vec<Value>, ApiHandle) {
    let mut seen = Vec::new();
    for (i, s) in steps.into_iter().enumerate() {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("step {i}: no request for {} {}", s.method, s.uri))
            .expect("client dropped");
        assert_eq!(req.method(), s.method, "step {i}: {}", req.uri());
        assert_eq!(req.uri().to_string(), s.uri, "step {i}");
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if let Some(want) = &s.body {
            pretty_assertions::assert_eq!(&body, want, "step {i}: {}", s.uri);
        }
        if let Some(check) = s.check {
            check(&body);
        }
        let reply = match s.reply {
            Reply::Json(v) => v,
            // A status apply carries no metadata; the server's answer always does.
            Reply::Echo => {
                let mut b = body.clone();
                if b.is_object() && b.get("metadata").is_none() {
                    b["metadata"] = json!({});
                }
                b
            }
            Reply::EchoWithStatus(st) => {
                let mut b = body.clone();
                b["status"] = st;
                b
            }
            Reply::StatusOf(mut obj) => {
                obj["status"] = body["status"].clone();
                obj
            }
        };
        send.send_response(
            Response::builder()
                .status(s.status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
        seen.push(body);
    }
    // Nothing else: no extra apply, no status write, no event.
    let extra = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    if let Ok(Some((req, _))) = extra {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
    (seen, handle)
}

#[tokio::test]
async fn missing_pool_sets_a_condition_and_applies_nothing() {
    let (proxy, _) = fixture("basic");
    let (ctx, handle) = context(false);
    let steps = vec![
        step(Method::GET, POOL).reply(StatusCode::NOT_FOUND, not_found()),
        step(Method::PATCH, format!("{PROXY_STATUS}{SSA}"))
            .status_of(v(&proxy))
            .check(|b| {
                let ready = &b["status"]["conditions"][0];
                assert_eq!(ready["type"], "Ready");
                assert_eq!(ready["status"], "False");
                assert_eq!(ready["reason"], "PoolNotFound");
                assert_eq!(
                    ready["message"],
                    "StratumPool \"main\" not found in this namespace"
                );
                assert_eq!(b["status"]["conditions"][2]["type"], "Degraded");
                assert_eq!(b["status"]["conditions"][2]["status"], "True");
            }),
        step(Method::POST, EVENTS).check(|b| {
            assert_eq!(b["reason"], "PoolNotFound");
            assert_eq!(b["type"], "Warning");
        }),
    ];
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn invalid_spec_sets_a_condition_and_applies_nothing() {
    let (proxy, mut pool) = fixture("basic");
    pool.spec.upstreams[0].port = 0; // admitted by an older CRD, say
    let (ctx, handle) = context(false);
    let steps = vec![
        step(Method::GET, POOL).reply(StatusCode::OK, pool_json(&pool)),
        step(Method::PATCH, format!("{PROXY_STATUS}{SSA}"))
            .status_of(v(&proxy))
            .check(|b| {
                let ready = &b["status"]["conditions"][0];
                assert_eq!(ready["reason"], "InvalidSpec");
                assert!(ready["message"].as_str().unwrap().contains("pools[0].port"));
            }),
        step(Method::POST, EVENTS).check(|b| assert_eq!(b["reason"], "InvalidSpec")),
    ];
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn service_monitor_applied_when_the_api_exists() {
    let (proxy, pool) = fixture("full");
    let (ctx, handle) = context(true);
    let mut steps = reconcile_steps(&proxy, &pool, true);
    steps.push(step(Method::PATCH, format!("{PROXY_STATUS}{SSA}")).status_of(v(&proxy)));
    steps.push(step(Method::POST, EVENTS));
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn api_errors_back_off_exponentially() {
    let (proxy, pool) = fixture("basic");
    let proxy = Arc::new(proxy);
    let (ctx, mut handle) = context(false);
    for want in [5, 10, 20] {
        let steps = vec![
            step(Method::GET, POOL).reply(StatusCode::OK, pool_json(&pool)),
            step(
                Method::PATCH,
                format!("/api/v1/namespaces/mining/configmaps/edge-config{SSA}"),
            )
            .reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": "etcd unavailable", "reason": "InternalError", "code": 500}),
            ),
        ];
        let server = tokio::spawn(serve(handle, steps));
        let err = reconcile_proxy(proxy.clone(), ctx.clone())
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "kube");
        let action = error_policy(proxy.clone(), &err, ctx.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(want)));
        handle = server.await.unwrap().1;
    }
    assert!(ctx.metrics.encode().contains(
        "loka_operator_reconcile_errors_total{controller=\"stratumproxy\",error=\"kube\"} 3"
    ));
}

#[tokio::test]
async fn pool_status_written_once() {
    let (_, pool) = fixture("full");
    let (ctx, handle) = context(false);
    let steps = vec![
        step(
            Method::PATCH,
            format!("/apis/loka.io/v1alpha1/namespaces/mining/stratumpools/main/status{SSA}"),
        )
        .status_of(v(&pool))
        .check(|b| {
            assert_eq!(b["kind"], "StratumPool");
            assert_eq!(b["status"]["primary"], "stratum.pool.example:3333");
            assert_eq!(b["status"]["observedGeneration"], 3);
            assert_eq!(b["status"]["conditions"][0]["reason"], "Valid");
        }),
    ];
    let server = tokio::spawn(serve(handle, steps));
    reconcile_pool(Arc::new(pool.clone()), ctx.clone())
        .await
        .unwrap();
    let (bodies, handle) = server.await.unwrap();
    // Same pool with that status: nothing to write.
    let mut pool = pool;
    pool.status = Some(serde_json::from_value(bodies[0]["status"].clone()).unwrap());
    let server = tokio::spawn(serve(handle, vec![]));
    reconcile_pool(Arc::new(pool), ctx).await.unwrap();
    server.await.unwrap();
}

/// What the API server holds for a workload of `kind` named `edge` controlled by the owner
/// with uid `owner_uid`.
fn existing(kind: &str, uid: &str, owner_uid: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {
            "name": "edge", "namespace": "mining", "uid": uid,
            "ownerReferences": [{
                "apiVersion": "loka.io/v1alpha1", "kind": "StratumProxy", "name": "edge",
                "uid": owner_uid, "controller": true
            }]
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "loka-proxy"}},
            "template": {}
        }
    })
}

fn deleted() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

/// The requests of one reconcile of the `persistent` fixture up to the Services, with
/// `deployment` the answer to the read of a Deployment to replace and `delete` the requests
/// that must follow it.
fn persistent_steps(
    proxy: &StratumProxy,
    pool: &StratumPool,
    existing: Step,
    delete: Vec<Step>,
) -> Vec<Step> {
    let config = validate(proxy, pool).unwrap();
    let o = build::build(proxy, pool, &config, &opts(false));
    let mut steps = vec![
        step(Method::GET, POOL).reply(StatusCode::OK, pool_json(pool)),
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/configmaps/edge-config{SSA}"),
        )
        .body(v(&o.config_map)),
        step(Method::PATCH, format!("{HEADLESS}{SSA}"))
            .body(v(o.headless_service.as_ref().unwrap())),
        step(Method::PATCH, format!("{STATEFUL_SET}{SSA}"))
            .body(v(stateful_set(&o)))
            .with_status(json!({
                "observedGeneration": 1, "replicas": 2, "readyReplicas": 2,
                "availableReplicas": 2, "updatedReplicas": 2, "currentReplicas": 2,
                "currentRevision": "edge-6d4f", "updateRevision": "edge-6d4f"
            })),
        existing,
    ];
    steps.extend(delete);
    steps.extend([
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/services/edge{SSA}"),
        )
        .body(v(&o.stratum_service)),
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/services/edge-api{SSA}"),
        )
        .body(v(&o.api_service)),
        step(
            Method::PATCH,
            format!("/apis/policy/v1/namespaces/mining/poddisruptionbudgets/edge{SSA}"),
        )
        .body(v(o.pod_disruption_budget.as_ref().unwrap())),
        step(Method::PATCH, format!("{PROXY_STATUS}{SSA}"))
            .status_of(v(proxy))
            .check(|b| {
                // Status from the StatefulSet.
                assert_eq!(b["status"]["replicas"], 2);
                assert_eq!(b["status"]["readyReplicas"], 2);
                let conds = b["status"]["conditions"].as_array().unwrap();
                let get = |t: &str| conds.iter().find(|c| c["type"] == t).unwrap().clone();
                assert_eq!(get("Ready")["status"], "True");
                assert_eq!(get("Progressing")["reason"], "RolloutComplete");
            }),
        step(Method::POST, EVENTS).check(|b| assert_eq!(b["reason"], "ProxiesReady")),
    ]);
    steps
}

/// Switching a proxy to a persistent data volume: the StatefulSet (and its headless Service)
/// is applied, then the Deployment the proxy owned is deleted, exactly that object, with its
/// pods.
#[tokio::test]
async fn a_persistent_data_volume_replaces_the_owned_deployment() {
    let (proxy, pool) = fixture("persistent");
    let owner = proxy.metadata.uid.clone().unwrap();
    let (ctx, handle) = context(false);
    let steps = persistent_steps(
        &proxy,
        &pool,
        step(Method::GET, DEPLOYMENT).reply(
            StatusCode::OK,
            existing("Deployment", "0a0a0a0a-0000-4000-8000-00000000d001", &owner),
        ),
        vec![
            step(Method::DELETE, format!("{DEPLOYMENT}?"))
                .body(json!({
                    "propagationPolicy": "Background",
                    "preconditions": {"uid": "0a0a0a0a-0000-4000-8000-00000000d001"}
                }))
                .reply(StatusCode::OK, deleted()),
        ],
    );
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    server.await.unwrap();
}

/// A Deployment of the same name that this proxy does not control is left alone (and so is
/// the absence of one).
#[tokio::test]
async fn a_deployment_of_another_owner_is_left_alone() {
    let (proxy, pool) = fixture("persistent");
    for answer in [
        step(Method::GET, DEPLOYMENT).reply(
            StatusCode::OK,
            existing(
                "Deployment",
                "0a0a0a0a-0000-4000-8000-00000000d002",
                "0a0a0a0a-0000-4000-8000-0000000000ff",
            ),
        ),
        step(Method::GET, DEPLOYMENT).reply(StatusCode::NOT_FOUND, not_found()),
    ] {
        let (ctx, handle) = context(false);
        let steps = persistent_steps(&proxy, &pool, answer, vec![]);
        let server = tokio::spawn(serve(handle, steps));
        reconcile_proxy(Arc::new(proxy.clone()), ctx).await.unwrap();
        server.await.unwrap();
    }
}

/// Switching back to the emptyDir: the Deployment is applied, then the headless Service and
/// the StatefulSet the proxy owned are deleted (its claims follow the claim retention policy).
#[tokio::test]
async fn an_empty_dir_replaces_the_owned_stateful_set() {
    let (proxy, pool) = fixture("basic");
    let owner = proxy.metadata.uid.clone().unwrap();
    let config = validate(&proxy, &pool).unwrap();
    let o = build::build(&proxy, &pool, &config, &opts(false));
    let (ctx, handle) = context(false);
    let mut steps = vec![
        step(Method::GET, POOL).reply(StatusCode::OK, pool_json(&pool)),
        step(
            Method::PATCH,
            format!("/api/v1/namespaces/mining/configmaps/edge-config{SSA}"),
        )
        .body(v(&o.config_map)),
        step(Method::PATCH, format!("{DEPLOYMENT}{SSA}"))
            .body(v(deployment(&o)))
            .with_status(ready_deployment_status()),
        step(Method::GET, STATEFUL_SET).reply(
            StatusCode::OK,
            existing(
                "StatefulSet",
                "0a0a0a0a-0000-4000-8000-00000000e001",
                &owner,
            ),
        ),
        step(Method::DELETE, format!("{HEADLESS}?"))
            .body(json!({}))
            .reply(StatusCode::OK, deleted()),
        step(Method::DELETE, format!("{STATEFUL_SET}?"))
            .body(json!({
                "propagationPolicy": "Background",
                "preconditions": {"uid": "0a0a0a0a-0000-4000-8000-00000000e001"}
            }))
            .reply(StatusCode::OK, deleted()),
    ];
    // The rest as in any reconcile (the read of a StatefulSet is above).
    steps.extend(apply_steps(&proxy, &pool, false).into_iter().skip(3));
    steps.push(step(Method::PATCH, format!("{PROXY_STATUS}{SSA}")).status_of(v(&proxy)));
    steps.push(step(Method::POST, EVENTS));
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    server.await.unwrap();
}

/// A renewed TLS certificate (same Secret name, new content) rolls nothing: the operator never
/// asks the API server for the Secret (the mock answers only the listed requests and fails on
/// any other), and a second reconcile of the same spec applies the same Deployment, pod
/// template included, and writes no status.
#[tokio::test]
async fn a_renewed_certificate_rolls_nothing() {
    let (mut proxy, pool) = fixture("full");
    assert!(proxy.spec.tls.is_some());
    let deployment_body = |bodies: &[Value]| bodies[2].clone();
    // First reconcile: applies everything, writes the status, publishes Ready.
    let (_, bodies) = first_reconcile_checking(
        proxy.clone(),
        pool.clone(),
        |b| {
            let urls: Vec<&str> = b["status"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["url"].as_str().unwrap())
                .collect();
            assert!(
                urls.contains(&"stratum+ssl://edge.mining.svc:3335"),
                "{urls:?}"
            );
        },
        |_| {},
    )
    .await;
    let first = deployment_body(&bodies);
    proxy.status =
        Some(serde_json::from_value(bodies[bodies.len() - 2]["status"].clone()).unwrap());

    // The certificate is renewed in the Secret `edge-tls`; the next reconcile (resync, or any
    // other trigger) makes the same requests and nothing more.
    let (ctx, handle) = context(false);
    let steps = reconcile_steps(&proxy, &pool, false);
    let server = tokio::spawn(serve(handle, steps));
    reconcile_proxy(Arc::new(proxy), ctx).await.unwrap();
    let (bodies, _) = server.await.unwrap();
    let second = deployment_body(&bodies);
    assert_eq!(first["kind"], "Deployment");
    assert_eq!(first["spec"]["template"], second["spec"]["template"]);
    let volumes = first["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let tls = volumes.iter().find(|v| v["name"] == "tls").unwrap();
    assert_eq!(
        tls["secret"],
        json!({"secretName": "edge-tls", "defaultMode": 0o440, "optional": false})
    );
}
