//! The write hold: while the proxy sends a new job to every miner, the writer starts no
//! direct write.
//!
//! A new job goes to every miner at once (10,000 notify lines in ~150 ms on two cores), and
//! every miner works on the old one until its line arrives. A batch written in that window
//! takes the cores from the sessions writing those lines (at 10,000 shares/s SQLite is about
//! half of the proxy's CPU), so it lengthens the fan-out's tail. The proxy opens the hold
//! when its upstream publishes a job and touches it as the job is written to the miners. A batch already running in SQLite waits too, between steps of its statement
//! (`sink/sqlite.rs`). The hold ends when the sessions have gone quiet (no touch for
//! [`QUIET`]) or [`CAP`] after it opened, whichever comes first. Shares keep arriving
//! meanwhile and wait in the writer's pending batch (at 10,000 shares/s, ~4,000 of them for
//! a 300 ms fan-out and the quiet time after it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// No session has written the job for this long: the fan-out is over. As long as the
/// longest pause a pod at its CPU limit sees (the rest of the scheduler's 100 ms period),
/// so that such a pause in the middle of a fan-out does not end the hold.
pub const QUIET: Duration = Duration::from_millis(100);
/// The longest a hold lasts, however long the fan-out (measured from the job that opened it:
/// jobs that come while it holds do not start it again).
pub const CAP: Duration = Duration::from_millis(500);

/// Shared by the proxy's upstream (opens), its sessions (touch) and the writer (reads).
/// Cloning shares it; one nobody opens holds nothing.
#[derive(Clone, Debug)]
pub struct WriteHold(Arc<State>);

#[derive(Debug)]
struct State {
    quiet: Duration,
    cap: Duration,
    base: Instant,
    /// Microseconds from `base` (+1, so 0 means never) when the hold was opened.
    opened: AtomicU64,
    /// The same for the last touch.
    touched: AtomicU64,
    /// The writer is shutting down: nothing holds any more.
    released: AtomicBool,
}

impl Default for WriteHold {
    /// Ends after [`QUIET`] without a touch, at most [`CAP`] after it opened.
    fn default() -> Self {
        WriteHold::new(QUIET, CAP)
    }
}

impl WriteHold {
    /// A hold that ends after `quiet` without a touch, at most `cap` after it opened.
    pub fn new(quiet: Duration, cap: Duration) -> Self {
        WriteHold(Arc::new(State {
            quiet,
            cap,
            base: Instant::now(),
            opened: AtomicU64::new(0),
            touched: AtomicU64::new(0),
            released: AtomicBool::new(false),
        }))
    }

    /// The longest a hold lasts.
    pub fn cap(&self) -> Duration {
        self.0.cap
    }

    /// Hold nothing from now on (the writer is shutting down).
    pub fn release(&self) {
        self.0.released.store(true, Relaxed);
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0.base).as_micros() as u64 + 1
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.0.base + Duration::from_micros(stamp - 1)
    }

    /// A new job is going out to every miner. While a hold is on, it goes on from its first
    /// job (so jobs that come faster than the cap cannot hold the writer for ever).
    pub fn open(&self) {
        let now = Instant::now();
        if self.holds_until(now).is_none() {
            self.0.opened.store(self.stamp(now), Relaxed);
        }
    }

    /// The job has been written to a miner (or a run of them).
    pub fn touch(&self) {
        if self.0.opened.load(Relaxed) != 0 {
            self.0.touched.store(self.stamp(Instant::now()), Relaxed);
        }
    }

    /// When it was last opened (to the microsecond).
    pub fn opened_at(&self) -> Option<Instant> {
        let at = self.0.opened.load(Relaxed);
        (at != 0).then(|| self.instant(at))
    }

    /// When a session last touched it (to the microsecond).
    pub fn touched_at(&self) -> Option<Instant> {
        let at = self.0.touched.load(Relaxed);
        (at != 0).then(|| self.instant(at))
    }

    /// Block the calling thread while the hold holds, and not past `deadline`. For a thread
    /// of its own only, such as SQLite's, between two steps of a statement.
    pub fn wait_blocking(&self, deadline: Instant) {
        while let Some(until) = self.holds_until(Instant::now()) {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(until.min(deadline).saturating_duration_since(now));
        }
    }

    /// Until when the writer should wait at `now` (to look again then; the sessions may
    /// touch the hold meanwhile), or `None` if it may write.
    pub fn holds_until(&self, now: Instant) -> Option<Instant> {
        let opened = self.0.opened.load(Relaxed);
        if opened == 0 || self.0.released.load(Relaxed) {
            return None;
        }
        let touched = self.0.touched.load(Relaxed).max(opened);
        let until = (self.instant(opened) + self.0.cap).min(self.instant(touched) + self.0.quiet);
        (now < until).then_some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_while_sessions_write_and_ends_when_quiet_or_capped() {
        let hold = WriteHold::default();
        let t0 = Instant::now();
        assert_eq!(hold.holds_until(t0), None, "never opened");
        hold.touch();
        assert_eq!(hold.holds_until(t0), None, "a touch alone opens nothing");

        hold.open();
        let opened = hold.opened_at().expect("opened");
        assert_eq!(
            hold.touched_at(),
            None,
            "no session has written the job yet"
        );
        let until = hold.holds_until(opened).expect("held once opened");
        assert_eq!(until, opened + QUIET);
        assert_eq!(hold.holds_until(opened + QUIET), None, "quiet: over");

        // Touches keep it going, but never past the cap.
        let mut at = opened;
        while at < opened + CAP + QUIET {
            hold.0.touched.store(hold.stamp(at), Relaxed);
            let expect = (at + QUIET).min(opened + CAP);
            assert_eq!(
                hold.holds_until(at),
                (at < expect).then_some(expect),
                "{:?} after opening",
                at - opened
            );
            at += QUIET / 2;
        }
        assert_eq!(hold.holds_until(opened + CAP), None, "capped");
    }

    #[test]
    fn jobs_while_it_holds_do_not_start_it_again_and_release_ends_it() {
        let hold = WriteHold::default();
        hold.open();
        let first = hold.opened_at().unwrap();
        hold.touch();
        hold.open();
        assert_eq!(hold.opened_at(), Some(first), "still the first job's hold");
        assert!(hold.holds_until(Instant::now()).is_some());
        hold.release();
        assert_eq!(hold.holds_until(Instant::now()), None);
        let t = Instant::now();
        hold.wait_blocking(t + Duration::from_secs(60));
        assert!(t.elapsed() < Duration::from_secs(1), "released: no wait");
    }
}
