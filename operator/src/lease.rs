//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas are safe: only
//! the holder reconciles; the other waits and takes over when the Lease expires.
//!
//! [`decide`] is pure (the clock is an argument); [`LeaderElector`] is the IO around it. Writes
//! carry the Lease's `resourceVersion`, so two candidates racing for an expired Lease cannot
//! both win (the loser gets 409 Conflict and reads again).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a candidate should do with the Lease as it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Someone else holds a live Lease.
    Wait,
}

/// Decide from the Lease (if any), our identity and the time.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_none() {
            Decision::Create
        } else {
            Decision::TakeOver
        };
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            match renewed {
                Some(t) if t + SignedDuration::from_secs(secs) > now => Decision::Wait,
                _ => Decision::TakeOver,
            }
        }
    }
}

/// The Lease spec a candidate writes for `decision` (`None` for [`Decision::Wait`]).
pub fn next_spec(
    old: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let secs = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    match decision {
        Decision::Wait => None,
        Decision::Renew => {
            let mut s = old.cloned().unwrap_or_default();
            s.renew_time = Some(MicroTime(now));
            s.lease_duration_seconds = Some(secs);
            Some(s)
        }
        Decision::Create | Decision::TakeOver => Some(LeaseSpec {
            holder_identity: Some(me.into()),
            lease_duration_seconds: Some(secs),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                old.and_then(|s| s.lease_transitions).unwrap_or(0)
                    + i32::from(*decision == Decision::TakeOver),
            ),
            ..Default::default()
        }),
    }
}

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews (well below `duration`).
    pub renew_every: Duration,
}

/// Campaigns for and holds the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// One round: read the Lease, act on [`decide`]. `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let lease = self.api.get_opt(&self.cfg.name).await?;
        let decision = decide(lease.as_ref(), &self.cfg.identity, now);
        let Some(spec) = next_spec(
            lease.as_ref().and_then(|l| l.spec.as_ref()),
            &decision,
            &self.cfg.identity,
            self.cfg.duration,
            now,
        ) else {
            return Ok(false);
        };
        let result = match lease {
            None => {
                let new = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &new).await
            }
            Some(mut l) => {
                // `metadata.resourceVersion` is kept: a concurrent writer makes this a 409.
                l.spec = Some(spec);
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &l)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until we hold the Lease (`true`) or `shutdown` fires (`false`).
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.cfg.renew_every) => {}
            }
        }
    }

    /// Renew until `shutdown` fires (then release the Lease for a fast hand-over) or until the
    /// Lease is lost (renewal failing for a whole lease duration, or someone else holding it);
    /// on loss it cancels `lost` so the controllers stop.
    pub async fn hold(&self, shutdown: &CancellationToken, lost: &CancellationToken) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return;
                }
                _ = tokio::time::sleep(self.cfg.renew_every) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leader Lease taken by another replica");
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing leader Lease");
                    if last_ok.elapsed() >= self.cfg.duration {
                        tracing::error!("leader Lease expired while renewal failed");
                        lost.cancel();
                        return;
                    }
                }
            }
        }
    }

    /// Give the Lease up (if still ours) so another replica takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut l)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let ours = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if ours {
            if let Some(s) = l.spec.as_mut() {
                s.holder_identity = None;
                s.lease_duration_seconds = Some(1);
            }
            if let Err(e) = self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &l)
                .await
            {
                tracing::warn!(error = %e, "releasing leader Lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                lease_transitions: Some(2),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", at(100)), Decision::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"), 90)), "a", at(100)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 90)), "a", at(100)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 80)), "a", at(100)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(None, 99)), "a", at(100)),
            Decision::TakeOver
        );
    }

    #[test]
    fn take_over_counts_a_transition() {
        let old = lease(Some("b"), 10).spec.unwrap();
        let s = next_spec(
            Some(&old),
            &Decision::TakeOver,
            "a",
            Duration::from_secs(15),
            at(100),
        )
        .unwrap();
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_transitions, Some(3));
        assert_eq!(s.acquire_time, Some(MicroTime(at(100))));
        let r = next_spec(
            Some(&s),
            &Decision::Renew,
            "a",
            Duration::from_secs(15),
            at(105),
        )
        .unwrap();
        assert_eq!(r.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(r.renew_time, Some(MicroTime(at(105))));
        assert_eq!(r.lease_transitions, Some(3));
        assert!(next_spec(None, &Decision::Wait, "a", Duration::from_secs(15), at(1)).is_none());
    }
}
