//! Accounting: earnings (a block found, a pool payout) and their distribution to miners over
//! a window of accepted shares, proportional or PPLNS.
//!
//! Rules (exact arithmetic, never floats):
//! - A miner's weight is the sum of the difficulty of its accepted shares in the window
//!   (`submissions.difficulty`, the difficulty each share was judged against).
//! - The amount distributed is `amount_btc - fee_btc`, in satoshis (1e-8 BTC). Each miner's
//!   exact quota `net × weight / total` is rounded down to the satoshi; the satoshis left
//!   over (fewer than the number of miners) go one each to the largest remainders (ties: the
//!   larger weight, then the username). So the parts always sum to the net amount exactly.
//! - A miner whose part rounds to 0 sat gets no row (`distributions.amount_btc > 0`).
//! - `percentage` is the miner's share of the window's work, rounded half-up to 4 decimals
//!   (`DECIMAL(5,4)`), at least 0.0001 (the column's `> 0` check): informational; the amount
//!   is authoritative.
//! - Proportional window: accepted shares on the earning's pool after the previous earning of
//!   that pool (or from `since`) up to `earned_at`. PPLNS window: the last `window` units of
//!   difficulty of accepted shares on the pool up to `earned_at`, newest first; the share that
//!   crosses the window's edge counts only for the part inside it.
//! - An earning is distributed once: its status becomes `distributed` and
//!   `UNIQUE(earning_id, miner_id)` backs that up.
//!
//! This module is the pure part (the rules above, no database); [`sql`] records earnings and
//! distributions in PostgreSQL or SQLite.

mod sql;

use crate::{Error, Result};
use chrono::{DateTime, Utc};
use primitive_types::U256;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::HashMap;
use std::str::FromStr;
use uuid::Uuid;

pub const SATS_PER_BTC: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EarningStatus {
    Pending,
    Confirmed,
    Distributed,
    Failed,
}

impl EarningStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EarningStatus::Pending => "pending",
            EarningStatus::Confirmed => "confirmed",
            EarningStatus::Distributed => "distributed",
            EarningStatus::Failed => "failed",
        }
    }
}

impl FromStr for EarningStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(EarningStatus::Pending),
            "confirmed" => Ok(EarningStatus::Confirmed),
            "distributed" => Ok(EarningStatus::Distributed),
            "failed" => Ok(EarningStatus::Failed),
            o => Err(format!(
                "{o:?} is not an earning status (pending, confirmed, distributed, failed)"
            )),
        }
    }
}

/// An earning to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEarning {
    /// The pool's name (as configured).
    pub pool: String,
    pub amount_btc: Decimal,
    pub fee_btc: Decimal,
    pub transaction_hash: Option<String>,
    pub block_hash: Option<String>,
    pub block_height: Option<i32>,
    pub status: EarningStatus,
    /// Default: now.
    pub earned_at: Option<DateTime<Utc>>,
}

impl NewEarning {
    pub fn new(pool: impl Into<String>, amount_btc: Decimal) -> Self {
        NewEarning {
            pool: pool.into(),
            amount_btc,
            fee_btc: Decimal::ZERO,
            transaction_hash: None,
            block_hash: None,
            block_height: None,
            status: EarningStatus::Pending,
            earned_at: None,
        }
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<()> {
        let mut e = Vec::new();
        if self.pool.trim().is_empty() {
            e.push("pool: must not be empty".to_string());
        }
        check_btc("amount_btc", self.amount_btc, false, &mut e);
        check_btc("fee_btc", self.fee_btc, true, &mut e);
        if self.fee_btc >= self.amount_btc && self.amount_btc > Decimal::ZERO {
            e.push("fee_btc: must be less than amount_btc".into());
        }
        for (name, h) in [
            ("transaction_hash", &self.transaction_hash),
            ("block_hash", &self.block_hash),
        ] {
            if let Some(h) = h
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                e.push(format!("{name}: must be 64 hex digits"));
            }
        }
        if self.block_height.is_some_and(|h| h < 0) {
            e.push("block_height: must not be negative".into());
        }
        if self.status == EarningStatus::Distributed {
            e.push("status: an earning becomes distributed by distributing it".into());
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(e.join("; ")))
        }
    }
}

