//! The database: PostgreSQL (production) or SQLite (embedded default), with the same logical
//! schema. Migrations, the configured pools, `submissions` partitions and retention, health.

use crate::Result;
use chrono::{DateTime, TimeZone, Utc};
use loka_config::StorageConfig;
use serde::Serialize;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::{Duration, Instant};

pub static PG_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
pub static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// One configured upstream pool, as recorded in `pools` (never its password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub username: String,
}

impl From<&loka_config::PoolConfig> for PoolInfo {
    fn from(p: &loka_config::PoolConfig) -> Self {
        PoolInfo {
            name: p.name.clone(),
            host: p.host.clone(),
            port: p.port,
            username: p.username.clone(),
        }
    }
}

/// The migrations part of `/health/database`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    /// The newest applied migration's version (`None`: nothing applied yet).
    pub current_version: Option<String>,
    /// Migrations shipped with this binary and not applied to the database.
    pub pending: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionPoolHealth {
    pub active: u32,
    pub idle: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueryPerformance {
    pub avg_response_time_ms: f64,
    pub slow_queries: u64,
}

/// The `GET /health/database` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseHealth {
    /// `healthy`, `degraded` (reachable, but the writer is spooling or failing) or `unhealthy`.
    pub status: &'static str,
    pub backend: Backend,
    pub connection_pool: ConnectionPoolHealth,
    pub query_performance: QueryPerformance,
    pub migrations: Option<MigrationStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A handle on the share database (cheap to clone).
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: Db,
    max_connections: u32,
}

/// Timestamps: microseconds since the epoch ↔ UTC.
pub fn utc(at_us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(at_us).single().unwrap_or_default()
}

/// SQLite's text form of an instant: `YYYY-MM-DD HH:MM:SS.ffffff` (UTC; sorts like time).
pub fn sqlite_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

