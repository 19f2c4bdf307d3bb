//! [`StratumClient`]: a low-level Stratum V1 client for tests that speak the protocol
//! step by step (send junk, pipeline requests, check error codes, wait for a close).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::share::{parse_u32_hex, u32_hex};
use crate::wire::{self, LineReader, id_key};

/// `mining.configure` params asking for version rolling with `mask` (BIP310, at least two
/// bits), as every simulated miner sends them.
pub fn configure_params(mask: u32) -> Value {
    json!([["version-rolling"], {"version-rolling.mask": u32_hex(mask), "version-rolling.min-bit-count": 2}])
}

/// The mask a `mining.configure` result grants; `None` when version rolling was refused or
/// the mask is not 8 hex digits.
pub fn granted_mask(result: &Value) -> Option<u32> {
    if result.get("version-rolling").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    result
        .get("version-rolling.mask")
        .and_then(Value::as_str)
        .and_then(parse_u32_hex)
}

/// `mining.set_extranonce` params: the new extranonce1 and extranonce2 size (1..=32).
pub fn set_extranonce_params(params: &Value) -> Option<(Vec<u8>, usize)> {
    let en1 = params
        .get(0)
        .and_then(Value::as_str)
        .and_then(|s| hex::decode(s).ok())?;
    let size = params
        .get(1)
        .and_then(Value::as_u64)
        .filter(|n| (1..=32).contains(n))?;
    Some((en1, size as usize))
}

/// A reply to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: Value,
    pub result: Value,
    pub error: Value,
}

impl Response {
    /// The Stratum error code, if the reply is an error.
    pub fn error_code(&self) -> Option<i64> {
        wire::error_code(&self.error)
    }
    /// `result == true` and no error.
    pub fn is_true(&self) -> bool {
        self.error.is_null() && self.result == Value::Bool(true)
    }
}

/// A server-to-client method call (`mining.notify`, `mining.set_difficulty`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: Value,
    pub method: String,
    pub params: Value,
}

/// What `mining.subscribe` returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The subscription id of the `mining.notify` entry (what cpuminer resumes with).
    pub session_id: Option<String>,
    pub extranonce1: Vec<u8>,
    pub extranonce2_size: usize,
    pub raw: Value,
}

impl Subscription {
    /// Parse a subscribe `result`.
    pub fn from_result(result: &Value) -> anyhow::Result<Self> {
        let a = result
            .as_array()
            .context("subscribe result is not an array")?;
        if a.len() < 3 {
            bail!("subscribe result has {} elements, expected 3", a.len());
        }
        let session_id = a[0].as_array().and_then(|subs| {
            // either [["mining.notify", id], ...] or ["mining.notify", id]
            let pick = |t: &Value| -> Option<String> {
                let t = t.as_array()?;
                match t.get(1)? {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    v => Some(v.to_string()),
                }
            };
            subs.iter()
                .find(|t| t.get(0).and_then(Value::as_str) == Some("mining.notify"))
                .and_then(pick)
                .or_else(|| subs.first().and_then(pick))
                .or_else(|| pick(&a[0]))
        });
        let en1_hex = a[1].as_str().context("extranonce1 is not a string")?;
        let extranonce1 = hex::decode(en1_hex).context("extranonce1 is not hex")?;
        let extranonce2_size =
            a[2].as_u64()
                .filter(|n| (1..=32).contains(n))
                .context("extranonce2_size is not an integer in 1..=32")? as usize;
        Ok(Self {
            session_id,
            extranonce1,
            extranonce2_size,
            raw: result.clone(),
        })
    }
}

