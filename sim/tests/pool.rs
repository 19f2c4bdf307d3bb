//! MockPool validation over real TCP, driven step by step with StratumClient.

use std::time::Duration;

use loka_sim::pool::codes;
use loka_sim::share::{Difficulty, Job};
use loka_sim::{MockPool, MockPoolConfig, StratumClient};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);

fn cfg(diff: &str) -> MockPoolConfig {
    MockPoolConfig::default().with_difficulty(diff).unwrap()
}

/// Connected, configured, subscribed, authorized session with its first job.
struct Session {
    c: StratumClient,
    en1: Vec<u8>,
    en2_size: usize,
    job: Job,
    diff: Difficulty,
    mask: Option<u32>,
}

async fn session(pool: &MockPool, user: &str, rolling: bool) -> Session {
    let mut c = StratumClient::connect(pool.addr()).await.unwrap();
    let mask = if rolling {
        c.configure_version_rolling(0xffff_ffff).await.unwrap()
    } else {
        None
    };
    let sub = c.subscribe("test/1.0", None).await.unwrap();
    assert!(c.authorize(user, "x").await.unwrap());
    let sd = c.wait_notification("mining.set_difficulty").await.unwrap();
    let diff = Difficulty::from_json(&sd.params[0]).unwrap();
    let n = c.wait_notification("mining.notify").await.unwrap();
    let job = Job::from_notify_params(&n.params).unwrap();
    assert!(job.clean_jobs, "first job after authorize must be clean");
    Session {
        c,
        en1: sub.extranonce1,
        en2_size: sub.extranonce2_size,
        job,
        diff,
        mask,
    }
}

fn en2(s: &Session, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; s.en2_size];
    let b = n.to_be_bytes();
    let k = s.en2_size.min(8);
    let len = v.len();
    v[len - k..].copy_from_slice(&b[8 - k..]);
    v
}

#[tokio::test]
async fn subscribe_configure_and_first_work() {
    let pool = MockPool::start(cfg("0.001")).await.unwrap();
    let mut c = StratumClient::connect(pool.addr()).await.unwrap();
    let r = c
        .request(
            "mining.configure",
            json!([["version-rolling", "minimum-difficulty"], {"version-rolling.mask": "00ffe000"}]),
        )
        .await
        .unwrap();
    assert_eq!(r.result["version-rolling"], json!(true));
    assert_eq!(r.result["version-rolling.mask"], json!("00ffe000"));
    assert_eq!(r.result["minimum-difficulty"], json!(false));

    let r = c.request("mining.subscribe", json!(["x/1"])).await.unwrap();
    let a = r.result.as_array().unwrap();
    assert_eq!(a[0][0][0], json!("mining.set_difficulty"));
    assert_eq!(a[0][1][0], json!("mining.notify"));
    assert_eq!(a[1].as_str().unwrap().len(), 8);
    assert_eq!(a[2], json!(8));
    assert!(
        c.request("mining.extranonce.subscribe", json!([]))
            .await
            .unwrap()
            .is_true()
    );
    assert!(
        c.request("mining.suggest_difficulty", json!([0.5]))
            .await
            .unwrap()
            .is_true()
    );
    // nothing before authorize
    assert!(c.clear_inbox().is_empty());
    let r = c
        .request_with_id(
            json!("auth"),
            "mining.authorize",
            json!(["alice.rig1", "x"]),
        )
        .await
        .unwrap();
    assert!(r.is_true());
    assert_eq!(r.id, json!("auth"));
    // set_difficulty strictly before the notify
    let first = c.next_notification().await.unwrap();
    assert_eq!(first.method, "mining.set_difficulty");
    assert_eq!(first.params, json!([0.001]));
    let n = c.next_notification().await.unwrap();
    assert_eq!(n.method, "mining.notify");
    let job = Job::from_notify_params(&n.params).unwrap();
    assert_eq!(job.version, 0x2000_0000);
    assert_eq!(job.nbits, 0x1d00ffff);
    assert_eq!(job.merkle_branch.len(), 4);
    // coinbase is shaped like a real one: version 1, one input with a null prevout
    assert_eq!(&job.coinb1[..5], &[1, 0, 0, 0, 1]);
    assert!(job.coinb1[5..37].iter().all(|&b| b == 0));
    assert_eq!(&job.coinb2[job.coinb2.len() - 4..], &[0, 0, 0, 0]);

    // unique extranonce1 per connection
    let mut c2 = StratumClient::connect(pool.addr()).await.unwrap();
    let s2 = c2.subscribe("x/1", None).await.unwrap();
    assert_ne!(hex::encode(&s2.extranonce1), a[1].as_str().unwrap());

    let unknown = c.request("mining.bogus", json!([])).await.unwrap();
    assert_eq!(unknown.error_code(), Some(codes::OTHER));
    let st = pool.stats();
    assert_eq!((st.subscribes, st.authorizes, st.configures), (2, 1, 1));
}

