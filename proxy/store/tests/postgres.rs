//! Against a real PostgreSQL (`eval "$(tests/pg.sh up)"` first): schema, constraints,
//! cascades, the unique key, partitions and retention, the writer, accounting, the three
//! reporting queries and the read side's plans. Each test gets its own database.

mod common;

use common::*;
use loka_store::accounting::{Method, NewEarning};
use loka_store::events::Event;
use loka_store::record::{Record, Recorder};
use loka_store::sink::ACTIVITY_EVERY_US;
use loka_store::{Backend, Store, WriterOptions};
use loka_test_support::fresh_pg_database;
use sqlx::PgPool;
use std::time::{Duration, SystemTime};

async fn migrated() -> (Store, PgPool) {
    let url = fresh_pg_database().await;
    let cfg = loka_test_support::storage_config(&url, std::path::Path::new("/nonexistent"));
    let store = Store::open(&cfg).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    store.upsert_pools(&pools()).await.unwrap();
    let pg = store.pg().unwrap().clone();
    (store, pg)
}

/// The SQLSTATE of a failed statement.
async fn refused(pg: &PgPool, sql: impl Into<String>) -> String {
    let sql: String = sql.into();
    match sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .execute(pg)
        .await
    {
        Ok(_) => panic!("accepted: {sql}"),
        Err(sqlx::Error::Database(e)) => e.code().unwrap().into_owned(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn migrations_report_their_version_and_are_idempotent() {
    let url = fresh_pg_database().await;
    let mut cfg = loka_test_support::storage_config(&url, std::path::Path::new("/x"));
    cfg.run_migrations = false;
    let store = Store::open(&cfg).await.unwrap();
    let before = store.migration_status().await.unwrap();
    assert_eq!(before.current_version, None);
    assert_eq!(before.pending, 2);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let after = store.migration_status().await.unwrap();
    assert_eq!(after.current_version.as_deref(), Some("20261125000001"));
    assert_eq!(after.pending, 0);
    let health = store.health(None).await;
    assert_eq!(health.status, "healthy");
    let json = serde_json_like(&health);
    assert!(json.contains("current_version"), "{json}");
}

fn serde_json_like(h: &loka_store::DatabaseHealth) -> String {
    format!("{h:?}")
}

#[tokio::test]
async fn constraints_reject_bad_rows() {
    let (_store, pg) = migrated().await;
    // port
    assert_eq!(
        refused(
            &pg,
            "INSERT INTO pools (name, host, port, username) VALUES ('p0', 'h', 0, 'u')"
        )
        .await,
        "23514"
    );
    assert_eq!(
        refused(
            &pg,
            "INSERT INTO pools (name, host, port, username) VALUES ('p1', 'h', 65536, 'u')"
        )
        .await,
        "23514"
    );
    // BTC address length (26..=62)
    assert_eq!(
        refused(
            &pg,
            "INSERT INTO miners (username, btc_address) VALUES ('x', 'bc1short')"
        )
        .await,
        "23514"
    );
    sqlx::query("INSERT INTO miners (username, btc_address) VALUES ('ok', 'bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq')")
        .execute(&pg)
        .await
        .unwrap();
    // status
    assert_eq!(
        refused(&pg, "INSERT INTO earnings (pool_id, amount_btc, status) SELECT id, 1, 'paid' FROM pools WHERE name = 'main'").await,
        "23514"
    );
    // negative / zero amounts
    assert_eq!(
        refused(&pg, "INSERT INTO earnings (pool_id, amount_btc) SELECT id, -1 FROM pools WHERE name = 'main'").await,
        "23514"
    );
    assert_eq!(
        refused(&pg, "INSERT INTO earnings (pool_id, amount_btc, fee_btc) SELECT id, 1, -0.1 FROM pools WHERE name = 'main'").await,
        "23514"
    );
    sqlx::query(
        "INSERT INTO earnings (pool_id, amount_btc) SELECT id, 1 FROM pools WHERE name = 'main'",
    )
    .execute(&pg)
    .await
    .unwrap();
    assert_eq!(
        refused(&pg, "INSERT INTO distributions (earning_id, miner_id, amount_btc, percentage) SELECT e.id, m.id, -0.5, 0.5 FROM earnings e, miners m").await,
        "23514"
    );
    assert_eq!(
        refused(&pg, "INSERT INTO distributions (earning_id, miner_id, amount_btc, percentage) SELECT e.id, m.id, 0.5, 1.5 FROM earnings e, miners m").await,
        "23514"
    );
    assert_eq!(
        refused(&pg, "INSERT INTO distributions (earning_id, miner_id, amount_btc, percentage) SELECT e.id, m.id, 0.5, 0 FROM earnings e, miners m").await,
        "23514"
    );
    assert_eq!(
        refused(&pg, "INSERT INTO distributions (earning_id, miner_id, amount_btc, percentage, status) SELECT e.id, m.id, 0.5, 0.5, 'lost' FROM earnings e, miners m").await,
        "23514"
    );
    // submissions.worker_id must name a worker: through the partitioned table and straight
    // into a partition (the statement-level check that replaces the per-row foreign key)
    let unknown_worker = "INSERT INTO submissions (worker_id, job_id, extranonce2, ntime, nonce, accepted, difficulty) \
         VALUES (gen_random_uuid(), 'j', '00', '00', '00', true, 1)";
    assert_eq!(refused(&pg, unknown_worker).await, "23503");
    let partition: String = sqlx::query_scalar("SELECT loka_submission_partition(NOW())")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(
        refused(&pg, unknown_worker.replacen("submissions", &partition, 1)).await,
        "23503"
    );
    // unique pool name, duplicate tx hash
    assert_eq!(
        refused(
            &pg,
            "INSERT INTO pools (name, host, port, username) VALUES ('main', 'h', 1, 'u')"
        )
        .await,
        "23505"
    );
}

#[tokio::test]
async fn the_unique_key_makes_a_replayed_share_harmless_and_cascades_work() {
    let (store, pg) = migrated().await;
    let spool = tempfile::tempdir().unwrap();
    let (_s, handle, tx) = writer(store_url(&store).as_str(), spool.path()).await;
    let at = SystemTime::now();
    let events = vec![
        authorized(1, "alice.rig1"),
        share_at("alice.rig1", "main", 1, true, "0.5", at),
        share_at("alice.rig1", "main", 2, true, "0.5", at),
        share("bob.s9", "main", 3, false, "1"),
    ];
    for e in events.clone() {
        tx.send(e).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.count_submissions().await.unwrap() == 3
        })
        .await
    );
    // The same events again: new records (new ids), but the same share identity → nothing new.
    // (The writer's own replays carry the same id and instant: see the spool tests.)
    for e in events.into_iter().skip(1) {
        tx.send(e).await.unwrap();
    }
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.spool_bytes, 0);
    assert_eq!(store.count_submissions().await.unwrap(), 3);
    // the unique key refused the plain first try; the second skipped what was there
    let status = handle.status();
    assert!(status.batches_retried >= 1, "{status:?}");
    assert!(status.duplicates_ignored >= 3, "{status:?}");
    // A verbatim duplicate of the key is refused by the database itself.
    let duplicate = "INSERT INTO submissions (worker_id, job_id, extranonce2, ntime, nonce, accepted, difficulty, submitted_at) \
         SELECT worker_id, job_id, extranonce2, ntime, nonce, accepted, difficulty, submitted_at \
         FROM submissions LIMIT 1";
    assert_eq!(refused(&pg, duplicate).await, "23505");
    // worker lifecycle and activity
    let (active, ua, addr, last): (bool, Option<String>, Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT active, user_agent::text, host(remote_addr), last_activity FROM workers WHERE worker_name = 'alice.rig1'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert!(active);
    assert_eq!(ua.as_deref(), Some("cgminer/4.12"));
    assert_eq!(addr.as_deref(), Some("192.0.2.7"));
    assert!(last.is_some());
    let miners: Vec<String> = sqlx::query_scalar("SELECT username::text FROM miners ORDER BY 1")
        .fetch_all(&pg)
        .await
        .unwrap();
    assert_eq!(miners, vec!["alice", "bob"]);
    // a referenced worker keeps its id, and workers is not truncated under its submissions
    assert_eq!(
        refused(
            &pg,
            "UPDATE workers SET id = gen_random_uuid() WHERE worker_name = 'bob.s9'"
        )
        .await,
        "23503"
    );
    assert_eq!(refused(&pg, "TRUNCATE workers CASCADE").await, "0A000");
    // cascades: a miner takes its workers, their submissions and its distributions along
    let e = store
        .add_earning(&NewEarning::new("main", d("0.001")))
        .await
        .unwrap();
    store
        .distribute(e, &Method::Proportional { since: None })
        .await
        .unwrap();
    sqlx::query("DELETE FROM miners WHERE username = 'alice'")
        .execute(&pg)
        .await
        .unwrap();
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM workers), (SELECT COUNT(*) FROM submissions), (SELECT COUNT(*) FROM distributions)",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(left, (1, 1, 0));
    // and a pool takes its workers, submissions and earnings
    sqlx::query("DELETE FROM pools WHERE name = 'main'")
        .execute(&pg)
        .await
        .unwrap();
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM workers), (SELECT COUNT(*) FROM submissions), (SELECT COUNT(*) FROM earnings)",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(left, (0, 0, 0));
}

