//! `loka-bench`: Stratum V1 load generator.
//!
//! Opens N cheap client connections (one tokio task each, no hashing thread) to a Stratum
//! endpoint, subscribes and authorizes them, and submits valid shares at a total rate,
//! searching nonces for the current (tiny) difficulty in the task. Prints one JSON object.
//! See the crate README for examples.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use loka_sim::share::{Difficulty, HeaderHasher, Job, u32_hex};
use loka_sim::wire::{self, LineReader};
use loka_sim::{MockPool, MockPoolConfig};
use parking_lot::Mutex;
use primitive_types::U256;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loka-bench",
    about = "Stratum V1 load generator: N connections submitting valid shares at a total rate",
    long_about = None
)]
struct Args {
    /// Stratum endpoint host:port (a proxy or a pool).
    #[arg(long)]
    target: Option<String>,
    /// Start an in-process MockPool and target it (baseline without a proxy).
    #[arg(long)]
    mock_pool: bool,
    /// Only run a MockPool on this address (e.g. 127.0.0.1:3334) until --duration or Ctrl-C.
    #[arg(long, value_name = "ADDR")]
    serve_pool: Option<String>,
    /// Difficulty of the MockPool started by --mock-pool / --serve-pool.
    #[arg(long, default_value = "1e-7")]
    pool_difficulty: String,
    /// Seconds between new (non-clean) jobs of that MockPool (default: none; 1 s with --hold).
    #[arg(long)]
    pool_job_interval: Option<f64>,
    /// Number of connections.
    #[arg(long, default_value_t = 10)]
    connections: u64,
    /// Total shares per second, spread evenly over the connections (0 = no submits).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Submits per write: every `burst` slots a connection sends that many shares at once
    /// (a pipelining client: the endpoint reads them together and may answer them in one
    /// write). The total rate is unchanged.
    #[arg(long, default_value_t = 1)]
    burst: u32,
    /// Seconds to run, default 10 (then submitting stops and in-flight replies get 2 s).
    /// With --serve-pool the default is until Ctrl-C.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds over which connections are opened.
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Worker names are `<prefix>.w<index>`.
    #[arg(long, default_value = "bench")]
    username_prefix: String,
    #[arg(long, default_value = "x")]
    password: String,
    /// Split the connections over this many child processes (about 19k sockets each).
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// Only hold the connections (subscribed + authorized), receive jobs, measure fan-out.
    #[arg(long)]
    hold: bool,
    /// Negotiate BIP310 version rolling and submit version bits.
    #[arg(long)]
    version_rolling: bool,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Tokio worker threads (default: CPU count).
    #[arg(long)]
    threads: Option<usize>,
    /// Also report the replies per slot of this many milliseconds since the start: how many,
    /// how many slower than --timeline-slow-us, and the slowest (one process only; 0 = off).
    /// Tells latency spikes apart from a uniformly slower path.
    #[arg(long, default_value_t = 0)]
    timeline_ms: u64,
    /// The "slow" threshold of --timeline-ms, in microseconds.
    #[arg(long, default_value_t = 1000)]
    timeline_slow_us: u64,
    /// Speak TLS, trusting the certificate authorities in this PEM file.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<String>,
    /// The name the endpoint's certificate must carry (with --tls-ca).
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    #[arg(long, hide = true, default_value_t = 0)]
    worker_offset: u64,
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct Quantiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
    count: u64,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct Report {
    mode: String,
    target: String,
    processes: u32,
    connections_target: u64,
    connections_established: u64,
    connect_errors: u64,
    duration_s: f64,
    rate_target: f64,
    submitted: u64,
    accepted: u64,
    /// Rejections by Stratum error code.
    rejected: BTreeMap<String, u64>,
    /// Submits without a reply before the connection closed.
    unanswered: u64,
    accepted_per_sec: f64,
    latency_us: Option<Quantiles>,
    notify_fanout_ms: Option<Quantiles>,
    /// Each job's fan-out (the spread in ms, per process, of the jobs after each
    /// connection's first), ascending: for pooling runs before taking a quantile.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    notify_fanout_jobs_ms: Vec<f64>,
    /// From starting the TCP connect to the TLS session being up (TCP alone without TLS).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    connect_ms: Option<Quantiles>,
    jobs_received: u64,
    disconnects: u64,
    reconnect_requests: u64,
    /// Submit slots skipped because no work had arrived yet.
    skipped_no_work: u64,
    /// Submit slots where no share was found within the search budget.
    shares_not_found: u64,
    /// Submit slots skipped because the task fell behind schedule.
    missed_slots: u64,
    difficulty: Option<f64>,
    hashes: u64,
    hash_capacity_mhs: f64,
    errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    timeline: Option<Timeline>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    latency_hist: Option<Vec<(u64, u64)>>,
}

/// Replies by the slot (of `slot_ms`) in which their submit was sent; slot 0 starts at
/// `start_unix_ms`, so slots can be lined up with other processes' logs.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct Timeline {
    start_unix_ms: u64,
    slot_ms: u64,
    slow_us: u64,
    replies: Vec<u64>,
    slow: Vec<u64>,
    max_us: Vec<u64>,
}

