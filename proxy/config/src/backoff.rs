//! Exponential backoff, the one retry schedule of the workspace: the proxy's upstream
//! reconnects (per pool, with jitter), its probes of better pools, its accept loop, and the
//! operator's requeues after an error.

use std::time::Duration;

/// `initial` after the first failure, doubling with each consecutive one, never above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay after `failures` consecutive failures (0 counts as 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        self.initial.saturating_mul(1 << shift).min(self.max)
    }

    /// [`Self::delay`] spread over its upper half by `unit` (a random number in `[0, 1)`), so
    /// that many clients failing together do not retry in step.
    pub fn jittered(&self, failures: u32, unit: f64) -> Duration {
        self.delay(failures)
            .mul_f64(0.5 + unit.clamp(0.0, 1.0) * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_up_to_the_cap_without_overflow() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let s: Vec<u64> = (0..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(s, [5, 5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.jittered(2, 0.0), Duration::from_millis(100));
        assert_eq!(b.jittered(2, 1.0), Duration::from_millis(200));
        assert_eq!(b.jittered(2, 7.0), Duration::from_millis(200));
    }
}
