//! Writing a batch to SQLite: the same steps as PostgreSQL, shares by multi-row `INSERT`.

use super::{Lite, Outcome, Sink, names, parse_id};
use crate::Result;
use crate::db::{sqlite_time, utc};
use crate::record::{Record, ShareRecord, miner_of};
use foldhash::HashMap;
use uuid::Uuid;

/// Rows per multi-row INSERT on SQLite.
const SQLITE_ROWS_PER_INSERT: usize = 500;

impl Sink {
    // --- SQLite ------------------------------------------------------------------------------

    pub(super) async fn write_sqlite(
        &mut self,
        pool: &sqlx::SqlitePool,
        records: &[Record],
    ) -> Result<Outcome> {
        let mut tx = pool.begin().await?;
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
        // Shares: multi-row INSERTs (SQLITE_LIMIT_VARIABLE_NUMBER is 32766: 13 per row).
        let shares: Vec<&ShareRecord> = records
            .iter()
            .filter_map(|r| match r {
                Record::Share(s) => Some(s),
                _ => None,
            })
            .collect();
        for chunk in shares.chunks(SQLITE_ROWS_PER_INSERT) {
            let mut sql = String::from(
                "INSERT INTO submissions (id, worker_id, job_id, extranonce1, extranonce2, \
                 ntime, nonce, version, accepted, reject_reason, difficulty, block_hash, \
                 submitted_at) VALUES ",
            );
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "" } else { "," });
                sql.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?)");
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in chunk {
                let w = ids[&(&*s.pool, &*s.worker)];
                q = q
                    .bind(s.id.to_string())
                    .bind(w.to_string())
                    .bind(s.job_id.as_str())
                    .bind(s.extranonce1.as_str())
                    .bind(s.extranonce2.as_str())
                    .bind(s.ntime.as_str())
                    .bind(s.nonce.as_str())
                    .bind(s.version.as_deref())
                    .bind(s.accepted)
                    .bind(s.reject_reason.as_deref())
                    .bind(s.difficulty.normalize().to_string())
                    .bind(s.block_hash.as_deref())
                    .bind(sqlite_time(utc(s.at_us)));
                let e = activity.entry(w).or_insert(s.at_us);
                *e = (*e).max(s.at_us);
            }
            let n = q.execute(&mut *tx).await?.rows_affected();
            out.inserted += n;
            out.duplicates += chunk.len() as u64 - n;
        }
        for (w, at) in activity {
            let at = sqlite_time(utc(at));
            sqlx::query(
                "UPDATE workers SET last_activity = ?2 \
                 WHERE id = ?1 AND (last_activity IS NULL OR last_activity < ?2)",
            )
            .bind(w.to_string())
            .bind(&at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE miners SET last_seen = ?2 \
                 WHERE id = (SELECT miner_id FROM workers WHERE id = ?1) \
                   AND (last_seen IS NULL OR last_seen < ?2)",
            )
            .bind(w.to_string())
            .bind(&at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
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
