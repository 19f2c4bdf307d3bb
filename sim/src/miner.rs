//! [`SimMiner`]: a hashing Stratum V1 miner, and (re-exported) the low-level
//! [`StratumClient`].
//!
//! A miner is one tokio task for the connection plus one OS thread that hashes real
//! sha256d headers (rolling nonce, extranonce2 and, when negotiated, version bits) against
//! the miner's current difficulty.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use primitive_types::U256;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::client::{Notification, Response, StratumClient, Subscription};
use crate::share::{Difficulty, Job, parse_u32_hex, u32_hex};
use crate::wire::{self, LineReader, id_key};

/// How a [`SimMiner`] behaves.
#[derive(Debug, Clone)]
pub struct MinerConfig {
    /// `host:port` of the Stratum endpoint.
    pub addr: String,
    pub username: String,
    pub password: String,
    pub user_agent: String,
    /// Send BIP310 `mining.configure` first (like BitAxe).
    pub configure_version_rolling: bool,
    /// Mask requested in `mining.configure`.
    pub version_rolling_mask: u32,
    /// Send `mining.extranonce.subscribe` (NiceHash style).
    pub extranonce_subscribe: bool,
    /// Stop submitting after this many submits.
    pub submit_limit: Option<u64>,
    /// Follow `client.reconnect` and reconnect after a dropped connection, resubscribing
    /// with the previous session id (cpuminer style).
    pub reconnect: bool,
    /// First reconnect delay; doubles up to 2 s.
    pub reconnect_backoff: Duration,
    /// Use string ids (`"subscribe"`, `"auth"`, `"submit7"`) like bfgminer.
    pub string_ids: bool,
    /// Give every submit this id (cpuminer uses 4).
    pub same_submit_id: Option<u64>,
    /// Cap on hashes per second (`None` = as fast as one thread goes).
    pub hashrate: Option<f64>,
    /// Speak TLS: the client configuration and the name the server's certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

/// A connection's byte stream: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Connect to `addr`, and speak TLS over it when the miner is set to. The error says what
/// failed and whether it took the whole timeout.
async fn open(
    addr: &str,
    tls: &Option<(Arc<rustls::ClientConfig>, String)>,
) -> Result<Box<dyn Io>, (String, bool)> {
    let waited = |e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut;
    let stream = crate::client::tcp_connect(addr)
        .await
        .map_err(|e| (format!("connect {addr}: {e}"), waited(&e)))?;
    let Some((config, name)) = tls else {
        return Ok(Box::new(stream));
    };
    match crate::client::tls_handshake(stream, config.clone(), name).await {
        Ok(s) => Ok(Box::new(s)),
        Err(e) => Err((format!("TLS with {addr}: {e}"), waited(&e))),
    }
}

impl MinerConfig {
    pub fn new(addr: impl ToString, username: impl Into<String>) -> Self {
        Self {
            addr: addr.to_string(),
            username: username.into(),
            password: "x".into(),
            user_agent: "loka-sim/0.1".into(),
            configure_version_rolling: false,
            version_rolling_mask: 0x1fff_e000,
            extranonce_subscribe: false,
            submit_limit: None,
            reconnect: false,
            reconnect_backoff: Duration::from_millis(100),
            string_ids: false,
            same_submit_id: None,
            hashrate: None,
            tls: None,
        }
    }
}

/// What a miner has seen and done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinerStats {
    pub connected: bool,
    pub subscribed: bool,
    /// Reply to the last `mining.authorize`.
    pub authorized: Option<bool>,
    pub connects: u64,
    pub connect_errors: u64,
    pub disconnects: u64,
    /// Successful connections after the first.
    pub reconnects: u64,
    /// `client.reconnect` messages received.
    pub reconnect_requests: u64,
    /// Subscription id from the last subscribe reply.
    pub session_id: Option<String>,
    /// Session id sent in the last subscribe (a resume attempt).
    pub resumed_with: Option<String>,
    pub extranonce1: Option<String>,
    pub extranonce2_size: Option<usize>,
    pub set_extranonce_received: u64,
    /// Mask granted by `mining.configure`, then by any `mining.set_version_mask`.
    pub version_rolling_mask: Option<u32>,
    /// `mining.set_version_mask` notifications received.
    pub set_version_mask_received: u64,
    /// Texts of the `client.show_message` notifications received (last 100).
    pub messages_shown: Vec<String>,
    pub jobs_received: u64,
    pub clean_jobs_received: u64,
    pub last_job_id: Option<String>,
    /// Difficulty the miner is hashing at (applied at the last notify).
    pub difficulty: Option<f64>,
    /// Every `mining.set_difficulty` value received, in order (last 1000).
    pub difficulties_seen: Vec<f64>,
    pub hashes: u64,
    pub shares_found: u64,
    pub submitted: u64,
    pub accepted: u64,
    /// Rejections by error code (`-1` = `false` without an error).
    pub rejected: BTreeMap<i64, u64>,
    /// Send→reply latency of each answered submit, in µs (last 100 000).
    pub latencies_us: Vec<u64>,
    /// Replies for unknown ids, unparsable lines, malformed notifications.
    pub protocol_errors: u64,
    pub last_error: Option<String>,
    /// The miner gave up (no reconnect) or was stopped.
    pub finished: bool,
}