fn store_url(store: &Store) -> String {
    // The tests open the writer on the same database as `store`.
    let opts = store.pg().unwrap().connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap()
    )
}

#[tokio::test]
async fn partitions_are_made_ahead_and_retention_drops_old_ones() {
    let (store, pg) = migrated().await;
    let parts = store.partitions().await.unwrap();
    assert!(parts.len() >= 3, "{parts:?}");
    let now = chrono::Utc::now();
    assert!(
        parts.contains(&format!("submissions_{}", now.format("%Y_%m"))),
        "{parts:?}"
    );
    // an old share (a long outage replayed from the spool) gets its month's partition
    let old = chrono::DateTime::parse_from_rfc3339("2020-03-15T12:00:00Z").unwrap();
    let spool = tempfile::tempdir().unwrap();
    let (_s, handle, tx) = writer(&store_url(&store), spool.path()).await;
    tx.send(share_at("carol.x", "main", 9, true, "1", old.into()))
        .await
        .unwrap();
    tx.send(share("carol.x", "main", 10, true, "1"))
        .await
        .unwrap();
    handle.shutdown(Duration::from_secs(5)).await;
    assert!(
        store
            .partitions()
            .await
            .unwrap()
            .contains(&"submissions_2020_03".to_string())
    );
    let in_part: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions_2020_03")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(in_part, 1);
    let dropped = store.apply_retention(12).await.unwrap();
    assert_eq!(dropped, vec!["submissions_2020_03".to_string()]);
    assert_eq!(store.count_submissions().await.unwrap(), 1);
    assert!(store.partitions().await.unwrap().len() >= 3);
}

