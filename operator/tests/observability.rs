//! The chart's alerts and Grafana dashboard use only operator metrics that its `/metrics`
//! serves (every `loka_operator_*` name in every expression).

use http_body_util::BodyExt;
use loka_operator::http::{HttpState, router};
use loka_operator::metrics::Metrics;
use loka_test_support::observability::{exported_names, missing_from};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tower::ServiceExt;

#[tokio::test]
async fn every_operator_metric_the_alerts_and_dashboard_use_is_served() {
    let metrics = Arc::new(Metrics::default());
    metrics.reconciled("stratumproxy", Duration::from_millis(12));
    metrics.failed("stratumproxy", "apply");
    metrics.set_leader(true);
    let app = router(HttpState {
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
    });
    let res = app
        .oneshot(
            http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let exported = exported_names(&text);
    assert!(
        exported.contains("loka_operator_reconciles_total"),
        "{text}"
    );
    let missing = missing_from("loka_operator_", &exported);
    assert!(
        missing.is_empty(),
        "used by the chart but not served:\n{}",
        missing.join("\n")
    );
}
