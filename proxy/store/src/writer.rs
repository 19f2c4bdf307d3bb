//! The writer task: takes events off the bounded queue, batches them and writes them, with
//! the spool between it and a database that is away.
//!
//! One task owns the queue, the in-memory batch and the spool; the database write of the
//! current batch runs as a separate task, so taking events off the queue never waits on the
//! database. Rules, in order:
//!
//! 1. While the spool is empty and the database healthy, a batch is written directly when it
//!    reaches `batch_size` or is `flush_interval` old. While one write is in flight the next
//!    batch keeps filling; past `4 × batch_size` it goes to the spool.
//! 2. A write that fails (database unreachable, restarting, or slower than `write_timeout`)
//!    puts its batch in the spool, and from then on every batch goes to the spool (so the
//!    spool stays in arrival order) while the spool is replayed, oldest first, with a backoff
//!    between failed attempts. When the replay has caught up, direct writes resume.
//! 3. Shutdown: stop taking events, take what is queued, write it if the database allows
//!    within the deadline, otherwise leave it (fsynced) in the spool for the next start.

use crate::db::Store;
use crate::events::Event;
use crate::record::{Record, Recorder};
use crate::sink::{Outcome, Sink, SinkOptions};
use crate::spool::{Cursor, Recovery, Spool, SpoolOptions};
use crate::{Error, PoolInfo, Result};
use loka_config::StorageConfig;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
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
            },
            max_backoff: Duration::from_secs(5),
            slow_batch: Duration::from_secs(1),
            parallel: (cfg.max_connections as usize / 2).clamp(1, 4),
            group_commit: cfg.acknowledge == loka_config::AckPolicy::Durable,
            dedicated_thread: false,
            thread_nice: i32::from(cfg.writer_nice),
            database_ready: false,
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
    let default_pool = opts
        .sink
        .pools
        .first()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    // SQLite has one writer at a time: concurrent batches would only wait on its lock.
    let parallel = match store.backend() {
        crate::Backend::Sqlite => 1,
        crate::Backend::Postgres => opts.parallel.max(1),
    };
    let sinks = (0..parallel)
        .map(|_| Sink::new(store.clone(), opts.sink.clone()))
        .collect();
    let writer = Writer {
        store: store.clone(),
        sinks,
        rx,
        recorder: Recorder::new(default_pool),
        spool,
        metrics: metrics.clone(),
        pending: Vec::new(),
        pending_base: 0,
        acks: BTreeMap::new(),
        pending_since: None,
        inflight: VecDeque::new(),
        replay_next: None,
        epoch: 0,
        retry_at: None,
        backoff: Duration::from_millis(100),
        opts,
    };
    let task = if writer.opts.dedicated_thread {
        run_on_own_thread(writer, stop_rx)?
    } else {
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

enum Source {
    /// A batch from memory, with the sequence numbers of its records; the writer keeps a
    /// reference so it can spool it if the write fails, times out, or the task dies.
    Direct(Arc<Vec<Record>>, Range<u64>),
    /// Frames of the spool up to the cursor, read in `epoch` (see [`Writer::epoch`]).
    Replay {
        cursor: Cursor,
        records: usize,
        epoch: u64,
    },
}

type Done = (Sink, Result<Outcome>, Duration);

/// A write in flight.
struct Job {
    handle: JoinHandle<Done>,
    source: Source,
    started: Instant,
    /// Its (direct) batch was also copied to the spool because it was slow.
    spooled: bool,
}

struct Writer {
    store: Store,
    /// Idle sinks (one per concurrent write).
    sinks: Vec<Sink>,
    rx: mpsc::Receiver<Event>,
    recorder: Recorder,
    spool: Spool,
    metrics: Arc<Metrics>,
    pending: Vec<Record>,
    /// Sequence number of `pending[0]`: every record taken off the queue gets the next one,
    /// so a batch is a range, and a durable range fires the acks inside it.
    pending_base: u64,
    /// Sessions waiting for a record to be durable, by sequence number.
    acks: BTreeMap<u64, oneshot::Sender<()>>,
    pending_since: Option<Instant>,
    /// Writes in flight, oldest first; results are taken in this order, so spool cursors
    /// are committed in order.
    inflight: VecDeque<Job>,
    /// Where the next replay read starts (past frames handed to writes in flight).
    replay_next: Option<Cursor>,
    /// Bumped when a replay write fails: replay writes launched before that may not commit
    /// (the failed frames come before them); reading starts again at the committed cursor.
    epoch: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
    opts: WriterOptions,
}

impl Writer {
    async fn run(mut self, mut stop: oneshot::Receiver<Instant>) -> ShutdownReport {
        let tick_every = self.opts.flush_interval.min(Duration::from_millis(100));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf: Vec<Event> = Vec::with_capacity(self.opts.batch_size);
        // Linger between takes when a take found less than a batch: events then pile up in
        // the queue without waking this thread for each one (a wake-up per share is a
        // system call on the sending side). Group commit does not linger: sessions wait.
        let linger = if self.opts.group_commit {
            Duration::ZERO
        } else {
            (self.opts.flush_interval / 10).min(Duration::from_millis(10))
        };
        let mut take_at = Instant::now();
        let deadline = loop {
            self.schedule();
            self.gauges();
            let may_take = Instant::now() >= take_at;
            tokio::select! {
                biased;
                done = async { (&mut self.inflight.front_mut().expect("checked").handle).await }, if !self.inflight.is_empty() => {
                    let job = self.inflight.pop_front().expect("checked");
                    self.finished(job, done);
                }
                at = &mut stop => break at.unwrap_or_else(|_| Instant::now()),
                n = self.rx.recv_many(&mut buf, self.opts.batch_size), if may_take => {
                    if n == 0 {
                        // every sender is gone: the proxy has stopped
                        break Instant::now() + Duration::from_secs(5);
                    }
                    self.take(&mut buf);
                    if n < self.opts.batch_size {
                        take_at = Instant::now() + linger;
                    }
                }
                _ = tokio::time::sleep_until(take_at.into()), if !may_take => {}
                _ = tick.tick() => {
                    if let Err(e) = self.spool.sync_if_due() {
                        self.spool_error(&e);
                    }
                }
            }
        };
        self.shutdown(deadline).await
    }

    fn take(&mut self, buf: &mut Vec<Event>) {
        self.metrics
            .events_received
            .fetch_add(buf.len() as u64, Relaxed);
        for e in buf.drain(..) {
            let ack = match &e {
                Event::Share(s) => s.durable.as_ref().and_then(|a| a.take()),
                Event::Connection(_) => None,
            };
            if let Some(r) = self.recorder.record(e) {
                if let Some(ack) = ack {
                    self.acks
                        .insert(self.pending_base + self.pending.len() as u64, ack);
                }
                self.pending.push(r);
            }
        }
        if !self.pending.is_empty() && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
        if self.pending.len() >= 4 * self.opts.batch_size
            || (self.degraded() && self.pending.len() >= self.opts.batch_size)
        {
            self.spool_pending();
        }
    }

    /// The database is away, behind, or not yet known to be up: new batches go to the spool
    /// (so a crash loses at most one flush interval of events).
    fn degraded(&self) -> bool {
        !self.spool.is_empty()
            || self.retry_at.is_some()
            || !self.metrics.db_up.load(Relaxed)
            || self.inflight.iter().any(|j| j.spooled)
    }

    /// Direct writes slower than `slow_batch`: copy their batches to the spool now rather
    /// than hold them only in memory until the timeout (a replay of them later is harmless).
    fn spool_slow_inflight(&mut self) {
        let slow = self.opts.slow_batch;
        let mut copies = Vec::new();
        for job in self.inflight.iter_mut() {
            if !job.spooled
                && job.started.elapsed() >= slow
                && let Source::Direct(batch, range) = &job.source
            {
                job.spooled = true;
                copies.push((batch.clone(), range.clone()));
            }
        }
        for (batch, range) in copies {
            tracing::warn!(
                rows = batch.len(),
                "database write slow; spooling its batch"
            );
            self.spool_batch(batch.as_ref().clone(), range);
        }
    }

    /// Whether what is pending should be written (or spooled) now: a full batch, a batch a
    /// flush interval old, or anything at all under group commit (sessions are waiting; when
    /// the database cannot take it directly it goes to the spool at once).
    fn pending_due(&self) -> bool {
        self.pending_since
            .is_some_and(|t| t.elapsed() >= self.opts.flush_interval)
            || self.pending.len() >= self.opts.batch_size
            || self.opts.group_commit
    }

    /// Take the first `n` pending records with their sequence numbers.
    fn take_pending(&mut self, n: usize) -> (Vec<Record>, Range<u64>) {
        let batch: Vec<Record> = self.pending.drain(..n).collect();
        let range = self.pending_base..self.pending_base + n as u64;
        self.pending_base = range.end;
        self.pending_since = if self.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        (batch, range)
    }

    /// Start writes while sinks are idle; move old batches to the spool if they cannot go.
    fn schedule(&mut self) {
        self.spool_slow_inflight();
        if self.degraded() && self.pending_due() {
            self.spool_pending();
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        while !self.sinks.is_empty() {
            if !self.spool.is_empty() {
                // While retrying after a failure, one write at a time.
                if self.retry_at.is_some() && !self.inflight.is_empty() {
                    return;
                }
                match self
                    .spool
                    .peek_after(self.replay_next, self.opts.batch_size)
                {
                    Ok(Some((records, cursor))) => {
                        self.replay_next = Some(cursor);
                        let source = Source::Replay {
                            cursor,
                            records: records.len(),
                            epoch: self.epoch,
                        };
                        self.launch(Arc::new(records), source);
                    }
                    Ok(None) => return,
                    Err(e) => {
                        self.spool_error(&e);
                        self.retry_at = Some(Instant::now() + self.opts.max_backoff);
                        return;
                    }
                }
                continue;
            }
            if !self.pending_due() || self.pending.is_empty() {
                return;
            }
            let (batch, range) = self.take_pending(self.pending.len().min(self.opts.batch_size));
            let batch = Arc::new(batch);
            self.launch(batch.clone(), Source::Direct(batch, range));
        }
    }

    fn launch(&mut self, records: Arc<Vec<Record>>, source: Source) {
        let mut sink = self.sinks.pop().expect("an idle sink");
        let timeout = self.opts.write_timeout;
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let r = match tokio::time::timeout(timeout, sink.write(&records)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(timeout)),
            };
            (sink, r, started.elapsed())
        });
        self.inflight.push_back(Job {
            handle,
            source,
            started: Instant::now(),
            spooled: false,
        });
    }

    fn finished(&mut self, job: Job, done: std::result::Result<Done, tokio::task::JoinError>) {
        let (sink, result, took) = match done {
            Ok(d) => d,
            Err(e) => {
                // The write task died (a panic): a fresh sink; the batch is retried.
                tracing::error!(error = %e, "storage write task failed");
                let sink = Sink::new(self.store.clone(), self.opts.sink.clone());
                (
                    sink,
                    Err(Error::Invalid(format!("write task failed: {e}"))),
                    Duration::ZERO,
                )
            }
        };
        self.sinks.push(sink);
        match result {
            Ok(o) => {
                let m = &self.metrics;
                let us = took.as_micros() as u64;
                m.batches_written.fetch_add(1, Relaxed);
                if o.retried {
                    m.batches_retried.fetch_add(1, Relaxed);
                }
                m.batch_latency_last_us.store(us, Relaxed);
                m.batch_latency_max_us.fetch_max(us, Relaxed);
                m.batch_latency_total_us.fetch_add(us, Relaxed);
                if took >= self.opts.slow_batch {
                    m.slow_batches.fetch_add(1, Relaxed);
                }
                m.submissions_inserted.fetch_add(o.inserted, Relaxed);
                m.duplicates_ignored.fetch_add(o.duplicates, Relaxed);
                m.records_written
                    .fetch_add(o.inserted + o.duplicates + o.lifecycle, Relaxed);
                if !m.db_up.swap(true, Relaxed) {
                    tracing::info!("database reachable; writing");
                }
                self.dead_letters(&o.dead);
                if let Source::Direct(_, range) = &job.source {
                    self.durable(range.clone());
                }
                self.retry_at = None;
                self.backoff = Duration::from_millis(100);
                if let Source::Replay {
                    cursor,
                    records,
                    epoch,
                } = job.source
                    && epoch == self.epoch
                {
                    self.metrics
                        .records_replayed
                        .fetch_add(records as u64, Relaxed);
                    if let Err(e) = self.spool.commit(cursor) {
                        self.spool_error(&e);
                    }
                    if self.spool.is_empty() {
                        self.replay_next = None;
                        tracing::info!("spool replayed; writing directly again");
                    }
                }
            }
            Err(e) => {
                self.metrics.write_errors.fetch_add(1, Relaxed);
                if self.metrics.db_up.swap(false, Relaxed) || self.retry_at.is_none() {
                    tracing::warn!(error = %e, "database write failed; spooling until it is back");
                } else {
                    tracing::debug!(error = %e, "database still unavailable");
                }
                *self.metrics.last_error.lock() = Some(e.to_string());
                match job.source {
                    Source::Direct(records, range) if !job.spooled => {
                        let records =
                            Arc::try_unwrap(records).unwrap_or_else(|a| a.as_ref().clone());
                        self.spool_batch(records, range);
                    }
                    Source::Direct(..) => {}
                    Source::Replay { .. } => {
                        // Read again from the committed position; writes already launched
                        // after this one will not commit.
                        self.epoch += 1;
                        self.replay_next = None;
                    }
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.opts.max_backoff);
            }
        }
    }

    fn spool_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (batch, range) = self.take_pending(self.pending.len());
        self.spool_batch(batch, range);
    }

    /// The records numbered `range` are in the database or the spool: tell whoever waits.
    fn durable(&mut self, range: Range<u64>) {
        for (_, tx) in self.acks.extract_if(range, |_, _| true) {
            let _ = tx.send(());
        }
    }

    /// Into the spool; if even that fails, keep it in memory (bounded) and say so loudly.
    /// Spooled records are durable against a crash of the process once `append` returns (the
    /// bytes are in the kernel), and against power loss as `fsync` says.
    fn spool_batch(&mut self, records: Vec<Record>, range: Range<u64>) {
        match self.spool.append(&records) {
            Ok(()) => {
                self.metrics
                    .records_spooled
                    .fetch_add(records.len() as u64, Relaxed);
                self.durable(range);
            }
            Err(e) => {
                self.spool_error(&e);
                // Nobody waits any longer on these records nor on what is pending: their
                // acks are dropped (the sessions answer that the share was not stored),
                // and what is kept is numbered afresh past every number in use.
                self.acks
                    .extract_if(range.clone(), |_, _| true)
                    .for_each(drop);
                drop(self.acks.split_off(&self.pending_base));
                self.pending_base = self.pending_base.max(range.end) + self.pending.len() as u64;
                let mut keep = records;
                keep.append(&mut self.pending);
                let cap = 64 * self.opts.batch_size;
                if keep.len() > cap {
                    let lost = keep.len() - cap;
                    keep.drain(..lost);
                    self.metrics.records_lost.fetch_add(lost as u64, Relaxed);
                    tracing::error!(
                        lost,
                        "neither the database nor the spool can take records: DROPPED"
                    );
                }
                self.pending = keep;
                self.pending_since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn spool_error(&self, e: &std::io::Error) {
        self.metrics.spool_errors.fetch_add(1, Relaxed);
        *self.metrics.last_error.lock() = Some(format!("spool: {e}"));
        tracing::error!(error = %e, dir = %self.spool.dir().display(), "spool write failed");
    }

    fn dead_letters(&self, dead: &[String]) {
        if dead.is_empty() {
            return;
        }
        self.metrics
            .dead_letters
            .fetch_add(dead.len() as u64, Relaxed);
        let path = self.spool.dir().join("dead-letter.log");
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| {
                for d in dead {
                    writeln!(f, "{d}")?;
                }
                Ok(())
            });
        if let Err(e) = r {
            self.spool_error(&e);
        }
    }

    fn gauges(&self) {
        let m = &self.metrics;
        m.queue_depth.store(self.rx.len() as u64, Relaxed);
        m.pending.store(self.pending.len() as u64, Relaxed);
        let in_flight: usize = self
            .inflight
            .iter()
            .map(|j| match &j.source {
                Source::Direct(b, _) if !j.spooled => b.len(),
                _ => 0,
            })
            .sum();
        m.in_flight.store(in_flight as u64, Relaxed);
        m.spool_bytes.store(self.spool.bytes(), Relaxed);
    }

    /// Wait for the writes in flight (until `deadline`); a direct batch still unwritten then
    /// is spooled. Returns false if the deadline passed.
    async fn settle(&mut self, deadline: Instant) -> bool {
        while let Some(mut job) = self.inflight.pop_front() {
            match tokio::time::timeout_at(deadline.into(), &mut job.handle).await {
                Ok(done) => self.finished(job, done),
                Err(_) => {
                    tracing::warn!("write in flight at the shutdown deadline; spooling its batch");
                    if let Source::Direct(batch, range) = &job.source
                        && !job.spooled
                    {
                        self.spool_batch(batch.as_ref().clone(), range.clone());
                    }
                    for job in std::mem::take(&mut self.inflight) {
                        if let Source::Direct(batch, range) = &job.source
                            && !job.spooled
                        {
                            self.spool_batch(batch.as_ref().clone(), range.clone());
                        }
                    }
                    return false;
                }
            }
        }
        true
    }

    async fn shutdown(mut self, deadline: Instant) -> ShutdownReport {
        self.rx.close();
        let mut buf = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            buf.push(e);
        }
        self.take(&mut buf);
        let written_before = self.metrics.records_written.load(Relaxed);
        let mut in_time = self.settle(deadline).await;
        // Keep order: if the spool has data, what is pending goes behind it.
        if !self.spool.is_empty() {
            self.spool_pending();
        }
        while in_time && Instant::now() < deadline && self.retry_at.is_none() {
            if self.spool.is_empty() && self.pending.is_empty() {
                break;
            }
            // Write as schedule() would, everything due now.
            let past = Instant::now().checked_sub(self.opts.flush_interval);
            self.pending_since = self.pending_since.map(|t| past.unwrap_or(t));
            self.schedule();
            if self.inflight.is_empty() {
                break;
            }
            in_time = self.settle(deadline).await;
        }
        self.spool_pending();
        if let Err(e) = self.spool.sync() {
            self.spool_error(&e);
        }
        self.gauges();
        let report = ShutdownReport {
            written: self.metrics.records_written.load(Relaxed) - written_before,
            spool_bytes: self.spool.bytes(),
            records_lost: self.metrics.records_lost.load(Relaxed),
        };
        if report.spool_bytes > 0 {
            tracing::warn!(
                spool_bytes = report.spool_bytes,
                dir = %self.spool.dir().display(),
                "storage: records left in the spool for the next start"
            );
        } else {
            tracing::info!(written = report.written, "storage flushed");
        }
        report
    }
}
