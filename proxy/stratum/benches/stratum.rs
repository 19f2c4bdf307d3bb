//! Criterion benches for the hot path: framing + decoding a submit, and validating a share.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use loka_stratum::codec::LineDecoder;
use loka_stratum::message::{Envelope, Request, Submit};
use loka_stratum::share::{ShareKey, ShareRules, hash_share};
use loka_stratum::{Difficulty, Job};
use std::hint::black_box;

const SUBMIT: &[u8] = br#"{"id":4,"method":"mining.submit","params":["alice.rig1","1a2b","0000000000000001","504e86ed","b2957c02","00002000"]}"#;

fn job() -> Job {
    // A realistic job: 100-byte coinb1, 60-byte coinb2, 12 merkle branches (≈4k transactions).
    Job::new(
        "1a2b".into(),
        &"ab".repeat(32),
        vec![0x11; 100],
        vec![0x22; 60],
        (0..12u8).map(|i| [i; 32]).collect(),
        0x2000_0000,
        0x1703_4219,
        0x504e_86ed,
        true,
    )
    .unwrap()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let mut stream = Vec::new();
    for _ in 0..64 {
        stream.extend_from_slice(SUBMIT);
        stream.push(b'\n');
    }
    g.throughput(Throughput::Elements(64));
    g.bench_function("frame_and_decode_64_submits", |b| {
        b.iter(|| {
            let mut dec = LineDecoder::new(16 * 1024);
            let mut buf = BytesMut::from(&stream[..]);
            let mut n = 0;
            while let Some(line) = dec.decode(&mut buf).unwrap() {
                let env = Envelope::parse(&line).unwrap();
                let req = Request::decode(env.method.as_deref().unwrap(), env.params).unwrap();
                if matches!(req, Request::Submit(_)) {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

fn validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("share");
    let job = job();
    let rules = ShareRules {
        version_mask: 0x1fff_e000,
        ntime_window: 7200,
        extranonce2_size: 8,
    };
    let target = "0.001".parse::<Difficulty>().unwrap().target();
    let mut submit = Submit {
        worker: "alice.rig1".into(),
        job_id: "1a2b".into(),
        extranonce2: vec![0, 0, 0, 0, 0, 0, 0, 1],
        ntime: 0x504e_86ed,
        nonce: 0,
        version_bits: Some(0x2000),
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_share_12_branches", |b| {
        b.iter(|| {
            submit.nonce = submit.nonce.wrapping_add(1);
            let share = hash_share(&job, &[0xde, 0xad], &submit, &rules).unwrap();
            let key = ShareKey::of(&share);
            black_box((share.meets(&target), key))
        })
    });
    g.finish();
}

criterion_group!(benches, codec, validation);
criterion_main!(benches);
