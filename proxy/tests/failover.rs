//! Upstream failover with miners connected: kill the primary mid-run, shares continue via the
//! backup without a miner disconnecting, and traffic returns to the primary when it is back.

mod common;

use common::*;
use loka_config::Mode;
use loka_proxy::runtime::ProxyHandle;
use loka_proxy::upstream::FailureKind;
use loka_sim::miner::{MinerConfig, SimMiner};
use loka_sim::pool::MockPoolConfig;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

#[tokio::test]
async fn primary_dies_backup_takes_over_and_primary_gets_traffic_back() {
    let primary = pool().await;
    let backup = pool().await;
    let primary_addr = primary.addr();
    let proxy = proxy(config(&[primary_addr, backup.addr()], Mode::Aggregate)).await;
    let miners: Vec<_> = (0..5)
        .map(|i| {
            SimMiner::spawn(MinerConfig {
                hashrate: Some(50_000.0),
                ..MinerConfig::new(proxy.stratum_addr, format!("gus.rig{i}"))
            })
        })
        .collect();
    for m in &miners {
        m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
    }
    primary.wait_for(|p| p.accepted >= 1, WAIT).await.unwrap();
    let accepted_before: Vec<u64> = miners.iter().map(|m| m.stats().accepted).collect();

    primary.kill();
    // The backup gets the upstream session and the forwarded shares…
    backup
        .wait_for(|p| p.connections_current == 1 && p.accepted >= 3, WAIT)
        .await
        .unwrap();
    // …and every miner keeps mining on its original connection.
    for (m, before) in miners.iter().zip(&accepted_before) {
        let s = m
            .wait_for(|s| s.accepted >= before + 3, WAIT)
            .await
            .unwrap();
        assert_eq!(s.disconnects, 0, "{s:?}");
        assert_eq!(s.connects, 1);
        assert!(
            s.clean_jobs_received >= 2,
            "the switch sends clean work: {s:?}"
        );
    }
    let status = &proxy.shared.upstream.as_ref().unwrap().status;
    assert!(status.failovers.load(Relaxed) >= 1);

    // The primary comes back on the same address: after failback_after the proxy returns.
    let revived = pool_with(|c| MockPoolConfig {
        addr: Some(primary_addr),
        ..c
    })
    .await;
    revived
        .wait_for(|p| p.connections_current == 1 && p.accepted >= 3, WAIT)
        .await
        .unwrap();
    backup
        .wait_for(|p| p.connections_current == 0, WAIT)
        .await
        .unwrap();
    for m in &miners {
        let s = m.stats();
        assert_eq!(s.disconnects, 0, "{s:?}");
    }
    let rejected_by_pools = backup.stats().rejected_total() + revived.stats().rejected_total();
    assert_eq!(rejected_by_pools, 0);
    proxy.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_pool_that_rejects_everything_is_failed_over() {
    let bad = pool_with(|c| MockPoolConfig {
        reject_all: true,
        ..c
    })
    .await;
    let good = pool().await;
    let mut cfg = config(&[bad.addr(), good.addr()], Mode::Aggregate);
    cfg.upstream.max_consecutive_rejects = 3;
    cfg.upstream.failback_after = Duration::from_secs(3600);
    // Miners at the pool's difficulty so every share is forwarded.
    cfg.vardiff.initial_difficulty = "0.000001".parse().unwrap();
    let proxy = proxy(cfg).await;
    let m = SimMiner::spawn(MinerConfig {
        hashrate: Some(100_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "hal.rig")
    });
    bad.wait_for(|p| p.rejected_total() >= 3, WAIT)
        .await
        .unwrap();
    good.wait_for(|p| p.accepted >= 3, WAIT).await.unwrap();
    assert_eq!(m.stats().disconnects, 0);
    assert_eq!(failures(&proxy, FailureKind::Rejects), 1);
    let last = proxy
        .shared
        .upstream
        .as_ref()
        .unwrap()
        .status
        .detail
        .lock()
        .last_error
        .clone();
    assert_eq!(last.as_deref(), Some("pool rejected 3 shares in a row"));
}

/// Upstream failures of `kind` so far (the `loka_stratum_upstream_failures` counter).
fn failures(proxy: &ProxyHandle, kind: FailureKind) -> u64 {
    let status = &proxy.shared.upstream.as_ref().expect("aggregate").status;
    status
        .failures()
        .find(|(k, _)| *k == kind)
        .expect("listed")
        .1
}

#[tokio::test]
async fn a_pool_that_stops_sending_work_is_failed_over() {
    let silent = pool_with(|c| MockPoolConfig { silent: true, ..c }).await;
    let good = pool().await;
    let mut cfg = config(&[silent.addr(), good.addr()], Mode::Aggregate);
    cfg.upstream.connect_timeout = Duration::from_millis(500);
    cfg.upstream.failback_after = Duration::from_secs(3600);
    let proxy = proxy(cfg).await;
    let m = SimMiner::spawn(MinerConfig {
        hashrate: Some(100_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "ida.rig")
    });
    m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
    assert!(silent.stats().connections_total >= 1);
    assert_eq!(good.stats().connections_current, 1);
    assert!(failures(&proxy, FailureKind::Handshake) >= 1);
}

#[tokio::test]
async fn a_connected_pool_whose_work_goes_stale_is_failed_over() {
    // The primary sends one job and then nothing: after job_timeout it counts as failed.
    let stalled = pool().await;
    let good = pool_with(|c| MockPoolConfig {
        job_interval: Some(Duration::from_millis(200)),
        ..c
    })
    .await;
    let mut cfg = config(&[stalled.addr(), good.addr()], Mode::Aggregate);
    cfg.upstream.job_timeout = Duration::from_secs(1);
    cfg.upstream.failback_after = Duration::from_secs(3600);
    let proxy = proxy(cfg).await;
    let m = SimMiner::spawn(MinerConfig {
        hashrate: Some(100_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "ivy.rig")
    });
    m.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();
    good.wait_for(|p| p.connections_current == 1 && p.accepted >= 1, WAIT)
        .await
        .unwrap();
    let status = &proxy.shared.upstream.as_ref().unwrap().status;
    assert!(
        status
            .detail
            .lock()
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no new job")
    );
    assert!(failures(&proxy, FailureKind::NoJob) >= 1);
    assert_eq!(m.stats().disconnects, 0);
}

#[tokio::test]
async fn a_new_extranonce_size_reaches_miners_by_set_extranonce_or_reconnect() {
    let primary = pool().await;
    let backup = pool_with(|c| MockPoolConfig {
        extranonce2_size: 6,
        ..c
    })
    .await;
    let mut cfg = config(&[primary.addr(), backup.addr()], Mode::Aggregate);
    cfg.upstream.failback_after = Duration::from_secs(3600);
    let proxy = proxy(cfg).await;
    let addr = proxy.stratum_addr;
    let nicehash = SimMiner::spawn(MinerConfig {
        extranonce_subscribe: true,
        hashrate: Some(50_000.0),
        ..MinerConfig::new(addr, "jo.ns")
    });
    let plain = SimMiner::spawn(MinerConfig {
        reconnect: true,
        hashrate: Some(50_000.0),
        ..MinerConfig::new(addr, "jo.plain")
    });
    for m in [&nicehash, &plain] {
        let s = m.wait_for(|s| s.accepted >= 2, WAIT).await.unwrap();
        assert_eq!(s.extranonce2_size, Some(6));
    }
    primary.kill();
    // 6 upstream bytes − 2 prefix bytes: miners now get 4.
    let s = nicehash
        .wait_for(
            |s| s.set_extranonce_received >= 1 && s.extranonce2_size == Some(4),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(s.disconnects, 0);
    let accepted = s.accepted;
    nicehash
        .wait_for(|s| s.accepted >= accepted + 2, WAIT)
        .await
        .unwrap();
    let s = plain
        .wait_for(
            |s| s.reconnect_requests >= 1 && s.reconnects >= 1 && s.extranonce2_size == Some(4),
            WAIT,
        )
        .await
        .unwrap();
    let accepted = s.accepted;
    plain
        .wait_for(|s| s.accepted >= accepted + 2, WAIT)
        .await
        .unwrap();
    assert_eq!(backup.stats().rejected_total(), 0);
}
