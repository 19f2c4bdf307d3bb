//! The chart's alerts and Grafana dashboard use only metrics a live proxy exports: a proxy
//! with its share store (embedded SQLite) and the HTTP API, a miner mining through it, then
//! every `loka_stratum_*` name in every alert and panel expression must be in its
//! `/metrics/prometheus`.

mod common;

use common::*;
use loka_config::Mode;
use loka_sim::miner::{MinerConfig, SimMiner};
use loka_test_support::observability::{exported_names, missing_from};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_use_is_exported() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.api.enabled = true;
    cfg.api.bind_address = "127.0.0.1".into();
    cfg.api.port = 0;
    let dir = embedded_store(&mut cfg, "observability");
    let (proxy, store) = proxy_with_store(cfg).await;
    let miner = SimMiner::spawn(MinerConfig {
        hashrate: Some(50_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "dora.rig1")
    });
    miner.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();

    let url = format!("http://{}/metrics/prometheus", proxy.api_addr.unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let exported = exported_names(&text);
    assert!(
        exported.contains("loka_stratum_shares_accepted_total"),
        "the scrape holds the proxy's metrics:\n{text}"
    );
    let missing = missing_from("loka_stratum_", &exported);
    assert!(
        missing.is_empty(),
        "used by the chart but not exported:\n{}",
        missing.join("\n")
    );

    miner.stop();
    proxy.drain(Duration::from_secs(2)).await;
    store.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
