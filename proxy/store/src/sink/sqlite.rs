//! Writing a batch to SQLite: the same steps as PostgreSQL; shares and activity each by one
//! statement over the batch passed as JSON (`json_each`).
//!
//! A batch is three commits, not one: the workers and connection records, then the shares'
//! INSERT alone (autocommit), then the activity. A statement inside a transaction that may
//! abort on a constraint (the shares' CHECKs and foreign key) makes SQLite keep a statement
//! journal: a copy of every page the statement changes, so that it can be undone without the
//! transaction. A batch's shares change about one leaf of the worker-first share key per
//! share (each worker's newest entries), 4 kB each, so at 10,000 shares/s that copy was
//! megabytes per batch, all of it memory (`temp_store = memory`). A statement that is its
//! own transaction is undone by the transaction's rollback and keeps no such copy. Each
//! step is safe to repeat: a batch retried after the shares were committed finds them there
//! and counts them as duplicates, as after a lost commit.

use super::{Lite, Outcome, Sink, names, parse_id};
use crate::db::{sqlite_time, utc};
use crate::record::{Record, ShareRecord, miner_of};
use crate::{Error, Result};
use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use uuid::Uuid;

/// SQLite virtual machine steps between two looks at the write hold.
const PROGRESS_STEPS: i32 = 10_000;

/// Cleared when a batch's write ends, however it ends.
struct BatchAlive(Arc<AtomicBool>);

impl Drop for BatchAlive {
    fn drop(&mut self) {
        self.0.store(false, Relaxed);
    }
}

/// Appends one share to `out` as the JSON array the INSERT reads, in its column order.
fn push_share_row(out: &mut Vec<u8>, s: &ShareRecord, worker: &Uuid) -> Result<()> {
    let row = (
        &s.id,
        worker,
        &s.job_id,
        &s.extranonce1,
        &s.extranonce2,
        &s.ntime,
        &s.nonce,
        &s.version,
        s.accepted,
        &s.reject_reason,
        s.difficulty.normalize().to_string(),
        &s.block_hash,
        sqlite_time(utc(s.at_us)),
    );
    out.push(if out.is_empty() { b'[' } else { b',' });
    serde_json::to_writer(out, &row).map_err(|e| Error::Invalid(format!("share as JSON: {e}")))
}

impl Sink {
    // --- SQLite ------------------------------------------------------------------------------

    pub(super) async fn write_sqlite(
        &mut self,
        pool: &sqlx::SqlitePool,
        records: &[Record],
    ) -> Result<Outcome> {
        let mut conn = pool.acquire().await?;
        let Some(hold) = self.opts.hold.clone() else {
            return self.write_sqlite_on(&mut conn, records).await;
        };
        // Every ~10,000 virtual machine steps (about a hundred shares' rows), SQLite's thread
        // waits while a job goes out to the miners: a batch running when the job arrives then
        // leaves the cores to the sessions too, within ~5 ms; at most the hold's cap in all.
        // Only for this batch: the connection may go back to a pool others read through, and
        // if this future is dropped (a write timeout) the handler it leaves does nothing.
        let batch = BatchAlive(Arc::new(AtomicBool::new(true)));
        let alive = batch.0.clone();
        let deadline = std::time::Instant::now() + hold.cap();
        conn.lock_handle()
            .await?
            .set_progress_handler(PROGRESS_STEPS, move || {
                if alive.load(Relaxed) {
                    hold.wait_blocking(deadline);
                }
                true
            });
        let r = self.write_sqlite_on(&mut conn, records).await;
        drop(batch);
        if let Ok(mut handle) = conn.lock_handle().await {
            handle.remove_progress_handler();
        }
        r
    }

