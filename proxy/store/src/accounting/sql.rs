//! Earnings and distributions in the database (PostgreSQL and SQLite): record, list,
//! distribute over the window the pure rules of [`super`] define.

use super::{Distribution, Earning, Method, NewEarning, Part, pplns_window, split};
use crate::db::{Db, Store, parse_sqlite_time, sqlite_time};
use crate::sink::{dec, parse_id};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use uuid::Uuid;

impl Store {
    /// Record an earning; returns its id.
    pub async fn add_earning(&self, e: &NewEarning) -> Result<Uuid> {
        e.validate()?;
        let earned_at = e.earned_at.unwrap_or_else(Utc::now);
        match &self.db {
            Db::Postgres(p) => {
                let pool_id: Option<Uuid> =
                    sqlx::query_scalar("SELECT id FROM pools WHERE name = $1")
                        .bind(&e.pool)
                        .fetch_optional(p)
                        .await?;
                let pool_id =
                    pool_id.ok_or_else(|| Error::NotFound(format!("pool {:?}", e.pool)))?;
                Ok(sqlx::query_scalar(
                    "INSERT INTO earnings (pool_id, amount_btc, fee_btc, transaction_hash, \
                       block_hash, block_height, status, earned_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .bind(pool_id)
                .bind(e.amount_btc)
                .bind(e.fee_btc)
                .bind(e.transaction_hash.as_deref())
                .bind(e.block_hash.as_deref())
                .bind(e.block_height)
                .bind(e.status.as_str())
                .bind(earned_at)
                .fetch_one(p)
                .await?)
            }
            Db::Sqlite(p) => {
                let pool_id: Option<String> =
                    sqlx::query_scalar("SELECT id FROM pools WHERE name = ?1")
                        .bind(&e.pool)
                        .fetch_optional(p)
                        .await?;
                let pool_id =
                    pool_id.ok_or_else(|| Error::NotFound(format!("pool {:?}", e.pool)))?;
                let id = Uuid::new_v4();
                sqlx::query(
                    "INSERT INTO earnings (id, pool_id, amount_btc, fee_btc, transaction_hash, \
                       block_hash, block_height, status, earned_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .bind(id.to_string())
                .bind(pool_id)
                .bind(e.amount_btc.normalize().to_string())
                .bind(e.fee_btc.normalize().to_string())
                .bind(e.transaction_hash.as_deref())
                .bind(e.block_hash.as_deref())
                .bind(e.block_height)
                .bind(e.status.as_str())
                .bind(sqlite_time(earned_at))
                .execute(p)
                .await?;
                Ok(id)
            }
        }
    }

    /// Recent earnings, newest first.
    pub async fn earnings(&self, limit: i64) -> Result<Vec<Earning>> {
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<PgEarningRow> = sqlx::query_as(PG_EARNING_SELECT_LIST)
                    .bind(limit)
                    .fetch_all(p)
                    .await?;
                Ok(rows.into_iter().map(Earning::from).collect())
            }
            Db::Sqlite(p) => {
                let rows: Vec<LiteEarningRow> = sqlx::query_as(LITE_EARNING_SELECT_LIST)
                    .bind(limit)
                    .fetch_all(p)
                    .await?;
                rows.into_iter().map(Earning::try_from).collect()
            }
        }
    }

    pub async fn earning(&self, id: Uuid) -> Result<Earning> {
        match &self.db {
            Db::Postgres(p) => {
                let row: Option<PgEarningRow> = sqlx::query_as(PG_EARNING_SELECT_ONE)
                    .bind(id)
                    .fetch_optional(p)
                    .await?;
                row.map(Earning::from)
                    .ok_or_else(|| Error::NotFound(format!("earning {id}")))
            }
            Db::Sqlite(p) => {
                let row: Option<LiteEarningRow> = sqlx::query_as(LITE_EARNING_SELECT_ONE)
                    .bind(id.to_string())
                    .fetch_optional(p)
                    .await?;
                row.map(Earning::try_from)
                    .transpose()?
                    .ok_or_else(|| Error::NotFound(format!("earning {id}")))
            }
        }
    }

