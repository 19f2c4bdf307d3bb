//! The Stratum side end to end over real TCP: a mock pool that validates what it receives,
//! the proxy, and raw clients or hashing miners.

mod common;

use common::*;
use loka_config::Mode;
use loka_sim::client::StratumClient;
use loka_sim::miner::{MinerConfig, SimMiner};
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;

#[tokio::test]
async fn aggregate_mode_validates_and_forwards_real_shares() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let addr = proxy.stratum_addr.to_string();
    let mut cfgs = vec![
        MinerConfig::new(&addr, "alice.rig1"),
        MinerConfig {
            configure_version_rolling: true,
            ..MinerConfig::new(&addr, "alice.bitaxe")
        },
        MinerConfig {
            same_submit_id: Some(4),
            ..MinerConfig::new(&addr, "bob.cpuminer")
        },
        MinerConfig {
            string_ids: true,
            extranonce_subscribe: true,
            ..MinerConfig::new(&addr, "carol.bfg")
        },
    ];
    for c in &mut cfgs {
        c.hashrate = Some(100_000.0);
    }
    let miners: Vec<_> = cfgs.into_iter().map(SimMiner::spawn).collect();
    for m in &miners {
        let s = m.wait_for(|s| s.accepted >= 8, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{s:?}");
        assert_eq!(s.protocol_errors, 0, "{s:?}");
    }
    // The BitAxe-style miner negotiated version rolling and its rolled shares were accepted.
    assert_eq!(miners[1].stats().version_rolling_mask, Some(0x1fff_e000));
    // One upstream session carries every miner; every forwarded share passed the pool's own check.
    let p = pool.wait_for(|p| p.accepted >= 3, WAIT).await.unwrap();
    assert_eq!(p.connections_total, 1);
    assert_eq!(p.rejected_total(), 0, "{p:?}");
    // Miners got distinct extranonce1 prefixes inside one upstream extranonce2 space.
    let en1s: std::collections::HashSet<_> = miners
        .iter()
        .map(|m| m.stats().extranonce1.unwrap())
        .collect();
    assert_eq!(en1s.len(), 4);
    assert!(miners.iter().all(|m| m.stats().extranonce2_size == Some(6)));
    let s = &proxy.shared.stats;
    assert!(s.shares_accepted.load(Relaxed) >= 32);
    assert!(s.shares_forwarded.load(Relaxed) >= p.accepted);
    for m in &miners {
        m.stop();
    }
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn passthrough_mode_gives_each_miner_its_own_upstream() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Passthrough)).await;
    let addr = proxy.stratum_addr.to_string();
    let miners: Vec<_> = (0..3)
        .map(|i| {
            SimMiner::spawn(MinerConfig {
                hashrate: Some(100_000.0),
                ..MinerConfig::new(&addr, format!("dave.rig{i}"))
            })
        })
        .collect();
    for m in &miners {
        let s = m.wait_for(|s| s.accepted >= 5, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{s:?}");
        // The pool's difficulty is relayed and the pool's extranonce1 handed through.
        assert_eq!(s.difficulty, Some(0.000001));
        assert_eq!(s.extranonce2_size, Some(8));
    }
    let p = pool.stats();
    assert_eq!(p.connections_current, 3);
    assert!(p.accepted >= 15, "{p:?}");
    assert_eq!(p.rejected_total(), 0);
    let pool_en1s = pool.extranonce1s();
    for m in &miners {
        assert!(pool_en1s.contains(&m.stats().extranonce1.unwrap()));
    }
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn every_method_and_every_error_code() {
    // The pool at the miners' difficulty: nothing caps them lower, and a minimum difficulty
    // of 0.00001 can be granted.
    let pool = pool_with(|c| c.with_difficulty("0.00001").unwrap()).await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    // ≈43,000 hashes a share: a random nonce is almost surely low difficulty.
    cfg.vardiff.initial_difficulty = "0.00001".parse().unwrap();
    let proxy = proxy(cfg).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();

    // 25 before subscribe.
    let r = c
        .submit("alice.rig1", "1", &[0; 6], 0, 0, None)
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(25));
    assert_eq!(r.result, Value::Bool(false));
    // Extensions and informational methods; ids of every JSON kind are echoed.
    let r = c.request_with_id(json!("cfg"), "mining.configure", json!([["version-rolling", "minimum-difficulty", "subscribe-extranonce", "info"], {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2, "minimum-difficulty.value": 0.00001}])).await.unwrap();
    assert_eq!(r.id, json!("cfg"));
    assert_eq!(
        r.result,
        json!({"version-rolling": true, "version-rolling.mask": "1fffe000", "minimum-difficulty": true, "subscribe-extranonce": true, "info": false})
    );
    let r = c
        .request_with_id(json!(0), "mining.get_version", json!([]))
        .await
        .unwrap();
    assert_eq!(r.id, json!(0));
    assert!(r.result.as_str().unwrap().starts_with("Loka Stratum/"));
    assert_eq!(
        c.request("mining.ping", json!([])).await.unwrap().result,
        json!("pong")
    );
    assert_eq!(
        c.request("client.get_version", json!([]))
            .await
            .unwrap()
            .result
            .as_str()
            .map(|s| s.starts_with("Loka")),
        Some(true)
    );
    assert_eq!(
        c.request("mining.extranonce.subscribe", json!([]))
            .await
            .unwrap()
            .result,
        json!(true)
    );
    assert_eq!(
        c.request("mining.suggest_difficulty", json!([0.00001]))
            .await
            .unwrap()
            .result,
        json!(true)
    );
    let r = c
        .request("mining.get_transactions", json!(["1"]))
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20));
    let r = c.request("mining.frobnicate", json!([])).await.unwrap();
    assert_eq!(r.error_code(), Some(20));
    assert!(r.error[1].as_str().unwrap().contains("mining.frobnicate"));
    let r = c.request("mining.authorize", json!([""])).await.unwrap();
    assert_eq!(r.error_code(), Some(20));

    let (en1, en2_size, job) = handshake(&mut c, "alice.rig1").await;
    assert_eq!(en1.len(), 2);
    assert_eq!(en2_size, 6);
    // 24: a worker this connection did not authorize.
    let good = find_share(&job, &en1, en2_size, "0.00001", true, 0);
    let r = c
        .submit(
            "mallory.rig",
            &job.job_id,
            &good.extranonce2,
            good.ntime,
            good.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(24));
    // 21: unknown job.
    let r = c
        .submit(
            "alice.rig1",
            "nope",
            &good.extranonce2,
            good.ntime,
            good.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(21));
    // 20: malformed params, wrong extranonce2 size, ntime out of window, version bits outside the mask.
    let r = c
        .request(
            "mining.submit",
            json!(["alice.rig1", job.job_id, "zz", "00000000", "00000000"]),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20));
    assert!(r.error[1].as_str().unwrap().contains("extranonce2"));
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &[0; 4],
            good.ntime,
            good.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20));
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &good.extranonce2,
            job.ntime - 1,
            good.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20));
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &good.extranonce2,
            good.ntime,
            good.nonce,
            Some(0x0000_0001),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20));
    // 23: low difficulty.
    let bad = find_share(&job, &en1, en2_size, "0.00001", false, 0);
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &bad.extranonce2,
            bad.ntime,
            bad.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(23));
    // Accepted, then 22 for the same share.
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &good.extranonce2,
            good.ntime,
            good.nonce,
            None,
        )
        .await
        .unwrap();
    assert!(r.is_true(), "{r:?}");
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &good.extranonce2,
            good.ntime,
            good.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(22));
    // Version rolling inside the mask is accepted.
    let mut rolled = good.clone();
    rolled.version_bits = Some(0x0000_2000);
    let rules = loka_stratum::share::ShareRules {
        version_mask: 0x1fff_e000,
        ntime_window: 7200,
        extranonce2_size: en2_size,
    };
    let target = "0.00001"
        .parse::<loka_stratum::Difficulty>()
        .unwrap()
        .target();
    while !loka_stratum::share::hash_share(&job, &en1, &rolled, &rules)
        .unwrap()
        .meets(&target)
    {
        rolled.nonce = rolled.nonce.wrapping_add(1);
    }
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &rolled.extranonce2,
            rolled.ntime,
            rolled.nonce,
            Some(0x2000),
        )
        .await
        .unwrap();
    assert!(r.is_true(), "{r:?}");
    // 21: a job cleared by clean_jobs is stale.
    pool.new_job(true);
    let next = job_of(&c.wait_notification("mining.notify").await.unwrap());
    assert_ne!(next.job_id, job.job_id);
    assert!(next.clean_jobs);
    let other = find_share(
        &job,
        &en1,
        en2_size,
        "0.00001",
        true,
        good.nonce.wrapping_add(1),
    );
    let r = c
        .submit(
            "alice.rig1",
            &job.job_id,
            &other.extranonce2,
            other.ntime,
            other.nonce,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(21));
    let s = &proxy.shared.stats;
    for (code, n) in [(20, 4), (21, 2), (22, 1), (23, 1), (24, 1), (25, 1)] {
        assert_eq!(
            s.rejects(loka_stratum::error::ErrorCode::from_code(code).unwrap()),
            n,
            "code {code}"
        );
    }
    assert_eq!(s.shares_accepted.load(Relaxed), 2);
}

