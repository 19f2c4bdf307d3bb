//! Share validation pinned to real Bitcoin mainnet blocks: the header a Stratum job plus a
//! submit describes must hash to the block hash the chain recorded.

use super::*;
use crate::error::ErrorCode;
use crate::job::swap_words;
use crate::target::{Difficulty, hash_to_display_hex};

const GENESIS_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000";
const BLOCK_100000_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff08044c86041b020602ffffffff0100f2052a010000004341041b0e8c2567c12536aa13357b79a073dc4444acb83c4ec7a0e2f99dd7457516c5817242da796924ca4e99947d087fedf9ce467cb9f7c6287078f801df276fdf84ac00000000";

/// Display-order hex (as explorers print hashes) → internal byte order.
fn internal(display: &str) -> [u8; 32] {
    let mut b: [u8; 32] = hex::decode(display).unwrap().try_into().unwrap();
    b.reverse();
    b
}

/// The prevhash as a pool puts it in `mining.notify`.
fn stratum_prevhash(display: &str) -> String {
    hex::encode(swap_words(&internal(display)))
}

struct Case {
    coinbase: &'static str,
    /// Where to cut the coinbase into coinb1 | extranonce1 | extranonce2 | coinb2.
    cut: usize,
    en1_len: usize,
    en2_len: usize,
    branches: Vec<[u8; 32]>,
    prev: &'static str,
    version: u32,
    ntime: u32,
    nbits: u32,
    nonce: u32,
    block_hash: &'static str,
}

fn job_and_submit(c: &Case, job_version: u32, bits: Option<u32>) -> (Job, Vec<u8>, Submit) {
    let cb = hex::decode(c.coinbase).unwrap();
    let (coinb1, rest) = cb.split_at(c.cut);
    let (en1, rest) = rest.split_at(c.en1_len);
    let (en2, coinb2) = rest.split_at(c.en2_len);
    let job = Job::new(
        "1".into(),
        &stratum_prevhash(c.prev),
        coinb1.to_vec(),
        coinb2.to_vec(),
        c.branches.clone(),
        job_version,
        c.nbits,
        c.ntime,
        true,
    )
    .unwrap();
    let submit = Submit {
        worker: "w".into(),
        job_id: "1".into(),
        extranonce2: en2.to_vec(),
        ntime: c.ntime,
        nonce: c.nonce,
        version_bits: bits,
    };
    (job, en1.to_vec(), submit)
}

fn rules(c: &Case, mask: u32) -> ShareRules {
    ShareRules {
        version_mask: mask,
        ntime_window: 7200,
        extranonce2_size: c.en2_len,
    }
}

