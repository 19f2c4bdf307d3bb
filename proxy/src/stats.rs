//! Counters the Stratum path bumps and the API/metrics read: atomics only on the share path.

use loka_stratum::error::ErrorCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Process-wide figures.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_peak: AtomicU64,
    /// Refused at accept (limits, draining).
    pub connections_refused: AtomicU64,
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
    /// Share events the storage queue could not take.
    pub events_dropped: AtomicU64,
    workers: Mutex<HashMap<String, Arc<WorkerStats>>>,
}

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
    /// Sum of accepted difficulty × 1e6, for hashrate estimates.
    pub accepted_work_micro: AtomicU64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            connections_current: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_peak: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            shares_submitted: AtomicU64::new(0),
            shares_accepted: AtomicU64::new(0),
            shares_rejected: AtomicU64::new(0),
            rejects_by_code: Default::default(),
            block_candidates: AtomicU64::new(0),
            shares_forwarded: AtomicU64::new(0),
            jobs_distributed: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            workers: Mutex::new(HashMap::new()),
        }
    }
}

impl Stats {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        let now = self.connections_current.fetch_add(1, Relaxed) + 1;
        self.connections_peak.fetch_max(now, Relaxed);
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

    /// The worker's counters, created on first authorization.
    pub fn worker(&self, name: &str) -> Arc<WorkerStats> {
        let mut workers = self.workers.lock();
        if let Some(w) = workers.get(name) {
            return w.clone();
        }
        let now = unix_ms();
        let w = Arc::new(WorkerStats {
            name: name.to_string(),
            first_seen_unix_ms: now,
            last_activity_unix_ms: AtomicU64::new(now),
            connections: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            difficulty_bits: AtomicU64::new(0),
            accepted_work_micro: AtomicU64::new(0),
        });
        workers.insert(name.to_string(), w.clone());
        w
    }

    /// A snapshot of all workers (cloned `Arc`s; the lock is held only to copy them).
    pub fn workers(&self) -> Vec<Arc<WorkerStats>> {
        self.workers.lock().values().cloned().collect()
    }
}

impl WorkerStats {
    pub fn touch(&self) {
        self.last_activity_unix_ms.store(unix_ms(), Relaxed);
    }

    pub fn set_difficulty(&self, d: f64) {
        self.difficulty_bits.store(d.to_bits(), Relaxed);
    }

    pub fn difficulty(&self) -> f64 {
        f64::from_bits(self.difficulty_bits.load(Relaxed))
    }

    pub fn add_accepted(&self, difficulty: f64) {
        self.accepted.fetch_add(1, Relaxed);
        self.accepted_work_micro
            .fetch_add((difficulty * 1e6) as u64, Relaxed);
    }
}
