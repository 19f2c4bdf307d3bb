//! The embedded default: no DATABASE_URL, a SQLite file at `storage.sqlite_path`, the same
//! logical schema, writer, accounting and queries.

mod common;

use common::*;
use loka_store::accounting::{Method, NewEarning};
use loka_store::events::Event;
use loka_store::record::Recorder;
use loka_store::{Backend, Store, StoreHandle, WriteHold, WriterOptions, spawn_writer};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

async fn open(dir: &std::path::Path) -> (Store, loka_config::StorageConfig) {
    let cfg = loka_config::StorageConfig {
        sqlite_path: dir.join("loka.db").display().to_string(),
        flush_interval: Duration::from_millis(20),
        ..Default::default()
    };
    assert_eq!(cfg.spool_path(), dir.join("loka-spool"));
    let store = Store::open(&cfg).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    store.upsert_pools(&pools()).await.unwrap();
    (store, cfg)
}

async fn refused(store: &Store, sql: &'static str) {
    let r = sqlx::query(sql).execute(store.sqlite().unwrap()).await;
    assert!(r.is_err(), "accepted: {sql}");
}

#[tokio::test]
async fn embedded_sqlite_records_shares_and_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cfg) = open(dir.path()).await;
    let status = store.migration_status().await.unwrap();
    assert_eq!(
        (status.current_version.as_deref(), status.pending),
        (Some("20260101000001"), 0)
    );

    let (tx, rx) = mpsc::channel(1024);
    let handle = spawn_writer(
        store.clone(),
        rx,
        WriterOptions::from_config(&cfg, &pools()),
        1024,
    )
    .unwrap();
    let start = SystemTime::now() - Duration::from_secs(30);
    let mut n = 0;
    for (i, w) in ["a.1", "b.1", "c.1"].iter().enumerate() {
        tx.send(authorized(i as u64, w)).await.unwrap();
        for _ in 0..3 {
            n += 1;
            let e = share_at(
                w,
                "main",
                n,
                true,
                "0.25",
                start + Duration::from_millis(u64::from(n)),
            );
            tx.send(e.clone()).await.unwrap();
            tx.send(e).await.unwrap(); // a replay: stored once
        }
    }
    tx.send(share("c.1", "main", 99, false, "0.25"))
        .await
        .unwrap();
    tx.send(disconnected(2, "c.1")).await.unwrap();
    let report = handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.spool_bytes, 0);
    assert_eq!(store.count_submissions().await.unwrap(), 10);

    let e = store
        .add_earning(&NewEarning::new("main", d("0.00000007")))
        .await
        .unwrap();
    let dist = store
        .distribute(e, &Method::Proportional { since: None })
        .await
        .unwrap();
    assert_eq!(dist.distributed_btc, d("0.00000007"));
    let parts = store.distribution_parts(e).await.unwrap();
    let amounts: Vec<String> = parts.iter().map(|p| p.amount_btc.to_string()).collect();
    assert_eq!(amounts, vec!["0.00000003", "0.00000002", "0.00000002"]);
    assert!(
        store
            .distribute(e, &Method::Proportional { since: None })
            .await
            .is_err()
    );
    let e2 = store
        .add_earning(&NewEarning::new("main", d("6.25")))
        .await
        .unwrap();
    let dist = store
        .distribute(e2, &Method::Pplns { window: d("1") })
        .await
        .unwrap();
    assert_eq!(dist.distributed_btc, d("6.25"));
    assert_eq!(dist.parts.len(), 2); // c's 3 shares (0.75) + b's last (0.25)

    let workers = store.active_workers_by_pool("main").await.unwrap();
    assert_eq!(workers.len(), 2, "c.1 disconnected: {workers:?}");
    assert!(
        workers
            .iter()
            .all(|w| w.total_shares == 3 && w.accepted_shares == 3)
    );
    let perf = store.pool_performance().await.unwrap();
    let main = perf.iter().find(|p| p.name == "main").unwrap();
    assert_eq!(
        (main.active_workers, main.total_shares, main.accepted_shares),
        (2, 6, 6)
    );
    assert_eq!(main.acceptance_rate, Some(d("100")));
    let summary = store.miner_earnings_summary().await.unwrap();
    assert_eq!(summary[0].username, "c");
    assert_eq!(
        summary
            .iter()
            .map(|m| m.total_earnings_btc.unwrap_or_default())
            .sum::<rust_decimal::Decimal>(),
        d("6.25000007")
    );
    let stats = store
        .worker_stats(Duration::from_secs(3600), 10, Some("c.1"))
        .await
        .unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].submitted, stats[0].accepted, stats[0].rejected),
        (4, 3, 1)
    );
    assert!(!stats[0].active);
    assert_eq!(stats[0].remote_addr.as_deref(), Some("192.0.2.7"));
    let hist = store
        .worker_history("a.1", Duration::from_secs(3600), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(hist.iter().map(|h| h.accepted).sum::<i64>(), 3);
    let plans = store.explain_hot_queries("a.1", "main").await.unwrap();
    assert!(
        plans
            .iter()
            .all(|(_, p)| p.contains("(worker_id=? AND submitted_at>?)")),
        "{plans:?}"
    );

    // constraints and cascades
    refused(
        &store,
        "INSERT INTO pools (id, name, host, port, username) VALUES ('x', 'p', 'h', 70000, 'u')",
    )
    .await;
    refused(
        &store,
        "INSERT INTO miners (id, username, btc_address) VALUES ('x', 'm', 'short')",
    )
    .await;
    refused(&store, "UPDATE earnings SET status = 'paid'").await;
    refused(&store, "UPDATE earnings SET amount_btc = '-1'").await;
    refused(&store, "UPDATE distributions SET percentage = '0'").await;
    refused(
        &store,
        "INSERT INTO submissions SELECT * FROM submissions LIMIT 1",
    )
    .await;
    let db = store.sqlite().unwrap();
    sqlx::query("DELETE FROM miners WHERE username = 'c'")
        .execute(db)
        .await
        .unwrap();
    let left: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM submissions), (SELECT COUNT(*) FROM distributions)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(left, (6, 3));
}

