//! One miner connection: a state machine over Stratum requests, fed by a thin socket loop.
//!
//! The loop reads lines, hands each to [`Session::handle_line`], which appends replies and
//! notifications to an output buffer, and writes that buffer once per burst. Work arrives
//! from the upstream task as `watch<Option<Arc<Work>>>`; notify lines are shared bytes,
//! serialised once for all miners.

use crate::events::{ConnectionEvent, DurableAck, Event, ShareEvent};
use crate::lines::{LineReader, ReadError};
use crate::server::Shared;
use crate::stats::WorkerStats;
use crate::upstream::work::{LocalJob, Work};
use crate::upstream::{Submission, UpstreamHandle, Verdict};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use loka_config::Mode;
use loka_store::compact_str::{CompactString, format_compact};
use loka_stratum::ledger::DifficultyLedger;
use loka_stratum::message::{
    Configure, Envelope, Request, Submit, error_line, method_line, result_line, set_difficulty_line,
};
use loka_stratum::share::{ShareKey, ShareRules, hash_share};
use loka_stratum::target::{hash_difficulty, hash_to_display_hex};
use loka_stratum::vardiff::Vardiff;
use loka_stratum::{Difficulty, StratumError};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

pub const SERVER_VERSION: &str = concat!("Loka Stratum/", env!("CARGO_PKG_VERSION"));
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct worker names one connection may authorize (authorize is answered locally in
/// aggregate mode, so this bounds what one client can make the proxy track).
pub const MAX_WORKERS_PER_CONNECTION: usize = 16;
/// How much longer than `upstream.response_timeout` a session waits for a verdict the
/// upstream task should have settled itself (it checks once a second).
const VERDICT_MARGIN: Duration = Duration::from_secs(3);

/// Why a session ended (logged, and recorded as the worker's disconnect reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    PeerClosed,
    Io(String),
    Protocol(String),
    HandshakeTimeout,
    IdleTimeout,
    Reconnect,
    Drain,
    AdminDisconnect,
    NoUpstream,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::PeerClosed => f.write_str("peer closed"),
            Close::Io(e) => write!(f, "io error: {e}"),
            Close::Protocol(e) => write!(f, "protocol error: {e}"),
            Close::HandshakeTimeout => f.write_str("handshake timeout"),
            Close::IdleTimeout => f.write_str("idle timeout"),
            Close::Reconnect => f.write_str("sent client.reconnect"),
            Close::Drain => f.write_str("proxy draining"),
            Close::AdminDisconnect => f.write_str("disconnected by admin"),
            Close::NoUpstream => f.write_str("no upstream pool"),
        }
    }
}

struct Authorized {
    name: Arc<str>,
    stats: Arc<WorkerStats>,
}

/// A submit forwarded in passthrough mode, waiting for the pool's verdict.
struct AwaitingVerdict {
    request_id: String,
    event: Option<ShareEvent>,
    worker: Arc<WorkerStats>,
    difficulty: f64,
}

/// A forwarded share and what became of it. The channel closing unanswered (the upstream
/// connection or task ended first) reads as [`Verdict::Unanswered`], and so does no verdict
/// within `wait` (the upstream task's own response timeout, with a margin): every forwarded
/// share is settled, and in bounded time.
type VerdictFuture = futures::future::BoxFuture<'static, (AwaitingVerdict, Verdict)>;

fn await_verdict(
    a: AwaitingVerdict,
    rx: tokio::sync::oneshot::Receiver<Verdict>,
    wait: Duration,
) -> VerdictFuture {
    Box::pin(async move {
        let v = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) | Err(_) => Verdict::Unanswered,
        };
        (a, v)
    })
}

/// A valid share whose reply waits until the writer says it is durable.
struct Unacked {
    request_id: String,
    stored: tokio::sync::oneshot::Receiver<()>,
    deadline: Instant,
    worker: Arc<WorkerStats>,
    difficulty: f64,
}

pub struct Session {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    upstream: Option<UpstreamHandle>,
    /// The pool's `client.show_message` texts, relayed once subscribed.
    messages: Option<tokio::sync::broadcast::Receiver<Arc<str>>>,
    /// Passthrough: forwarded shares whose verdict is still to come; the socket loop moves
    /// them into the set it waits on.
    awaiting: Vec<VerdictFuture>,
    user_agent: Option<String>,
    subscribed: bool,
    extranonce_subscribed: bool,
    /// Aggregate: this miner's slice of the upstream extranonce2 space.
    prefix: Vec<u8>,
    extranonce1: Vec<u8>,
    extranonce2_size: usize,
    generation: u64,
    /// Negotiated BIP310 mask, which shares are judged with; `requested_mask` is what the
    /// miner asked for; `mask_told` what it was last told (configure reply or
    /// `mining.set_version_mask`), so a pool's narrower or changed mask reaches it.
    version_mask: u32,
    requested_mask: Option<u32>,
    mask_told: Option<u32>,
    workers: Vec<Authorized>,
    vardiff: Option<Vardiff>,
    /// Aggregate without vardiff: the configured difficulty (raised by `minimum-difficulty`).
    fixed: Difficulty,
    /// Aggregate: the pool's difficulty, which caps the miner's.
    pool_difficulty: Option<Difficulty>,
    /// What this miner wants above the pool's difficulty, as registered with the upstream.
    wants: Option<Difficulty>,
    /// The difficulty now, and the one each job sent is judged at.
    ledger: DifficultyLedger,
    difficulty_sent: Option<Difficulty>,
    last_job_seq: u64,
    out: Vec<u8>,
    close: Option<Close>,
    /// When the first work goes out (a moment after the authorize reply).
    first_work_at: Option<Instant>,
    /// When the pool's job behind the notify being written arrived (fan-out delay).
    notify_received_at: Option<Instant>,
    /// `storage.acknowledge = "durable"`: "accepted" only once the share is stored, waiting
    /// at most this long (`storage.write_timeout`).
    durable: Option<Duration>,
    /// Durable mode: replies waiting for their shares to be stored, oldest first. The session
    /// goes on reading meanwhile, so a miner's pipelined submits share one group commit.
    unacked: VecDeque<Unacked>,
}

