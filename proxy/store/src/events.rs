//! Share and connection events leaving the Stratum path, through a bounded queue. Shares are
//! never dropped: when the queue is full the submitting session waits for room (and is
//! counted), so a stalled writer slows miners' replies instead of losing what they are owed.
//! Connection events that find the queue full are dropped and counted.

use compact_str::CompactString;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};

/// One judged share: every share a miner submits produces exactly one.
#[derive(Debug, Clone)]
pub struct ShareEvent {
    pub at: SystemTime,
    pub connection_id: u64,
    pub worker: Arc<str>,
    pub pool: Arc<str>,
    // The short fields are inline strings (up to 24 bytes without a heap allocation): an
    // event is built on a session's thread and dropped on the writer's, and heap strings
    // freed across threads cost both sides in the allocator.
    /// The job id the miner submitted (the proxy's id).
    pub job_id: CompactString,
    /// Hex, as the share's header used them.
    pub extranonce1: CompactString,
    pub extranonce2: CompactString,
    pub ntime: CompactString,
    pub nonce: CompactString,
    pub version: Option<CompactString>,
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
    /// With `storage.acknowledge = "durable"`: fired once the share's record is committed to
    /// the database or appended to the spool (dropped unfired if neither could take it).
    pub durable: Option<DurableAck>,
}

/// The writer's signal that a record is durable. Cloning shares the one signal (the API's
/// copy of an event carries it too but never fires it); the first [`DurableAck::take`] wins.
#[derive(Clone)]
pub struct DurableAck(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl DurableAck {
    /// The signal and the receiver the session waits on.
    pub fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    /// Take the sender (the writer does this once it holds the record).
    pub fn take(&self) -> Option<oneshot::Sender<()>> {
        self.0.lock().take()
    }
}

impl std::fmt::Debug for DurableAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DurableAck")
    }
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

/// How [`EventSink::try_deliver`] went.
#[derive(Debug)]
pub enum Delivered {
    Now,
    /// The queue is full: here is the event back.
    Full(Box<Event>),
    Closed,
}

/// The sending side handed to every session, with the writer's hold (see
/// [`crate::WriteHold`]: the proxy opens it while a job goes out to every miner).
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    tx: Option<mpsc::Sender<Event>>,
    hold: crate::WriteHold,
}

impl EventSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self::from_sender(tx), rx)
    }

    pub fn from_sender(tx: mpsc::Sender<Event>) -> Self {
        Self {
            tx: Some(tx),
            hold: crate::WriteHold::default(),
        }
    }

    /// The same sink, with the hold its writer reads.
    pub fn with_hold(self, hold: crate::WriteHold) -> Self {
        Self { hold, ..self }
    }

    /// The writer's hold (one nobody reads when the sink was made from a bare sender).
    pub fn hold(&self) -> &crate::WriteHold {
        &self.hold
    }

    /// No consumer (events are only counted).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Hand an event over without waiting; `false` when the queue is full or closed.
    pub fn emit(&self, event: Event) -> bool {
        match &self.tx {
            Some(tx) => tx.try_send(event).is_ok(),
            None => true,
        }
    }

    /// Hand an event over without waiting; a full queue gives the event back
    /// (`Delivered::Full`) for [`EventSink::send`], which waits for room.
    pub fn try_deliver(&self, event: Event) -> Delivered {
        let Some(tx) = &self.tx else {
            return Delivered::Now;
        };
        match tx.try_send(event) {
            Ok(()) => Delivered::Now,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivered::Closed,
            Err(mpsc::error::TrySendError::Full(event)) => Delivered::Full(Box::new(event)),
        }
    }

    /// Hand an event over, waiting for room (backpressure instead of a lost share); false
    /// when the writer is gone.
    pub async fn send(&self, event: Event) -> bool {
        match &self.tx {
            Some(tx) => tx.send(event).await.is_ok(),
            None => true,
        }
    }
}
