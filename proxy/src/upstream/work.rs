//! What an upstream session publishes to the miners behind it: the current jobs, already
//! rewritten for miners and serialised once, as one immutable `Arc<Work>` per change.

use bytes::Bytes;
use loka_stratum::share::{MAX_EXTRANONCE, ShareKey, ShareKeySet};
use loka_stratum::{Difficulty, Job, Target};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static JOB_SEQ: AtomicU64 = AtomicU64::new(1);

/// How miners' extranonces relate to the upstream session's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtranonceLayout {
    /// Aggregate: the upstream extranonce1 is folded into the miners' coinb1 and each miner's
    /// extranonce1 is its own prefix. Passthrough: miners get the upstream extranonce1.
    pub fold: bool,
    pub upstream_extranonce1: Vec<u8>,
    pub upstream_extranonce2_size: usize,
    /// Bytes of upstream extranonce2 given to each miner as its extranonce1 (aggregate).
    pub prefix_size: usize,
    /// The extranonce2 size miners are told.
    pub miner_extranonce2_size: usize,
    /// Zero bytes between the miner's extranonce2 and coinb2 (upstream space left unused).
    pub padding: usize,
}

/// Why a pool's extranonce cannot be split for miners.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "pool gives extranonce2_size {size}; {prefix} prefix bytes leave {room}, below the minimum {min}"
    )]
    TooSmall {
        size: usize,
        prefix: usize,
        room: usize,
        min: usize,
    },
    #[error("pool extranonce2_size {0} is larger than {max}", max = MAX_EXTRANONCE)]
    Extranonce2TooLarge(usize),
    #[error(
        "pool extranonce1 of {0} bytes is longer than the {max} a passthrough miner can be given",
        max = MAX_EXTRANONCE
    )]
    Extranonce1TooLong(usize),
}

impl ExtranonceLayout {
    /// Work out the split, or why this upstream session cannot serve miners.
    pub fn new(
        fold: bool,
        upstream_extranonce1: Vec<u8>,
        upstream_extranonce2_size: usize,
        prefix_size: usize,
        min_miner: usize,
        max_miner: usize,
    ) -> Result<Self, LayoutError> {
        let prefix_size = if fold { prefix_size } else { 0 };
        let room = upstream_extranonce2_size.saturating_sub(prefix_size);
        if room < min_miner {
            return Err(LayoutError::TooSmall {
                size: upstream_extranonce2_size,
                prefix: prefix_size,
                room,
                min: min_miner,
            });
        }
        let miner = if fold { room.min(max_miner) } else { room };
        if miner > MAX_EXTRANONCE {
            return Err(LayoutError::Extranonce2TooLarge(upstream_extranonce2_size));
        }
        // Passthrough miners are handed the pool's extranonce1 as it is; aggregate folds it
        // into the coinbase, whatever its length.
        if !fold && upstream_extranonce1.len() > MAX_EXTRANONCE {
            return Err(LayoutError::Extranonce1TooLong(upstream_extranonce1.len()));
        }
        Ok(Self {
            fold,
            upstream_extranonce1,
            upstream_extranonce2_size,
            prefix_size,
            miner_extranonce2_size: miner,
            padding: room - miner,
        })
    }

    /// The extranonce1 a miner with this prefix is told.
    pub fn miner_extranonce1(&self, prefix: &[u8]) -> Vec<u8> {
        if self.fold {
            prefix.to_vec()
        } else {
            self.upstream_extranonce1.clone()
        }
    }

    /// The upstream extranonce2 for a miner's share: prefix ‖ miner extranonce2 ‖ zero padding.
    pub fn upstream_extranonce2(&self, prefix: &[u8], miner_en2: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.upstream_extranonce2_size);
        if self.fold {
            v.extend_from_slice(prefix);
        }
        v.extend_from_slice(miner_en2);
        v.resize(v.len() + self.padding, 0);
        v
    }
}

