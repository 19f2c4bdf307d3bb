//! The difficulty a share is judged at, per job.
//!
//! A miner is told a new difficulty with `mining.set_difficulty` and many apply it only from
//! the next `mining.notify`; others apply it at once. So a share for a job may have been
//! found at the difficulty in force when the job was sent, or at any difficulty set since.
//! The ledger judges it at the easiest of those, and no easier: after two retargets a job is
//! judged at the difficulty it was sent with and those that followed, not at whatever the
//! previous one was.

use crate::target::Difficulty;
use std::collections::VecDeque;

/// Changes kept at most; beyond that the two oldest merge (their jobs are judged at the
/// easier of the two, never at a harder difficulty than they were sent with).
const MAX_CHANGES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifficultyLedger {
    current: Difficulty,
    /// `(last job seq sent before the change, difficulty in force before it)`, oldest first,
    /// with strictly increasing job seqs.
    changes: VecDeque<(u64, Difficulty)>,
}

impl DifficultyLedger {
    pub fn new(start: Difficulty) -> Self {
        Self {
            current: start,
            changes: VecDeque::new(),
        }
    }

    /// The difficulty in force now (for the jobs sent from now on).
    pub fn current(&self) -> Difficulty {
        self.current
    }

    /// A new difficulty, set when `last_job_seq` was the last job sent (0: none yet).
    pub fn set(&mut self, d: Difficulty, last_job_seq: u64) {
        if d == self.current {
            return;
        }
        let before = self.current;
        self.current = d;
        if last_job_seq == 0 {
            // No job was sent under the old difficulty.
            return;
        }
        match self.changes.back_mut() {
            // Several changes with no job between them: the jobs before are judged at the
            // easiest of them.
            Some((seq, prev)) if *seq == last_job_seq => *prev = (*prev).min(before),
            _ => self.changes.push_back((last_job_seq, before)),
        }
        if self.changes.len() > MAX_CHANGES
            && let Some((_, oldest)) = self.changes.pop_front()
            && let Some((_, next)) = self.changes.front_mut()
        {
            *next = (*next).min(oldest);
        }
    }

    /// The difficulty a share for the job with this seq is judged at: the easiest of the one
    /// in force when it was sent and every one set since.
    pub fn for_job(&self, seq: u64) -> Difficulty {
        self.changes
            .iter()
            .rev()
            .take_while(|(upto, _)| seq <= *upto)
            .fold(self.current, |d, (_, prev)| d.min(*prev))
    }

    /// Jobs older than `oldest_seq` are no longer judged (they are stale): forget what only
    /// concerned them.
    pub fn forget_before(&mut self, oldest_seq: u64) {
        while self
            .changes
            .front()
            .is_some_and(|(upto, _)| *upto < oldest_seq)
        {
            self.changes.pop_front();
        }
    }

    /// Changes remembered (bounded).
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Difficulty {
        s.parse().unwrap()
    }

    #[test]
    fn after_two_retargets_an_old_job_keeps_the_difficulty_it_was_sent_with() {
        let mut l = DifficultyLedger::new(d("1"));
        // Job 1 at 1; ramp to 4 (job 2 sent at 4), then to 16.
        l.set(d("4"), 1);
        l.set(d("16"), 2);
        assert_eq!(l.for_job(1), d("1"), "sent at 1");
        assert_eq!(l.for_job(2), d("4"), "sent at 4");
        assert_eq!(l.for_job(3), d("16"));
        // Ramping down: a job sent at 16 may be answered at the later, easier 2.
        l.set(d("2"), 3);
        assert_eq!(l.for_job(3), d("2"));
        assert_eq!(l.for_job(1), d("1"));
    }

    #[test]
    fn changes_between_two_jobs_count_at_their_easiest_and_stay_bounded() {
        let mut l = DifficultyLedger::new(d("8"));
        for (i, x) in ["2", "32", "16"].iter().enumerate() {
            l.set(d(x), 5);
            assert_eq!(l.len(), 1, "step {i}");
        }
        assert_eq!(l.for_job(5), d("2"));
        assert_eq!(l.for_job(6), d("16"));
        for seq in 6..1000u64 {
            l.set(Difficulty::from_u64(seq % 7 + 1).unwrap(), seq);
        }
        assert!(l.len() <= MAX_CHANGES);
        l.forget_before(990);
        assert!(l.len() <= 10);
    }

    #[test]
    fn no_job_sent_yet_leaves_nothing_to_remember() {
        let mut l = DifficultyLedger::new(d("1"));
        l.set(d("0.5"), 0);
        assert!(l.is_empty());
        assert_eq!(l.for_job(1), d("0.5"));
    }

    proptest! {
        /// Against a model that remembers every job's difficulty history in full.
        #[test]
        fn matches_the_full_history(steps in proptest::collection::vec((1u64..50, any::<bool>()), 1..80)) {
            let mut l = DifficultyLedger::new(Difficulty::ONE);
            // (seq, difficulties in force since it was sent)
            let mut jobs: Vec<(u64, Vec<Difficulty>)> = Vec::new();
            let mut seq = 0u64;
            let mut current = Difficulty::ONE;
            for (x, new_job) in steps {
                if new_job {
                    seq += 1;
                    jobs.push((seq, vec![current]));
                } else {
                    let next = Difficulty::from_u64(x).unwrap();
                    l.set(next, seq);
                    current = next;
                    for (_, seen) in &mut jobs {
                        seen.push(next);
                    }
                }
                for (s, seen) in &jobs {
                    let easiest = seen.iter().copied().min().unwrap();
                    prop_assert_eq!(l.for_job(*s), easiest, "job {}", s);
                }
                prop_assert_eq!(l.current(), current);
            }
        }
    }
}
