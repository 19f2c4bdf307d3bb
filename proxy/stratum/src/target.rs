//! Difficulties and targets, exactly.
//!
//! A difficulty is an exact decimal (`0.001` stays `0.001`); a target is a 256-bit integer.
//! A share meets difficulty `d` iff `hash ≤ floor(DIFF1 / d)` where
//! `DIFF1 = 0xffff · 2^208` and the hash is read as a little-endian 256-bit number.

use primitive_types::{U256, U512};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `0xffff · 2^208`: the target of difficulty 1 (Bitcoin's `nbits = 0x1d00ffff`).
pub fn diff1() -> U256 {
    U256::from(0xffffu64) << 208
}

/// A positive share difficulty, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Decimal", into = "Decimal")]
pub struct Difficulty(Decimal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DifficultyError {
    #[error("difficulty must be greater than zero, got {0}")]
    NotPositive(String),
    #[error("difficulty {0:?} is not a number")]
    NotANumber(String),
}

impl Difficulty {
    pub const ONE: Difficulty = Difficulty(Decimal::ONE);

    pub fn new(value: Decimal) -> Result<Self, DifficultyError> {
        if value <= Decimal::ZERO {
            return Err(DifficultyError::NotPositive(value.to_string()));
        }
        Ok(Self(value.normalize()))
    }

    pub fn from_u64(value: u64) -> Result<Self, DifficultyError> {
        Self::new(Decimal::from(value))
    }

    /// From a JSON number as the pool wrote it (`16384`, `0.001`, `1e-7`, `1.5E+3`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, DifficultyError> {
        match value {
            serde_json::Value::Number(n) => n.to_string().parse(),
            serde_json::Value::String(s) => s.parse(),
            other => Err(DifficultyError::NotANumber(other.to_string())),
        }
    }

    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// Approximate value for display and rates; never used to judge a share.
    pub fn to_f64(&self) -> f64 {
        use rust_decimal::prelude::ToPrimitive;
        self.0.to_f64().unwrap_or(f64::MAX)
    }

    /// The target a share of this difficulty must not exceed: `floor(DIFF1 / d)`, saturating
    /// at 2^256 − 1 for difficulties below `DIFF1 / 2^256`.
    pub fn target(&self) -> Target {
        let mantissa = self.0.mantissa().unsigned_abs();
        let scale = self.0.scale();
        // d = mantissa / 10^scale  ⇒  DIFF1 / d = DIFF1 · 10^scale / mantissa
        let numerator = U512::from(diff1()) * U512::from(10u64).pow(U512::from(scale));
        let quotient = numerator / U512::from(mantissa);
        Target(U256::try_from(quotient).unwrap_or(U256::MAX))
    }

    /// The JSON number to send in `mining.set_difficulty` (`16384`, `0.001`).
    pub fn to_json_number(&self) -> String {
        let d = self.0.normalize();
        // Decimal's Display never uses exponent notation, so this is always valid JSON.
        d.to_string()
    }
}

impl FromStr for Difficulty {
    type Err = DifficultyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let value = if s.contains(['e', 'E']) {
            Decimal::from_scientific(s)
        } else {
            Decimal::from_str_exact(s)
        }
        .map_err(|_| DifficultyError::NotANumber(s.to_string()))?;
        Self::new(value)
    }
}