/// The live counters behind [`Timeline`].
struct TimelineSlots {
    start: Instant,
    start_unix_ms: u64,
    slot: Duration,
    slow_us: u64,
    replies: Vec<AtomicU64>,
    slow: Vec<AtomicU64>,
    max_us: Vec<AtomicU64>,
}

impl TimelineSlots {
    fn new(start: Instant, slot_ms: u64, slow_us: u64, span: Duration) -> Self {
        let slot = Duration::from_millis(slot_ms.max(1));
        // The run, plus the 2 s given to replies in flight and some slack.
        let n = ((span + Duration::from_secs(5)).as_millis() / slot.as_millis()) as usize + 1;
        let zeros = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        let start_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        TimelineSlots {
            start,
            start_unix_ms,
            slot,
            slow_us,
            replies: zeros(),
            slow: zeros(),
            max_us: zeros(),
        }
    }

    fn record(&self, sent: Instant, us: u64) {
        let i =
            (sent.saturating_duration_since(self.start).as_nanos() / self.slot.as_nanos()) as usize;
        let Some(replies) = self.replies.get(i) else {
            return;
        };
        replies.fetch_add(1, Ordering::Relaxed);
        if us > self.slow_us {
            self.slow[i].fetch_add(1, Ordering::Relaxed);
        }
        self.max_us[i].fetch_max(us, Ordering::Relaxed);
    }

    fn report(&self) -> Timeline {
        let load = |v: &[AtomicU64]| {
            v.iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        let replies = load(&self.replies);
        let used = replies.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        let cut = |mut v: Vec<u64>| {
            v.truncate(used);
            v
        };
        Timeline {
            start_unix_ms: self.start_unix_ms,
            slot_ms: self.slot.as_millis() as u64,
            slow_us: self.slow_us,
            replies: cut(replies),
            slow: cut(load(&self.slow)),
            max_us: cut(load(&self.max_us)),
        }
    }
}

const SHARDS: usize = 16;
const SEARCH_CHUNK: u32 = 4096;
const MAX_HASHES_PER_SHARE: u64 = 1 << 23;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn hist_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

fn quantiles(h: &Histogram<u64>, scale: f64) -> Option<Quantiles> {
    if h.is_empty() {
        return None;
    }
    Some(Quantiles {
        p50: h.value_at_quantile(0.5) as f64 / scale,
        p99: h.value_at_quantile(0.99) as f64 / scale,
        p999: h.value_at_quantile(0.999) as f64 / scale,
        max: h.max() as f64 / scale,
        mean: h.mean() / scale,
        count: h.len(),
    })
}

struct FanoutEntry {
    first: Instant,
    last: Instant,
    receivers: u64,
}

struct Ctx {
    target: String,
    args: Args,
    end: Instant,
    interval: Option<Duration>,
    established: AtomicU64,
    connect_errors: AtomicU64,
    submitted: AtomicU64,
    accepted: AtomicU64,
    unanswered: AtomicU64,
    jobs_received: AtomicU64,
    disconnects: AtomicU64,
    reconnect_requests: AtomicU64,
    skipped_no_work: AtomicU64,
    shares_not_found: AtomicU64,
    missed_slots: AtomicU64,
    hashes: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    latency: Vec<Mutex<Histogram<u64>>>,
    /// Connect (and TLS handshake) times in µs.
    connect: Mutex<Histogram<u64>>,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    timeline: Option<TimelineSlots>,
    fanout: Mutex<HashMap<String, FanoutEntry>>,
    difficulty: Mutex<Option<f64>>,
    capacity_hps: f64,
    warned_difficulty: AtomicBool,
}

impl Ctx {
    fn error(&self, msg: impl Into<String>) {
        *self.errors.lock().entry(msg.into()).or_insert(0) += 1;
    }

