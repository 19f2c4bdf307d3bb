//! [`MockPool`]: an upstream Stratum V1 pool on real TCP that validates every share
//! independently and records what it saw.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use primitive_types::U256;
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::share::{self, Difficulty, Job, hash_display_hex, nbits_to_target, parse_u32_hex};
use crate::wire::{self, LineReader};

/// Stratum error codes.
pub mod codes {
    pub const OTHER: i64 = 20;
    pub const JOB_NOT_FOUND: i64 = 21;
    pub const DUPLICATE: i64 = 22;
    pub const LOW_DIFFICULTY: i64 = 23;
    pub const UNAUTHORIZED: i64 = 24;
    pub const NOT_SUBSCRIBED: i64 = 25;
}

/// Configuration of a [`MockPool`]. `Default` gives a mainnet-like pool at difficulty 1.
#[derive(Debug, Clone)]
pub struct MockPoolConfig {
    /// Address to bind; `None` = `127.0.0.1:0`. Give the old address to restart a pool on
    /// the same port (binding is retried for a few seconds while the port is still held).
    pub addr: Option<SocketAddr>,
    pub extranonce1_size: usize,
    pub extranonce2_size: usize,
    /// Initial difficulty for every connection.
    pub difficulty: Difficulty,
    /// Network target in compact form (hex). `"207fffff"` makes every share a block candidate.
    pub nbits: String,
    /// Pool side of BIP310 version rolling; `None` refuses version rolling.
    pub version_rolling_mask: Option<u32>,
    /// Send a new non-clean job this often.
    pub job_interval: Option<Duration>,
    /// `None` accepts every username; otherwise only these.
    pub allowed_users: Option<Vec<String>>,
    /// Answer every submit with error 23.
    pub reject_all: bool,
    /// Accept subscribe/authorize but never send difficulty or jobs.
    pub silent: bool,
    /// Judge and record every submit but never answer it (shares left in flight, e.g. for
    /// [`MockPool::drop_connections`]).
    pub hold_submits: bool,
    /// Take `mining.suggest_difficulty` as the session's new difficulty (and send it as
    /// `mining.set_difficulty`), as some pools do; otherwise answer `true` and ignore it.
    pub honour_suggest_difficulty: bool,
    /// Accepted ntime range above the job's ntime, in seconds.
    pub ntime_window: u32,
    /// Number of merkle branches per job.
    pub merkle_branches: usize,
    /// How many submit records to keep (oldest dropped first; stats count everything).
    pub max_records: usize,
    /// Longest accepted request line.
    pub max_line: usize,
    /// Speak Stratum over TLS with this server configuration (a `stratum+ssl` pool).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for MockPoolConfig {
    fn default() -> Self {
        Self {
            addr: None,
            extranonce1_size: 4,
            extranonce2_size: 8,
            difficulty: Difficulty::one(),
            nbits: "1d00ffff".into(),
            version_rolling_mask: Some(0x1fff_e000),
            job_interval: None,
            allowed_users: None,
            reject_all: false,
            silent: false,
            hold_submits: false,
            honour_suggest_difficulty: false,
            ntime_window: 7200,
            merkle_branches: 4,
            max_records: 100_000,
            max_line: wire::DEFAULT_MAX_LINE,
            tls: None,
        }
    }
}

impl MockPoolConfig {
    /// Set the difficulty from decimal text (e.g. `"1e-7"`).
    pub fn with_difficulty(mut self, d: &str) -> Result<Self, share::DifficultyError> {
        self.difficulty = Difficulty::parse(d)?;
        Ok(self)
    }
}

/// Counters of a [`MockPool`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub connections_current: u64,
    pub connections_total: u64,
    pub subscribes: u64,
    pub authorizes: u64,
    pub authorize_failures: u64,
    pub configures: u64,
    /// `mining.suggest_difficulty` requests, and the last value suggested (as sent).
    pub suggests: u64,
    pub last_suggested: Option<String>,
    pub submits: u64,
    pub accepted: u64,
    /// Rejected submits by error code.
    pub rejected: BTreeMap<i64, u64>,
    pub block_candidates: u64,
    pub jobs_created: u64,
    pub notifies_sent: u64,
    /// Bad lines (non-JSON, over-long, not an object); such connections are closed.
    pub protocol_errors: u64,
    /// TLS pools: connections whose handshake failed or timed out.
    pub tls_handshake_failures: u64,
}

