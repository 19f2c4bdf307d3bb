//! The read side for the API: per-worker and per-pool statistics from the database (history
//! that survives a restart), and three fixed reporting queries (active workers by pool, pool performance, miner earnings).
//!
//! Every per-worker query is driven from `workers` and reaches `submissions` through the
//! unique key's index `(worker_id, submitted_at, …)`, so it reads only that worker's rows in
//! the window (and, on PostgreSQL, only the partitions the window touches). `EXPLAIN` output
//! for these is produced by [`Store::explain_hot_queries`] and shown in the README.

#![allow(clippy::type_complexity)] // query rows are read as tuples

use crate::Result;
use crate::db::{Db, Store, parse_sqlite_time, sqlite_time};
use crate::sink::dec;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use std::time::Duration;

/// Active workers by pool (PostgreSQL).
pub const ACTIVE_WORKERS_BY_POOL: &str = r#"SELECT 
    w.worker_name,
    m.username,
    w.connected_at,
    w.last_activity,
    COUNT(s.id) as total_shares,
    COUNT(s.id) FILTER (WHERE s.accepted = true) as accepted_shares
FROM workers w
JOIN miners m ON w.miner_id = m.id
JOIN pools p ON w.pool_id = p.id
LEFT JOIN submissions s ON w.id = s.worker_id 
    AND s.submitted_at > NOW() - INTERVAL '1 hour'
WHERE w.active = true 
    AND p.name = $1
GROUP BY w.id, w.worker_name, m.username, w.connected_at, w.last_activity
ORDER BY w.last_activity DESC;"#;

/// Pool performance statistics (PostgreSQL).
pub const POOL_PERFORMANCE: &str = r#"SELECT 
    p.name,
    COUNT(DISTINCT w.id) as active_workers,
    COUNT(s.id) as total_shares,
    COUNT(s.id) FILTER (WHERE s.accepted = true) as accepted_shares,
    ROUND(
        COUNT(s.id) FILTER (WHERE s.accepted = true)::numeric / 
        NULLIF(COUNT(s.id), 0) * 100, 2
    ) as acceptance_rate,
    AVG(s.difficulty) as avg_difficulty
FROM pools p
LEFT JOIN workers w ON p.id = w.pool_id AND w.active = true
LEFT JOIN submissions s ON w.id = s.worker_id 
    AND s.submitted_at > NOW() - INTERVAL '1 hour'
WHERE p.active = true
GROUP BY p.id, p.name
ORDER BY active_workers DESC;"#;

/// Miner earnings summary (PostgreSQL).
pub const MINER_EARNINGS_SUMMARY: &str = r#"SELECT 
    m.username,
    m.btc_address,
    COUNT(DISTINCT w.id) as active_workers,
    SUM(d.amount_btc) as total_earnings_btc,
    COUNT(d.id) FILTER (WHERE d.status = 'confirmed') as confirmed_payments
FROM miners m
LEFT JOIN workers w ON m.id = w.miner_id AND w.active = true
LEFT JOIN distributions d ON m.id = d.miner_id
WHERE m.active = true
GROUP BY m.id, m.username, m.btc_address
ORDER BY total_earnings_btc DESC NULLS LAST;"#;

const LITE_ACTIVE_WORKERS_BY_POOL: &str = r#"SELECT
    w.worker_name, m.username, w.connected_at, w.last_activity,
    COUNT(s.id) AS total_shares,
    COUNT(s.id) FILTER (WHERE s.accepted = 1) AS accepted_shares
FROM workers w
JOIN miners m ON w.miner_id = m.id
JOIN pools p ON w.pool_id = p.id
LEFT JOIN submissions s ON w.id = s.worker_id
    AND s.submitted_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 hour')
WHERE w.active = 1 AND p.name = ?1
GROUP BY w.id, w.worker_name, m.username, w.connected_at, w.last_activity
ORDER BY w.last_activity DESC"#;

