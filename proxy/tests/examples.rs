//! The example clients (Rust, Python, JavaScript) run unchanged against a live proxy.

mod common;

use common::*;
use loka_config::Mode;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Run a client program in a blocking thread; return its one JSON line.
async fn run(mut cmd: Command) -> Value {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("client starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check(v: &Value) {
    let sub = v["subscribe"].get("result").unwrap_or(&v["subscribe"]);
    assert_eq!(sub[0][1][0], "mining.notify", "{v}");
    assert_eq!(
        sub[1].as_str().unwrap().len(),
        4,
        "2-byte extranonce1 in hex: {v}"
    );
    assert_eq!(sub[2], 6);
    let auth = v["authorize"].get("result").unwrap_or(&v["authorize"]);
    assert_eq!(auth, &Value::Bool(true), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_clients_run_unchanged_against_a_live_proxy() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.api.enabled = true;
    cfg.api.bind_address = "127.0.0.1".into();
    cfg.api.port = 0;
    let proxy = proxy(cfg).await;
    let (host, port) = (
        proxy.stratum_addr.ip().to_string(),
        proxy.stratum_addr.port().to_string(),
    );

    let mut py = Command::new("python3");
    py.arg(repo().join("examples/python/stratum_client.py"))
        .args([&host, &port, "py.example"]);
    check(&run(py).await);

    let mut rs = Command::new(env!("CARGO"));
    rs.current_dir(repo())
        .args([
            "run",
            "-q",
            "-p",
            "loka-proxy",
            "--example",
            "stratum_client",
            "--",
        ])
        .args([&host, &port, "rs.example"]);
    check(&run(rs).await);

    // Node ≥ 22 has a global WebSocket; Node 20 needs --experimental-websocket.
    let api_port = proxy.api_addr.unwrap().port().to_string();
    let flag = Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status();
    let mut js = Command::new("node");
    if matches!(flag, Ok(s) if s.success()) {
        js.arg("--experimental-websocket");
    }
    js.arg(repo().join("examples/javascript/stratum_client.mjs"))
        .args([&host, &api_port, "js.example"]);
    check(&run(js).await);

    let workers: Vec<String> = proxy
        .shared
        .stats
        .workers()
        .iter()
        .map(|w| w.name.clone())
        .collect();
    for w in ["py.example", "rs.example", "js.example"] {
        assert!(workers.iter().any(|x| x == w), "{w} not seen: {workers:?}");
    }
}
