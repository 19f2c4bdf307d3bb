//! Test support shared by the workspace's tests and benches (a dev-dependency only, never
//! in a shipped crate): the throwaway PostgreSQL that `tests/pg.sh` starts (fresh databases,
//! stop and start for fault tests), storage settings with quick timings, what `submissions`
//! holds, a share event to start a test's events from, and waiting on a condition with a
//! deadline.

pub mod observability;

use std::path::PathBuf;
use std::process::Command;

const HOW: &str = "these tests need a PostgreSQL: run `eval \"$(tests/pg.sh up)\"` \
                   (from the repository root) and re-run with LOKA_TEST_DATABASE_URL and \
                   LOKA_TEST_PG_DIR set";

/// `LOKA_TEST_DATABASE_URL`, or a panic naming `tests/pg.sh`.
pub fn pg_url() -> String {
    std::env::var("LOKA_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("LOKA_TEST_DATABASE_URL is not set: {HOW}"))
}

/// A new, empty database beside the test database; returns its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let url = pg_url();
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}; {HOW}"));
    let name = format!("loka_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

fn pg_sh() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pg.sh")
}

fn pg_dir() -> String {
    std::env::var("LOKA_TEST_PG_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| panic!("LOKA_TEST_PG_DIR is not set: {HOW}"))
}

fn pg_ctl(cmd: &str) {
    let out = Command::new("bash")
        .arg(pg_sh())
        .arg(cmd)
        .arg(pg_dir())
        .output()
        .expect("run tests/pg.sh");
    assert!(
        out.status.success(),
        "tests/pg.sh {cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stop the test PostgreSQL (every database on it).
pub fn pg_stop() {
    pg_ctl("stop");
}

/// Start it again.
pub fn pg_start() {
    pg_ctl("start");
}

/// A StorageConfig for `url` with a spool in `spool_dir` and quick timings.
pub fn storage_config(url: &str, spool_dir: &std::path::Path) -> loka_config::StorageConfig {
    loka_config::StorageConfig {
        database_url: url.to_string(),
        spool_dir: spool_dir.display().to_string(),
        flush_interval: std::time::Duration::from_millis(50),
        write_timeout: std::time::Duration::from_secs(3),
        ..loka_config::StorageConfig::default()
    }
}

/// What `submissions` holds, for exactly-once checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareCounts {
    pub rows: i64,
    /// Distinct share identities (worker, job, extranonce1, extranonce2, ntime, nonce, version).
    pub distinct: i64,
    /// Accepted rows per worker login.
    pub accepted: std::collections::BTreeMap<String, i64>,
    /// All rows per worker login.
    pub submitted: std::collections::BTreeMap<String, i64>,
}

/// Count `submissions` on the PostgreSQL at `url` (`None` if it cannot be reached).
pub async fn share_counts(url: &str) -> Option<ShareCounts> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT (worker_id, job_id, extranonce1, extranonce2, ntime, nonce, version)) \
         FROM submissions",
    )
    .fetch_one(&mut conn)
    .await
    .ok()?;
    let per: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT w.worker_name::text, COUNT(*), COUNT(*) FILTER (WHERE s.accepted) \
         FROM submissions s JOIN workers w ON w.id = s.worker_id GROUP BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .ok()?;
    Some(ShareCounts {
        rows,
        distinct,
        accepted: per.iter().map(|(w, _, a)| (w.clone(), *a)).collect(),
        submitted: per.iter().map(|(w, n, _)| (w.clone(), *n)).collect(),
    })
}

/// Poll `cond` every 20 ms until it holds; panic naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A share event as a proxy emits it for worker `worker` on pool `main`, with `nonce`:
/// accepted (and forwarded) or rejected as a duplicate. Tests change the fields they care
/// about with struct update syntax.
pub fn share_event(worker: &str, nonce: u32, accepted: bool) -> loka_store::events::ShareEvent {
    use loka_store::compact_str::format_compact;
    use std::sync::Arc;
    loka_store::events::ShareEvent {
        at: std::time::SystemTime::now(),
        connection_id: 7,
        worker: Arc::from(worker),
        pool: Arc::from("main"),
        job_id: "1a".into(),
        extranonce1: "0001".into(),
        extranonce2: "00000000".into(),
        ntime: "665f1a2b".into(),
        nonce: format_compact!("{nonce:08x}"),
        version: Some("20000000".into()),
        accepted,
        reject_reason: (!accepted).then_some("duplicate"),
        difficulty: rust_decimal::Decimal::new(10, 8),
        hash_difficulty: 1.5,
        block_candidate: false,
        block_hash: None,
        forwarded: accepted,
        durable: None,
    }
}