impl TryFrom<Decimal> for Difficulty {
    type Error = DifficultyError;
    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Difficulty> for Decimal {
    fn from(d: Difficulty) -> Decimal {
        d.0
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

/// A 256-bit target. A hash meets it iff `hash ≤ target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target(pub U256);

impl Target {
    pub const MAX: Target = Target(U256::MAX);

    /// Decode compact `nbits` (e.g. `0x1d00ffff`). A negative or overflowing encoding gives
    /// the zero target (nothing meets it).
    pub fn from_nbits(nbits: u32) -> Target {
        let exponent = nbits >> 24;
        let mantissa = nbits & 0x007f_ffff;
        if nbits & 0x0080_0000 != 0 || mantissa == 0 {
            return Target(U256::zero());
        }
        let m = U256::from(mantissa);
        if exponent <= 3 {
            return Target(m >> (8 * (3 - exponent)));
        }
        let shift = 8 * (exponent - 3);
        if shift >= 256 || (m.bits() as u32 + shift) > 256 {
            return Target(U256::zero());
        }
        Target(m << shift)
    }

    /// True iff the hash (as sha256d produced it, i.e. little-endian) is at or below the target.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        hash_to_u256(hash) <= self.0
    }

    /// Big-endian hex (64 digits), the way block explorers print targets.
    pub fn to_hex(&self) -> String {
        format!("{:064x}", self.0)
    }
}

/// A sha256d output read as a little-endian 256-bit number.
pub fn hash_to_u256(hash: &[u8; 32]) -> U256 {
    U256::from_little_endian(hash)
}

/// The difficulty a hash achieves, `DIFF1 / hash`, for display and hashrate estimates.
pub fn hash_difficulty(hash: &[u8; 32]) -> f64 {
    let h = hash_to_u256(hash);
    if h.is_zero() {
        return f64::INFINITY;
    }
    u256_to_f64(diff1()) / u256_to_f64(h)
}

fn u256_to_f64(v: U256) -> f64 {
    v.0.iter().rev().fold(0.0, |acc, &limb| {
        acc * 18_446_744_073_709_551_616.0 + limb as f64
    })
}

/// A block hash in the byte order explorers print (reverse of sha256d's output).
pub fn hash_to_display_hex(hash: &[u8; 32]) -> String {
    let mut rev = *hash;
    rev.reverse();
    hex::encode(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_one_is_diff1_and_nbits_1d00ffff() {
        assert_eq!(Difficulty::ONE.target(), Target(diff1()));
        assert_eq!(Target::from_nbits(0x1d00ffff), Target(diff1()));
        assert_eq!(
            Target(diff1()).to_hex(),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
    }

    #[test]
    fn fractional_difficulties_are_exact() {
        let d: Difficulty = "0.001".parse().unwrap();
        assert_eq!(d.target().0, diff1() * U256::from(1000u64));
        let d: Difficulty = "1e-7".parse().unwrap();
        assert_eq!(d.target().0, diff1() * U256::from(10_000_000u64));
        assert_eq!(d.to_json_number(), "0.0000001");
        let d: Difficulty = "3".parse().unwrap();
        assert_eq!(d.target().0, diff1() / U256::from(3u64));
        let d: Difficulty = "16384".parse().unwrap();
        assert_eq!(d.to_json_number(), "16384");
    }

    #[test]
    fn tiny_difficulty_saturates() {
        let d: Difficulty = "0.0000000000000000000000000001".parse().unwrap();
        assert_eq!(d.target(), Target::MAX);
    }

    #[test]
    fn rejects_non_positive() {
        assert!("0".parse::<Difficulty>().is_err());
        assert!("-1".parse::<Difficulty>().is_err());
        assert!("abc".parse::<Difficulty>().is_err());
        assert!(Difficulty::from_json(&serde_json::json!(true)).is_err());
        assert_eq!(
            Difficulty::from_json(&serde_json::json!(0.5))
                .unwrap()
                .to_string(),
            "0.5"
        );
    }

    #[test]
    fn nbits_of_mainnet_block_125552() {
        // nbits 0x1a44b9f2 → target 0x44b9f2 · 256^(0x1a−3)
        let t = Target::from_nbits(0x1a44b9f2);
        assert_eq!(
            t.to_hex(),
            "00000000000044b9f20000000000000000000000000000000000000000000000"
        );
        assert_eq!(
            Target::from_nbits(0x207fffff).to_hex(),
            format!("7fffff{}", "0".repeat(58))
        );
        assert_eq!(Target::from_nbits(0x01803456), Target(U256::zero()));
    }
}
