//! SimMiner against MockPool over real TCP.

use std::time::Duration;

use loka_sim::pool::codes;
use loka_sim::share::Difficulty;
use loka_sim::{MinerConfig, MockPool, MockPoolConfig, SimMiner};

const T: Duration = Duration::from_secs(10);

fn pool_cfg(diff: &str) -> MockPoolConfig {
    MockPoolConfig::default().with_difficulty(diff).unwrap()
}

#[tokio::test]
async fn bitaxe_style_miner_gets_validated_shares_accepted() {
    let mut pc = pool_cfg("1e-7");
    pc.nbits = "207fffff".into();
    let pool = MockPool::start(pc).await.unwrap();
    let mut mc = MinerConfig::new(pool.addr(), "alice.rig1");
    mc.configure_version_rolling = true;
    mc.extranonce_subscribe = true;
    mc.submit_limit = Some(20);
    let miner = SimMiner::spawn(mc);
    let ms = miner
        .wait_for(|s| s.accepted + s.rejected_total() >= 20, T)
        .await
        .unwrap();
    assert_eq!(ms.accepted, 20, "{ms:?}");
    assert_eq!(ms.submitted, 20);
    assert_eq!(ms.protocol_errors, 0);
    assert_eq!(ms.version_rolling_mask, Some(0x1fff_e000));
    assert_eq!(ms.difficulty, Some(1e-7));
    assert_eq!(ms.extranonce2_size, Some(8));
    assert_eq!(ms.latencies_us.len(), 20);
    assert!(ms.jobs_received >= 1);
    let ps = pool.stats();
    assert_eq!(ps.accepted, 20);
    assert_eq!(ps.rejected_total(), 0);
    assert_eq!(ps.block_candidates, 20);
    let recs = pool.submits();
    assert!(recs.iter().all(|r| r.accepted && r.worker == "alice.rig1"));
    // shares roll version bits inside the mask
    assert!(recs.iter().all(|r| r.version_bits.is_some()));
    assert!(
        recs.iter()
            .any(|r| r.version_bits.as_deref() != Some("00000000"))
    );
    assert_eq!(recs[0].extranonce1, ms.extranonce1.clone().unwrap());
    miner.stop();
    pool.wait_for(|s| s.connections_current == 0, T)
        .await
        .unwrap();
}

#[tokio::test]
async fn cpuminer_and_bfgminer_id_styles() {
    let pool = MockPool::start(pool_cfg("1e-7")).await.unwrap();
    let mut cpu = MinerConfig::new(pool.addr(), "cpu");
    cpu.same_submit_id = Some(4);
    cpu.submit_limit = Some(10);
    let mut bfg = MinerConfig::new(pool.addr(), "bfg");
    bfg.string_ids = true;
    bfg.submit_limit = Some(10);
    let a = SimMiner::spawn(cpu);
    let b = SimMiner::spawn(bfg);
    for m in [&a, &b] {
        let s = m.wait_for(|s| s.accepted >= 10, T).await.unwrap();
        assert_eq!(s.protocol_errors, 0, "{s:?}");
        assert_eq!(s.rejected_total(), 0);
    }
    assert_eq!(pool.stats().accepted, 20);
}

#[tokio::test]
async fn difficulty_applies_at_the_next_notify() {
    let pool = MockPool::start(pool_cfg("1e-7")).await.unwrap();
    let mut mc = MinerConfig::new(pool.addr(), "d");
    mc.hashrate = Some(50_000.0);
    let miner = SimMiner::spawn(mc);
    miner.wait_for(|s| s.accepted >= 1, T).await.unwrap();
    pool.set_difficulty(Difficulty::parse("2e-7").unwrap());
    let s = miner
        .wait_for(|s| s.difficulties_seen.len() == 2, T)
        .await
        .unwrap();
    assert_eq!(s.difficulty, Some(1e-7), "applied before the next notify");
    pool.new_job(false);
    let s = miner.wait_for(|s| s.jobs_received == 2, T).await.unwrap();
    assert_eq!(s.difficulty, Some(2e-7));
    let before = pool.stats().accepted;
    miner
        .wait_for(|s| s.accepted >= before + 3, T)
        .await
        .unwrap();
    assert_eq!(pool.stats().rejected_total(), 0);
}

#[tokio::test]
async fn reconnects_after_pool_crash_and_on_client_reconnect() {
    let pool = MockPool::start(pool_cfg("1e-7")).await.unwrap();
    let addr = pool.addr();
    let mut mc = MinerConfig::new(addr, "r");
    mc.reconnect = true;
    mc.reconnect_backoff = Duration::from_millis(20);
    mc.hashrate = Some(100_000.0);
    let miner = SimMiner::spawn(mc);
    let s1 = miner.wait_for(|s| s.accepted >= 1, T).await.unwrap();
    let sid = s1.session_id.clone().unwrap();

    pool.kill();
    drop(pool);
    miner.wait_for(|s| s.disconnects >= 1, T).await.unwrap();
    let mut pc = pool_cfg("1e-7");
    pc.addr = Some(addr);
    let pool = MockPool::start(pc).await.unwrap();
    let s2 = miner
        .wait_for(
            |s| s.reconnects >= 1 && s.subscribed && s.jobs_received >= 2,
            T,
        )
        .await
        .unwrap();
    assert_eq!(s2.resumed_with.as_deref(), Some(sid.as_str()));
    pool.wait_for(|s| s.accepted >= 1, T).await.unwrap();

    pool.send_all(r#"{"id":null,"method":"client.reconnect","params":[]}"#);
    let s3 = miner
        .wait_for(
            |s| s.reconnect_requests == 1 && s.reconnects >= 2 && s.connected,
            T,
        )
        .await
        .unwrap();
    assert!(!s3.finished);
    pool.wait_for(
        |s| s.connections_total >= 2 && s.connections_current == 1,
        T,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn without_reconnect_the_miner_finishes_and_counts_rejects() {
    let mut pc = pool_cfg("1e-7");
    pc.reject_all = true;
    let pool = MockPool::start(pc).await.unwrap();
    let mut mc = MinerConfig::new(pool.addr(), "x");
    mc.submit_limit = Some(3);
    let miner = SimMiner::spawn(mc);
    let s = miner
        .wait_for(|s| s.rejected_total() >= 3, T)
        .await
        .unwrap();
    assert_eq!(s.rejected_with(codes::LOW_DIFFICULTY), 3);
    assert_eq!(s.accepted, 0);
    pool.kill();
    let s = miner.wait_for(|s| s.finished, T).await.unwrap();
    assert_eq!(s.disconnects, 1);
    assert!(!s.connected);
}

#[tokio::test]
async fn connect_error_is_reported() {
    // bind then drop to get a port nobody listens on
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let miner = SimMiner::spawn(MinerConfig::new(addr, "x"));
    let s = miner.wait_for(|s| s.finished, T).await.unwrap();
    assert_eq!(s.connect_errors, 1);
    assert!(s.last_error.unwrap().contains("connect"));
}