    /// Compute a distribution without recording it.
    pub async fn preview_distribution(
        &self,
        earning: Uuid,
        method: &Method,
    ) -> Result<Distribution> {
        let e = self.earning(earning).await?;
        self.compute(e, method).await
    }

    /// Compute and record the distribution of an earning (once).
    pub async fn distribute(&self, earning: Uuid, method: &Method) -> Result<Distribution> {
        let e = self.earning(earning).await?;
        if e.status == "distributed" || e.status == "failed" {
            return Err(Error::Invalid(format!(
                "earning {earning} is {}; it cannot be distributed",
                e.status
            )));
        }
        let d = self.compute(e, method).await?;
        match &self.db {
            Db::Postgres(p) => {
                let mut tx = p.begin().await?;
                let status: String =
                    sqlx::query_scalar("SELECT status FROM earnings WHERE id = $1 FOR UPDATE")
                        .bind(earning)
                        .fetch_one(&mut *tx)
                        .await?;
                if status == "distributed" {
                    return Err(Error::Invalid(format!(
                        "earning {earning} is already distributed"
                    )));
                }
                for part in &d.parts {
                    sqlx::query(
                        "INSERT INTO distributions (earning_id, miner_id, amount_btc, percentage) \
                         SELECT $1, id, $3, $4 FROM miners WHERE username = $2",
                    )
                    .bind(earning)
                    .bind(&part.miner)
                    .bind(part.amount_btc)
                    .bind(part.percentage)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "UPDATE earnings SET status = 'distributed', processed_at = NOW() WHERE id = $1",
                )
                .bind(earning)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Db::Sqlite(p) => {
                let mut tx = p.begin().await?;
                let n = sqlx::query(
                    "UPDATE earnings SET status = 'distributed', \
                       processed_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
                     WHERE id = ?1 AND status NOT IN ('distributed', 'failed')",
                )
                .bind(earning.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n == 0 {
                    return Err(Error::Invalid(format!(
                        "earning {earning} is already distributed"
                    )));
                }
                for part in &d.parts {
                    sqlx::query(
                        "INSERT INTO distributions (id, earning_id, miner_id, amount_btc, percentage) \
                         SELECT ?1, ?2, id, ?4, ?5 FROM miners WHERE username = ?3",
                    )
                    .bind(Uuid::new_v4().to_string())
                    .bind(earning.to_string())
                    .bind(&part.miner)
                    .bind(part.amount_btc.to_string())
                    .bind(part.percentage.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(d)
    }

    async fn compute(&self, e: Earning, method: &Method) -> Result<Distribution> {
        let net = e.amount_btc - e.fee_btc;
        let (weights, shares, from, name) = match method {
            Method::Proportional { since } => {
                let since = match since {
                    Some(s) => Some(*s),
                    None => self.previous_earning_at(&e).await?,
                };
                let (w, n) = self.weights_between(&e.pool, since, e.earned_at).await?;
                (w, n, since, "proportional")
            }
            Method::Pplns { window } => {
                if *window <= Decimal::ZERO {
                    return Err(Error::Invalid("PPLNS window must be positive".into()));
                }
                let shares = self.shares_newest_first(&e.pool, e.earned_at).await?;
                let (w, n) = pplns_window(shares, *window);
                (w, n, None, "pplns")
            }
        };
        let total_weight: Decimal = weights.iter().map(|w| w.1).sum();
        let parts = split(net, &weights)?;
        Ok(Distribution {
            distributed_btc: parts.iter().map(|p| p.amount_btc).sum(),
            earning: e.clone(),
            method: name,
            window_from: from,
            window_to: e.earned_at,
            shares,
            total_weight,
            parts,
        })
    }

    async fn previous_earning_at(&self, e: &Earning) -> Result<Option<DateTime<Utc>>> {
        match &self.db {
            Db::Postgres(p) => Ok(sqlx::query_scalar(
                "SELECT MAX(x.earned_at) FROM earnings x JOIN pools p ON p.id = x.pool_id \
                 WHERE p.name = $1 AND x.earned_at < $2 AND x.id <> $3",
            )
            .bind(&e.pool)
            .bind(e.earned_at)
            .bind(e.id)
            .fetch_one(p)
            .await?),
            Db::Sqlite(p) => {
                let s: Option<String> = sqlx::query_scalar(
                    "SELECT MAX(x.earned_at) FROM earnings x JOIN pools p ON p.id = x.pool_id \
                     WHERE p.name = ?1 AND x.earned_at < ?2 AND x.id <> ?3",
                )
                .bind(&e.pool)
                .bind(sqlite_time(e.earned_at))
                .bind(e.id.to_string())
                .fetch_one(p)
                .await?;
                Ok(s.as_deref().and_then(parse_sqlite_time))
            }
        }
    }

    /// Per-miner accepted difficulty on `pool` in (from, to].
    async fn weights_between(
        &self,
        pool: &str,
        from: Option<DateTime<Utc>>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<(String, Decimal)>, u64)> {
        let from = from.unwrap_or(DateTime::UNIX_EPOCH);
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<(String, Decimal, i64)> = sqlx::query_as(
                    "SELECT m.username::text, SUM(s.difficulty), COUNT(*) \
                     FROM submissions s \
                     JOIN workers w ON w.id = s.worker_id \
                     JOIN pools p ON p.id = w.pool_id \
                     JOIN miners m ON m.id = w.miner_id \
                     WHERE p.name = $1 AND s.accepted AND s.submitted_at > $2 AND s.submitted_at <= $3 \
                     GROUP BY m.username ORDER BY m.username",
                )
                .bind(pool)
                .bind(from)
                .bind(to)
                .fetch_all(p)
                .await?;
                let n = rows.iter().map(|r| r.2 as u64).sum();
                Ok((rows.into_iter().map(|(m, w, _)| (m, w)).collect(), n))
            }
            Db::Sqlite(p) => {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT m.username, s.difficulty FROM submissions s \
                     JOIN workers w ON w.id = s.worker_id \
                     JOIN pools p ON p.id = w.pool_id \
                     JOIN miners m ON m.id = w.miner_id \
                     WHERE p.name = ?1 AND s.accepted AND s.submitted_at > ?2 AND s.submitted_at <= ?3",
                )
                .bind(pool)
                .bind(sqlite_time(from))
                .bind(sqlite_time(to))
                .fetch_all(p)
                .await?;
                let n = rows.len() as u64;
                let mut w: HashMap<String, Decimal> = HashMap::new();
                for (m, d) in rows {
                    *w.entry(m).or_default() += dec(Some(&d));
                }
                let mut v: Vec<_> = w.into_iter().collect();
                v.sort();
                Ok((v, n))
            }
        }
    }

    /// Accepted shares on `pool` up to `to`, newest first (streamed by the caller's window).
    async fn shares_newest_first(
        &self,
        pool: &str,
        to: DateTime<Utc>,
    ) -> Result<Vec<(String, Decimal)>> {
        // Bounded read: PPLNS windows are a few hours of shares; cap what we load.
        const CAP: i64 = 5_000_000;
        match &self.db {
            Db::Postgres(p) => Ok(sqlx::query_as(
                "SELECT m.username::text, s.difficulty FROM submissions s \
                 JOIN workers w ON w.id = s.worker_id \
                 JOIN pools p ON p.id = w.pool_id \
                 JOIN miners m ON m.id = w.miner_id \
                 WHERE p.name = $1 AND s.accepted AND s.submitted_at <= $2 \
                 ORDER BY s.submitted_at DESC, s.id DESC LIMIT $3",
            )
            .bind(pool)
            .bind(to)
            .bind(CAP)
            .fetch_all(p)
            .await?),
            Db::Sqlite(p) => {
                let rows: Vec<(String, String)> = sqlx::query_as(
                    "SELECT m.username, s.difficulty FROM submissions s \
                     JOIN workers w ON w.id = s.worker_id \
                     JOIN pools p ON p.id = w.pool_id \
                     JOIN miners m ON m.id = w.miner_id \
                     WHERE p.name = ?1 AND s.accepted AND s.submitted_at <= ?2 \
                     ORDER BY s.submitted_at DESC, s.id DESC LIMIT ?3",
                )
                .bind(pool)
                .bind(sqlite_time(to))
                .bind(CAP)
                .fetch_all(p)
                .await?;
                Ok(rows.into_iter().map(|(m, d)| (m, dec(Some(&d)))).collect())
            }
        }
    }

    /// The recorded parts of an earning.
    pub async fn distribution_parts(&self, earning: Uuid) -> Result<Vec<Part>> {
        match &self.db {
            Db::Postgres(p) => {
                let rows: Vec<(String, Decimal, Decimal)> = sqlx::query_as(
                    "SELECT m.username::text, d.amount_btc, d.percentage FROM distributions d \
                     JOIN miners m ON m.id = d.miner_id WHERE d.earning_id = $1 \
                     ORDER BY d.amount_btc DESC, m.username",
                )
                .bind(earning)
                .fetch_all(p)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(miner, amount_btc, percentage)| Part {
                        miner,
                        weight: Decimal::ZERO,
                        amount_btc: amount_btc.normalize(),
                        percentage: percentage.normalize(),
                    })
                    .collect())
            }
            Db::Sqlite(p) => {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT m.username, d.amount_btc, d.percentage FROM distributions d \
                     JOIN miners m ON m.id = d.miner_id WHERE d.earning_id = ?1",
                )
                .bind(earning.to_string())
                .fetch_all(p)
                .await?;
                let mut v: Vec<Part> = rows
                    .into_iter()
                    .map(|(miner, a, pct)| Part {
                        miner,
                        weight: Decimal::ZERO,
                        amount_btc: dec(Some(&a)).normalize(),
                        percentage: dec(Some(&pct)).normalize(),
                    })
                    .collect();
                v.sort_by(|a, b| b.amount_btc.cmp(&a.amount_btc).then(a.miner.cmp(&b.miner)));
                Ok(v)
            }
        }
    }
}

