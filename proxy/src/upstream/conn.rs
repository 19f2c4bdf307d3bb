//! One TCP session with one pool: the handshake (configure, subscribe, authorize, first job)
//! and decoding what the pool sends.

use crate::lines::LineReader;
use loka_stratum::message::{Envelope, decode_error};
use loka_stratum::{Difficulty, Job, StratumError};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A pool with its password resolved.
#[derive(Clone)]
pub struct PoolEndpoint {
    pub name: std::sync::Arc<str>,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PoolEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(
            f,
            "{}({}:{} as {})",
            self.name, self.host, self.port, self.username
        )
    }
}

/// What a pool line means to us.
#[derive(Debug)]
pub enum PoolMessage {
    Job(Box<Job>),
    Difficulty(Difficulty),
    Extranonce {
        extranonce1: Vec<u8>,
        extranonce2_size: usize,
    },
    VersionMask(u32),
    Reconnect,
    /// A request from the pool we answer at once (`mining.ping`, `client.get_version`).
    Ask {
        id: String,
        reply: String,
    },
    Response {
        id: u64,
        result: Result<Value, StratumError>,
    },
    Nothing,
}

pub const USER_AGENT: &str = concat!("loka-stratum/", env!("CARGO_PKG_VERSION"));
const LINE_LIMIT: usize = 64 * 1024;

