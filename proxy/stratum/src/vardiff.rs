//! Per-miner variable difficulty. Pure: time is passed in.
//!
//! Each miner aims at `target_shares_per_minute`. Shares are counted over a window; when the
//! retarget interval has passed (or shares arrive so fast that waiting would flood the proxy),
//! the rate is compared with the target and, outside the tolerance, the difficulty is scaled
//! by the ratio (at most ×4 or ÷4 per step), clamped to `[min, max]`, and rounded to three
//! significant digits so the miner gets a short exact decimal.
//!
//! A ceiling (the pool's difficulty, in aggregate mode) caps the result: the pool credits a
//! forwarded share at its own difficulty, so a miner set above it would do work the pool
//! never credits. What vardiff would have chosen without the ceiling stays known
//! ([`Vardiff::desired`]) so the proxy can ask the pool for more.

use crate::target::Difficulty;
use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct VardiffConfig {
    pub target_shares_per_minute: f64,
    pub min: Difficulty,
    pub max: Difficulty,
    pub retarget_interval: Duration,
    /// Tolerated relative deviation from the target rate before retargeting (e.g. 0.3).
    pub tolerance: f64,
}

#[derive(Debug, Clone)]
pub struct Vardiff {
    cfg: VardiffConfig,
    current: Difficulty,
    ceiling: Option<Difficulty>,
    /// The last proposal the ceiling cut, while the miner is held at the ceiling.
    above_ceiling: Option<Difficulty>,
    window_start: Instant,
    shares: u32,
}

const MAX_STEP: f64 = 4.0;

impl Vardiff {
    pub fn new(cfg: VardiffConfig, start: Difficulty, now: Instant) -> Self {
        let current = clamp(start, &cfg);
        Self {
            cfg,
            current,
            ceiling: None,
            above_ceiling: None,
            window_start: now,
            shares: 0,
        }
    }

    pub fn current(&self) -> Difficulty {
        self.current
    }

    /// What vardiff would set without the ceiling (at least the current difficulty).
    pub fn desired(&self) -> Difficulty {
        self.above_ceiling.unwrap_or(self.current).max(self.current)
    }

    /// Force a difficulty (e.g. a miner's `suggest_difficulty`), clamped to the bounds.
    pub fn set(&mut self, d: Difficulty, now: Instant) -> Difficulty {
        let wanted = clamp(d, &self.cfg);
        self.current = self.cap(wanted);
        self.above_ceiling = (wanted > self.current).then_some(wanted);
        self.window_start = now;
        self.shares = 0;
        self.current
    }

    /// Raise the lower bound (e.g. the miner's `minimum-difficulty` extension). The ceiling
    /// still wins.
    pub fn set_min(&mut self, min: Difficulty) {
        self.cfg.min = min.min(self.cfg.max);
        let wanted = clamp(self.current, &self.cfg);
        self.current = self.cap(wanted);
        if wanted > self.current {
            self.above_ceiling = Some(wanted.max(self.desired()));
        }
    }

    /// Set the ceiling (the pool's difficulty), below every other bound. A lower ceiling
    /// lowers the difficulty at once; a higher one lets a miner held below what it wanted
    /// rise to it, up to the new ceiling. Returns the new difficulty when it changed.
    pub fn set_ceiling(&mut self, ceiling: Option<Difficulty>, now: Instant) -> Option<Difficulty> {
        if ceiling == self.ceiling {
            return None;
        }
        let desired = self.desired();
        self.ceiling = ceiling;
        let next = self.cap(desired);
        self.above_ceiling = (desired > next).then_some(desired);
        if next == self.current {
            return None;
        }
        self.current = next;
        self.window_start = now;
        self.shares = 0;
        Some(next)
    }

    fn cap(&self, d: Difficulty) -> Difficulty {
        match self.ceiling {
            Some(c) => d.min(c),
            None => d,
        }
    }

    /// Count one accepted share; returns a new difficulty when it is time to change.
    pub fn on_share(&mut self, now: Instant) -> Option<Difficulty> {
        self.shares = self.shares.saturating_add(1);
        self.retarget(now, false)
    }

    /// Periodic check (no share): lowers the difficulty of a miner that went quiet.
    pub fn on_tick(&mut self, now: Instant) -> Option<Difficulty> {
        self.retarget(now, true)
    }

    fn retarget(&mut self, now: Instant, tick: bool) -> Option<Difficulty> {
        let elapsed = now.saturating_duration_since(self.window_start);
        let interval = self.cfg.retarget_interval;
        let expected = self.cfg.target_shares_per_minute * interval.as_secs_f64() / 60.0;
        // Too fast: do not wait for the interval when far above the expected count.
        let flood =
            !tick && f64::from(self.shares) >= (expected * MAX_STEP).max(4.0) && elapsed < interval;
        if elapsed < interval && !flood {
            return None;
        }
        let minutes = elapsed.as_secs_f64().max(0.001) / 60.0;
        let rate = f64::from(self.shares) / minutes;
        let target = self.cfg.target_shares_per_minute;
        self.window_start = now;
        self.shares = 0;
        let ratio = (rate / target).clamp(1.0 / MAX_STEP, MAX_STEP);
        if (ratio - 1.0).abs() <= self.cfg.tolerance {
            return None;
        }
        let proposed = self.current.to_f64() * ratio;
        let wanted = clamp(round3(proposed).unwrap_or(self.current), &self.cfg);
        let next = self.cap(wanted);
        self.above_ceiling = (wanted > next).then_some(wanted);
        if next == self.current {
            return None;
        }
        self.current = next;
        Some(next)
    }
}