#[tokio::test]
async fn distributions_sum_to_the_satoshi_and_the_reporting_queries_answer() {
    let (store, pg) = migrated().await;
    let spool = tempfile::tempdir().unwrap();
    let (_s, handle, tx) = writer(&store_url(&store), spool.path()).await;
    let start = SystemTime::now() - Duration::from_secs(60);
    let mut n = 0;
    for (worker, count, diff) in [
        ("a.1", 3, "1"),
        ("b.1", 3, "1"),
        ("c.1", 3, "1"),
        ("d.1", 2, "0.5"),
    ] {
        tx.send(authorized(n as u64 + 100, worker)).await.unwrap();
        for _ in 0..count {
            n += 1;
            tx.send(share_at(
                worker,
                "main",
                n,
                true,
                diff,
                start + Duration::from_millis(n as u64),
            ))
            .await
            .unwrap();
        }
    }
    tx.send(share("d.1", "main", 999, false, "0.5"))
        .await
        .unwrap();
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(store.count_submissions().await.unwrap(), 12);

    // 7 satoshis over a, b, c (3 each) and d (2 × 0.5 = 1): weights 3:3:3:1
    let e = store
        .add_earning(&NewEarning {
            transaction_hash: Some("ab".repeat(32)),
            block_height: Some(840_000),
            ..NewEarning::new("main", d("0.00000007"))
        })
        .await
        .unwrap();
    let dist = store
        .distribute(e, &Method::Proportional { since: None })
        .await
        .unwrap();
    assert_eq!(dist.shares, 11);
    assert_eq!(dist.total_weight, d("10"));
    assert_eq!(dist.distributed_btc, d("0.00000007"));
    let parts = store.distribution_parts(e).await.unwrap();
    assert_eq!(
        parts
            .iter()
            .map(|p| p.amount_btc)
            .sum::<rust_decimal::Decimal>(),
        d("0.00000007")
    );
    // quotas 2.1, 2.1, 2.1, 0.7 → 2, 2, 2, 0 + 1 leftover to d (largest remainder 0.7)
    let amounts: Vec<(String, String)> = parts
        .iter()
        .map(|p| (p.miner.clone(), p.amount_btc.to_string()))
        .collect();
    assert_eq!(
        amounts,
        vec![
            ("a".into(), "0.00000002".into()),
            ("b".into(), "0.00000002".into()),
            ("c".into(), "0.00000002".into()),
            ("d".into(), "0.00000001".into())
        ]
    );
    // once only
    assert!(
        store
            .distribute(e, &Method::Proportional { since: None })
            .await
            .is_err()
    );
    let status: String = sqlx::query_scalar("SELECT status::text FROM earnings WHERE id = $1")
        .bind(e)
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(status, "distributed");

    // 6.25 BTC by PPLNS over the last 5 difficulty: d.1 (2 × 0.5), c.1 (3), b.1 (1 of its last)
    let e2 = store
        .add_earning(&NewEarning::new("main", d("6.25")))
        .await
        .unwrap();
    let dist = store
        .distribute(e2, &Method::Pplns { window: d("5") })
        .await
        .unwrap();
    assert_eq!(dist.distributed_btc, d("6.25"));
    let by: std::collections::HashMap<_, _> = dist
        .parts
        .iter()
        .map(|p| (p.miner.as_str(), p.amount_btc))
        .collect();
    assert_eq!(by["c"], d("3.75"));
    assert_eq!(by["d"], d("1.25"));
    assert_eq!(by["b"], d("1.25"));
    assert!(!by.contains_key("a"));

    // The three reporting queries.
    let workers = store.active_workers_by_pool("main").await.unwrap();
    assert_eq!(workers.len(), 4);
    let d1 = workers.iter().find(|w| w.worker_name == "d.1").unwrap();
    assert_eq!((d1.total_shares, d1.accepted_shares), (3, 2));
    assert_eq!(d1.username, "d");
    let perf = store.pool_performance().await.unwrap();
    let main = perf.iter().find(|p| p.name == "main").unwrap();
    assert_eq!(
        (main.active_workers, main.total_shares, main.accepted_shares),
        (4, 12, 11)
    );
    assert_eq!(main.acceptance_rate, Some(d("91.67")));
    let backup = perf.iter().find(|p| p.name == "backup").unwrap();
    assert_eq!(
        (
            backup.active_workers,
            backup.total_shares,
            backup.acceptance_rate
        ),
        (0, 0, None)
    );
    let summary = store.miner_earnings_summary().await.unwrap();
    assert_eq!(summary[0].username, "c");
    assert_eq!(summary[0].total_earnings_btc, Some(d("3.75000002")));
    assert_eq!(
        summary
            .iter()
            .map(|m| m.total_earnings_btc.unwrap_or_default())
            .sum::<rust_decimal::Decimal>(),
        d("6.25000007")
    );
    assert!(
        summary
            .iter()
            .all(|m| m.active_workers == 1 && m.confirmed_payments == 0)
    );

    // read side
    let stats = store
        .worker_stats(Duration::from_secs(3600), 100, None)
        .await
        .unwrap();
    assert_eq!(stats.len(), 4);
    let a = stats.iter().find(|w| w.worker_name == "a.1").unwrap();
    assert_eq!((a.submitted, a.accepted, a.rejected), (3, 3, 0));
    assert_eq!(a.accepted_difficulty, d("3"));
    assert!(a.hashrate_hs > 0.0);
    let hist = store
        .worker_history("a.1", Duration::from_secs(3600), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(hist.iter().map(|h| h.accepted).sum::<i64>(), 3);
}

#[tokio::test]
async fn hot_read_queries_use_the_indexes() {
    let (store, pg) = migrated().await;
    let spool = tempfile::tempdir().unwrap();
    let (_s, handle, tx) = writer(&store_url(&store), spool.path()).await;
    let now = SystemTime::now();
    // 200 workers × 500 shares spread over 3 days
    for i in 0..100_000u32 {
        let w = format!("m{}.w{}", i % 40, i % 200);
        let at = now - Duration::from_secs(u64::from(i) * 259_200 / 100_000);
        tx.send(share_at(&w, "main", i, i % 50 != 0, "1", at))
            .await
            .unwrap();
    }
    let report = handle.shutdown(Duration::from_secs(60)).await;
    assert_eq!(report.spool_bytes, 0);
    assert_eq!(store.count_submissions().await.unwrap(), 100_000);
    sqlx::query("ANALYZE").execute(&pg).await.unwrap();
    let plans = store.explain_hot_queries("m1.w1", "main").await.unwrap();
    let mut doc = String::new();
    for (name, plan) in &plans {
        doc.push_str(&format!("-- {name}\n{plan}\n\n"));
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("explain-postgres.txt");
    std::fs::write(&out, &doc).unwrap();
    println!("{doc}");
    let get = |n: &str| plans.iter().find(|p| p.0 == n).unwrap().1.clone();
    // The partitions holding the data are read through the share key's index
    // (worker_id, submitted_at, …); empty future partitions may show a trivial seq scan.
    let current = format!("submissions_{}", chrono::Utc::now().format("%Y_%m"));
    for name in ["worker_stats", "worker_history"] {
        let plan = get(name);
        assert!(
            plan.contains("worker_id_submitted_at") && plan.contains("(worker_id = w.id)"),
            "{name} does not use the share key index:\n{plan}"
        );
        assert!(
            !plan.contains(&format!("Seq Scan on {current}")),
            "{name} scans {current}:\n{plan}"
        );
    }
}

/// job_id, nonce, version, accepted, reject_reason, difficulty, block_hash, submitted_at
type StoredShare = (
    String,
    String,
    Option<String>,
    bool,
    Option<String>,
    rust_decimal::Decimal,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
);

/// On its own thread the writer uses the shared pool with PostgreSQL (its statements run in
/// the server, not on a thread of ours), and its end leaves that pool open for the API's reads.
#[tokio::test]
async fn a_writer_on_its_own_thread_leaves_the_shared_pool_open_when_it_ends() {
    let (migrated, _pg) = migrated().await;
    let spool = tempfile::tempdir().unwrap();
    let (store, handle, tx) = writer_with(&store_url(&migrated), spool.path(), |o| WriterOptions {
        dedicated_thread: true,
        database_ready: true,
        ..o
    })
    .await;
    tx.send(share("erin.rig", "main", 1, true, "1"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            handle.status().submissions_inserted == 1
        })
        .await,
        "{:?}",
        handle.status()
    );
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        store.count_submissions().await.ok(),
        Some(1),
        "the shared pool still answers after the writer ended"
    );
}