#[tokio::test]
async fn set_difficulty_comes_before_notify_and_nothing_before_the_subscribe_reply() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    // Authorize first (some firmware does), then subscribe: the first line back must be the
    // authorize reply, then the subscribe reply, then set_difficulty, then notify.
    let a = c
        .send_request("mining.authorize", json!(["alice.rig1", "x"]))
        .await
        .unwrap();
    let first = c.next_message().await.unwrap().unwrap();
    assert_eq!(first["id"], a);
    let s = c
        .send_request("mining.subscribe", json!(["cpuminer/2.5.1"]))
        .await
        .unwrap();
    let second = c.next_message().await.unwrap().unwrap();
    assert_eq!(second["id"], s, "{second}");
    let third = c.next_message().await.unwrap().unwrap();
    assert_eq!(third["method"], "mining.set_difficulty", "{third}");
    let fourth = c.next_message().await.unwrap().unwrap();
    assert_eq!(fourth["method"], "mining.notify", "{fourth}");
    assert_eq!(fourth["params"][8], json!(true));
}

#[tokio::test]
async fn resubscribing_with_the_old_session_id_gets_the_same_extranonce() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let mut a = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let first = a.subscribe("cpuminer/2.5.1", None).await.unwrap();
    let sid = first.session_id.clone().unwrap();
    drop(a);
    // Wait until the proxy has released the prefix, then resume.
    let stats = proxy.shared.stats.clone();
    for _ in 0..200 {
        if stats.connections_current.load(Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(stats.connections_current.load(Relaxed), 0);
    let mut b = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let second = b.subscribe("cpuminer/2.5.1", Some(&sid)).await.unwrap();
    assert_eq!(second.extranonce1, first.extranonce1);
    // A third miner asking for the same (now taken) id gets a different one.
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let third = c.subscribe("cpuminer/2.5.1", Some(&sid)).await.unwrap();
    assert_ne!(third.extranonce1, first.extranonce1);
}

#[tokio::test]
async fn block_candidates_are_detected_and_forwarded() {
    let pool = pool_with(|c| loka_sim::pool::MockPoolConfig {
        nbits: "207fffff".into(),
        ..c
    })
    .await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let m = SimMiner::spawn(MinerConfig {
        hashrate: Some(50_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "erin.rig")
    });
    m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
    // With nbits 207fffff every hash below 2^255 is a block: all accepted shares qualify.
    let p = pool
        .wait_for(|p| p.block_candidates >= 1, WAIT)
        .await
        .unwrap();
    assert!(p.accepted >= 1);
    assert!(proxy.shared.stats.block_candidates.load(Relaxed) >= 1);
    assert!(
        proxy.shared.stats.shares_forwarded.load(Relaxed)
            >= proxy.shared.stats.block_candidates.load(Relaxed)
    );
}

#[tokio::test]
async fn vardiff_raises_a_fast_miner_without_rejecting_its_shares() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.vardiff.enabled = true;
    cfg.vardiff.initial_difficulty = "0.00000001".parse().unwrap();
    cfg.vardiff.min_difficulty = "0.00000001".parse().unwrap();
    cfg.vardiff.target_shares_per_minute = 60.0;
    cfg.vardiff.retarget_interval = std::time::Duration::from_secs(1);
    let proxy = proxy(cfg).await;
    let m = SimMiner::spawn(MinerConfig {
        hashrate: Some(200_000.0),
        ..MinerConfig::new(proxy.stratum_addr, "fay.rig")
    });
    // New jobs let the miner apply the new difficulty.
    let deadline = std::time::Instant::now() + WAIT;
    let s = loop {
        assert!(std::time::Instant::now() < deadline, "{:?}", m.stats());
        pool.new_job(false);
        if let Ok(s) = m
            .wait_for(
                |s| s.difficulties_seen.iter().any(|d| *d > 0.00000001) && s.accepted > 20,
                std::time::Duration::from_millis(500),
            )
            .await
        {
            break s;
        }
    };
    assert_eq!(s.rejected_total(), 0, "{s:?}");
    let raised = s.difficulties_seen.iter().cloned().fold(0.0, f64::max);
    assert!(raised > 0.00000001, "{s:?}");
}

