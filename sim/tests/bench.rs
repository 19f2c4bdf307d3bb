//! loka-bench against a MockPool: a short real run that must produce accepted shares.

use std::time::Duration;

use loka_sim::{MockPool, MockPoolConfig};
use serde_json::Value;

async fn run_bench(args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_loka-bench"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("loka-bench finished in time")
    .expect("loka-bench ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON object on stdout: {stdout}"
    );
    serde_json::from_str(lines[0]).expect("stdout is JSON")
}

#[tokio::test]
async fn bench_against_mock_pool_reports_accepted_shares() {
    let mut cfg = MockPoolConfig::default().with_difficulty("1e-7").unwrap();
    cfg.job_interval = Some(Duration::from_millis(300));
    let pool = MockPool::start(cfg).await.unwrap();
    let target = pool.addr().to_string();
    let r = run_bench(&[
        "--target",
        &target,
        "--connections",
        "4",
        "--rate",
        "80",
        "--duration",
        "1.5",
        "--username-prefix",
        "bench",
    ])
    .await;
    assert_eq!(r["connections_target"], 4);
    assert_eq!(r["connections_established"], 4);
    assert_eq!(r["connect_errors"], 0);
    let accepted = r["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{r}");
    assert_eq!(r["rejected"], serde_json::json!({}), "{r}");
    assert!(r["accepted_per_sec"].as_f64().unwrap() > 0.0);
    for k in ["p50", "p99", "p999", "max"] {
        assert!(r["latency_us"][k].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");
    // the pool validated each of them independently
    let st = pool.stats();
    assert_eq!(st.accepted, accepted);
    assert_eq!(st.rejected_total(), 0);
    assert!(
        pool.submits()
            .iter()
            .all(|s| s.worker.starts_with("bench.w"))
    );
    // jobs every 300 ms reached all 4 connections: fan-out measured
    assert!(r["notify_fanout_ms"]["count"].as_u64().unwrap() >= 1, "{r}");
}

#[tokio::test]
async fn bench_reports_connect_errors_as_json() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let r = run_bench(&["--target", &addr, "--connections", "2", "--duration", "0.5"]).await;
    assert_eq!(r["connections_established"], 0);
    assert_eq!(r["connect_errors"], 2);
    assert!(!r["errors"].as_array().unwrap().is_empty());
}
