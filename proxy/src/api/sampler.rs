//! Once a second: rates from counters (connections, shares, messages, bytes, errors), per-
//! worker hashrate averages over 1m/10m/1h/24h, and the process's CPU and memory. The API
//! reads the latest snapshot; the share path never sees any of this.

use crate::context::Shared;
use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio_util::sync::CancellationToken;

/// Hashrate windows, in seconds.
pub const WINDOWS: [(&str, f64); 4] = [
    ("1m", 60.0),
    ("10m", 600.0),
    ("1h", 3600.0),
    ("24h", 86400.0),
];

#[derive(Debug, Clone, Default)]
pub struct Rates {
    pub connections_per_sec: f64,
    pub connections_per_sec_peak: f64,
    pub shares_per_sec: f64,
    pub messages_per_sec: f64,
    pub bytes_per_sec: f64,
    pub errors_per_sec: f64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub threads: u64,
    /// All workers' hashrate (H/s) per window of [`WINDOWS`]; each worker's own is in its
    /// statistics (`WorkerStats::hashrates`).
    pub total_hashrates: [f64; 4],
}

impl Rates {
    pub fn total_hashrate(&self, window: usize) -> f64 {
        self.total_hashrates[window]
    }
}

pub struct Sampler {
    pub latest: RwLock<Rates>,
}

struct Prev {
    at: Instant,
    connections: u64,
    shares: u64,
    messages: u64,
    bytes: u64,
    errors: u64,
    last_sweep: Instant,
}

/// How often idle workers are swept even when no new names arrive.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn errors_total(shared: &Shared) -> u64 {
    shared.stats.protocol_errors.load(Relaxed) + shared.stats.connections_refused.load(Relaxed)
}

impl Sampler {
    pub fn spawn(shared: Arc<Shared>, stop: CancellationToken) -> Arc<Sampler> {
        let sampler = Arc::new(Sampler {
            latest: RwLock::new(Rates::default()),
        });
        let me = sampler.clone();
        tokio::spawn(async move {
            let mut sys = System::new();
            let pid = Pid::from_u32(std::process::id());
            let mut prev = Prev {
                at: Instant::now(),
                connections: shared.stats.connections_total.load(Relaxed),
                shares: shared.stats.shares_submitted.load(Relaxed),
                messages: shared.stats.messages_received.load(Relaxed),
                bytes: shared.stats.bytes_received.load(Relaxed),
                errors: errors_total(&shared),
                last_sweep: Instant::now(),
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                me.sample(&shared, &mut prev, &mut sys, pid);
            }
        });
        sampler
    }

    fn sample(&self, shared: &Shared, prev: &mut Prev, sys: &mut System, pid: Pid) {
        let now = Instant::now();
        let dt = now.duration_since(prev.at).as_secs_f64().max(0.001);
        let s = &shared.stats;
        let rate = |cur: u64, old: &mut u64| {
            let r = cur.saturating_sub(*old) as f64 / dt;
            *old = cur;
            r
        };
        let mut next = self.latest.read().clone();
        next.connections_per_sec = rate(s.connections_total.load(Relaxed), &mut prev.connections);
        next.connections_per_sec_peak = next.connections_per_sec_peak.max(next.connections_per_sec);
        next.shares_per_sec = rate(s.shares_submitted.load(Relaxed), &mut prev.shares);
        next.messages_per_sec = rate(s.messages_received.load(Relaxed), &mut prev.messages);
        next.bytes_per_sec = rate(s.bytes_received.load(Relaxed), &mut prev.bytes);
        next.errors_per_sec = rate(errors_total(shared), &mut prev.errors);
        if now.duration_since(prev.last_sweep) >= SWEEP_EVERY {
            prev.last_sweep = now;
            s.evict_idle(
                crate::clock::unix_ms(),
                crate::stats::IDLE_WORKER_TTL,
                crate::stats::IDLE_NAME_TTL,
            );
        }
        // Hashrate: accepted difficulty × 2^32 per second, averaged exponentially per window,
        // kept in each worker's statistics (forgotten with the worker).
        let mut alpha = [0.0; 4];
        for (a, (_, window)) in alpha.iter_mut().zip(WINDOWS) {
            *a = 1.0 - (-dt / window).exp();
        }
        let mut totals = [0.0; 4];
        for w in s.workers() {
            let work = w.accepted_work();
            let hs = w.update_hashrate(|r| {
                let instant = (work - r.work_seen).max(0.0) * 4_294_967_296.0 / dt;
                r.work_seen = work;
                for (h, a) in r.hs.iter_mut().zip(alpha) {
                    *h += a * (instant - *h);
                }
            });
            for (t, h) in totals.iter_mut().zip(hs) {
                *t += h;
            }
        }
        next.total_hashrates = totals;
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        if let Some(p) = sys.process(pid) {
            next.cpu_percent = f64::from(p.cpu_usage());
            next.memory_bytes = p.memory();
        }
        next.threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Threads:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
            })
            .unwrap_or(0);
        prev.at = now;
        *self.latest.write() = next;
    }
}

/// `650 GH/s`-style formatting.
pub fn format_hashrate(h: f64) -> String {
    let units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
    let mut v = h.max(0.0);
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each worker's estimate follows its own accepted work and decays without it; the
    /// totals are the sum over the workers; a forgotten worker leaves the totals.
    #[tokio::test]
    async fn hashrates_follow_each_workers_work_and_sum_to_the_totals() {
        let shared = Shared::for_tests();
        let sampler = Sampler {
            latest: RwLock::new(Rates::default()),
        };
        let now = Instant::now();
        let mut prev = Prev {
            at: now.checked_sub(Duration::from_secs(1)).unwrap(),
            connections: 0,
            shares: 0,
            messages: 0,
            bytes: 0,
            errors: 0,
            last_sweep: now,
        };
        let (mut sys, pid) = (System::new(), Pid::from_u32(std::process::id()));
        let a = shared.stats.worker_connected("acct.a");
        let b = shared.stats.worker_connected("acct.b");
        a.add_accepted(1_000.0);
        b.add_accepted(3_000.0);
        sampler.sample(&shared, &mut prev, &mut sys, pid);
        let (ha, hb) = (a.hashrates(), b.hashrates());
        assert!(ha.iter().all(|h| *h > 0.0), "{ha:?}");
        for i in 0..4 {
            assert!(
                (hb[i] / ha[i] - 3.0).abs() < 1e-9,
                "window {i}: {ha:?} {hb:?}"
            );
            let total = sampler.latest.read().total_hashrate(i);
            assert!((total - ha[i] - hb[i]).abs() <= 1e-9 * total, "window {i}");
        }
        // No new work: every estimate decays; b leaves and takes its share of the totals.
        b.connections.store(0, Relaxed);
        shared
            .stats
            .evict_idle(u64::MAX, Duration::ZERO, Duration::ZERO);
        prev.at = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        sampler.sample(&shared, &mut prev, &mut sys, pid);
        let ha2 = a.hashrates();
        assert!(
            ha2.iter().zip(ha).all(|(now, before)| *now < before),
            "{ha2:?}"
        );
        assert_eq!(sampler.latest.read().total_hashrates, ha2);
    }

    #[test]
    fn hashrate_units() {
        assert_eq!(format_hashrate(650e9), "650.0 GH/s");
        assert_eq!(format_hashrate(150.5e12), "150.5 TH/s");
        assert_eq!(format_hashrate(12.0), "12.0 H/s");
    }
}