fn genesis() -> Case {
    Case {
        coinbase: GENESIS_COINBASE,
        // The scriptSig ("04ffff001d0104455468…") starts at byte 42; cut inside it.
        cut: 50,
        en1_len: 4,
        en2_len: 4,
        branches: vec![],
        prev: "0000000000000000000000000000000000000000000000000000000000000000",
        version: 1,
        ntime: 1231006505,
        nbits: 0x1d00ffff,
        nonce: 2083236893,
        block_hash: "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    }
}

fn block_100000() -> Case {
    // Transactions 2..4 of block 100000; the coinbase's merkle path is
    // [txid1, sha256d(txid2 ‖ txid3)].
    let t1 = internal("fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4");
    let t2 = internal("6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4");
    let t3 = internal("e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d");
    let mut pair = [0u8; 64];
    pair[..32].copy_from_slice(&t2);
    pair[32..].copy_from_slice(&t3);
    Case {
        coinbase: BLOCK_100000_COINBASE,
        cut: 42,
        en1_len: 4,
        en2_len: 4,
        branches: vec![t1, crate::sha256d(&pair)],
        prev: "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250",
        version: 1,
        ntime: 1293623863,
        nbits: 0x1b04864c,
        nonce: 274148111,
        block_hash: "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506",
    }
}

#[test]
fn coinbase_txids_are_what_the_chain_says() {
    assert_eq!(
        hash_to_display_hex(&crate::sha256d(&hex::decode(GENESIS_COINBASE).unwrap())),
        "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    );
    assert_eq!(
        hash_to_display_hex(&crate::sha256d(
            &hex::decode(BLOCK_100000_COINBASE).unwrap()
        )),
        "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87"
    );
}

#[test]
fn mainnet_blocks_hash_to_their_recorded_hashes() {
    for c in [genesis(), block_100000()] {
        let (job, en1, submit) = job_and_submit(&c, c.version, None);
        let share = hash_share(&job, &en1, &submit, &rules(&c, 0)).unwrap();
        assert_eq!(hash_to_display_hex(&share.hash), c.block_hash);
        // A real block meets its own network target, and difficulty 1.
        assert!(share.meets(&job.network_target()));
        assert!(share.meets(&Difficulty::ONE.target()));
    }
    // Block 100000's hash achieves difficulty 17583.0562760…: exact decimals decide the edge.
    let c = block_100000();
    let (job, en1, submit) = job_and_submit(&c, c.version, None);
    let share = hash_share(&job, &en1, &submit, &rules(&c, 0)).unwrap();
    for (d, meets) in [
        ("17583", true),
        ("17583.05", true),
        ("17583.06", false),
        ("17584", false),
    ] {
        assert_eq!(
            share.meets(&d.parse::<Difficulty>().unwrap().target()),
            meets,
            "{d}"
        );
    }
    let d = crate::target::hash_difficulty(&share.hash);
    assert!((d - 17583.056276).abs() < 1e-3, "{d}");
}

#[test]
fn merkle_root_of_block_100000() {
    let c = block_100000();
    let (job, en1, submit) = job_and_submit(&c, c.version, None);
    let root = job.merkle_root(&[&en1, &submit.extranonce2]);
    assert_eq!(
        hash_to_display_hex(&root),
        "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
    );
}

#[test]
fn version_rolling_rebuilds_the_real_version() {
    // Job version with bit 0 cleared; the miner rolls it back in through the mask.
    let c = block_100000();
    let (job, en1, submit) = job_and_submit(&c, 0, Some(1));
    let share = hash_share(&job, &en1, &submit, &rules(&c, 0x1fffe001)).unwrap();
    assert_eq!(share.version, 1);
    assert_eq!(hash_to_display_hex(&share.hash), c.block_hash);
    // Bits outside the negotiated mask are rejected with code 20.
    let err = hash_share(&job, &en1, &submit, &rules(&c, 0x1fffe000)).unwrap_err();
    assert_eq!(err.code, ErrorCode::Other);
    assert!(err.message.contains("version"));
}

#[test]
fn any_other_nonce_misses_the_block() {
    let c = genesis();
    let (job, en1, mut submit) = job_and_submit(&c, c.version, None);
    submit.nonce ^= 1;
    let share = hash_share(&job, &en1, &submit, &rules(&c, 0)).unwrap();
    assert!(!share.meets(&job.network_target()));
}

#[test]
fn ntime_window_and_extranonce2_size() {
    let c = genesis();
    let (job, en1, mut submit) = job_and_submit(&c, c.version, None);
    submit.ntime = c.ntime - 1;
    assert!(
        hash_share(&job, &en1, &submit, &rules(&c, 0))
            .unwrap_err()
            .message
            .contains("ntime")
    );
    submit.ntime = c.ntime + 7200;
    assert!(hash_share(&job, &en1, &submit, &rules(&c, 0)).is_ok());
    submit.ntime = c.ntime + 7201;
    assert!(hash_share(&job, &en1, &submit, &rules(&c, 0)).is_err());
    submit.ntime = c.ntime;
    submit.extranonce2.push(0);
    let err = hash_share(&job, &en1, &submit, &rules(&c, 0)).unwrap_err();
    assert!(err.message.contains("extranonce2"), "{err}");
}

#[test]
fn share_keys_are_equal_exactly_for_the_same_header() {
    let c = genesis();
    let (job, en1, submit) = job_and_submit(&c, c.version, None);
    let hashed = |en1: &[u8], s: &Submit, mask| hash_share(&job, en1, s, &rules(&c, mask)).unwrap();
    let key = |en1: &[u8], s: &Submit, mask| ShareKey::of(&hashed(en1, s, mask));
    let base = key(&en1, &submit, 0);
    assert_eq!(base, key(&en1, &submit, 0), "the same submit twice");
    // The genesis block's hash ends in five zero bytes (it met difficulty 1): a key taken
    // from that end would make every hard share alike.
    assert_eq!(hashed(&en1, &submit, 0).hash[27..], [0; 5]);
    let mut keys = vec![base, key(&[0, 0, 0, 0], &submit, 0)];
    let mut s = submit.clone();
    s.nonce += 1;
    keys.push(key(&en1, &s, 0));
    let mut s = submit.clone();
    s.ntime += 1;
    keys.push(key(&en1, &s, 0));
    let mut s = submit.clone();
    s.extranonce2[3] ^= 1;
    keys.push(key(&en1, &s, 0));
    let mut s = submit.clone();
    s.version_bits = Some(0x2000);
    keys.push(key(&en1, &s, 0x1fff_e000));
    let distinct: std::collections::HashSet<_> = keys.iter().map(|k| format!("{k:?}")).collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    // What every live job keeps per share.
    assert_eq!(std::mem::size_of::<ShareKey>(), 16);
    let mut seen = ShareKeySet::default();
    assert!(keys.iter().all(|k| seen.insert(*k)));
    assert!(
        !seen.insert(key(&en1, &submit, 0)),
        "a duplicate is found again"
    );
}

/// A header rolled under the wide mask a pool granted, sent after the pool narrowed its
/// mask: masking its bits down would make the pool hash another header, so it is not sent.
#[test]
fn a_header_rolled_outside_the_pools_new_mask_is_not_sendable() {
    let job = 0x2000_0000;
    let rolled = 0x2001_6000; // bits 13, 14 and 16, under 1fffe000
    assert_eq!(
        version_bits_for_pool(job, rolled, 0x1fff_e000),
        Ok(Some(0x0001_6000))
    );
    let err = version_bits_for_pool(job, rolled, 0x0000_6000).unwrap_err();
    assert_eq!(err.code, ErrorCode::Other);
    assert!(err.message.contains("00006000"), "{}", err.message);
    // Masking down is what the pool would rebuild, and it is another header.
    assert_ne!((job & !0x0000_6000) | (rolled & 0x0000_6000), rolled);
    // Inside the narrower mask it is sent as is.
    assert_eq!(
        version_bits_for_pool(job, 0x2000_4000, 0x0000_6000),
        Ok(Some(0x0000_4000))
    );
    // A pool that rolls nothing: an unrolled header goes without bits, a rolled one not at all.
    assert_eq!(version_bits_for_pool(job, job, 0), Ok(None));
    assert!(version_bits_for_pool(job, 0x2000_2000, 0).is_err());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Splitting the coinbase anywhere gives the same header: only the concatenation counts.
        #[test]
        fn cut_position_does_not_matter(cut in 0usize..150, en1_len in 0usize..8, en2_len in 1usize..9) {
            let mut c = block_100000();
            prop_assume!(cut + en1_len + en2_len <= hex::decode(c.coinbase).unwrap().len());
            c.cut = cut; c.en1_len = en1_len; c.en2_len = en2_len;
            let (job, en1, submit) = job_and_submit(&c, c.version, None);
            let share = hash_share(&job, &en1, &submit, &rules(&c, 0)).unwrap();
            prop_assert_eq!(hash_to_display_hex(&share.hash), c.block_hash);
        }

        /// A share meets a difficulty exactly when its hash difficulty is at least that.
        #[test]
        fn meets_is_monotonic(nonce in any::<u32>(), d_milli in 1u64..1_000_000) {
            let c = genesis();
            let (job, en1, mut submit) = job_and_submit(&c, c.version, None);
            submit.nonce = nonce;
            let share = hash_share(&job, &en1, &submit, &rules(&c, 0)).unwrap();
            let d = Difficulty::new(rust_decimal::Decimal::new(d_milli as i64, 9)).unwrap();
            let lower = Difficulty::new(rust_decimal::Decimal::new(d_milli as i64, 10)).unwrap();
            if share.meets(&d.target()) { prop_assert!(share.meets(&lower.target())); }
        }

        /// Bits sent to a pool rebuild, under the pool's mask, exactly the header the miner
        /// hashed; a header no bits could rebuild is refused.
        #[test]
        fn bits_for_the_pool_rebuild_the_miners_header(job in any::<u32>(), version in any::<u32>(), mask in any::<u32>()) {
            let rebuildable = (version ^ job) & !mask == 0;
            match version_bits_for_pool(job, version, mask) {
                Ok(Some(bits)) => {
                    prop_assert_eq!(bits & !mask, 0);
                    prop_assert_eq!((job & !mask) | (bits & mask), version);
                }
                Ok(None) => prop_assert!(mask == 0 && version == job),
                Err(_) => prop_assert!(!rebuildable),
            }
        }
    }
}
