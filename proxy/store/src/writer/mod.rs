//! The writer task: takes events off the bounded queue, batches them and writes them, with
//! the spool between it and a database that is away.
//!
//! One task owns the queue, the in-memory batch and the spool; the database write of the
//! current batch runs as a separate task, so taking events off the queue never waits on the
//! database. Rules, in order:
//!
//! 1. While the spool is empty and the database healthy, a batch is written directly when it
//!    reaches `batch_size` or is `flush_interval` old (while a job goes out to the miners,
//!    up to the write hold's cap later: see [`hold`]). While one write is in flight the next
//!    batch keeps filling; past `4 × batch_size` it goes to the spool.
//! 2. A write that fails (database unreachable, restarting, or slower than `write_timeout`)
//!    puts its batch in the spool, and from then on every batch goes to the spool (so the
//!    spool stays in arrival order) while the spool is replayed, oldest first, with a backoff
//!    between failed attempts. When the replay has caught up, direct writes resume.
//! 3. Shutdown: stop taking events, take what is queued, write it if the database allows
//!    within the deadline, otherwise leave it (fsynced) in the spool for the next start.
//!
//! This module holds the options, the handle and its status, and starts the writer on its
//! own thread; `task` is the writer loop that follows the rules above.

pub mod hold;
mod task;

pub use hold::WriteHold;

use crate::db::Store;
use crate::events::Event;
use crate::sink::SinkOptions;
use crate::spool::{Recovery, Spool, SpoolOptions};
use crate::{Error, PoolInfo, Result};
use loka_config::StorageConfig;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use task::Writer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How the writer behaves (from [`StorageConfig`] with [`WriterOptions::from_config`]).
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub write_timeout: Duration,
    pub spool: SpoolOptions,
    pub sink: SinkOptions,
    /// Longest wait between attempts while the database is away.
    pub max_backoff: Duration,
    /// A batch slower than this counts as a slow query (and is copied to the spool).
    pub slow_batch: Duration,
    /// Batches written concurrently (each on its own connection).
    pub parallel: usize,
    /// Sessions wait for their shares to be durable (`storage.acknowledge = "durable"`):
    /// a batch goes out as soon as a sink is idle (group commit) instead of waiting for
    /// `flush_interval`.
    pub group_commit: bool,
    /// Run the writer on its own OS thread (with its own single-threaded runtime) instead of
    /// the caller's runtime: turning events into records and encoding a batch then never
    /// holds up a runtime worker that miners' sessions are waiting on.
    pub dedicated_thread: bool,
    /// With `dedicated_thread`: how much to raise that thread's nice value (Linux; 0 keeps
    /// the caller's; `storage.writer_nice`, default 10: CFS weight 110 against 1024, about
    /// a tenth of a contended core, where the writer needs ~3 % of one at 10k shares/s).
    /// The writer's work comes in bursts (a batch every `flush_interval`); at a lower
    /// priority the scheduler lets miners' sessions preempt it, so a burst no longer delays
    /// their replies. Measured with the database on its own core: the submit p99 with
    /// storage on was 0.25 ms above storage off at nice 0, indistinguishable from it at
    /// +10 (BENCHMARKS.md).
    pub thread_nice: i32,
    /// The caller has just reached the database (migrated it, recorded the pools): the
    /// writer starts out writing directly. Otherwise it spools whatever piles up before its
    /// first write succeeds, as it does while the database is away.
    pub database_ready: bool,
    /// Opened by the proxy while it sends a new job to every miner: no direct write starts
    /// until the sessions have gone quiet (see [`WriteHold`]; not under group commit, where
    /// sessions wait for their writes).
    pub hold: WriteHold,
}

impl WriterOptions {
    pub fn from_config(cfg: &StorageConfig, pools: &[PoolInfo]) -> Self {
        WriterOptions {
            batch_size: cfg.batch_size.max(1),
            flush_interval: cfg.flush_interval,
            write_timeout: cfg.write_timeout,
            spool: SpoolOptions {
                dir: cfg.spool_path(),
                fsync: cfg.fsync,
                fsync_interval: cfg.fsync_interval,
                segment_bytes: cfg.spool_segment_bytes,
            },
            sink: SinkOptions {
                run_migrations: cfg.run_migrations,
                pools: pools.to_vec(),
                partitions_ahead: cfg.partitions_ahead,
                retention_months: cfg.retention_months,
                maintenance_every: Duration::from_secs(3600),
                hold: None,
            },
            max_backoff: Duration::from_secs(5),
            slow_batch: Duration::from_secs(1),
            parallel: (cfg.max_connections as usize / 2).clamp(1, 4),
            group_commit: cfg.acknowledge == loka_config::AckPolicy::Durable,
            dedicated_thread: false,
            thread_nice: i32::from(cfg.writer_nice),
            database_ready: false,
            hold: WriteHold::default(),
        }
    }
}

