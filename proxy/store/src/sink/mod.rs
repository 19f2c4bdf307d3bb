//! Writing one batch of records, in one transaction, idempotently.
//!
//! Order of work in a batch: resolve (upsert) the pools, miners and workers the batch names
//! (ids are cached once the transaction has committed), apply connection lifecycle records
//! (each worker's in order), insert the shares with one statement (`COPY … FROM STDIN` on
//! PostgreSQL, one `INSERT … SELECT … FROM json_each(?)` over the batch as one JSON
//! parameter on SQLite), then move `workers.last_activity` /
//! `miners.last_seen` forward (on PostgreSQL skipping rows a concurrent batch holds, so
//! batches never queue on the miner row their workers share). Every step is idempotent and guarded
//! by the records' own timestamps, so a batch written twice, or replayed from the spool after
//! newer batches, leaves the same rows: on PostgreSQL a batch the unique keys refuse (it was
//! stored before) is written again as `INSERT … SELECT * FROM UNNEST(…) ON CONFLICT DO
//! NOTHING`.
//!
//! A batch the database refuses for a reason other than being unreachable (a constraint, a
//! value it will never take) is retried record by record; the records it still refuses are
//! "dead letters": appended to `dead-letter.log` in the spool directory and counted, never
//! retried forever.
//!
//! `postgres` and `sqlite` write a batch to each database; `copy` encodes shares in
//! PostgreSQL's binary `COPY` format.

mod copy;
mod postgres;
mod sqlite;

use crate::db::{Db, Store};
use crate::record::Record;
use crate::{Error, Result};
use foldhash::{HashMap, HashSet};
use rust_decimal::Decimal;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// New `submissions` rows.
    pub inserted: u64,
    /// Shares already present (a replay).
    pub duplicates: u64,
    /// Connect/disconnect records applied.
    pub lifecycle: u64,
    /// Records the database will never take.
    pub dead: Vec<String>,
    /// The first attempt failed: the batch was partly stored before (a replay) or refused.
    pub retried: bool,
}

/// Settings the sink needs besides the database.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub run_migrations: bool,
    pub pools: Vec<crate::PoolInfo>,
    pub partitions_ahead: u32,
    pub retention_months: u32,
    pub maintenance_every: Duration,
    /// SQLite: a batch's statements pause while this hold is open (see [`crate::WriteHold`];
    /// the writer sets it, unless sessions wait on group commit).
    pub hold: Option<crate::WriteHold>,
}

/// The database side of the writer: the connection pool and id caches.
pub struct Sink {
    store: Store,
    opts: SinkOptions,
    prepared: bool,
    next_maintenance: Instant,
    pools: HashMap<String, Uuid>,
    miners: HashMap<String, Uuid>,
    /// Worker ids by pool id, then worker name.
    workers: HashMap<Uuid, HashMap<String, Uuid>>,
    months: HashSet<i64>,
    /// `last_activity` written per worker (microseconds).
    activity: HashMap<Uuid, i64>,
}

/// What a share insert does with a row whose key is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflicts {
    /// Fail the batch (23505): the fast path (`COPY`), for a batch never written before.
    Refuse,
    /// Skip the row (`INSERT … ON CONFLICT DO NOTHING`): for a batch that may be stored
    /// already.
    Skip,
}

/// What [`Sink::resolve_pg`] found for a batch: the worker id of every (pool, worker) it
/// names, and the pools and workers it had to look up (not yet cached).
struct Resolved<'r> {
    ids: HashMap<(&'r str, &'r str), Uuid>,
    /// (name, id)
    pools: Vec<(String, Uuid)>,
    /// (pool id, worker name, id)
    workers: Vec<(Uuid, String, Uuid)>,
}

/// How far `workers.last_activity` and `miners.last_seen` may lag behind the newest share
/// (60 s): a worker's row is written at most once per this interval, not once per batch.
/// Each such write changes the worker's row, its place in `idx_workers_last_activity`, the
/// miner's row and its place in `idx_miners_last_seen`: four pages, against one for the
/// share itself. At 5 s a farm's miners at 0.2 shares/s were due at nearly every share and
/// the proxy's CPU was 17 % higher (BENCHMARKS.md). Nothing reads these columns at a finer
/// grain: the API shows connected workers from memory, a disconnect sets `last_activity` to
/// its own instant, and "idle" means no share for 5 minutes.
pub const ACTIVITY_EVERY_US: i64 = 60_000_000;

type Pg = sqlx::Postgres;
type Lite = sqlx::Sqlite;

