//! The fuzzers' corpora (`fuzz/corpus`, inputs that reached new code) replayed on stable:
//! what the fuzzers found stays covered by the ordinary suite, crashes included (each one
//! found is kept in its corpus once fixed).

use bytes::BytesMut;
use loka_stratum::Job;
use loka_stratum::StratumError;
use loka_stratum::codec::LineDecoder;
use loka_stratum::message::{Envelope, Request, error_line, result_line};
use loka_stratum::pool::{PoolMessage, decode_pool_line};
use serde_json::value::RawValue;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn miner_lines_corpus() {
    for input in corpus("miner_lines") {
        let Some((&chunk, stream)) = input.split_first() else {
            continue;
        };
        let mut decoder = LineDecoder::new(512);
        let mut buf = BytesMut::new();
        'stream: for part in stream.chunks(usize::from(chunk).max(1)) {
            buf.extend_from_slice(part);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(line)) => {
                        assert!(line.len() <= 512);
                        let Ok(env) = Envelope::parse(&line) else {
                            continue;
                        };
                        for reply in [
                            result_line(&env.id, "true"),
                            error_line(&env.id, "null", &StratumError::other("x")),
                        ] {
                            let text = reply.strip_suffix(b"\n").unwrap();
                            let _: std::collections::BTreeMap<String, Box<RawValue>> =
                                serde_json::from_slice(text).unwrap();
                        }
                        if let Some(m) = env.method.as_deref() {
                            let _ = Request::decode(m, env.params);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break 'stream,
                }
            }
        }
    }
}

#[test]
fn pool_lines_corpus() {
    for input in corpus("pool_lines") {
        if let Ok(PoolMessage::Job(job)) = decode_pool_line(&input) {
            let params = job.notify_params(&job.job_id, &job.coinb1, &job.coinb2, job.clean_jobs);
            let again = Job::from_notify_params(&params).unwrap();
            assert_eq!(again.coinb1, job.coinb1);
            assert_eq!(again.merkle_branch, job.merkle_branch);
            assert_eq!((again.version, again.ntime), (job.version, job.ntime));
        }
    }
}