/// Lower the calling thread's priority by `by` nice levels (at most to 19); a failure is
/// logged, the writer runs on at the priority it has.
fn lower_thread_priority(by: i32) {
    if by <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux the nice value is per thread: PRIO_PROCESS with a thread id sets that one.
        let tid = rustix::thread::gettid();
        let set = rustix::process::getpriority_process(Some(tid))
            .and_then(|now| rustix::process::setpriority_process(Some(tid), (now + by).min(19)));
        if let Err(e) = set {
            tracing::warn!(error = %e, "could not lower the storage writer thread's priority");
        }
    }
}

/// Counters and gauges (plain atomics; [`StoreHandle::status`] takes a snapshot).
#[derive(Debug, Default)]
pub struct Metrics {
    pub events_received: AtomicU64,
    pub records_written: AtomicU64,
    pub submissions_inserted: AtomicU64,
    pub duplicates_ignored: AtomicU64,
    pub batches_written: AtomicU64,
    pub batches_retried: AtomicU64,
    pub write_errors: AtomicU64,
    pub spool_errors: AtomicU64,
    pub dead_letters: AtomicU64,
    pub records_lost: AtomicU64,
    pub records_spooled: AtomicU64,
    pub records_replayed: AtomicU64,
    pub queue_depth: AtomicU64,
    pub pending: AtomicU64,
    pub in_flight: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub batch_latency_last_us: AtomicU64,
    pub batch_latency_max_us: AtomicU64,
    pub batch_latency_total_us: AtomicU64,
    pub slow_batches: AtomicU64,
    pub db_up: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// A snapshot of the writer, for the API and `/health/database`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreStatus {
    pub backend: crate::Backend,
    pub db_up: bool,
    /// Events waiting in the queue from the Stratum path.
    pub queue_depth: u64,
    pub queue_capacity: u64,
    /// Records taken off the queue, not yet written nor spooled.
    pub pending: u64,
    /// Records being written that exist only in memory (not also in the spool).
    pub in_flight: u64,
    /// Bytes in the spool not yet replayed.
    pub spool_bytes: u64,
    pub events_received: u64,
    pub records_written: u64,
    pub submissions_inserted: u64,
    pub duplicates_ignored: u64,
    pub batches_written: u64,
    /// Batches written on a second attempt: stored in part before (a retry after a lost
    /// commit, a spool replay), or refused at first (see `dead_letters`).
    pub batches_retried: u64,
    pub write_errors: u64,
    pub spool_errors: u64,
    pub dead_letters: u64,
    /// Records dropped because neither the database nor the spool could take them.
    pub records_lost: u64,
    pub records_spooled: u64,
    pub records_replayed: u64,
    pub batch_latency_last_ms: f64,
    pub batch_latency_max_ms: f64,
    pub batch_latency_avg_ms: f64,
    pub slow_batches: u64,
    pub last_error: Option<String>,
}

/// What shutdown achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Records written to the database during shutdown.
    pub written: u64,
    /// Bytes left in the spool for the next start.
    pub spool_bytes: u64,
    pub records_lost: u64,
}

/// The running writer.
pub struct StoreHandle {
    metrics: Arc<Metrics>,
    store: Store,
    queue_capacity: u64,
    stop: Mutex<Option<oneshot::Sender<Instant>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<ShutdownReport>>>,
    recovery: Recovery,
}