/// Every connection of the embedded store runs with the settings its write path is measured
/// with: WAL, `synchronous = NORMAL`, foreign keys on, and statement journals in memory (a
/// batch's INSERT would otherwise write every page it changes to a temporary file first).
#[tokio::test]
async fn connections_write_ahead_and_keep_statement_journals_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).await;
    let db = store.sqlite().unwrap();
    let settings: (String, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT journal_mode FROM pragma_journal_mode), \
                (SELECT synchronous FROM pragma_synchronous), \
                (SELECT foreign_keys FROM pragma_foreign_keys), \
                (SELECT temp_store FROM pragma_temp_store)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    // synchronous 1 = NORMAL; temp_store 2 = MEMORY.
    assert_eq!(settings, ("wal".into(), 1, 1, 2));
}

/// Every column of a stored share holds what the session judged, with the types the schema's
/// readers expect, for batches larger than any one statement used to take; activity moves
/// to the newest share of each worker and its miner.
#[tokio::test]
async fn shares_are_stored_column_for_column_and_activity_follows_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cfg) = open(dir.path()).await;
    let (tx, rx) = mpsc::channel(8192);
    let mut opts = WriterOptions::from_config(&cfg, &pools());
    opts.batch_size = 5000;
    opts.flush_interval = Duration::from_millis(500);
    let handle = spawn_writer(store.clone(), rx, opts, 8192).unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_750_000_000_123_456);
    let workers = ["alice.rig1", "alice.rig2", "bob.rig1"];
    let mut n = 0u32;
    for i in 0..1200u32 {
        let w = workers[i as usize % 3];
        n += 1;
        let mut e = share_at(
            w,
            "main",
            n,
            i % 7 != 0,
            "0.2500",
            start + Duration::from_millis(u64::from(i)),
        );
        if i == 5
            && let loka_store::events::Event::Share(s) = &mut e
        {
            s.version = Some("1fffe000".into());
            s.block_hash =
                Some("00000000000000000001a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7".into());
        }
        tx.send(e).await.unwrap();
    }
    // The newest share of each worker, 70 s after the rest (past the 60 s activity interval).
    for (k, w) in workers.iter().enumerate() {
        n += 1;
        tx.send(share_at(
            w,
            "main",
            n,
            true,
            "1",
            start + Duration::from_secs(70 + k as u64),
        ))
        .await
        .unwrap();
    }
    let report = handle.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.spool_bytes, 0);
    assert_eq!(store.count_submissions().await.unwrap(), 1203);
    let db = store.sqlite().unwrap();
    // Each column with its SQLite storage class.
    let row = |nonce: u32| {
        sqlx::query_scalar::<_, String>(
            "SELECT json_array(job_id, extranonce1, extranonce2, ntime, nonce, \
                    accepted, typeof(accepted), version, reject_reason, \
                    difficulty, typeof(difficulty), block_hash, submitted_at) \
             FROM submissions WHERE nonce = ?1",
        )
        .bind(format!("{nonce:08x}"))
        .fetch_one(db)
    };
    let json = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
    assert_eq!(
        json(row(6).await.unwrap()),
        serde_json::json!([
            "0",
            "00010203",
            "0000000000000001",
            "665f1a2b",
            "00000006",
            1,
            "integer",
            "1fffe000",
            null,
            "0.25",
            "text",
            "00000000000000000001a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7",
            "2025-06-15 15:06:40.128456"
        ])
    );
    assert_eq!(
        json(row(1).await.unwrap()),
        serde_json::json!([
            "0",
            "00010203",
            "0000000000000001",
            "665f1a2b",
            "00000001",
            0,
            "integer",
            null,
            "low_difficulty",
            "0.25",
            "text",
            null,
            "2025-06-15 15:06:40.123456"
        ])
    );
    let ids: Vec<(String, String)> = sqlx::query_as(
        "SELECT worker_id, id FROM submissions WHERE nonce IN ('00000001', '00000002')",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert_ne!(ids[0].0, ids[1].0, "two workers, two worker ids");
    let activity: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT worker_name, last_activity FROM workers ORDER BY worker_name")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(
        activity,
        vec![
            (
                "alice.rig1".into(),
                Some("2025-06-15 15:07:50.123456".into())
            ),
            (
                "alice.rig2".into(),
                Some("2025-06-15 15:07:51.123456".into())
            ),
            ("bob.rig1".into(), Some("2025-06-15 15:07:52.123456".into())),
        ]
    );
    let seen: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT username, last_seen FROM miners ORDER BY username")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(
        seen,
        vec![
            ("alice".into(), Some("2025-06-15 15:07:51.123456".into())),
            ("bob".into(), Some("2025-06-15 15:07:52.123456".into())),
        ]
    );
}

