//! What the miner works on: jobs from the upstream, the difficulty it is told and each
//! job is judged at (the ledger, capped at the pool's in aggregate), and the version mask.

use crate::upstream::work::{LocalJob, Work};
use loka_config::Mode;
use loka_stratum::Difficulty;
use loka_stratum::message::{method_line, set_difficulty_line};
use loka_stratum::vardiff::Vardiff;
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Close, Session};

impl Session {
    /// New work from upstream.
    pub(super) fn on_work(&mut self, work: Option<&Work>) {
        let Some(work) = work else { return };
        if work.generation != self.generation {
            let en1 = work.layout.miner_extranonce1(&self.prefix);
            let size = work.layout.miner_extranonce2_size;
            if en1 != self.extranonce1 || size != self.extranonce2_size {
                if self.extranonce_subscribed {
                    self.out.extend(method_line(
                        "null",
                        "mining.set_extranonce",
                        &json!([hex::encode(&en1), size]),
                    ));
                    self.extranonce1 = en1;
                    self.extranonce2_size = size;
                } else {
                    // The miner cannot take a new extranonce on this connection.
                    self.out
                        .extend(method_line("null", "client.reconnect", &json!([])));
                    self.close = Some(Close::Reconnect);
                    return;
                }
            }
            self.generation = work.generation;
        }
        // The pool may change its mask within a session (`mining.set_version_mask`) or
        // grant another one after a failover.
        self.negotiate_mask(work.version_mask);
        self.tell_mask();
        self.work_mask = Some(work.version_mask);
        self.follow_pool_difficulty(work.upstream_difficulty);
        self.send_work(Some(work), false);
    }

    /// Send the current job (and the difficulty first, if it changed).
    pub(super) fn send_work(&mut self, work: Option<&Work>, first: bool) {
        let Some(work) = work else { return };
        let Some(job) = work.current() else { return };
        if job.seq <= self.last_job_seq && !first {
            return;
        }
        if let Some(oldest) = work.jobs.first() {
            self.ledger.forget_before(oldest.seq);
        }
        let difficulty = self.ledger.current();
        if self.difficulty_sent != Some(difficulty) {
            self.out.extend(set_difficulty_line(&difficulty));
            self.difficulty_sent = Some(difficulty);
            for w in &self.workers {
                w.stats.set_difficulty(difficulty.to_f64());
            }
        }
        // If the last job this miner had is gone, it must drop everything it holds.
        let still_valid =
            self.last_job_seq != 0 && work.jobs.iter().any(|j| j.seq == self.last_job_seq);
        let line = if first || !still_valid {
            &job.notify_clean
        } else {
            &job.notify
        };
        self.out.extend_from_slice(line);
        self.last_job_seq = job.seq;
        self.shared.stats.jobs_distributed.fetch_add(1, Relaxed);
        if !first {
            self.notify_received_at = Some(job.received_at);
        }
    }

    /// The difficulty moved (vardiff, the pool's ceiling, the miner's wish): tell the miner
    /// now; many apply it only from the next job. Jobs already sent stay judged at the
    /// easiest difficulty in force since they were sent (the ledger).
    pub(super) fn change_difficulty(&mut self, d: Difficulty) {
        if d == self.ledger.current() {
            return;
        }
        self.ledger.set(d, self.last_job_seq);
        if self.ready() {
            self.out.extend(set_difficulty_line(&d));
            self.difficulty_sent = Some(d);
        }
        for w in &self.workers {
            w.stats.set_difficulty(d.to_f64());
        }
    }

    /// `d` under the pool's ceiling.
    pub(super) fn capped(&self, d: Difficulty) -> Difficulty {
        self.pool_difficulty.map_or(d, |p| d.min(p))
    }

    /// The pool's difficulty changed (a `set_difficulty`, a failover), told at once.
    /// Passthrough relays it. Aggregate: the pool credits each forwarded share at its own
    /// difficulty, so no miner is set above it: follows it down at once and back up (to what
    /// the miner wants).
    pub(super) fn follow_pool_difficulty(&mut self, pool: Difficulty) {
        if self.pool_difficulty == Some(pool) {
            return;
        }
        self.pool_difficulty = Some(pool);
        let d = match (self.shared.mode, self.vardiff.as_mut()) {
            (Mode::Passthrough, _) => pool,
            (Mode::Aggregate, Some(v)) => {
                v.set_ceiling(Some(pool), Instant::now());
                v.current()
            }
            (Mode::Aggregate, None) => self.capped(self.fixed),
        };
        self.change_difficulty(d);
        self.update_wants();
    }

    /// Aggregate: tell the upstream what this miner wants above the pool's difficulty (it
    /// asks the pool for the highest such want).
    pub(super) fn update_wants(&mut self) {
        if self.shared.mode != Mode::Aggregate {
            return;
        }
        let desired = self.vardiff.as_ref().map_or(self.fixed, Vardiff::desired);
        let wants = self
            .pool_difficulty
            .filter(|p| desired > *p)
            .map(|_| desired);
        if wants != self.wants
            && let Some(u) = &self.upstream
        {
            u.wants.replace(self.wants, wants);
            self.wants = wants;
        }
    }

    /// The difficulty a share for this job is judged at: the easiest in force since the job
    /// was sent (miners apply a new difficulty at once or from the next job).
    pub(super) fn difficulty_for(&self, job: &LocalJob) -> Difficulty {
        self.ledger.for_job(job.seq)
    }

    pub(super) fn negotiate_mask(&mut self, upstream_mask: u32) {
        if let Some(requested) = self.requested_mask {
            let offered = self.shared.version_mask & upstream_mask;
            self.version_mask = requested & offered;
        }
    }

    /// A miner that negotiated version rolling hears `mining.set_version_mask` whenever the
    /// mask it may roll differs from the one it was last told.
    pub(super) fn tell_mask(&mut self) {
        if self.requested_mask.is_none() || self.mask_told == Some(self.version_mask) {
            return;
        }
        self.out.extend(method_line(
            "null",
            "mining.set_version_mask",
            &json!([format!("{:08x}", self.version_mask)]),
        ));
        self.mask_told = Some(self.version_mask);
    }
}