/// A writer started with the database known to be up (the proxy has just migrated it) writes
/// its first shares directly; one started without that knowledge spools them until its first
/// write succeeds. Both store every share exactly once.
#[tokio::test]
async fn a_writer_that_starts_with_the_database_up_writes_its_first_shares_directly() {
    for ready in [false, true] {
        let (store, _pg) = migrated().await;
        let spool = tempfile::tempdir().unwrap();
        let (_s, handle, tx) = writer_ready(&store_url(&store), spool.path(), ready).await;
        for n in 0..1_200u32 {
            tx.send(share("dave.rig", "main", n, true, "1"))
                .await
                .unwrap();
        }
        assert!(
            eventually(Duration::from_secs(20), || async {
                handle.status().submissions_inserted == 1_200
            })
            .await,
            "ready={ready}: {:?}",
            handle.status()
        );
        let status = handle.status();
        assert!(status.db_up, "ready={ready}: {status:?}");
        if ready {
            assert_eq!(status.records_spooled, 0, "{status:?}");
            assert_eq!(status.records_replayed, 0, "{status:?}");
        } else {
            assert!(status.records_spooled > 0, "{status:?}");
            assert_eq!(
                status.records_replayed, status.records_spooled,
                "{status:?}"
            );
        }
        handle.shutdown(Duration::from_secs(5)).await;
        let counts = loka_test_support::share_counts(&store_url(&store))
            .await
            .unwrap();
        assert_eq!(
            (counts.rows, counts.distinct),
            (1_200, 1_200),
            "ready={ready}"
        );
    }
}