#[tokio::test]
async fn validates_every_submit() {
    let pool = MockPool::start(cfg("0.00001")).await.unwrap();
    let mut s = session(&pool, "alice.rig1", true).await;
    let mask = s.mask.expect("version rolling granted");
    assert_eq!(mask, 0x1fff_e000);
    assert_eq!(s.diff, Difficulty::parse("1e-5").unwrap());
    let target = s.diff.target();
    let e2 = en2(&s, 7);
    let (found, _) = s.job.search(
        &s.en1,
        &e2,
        Some((0x0000_2000, mask)),
        s.job.ntime,
        &target,
        0,
        u32::MAX,
    );
    let f = found.unwrap();
    let jid = s.job.job_id.clone();

    let ok =
        s.c.submit("alice.rig1", &jid, &e2, f.ntime, f.nonce, f.version_bits)
            .await
            .unwrap();
    assert!(ok.is_true(), "{ok:?}");
    // duplicate
    let dup =
        s.c.submit("alice.rig1", &jid, &e2, f.ntime, f.nonce, f.version_bits)
            .await
            .unwrap();
    assert_eq!(dup.error_code(), Some(codes::DUPLICATE));
    // wrong nonce: pick one whose hash does not meet the target
    let bad_nonce = (1u32..)
        .map(|k| f.nonce.wrapping_add(k))
        .find(|&n| {
            !s.diff
                .is_met_by(&s.job.share_hash(&s.en1, &e2, f.version, f.ntime, n))
        })
        .unwrap();
    let low =
        s.c.submit("alice.rig1", &jid, &e2, f.ntime, bad_nonce, f.version_bits)
            .await
            .unwrap();
    assert_eq!(low.error_code(), Some(codes::LOW_DIFFICULTY));
    // unknown job
    let r =
        s.c.submit("alice.rig1", "nope", &e2, f.ntime, f.nonce, f.version_bits)
            .await
            .unwrap();
    assert_eq!(r.error_code(), Some(codes::JOB_NOT_FOUND));
    // worker not authorized on this connection
    let r =
        s.c.submit("mallory", &jid, &e2, f.ntime, f.nonce, f.version_bits)
            .await
            .unwrap();
    assert_eq!(r.error_code(), Some(codes::UNAUTHORIZED));
    // version bits outside the mask
    let r =
        s.c.submit("alice.rig1", &jid, &e2, f.ntime, f.nonce, Some(0x0000_0001))
            .await
            .unwrap();
    assert_eq!(r.error_code(), Some(codes::OTHER));
    // ntime below the job's, and too far above
    for nt in [s.job.ntime - 1, s.job.ntime + 7201] {
        let r =
            s.c.submit("alice.rig1", &jid, &e2, nt, f.nonce, None)
                .await
                .unwrap();
        assert_eq!(r.error_code(), Some(codes::OTHER));
    }
    // extranonce2 of the wrong size
    let r =
        s.c.submit("alice.rig1", &jid, &[1, 2, 3], f.ntime, f.nonce, None)
            .await
            .unwrap();
    assert_eq!(r.error_code(), Some(codes::OTHER));
    // malformed params
    let r =
        s.c.request("mining.submit", json!(["alice.rig1", jid]))
            .await
            .unwrap();
    assert_eq!(r.error_code(), Some(codes::OTHER));

    // a clean job makes the old one stale
    let new_id = pool.new_job(true);
    let n = s.c.wait_notification("mining.notify").await.unwrap();
    assert_eq!(n.params[0], json!(new_id));
    assert_eq!(n.params[8], json!(true));
    let stale =
        s.c.submit("alice.rig1", &jid, &en2(&s, 8), f.ntime, f.nonce, None)
            .await
            .unwrap();
    assert_eq!(stale.error_code(), Some(codes::JOB_NOT_FOUND));

    let st = pool.stats();
    assert_eq!(st.accepted, 1);
    assert_eq!(st.rejected_with(codes::DUPLICATE), 1);
    assert_eq!(st.rejected_with(codes::LOW_DIFFICULTY), 1);
    assert_eq!(st.rejected_with(codes::JOB_NOT_FOUND), 2);
    assert_eq!(st.rejected_with(codes::UNAUTHORIZED), 1);
    assert_eq!(st.rejected_with(codes::OTHER), 5);
    assert_eq!(st.block_candidates, 0);
    let recs = pool.submits();
    assert_eq!(recs.len() as u64, st.submits);
    let first = &recs[0];
    assert!(first.accepted);
    assert_eq!(first.worker, "alice.rig1");
    assert_eq!(first.extranonce1, hex::encode(&s.en1));
    assert_eq!(first.extranonce2, hex::encode(&e2));
    assert_eq!(first.version_bits.as_deref(), Some("00002000"));
    assert_eq!(first.version.as_deref(), Some("20002000"));
    assert_eq!(
        first.hash.as_deref(),
        Some(loka_sim::share::hash_display_hex(&f.hash).as_str())
    );
    assert_eq!(recs[1].error_code, Some(codes::DUPLICATE));
}