/// A miner that finds nothing at its difficulty is lowered at the retarget interval, though
/// the pool's jobs (here every 200 ms, each a new notify to the miner) come more often than
/// that interval: the session's retarget clock is not restarted by every message it sends.
#[tokio::test]
async fn vardiff_lowers_a_quiet_miner_while_jobs_keep_coming() {
    let pool = pool_with(|c| c.with_difficulty("0.01").unwrap()).await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.vardiff.enabled = true;
    cfg.vardiff.initial_difficulty = "0.001".parse().unwrap();
    cfg.vardiff.min_difficulty = "0.00000001".parse().unwrap();
    cfg.vardiff.retarget_interval = std::time::Duration::from_secs(1);
    let proxy = proxy(cfg).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.set_timeout(std::time::Duration::from_millis(200));
    c.subscribe("quiet/1.0", None).await.unwrap();
    assert!(c.authorize("quiet.rig", "x").await.unwrap());
    let started = std::time::Instant::now();
    let mut difficulties = Vec::new();
    let lowered = loop {
        assert!(
            started.elapsed() < WAIT,
            "no lower difficulty in {WAIT:?}; sent: {difficulties:?}"
        );
        pool.new_job(false);
        while let Ok(n) = c.next_notification().await {
            if n.method == "mining.set_difficulty" {
                difficulties.push(n.params[0].as_f64().unwrap());
            }
        }
        if let Some(d) = difficulties.iter().copied().find(|d| *d < 0.001) {
            break d;
        }
    };
    assert_eq!(difficulties.first(), Some(&0.001), "{difficulties:?}");
    assert!(lowered < 0.001);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "lowered only after {:?}",
        started.elapsed()
    );
}

/// Authorize is answered locally, so one connection's worker names are bounded: the 17th is
/// refused and counted, and the ones it has keep working.
#[tokio::test]
async fn one_connection_cannot_make_up_endless_workers() {
    let pool = pool().await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.subscribe("x", None).await.unwrap();
    for i in 0..loka_proxy::session::MAX_WORKERS_PER_CONNECTION {
        assert!(c.authorize(&format!("many.w{i}"), "x").await.unwrap());
    }
    let r = c
        .request("mining.authorize", json!(["many.extra", "x"]))
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(20), "{r:?}");
    assert_eq!(proxy.shared.stats.workers_refused.load(Relaxed), 1);
    assert_eq!(
        proxy.shared.stats.workers().len(),
        loka_proxy::session::MAX_WORKERS_PER_CONNECTION
    );
    // A name it already has is still fine.
    assert!(c.authorize("many.w0", "x").await.unwrap());
}