#[tokio::test]
async fn every_column_survives_the_copy_path_byte_for_byte() {
    let (store, pg) = migrated().await;
    let spool = tempfile::tempdir().unwrap();
    let (_s, handle, tx) = writer(store_url(&store).as_str(), spool.path()).await;
    // Text that COPY's text format would have to escape, or read as its NULL marker or
    // end-of-data line, and non-ASCII: each must come back as sent.
    let odd = ["a\tb\\c\nd\re", "\\N", "\\.", "é✓ \u{7f}"];
    // numeric(20,8) from its smallest step to its largest value
    let difficulty = ["0.00012345", "999999999999.99999999", "0", "0.00000001"];
    // 2026-01-02 03:04:05.000007 UTC, and one before PostgreSQL's epoch (2000-01-01): its
    // microseconds from that epoch are negative
    let at = |i: usize| {
        let us = if i == 3 {
            946_684_799_999_999
        } else {
            1_767_323_045_000_007
        };
        SystemTime::UNIX_EPOCH + Duration::from_micros(us)
    };
    for (i, job) in odd.iter().enumerate() {
        let Event::Share(mut e) = share_at(
            "carol.rig",
            "main",
            i as u32,
            i % 2 == 0,
            difficulty[i],
            at(i),
        ) else {
            unreachable!()
        };
        e.job_id = (*job).into();
        e.version = (i == 1).then(|| "20000004".into());
        e.block_hash = (i == 2).then(|| "00".repeat(32));
        tx.send(Event::Share(e)).await.unwrap();
    }
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.spool_bytes, 0);
    // written by the COPY fast path, not by the fallback that follows a refused first try
    assert_eq!(handle.status().batches_retried, 0);
    let rows: Vec<StoredShare> =
        sqlx::query_as(
            "SELECT job_id::text, nonce::text, version::text, accepted, reject_reason::text, difficulty, \
             block_hash::text, submitted_at FROM submissions ORDER BY nonce",
        )
        .fetch_all(&pg)
        .await
        .unwrap();
    assert_eq!(rows.len(), odd.len());
    for (i, (job, nonce, version, accepted, reason, stored_difficulty, block, submitted)) in
        rows.into_iter().enumerate()
    {
        assert_eq!(job, odd[i]);
        assert_eq!(nonce, format!("{i:08x}"));
        assert_eq!(version.as_deref(), (i == 1).then_some("20000004"));
        assert_eq!(accepted, i % 2 == 0);
        assert_eq!(reason.as_deref(), (i % 2 == 1).then_some("low_difficulty"));
        assert_eq!(stored_difficulty, d(difficulty[i]));
        assert_eq!(stored_difficulty.to_string(), d(difficulty[i]).to_string());
        assert_eq!(block, (i == 2).then(|| "00".repeat(32)));
        assert_eq!(
            SystemTime::UNIX_EPOCH + Duration::from_micros(submitted.timestamp_micros() as u64),
            at(i)
        );
    }
}

