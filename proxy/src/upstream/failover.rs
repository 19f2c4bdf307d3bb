//! The upstream task: the ordered failover list (per-pool backoff, probes of better pools,
//! hand-over), one pool session at a time (`drive`), shares forwarded in batched writes.

use super::{
    Control, DifficultyWants, MAX_MESSAGE_CHARS, Submission, UpstreamError, UpstreamHandle,
    UpstreamSettings, UpstreamStatus, Verdict,
};
use crate::upstream::conn::{PoolConn, PoolEndpoint, PoolMessage};
use crate::upstream::work::{ExtranonceLayout, LayoutError, LocalJob, Work};
use loka_config::Backoff;
use loka_stratum::share::version_bits_for_pool;
use loka_stratum::{Difficulty, StratumError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Start an upstream task; it ends on `shutdown` or when every handle is dropped.
pub fn spawn(settings: UpstreamSettings, shutdown: CancellationToken) -> UpstreamHandle {
    let (work_tx, work_rx) = watch::channel(None);
    let (submit_tx, submit_rx) = mpsc::channel(4096);
    let (control_tx, control_rx) = mpsc::channel(8);
    let status = Arc::new(UpstreamStatus::default());
    let wants = Arc::new(DifficultyWants::default());
    let messages = broadcast::channel(16).0;
    let task = Upstream::new(
        settings,
        Channels {
            work_tx,
            submit_rx,
            control_rx,
            messages: messages.clone(),
        },
        status.clone(),
        wants.clone(),
        shutdown,
    );
    tokio::spawn(task.run());
    UpstreamHandle {
        work: work_rx,
        submit: submit_tx,
        status,
        control: control_tx,
        wants,
        messages,
    }
}

/// The longest wait a pool's `client.reconnect` may ask for.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(300);

/// How long a pool may take to act on `mining.suggest_difficulty` before the log says it
/// did not.
const SUGGEST_PATIENCE: Duration = Duration::from_secs(60);

enum End {
    Shutdown,
    Failed {
        index: usize,
        reason: UpstreamError,
        lasted: Duration,
    },
    Handover(Box<PoolConn>),
    Reconnect {
        index: usize,
        /// The pool named another address (host, port); the configured one otherwise.
        to: Option<(String, u16)>,
        wait: Duration,
    },
    Reconfigured,
}

struct Pending {
    sent: Instant,
    verdict: Option<oneshot::Sender<Verdict>>,
    /// Lives from the write to the pool's answer: the upstream round trip.
    _span: tracing::Span,
}

/// The upstream task's ends of the channels to sessions and the API.
struct Channels {
    work_tx: watch::Sender<Option<Arc<Work>>>,
    submit_rx: mpsc::Receiver<Submission>,
    control_rx: mpsc::Receiver<Control>,
    messages: broadcast::Sender<Arc<str>>,
}

struct Upstream {
    s: UpstreamSettings,
    work_tx: watch::Sender<Option<Arc<Work>>>,
    submit_rx: mpsc::Receiver<Submission>,
    control_rx: mpsc::Receiver<Control>,
    messages: broadcast::Sender<Arc<str>>,
    status: Arc<UpstreamStatus>,
    wants: Arc<DifficultyWants>,
    shutdown: CancellationToken,
    failures: Vec<u32>,
    next_try: Vec<Instant>,
    /// Where a pool's `client.reconnect` sent us: used for the next connection to that
    /// pool only; if it fails, the configured address is next.
    redirect: Vec<Option<(String, u16)>>,
    generation: u64,
}

impl Upstream {
    fn new(
        s: UpstreamSettings,
        c: Channels,
        status: Arc<UpstreamStatus>,
        wants: Arc<DifficultyWants>,
        shutdown: CancellationToken,
    ) -> Self {
        let n = s.pools.len();
        Self {
            s,
            work_tx: c.work_tx,
            submit_rx: c.submit_rx,
            control_rx: c.control_rx,
            messages: c.messages,
            status,
            wants,
            shutdown,
            failures: vec![0; n],
            next_try: vec![Instant::now(); n],
            redirect: vec![None; n],
            generation: 0,
        }
    }

    fn username(&self, pool: &PoolEndpoint) -> String {
        pool.username.clone()
    }

    async fn run(mut self) {
        let mut handover: Option<Box<PoolConn>> = None;
        loop {
            let conn = match handover.take() {
                Some(c) => c,
                None => match self.connect_best().await {
                    Some(c) => c,
                    None => break,
                },
            };
            let index = conn.index;
            let end = self.drive(conn).await;
            self.status.connected.store(false, Relaxed);
            match end {
                End::Shutdown => break,
                End::Failed {
                    index,
                    reason,
                    lasted,
                } => {
                    tracing::warn!(pool = %self.s.pools[index].name, %reason, kind = reason.kind().as_str(), "upstream pool failed; failing over");
                    self.status
                        .failed(&self.s.pool_errors, &self.s.pools[index].name, &reason);
                    self.status.failovers.fetch_add(1, Relaxed);
                    if lasted > self.s.timing.backoff_max {
                        self.failures[index] = 0;
                    }
                    self.penalise(index);
                    // Miners hold on to their connections; they get work again on reconnect.
                    self.work_tx.send_replace(None);
                }
                End::Handover(c) => {
                    tracing::info!(from = %self.s.pools[index].name, to = %self.s.pools[c.index].name, "returning to higher-priority pool");
                    self.status.failovers.fetch_add(1, Relaxed);
                    handover = Some(c);
                }
                End::Reconfigured => {
                    tracing::info!(pools = ?self.s.pools, "upstream pools replaced");
                    self.work_tx.send_replace(None);
                }
                End::Reconnect { index, to, wait } => {
                    tracing::info!(pool = %self.s.pools[index].name, to = ?to, ?wait, "pool asked us to reconnect");
                    self.next_try[index] = Instant::now() + wait;
                    self.redirect[index] = to;
                    self.work_tx.send_replace(None);
                }
            }
            if self.submit_rx.is_closed() && self.work_tx.is_closed() {
                break;
            }
        }
        self.work_tx.send_replace(None);
    }

    fn apply(&mut self, c: Control) {
        match c {
            Control::SetPools(pools) => {
                let n = pools.len();
                self.s.pools = pools;
                self.failures = vec![0; n];
                self.next_try = vec![Instant::now(); n];
                self.redirect = vec![None; n];
            }
        }
    }

    fn penalise(&mut self, index: usize) {
        self.failures[index] = self.failures[index].saturating_add(1);
        let wait = self
            .s
            .timing
            .backoff()
            .jittered(self.failures[index], rand::random());
        self.next_try[index] = Instant::now() + wait;
    }

    /// Connect to the highest-priority pool that is not backing off; wait when all are.
    async fn connect_best(&mut self) -> Option<Box<PoolConn>> {
        loop {
            for i in 0..self.s.pools.len() {
                if self.shutdown.is_cancelled() {
                    return None;
                }
                if Instant::now() < self.next_try[i] {
                    continue;
                }
                let mut pool = self.s.pools[i].clone();
                if let Some((host, port)) = self.redirect[i].take() {
                    pool.host = host;
                    pool.port = port;
                }
                let user = self.username(&pool);
                let attempt = PoolConn::establish(
                    i,
                    &pool,
                    &user,
                    self.s.version_mask,
                    self.s.timing.connect_timeout,
                );
                let result = tokio::select! {
                    r = attempt => r,
                    _ = self.shutdown.cancelled() => return None,
                };
                let tls = &self.s.tls_counters;
                match result {
                    Ok(c) => {
                        if pool.tls.is_some() {
                            tls.pool_handshakes.fetch_add(1, Relaxed);
                        }
                        return Some(Box::new(c));
                    }
                    Err(reason) => {
                        if let UpstreamError::Tls { reason: why, .. } = &reason {
                            tls.pool_failed(*why);
                        }
                        tracing::warn!(pool = %pool.name, %reason, kind = reason.kind().as_str(), "upstream connect failed");
                        self.status.failed(&self.s.pool_errors, &pool.name, &reason);
                        self.penalise(i);
                    }
                }
            }
            let wake = self
                .next_try
                .iter()
                .min()
                .copied()
                .unwrap_or_else(Instant::now);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                Some(c) = self.control_rx.recv() => self.apply(c),
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }

    fn layout(&self, conn: &PoolConn) -> Result<ExtranonceLayout, LayoutError> {
        ExtranonceLayout::new(
            self.s.fold,
            conn.extranonce1.clone(),
            conn.extranonce2_size,
            self.s.prefix_size,
            self.s.min_miner_extranonce2,
            self.s.max_miner_extranonce2,
        )
    }

    /// Serve one pool session until it fails, we hand over to a better pool, or shut down.
    async fn drive(&mut self, mut conn: Box<PoolConn>) -> End {
        let index = conn.index;
        let pool = self.s.pools[index].clone();
        let started = conn.established_at;
        let failed = |reason: UpstreamError| End::Failed {
            index,
            reason,
            lasted: started.elapsed(),
        };
        let mut layout = match self.layout(&conn) {
            Ok(l) => l,
            Err(e) => return failed(e.into()),
        };
        self.generation += 1;
        let mut generation = self.generation;
        let mut jobs: Vec<Arc<LocalJob>> = Vec::new();
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut consecutive_rejects = 0u32;
        let mut last_job = Instant::now();
        {
            let mut d = self.status.detail.lock();
            d.active_pool = Some(pool.name.clone());
            d.active_host = Some(format!("{}:{}", conn.host, conn.port));
            d.latency = Some(conn.latency);
        }
        self.status.connected.store(true, Relaxed);
        tracing::info!(pool = %pool.name, host = %conn.host, port = conn.port, extranonce2_size = conn.extranonce2_size,
            miner_extranonce2_size = layout.miner_extranonce2_size, version_mask = format_args!("{:08x}", conn.version_mask), "upstream connected");
        if let Some(job) = conn.latest_job.take() {
            self.publish_job(&conn, &layout, generation, &mut jobs, &job, true);
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut probe = (index > 0).then(|| Box::pin(self.probe_better(index)));
        let user = self.username(&pool);
        let mut authorized_upstream: std::collections::HashSet<String> =
            std::collections::HashSet::new();
        let mut batch = Vec::with_capacity(4096);
        // The difficulty last asked of this pool, and whether its keeping a lower one was said.
        let mut suggested: Option<(Difficulty, Instant)> = None;
        let mut ignored_said = false;
        loop {
            let job_deadline = last_job + self.s.timing.job_timeout;
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return End::Shutdown,
                Some(c) = self.control_rx.recv() => {
                    self.apply(c);
                    return End::Reconfigured;
                }
                msg = conn.next_message() => {
                    let msg = match msg { Ok(m) => m, Err(e) => return failed(e) };
                    if let Err(e) = conn.answer(&msg).await { return failed(e) }
                    match msg {
                        PoolMessage::Job(job) => {
                            last_job = Instant::now();
                            conn.latest_job = None;
                            self.publish_job(&conn, &layout, generation, &mut jobs, &job, job.clean_jobs);
                        }
                        PoolMessage::Extranonce { .. } => {
                            layout = match self.layout(&conn) { Ok(l) => l, Err(e) => return failed(e.into()) };
                            // New extranonce: jobs from now on belong to a new generation.
                            self.generation += 1;
                            generation = self.generation;
                            jobs.clear();
                            self.work_tx.send_replace(None);
                        }
                        PoolMessage::Reconnect { host, port, wait_secs } => {
                            // Another host or port as the pool says; the rest as configured.
                            let to = (host.is_some() || port.is_some()).then(|| {
                                (host.unwrap_or_else(|| conn.host.clone()), port.unwrap_or(conn.port))
                            });
                            let wait = Duration::from_secs(wait_secs).min(MAX_RECONNECT_WAIT);
                            return End::Reconnect { index, to, wait };
                        }
                        PoolMessage::Response { id, result } => {
                            let Some(p) = pending.remove(&id) else { continue };
                            let ok = matches!(result, Ok(Value::Bool(true)));
                            if ok {
                                consecutive_rejects = 0;
                                self.status.submits_accepted.fetch_add(1, Relaxed);
                            } else {
                                consecutive_rejects += 1;
                                self.status.submits_rejected.fetch_add(1, Relaxed);
                            }
                            let latency = p.sent.elapsed();
                            self.status.detail.lock().latency = Some(latency);
                            if let Some(tx) = p.verdict {
                                let result = match result {
                                    Ok(Value::Bool(true)) => Ok(()),
                                    Ok(other) => Err(StratumError::other(format!("pool answered {other}"))),
                                    Err(e) => Err(e),
                                };
                                let _ = tx.send(Verdict::Answered(result));
                            }
                            if consecutive_rejects >= self.s.timing.max_consecutive_rejects {
                                return failed(UpstreamError::Rejects(consecutive_rejects));
                            }
                        }
                        PoolMessage::ShowMessage(text) => {
                            tracing::info!(pool = %pool.name, message = %text, "pool message, relayed to its miners");
                            let text: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
                            let _ = self.messages.send(Arc::from(text));
                        }
                        PoolMessage::Difficulty(_) | PoolMessage::VersionMask(_) => {
                            if !jobs.is_empty() {
                                self.publish_work(&conn, &layout, generation, &jobs);
                            }
                        }
                        PoolMessage::Ping { .. } | PoolMessage::GetVersion { .. } | PoolMessage::Nothing => {}
                    }
                }
                sub = self.submit_rx.recv() => {
                    let Some(sub) = sub else { return End::Shutdown };
                    batch.clear();
                    let mut next = Some(sub);
                    let mut count = 0;
                    while let Some(sub) = next.take() {
                        // Nothing the pool would judge as another header than the miner's
                        // is sent: a job of an earlier session, or bits outside the mask the
                        // pool set since the share was judged.
                        let bits = if sub.job.generation != generation {
                            Err(StratumError::stale())
                        } else {
                            sub.version.map_or(Ok(None), |v| {
                                version_bits_for_pool(sub.job.job.version, v, conn.version_mask)
                            })
                        };
                        match bits {
                            Err(e) => {
                                self.status.submits_stale.fetch_add(1, Relaxed);
                                tracing::debug!(pool = %pool.name, job = %sub.job.upstream_id, reason = %e.message, "share not sent");
                                if let Some(tx) = sub.verdict {
                                    let _ = tx.send(Verdict::NotSent(e));
                                }
                            }
                            Ok(bits) => {
                                let name = if self.s.forward_worker_names {
                                    let worker = sub.worker.split_once('.').map_or(&*sub.worker, |(_, w)| w);
                                    let name = format!("{user}.{worker}");
                                    if authorized_upstream.insert(name.clone()) {
                                        // Authorize the worker name upstream once; the answer is not awaited.
                                        let id = conn.next_id;
                                        conn.next_id += 1;
                                        batch.extend(loka_stratum::message::method_line(
                                            &id.to_string(), "mining.authorize", &serde_json::json!([name, pool.password])));
                                    }
                                    name
                                } else {
                                    user.clone()
                                };
                                let id = conn.next_id;
                                conn.next_id += 1;
                                write_submit(&mut batch, id, &name, &sub, bits);
                                let span = tracing::debug_span!("upstream_submit", pool = %pool.name, job = %sub.job.upstream_id, id);
                                pending.insert(id, Pending { sent: Instant::now(), verdict: sub.verdict, _span: span });
                                count += 1;
                            }
                        }
                        if count < 256 {
                            next = self.submit_rx.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        if let Err(e) = conn.send(&batch).await { return failed(e) }
                        self.status.submits_sent.fetch_add(count, Relaxed);
                    }
                }
                _ = tokio::time::sleep_until(job_deadline.into()) => {
                    return failed(UpstreamError::NoJob(self.s.timing.job_timeout));
                }
                _ = tick.tick() => {
                    if self.s.fold && let Err(e) = self.suggest_difficulty(&mut conn, &pool, &mut suggested, &mut ignored_said).await {
                        return failed(e);
                    }
                    let timeout = self.s.timing.response_timeout;
                    let before = pending.len();
                    pending.retain(|_, p| {
                        let keep = p.sent.elapsed() < timeout;
                        if !keep && let Some(tx) = p.verdict.take() {
                            let _ = tx.send(Verdict::Unanswered);
                        }
                        keep
                    });
                    let lost = before - pending.len();
                    if lost > 0 {
                        self.status.submits_lost.fetch_add(lost as u64, Relaxed);
                    }
                }
                better = async { probe.as_mut().expect("guarded").await }, if probe.is_some() => {
                    return End::Handover(better);
                }
            }
        }
    }

    /// Aggregate: ask the pool for the highest difficulty miners want above its own. A pool
    /// that keeps its lower difficulty is said once in the log; miners stay capped at it.
    async fn suggest_difficulty(
        &self,
        conn: &mut PoolConn,
        pool: &PoolEndpoint,
        suggested: &mut Option<(Difficulty, Instant)>,
        ignored_said: &mut bool,
    ) -> Result<(), UpstreamError> {
        let Some(want) = self.wants.highest().filter(|w| *w > conn.difficulty) else {
            return Ok(());
        };
        match *suggested {
            Some((asked, at)) if asked == want => {
                if !*ignored_said && at.elapsed() >= SUGGEST_PATIENCE {
                    *ignored_said = true;
                    tracing::warn!(pool = %pool.name, asked = %want, difficulty = %conn.difficulty,
                        "pool kept its difficulty after mining.suggest_difficulty; miners stay capped at it (credited in full, with more shares)");
                }
                Ok(())
            }
            _ => {
                let id = conn.next_id;
                conn.next_id += 1;
                let line = loka_stratum::message::suggest_difficulty_line(id, &want);
                tracing::info!(pool = %pool.name, want = %want, difficulty = %conn.difficulty, "asking the pool for a higher difficulty");
                *suggested = Some((want, Instant::now()));
                self.status.difficulty_suggestions.fetch_add(1, Relaxed);
                conn.send(&line).await
            }
        }
    }

    fn publish_job(
        &self,
        conn: &PoolConn,
        layout: &ExtranonceLayout,
        generation: u64,
        jobs: &mut Vec<Arc<LocalJob>>,
        job: &loka_stratum::Job,
        clean: bool,
    ) {
        // The first job of a session is always clean: miners must drop the previous pool's work.
        let clean = clean || jobs.is_empty();
        let local = Arc::new(LocalJob::new(
            job,
            layout,
            generation,
            conn.difficulty,
            clean,
        ));
        if clean {
            jobs.clear();
        }
        jobs.push(local);
        if jobs.len() > self.s.max_jobs {
            let excess = jobs.len() - self.s.max_jobs;
            jobs.drain(..excess);
        }
        self.status.jobs_received.fetch_add(1, Relaxed);
        self.s.write_hold.open();
        self.status
            .last_job_unix_ms
            .store(crate::clock::unix_ms(), Relaxed);
        self.publish_work(conn, layout, generation, jobs);
    }

    /// Publish the jobs in force with the pool's current difficulty and mask (also when only
    /// those changed, so miners hear a new difficulty or mask at once, not at the next job).
    fn publish_work(
        &self,
        conn: &PoolConn,
        layout: &ExtranonceLayout,
        generation: u64,
        jobs: &[Arc<LocalJob>],
    ) {
        self.work_tx.send_replace(Some(Arc::new(Work {
            generation,
            pool: self.s.pools[conn.index].name.clone(),
            layout: layout.clone(),
            version_mask: conn.version_mask,
            upstream_difficulty: conn.difficulty,
            jobs: jobs.to_vec(),
        })));
    }

    /// While on a backup pool: find a higher-priority pool that accepts us and stays healthy
    /// (keeps the connection and sends jobs) for `failback_after`, and hand it over.
    fn probe_better(
        &self,
        active: usize,
    ) -> impl std::future::Future<Output = Box<PoolConn>> + 'static {
        let pools = self.s.pools[..active].to_vec();
        let timing = self.s.timing.clone();
        let mask = self.s.version_mask;
        let users: Vec<String> = pools.iter().map(|p| self.username(p)).collect();
        async move {
            let mut failures = 0u32;
            loop {
                for (i, pool) in pools.iter().enumerate() {
                    let Ok(mut conn) =
                        PoolConn::establish(i, pool, &users[i], mask, timing.connect_timeout).await
                    else {
                        continue;
                    };
                    let hold = tokio::time::sleep(timing.failback_after);
                    tokio::pin!(hold);
                    let healthy = loop {
                        let m = tokio::select! {
                            _ = &mut hold => break true,
                            m = conn.next_message() => m,
                        };
                        let answered = match m {
                            Ok(m) => conn.answer(&m).await,
                            Err(e) => Err(e),
                        };
                        if answered.is_err() {
                            break false;
                        }
                    };
                    if healthy && conn.latest_job.is_some() {
                        return Box::new(conn);
                    }
                }
                failures = failures.saturating_add(1);
                // Probes may wait as long as a failback takes.
                let probes = Backoff::new(
                    timing.backoff_initial,
                    timing.backoff_max.max(timing.failback_after),
                );
                let wait = probes.delay(failures.saturating_add(1));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn write_submit(buf: &mut Vec<u8>, id: u64, user: &str, s: &Submission, bits: Option<u32>) {
    use std::fmt::Write as _;
    let mut line = String::with_capacity(160);
    let user_json = serde_json::to_string(user).unwrap_or_else(|_| "\"\"".into());
    let job_json = serde_json::to_string(&s.job.upstream_id).unwrap_or_else(|_| "\"\"".into());
    let _ = write!(
        line,
        "{{\"id\":{id},\"method\":\"mining.submit\",\"params\":[{user_json},{job_json},\"{}\",\"{:08x}\",\"{:08x}\"",
        hex::encode(&s.extranonce2),
        s.ntime,
        s.nonce
    );
    if let Some(v) = bits {
        let _ = write!(line, ",\"{v:08x}\"");
    }
    line.push_str("]}\n");
    buf.extend_from_slice(line.as_bytes());
}
