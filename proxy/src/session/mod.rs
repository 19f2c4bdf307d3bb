//! One miner connection: a state machine over Stratum requests, fed by a thin socket loop.
//!
//! The loop ([`Session::run`], here) reads lines and hands each to the dispatcher
//! ([`dispatch`]), which appends replies and notifications to an output buffer; the loop
//! writes that buffer once per burst. Work arrives from the upstream task as
//! `watch<Option<Arc<Work>>>` ([`work`]: jobs, difficulty, version mask); notify lines are
//! shared bytes, serialised once for all miners. A plain-TCP miner of the aggregate upstream
//! mostly gets them from [`crate::fanout`] without its session waking; the session is woken
//! for the rest and takes in what the fan-out wrote at the start of each turn. A submit is
//! judged in [`submit`]; its one reply and one record are settled in [`replies`] (at once,
//! after the pool's verdict in passthrough, or once stored under durable acknowledgement).

mod dispatch;
mod replies;
mod submit;
mod work;

use replies::{Unacked, VerdictFuture};

use crate::context::Shared;
use crate::events::{ConnectionEvent, Event};
use crate::fanout::{Caught, Lane, LaneHandle, Synced};
use crate::lines::{LineReader, ReadError};
use crate::stats::WorkerStats;
use crate::upstream::UpstreamHandle;
use crate::upstream::work::Work;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use loka_config::Mode;
use loka_stratum::Difficulty;
use loka_stratum::ledger::DifficultyLedger;
use loka_stratum::message::method_line;
use loka_stratum::vardiff::Vardiff;
use serde_json::json;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;

