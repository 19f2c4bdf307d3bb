//! Pool side: any line a pool could send. Decoding never panics, and a job it accepts
//! re-encodes to a notify that decodes to the same job.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loka_stratum::Job;
use loka_stratum::pool::{PoolMessage, decode_pool_line, parse_subscribe};

fuzz_target!(|data: &[u8]| {
    match decode_pool_line(data) {
        Ok(PoolMessage::Job(job)) => {
            let params = job.notify_params(&job.job_id, &job.coinb1, &job.coinb2, job.clean_jobs);
            let again = Job::from_notify_params(&params).expect("a re-encoded job decodes");
            assert_eq!(again.job_id, job.job_id);
            assert_eq!(again.prevhash_hex, job.prevhash_hex);
            assert_eq!(again.coinb1, job.coinb1);
            assert_eq!(again.coinb2, job.coinb2);
            assert_eq!(again.merkle_branch, job.merkle_branch);
            assert_eq!(
                (again.version, again.nbits, again.ntime, again.clean_jobs),
                (job.version, job.nbits, job.ntime, job.clean_jobs)
            );
            let _ = job.network_target();
        }
        Ok(PoolMessage::Response { result: Ok(v), .. }) => {
            // A subscribe result is read from a response like this one.
            if let Ok((_, size)) = parse_subscribe(&v) {
                assert!((1..=32).contains(&size));
            }
        }
        Ok(_) | Err(_) => {}
    }
});
