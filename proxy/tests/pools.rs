//! Real pools differ: narrow or no version rolling, fixed or low difficulty, dropped
//! connections with shares in flight, long extranonce1s, messages for the miners. Each test
//! runs the proxy over real TCP between `MockPool` (which validates every share on its own)
//! and hashing miners or raw clients, and checks that no miner loses credit.

mod common;

use common::*;
use loka_config::Mode;
use loka_sim::miner::{MinerConfig, MinerHandle, SimMiner};
use loka_sim::pool::MockPoolConfig;

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
        pool.send_all(r#"{"id":null,"method":"mining.set_version_mask","params":["00006000"]}"#);
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
        assert_eq!(pool.stats().rejected_total(), 0, "{mode:?}");
        m.stop();
        proxy.drain(std::time::Duration::from_secs(5)).await;
    }
}
