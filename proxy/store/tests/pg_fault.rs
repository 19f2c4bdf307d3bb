//! The database goes away under the writer (PostgreSQL stopped with `tests/pg.sh stop`) and
//! comes back: nothing is lost, nothing is written twice. One test function, because it
//! stops the server every other test would be using.

mod common;

use common::*;
use loka_test_support::{fresh_pg_database, pg_start, pg_stop, wait_until};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outages_lose_nothing_and_duplicate_nothing() {
    struct RestartPg;
    impl Drop for RestartPg {
        fn drop(&mut self) {
            pg_start();
        }
    }
    let _restart = RestartPg;
    let url = fresh_pg_database().await;
    let spool = tempfile::tempdir().unwrap();

    // 1. Outage while running: the writer spools, then replays in order.
    let (store, handle, tx) = writer(&url, spool.path()).await;
    let mut sent = 0u32;
    for conn in 0..20u64 {
        tx.send(authorized(conn, &format!("m{conn}.rig")))
            .await
            .unwrap();
    }
    let send = |from: u32, to: u32| {
        let tx = tx.clone();
        async move {
            for i in from..to {
                let w = format!("m{}.rig", i % 20);
                tx.send(share(&w, "main", i, i % 7 != 0, "0.001"))
                    .await
                    .unwrap();
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    };
    send(0, 2_000).await;
    sent += 2_000;
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.count_submissions().await.unwrap_or(0) == 2_000
        })
        .await
    );
    pg_stop();
    send(sent, sent + 5_000).await;
    sent += 5_000;
    wait_until(
        "the writer to fail over to the spool",
        Duration::from_secs(30),
        || {
            let s = handle.status();
            !s.db_up && s.spool_bytes > 0 && s.write_errors > 0
        },
    )
    .await;
    let during = handle.status();
    assert!(!during.db_up, "{during:?}");
    assert!(during.spool_bytes > 0, "{during:?}");
    assert!(during.write_errors > 0, "{during:?}");
    assert_eq!(
        (during.pending, during.in_flight),
        (0, 0),
        "after a flush interval everything is on disk: {during:?}"
    );
    pg_start();
    send(sent, sent + 3_000).await;
    sent += 3_000;
    assert!(
        eventually(Duration::from_secs(30), || async {
            handle.status().spool_bytes == 0
                && store.count_submissions().await.unwrap_or(0) == i64::from(sent)
        })
        .await,
        "after the outage: {:?}, rows {:?}",
        handle.status(),
        store.count_submissions().await
    );
    let after = handle.status();
    assert!(
        after.db_up && after.records_spooled > 0 && after.records_replayed > 0,
        "{after:?}"
    );
    assert_eq!(after.records_lost, 0);

    // 2. Outage, then the process dies with the spool holding data (the writer task is
    //    dropped without shutdown: no flush), then a new writer on the same spool.
    pg_stop();
    send(sent, sent + 4_000).await;
    sent += 4_000;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = handle.status();
            s.pending == 0 && s.in_flight == 0 && s.queue_depth == 0 && s.spool_bytes > 0
        })
        .await,
        "{:?}",
        handle.status()
    );
    drop(tx);
    handle.abort(); // no shutdown: as if killed (the spool file is what remains)
    tokio::time::sleep(Duration::from_millis(200)).await;
    pg_start();
    let (store2, handle2, _tx2) = writer(&url, spool.path()).await;
    assert!(
        handle2.recovery().records >= 4_000,
        "{:?}",
        handle2.recovery()
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            handle2.status().spool_bytes == 0
                && store2.count_submissions().await.unwrap_or(0) >= i64::from(sent)
        })
        .await,
        "after the restart: {:?}",
        handle2.status()
    );
    // Exactly once: every nonce once (nonces are unique per share in this test).
    let pg = store2.pg().unwrap();
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT nonce) FROM submissions")
            .fetch_one(pg)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (i64::from(sent), i64::from(sent)));
    let accepted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions WHERE accepted")
        .fetch_one(pg)
        .await
        .unwrap();
    assert_eq!(
        accepted,
        i64::from((0..sent).filter(|i| i % 7 != 0).count() as u32)
    );
    let report = handle2.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.spool_bytes, 0);
}
