//! One session with one pool, over TCP or TLS: the handshake (TLS, configure, subscribe,
//! authorize, first job) and decoding what the pool sends.

use crate::lines::LineReader;
use crate::tls::{PoolFailure, PoolTls};
use crate::upstream::UpstreamError;
pub use loka_stratum::pool::PoolMessage;
use loka_stratum::pool::{decode_pool_line, granted_mask, parse_subscribe};
use loka_stratum::{Difficulty, Job, StratumError};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The pool connection's halves: TCP's own, or TLS's split.
pub type PoolReader = Box<dyn AsyncRead + Send + Unpin>;
pub type PoolWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A pool with its password resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct PoolEndpoint {
    pub name: std::sync::Arc<str>,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// Speak TLS, checking the pool's certificate so.
    pub tls: Option<PoolTls>,
}

impl std::fmt::Debug for PoolEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(
            f,
            "{}({}:{} as {}",
            self.name, self.host, self.port, self.username
        )?;
        match &self.tls {
            Some(tls) => write!(f, ", {tls:?})"),
            None => write!(f, ")"),
        }
    }
}

pub const USER_AGENT: &str = concat!("loka-stratum/", env!("CARGO_PKG_VERSION"));
const LINE_LIMIT: usize = 64 * 1024;

pub struct PoolConn {
    pub index: usize,
    /// The address connected to (the configured one, or where the pool redirected us).
    pub host: String,
    pub port: u16,
    pub reader: LineReader<PoolReader>,
    pub writer: PoolWriter,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    /// Latest difficulty the pool set (applies to the jobs it sends next).
    pub difficulty: Difficulty,
    /// Negotiated version-rolling mask (0: none).
    pub version_mask: u32,
    /// Latest job not yet handed to miners.
    pub latest_job: Option<Job>,
    pub next_id: u64,
    pub established_at: Instant,
    /// Round trip of the subscribe request, as a latency estimate.
    pub latency: Duration,
}

impl PoolConn {
    /// Connect and complete the handshake, up to the first job.
    pub async fn establish(
        index: usize,
        pool: &PoolEndpoint,
        username: &str,
        version_mask: u32,
        timeout: Duration,
    ) -> Result<PoolConn, UpstreamError> {
        match tokio::time::timeout(
            timeout,
            Self::handshake(index, pool, username, version_mask),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::HandshakeTimeout {
                host: pool.host.clone(),
                port: pool.port,
                after: timeout,
            }),
        }
    }

    async fn handshake(
        index: usize,
        pool: &PoolEndpoint,
        username: &str,
        version_mask: u32,
    ) -> Result<PoolConn, UpstreamError> {
        let stream = TcpStream::connect((pool.host.as_str(), pool.port))
            .await
            .map_err(|source| UpstreamError::Connect {
                host: pool.host.clone(),
                port: pool.port,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w): (PoolReader, PoolWriter) = match &pool.tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(tls) => {
                let stream =
                    tls.connect(&pool.host, stream)
                        .await
                        .map_err(|e| UpstreamError::Tls {
                            host: pool.host.clone(),
                            port: pool.port,
                            reason: PoolFailure::of(&e),
                            detail: crate::tls::describe(&e),
                        })?;
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w))
            }
        };
        let mut conn = PoolConn {
            index,
            host: pool.host.clone(),
            port: pool.port,
            reader: LineReader::new(r, LINE_LIMIT),
            writer: w,
            extranonce1: Vec::new(),
            extranonce2_size: 0,
            difficulty: Difficulty::ONE,
            version_mask: 0,
            latest_job: None,
            next_id: 10,
            established_at: Instant::now(),
            latency: Duration::ZERO,
        };
        let mut hello = Vec::new();
        if version_mask != 0 {
            hello.extend(loka_stratum::message::method_line(
                "1",
                "mining.configure",
                &json!([["version-rolling"], {"version-rolling.mask": format!("{version_mask:08x}"), "version-rolling.min-bit-count": 2}]),
            ));
        }
        hello.extend(loka_stratum::message::method_line(
            "2",
            "mining.subscribe",
            &json!([USER_AGENT]),
        ));
        let sent = Instant::now();
        conn.send(&hello).await?;
        let sub = conn
            .await_response(2)
            .await?
            .map_err(UpstreamError::SubscribeRefused)?;
        conn.latency = sent.elapsed();
        let (en1, en2_size) = parse_subscribe(&sub)?;
        conn.extranonce1 = en1;
        conn.extranonce2_size = en2_size;
        let auth = loka_stratum::message::method_line(
            "3",
            "mining.authorize",
            &json!([username, pool.password]),
        );
        conn.send(&auth).await?;
        let refused = |reason: String| UpstreamError::AuthorizeRefused {
            username: username.to_string(),
            reason,
        };
        match conn.await_response(3).await? {
            Ok(Value::Bool(true)) => {}
            Ok(other) => return Err(refused(other.to_string())),
            Err(e) => return Err(refused(e.to_string())),
        }
        while conn.latest_job.is_none() {
            let msg = conn.next_message().await?;
            conn.answer(&msg).await?;
        }
        Ok(conn)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(UpstreamError::Write)
    }

    /// Read until the response to `id`, absorbing notifications on the way.
    async fn await_response(
        &mut self,
        id: u64,
    ) -> Result<Result<Value, StratumError>, UpstreamError> {
        loop {
            let msg = self.next_message().await?;
            self.answer(&msg).await?;
            if let PoolMessage::Response { id: got, result } = msg
                && got == id
            {
                return Ok(result);
            }
        }
    }

    /// Read one line and fold what it says into the connection state. Jobs, difficulty,
    /// extranonce and mask changes are applied here and also returned.
    ///
    /// Cancel-safe (it only reads, into a buffer kept across calls), so a `select!` may drop
    /// it; requests the pool expects an answer to are answered by [`Self::answer`], outside
    /// any `select!`, so a write is never left half done.
    pub async fn next_message(&mut self) -> Result<PoolMessage, UpstreamError> {
        let line = match self.reader.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Err(UpstreamError::Closed),
            Err(e) => return Err(UpstreamError::Read(e)),
        };
        let msg = decode_pool_line(&line)?;
        match &msg {
            PoolMessage::Job(job) => self.latest_job = Some((**job).clone()),
            PoolMessage::Difficulty(d) => self.difficulty = *d,
            PoolMessage::Extranonce {
                extranonce1,
                extranonce2_size,
            } => {
                self.extranonce1 = extranonce1.clone();
                self.extranonce2_size = *extranonce2_size;
            }
            PoolMessage::VersionMask(m) => self.version_mask = *m,
            PoolMessage::Response {
                id: 1,
                result: Ok(v),
            } => self.version_mask = granted_mask(v),
            _ => {}
        }
        Ok(msg)
    }

    /// Answer a request from the pool (`mining.ping`, `client.get_version`); nothing for
    /// other messages.
    pub async fn answer(&mut self, msg: &PoolMessage) -> Result<(), UpstreamError> {
        let line = match msg {
            PoolMessage::Ping { id } => loka_stratum::message::result_line(id, "\"pong\""),
            PoolMessage::GetVersion { id } => {
                loka_stratum::message::result_line(id, &format!("\"{USER_AGENT}\""))
            }
            _ => return Ok(()),
        };
        self.send(&line).await?;
        Ok(())
    }
}