/// Connect within 5 s (`TimedOut` after), without Nagle's delay.
pub(crate) async fn tcp_connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A TLS handshake over `stream` within 5 s (`TimedOut` after), checking the server's
/// certificate for `server_name`.
pub(crate) async fn tls_handshake(
    stream: TcpStream,
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// A raw Stratum client over TCP or TLS. Messages read while waiting for something else
/// are kept in an inbox, so replies and notifications may arrive in any order.
pub struct StratumClient {
    reader: LineReader<Box<dyn AsyncRead + Send + Unpin>>,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    next_id: u64,
    inbox: VecDeque<Value>,
    timeout: Duration,
    peer: SocketAddr,
    local: SocketAddr,
}

impl StratumClient {
    /// Connect (with the default 5 s timeout for every later wait).
    pub async fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let stream = tcp_connect(addr).await?;
        let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
        let (rd, wr) = stream.into_split();
        Ok(Self::over(Box::new(rd), Box::new(wr), peer, local))
    }

    /// Connect and complete a TLS handshake with `config`, checking the server's
    /// certificate for `server_name`.
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<Self> {
        let stream = tcp_connect(addr).await?;
        let (peer, local) = (stream.peer_addr()?, stream.local_addr()?);
        let tls = tls_handshake(stream, config, server_name).await?;
        let (rd, wr) = tokio::io::split(tls);
        Ok(Self::over(Box::new(rd), Box::new(wr), peer, local))
    }

    fn over(
        rd: Box<dyn AsyncRead + Send + Unpin>,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        Self {
            reader: LineReader::with_limit(rd, 1 << 20),
            writer: wr,
            next_id: 1,
            inbox: VecDeque::new(),
            timeout: Duration::from_secs(5),
            peer,
            local,
        }
    }

    /// Set how long each wait may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Send bytes exactly as given (junk, partial lines, a TLS ClientHello, …).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    /// Send one line; a newline is added if missing.
    pub async fn send_line(&mut self, line: &str) -> io::Result<()> {
        let mut l = line.to_string();
        if !l.ends_with('\n') {
            l.push('\n');
        }
        self.send_raw(l.as_bytes()).await
    }

    /// Send a request with the next numeric id, without waiting. Returns the id.
    pub async fn send_request(&mut self, method: &str, params: Value) -> io::Result<Value> {
        let id = Value::from(self.next_id);
        self.next_id += 1;
        self.send_request_with_id(id.clone(), method, params)
            .await?;
        Ok(id)
    }

    /// Send a request with a chosen id (number, string or null), without waiting.
    pub async fn send_request_with_id(
        &mut self,
        id: Value,
        method: &str,
        params: Value,
    ) -> io::Result<()> {
        self.send_raw(wire::request_line(&id, method, params).as_bytes())
            .await
    }

    /// Send a request and wait for the reply with its id.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Response> {
        let id = self.send_request(method, params).await?;
        self.wait_response(&id).await
    }

    /// Send a request with a chosen id and wait for the reply with that id.
    pub async fn request_with_id(
        &mut self,
        id: Value,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Response> {
        self.send_request_with_id(id.clone(), method, params)
            .await?;
        self.wait_response(&id).await
    }

    /// Wait for the reply to `id`, keeping everything else in the inbox.
    pub async fn wait_response(&mut self, id: &Value) -> anyhow::Result<Response> {
        let key = id_key(id);
        let found = self
            .wait_matching(|m| {
                m.get("method").is_none() && m.get("id").map(id_key) == Some(key.clone())
            })
            .await
            .with_context(|| format!("waiting for the reply to id {key}"))?;
        Ok(Response {
            id: found.get("id").cloned().unwrap_or(Value::Null),
            result: found.get("result").cloned().unwrap_or(Value::Null),
            error: found.get("error").cloned().unwrap_or(Value::Null),
        })
    }

    /// Next message of any kind (inbox first). `Ok(None)` when the server closed.
    pub async fn next_message(&mut self) -> anyhow::Result<Option<Value>> {
        if let Some(m) = self.inbox.pop_front() {
            return Ok(Some(m));
        }
        self.read_one().await
    }

    /// Next server notification (inbox first); replies read meanwhile stay in the inbox.
    pub async fn next_notification(&mut self) -> anyhow::Result<Notification> {
        let m = self
            .wait_matching(|m| m.get("method").is_some())
            .await
            .context("waiting for a notification")?;
        Ok(to_notification(m))
    }

    /// Next notification with this method; others stay in the inbox.
    pub async fn wait_notification(&mut self, method: &str) -> anyhow::Result<Notification> {
        let m = self
            .wait_matching(|m| m.get("method").and_then(Value::as_str) == Some(method))
            .await
            .with_context(|| format!("waiting for {method}"))?;
        Ok(to_notification(m))
    }

    /// Drop everything in the inbox (e.g. notifications a test does not care about).
    pub fn clear_inbox(&mut self) -> Vec<Value> {
        self.inbox.drain(..).collect()
    }

    /// `mining.subscribe [user_agent]` or `[user_agent, session_id]`.
    pub async fn subscribe(
        &mut self,
        user_agent: &str,
        session_id: Option<&str>,
    ) -> anyhow::Result<Subscription> {
        let params = match session_id {
            Some(s) => json!([user_agent, s]),
            None => json!([user_agent]),
        };
        let r = self.request("mining.subscribe", params).await?;
        if !r.error.is_null() {
            bail!("subscribe failed: {}", r.error);
        }
        Subscription::from_result(&r.result)
    }

    /// `mining.authorize`; `Ok(true)` when the server said `true`.
    pub async fn authorize(&mut self, user: &str, password: &str) -> anyhow::Result<bool> {
        let r = self
            .request("mining.authorize", json!([user, password]))
            .await?;
        Ok(r.is_true())
    }

    /// BIP310 `mining.configure` for version rolling; returns the granted mask.
    pub async fn configure_version_rolling(&mut self, mask: u32) -> anyhow::Result<Option<u32>> {
        let r = self
            .request("mining.configure", configure_params(mask))
            .await?;
        if r.result.get("version-rolling").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        let granted = granted_mask(&r.result)
            .ok_or_else(|| anyhow!("configure reply without a valid mask: {}", r.result))?;
        Ok(Some(granted))
    }

    /// `mining.submit` with 5 params, or 6 with version bits.
    #[allow(clippy::too_many_arguments)]
    pub async fn submit(
        &mut self,
        worker: &str,
        job_id: &str,
        extranonce2: &[u8],
        ntime: u32,
        nonce: u32,
        version_bits: Option<u32>,
    ) -> anyhow::Result<Response> {
        let mut p = vec![
            Value::from(worker),
            Value::from(job_id),
            Value::from(hex::encode(extranonce2)),
            Value::from(u32_hex(ntime)),
            Value::from(u32_hex(nonce)),
        ];
        if let Some(v) = version_bits {
            p.push(Value::from(u32_hex(v)));
        }
        self.request("mining.submit", Value::Array(p)).await
    }

    /// Wait until the server closes the connection (messages before that are discarded).
    /// Errors if it is still open after the timeout.
    pub async fn expect_closed(&mut self) -> anyhow::Result<()> {
        self.inbox.clear();
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.reader.next_line()).await {
                Err(_) => bail!("connection still open after {:?}", self.timeout),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return Ok(()),
            }
        }
    }

    async fn wait_matching(&mut self, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(i) = self.inbox.iter().position(&pred)
            && let Some(m) = self.inbox.remove(i)
        {
            return Ok(m);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.read_one()).await {
                Err(_) => bail!("timed out after {:?}", self.timeout),
                Ok(r) => r?.ok_or_else(|| anyhow!("connection closed by server"))?,
            };
            if pred(&m) {
                return Ok(m);
            }
            self.inbox.push_back(m);
        }
    }

    async fn read_one(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            let Some(line) = self.reader.next_line().await? else {
                return Ok(None);
            };
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("server sent non-JSON: {}", truncate(&line)))?;
            return Ok(Some(v));
        }
    }
}

fn to_notification(m: Value) -> Notification {
    Notification {
        id: m.get("id").cloned().unwrap_or(Value::Null),
        method: m
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        params: m.get("params").cloned().unwrap_or(Value::Null),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}