    fn check_difficulty(&self, d: &Difficulty) {
        *self.difficulty.lock() = Some(d.as_f64());
        if self.args.hold || self.args.rate <= 0.0 {
            return;
        }
        let needed = self.args.rate * d.expected_hashes();
        if needed > 0.7 * self.capacity_hps && !self.warned_difficulty.swap(true, Ordering::Relaxed)
        {
            self.error(format!(
                "difficulty {} needs ~{:.0} hashes per share: {} shares/s needs ~{:.1} MH/s but this process hashes ~{:.1} MH/s; lower --rate or the endpoint's difficulty",
                d,
                d.expected_hashes(),
                self.args.rate,
                needed / 1e6,
                self.capacity_hps / 1e6
            ));
        }
    }
}

fn main() {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit_fatal(&args, format!("cannot start runtime: {e}"));
            std::process::exit(1);
        }
    };
    let res = rt.block_on(run(args.clone(), threads));
    match res {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, &report);
            let _ = writeln!(out);
        }
        Err(e) => {
            emit_fatal(&args, format!("{e:#}"));
            std::process::exit(1);
        }
    }
}

fn emit_fatal(args: &Args, msg: String) {
    let r = Report {
        mode: mode(args).into(),
        connections_target: args.connections,
        errors: vec![msg],
        ..Report::default()
    };
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
}

fn mode(args: &Args) -> &'static str {
    if args.serve_pool.is_some() {
        "serve-pool"
    } else if args.hold {
        "hold"
    } else {
        "submit"
    }
}

fn pool_config(args: &Args, addr: Option<&str>) -> anyhow::Result<MockPoolConfig> {
    let mut cfg = MockPoolConfig::default()
        .with_difficulty(&args.pool_difficulty)
        .context("--pool-difficulty")?;
    if let Some(a) = addr {
        cfg.addr = Some(a.parse().context("--serve-pool address")?);
    }
    let iv = args.pool_job_interval.or(args.hold.then_some(1.0));
    cfg.job_interval = iv.filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    cfg.max_records = 10_000;
    Ok(cfg)
}

/// Seconds given on the command line must be finite and reasonable (no panics later).
fn check_secs(v: Option<f64>, name: &str) -> anyhow::Result<()> {
    match v {
        Some(x) if !(0.0..=1e7).contains(&x) => bail!("{name} must be between 0 and 1e7 seconds"),
        _ => Ok(()),
    }
}

async fn run(args: Args, threads: usize) -> anyhow::Result<Report> {
    check_secs(args.duration, "--duration")?;
    check_secs(Some(args.ramp), "--ramp")?;
    check_secs(Some(args.connect_timeout), "--connect-timeout")?;
    check_secs(args.pool_job_interval, "--pool-job-interval")?;
    if args.burst == 0 {
        bail!("--burst must be at least 1 (submits per write)");
    }
    if let Some(addr) = &args.serve_pool {
        return serve_pool(&args, addr).await;
    }
    let mut _pool = None;
    let target = match (&args.target, args.mock_pool) {
        (_, true) => {
            let pool = MockPool::start(pool_config(&args, None)?).await?;
            let a = pool.addr().to_string();
            _pool = Some(pool);
            a
        }
        (Some(t), false) => t.clone(),
        (None, false) => bail!("give --target HOST:PORT, --mock-pool or --serve-pool ADDR"),
    };
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be ≥ 0");
    }
    if args.rate > 0.0 && args.connections as f64 / args.rate > 1e6 {
        bail!("--rate is too small for {} connections", args.connections);
    }
    if args.timeline_ms > 0 && args.processes > 1 {
        bail!("--timeline-ms needs --processes 1 (each process has its own clock)");
    }
    if args.timeline_ms > 3_600_000 {
        bail!("--timeline-ms must be at most 3600000 (one hour)");
    }
    let report = if args.processes > 1 && !args.child {
        run_children(&args, &target, threads).await?
    } else {
        run_local(&args, &target, threads).await
    };
    Ok(report)
}