pub fn parse_sqlite_time(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

impl Store {
    /// Open the pool without touching the database yet (so the proxy starts while the
    /// database is down; the writer spools until it is reachable).
    pub fn connect_lazy(cfg: &StorageConfig) -> Result<Store> {
        let max = cfg.max_connections.max(1);
        let url = cfg.database_url.trim();
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?.application_name("loka-proxy");
            Db::Postgres(
                PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(opts),
            )
        } else {
            let opts = if url.is_empty() {
                SqliteConnectOptions::new().filename(&cfg.sqlite_path)
            } else {
                SqliteConnectOptions::from_str(url)?
            };
            let opts = opts
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                // A statement inside a transaction that may abort on a constraint (a batch's
                // activity updates, the accounting's) keeps a statement journal of the pages
                // it changes; in memory it is not written to a temporary file and read back.
                // The shares' INSERT, the one that changes hundreds of pages, runs outside a
                // transaction and keeps none (sink/sqlite.rs).
                .pragma("temp_store", "memory")
                .busy_timeout(Duration::from_secs(5));
            Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(opts),
            )
        };
        Ok(Store {
            db,
            max_connections: max,
        })
    }

    /// For SQLite: a pool of its own on the same database and with the same settings, no
    /// connection open yet. SQLite runs a connection's statements on a thread that the
    /// connection starts when it opens (`loka-sqlite-writer-N` here), at the priority of the
    /// thread that opened it, so the writer's connections, opened by the writer on its own
    /// lower-priority thread, run at that priority too, whoever opened the shared pool's.
    /// `None` for PostgreSQL: its work runs in the server, the shared pool serves.
    pub fn separate_writer_pool(&self) -> Option<Store> {
        match &self.db {
            Db::Postgres(_) => None,
            Db::Sqlite(p) => {
                let opts = (*p.connect_options())
                    .clone()
                    .thread_name(|id| format!("loka-sqlite-writer-{id}"));
                Some(Store {
                    db: Db::Sqlite(p.options().clone().connect_lazy_with(opts)),
                    max_connections: self.max_connections,
                })
            }
        }
    }

    /// Connect, check the database answers, and (if `run_migrations`) migrate.
    pub async fn open(cfg: &StorageConfig) -> Result<Store> {
        let store = Store::connect_lazy(cfg)?;
        if cfg.run_migrations {
            store.migrate().await?;
        } else {
            store.ping().await?;
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    pub fn pg(&self) -> Option<&PgPool> {
        match &self.db {
            Db::Postgres(p) => Some(p),
            Db::Sqlite(_) => None,
        }
    }

    pub fn sqlite(&self) -> Option<&SqlitePool> {
        match &self.db {
            Db::Sqlite(p) => Some(p),
            Db::Postgres(_) => None,
        }
    }

    pub fn migrator(&self) -> &'static Migrator {
        match self.db {
            Db::Postgres(_) => &PG_MIGRATIONS,
            Db::Sqlite(_) => &SQLITE_MIGRATIONS,
        }
    }

    /// Apply pending migrations (PostgreSQL: under sqlx's advisory lock, so replicas
    /// starting together migrate once).
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Postgres(p) => PG_MIGRATIONS.run(p).await?,
            Db::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        match &self.db {
            Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await?,
            Db::Sqlite(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
                return Ok(started.elapsed());
            }
        };
        Ok(started.elapsed())
    }

    /// `current_version` and `pending` for `/health/database`.
    pub async fn migration_status(&self) -> Result<MigrationStatus> {
        let sql = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let applied: std::result::Result<Vec<i64>, sqlx::Error> = match &self.db {
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        };
        let applied = match applied {
            Ok(v) => v,
            // no migrations table yet: nothing applied
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01"))
                    || e.message().contains("no such table") =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        let pending = self
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .count();
        Ok(MigrationStatus {
            current_version: applied.last().map(|v| v.to_string()),
            pending,
        })
    }

    /// The `/health/database` body; `writer` adds the writer's view (batch latency, errors).
    pub async fn health(&self, writer: Option<&crate::StoreStatus>) -> DatabaseHealth {
        let (size, idle) = match &self.db {
            Db::Postgres(p) => (p.size(), p.num_idle() as u32),
            Db::Sqlite(p) => (p.size(), p.num_idle() as u32),
        };
        let ping = tokio::time::timeout(Duration::from_secs(3), self.ping()).await;
        let (reachable, error, ping_ms) = match ping {
            Ok(Ok(d)) => (true, None, d.as_secs_f64() * 1e3),
            Ok(Err(e)) => (false, Some(e.to_string()), 0.0),
            Err(_) => (false, Some("ping timed out".into()), 0.0),
        };
        let migrations = if reachable {
            self.migration_status().await.ok()
        } else {
            None
        };
        let (avg_ms, slow) = match writer {
            Some(w) if w.batches_written > 0 => (w.batch_latency_avg_ms, w.slow_batches),
            Some(w) => (ping_ms, w.slow_batches),
            None => (ping_ms, 0),
        };
        let degraded = writer.is_some_and(|w| !w.db_up || w.spool_bytes > 0)
            || migrations.as_ref().is_some_and(|m| m.pending > 0);
        DatabaseHealth {
            status: if !reachable {
                "unhealthy"
            } else if degraded {
                "degraded"
            } else {
                "healthy"
            },
            backend: self.backend(),
            connection_pool: ConnectionPoolHealth {
                active: size.saturating_sub(idle),
                idle,
                max: self.max_connections,
            },
            query_performance: QueryPerformance {
                avg_response_time_ms: avg_ms,
                slow_queries: slow,
            },
            migrations,
            error,
        }
    }

    /// Record the configured pools (upsert by name; host/port/account follow the config).
    pub async fn upsert_pools(&self, pools: &[PoolInfo]) -> Result<()> {
        for p in pools {
            match &self.db {
                Db::Postgres(db) => {
                    sqlx::query(
                        "INSERT INTO pools (name, host, port, username, active) \
                         VALUES ($1, $2, $3, $4, true) \
                         ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, \
                           port = EXCLUDED.port, username = EXCLUDED.username, active = true, \
                           updated_at = NOW() \
                         WHERE (pools.host, pools.port, pools.username, pools.active) \
                           IS DISTINCT FROM (EXCLUDED.host, EXCLUDED.port, EXCLUDED.username, true)",
                    )
                    .bind(&p.name)
                    .bind(&p.host)
                    .bind(i32::from(p.port))
                    .bind(&p.username)
                    .execute(db)
                    .await?;
                }
                Db::Sqlite(db) => {
                    sqlx::query(
                        "INSERT INTO pools (id, name, host, port, username, active) \
                         VALUES (?1, ?2, ?3, ?4, ?5, 1) \
                         ON CONFLICT (name) DO UPDATE SET host = excluded.host, \
                           port = excluded.port, username = excluded.username, active = 1, \
                           updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')",
                    )
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&p.name)
                    .bind(&p.host)
                    .bind(i32::from(p.port))
                    .bind(&p.username)
                    .execute(db)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// PostgreSQL: make sure the current month and `ahead` months have partitions; returns
    /// their names. SQLite: nothing to do.
    pub async fn ensure_partitions(&self, ahead: u32) -> Result<Vec<String>> {
        match &self.db {
            Db::Postgres(p) => Ok(sqlx::query_scalar(
                "SELECT loka_ensure_submission_partitions($1)",
            )
            .bind(ahead as i32)
            .fetch_all(p)
            .await?),
            Db::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// PostgreSQL: the partition for the month of `at` (created if missing).
    pub async fn ensure_partition_for(&self, at: DateTime<Utc>) -> Result<Option<String>> {
        match &self.db {
            Db::Postgres(p) => Ok(Some(
                sqlx::query_scalar("SELECT loka_submission_partition($1)")
                    .bind(at)
                    .fetch_one(p)
                    .await?,
            )),
            Db::Sqlite(_) => Ok(None),
        }
    }

    /// The `submissions` partitions that exist (PostgreSQL), oldest first.
    pub async fn partitions(&self) -> Result<Vec<String>> {
        match &self.db {
            Db::Postgres(p) => Ok(sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'submissions'::regclass ORDER BY 1",
            )
            .fetch_all(p)
            .await?),
            Db::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Retention: keep `keep_months` months before the current one. PostgreSQL drops whole
    /// partitions (returns their names); SQLite deletes rows (returns how many, as text).
    pub async fn apply_retention(&self, keep_months: u32) -> Result<Vec<String>> {
        match &self.db {
            Db::Postgres(p) => Ok(
                sqlx::query_scalar("SELECT loka_drop_submission_partitions($1)")
                    .bind(keep_months as i32)
                    .fetch_all(p)
                    .await?,
            ),
            Db::Sqlite(p) => {
                let cutoff = month_start(Utc::now())
                    .checked_sub_months(chrono::Months::new(keep_months))
                    .unwrap_or_default();
                let r = sqlx::query("DELETE FROM submissions WHERE submitted_at < ?1")
                    .bind(sqlite_time(cutoff))
                    .execute(p)
                    .await?;
                Ok(vec![r.rows_affected().to_string()])
            }
        }
    }

    /// Close the pool.
    pub async fn close(&self) {
        match &self.db {
            Db::Postgres(p) => p.close().await,
            Db::Sqlite(p) => p.close().await,
        }
    }

    /// Count of `submissions` rows (tests and tools).
    pub async fn count_submissions(&self) -> Result<i64> {
        let sql = "SELECT COUNT(*) FROM submissions";
        Ok(match &self.db {
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        })
    }
}

/// The first instant of the UTC month of `t`.
pub fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Datelike;
    t.date_naive()
        .with_day(1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_times_sort_like_instants_and_round_trip() {
        let a = utc(1_700_000_000_123_456);
        let b = utc(1_700_000_001_000_000);
        assert!(sqlite_time(a) < sqlite_time(b));
        assert_eq!(sqlite_time(a), "2023-11-14 22:13:20.123456");
        assert_eq!(parse_sqlite_time(&sqlite_time(a)), Some(a));
        // SQLite's own datetime('now') form compares correctly with ours
        assert!("2023-11-14 22:13:20" < sqlite_time(a).as_str());
    }
}
