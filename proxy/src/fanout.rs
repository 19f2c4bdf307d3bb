//! The notify fan-out of the aggregate upstream: a new job written to every plain-TCP miner
//! by a few fan-out tasks, each looping over its share of the miners' sockets, instead of
//! waking every miner's session task to write it.
//!
//! A session is woken only when its notify is not the job's shared line alone: when it is in
//! the middle of a turn of its own (reading, judging, writing), when it has not had a job
//! yet, or when the new work changes more than the job (another upstream session or
//! extranonce, the pool's difficulty or version mask, a difficulty of its own not yet told).
//! Each miner's socket is a [`Lane`]: its write side, shared by the session and the fan-out,
//! and a small state under a lock that says which of the two may write:
//!
//! - While a session runs a turn ([`Lane::begin`] to [`Lane::end`]) the lane has no
//!   [`Synced`]; the fan-out only wakes it, and the session reads the new work itself.
//! - Between turns the session leaves what the fan-out needs to know ([`Synced`]): the work
//!   it follows and the last job it sent. If the new work matches, the fan-out writes the
//!   job's line (its clean variant when the miner's last job is gone) and records the job as
//!   delivered; the session takes that record at its next turn, before it judges anything,
//!   so its job ledger (which difficulty each job is judged at) stays exact.
//! - A line the socket did not take whole stays with the lane; the session writes the rest
//!   first at its next turn (it is woken for it), so bytes never interleave.

use crate::stats::Stats;
use crate::upstream::work::{LocalJob, Work};
use bytes::Bytes;
use loka_store::WriteHold;
use loka_stratum::Difficulty;
use parking_lot::Mutex;
use slab::Slab;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Sockets one fan-out task writes before it yields to the sessions' tasks (about 1 ms of
/// system calls on loopback), so shares keep being judged while a job goes out.
const CHUNK: usize = 128;

/// What a session leaves for the fan-out between its turns: the work it follows and the last
/// job it sent. Set only when the next job's notify would be the job's line alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub generation: u64,
    /// The upstream's version mask the session last followed.
    pub version_mask: u32,
    /// The pool's difficulty the session last followed.
    pub upstream_difficulty: Difficulty,
    /// The last job the miner was sent.
    pub seq: u64,
}

#[derive(Debug, Default)]
struct LaneState {
    /// What the session left at the end of its last turn. `None` while it is in a turn or
    /// has the rest of a line to write: then the fan-out only wakes it.
    synced: Option<Synced>,
    /// The newest job the fan-out wrote since the session last looked.
    delivered: Option<u64>,
    /// The part of a line the socket did not take; the session writes it first.
    leftover: Option<Bytes>,
}

/// One miner's socket, shared by its session and the fan-out.
pub struct Lane {
    /// Where it is listed: its shard of `lanes` and its key there.
    lanes: Arc<Lanes>,
    shard: usize,
    key: usize,
    sock: OwnedWriteHalf,
    state: Mutex<LaneState>,
    /// Wakes the session for work the fan-out did not write itself.
    wake: Notify,
}

impl std::fmt::Debug for Lane {
    // Not `lanes`: it lists this lane.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("shard", &self.shard)
            .field("key", &self.key)
            .field("state", &self.state.try_lock().as_deref())
            .finish_non_exhaustive()
    }
}

/// What the session takes at the start of a turn: the newest job the fan-out wrote for it,
/// and the bytes of a line it must finish writing first.
#[derive(Debug, Default)]
pub struct Caught {
    pub delivered: Option<u64>,
    pub leftover: Option<Bytes>,
}

/// What the fan-out did with one lane for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The job's line went out whole.
    Written,
    /// The miner already had this job.
    Had,
    /// The session was woken to send it (and whatever else it needs).
    Woken,
}

impl Lane {
    fn new(lanes: Arc<Lanes>, shard: usize, key: usize, sock: OwnedWriteHalf) -> Self {
        Lane {
            lanes,
            shard,
            key,
            sock,
            state: Mutex::new(LaneState::default()),
            wake: Notify::new(),
        }
    }

    /// The session starts a turn: from now until [`Lane::end`] only it writes.
    pub fn begin(&self) -> Caught {
        let mut st = self.state.lock();
        st.synced = None;
        Caught {
            delivered: st.delivered.take(),
            leftover: st.leftover.take(),
        }
    }

    /// The session ends a turn, with what the fan-out may rely on until the next.
    pub fn end(&self, synced: Option<Synced>) {
        self.state.lock().synced = synced;
    }

