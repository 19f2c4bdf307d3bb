//! Counters the Stratum path bumps and the API/metrics read: atomics only on the share path.

use loka_stratum::error::ErrorCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Process-wide figures.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_peak: AtomicU64,
    /// Refused at accept (limits, draining).
    pub connections_refused: AtomicU64,
    /// Authorizations refused because the connection already carries its most workers.
    pub workers_refused: AtomicU64,
    /// Idle workers forgotten (their history stays in the share store).
    pub workers_evicted: AtomicU64,
    pub shares_submitted: AtomicU64,
    pub shares_accepted: AtomicU64,
    pub shares_rejected: AtomicU64,
    rejects_by_code: [AtomicU64; 6],
    pub block_candidates: AtomicU64,
    /// Shares forwarded to the upstream pool (met its target).
    pub shares_forwarded: AtomicU64,
    /// Notify messages written to miners.
    pub jobs_distributed: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Events the storage queue could not take (connection events when it was full; any
    /// event once the writer has stopped). Share events wait for room instead.
    pub events_dropped: AtomicU64,
    /// Share events that found the storage queue full and waited for room.
    pub events_waited: AtomicU64,
    /// Accepted shares answered with an error because they could not be made durable
    /// (`storage.acknowledge = "durable"`).
    pub shares_unstored: AtomicU64,
    /// Lines (messages) and bytes received from miners.
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Time from a submit line arriving to its verdict being ready, in seconds.
    pub submit_latency: Histogram,
    /// Difficulty of accepted shares (the credit each earned).
    pub share_difficulty: Histogram,
    /// From a pool job arriving to its notify written to a miner, in seconds (fan-out).
    pub notify_delay: Histogram,
    /// Connections opened, by transport ([`Transport`] order).
    connections_by_transport: [AtomicU64; Transport::ALL.len()],
    /// TLS handshakes, failures and certificate reloads (the upstream tasks hold it too).
    pub tls: Arc<crate::tls::TlsCounters>,
    workers: Mutex<Workers>,
}

labelled! {
    /// How a miner's connection reached the proxy (the `transport` label).
    Transport {
        /// The plain Stratum port.
        Tcp => "tcp",
        /// The TLS port.
        Tls => "tls",
        /// The API's WebSocket `/stratum`.
        WebSocket => "websocket",
    }
}

/// The workers known in memory, swept of idle ones as new names arrive.
#[derive(Debug)]
struct Workers {
    by_name: HashMap<String, Arc<WorkerStats>>,
    /// Sweep when a new name would take the map to this size.
    sweep_at: usize,
}

/// A worker with no connection is forgotten this long after its last activity...
pub const IDLE_WORKER_TTL: Duration = Duration::from_secs(25 * 3600);
/// ...or this long if it never had a share accepted (names a client made up and left).
pub const IDLE_NAME_TTL: Duration = Duration::from_secs(600);
const FIRST_SWEEP: usize = 1024;

/// One worker (`account.worker`), across its connections.
#[derive(Debug)]
pub struct WorkerStats {
    pub name: String,
    pub first_seen_unix_ms: u64,
    pub last_activity_unix_ms: AtomicU64,
    pub connections: AtomicU64,
    pub submitted: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Current difficulty (f64 bits), for display.
    pub difficulty_bits: AtomicU64,
    /// Sum of accepted difficulty (f64 bits), for hashrate estimates (display only).
    accepted_work_bits: AtomicU64,
    /// The API sampler's hashrate estimates, kept here rather than in maps of its own keyed
    /// by name (which it copied every second, ~300 bytes per worker).
    hashrate: parking_lot::Mutex<Hashrate>,
}

/// Hashrate estimates (H/s) per window of the API's sampler, and the accepted work they last
/// took in.
#[derive(Debug, Default, Clone, Copy)]
pub struct Hashrate {
    pub work_seen: f64,
    pub hs: [f64; 4],
}

/// Buckets of the submit latency histogram (seconds): 10 µs … 1 s.
pub const SUBMIT_LATENCY_BUCKETS: [f64; 14] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
    0.25, 1.0,
];

/// Buckets of the notify fan-out histogram (seconds): 100 µs … 5 s.
pub const NOTIFY_DELAY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            connections_current: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_peak: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            workers_refused: AtomicU64::new(0),
            workers_evicted: AtomicU64::new(0),
            shares_submitted: AtomicU64::new(0),
            shares_accepted: AtomicU64::new(0),
            shares_rejected: AtomicU64::new(0),
            rejects_by_code: Default::default(),
            block_candidates: AtomicU64::new(0),
            shares_forwarded: AtomicU64::new(0),
            jobs_distributed: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            events_waited: AtomicU64::new(0),
            shares_unstored: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            submit_latency: Histogram::new(SUBMIT_LATENCY_BUCKETS.to_vec()),
            share_difficulty: Histogram::new((0..16).map(|i| 1e-9 * 16f64.powi(i)).collect()),
            notify_delay: Histogram::new(NOTIFY_DELAY_BUCKETS.to_vec()),
            connections_by_transport: Default::default(),
            tls: Default::default(),
            workers: Mutex::new(Workers {
                by_name: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }
}

