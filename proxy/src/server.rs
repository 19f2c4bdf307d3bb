//! The Stratum listener: accepts miners under connection limits and spawns one session task
//! each; on drain it stops accepting and lets sessions tell miners to reconnect elsewhere.

use crate::events::{ConnectionEvent, Delivered, Event, EventSink};
use crate::session::Session;
use crate::stats::Stats;
use crate::upstream::{UpstreamHandle, UpstreamSettings};
use loka_config::{Config, Mode};
use loka_stratum::Difficulty;
use loka_stratum::extranonce::ExtranonceAllocator;
use loka_stratum::vardiff::VardiffConfig;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// State every session shares. Read-mostly; nothing here is locked on the share path except
/// a job's duplicate set and (at subscribe) the extranonce allocator.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    pub mode: Mode,
    pub stats: Arc<Stats>,
    pub events: EventSink,
    events_enabled: bool,
    /// Aggregate mode: the one upstream session all miners share.
    pub upstream: Option<UpstreamHandle>,
    /// Template for passthrough sessions' own upstreams.
    upstream_settings: RwLock<UpstreamSettings>,
    pub allocator: Mutex<ExtranonceAllocator>,
    pub version_mask: u32,
    /// Cancelled to drain: sessions send `client.reconnect` and close.
    pub drain: CancellationToken,
    /// Cancelled to stop everything (upstream tasks too).
    pub shutdown: CancellationToken,
    /// Admin "disconnect connection N".
    pub kicks: broadcast::Sender<u64>,
    /// Events for API subscribers (WebSocket/SSE); sent only while someone listens.
    pub api_events: broadcast::Sender<Event>,
    /// Live connections, for the admin console (updated at connect/authorize/close only).
    pub connections: Mutex<HashMap<u64, ConnectionInfo>>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// `server.max_connections`, shared by the TCP listener and the WebSocket `/stratum`.
    permits: Arc<Semaphore>,
    /// Every miner session, whichever way it came in: drain waits for them all.
    pub tracker: TaskTracker,
    next_id: AtomicU64,
}

/// Why a miner connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the proxy is draining")]
    Draining,
    #[error("server.max_connections reached")]
    Full,
    #[error("server.max_connections_per_ip reached")]
    PerIp,
}