    /// The fan-out began a line the socket did not take whole.
    pub fn has_leftover(&self) -> bool {
        self.state.lock().leftover.is_some()
    }

    /// Woken for work the fan-out left to the session.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Write all of `buf` (the session, in a turn).
    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.sock.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Give the lane this work's current job: write its line if the session's notify would
    /// be that line alone and the session is between turns, else wake the session.
    pub fn offer(&self, work: &Work, job: &LocalJob) -> Offer {
        let mut st = self.state.lock();
        let synced = match st.synced {
            Some(s)
                if s.generation == work.generation
                    && s.version_mask == work.version_mask
                    && s.upstream_difficulty == work.upstream_difficulty =>
            {
                s
            }
            _ => return self.wake_session(st),
        };
        if synced.seq >= job.seq {
            return Offer::Had;
        }
        // The miner's last job is gone (a clean job, or aged out): it must drop what it has.
        let still_valid = work.jobs.iter().any(|j| j.seq == synced.seq);
        let line = if still_valid {
            &job.notify
        } else {
            &job.notify_clean
        };
        match self.sock.try_write(line) {
            Ok(n) if n == line.len() => {
                st.synced = Some(Synced {
                    seq: job.seq,
                    ..synced
                });
                st.delivered = Some(job.seq);
                Offer::Written
            }
            Ok(n) => {
                // The line is on its way: the session finishes it before anything else.
                st.synced = None;
                st.delivered = Some(job.seq);
                st.leftover = Some(line.slice(n..));
                self.wake_session(st)
            }
            Err(_) => {
                // The socket is full or gone: the session sends it, or finds out why.
                st.synced = None;
                self.wake_session(st)
            }
        }
    }

    /// Leave the work to the session (its lock released first).
    fn wake_session(&self, st: parking_lot::MutexGuard<'_, LaneState>) -> Offer {
        drop(st);
        self.wake.notify_one();
        Offer::Woken
    }
}

/// The lanes of every plain-TCP miner of the aggregate upstream, in one shard per fan-out
/// task (so the tasks never wait on each other's lock).
#[derive(Debug)]
pub struct Lanes {
    shards: Vec<Mutex<Slab<Arc<Lane>>>>,
    next: AtomicUsize,
    /// Notify lines the fan-out wrote itself (the rest its sessions wrote).
    written: AtomicU64,
}

/// A session's lane, taken out of the fan-out when dropped (the socket's write side closes
/// when the last holder lets go). One pointer: it is in every miner's task.
#[derive(Debug)]
pub struct LaneHandle(Arc<Lane>);

impl LaneHandle {
    pub fn lane(&self) -> &Lane {
        &self.0
    }
}

impl Drop for LaneHandle {
    fn drop(&mut self) {
        let lane = &self.0;
        lane.lanes.shards[lane.shard].lock().try_remove(lane.key);
    }
}

impl Lanes {
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Lanes {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Slab::new()))
                .collect(),
            next: AtomicUsize::new(0),
            written: AtomicU64::new(0),
        })
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Notify lines the fan-out has written itself, since the start.
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// A miner's write side, from now on also written by the fan-out.
    pub fn register(self: &Arc<Self>, sock: OwnedWriteHalf) -> LaneHandle {
        let shard = self.next.fetch_add(1, Relaxed) % self.shards.len();
        let mut lanes = self.shards[shard].lock();
        let entry = lanes.vacant_entry();
        let lane = Arc::new(Lane::new(self.clone(), shard, entry.key(), sock));
        entry.insert(lane.clone());
        LaneHandle(lane)
    }

    /// Offer `job` to the lanes of one shard from `from`, at most [`CHUNK`] of them; the key
    /// to go on from, if any are left.
    fn pass(
        &self,
        shard: usize,
        from: usize,
        work: &Work,
        job: &LocalJob,
        stats: &Stats,
    ) -> (u64, Option<usize>) {
        let lanes = self.shards[shard].lock();
        let end = lanes.capacity();
        let mut key = from;
        let mut seen = 0;
        let mut written = 0;
        while key < end && seen < CHUNK {
            if let Some(lane) = lanes.get(key) {
                seen += 1;
                if lane.offer(work, job) == Offer::Written {
                    written += 1;
                    stats
                        .notify_delay
                        .observe(job.received_at.elapsed().as_secs_f64());
                }
            }
            key += 1;
        }
        (written, (key < end).then_some(key))
    }

    /// Wake every session of a shard (the upstream is gone: they find out and close).
    fn wake_all(&self, shard: usize) {
        for (_, lane) in self.shards[shard].lock().iter() {
            lane.wake.notify_one();
        }
    }
}