impl Stats {
    pub fn connection_opened(&self, transport: Transport) {
        self.connections_by_transport[transport as usize].fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
        let now = self.connections_current.fetch_add(1, Relaxed) + 1;
        self.connections_peak.fetch_max(now, Relaxed);
    }

    /// Connections opened so far, by transport.
    pub fn connections_by_transport(&self) -> impl Iterator<Item = (Transport, u64)> + '_ {
        Transport::ALL
            .iter()
            .map(|&t| (t, self.connections_by_transport[t as usize].load(Relaxed)))
    }

    pub fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Relaxed);
    }

    pub fn rejected(&self, code: ErrorCode) {
        self.shares_rejected.fetch_add(1, Relaxed);
        self.rejects_by_code[(code.code() - 20) as usize].fetch_add(1, Relaxed);
    }

    pub fn rejects(&self, code: ErrorCode) -> u64 {
        self.rejects_by_code[(code.code() - 20) as usize].load(Relaxed)
    }

    /// A connection authorized this worker: its counters (created on first sight) with the
    /// connection counted, under the same lock a sweep takes, so a worker in use is never
    /// swept. A new name may first sweep idle workers away (amortised: the map has doubled
    /// since the last sweep).
    pub fn worker_connected(&self, name: &str) -> Arc<WorkerStats> {
        let mut workers = self.workers.lock();
        if let Some(w) = workers.by_name.get(name) {
            w.connections.fetch_add(1, Relaxed);
            return w.clone();
        }
        let now = crate::clock::unix_ms();
        if workers.by_name.len() + 1 >= workers.sweep_at {
            let evicted = sweep(&mut workers.by_name, now, IDLE_WORKER_TTL, IDLE_NAME_TTL);
            self.workers_evicted.fetch_add(evicted as u64, Relaxed);
            workers.sweep_at = (workers.by_name.len() * 2).max(FIRST_SWEEP);
        }
        let w = Arc::new(WorkerStats {
            name: name.to_string(),
            first_seen_unix_ms: now,
            last_activity_unix_ms: AtomicU64::new(now),
            connections: AtomicU64::new(1),
            submitted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            difficulty_bits: AtomicU64::new(0),
            accepted_work_bits: AtomicU64::new(0f64.to_bits()),
            hashrate: parking_lot::Mutex::new(Hashrate::default()),
        });
        workers.by_name.insert(name.to_string(), w.clone());
        w
    }

    /// Forget workers with no connection that were idle for `idle` (or `idle_unproven` if
    /// none of their shares was ever accepted); returns how many.
    pub fn evict_idle(&self, now_ms: u64, idle: Duration, idle_unproven: Duration) -> usize {
        let evicted = sweep(
            &mut self.workers.lock().by_name,
            now_ms,
            idle,
            idle_unproven,
        );
        self.workers_evicted.fetch_add(evicted as u64, Relaxed);
        evicted
    }

    /// A snapshot of all workers (cloned `Arc`s; the lock is held only to copy them).
    pub fn workers(&self) -> Vec<Arc<WorkerStats>> {
        self.workers.lock().by_name.values().cloned().collect()
    }
}

fn sweep(
    workers: &mut HashMap<String, Arc<WorkerStats>>,
    now_ms: u64,
    idle: Duration,
    idle_unproven: Duration,
) -> usize {
    let before = workers.len();
    workers.retain(|_, w| {
        let ttl = if w.accepted.load(Relaxed) > 0 {
            idle
        } else {
            idle_unproven
        };
        let idle_for = now_ms.saturating_sub(w.last_activity_unix_ms.load(Relaxed));
        w.connections.load(Relaxed) > 0 || u128::from(idle_for) < ttl.as_millis()
    });
    before - workers.len()
}

impl WorkerStats {
    pub fn touch(&self) {
        self.last_activity_unix_ms
            .store(crate::clock::unix_ms(), Relaxed);
    }

    pub fn set_difficulty(&self, d: f64) {
        self.difficulty_bits.store(d.to_bits(), Relaxed);
    }

    pub fn difficulty(&self) -> f64 {
        f64::from_bits(self.difficulty_bits.load(Relaxed))
    }

    pub fn add_accepted(&self, difficulty: f64) {
        self.accepted.fetch_add(1, Relaxed);
        let _ = self.accepted_work_bits.fetch_update(Relaxed, Relaxed, |b| {
            Some((f64::from_bits(b) + difficulty).to_bits())
        });
    }