impl PoolStats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
    pub fn rejected_with(&self, code: i64) -> u64 {
        self.rejected.get(&code).copied().unwrap_or(0)
    }
}

/// One `mining.submit` as the pool saw and judged it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRecord {
    pub at: SystemTime,
    pub connection_id: u64,
    pub worker: String,
    pub job_id: String,
    pub extranonce1: String,
    pub extranonce2: String,
    pub ntime: String,
    pub nonce: String,
    /// The 6th param as sent, if any.
    pub version_bits: Option<String>,
    /// Header version used for the hash (hex), when the share got that far.
    pub version: Option<String>,
    /// Header hash in display (byte-reversed) hex, when computed.
    pub hash: Option<String>,
    /// Difficulty the share was checked against.
    pub difficulty: f64,
    /// Difficulty the hash achieved.
    pub share_difficulty: Option<f64>,
    pub accepted: bool,
    pub error_code: Option<i64>,
    pub block_candidate: bool,
}

struct PoolJob {
    job: Job,
    line: Arc<str>,
    clean_line: Arc<str>,
    seen: Mutex<HashSet<[u8; 32]>>,
}

struct Conn {
    tx: mpsc::UnboundedSender<Arc<str>>,
    abort: Option<AbortHandle>,
    session_id: String,
    en1: Vec<u8>,
    subscribed: bool,
    authorized: HashSet<String>,
    primed: bool,
    mask: u32,
    diff_latest: Difficulty,
    job_diffs: HashMap<String, Difficulty>,
}

struct Inner {
    stats: PoolStats,
    jobs: HashMap<String, Arc<PoolJob>>,
    job_order: VecDeque<String>,
    current: Arc<PoolJob>,
    difficulty: Difficulty,
    conns: HashMap<u64, Conn>,
    records: VecDeque<SubmitRecord>,
    next_conn: u64,
    job_counter: u64,
    en1_counter: u64,
    height: u32,
    prevhash: [u8; 32],
    killed: bool,
}

struct Shared {
    cfg: MockPoolConfig,
    nbits: u32,
    network_target: U256,
    inner: Mutex<Inner>,
    changed: crate::wait::Changed,
}

const MAX_JOBS: usize = 32;

/// A mock upstream pool. Dropping it is the same as [`MockPool::kill`].
pub struct MockPool {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl MockPool {
    /// Bind and start serving. Must be called inside a tokio runtime.
    pub async fn start(mut cfg: MockPoolConfig) -> io::Result<MockPool> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if cfg.extranonce1_size > 32 {
            return Err(invalid("extranonce1_size must be ≤ 32"));
        }
        if cfg.extranonce2_size == 0 || cfg.extranonce2_size > 32 {
            return Err(invalid("extranonce2_size must be 1..=32"));
        }
        let nbits =
            parse_u32_hex(&cfg.nbits).ok_or_else(|| invalid("nbits must be 8 hex digits"))?;
        cfg.difficulty = cfg.difficulty.wire_normalized();
        let addr = cfg
            .addr
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let listener = bind_with_retry(addr).await?;
        let addr = listener.local_addr()?;