#[tokio::test]
async fn an_unreachable_database_leaves_the_batch_in_the_spool_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    // A database path that cannot be created: every write fails, the spool keeps the events.
    let cfg = loka_config::StorageConfig {
        sqlite_path: dir.path().join("missing/dir/loka.db").display().to_string(),
        spool_dir: dir.path().join("spool").display().to_string(),
        flush_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let store = Store::connect_lazy(&cfg).unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let handle = spawn_writer(store, rx, WriterOptions::from_config(&cfg, &pools()), 1024).unwrap();
    for i in 0..50 {
        tx.send(share("z.1", "main", i, true, "1")).await.unwrap();
    }
    let report = handle.shutdown(Duration::from_millis(500)).await;
    assert!(report.spool_bytes > 0, "{report:?}");
    assert_eq!(report.records_lost, 0);

    // Next start, the database is there: the spool is replayed.
    std::fs::create_dir_all(dir.path().join("missing/dir")).unwrap();
    let store = Store::open(&cfg).await.unwrap();
    let (_tx, rx) = mpsc::channel(16);
    let handle = spawn_writer(
        store.clone(),
        rx,
        WriterOptions::from_config(&cfg, &pools()),
        16,
    )
    .unwrap();
    assert_eq!(handle.recovery().records, 50);
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.count_submissions().await.unwrap_or(0) == 50
        })
        .await
    );
    handle.shutdown(Duration::from_secs(2)).await;
}