fn check_btc(name: &str, v: Decimal, zero_ok: bool, e: &mut Vec<String>) {
    if v < Decimal::ZERO || (!zero_ok && v.is_zero()) {
        e.push(format!(
            "{name}: must be {} 0, got {v}",
            if zero_ok { "at least" } else { "more than" }
        ));
    } else if v.normalize().scale() > 8 {
        e.push(format!("{name}: {v} has more than 8 decimals (1 satoshi)"));
    } else if v >= Decimal::from(100_000_000u64) {
        e.push(format!("{name}: {v} does not fit DECIMAL(16,8)"));
    }
}

/// A recorded earning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Earning {
    pub id: Uuid,
    pub pool: String,
    pub amount_btc: Decimal,
    pub fee_btc: Decimal,
    pub status: String,
    pub transaction_hash: Option<String>,
    pub block_hash: Option<String>,
    pub block_height: Option<i32>,
    pub earned_at: DateTime<Utc>,
}

/// How to pick the shares an earning is split over.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Shares since the pool's previous earning (or since `since`), up to the earning.
    Proportional { since: Option<DateTime<Utc>> },
    /// The last `window` units of accepted difficulty up to the earning.
    Pplns { window: Decimal },
}

/// One miner's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    pub miner: String,
    /// The miner's accepted difficulty in the window.
    pub weight: Decimal,
    pub amount_btc: Decimal,
    pub percentage: Decimal,
}

/// A computed (and, by [`Store::distribute`], recorded) distribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    pub earning: Earning,
    pub method: &'static str,
    pub window_from: Option<DateTime<Utc>>,
    pub window_to: DateTime<Utc>,
    pub shares: u64,
    pub total_weight: Decimal,
    pub distributed_btc: Decimal,
    pub parts: Vec<Part>,
}

fn to_units(d: Decimal, scale: u32) -> U256 {
    // d ≥ 0 with d.scale() ≤ scale
    let m = U256::from(d.mantissa().unsigned_abs());
    m * U256::exp10((scale - d.scale()) as usize)
}

fn u256_u64(v: U256) -> u64 {
    v.low_u64()
}

/// Split `amount_btc` over `weights` (miner, weight) by largest remainder at 1 satoshi.
/// Zero weights are ignored; parts of 0 sat are left out. The parts sum to `amount_btc`.
pub fn split(amount_btc: Decimal, weights: &[(String, Decimal)]) -> Result<Vec<Part>> {
    let amount = amount_btc.normalize();
    if amount <= Decimal::ZERO || amount.scale() > 8 {
        return Err(Error::Invalid(format!(
            "amount {amount_btc} must be positive with at most 8 decimals"
        )));
    }
    let sats = u256_u64(to_units(amount, 8));
    let mut merged: HashMap<&str, Decimal> = HashMap::new();
    for (m, w) in weights {
        if *w < Decimal::ZERO {
            return Err(Error::Invalid(format!("negative weight for {m}")));
        }
        if !w.is_zero() {
            *merged.entry(m.as_str()).or_default() += *w;
        }
    }
    if merged.is_empty() {
        return Err(Error::Invalid("no accepted shares in the window".into()));
    }
    let scale = merged.values().map(|w| w.scale()).max().unwrap_or(0);
    let mut rows: Vec<(&str, Decimal, U256)> = merged
        .into_iter()
        .map(|(m, w)| (m, w, to_units(w, scale)))
        .collect();
    let total = rows.iter().fold(U256::zero(), |a, r| a + r.2);
    let s = U256::from(sats);
    let mut parts: Vec<(usize, u64, U256)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = s * r.2;
            (i, u256_u64(p / total), p % total)
        })
        .collect();
    let given: u64 = parts.iter().map(|p| p.1).sum();
    let left = sats - given;
    parts.sort_by(|a, b| {
        b.2.cmp(&a.2)
            .then(rows[b.0].2.cmp(&rows[a.0].2))
            .then(rows[a.0].0.cmp(rows[b.0].0))
    });
    for p in parts.iter_mut().take(left as usize) {
        p.1 += 1;
    }
    let ten_k = U256::from(10_000u64);
    let mut out: Vec<Part> = parts
        .into_iter()
        .filter(|p| p.1 > 0)
        .map(|(i, sat, _)| {
            let w = rows[i].2;
            // half-up to 4 decimals, within (0, 1]
            let pct = (w * ten_k * U256::from(2u64) + total) / (total * U256::from(2u64));
            let pct = u256_u64(pct).clamp(1, 10_000);
            Part {
                miner: rows[i].0.to_string(),
                weight: rows[i].1,
                amount_btc: Decimal::new(sat as i64, 8),
                percentage: Decimal::new(pct as i64, 4),
            }
        })
        .collect();
    rows.clear();
    out.sort_by(|a, b| b.amount_btc.cmp(&a.amount_btc).then(a.miner.cmp(&b.miner)));
    Ok(out)
}