impl MinerStats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    pub fn rejected_with(&self, code: i64) -> u64 {
        self.rejected.get(&code).copied().unwrap_or(0)
    }
    /// Latency percentile (0.0..=1.0) in µs, if any submit was answered.
    pub fn latency_percentile_us(&self, q: f64) -> Option<u64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let idx = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v.get(idx).copied()
    }
}

/// Entry point: `SimMiner::spawn(cfg)`.
pub struct SimMiner;

impl SimMiner {
    /// Start a miner (inside a tokio runtime). It runs until stopped or, without
    /// `reconnect`, until its connection ends.
    pub fn spawn(cfg: MinerConfig) -> MinerHandle {
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(MinerShared {
            stats: Mutex::new(MinerStats::default()),
            changed,
            stop: AtomicBool::new(false),
            slot: Mutex::new(WorkSlot {
                work: None,
                generation: 0,
            }),
            cv: Condvar::new(),
            generation: AtomicU64::new(0),
            hashes: AtomicU64::new(0),
            shares_found: AtomicU64::new(0),
        });
        let (share_tx, share_rx) = mpsc::unbounded_channel();
        let hs = shared.clone();
        let rate = cfg.hashrate;
        let thread = std::thread::Builder::new()
            .name("sim-miner-hash".into())
            .spawn(move || hash_loop(hs, share_tx, rate))
            .ok();
        if thread.is_none() {
            shared.update(|s| s.last_error = Some("could not start hashing thread".into()));
        }
        let task = tokio::spawn(io_loop(shared.clone(), cfg, share_rx));
        MinerHandle {
            shared,
            task,
            thread,
        }
    }
}

/// A running miner. Dropping it stops the miner.
pub struct MinerHandle {
    shared: Arc<MinerShared>,
    task: JoinHandle<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MinerHandle {
    pub fn stats(&self) -> MinerStats {
        let mut s = self.shared.stats.lock().clone();
        s.hashes = self.shared.hashes.load(Ordering::Relaxed);
        s.shares_found = self.shared.shares_found.load(Ordering::Relaxed);
        s
    }

    /// Wait until `pred` holds for the stats, up to `timeout`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&MinerStats) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<MinerStats> {
        crate::wait::until(
            "miner",
            &self.shared.changed,
            || self.stats(),
            pred,
            timeout,
        )
        .await
    }

    /// Stop: close the connection and the hashing thread.
    pub fn stop(&self) {
        self.task.abort();
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.cv.notify_all();
        self.shared.update(|s| {
            s.finished = true;
            s.connected = false;
        });
    }

    /// Whether the connection task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for MinerHandle {
    fn drop(&mut self) {
        self.stop();
        // the hashing thread notices `stop` within one chunk; do not block a runtime
        // thread waiting for it
        drop(self.thread.take());
    }
}

struct Work {
    generation: u64,
    session: u64,
    job: Arc<Job>,
    en1: Vec<u8>,
    en2_size: usize,
    target: U256,
    mask: u32,
}

struct WorkSlot {
    work: Option<Arc<Work>>,
    generation: u64,
}

struct MinerShared {
    stats: Mutex<MinerStats>,
    changed: crate::wait::Changed,
    stop: AtomicBool,
    slot: Mutex<WorkSlot>,
    cv: Condvar,
    generation: AtomicU64,
    hashes: AtomicU64,
    shares_found: AtomicU64,
}

