//! Configuration of the Loka Stratum proxy: serde + schemars types and their validation.
//!
//! No IO here: the proxy reads a TOML file and hands the text to [`Config::from_toml`]; the
//! operator builds the same [`Config`] and serialises it into a ConfigMap with
//! [`Config::to_toml`], so what the operator writes is, by construction, what the proxy reads.
//! [`Config::validate`] reports every problem at once, each naming its field.

mod api;
mod backoff;

pub use api::{AdminConfig, EndpointLimit, MetricsConfig, RateLimitConfig, TelemetryConfig};
pub use backoff::Backoff;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub mining: MiningConfig,
    pub vardiff: VardiffConfig,
    pub upstream: UpstreamConfig,
    /// Upstream pools in failover order: the first is the primary.
    pub pools: Vec<PoolConfig>,
    pub storage: StorageConfig,
    pub logging: LoggingConfig,
    pub admin: AdminConfig,
    pub rate_limiting: RateLimitConfig,
    pub metrics: MetricsConfig,
    pub telemetry: TelemetryConfig,
}

/// The Stratum listener and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub bind_address: String,
    pub port: u16,
    /// Most miner connections held at once; further connections are refused.
    pub max_connections: u32,
    /// Most connections from one IP address (0 = no per-IP limit).
    pub max_connections_per_ip: u32,
    /// Longest accepted JSON line in bytes; a longer one closes the connection.
    pub max_line_bytes: usize,
    /// Time a new connection has to subscribe and authorize.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Pause between the authorize reply and the first `set_difficulty`/`notify`, so simple
    /// clients that read one reply per request (the example clients) get it alone. 0 = none.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub first_work_delay: Duration,
    /// On SIGTERM: how long miners are given to move away and shares to be flushed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// A second Stratum port for miners speaking TLS (absent: plain text only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListenerConfig>,
}

/// The TLS listener for miners, on `server.bind_address` beside the plain port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TlsListenerConfig {
    pub port: u16,
    /// PEM file of the certificate chain, the server's certificate first (`tls.crt` of a
    /// Kubernetes TLS Secret).
    pub cert_file: String,
    /// PEM file of the private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`tls.key`).
    pub key_file: String,
    /// How often the two files are read for a new certificate. A new one serves the next
    /// handshakes; connected miners keep their session. A pair that does not load (or whose
    /// key does not match) is logged and counted, and the one in force stays.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
    /// Time a new connection has to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub handshake_timeout: Duration,
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        Self {
            port: 3334,
            cert_file: String::new(),
            key_file: String::new(),
            reload_interval: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP API (health, stats, metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub enabled: bool,
    pub bind_address: String,
    pub port: u16,
}

/// How miners are mapped onto upstream sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One upstream session carries many miners (extranonce splitting).
    Aggregate,
    /// One upstream connection per miner.
    Passthrough,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Aggregate => "aggregate",
            Mode::Passthrough => "passthrough",
        })
    }
}

/// Share rules and work distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MiningConfig {
    pub mode: Mode,
    /// Aggregate mode: bytes of the upstream extranonce2 reserved per miner (the miner's
    /// extranonce1). 2 bytes = 65,536 miners per upstream session.
    pub extranonce_prefix_size: usize,
    /// Largest extranonce2 handed to miners; the rest of the upstream space is zero-padded.
    pub max_miner_extranonce2_size: usize,
    /// Smallest extranonce2 a miner may be given; an upstream session leaving less is refused.
    pub min_miner_extranonce2_size: usize,
    /// Seconds ntime may run ahead of the job's ntime.
    pub ntime_window_secs: u32,
    /// BIP310 version-rolling mask offered to miners (hex), intersected with the pool's.
    pub version_rolling_mask: String,
    /// Send `account.worker` upstream instead of the pool account alone.
    pub forward_worker_names: bool,
    /// How many jobs (since the last clean_jobs) shares are accepted for.
    pub max_jobs: usize,
}

