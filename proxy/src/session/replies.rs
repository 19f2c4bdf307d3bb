//! A judged share's one reply and one record: "accepted" at once, after the pool's verdict
//! (passthrough), or once the writer says the record is stored (durable acknowledgement);
//! and settling what is still open when the session closes.

use crate::context::{Emit, handed_over};
use crate::events::{DurableAck, Event, ShareEvent};
use crate::stats::WorkerStats;
use crate::upstream::Verdict;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use loka_stratum::StratumError;
use loka_stratum::message::{error_line, result_line};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::Session;

/// How much longer than `upstream.response_timeout` a session waits for a verdict the
/// upstream task should have settled itself (it checks once a second).
pub(super) const VERDICT_MARGIN: Duration = Duration::from_secs(3);

/// A submit forwarded in passthrough mode, waiting for the pool's verdict.
pub(super) struct AwaitingVerdict {
    pub(super) request_id: String,
    pub(super) event: Option<ShareEvent>,
    pub(super) worker: Arc<WorkerStats>,
    pub(super) difficulty: f64,
}

/// A forwarded share and what became of it. The channel closing unanswered (the upstream
/// connection or task ended first) reads as [`Verdict::Unanswered`], and so does no verdict
/// within `wait` (the upstream task's own response timeout, with a margin): every forwarded
/// share is settled, and in bounded time. The outcome is boxed: the session's select holds
/// its largest branch output for as long as any branch's handler runs.
pub(super) type VerdictFuture = futures::future::BoxFuture<'static, Box<Settled>>;

/// A forwarded share with the pool's verdict on it.
pub(super) type Settled = (AwaitingVerdict, Verdict);

pub(super) fn await_verdict(
    a: AwaitingVerdict,
    rx: tokio::sync::oneshot::Receiver<Verdict>,
    wait: Duration,
) -> VerdictFuture {
    Box::pin(async move {
        let v = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) | Err(_) => Verdict::Unanswered,
        };
        Box::new((a, v))
    })
}

/// A valid share whose reply waits until the writer says it is durable.
pub(super) struct Unacked {
    pub(super) request_id: String,
    pub(super) stored: tokio::sync::oneshot::Receiver<()>,
    pub(super) deadline: Instant,
    pub(super) worker: Arc<WorkerStats>,
    pub(super) difficulty: f64,
}

impl Session {
    /// Closing with passthrough shares still at the pool: each still gets its one record
    /// (and, if the miner can hear it, its reply): the pool's verdict if it comes within the
    /// response timeout, `Unanswered` otherwise.
    pub(super) async fn settle_verdicts(&mut self, mut verdicts: FuturesUnordered<VerdictFuture>) {
        while let Some(settled) = verdicts.next().await {
            self.on_verdict(settled).await;
        }
    }

    /// Closing with replies still waiting on storage: each is answered once stored or at its
    /// deadline (and the answer written if the miner can still hear it).
    pub(super) async fn settle_unacked(&mut self, unacked: VecDeque<Unacked>) {
        for mut u in unacked {
            let ok = matches!(
                tokio::time::timeout_at(u.deadline.into(), &mut u.stored).await,
                Ok(Ok(()))
            );
            self.acknowledged(u, ok);
        }
    }

    /// A share that is good (valid, and in passthrough accepted by the pool): "accepted" now,
    /// or in durable mode once the writer says its record is stored ([`Self::acknowledged`]).
    /// Returns the record's hand-over (see [`Shared::emit_share`](crate::context::Shared::emit_share)).
    pub(super) fn accept(
        &mut self,
        request_id: &str,
        event: Option<ShareEvent>,
        worker: Arc<WorkerStats>,
        difficulty: f64,
    ) -> Emit {
        match event {
            Some(mut event) if let Some(wait) = self.durable => {
                let (ack, stored) = DurableAck::new();
                event.durable = Some(ack);
                let emitted = self.shared.emit_share(Event::Share(event));
                self.unacked.push_back(Unacked {
                    request_id: request_id.to_string(),
                    stored,
                    deadline: Instant::now() + wait,
                    worker,
                    difficulty,
                });
                emitted
            }
            event => {
                self.credit(request_id, &worker, difficulty);
                match event {
                    Some(event) => self.shared.emit_share(Event::Share(event)),
                    None => handed_over(),
                }
            }
        }
    }

    /// Count an accepted share and answer "accepted".
    pub(super) fn credit(&mut self, request_id: &str, worker: &WorkerStats, difficulty: f64) {
        let stats = &self.shared.stats;
        stats.shares_accepted.fetch_add(1, Relaxed);
        stats.share_difficulty.observe(difficulty);
        worker.add_accepted(difficulty);
        self.out.extend(result_line(request_id, "true"));
    }

    /// Durable mode: the writer has answered for a valid share (or its deadline passed).
    /// Stored: "accepted". Not stored: the miner hears so (code 20) rather than a promise the
    /// records cannot keep.
    pub(super) fn acknowledged(&mut self, u: Unacked, stored: bool) {
        if stored {
            self.credit(&u.request_id, &u.worker, u.difficulty);
            return;
        }
        let stats = &self.shared.stats;
        tracing::error!(
            conn = self.id,
            "valid share could not be stored; answered with an error"
        );
        stats.shares_unstored.fetch_add(1, Relaxed);
        stats.rejected(loka_stratum::error::ErrorCode::Other);
        u.worker.rejected.fetch_add(1, Relaxed);
        self.out.extend(error_line(
            &u.request_id,
            "false",
            &StratumError::other("share could not be stored"),
        ));
    }

    /// Passthrough: the pool's verdict on a forwarded share becomes the miner's one reply
    /// and the share's one record. A pool's rejection is relayed as the pool gave it
    /// (recorded as `upstream_rejected`); a share whose job belonged to an earlier pool
    /// session is stale (21, `job_not_found`); a share the pool never answered gets 20
    /// "pool did not answer the share" (`upstream_unanswered`): the proxy cannot promise
    /// credit the pool may not have given.
    pub(super) fn on_verdict(&mut self, settled: Box<Settled>) -> Emit {
        let (a, v) = *settled;
        let (err, reason) = match v {
            Verdict::Answered(Ok(())) => {
                return self.accept(&a.request_id, a.event, a.worker, a.difficulty);
            }
            Verdict::Answered(Err(e)) => (e, "upstream_rejected"),
            Verdict::NotSent(e) => {
                let reason = e.code.reason();
                (e, reason)
            }
            Verdict::Unanswered => (
                StratumError::other("pool did not answer the share"),
                "upstream_unanswered",
            ),
        };
        self.shared.stats.rejected(err.code);
        a.worker.rejected.fetch_add(1, Relaxed);
        self.out.extend(error_line(&a.request_id, "false", &err));
        match a.event {
            Some(mut ev) => {
                ev.accepted = false;
                ev.reject_reason = Some(reason);
                self.shared.emit_share(Event::Share(ev))
            }
            None => handed_over(),
        }
    }
}