    async fn write_sqlite_on(
        &mut self,
        conn: &mut sqlx::SqliteConnection,
        records: &[Record],
    ) -> Result<Outcome> {
        use sqlx::Connection as _;
        let mut tx = conn.begin().await?;
        let mut out = Outcome::default();
        let mut ids: HashMap<(&str, &str), Uuid> = HashMap::default();
        for (p, w) in records.iter().filter_map(names) {
            if let std::collections::hash_map::Entry::Vacant(slot) = ids.entry((p, w)) {
                slot.insert(self.sqlite_worker(&mut tx, p, w).await?);
            }
        }
        let mut activity: HashMap<Uuid, i64> = HashMap::default();
        for r in records {
            match r {
                Record::Connect(c) => {
                    let id = ids[&(c.pool.as_str(), c.worker.as_str())];
                    let at = sqlite_time(utc(c.at_us));
                    sqlx::query(
                        "UPDATE workers SET remote_addr = ?2, user_agent = ?3, active = 1, \
                           connected_at = ?4, last_activity = MAX(COALESCE(last_activity, ''), ?4), \
                           connection_id = ?5, disconnect_reason = NULL, \
                           updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
                         WHERE id = ?1 AND (connected_at IS NULL OR connected_at <= ?4)",
                    )
                    .bind(id.to_string())
                    .bind(c.remote.map(|ip| ip.to_string()))
                    .bind(c.user_agent.as_deref())
                    .bind(&at)
                    .bind(c.connection_id as i64)
                    .execute(&mut *tx)
                    .await?;
                    out.lifecycle += 1;
                }
                Record::Disconnect(d) => {
                    sqlx::query(
                        "UPDATE workers SET active = 0, disconnect_reason = ?3, \
                           last_activity = MAX(COALESCE(last_activity, ''), ?4), \
                           updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
                         WHERE worker_name = ?1 AND connection_id = ?2 AND connected_at <= ?4",
                    )
                    .bind(&d.worker)
                    .bind(d.connection_id as i64)
                    .bind(&d.reason)
                    .bind(sqlite_time(utc(d.at_us)))
                    .execute(&mut *tx)
                    .await?;
                    out.lifecycle += 1;
                }
                Record::Share(_) => {}
            }
        }
        tx.commit().await?;
        // Shares: outside any transaction (see the top of this file). One INSERT reading the whole batch from one JSON parameter. The statement's
        // text never changes, so it is prepared once per connection, and a batch is one
        // round trip to SQLite's thread whatever its size (a multi-row VALUES list would be
        // a new statement for every batch size). The rows go in the share key's order
        // (worker, then time; stable, so of two rows with one key the first still wins): each
        // row's place in that index is then next to the last one's.
        let mut shares: Vec<(Uuid, &ShareRecord)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Share(s) => Some((ids[&(&*s.pool, &*s.worker)], s)),
                _ => None,
            })
            .collect();
        shares.sort_by_key(|(w, s)| (*w, s.at_us));
        let count = shares.len() as u64;
        let mut rows = Vec::new();
        for (w, s) in shares {
            push_share_row(&mut rows, s, &w)?;
            let e = activity.entry(w).or_insert(s.at_us);
            *e = (*e).max(s.at_us);
        }
        if count > 0 {
            rows.push(b']');
            let rows = String::from_utf8(rows)
                .map_err(|e| Error::Invalid(format!("shares as JSON: {e}")))?;
            let n = sqlx::query(
                "INSERT INTO submissions (id, worker_id, job_id, extranonce1, extranonce2, \
                   ntime, nonce, version, accepted, reject_reason, difficulty, block_hash, \
                   submitted_at) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, \
                   value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9, \
                   value ->> 10, value ->> 11, value ->> 12 \
                 FROM json_each(?1) WHERE true ON CONFLICT DO NOTHING",
            )
            .bind(rows)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            out.inserted += n;
            out.duplicates += count - n;
        }
        // Activity moves forward at most every ACTIVITY_EVERY per worker, all workers of the
        // batch in one statement for `workers` and one for `miners`.
        let due = self.due_activity(activity);
        if !due.is_empty() {
            let mut tx = conn.begin().await?;
            let json = serde_json::Value::Array(
                due.iter()
                    .map(|(w, at)| serde_json::json!([w.to_string(), sqlite_time(utc(*at))]))
                    .collect(),
            )
            .to_string();
            sqlx::query(
                "UPDATE workers SET last_activity = v.value ->> 1 FROM json_each(?1) AS v \
                 WHERE workers.id = v.value ->> 0 \
                   AND (workers.last_activity IS NULL OR workers.last_activity < v.value ->> 1)",
            )
            .bind(&json)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE miners SET last_seen = m.at \
                 FROM (SELECT w.miner_id AS id, MAX(v.value ->> 1) AS at \
                       FROM json_each(?1) AS v JOIN workers w ON w.id = v.value ->> 0 \
                       GROUP BY w.miner_id) AS m \
                 WHERE miners.id = m.id AND (miners.last_seen IS NULL OR miners.last_seen < m.at)",
            )
            .bind(&json)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        for (w, t) in due {
            self.activity.insert(w, t);
        }
        Ok(out)
    }

    async fn sqlite_worker(
        &mut self,
        tx: &mut sqlx::Transaction<'_, Lite>,
        pool: &str,
        worker: &str,
    ) -> Result<Uuid> {
        let pool_id = match self.pools.get(pool) {
            Some(id) => *id,
            None => {
                sqlx::query(
                    "INSERT INTO pools (id, name, host, port, username) \
                     VALUES (?1, ?2, 'unknown', 1, '') ON CONFLICT (name) DO NOTHING",
                )
                .bind(Uuid::new_v4().to_string())
                .bind(pool)
                .execute(&mut **tx)
                .await?;
                let id: String = sqlx::query_scalar("SELECT id FROM pools WHERE name = ?1")
                    .bind(pool)
                    .fetch_one(&mut **tx)
                    .await?;
                let id = parse_id(&id)?;
                self.pools.insert(pool.to_string(), id);
                id
            }
        };
        if let Some(id) = self.worker_id(pool_id, worker) {
            return Ok(id);
        }
        let miner = miner_of(worker);
        let miner_id = match self.miners.get(miner) {
            Some(id) => *id,
            None => {
                sqlx::query(
                    "INSERT INTO miners (id, username) VALUES (?1, ?2) \
                     ON CONFLICT (username) DO NOTHING",
                )
                .bind(Uuid::new_v4().to_string())
                .bind(miner)
                .execute(&mut **tx)
                .await?;
                let id: String = sqlx::query_scalar("SELECT id FROM miners WHERE username = ?1")
                    .bind(miner)
                    .fetch_one(&mut **tx)
                    .await?;
                let id = parse_id(&id)?;
                self.miners.insert(miner.to_string(), id);
                id
            }
        };
        sqlx::query(
            "INSERT INTO workers (id, miner_id, pool_id, worker_name) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (miner_id, pool_id, worker_name) DO NOTHING",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(miner_id.to_string())
        .bind(pool_id.to_string())
        .bind(worker)
        .execute(&mut **tx)
        .await?;
        let id: String = sqlx::query_scalar(
            "SELECT id FROM workers WHERE miner_id = ?1 AND pool_id = ?2 AND worker_name = ?3",
        )
        .bind(miner_id.to_string())
        .bind(pool_id.to_string())
        .bind(worker)
        .fetch_one(&mut **tx)
        .await?;
        let id = parse_id(&id)?;
        self.remember_worker(pool_id, worker.to_string(), id);
        Ok(id)
    }
}