/// Per-miner variable difficulty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VardiffConfig {
    pub enabled: bool,
    /// Difficulty a new miner starts at (also the fixed difficulty when vardiff is off).
    #[schemars(with = "f64")]
    pub initial_difficulty: Decimal,
    #[schemars(with = "f64")]
    pub min_difficulty: Decimal,
    #[schemars(with = "f64")]
    pub max_difficulty: Decimal,
    pub target_shares_per_minute: f64,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retarget_interval: Duration,
    /// Relative deviation from the target rate tolerated before retargeting.
    pub tolerance: f64,
}

/// Upstream connection behaviour (all pools).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub backoff_max: Duration,
    /// A higher-priority pool must stay reachable this long before traffic returns to it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub failback_after: Duration,
    /// No new job from a connected pool for this long counts as a failure.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub job_timeout: Duration,
    /// This many consecutive rejected shares count as a failure.
    pub max_consecutive_rejects: u32,
    /// A submit without an answer for this long is counted as lost.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub response_timeout: Duration,
}

impl UpstreamConfig {
    /// Reconnect schedule for a failing pool: `backoff_initial` doubling up to `backoff_max`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }
}

/// One upstream pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The pool account (workers are mapped onto it in aggregate mode).
    pub username: String,
    /// The pool password, inline. Prefer `password_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Name of an environment variable holding the password (e.g. from a Kubernetes Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Speak Stratum over TLS to this pool (`stratum+ssl://` and `stratum+tls://` URLs).
    /// Its certificate must chain to the system's roots (or `tls_ca_file`) and name `host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// PEM file of the certificate authorities the pool's certificate must chain to,
    /// instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<String>,
    /// SHA-256 fingerprint of the pool's certificate (64 hex digits, colons allowed): only
    /// that certificate is accepted. Alone, it is the whole check (a pool's self-signed
    /// certificate); with `tls_ca_file`, the certificate must pass both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
}

impl PoolConfig {
    /// The pinned fingerprint as bytes, if one is set and well formed.
    pub fn tls_fingerprint_bytes(&self) -> Option<[u8; 32]> {
        parse_fingerprint(self.tls_fingerprint.as_deref()?)
    }
}

/// A SHA-256 fingerprint written as 64 hex digits, with or without colons between bytes.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// Share storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Record shares and connections (off: events are only counted).
    pub enabled: bool,
    /// `postgres://…` or `sqlite://…`; empty = embedded SQLite at `sqlite_path`.
    pub database_url: String,
    pub sqlite_path: String,
    /// Apply pending migrations at start-up (off: the schema must already be current).
    pub run_migrations: bool,
    /// Capacity of the queue between the Stratum path and the writer.
    pub queue_capacity: usize,
    /// Directory of the local spool that holds events while the database is unreachable
    /// (empty = `loka-spool` beside `sqlite_path`).
    pub spool_dir: String,
    /// When spooled events are forced to disk: `always` (each batch), `interval`, `never`
    /// (left to the OS; survives a process crash, not a power loss).
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: at most this much spooled data can be lost on power loss.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub fsync_interval: Duration,
    /// Most rows written to the database in one batch.
    pub batch_size: usize,
    /// A partial batch is written after waiting this long.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub flush_interval: Duration,
    /// A batch not written within this time counts as failed and goes to the spool.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub write_timeout: Duration,
    /// Database connections held by the proxy.
    pub max_connections: u32,
    /// PostgreSQL: monthly `submissions` partitions created ahead of the current month.
    pub partitions_ahead: u32,
    /// Months of submissions kept before the current one (older partitions are dropped;
    /// SQLite: rows deleted). 0 = keep everything.
    pub retention_months: u32,
    /// Size at which the spool starts a new segment file.
    pub spool_segment_bytes: u64,
    /// When a miner hears "accepted": `validated` (at once; a crash can lose the shares of
    /// the last `flush_interval`) or `durable` (once the share is committed to the database
    /// or written to the spool; costs the submit a database round-trip, batches are group
    /// committed). With `durable`, `fsync = "always"` extends the promise to power loss.
    pub acknowledge: AckPolicy,
    /// Nice levels the writer thread (and, with SQLite, the threads running its statements)
    /// runs below the sessions (Linux; 0..=19, 0 = same priority). Its work comes in one
    /// burst per `flush_interval`; at a lower priority the scheduler lets sessions preempt it,
    /// so storage does not delay miners' replies, while it still gets a share of a busy CPU
    /// (10: about a tenth of a contended core).
    pub writer_nice: u8,
}