/// The nice value in a /proc `stat` file (of a process or one of its threads).
#[cfg(target_os = "linux")]
fn nice_in_stat(stat: &std::path::Path) -> Option<i32> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // After the ")" that closes the name: state is field 3, nice field 19.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(16)?.parse().ok()
}

/// The nice values of this process's threads whose name begins like `name` (Linux:
/// /proc/self/task; the kernel keeps the first 15 bytes of a thread's name).
#[cfg(target_os = "linux")]
fn threads_nice(name: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            if !name.starts_with(comm.trim()) {
                return None;
            }
            nice_in_stat(&t.join("stat"))
        })
        .collect()
}

#[cfg(target_os = "linux")]
fn thread_nice(name: &str) -> Option<i32> {
    threads_nice(name).first().copied()
}

/// On its own thread the writer runs `storage.writer_nice` levels below the sessions
/// (default 10), so its bursts do not delay miners' replies; so do the threads SQLite runs
/// its statements on, though the store was opened (and migrated) at the sessions' priority.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_writer_thread_runs_at_a_lower_priority() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut cfg) = open(dir.path()).await;
    assert_eq!(cfg.writer_nice, 10, "the default");
    cfg.writer_nice = 7;
    let own = nice_in_stat(std::path::Path::new("/proc/self/stat")).expect("the process's nice");
    let (tx, rx) = mpsc::channel(16);
    let handle = spawn_writer(
        store,
        rx,
        WriterOptions {
            dedicated_thread: true,
            ..WriterOptions::from_config(&cfg, &pools())
        },
        16,
    )
    .unwrap();
    tx.send(share("a.1", "main", 1, true, "1")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            thread_nice("loka-store-writer") == Some((own + 7).min(19))
        })
        .await,
        "writer thread nice {:?}, process {own}",
        thread_nice("loka-store-writer")
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            handle.status().submissions_inserted == 1
        })
        .await
    );
    let sqlite = threads_nice("loka-sqlite-writer-");
    assert!(
        !sqlite.is_empty() && sqlite.iter().all(|n| *n == (own + 7).min(19)),
        "the writer's SQLite threads run at {sqlite:?}, the process at {own}"
    );
    handle.shutdown(Duration::from_secs(5)).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            threads_nice("loka-sqlite-writer-").is_empty()
        })
        .await,
        "the writer's SQLite threads end with it"
    );
}

/// A worker's `last_activity` and its miner's `last_seen` move at most once a minute: each
/// move rewrites two rows and their places in two indexes, four pages against the share's
/// one. A batch 30 s after the last move leaves both where they were; one past the minute
/// moves both to its newest share.
#[tokio::test]
async fn activity_moves_at_most_once_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _cfg) = open(dir.path()).await;
    let mut sink = sink(&store);
    let mut rec = Recorder::new("main");
    let seen = async || -> (String, String) {
        sqlx::query_as(
            "SELECT w.last_activity, m.last_seen FROM workers w JOIN miners m ON m.id = w.miner_id \
             WHERE w.worker_name = 'alice.rig1'",
        )
        .fetch_one(store.sqlite().unwrap())
        .await
        .unwrap()
    };
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000 + secs);
    let first = "2025-06-15 15:06:40.000000".to_string();
    for (nonce, secs, expected) in [
        (1, 0, first.clone()),
        (2, 30, first.clone()),
        (3, 59, first.clone()),
        (4, 61, "2025-06-15 15:07:41.000000".to_string()),
    ] {
        let r = rec
            .record(share_at("alice.rig1", "main", nonce, true, "1", at(secs)))
            .unwrap();
        let o = sink.write(std::slice::from_ref(&r)).await.unwrap();
        assert_eq!(o.inserted, 1);
        assert_eq!(
            seen().await,
            (expected.clone(), expected),
            "after the share at +{secs} s"
        );
    }
}

