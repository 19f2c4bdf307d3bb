//! Leader election against a mocked API server: create when missing, back off on a conflict.

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use loka_operator::lease::{LeaderElector, LeaseConfig};
use serde_json::{Value, json};
use std::time::Duration;
use tower_test::mock::pair;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/loka-system/leases/loka-operator";

fn elector() -> (
    LeaderElector,
    tower_test::mock::Handle<Request<Body>, Response<Body>>,
) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let cfg = LeaseConfig {
        name: "loka-operator".into(),
        namespace: "loka-system".into(),
        identity: "pod-a".into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    (
        LeaderElector::new(Client::new(service, "default"), cfg),
        handle,
    )
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

async fn answer(
    handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    method: Method,
    uri: &str,
    code: StatusCode,
    reply: Option<Value>,
) -> Value {
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), method);
    assert_eq!(req.uri().to_string(), uri);
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let reply = reply.unwrap_or_else(|| body.clone());
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

#[tokio::test]
async fn creates_the_missing_lease() {
    let (e, mut handle) = elector();
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            Method::GET,
            LEASE,
            StatusCode::NOT_FOUND,
            Some(status(404, "NotFound")),
        )
        .await;
        let body = answer(
            &mut handle,
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/loka-system/leases?",
            StatusCode::CREATED,
            None,
        )
        .await;
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
    });
    assert!(e.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn waits_while_another_holds_it_and_loses_races() {
    let (e, mut handle) = elector();
    let now = k8s_openapi::jiff::Timestamp::now();
    let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "loka-operator", "namespace": "loka-system", "resourceVersion": "7"},
        "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15,
                 "renewTime": now.to_string()}});
    let expired = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "loka-operator", "namespace": "loka-system", "resourceVersion": "8"},
        "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15,
                 "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 4}});
    let server = tokio::spawn(async move {
        // Live lease of someone else: read only.
        answer(&mut handle, Method::GET, LEASE, StatusCode::OK, Some(held)).await;
        // Expired: take over with the read resourceVersion; another replica won (409).
        answer(
            &mut handle,
            Method::GET,
            LEASE,
            StatusCode::OK,
            Some(expired),
        )
        .await;
        let body = answer(
            &mut handle,
            Method::PUT,
            &format!("{LEASE}?"),
            StatusCode::CONFLICT,
            Some(status(409, "Conflict")),
        )
        .await;
        assert_eq!(body["metadata"]["resourceVersion"], "8");
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(body["spec"]["leaseTransitions"], 5);
    });
    assert!(!e.try_acquire_or_renew().await.unwrap());
    assert!(!e.try_acquire_or_renew().await.unwrap());
    server.await.unwrap();
}