impl Session {
    pub fn new(id: u64, peer: SocketAddr, shared: Arc<Shared>) -> Self {
        let cfg = shared.config();
        let start = Difficulty::new(cfg.vardiff.initial_difficulty).unwrap_or(Difficulty::ONE);
        // The mode the proxy runs in, not the latest configuration's: a mode change applies
        // only after a restart.
        let vardiff = (cfg.vardiff.enabled && shared.mode == Mode::Aggregate)
            .then(|| Vardiff::new(shared.vardiff_config(), start, Instant::now()));
        let difficulty = vardiff.as_ref().map_or(start, Vardiff::current);
        let upstream = shared.upstream.clone();
        Self {
            id,
            peer,
            shared: shared.clone(),
            messages: upstream.as_ref().map(|u| u.messages.subscribe()),
            upstream,
            awaiting: Vec::new(),
            user_agent: None,
            subscribed: false,
            extranonce_subscribed: false,
            prefix: Vec::new(),
            extranonce1: Vec::new(),
            extranonce2_size: 0,
            generation: 0,
            version_mask: 0,
            requested_mask: None,
            mask_told: None,
            workers: Vec::new(),
            vardiff,
            fixed: start,
            pool_difficulty: None,
            wants: None,
            ledger: DifficultyLedger::new(difficulty),
            difficulty_sent: None,
            last_job_seq: 0,
            out: Vec::with_capacity(256),
            close: None,
            first_work_at: None,
            notify_received_at: None,
            durable: shared.durable_wait(),
            unacked: VecDeque::new(),
        }
    }

    fn ready(&self) -> bool {
        self.subscribed && !self.workers.is_empty()
    }

