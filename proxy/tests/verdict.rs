//! The proxy's verdict on a share equals the one `loka-sim`'s pool reaches with its own,
//! separately written share maths (notify parsing, coinbase, merkle root, header, hash,
//! target), for random jobs and shares, with and without version rolling.

use loka_sim::share as sim;
use loka_stratum::message::Submit;
use loka_stratum::share::{ShareRules, hash_share};
use proptest::prelude::*;
use serde_json::{Value, json};

const WINDOW: u32 = 7200;

fn notify(
    prevhash: &[u8; 32],
    coinb1: &[u8],
    coinb2: &[u8],
    branches: &[[u8; 32]],
    version: u32,
    nbits: u32,
    ntime: u32,
) -> Value {
    json!([
        "j1",
        hex::encode(prevhash),
        hex::encode(coinb1),
        hex::encode(coinb2),
        branches.iter().map(hex::encode).collect::<Vec<_>>(),
        format!("{version:08x}"),
        format!("{nbits:08x}"),
        format!("{ntime:08x}"),
        true
    ])
}

fn mask() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(0x1fff_e000),
        Just(0x0000_e000),
        any::<u32>()
    ]
}

/// Around 2^-33 a hash meets the difficulty about half the time.
fn difficulty() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("0.00000000001"),
        Just("0.0000000001"),
        Just("0.0000000002"),
        Just("0.000000001"),
        Just("1"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]
    #[test]
    fn the_proxy_and_an_independent_pool_judge_every_share_alike(
        prevhash in any::<[u8; 32]>(),
        coinb1 in proptest::collection::vec(any::<u8>(), 0..100),
        coinb2 in proptest::collection::vec(any::<u8>(), 0..100),
        branches in proptest::collection::vec(any::<[u8; 32]>(), 0..8),
        job_version in any::<u32>(),
        nbits in any::<u32>(),
        job_ntime in 0u32..(u32::MAX - 20_000),
        extranonce1 in proptest::collection::vec(any::<u8>(), 0..16),
        extranonce2_size in 1usize..12,
        extranonce2_extra in -1i64..2,
        ntime_offset in -5i64..8000,
        nonce in any::<u32>(),
        bits in proptest::option::of(any::<u32>()),
        bits_in_mask in any::<bool>(),
        mask in mask(),
        d in difficulty(),
    ) {
        let params = notify(&prevhash, &coinb1, &coinb2, &branches, job_version, nbits, job_ntime);
        let job = loka_stratum::Job::from_notify_params(&params).unwrap();
        let pool_job = sim::Job::from_notify_params(&params).unwrap();
        let en2_len = (extranonce2_size as i64 + extranonce2_extra).max(0) as usize;
        let extranonce2: Vec<u8> = (0..en2_len).map(|i| (i as u8).wrapping_mul(37) ^ nonce as u8).collect();
        let ntime = (i64::from(job_ntime) + ntime_offset).max(0) as u32;
        let version_bits = bits.map(|b| if bits_in_mask { b & mask } else { b });
        let submit = Submit {
            worker: "w".into(),
            job_id: "j1".into(),
            extranonce2: extranonce2.clone(),
            ntime,
            nonce,
            version_bits,
        };
        let rules = ShareRules { version_mask: mask, ntime_window: WINDOW, extranonce2_size };
        let proxy = hash_share(&job, &extranonce1, &submit, &rules).map(|s| {
            let target = d.parse::<loka_stratum::Difficulty>().unwrap().target();
            (s.version, s.hash, s.meets(&target))
        });
        let en2_hex = hex::encode(&extranonce2);
        let (ntime_hex, nonce_hex) = (sim::u32_hex(ntime), sim::u32_hex(nonce));
        let bits_hex = version_bits.map(sim::u32_hex);
        let submitted = sim::Submitted {
            extranonce2: &en2_hex,
            ntime: &ntime_hex,
            nonce: &nonce_hex,
            version_bits: bits_hex.as_deref(),
        };
        let pool_rules = sim::PoolRules { extranonce2_size, version_mask: mask, ntime_window: WINDOW };
        let pool = sim::judge(&pool_job, &extranonce1, &submitted, &pool_rules, &sim::Difficulty::parse(d).unwrap())
            .map(|j| (j.version, j.hash, j.meets));
        match (&proxy, &pool) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(e), Err(sim::Refused(code, _))) => prop_assert_eq!(i64::from(e.code.code()), *code),
            _ => prop_assert!(false, "proxy {:?} vs pool {:?}", proxy, pool),
        }
    }
}