/// A batch is stored whole and a share replayed within it is counted once as a duplicate;
/// a replay of part of a stored batch stores nothing and counts every row as a duplicate.
#[tokio::test]
async fn a_batch_is_stored_whole_and_its_replayed_shares_counted_as_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _cfg) = open(dir.path()).await;
    let mut sink = sink(&store);
    let mut rec = Recorder::new("main");
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let mut batch: Vec<_> = (0..700u32)
        .map(|i| {
            let worker = ["alice.rig1", "alice.rig2", "bob.rig1"][i as usize % 3];
            let at = start + Duration::from_millis(u64::from(i));
            rec.record(share_at(worker, "main", i, true, "1", at))
                .unwrap()
        })
        .collect();
    // Share 299 again (a replay): it sorts right behind the original.
    batch.push(batch[299].clone());
    let o = sink.write(&batch).await.unwrap();
    assert_eq!((o.inserted, o.duplicates), (700, 1));
    assert_eq!(store.count_submissions().await.unwrap(), 700);
    let o = sink.write(&batch[..300]).await.unwrap();
    assert_eq!(
        (o.inserted, o.duplicates),
        (0, 300),
        "a replay of 300 stores nothing"
    );
}

/// A share the database refuses (here a trigger refuses one nonce) is set aside as a dead
/// letter; the rest of its batch, shares and connection records, is stored once.
#[tokio::test]
async fn a_refused_share_is_set_aside_and_the_rest_of_its_batch_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _cfg) = open(dir.path()).await;
    let pool = store.sqlite().unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_one BEFORE INSERT ON submissions WHEN NEW.nonce = '00000002' \
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut sink = sink(&store);
    let mut rec = Recorder::new("main");
    let batch: Vec<_> = [
        authorized(7, "carol.rig1"),
        share("alice.rig1", "main", 1, true, "1"),
        share("bob.rig1", "main", 2, true, "1"),
        share("carol.rig1", "main", 3, true, "2"),
    ]
    .into_iter()
    .map(|e| rec.record(e).unwrap())
    .collect();
    let o = sink.write(&batch).await.unwrap();
    assert!(o.retried);
    assert_eq!(o.dead.len(), 1, "dead letters: {:?}", o.dead);
    assert!(o.dead[0].contains("refused for the test"), "{:?}", o.dead);
    assert_eq!((o.inserted, o.duplicates, o.lifecycle), (2, 0, 1));
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT w.worker_name, s.nonce FROM submissions s \
         JOIN workers w ON w.id = s.worker_id ORDER BY s.nonce",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let expected = [("alice.rig1", "00000001"), ("carol.rig1", "00000003")];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(w, n)| (w.to_string(), n.to_string()))
        .collect();
    assert_eq!(stored, expected);
    let carol: (bool, Option<i64>) = sqlx::query_as(
        "SELECT active, connection_id FROM workers WHERE worker_name = 'carol.rig1'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(carol, (true, Some(7)));
}

/// A writer on a fresh SQLite store in `dir` that reads `hold`, with group commit or not.
async fn writer_reading(
    dir: &std::path::Path,
    hold: &WriteHold,
    group_commit: bool,
) -> (StoreHandle, mpsc::Sender<Event>) {
    let (store, cfg) = open(dir).await;
    let (tx, rx) = mpsc::channel(16);
    let handle = spawn_writer(
        store,
        rx,
        WriterOptions {
            hold: hold.clone(),
            database_ready: true,
            group_commit,
            ..WriterOptions::from_config(&cfg, &pools())
        },
        16,
    )
    .unwrap();
    (handle, tx)
}