    /// Serve the connection until it closes.
    pub async fn run<R, W>(mut self, r: R, mut w: W)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let cfg = self.shared.config();
        let mut reader = LineReader::new(r, cfg.server.max_line_bytes);
        let handshake_deadline = Instant::now() + cfg.server.handshake_timeout;
        let idle = cfg.server.idle_timeout;
        let mut last_rx = Instant::now();
        let mut work_rx = self.upstream.as_ref().map(|u| u.work.clone());
        let drain = self.shared.drain.clone();
        let kick = self.shared.kicks.subscribe();
        tokio::pin!(kick);
        let mut vardiff_tick = cfg.vardiff.retarget_interval;
        drop(cfg);
        let mut unacked = VecDeque::new();
        let mut verdicts = FuturesUnordered::new();
        while self.close.is_none() {
            // Submits handled below push to `self.unacked` and `self.awaiting`; the branches
            // wait on the older ones.
            unacked.append(&mut self.unacked);
            verdicts.extend(self.awaiting.drain(..));
            let deadline = if self.ready() {
                last_rx + idle
            } else {
                handshake_deadline
            };
            let tick_at = Instant::now() + vardiff_tick;
            tokio::select! {
                biased;
                _ = drain.cancelled() => {
                    if self.subscribed {
                        self.out.extend(method_line("null", "client.reconnect", &json!([])));
                    }
                    self.close = Some(Close::Drain);
                }
                id = kick.recv() => {
                    if let Ok(id) = id && id == self.id {
                        self.close = Some(Close::AdminDisconnect);
                    }
                }
                line = reader.next_line() => {
                    last_rx = Instant::now();
                    match line {
                        Ok(Some(line)) => {
                            self.handle_line(&line, &mut work_rx).await;
                            // Handle a pipelined burst before writing the replies once.
                            while self.close.is_none() {
                                match reader.next_buffered() {
                                    Ok(Some(line)) => self.handle_line(&line, &mut work_rx).await,
                                    Ok(None) => break,
                                    Err(e) => { self.read_error(e); break }
                                }
                            }
                        }
                        Ok(None) => self.close = Some(Close::PeerClosed),
                        Err(e) => self.read_error(e),
                    }
                }
                changed = async { work_rx.as_mut().expect("guarded").changed().await }, if work_rx.is_some() && self.ready() => {
                    if changed.is_err() {
                        self.close = Some(Close::NoUpstream);
                    } else if let Some(rx) = work_rx.as_mut() {
                        let work = rx.borrow_and_update().clone();
                        self.on_work(work.as_deref());
                    }
                }
                stored = async {
                    let u: &mut Unacked = unacked.front_mut().expect("guarded");
                    // Boxed: the timer lives on the heap only while replies wait, instead of
                    // in every session's future.
                    Box::pin(tokio::time::timeout_at(u.deadline.into(), &mut u.stored)).await
                }, if !unacked.is_empty() => {
                    let u = unacked.pop_front().expect("guarded");
                    self.acknowledged(u, matches!(stored, Ok(Ok(()))));
                    // Those behind it are usually in the same commit.
                    while let Some(u) = unacked.front_mut() {
                        let ok = match u.stored.try_recv() {
                            Ok(()) => true,
                            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
                            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
                        };
                        let u = unacked.pop_front().expect("checked");
                        self.acknowledged(u, ok);
                    }
                }
                text = async { self.messages.as_mut().expect("guarded").recv().await }, if self.messages.is_some() => {
                    match text {
                        Ok(text) if self.subscribed => self.out.extend(method_line(
                            "null",
                            "client.show_message",
                            &json!([&*text]),
                        )),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => self.messages = None,
                    }
                }
                Some((a, v)) = verdicts.next(), if !verdicts.is_empty() => {
                    self.on_verdict(a, v).await;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.close = Some(if self.ready() { Close::IdleTimeout } else { Close::HandshakeTimeout });
                }
                _ = tokio::time::sleep_until(self.first_work_at.unwrap_or_else(Instant::now).into()), if self.first_work_at.is_some() => {
                    self.first_work_at = None;
                    if self.last_job_seq == 0 && let Some(rx) = work_rx.as_mut() {
                        let work = rx.borrow_and_update().clone();
                        self.send_work(work.as_deref(), true);
                    }
                }
                _ = tokio::time::sleep_until(tick_at.into()), if self.vardiff.is_some() && self.ready() => {
                    if let Some(d) = self.vardiff.as_mut().and_then(|v| v.on_tick(Instant::now())) {
                        self.change_difficulty(d);
                    }
                    self.update_wants();
                    vardiff_tick = self.shared.config().vardiff.retarget_interval;
                }
            }
            if !self.out.is_empty() {
                match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&self.out)).await {
                    Ok(Ok(())) => {
                        if let Some(t) = self.notify_received_at.take() {
                            self.shared
                                .stats
                                .notify_delay
                                .observe(t.elapsed().as_secs_f64());
                        }
                    }
                    Ok(Err(e)) => self.close = Some(Close::Io(e.to_string())),
                    Err(_) => self.close = Some(Close::Io("write timed out".into())),
                }
                self.out.clear();
                if self.out.capacity() > 16 * 1024 {
                    self.out = Vec::with_capacity(256);
                }
            }
        }
        verdicts.extend(self.awaiting.drain(..));
        self.settle_verdicts(verdicts).await;
        unacked.append(&mut self.unacked);
        self.settle_unacked(unacked).await;
        // If the miner can still hear them (a drain, an idle or admin close), the replies
        // settled on the way out go to it.
        let open = !matches!(self.close, Some(Close::PeerClosed | Close::Io(_)));
        if open && !self.out.is_empty() {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&self.out)).await;
        }
        self.out.clear();
        let _ = w.shutdown().await;
        self.finish();
    }

    /// Closing with passthrough shares still at the pool: each still gets its one record
    /// (and, if the miner can hear it, its reply): the pool's verdict if it comes within the
    /// response timeout, `Unanswered` otherwise.
    async fn settle_verdicts(&mut self, mut verdicts: FuturesUnordered<VerdictFuture>) {
        while let Some((a, v)) = verdicts.next().await {
            self.on_verdict(a, v).await;
        }
    }

    /// Closing with replies still waiting on storage: each is answered once stored or at its
    /// deadline (and the answer written if the miner can still hear it).
    async fn settle_unacked(&mut self, unacked: VecDeque<Unacked>) {
        for mut u in unacked {
            let ok = matches!(
                tokio::time::timeout_at(u.deadline.into(), &mut u.stored).await,
                Ok(Ok(()))
            );
            self.acknowledged(u, ok);
        }
    }

    fn read_error(&mut self, e: ReadError) {
        let reason = match e {
            ReadError::Io(e) => {
                self.close = Some(Close::Io(e.to_string()));
                return;
            }
            ReadError::Line(e) => e.to_string(),
        };
        self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
        tracing::info!(conn = self.id, peer = %self.peer, %reason, "closing connection");
        self.close = Some(Close::Protocol(reason));
    }

    fn finish(&mut self) {
        let reason = self.close.take().unwrap_or(Close::PeerClosed);
        tracing::debug!(conn = self.id, peer = %self.peer, %reason, "miner disconnected");
        if !self.prefix.is_empty() {
            self.shared.allocator.lock().release(&self.prefix);
        }
        if let Some(u) = &self.upstream {
            u.wants.replace(self.wants.take(), None);
        }
        for w in &self.workers {
            // The idle clock starts now.
            w.stats.touch();
            w.stats.connections.fetch_sub(1, Relaxed);
        }
        let at = SystemTime::now();
        let workers: Vec<Option<Arc<str>>> = if self.workers.is_empty() {
            vec![None]
        } else {
            self.workers.iter().map(|w| Some(w.name.clone())).collect()
        };
        for worker in workers {
            self.shared
                .emit(Event::Connection(ConnectionEvent::Disconnected {
                    at,
                    connection_id: self.id,
                    worker,
                    reason: reason.to_string(),
                }));
        }
    }

    /// Handle one line from the miner.
    pub async fn handle_line(
        &mut self,
        line: &[u8],
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) {
        let stats = &self.shared.stats;
        stats.messages_received.fetch_add(1, Relaxed);
        stats
            .bytes_received
            .fetch_add(line.len() as u64 + 1, Relaxed);
        let env = match Envelope::parse(line) {
            Ok(env) => env,
            Err(e) => {
                self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
                tracing::info!(conn = self.id, peer = %self.peer, error = %e, "non-JSON input; closing connection");
                self.close = Some(Close::Protocol(e.to_string()));
                return;
            }
        };
        let id = env.id.to_string();
        let Some(method) = env.method.as_deref() else {
            // A response to something we asked (e.g. client.get_version): nothing to do.
            return;
        };
        let request = match Request::decode(method, env.params) {
            Ok(r) => r,
            Err(e) => {
                self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
                let result = if method == "mining.submit" {
                    "false"
                } else {
                    "null"
                };
                if method == "mining.submit" {
                    self.shared.stats.shares_submitted.fetch_add(1, Relaxed);
                    self.shared
                        .stats
                        .rejected(loka_stratum::error::ErrorCode::Other);
                }
                self.out
                    .extend(error_line(&id, result, &StratumError::other(e.to_string())));
                return;
            }
        };
        match request {
            Request::Submit(s) => {
                let started = Instant::now();
                let span = tracing::debug_span!("submit", worker = %s.worker, job = %s.job_id);
                self.on_submit(&id, s).instrument(span).await;
                let elapsed = started.elapsed().as_secs_f64();
                self.shared.stats.submit_latency.observe(elapsed);
            }
            Request::Subscribe {
                user_agent,
                session_id,
            } => {
                self.on_subscribe(&id, user_agent, session_id, work_rx)
                    .await
            }
            Request::Authorize { username, .. } => self.on_authorize(&id, username, work_rx),
            Request::Configure(c) => self.on_configure(&id, c, work_rx).await,
            Request::SuggestDifficulty(d) => {
                self.out.extend(result_line(&id, "true"));
                if let Some(v) = self.vardiff.as_mut() {
                    let d = v.set(d, Instant::now());
                    self.change_difficulty(d);
                    self.update_wants();
                }
            }
            Request::SuggestTarget => self.out.extend(result_line(&id, "true")),
            Request::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                self.out.extend(result_line(&id, "true"));
            }
            Request::GetVersion => self
                .out
                .extend(result_line(&id, &format!("\"{SERVER_VERSION}\""))),
            Request::Ping => self.out.extend(result_line(&id, "\"pong\"")),
            Request::GetTransactions => self.out.extend(error_line(
                &id,
                "null",
                &StratumError::other("mining.get_transactions is not supported"),
            )),
            Request::Unknown(m) => self.out.extend(error_line(
                &id,
                "null",
                &StratumError::other(format!("Method not found: {m}")),
            )),
        }
    }

    async fn on_subscribe(
        &mut self,
        id: &str,
        user_agent: Option<String>,
        session_id: Option<String>,
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) {
        if self.subscribed {
            self.out.extend(error_line(
                id,
                "null",
                &StratumError::other("Already subscribed"),
            ));
            return;
        }
        self.user_agent = user_agent.map(|u| u.chars().take(255).collect());
        self.ensure_upstream(work_rx);
        let Some(work) = self.wait_for_work(work_rx).await else {
            self.out.extend(error_line(
                id,
                "null",
                &StratumError::other("No upstream pool available"),
            ));
            self.shared.stats.protocol_errors.fetch_add(1, Relaxed);
            return;
        };
        if let Some(rx) = work_rx.as_mut() {
            rx.mark_unchanged();
        }
        if work.layout.fold {
            let prefix = self.shared.allocator.lock().allocate(session_id.as_deref());
            match prefix {
                Ok(p) => self.prefix = p,
                Err(e) => {
                    tracing::warn!(conn = self.id, error = %e, "cannot place miner");
                    self.out.extend(error_line(
                        id,
                        "null",
                        &StratumError::other("Proxy is full"),
                    ));
                    self.close = Some(Close::Protocol(e.to_string()));
                    return;
                }
            }
        }
        self.follow_pool_difficulty(work.upstream_difficulty);
        self.extranonce1 = work.layout.miner_extranonce1(&self.prefix);
        self.extranonce2_size = work.layout.miner_extranonce2_size;
        self.generation = work.generation;
        self.negotiate_mask(work.version_mask);
        let sid = if self.prefix.is_empty() {
            format!("{:08x}", self.id)
        } else {
            hex::encode(&self.prefix)
        };
        let result = json!([
            [["mining.set_difficulty", sid], ["mining.notify", sid]],
            hex::encode(&self.extranonce1),
            self.extranonce2_size
        ]);
        self.out.extend(result_line(id, &result.to_string()));
        // After the reply: the pool's mask may differ from the one a configure before the
        // pool was known had to promise.
        self.tell_mask();
        self.subscribed = true;
        if self.ready() {
            self.schedule_first_work(work_rx);
        }
    }

    fn on_authorize(
        &mut self,
        id: &str,
        username: String,
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) {
        if self.workers.iter().any(|w| *w.name == *username) {
            self.out.extend(result_line(id, "true"));
            return;
        }
        if self.workers.len() >= MAX_WORKERS_PER_CONNECTION {
            self.shared.stats.workers_refused.fetch_add(1, Relaxed);
            self.out.extend(error_line(
                id,
                "false",
                &StratumError::other("Too many workers on one connection"),
            ));
            return;
        }
        let stats = self.shared.stats.worker_connected(&username);
        stats.touch();
        stats.set_difficulty(self.ledger.current().to_f64());
        let name: Arc<str> = Arc::from(username.as_str());
        let pool = work_rx
            .as_ref()
            .and_then(|rx| rx.borrow().as_ref().map(|w| w.pool.clone()))
            .unwrap_or_else(|| Arc::from(""));
        self.shared
            .emit(Event::Connection(ConnectionEvent::Authorized {
                at: SystemTime::now(),
                connection_id: self.id,
                worker: name.clone(),
                pool,
                user_agent: self.user_agent.clone(),
                remote: self.peer,
            }));
        if let Some(c) = self.shared.connections.lock().get_mut(&self.id) {
            c.workers.push(username.clone());
            c.user_agent = self.user_agent.clone();
        }
        let first = self.workers.is_empty();
        self.workers.push(Authorized { name, stats });
        self.out.extend(result_line(id, "true"));
        if first && self.subscribed {
            self.schedule_first_work(work_rx);
        }
    }

    /// Send the first work now, or after `server.first_work_delay`.
    fn schedule_first_work(
        &mut self,
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) {
        let delay = self.shared.config().server.first_work_delay;
        if delay.is_zero() {
            let work = work_rx
                .as_mut()
                .and_then(|rx| rx.borrow_and_update().clone());
            self.send_work(work.as_deref(), true);
        } else {
            self.first_work_at = Some(Instant::now() + delay);
        }
    }

    /// Passthrough: start this miner's own upstream session (once).
    fn ensure_upstream(
        &mut self,
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) {
        if self.upstream.is_some() {
            return;
        }
        let handle = crate::upstream::spawn(
            self.shared.upstream_settings(),
            self.shared.shutdown.child_token(),
        );
        *work_rx = Some(handle.work.clone());
        self.messages = Some(handle.messages.subscribe());
        self.upstream = Some(handle);
    }

    /// The upstream's work, waiting for it (within the handshake time) while the proxy is
    /// still finding a pool, rather than refusing the miner.
    async fn wait_for_work(
        &mut self,
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) -> Option<Arc<Work>> {
        let wait = self.shared.config().server.handshake_timeout;
        let rx = work_rx.as_mut()?;
        match tokio::time::timeout(wait, rx.wait_for(|w| w.is_some())).await {
            Ok(Ok(w)) => w.clone(),
            _ => None,
        }
    }

    fn negotiate_mask(&mut self, upstream_mask: u32) {
        if let Some(requested) = self.requested_mask {
            let offered = self.shared.version_mask & upstream_mask;
            self.version_mask = requested & offered;
        }
    }

    /// A miner that negotiated version rolling hears `mining.set_version_mask` whenever the
    /// mask it may roll differs from the one it was last told.
    fn tell_mask(&mut self) {
        if self.requested_mask.is_none() || self.mask_told == Some(self.version_mask) {
            return;
        }
        self.out.extend(method_line(
            "null",
            "mining.set_version_mask",
            &json!([format!("{:08x}", self.version_mask)]),
        ));
        self.mask_told = Some(self.version_mask);
    }

    async fn on_configure(
        &mut self,
        id: &str,
        c: Configure,
        work_rx: &mut Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
    ) {
        let mut result = serde_json::Map::new();
        for ext in &c.extensions {
            match ext.as_str() {
                "version-rolling" => {
                    self.requested_mask = Some(c.version_rolling_mask.unwrap_or(u32::MAX));
                    // Answer with what the pool granted: in passthrough this miner's own
                    // upstream session starts now. Only when no pool answers in time is the
                    // proxy's own mask offered, corrected by `mining.set_version_mask` later.
                    self.ensure_upstream(work_rx);
                    let upstream_mask = match self.wait_for_work(work_rx).await {
                        Some(w) => w.version_mask,
                        None => self.shared.version_mask,
                    };
                    self.negotiate_mask(upstream_mask);
                    self.mask_told = Some(self.version_mask);
                    result.insert(
                        "version-rolling".into(),
                        Value::Bool(self.version_mask != 0),
                    );
                    result.insert(
                        "version-rolling.mask".into(),
                        Value::String(format!("{:08x}", self.version_mask)),
                    );
                }
                "minimum-difficulty" => {
                    // Passthrough miners get the pool's difficulty; the proxy cannot promise.
                    let ok = match (c.minimum_difficulty, self.shared.mode) {
                        (Some(min), Mode::Aggregate) => {
                            // The pool's difficulty caps every miner, so a minimum above it
                            // cannot be promised (the miner is told so, and still capped).
                            let pool = match self.pool_difficulty {
                                Some(p) => Some(p),
                                None => self
                                    .wait_for_work(work_rx)
                                    .await
                                    .map(|w| w.upstream_difficulty),
                            };
                            let d = match self.vardiff.as_mut() {
                                Some(v) => {
                                    v.set_min(min);
                                    v.current()
                                }
                                None => {
                                    self.fixed = self.fixed.max(min);
                                    self.capped(self.fixed)
                                }
                            };
                            self.change_difficulty(d);
                            self.update_wants();
                            pool.is_none_or(|p| min <= p)
                        }
                        _ => false,
                    };
                    result.insert("minimum-difficulty".into(), Value::Bool(ok));
                }
                "subscribe-extranonce" => {
                    self.extranonce_subscribed = true;
                    result.insert("subscribe-extranonce".into(), Value::Bool(true));
                }
                other => {
                    result.insert(other.to_string(), Value::Bool(false));
                }
            }
        }
        self.out
            .extend(result_line(id, &Value::Object(result).to_string()));
    }

    /// New work from upstream.
    fn on_work(&mut self, work: Option<&Work>) {
        let Some(work) = work else { return };
        if work.generation != self.generation {
            let en1 = work.layout.miner_extranonce1(&self.prefix);
            let size = work.layout.miner_extranonce2_size;
            if en1 != self.extranonce1 || size != self.extranonce2_size {
                if self.extranonce_subscribed {
                    self.out.extend(method_line(
                        "null",
                        "mining.set_extranonce",
                        &json!([hex::encode(&en1), size]),
                    ));
                    self.extranonce1 = en1;
                    self.extranonce2_size = size;
                } else {
                    // The miner cannot take a new extranonce on this connection.
                    self.out
                        .extend(method_line("null", "client.reconnect", &json!([])));
                    self.close = Some(Close::Reconnect);
                    return;
                }
            }
            self.generation = work.generation;
        }
        // The pool may change its mask within a session (`mining.set_version_mask`) or
        // grant another one after a failover.
        self.negotiate_mask(work.version_mask);
        self.tell_mask();
        self.follow_pool_difficulty(work.upstream_difficulty);
        self.send_work(Some(work), false);
    }

    /// Send the current job (and the difficulty first, if it changed).
    fn send_work(&mut self, work: Option<&Work>, first: bool) {
        let Some(work) = work else { return };
        let Some(job) = work.current() else { return };
        if job.seq <= self.last_job_seq && !first {
            return;
        }
        if let Some(oldest) = work.jobs.first() {
            self.ledger.forget_before(oldest.seq);
        }
        let difficulty = self.ledger.current();
        if self.difficulty_sent != Some(difficulty) {
            self.out.extend(set_difficulty_line(&difficulty));
            self.difficulty_sent = Some(difficulty);
            for w in &self.workers {
                w.stats.set_difficulty(difficulty.to_f64());
            }
        }
        // If the last job this miner had is gone, it must drop everything it holds.
        let still_valid =
            self.last_job_seq != 0 && work.jobs.iter().any(|j| j.seq == self.last_job_seq);
        let line = if first || !still_valid {
            &job.notify_clean
        } else {
            &job.notify
        };
        self.out.extend_from_slice(line);
        self.last_job_seq = job.seq;
        self.shared.stats.jobs_distributed.fetch_add(1, Relaxed);
        if !first {
            self.notify_received_at = Some(job.received_at);
        }
    }

    /// The difficulty moved (vardiff, the pool's ceiling, the miner's wish): tell the miner
    /// now; many apply it only from the next job. Jobs already sent stay judged at the
    /// easiest difficulty in force since they were sent (the ledger).
    fn change_difficulty(&mut self, d: Difficulty) {
        if d == self.ledger.current() {
            return;
        }
        self.ledger.set(d, self.last_job_seq);
        if self.ready() {
            self.out.extend(set_difficulty_line(&d));
            self.difficulty_sent = Some(d);
        }
        for w in &self.workers {
            w.stats.set_difficulty(d.to_f64());
        }
    }

    /// `d` under the pool's ceiling.
    fn capped(&self, d: Difficulty) -> Difficulty {
        self.pool_difficulty.map_or(d, |p| d.min(p))
    }

    /// The pool's difficulty changed (a `set_difficulty`, a failover), told at once.
    /// Passthrough relays it. Aggregate: the pool credits each forwarded share at its own
    /// difficulty, so no miner is set above it: follows it down at once and back up (to what
    /// the miner wants).
    fn follow_pool_difficulty(&mut self, pool: Difficulty) {
        if self.pool_difficulty == Some(pool) {
            return;
        }
        self.pool_difficulty = Some(pool);
        let d = match (self.shared.mode, self.vardiff.as_mut()) {
            (Mode::Passthrough, _) => pool,
            (Mode::Aggregate, Some(v)) => {
                v.set_ceiling(Some(pool), Instant::now());
                v.current()
            }
            (Mode::Aggregate, None) => self.capped(self.fixed),
        };
        self.change_difficulty(d);
        self.update_wants();
    }

    /// Aggregate: tell the upstream what this miner wants above the pool's difficulty (it
    /// asks the pool for the highest such want).
    fn update_wants(&mut self) {
        if self.shared.mode != Mode::Aggregate {
            return;
        }
        let desired = self.vardiff.as_ref().map_or(self.fixed, Vardiff::desired);
        let wants = self
            .pool_difficulty
            .filter(|p| desired > *p)
            .map(|_| desired);
        if wants != self.wants
            && let Some(u) = &self.upstream
        {
            u.wants.replace(self.wants, wants);
            self.wants = wants;
        }
    }

    /// The difficulty a share for this job is judged at: the easiest in force since the job
    /// was sent (miners apply a new difficulty at once or from the next job).
    fn difficulty_for(&self, job: &LocalJob) -> Difficulty {
        self.ledger.for_job(job.seq)
    }

    async fn on_submit(&mut self, id: &str, submit: Submit) {
        let stats = self.shared.stats.clone();
        stats.shares_submitted.fetch_add(1, Relaxed);
        if !self.subscribed {
            stats.rejected(loka_stratum::error::ErrorCode::NotSubscribed);
            self.out
                .extend(error_line(id, "false", &StratumError::not_subscribed()));
            return;
        }
        let Some(worker) = self.workers.iter().find(|w| *w.name == *submit.worker) else {
            stats.rejected(loka_stratum::error::ErrorCode::Unauthorized);
            self.out
                .extend(error_line(id, "false", &StratumError::unauthorized()));
            return;
        };
        let worker_name = worker.name.clone();
        let worker_stats = worker.stats.clone();
        worker_stats.submitted.fetch_add(1, Relaxed);
        worker_stats.touch();
        let work = self.upstream.as_ref().and_then(|u| u.work.borrow().clone());
        let job = work.as_ref().and_then(|w| w.find(&submit.job_id).cloned());
        let pool: Arc<str> = work
            .as_ref()
            .map_or_else(|| Arc::from(""), |w| w.pool.clone());
        let Some(job) = job else {
            let err = if work.is_some() {
                StratumError::job_not_found()
            } else {
                StratumError::stale()
            };
            self.reject(id, &err, &worker_stats, &worker_name, &pool, &submit, None)
                .await;
            return;
        };
        let rules = ShareRules {
            version_mask: self.version_mask,
            ntime_window: self.shared.config().mining.ntime_window_secs,
            extranonce2_size: self.extranonce2_size,
        };
        let share = match hash_share(&job.job, &self.extranonce1, &submit, &rules) {
            Ok(s) => s,
            Err(e) => {
                self.reject(
                    id,
                    &e,
                    &worker_stats,
                    &worker_name,
                    &pool,
                    &submit,
                    Some(&job),
                )
                .await;
                return;
            }
        };
        let difficulty = self.difficulty_for(&job);
        if !share.meets(&difficulty.target()) {
            self.reject(
                id,
                &StratumError::low_difficulty(),
                &worker_stats,
                &worker_name,
                &pool,
                &submit,
                Some(&job),
            )
            .await;
            return;
        }
        let Some(key) = ShareKey::new(&self.extranonce1, &submit, share.version) else {
            self.reject(
                id,
                &StratumError::other("extranonce too long"),
                &worker_stats,
                &worker_name,
                &pool,
                &submit,
                Some(&job),
            )
            .await;
            return;
        };
        if !job.first_sighting(key) {
            self.reject(
                id,
                &StratumError::duplicate(),
                &worker_stats,
                &worker_name,
                &pool,
                &submit,
                Some(&job),
            )
            .await;
            return;
        }
        let block = share.meets(&job.network_target);
        let forward = block || share.meets(&job.upstream_target);
        let mut event = self.shared.events_enabled().then(|| ShareEvent {
            // The header's version, whatever bits the miner rolled.
            version: submit
                .version_bits
                .map(|_| format_compact!("{:08x}", share.version)),
            hash_difficulty: hash_difficulty(&share.hash),
            block_candidate: block,
            block_hash: block.then(|| hash_to_display_hex(&share.hash)),
            forwarded: forward,
            ..self.share_event(&worker_name, &pool, &submit, difficulty, None)
        });
        if block {
            stats.block_candidates.fetch_add(1, Relaxed);
            tracing::warn!(conn = self.id, worker = %worker_name, pool = %pool, hash = %hash_to_display_hex(&share.hash), "BLOCK CANDIDATE found");
        }
        // Passthrough relays the pool's verdict on the shares it forwards.
        let passthrough_wait = forward && self.shared.mode == Mode::Passthrough;
        let mut verdict_rx = None;
        if forward && let Some(upstream) = &self.upstream {
            let layout_en2 = match &work {
                Some(w) => w
                    .layout
                    .upstream_extranonce2(&self.prefix, &submit.extranonce2),
                None => submit.extranonce2.clone(),
            };
            let upstream_mask = work.as_ref().map_or(0, |w| w.version_mask);
            let sub = Submission {
                job: job.clone(),
                extranonce2: layout_en2,
                ntime: submit.ntime,
                nonce: submit.nonce,
                // A pool that granted no version rolling gets no sixth parameter.
                version_bits: submit
                    .version_bits
                    .filter(|_| upstream_mask != 0)
                    .map(|_| share.version & upstream_mask),
                worker: worker_name.clone(),
                verdict: passthrough_wait.then(|| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    verdict_rx = Some(rx);
                    tx
                }),
            };
            // Backpressure from the pool connection reaches the miner here, never a drop. A
            // send that fails (the upstream task is gone) drops the submission, and with it
            // the verdict's sender: the share is settled as unanswered.
            if upstream.submit.send(sub).await.is_ok() {
                stats.shares_forwarded.fetch_add(1, Relaxed);
            }
        }
        if let Some(rx) = verdict_rx {
            let wait = self.shared.config().upstream.response_timeout + VERDICT_MARGIN;
            let a = AwaitingVerdict {
                request_id: id.to_string(),
                event: event.take(),
                worker: worker_stats,
                difficulty: difficulty.to_f64(),
            };
            self.awaiting.push(await_verdict(a, rx, wait));
            return;
        }
        self.accept(id, event, worker_stats, difficulty.to_f64())
            .await;
        if let Some(v) = self.vardiff.as_mut() {
            if let Some(d) = v.on_share(Instant::now()) {
                self.change_difficulty(d);
            }
            self.update_wants();
        }
    }

    /// A share that is good (valid, and in passthrough accepted by the pool): "accepted" now,
    /// or in durable mode once the writer says its record is stored ([`Self::acknowledged`]).
    async fn accept(
        &mut self,
        request_id: &str,
        event: Option<ShareEvent>,
        worker: Arc<WorkerStats>,
        difficulty: f64,
    ) {
        match event {
            Some(mut event) if let Some(wait) = self.durable => {
                let (ack, stored) = DurableAck::new();
                event.durable = Some(ack);
                self.shared.emit_share(Event::Share(event)).await;
                self.unacked.push_back(Unacked {
                    request_id: request_id.to_string(),
                    stored,
                    deadline: Instant::now() + wait,
                    worker,
                    difficulty,
                });
            }
            event => {
                self.credit(request_id, &worker, difficulty);
                if let Some(event) = event {
                    self.shared.emit_share(Event::Share(event)).await;
                }
            }
        }
    }

    /// Count an accepted share and answer "accepted".
    fn credit(&mut self, request_id: &str, worker: &WorkerStats, difficulty: f64) {
        let stats = &self.shared.stats;
        stats.shares_accepted.fetch_add(1, Relaxed);
        stats.share_difficulty.observe(difficulty);
        worker.add_accepted(difficulty);
        self.out.extend(result_line(request_id, "true"));
    }

    /// Durable mode: the writer has answered for a valid share (or its deadline passed).
    /// Stored: "accepted". Not stored: the miner hears so (code 20) rather than a promise the
    /// records cannot keep.
    fn acknowledged(&mut self, u: Unacked, stored: bool) {
        if stored {
            self.credit(&u.request_id, &u.worker, u.difficulty);
            return;
        }
        let stats = &self.shared.stats;
        tracing::error!(
            conn = self.id,
            "valid share could not be stored; answered with an error"
        );
        stats.shares_unstored.fetch_add(1, Relaxed);
        stats.rejected(loka_stratum::error::ErrorCode::Other);
        u.worker.rejected.fetch_add(1, Relaxed);
        self.out.extend(error_line(
            &u.request_id,
            "false",
            &StratumError::other("share could not be stored"),
        ));
    }

    /// Passthrough: the pool's verdict on a forwarded share becomes the miner's one reply
    /// and the share's one record. A pool's rejection is relayed as the pool gave it
    /// (recorded as `upstream_rejected`); a share whose job belonged to an earlier pool
    /// session is stale (21, `job_not_found`); a share the pool never answered gets 20
    /// "pool did not answer the share" (`upstream_unanswered`): the proxy cannot promise
    /// credit the pool may not have given.
    async fn on_verdict(&mut self, a: AwaitingVerdict, v: Verdict) {
        let (err, reason) = match v {
            Verdict::Answered(Ok(())) => {
                return self
                    .accept(&a.request_id, a.event, a.worker, a.difficulty)
                    .await;
            }
            Verdict::Answered(Err(e)) => (e, "upstream_rejected"),
            Verdict::NotSent => {
                let e = StratumError::stale();
                let reason = e.code.reason();
                (e, reason)
            }
            Verdict::Unanswered => (
                StratumError::other("pool did not answer the share"),
                "upstream_unanswered",
            ),
        };
        self.shared.stats.rejected(err.code);
        a.worker.rejected.fetch_add(1, Relaxed);
        if let Some(mut ev) = a.event {
            ev.accepted = false;
            ev.reject_reason = Some(reason);
            self.shared.emit_share(Event::Share(ev)).await;
        }
        self.out.extend(error_line(&a.request_id, "false", &err));
    }

    /// The event for a judged share as submitted; an acceptance adds what the hash showed.
    fn share_event(
        &self,
        worker: &Arc<str>,
        pool: &Arc<str>,
        submit: &Submit,
        difficulty: Difficulty,
        reject: Option<&'static str>,
    ) -> ShareEvent {
        ShareEvent {
            at: SystemTime::now(),
            connection_id: self.id,
            worker: worker.clone(),
            pool: pool.clone(),
            job_id: submit.job_id.as_str().into(),
            extranonce1: hex_compact(&self.extranonce1),
            extranonce2: hex_compact(&submit.extranonce2),
            ntime: format_compact!("{:08x}", submit.ntime),
            nonce: format_compact!("{:08x}", submit.nonce),
            version: submit.version_bits.map(|v| format_compact!("{v:08x}")),
            accepted: reject.is_none(),
            reject_reason: reject,
            difficulty: difficulty.as_decimal(),
            hash_difficulty: 0.0,
            block_candidate: false,
            block_hash: None,
            forwarded: false,
            durable: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn reject(
        &mut self,
        id: &str,
        err: &StratumError,
        worker: &WorkerStats,
        worker_name: &Arc<str>,
        pool: &Arc<str>,
        submit: &Submit,
        job: Option<&LocalJob>,
    ) {
        self.shared.stats.rejected(err.code);
        worker.rejected.fetch_add(1, Relaxed);
        self.out.extend(error_line(id, "false", err));
        if self.shared.events_enabled() {
            let difficulty = job.map_or(self.ledger.current(), |j| self.difficulty_for(j));
            let event = self.share_event(
                worker_name,
                pool,
                submit,
                difficulty,
                Some(err.code.reason()),
            );
            self.shared.emit_share(Event::Share(event)).await;
        }
    }
}

/// Lower-case hex of `bytes` as an inline string: no heap allocation up to 12 bytes (every
/// extranonce a pool or the proxy hands out in practice).
fn hex_compact(bytes: &[u8]) -> CompactString {
    let mut buf = [0u8; 24];
    if let Some(out) = buf.get_mut(..bytes.len() * 2)
        && hex::encode_to_slice(bytes, out).is_ok()
        && let Ok(hex) = std::str::from_utf8(out)
    {
        return hex.into();
    }
    hex::encode(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::hex_compact;

    #[test]
    fn hex_compact_is_inline_up_to_twelve_bytes_and_right_past_them() {
        let twelve: Vec<u8> = (0xf0..0xfc).collect();
        let h = hex_compact(&twelve);
        assert_eq!(h, "f0f1f2f3f4f5f6f7f8f9fafb");
        assert!(!h.is_heap_allocated());
        let sixteen: Vec<u8> = (0..16).collect();
        let h = hex_compact(&sixteen);
        assert_eq!(h, hex::encode(&sixteen));
        assert_eq!(hex_compact(&[]), "");
        assert_eq!(hex_compact(&[0x0a]), "0a");
    }
}