/// A transaction that rolls back must not leave ids behind in the sink's cache. Here a
/// replayed share makes the batch's plain first try fail (23505) after it had created a
/// new worker; that worker's row went with the rollback, so the second try must look it up
/// again rather than insert shares naming an id that no longer exists (which the database
/// refuses, 23503, and which used to end as a dead letter: a share lost).
#[tokio::test]
async fn a_rolled_back_batch_leaves_no_worker_id_behind() {
    let (store, pg) = migrated().await;
    let mut sink = sink(&store);
    let mut rec = Recorder::new("main");
    let first = rec
        .record(share("alice.rig1", "main", 1, true, "1"))
        .unwrap();
    let o = sink.write(std::slice::from_ref(&first)).await.unwrap();
    assert_eq!(o.inserted, 1);
    let new = rec
        .record(share("carol.rig1", "main", 2, true, "1"))
        .unwrap();
    let o = sink.write(&[new, first]).await.unwrap();
    assert!(o.dead.is_empty(), "dead letters: {:?}", o.dead);
    assert!(
        o.retried,
        "the plain first try was refused by the unique key"
    );
    assert_eq!((o.inserted, o.duplicates), (1, 1));
    let carol: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM submissions s JOIN workers w ON w.id = s.worker_id \
         WHERE w.worker_name = 'carol.rig1'",
    )
    .fetch_one(&pg)
    .await
    .unwrap();
    assert_eq!(carol, 1);
}