/// While a job goes out to every miner (the hold open, sessions touching it), a due batch
/// waits: it is written once the sessions have been quiet for the hold's quiet time, or
/// when the hold reaches its cap however long they go on. (Times here are seconds, so a
/// loaded machine's pauses between touches stay well inside them.)
#[tokio::test]
async fn the_writer_waits_while_a_job_goes_out_to_the_miners() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let (quiet, cap) = (Duration::from_millis(1500), Duration::from_secs(4));
    let hold = WriteHold::new(quiet, cap);
    let (handle, tx) = writer_reading(dir.path(), &hold, false).await;
    let written = || handle.status().submissions_inserted;

    // Quiet: sessions write for a second; the batch (due after the flush interval)
    // waits for them, then for the quiet time.
    hold.open();
    tx.send(share("a.1", "main", 1, true, "1")).await.unwrap();
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_secs(1) {
        hold.touch();
        assert_eq!(
            written(),
            0,
            "written {:?} into the fan-out",
            opened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_touch = Instant::now();
    hold.touch();
    assert!(eventually(Duration::from_secs(10), || async { written() == 1 }).await);
    let waited = last_touch.elapsed();
    assert!(
        waited >= quiet - Duration::from_millis(50),
        "written {waited:?} after the last touch, before the quiet time"
    );

    // Cap: sessions never go quiet; the batch goes out at the cap.
    hold.open();
    let opened = Instant::now();
    tx.send(share("a.1", "main", 2, true, "1")).await.unwrap();
    while written() < 2 && opened.elapsed() < Duration::from_secs(60) {
        hold.touch();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = opened.elapsed();
    assert_eq!(written(), 2);
    assert!(
        waited >= cap - Duration::from_millis(50) && waited < cap + Duration::from_secs(5),
        "written {waited:?} after the hold opened, cap {cap:?}"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

/// Under group commit sessions wait for their shares to be written: the hold keeps nothing
/// back.
#[tokio::test]
async fn group_commit_writes_through_an_open_hold() {
    let dir = tempfile::tempdir().unwrap();
    let hold = WriteHold::new(Duration::from_secs(60), Duration::from_secs(60));
    let (handle, tx) = writer_reading(dir.path(), &hold, true).await;
    hold.open();
    tx.send(share("a.1", "main", 1, true, "1")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            handle.status().submissions_inserted == 1
        })
        .await
    );
    assert!(
        hold.holds_until(std::time::Instant::now()).is_some(),
        "still open"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

/// A batch already running in SQLite when a job goes out pauses between its statement's
/// steps until the hold ends (here it stays open for its 5 s cap); with the hold shut the
/// same kind of batch is written at once. Every row is stored either way.
#[tokio::test]
async fn a_batch_running_in_sqlite_waits_while_the_hold_is_open() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let (store, _cfg) = open(dir.path()).await;
    let cap = Duration::from_secs(5);
    let hold = WriteHold::new(cap, cap);
    let mut sink = sink_holding(&store, Some(hold.clone()));
    let mut rec = Recorder::new("main");
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000);
    let mut batch = |from: u32| -> Vec<_> {
        (from..from + 2_000)
            .map(|i| {
                let at = start + Duration::from_millis(u64::from(i));
                rec.record(share_at("a.1", "main", i, true, "1", at))
                    .unwrap()
            })
            .collect()
    };
    let first = batch(0);
    let t = Instant::now();
    assert_eq!(sink.write(&first).await.unwrap().inserted, 2_000);
    let free = t.elapsed();
    assert!(free < cap / 2, "a batch took {free:?} with the hold shut");

    let second = batch(2_000);
    hold.open();
    let t = Instant::now();
    assert_eq!(sink.write(&second).await.unwrap().inserted, 2_000);
    let held = t.elapsed();
    assert!(
        held >= cap - Duration::from_millis(100),
        "written in {held:?} while the hold was open (cap {cap:?})"
    );
    assert_eq!(store.count_submissions().await.unwrap(), 4_000);
}