    /// Sum of the difficulty of accepted shares.
    pub fn accepted_work(&self) -> f64 {
        f64::from_bits(self.accepted_work_bits.load(Relaxed))
    }

    /// The latest hashrate estimates, per window.
    pub fn hashrates(&self) -> [f64; 4] {
        self.hashrate.lock().hs
    }

    /// Move the hashrate estimates on (the API's sampler, once a second); returns them.
    pub fn update_hashrate(&self, f: impl FnOnce(&mut Hashrate)) -> [f64; 4] {
        let mut h = self.hashrate.lock();
        f(&mut h);
        h.hs
    }
}

/// A fixed-bucket histogram of atomics: observing is a few relaxed atomic operations, reading
/// is a snapshot (for Prometheus, JSON and percentiles).
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One count per bound, plus +Inf; not cumulative.
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough copy of a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    /// (upper bound, non-cumulative count), the last bound is +Inf.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Relaxed)))
            .collect::<Vec<_>>();
        HistogramSnapshot {
            sum: f64::from_bits(self.sum_bits.load(Relaxed)),
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
        }
    }
}

impl HistogramSnapshot {
    /// The q-quantile, interpolated linearly inside its bucket.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        let mut lower = 0.0;
        for &(bound, n) in &self.buckets {
            if n > 0 && (seen + n) as f64 >= rank {
                let upper = if bound.is_finite() { bound } else { lower };
                let frac = (rank - seen as f64) / n as f64;
                return lower + frac.clamp(0.0, 1.0) * (upper - lower);
            }
            seen += n;
            if bound.is_finite() {
                lower = bound;
            }
        }
        lower
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::new(vec![1.0, 2.0, 4.0]);
        for v in [0.5, 1.5, 1.5, 3.0] {
            h.observe(v);
        }
        h.observe(10.0);
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(
            s.buckets,
            vec![(1.0, 1), (2.0, 2), (4.0, 1), (f64::INFINITY, 1)]
        );
        assert!((s.sum - 16.5).abs() < 1e-9);
        assert!((s.quantile(0.2) - 1.0).abs() < 1e-9);
        assert!((s.quantile(0.5) - 1.75).abs() < 1e-9);
        assert_eq!(s.quantile(1.0), 4.0);
        assert_eq!(Histogram::new(vec![1.0]).snapshot().quantile(0.5), 0.0);
    }
}

#[cfg(test)]
mod worker_tests {
    use super::*;

    #[test]
    fn idle_workers_are_forgotten_and_workers_in_use_never() {
        let s = Stats::default();
        let busy = s.worker_connected("a.busy");
        let worked = s.worker_connected("a.worked");
        worked.add_accepted(1.0);
        let spam = s.worker_connected("a.spam");
        // Both idle ones leave; "busy" stays connected.
        for w in [&worked, &spam] {
            w.connections.fetch_sub(1, Relaxed);
        }
        let t0 = worked.last_activity_unix_ms.load(Relaxed);
        let minutes = |m: u64| t0 + m * 60_000;
        assert_eq!(s.evict_idle(minutes(5), IDLE_WORKER_TTL, IDLE_NAME_TTL), 0);
        // A name that never had a share accepted goes after ten minutes...
        assert_eq!(s.evict_idle(minutes(11), IDLE_WORKER_TTL, IDLE_NAME_TTL), 1);
        let names = |s: &Stats| {
            let mut n: Vec<String> = s.workers().iter().map(|w| w.name.clone()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&s), ["a.busy", "a.worked"]);
        // ...one that worked after a day and an hour; a connected one never.
        assert_eq!(
            s.evict_idle(minutes(24 * 60), IDLE_WORKER_TTL, IDLE_NAME_TTL),
            0
        );
        assert_eq!(
            s.evict_idle(minutes(25 * 60 + 1), IDLE_WORKER_TTL, IDLE_NAME_TTL),
            1
        );
        assert_eq!(names(&s), ["a.busy"]);
        assert_eq!(busy.connections.load(Relaxed), 1);
        assert_eq!(s.workers_evicted.load(Relaxed), 2);
        // Coming back counts the connection on the same counters.
        let again = s.worker_connected("a.busy");
        assert!(Arc::ptr_eq(&again, &busy));
        assert_eq!(busy.connections.load(Relaxed), 2);
    }

    #[test]
    fn a_flood_of_names_is_swept_as_it_grows() {
        let s = Stats::default();
        // Names made up and left at once, long ago (as a sweep sees them ten minutes on).
        for i in 0..10_000 {
            let w = s.worker_connected(&format!("x.{i}"));
            w.connections.fetch_sub(1, Relaxed);
            w.last_activity_unix_ms.store(0, Relaxed);
        }
        assert!(s.workers().len() < 2 * FIRST_SWEEP, "{}", s.workers().len());
        assert!(s.workers_evicted.load(Relaxed) > 8_000);
    }
}