/// When an accepted share is answered (see [`StorageConfig::acknowledge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    Validated,
    Durable,
}

/// When the spool calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    Always,
    Interval,
    Never,
}

impl StorageConfig {
    /// The spool directory: `spool_dir`, or `loka-spool` beside the SQLite file.
    pub fn spool_path(&self) -> std::path::PathBuf {
        if !self.spool_dir.is_empty() {
            return self.spool_dir.clone().into();
        }
        let db = std::path::Path::new(&self.sqlite_path);
        match db.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join("loka-spool"),
            _ => "loka-spool".into(),
        }
    }

    fn validate_into(&self, e: &mut Vec<String>) {
        if self.queue_capacity == 0 {
            e.push("storage.queue_capacity: must be at least 1".into());
        }
        let url = &self.database_url;
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !url.is_empty() && !known.iter().any(|p| url.starts_with(p)) {
            e.push(
                "storage.database_url: must start with postgres://, postgresql:// or sqlite:"
                    .into(),
            );
        }
        if url.is_empty() && self.sqlite_path.trim().is_empty() {
            e.push("storage.sqlite_path: must not be empty when storage.database_url is".into());
        }
        if !(1..=100_000).contains(&self.batch_size) {
            e.push(format!(
                "storage.batch_size: {} is outside 1..=100000",
                self.batch_size
            ));
        }
        for (name, d) in [
            ("storage.flush_interval", self.flush_interval),
            ("storage.write_timeout", self.write_timeout),
            ("storage.fsync_interval", self.fsync_interval),
        ] {
            if d.is_zero() {
                e.push(format!("{name}: must be greater than zero"));
            }
        }
        if self.max_connections == 0 {
            e.push("storage.max_connections: must be at least 1".into());
        }
        if self.partitions_ahead > 24 {
            e.push("storage.partitions_ahead: must be 0..=24".into());
        }
        if self.spool_segment_bytes < 64 * 1024 {
            e.push("storage.spool_segment_bytes: must be at least 65536".into());
        }
        if self.writer_nice > 19 {
            e.push(format!(
                "storage.writer_nice: {} is outside 0..=19",
                self.writer_nice
            ));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `loka_proxy=debug,info`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0".into(),
            port: 3333,
            max_connections: 25_000,
            max_connections_per_ip: 0,
            max_line_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            first_work_delay: Duration::from_millis(20),
            drain_timeout: Duration::from_secs(20),
            tls: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind_address: "0.0.0.0".into(),
            port: 9090,
        }
    }
}

impl Default for MiningConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Aggregate,
            extranonce_prefix_size: 2,
            max_miner_extranonce2_size: 8,
            min_miner_extranonce2_size: 2,
            ntime_window_secs: 7200,
            version_rolling_mask: "1fffe000".into(),
            forward_worker_names: false,
            max_jobs: 16,
        }
    }
}

