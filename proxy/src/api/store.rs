//! What the API reads of the share store.

use serde_json::Value;
use std::time::Duration;

/// What the API needs to know about the share store (implemented for `loka_store::StoreHandle`).
pub trait StoreProbe: Send + Sync + 'static {
    /// Usable: writes succeed, or the spool takes them without loss.
    fn ready(&self) -> bool;
    /// The database itself answers (else shares are going to the spool).
    fn database_up(&self) -> bool;
    /// Body of `/health/database`.
    fn health(&self) -> futures::future::BoxFuture<'_, Value>;
    /// Events waiting in the writer's queue (not yet in the database or the spool).
    fn queue_depth(&self) -> u64;
    /// Bytes held in the spool.
    fn spool_bytes(&self) -> u64;
    /// Workers with activity within `window`, from the database (at most `limit`).
    fn worker_stats(
        &self,
        window: Duration,
        limit: i64,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Vec<loka_store::stats::WorkerStats>, loka_store::Error>,
    >;
    /// One worker's shares over `window` in buckets of `bucket`, from the database.
    fn worker_history(
        &self,
        worker: String,
        window: Duration,
        bucket: Duration,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Vec<loka_store::stats::HistoryPoint>, loka_store::Error>,
    >;
}

impl StoreProbe for loka_store::StoreHandle {
    fn worker_stats(
        &self,
        window: Duration,
        limit: i64,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Vec<loka_store::stats::WorkerStats>, loka_store::Error>,
    > {
        Box::pin(async move { self.store().worker_stats(window, limit, None).await })
    }
    fn worker_history(
        &self,
        worker: String,
        window: Duration,
        bucket: Duration,
    ) -> futures::future::BoxFuture<
        '_,
        Result<Vec<loka_store::stats::HistoryPoint>, loka_store::Error>,
    > {
        Box::pin(async move { self.store().worker_history(&worker, window, bucket).await })
    }
    fn ready(&self) -> bool {
        let s = self.status();
        s.db_up || (s.spool_errors == 0 && s.records_lost == 0)
    }
    fn database_up(&self) -> bool {
        self.status().db_up
    }
    fn health(&self) -> futures::future::BoxFuture<'_, Value> {
        Box::pin(async move {
            serde_json::to_value(loka_store::StoreHandle::health(self).await).unwrap_or(Value::Null)
        })
    }
    fn queue_depth(&self) -> u64 {
        let s = self.status();
        s.queue_depth + s.pending
    }
    fn spool_bytes(&self) -> u64 {
        self.status().spool_bytes
    }
}