        let mut rng = rand::rng();
        let inner = Inner {
            stats: PoolStats::default(),
            jobs: HashMap::new(),
            job_order: VecDeque::new(),
            current: Arc::new(PoolJob {
                job: placeholder_job(),
                line: Arc::from(""),
                clean_line: Arc::from(""),
                seen: Mutex::new(HashSet::new()),
            }),
            difficulty: cfg.difficulty.clone(),
            conns: HashMap::new(),
            records: VecDeque::new(),
            next_conn: 1,
            job_counter: u64::from(rng.random::<u32>() >> 4),
            en1_counter: rng.random::<u64>(),
            height: 850_000 + rng.random_range(0..10_000),
            prevhash: rng.random(),
            killed: false,
        };
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            nbits,
            network_target: nbits_to_target(nbits),
            cfg,
            inner: Mutex::new(inner),
            changed,
        });
        {
            let mut g = shared.inner.lock();
            shared.install_job(&mut g, true);
        }
        let mut tasks = vec![tokio::spawn(accept_loop(Arc::downgrade(&shared), listener))];
        if let Some(iv) = shared.cfg.job_interval.filter(|d| !d.is_zero()) {
            let weak = Arc::downgrade(&shared);
            tasks.push(tokio::spawn(async move {
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + iv, iv);
                loop {
                    t.tick().await;
                    let Some(s) = weak.upgrade() else { return };
                    s.new_job(false);
                }
            }));
        }
        Ok(MockPool {
            shared,
            addr,
            tasks,
        })
    }

    /// The address the pool listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PoolStats {
        self.shared.inner.lock().stats.clone()
    }

    /// A snapshot of the recorded submits (most recent `max_records`).
    pub fn submits(&self) -> Vec<SubmitRecord> {
        self.shared.inner.lock().records.iter().cloned().collect()
    }

    /// The job most recently created.
    pub fn current_job(&self) -> Job {
        self.shared.inner.lock().current.job.clone()
    }

    /// The difficulty new connections get (the last one set).
    pub fn difficulty(&self) -> Difficulty {
        self.shared.inner.lock().difficulty.clone()
    }

    /// Extranonce1 (hex) of every live subscribed connection.
    pub fn extranonce1s(&self) -> Vec<String> {
        let g = self.shared.inner.lock();
        g.conns
            .values()
            .filter(|c| c.subscribed)
            .map(|c| hex::encode(&c.en1))
            .collect()
    }

    /// Create a job and send it to every subscribed, authorized connection. With
    /// `clean = true` every earlier job becomes stale (error 21). Returns the job id.
    pub fn new_job(&self, clean: bool) -> String {
        self.shared.new_job(clean)
    }

    /// Send `mining.set_difficulty` to every live session now; shares are then accepted if
    /// they meet either this difficulty or the one their job was sent with.
    pub fn set_difficulty(&self, d: Difficulty) {
        let d = d.wire_normalized();
        let line: Arc<str> = Arc::from(wire::notification_line(
            "mining.set_difficulty",
            json!([d.to_json()]),
        ));
        let mut g = self.shared.inner.lock();
        g.difficulty = d.clone();
        for c in g.conns.values_mut() {
            c.diff_latest = d.clone();
            if c.primed && !self.shared.cfg.silent {
                let _ = c.tx.send(line.clone());
            }
        }
        drop(g);
        self.shared.bump();
    }

    /// Change the version-rolling mask of every session that negotiated one
    /// (`mining.set_version_mask`): from now on this pool judges their shares with `mask`,
    /// so a header rolled outside it no longer hashes to what the miner found.
    pub fn set_version_mask(&self, mask: u32) {
        let line: Arc<str> = Arc::from(wire::notification_line(
            "mining.set_version_mask",
            json!([format!("{mask:08x}")]),
        ));
        let mut g = self.shared.inner.lock();
        for c in g.conns.values_mut() {
            if c.mask != 0 {
                c.mask = mask;
                let _ = c.tx.send(line.clone());
            }
        }
    }

    /// Send a raw line (a newline is added if missing) to every connection, e.g.
    /// `{"id":null,"method":"client.reconnect","params":[]}`.
    pub fn send_all(&self, line: &str) {
        let mut l = line.to_string();
        if !l.ends_with('\n') {
            l.push('\n');
        }
        let l: Arc<str> = Arc::from(l);
        let g = self.shared.inner.lock();
        for c in g.conns.values() {
            let _ = c.tx.send(l.clone());
        }
    }

    /// Wait until `pred` holds for the stats, up to `timeout`.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&PoolStats) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<PoolStats> {
        crate::wait::until(
            "mock pool",
            &self.shared.changed,
            || self.stats(),
            pred,
            timeout,
        )
        .await
    }

    /// Close every connection at once but keep listening, like a pool that restarts its
    /// sessions (submits still unanswered stay unanswered).
    pub fn drop_connections(&self) {
        let mut g = self.shared.inner.lock();
        for (_, c) in g.conns.drain() {
            if let Some(a) = c.abort {
                a.abort();
            }
        }
        g.stats.connections_current = 0;
        drop(g);
        self.shared.bump();
    }

    /// Close the listener and every connection at once, like a crashed pool.
    pub fn kill(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.inner.lock().killed = true;
        self.drop_connections();
    }
}

