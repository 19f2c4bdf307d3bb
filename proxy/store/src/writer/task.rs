//! The writer loop: batches, direct writes, the spool and its replay, shutdown.

use super::{Metrics, ShutdownReport, WriterOptions};
use crate::db::Store;
use crate::events::Event;
use crate::record::{Record, Recorder};
use crate::sink::{Outcome, Sink};
use crate::spool::{Cursor, Spool};
use crate::{Error, Result};
use loka_config::Backoff;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

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

/// The first retry after a failed write; later ones double, up to `max_backoff`.
const RETRY_FIRST: Duration = Duration::from_millis(100);

pub(super) struct Writer {
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
    /// Failed writes in a row, for the retry backoff (100 ms doubling to `max_backoff`).
    failures: u32,
    /// The write hold kept a due batch back: when to look again.
    held_until: Option<Instant>,
    pub(super) opts: WriterOptions,
}

impl Writer {
    /// A writer over `store`, taking events from `rx`, with `spool` already opened.
    pub(super) fn new(
        store: Store,
        rx: mpsc::Receiver<Event>,
        mut opts: WriterOptions,
        spool: Spool,
        metrics: Arc<Metrics>,
    ) -> Self {
        // The hold the writer and its sinks read: none under group commit (sessions wait for
        // their writes). A batch already running in SQLite when a job goes out pauses too.
        opts.sink.hold = (!opts.group_commit).then(|| opts.hold.clone());
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
        Writer {
            store,
            sinks,
            rx,
            recorder: Recorder::new(default_pool),
            spool,
            metrics,
            pending: Vec::new(),
            pending_base: 0,
            acks: BTreeMap::new(),
            pending_since: None,
            inflight: VecDeque::new(),
            replay_next: None,
            epoch: 0,
            retry_at: None,
            failures: 0,
            held_until: None,
            opts,
        }
    }

    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<Instant>) -> ShutdownReport {
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
                _ = tokio::time::sleep_until(self.held_until.unwrap_or(take_at).into()), if self.held_until.is_some() => {}
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
        self.held_until = None;
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
            // A job is going out to every miner: the batch waits for the sessions to finish
            // (at most two batches' worth of it, and at most the hold's cap past its flush
            // interval; no hold under group commit, see `new`).
            if let Some(hold) = &self.opts.sink.hold
                && self.pending.len() < 2 * self.opts.batch_size
                && self
                    .pending_since
                    .is_some_and(|t| t.elapsed() < self.opts.flush_interval + hold.cap())
                && let Some(until) = hold.holds_until(Instant::now())
            {
                self.held_until = Some(until);
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
                Err(_) => {
                    sink.reset();
                    Err(Error::Timeout(timeout))
                }
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
                self.failures = 0;
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
                self.failures = self.failures.saturating_add(1);
                let backoff = Backoff::new(RETRY_FIRST, self.opts.max_backoff);
                self.retry_at = Some(Instant::now() + backoff.delay(self.failures));
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
        // What is left goes out now, whatever the sessions are doing (the sinks' batches in
        // SQLite share this hold).
        self.opts.hold.release();
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