type Utc = chrono::DateTime<chrono::Utc>;

/// Concurrent batches must not queue behind each other on the rows of a miner all their
/// workers share: a batch skips the activity update of a worker or miner row another
/// transaction holds (and does it with a later batch) instead of waiting for its commit.
#[tokio::test]
async fn a_batch_does_not_wait_for_a_locked_miner_or_worker_row() {
    let (store, pg) = migrated().await;
    let mut sink = sink(&store);
    let mut rec = Recorder::new("main");
    let t0 = SystemTime::now();
    let mut batch = |at: SystemTime, nonce: u32, workers: &[&str]| -> Vec<Record> {
        workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                rec.record(share_at(w, "main", nonce + i as u32, true, "1", at))
                    .unwrap()
            })
            .collect()
    };
    let first = batch(t0, 10, &["alice.rig1", "alice.rig2"]);
    sink.write(&first).await.unwrap();
    // Another transaction holds alice's row and rig1's, as a concurrent batch moving their
    // activity forward would until its commit.
    let mut other = pg.begin().await.unwrap();
    for lock in [
        "SELECT id FROM miners WHERE username = 'alice' FOR NO KEY UPDATE",
        "SELECT id FROM workers WHERE worker_name = 'alice.rig1' FOR NO KEY UPDATE",
    ] {
        sqlx::query(lock).execute(&mut *other).await.unwrap();
    }
    // Past the activity interval, both workers' activity is due again.
    let t1 = t0 + Duration::from_micros(ACTIVITY_EVERY_US as u64) + Duration::from_secs(1);
    let second = batch(t1, 20, &["alice.rig1", "alice.rig2"]);
    let o = tokio::time::timeout(Duration::from_secs(10), sink.write(&second))
        .await
        .expect("the batch waited for rows another transaction holds")
        .unwrap();
    assert_eq!(o.inserted, 2);
    let seen = || async {
        sqlx::query_as::<_, (Option<Utc>, Option<Utc>)>(
            "SELECT w.last_activity, m.last_seen FROM workers w JOIN miners m ON m.id = w.miner_id \
             WHERE w.worker_name = 'alice.rig1'",
        )
        .fetch_one(&pg)
        .await
        .unwrap()
    };
    let t1_utc = Utc::from(t1);
    let (activity, last_seen) = seen().await;
    assert!(activity.unwrap() < t1_utc && last_seen.unwrap() < t1_utc);
    other.rollback().await.unwrap();
    // The next batch moves what was skipped.
    let third = batch(t1 + Duration::from_secs(1), 30, &["alice.rig1"]);
    sink.write(&third).await.unwrap();
    let (activity, last_seen) = seen().await;
    assert!(activity.unwrap() > t1_utc && last_seen.unwrap() > t1_utc);
}

/// A `COPY` writes its data, then `CopyDone`, then waits for the reply. Without
/// `TCP_NODELAY` on the connection (sqlx 0.9.0 dropped it; `vendor/sqlx-core` restores it)
/// Nagle's algorithm holds `CopyDone` until the server's delayed ACK, at least 40 ms on
/// Linux, and every share batch waited that long. The fastest of a dozen one-row `COPY`s
/// over TCP must beat that timer; with the stall none of them can.
#[tokio::test]
async fn a_copy_does_not_wait_for_a_delayed_ack() {
    // tests/pg.sh's server is reached over TCP on 127.0.0.1.
    let (_store, pg) = migrated().await;
    let mut conn = pg.acquire().await.unwrap();
    sqlx::query("CREATE TEMP TABLE copied (n int)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut fastest = Duration::MAX;
    for n in 0..12 {
        let started = std::time::Instant::now();
        let mut copy = conn.copy_in_raw("COPY copied FROM STDIN").await.unwrap();
        copy.send(format!("{n}\n").into_bytes()).await.unwrap();
        assert_eq!(copy.finish().await.unwrap(), 1);
        fastest = fastest.min(started.elapsed());
    }
    assert!(
        fastest < Duration::from_millis(40),
        "the fastest COPY took {fastest:?}: CopyDone waited for a delayed ACK (TCP_NODELAY off?)"
    );
}
