//! Shared fixtures: a mock pool, a proxy configured for CPU-speed difficulties, and a share
//! finder for tests that speak raw Stratum.
#![allow(dead_code)]

use loka_config::{Config, Mode, PoolConfig};
use loka_proxy::runtime::{ProxyHandle, start};
use loka_proxy::upstream::resolve_pools;
use loka_sim::client::{Notification, StratumClient};
use loka_sim::pool::{MockPool, MockPoolConfig};
use loka_stratum::message::Submit;
use loka_stratum::share::{ShareRules, hash_share};
use loka_stratum::{Difficulty, Job};
use rust_decimal::Decimal;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(20);

/// A pool at difficulty 1e-6 (≈4,300 hashes a share).
pub async fn pool() -> MockPool {
    pool_with(|c| c).await
}

pub async fn pool_with(f: impl FnOnce(MockPoolConfig) -> MockPoolConfig) -> MockPool {
    let cfg = MockPoolConfig::default()
        .with_difficulty("0.000001")
        .unwrap();
    MockPool::start(f(cfg)).await.expect("mock pool starts")
}

/// A proxy config on 127.0.0.1:0 in front of `pools`, miners at a fixed 1e-7 (≈430 hashes).
pub fn config(pools: &[SocketAddr], mode: Mode) -> Config {
    let mut cfg = Config::default();
    cfg.server.bind_address = "127.0.0.1".into();
    cfg.server.port = 0;
    cfg.api.enabled = false;
    cfg.server.handshake_timeout = Duration::from_secs(10);
    cfg.server.drain_timeout = Duration::from_secs(5);
    cfg.mining.mode = mode;
    cfg.vardiff.enabled = false;
    cfg.vardiff.initial_difficulty = Decimal::from_str("0.0000001").unwrap();
    cfg.vardiff.min_difficulty = Decimal::from_str("0.00000001").unwrap();
    cfg.upstream.connect_timeout = Duration::from_secs(3);
    cfg.upstream.backoff_initial = Duration::from_millis(100);
    cfg.upstream.backoff_max = Duration::from_millis(500);
    cfg.upstream.failback_after = Duration::from_secs(1);
    cfg.pools = pools
        .iter()
        .enumerate()
        .map(|(i, a)| PoolConfig {
            name: format!("pool{i}"),
            host: a.ip().to_string(),
            port: a.port(),
            username: "farm".into(),
            password: Some("secret".into()),
            password_env: None,
            tls: false,
            tls_ca_file: None,
            tls_fingerprint: None,
        })
        .collect();
    cfg
}

pub async fn proxy(cfg: Config) -> ProxyHandle {
    let pools = resolve_pools(&cfg, |_| None).unwrap();
    start(cfg, pools, None).await.expect("proxy starts")
}

/// Record shares in an embedded SQLite store in a new directory (named after `tag`, under
/// the system's temp dir); returns the directory.
pub fn embedded_store(cfg: &mut Config, tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "loka-{tag}-{}-{}",
        std::process::id(),
        loka_store::uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    cfg.storage.enabled = true;
    cfg.storage.database_url = String::new();
    cfg.storage.sqlite_path = dir.join("loka.db").display().to_string();
    cfg.storage.spool_dir = dir.join("spool").display().to_string();
    dir
}

/// Start the share store `cfg` names and a proxy recording into it (the API reads it too).
pub async fn proxy_with_store(
    cfg: Config,
) -> (ProxyHandle, std::sync::Arc<loka_store::StoreHandle>) {
    let (store, tx) = loka_proxy::runtime::start_storage(&cfg).await.unwrap();
    let pools = resolve_pools(&cfg, |_| None).unwrap();
    let proxy = start(cfg, pools, Some(tx)).await.expect("proxy starts");
    proxy.set_store_probe(store.clone());
    (proxy, store)
}

/// Subscribe + authorize a raw client; returns (en1, en2 size, first notify's job).
pub async fn handshake(c: &mut StratumClient, user: &str) -> (Vec<u8>, usize, Job) {
    let sub = c.subscribe("test/1.0", None).await.unwrap();
    assert!(c.authorize(user, "x").await.unwrap());
    let diff = c.wait_notification("mining.set_difficulty").await.unwrap();
    assert!(diff.params[0].is_number());
    let job = job_of(&c.wait_notification("mining.notify").await.unwrap());
    (sub.extranonce1, sub.extranonce2_size, job)
}

/// The params of a `mining.submit` for a share found by [`find_share`].
pub fn submit_params(worker: &str, s: &Submit) -> serde_json::Value {
    let mut p = vec![
        serde_json::Value::from(worker),
        serde_json::Value::from(s.job_id.as_str()),
        serde_json::Value::from(hex::encode(&s.extranonce2)),
        serde_json::Value::from(format!("{:08x}", s.ntime)),
        serde_json::Value::from(format!("{:08x}", s.nonce)),
    ];
    if let Some(v) = s.version_bits {
        p.push(serde_json::Value::from(format!("{v:08x}")));
    }
    serde_json::Value::Array(p)
}

/// `n` distinct shares of `job` meeting `difficulty`, as `mining.submit` params for `worker`.
pub fn shares(
    job: &Job,
    en1: &[u8],
    en2_size: usize,
    difficulty: &str,
    worker: &str,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut nonce = 0;
    (0..n)
        .map(|_| {
            let share = find_share(job, en1, en2_size, difficulty, true, nonce);
            nonce = share.nonce + 1;
            submit_params(worker, &share)
        })
        .collect()
}

/// Decode a `mining.notify` the proxy sent.
pub fn job_of(n: &Notification) -> Job {
    assert_eq!(n.method, "mining.notify");
    Job::from_notify_params(&n.params).expect("valid notify")
}

/// Search for a share of `job` meeting `difficulty` (or, with `meets = false`, one that does
/// not). Returns the submit to send.
pub fn find_share(
    job: &Job,
    en1: &[u8],
    en2_size: usize,
    difficulty: &str,
    meets: bool,
    start_nonce: u32,
) -> Submit {
    let target = Difficulty::from_str(difficulty).unwrap().target();
    let mut submit = Submit {
        worker: String::new(),
        job_id: job.job_id.clone(),
        extranonce2: vec![0x5a; en2_size],
        ntime: job.ntime,
        nonce: start_nonce,
        version_bits: None,
    };
    let rules = ShareRules {
        version_mask: 0,
        ntime_window: 7200,
        extranonce2_size: en2_size,
    };
    for _ in 0..50_000_000u32 {
        let share = hash_share(job, en1, &submit, &rules).unwrap();
        if share.meets(&target) == meets {
            return submit;
        }
        submit.nonce = submit.nonce.wrapping_add(1);
    }
    panic!("no share found");
}
