//! Waiting on a simulator's stats: re-checked whenever they change, never by polling.

use std::fmt::Debug;
use std::time::Duration;
use tokio::sync::watch;

/// Bumped whenever a simulator's stats change; [`until`] waits on it.
pub type Changed = watch::Sender<u64>;

/// Wait until `pred` holds for `snapshot()`, looking again each time `changed` is bumped,
/// for at most `timeout`; the error names `who` and shows the last stats.
pub async fn until<S: Debug>(
    who: &str,
    changed: &Changed,
    snapshot: impl Fn() -> S,
    pred: impl Fn(&S) -> bool,
    timeout: Duration,
) -> anyhow::Result<S> {
    let mut rx = changed.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = snapshot();
        if pred(&s) {
            return Ok(s);
        }
        // Timed out, or nothing can change any more (the simulator is gone).
        if !matches!(
            tokio::time::timeout_at(deadline, rx.changed()).await,
            Ok(Ok(()))
        ) {
            let s = snapshot();
            if pred(&s) {
                return Ok(s);
            }
            anyhow::bail!("{who}: condition not met within {timeout:?}; stats: {s:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    #[tokio::test]
    async fn wakes_on_a_change_and_fails_naming_who_at_the_deadline() {
        let (changed, _) = watch::channel(0u64);
        let changed = Arc::new(changed);
        let n = Arc::new(AtomicU64::new(0));
        let (c, m) = (changed.clone(), n.clone());
        tokio::spawn(async move {
            for _ in 0..3 {
                m.fetch_add(1, Relaxed);
                c.send_modify(|v| *v += 1);
                tokio::task::yield_now().await;
            }
        });
        let got = until(
            "sim",
            &changed,
            || n.load(Relaxed),
            |v| *v == 3,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(got, 3);
        let e = until(
            "sim",
            &changed,
            || n.load(Relaxed),
            |v| *v == 4,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().starts_with("sim: condition not met"), "{e}");
    }
}