async fn serve_pool(args: &Args, addr: &str) -> anyhow::Result<Report> {
    let pool = MockPool::start(pool_config(args, Some(addr))?).await?;
    println!("{}", json!({"pool_addr": pool.addr().to_string()}));
    let _ = std::io::stdout().flush();
    match args.duration.filter(|d| *d > 0.0) {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(d)) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    let s = pool.stats();
    Ok(Report {
        mode: "serve-pool".into(),
        target: pool.addr().to_string(),
        processes: 1,
        connections_established: s.connections_total,
        submitted: s.submits,
        accepted: s.accepted,
        rejected: s
            .rejected
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        jobs_received: s.jobs_created,
        ..Report::default()
    })
}

/// Rough single-thread hash speed, to warn when the difficulty is too high for the rate.
fn measure_hash_speed() -> f64 {
    let h = HeaderHasher::new(&[7u8; 80]);
    let n = 50_000u32;
    let t = std::time::Instant::now();
    let mut acc = 0u8;
    for i in 0..n {
        acc ^= h.hash(i)[0];
    }
    std::hint::black_box(acc);
    f64::from(n) / t.elapsed().as_secs_f64().max(1e-9)
}

async fn run_local(args: &Args, target: &str, threads: usize) -> Report {
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(10.0).max(0.0));
    let n = args.connections;
    let interval = (args.rate > 0.0 && !args.hold)
        .then(|| Duration::from_secs_f64(n as f64 * f64::from(args.burst) / args.rate));
    let capacity_hps = measure_hash_speed() * threads as f64;
    let tls = match &args.tls_ca {
        None => None,
        Some(path) => match tls_connector(path, &args.tls_name) {
            Ok(c) => Some(c),
            Err(e) => {
                return Report {
                    mode: mode(args).into(),
                    connections_target: n,
                    errors: vec![e],
                    ..Report::default()
                };
            }
        },
    };
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        target: target.to_string(),
        args: args.clone(),
        end: start + duration,
        interval,
        established: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        submitted: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        unanswered: AtomicU64::new(0),
        jobs_received: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        reconnect_requests: AtomicU64::new(0),
        skipped_no_work: AtomicU64::new(0),
        shares_not_found: AtomicU64::new(0),
        missed_slots: AtomicU64::new(0),
        hashes: AtomicU64::new(0),
        rejected: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        latency: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
        connect: Mutex::new(new_hist()),
        tls,
        timeline: (args.timeline_ms > 0)
            .then(|| TimelineSlots::new(start, args.timeline_ms, args.timeline_slow_us, duration)),
        fanout: Mutex::new(HashMap::new()),
        difficulty: Mutex::new(None),
        capacity_hps,
        warned_difficulty: AtomicBool::new(false),
    });
    if let Some(limit) = open_files_limit()
        && n + 64 > limit
    {
        ctx.error(format!(
            "{n} connections but the open-files limit is {limit}: use --processes or raise ulimit -n"
        ));
    }
    let ramp = Duration::from_secs_f64(args.ramp.max(0.0));
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + ramp.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(conn_task(ctx.clone(), i, at)));
    }
    for t in tasks {
        if let Err(e) = t.await {
            ctx.error(format!("connection task failed: {e}"));
        }
    }
    let elapsed = duration.as_secs_f64();
    let mut lat = new_hist();
    for s in &ctx.latency {
        let _ = lat.add(&*s.lock());
    }
    let mut fan = new_hist();
    let mut fan_jobs = Vec::new();
    for e in ctx.fanout.lock().values() {
        if e.receivers >= 2 {
            let us = (e.last - e.first).as_micros().min(u128::from(u64::MAX)) as u64;
            fan.saturating_record(us.max(1));
            fan_jobs.push(us as f64 / 1000.0);
        }
    }
    fan_jobs.sort_by(f64::total_cmp);
    let accepted = ctx.accepted.load(Ordering::Relaxed);
    let errors = ctx
        .errors
        .lock()
        .iter()
        .map(|(m, c)| {
            if *c > 1 {
                format!("{m} (x{c})")
            } else {
                m.clone()
            }
        })
        .collect();
    Report {
        mode: mode(args).into(),
        target: target.to_string(),
        processes: 1,
        connections_target: n,
        connections_established: ctx.established.load(Ordering::Relaxed),
        connect_errors: ctx.connect_errors.load(Ordering::Relaxed),
        duration_s: elapsed,
        rate_target: if args.hold { 0.0 } else { args.rate },
        submitted: ctx.submitted.load(Ordering::Relaxed),
        accepted,
        rejected: ctx.rejected.lock().clone(),
        unanswered: ctx.unanswered.load(Ordering::Relaxed),
        accepted_per_sec: if elapsed > 0.0 {
            accepted as f64 / elapsed
        } else {
            0.0
        },
        latency_us: quantiles(&lat, 1.0),
        notify_fanout_ms: quantiles(&fan, 1000.0),
        notify_fanout_jobs_ms: fan_jobs,
        connect_ms: quantiles(&ctx.connect.lock(), 1000.0),
        jobs_received: ctx.jobs_received.load(Ordering::Relaxed),
        disconnects: ctx.disconnects.load(Ordering::Relaxed),
        reconnect_requests: ctx.reconnect_requests.load(Ordering::Relaxed),
        skipped_no_work: ctx.skipped_no_work.load(Ordering::Relaxed),
        shares_not_found: ctx.shares_not_found.load(Ordering::Relaxed),
        missed_slots: ctx.missed_slots.load(Ordering::Relaxed),
        difficulty: *ctx.difficulty.lock(),
        hashes: ctx.hashes.load(Ordering::Relaxed),
        hash_capacity_mhs: capacity_hps / 1e6,
        errors,
        timeline: ctx.timeline.as_ref().map(TimelineSlots::report),
        latency_hist: args.child.then(|| hist_pairs(&lat)),
    }
}

fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

struct ConnState {
    en1: Option<Vec<u8>>,
    en2_size: usize,
    mask: u32,
    job: Option<Arc<Job>>,
    cur: Option<Difficulty>,
    pending: Option<Difficulty>,
    target: U256,
    en2_counter: u64,
    nonce: u32,
    next_id: u64,
    inflight: HashMap<u64, Instant>,
    notifies: u64,
}

impl ConnState {
    /// Search with the harder of the current and pending difficulty, so the share is valid
    /// whether the endpoint applies a new difficulty at once or at the next job.
    fn retarget(&mut self) {
        let t = |d: &Option<Difficulty>| d.as_ref().map(Difficulty::target);
        self.target = match (t(&self.cur), t(&self.pending)) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => loka_sim::share::diff1_target(),
        };
    }
}

const ID_CONFIGURE: u64 = 1;
const ID_SUBSCRIBE: u64 = 2;
const ID_AUTHORIZE: u64 = 3;

async fn conn_task(ctx: Arc<Ctx>, idx: u64, at: Instant) {
    tokio::time::sleep_until(at).await;
    if Instant::now() >= ctx.end {
        return;
    }
    let timeout = Duration::from_secs_f64(ctx.args.connect_timeout.max(0.1));
    let started = Instant::now();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&ctx.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.connect_errors.fetch_add(1, Ordering::Relaxed);
            ctx.error(format!("connect: {e}"));
            return;
        }
        Err(_) => {
            ctx.connect_errors.fetch_add(1, Ordering::Relaxed);
            ctx.error("connect: timed out");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let outcome = match &ctx.tls {
        None => {
            record_connect(&ctx, started);
            ctx.established.fetch_add(1, Ordering::Relaxed);
            session(&ctx, idx, stream).await
        }
        Some((connector, name)) => {
            let handshake = connector.connect(name.clone(), stream);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(tls)) => {
                    record_connect(&ctx, started);
                    ctx.established.fetch_add(1, Ordering::Relaxed);
                    session(&ctx, idx, tls).await
                }
                Ok(Err(e)) => {
                    ctx.connect_errors.fetch_add(1, Ordering::Relaxed);
                    Err(format!("TLS handshake: {e}"))
                }
                Err(_) => {
                    ctx.connect_errors.fetch_add(1, Ordering::Relaxed);
                    Err("TLS handshake: timed out".into())
                }
            }
        }
    };
    if let Err(e) = outcome {
        ctx.error(e);
    }
}

fn record_connect(ctx: &Ctx, started: Instant) {
    let us = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
    ctx.connect.lock().saturating_record(us.max(1));
}

/// A TLS connector trusting the certificate authorities of a PEM file.
fn tls_connector(
    path: &str,
    name: &str,
) -> Result<
    (
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    ),
    String,
> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("--tls-ca {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--tls-ca {path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--tls-ca {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--tls-ca {path}: no PEM CERTIFICATE block"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| format!("--tls-name {name}: {e}"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

async fn session<S>(ctx: &Ctx, idx: u64, stream: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut reader = LineReader::with_limit_and_capacity(rd, 1 << 20, 2048);
    let user = format!(
        "{}.w{}",
        ctx.args.username_prefix,
        idx + ctx.args.worker_offset
    );
    let mut hello = String::new();
    if ctx.args.version_rolling {
        hello += &wire::request_line(
            &json!(ID_CONFIGURE),
            "mining.configure",
            loka_sim::client::configure_params(0x1fff_e000),
        );
    }
    hello += &wire::request_line(
        &json!(ID_SUBSCRIBE),
        "mining.subscribe",
        json!(["loka-bench/0.1"]),
    );
    hello += &wire::request_line(
        &json!(ID_AUTHORIZE),
        "mining.authorize",
        json!([user, ctx.args.password]),
    );
    wr.write_all(hello.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;

    let mut st = ConnState {
        en1: None,
        en2_size: 0,
        mask: 0,
        job: None,
        cur: None,
        pending: None,
        target: loka_sim::share::diff1_target(),
        en2_counter: 0,
        nonce: 0,
        next_id: 10,
        inflight: HashMap::new(),
        notifies: 0,
    };
    let shard = (idx as usize) % SHARDS;
    let phase: f64 = rand::random();
    let mut next_submit = ctx
        .interval
        .map(|iv| Instant::now() + iv.mul_f64(phase))
        .unwrap_or(ctx.end);
    let mut submitting = true;
    let mut drain_deadline = ctx.end + Duration::from_secs(2);
    loop {
        if !submitting && st.inflight.is_empty() {
            break;
        }
        let can_submit = submitting && ctx.interval.is_some();
        tokio::select! {
            line = reader.next_line() => {
                let now = Instant::now();
                match line {
                    Ok(Some(l)) => on_line(ctx, &mut st, &l, now, shard, &user)?,
                    Ok(None) | Err(_) => {
                        ctx.disconnects.fetch_add(1, Ordering::Relaxed);
                        ctx.unanswered.fetch_add(st.inflight.len() as u64, Ordering::Relaxed);
                        if now < ctx.end {
                            return Err("disconnected by the endpoint".into());
                        }
                        return Ok(());
                    }
                }
            }
            _ = tokio::time::sleep_until(next_submit), if can_submit => {
                let iv = ctx.interval.unwrap_or(Duration::from_secs(1));
                next_submit += iv;
                let now = Instant::now();
                if next_submit + iv < now {
                    // fell behind: skip the missed slots instead of bursting
                    let missed = ((now - next_submit).as_secs_f64() / iv.as_secs_f64()) as u64;
                    ctx.missed_slots.fetch_add(missed, Ordering::Relaxed);
                    next_submit += iv.mul_f64(missed as f64);
                }
                // `run` refused --burst 0. The first line is taken as it is (no copy at --burst 1).
                let mut lines = String::new();
                for _ in 0..ctx.args.burst {
                    if let Some(line) = find_share_line(ctx, &mut st, &user).await {
                        if lines.is_empty() {
                            lines = line;
                        } else {
                            lines.push_str(&line);
                        }
                    }
                }
                if !lines.is_empty() {
                    wr.write_all(lines.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
                }
            }
            _ = tokio::time::sleep_until(ctx.end), if submitting => {
                submitting = false;
                drain_deadline = Instant::now() + Duration::from_secs(2);
            }
            _ = tokio::time::sleep_until(drain_deadline), if !submitting => {
                ctx.unanswered.fetch_add(st.inflight.len() as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

fn on_line(
    ctx: &Ctx,
    st: &mut ConnState,
    line: &str,
    now: Instant,
    shard: usize,
    user: &str,
) -> Result<(), String> {
    if line.trim().is_empty() {
        return Ok(());
    }
    let Ok(msg) = serde_json::from_str::<Value>(line) else {
        return Err(format!(
            "endpoint sent non-JSON: {}",
            line.chars().take(80).collect::<String>()
        ));
    };
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        let params = msg.get("params").unwrap_or(&Value::Null);
        match method {
            "mining.notify" => {
                ctx.jobs_received.fetch_add(1, Ordering::Relaxed);
                st.notifies += 1;
                let job_id = match params.get(0) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => return Err("mining.notify without params".into()),
                };
                if st.notifies > 1 {
                    // the first notify is the session's initial work, not a broadcast
                    let mut f = ctx.fanout.lock();
                    let e = f.entry(job_id).or_insert(FanoutEntry {
                        first: now,
                        last: now,
                        receivers: 0,
                    });
                    e.first = e.first.min(now);
                    e.last = e.last.max(now);
                    e.receivers += 1;
                }
                if !ctx.args.hold {
                    let job = Job::from_notify_params(params)
                        .map_err(|e| format!("bad mining.notify: {e}"))?;
                    if let Some(d) = st.pending.take() {
                        st.cur = Some(d);
                        st.retarget();
                    }
                    st.job = Some(Arc::new(job));
                }
            }
            "mining.set_difficulty" => {
                let d = params
                    .get(0)
                    .and_then(Difficulty::from_json)
                    .ok_or_else(|| format!("bad mining.set_difficulty: {params}"))?;
                ctx.check_difficulty(&d);
                st.pending = Some(d);
                st.retarget();
            }
            "mining.set_extranonce" => {
                if let Some((en1, size)) = loka_sim::client::set_extranonce_params(params) {
                    st.en1 = Some(en1);
                    st.en2_size = size;
                }
            }
            "client.reconnect" => {
                ctx.reconnect_requests.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        return Ok(());
    }
    let id = msg.get("id").and_then(Value::as_u64);
    let result = msg.get("result").unwrap_or(&Value::Null);
    let error = msg.get("error").unwrap_or(&Value::Null);
    match id {
        Some(ID_CONFIGURE) => {
            if let Some(mask) = loka_sim::client::granted_mask(result) {
                st.mask = mask & 0x1fff_e000;
            }
        }
        Some(ID_SUBSCRIBE) => {
            let sub = loka_sim::client::Subscription::from_result(result)
                .map_err(|e| format!("subscribe failed: {e:#} ({error})"))?;
            st.en1 = Some(sub.extranonce1);
            st.en2_size = sub.extranonce2_size;
        }
        Some(ID_AUTHORIZE) => {
            if result != &Value::Bool(true) {
                return Err(format!("authorize refused for {user}: {result} {error}"));
            }
        }
        Some(n) if st.inflight.contains_key(&n) => {
            let sent = st.inflight.remove(&n).unwrap_or(now);
            let us = (now - sent).as_micros().min(u128::from(u64::MAX)) as u64;
            ctx.latency[shard].lock().saturating_record(us.max(1));
            if let Some(t) = &ctx.timeline {
                t.record(sent, us);
            }
            if error.is_null() && result == &Value::Bool(true) {
                ctx.accepted.fetch_add(1, Ordering::Relaxed);
            } else {
                let code = wire::error_code(error).unwrap_or(-1);
                *ctx.rejected.lock().entry(code.to_string()).or_insert(0) += 1;
            }
        }
        _ => ctx.error(format!(
            "reply for unknown id {}",
            msg.get("id").unwrap_or(&Value::Null)
        )),
    }
    Ok(())
}

/// Search for a share at the connection's target and build the submit line.
async fn find_share_line(ctx: &Ctx, st: &mut ConnState, user: &str) -> Option<String> {
    let (Some(job), Some(en1)) = (st.job.clone(), st.en1.clone()) else {
        ctx.skipped_no_work.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    if st.en2_size == 0 {
        ctx.skipped_no_work.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let vroll = (st.mask != 0).then(|| (st.mask & st.mask.wrapping_neg(), st.mask));
    let mut done_total: u64 = 0;
    loop {
        let mut en2 = vec![0u8; st.en2_size];
        let k = st.en2_size.min(8);
        let len = en2.len();
        en2[len - k..].copy_from_slice(&st.en2_counter.to_be_bytes()[8 - k..]);
        let (found, done) = job.search(
            &en1,
            &en2,
            vroll,
            job.ntime,
            &st.target,
            st.nonce,
            SEARCH_CHUNK,
        );
        done_total += u64::from(done);
        ctx.hashes.fetch_add(u64::from(done), Ordering::Relaxed);
        if let Some(f) = found {
            st.nonce = f.nonce.wrapping_add(1);
            if st.nonce == 0 {
                st.en2_counter += 1;
            }
            let id = st.next_id;
            st.next_id += 1;
            let mut p = vec![
                Value::from(user),
                Value::from(job.job_id.clone()),
                Value::from(hex::encode(&en2)),
                Value::from(u32_hex(f.ntime)),
                Value::from(u32_hex(f.nonce)),
            ];
            if let Some(v) = f.version_bits {
                p.push(Value::from(u32_hex(v)));
            }
            st.inflight.insert(id, Instant::now());
            ctx.submitted.fetch_add(1, Ordering::Relaxed);
            return Some(wire::request_line(
                &json!(id),
                "mining.submit",
                Value::Array(p),
            ));
        }
        let (next, wrapped) = st.nonce.overflowing_add(done);
        st.nonce = next;
        if wrapped {
            st.en2_counter += 1;
            st.nonce = 0;
        }
        if done_total >= MAX_HASHES_PER_SHARE {
            ctx.shares_not_found.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        tokio::task::yield_now().await;
    }
}

async fn run_children(args: &Args, target: &str, threads: usize) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("locating own executable")?;
    let p = u64::from(args.processes).min(args.connections).max(1);
    let child_threads = (threads / p as usize).max(1);
    let mut children = Vec::new();
    let mut offset = args.worker_offset;
    for i in 0..p {
        let n = args.connections / p + u64::from(i < args.connections % p);
        let rate = args.rate * n as f64 / args.connections as f64;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("--child")
            .args(["--target", target])
            .args(["--connections", &n.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--duration", &args.duration.unwrap_or(10.0).to_string()])
            .args(["--ramp", &args.ramp.to_string()])
            .args(["--burst", &args.burst.to_string()])
            .args(["--username-prefix", &args.username_prefix])
            .args(["--password", &args.password])
            .args(["--connect-timeout", &args.connect_timeout.to_string()])
            .args(["--threads", &child_threads.to_string()])
            .args(["--worker-offset", &offset.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if args.hold {
            cmd.arg("--hold");
        }
        if args.version_rolling {
            cmd.arg("--version-rolling");
        }
        if let Some(ca) = &args.tls_ca {
            cmd.args(["--tls-ca", ca, "--tls-name", &args.tls_name]);
        }
        offset += n;
        children.push(cmd.spawn().context("spawning a child process")?);
    }
    let limit = Duration::from_secs_f64(args.duration.unwrap_or(10.0) + args.ramp + 60.0);
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stdout);
                match text
                    .lines()
                    .rev()
                    .find_map(|l| serde_json::from_str::<Report>(l).ok())
                {
                    Some(r) => reports.push(r),
                    None => errors.push(format!("child {i}: no report (exit {})", out.status)),
                }
            }
            Ok(Err(e)) => errors.push(format!("child {i}: {e}")),
            Err(_) => errors.push(format!("child {i}: timed out")),
        }
    }
    Ok(merge(args, target, reports, errors))
}

fn merge(args: &Args, target: &str, reports: Vec<Report>, mut errors: Vec<String>) -> Report {
    let mut lat = new_hist();
    let mut fan = new_hist();
    let mut out = Report {
        mode: mode(args).into(),
        target: target.to_string(),
        processes: args.processes,
        connections_target: args.connections,
        duration_s: args.duration.unwrap_or(10.0),
        rate_target: if args.hold { 0.0 } else { args.rate },
        ..Report::default()
    };
    for r in reports {
        out.connections_established += r.connections_established;
        out.connect_errors += r.connect_errors;
        out.submitted += r.submitted;
        out.accepted += r.accepted;
        for (k, v) in r.rejected {
            *out.rejected.entry(k).or_insert(0) += v;
        }
        out.unanswered += r.unanswered;
        out.jobs_received += r.jobs_received;
        out.disconnects += r.disconnects;
        out.reconnect_requests += r.reconnect_requests;
        out.skipped_no_work += r.skipped_no_work;
        out.shares_not_found += r.shares_not_found;
        out.missed_slots += r.missed_slots;
        out.hashes += r.hashes;
        out.hash_capacity_mhs += r.hash_capacity_mhs;
        out.difficulty = out.difficulty.or(r.difficulty);
        for (v, c) in r.latency_hist.unwrap_or_default() {
            let _ = lat.record_n(v.max(1), c);
        }
        // Each job's value in ms with µs precision: back to whole µs exactly.
        for ms in &r.notify_fanout_jobs_ms {
            fan.saturating_record(((ms * 1000.0).round() as u64).max(1));
        }
        out.notify_fanout_jobs_ms.extend(r.notify_fanout_jobs_ms);
        for e in r.errors {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    out.accepted_per_sec = if out.duration_s > 0.0 {
        out.accepted as f64 / out.duration_s
    } else {
        0.0
    };
    out.latency_us = quantiles(&lat, 1.0);
    // fan-out is measured inside each process; merged values are per-process spreads
    out.notify_fanout_ms = quantiles(&fan, 1000.0);
    out.notify_fanout_jobs_ms.sort_by(f64::total_cmp);
    out.errors = errors;
    out
}