impl Sink {
    pub fn new(store: Store, opts: SinkOptions) -> Self {
        Sink {
            store,
            opts,
            prepared: false,
            next_maintenance: Instant::now(),
            pools: HashMap::default(),
            miners: HashMap::default(),
            workers: HashMap::default(),
            months: HashSet::default(),
            activity: HashMap::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn worker_id(&self, pool: Uuid, worker: &str) -> Option<Uuid> {
        self.workers.get(&pool)?.get(worker).copied()
    }

    fn remember_worker(&mut self, pool: Uuid, worker: String, id: Uuid) {
        self.workers.entry(pool).or_default().insert(worker, id);
    }

    /// Of the newest instant per worker a batch shows, those due to be written (sorted by
    /// worker id): a worker's activity moves at most every `ACTIVITY_EVERY_US`.
    fn due_activity(&self, activity: HashMap<Uuid, i64>) -> Vec<(Uuid, i64)> {
        let mut due: Vec<(Uuid, i64)> = activity
            .into_iter()
            .filter(|(w, t)| {
                self.activity
                    .get(w)
                    .is_none_or(|last| *t - *last >= ACTIVITY_EVERY_US)
            })
            .collect();
        due.sort_unstable();
        due
    }

    fn forget(&mut self) {
        self.pools.clear();
        self.miners.clear();
        self.workers.clear();
        self.months.clear();
        self.activity.clear();
    }

    /// Migrations (if configured), partitions, the configured pools. Runs before the first
    /// write and again after the database was lost.
    pub async fn prepare(&mut self) -> Result<()> {
        if self.opts.run_migrations {
            self.store.migrate().await?;
        }
        self.store.upsert_pools(&self.opts.pools).await?;
        self.maintain().await?;
        self.prepared = true;
        Ok(())
    }

    /// Partitions ahead and retention (hourly).
    async fn maintain(&mut self) -> Result<()> {
        let made = self
            .store
            .ensure_partitions(self.opts.partitions_ahead)
            .await?;
        tracing::debug!(partitions = ?made, "submissions partitions ensured");
        if self.opts.retention_months > 0 {
            let dropped = self
                .store
                .apply_retention(self.opts.retention_months)
                .await?;
            if !dropped.is_empty() {
                tracing::info!(?dropped, "retention applied to submissions");
                self.months.clear();
            }
        }
        self.next_maintenance = Instant::now() + self.opts.maintenance_every;
        Ok(())
    }

    /// Write a batch; `Err` only for transient failures (retry later, the batch is intact).
    pub async fn write(&mut self, records: &[Record]) -> Result<Outcome> {
        let r = self.write_inner(records).await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    /// After a failed write, or one abandoned midway (a timeout): prepare again and look up
    /// every id again (one cached in a transaction that never committed names no row).
    pub fn reset(&mut self) {
        self.prepared = false;
        self.forget();
    }

    async fn write_inner(&mut self, records: &[Record]) -> Result<Outcome> {
        if !self.prepared {
            self.prepare().await?;
        } else if Instant::now() >= self.next_maintenance
            && let Err(e) = self.maintain().await
        {
            if e.is_transient() {
                return Err(e);
            }
            tracing::error!(error = %e, "storage maintenance failed");
            self.next_maintenance = Instant::now() + self.opts.maintenance_every;
        }
        // First attempt: shares without a conflict check (COPY). Every share row is new
        // unless this batch was written before (a retry after a lost commit, a spool replay),
        // and then the unique keys refuse it (23505) and the second attempt skips what is
        // already stored. Checking for conflicts before every row instead (ON CONFLICT DO
        // NOTHING) was a quarter of PostgreSQL's insert CPU under load.
        match self.write_once(records, Conflicts::Refuse).await {
            Ok(o) => return Ok(o),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) if e.is_unique_violation() => {
                tracing::debug!(
                    rows = records.len(),
                    "batch partly stored before; skipping what is there"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = records.len(), "batch refused; retrying it");
                self.forget();
            }
        }
        match self.write_once(records, Conflicts::Skip).await {
            Ok(o) => {
                return Ok(Outcome { retried: true, ..o });
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "batch refused again; isolating the bad records"),
        }
        let mut total = Outcome {
            retried: true,
            ..Outcome::default()
        };
        for r in records {
            match self
                .write_once(std::slice::from_ref(r), Conflicts::Skip)
                .await
            {
                Ok(o) => {
                    total.inserted += o.inserted;
                    total.duplicates += o.duplicates;
                    total.lifecycle += o.lifecycle;
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    self.forget();
                    tracing::error!(error = %e, record = ?r, "record refused by the database (dead letter)");
                    total.dead.push(format!("{e}\t{r:?}"));
                }
            }
        }
        Ok(total)
    }

    async fn write_once(&mut self, records: &[Record], conflicts: Conflicts) -> Result<Outcome> {
        match self.store.db.clone() {
            Db::Postgres(pool) => self.write_pg(&pool, records, conflicts).await,
            Db::Sqlite(pool) => {
                // Ids cached during a transaction that failed may name rows it never
                // committed; SQLite fails rarely (one writer), so drop the whole cache then.
                let r = self.write_sqlite(&pool, records).await;
                if r.is_err() {
                    self.forget();
                }
                r
            }
        }
    }
}

fn names(r: &Record) -> Option<(&str, &str)> {
    match r {
        Record::Share(s) => Some((&*s.pool, &*s.worker)),
        Record::Connect(c) => Some((c.pool.as_str(), c.worker.as_str())),
        Record::Disconnect(_) => None,
    }
}

pub(crate) fn parse_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| Error::Invalid(format!("bad id {s:?}: {e}")))
}

/// The worker a connect or disconnect record is about (shares: none), to order them.
fn lifecycle_worker(r: &Record) -> &str {
    match r {
        Record::Connect(c) => &c.worker,
        Record::Disconnect(d) => &d.worker,
        Record::Share(_) => "",
    }
}

/// Exact decimal from SQLite text (NULL/garbage → 0).
pub(crate) fn dec(s: Option<&str>) -> Decimal {
    s.and_then(|s| s.parse().ok()).unwrap_or_default()
}
