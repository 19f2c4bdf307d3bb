//! Real pools differ: narrow or no version rolling, fixed or low difficulty, dropped
//! connections with shares in flight, long extranonce1s, messages for the miners. Each test
//! runs the proxy over real TCP between `MockPool` (which validates every share on its own)
//! and hashing miners or raw clients, and checks that no miner loses credit.

mod common;

use common::*;
use loka_config::Mode;
use loka_proxy::events::{Event, EventSink, ShareEvent};
use loka_proxy::runtime::start;
use loka_proxy::upstream::resolve_pools;
use loka_sim::client::StratumClient;
use loka_sim::miner::{MinerConfig, MinerHandle, SimMiner};
use loka_sim::pool::MockPoolConfig;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn rolling_miner(addr: std::net::SocketAddr, name: &str) -> MinerHandle {
    SimMiner::spawn(MinerConfig {
        configure_version_rolling: true,
        hashrate: Some(100_000.0),
        ..MinerConfig::new(addr, name)
    })
}

/// A pool granting fewer version bits than asked: rolling miners end up rolling only those,
/// in both modes, and every share they find is accepted by the pool.
#[tokio::test]
async fn a_pool_granting_a_narrow_version_mask_gets_only_those_bits() {
    for mode in [Mode::Passthrough, Mode::Aggregate] {
        let pool = pool_with(|c| MockPoolConfig {
            version_rolling_mask: Some(0x0000_e000),
            ..c
        })
        .await;
        let proxy = proxy(config(&[pool.addr()], mode)).await;
        let miners: Vec<_> = (0..2)
            .map(|i| rolling_miner(proxy.stratum_addr, &format!("vr.rig{i}")))
            .collect();
        for m in &miners {
            let s = m.wait_for(|s| s.accepted >= 6, WAIT).await.unwrap();
            assert_eq!(s.rejected_total(), 0, "{mode:?}: {s:?}");
            assert_eq!(s.version_rolling_mask, Some(0x0000_e000), "{mode:?}");
        }
        let p = pool.wait_for(|p| p.accepted >= 2, WAIT).await.unwrap();
        assert_eq!(p.rejected_total(), 0, "{mode:?}: {p:?}");
        // The pool saw rolled versions, inside its mask.
        let rolled: Vec<u32> = pool
            .submits()
            .iter()
            .filter_map(|r| r.version_bits.as_deref())
            .map(|v| u32::from_str_radix(v, 16).unwrap())
            .collect();
        assert!(
            !rolled.is_empty(),
            "{mode:?}: no rolled share reached the pool"
        );
        assert!(rolled.iter().all(|v| v & !0x0000_e000 == 0), "{mode:?}");
        for m in &miners {
            m.stop();
        }
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}

/// A pool that refuses version rolling: miners that ask are told no and do not roll.
#[tokio::test]
async fn a_pool_without_version_rolling_gets_miners_that_do_not_roll() {
    for mode in [Mode::Passthrough, Mode::Aggregate] {
        let pool = pool_with(|c| MockPoolConfig {
            version_rolling_mask: None,
            ..c
        })
        .await;
        let proxy = proxy(config(&[pool.addr()], mode)).await;
        let m = rolling_miner(proxy.stratum_addr, "novr.rig");
        let s = m.wait_for(|s| s.accepted >= 6, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{mode:?}: {s:?}");
        assert!(
            matches!(s.version_rolling_mask, None | Some(0)),
            "{mode:?}: {s:?}"
        );
        let p = pool.wait_for(|p| p.accepted >= 2, WAIT).await.unwrap();
        assert_eq!(p.rejected_total(), 0, "{mode:?}: {p:?}");
        assert!(pool.submits().iter().all(|r| r.version_bits.is_none()));
        m.stop();
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}

/// A pool that narrows its mask mid-session (`mining.set_version_mask`): the miners hear the
/// new mask before the next job, and nothing outside it reaches the pool.
#[tokio::test]
async fn a_mask_the_pool_changes_reaches_the_miners() {
    for mode in [Mode::Passthrough, Mode::Aggregate] {
        let pool = pool().await;
        let proxy = proxy(config(&[pool.addr()], mode)).await;
        let m = rolling_miner(proxy.stratum_addr, "mask.rig");
        let s = m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
        assert_eq!(s.version_rolling_mask, Some(0x1fff_e000), "{mode:?}");
        pool.set_version_mask(0x0000_6000);
        pool.new_job(false);
        let s = m
            .wait_for(|s| s.version_rolling_mask == Some(0x0000_6000), WAIT)
            .await
            .unwrap();
        assert_eq!(s.set_version_mask_received, 1, "{mode:?}");
        let before = pool.submits().len();
        let accepted = s.accepted;
        m.wait_for(|s| s.accepted >= accepted + 6, WAIT)
            .await
            .unwrap();
        let after: Vec<u32> = pool.submits()[before..]
            .iter()
            .filter_map(|r| r.version_bits.as_deref())
            .map(|v| u32::from_str_radix(v, 16).unwrap())
            .collect();
        assert!(
            after.iter().all(|v| v & !0x0000_6000 == 0),
            "{mode:?}: {after:x?}"
        );
        only_mask_races(&pool, 0x0000_6000, mode);
        m.stop();
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}

/// Every header the pool got is one a miner hashed: none missed its difficulty. The only
/// refusals allowed are shares that crossed the pool's `mining.set_version_mask` on the
/// wire (sent before the proxy read it), for bits outside the `narrow` mask just set.
fn only_mask_races(pool: &loka_sim::pool::MockPool, narrow: u32, mode: Mode) {
    let p = pool.stats();
    assert_eq!(
        p.rejected.get(&23),
        None,
        "{mode:?}: altered headers: {p:?}"
    );
    for r in pool.submits().iter().filter(|r| !r.accepted) {
        assert_eq!(r.error_code, Some(20), "{mode:?}: {r:?}");
        let bits = u32::from_str_radix(r.version_bits.as_deref().unwrap(), 16).unwrap();
        assert_ne!(bits & !narrow, 0, "{mode:?}: {r:?}");
    }
}

/// Shares in flight while the pool changes its mask: a share rolled under the old mask
/// reaches the proxy after the pool (and so the proxy) moved to a narrower one. Such a
/// share cannot be sent as it is (masking its bits down makes the pool hash another
/// header, which misses its difficulty), so the proxy refuses it to the miner instead.
/// Fast miners and repeated changes make the race certain to happen.
#[tokio::test]
async fn shares_rolled_under_a_mask_the_pool_just_narrowed_never_reach_it_altered() {
    for mode in [Mode::Passthrough, Mode::Aggregate] {
        let pool = pool().await;
        let proxy = proxy(config(&[pool.addr()], mode)).await;
        let miners: Vec<_> = (0..4)
            .map(|i| {
                SimMiner::spawn(MinerConfig {
                    configure_version_rolling: true,
                    ..MinerConfig::new(proxy.stratum_addr, format!("flip.rig{i}"))
                })
            })
            .collect();
        for m in &miners {
            m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
        }
        for round in 0..12 {
            let mask = if round % 2 == 0 {
                0x0000_6000
            } else {
                0x1fff_e000
            };
            pool.set_version_mask(mask);
            pool.new_job(false);
            let forwarded = pool.stats().accepted + pool.stats().rejected_total();
            pool.wait_for(|p| p.accepted + p.rejected_total() >= forwarded + 20, WAIT)
                .await
                .unwrap();
        }
        let p = pool.stats();
        assert!(p.accepted > 200, "{mode:?}: {p:?}");
        only_mask_races(&pool, 0x0000_6000, mode);
        for m in &miners {
            m.stop();
        }
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}

/// The next `n` share events, waiting for each (connection events are skipped).
async fn share_events(rx: &mut mpsc::Receiver<Event>, n: usize) -> Vec<ShareEvent> {
    let mut shares = Vec::new();
    while shares.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Event::Share(e))) => shares.push(e),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("{} of {n} share events arrived", shares.len()),
        }
    }
    shares
}

/// Share events already queued (after every reply was read, all of them are).
fn queued_share_events(rx: &mut mpsc::Receiver<Event>) -> usize {
    let mut n = 0;
    while let Ok(e) = rx.try_recv() {
        n += usize::from(matches!(e, Event::Share(_)));
    }
    n
}

/// Passthrough: the pool drops its connections while it holds five valid shares unanswered.
/// Each submit gets exactly one reply (20, the pool never answered) and one record.
#[tokio::test]
async fn passthrough_shares_in_flight_when_the_pool_drops_get_one_reply_and_one_record() {
    let pool = pool_with(|c| MockPoolConfig {
        hold_submits: true,
        ..c
    })
    .await;
    let cfg = config(&[pool.addr()], Mode::Passthrough);
    let (tx, mut events) = mpsc::channel(1024);
    let pools = resolve_pools(&cfg, |_| None).unwrap();
    let proxy = start(cfg, pools, Some(EventSink::from_sender(tx)))
        .await
        .unwrap();
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.set_timeout(WAIT);
    let (en1, en2_size, job) = handshake(&mut c, "held.rig").await;
    let mut ids = Vec::new();
    for params in shares(&job, &en1, en2_size, "0.000001", "held.rig", 5) {
        ids.push(c.send_request("mining.submit", params).await.unwrap());
    }
    pool.wait_for(|p| p.submits >= 5, WAIT).await.unwrap();
    assert_eq!(pool.stats().accepted, 5, "the pool judged them valid");
    pool.drop_connections();
    for id in &ids {
        let r = c.wait_response(id).await.unwrap();
        assert_eq!(r.error_code(), Some(20), "{r:?}");
    }
    // Nothing more for those ids: the next reply is the pong, with no other reply before it.
    let pong = c.request("mining.ping", json!([])).await.unwrap();
    assert_eq!(pong.result, json!("pong"));
    let replies: Vec<_> = c
        .clear_inbox()
        .into_iter()
        .filter(|m| m.get("method").is_none())
        .collect();
    assert!(replies.is_empty(), "{replies:?}");
    let shares = share_events(&mut events, 5).await;
    for e in &shares {
        assert!(!e.accepted, "{e:?}");
        assert_eq!(e.reject_reason, Some("upstream_unanswered"));
        assert!(e.forwarded);
    }
    assert_eq!(queued_share_events(&mut events), 0, "one record per share");
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

/// Passthrough: a miner that leaves while its shares wait at the pool still gets one record
/// per share, with the pool's verdict.
#[tokio::test]
async fn passthrough_shares_of_a_miner_that_left_are_still_recorded_with_the_pools_verdict() {
    let pool = pool().await;
    let cfg = config(&[pool.addr()], Mode::Passthrough);
    let (tx, mut events) = mpsc::channel(1024);
    let pools = resolve_pools(&cfg, |_| None).unwrap();
    let proxy = start(cfg, pools, Some(EventSink::from_sender(tx)))
        .await
        .unwrap();
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    let (en1, en2_size, job) = handshake(&mut c, "gone.rig").await;
    let mut burst = String::new();
    for (i, params) in shares(&job, &en1, en2_size, "0.000001", "gone.rig", 4)
        .into_iter()
        .enumerate()
    {
        burst += &format!(
            "{}\n",
            json!({"id": 100 + i, "method": "mining.submit", "params": params})
        );
    }
    // The four submits and the close in one go: the verdicts come after the miner is gone.
    c.send_raw(burst.as_bytes()).await.unwrap();
    drop(c);
    let shares = share_events(&mut events, 4).await;
    assert!(shares.iter().all(|e| e.accepted), "{shares:?}");
    assert_eq!(pool.stats().accepted, 4);
    proxy.drain(std::time::Duration::from_secs(5)).await;
    assert_eq!(queued_share_events(&mut events), 0, "one record per share");
}

/// Aggregate with vardiff on, miners starting at `initial`, aiming at one share a second.
fn vardiff_config(pools: &[std::net::SocketAddr], initial: &str) -> loka_config::Config {
    let mut cfg = config(pools, Mode::Aggregate);
    cfg.vardiff.enabled = true;
    cfg.vardiff.initial_difficulty = initial.parse().unwrap();
    cfg.vardiff.min_difficulty = "0.00000001".parse().unwrap();
    cfg.vardiff.target_shares_per_minute = 60.0;
    cfg.vardiff.retarget_interval = std::time::Duration::from_secs(1);
    cfg
}

fn fast_miner(addr: std::net::SocketAddr, name: &str) -> MinerHandle {
    SimMiner::spawn(MinerConfig {
        hashrate: Some(100_000.0),
        ..MinerConfig::new(addr, name)
    })
}

/// A pool at a fixed, low difficulty: vardiff wants far more for these miners, but none is
/// ever set above the pool's difficulty, so every share they find is worth to the pool what
/// the miner did: each is forwarded and credited. The proxy asks for more; this pool ignores
/// it.
#[tokio::test]
async fn miners_are_never_set_above_a_fixed_low_pool_difficulty() {
    let pool = pool_with(|c| MockPoolConfig {
        job_interval: Some(std::time::Duration::from_millis(200)),
        ..c.with_difficulty("0.0000001").unwrap()
    })
    .await;
    // Miners would start at ten times the pool's difficulty.
    let proxy = proxy(vardiff_config(&[pool.addr()], "0.000001")).await;
    let miners: Vec<_> = (0..2)
        .map(|i| fast_miner(proxy.stratum_addr, &format!("cap.rig{i}")))
        .collect();
    for m in &miners {
        let s = m.wait_for(|s| s.accepted >= 30, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{s:?}");
        assert!(
            s.difficulties_seen.iter().all(|d| *d <= 0.0000001),
            "{:?}",
            s.difficulties_seen
        );
        assert_eq!(s.difficulty, Some(0.0000001));
    }
    // The proxy asked for the difficulty vardiff wants; this pool kept its own.
    pool.wait_for(|p| p.suggests >= 1, WAIT).await.unwrap();
    for m in &miners {
        m.stop();
    }
    let stats = proxy.shared.stats.clone();
    proxy.drain(std::time::Duration::from_secs(5)).await;
    let accepted = stats
        .shares_accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let forwarded = stats
        .shares_forwarded
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        forwarded, accepted,
        "every share at the pool's difficulty goes up"
    );
    let p = pool
        .wait_for(|p| p.submits >= forwarded, WAIT)
        .await
        .unwrap();
    assert_eq!(p.rejected_total(), 0, "{p:?}");
    assert_eq!(p.accepted, forwarded);
}

/// The pool's difficulty goes down, up again, and changes with a failover: the miners
/// follow it down at once and back up to what vardiff wants, never above it.
#[tokio::test]
async fn miners_follow_the_pools_difficulty_down_up_and_across_failover() {
    let primary = pool_with(|c| MockPoolConfig {
        job_interval: Some(std::time::Duration::from_millis(200)),
        ..c
    })
    .await;
    let backup = pool_with(|c| MockPoolConfig {
        job_interval: Some(std::time::Duration::from_millis(200)),
        ..c.with_difficulty("0.0000005").unwrap()
    })
    .await;
    let mut cfg = vardiff_config(&[primary.addr(), backup.addr()], "0.000001");
    cfg.upstream.failback_after = std::time::Duration::from_secs(3600);
    let proxy = proxy(cfg).await;
    let m = fast_miner(proxy.stratum_addr, "follow.rig");
    let at = |d: f64| move |s: &loka_sim::miner::MinerStats| s.difficulty == Some(d);
    m.wait_for(at(0.000001), WAIT).await.unwrap();
    primary.set_difficulty("0.0000001".parse().unwrap());
    m.wait_for(at(0.0000001), WAIT).await.unwrap();
    primary.set_difficulty("0.000001".parse().unwrap());
    m.wait_for(at(0.000001), WAIT).await.unwrap();
    let accepted = m.stats().accepted;
    m.wait_for(|s| s.accepted >= accepted + 5, WAIT)
        .await
        .unwrap();
    primary.kill();
    m.wait_for(at(0.0000005), WAIT).await.unwrap();
    let accepted = m.stats().accepted;
    let s = m
        .wait_for(|s| s.accepted >= accepted + 5, WAIT)
        .await
        .unwrap();
    assert!(
        s.difficulties_seen.iter().all(|d| *d <= 0.000001),
        "{:?}",
        s.difficulties_seen
    );
    // No share was judged at a difficulty its miner had not been given.
    assert_eq!(s.rejected_with(23), 0, "{s:?}");
    assert_eq!(primary.stats().rejected_total(), 0);
    assert_eq!(backup.stats().rejected_total(), 0);
    m.stop();
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

/// A pool that takes `mining.suggest_difficulty`: the proxy asks for what vardiff wants, the
/// pool raises its difficulty and the miners rise with it.
#[tokio::test]
async fn a_pool_that_takes_suggest_difficulty_lets_miners_rise() {
    let pool = pool_with(|c| MockPoolConfig {
        job_interval: Some(std::time::Duration::from_millis(200)),
        honour_suggest_difficulty: true,
        ..c.with_difficulty("0.00000001").unwrap()
    })
    .await;
    let proxy = proxy(vardiff_config(&[pool.addr()], "0.00000001")).await;
    let m = fast_miner(proxy.stratum_addr, "rise.rig");
    let s = m
        .wait_for(|s| s.difficulty.is_some_and(|d| d >= 0.0000001), WAIT)
        .await
        .unwrap();
    let p = pool.stats();
    assert!(p.suggests >= 1, "{p:?}");
    // Every request the pool saw was counted first (loka_stratum_upstream_difficulty_suggestions).
    let seen = pool.stats().suggests;
    let status = &proxy.shared.upstream.as_ref().expect("aggregate").status;
    let counted = status
        .difficulty_suggestions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(counted >= seen, "counted {counted}, the pool saw {seen}");
    let accepted = s.accepted;
    let s = m
        .wait_for(|s| s.accepted >= accepted + 5, WAIT)
        .await
        .unwrap();
    // The miner is never above what the pool was asked for (and, this pool, set).
    let asked: f64 = pool.stats().last_suggested.unwrap().parse().unwrap();
    let at = s.difficulty.unwrap();
    assert!(asked >= at, "asked {asked}, miner at {at}");
    assert_eq!(s.rejected_with(23), 0, "{s:?}");
    assert_eq!(pool.stats().rejected_total(), 0);
    m.stop();
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

/// Pools hand out extranonce1s of unusual length. Passthrough hands them to the miner whole
/// (up to 16 bytes); aggregate folds any length into the coinbase. Past 16 bytes a
/// passthrough proxy refuses that pool and fails over to the next.
#[tokio::test]
async fn long_extranonce1s_mine_or_are_refused_by_name() {
    let twelve = pool_with(|c| MockPoolConfig {
        extranonce1_size: 12,
        ..c
    })
    .await;
    let twenty = pool_with(|c| MockPoolConfig {
        extranonce1_size: 20,
        ..c
    })
    .await;
    for (mode, pools) in [
        (Mode::Passthrough, vec![twelve.addr()]),
        (Mode::Aggregate, vec![twenty.addr()]),
        (Mode::Passthrough, vec![twenty.addr(), twelve.addr()]),
    ] {
        let proxy = proxy(config(&pools, mode)).await;
        let m = fast_miner(proxy.stratum_addr, "long.rig");
        let s = m.wait_for(|s| s.accepted >= 5, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{mode:?} {pools:?}: {s:?}");
        let en1 = s.extranonce1.clone().unwrap();
        match mode {
            Mode::Passthrough => assert_eq!(en1.len(), 24, "the 12-byte pool's extranonce1"),
            Mode::Aggregate => assert_eq!(en1.len(), 4, "a 2-byte prefix"),
        }
        m.stop();
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
    assert_eq!(twelve.stats().rejected_total(), 0);
    let t = twenty.stats();
    assert_eq!(t.rejected_total(), 0, "{t:?}");
    // The passthrough proxy met the 20-byte pool, refused it and never mined there.
    assert!(t.subscribes >= 2, "{t:?}");
}

/// A pool that sends a flood of `mining.ping`s and stops reading until the proxy's writes
/// back up; then shares go up. Every ping is answered and every line the proxy writes
/// arrives whole (a pong write interrupted by a submit would be lost or tear a line).
#[tokio::test]
async fn pings_and_submits_never_tear_a_line_on_the_pool_socket() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    const SUBMITS: usize = 300;
    const PINGS: usize = 200_000;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let pool_addr = listener.local_addr().unwrap();
    let job = loka_stratum::Job::new(
        "p1".into(),
        &"11".repeat(32),
        vec![1; 40],
        vec![2; 30],
        vec![[3; 32]],
        0x2000_0000,
        0x1d00ffff,
        1_700_000_000,
        true,
    )
    .unwrap();
    let notify = json!({"id": null, "method": "mining.notify",
        "params": job.notify_params("p1", &job.coinb1, &job.coinb2, true)});
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (stalled_tx, stalled) = tokio::sync::oneshot::channel::<()>();
    let pool = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        // Handshake: configure (refused), subscribe, authorize, then a tiny difficulty and a job.
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = v["id"].clone();
            let reply = match v["method"].as_str().unwrap() {
                "mining.configure" => {
                    json!({"id": id, "result": {"version-rolling": false}, "error": null})
                }
                "mining.subscribe" => {
                    json!({"id": id, "result": [[], "00000001", 8], "error": null})
                }
                _ => json!({"id": id, "result": true, "error": null}),
            };
            w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            if v["method"] == "mining.authorize" {
                let diff = json!({"id": null, "method": "mining.set_difficulty", "params": [0.0000000001]});
                w.write_all(format!("{diff}\n{notify}\n").as_bytes())
                    .await
                    .unwrap();
                break;
            }
        }
        // The ping flood, written while nothing is read.
        let flood = tokio::spawn(async move {
            let mut batch = String::new();
            let mut stalled_tx = Some(stalled_tx);
            for i in 0..PINGS {
                batch += &format!(
                    "{{\"id\":{},\"method\":\"mining.ping\",\"params\":[]}}\n",
                    1000 + i
                );
                if batch.len() > 64 * 1024 {
                    // A write that waits: the proxy stopped reading, its pong writes are stuck.
                    let write = w.write_all(batch.as_bytes());
                    tokio::pin!(write);
                    if tokio::time::timeout(std::time::Duration::from_millis(300), &mut write)
                        .await
                        .is_err()
                        && let Some(tx) = stalled_tx.take()
                    {
                        let _ = tx.send(());
                    }
                    write.await.unwrap();
                    batch.clear();
                }
            }
            w.write_all(batch.as_bytes()).await.unwrap();
            w
        });
        let _ = released.await;
        let (mut pongs, mut submits, mut torn) = (0, 0, Vec::new());
        while submits < SUBMITS || pongs < PINGS {
            let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await else {
                break;
            };
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(v) if v["result"] == "pong" => pongs += 1,
                Ok(v) if v["method"] == "mining.submit" => submits += 1,
                Ok(_) => {}
                Err(_) => torn.push(line.chars().take(200).collect::<String>()),
            }
        }
        let _w = flood.await;
        (pongs, submits, torn)
    });
    let proxy = proxy(config(&[pool_addr], Mode::Aggregate)).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.set_timeout(WAIT);
    let (en1, en2_size, job) = handshake(&mut c, "flood.rig").await;
    let mut burst = String::new();
    for (i, params) in shares(&job, &en1, en2_size, "0.0000000001", "flood.rig", SUBMITS)
        .into_iter()
        .enumerate()
    {
        burst += &format!(
            "{}\n",
            json!({"id": i, "method": "mining.submit", "params": params})
        );
    }
    stalled
        .await
        .expect("the proxy's writes to the pool back up");
    c.send_raw(burst.as_bytes()).await.unwrap();
    for i in 0..SUBMITS {
        assert!(c.wait_response(&json!(i)).await.unwrap().is_true());
    }
    let _ = release.send(());
    let (pongs, submits, torn) = pool.await.unwrap();
    assert!(
        torn.is_empty(),
        "{} torn lines, e.g. {:?}",
        torn.len(),
        &torn[..torn.len().min(3)]
    );
    assert_eq!((pongs, submits), (PINGS, SUBMITS));
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

/// `client.show_message` from a pool reaches the miners behind that pool session, in both
/// modes (and only while subscribed: there is no one else to tell).
#[tokio::test]
async fn a_pools_message_reaches_its_miners() {
    for mode in [Mode::Passthrough, Mode::Aggregate] {
        let pool = pool().await;
        let proxy = proxy(config(&[pool.addr()], mode)).await;
        let miners: Vec<_> = (0..2)
            .map(|i| fast_miner(proxy.stratum_addr, &format!("msg.rig{i}")))
            .collect();
        for m in &miners {
            m.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();
        }
        pool.send_all(
            r#"{"id":null,"method":"client.show_message","params":["Maintenance at 12:00 UTC"]}"#,
        );
        for m in &miners {
            let s = m
                .wait_for(|s| !s.messages_shown.is_empty(), WAIT)
                .await
                .unwrap();
            assert_eq!(s.messages_shown, ["Maintenance at 12:00 UTC"], "{mode:?}");
            assert_eq!(s.protocol_errors, 0);
            m.stop();
        }
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}

/// Passthrough: a drain while shares wait at a pool that never answers. The miner hears
/// `client.reconnect`, then one reply per share (20: unanswered) before the close.
#[tokio::test]
async fn a_drain_answers_the_shares_still_at_the_pool() {
    let pool = pool_with(|c| MockPoolConfig {
        hold_submits: true,
        ..c
    })
    .await;
    let mut cfg = config(&[pool.addr()], Mode::Passthrough);
    cfg.upstream.response_timeout = std::time::Duration::from_secs(1);
    let proxy = proxy(cfg).await;
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.set_timeout(WAIT);
    let (en1, en2_size, job) = handshake(&mut c, "drain.rig").await;
    let mut ids = Vec::new();
    for params in shares(&job, &en1, en2_size, "0.000001", "drain.rig", 3) {
        ids.push(c.send_request("mining.submit", params).await.unwrap());
    }
    pool.wait_for(|p| p.submits >= 3, WAIT).await.unwrap();
    let drained = tokio::spawn(proxy.drain(std::time::Duration::from_secs(10)));
    c.wait_notification("client.reconnect").await.unwrap();
    for id in &ids {
        let r = c.wait_response(id).await.unwrap();
        assert_eq!(r.error_code(), Some(20), "{r:?}");
    }
    c.expect_closed().await.unwrap();
    assert_eq!(drained.await.unwrap().sessions_left, 0);
}

/// A pool's `client.reconnect`: with no address the proxy reconnects to the same pool, with
/// one it moves there (a host this proxy was never configured with); miners keep their
/// connections and mine on.
#[tokio::test]
async fn a_pools_client_reconnect_is_followed() {
    let first = pool().await;
    let elsewhere = pool().await;
    let proxy = proxy(config(&[first.addr()], Mode::Aggregate)).await;
    let m = fast_miner(proxy.stratum_addr, "moved.rig");
    m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
    first.send_all(r#"{"id":null,"method":"client.reconnect","params":[]}"#);
    first
        .wait_for(
            |p| p.connections_total == 2 && p.connections_current == 1,
            WAIT,
        )
        .await
        .unwrap();
    let accepted = m.stats().accepted;
    m.wait_for(|s| s.accepted >= accepted + 3, WAIT)
        .await
        .unwrap();
    let to = elsewhere.addr();
    first.send_all(&format!(
        r#"{{"id":null,"method":"client.reconnect","params":["{}",{},0]}}"#,
        to.ip(),
        to.port()
    ));
    elsewhere
        .wait_for(|p| p.connections_current == 1 && p.accepted >= 2, WAIT)
        .await
        .unwrap();
    first
        .wait_for(|p| p.connections_current == 0, WAIT)
        .await
        .unwrap();
    let status = &proxy.shared.upstream.as_ref().unwrap().status;
    assert_eq!(
        status.detail.lock().active_host.as_deref(),
        Some(to.to_string().as_str())
    );
    let s = m.stats();
    assert_eq!(s.disconnects, 0, "{s:?}");
    assert_eq!(elsewhere.stats().rejected_total(), 0);
    assert_eq!(first.stats().rejected_total(), 0);
    m.stop();
    proxy.drain(std::time::Duration::from_secs(5)).await;
}

/// BIP310 `minimum-difficulty` above a low pool's difficulty cannot be promised (the pool's
/// difficulty caps every miner): the miner is told `false` and set at the pool's; a minimum
/// the pool's difficulty covers is granted.
#[tokio::test]
async fn a_minimum_difficulty_above_the_pools_is_refused() {
    let pool = pool_with(|c| c.with_difficulty("0.0000001").unwrap()).await;
    let proxy = proxy(config(&[pool.addr()], Mode::Aggregate)).await;
    for (min, granted) in [(0.000001, false), (0.00000005, true)] {
        let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
        let r = c
            .request(
                "mining.configure",
                json!([["minimum-difficulty"], {"minimum-difficulty.value": min}]),
            )
            .await
            .unwrap();
        assert_eq!(r.result["minimum-difficulty"], granted, "{min}: {r:?}");
    }
    // The refused one mines at the pool's difficulty.
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.request(
        "mining.configure",
        json!([["minimum-difficulty"], {"minimum-difficulty.value": 0.000001}]),
    )
    .await
    .unwrap();
    c.subscribe("x", None).await.unwrap();
    assert!(c.authorize("min.rig2", "x").await.unwrap());
    let n = c.wait_notification("mining.set_difficulty").await.unwrap();
    assert_eq!(n.params, json!([0.0000001]));
}

/// A pool that changes its difficulty and sends no new job for a while: miners hear the new
/// difficulty at once (aggregate: capped to it; passthrough: relayed), not at the next job.
#[tokio::test]
async fn a_new_pool_difficulty_reaches_miners_before_the_next_job() {
    for mode in [Mode::Aggregate, Mode::Passthrough] {
        let pool = pool().await;
        let mut cfg = vardiff_config(&[pool.addr()], "0.000001");
        cfg.mining.mode = mode;
        let proxy = proxy(cfg).await;
        let m = fast_miner(proxy.stratum_addr, "now.rig");
        m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
        let jobs = pool.stats().jobs_created;
        pool.set_difficulty("0.0000001".parse().unwrap());
        let s = m
            .wait_for(|s| s.difficulties_seen.contains(&0.0000001), WAIT)
            .await
            .unwrap();
        assert_eq!(
            pool.stats().jobs_created,
            jobs,
            "{mode:?}: no new job was needed"
        );
        assert_eq!(s.rejected_total(), 0, "{mode:?}: {s:?}");
        m.stop();
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}

/// Each job from the pool opens the share writer's hold (aggregate mode: the job goes out to
/// every miner at once), and a session that has written the job to its miner touches it;
/// the writer holds its batches until the sessions go quiet.
#[tokio::test]
async fn a_new_job_opens_the_write_hold_and_the_session_that_sends_it_touches_it() {
    let pool = pool().await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    let dir = embedded_store(&mut cfg, "write-hold");
    let (proxy, store) = proxy_with_store(cfg).await;
    let hold = proxy.shared.events.hold().clone();
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.set_timeout(WAIT);
    handshake(&mut c, "hold.rig").await;
    assert_eq!(
        hold.touched_at(),
        None,
        "the first job of a session is not a fan-out"
    );
    // The pool's first job opened it too; that hold ends untouched after its quiet time, and
    // a job while it holds would not open a new one.
    let deadline = Instant::now() + WAIT;
    while hold.holds_until(Instant::now()).is_some() {
        assert!(
            Instant::now() < deadline,
            "the first job's hold never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let before = Instant::now();
    pool.new_job(true);
    c.wait_notification("mining.notify").await.unwrap();
    let opened = hold.opened_at().expect("the job opened the hold");
    assert!(opened + Duration::from_micros(1) >= before);
    let deadline = Instant::now() + WAIT;
    while hold.touched_at().is_none_or(|t| t < opened) {
        assert!(
            Instant::now() < deadline,
            "the session never touched the hold"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(c);
    proxy.drain(Duration::from_secs(2)).await;
    store.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job the fan-out writes to a miner (without waking its session) is judged like one the
/// session sent: at the difficulty in force when it went out, also after the pool raises its
/// difficulty. The session takes in what the fan-out wrote before it records the raise, so
/// its ledger knows the job went out before it (a miner may mine the job at the old
/// difficulty until its next notify). A job sent after the raise is judged at the new one.
#[tokio::test]
async fn a_job_the_fan_out_wrote_is_judged_at_the_difficulty_it_went_out_under() {
    let pool = pool_with(|c| c.with_difficulty("0.00000001").unwrap()).await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.vardiff.initial_difficulty = "0.0001".parse().unwrap();
    let proxy = proxy(cfg).await;
    let lanes = proxy
        .shared
        .lanes
        .clone()
        .expect("aggregate mode has lanes");
    let mut c = StratumClient::connect(proxy.stratum_addr).await.unwrap();
    c.set_timeout(WAIT);
    let (en1, en2_size, _) = handshake(&mut c, "lane.rig").await;
    // Jobs until one is written by the fan-out (the session may still be in the turn that
    // sent the first job when the next comes; then it sends that one itself).
    let deadline = Instant::now() + WAIT;
    let job = loop {
        assert!(Instant::now() < deadline, "the fan-out wrote no job");
        let before = lanes.written();
        pool.new_job(false);
        let job = job_of(&c.wait_notification("mining.notify").await.unwrap());
        // The fan-out counts a line once it is written, so just after the miner has it.
        if wait_until(Duration::from_millis(500), || lanes.written() > before).await {
            break job;
        }
    };
    pool.set_difficulty("0.00001".parse().unwrap());
    let d = c.wait_notification("mining.set_difficulty").await.unwrap();
    assert_eq!(d.params, json!([0.00001]));
    // A share of that job at the old difficulty, not the new.
    let easy = share_between(&job, &en1, en2_size, "0.00000001", "0.00001");
    let r = c
        .request("mining.submit", submit_params("lane.rig", &easy))
        .await
        .unwrap();
    assert!(r.is_true(), "{r:?}");
    // The next job goes out after the raise: the same kind of share is too easy for it.
    let before = lanes.written();
    pool.new_job(false);
    let next = job_of(&c.wait_notification("mining.notify").await.unwrap());
    let easy = share_between(&next, &en1, en2_size, "0.00000001", "0.00001");
    let r = c
        .request("mining.submit", submit_params("lane.rig", &easy))
        .await
        .unwrap();
    assert_eq!(r.error_code(), Some(23), "{r:?}");
    assert!(
        wait_until(WAIT, || lanes.written() > before).await,
        "the job after the raise went out through the fan-out too"
    );
    drop(c);
    proxy.drain(Duration::from_secs(2)).await;
}

/// A share of `job` that meets difficulty `easy` and not `hard`.
fn share_between(
    job: &loka_stratum::Job,
    en1: &[u8],
    en2_size: usize,
    easy: &str,
    hard: &str,
) -> loka_stratum::message::Submit {
    let mut nonce = 0;
    loop {
        let s = find_share(job, en1, en2_size, hard, false, nonce);
        if find_share(job, en1, en2_size, easy, true, s.nonce).nonce == s.nonce {
            return s;
        }
        nonce = s.nonce + 1;
    }
}

/// Whether `cond` holds within `limit`, looking every millisecond.
async fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}
