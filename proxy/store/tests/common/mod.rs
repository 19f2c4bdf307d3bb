//! Event builders and a writer harness shared by the store's integration tests.
#![allow(dead_code)]

use loka_store::compact_str::format_compact;
use loka_store::events::{ConnectionEvent, Event, ShareEvent};
use loka_store::sink::{Sink, SinkOptions};
use loka_store::{PoolInfo, Store, StoreHandle, WriterOptions, spawn_writer};
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

pub fn pools() -> Vec<PoolInfo> {
    vec![
        PoolInfo {
            name: "main".into(),
            host: "stratum.example.com".into(),
            port: 3333,
            username: "farm".into(),
        },
        PoolInfo {
            name: "backup".into(),
            host: "10.0.0.2".into(),
            port: 4444,
            username: "farm".into(),
        },
    ]
}

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub fn share(worker: &str, pool: &str, nonce: u32, accepted: bool, difficulty: &str) -> Event {
    share_at(worker, pool, nonce, accepted, difficulty, SystemTime::now())
}

pub fn share_at(
    worker: &str,
    pool: &str,
    nonce: u32,
    accepted: bool,
    difficulty: &str,
    at: SystemTime,
) -> Event {
    Event::Share(ShareEvent {
        at,
        connection_id: 1,
        pool: Arc::from(pool),
        job_id: format_compact!("{:x}", nonce / 1000),
        extranonce1: "00010203".into(),
        extranonce2: "0000000000000001".into(),
        version: None,
        reject_reason: (!accepted).then_some("low_difficulty"),
        difficulty: d(difficulty),
        hash_difficulty: 1.0,
        ..loka_test_support::share_event(worker, nonce, accepted)
    })
}

pub fn authorized(conn: u64, worker: &str) -> Event {
    Event::Connection(ConnectionEvent::Authorized {
        at: std::time::SystemTime::now(),
        connection_id: conn,
        worker: Arc::from(worker),
        pool: Arc::from(""),
        user_agent: Some("cgminer/4.12".into()),
        remote: "192.0.2.7:50000".parse().unwrap(),
    })
}

pub fn disconnected(conn: u64, worker: &str) -> Event {
    Event::Connection(ConnectionEvent::Disconnected {
        at: std::time::SystemTime::now(),
        connection_id: conn,
        worker: Some(Arc::from(worker)),
        reason: "peer closed".into(),
    })
}

/// A store on `url` (migrated, pools recorded) and a running writer spooling to `spool`,
/// told the database is ready, as the proxy does after preparing it.
pub async fn writer(
    url: &str,
    spool: &std::path::Path,
) -> (Store, StoreHandle, mpsc::Sender<Event>) {
    writer_ready(url, spool, true).await
}

/// [`writer`], saying whether the database is known to be ready at start.
pub async fn writer_ready(
    url: &str,
    spool: &std::path::Path,
    database_ready: bool,
) -> (Store, StoreHandle, mpsc::Sender<Event>) {
    writer_with(url, spool, |o| WriterOptions {
        database_ready,
        ..o
    })
    .await
}

/// [`writer`] with the options `options` makes of the configuration's.
pub async fn writer_with(
    url: &str,
    spool: &std::path::Path,
    options: impl FnOnce(WriterOptions) -> WriterOptions,
) -> (Store, StoreHandle, mpsc::Sender<Event>) {
    let cfg = loka_test_support::storage_config(url, spool);
    let store = Store::open(&cfg).await.expect("store opens");
    store.upsert_pools(&pools()).await.unwrap();
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let handle = spawn_writer(
        store.clone(),
        rx,
        options(WriterOptions::from_config(&cfg, &pools())),
        cfg.queue_capacity,
    )
    .expect("writer starts");
    (store, handle, tx)
}

/// Wait until `f` holds (polling), up to `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A sink as the writer makes it, on a migrated store.
pub fn sink(store: &Store) -> Sink {
    sink_holding(store, None)
}

/// [`sink`], its SQLite statements pausing while `hold` is open.
pub fn sink_holding(store: &Store, hold: Option<loka_store::WriteHold>) -> Sink {
    Sink::new(
        store.clone(),
        SinkOptions {
            run_migrations: false,
            pools: pools(),
            partitions_ahead: 1,
            retention_months: 0,
            maintenance_every: Duration::from_secs(3600),
            hold,
        },
    )
}
