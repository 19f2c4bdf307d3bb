//! A submit judged against a job: random coinbase parts, merkle branches, extranonces,
//! ntime, nonce, version bits and rules. Judging never panics; what it accepts obeys the
//! rules it was given (sizes, ntime window, the version mask), and the duplicate key holds.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use loka_stratum::message::Submit;
use loka_stratum::share::{ShareKey, ShareRules, hash_share};
use loka_stratum::target::hash_difficulty;
use loka_stratum::{Difficulty, Job};

#[derive(Debug, Arbitrary)]
struct Input {
    prevhash: [u8; 32],
    coinb1: Vec<u8>,
    coinb2: Vec<u8>,
    branches: Vec<[u8; 32]>,
    version: u32,
    nbits: u32,
    job_ntime: u32,
    extranonce1: Vec<u8>,
    extranonce2: Vec<u8>,
    ntime: u32,
    nonce: u32,
    version_bits: Option<u32>,
    mask: u32,
    window: u32,
    extranonce2_size: u8,
    difficulty_units: u64,
}

fuzz_target!(|i: Input| {
    let Ok(job) = Job::new(
        "j".into(),
        &hex(&i.prevhash),
        i.coinb1,
        i.coinb2,
        i.branches.into_iter().take(32).collect(),
        i.version,
        i.nbits,
        i.job_ntime,
        true,
    ) else {
        return;
    };
    let submit = Submit {
        worker: "w".into(),
        job_id: "j".into(),
        extranonce2: i.extranonce2,
        ntime: i.ntime,
        nonce: i.nonce,
        version_bits: i.version_bits,
    };
    let rules = ShareRules {
        version_mask: i.mask,
        ntime_window: i.window,
        extranonce2_size: usize::from(i.extranonce2_size),
    };
    let _ = job.network_target();
    let Ok(share) = hash_share(&job, &i.extranonce1, &submit, &rules) else {
        return;
    };
    assert_eq!(submit.extranonce2.len(), rules.extranonce2_size);
    assert!(submit.ntime >= job.ntime);
    assert!(u64::from(submit.ntime) <= u64::from(job.ntime) + u64::from(rules.ntime_window));
    match submit.version_bits {
        None => assert_eq!(share.version, job.version),
        Some(bits) => {
            assert_eq!(bits & !rules.version_mask, 0);
            assert_eq!(
                share.version & !rules.version_mask,
                job.version & !rules.version_mask
            );
            assert_eq!(share.version & rules.version_mask, bits);
        }
    }
    assert_eq!(share.header[..4], share.version.to_le_bytes());
    let d = hash_difficulty(&share.hash);
    assert!(d >= 0.0);
    if let Ok(diff) = Difficulty::from_u64(i.difficulty_units.max(1)) {
        let _ = share.meets(&diff.target());
    }
    // The duplicate key is the header's: equal for the same share, apart once the nonce moves.
    let again = hash_share(&job, &i.extranonce1, &submit, &rules).expect("hashed once");
    assert_eq!(ShareKey::of(&share), ShareKey::of(&again));
    let mut other = submit.clone();
    other.nonce = other.nonce.wrapping_add(1);
    if let Ok(o) = hash_share(&job, &i.extranonce1, &other, &rules) {
        assert_ne!(ShareKey::of(&share), ShareKey::of(&o));
    }
});

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