/// A job as miners see it, with its upstream identity and duplicate set.
pub struct LocalJob {
    /// Monotonic across all upstream sessions; also the proxy's job id (hex).
    pub seq: u64,
    pub id: String,
    pub upstream_id: String,
    pub generation: u64,
    /// The miners' view (coinb1/coinb2 rewritten when folding).
    pub job: Job,
    /// Upstream target in force when the pool sent this job.
    pub upstream_target: Target,
    pub upstream_difficulty: Difficulty,
    pub network_target: Target,
    /// `mining.notify` for miners, serialised once; `clean` is this job's own flag.
    pub notify: Bytes,
    /// The same with `clean_jobs = true`, for miners whose previous job is no longer valid.
    pub notify_clean: Bytes,
    pub received_at: Instant,
    seen: Mutex<ShareKeySet>,
}

impl std::fmt::Debug for LocalJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJob")
            .field("id", &self.id)
            .field("upstream_id", &self.upstream_id)
            .finish()
    }
}

impl LocalJob {
    pub fn new(
        upstream: &Job,
        layout: &ExtranonceLayout,
        generation: u64,
        upstream_difficulty: Difficulty,
        clean: bool,
    ) -> LocalJob {
        let seq = JOB_SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{seq:x}");
        let (coinb1, coinb2) = if layout.fold {
            let mut c1 = upstream.coinb1.clone();
            c1.extend_from_slice(&layout.upstream_extranonce1);
            let mut c2 = vec![0u8; layout.padding];
            c2.extend_from_slice(&upstream.coinb2);
            (c1, c2)
        } else {
            (upstream.coinb1.clone(), upstream.coinb2.clone())
        };
        let line = |clean| {
            let params = upstream.notify_params(&id, &coinb1, &coinb2, clean);
            Bytes::from(loka_stratum::message::method_line(
                "null",
                "mining.notify",
                &params,
            ))
        };
        let notify = line(clean);
        let notify_clean = if clean { notify.clone() } else { line(true) };
        let job = Job::new(
            id.clone(),
            &upstream.prevhash_hex,
            coinb1,
            coinb2,
            upstream.merkle_branch.clone(),
            upstream.version,
            upstream.nbits,
            upstream.ntime,
            clean,
        )
        .expect("prevhash already validated");
        LocalJob {
            seq,
            id,
            upstream_id: upstream.job_id.clone(),
            generation,
            network_target: upstream.network_target(),
            job,
            upstream_target: upstream_difficulty.target(),
            upstream_difficulty,
            notify,
            notify_clean,
            received_at: Instant::now(),
            seen: Mutex::new(ShareKeySet::default()),
        }
    }

    /// Record a share key; `false` if it was already seen (a duplicate).
    pub fn first_sighting(&self, key: ShareKey) -> bool {
        self.seen.lock().insert(key)
    }
}

/// A pool job for tests: fixed coinbase parts, one merkle branch, the given id, ntime and
/// clean flag.
#[cfg(test)]
pub(crate) fn sample_job(id: &str, ntime: u32, clean: bool) -> Job {
    Job::new(
        id.into(),
        &"11".repeat(32),
        vec![1; 40],
        vec![2; 30],
        vec![[3; 32]],
        0x2000_0000,
        0x1d00ffff,
        ntime,
        clean,
    )
    .expect("a valid job")
}

/// Everything miners need from one upstream session at one moment.
#[derive(Debug)]
pub struct Work {
    /// Changes when the upstream session (or its extranonce) changes.
    pub generation: u64,
    pub pool: Arc<str>,
    pub layout: ExtranonceLayout,
    /// Upstream-negotiated BIP310 mask (0 = no version rolling upstream).
    pub version_mask: u32,
    /// The pool's current difficulty (what passthrough miners are given).
    pub upstream_difficulty: Difficulty,
    /// Jobs shares are accepted for, oldest first; the last is current.
    pub jobs: Vec<Arc<LocalJob>>,
}

impl Work {
    pub fn current(&self) -> Option<&Arc<LocalJob>> {
        self.jobs.last()
    }