const LITE_POOL_PERFORMANCE: &str = r#"SELECT
    p.name,
    COUNT(DISTINCT w.id) AS active_workers,
    COUNT(s.id) AS total_shares,
    COUNT(s.id) FILTER (WHERE s.accepted = 1) AS accepted_shares,
    group_concat(s.difficulty) AS difficulties
FROM pools p
LEFT JOIN workers w ON p.id = w.pool_id AND w.active = 1
LEFT JOIN submissions s ON w.id = s.worker_id
    AND s.submitted_at > strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 hour')
WHERE p.active = 1
GROUP BY p.id, p.name
ORDER BY active_workers DESC"#;

const LITE_MINER_EARNINGS_SUMMARY: &str = r#"SELECT
    m.username, m.btc_address,
    (SELECT COUNT(*) FROM workers w WHERE w.miner_id = m.id AND w.active = 1) AS active_workers,
    group_concat(d.amount_btc) AS amounts,
    COUNT(d.id) FILTER (WHERE d.status = 'confirmed') AS confirmed_payments
FROM miners m
LEFT JOIN distributions d ON m.id = d.miner_id
WHERE m.active = 1
GROUP BY m.id, m.username, m.btc_address"#;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveWorker {
    pub worker_name: String,
    pub username: String,
    pub connected_at: Option<DateTime<Utc>>,
    pub last_activity: Option<DateTime<Utc>>,
    pub total_shares: i64,
    pub accepted_shares: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolPerformance {
    pub name: String,
    pub active_workers: i64,
    pub total_shares: i64,
    pub accepted_shares: i64,
    pub acceptance_rate: Option<Decimal>,
    pub avg_difficulty: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinerEarnings {
    pub username: String,
    pub btc_address: Option<String>,
    pub active_workers: i64,
    pub total_earnings_btc: Option<Decimal>,
    pub confirmed_payments: i64,
}

/// One worker over a window (for `/stats/workers`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStats {
    pub worker_name: String,
    pub username: String,
    pub pool: String,
    pub active: bool,
    pub connected_at: Option<DateTime<Utc>>,
    pub last_activity: Option<DateTime<Utc>>,
    pub remote_addr: Option<String>,
    pub user_agent: Option<String>,
    pub submitted: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub accepted_difficulty: Decimal,
    /// Hashes per second implied by the accepted difficulty over the window.
    pub hashrate_hs: f64,
}

/// One time bucket of a worker's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryPoint {
    pub at: DateTime<Utc>,
    pub submitted: i64,
    pub accepted: i64,
    pub accepted_difficulty: Decimal,
    pub hashrate_hs: f64,
}

/// Hashes per second for `difficulty` accepted over `secs` (difficulty × 2³² / s).
pub fn hashrate(difficulty: Decimal, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    difficulty.to_f64().unwrap_or(0.0) * 4_294_967_296.0 / secs
}