#[tokio::test]
async fn block_candidates_and_difficulty_changes() {
    let mut c = cfg("0.000001");
    c.nbits = "207fffff".into();
    let pool = MockPool::start(c).await.unwrap();
    let mut s = session(&pool, "bob", false).await;
    let (f, _) = s.job.search(
        &s.en1,
        &en2(&s, 1),
        None,
        s.job.ntime,
        &s.diff.target(),
        0,
        u32::MAX,
    );
    let f = f.unwrap();
    let r =
        s.c.submit(
            "bob",
            &s.job.job_id.clone(),
            &f.extranonce2,
            f.ntime,
            f.nonce,
            None,
        )
        .await
        .unwrap();
    assert!(r.is_true());
    assert_eq!(pool.stats().block_candidates, 1);
    assert!(pool.submits()[0].block_candidate);

    // raise the difficulty: sent at once, before the next notify
    pool.set_difficulty(Difficulty::parse("1000").unwrap());
    let sd = s.c.next_notification().await.unwrap();
    assert_eq!(sd.method, "mining.set_difficulty");
    assert_eq!(sd.params, json!([1000]));
    pool.new_job(false);
    let n = s.c.next_notification().await.unwrap();
    assert_eq!(n.method, "mining.notify");
    assert_eq!(n.params[8], json!(false));
    let job2 = Job::from_notify_params(&n.params).unwrap();
    // a 1e-6 share on the new job is now too low
    let (f2, _) = job2.search(
        &s.en1,
        &en2(&s, 2),
        None,
        job2.ntime,
        &s.diff.target(),
        0,
        u32::MAX,
    );
    let f2 = f2.unwrap();
    let easy_enough = Difficulty::parse("1000").unwrap().is_met_by(&f2.hash);
    let r =
        s.c.submit(
            "bob",
            &job2.job_id,
            &f2.extranonce2,
            f2.ntime,
            f2.nonce,
            None,
        )
        .await
        .unwrap();
    if !easy_enough {
        assert_eq!(r.error_code(), Some(codes::LOW_DIFFICULTY));
    }
    // the old (non-clean) job still accepts shares at the difficulty it was sent with
    let (f3, _) = s.job.search(
        &s.en1,
        &en2(&s, 3),
        None,
        s.job.ntime,
        &s.diff.target(),
        0,
        u32::MAX,
    );
    let f3 = f3.unwrap();
    let r =
        s.c.submit(
            "bob",
            &s.job.job_id.clone(),
            &f3.extranonce2,
            f3.ntime,
            f3.nonce,
            None,
        )
        .await
        .unwrap();
    assert!(r.is_true(), "{r:?}");
}

#[tokio::test]
async fn authorization_list_and_not_subscribed() {
    let mut c = cfg("1");
    c.allowed_users = Some(vec!["alice".into()]);
    let pool = MockPool::start(c).await.unwrap();
    let mut cl = StratumClient::connect(pool.addr()).await.unwrap();
    // submit before subscribing
    let r = cl
        .request(
            "mining.submit",
            json!(["alice", "1", "00", "00000000", "00000000"]),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(codes::NOT_SUBSCRIBED));
    cl.subscribe("x", None).await.unwrap();
    assert!(!cl.authorize("eve", "x").await.unwrap());
    assert!(cl.authorize("alice", "x").await.unwrap());
    let st = pool.stats();
    assert_eq!((st.authorizes, st.authorize_failures), (1, 1));
}

