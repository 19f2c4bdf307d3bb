//! Storage end to end, against a real PostgreSQL (`eval "$(tests/pg.sh up)"` first): simulated
//! miners mine through the proxy while PostgreSQL is stopped and restarted, and while the
//! proxy process is killed with SIGKILL holding spooled shares. Every share a miner was told
//! was accepted must be in `submissions`, exactly once.
//!
//! With `storage.acknowledge = "durable"` the proxy is killed while the miners are still
//! mining, with no grace period: a share the miner heard "accepted" for is committed or
//! spooled, so nothing it was told may be missing.
//!
//! One test function runs the scenarios in turn: each stops the server all tests share.

mod common;

use common::*;
use loka_config::{Config, Mode};
use loka_sim::miner::{MinerConfig, MinerHandle, SimMiner};
use loka_test_support::{
    ShareCounts, fresh_pg_database, pg_start, pg_stop, share_counts, wait_until,
};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn miners(addr: &str, prefix: &str, n: usize) -> Vec<MinerHandle> {
    (0..n)
        .map(|i| {
            SimMiner::spawn(MinerConfig {
                hashrate: Some(60_000.0),
                ..MinerConfig::new(addr, format!("{prefix}.rig{i}"))
            })
        })
        .collect()
}

/// Stop the miners; returns what each was told was accepted, and how many it submitted.
async fn stop(miners: Vec<MinerHandle>, prefix: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for (i, m) in miners.into_iter().enumerate() {
        m.stop();
        // abort() lands at the task's next await: a poll running on another thread may
        // still send one more submit. Count only once the task has ended.
        wait_until("the miner task to end", Duration::from_secs(5), || {
            m.is_finished()
        })
        .await;
        let s = m.stats();
        out.insert(format!("{prefix}.rig{i}"), (s.accepted, s.submitted));
    }
    out
}

/// Every accepted share is stored, once; nothing beyond what was submitted.
fn check(told: &BTreeMap<String, (u64, u64)>, c: &ShareCounts) {
    assert_eq!(c.rows, c.distinct, "a share is stored twice: {c:?}");
    for (w, (accepted, submitted)) in told {
        let stored = *c.accepted.get(w).unwrap_or(&0) as u64;
        let all = *c.submitted.get(w).unwrap_or(&0) as u64;
        assert!(*accepted > 0, "{w} mined nothing");
        assert!(
            stored >= *accepted,
            "{w}: told accepted {accepted}, stored {stored}: {c:?}"
        );
        assert!(
            all <= *submitted,
            "{w}: submitted {submitted}, stored {all}"
        );
    }
}