impl Default for VardiffConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_difficulty: Decimal::from(16384),
            min_difficulty: Decimal::from(1),
            max_difficulty: Decimal::from(1u64 << 40),
            target_shares_per_minute: 20.0,
            retarget_interval: Duration::from_secs(60),
            tolerance: 0.3,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            failback_after: Duration::from_secs(60),
            job_timeout: Duration::from_secs(180),
            max_consecutive_rejects: 100,
            response_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            database_url: String::new(),
            sqlite_path: "loka.db".into(),
            run_migrations: true,
            queue_capacity: 65_536,
            spool_dir: String::new(),
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_secs(1),
            batch_size: 5_000,
            flush_interval: Duration::from_millis(100),
            write_timeout: Duration::from_secs(10),
            max_connections: 4,
            partitions_ahead: 2,
            retention_months: 0,
            spool_segment_bytes: 64 * 1024 * 1024,
            acknowledge: AckPolicy::Validated,
            writer_nice: 10,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// Everything wrong with a configuration, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parse TOML text (unknown keys and wrong types are errors naming the key).
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        toml::from_str(text).map_err(|e| ConfigErrors(vec![e.to_string().trim().to_string()]))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration always serialises")
    }

    /// The version-rolling mask as a number (validated by [`Config::validate`]).
    pub fn version_rolling_mask(&self) -> u32 {
        u32::from_str_radix(
            self.mining.version_rolling_mask.trim_start_matches("0x"),
            16,
        )
        .unwrap_or(0)
    }

    /// Check every rule, collecting all violations.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut e = Vec::new();
        let s = &self.server;
        if s.bind_address.parse::<std::net::IpAddr>().is_err() {
            e.push(format!(
                "server.bind_address: {:?} is not an IP address",
                s.bind_address
            ));
        }
        if s.max_connections == 0 {
            e.push("server.max_connections: must be at least 1".into());
        }
        if !(256..=1024 * 1024).contains(&s.max_line_bytes) {
            e.push(format!(
                "server.max_line_bytes: {} is outside 256..=1048576",
                s.max_line_bytes
            ));
        }
        for (name, d) in [
            ("server.handshake_timeout", s.handshake_timeout),
            ("server.idle_timeout", s.idle_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.backoff_initial", self.upstream.backoff_initial),
            ("upstream.job_timeout", self.upstream.job_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            ("vardiff.retarget_interval", self.vardiff.retarget_interval),
        ] {
            if d.is_zero() {
                e.push(format!("{name}: must be greater than zero"));
            }
        }
        if let Some(t) = &s.tls {
            if t.port == s.port && t.port != 0 {
                e.push(format!("server.tls.port: {} is also server.port", t.port));
            }
            if self.api.enabled && t.port == self.api.port && t.port != 0 {
                e.push(format!("server.tls.port: {} is also api.port", t.port));
            }
            for (name, path) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
                if path.trim().is_empty() {
                    e.push(format!("server.tls.{name}: must name a PEM file"));
                }
            }
            for (name, d) in [
                ("server.tls.reload_interval", t.reload_interval),
                ("server.tls.handshake_timeout", t.handshake_timeout),
            ] {
                if d.is_zero() {
                    e.push(format!("{name}: must be greater than zero"));
                }
            }
        }
        if self.upstream.backoff_max < self.upstream.backoff_initial {
            e.push("upstream.backoff_max: must not be below upstream.backoff_initial".into());
        }
        if self.api.enabled {
            if self.api.bind_address.parse::<std::net::IpAddr>().is_err() {
                e.push(format!(
                    "api.bind_address: {:?} is not an IP address",
                    self.api.bind_address
                ));
            }
            if self.api.port == self.server.port && self.api.port != 0 {
                e.push(format!("api.port: {} is also server.port", self.api.port));
            }
        }
        let m = &self.mining;
        if !(1..=4).contains(&m.extranonce_prefix_size) {
            e.push(format!(
                "mining.extranonce_prefix_size: {} is outside 1..=4",
                m.extranonce_prefix_size
            ));
        } else if m.mode == Mode::Aggregate
            && u64::from(s.max_connections) > 1u64 << (8 * m.extranonce_prefix_size)
        {
            e.push(format!(
                "server.max_connections: {} exceeds the {} miners a {}-byte mining.extranonce_prefix_size can address",
                s.max_connections,
                1u64 << (8 * m.extranonce_prefix_size),
                m.extranonce_prefix_size
            ));
        }
        if !(1..=16).contains(&m.min_miner_extranonce2_size) {
            e.push("mining.min_miner_extranonce2_size: must be 1..=16".into());
        }
        if m.max_miner_extranonce2_size < m.min_miner_extranonce2_size
            || m.max_miner_extranonce2_size > 16
        {
            e.push("mining.max_miner_extranonce2_size: must be between min_miner_extranonce2_size and 16".into());
        }
        if m.version_rolling_mask.is_empty()
            || m.version_rolling_mask.trim_start_matches("0x").len() > 8
            || u32::from_str_radix(m.version_rolling_mask.trim_start_matches("0x"), 16).is_err()
        {
            e.push(format!(
                "mining.version_rolling_mask: {:?} is not a 32-bit hex mask",
                m.version_rolling_mask
            ));
        }
        if m.ntime_window_secs == 0 {
            e.push("mining.ntime_window_secs: must be greater than zero".into());
        }
        if !(1..=1024).contains(&m.max_jobs) {
            e.push("mining.max_jobs: must be 1..=1024".into());
        }
        let v = &self.vardiff;
        for (name, d) in [
            ("vardiff.initial_difficulty", v.initial_difficulty),
            ("vardiff.min_difficulty", v.min_difficulty),
            ("vardiff.max_difficulty", v.max_difficulty),
        ] {
            if d <= Decimal::ZERO {
                e.push(format!("{name}: must be greater than zero, got {d}"));
            }
        }
        if v.min_difficulty > v.max_difficulty {
            e.push(format!(
                "vardiff.min_difficulty: {} is above vardiff.max_difficulty {}",
                v.min_difficulty, v.max_difficulty
            ));
        }
        if !(v.target_shares_per_minute.is_finite() && v.target_shares_per_minute > 0.0) {
            e.push("vardiff.target_shares_per_minute: must be a positive number".into());
        }
        if !(v.tolerance.is_finite() && (0.0..1.0).contains(&v.tolerance)) {
            e.push("vardiff.tolerance: must be in [0, 1)".into());
        }
        if self.pools.is_empty() {
            e.push("pools: at least one upstream pool is required".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            if p.name.trim().is_empty() {
                e.push(format!("pools[{i}].name: must not be empty"));
            } else if !names.insert(p.name.as_str()) {
                e.push(format!("pools[{i}].name: {:?} is used twice", p.name));
            }
            if p.host.trim().is_empty() || p.host.contains(['/', ' ']) {
                e.push(format!(
                    "pools[{i}].host: {:?} is not a host name or address",
                    p.host
                ));
            }
            if p.port == 0 {
                e.push(format!("pools[{i}].port: must be 1..=65535"));
            }
            if p.username.is_empty() {
                e.push(format!("pools[{i}].username: must not be empty"));
            }
            if p.password.is_some() && p.password_env.is_some() {
                e.push(format!(
                    "pools[{i}]: set password or password_env, not both"
                ));
            }
            if !p.tls && (p.tls_ca_file.is_some() || p.tls_fingerprint.is_some()) {
                e.push(format!(
                    "pools[{i}].tls: tls_ca_file and tls_fingerprint need tls = true"
                ));
            }
            if p.tls_ca_file.as_ref().is_some_and(|f| f.trim().is_empty()) {
                e.push(format!("pools[{i}].tls_ca_file: must name a PEM file"));
            }
            if let Some(f) = &p.tls_fingerprint
                && parse_fingerprint(f).is_none()
            {
                e.push(format!(
                    "pools[{i}].tls_fingerprint: {f:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
                ));
            }
        }
        self.storage.validate_into(&mut e);
        if self.logging.level.trim().is_empty() {
            e.push("logging.level: must not be empty".into());
        }
        api::validate(
            &self.admin,
            &self.rate_limiting,
            &self.metrics,
            &self.telemetry,
            &mut e,
        );
        if e.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(e))
        }
    }
}