/// One fan-out task: sends each new job of the upstream's work to the lanes of its shard,
/// until shutdown or the upstream's end.
pub async fn run(
    lanes: Arc<Lanes>,
    shard: usize,
    mut work: watch::Receiver<Option<Arc<Work>>>,
    stats: Arc<Stats>,
    hold: WriteHold,
    shutdown: CancellationToken,
) {
    loop {
        let changed = tokio::select! {
            () = shutdown.cancelled() => return,
            c = work.changed() => c,
        };
        if changed.is_err() {
            lanes.wake_all(shard);
            return;
        }
        let Some(w) = work.borrow_and_update().clone() else {
            continue;
        };
        let Some(job) = w.current().cloned() else {
            continue;
        };
        let mut from = 0;
        loop {
            let (written, next) = lanes.pass(shard, from, &w, &job, &stats);
            if written > 0 {
                stats.jobs_distributed.fetch_add(written, Relaxed);
                lanes.written.fetch_add(written, Relaxed);
                hold.touch();
            }
            match next {
                Some(key) => from = key,
                None => break,
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::work::{ExtranonceLayout, sample_job};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const WAIT: Duration = Duration::from_secs(5);

    fn job(layout: &ExtranonceLayout, n: u8) -> Arc<LocalJob> {
        let upstream = sample_job(&format!("up{n}"), 100 + u32::from(n), false);
        Arc::new(LocalJob::new(&upstream, layout, 1, Difficulty::ONE, false))
    }

    /// A folding layout and its first two jobs.
    fn two_jobs() -> (ExtranonceLayout, Arc<LocalJob>, Arc<LocalJob>) {
        let layout = ExtranonceLayout::new(true, vec![1, 2, 3, 4], 8, 2, 2, 8).unwrap();
        let (j1, j2) = (job(&layout, 1), job(&layout, 2));
        (layout, j1, j2)
    }

    fn work(layout: &ExtranonceLayout, jobs: &[&Arc<LocalJob>]) -> Work {
        Work {
            generation: 1,
            pool: Arc::from("p"),
            layout: layout.clone(),
            version_mask: 0x1fff_e000,
            upstream_difficulty: Difficulty::ONE,
            jobs: jobs.iter().map(|j| Arc::clone(j)).collect(),
        }
    }

    fn synced(seq: u64) -> Synced {
        Synced {
            generation: 1,
            version_mask: 0x1fff_e000,
            upstream_difficulty: Difficulty::ONE,
            seq,
        }
    }

    /// A lane over a real loopback connection, and the miner's end of it.
    async fn lane(lanes: &Arc<Lanes>) -> (LaneHandle, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let miner = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (_r, w) = server.into_split();
        (lanes.register(w), miner)
    }

    async fn read_exactly(miner: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(WAIT, miner.read_exact(&mut buf))
            .await
            .expect("in time")
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn a_synced_lane_gets_the_jobs_line_and_its_session_takes_the_job_in() {
        let (layout, j1, j2) = two_jobs();
        let lanes = Lanes::new(1);
        let (h, mut miner) = lane(&lanes).await;
        h.lane().end(Some(synced(j1.seq)));
        let w = work(&layout, &[&j1, &j2]);
        assert_eq!(h.lane().offer(&w, &j2), Offer::Written);
        // Its last job is still valid: the job's own (not clean) line.
        assert_eq!(read_exactly(&mut miner, j2.notify.len()).await, j2.notify);
        // Offered again (another pass over the same work): nothing more.
        assert_eq!(h.lane().offer(&w, &j2), Offer::Had);
        let caught = h.lane().begin();
        assert_eq!(caught.delivered, Some(j2.seq));
        assert!(caught.leftover.is_none());
        // In a turn now: a new job wakes the session instead.
        let j3 = job(&layout, 3);
        let w = work(&layout, &[&j1, &j2, &j3]);
        assert_eq!(h.lane().offer(&w, &j3), Offer::Woken);
        tokio::time::timeout(WAIT, h.lane().woken())
            .await
            .expect("the session is woken");
        assert_eq!(h.lane().begin().delivered, None);
    }

    #[tokio::test]
    async fn a_miner_whose_last_job_is_gone_gets_the_clean_line() {
        let (layout, j1, j2) = two_jobs();
        let lanes = Lanes::new(1);
        let (h, mut miner) = lane(&lanes).await;
        h.lane().end(Some(synced(j1.seq)));
        assert_ne!(j2.notify, j2.notify_clean);
        assert_eq!(h.lane().offer(&work(&layout, &[&j2]), &j2), Offer::Written);
        let line = read_exactly(&mut miner, j2.notify_clean.len()).await;
        assert_eq!(line, j2.notify_clean);
    }

    /// Whatever `on_work` would do beyond the job's line (another generation, mask or pool
    /// difficulty), and a session that has told the fan-out nothing, is the session's.
    #[tokio::test]
    async fn other_work_wakes_the_session_and_writes_nothing() {
        let (layout, j1, j2) = two_jobs();
        let lanes = Lanes::new(2);
        let (h, miner) = lane(&lanes).await;
        let base = work(&layout, &[&j1, &j2]);
        let others = [
            Work {
                generation: 2,
                ..work(&layout, &[&j1, &j2])
            },
            Work {
                version_mask: 0x0000_6000,
                ..work(&layout, &[&j1, &j2])
            },
            Work {
                upstream_difficulty: "2".parse().unwrap(),
                ..work(&layout, &[&j1, &j2])
            },
        ];
        for w in &others {
            h.lane().end(Some(synced(j1.seq)));
            assert_eq!(h.lane().offer(w, &j2), Offer::Woken);
            tokio::time::timeout(WAIT, h.lane().woken())
                .await
                .expect("the session is woken");
        }
        h.lane().end(None);
        assert_eq!(h.lane().offer(&base, &j2), Offer::Woken);
        assert_eq!(h.lane().begin().delivered, None);
        // Nothing reached the miner.
        let mut buf = [0u8; 1];
        assert!(
            miner
                .try_read(&mut buf)
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
        );
    }

    /// A socket that takes no more (a miner that stopped reading) is left to its session,
    /// which waits on it with its write timeout.
    #[tokio::test]
    async fn a_full_socket_is_left_to_the_session() {
        let (layout, j1, j2) = two_jobs();
        let lanes = Lanes::new(1);
        let (h, _miner) = lane(&lanes).await;
        let filler = vec![b' '; 64 * 1024];
        while h.lane().sock.try_write(&filler).is_ok() {}
        h.lane().end(Some(synced(j1.seq)));
        assert_eq!(
            h.lane().offer(&work(&layout, &[&j1, &j2]), &j2),
            Offer::Woken
        );
        let caught = h.lane().begin();
        assert_eq!(caught.delivered, None, "{caught:?}");
        assert!(caught.leftover.is_none());
    }

    /// A session's lane leaves the fan-out with it.
    #[tokio::test]
    async fn a_dropped_handle_takes_its_lane_out() {
        let lanes = Lanes::new(2);
        let (a, _ma) = lane(&lanes).await;
        let (b, _mb) = lane(&lanes).await;
        let listed = |lanes: &Lanes| lanes.shards.iter().map(|s| s.lock().len()).sum::<usize>();
        assert_eq!(listed(&lanes), 2);
        // Printed without the list it is in (which lists it).
        assert!(format!("{lanes:#?}").contains("shard: 1"), "{lanes:#?}");
        drop(a);
        assert_eq!(listed(&lanes), 1);
        drop(b);
        assert_eq!(listed(&lanes), 0);
    }

    /// The task: every job of the upstream's work goes to the synced lanes of its shard; the
    /// others' sessions are woken.
    #[tokio::test]
    async fn the_task_writes_each_new_job_to_its_shard() {
        let (layout, j1, j2) = two_jobs();
        let lanes = Lanes::new(1);
        let (tx, rx) = watch::channel(Some(Arc::new(work(&layout, &[&j1]))));
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            lanes.clone(),
            0,
            rx,
            stats.clone(),
            WriteHold::default(),
            stop.clone(),
        ));
        let mut held = Vec::new();
        for i in 0..300 {
            let (h, miner) = lane(&lanes).await;
            // Every third one mid-turn.
            h.lane().end((i % 3 != 0).then(|| synced(j1.seq)));
            held.push((h, miner));
        }
        tx.send_replace(Some(Arc::new(work(&layout, &[&j1, &j2]))));
        for (i, (h, miner)) in held.iter_mut().enumerate() {
            if i % 3 == 0 {
                tokio::time::timeout(WAIT, h.lane().woken())
                    .await
                    .expect("woken");
            } else {
                assert_eq!(read_exactly(miner, j2.notify.len()).await, j2.notify);
            }
        }
        stop.cancel();
        task.await.unwrap();
        assert_eq!(lanes.written(), 200);
        assert_eq!(stats.jobs_distributed.load(Relaxed), 200);
        assert_eq!(stats.notify_delay.snapshot().count, 200);
    }
}