async fn wait_for_rows(
    url: &str,
    told: &BTreeMap<String, (u64, u64)>,
    timeout: Duration,
) -> ShareCounts {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(c) = share_counts(url).await
            && told
                .iter()
                .all(|(w, (a, _))| *c.accepted.get(w).unwrap_or(&0) as u64 >= *a)
        {
            return c;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "shares missing after {timeout:?}: {:?} vs told {told:?}",
                share_counts(url).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A directory removed on drop (no tempfile dependency in this crate).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "loka-storage-test-{}-{}",
            std::process::id(),
            loka_store::uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn storage(cfg: &mut Config, url: &str, spool: &std::path::Path) {
    cfg.storage = loka_test_support::storage_config(url, spool);
}

/// Starts PostgreSQL again if a failing test left it stopped.
struct RestartPg;

impl Drop for RestartPg {
    fn drop(&mut self) {
        pg_start();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_share_is_lost_when_postgres_or_the_proxy_dies() {
    let _restart = RestartPg;
    postgres_restarts_mid_run().await;
    proxy_killed_with_sigkill_while_spooling().await;
    durable_acks_survive_sigkill_mid_mining(false).await;
    durable_acks_survive_sigkill_mid_mining(true).await;
}

async fn postgres_restarts_mid_run() {
    let url = fresh_pg_database().await;
    let spool = TempDir::new();
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    storage(&mut cfg, &url, spool.path());
    let (store, tx) = loka_proxy::runtime::start_storage(&cfg).await.unwrap();
    let pools = loka_proxy::upstream::resolve_pools(&cfg, |_| None).unwrap();
    let proxy = loka_proxy::runtime::start(cfg, pools, Some(tx))
        .await
        .unwrap();
    let addr = proxy.stratum_addr.to_string();
    let ms = miners(&addr, "pgdown", 4);
    for m in &ms {
        m.wait_for(|s| s.accepted >= 10, WAIT).await.unwrap();
    }
    pg_stop();
    // Miners keep mining through an outage of several seconds.
    const OUTAGE: Duration = Duration::from_secs(5);
    tokio::time::sleep(OUTAGE).await;
    wait_until("the writer to spool while PostgreSQL is down", WAIT, || {
        let s = store.status();
        !s.db_up && s.spool_bytes > 0
    })
    .await;
    pg_start();
    wait_until("the writer to see PostgreSQL again", WAIT, || {
        store.status().db_up
    })
    .await;
    let accepted: Vec<u64> = ms.iter().map(|m| m.stats().accepted).collect();
    for (m, before) in ms.iter().zip(accepted) {
        m.wait_for(|s| s.accepted >= before + 5, WAIT)
            .await
            .unwrap();
    }
    let told = stop(ms, "pgdown").await;
    proxy.drain(Duration::from_secs(2)).await;
    let report = store.shutdown(Duration::from_secs(20)).await;
    assert_eq!(report.spool_bytes, 0, "{report:?}");
    assert_eq!(report.records_lost, 0);
    let c = wait_for_rows(&url, &told, Duration::from_secs(10)).await;
    check(&told, &c);
    let s = store.status();
    assert!(
        s.records_spooled > 0 && s.records_replayed > 0 && s.write_errors > 0,
        "{s:?}"
    );
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proxy {
    /// SIGKILL: no shutdown, no flush.
    fn sigkill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM, and the process must exit successfully.
    fn terminate(mut self, log: &std::path::Path) {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.0.wait().unwrap();
        assert!(
            status.success(),
            "loka-proxy exit: {status:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// A `loka-proxy` process's world: its config file, log and spool in a temporary directory,
/// a pool of its own, a free Stratum port, and a fresh PostgreSQL database.
struct Binary {
    dir: TempDir,
    _pool: loka_sim::pool::MockPool,
    url: String,
    port: u16,
}

impl Binary {
    async fn new(acknowledge: loka_config::AckPolicy) -> Binary {
        let url = fresh_pg_database().await;
        let dir = TempDir::new();
        let pool = pool().await;
        let port = free_port();
        let mut cfg = config(&[pool.addr()], Mode::Aggregate);
        cfg.server.port = port;
        storage(&mut cfg, &url, &dir.path().join("spool"));
        cfg.storage.acknowledge = acknowledge;
        cfg.logging.level = "info".into();
        std::fs::write(dir.path().join("loka.toml"), cfg.to_toml()).unwrap();
        Binary {
            dir,
            _pool: pool,
            url,
            port,
        }
    }

    fn spool(&self) -> std::path::PathBuf {
        self.dir.path().join("spool")
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("proxy.log")
    }

    fn stratum(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&self) -> Proxy {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        Proxy(
            Command::new(env!("CARGO_BIN_EXE_loka-proxy"))
                .arg("--config")
                .arg(self.dir.path().join("loka.toml"))
                .arg("run")
                .env_remove("DATABASE_URL")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start loka-proxy"),
        )
    }

    /// Start the proxy and wait until it accepts miners.
    async fn start(&self) -> Proxy {
        let proxy = self.spawn();
        wait_listening(self.port, &self.log()).await;
        proxy
    }
}

async fn wait_listening(port: u16, log: &std::path::Path) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "loka-proxy did not listen on {port}:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn proxy_killed_with_sigkill_while_spooling() {
    let b = Binary::new(loka_config::AckPolicy::Validated).await;
    let (url, spool, log) = (&b.url, b.spool(), b.log());

    // The database is down from the start: everything the proxy judges goes to the spool.
    pg_stop();
    let child = b.start().await;
    let ms = miners(&b.stratum(), "killed", 3);
    for m in &ms {
        m.wait_for(|s| s.accepted >= 15, WAIT).await.unwrap();
    }
    let told = stop(ms, "killed").await;
    // The guarantee under SIGKILL: a share older than the flush interval (100 ms) is in the
    // spool. Shares acknowledged within the last interval may still be in memory, so the
    // kill comes ten intervals after the miners stop (there is no signal to wait on from
    // outside the killed process).
    const DURABLE_AFTER: Duration = Duration::from_millis(1000);
    tokio::time::sleep(DURABLE_AFTER).await;
    let spool_len = || -> u64 {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let spooled = spool_len();
    assert!(
        spooled > 8,
        "nothing in the spool:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    child.sigkill();

    pg_start();
    let child = b.spawn();
    let c = wait_for_rows(url, &told, Duration::from_secs(30)).await;
    check(&told, &c);
    // A clean stop (SIGTERM) leaves nothing behind.
    child.terminate(&log);
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .collect();
    assert!(
        left.is_empty(),
        "spool not empty after a clean stop: {left:?}"
    );
    let after = share_counts(url).await.unwrap();
    assert_eq!(after.rows, after.distinct);
}

/// `acknowledge = "durable"`: SIGKILL while miners are mining, at once; with PostgreSQL up
/// (acks after commit) or down (acks after the spool append).
async fn durable_acks_survive_sigkill_mid_mining(pg_down: bool) {
    let b = Binary::new(loka_config::AckPolicy::Durable).await;
    let prefix = if pg_down { "durablespool" } else { "durabledb" };

    if pg_down {
        pg_stop();
    }
    let child = b.start().await;
    let ms = miners(&b.stratum(), prefix, 3);
    for m in &ms {
        m.wait_for(|s| s.accepted >= 15, WAIT).await.unwrap();
    }
    // The miners are still submitting: the kill lands between shares in every state.
    child.sigkill();
    let told = stop(ms, prefix).await;

    if pg_down {
        pg_start();
    }
    // With PostgreSQL up the rows are there before the restart; the restart must still
    // replay (spool) and stop cleanly, so wait until it serves before stopping it.
    let child = b.start().await;
    let c = wait_for_rows(&b.url, &told, Duration::from_secs(30)).await;
    check(&told, &c);
    child.terminate(&b.log());
}
