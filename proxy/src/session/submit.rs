//! Judging a miner's `mining.submit`: the job, the hash, the difficulty, duplicates; then
//! forwarding what meets the pool's target and handing the verdict to [`super::replies`].

use crate::context::{Emit, handed_over};
use crate::events::{Event, ShareEvent};
use crate::stats::WorkerStats;
use crate::upstream::Submission;
use crate::upstream::work::{LocalJob, Work};
use loka_config::Mode;
use loka_store::compact_str::{CompactString, format_compact};
use loka_stratum::message::{Submit, error_line};
use loka_stratum::share::{HashedShare, ShareKey, ShareRules, hash_share};
use loka_stratum::target::{hash_difficulty, hash_to_display_hex};
use loka_stratum::{Difficulty, StratumError};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc::error::TrySendError;

use super::Session;
use super::replies::{AwaitingVerdict, VERDICT_MARGIN, await_verdict};

/// A share that is valid and new: its job, hash, and the difficulty it met.
type Judged = (Arc<LocalJob>, HashedShare, Difficulty);
/// Why a share is refused, with its job when one was found.
type Refused = (StratumError, Option<Arc<LocalJob>>);

impl Session {
    /// Judge, reply, forward and record a submit without waiting: what may have to wait (a
    /// full storage queue or pool connection: backpressure, never a drop) is the returned
    /// future, which the caller awaits before reading the miner's next line. So the
    /// session's future holds no submit state at all.
    pub(super) fn on_submit(&mut self, id: &str, submit: Submit) -> Emit {
        let stats = self.shared.stats.clone();
        stats.shares_submitted.fetch_add(1, Relaxed);
        if !self.subscribed {
            stats.rejected(loka_stratum::error::ErrorCode::NotSubscribed);
            self.out
                .extend(error_line(id, "false", &StratumError::not_subscribed()));
            return handed_over();
        }
        let Some(worker) = self.workers.iter().find(|w| *w.name == *submit.worker) else {
            stats.rejected(loka_stratum::error::ErrorCode::Unauthorized);
            self.out
                .extend(error_line(id, "false", &StratumError::unauthorized()));
            return handed_over();
        };
        let worker_name = worker.name.clone();
        let worker_stats = worker.stats.clone();
        worker_stats.submitted.fetch_add(1, Relaxed);
        worker_stats.touch();
        let work = self.upstream.as_ref().and_then(|u| u.work.borrow().clone());
        let pool: Arc<str> = work
            .as_ref()
            .map_or_else(|| Arc::from(""), |w| w.pool.clone());
        let (job, share, difficulty) = match self.judge(&submit, work.as_deref()) {
            Ok(judged) => judged,
            Err((err, job)) => {
                return self.reject(
                    id,
                    &err,
                    &worker_stats,
                    &worker_name,
                    &pool,
                    &submit,
                    job.as_deref(),
                );
            }
        };
        let block = share.meets(&job.network_target);
        let forward = block || share.meets(&job.upstream_target);
        let event = self.shared.events_enabled().then(|| ShareEvent {
            // The header's version, whatever bits the miner rolled.
            version: submit
                .version_bits
                .map(|_| format_compact!("{:08x}", share.version)),
            hash_difficulty: hash_difficulty(&share.hash),
            block_candidate: block,
            block_hash: block.then(|| hash_to_display_hex(&share.hash)),
            forwarded: forward,
            ..self.share_event(&worker_name, &pool, &submit, difficulty, None)
        });
        if block {
            stats.block_candidates.fetch_add(1, Relaxed);
            tracing::warn!(conn = self.id, worker = %worker_name, pool = %pool, hash = %hash_to_display_hex(&share.hash), "BLOCK CANDIDATE found");
        }
        // Passthrough relays the pool's verdict on the shares it forwards.
        let passthrough_wait = forward && self.shared.mode == Mode::Passthrough;
        let mut verdict_rx = None;
        // A submission the pool connection had no room for yet.
        let mut blocked = None;
        if forward && let Some(upstream) = &self.upstream {
            let layout_en2 = match &work {
                Some(w) => w
                    .layout
                    .upstream_extranonce2(&self.prefix, &submit.extranonce2),
                None => submit.extranonce2.clone(),
            };
            let sub = Submission {
                job: job.clone(),
                extranonce2: layout_en2,
                ntime: submit.ntime,
                nonce: submit.nonce,
                version: submit.version_bits.map(|_| share.version),
                worker: worker_name.clone(),
                verdict: passthrough_wait.then(|| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    verdict_rx = Some(rx);
                    tx
                }),
            };
            // Backpressure from the pool connection reaches the miner (the returned future
            // waits for room before the next line is read), never a drop. A send that fails
            // (the upstream task is gone) drops the submission, and with it the verdict's
            // sender: the share is settled as unanswered.
            match upstream.submit.try_send(sub) {
                Ok(()) => {
                    stats.shares_forwarded.fetch_add(1, Relaxed);
                }
                Err(TrySendError::Full(sub)) => blocked = Some((upstream.submit.clone(), sub)),
                Err(TrySendError::Closed(_)) => {}
            }
        }
        let recorded = self.settle(id, verdict_rx, event, worker_stats, difficulty);
        match blocked {
            None => recorded,
            Some((tx, sub)) => Emit::Right(Box::pin(async move {
                if tx.send(sub).await.is_ok() {
                    stats.shares_forwarded.fetch_add(1, Relaxed);
                }
                recorded.await;
            })),
        }
    }

    /// A judged share's verdict: passthrough waits for the pool's on a forwarded share,
    /// otherwise it is accepted now (and vardiff counts it).
    fn settle(
        &mut self,
        id: &str,
        verdict_rx: Option<tokio::sync::oneshot::Receiver<crate::upstream::Verdict>>,
        mut event: Option<ShareEvent>,
        worker_stats: Arc<WorkerStats>,
        difficulty: Difficulty,
    ) -> Emit {
        if let Some(rx) = verdict_rx {
            let wait = self.shared.config().upstream.response_timeout + VERDICT_MARGIN;
            let a = AwaitingVerdict {
                request_id: id.to_string(),
                event: event.take(),
                worker: worker_stats,
                difficulty: difficulty.to_f64(),
            };
            self.awaiting.push(await_verdict(a, rx, wait));
            return handed_over();
        }
        let recorded = self.accept(id, event, worker_stats, difficulty.to_f64());
        if let Some(v) = self.vardiff.as_mut() {
            if let Some(d) = v.on_share(Instant::now()) {
                self.change_difficulty(d);
            }
            self.update_wants();
        }
        recorded
    }

    /// A submit's verdict: its job, its hash and the difficulty it met, or why it is
    /// refused (with its job, when known, for the record's difficulty). In order: the job
    /// (gone: 21 stale, or 21 job not found with no work at all), the header (ntime,
    /// extranonce2 size, version bits), the difficulty the job was sent with, a duplicate.
    fn judge(&self, submit: &Submit, work: Option<&Work>) -> Result<Judged, Refused> {
        let Some(job) = work.and_then(|w| w.find(&submit.job_id).cloned()) else {
            let err = if work.is_some() {
                StratumError::job_not_found()
            } else {
                StratumError::stale()
            };
            return Err((err, None));
        };
        // Bits are judged by the mask this miner was given and by the pool's in force now:
        // the pool may have narrowed it since the miner heard (`mining.set_version_mask`
        // crosses shares on the wire), and a header rolled outside it is worth nothing there.
        let pool_mask = work.map_or(0, |w| w.version_mask);
        let rules = ShareRules {
            version_mask: self.version_mask & pool_mask,
            ntime_window: self.shared.config().mining.ntime_window_secs,
            extranonce2_size: self.extranonce2_size,
        };
        let share = match hash_share(&job.job, &self.extranonce1, submit, &rules) {
            Ok(s) => s,
            Err(e) => return Err((e, Some(job))),
        };
        let difficulty = self.difficulty_for(&job);
        let refused = if !share.meets(&difficulty.target()) {
            StratumError::low_difficulty()
        } else if job.first_sighting(ShareKey::of(&share)) {
            return Ok((job, share, difficulty));
        } else {
            StratumError::duplicate()
        };
        Err((refused, Some(job)))
    }

    /// The event for a judged share as submitted; an acceptance adds what the hash showed.
    pub(super) fn share_event(
        &self,
        worker: &Arc<str>,
        pool: &Arc<str>,
        submit: &Submit,
        difficulty: Difficulty,
        reject: Option<&'static str>,
    ) -> ShareEvent {
        ShareEvent {
            at: SystemTime::now(),
            connection_id: self.id,
            worker: worker.clone(),
            pool: pool.clone(),
            job_id: submit.job_id.as_str().into(),
            extranonce1: hex_compact(&self.extranonce1),
            extranonce2: hex_compact(&submit.extranonce2),
            ntime: format_compact!("{:08x}", submit.ntime),
            nonce: format_compact!("{:08x}", submit.nonce),
            version: submit.version_bits.map(|v| format_compact!("{v:08x}")),
            accepted: reject.is_none(),
            reject_reason: reject,
            difficulty: difficulty.as_decimal(),
            hash_difficulty: 0.0,
            block_candidate: false,
            block_hash: None,
            forwarded: false,
            durable: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn reject(
        &mut self,
        id: &str,
        err: &StratumError,
        worker: &WorkerStats,
        worker_name: &Arc<str>,
        pool: &Arc<str>,
        submit: &Submit,
        job: Option<&LocalJob>,
    ) -> Emit {
        self.shared.stats.rejected(err.code);
        worker.rejected.fetch_add(1, Relaxed);
        self.out.extend(error_line(id, "false", err));
        if self.shared.events_enabled() {
            let difficulty = job.map_or(self.ledger.current(), |j| self.difficulty_for(j));
            let event = self.share_event(
                worker_name,
                pool,
                submit,
                difficulty,
                Some(err.code.reason()),
            );
            return self.shared.emit_share(Event::Share(event));
        }
        handed_over()
    }
}

/// Lower-case hex of `bytes` as an inline string: no heap allocation up to 12 bytes (every
/// extranonce a pool or the proxy hands out in practice).
fn hex_compact(bytes: &[u8]) -> CompactString {
    let mut buf = [0u8; 24];
    if let Some(out) = buf.get_mut(..bytes.len() * 2)
        && hex::encode_to_slice(bytes, out).is_ok()
        && let Ok(hex) = std::str::from_utf8(out)
    {
        return hex.into();
    }
    hex::encode(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::hex_compact;

    #[test]
    pub(super) fn hex_compact_is_inline_up_to_twelve_bytes_and_right_past_them() {
        let twelve: Vec<u8> = (0xf0..0xfc).collect();
        let h = hex_compact(&twelve);
        assert_eq!(h, "f0f1f2f3f4f5f6f7f8f9fafb");
        assert!(!h.is_heap_allocated());
        let sixteen: Vec<u8> = (0..16).collect();
        let h = hex_compact(&sixteen);
        assert_eq!(h, hex::encode(&sixteen));
        assert_eq!(hex_compact(&[]), "");
        assert_eq!(hex_compact(&[0x0a]), "0a");
    }
}