    pub fn find(&self, id: &str) -> Option<&Arc<LocalJob>> {
        self.jobs.iter().rev().find(|j| j.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn layouts() {
        let l = ExtranonceLayout::new(true, vec![1, 2, 3, 4], 8, 2, 2, 8).unwrap();
        assert_eq!((l.miner_extranonce2_size, l.padding), (6, 0));
        assert_eq!(l.miner_extranonce1(&[9, 9]), vec![9, 9]);
        assert_eq!(
            l.upstream_extranonce2(&[9, 9], &[1, 2, 3, 4, 5, 6]),
            vec![9, 9, 1, 2, 3, 4, 5, 6]
        );
        let l = ExtranonceLayout::new(true, vec![1], 12, 2, 2, 8).unwrap();
        assert_eq!((l.miner_extranonce2_size, l.padding), (8, 2));
        assert_eq!(l.upstream_extranonce2(&[9, 9], &[7; 8]).len(), 12);
        assert!(ExtranonceLayout::new(true, vec![1], 3, 2, 2, 8).is_err());
        let l = ExtranonceLayout::new(false, vec![1, 2], 4, 2, 2, 8).unwrap();
        assert_eq!(
            (l.miner_extranonce2_size, l.padding, l.prefix_size),
            (4, 0, 0)
        );
        assert_eq!(l.miner_extranonce1(&[]), vec![1, 2]);
        // A 17-byte extranonce1: folded in aggregate, refused by name in passthrough.
        assert!(ExtranonceLayout::new(true, vec![1; 17], 8, 2, 2, 8).is_ok());
        let e = ExtranonceLayout::new(false, vec![1; 17], 8, 2, 2, 8).unwrap_err();
        assert_eq!(e, LayoutError::Extranonce1TooLong(17));
        assert!(e.to_string().contains("extranonce1 of 17 bytes"), "{e}");
        assert!(ExtranonceLayout::new(false, vec![1; 16], 8, 2, 2, 8).is_ok());
    }

    proptest::proptest! {
        /// Across pool switches (a new upstream extranonce1 and extranonce2 size, the
        /// miners keeping their prefixes), distinct miners' shares never make the same
        /// upstream extranonce2, and each is exactly the size the pool set.
        #[test]
        fn miners_never_share_an_upstream_extranonce2_across_pool_switches(
            prefixes in proptest::collection::hash_set(proptest::collection::vec(proptest::prelude::any::<u8>(), 2), 2..40),
            pools in proptest::collection::vec((proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12), 4usize..17), 1..6),
            en2 in proptest::collection::vec(proptest::prelude::any::<u8>(), 16),
        ) {
            for (en1, upstream_size) in pools {
                let Ok(layout) = ExtranonceLayout::new(true, en1, upstream_size, 2, 2, 8) else {
                    // Too small to split: refused, never served.
                    proptest::prop_assert!(upstream_size < 4);
                    continue;
                };
                let miner_en2 = &en2[..layout.miner_extranonce2_size];
                let mut seen = HashSet::new();
                for p in &prefixes {
                    let up = layout.upstream_extranonce2(p, miner_en2);
                    proptest::prop_assert_eq!(up.len(), upstream_size);
                    proptest::prop_assert!(seen.insert(up), "collision for prefix {:?}", p);
                }
            }
        }
    }

    #[test]
    fn folded_job_hashes_like_the_upstream_job() {
        // The header a miner builds from the folded job equals the one the pool builds from
        // its own job with the proxy's upstream extranonce2.
        let upstream = sample_job("j", 100, true);
        let layout = ExtranonceLayout::new(true, vec![0xaa, 0xbb, 0xcc, 0xdd], 8, 2, 2, 4).unwrap();
        assert_eq!(layout.padding, 2);
        let local = LocalJob::new(&upstream, &layout, 1, Difficulty::ONE, true);
        let prefix = [0x01, 0x02];
        let miner_en2 = [5, 6, 7, 8];
        let miner_root = local
            .job
            .merkle_root(&[&layout.miner_extranonce1(&prefix), &miner_en2]);
        let pool_root = upstream.merkle_root(&[
            &layout.upstream_extranonce1,
            &layout.upstream_extranonce2(&prefix, &miner_en2),
        ]);
        assert_eq!(miner_root, pool_root);
        let notify: serde_json::Value = serde_json::from_slice(&local.notify).unwrap();
        assert_eq!(notify["params"][0], local.id.as_str());
        assert_eq!(notify["params"][8], true);
        assert_eq!(notify["id"], serde_json::Value::Null);
    }
}