pub const SERVER_VERSION: &str = concat!("Loka Stratum/", env!("CARGO_PKG_VERSION"));
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct worker names one connection may authorize (authorize is answered locally in
/// aggregate mode, so this bounds what one client can make the proxy track).
pub const MAX_WORKERS_PER_CONNECTION: usize = 16;

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

/// What ended a session's wait: its turn handles it.
enum Wake {
    Stop,
    Line(Result<Option<bytes::Bytes>, ReadError>),
    /// New work (`false`: the upstream is gone).
    Work(bool),
    /// The oldest reply waiting for its share to be stored: stored, or not in time.
    Stored(bool),
    Message(Result<Arc<str>, tokio::sync::broadcast::error::RecvError>),
    Verdict(Box<replies::Settled>),
    Timer,
}

/// Where a session's bytes go: its socket's write side shared with the fan-out (a plain-TCP
/// miner of the aggregate upstream), or a stream of its own (TLS, WebSocket, passthrough).
pub enum Output<W> {
    Lane(LaneHandle),
    Stream(W),
}

impl<W: tokio::io::AsyncWrite + Unpin> Output<W> {
    fn lane(&self) -> Option<&Lane> {
        match self {
            Output::Lane(h) => Some(h.lane()),
            Output::Stream(_) => None,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Lane(h) => h.lane().write_all(buf).await,
            Output::Stream(w) => w.write_all(buf).await,
        }
    }

    /// Close the write side. A lane's closes when the fan-out lets go of it too (dropped).
    async fn shutdown(self) {
        if let Output::Stream(mut w) = self {
            let _ = w.shutdown().await;
        }
    }
}

struct Authorized {
    name: Arc<str>,
    stats: Arc<WorkerStats>,
}

pub struct Session {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    upstream: Option<UpstreamHandle>,
    /// The upstream's work (the shared one in aggregate; this miner's own upstream's in
    /// passthrough, from subscribe or configure on).
    work_rx: Option<tokio::sync::watch::Receiver<Option<Arc<Work>>>>,
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
    /// The upstream's mask this session last followed (at subscribe, then with each work).
    work_mask: Option<u32>,
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
            work_rx: upstream.as_ref().map(|u| u.work.clone()),
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
            work_mask: None,
            workers: Vec::new(),
            vardiff,
            fixed: start,
            pool_difficulty: None,
            wants: None,
            ledger: DifficultyLedger::new(difficulty),
            difficulty_sent: None,
            last_job_seq: 0,
            out: Vec::new(),
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

    /// What the fan-out wrote to this miner while the session waited: the newest job, and
    /// the rest of a line the socket did not take whole (written first).
    fn catch_up(&mut self, caught: Caught) {
        if let Some(rest) = caught.leftover {
            self.out.splice(0..0, rest.iter().copied());
        }
        if let Some(seq) = caught.delivered
            && seq > self.last_job_seq
        {
            self.last_job_seq = seq;
            let oldest = self.work_rx.as_ref().and_then(|rx| {
                rx.borrow()
                    .as_ref()
                    .and_then(|w| w.jobs.first().map(|j| j.seq))
            });
            if let Some(oldest) = oldest {
                self.ledger.forget_before(oldest);
            }
        }
    }

    /// What the fan-out may rely on until the next turn, if this miner's notify for a new job
    /// of the same work would be the job's line alone: what `on_work` would do for it changes
    /// nothing but the job (same generation, the mask and the pool's difficulty followed and
    /// told, the difficulty in force told).
    fn synced(&self) -> Option<Synced> {
        if !self.ready() || self.last_job_seq == 0 {
            return None;
        }
        let upstream_difficulty = self.pool_difficulty?;
        let version_mask = self.work_mask?;
        if self.difficulty_sent != Some(self.ledger.current()) {
            return None;
        }
        if let Some(requested) = self.requested_mask
            && (requested & self.shared.version_mask & version_mask != self.version_mask
                || self.mask_told != Some(self.version_mask))
        {
            return None;
        }
        Some(Synced {
            generation: self.generation,
            version_mask,
            upstream_difficulty,
            seq: self.last_job_seq,
        })
    }

    /// Serve the connection until it closes. A plain function returning an `async move`
    /// block, not an `async fn`: an `async fn` keeps its arguments twice in its future (the
    /// session and both socket halves, 736 bytes per miner), a block captures them once.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future"
    )]
    pub fn run<R, W>(
        mut self,
        r: R,
        mut out: Output<W>,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl Future<Output = ()>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        async move {
            let cfg = self.shared.config();
            let mut reader = LineReader::new(r, cfg.server.max_line_bytes);
            let handshake_deadline = Instant::now() + cfg.server.handshake_timeout;
            let idle = cfg.server.idle_timeout;
            let mut last_rx = Instant::now();
            // Cancelled by the drain (the parent token) or by an admin disconnect of this
            // connection alone. Its own token, not the drain's: waiting on a token takes its
            // lock at every turn, and 10,000 sessions on one lock would contend at every job.
            let stopped = stop.cancelled_owned();
            tokio::pin!(stopped);
            // The vardiff check of a miner that sends nothing: an instant, kept across the
            // loop's turns (every notify, reply or line is one; were it set from each turn,
            // jobs coming more often than the interval would put it off for ever).
            let mut tick_at = Instant::now() + cfg.vardiff.retarget_interval;
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
                let ticking = self.vardiff.is_some() && self.ready();
                // One timer for the three instants (each a timer entry in every session's future).
                let mut wake = deadline;
                if let Some(t) = self.first_work_at {
                    wake = wake.min(t);
                }
                if ticking {
                    wake = wake.min(tick_at);
                }
                let turn = tokio::select! {
                    biased;
                    () = &mut stopped => Wake::Stop,
                    line = reader.next_line() => Wake::Line(line),
                    changed = async {
                        let rx = self.work_rx.as_mut().expect("guarded");
                        match out.lane() {
                            // The fan-out wakes this session only for work it did not write
                            // (or the rest of a line it began); a wake for work already seen
                            // (before subscribe) is passed over.
                            Some(lane) => loop {
                                lane.woken().await;
                                match rx.has_changed() {
                                    Ok(false) if !lane.has_leftover() => {}
                                    Ok(_) => break Ok(()),
                                    Err(e) => break Err(e),
                                }
                            },
                            None => rx.changed().await,
                        }
                    }, if self.work_rx.is_some() && self.ready() => Wake::Work(changed.is_ok()),
                    stored = async {
                        let u: &mut Unacked = unacked.front_mut().expect("guarded");
                        // Boxed: the timer lives on the heap only while replies wait, instead of
                        // in every session's future.
                        Box::pin(tokio::time::timeout_at(u.deadline.into(), &mut u.stored)).await
                    }, if !unacked.is_empty() => Wake::Stored(matches!(stored, Ok(Ok(())))),
                    text = async { self.messages.as_mut().expect("guarded").recv().await }, if self.messages.is_some() => Wake::Message(text),
                    Some(settled) = verdicts.next(), if !verdicts.is_empty() => Wake::Verdict(settled),
                    _ = tokio::time::sleep_until(wake.into()) => Wake::Timer,
                };
                // The turn: from here until its bytes are written only this task writes to the
                // socket, and what the fan-out wrote meanwhile is taken in before anything is
                // judged.
                if let Some(lane) = out.lane() {
                    self.catch_up(lane.begin());
                }
                match turn {
                    Wake::Stop => {
                        if self.shared.drain.is_cancelled() {
                            if self.subscribed {
                                self.out.extend(method_line(
                                    "null",
                                    "client.reconnect",
                                    &json!([]),
                                ));
                            }
                            self.close = Some(Close::Drain);
                        } else {
                            self.close = Some(Close::AdminDisconnect);
                        }
                    }
                    Wake::Line(line) => {
                        last_rx = Instant::now();
                        match line {
                            Ok(Some(line)) => {
                                // Handle a pipelined burst before writing the replies once. One
                                // await of `handle_line`: each is a slot in the session's future.
                                let mut next = Some(line);
                                while let Some(line) = next.take() {
                                    self.handle_line(&line).await;
                                    if self.close.is_some() {
                                        break;
                                    }
                                    match reader.next_buffered() {
                                        Ok(l) => next = l,
                                        Err(e) => self.read_error(e),
                                    }
                                }
                            }
                            Ok(None) => self.close = Some(Close::PeerClosed),
                            Err(e) => self.read_error(e),
                        }
                    }
                    Wake::Work(open) => {
                        if !open {
                            self.close = Some(Close::NoUpstream);
                        } else if let Some(rx) = self.work_rx.as_mut() {
                            let work = rx.borrow_and_update().clone();
                            self.on_work(work.as_deref());
                        }
                    }
                    Wake::Stored(ok) => {
                        let u = unacked.pop_front().expect("guarded");
                        self.acknowledged(u, ok);
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
                    Wake::Message(text) => match text {
                        Ok(text) if self.subscribed => self.out.extend(method_line(
                            "null",
                            "client.show_message",
                            &json!([&*text]),
                        )),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            self.messages = None
                        }
                    },
                    Wake::Verdict(settled) => self.on_verdict(settled).await,
                    Wake::Timer => {
                        let now = Instant::now();
                        if now >= deadline {
                            self.close = Some(if self.ready() {
                                Close::IdleTimeout
                            } else {
                                Close::HandshakeTimeout
                            });
                        } else if let Some(t) = self.first_work_at
                            && now >= t
                        {
                            self.first_work_at = None;
                            if self.last_job_seq == 0
                                && let Some(rx) = self.work_rx.as_mut()
                            {
                                let work = rx.borrow_and_update().clone();
                                self.send_work(work.as_deref(), true);
                            }
                        }
                        if self.close.is_none() && ticking && now >= tick_at {
                            if let Some(d) = self.vardiff.as_mut().and_then(|v| v.on_tick(now)) {
                                self.change_difficulty(d);
                            }
                            self.update_wants();
                            tick_at = now + self.shared.config().vardiff.retarget_interval;
                        }
                    }
                }
                if !self.out.is_empty() {
                    match tokio::time::timeout(WRITE_TIMEOUT, out.write_all(&self.out)).await {
                        Ok(Ok(())) => {
                            if let Some(t) = self.notify_received_at.take() {
                                self.shared
                                    .stats
                                    .notify_delay
                                    .observe(t.elapsed().as_secs_f64());
                                self.shared.events.hold().touch();
                            }
                        }
                        Ok(Err(e)) => self.close = Some(Close::Io(e.to_string())),
                        Err(_) => self.close = Some(Close::Io("write timed out".into())),
                    }
                    // The buffer is not kept between writes: a notify's ~1 kB would otherwise stay
                    // with every idle miner (10 MB at 10,000 miners); the next line allocates.
                    self.out = Vec::new();
                }
                // Between turns the fan-out may write the next job itself, if that is all this
                // miner would be sent.
                if self.close.is_none()
                    && let Some(lane) = out.lane()
                {
                    lane.end(self.synced());
                }
            }
            // Boxed: what runs once, at the close, takes no room in every session's future.
            verdicts.extend(self.awaiting.drain(..));
            Box::pin(self.settle_verdicts(verdicts)).await;
            unacked.append(&mut self.unacked);
            Box::pin(self.settle_unacked(unacked)).await;
            // If the miner can still hear them (a drain, an idle or admin close), the replies
            // settled on the way out go to it.
            let open = !matches!(self.close, Some(Close::PeerClosed | Close::Io(_)));
            if open && !self.out.is_empty() {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, out.write_all(&self.out)).await;
            }
            self.out.clear();
            out.shutdown().await;
            self.finish();
        }
    }

    fn read_error(&mut self, e: ReadError) {
        let reason = match e {
            ReadError::Io(e) => {
                self.close = Some(Close::Io(e.to_string()));
                return;
            }
            ReadError::Line(e) => {
                if e == loka_stratum::codec::LineError::Tls {
                    self.shared
                        .stats
                        .tls
                        .tls_on_plain_port
                        .fetch_add(1, Relaxed);
                }
                e.to_string()
            }
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
}