/// PPLNS: take shares newest first until `window` difficulty is covered; the crossing share
/// counts for the part inside the window. Returns per-miner weights and shares used.
pub fn pplns_window(
    shares_newest_first: impl IntoIterator<Item = (String, Decimal)>,
    window: Decimal,
) -> (Vec<(String, Decimal)>, u64) {
    let mut left = window;
    let mut weights: HashMap<String, Decimal> = HashMap::new();
    let mut used = 0;
    for (miner, d) in shares_newest_first {
        if left <= Decimal::ZERO {
            break;
        }
        let take = d.min(left);
        left -= take;
        used += 1;
        *weights.entry(miner).or_default() += take;
    }
    let mut v: Vec<_> = weights.into_iter().collect();
    v.sort();
    (v, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn w(list: &[(&str, &str)]) -> Vec<(String, Decimal)> {
        list.iter().map(|(m, x)| (m.to_string(), d(x))).collect()
    }

    fn total(parts: &[Part]) -> Decimal {
        parts.iter().map(|p| p.amount_btc).sum()
    }

    #[test]
    fn seven_satoshis_over_three_equal_miners() {
        let parts = split(d("0.00000007"), &w(&[("a", "1"), ("b", "1"), ("c", "1")])).unwrap();
        assert_eq!(total(&parts), d("0.00000007"));
        let amounts: Vec<_> = parts.iter().map(|p| p.amount_btc).collect();
        assert_eq!(
            amounts,
            vec![d("0.00000003"), d("0.00000002"), d("0.00000002")]
        );
        // equal remainders and weights: the extra satoshi goes by username
        assert_eq!(parts[0].miner, "a");
        assert!(parts.iter().all(|p| p.percentage == d("0.3333")));
    }

    #[test]
    fn six_and_a_quarter_over_seven() {
        let weights = w(&[
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("d", "4"),
            ("e", "5"),
            ("f", "6"),
            ("g", "7"),
        ]);
        let parts = split(d("6.25"), &weights).unwrap();
        assert_eq!(total(&parts), d("6.25"));
        assert_eq!(parts.len(), 7);
        // 625000000 sat × k / 28: exact quotas and the largest remainders
        let by: HashMap<_, _> = parts
            .iter()
            .map(|p| (p.miner.as_str(), p.amount_btc))
            .collect();
        assert_eq!(by["a"], d("0.22321429")); // 22321428.57 → up
        assert_eq!(by["g"], d("1.5625"));
        assert_eq!(by["b"], d("0.44642857")); // 44642857.14 → down
        for p in &parts {
            assert!(p.percentage > Decimal::ZERO && p.percentage <= Decimal::ONE);
            assert!(p.percentage.scale() <= 4);
        }
        // equal weights too
        let parts = split(
            d("6.25"),
            &w(&[
                ("a", "1"),
                ("b", "1"),
                ("c", "1"),
                ("d", "1"),
                ("e", "1"),
                ("f", "1"),
                ("g", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(total(&parts), d("6.25"));
        let max = parts.iter().map(|p| p.amount_btc).max().unwrap();
        let min = parts.iter().map(|p| p.amount_btc).min().unwrap();
        assert_eq!(max - min, d("0.00000001"));
    }

    #[test]
    fn tiny_parts_are_left_out_and_percentages_stay_in_range() {
        // one miner with a millionth of the work: its quota is < 1 sat of 0.01 BTC
        let parts = split(d("0.01"), &w(&[("big", "999999"), ("tiny", "0.1")])).unwrap();
        assert_eq!(total(&parts), d("0.01"));
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].percentage, Decimal::ONE);
        // a small but paid miner still gets a percentage > 0
        let parts = split(d("1"), &w(&[("big", "999999"), ("small", "1")])).unwrap();
        assert_eq!(total(&parts), d("1"));
        let small = parts.iter().find(|p| p.miner == "small").unwrap();
        assert_eq!(small.amount_btc, d("0.000001"));
        assert_eq!(small.percentage, d("0.0001"));
    }

    #[test]
    fn huge_weights_and_fractional_difficulties_are_exact() {
        let parts = split(
            d("21000000"),
            &w(&[
                ("a", "999999999999.99999999"),
                ("b", "0.00000001"),
                ("c", "123456789012.5"),
            ]),
        );
        // 21e6 BTC does not fit DECIMAL(16,8)? It does (8 integer digits): exact sum.
        let parts = parts.unwrap();
        assert_eq!(total(&parts), d("21000000"));
        let weights = w(&[("a", "0.1"), ("b", "0.2"), ("a", "0.3")]);
        let parts = split(d("0.00000010"), &weights).unwrap();
        assert_eq!(total(&parts), d("0.0000001"));
        let a = parts.iter().find(|p| p.miner == "a").unwrap();
        assert_eq!(a.weight, d("0.4"));
        assert_eq!(a.amount_btc, d("0.00000007")); // 6.67 → 7
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(split(d("0"), &w(&[("a", "1")])).is_err());
        assert!(split(d("0.000000001"), &w(&[("a", "1")])).is_err());
        assert!(split(d("1"), &w(&[])).is_err());
        assert!(split(d("1"), &w(&[("a", "0")])).is_err());
        assert!(split(d("1"), &w(&[("a", "-1")])).is_err());
    }

    #[test]
    fn pplns_counts_the_last_window_of_difficulty() {
        let shares = vec![
            ("a".to_string(), d("4")),
            ("b".to_string(), d("4")),
            ("a".to_string(), d("4")),
            ("c".to_string(), d("100")),
        ];
        let (weights, used) = pplns_window(shares.clone(), d("10"));
        assert_eq!(used, 3);
        assert_eq!(weights, w(&[("a", "6"), ("b", "4")])); // the third share counts 2 of 4
        let (weights, used) = pplns_window(shares, d("1000"));
        assert_eq!(used, 4);
        assert_eq!(weights.iter().map(|x| x.1).sum::<Decimal>(), d("112"));
    }

    #[test]
    fn new_earnings_are_validated() {
        let ok = NewEarning::new("main", d("6.25"));
        ok.validate().unwrap();
        let bad = NewEarning {
            amount_btc: d("-1"),
            fee_btc: d("-0.1"),
            transaction_hash: Some("xyz".into()),
            block_height: Some(-1),
            ..NewEarning::new("", d("0"))
        };
        let e = bad.validate().unwrap_err().to_string();
        for f in [
            "pool",
            "amount_btc",
            "fee_btc",
            "transaction_hash",
            "block_height",
        ] {
            assert!(e.contains(f), "{f}: {e}");
        }
        assert!(NewEarning::new("p", d("0.000000001")).validate().is_err());
        assert!(NewEarning::new("p", d("100000000")).validate().is_err());
        let fee_too_big = NewEarning {
            fee_btc: d("1"),
            ..NewEarning::new("p", d("1"))
        };
        assert!(fee_too_big.validate().is_err());
    }
}