fn chrono_dur(d: Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

fn t(s: Option<String>) -> Option<DateTime<Utc>> {
    s.as_deref().and_then(parse_sqlite_time)
}

type PgWorkerRow = (
    String,
    String,
    String,
    bool,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Decimal,
);

type LiteWorkerRow = (
    String,
    String,
    String,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<String>,
);

const PG_WORKER_STATS: &str = "SELECT w.worker_name::text, m.username::text, p.name::text, w.active, \
       w.connected_at, w.last_activity, host(w.remote_addr), w.user_agent::text, \
       COALESCE(s.submitted, 0), COALESCE(s.accepted, 0), COALESCE(s.accepted_difficulty, 0) \
     FROM workers w \
     JOIN miners m ON m.id = w.miner_id \
     JOIN pools p ON p.id = w.pool_id \
     LEFT JOIN LATERAL ( \
       SELECT COUNT(*) AS submitted, COUNT(*) FILTER (WHERE x.accepted) AS accepted, \
              SUM(x.difficulty) FILTER (WHERE x.accepted) AS accepted_difficulty \
       FROM submissions x WHERE x.worker_id = w.id AND x.submitted_at > $1) s ON true \
     WHERE (w.active OR w.last_activity > $1) AND ($3::text IS NULL OR w.worker_name = $3) \
     ORDER BY w.last_activity DESC NULLS LAST, w.worker_name LIMIT $2";

const LITE_WORKER_STATS: &str = "SELECT w.worker_name, m.username, p.name, w.active, \
       w.connected_at, w.last_activity, w.remote_addr, w.user_agent, \
       (SELECT COUNT(*) FROM submissions x WHERE x.worker_id = w.id AND x.submitted_at > ?1), \
       (SELECT COUNT(*) FROM submissions x WHERE x.worker_id = w.id AND x.submitted_at > ?1 AND x.accepted), \
       (SELECT group_concat(x.difficulty) FROM submissions x \
          WHERE x.worker_id = w.id AND x.submitted_at > ?1 AND x.accepted) \
     FROM workers w \
     JOIN miners m ON m.id = w.miner_id \
     JOIN pools p ON p.id = w.pool_id \
     WHERE (w.active OR w.last_activity > ?1) AND (?3 IS NULL OR w.worker_name = ?3) \
     ORDER BY w.last_activity DESC, w.worker_name LIMIT ?2";

const PG_WORKER_HISTORY: &str = "SELECT date_bin(make_interval(secs => $3), s.submitted_at, \
         TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket, \
       COUNT(*), COUNT(*) FILTER (WHERE s.accepted), \
       COALESCE(SUM(s.difficulty) FILTER (WHERE s.accepted), 0) \
     FROM workers w JOIN submissions s ON s.worker_id = w.id \
     WHERE w.worker_name = $1 AND s.submitted_at > $2 \
     GROUP BY 1 ORDER BY 1";

const LITE_WORKER_HISTORY: &str = "SELECT (CAST(strftime('%s', s.submitted_at) AS INTEGER) / ?3) * ?3 AS bucket, \
       COUNT(*), SUM(s.accepted), group_concat(CASE WHEN s.accepted THEN s.difficulty END) \
     FROM workers w JOIN submissions s ON s.worker_id = w.id \
     WHERE w.worker_name = ?1 AND s.submitted_at > ?2 \
     GROUP BY 1 ORDER BY 1";

fn sum_list(list: Option<&str>) -> Decimal {
    list.map(|l| l.split(',').map(|x| dec(Some(x))).sum())
        .unwrap_or_default()
}

impl Store {
    /// Active workers by pool.
    pub async fn active_workers_by_pool(&self, pool: &str) -> Result<Vec<ActiveWorker>> {
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<(
                    String,
                    String,
                    Option<DateTime<Utc>>,
                    Option<DateTime<Utc>>,
                    i64,
                    i64,
                )> = sqlx::query_as(ACTIVE_WORKERS_BY_POOL)
                    .bind(pool)
                    .fetch_all(p)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| ActiveWorker {
                        worker_name: r.0,
                        username: r.1,
                        connected_at: r.2,
                        last_activity: r.3,
                        total_shares: r.4,
                        accepted_shares: r.5,
                    })
                    .collect())
            }
            Db::Sqlite(p) => {
                let rows: Vec<(String, String, Option<String>, Option<String>, i64, i64)> =
                    sqlx::query_as(LITE_ACTIVE_WORKERS_BY_POOL)
                        .bind(pool)
                        .fetch_all(p)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| ActiveWorker {
                        worker_name: r.0,
                        username: r.1,
                        connected_at: t(r.2),
                        last_activity: t(r.3),
                        total_shares: r.4,
                        accepted_shares: r.5,
                    })
                    .collect())
            }
        }
    }

    /// Pool performance statistics.
    pub async fn pool_performance(&self) -> Result<Vec<PoolPerformance>> {
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<(String, i64, i64, i64, Option<Decimal>, Option<Decimal>)> =
                    sqlx::query_as(POOL_PERFORMANCE).fetch_all(p).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| PoolPerformance {
                        name: r.0,
                        active_workers: r.1,
                        total_shares: r.2,
                        accepted_shares: r.3,
                        acceptance_rate: r.4,
                        avg_difficulty: r.5,
                    })
                    .collect())
            }
            Db::Sqlite(p) => {
                let rows: Vec<(String, i64, i64, i64, Option<String>)> =
                    sqlx::query_as(LITE_POOL_PERFORMANCE).fetch_all(p).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        let rate = (r.2 > 0).then(|| {
                            (Decimal::from(r.3) * Decimal::from(100) / Decimal::from(r.2))
                                .round_dp(2)
                        });
                        let avg = (r.2 > 0).then(|| sum_list(r.4.as_deref()) / Decimal::from(r.2));
                        PoolPerformance {
                            name: r.0,
                            active_workers: r.1,
                            total_shares: r.2,
                            accepted_shares: r.3,
                            acceptance_rate: rate,
                            avg_difficulty: avg,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Miner earnings summary.
    pub async fn miner_earnings_summary(&self) -> Result<Vec<MinerEarnings>> {
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<(String, Option<String>, i64, Option<Decimal>, i64)> =
                    sqlx::query_as(MINER_EARNINGS_SUMMARY).fetch_all(p).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| MinerEarnings {
                        username: r.0,
                        btc_address: r.1,
                        active_workers: r.2,
                        total_earnings_btc: r.3.map(|d| d.normalize()),
                        confirmed_payments: r.4,
                    })
                    .collect())
            }
            Db::Sqlite(p) => {
                let rows: Vec<(String, Option<String>, i64, Option<String>, i64)> =
                    sqlx::query_as(LITE_MINER_EARNINGS_SUMMARY)
                        .fetch_all(p)
                        .await?;
                let mut v: Vec<MinerEarnings> = rows
                    .into_iter()
                    .map(|r| MinerEarnings {
                        username: r.0,
                        btc_address: r.1,
                        active_workers: r.2,
                        total_earnings_btc: r.3.as_deref().map(|l| sum_list(Some(l)).normalize()),
                        confirmed_payments: r.4,
                    })
                    .collect();
                // ORDER BY total_earnings_btc DESC NULLS LAST, exactly
                v.sort_by(|a, b| match (a.total_earnings_btc, b.total_earnings_btc) {
                    (Some(x), Some(y)) => y.cmp(&x),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => a.username.cmp(&b.username),
                });
                Ok(v)
            }
        }
    }

    /// Workers active now or within `window`, with their shares in the window (newest
    /// activity first, at most `limit`); `worker` narrows to one login.
    pub async fn worker_stats(
        &self,
        window: Duration,
        limit: i64,
        worker: Option<&str>,
    ) -> Result<Vec<WorkerStats>> {
        let since = Utc::now() - chrono_dur(window);
        let secs = window.as_secs_f64();
        let rows: Vec<WorkerStats> = match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<PgWorkerRow> = sqlx::query_as(PG_WORKER_STATS)
                    .bind(since)
                    .bind(limit)
                    .bind(worker)
                    .fetch_all(p)
                    .await?;
                rows.into_iter()
                    .map(|r| WorkerStats {
                        worker_name: r.0,
                        username: r.1,
                        pool: r.2,
                        active: r.3,
                        connected_at: r.4,
                        last_activity: r.5,
                        remote_addr: r.6,
                        user_agent: r.7,
                        submitted: r.8,
                        accepted: r.9,
                        rejected: r.8 - r.9,
                        accepted_difficulty: r.10.normalize(),
                        hashrate_hs: hashrate(r.10, secs),
                    })
                    .collect()
            }
            Db::Sqlite(p) => {
                let rows: Vec<LiteWorkerRow> = sqlx::query_as(LITE_WORKER_STATS)
                    .bind(sqlite_time(since))
                    .bind(limit)
                    .bind(worker)
                    .fetch_all(p)
                    .await?;
                rows.into_iter()
                    .map(|r| {
                        let d = sum_list(r.10.as_deref());
                        WorkerStats {
                            worker_name: r.0,
                            username: r.1,
                            pool: r.2,
                            active: r.3,
                            connected_at: t(r.4),
                            last_activity: t(r.5),
                            remote_addr: r.6,
                            user_agent: r.7,
                            submitted: r.8,
                            accepted: r.9,
                            rejected: r.8 - r.9,
                            accepted_difficulty: d.normalize(),
                            hashrate_hs: hashrate(d, secs),
                        }
                    })
                    .collect()
            }
        };
        Ok(rows)
    }

    /// One worker's shares over `window` in buckets of `bucket` (history charts).
    pub async fn worker_history(
        &self,
        worker: &str,
        window: Duration,
        bucket: Duration,
    ) -> Result<Vec<HistoryPoint>> {
        let since = Utc::now() - chrono_dur(window);
        let bucket_secs = bucket.as_secs().max(1);
        let secs = bucket_secs as f64;
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<(DateTime<Utc>, i64, i64, Decimal)> =
                    sqlx::query_as(PG_WORKER_HISTORY)
                        .bind(worker)
                        .bind(since)
                        .bind(bucket_secs as f64)
                        .fetch_all(p)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| HistoryPoint {
                        at: r.0,
                        submitted: r.1,
                        accepted: r.2,
                        accepted_difficulty: r.3.normalize(),
                        hashrate_hs: hashrate(r.3, secs),
                    })
                    .collect())
            }
            Db::Sqlite(p) => {
                let rows: Vec<(i64, i64, i64, Option<String>)> =
                    sqlx::query_as(LITE_WORKER_HISTORY)
                        .bind(worker)
                        .bind(sqlite_time(since))
                        .bind(bucket_secs as i64)
                        .fetch_all(p)
                        .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        let d = sum_list(r.3.as_deref());
                        HistoryPoint {
                            at: DateTime::from_timestamp(r.0, 0).unwrap_or_default(),
                            submitted: r.1,
                            accepted: r.2,
                            accepted_difficulty: d.normalize(),
                            hashrate_hs: hashrate(d, secs),
                        }
                    })
                    .collect())
            }
        }
    }

    /// `EXPLAIN` of the hot read queries (PostgreSQL; SQLite: `EXPLAIN QUERY PLAN`), with
    /// sample parameters: (name, plan text).
    pub async fn explain_hot_queries(
        &self,
        worker: &str,
        pool: &str,
    ) -> Result<Vec<(String, String)>> {
        let since = Utc::now() - ChronoDuration::hours(1);
        let mut out = Vec::new();
        match &self.db {
            Db::Postgres(p) => {
                let plans: Vec<(&str, String)> = vec![
                    ("worker_stats", format!("EXPLAIN {PG_WORKER_STATS}")),
                    ("worker_history", format!("EXPLAIN {PG_WORKER_HISTORY}")),
                    (
                        "active_workers_by_pool",
                        format!("EXPLAIN {}", ACTIVE_WORKERS_BY_POOL.trim_end_matches(';')),
                    ),
                    (
                        "pool_performance",
                        format!("EXPLAIN {}", POOL_PERFORMANCE.trim_end_matches(';')),
                    ),
                ];
                for (name, sql) in plans {
                    let q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
                    let q = match name {
                        "worker_stats" => q.bind(since).bind(100i64).bind(Some(worker)),
                        "worker_history" => q.bind(worker).bind(since).bind(60.0f64),
                        "active_workers_by_pool" => q.bind(pool),
                        _ => q,
                    };
                    let lines: Vec<String> = q.fetch_all(p).await?;
                    out.push((name.to_string(), lines.join("\n")));
                }
            }
            Db::Sqlite(p) => {
                for (name, sql) in [
                    ("worker_stats", LITE_WORKER_STATS),
                    ("worker_history", LITE_WORKER_HISTORY),
                ] {
                    let q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(
                        format!("EXPLAIN QUERY PLAN {sql}"),
                    ));
                    let q = match name {
                        "worker_stats" => {
                            q.bind(sqlite_time(since)).bind(100i64).bind(Some(worker))
                        }
                        _ => q.bind(worker).bind(sqlite_time(since)).bind(60i64),
                    };
                    let rows = q.fetch_all(p).await?;
                    let text: Vec<String> = rows.into_iter().map(|r| r.3).collect();
                    out.push((name.to_string(), text.join("\n")));
                }
            }
        }
        Ok(out)
    }
}