pub struct PoolConn {
    pub index: usize,
    pub reader: LineReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
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
    ) -> Result<PoolConn, String> {
        match tokio::time::timeout(
            timeout,
            Self::handshake(index, pool, username, version_mask),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!(
                "handshake with {}:{} timed out after {timeout:?}",
                pool.host, pool.port
            )),
        }
    }

    async fn handshake(
        index: usize,
        pool: &PoolEndpoint,
        username: &str,
        version_mask: u32,
    ) -> Result<PoolConn, String> {
        let stream = TcpStream::connect((pool.host.as_str(), pool.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", pool.host, pool.port))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut conn = PoolConn {
            index,
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
            .map_err(|e| format!("subscribe refused: {e}"))?;
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
        match conn.await_response(3).await? {
            Ok(Value::Bool(true)) => {}
            Ok(other) => {
                return Err(format!(
                    "pool refused authorization of {username:?}: {other}"
                ));
            }
            Err(e) => return Err(format!("pool refused authorization of {username:?}: {e}")),
        }
        while conn.latest_job.is_none() {
            let msg = conn.next_message().await?;
            conn.answer(&msg).await?;
        }
        Ok(conn)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("write to pool: {e}"))
    }

    /// Read until the response to `id`, absorbing notifications on the way.
    async fn await_response(&mut self, id: u64) -> Result<Result<Value, StratumError>, String> {
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
    pub async fn next_message(&mut self) -> Result<PoolMessage, String> {
        let line = match self.reader.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Err("pool closed the connection".into()),
            Err(e) => return Err(format!("read from pool: {e}")),
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
            } if v.get("version-rolling").and_then(Value::as_bool) == Some(true) => {
                self.version_mask = v
                    .get("version-rolling.mask")
                    .and_then(Value::as_str)
                    .and_then(|m| u32::from_str_radix(m, 16).ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
        Ok(msg)
    }

    /// Answer a request from the pool (`mining.ping`, `client.get_version`); nothing for
    /// other messages.
    pub async fn answer(&mut self, msg: &PoolMessage) -> Result<(), String> {
        if let PoolMessage::Ask { id, reply } = msg {
            let line = loka_stratum::message::result_line(id, reply);
            self.send(&line).await?;
        }
        Ok(())
    }
}

fn parse_subscribe(v: &Value) -> Result<(Vec<u8>, usize), String> {
    let a = v.as_array().ok_or("subscribe result is not an array")?;
    let en1 = a
        .get(1)
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .ok_or("subscribe result has no hex extranonce1")?;
    let size = a
        .get(2)
        .and_then(Value::as_u64)
        .filter(|s| (1..=32).contains(s))
        .ok_or("subscribe result has no extranonce2_size in 1..=32")?;
    Ok((en1, size as usize))
}

/// Decode one line from a pool.
pub fn decode_pool_line(line: &[u8]) -> Result<PoolMessage, String> {
    let env = Envelope::parse(line).map_err(|e| format!("pool sent a bad line: {e}"))?;
    let Some(method) = env.method.as_deref() else {
        let Some(id) = env.id_u64() else {
            return Ok(PoolMessage::Nothing);
        };
        let result = match env.error.and_then(decode_error) {
            Some(e) => Err(e),
            None => Ok(env
                .result
                .and_then(|r| serde_json::from_str(r.get()).ok())
                .unwrap_or(Value::Null)),
        };
        return Ok(PoolMessage::Response { id, result });
    };
    let params = env
        .params_value()
        .map_err(|e| format!("pool {method}: {e}"))?;
    Ok(match method {
        "mining.notify" => PoolMessage::Job(Box::new(
            Job::from_notify_params(&params).map_err(|e| format!("pool mining.notify: {e}"))?,
        )),
        "mining.set_difficulty" => PoolMessage::Difficulty(
            params
                .get(0)
                .ok_or("pool mining.set_difficulty without a value")
                .and_then(|d| {
                    Difficulty::from_json(d)
                        .map_err(|_| "pool mining.set_difficulty: not a positive number")
                })?,
        ),
        "mining.set_extranonce" => {
            let en1 = params
                .get(0)
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok());
            let size = params
                .get(1)
                .and_then(Value::as_u64)
                .filter(|s| (1..=32).contains(s));
            match (en1, size) {
                (Some(extranonce1), Some(size)) => PoolMessage::Extranonce {
                    extranonce1,
                    extranonce2_size: size as usize,
                },
                _ => return Err("pool mining.set_extranonce: bad params".into()),
            }
        }
        "mining.set_version_mask" => PoolMessage::VersionMask(
            params
                .get(0)
                .and_then(Value::as_str)
                .and_then(|m| u32::from_str_radix(m, 16).ok())
                .ok_or("pool mining.set_version_mask: bad mask")?,
        ),
        "client.reconnect" => PoolMessage::Reconnect,
        "mining.ping" => PoolMessage::Ask {
            id: env.id.to_string(),
            reply: "\"pong\"".into(),
        },
        "client.get_version" => PoolMessage::Ask {
            id: env.id.to_string(),
            reply: format!("\"{USER_AGENT}\""),
        },
        "client.show_message" => {
            tracing::info!(message = %params, "pool message");
            PoolMessage::Nothing
        }
        _ => PoolMessage::Nothing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pool_lines() {
        assert!(matches!(
            decode_pool_line(br#"{"id":null,"method":"mining.set_difficulty","params":[0.5]}"#).unwrap(),
            PoolMessage::Difficulty(d) if d.to_string() == "0.5"
        ));
        assert!(
            decode_pool_line(br#"{"id":null,"method":"mining.set_difficulty","params":[0]}"#)
                .is_err()
        );
        assert!(matches!(
            decode_pool_line(br#"{"id":12,"result":null,"error":[23,"Low difficulty share",null]}"#).unwrap(),
            PoolMessage::Response { id: 12, result: Err(e) } if e.code == loka_stratum::error::ErrorCode::LowDifficulty
        ));
        assert!(matches!(
            decode_pool_line(br#"{"id":12,"result":true,"error":null}"#).unwrap(),
            PoolMessage::Response {
                id: 12,
                result: Ok(Value::Bool(true))
            }
        ));
        assert!(matches!(
            decode_pool_line(
                br#"{"id":null,"method":"mining.set_extranonce","params":["abcd",6]}"#
            )
            .unwrap(),
            PoolMessage::Extranonce {
                extranonce2_size: 6,
                ..
            }
        ));
        assert!(decode_pool_line(b"garbage").is_err());
        assert_eq!(
            parse_subscribe(&json!([[], "0a0b", 8])).unwrap(),
            (vec![10, 11], 8)
        );
        assert!(parse_subscribe(&json!([[], "zz", 8])).is_err());
    }
}
