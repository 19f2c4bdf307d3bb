//! What every miner session shares: the running configuration, counters, where events go,
//! the aggregate upstream, the extranonce allocator, the connection registry and the drain
//! and shutdown tokens. Built once by [`crate::runtime`]; read-mostly.

use crate::events::{Delivered, Event, EventSink};
use crate::fanout::Lanes;
use crate::registry::{Admission, Refusal, Registry};
use crate::stats::Stats;
use crate::upstream::{UpstreamHandle, UpstreamSettings};
use loka_config::{Config, Mode};
use loka_stratum::Difficulty;
use loka_stratum::extranonce::{ExtranonceAllocator, ExtranonceError};
use loka_stratum::vardiff::VardiffConfig;
use parking_lot::{Mutex, RwLock};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What is left of handing over a record: ready at once, or (the queue was full) a boxed
/// wait for room that owns what it needs.
pub type Emit =
    futures::future::Either<std::future::Ready<()>, futures::future::BoxFuture<'static, ()>>;

/// An [`Emit`] with nothing left to wait for.
pub fn handed_over() -> Emit {
    futures::future::Either::Left(std::future::ready(()))
}

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
    /// Aggregate mode: the plain-TCP miners' sockets its jobs are written to by the fan-out
    /// tasks, one shard per runtime worker.
    pub lanes: Option<Arc<Lanes>>,
    /// Template for passthrough sessions' own upstreams.
    upstream_settings: RwLock<UpstreamSettings>,
    pub allocator: Mutex<ExtranonceAllocator>,
    pub version_mask: u32,
    /// Cancelled to drain: sessions send `client.reconnect` and close.
    pub drain: CancellationToken,
    /// Cancelled to stop everything (upstream tasks too).
    pub shutdown: CancellationToken,
    /// Events for API subscribers (WebSocket/SSE); sent only while someone listens.
    pub api_events: broadcast::Sender<Event>,
    /// Live connections: admission, ids, the admin console's list and kicks.
    pub registry: Arc<Registry>,
    /// Every miner session, whichever way it came in: drain waits for them all.
    pub tracker: TaskTracker,
}

#[cfg(test)]
impl Shared {
    /// The default configuration's shared state: no pools, no storage, events off.
    pub(crate) fn for_tests() -> Arc<Shared> {
        let cfg = Config::default();
        Shared::new(
            Arc::new(cfg.clone()),
            Arc::new(Stats::default()),
            EventSink::disabled(),
            false,
            UpstreamSettings::from_config(&cfg, vec![]),
            CancellationToken::new(),
        )
        .expect("the default extranonce prefix size is valid")
    }
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        stats: Arc<Stats>,
        events: EventSink,
        events_enabled: bool,
        mut upstream_settings: UpstreamSettings,
        shutdown: CancellationToken,
    ) -> Result<Arc<Shared>, ExtranonceError> {
        upstream_settings.tls_counters = stats.tls.clone();
        let allocator = ExtranonceAllocator::new(config.mining.extranonce_prefix_size)?;
        let mode = config.mining.mode;
        // One upstream for every miner: its jobs go out to all of them at once, and the
        // share writer holds its batches meanwhile (passthrough sessions' own upstreams,
        // one miner each, keep the template's hold, which nothing reads).
        let upstream = (mode == Mode::Aggregate).then(|| {
            let settings = UpstreamSettings {
                write_hold: events.hold().clone(),
                ..upstream_settings.clone()
            };
            crate::upstream::spawn(settings, shutdown.child_token())
        });
        let lanes = upstream.as_ref().map(|u| {
            let workers =
                tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
            let lanes = Lanes::new(workers);
            for shard in 0..lanes.shards() {
                tokio::spawn(crate::fanout::run(
                    lanes.clone(),
                    shard,
                    u.work.clone(),
                    stats.clone(),
                    events.hold().clone(),
                    shutdown.child_token(),
                ));
            }
            lanes
        });
        let registry = Registry::new(config.server.max_connections);
        Ok(Arc::new(Shared {
            version_mask: config.version_rolling_mask(),
            config: RwLock::new(config),
            mode,
            stats,
            events,
            events_enabled,
            upstream,
            lanes,
            upstream_settings: RwLock::new(upstream_settings),
            allocator: Mutex::new(allocator),
            drain: shutdown.child_token(),
            shutdown,
            api_events: broadcast::channel(4096).0,
            registry,
            tracker: TaskTracker::new(),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().clone()
    }

    /// Each pool's last failure, from every upstream task of the proxy.
    pub fn pool_errors(&self) -> Arc<crate::upstream::PoolErrors> {
        self.upstream_settings.read().pool_errors.clone()
    }

    pub fn upstream_settings(&self) -> UpstreamSettings {
        self.upstream_settings.read().clone()
    }

    /// The pools as last applied (configuration, reload or admin console).
    pub fn pools(&self) -> Vec<crate::upstream::conn::PoolEndpoint> {
        self.upstream_settings.read().pools.clone()
    }

    /// The name of the first pool of the list, if any.
    pub fn first_pool_name(&self) -> Option<Arc<str>> {
        self.upstream_settings
            .read()
            .pools
            .first()
            .map(|p| p.name.clone())
    }

    /// New pools for passthrough sessions started from now on.
    pub fn set_upstream_pools(&self, pools: Vec<crate::upstream::conn::PoolEndpoint>) {
        self.upstream_settings.write().pools = pools;
    }

    /// Whether anyone consumes share events (storage, or an API subscriber right now).
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
    /// queue was full, and then it is boxed and owns what it needs, so sessions' code that
    /// records shares can be synchronous and their futures carry a pointer at most.
    pub fn emit_share(self: &Arc<Self>, event: Event) -> Emit {
        use futures::future::Either;
        self.to_subscribers(&event);
        if !self.events_enabled {
            return handed_over();
        }
        match self.events.try_deliver(event) {
            Delivered::Now => handed_over(),
            Delivered::Closed => {
                self.stats.events_dropped.fetch_add(1, Relaxed);
                handed_over()
            }
            Delivered::Full(event) => {
                self.stats.events_waited.fetch_add(1, Relaxed);
                let shared = self.clone();
                Either::Right(Box::pin(async move {
                    if !shared.events.send(*event).await {
                        shared.stats.events_dropped.fetch_add(1, Relaxed);
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
    pub fn admit(&self, peer: SocketAddr) -> Result<Admission, Refusal> {
        let admitted = if self.drain.is_cancelled() {
            Err(Refusal::Draining)
        } else {
            let per_ip = self.config.read().server.max_connections_per_ip;
            self.registry.admit(peer.ip(), per_ip)
        };
        admitted.inspect_err(|r| {
            self.stats.connections_refused.fetch_add(1, Relaxed);
            tracing::debug!(%peer, reason = %r, "miner connection refused");
        })
    }
}
