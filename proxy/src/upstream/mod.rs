//! Upstream pool client: an ordered failover list, reconnect with backoff and jitter, return
//! to a higher-priority pool once it has stayed healthy, and new work to miners on every
//! switch (published as `watch<Option<Arc<Work>>>`, so miners keep their TCP connections).
//!
//! One task per upstream session: it owns the pool socket, publishes [`Work`] on every job,
//! and forwards the shares miners' sessions send it (batched into one write). This module
//! is what sessions and the API hold ([`UpstreamHandle`], [`UpstreamStatus`], the messages
//! between them); `failover` is the task; `conn` one pool connection; `work` the jobs it
//! publishes; `settings` how it is configured; `error` why a pool failed.

pub mod conn;
mod error;
mod failover;
mod settings;
pub mod work;

pub use error::{FailureKind, UpstreamError};
pub use settings::{PoolSetupError, UpstreamSettings, resolve_pools};

pub use failover::spawn;

use crate::upstream::conn::PoolEndpoint;
use crate::upstream::work::{LocalJob, Work};
use loka_stratum::{Difficulty, StratumError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A share on its way to the pool.
pub struct Submission {
    pub job: Arc<LocalJob>,
    pub extranonce2: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// The header's version when the miner rolled version bits. The bits the pool is sent
    /// are taken from it under the pool's mask in force when it is sent.
    pub version: Option<u32>,
    pub worker: Arc<str>,
    /// Passthrough: where the pool's verdict goes. Every path resolves it exactly once: an
    /// answer, `NotSent(_)`, `Unanswered`, or — when the submission or its pending entry is
    /// dropped because the connection or the task ended — a closed channel, which the
    /// receiver reads as `Unanswered`.
    pub verdict: Option<oneshot::Sender<Verdict>>,
}

/// What became of a forwarded share (passthrough relays it to the miner).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The pool answered: `true`, or its error.
    Answered(Result<(), StratumError>),
    /// Not sent, and why: its job belonged to an earlier upstream session (stale), or its
    /// header was rolled outside the mask the pool has since set.
    NotSent(StratumError),
    /// Sent, but no answer came within `upstream.response_timeout` or before the connection
    /// ended: the pool may or may not have credited it.
    Unanswered,
}

/// Live figures about the upstream side, read by health checks and the API.
#[derive(Debug, Default)]
pub struct UpstreamStatus {
    pub connected: AtomicBool,
    pub failovers: AtomicU64,
    pub jobs_received: AtomicU64,
    pub submits_sent: AtomicU64,
    pub submits_accepted: AtomicU64,
    pub submits_rejected: AtomicU64,
    /// Shares whose job belonged to a previous upstream session (not sent).
    pub submits_stale: AtomicU64,
    /// Sent but never answered within the response timeout.
    pub submits_lost: AtomicU64,
    /// `mining.suggest_difficulty` requests sent to pools (aggregate mode).
    pub difficulty_suggestions: AtomicU64,
    pub last_job_unix_ms: AtomicU64,
    /// Connection attempts and sessions that failed, by [`FailureKind`].
    failures: [AtomicU64; FailureKind::ALL.len()],
    pub detail: Mutex<UpstreamDetail>,
}

#[derive(Debug, Default, Clone)]
pub struct UpstreamDetail {
    pub active_pool: Option<Arc<str>>,
    pub active_host: Option<String>,
    pub latency: Option<Duration>,
    pub last_error: Option<String>,
}

/// Each pool's last failure (by name) and when, in Unix milliseconds, shared by every
/// upstream task of the proxy (passthrough runs one per miner) and read by `/health/pool`.
#[derive(Debug, Default)]
pub struct PoolErrors(Mutex<std::collections::HashMap<Arc<str>, (String, u64)>>);

impl PoolErrors {
    pub fn record(&self, pool: &Arc<str>, error: String) {
        self.0
            .lock()
            .insert(pool.clone(), (error, crate::clock::unix_ms()));
    }

    /// A pool's last failure and when, if it ever failed.
    pub fn get(&self, pool: &str) -> Option<(String, u64)> {
        self.0.lock().get(pool).cloned()
    }
}

impl UpstreamStatus {
    /// A connection attempt or session failed: shown as `last_error`, counted by kind.
    fn failed(&self, errors: &PoolErrors, pool: &Arc<str>, e: &UpstreamError) {
        self.failures[e.kind() as usize].fetch_add(1, Relaxed);
        let text = e.to_string();
        errors.record(pool, text.clone());
        self.detail.lock().last_error = Some(text);
    }

    /// Failures so far, by kind.
    pub fn failures(&self) -> impl Iterator<Item = (FailureKind, u64)> + '_ {
        FailureKind::ALL
            .iter()
            .map(|k| (*k, self.failures[*k as usize].load(Relaxed)))
    }
}

/// Commands from the admin API / config reload.
#[derive(Debug)]
pub enum Control {
    /// Replace the failover list; the session moves to the best pool of the new list.
    SetPools(Vec<PoolEndpoint>),
}

/// The handle sessions use.
#[derive(Clone)]
pub struct UpstreamHandle {
    pub work: watch::Receiver<Option<Arc<Work>>>,
    pub submit: mpsc::Sender<Submission>,
    pub status: Arc<UpstreamStatus>,
    pub control: mpsc::Sender<Control>,
    pub wants: Arc<DifficultyWants>,
    /// `client.show_message` texts from the pool, for the miners behind this session.
    pub messages: broadcast::Sender<Arc<str>>,
}

/// The longest pool message relayed to miners, in characters (the rest is cut).
pub const MAX_MESSAGE_CHARS: usize = 512;

/// Aggregate mode: the difficulties miners' vardiff wants above the pool's difficulty (which
/// caps them), as a multiset. The upstream task asks the pool for the highest with
/// `mining.suggest_difficulty`: a pool that takes it lets every miner have its own; one
/// that ignores it keeps them at its difficulty, credited in full, only with more shares.
#[derive(Debug, Default)]
pub struct DifficultyWants(Mutex<BTreeMap<Difficulty, u32>>);

impl DifficultyWants {
    /// A session's want changes from `old` to `new` (`None`: content with the pool's).
    pub fn replace(&self, old: Option<Difficulty>, new: Option<Difficulty>) {
        if old == new {
            return;
        }
        let mut m = self.0.lock();
        if let Some(old) = old
            && let Some(n) = m.get_mut(&old)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&old);
            }
        }
        if let Some(new) = new {
            *m.entry(new).or_insert(0) += 1;
        }
    }

    pub fn highest(&self) -> Option<Difficulty> {
        self.0.lock().last_key_value().map(|(d, _)| *d)
    }
}