#[tokio::test]
async fn reject_all_and_silent_modes() {
    let mut c = cfg("0.000001");
    c.reject_all = true;
    let pool = MockPool::start(c).await.unwrap();
    let mut s = session(&pool, "a", false).await;
    let (f, _) = s.job.search(
        &s.en1,
        &en2(&s, 1),
        None,
        s.job.ntime,
        &s.diff.target(),
        0,
        u32::MAX,
    );
    let f = f.unwrap();
    let r =
        s.c.submit(
            "a",
            &s.job.job_id.clone(),
            &f.extranonce2,
            f.ntime,
            f.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(codes::LOW_DIFFICULTY));

    let mut c = cfg("1");
    c.silent = true;
    let pool = MockPool::start(c).await.unwrap();
    let mut cl = StratumClient::connect(pool.addr()).await.unwrap();
    cl.subscribe("x", None).await.unwrap();
    assert!(cl.authorize("a", "x").await.unwrap());
    pool.new_job(true);
    // the pool handles lines in order: anything it sent after authorize arrives before
    // this reply
    assert!(
        cl.request("mining.suggest_difficulty", json!([1]))
            .await
            .unwrap()
            .is_true()
    );
    let inbox = cl.clear_inbox();
    assert!(inbox.is_empty(), "silent pool sent {inbox:?}");
}

#[tokio::test]
async fn junk_closes_the_connection() {
    let pool = MockPool::start(cfg("1")).await.unwrap();
    let mut c = StratumClient::connect(pool.addr()).await.unwrap();
    c.send_raw(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, b'\n'])
        .await
        .unwrap();
    c.expect_closed().await.unwrap();
    pool.wait_for(|s| s.protocol_errors == 1 && s.connections_current == 0, T)
        .await
        .unwrap();
    // over-long line
    let mut c = StratumClient::connect(pool.addr()).await.unwrap();
    c.send_raw(&vec![b'{'; 20_000]).await.unwrap();
    c.expect_closed().await.unwrap();
    pool.wait_for(|s| s.protocol_errors == 2, T).await.unwrap();
}

#[tokio::test]
async fn kill_drops_connections_and_restart_reuses_the_port() {
    let pool = MockPool::start(cfg("1")).await.unwrap();
    let addr = pool.addr();
    let mut a = session(&pool, "a", false).await;
    let mut b = StratumClient::connect(addr).await.unwrap();
    pool.wait_for(|s| s.connections_current == 2, T)
        .await
        .unwrap();
    pool.kill();
    a.c.expect_closed().await.unwrap();
    b.expect_closed().await.unwrap();
    assert_eq!(pool.stats().connections_current, 0);
    drop(pool);

    let mut c = cfg("1");
    c.addr = Some(addr);
    let pool2 = MockPool::start(c).await.unwrap();
    assert_eq!(pool2.addr(), addr);
    let s = session(&pool2, "a", false).await;
    assert_ne!(s.job.job_id, a.job.job_id);
}

#[tokio::test]
async fn broadcasts_reach_every_connection() {
    let pool = MockPool::start(cfg("1")).await.unwrap();
    let mut a = session(&pool, "a", false).await;
    let mut b = session(&pool, "b", false).await;
    pool.send_all(r#"{"id":null,"method":"client.reconnect","params":[]}"#);
    for s in [&mut a, &mut b] {
        let n = s.c.next_notification().await.unwrap();
        assert_eq!(n.method, "client.reconnect");
    }
    let id = pool.new_job(false);
    for s in [&mut a, &mut b] {
        let n = s.c.wait_notification("mining.notify").await.unwrap();
        assert_eq!(n.params[0], Value::from(id.clone()));
    }
    let st = pool.wait_for(|s| s.notifies_sent == 4, T).await.unwrap();
    assert_eq!(st.jobs_created, 2);
}

#[tokio::test]
async fn periodic_jobs() {
    let mut c = cfg("1");
    c.job_interval = Some(Duration::from_millis(50));
    let pool = MockPool::start(c).await.unwrap();
    let mut s = session(&pool, "a", false).await;
    for _ in 0..2 {
        let n = s.c.wait_notification("mining.notify").await.unwrap();
        assert_eq!(n.params[8], json!(false));
    }
}