impl Drop for MockPool {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn bind_with_retry(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        match sock.bind(addr).and_then(|()| sock.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && addr.port() != 0
                    && tokio::time::Instant::now() < deadline =>
            {
                // The previous pool's listener closes asynchronously after kill().
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn accept_loop(shared: Weak<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        let Some(s) = shared.upgrade() else { return };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                match s.cfg.tls.clone() {
                    None => s.spawn_conn(stream),
                    Some(config) => {
                        // The handshake in its own task: a slow client holds up no one.
                        let pool = Arc::downgrade(&s);
                        tokio::spawn(async move {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config);
                            let handshake = acceptor.accept(stream);
                            let Ok(Ok(tls)) =
                                tokio::time::timeout(Duration::from_secs(10), handshake).await
                            else {
                                if let Some(pool) = pool.upgrade() {
                                    pool.tls_failed();
                                }
                                return;
                            };
                            if let Some(pool) = pool.upgrade() {
                                pool.spawn_conn(tls);
                            }
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "mock pool accept failed");
                drop(s);
                // e.g. EMFILE: back off instead of spinning
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn placeholder_job() -> Job {
    Job {
        job_id: String::new(),
        prevhash_hex: "00".repeat(32),
        prevhash_header: [0; 32],
        coinb1: vec![],
        coinb2: vec![],
        merkle_branch: vec![],
        version: 0,
        nbits: 0,
        ntime: 0,
        clean_jobs: true,
    }
}

fn now_secs() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn push_varint(v: &mut Vec<u8>, n: usize) {
    if n < 0xfd {
        v.push(n as u8);
    } else {
        v.push(0xfd);
        v.extend_from_slice(&(n as u16).to_le_bytes());
    }
}

enum SubmitOutcome {
    Accepted,
    Rejected(i64, &'static str),
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Build a realistic job: a coinbase shaped like a real one (BIP34 height push in the
    /// scriptSig, where the extranonces go, then a payout and a witness commitment output).
    fn install_job(&self, g: &mut Inner, clean: bool) -> String {
        let mut rng = rand::rng();
        if clean {
            g.height = g.height.wrapping_add(1);
            g.prevhash = rng.random();
        }
        g.job_counter = g.job_counter.wrapping_add(1);
        let job_id = format!("{:x}", g.job_counter);
        let tag = b"/loka-sim/";
        let script_len = 4 + self.cfg.extranonce1_size + self.cfg.extranonce2_size + 4 + tag.len();
        let mut coinb1 = Vec::with_capacity(64);
        coinb1.extend_from_slice(&1u32.to_le_bytes()); // tx version
        coinb1.push(1); // input count
        coinb1.extend_from_slice(&[0u8; 32]); // null prevout
        coinb1.extend_from_slice(&0xffff_ffffu32.to_le_bytes());
        push_varint(&mut coinb1, script_len);
        coinb1.push(3); // BIP34: push 3 bytes of height
        coinb1.extend_from_slice(&g.height.to_le_bytes()[..3]);
        let mut coinb2 = Vec::with_capacity(128);
        coinb2.extend_from_slice(&rng.random::<[u8; 4]>());
        coinb2.extend_from_slice(tag);
        coinb2.extend_from_slice(&0xffff_ffffu32.to_le_bytes()); // sequence
        coinb2.push(2); // outputs
        let value: u64 = 312_500_000 + rng.random_range(0..50_000_000);
        coinb2.extend_from_slice(&value.to_le_bytes());
        coinb2.extend_from_slice(&[0x16, 0x00, 0x14]); // P2WPKH
        coinb2.extend_from_slice(&rng.random::<[u8; 20]>());
        coinb2.extend_from_slice(&0u64.to_le_bytes());
        coinb2.extend_from_slice(&[0x26, 0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed]); // witness commitment
        coinb2.extend_from_slice(&rng.random::<[u8; 32]>());
        coinb2.extend_from_slice(&0u32.to_le_bytes()); // locktime
        let job = Job {
            job_id: job_id.clone(),
            prevhash_hex: hex::encode(g.prevhash),
            prevhash_header: share::swap_words(&g.prevhash),
            coinb1,
            coinb2,
            merkle_branch: (0..self.cfg.merkle_branches)
                .map(|_| rng.random())
                .collect(),
            version: 0x2000_0000,
            nbits: self.nbits,
            ntime: now_secs(),
            clean_jobs: clean,
        };
        let line = wire::notification_line("mining.notify", job.to_notify_params());
        let clean_line = {
            let mut j = job.clone();
            j.clean_jobs = true;
            wire::notification_line("mining.notify", j.to_notify_params())
        };
        let pj = Arc::new(PoolJob {
            job,
            line: Arc::from(line),
            clean_line: Arc::from(clean_line),
            seen: Mutex::new(HashSet::new()),
        });
        if clean {
            g.jobs.clear();
            g.job_order.clear();
        }
        g.jobs.insert(job_id.clone(), pj.clone());
        g.job_order.push_back(job_id.clone());
        while g.job_order.len() > MAX_JOBS {
            if let Some(old) = g.job_order.pop_front() {
                g.jobs.remove(&old);
            }
        }
        g.current = pj;
        g.stats.jobs_created += 1;
        job_id
    }

    fn new_job(&self, clean: bool) -> String {
        let mut g = self.inner.lock();
        if g.killed {
            return String::new();
        }
        let id = self.install_job(&mut g, clean);
        let cur = g.current.clone();
        let mut sent = 0;
        let Inner { conns, jobs, .. } = &mut *g;
        for c in conns.values_mut() {
            if c.primed && !self.cfg.silent {
                remember_job_diff(c, &id, jobs);
                if c.tx.send(cur.line.clone()).is_ok() {
                    sent += 1;
                }
            }
        }
        g.stats.notifies_sent += sent;
        drop(g);
        self.bump();
        id
    }

    fn tls_failed(&self) {
        self.inner.lock().stats.tls_handshake_failures += 1;
        self.bump();
    }

    fn spawn_conn<S>(self: &Arc<Self>, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = self.inner.lock();
        if g.killed {
            return;
        }
        let id = g.next_conn;
        g.next_conn += 1;
        g.en1_counter = g.en1_counter.wrapping_add(1);
        let n = self.cfg.extranonce1_size;
        let en1 = if n == 0 {
            vec![]
        } else {
            let b = g.en1_counter.to_be_bytes();
            let mut v = vec![0u8; n.saturating_sub(8)];
            v.extend_from_slice(&b[8usize.saturating_sub(n)..]);
            v
        };
        let session_id = format!("{:08x}{:04x}", rand::rng().random::<u32>(), id & 0xffff);
        let diff_latest = g.difficulty.clone();
        g.conns.insert(
            id,
            Conn {
                tx,
                abort: None,
                session_id,
                en1,
                subscribed: false,
                authorized: HashSet::new(),
                primed: false,
                mask: 0,
                diff_latest,
                job_diffs: HashMap::new(),
            },
        );
        g.stats.connections_current += 1;
        g.stats.connections_total += 1;
        let task = tokio::spawn(run_conn(self.clone(), id, stream, rx));
        if let Some(c) = g.conns.get_mut(&id) {
            c.abort = Some(task.abort_handle());
        }
        drop(g);
        self.bump();
    }

    fn remove_conn(&self, id: u64) {
        let mut g = self.inner.lock();
        if g.conns.remove(&id).is_some() {
            g.stats.connections_current = g.stats.connections_current.saturating_sub(1);
        }
        drop(g);
        self.bump();
    }

    fn protocol_error(&self) {
        self.inner.lock().stats.protocol_errors += 1;
        self.bump();
    }

    /// Handle one request line. `Err(())` closes the connection.
    fn handle_line(&self, conn_id: u64, line: &str) -> Result<Vec<Arc<str>>, ()> {
        if line.trim().is_empty() {
            return Ok(vec![]);
        }
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(line) else {
            self.protocol_error();
            return Err(());
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            // a response from the client; nothing to do
            return Ok(vec![]);
        };
        let empty = Value::Array(vec![]);
        let params = msg.get("params").unwrap_or(&empty);
        let mut out: Vec<Arc<str>> = Vec::new();
        match method {
            "mining.subscribe" => self.on_subscribe(conn_id, &id, &mut out),
            "mining.authorize" => self.on_authorize(conn_id, &id, params, &mut out),
            "mining.configure" => self.on_configure(conn_id, &id, params, &mut out),
            "mining.suggest_difficulty" => {
                self.on_suggest_difficulty(conn_id, &id, params, &mut out)
            }
            "mining.extranonce.subscribe" | "mining.suggest_target" => {
                out.push(wire::result_line(&id, Value::Bool(true)).into())
            }
            "mining.submit" => {
                let line = match self.on_submit(conn_id, params) {
                    SubmitOutcome::Accepted => wire::result_line(&id, Value::Bool(true)),
                    SubmitOutcome::Rejected(code, m) => wire::error_line(&id, code, m),
                };
                if !self.cfg.hold_submits {
                    out.push(line.into());
                }
            }
            _ => {
                if !id.is_null() {
                    out.push(wire::error_line(&id, codes::OTHER, "Unknown method").into());
                }
            }
        }
        Ok(out)
    }

    fn on_suggest_difficulty(
        &self,
        conn_id: u64,
        id: &Value,
        params: &Value,
        out: &mut Vec<Arc<str>>,
    ) {
        let d = params.get(0).and_then(Difficulty::from_json);
        let mut g = self.inner.lock();
        g.stats.suggests += 1;
        g.stats.last_suggested = params.get(0).map(Value::to_string);
        out.push(wire::result_line(id, Value::Bool(d.is_some())).into());
        if let (Some(d), true) = (d, self.cfg.honour_suggest_difficulty) {
            let d = d.wire_normalized();
            if let Some(c) = g.conns.get_mut(&conn_id) {
                c.diff_latest = d.clone();
                // Like set_difficulty: it applies to the jobs sent from now on.
                if c.primed && !self.cfg.silent {
                    out.push(
                        wire::notification_line("mining.set_difficulty", json!([d.to_json()]))
                            .into(),
                    );
                }
            }
        }
        drop(g);
        self.bump();
    }

    fn on_subscribe(&self, conn_id: u64, id: &Value, out: &mut Vec<Arc<str>>) {
        let mut g = self.inner.lock();
        g.stats.subscribes += 1;
        let Inner {
            conns,
            jobs,
            current,
            stats,
            ..
        } = &mut *g;
        let Some(c) = conns.get_mut(&conn_id) else {
            return;
        };
        c.subscribed = true;
        let sid = c.session_id.clone();
        out.push(
            wire::result_line(
                id,
                json!([
                    [["mining.set_difficulty", sid], ["mining.notify", sid]],
                    hex::encode(&c.en1),
                    self.cfg.extranonce2_size
                ]),
            )
            .into(),
        );
        if !c.authorized.is_empty() && !c.primed {
            self.prime(c, current, jobs, stats, out);
        }
        drop(g);
        self.bump();
    }

    fn on_authorize(&self, conn_id: u64, id: &Value, params: &Value, out: &mut Vec<Arc<str>>) {
        let user = params.get(0).and_then(Value::as_str).unwrap_or("");
        let ok = !user.is_empty()
            && self
                .cfg
                .allowed_users
                .as_ref()
                .is_none_or(|l| l.iter().any(|u| u == user));
        let mut g = self.inner.lock();
        let Inner {
            conns,
            jobs,
            current,
            stats,
            ..
        } = &mut *g;
        if ok {
            stats.authorizes += 1;
        } else {
            stats.authorize_failures += 1;
        }
        out.push(wire::result_line(id, Value::Bool(ok)).into());
        if let Some(c) = conns.get_mut(&conn_id)
            && ok
        {
            c.authorized.insert(user.to_string());
            if c.subscribed && !c.primed {
                self.prime(c, current, jobs, stats, out);
            }
        }
        drop(g);
        self.bump();
    }

    /// First work for a session: set_difficulty, then the current job with clean_jobs=true.
    fn prime(
        &self,
        c: &mut Conn,
        current: &Arc<PoolJob>,
        jobs: &HashMap<String, Arc<PoolJob>>,
        stats: &mut PoolStats,
        out: &mut Vec<Arc<str>>,
    ) {
        c.primed = true;
        if self.cfg.silent {
            return;
        }
        out.push(
            wire::notification_line("mining.set_difficulty", json!([c.diff_latest.to_json()]))
                .into(),
        );
        remember_job_diff(c, &current.job.job_id, jobs);
        out.push(current.clean_line.clone());
        stats.notifies_sent += 1;
    }

    fn on_configure(&self, conn_id: u64, id: &Value, params: &Value, out: &mut Vec<Arc<str>>) {
        let exts: Vec<&str> = params
            .get(0)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let opts = params.get(1);
        let mut result = Map::new();
        let mut g = self.inner.lock();
        g.stats.configures += 1;
        for ext in exts {
            if ext == "version-rolling" {
                match self.cfg.version_rolling_mask {
                    Some(pool_mask) => {
                        let req = opts
                            .and_then(|o| o.get("version-rolling.mask"))
                            .and_then(Value::as_str)
                            .and_then(crate::share::parse_u32_hex)
                            .unwrap_or(u32::MAX);
                        let mask = pool_mask & req;
                        if let Some(c) = g.conns.get_mut(&conn_id) {
                            c.mask = mask;
                        }
                        result.insert("version-rolling".into(), Value::Bool(true));
                        result.insert(
                            "version-rolling.mask".into(),
                            Value::from(format!("{mask:08x}")),
                        );
                    }
                    None => {
                        result.insert("version-rolling".into(), Value::Bool(false));
                    }
                }
            } else {
                result.insert(ext.to_string(), Value::Bool(false));
            }
        }
        drop(g);
        self.bump();
        out.push(wire::result_line(id, Value::Object(result)).into());
    }

    fn on_submit(&self, conn_id: u64, params: &Value) -> SubmitOutcome {
        let p = params.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let text = |i: usize| -> String {
            match p.get(i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            }
        };
        let mut rec = SubmitRecord {
            at: SystemTime::now(),
            connection_id: conn_id,
            worker: text(0),
            job_id: text(1),
            extranonce1: String::new(),
            extranonce2: text(2),
            ntime: text(3),
            nonce: text(4),
            version_bits: p.get(5).map(|_| text(5)),
            version: None,
            hash: None,
            difficulty: 0.0,
            share_difficulty: None,
            accepted: false,
            error_code: None,
            block_candidate: false,
        };
        let outcome = self.judge(conn_id, p, &mut rec);
        let mut g = self.inner.lock();
        g.stats.submits += 1;
        match outcome {
            SubmitOutcome::Accepted => {
                rec.accepted = true;
                g.stats.accepted += 1;
                if rec.block_candidate {
                    g.stats.block_candidates += 1;
                }
            }
            SubmitOutcome::Rejected(code, _) => {
                rec.error_code = Some(code);
                *g.stats.rejected.entry(code).or_insert(0) += 1;
            }
        }
        if self.cfg.max_records > 0 {
            if g.records.len() >= self.cfg.max_records {
                g.records.pop_front();
            }
            g.records.push_back(rec);
        }
        drop(g);
        self.bump();
        outcome
    }

    fn judge(&self, conn_id: u64, p: &[Value], rec: &mut SubmitRecord) -> SubmitOutcome {
        use SubmitOutcome::Rejected;
        // Gather what is needed under the lock, hash outside it.
        let (en1, mask, job, diff) = {
            let g = self.inner.lock();
            let Some(c) = g.conns.get(&conn_id) else {
                return Rejected(codes::OTHER, "Connection closed");
            };
            rec.extranonce1 = hex::encode(&c.en1);
            rec.difficulty = c.diff_latest.as_f64();
            if self.cfg.reject_all {
                return Rejected(codes::LOW_DIFFICULTY, "Rejected (pool rejects every share)");
            }
            if p.len() < 5 || p.len() > 6 || !p[..5].iter().all(Value::is_string) {
                return Rejected(codes::OTHER, "Malformed submit");
            }
            if !c.subscribed {
                return Rejected(codes::NOT_SUBSCRIBED, "Not subscribed");
            }
            if !c.authorized.contains(&rec.worker) {
                return Rejected(codes::UNAUTHORIZED, "Unauthorized worker");
            }
            let Some(job) = g.jobs.get(&rec.job_id).cloned() else {
                return Rejected(codes::JOB_NOT_FOUND, "Job not found (=stale)");
            };
            // the easier of the job's difficulty and the latest one sent
            let job_diff = c.job_diffs.get(&rec.job_id).unwrap_or(&c.diff_latest);
            let diff = if job_diff.target() > c.diff_latest.target() {
                job_diff.clone()
            } else {
                c.diff_latest.clone()
            };
            (c.en1.clone(), c.mask, job, diff)
        };
        rec.difficulty = diff.as_f64();
        let submitted = share::Submitted {
            extranonce2: &rec.extranonce2,
            ntime: &rec.ntime,
            nonce: &rec.nonce,
            version_bits: rec.version_bits.as_deref(),
        };
        let rules = share::PoolRules {
            extranonce2_size: self.cfg.extranonce2_size,
            version_mask: mask,
            ntime_window: self.cfg.ntime_window,
        };
        let judged = match share::judge(&job.job, &en1, &submitted, &rules, &diff) {
            Ok(j) => j,
            Err(share::Refused(code, message)) => return Rejected(code, message),
        };
        let hash = judged.hash;
        rec.version = Some(share::u32_hex(judged.version));
        rec.hash = Some(hash_display_hex(&hash));
        rec.share_difficulty = Some(share::hash_difficulty(&hash));
        if !judged.meets {
            return Rejected(codes::LOW_DIFFICULTY, "Low difficulty share");
        }
        let h = share::hash_to_u256(&hash);
        if !job.seen.lock().insert(hash) {
            return Rejected(codes::DUPLICATE, "Duplicate share");
        }
        rec.block_candidate = h <= self.network_target;
        SubmitOutcome::Accepted
    }
}

fn remember_job_diff(c: &mut Conn, job_id: &str, jobs: &HashMap<String, Arc<PoolJob>>) {
    if c.job_diffs.len() >= 2 * MAX_JOBS {
        c.job_diffs.retain(|k, _| jobs.contains_key(k));
    }
    c.job_diffs
        .insert(job_id.to_string(), c.diff_latest.clone());
}

async fn run_conn<S>(
    shared: Arc<Shared>,
    id: u64,
    stream: S,
    mut rx: mpsc::UnboundedReceiver<Arc<str>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = LineReader::with_limit(rd, shared.cfg.max_line);
    let mut writer = BufWriter::new(wr);
    loop {
        tokio::select! {
            line = reader.next_line() => {
                let line = match line {
                    Ok(Some(l)) => l,
                    Ok(None) => break,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::InvalidData {
                            shared.protocol_error();
                        }
                        break;
                    }
                };
                let Ok(out) = shared.handle_line(id, &line) else { break };
                if write_all(&mut writer, &out).await.is_err() {
                    break;
                }
            }
            msg = rx.recv() => {
                let Some(first) = msg else { break };
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                if write_all(&mut writer, &batch).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown().await;
    shared.remove_conn(id);
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    lines: &[Arc<str>],
) -> io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    for l in lines {
        w.write_all(l.as_bytes()).await?;
    }
    w.flush().await
}