/// A pool's address as a URL gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUrl {
    pub host: String,
    pub port: u16,
    /// `stratum+ssl://` or `stratum+tls://`.
    pub tls: bool,
}

/// `stratum+tcp://host:port`, `stratum+ssl://host:port`, `stratum+tls://host:port` (or
/// `host:port`, plain) → the pool's address.
pub fn parse_pool_url(url: &str) -> Result<PoolUrl, String> {
    let (rest, tls) = match url.split_once("://") {
        None => (url, false),
        Some(("stratum+tcp" | "tcp", rest)) => (rest, false),
        Some(("stratum+ssl" | "stratum+tls" | "ssl" | "tls", rest)) => (rest, true),
        Some((scheme, _)) => {
            return Err(format!(
                "{url:?}: scheme {scheme:?} is not stratum+tcp, stratum+ssl or stratum+tls"
            ));
        }
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: expected host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: port {port:?} is not a number"))?;
    if port == 0 {
        return Err(format!("{url:?}: port must be 1..=65535"));
    }
    Ok(PoolUrl {
        host: host.to_string(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod storage_tests {
    use super::*;

    #[test]
    fn storage_defaults_validate_and_round_trip() {
        let s = StorageConfig::default();
        let mut e = Vec::new();
        s.validate_into(&mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.fsync, FsyncPolicy::Interval);
        assert_eq!(s.spool_path(), std::path::PathBuf::from("loka-spool"));
        let cfg = Config::from_toml(
            "[storage]\nsqlite_path = '/data/loka.db'\nfsync = 'always'\nflush_interval = '250ms'\nretention_months = 6\n",
        )
        .unwrap();
        assert_eq!(cfg.storage.fsync, FsyncPolicy::Always);
        assert_eq!(cfg.storage.flush_interval, Duration::from_millis(250));
        assert_eq!(cfg.storage.retention_months, 6);
        assert_eq!(
            cfg.storage.spool_path(),
            std::path::PathBuf::from("/data/loka-spool")
        );
        assert_eq!(Config::from_toml(&cfg.to_toml()).unwrap(), cfg);
        assert!(Config::from_toml("[storage]\nfsync = 'sometimes'\n").is_err());
        assert_eq!(s.acknowledge, AckPolicy::Validated);
        let durable = Config::from_toml("[storage]\nacknowledge = 'durable'\n").unwrap();
        assert_eq!(durable.storage.acknowledge, AckPolicy::Durable);
        assert_eq!(Config::from_toml(&durable.to_toml()).unwrap(), durable);
        let err = Config::from_toml("[storage]\nacknowledge = 'eventually'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("acknowledge"), "{err}");
    }

    #[test]
    fn storage_validation_names_every_bad_field() {
        let s = StorageConfig {
            database_url: "mysql://x".into(),
            queue_capacity: 0,
            batch_size: 0,
            flush_interval: Duration::ZERO,
            write_timeout: Duration::ZERO,
            fsync_interval: Duration::ZERO,
            max_connections: 0,
            partitions_ahead: 99,
            spool_segment_bytes: 10,
            writer_nice: 20,
            ..StorageConfig::default()
        };
        let mut e = Vec::new();
        s.validate_into(&mut e);
        let all = e.join("\n");
        for field in [
            "storage.database_url",
            "storage.queue_capacity",
            "storage.batch_size",
            "storage.flush_interval",
            "storage.write_timeout",
            "storage.fsync_interval",
            "storage.max_connections",
            "storage.partitions_ahead",
            "storage.spool_segment_bytes",
            "storage.writer_nice",
        ] {
            assert!(all.contains(field), "{field} missing from {all}");
        }
        let s = StorageConfig {
            spool_dir: "/var/spool/loka".into(),
            ..StorageConfig::default()
        };
        assert_eq!(s.spool_path(), std::path::PathBuf::from("/var/spool/loka"));
    }
}
