//! Sustained write rate of the storage writer into PostgreSQL.
//!
//! ```text
//! eval "$(tests/pg.sh up)"
//! CARGO_TARGET_DIR=/work/target-store cargo bench -p loka-store --bench writer
//! ```
//! `LOKA_BENCH_SQLITE=/tmp/bench.db` measures the embedded SQLite store instead.
//! Env: LOKA_BENCH_SHARES (default 500000), LOKA_BENCH_WORKERS (default 1000),
//! LOKA_BENCH_BATCH (storage.batch_size), LOKA_BENCH_CONNECTIONS (storage.max_connections;
//! the writer runs max_connections / 2 batches at once).
//! LOKA_BENCH_RATE (events/s; default 0 = all at once). Events are built before the clock
//! starts; the clock runs from the first event handed to the queue until the last row is
//! committed. All at once is more than the queue holds, so the writer spills to the spool and
//! replays: that measures the spool path. At a steady rate (`LOKA_BENCH_RATE=60000`) a
//! writer that keeps up spools nothing and commits the last row within about one flush
//! interval of the last send.

use loka_store::compact_str::format_compact;
use loka_store::events::{Event, ShareEvent};
use loka_store::{PoolInfo, Store, WriterOptions, spawn_writer};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sqlite = std::env::var("LOKA_BENCH_SQLITE").ok();
    if sqlite.is_none() && std::env::var("LOKA_TEST_DATABASE_URL").is_err() {
        eprintln!(
            "writer bench: LOKA_TEST_DATABASE_URL is not set; run `eval \"$(tests/pg.sh up)\"` first"
        );
        return;
    };
    let shares: u32 = env_or("LOKA_BENCH_SHARES", 500_000);
    let workers: u32 = env_or("LOKA_BENCH_WORKERS", 1_000);
    let rate: u32 = env_or("LOKA_BENCH_RATE", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let url = match &sqlite {
            Some(_) => String::new(),
            None => loka_test_support::fresh_pg_database().await,
        };
        let spool = std::env::temp_dir().join(format!("loka-bench-spool-{}", std::process::id()));
        let mut cfg = loka_test_support::storage_config(&url, &spool);
        cfg.batch_size = env_or("LOKA_BENCH_BATCH", cfg.batch_size as u32) as usize;
        cfg.max_connections = env_or("LOKA_BENCH_CONNECTIONS", cfg.max_connections);
        if let Some(path) = &sqlite {
            let _ = std::fs::remove_file(path);
            cfg.sqlite_path = path.clone();
        }
        let pools = vec![PoolInfo {
            name: "main".into(),
            host: "pool.example.com".into(),
            port: 3333,
            username: "farm".into(),
        }];
        let store = Store::open(&cfg).await.unwrap();
        store.upsert_pools(&pools).await.unwrap();
        let names: Vec<Arc<str>> = (0..workers)
            .map(|i| Arc::from(format!("miner{}.rig{i}", i % 100).as_str()))
            .collect();
        let pool: Arc<str> = Arc::from("main");
        let now = SystemTime::now();
        // Each share is timed where the steady schedule below sends it (1 µs apart when all
        // go at once), so per-worker time (the activity interval) passes as in a farm.
        let spacing_us = if rate == 0 {
            1
        } else {
            (1_000_000 / u64::from(rate)).max(1)
        };
        let events: Vec<Event> = (0..shares)
            .map(|i| {
                let accepted = i % 50 != 0;
                Event::Share(ShareEvent {
                    at: now + Duration::from_micros(u64::from(i) * spacing_us),
                    connection_id: u64::from(i % workers),
                    worker: names[(i % workers) as usize].clone(),
                    pool: pool.clone(),
                    job_id: format_compact!("{:x}", i / 10_000),
                    extranonce1: "0a0b0c0d".into(),
                    extranonce2: format_compact!("{i:016x}"),
                    reject_reason: (!accepted).then_some("low_difficulty"),
                    difficulty: Decimal::new(16384, 0),
                    hash_difficulty: 20000.0,
                    forwarded: true,
                    ..loka_test_support::share_event("", i.wrapping_mul(2_654_435_761), accepted)
                })
            })
            .collect();
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let handle = spawn_writer(
            store.clone(),
            rx,
            WriterOptions {
                // as the proxy does when it has just opened the store
                database_ready: true,
                ..WriterOptions::from_config(&cfg, &pools)
            },
            cfg.queue_capacity,
        )
        .unwrap();
        // Warm-up: the first write checks the migrations, makes partitions and caches the
        // statement; one share takes that path before the clock starts.
        let mut warmup = match &events[0] {
            Event::Share(e) => e.clone(),
            Event::Connection(_) => unreachable!(),
        };
        warmup.worker = Arc::from("warmup.0");
        tx.send(Event::Share(warmup)).await.unwrap();
        while handle.status().submissions_inserted < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let spooled_before = handle.status().records_spooled;
        let started = Instant::now();
        if rate == 0 {
            for e in events {
                tx.send(e).await.unwrap();
            }
        } else {
            // rate / 100 events every 10 ms, on a fixed schedule (no drift)
            let per_tick = (rate / 100).max(1) as usize;
            let mut events = events.into_iter();
            let mut tick = 0u32;
            loop {
                let chunk: Vec<Event> = events.by_ref().take(per_tick).collect();
                if chunk.is_empty() {
                    break;
                }
                for e in chunk {
                    tx.send(e).await.unwrap();
                }
                tick += 1;
                tokio::time::sleep_until((started + Duration::from_millis(10) * tick).into()).await;
            }
        }
        let sent = started.elapsed();
        while handle.status().submissions_inserted < 1 + u64::from(shares) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        let s = handle.status();
        handle.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            store.count_submissions().await.unwrap(),
            1 + i64::from(shares)
        );
        let offered = if rate == 0 {
            "all at once".to_string()
        } else {
            format!(
                "offered {:.0}/s, last row committed {:.0} ms after the last send",
                f64::from(shares) / sent.as_secs_f64(),
                (took - sent).as_secs_f64() * 1e3
            )
        };
        println!(
            "writer → {:?}: {shares} submissions from {workers} workers in {:.2} s = {:.0} rows/s \
             ({offered}; queue handed over in {:.2} s; {} batches, avg {:.1} ms, max {:.1} ms; \
             spooled {})",
            store.backend(),
            took.as_secs_f64(),
            f64::from(shares) / took.as_secs_f64(),
            sent.as_secs_f64(),
            s.batches_written,
            s.batch_latency_avg_ms,
            s.batch_latency_max_ms,
            s.records_spooled - spooled_before,
        );
        let _ = std::fs::remove_dir_all(&spool);
    });
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
