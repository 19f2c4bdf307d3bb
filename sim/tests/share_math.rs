//! Pins the header byte order against real Bitcoin blocks.

use loka_sim::share::{self, Difficulty, Job, build_header, hash_display_hex, sha256d, swap_words};
use serde_json::json;

const GENESIS_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000";
const GENESIS_HASH: &str = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
const GENESIS_MERKLE: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";

const BLOCK1_COINBASE: &str = "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0704ffff001d0104ffffffff0100f2052a0100000043410496b538e853519c726a2c91e61ec11600ae1390813a627c66fb8be7947be63c52da7589379515d4e0a604f8141781e62294721166bf621e73a82cbf2342c858eeac00000000";
const BLOCK1_HASH: &str = "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048";
const BLOCK1_MERKLE: &str = "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098";

/// Display hex (as explorers show) → the notify's prevhash hex (word-swapped internal order).
fn stratum_prevhash(display: &str) -> String {
    let mut internal: [u8; 32] = hex::decode(display).unwrap().try_into().unwrap();
    internal.reverse();
    hex::encode(swap_words(&internal))
}

/// Split a coinbase into coinb1 ‖ en1 (4 bytes) ‖ en2 (8 bytes) ‖ coinb2 at `at`.
fn notify_for(
    coinbase_hex: &str,
    at: usize,
    prev_display: &str,
    version: u32,
    ntime: u32,
) -> (Job, Vec<u8>, Vec<u8>) {
    let cb = hex::decode(coinbase_hex).unwrap();
    let (coinb1, rest) = cb.split_at(at);
    let (en1, rest) = rest.split_at(4);
    let (en2, coinb2) = rest.split_at(8);
    let params = json!([
        "genesis",
        stratum_prevhash(prev_display),
        hex::encode(coinb1),
        hex::encode(coinb2),
        [],
        format!("{version:08x}"),
        "1d00ffff",
        format!("{ntime:08x}"),
        true
    ]);
    (
        Job::from_notify_params(&params).unwrap(),
        en1.to_vec(),
        en2.to_vec(),
    )
}

#[test]
fn genesis_block_header_hash() {
    // direct header builder
    let mut root = hex::decode(GENESIS_MERKLE).unwrap();
    root.reverse();
    let header = build_header(
        1,
        &[0u8; 32],
        &root.try_into().unwrap(),
        1231006505,
        0x1d00ffff,
        2083236893,
    );
    assert_eq!(hash_display_hex(&sha256d(&header)), GENESIS_HASH);

    // the full Stratum path: coinbase split around the extranonces, notify params
    let (job, en1, en2) = notify_for(GENESIS_COINBASE, 42, &"00".repeat(32), 1, 1231006505);
    assert_eq!(
        hash_display_hex(&job.merkle_root(&en1, &en2)),
        GENESIS_MERKLE
    );
    let hash = job.share_hash(&en1, &en2, 1, 1231006505, 2083236893);
    assert_eq!(hash_display_hex(&hash), GENESIS_HASH);
    // the genesis block meets difficulty 1 and its own network target
    assert!(Difficulty::parse("1").unwrap().is_met_by(&hash));
    assert!(share::hash_to_u256(&hash) <= share::nbits_to_target(0x1d00ffff));
    assert!(!Difficulty::parse("3000").unwrap().is_met_by(&hash));
    // 0x000000000019d668… is difficulty ≈ 2536
    let d = share::hash_difficulty(&hash);
    assert!((2536.0..2537.0).contains(&d), "{d}");
}

#[test]
fn block1_pins_prevhash_word_order() {
    let (job, en1, en2) = notify_for(BLOCK1_COINBASE, 41, GENESIS_HASH, 1, 1231469665);
    assert_eq!(
        hash_display_hex(&job.merkle_root(&en1, &en2)),
        BLOCK1_MERKLE
    );
    let hash = job.share_hash(&en1, &en2, 1, 1231469665, 2573394689);
    assert_eq!(hash_display_hex(&hash), BLOCK1_HASH);
}

#[test]
fn version_rolling_and_search_agree_with_plain_hashing() {
    let (job, en1, en2) = notify_for(
        GENESIS_COINBASE,
        42,
        GENESIS_HASH,
        0x2000_0000,
        1_700_000_000,
    );
    let d = Difficulty::parse("1e-7").unwrap();
    let mask = 0x1fff_e000;
    let (found, hashes) = job.search(
        &en1,
        &en2,
        Some((0x0000_6000, mask)),
        job.ntime,
        &d.target(),
        0,
        1 << 20,
    );
    let f = found.expect("a share at 1e-7 within 2^20 hashes");
    assert!(hashes >= 1);
    assert_eq!(f.version, 0x2000_6000);
    assert_eq!(f.version_bits, Some(0x6000));
    let plain = job.share_hash(&en1, &en2, f.version, f.ntime, f.nonce);
    assert_eq!(plain, f.hash);
    assert!(d.is_met_by(&plain));
}