impl StoreHandle {
    pub fn status(&self) -> StoreStatus {
        let m = &self.metrics;
        let batches = m.batches_written.load(Relaxed);
        let total = m.batch_latency_total_us.load(Relaxed);
        StoreStatus {
            backend: self.store.backend(),
            db_up: m.db_up.load(Relaxed),
            queue_depth: m.queue_depth.load(Relaxed),
            queue_capacity: self.queue_capacity,
            pending: m.pending.load(Relaxed),
            in_flight: m.in_flight.load(Relaxed),
            spool_bytes: m.spool_bytes.load(Relaxed),
            events_received: m.events_received.load(Relaxed),
            records_written: m.records_written.load(Relaxed),
            submissions_inserted: m.submissions_inserted.load(Relaxed),
            duplicates_ignored: m.duplicates_ignored.load(Relaxed),
            batches_written: batches,
            batches_retried: m.batches_retried.load(Relaxed),
            write_errors: m.write_errors.load(Relaxed),
            spool_errors: m.spool_errors.load(Relaxed),
            dead_letters: m.dead_letters.load(Relaxed),
            records_lost: m.records_lost.load(Relaxed),
            records_spooled: m.records_spooled.load(Relaxed),
            records_replayed: m.records_replayed.load(Relaxed),
            batch_latency_last_ms: m.batch_latency_last_us.load(Relaxed) as f64 / 1e3,
            batch_latency_max_ms: m.batch_latency_max_us.load(Relaxed) as f64 / 1e3,
            batch_latency_avg_ms: if batches == 0 {
                0.0
            } else {
                total as f64 / batches as f64 / 1e3
            },
            slow_batches: m.slow_batches.load(Relaxed),
            last_error: m.last_error.lock().clone(),
        }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the spool held when the writer started.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// `/health/database` with the writer's view.
    pub async fn health(&self) -> crate::DatabaseHealth {
        let status = self.status();
        self.store.health(Some(&status)).await
    }

    /// Stop at once, without flushing (what a crash leaves: the spool on disk). For tests.
    pub fn abort(&self) {
        if let Ok(mut t) = self.task.try_lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }

    /// Stop: take what is queued, write it within `deadline` or leave it in the spool.
    /// Later calls return at once.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(Instant::now() + deadline);
        }
        let task = self.task.lock().await.take();
        let fallback = || ShutdownReport {
            written: 0,
            spool_bytes: self.metrics.spool_bytes.load(Relaxed),
            records_lost: self.metrics.records_lost.load(Relaxed),
        };
        match task {
            Some(t) => match t.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "storage writer task failed");
                    fallback()
                }
            },
            None => fallback(),
        }
    }
}

/// Open the spool and start the writer on `rx`. `queue_capacity` is only reported.
pub fn spawn_writer(
    store: Store,
    rx: mpsc::Receiver<Event>,
    opts: WriterOptions,
    queue_capacity: usize,
) -> Result<StoreHandle> {
    let (spool, recovery) = Spool::open(opts.spool.clone())?;
    if recovery.records > 0 {
        tracing::info!(
            records = recovery.records,
            segments = recovery.segments,
            "spool holds records from an earlier run; replaying them"
        );
    }
    let metrics = Arc::new(Metrics::default());
    metrics.spool_bytes.store(spool.bytes(), Relaxed);
    metrics.db_up.store(opts.database_ready, Relaxed);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = if opts.dedicated_thread {
        // The statements of an SQLite connection run on its own thread, at the priority of
        // the thread that opened it: the writer opens its own connections on its thread.
        let own = store.separate_writer_pool();
        let writer = Writer::new(
            own.clone().unwrap_or_else(|| store.clone()),
            rx,
            opts,
            spool,
            metrics.clone(),
        );
        run_on_own_thread(writer, own, stop_rx)?
    } else {
        let writer = Writer::new(store.clone(), rx, opts, spool, metrics.clone());
        tokio::spawn(writer.run(stop_rx))
    };
    Ok(StoreHandle {
        metrics,
        store,
        queue_capacity: queue_capacity as u64,
        stop: Mutex::new(Some(stop_tx)),
        task: tokio::sync::Mutex::new(Some(task)),
        recovery,
    })
}

/// Start the writer on a thread of its own; the returned task (on the caller's runtime)
/// yields its report. Aborting that task aborts the writer too.
fn run_on_own_thread(
    writer: Writer,
    own_pool: Option<Store>,
    stop: oneshot::Receiver<Instant>,
) -> Result<JoinHandle<ShutdownReport>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("writer runtime: {e}")))?;
    let nice = writer.opts.thread_nice;
    let inner = rt.spawn(writer.run(stop));
    let abort = inner.abort_handle();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("loka-store-writer".into())
        .spawn(move || {
            lower_thread_priority(nice);
            let r = rt.block_on(inner);
            // The writer's own pool (SQLite): its connections closed, their threads ended
            // (bounded: a connection never handed back must not keep the report waiting).
            if let Some(pool) = own_pool {
                let close = tokio::time::timeout(Duration::from_secs(5), pool.close());
                if rt.block_on(close).is_err() {
                    tracing::warn!("the storage writer's SQLite connections did not close in 5 s");
                }
            }
            let _ = done_tx.send(r);
        })
        .map_err(|e| Error::Invalid(format!("writer thread: {e}")))?;
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    Ok(tokio::spawn(async move {
        // Aborting this task (StoreHandle::abort) drops the guard, which aborts the writer.
        let _guard = AbortOnDrop(abort);
        match done_rx.await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => std::panic::resume_unwind(Box::new(format!("storage writer: {e}"))),
            Err(_) => std::panic::resume_unwind(Box::new("storage writer thread ended")),
        }
    }))
}