/// A miner connection's place: its connection permit and per-IP slot, released on drop.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _ip: IpGuard,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        stats: Arc<Stats>,
        events: EventSink,
        events_enabled: bool,
        upstream_settings: UpstreamSettings,
        shutdown: CancellationToken,
    ) -> Result<Arc<Shared>, String> {
        let allocator = ExtranonceAllocator::new(config.mining.extranonce_prefix_size)
            .map_err(|e| e.to_string())?;
        let mode = config.mining.mode;
        let upstream = (mode == Mode::Aggregate)
            .then(|| crate::upstream::spawn(upstream_settings.clone(), shutdown.child_token()));
        let permits = Arc::new(Semaphore::new(config.server.max_connections as usize));
        Ok(Arc::new(Shared {
            version_mask: config.version_rolling_mask(),
            config: RwLock::new(config),
            mode,
            stats,
            events,
            events_enabled,
            upstream,
            upstream_settings: RwLock::new(upstream_settings),
            allocator: Mutex::new(allocator),
            drain: shutdown.child_token(),
            shutdown,
            kicks: broadcast::channel(64).0,
            api_events: broadcast::channel(4096).0,
            connections: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            permits,
            tracker: TaskTracker::new(),
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// Whether anyone consumes share events (storage, or an API subscriber right now).
    pub fn upstream_settings(&self) -> UpstreamSettings {
        self.upstream_settings.read().clone()
    }

    /// New pools for passthrough sessions started from now on.
    pub fn set_upstream_pools(&self, pools: Vec<crate::upstream::conn::PoolEndpoint>) {
        self.upstream_settings.write().pools = pools;
    }

    pub fn events_enabled(&self) -> bool {
        self.events_enabled || self.api_events.receiver_count() > 0
    }

    /// To API subscribers (WebSocket/SSE), only while someone listens.
    fn to_subscribers(&self, event: &Event) {
        if self.api_events.receiver_count() > 0 {
            let _ = self.api_events.send(event.clone());
        }
    }

    /// Hand a connection event to the storage queue and API subscribers without waiting; a
    /// full storage queue drops it, counted.
    pub fn emit(&self, event: Event) {
        self.to_subscribers(&event);
        if self.events_enabled && !self.events.emit(event) {
            self.stats.events_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Hand a share event to API subscribers and the storage queue. A paid share is never
    /// dropped for want of room: when the queue is full the returned future waits for it.
    /// The hand-over is done before this returns; the future is ready at once unless the
    /// queue was full, and then it is boxed, so sessions' futures carry a pointer rather
    /// than a send future at every call.
    pub fn emit_share(
        &self,
        event: Event,
    ) -> futures::future::Either<std::future::Ready<()>, futures::future::BoxFuture<'_, ()>> {
        use futures::future::Either;
        self.to_subscribers(&event);
        if !self.events_enabled {
            return Either::Left(std::future::ready(()));
        }
        match self.events.try_deliver(event) {
            Delivered::Now => Either::Left(std::future::ready(())),
            Delivered::Closed => {
                self.stats.events_dropped.fetch_add(1, Relaxed);
                Either::Left(std::future::ready(()))
            }
            Delivered::Full(event) => {
                self.stats.events_waited.fetch_add(1, Relaxed);
                Either::Right(Box::pin(async move {
                    if !self.events.send(*event).await {
                        self.stats.events_dropped.fetch_add(1, Relaxed);
                    }
                }))
            }
        }
    }

    /// With durable acknowledgement, how long an accepted share's reply may wait for its
    /// record to be stored; `None` when replies do not wait.
    pub fn durable_wait(&self) -> Option<std::time::Duration> {
        let storage = &self.config().storage;
        (self.events_enabled && storage.acknowledge == loka_config::AckPolicy::Durable)
            .then_some(storage.write_timeout)
    }

    /// Replace the configuration (config reload). Pools go to the upstream task.
    pub fn replace_config(&self, config: Arc<Config>) {
        *self.config.write() = config;
    }

    pub fn vardiff_config(&self) -> VardiffConfig {
        let c = &self.config.read().vardiff;
        VardiffConfig {
            target_shares_per_minute: c.target_shares_per_minute,
            min: Difficulty::new(c.min_difficulty).unwrap_or(Difficulty::ONE),
            max: Difficulty::new(c.max_difficulty).unwrap_or(Difficulty::ONE),
            retarget_interval: c.retarget_interval,
            tolerance: c.tolerance,
        }
    }

    /// Admit a miner connection (TCP or WebSocket alike): not while draining, within
    /// `server.max_connections` and the per-IP limit. A refusal is counted.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admission, Refusal> {
        let refused = |r: Refusal| {
            self.stats.connections_refused.fetch_add(1, Relaxed);
            tracing::debug!(%peer, reason = %r, "miner connection refused");
            r
        };
        if self.drain.is_cancelled() {
            return Err(refused(Refusal::Draining));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(refused(Refusal::Full));
        };
        let Some(ip) = self.admit_ip(peer.ip()) else {
            return Err(refused(Refusal::PerIp));
        };
        Ok(Admission {
            _permit: permit,
            _ip: ip,
        })
    }

    fn admit_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let limit = self.config.read().server.max_connections_per_ip;
        let mut map = self.per_ip.lock();
        let n = map.entry(ip).or_insert(0);
        if limit != 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpGuard {
            shared: self.clone(),
            ip,
        })
    }
}

/// What the admin console shows of a live connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionInfo {
    pub connection_id: u64,
    pub remote_addr: SocketAddr,
    pub connected_at: String,
    pub user_agent: Option<String>,
    pub workers: Vec<String>,
}

/// Releases a per-IP slot when the connection ends.
struct IpGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accept miners until drained; returns when the listener is closed.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(admission) = shared.admit(peer) else {
            continue;
        };
        shared
            .tracker
            .spawn(handle(stream, peer, shared.clone(), admission));
    }
    tracing::info!("stopped accepting miners");
}

async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, _admission: Admission) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    run_session(r, w, peer, shared).await;
}

/// Register a connection, run its session over any byte stream (TCP, or the WebSocket
/// bridge of the API's `/stratum`), and unregister it.
pub async fn run_session<R, W>(r: R, w: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let id = shared.next_id.fetch_add(1, Relaxed);
    shared.stats.connection_opened();
    shared.connections.lock().insert(
        id,
        ConnectionInfo {
            connection_id: id,
            remote_addr: peer,
            connected_at: crate::api::now_rfc3339(),
            user_agent: None,
            workers: Vec::new(),
        },
    );
    shared.emit(Event::Connection(ConnectionEvent::Connected {
        connection_id: id,
        remote: peer,
    }));
    let span = tracing::info_span!("connection", conn = id, peer = %peer);
    Session::new(id, peer, shared.clone())
        .run(r, w)
        .instrument(span)
        .await;
    shared.connections.lock().remove(&id);
    shared.stats.connection_closed();
}