impl MinerShared {
    fn update(&self, f: impl FnOnce(&mut MinerStats)) {
        f(&mut self.stats.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn publish(&self, work: Option<Work>) {
        let mut slot = self.slot.lock();
        slot.generation += 1;
        let g = slot.generation;
        slot.work = work.map(|mut w| {
            w.generation = g;
            Arc::new(w)
        });
        self.generation.store(g, Ordering::Release);
        drop(slot);
        self.cv.notify_all();
    }
}

struct Found {
    session: u64,
    job_id: String,
    en2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version_bits: Option<u32>,
}

/// Spread the bits of `k` over the set bits of `mask` (like `pdep`).
fn deposit_bits(mut k: u32, mask: u32) -> u32 {
    let mut out = 0;
    let mut m = mask;
    while m != 0 && k != 0 {
        let low = m & m.wrapping_neg();
        if k & 1 != 0 {
            out |= low;
        }
        k >>= 1;
        m &= m - 1;
    }
    out
}

fn hash_loop(shared: Arc<MinerShared>, tx: mpsc::UnboundedSender<Found>, rate: Option<f64>) {
    let mut rng_seed: u64 = rand::random();
    let chunk: u32 = match rate {
        Some(r) if r > 0.0 => (r / 50.0).clamp(1.0, 16384.0) as u32,
        _ => 16384,
    };
    let started = Instant::now();
    let mut total: u64 = 0;
    loop {
        // wait for work
        let work = {
            let mut slot = shared.slot.lock();
            loop {
                if shared.stop.load(Ordering::Relaxed) || tx.is_closed() {
                    return;
                }
                if let Some(w) = &slot.work {
                    break w.clone();
                }
                shared.cv.wait_for(&mut slot, Duration::from_millis(200));
            }
        };
        // iterate units (en2, version roll), each from nonce 0
        rng_seed = rng_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut en2_counter: u64 = rng_seed >> 16;
        let mask = work.mask;
        let rolls: u32 = if mask == 0 {
            1
        } else {
            1 << mask.count_ones().min(4)
        };
        let mut roll: u32 = 0;
        'units: loop {
            let mut en2 = vec![0u8; work.en2_size];
            let b = en2_counter.to_be_bytes();
            let n = work.en2_size.min(8);
            let len = en2.len();
            en2[len - n..].copy_from_slice(&b[8 - n..]);
            let vbits = (mask != 0).then(|| deposit_bits(roll, mask));
            let mut nonce: u32 = 0;
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if shared.generation.load(Ordering::Acquire) != work.generation {
                    break 'units;
                }
                let (found, done) = work.job.search(
                    &work.en1,
                    &en2,
                    vbits.map(|b| (b, mask)),
                    work.job.ntime,
                    &work.target,
                    nonce,
                    chunk,
                );
                total += u64::from(done);
                shared.hashes.fetch_add(u64::from(done), Ordering::Relaxed);
                if let Some(rate) = rate.filter(|r| *r > 0.0) {
                    let due = Duration::from_secs_f64(total as f64 / rate);
                    let el = started.elapsed();
                    if due > el {
                        std::thread::sleep((due - el).min(Duration::from_millis(200)));
                    }
                }
                let exhausted = nonce.checked_add(done).is_none() || nonce.wrapping_add(done) == 0;
                if let Some(f) = found {
                    shared.shares_found.fetch_add(1, Ordering::Relaxed);
                    let msg = Found {
                        session: work.session,
                        job_id: work.job.job_id.clone(),
                        en2: f.extranonce2,
                        ntime: f.ntime,
                        nonce: f.nonce,
                        version_bits: f.version_bits,
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                    break; // next unit
                }
                if exhausted {
                    break;
                }
                nonce = nonce.wrapping_add(done);
            }
            roll += 1;
            if roll >= rolls {
                roll = 0;
                en2_counter = en2_counter.wrapping_add(1);
            }
        }
    }
}

enum SessionEnd {
    Closed(String),
    Reconnect {
        addr: Option<String>,
        wait: Duration,
    },
    GaveUp(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Configure,
    Subscribe,
    Authorize,
    ExtranonceSubscribe,
    Submit,
}

struct Pending {
    kind: Kind,
    sent: Instant,
}

async fn io_loop(
    shared: Arc<MinerShared>,
    cfg: MinerConfig,
    mut shares: mpsc::UnboundedReceiver<Found>,
) {
    let mut addr = cfg.addr.clone();
    let mut backoff = cfg.reconnect_backoff.max(Duration::from_millis(1));
    let mut session: u64 = 0;
    let mut prev_session_id: Option<String> = None;
    let mut submitted: u64 = 0;
    let mut ever_connected = false;
    loop {
        let stream = match open(&addr, &cfg.tls).await {
            Ok(s) => s,
            Err((why, waited)) => {
                shared.update(|s| {
                    s.connect_errors += 1;
                    s.last_error = Some(why);
                });
                if !cfg.reconnect {
                    break;
                }
                // A connection that timed out has waited already.
                if !waited {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                continue;
            }
        };
        session += 1;
        let reconnecting = ever_connected;
        ever_connected = true;
        shared.update(|s| {
            s.connects += 1;
            if reconnecting {
                s.reconnects += 1;
            }
            s.connected = true;
            s.subscribed = false;
        });
        let mut sess = Session {
            shared: &shared,
            cfg: &cfg,
            session,
            next_id: 1,
            pending: HashMap::new(),
            en1: None,
            en2_size: 0,
            mask: 0,
            current_diff: None,
            pending_diff: None,
            pending_extranonce: None,
            job: None,
            valid_jobs: HashSet::new(),
            submitted: &mut submitted,
            session_id: None,
            accepted_here: false,
        };
        let end = sess.run(stream, &mut shares, prev_session_id.clone()).await;
        if let Some(sid) = sess.session_id.take() {
            prev_session_id = Some(sid);
        }
        let accepted_here = sess.accepted_here;
        shared.publish(None);
        let reason = match &end {
            SessionEnd::Closed(r) | SessionEnd::GaveUp(r) => r.clone(),
            SessionEnd::Reconnect { .. } => "client.reconnect".into(),
        };
        shared.update(|s| {
            s.connected = false;
            s.subscribed = false;
            s.disconnects += 1;
            s.last_error = Some(reason);
        });
        if accepted_here {
            backoff = cfg.reconnect_backoff.max(Duration::from_millis(1));
        }
        match end {
            SessionEnd::GaveUp(_) => break,
            _ if !cfg.reconnect => break,
            SessionEnd::Reconnect { addr: new, wait } => {
                if let Some(a) = new {
                    addr = a;
                }
                tokio::time::sleep(wait).await;
            }
            SessionEnd::Closed(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    shared.cv.notify_all();
    shared.update(|s| {
        s.finished = true;
        s.connected = false;
    });
}

struct Session<'a> {
    shared: &'a MinerShared,
    cfg: &'a MinerConfig,
    session: u64,
    next_id: u64,
    pending: HashMap<String, VecDeque<Pending>>,
    en1: Option<Vec<u8>>,
    en2_size: usize,
    mask: u32,
    current_diff: Option<Difficulty>,
    pending_diff: Option<Difficulty>,
    pending_extranonce: Option<(Vec<u8>, usize)>,
    job: Option<Arc<Job>>,
    valid_jobs: HashSet<String>,
    submitted: &'a mut u64,
    session_id: Option<String>,
    accepted_here: bool,
}

impl Session<'_> {
    fn id_for(&mut self, kind: Kind) -> Value {
        let n = self.next_id;
        self.next_id += 1;
        if kind == Kind::Submit
            && let Some(fixed) = self.cfg.same_submit_id
        {
            return Value::from(fixed);
        }
        if self.cfg.string_ids {
            return Value::from(match kind {
                Kind::Configure => "configure".to_string(),
                Kind::Subscribe => "subscribe".to_string(),
                Kind::Authorize => "auth".to_string(),
                Kind::ExtranonceSubscribe => "xnsub".to_string(),
                Kind::Submit => format!("submit{n}"),
            });
        }
        Value::from(n)
    }

    fn request(&mut self, kind: Kind, method: &str, params: Value) -> String {
        let id = self.id_for(kind);
        self.pending
            .entry(id_key(&id))
            .or_default()
            .push_back(Pending {
                kind,
                sent: Instant::now(),
            });
        wire::request_line(&id, method, params)
    }

    async fn run(
        &mut self,
        stream: Box<dyn Io>,
        shares: &mut mpsc::UnboundedReceiver<Found>,
        resume: Option<String>,
    ) -> SessionEnd {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = LineReader::with_limit(rd, 1 << 20);
        let mut hello = String::new();
        if self.cfg.configure_version_rolling {
            hello += &self.request(
                Kind::Configure,
                "mining.configure",
                crate::client::configure_params(self.cfg.version_rolling_mask),
            );
        }
        let sub_params = match &resume {
            Some(sid) => json!([self.cfg.user_agent, sid]),
            None => json!([self.cfg.user_agent]),
        };
        self.shared.update(|s| s.resumed_with = resume.clone());
        hello += &self.request(Kind::Subscribe, "mining.subscribe", sub_params);
        hello += &self.request(
            Kind::Authorize,
            "mining.authorize",
            json!([self.cfg.username, self.cfg.password]),
        );
        if self.cfg.extranonce_subscribe {
            hello += &self.request(
                Kind::ExtranonceSubscribe,
                "mining.extranonce.subscribe",
                json!([]),
            );
        }
        if let Err(e) = write_flush(&mut wr, hello.as_bytes()).await {
            return SessionEnd::Closed(format!("write: {e}"));
        }
        loop {
            tokio::select! {
                line = reader.next_line() => {
                    let line = match line {
                        Ok(Some(l)) => l,
                        Ok(None) => return SessionEnd::Closed("connection closed by server".into()),
                        Err(e) => return SessionEnd::Closed(format!("read: {e}")),
                    };
                    let mut out = String::new();
                    if let Some(end) = self.on_line(&line, &mut out) {
                        let _ = write_flush(&mut wr, out.as_bytes()).await;
                        return end;
                    }
                    if !out.is_empty()
                        && let Err(e) = write_flush(&mut wr, out.as_bytes()).await
                    {
                        return SessionEnd::Closed(format!("write: {e}"));
                    }
                }
                found = shares.recv() => {
                    let Some(first) = found else {
                        return SessionEnd::GaveUp("hashing thread ended".into());
                    };
                    let mut out = String::new();
                    self.on_found(first, &mut out);
                    while let Ok(f) = shares.try_recv() {
                        self.on_found(f, &mut out);
                    }
                    if !out.is_empty()
                        && let Err(e) = write_flush(&mut wr, out.as_bytes()).await
                    {
                        return SessionEnd::Closed(format!("write: {e}"));
                    }
                }
            }
        }
    }

    fn on_found(&mut self, f: Found, out: &mut String) {
        if f.session != self.session || !self.valid_jobs.contains(&f.job_id) {
            return; // work from an earlier connection or a cleared job
        }
        if let Some(limit) = self.cfg.submit_limit
            && *self.submitted >= limit
        {
            self.shared.publish(None);
            return;
        }
        let mut p = vec![
            Value::from(self.cfg.username.clone()),
            Value::from(f.job_id),
            Value::from(hex::encode(&f.en2)),
            Value::from(u32_hex(f.ntime)),
            Value::from(u32_hex(f.nonce)),
        ];
        if let Some(v) = f.version_bits {
            p.push(Value::from(u32_hex(v)));
        }
        *out += &self.request(Kind::Submit, "mining.submit", Value::Array(p));
        *self.submitted += 1;
        let n = *self.submitted;
        self.shared.update(|s| s.submitted = n);
        if let Some(limit) = self.cfg.submit_limit
            && n >= limit
        {
            self.shared.publish(None);
        }
    }

    fn protocol_error(&self, msg: String) {
        self.shared.update(|s| {
            s.protocol_errors += 1;
            s.last_error = Some(msg);
        });
    }

    /// Handle one line. `Some(end)` ends the session.
    fn on_line(&mut self, line: &str, out: &mut String) -> Option<SessionEnd> {
        if line.trim().is_empty() {
            return None;
        }
        let msg: Value = match serde_json::from_str(line) {
            Ok(Value::Object(m)) => Value::Object(m),
            _ => {
                self.protocol_error(format!(
                    "unparsable line: {}",
                    line.chars().take(120).collect::<String>()
                ));
                return None;
            }
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        if let Some(method) = msg.get("method").and_then(Value::as_str) {
            let params = msg.get("params").cloned().unwrap_or(Value::Null);
            return self.on_method(method, &id, &params, out);
        }
        self.on_response(&id, &msg)
    }

    fn on_method(
        &mut self,
        method: &str,
        id: &Value,
        params: &Value,
        out: &mut String,
    ) -> Option<SessionEnd> {
        match method {
            "mining.notify" => match Job::from_notify_params(params) {
                Ok(job) => self.on_notify(job),
                Err(e) => self.protocol_error(format!("bad mining.notify: {e}")),
            },
            "mining.set_difficulty" => match params.get(0).and_then(Difficulty::from_json) {
                Some(d) => {
                    let f = d.as_f64();
                    self.pending_diff = Some(d);
                    self.shared.update(|s| {
                        s.difficulties_seen.push(f);
                        if s.difficulties_seen.len() > 1000 {
                            s.difficulties_seen.remove(0);
                        }
                    });
                }
                None => self.protocol_error(format!("bad mining.set_difficulty: {params}")),
            },
            "mining.set_extranonce" => match crate::client::set_extranonce_params(params) {
                Some(en) => {
                    self.pending_extranonce = Some(en);
                    self.shared.update(|s| s.set_extranonce_received += 1);
                }
                None => self.protocol_error(format!("bad mining.set_extranonce: {params}")),
            },
            "client.reconnect" => {
                self.shared.update(|s| s.reconnect_requests += 1);
                if self.cfg.reconnect {
                    let host = params
                        .get(0)
                        .and_then(Value::as_str)
                        .filter(|h| !h.is_empty());
                    let port = params.get(1).and_then(|p| match p {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => s.parse().ok(),
                        _ => None,
                    });
                    let addr = match (host, port) {
                        (None, None) => None,
                        (h, p) => {
                            let (cur_host, cur_port) = split_host_port(&self.cfg.addr);
                            Some(format!(
                                "{}:{}",
                                h.unwrap_or(&cur_host),
                                p.map(|p| p.to_string()).unwrap_or(cur_port)
                            ))
                        }
                    };
                    let wait = params
                        .get(2)
                        .and_then(Value::as_u64)
                        .map(|w| Duration::from_secs(w.min(30)))
                        .unwrap_or(Duration::ZERO);
                    return Some(SessionEnd::Reconnect { addr, wait });
                }
            }
            "client.get_version" => {
                if !id.is_null() {
                    *out += &wire::result_line(id, Value::from(self.cfg.user_agent.clone()));
                }
            }
            "mining.set_version_mask" => {
                // BIP310: the server changes the mask; from now on roll only these bits.
                match params
                    .get(0)
                    .and_then(Value::as_str)
                    .and_then(parse_u32_hex)
                {
                    Some(m) => {
                        let granted = m & self.cfg.version_rolling_mask;
                        self.mask = granted;
                        self.shared.update(|s| {
                            s.set_version_mask_received += 1;
                            s.version_rolling_mask = Some(granted);
                        });
                        self.republish();
                    }
                    None => self.protocol_error(format!("bad mining.set_version_mask: {params}")),
                }
            }
            "client.show_message" => {
                let text = params.get(0).and_then(Value::as_str).unwrap_or_default();
                let text = text.to_string();
                self.shared.update(|s| {
                    s.messages_shown.push(text);
                    if s.messages_shown.len() > 100 {
                        s.messages_shown.remove(0);
                    }
                });
            }
            "mining.ping" => {
                if !id.is_null() {
                    *out += &wire::result_line(id, Value::from("pong"));
                }
            }
            other => {
                if !id.is_null() {
                    *out += &wire::error_line(id, 20, "Method not supported");
                }
                tracing::debug!(method = other, "sim miner ignored method");
            }
        }
        None
    }

    fn on_notify(&mut self, job: Job) {
        if let Some(d) = self.pending_diff.take() {
            self.current_diff = Some(d);
        }
        if let Some((e, n)) = self.pending_extranonce.take() {
            self.en1 = Some(e);
            self.en2_size = n;
        }
        if job.clean_jobs {
            self.valid_jobs.clear();
        }
        self.valid_jobs.insert(job.job_id.clone());
        let (clean, jid) = (job.clean_jobs, job.job_id.clone());
        self.job = Some(Arc::new(job));
        let diff = self.current_diff.as_ref().map(Difficulty::as_f64);
        let (en1, en2n) = (self.en1.as_ref().map(hex::encode), self.en2_size);
        self.shared.update(|s| {
            s.jobs_received += 1;
            if clean {
                s.clean_jobs_received += 1;
            }
            s.last_job_id = Some(jid);
            s.difficulty = diff.or(Some(1.0));
            s.extranonce1 = en1;
            if en2n > 0 {
                s.extranonce2_size = Some(en2n);
            }
        });
        self.republish();
    }

    fn republish(&self) {
        let (Some(job), Some(en1)) = (&self.job, &self.en1) else {
            return;
        };
        if self.en2_size == 0 {
            return;
        }
        if let Some(limit) = self.cfg.submit_limit
            && *self.submitted >= limit
        {
            return;
        }
        let target = match &self.current_diff {
            Some(d) => d.target(),
            None => crate::share::diff1_target(),
        };
        self.shared.publish(Some(Work {
            generation: 0,
            session: self.session,
            job: job.clone(),
            en1: en1.clone(),
            en2_size: self.en2_size,
            target,
            mask: self.mask,
        }));
    }

    fn on_response(&mut self, id: &Value, msg: &Value) -> Option<SessionEnd> {
        let key = id_key(id);
        let Some(p) = self.pending.get_mut(&key).and_then(VecDeque::pop_front) else {
            self.protocol_error(format!("reply for unknown id {key}"));
            return None;
        };
        if self.pending.get(&key).is_some_and(VecDeque::is_empty) {
            self.pending.remove(&key);
        }
        let result = msg.get("result").cloned().unwrap_or(Value::Null);
        let error = msg.get("error").cloned().unwrap_or(Value::Null);
        match p.kind {
            Kind::Subscribe => {
                if !error.is_null() {
                    return Some(SessionEnd::Closed(format!("subscribe failed: {error}")));
                }
                match Subscription::from_result(&result) {
                    Ok(sub) => {
                        self.en1 = Some(sub.extranonce1.clone());
                        self.en2_size = sub.extranonce2_size;
                        self.session_id = sub.session_id.clone();
                        self.shared.update(|s| {
                            s.subscribed = true;
                            s.session_id = sub.session_id.clone();
                            s.extranonce1 = Some(hex::encode(&sub.extranonce1));
                            s.extranonce2_size = Some(sub.extranonce2_size);
                        });
                        self.republish();
                    }
                    Err(e) => {
                        return Some(SessionEnd::Closed(format!("bad subscribe reply: {e}")));
                    }
                }
            }
            Kind::Authorize => {
                let ok = error.is_null() && result == Value::Bool(true);
                self.shared.update(|s| {
                    s.authorized = Some(ok);
                    if !ok {
                        s.last_error = Some(format!("authorize refused: {result} {error}"));
                    }
                });
            }
            Kind::Configure => {
                let granted =
                    crate::client::granted_mask(&result).map(|m| m & self.cfg.version_rolling_mask);
                self.mask = granted.unwrap_or(0);
                self.shared.update(|s| s.version_rolling_mask = granted);
                self.republish();
            }
            Kind::ExtranonceSubscribe => {}
            Kind::Submit => {
                let us = p.sent.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
                let ok = error.is_null() && result == Value::Bool(true);
                if ok {
                    self.accepted_here = true;
                }
                self.shared.update(|s| {
                    if s.latencies_us.len() >= 100_000 {
                        s.latencies_us.remove(0);
                    }
                    s.latencies_us.push(us);
                    if ok {
                        s.accepted += 1;
                    } else {
                        let code = wire::error_code(&error).unwrap_or(-1);
                        *s.rejected.entry(code).or_insert(0) += 1;
                        s.last_error = Some(format!("submit rejected: {error}"));
                    }
                });
            }
        }
        None
    }
}

fn split_host_port(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (addr.to_string(), "3333".to_string()),
    }
}

async fn write_flush<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposit() {
        assert_eq!(deposit_bits(0, 0x1fffe000), 0);
        assert_eq!(deposit_bits(1, 0x1fffe000), 0x2000);
        assert_eq!(deposit_bits(3, 0x1fffe000), 0x6000);
        assert_eq!(deposit_bits(0b101, 0b1010_1000), 0b1000_1000);
    }
}