const PG_EARNING_SELECT_LIST: &str = "SELECT e.id, p.name::text, e.amount_btc, COALESCE(e.fee_btc, 0), \
    e.status::text, e.transaction_hash::text, e.block_hash::text, e.block_height, e.earned_at \
    FROM earnings e JOIN pools p ON p.id = e.pool_id ORDER BY e.earned_at DESC LIMIT $1";
const PG_EARNING_SELECT_ONE: &str = "SELECT e.id, p.name::text, e.amount_btc, COALESCE(e.fee_btc, 0), \
    e.status::text, e.transaction_hash::text, e.block_hash::text, e.block_height, e.earned_at \
    FROM earnings e JOIN pools p ON p.id = e.pool_id WHERE e.id = $1";
const LITE_EARNING_SELECT_LIST: &str = "SELECT e.id, p.name, e.amount_btc, COALESCE(e.fee_btc, '0'), \
    e.status, e.transaction_hash, e.block_hash, e.block_height, e.earned_at \
    FROM earnings e JOIN pools p ON p.id = e.pool_id ORDER BY e.earned_at DESC LIMIT ?1";
const LITE_EARNING_SELECT_ONE: &str = "SELECT e.id, p.name, e.amount_btc, COALESCE(e.fee_btc, '0'), \
    e.status, e.transaction_hash, e.block_hash, e.block_height, e.earned_at \
    FROM earnings e JOIN pools p ON p.id = e.pool_id WHERE e.id = ?1";

type PgEarningRow = (
    Uuid,
    String,
    Decimal,
    Decimal,
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<DateTime<Utc>>,
);

impl From<PgEarningRow> for Earning {
    fn from(r: PgEarningRow) -> Self {
        Earning {
            id: r.0,
            pool: r.1,
            amount_btc: r.2.normalize(),
            fee_btc: r.3.normalize(),
            status: r.4,
            transaction_hash: r.5,
            block_hash: r.6,
            block_height: r.7,
            earned_at: r.8.unwrap_or_default(),
        }
    }
}

type LiteEarningRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<String>,
);

impl TryFrom<LiteEarningRow> for Earning {
    type Error = Error;
    fn try_from(r: LiteEarningRow) -> Result<Self> {
        Ok(Earning {
            id: parse_id(&r.0)?,
            pool: r.1,
            amount_btc: dec(Some(&r.2)).normalize(),
            fee_btc: dec(Some(&r.3)).normalize(),
            status: r.4,
            transaction_hash: r.5,
            block_hash: r.6,
            block_height: r.7,
            earned_at: r
                .8
                .as_deref()
                .and_then(parse_sqlite_time)
                .unwrap_or_default(),
        })
    }
}