fn clamp(d: Difficulty, cfg: &VardiffConfig) -> Difficulty {
    d.max(cfg.min).min(cfg.max)
}

/// Round to three significant digits, as an exact decimal.
fn round3(value: f64) -> Option<Difficulty> {
    if !value.is_finite() || value <= 0.0 {
        return None;
    }
    let exp = value.log10().floor() as i32;
    let digits = 2 - exp; // decimal places that keep 3 significant digits
    let d = Decimal::from_f64(value)?;
    let rounded = if digits >= 0 {
        d.round_dp(digits.min(28) as u32)
    } else {
        let unit = Decimal::from_i128_with_scale(10i128.pow((-digits) as u32), 0);
        (d / unit).round() * unit
    };
    if rounded.to_f64()? <= 0.0 {
        return None;
    }
    Difficulty::new(rounded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VardiffConfig {
        VardiffConfig {
            target_shares_per_minute: 20.0,
            min: "0.001".parse().unwrap(),
            max: "1000000".parse().unwrap(),
            retarget_interval: Duration::from_secs(60),
            tolerance: 0.3,
        }
    }

    #[test]
    fn steady_rate_on_target_keeps_difficulty() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(cfg(), "64".parse().unwrap(), t0);
        for i in 1..=20 {
            assert_eq!(v.on_share(t0 + Duration::from_secs(3 * i)), None);
        }
        assert_eq!(v.current().to_string(), "64");
    }

    #[test]
    fn doubles_when_twice_as_fast_and_floods_are_cut_short() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(cfg(), "64".parse().unwrap(), t0);
        let mut changed = None;
        for i in 1..=40 {
            if let Some(d) = v.on_share(t0 + Duration::from_millis(1500 * i)) {
                changed = Some(d);
            }
        }
        assert_eq!(changed.unwrap().to_string(), "128");
        // 1000 shares in one second: retargets early, by at most ×4.
        let mut v = Vardiff::new(cfg(), "1".parse().unwrap(), t0);
        let mut first = None;
        for i in 1..=100 {
            if let Some(d) = v.on_share(t0 + Duration::from_millis(i)) {
                first.get_or_insert(d);
            }
        }
        assert_eq!(first.unwrap().to_string(), "4");
    }

    #[test]
    fn quiet_miner_is_lowered_on_tick_and_bounds_hold() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(cfg(), "0.002".parse().unwrap(), t0);
        assert_eq!(v.on_tick(t0 + Duration::from_secs(30)), None);
        assert_eq!(
            v.on_tick(t0 + Duration::from_secs(61)).unwrap().to_string(),
            "0.001"
        );
        assert_eq!(
            v.on_tick(t0 + Duration::from_secs(122)),
            None,
            "already at min"
        );
        let v = Vardiff::new(cfg(), "5000000".parse().unwrap(), t0);
        assert_eq!(v.current().to_string(), "1000000", "start is clamped");
    }

    #[test]
    fn the_ceiling_caps_and_remembers_what_vardiff_wanted() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(cfg(), "64".parse().unwrap(), t0);
        // The pool's difficulty drops below the miner's: lowered at once.
        assert_eq!(
            v.set_ceiling(Some("16".parse().unwrap()), t0),
            Some("16".parse().unwrap())
        );
        assert_eq!(v.desired().to_string(), "64");
        // Twice as fast as the target at 16: it would go to 32, the ceiling holds it.
        let mut changed = None;
        for i in 1..=40 {
            changed = changed.or(v.on_share(t0 + Duration::from_millis(1500 * i)));
        }
        assert_eq!(changed, None);
        assert_eq!(v.current().to_string(), "16");
        assert_eq!(v.desired().to_string(), "32");
        // The pool raises its difficulty: the miner goes to what it wanted, no further.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(
            v.set_ceiling(Some("1000".parse().unwrap()), t1),
            Some("32".parse().unwrap())
        );
        assert_eq!(v.desired().to_string(), "32");
        // A ceiling below the minimum wins over the minimum; a suggestion above it is held.
        assert_eq!(
            v.set_ceiling(Some("0.0001".parse().unwrap()), t1),
            Some("0.0001".parse().unwrap())
        );
        assert_eq!(v.set("500".parse().unwrap(), t1).to_string(), "0.0001");
        assert_eq!(v.desired().to_string(), "500");
        v.set_min("2".parse().unwrap());
        assert_eq!(v.current().to_string(), "0.0001");
        assert_eq!(v.set_ceiling(None, t1), Some("500".parse().unwrap()));
    }

    #[test]
    fn rounding_keeps_three_significant_digits() {
        assert_eq!(round3(12345.6).unwrap().to_string(), "12300");
        assert_eq!(round3(0.00123456).unwrap().to_string(), "0.00123");
        assert_eq!(round3(1.0).unwrap().to_string(), "1");
        assert!(round3(0.0).is_none());
        assert!(round3(f64::NAN).is_none());
    }
}
