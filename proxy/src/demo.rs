//! `loka-proxy demo`: the product doing its job with no pool reachable. A local pool simulator
//! (which validates every share it gets), the proxy in front of it, and a few miners that
//! really hash; prints the share flow every two seconds.

use crate::runtime::start;
use crate::settings::Overrides;
use crate::upstream::resolve_pools;
use loka_config::{Config, PoolConfig};
use loka_sim::miner::{MinerConfig, SimMiner};
use loka_sim::pool::{MockPool, MockPoolConfig};
use rust_decimal::Decimal;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Build the demo configuration around a pool at `pool_addr`.
pub fn demo_config(
    o: &Overrides,
    pool_addr: std::net::SocketAddr,
) -> Result<Config, loka_config::ConfigErrors> {
    let mut cfg = Config::default();
    cfg.server.bind_address = o.bind.clone().unwrap_or_else(|| "127.0.0.1".into());
    cfg.server.port = o.port.unwrap_or(3333);
    cfg.api.bind_address = "127.0.0.1".into();
    cfg.api.port = o.api_port.unwrap_or(9090);
    if let Some(mode) = o.mode {
        cfg.mining.mode = mode;
    }
    // Miners here hash on a CPU: difficulties are tiny (1e-5 ≈ 43,000 hashes per share).
    cfg.vardiff.initial_difficulty = Decimal::new(1, 5);
    cfg.vardiff.min_difficulty = Decimal::new(1, 7);
    cfg.vardiff.max_difficulty = Decimal::new(1, 2);
    cfg.vardiff.target_shares_per_minute = 30.0;
    cfg.vardiff.retarget_interval = Duration::from_secs(10);
    // The embedded SQLite store unless a database URL was given.
    cfg.storage.database_url = o.database_url.clone().unwrap_or_default();
    cfg.storage.sqlite_path = ".loka-data/demo.db".into();
    cfg.pools = vec![PoolConfig {
        name: "local-sim".into(),
        host: pool_addr.ip().to_string(),
        port: pool_addr.port(),
        username: "demo-account".into(),
        password: Some("x".into()),
        password_env: None,
        tls: false,
        tls_ca_file: None,
        tls_fingerprint: None,
    }];
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(o: &Overrides, miners: usize, seconds: u64) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(
            o.log_level.as_deref().unwrap_or("info"),
        )?)
        .with_target(false)
        .try_init();
    let pool = MockPool::start(MockPoolConfig {
        job_interval: Some(Duration::from_secs(15)),
        ..MockPoolConfig::default().with_difficulty("0.0001")?
    })
    .await?;
    println!(
        "pool simulator listening on {} (difficulty 0.0001)",
        pool.addr()
    );
    let cfg = demo_config(o, pool.addr())?;
    let pools = resolve_pools(&cfg, |_| None)?;
    let drain = cfg.server.drain_timeout;
    if cfg.storage.database_url.is_empty() {
        std::fs::create_dir_all(".loka-data")?;
    }
    let (store, events) = crate::runtime::start_storage(&cfg).await?;
    let backend = if cfg.storage.database_url.is_empty() {
        "SQLite .loka-data/demo.db"
    } else {
        "PostgreSQL"
    };
    let proxy = start(cfg, pools, Some(events)).await?;
    proxy.set_store_probe(store.clone());
    println!(
        "proxy: Stratum on {} (mode {}), shares stored in {backend}",
        proxy.stratum_addr, proxy.shared.mode
    );
    if let Some(api) = proxy.api_addr {
        println!(
            "API: http://{api}/stats  http://{api}/stats/workers  http://{api}/metrics/prometheus  http://{api}/health"
        );
    }
    let handles: Vec<_> = (0..miners)
        .map(|i| {
            let mut m = MinerConfig::new(proxy.stratum_addr, format!("alice.rig{}", i + 1));
            m.configure_version_rolling = i % 2 == 0;
            m.reconnect = true;
            m.hashrate = Some(200_000.0);
            SimMiner::spawn(m)
        })
        .collect();
    println!("{miners} simulated miners hashing at ~200 kH/s each; Ctrl-C to stop");
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let s = &proxy.shared.stats;
        let p = pool.stats();
        println!(
            "[{:>4}s] miners {:>3} | shares submitted {:>6} accepted {:>6} rejected {:>4} stored {:>6} | forwarded {:>5} → pool accepted {:>5} rejected {:>3} | jobs {:>4} | blocks {}",
            started.elapsed().as_secs(),
            s.connections_current.load(Relaxed),
            s.shares_submitted.load(Relaxed),
            s.shares_accepted.load(Relaxed),
            s.shares_rejected.load(Relaxed),
            store.status().submissions_inserted,
            s.shares_forwarded.load(Relaxed),
            p.accepted,
            p.rejected_total(),
            s.jobs_distributed.load(Relaxed),
            s.block_candidates.load(Relaxed),
        );
        if seconds > 0 && started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    for h in &handles {
        h.stop();
    }
    let report = proxy.drain(drain).await;
    let flushed = store.shutdown(drain).await;
    let stored = store.store().count_submissions().await.unwrap_or(-1);
    println!(
        "drained in {:?}; {} share events flushed while stopping, {stored} submissions in the store; bye",
        report.elapsed, flushed.written
    );
    Ok(())
}
