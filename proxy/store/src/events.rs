//! Share and connection events leaving the Stratum path. The path never waits on a consumer:
//! events go into a bounded queue with `try_send`; a full queue is counted, never blocks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// One judged share: every share a miner submits produces exactly one.
#[derive(Debug, Clone)]
pub struct ShareEvent {
    pub at: SystemTime,
    pub connection_id: u64,
    pub worker: Arc<str>,
    pub pool: Arc<str>,
    /// The job id the miner submitted (the proxy's id).
    pub job_id: String,
    pub extranonce1: String,
    pub extranonce2: String,
    pub ntime: String,
    pub nonce: String,
    pub version: Option<String>,
    pub accepted: bool,
    pub reject_reason: Option<&'static str>,
    /// The difficulty the share was judged against (the credit it earns), exact.
    pub difficulty: rust_decimal::Decimal,
    /// The difficulty the hash actually reached (display only).
    pub hash_difficulty: f64,
    pub block_candidate: bool,
    /// Block hash in explorer byte order, for block candidates.
    pub block_hash: Option<String>,
    pub forwarded: bool,
}

/// Connection lifecycle events.
#[derive(Debug, Clone)]
pub enum ConnectionEvent {
    Connected {
        connection_id: u64,
        remote: SocketAddr,
    },
    /// A worker authorized on a connection, on the pool it mines for (empty when the proxy has
    /// no upstream yet).
    Authorized {
        at: SystemTime,
        connection_id: u64,
        worker: Arc<str>,
        pool: Arc<str>,
        user_agent: Option<String>,
        remote: SocketAddr,
    },
    /// A connection closed: one event per worker it had authorized (`None` when it had none).
    Disconnected {
        at: SystemTime,
        connection_id: u64,
        worker: Option<Arc<str>>,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub enum Event {
    Share(ShareEvent),
    Connection(ConnectionEvent),
}

/// The sending side handed to every session.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Event>>,
}

impl EventSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx: Some(tx) }, rx)
    }

    pub fn from_sender(tx: mpsc::Sender<Event>) -> Self {
        Self { tx: Some(tx) }
    }

    /// No consumer (events are only counted).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Hand an event over without waiting; `false` when the queue is full or closed.
    pub fn emit(&self, event: Event) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(event).is_ok(),
            None => true,
        }
    }
}
