//! The local spool: an append-only log of record batches, used while the database is
//! unreachable or slow, replayed in order when it is back.
//!
//! Layout: a directory of segment files `00000000000000000001.spool`, … Each segment starts
//! with the 8-byte magic `LOKASPL1`, then frames:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC-32 (IEEE) of the payload
//! payload: one batch of records (record::encode)
//! ```
//!
//! Frames are appended to the newest segment (a new one is started past
//! `spool_segment_bytes`) and read from the oldest. A frame is "committed" once the database
//! has it; a segment whose frames are all committed is deleted. The read position is not
//! persisted: after a crash the oldest segment is replayed from its start, which is harmless
//! because every write is idempotent (the unique key). On open, a torn or corrupt frame ends
//! its segment: the bytes from there are moved to `<segment>.corrupt` and reported.

use crate::record::{self, Record};
use loka_config::FsyncPolicy;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"LOKASPL1";
const HEADER: u64 = MAGIC.len() as u64;
const MAX_FRAME: u32 = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
}

impl SpoolOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_secs(1),
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    len: u64,
}

/// Where the next unread frame starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    seq: u64,
    offset: u64,
}

/// What opening the spool found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub frames: u64,
    pub records: u64,
    /// Bytes of torn or corrupt frames set aside in `.corrupt` files.
    pub corrupt_bytes: u64,
}

pub struct Spool {
    opts: SpoolOptions,
    /// Oldest first; the last one is the segment being appended to.
    segments: VecDeque<Segment>,
    tail: Option<File>,
    read: Cursor,
    dirty: bool,
    last_sync: Instant,
    buf: Vec<u8>,
}

impl Spool {
    /// Open (creating the directory), checking every frame of every segment.
    pub fn open(opts: SpoolOptions) -> io::Result<(Spool, Recovery)> {
        fs::create_dir_all(&opts.dir)?;
        let mut seqs: Vec<u64> = fs::read_dir(&opts.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".spool")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        for seq in seqs {
            let path = segment_path(&opts.dir, seq);
            let (len, frames, records, corrupt) = check_segment(&path)?;
            recovery.frames += frames;
            recovery.records += records;
            recovery.corrupt_bytes += corrupt;
            if frames == 0 {
                fs::remove_file(&path)?;
                continue;
            }
            segments.push_back(Segment { seq, len });
        }
        recovery.segments = segments.len();
        let read = Cursor {
            seq: segments.front().map_or(0, |s| s.seq),
            offset: HEADER,
        };
        let tail = match segments.back() {
            Some(s) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(segment_path(&opts.dir, s.seq))?,
            ),
            None => None,
        };
        Ok((
            Spool {
                opts,
                segments,
                tail,
                read,
                dirty: false,
                last_sync: Instant::now(),
                buf: Vec::new(),
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Nothing left to replay.
    pub fn is_empty(&self) -> bool {
        match self.segments.len() {
            0 => true,
            1 => self.read.offset >= self.segments[0].len,
            _ => false,
        }
    }

    /// Bytes not yet replayed (segment headers included).
    pub fn bytes(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.len).sum();
        if self.segments.is_empty() {
            0
        } else {
            total.saturating_sub(self.read.offset)
        }
    }

    /// Append one batch as one frame (and fsync as the policy says).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 8]);
        record::encode(records, &mut self.buf);
        let payload_len = (self.buf.len() - 8) as u32;
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let need_new = match self.segments.back() {
            None => true,
            Some(s) => s.len >= self.opts.segment_bytes || self.tail.is_none(),
        };
        if need_new {
            self.start_segment()?;
        }
        let tail = self.tail.as_mut().expect("tail segment open");
        let seg = self.segments.back_mut().expect("tail segment");
        if let Err(e) = tail.write_all(&self.buf) {
            // Leave no half frame behind: cut back to the last whole frame.
            let _ = tail.set_len(seg.len);
            return Err(e);
        }
        seg.len += self.buf.len() as u64;
        match self.opts.fsync {
            FsyncPolicy::Always => tail.sync_data()?,
            FsyncPolicy::Interval => {
                self.dirty = true;
                self.sync_if_due()?;
            }
            FsyncPolicy::Never => {}
        }
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        if let Some(t) = self.tail.take()
            && self.opts.fsync != FsyncPolicy::Never
        {
            t.sync_data()?;
        }
        let seq = self.segments.back().map_or(1, |s| s.seq + 1);
        let path = segment_path(&self.opts.dir, seq);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        f.write_all(MAGIC)?;
        if self.opts.fsync != FsyncPolicy::Never {
            f.sync_data()?;
            if let Ok(d) = File::open(&self.opts.dir) {
                let _ = d.sync_all();
            }
        }
        if self.segments.is_empty() {
            self.read = Cursor {
                seq,
                offset: HEADER,
            };
        }
        self.segments.push_back(Segment { seq, len: HEADER });
        self.tail = Some(f);
        Ok(())
    }

    /// fsync if the interval has passed since the last one (interval policy).
    pub fn sync_if_due(&mut self) -> io::Result<()> {
        if self.dirty && self.last_sync.elapsed() >= self.opts.fsync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// fsync now (shutdown).
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(t) = &self.tail
            && self.dirty
        {
            t.sync_data()?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Read whole frames from the read position, up to about `max_records` records (at least
    /// one frame), without consuming them: [`Spool::commit`] the returned cursor once the
    /// database has them.
    pub fn peek(&mut self, max_records: usize) -> io::Result<Option<(Vec<Record>, Cursor)>> {
        self.peek_after(None, max_records)
    }

    /// Like [`Spool::peek`], from `after` (the end of frames already handed out and not yet
    /// committed) instead of the read position.
    pub fn peek_after(
        &mut self,
        after: Option<Cursor>,
        max_records: usize,
    ) -> io::Result<Option<(Vec<Record>, Cursor)>> {
        let mut pos = after.unwrap_or(self.read);
        loop {
            let Some(idx) = self.segments.iter().position(|s| s.seq >= pos.seq) else {
                return Ok(None);
            };
            let (seq, end) = (self.segments[idx].seq, self.segments[idx].len);
            if seq != pos.seq {
                pos = Cursor {
                    seq,
                    offset: HEADER,
                };
            }
            if pos.offset >= end {
                match self.segments.get(idx + 1) {
                    Some(next) => {
                        pos = Cursor {
                            seq: next.seq,
                            offset: HEADER,
                        };
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let mut f = File::open(segment_path(&self.opts.dir, seq))?;
            f.seek(SeekFrom::Start(pos.offset))?;
            let mut reader = io::BufReader::with_capacity(256 * 1024, f);
            let mut offset = pos.offset;
            let mut out: Vec<Record> = Vec::new();
            while offset < end && (out.is_empty() || out.len() < max_records) {
                match read_frame(&mut reader)? {
                    Some((records, size)) => {
                        offset += size;
                        out.extend(records);
                    }
                    None => {
                        // Corrupted after open (disk trouble): the rest of this segment
                        // cannot be read; report and move on.
                        tracing::error!(
                            segment = seq,
                            offset,
                            "spool: unreadable frame, skipping the rest of the segment"
                        );
                        offset = end;
                        break;
                    }
                }
            }
            if out.is_empty() {
                pos.offset = offset;
                continue;
            }
            return Ok(Some((out, Cursor { seq, offset })));
        }
    }

    /// Everything up to `cursor` is in the database: fully replayed segments are deleted.
    pub fn commit(&mut self, cursor: Cursor) -> io::Result<()> {
        self.read = cursor;
        while let Some(front) = self.segments.front() {
            let done =
                front.seq < cursor.seq || (front.seq == cursor.seq && cursor.offset >= front.len);
            if !done {
                break;
            }
            let seq = front.seq;
            self.segments.pop_front();
            if self.segments.is_empty() {
                self.tail = None;
                self.dirty = false;
            }
            match fs::remove_file(segment_path(&self.opts.dir, seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(front) = self.segments.front()
            && front.seq != self.read.seq
        {
            self.read = Cursor {
                seq: front.seq,
                offset: HEADER,
            };
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.spool"))
}

/// One frame: `Ok(None)` when it is torn or fails its checksum.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(Vec<Record>, u64)>> {
    let mut head = [0u8; 8];
    if !read_full(r, &mut head)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    if !read_full(r, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    match record::decode(&payload) {
        Ok(records) => Ok(Some((records, 8 + u64::from(len)))),
        Err(_) => Ok(None),
    }
}

/// `Ok(false)` at (a possibly partial) end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Scan a segment: (valid length, frames, records, corrupt bytes set aside).
fn check_segment(path: &Path) -> io::Result<(u64, u64, u64, u64)> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = f.metadata()?.len();
    let mut magic = [0u8; 8];
    if !read_full(&mut f, &mut magic)? || &magic != MAGIC {
        tracing::error!(path = %path.display(), "spool: not a spool segment, set aside");
        fs::rename(path, path.with_extension("corrupt"))?;
        return Ok((0, 0, 0, file_len));
    }
    let mut reader = io::BufReader::with_capacity(256 * 1024, &mut f);
    let (mut valid, mut frames, mut records) = (HEADER, 0u64, 0u64);
    while valid < file_len {
        match read_frame(&mut reader)? {
            Some((r, size)) => {
                valid += size;
                frames += 1;
                records += r.len() as u64;
            }
            None => break,
        }
    }
    drop(reader);
    let corrupt = file_len - valid;
    if corrupt > 0 {
        tracing::error!(
            path = %path.display(),
            bytes = corrupt,
            "spool: torn or corrupt frame; the bytes from there are set aside"
        );
        let mut rest = Vec::with_capacity(corrupt as usize);
        f.seek(SeekFrom::Start(valid))?;
        f.read_to_end(&mut rest)?;
        let aside = path.with_extension(format!("{valid}.corrupt"));
        fs::write(aside, rest)?;
        f.set_len(valid)?;
        f.sync_all()?;
    }
    Ok((valid, frames, records, corrupt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DisconnectRecord, Record};

    fn batch(from: u64, n: u64) -> Vec<Record> {
        (from..from + n)
            .map(|i| {
                Record::Disconnect(DisconnectRecord {
                    at_us: i as i64,
                    connection_id: i,
                    worker: format!("w{i}"),
                    reason: "r".into(),
                })
            })
            .collect()
    }

    fn ids(records: &[Record]) -> Vec<u64> {
        records
            .iter()
            .map(|r| match r {
                Record::Disconnect(d) => d.connection_id,
                _ => unreachable!(),
            })
            .collect()
    }

    fn opts(dir: &Path) -> SpoolOptions {
        SpoolOptions {
            segment_bytes: 300,
            ..SpoolOptions::new(dir)
        }
    }

    #[test]
    fn replays_in_order_across_segments_and_deletes_what_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = Spool::open(opts(dir.path())).unwrap();
        assert_eq!(rec, Recovery::default());
        assert!(s.is_empty());
        for i in 0..10 {
            s.append(&batch(i * 5, 5)).unwrap();
        }
        assert!(!s.is_empty());
        assert!(s.bytes() > 0);
        let segments = fs::read_dir(dir.path()).unwrap().count();
        assert!(segments > 2, "{segments} segments");
        let mut seen = Vec::new();
        while let Some((records, cursor)) = s.peek(7).unwrap() {
            seen.extend(ids(&records));
            // appends while replaying land behind what is being read
            if seen.len() == 10 {
                s.append(&batch(50, 5)).unwrap();
            }
            s.commit(cursor).unwrap();
        }
        assert_eq!(seen, (0..55).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        // and it starts again cleanly
        s.append(&batch(100, 1)).unwrap();
        assert_eq!(ids(&s.peek(10).unwrap().unwrap().0), vec![100]);
    }

    #[test]
    fn reading_ahead_commits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(opts(dir.path())).unwrap();
        for i in 0..6 {
            s.append(&batch(i * 5, 5)).unwrap();
        }
        let (a, ca) = s.peek(5).unwrap().unwrap();
        let (b, cb) = s.peek_after(Some(ca), 5).unwrap().unwrap();
        let (c, cc) = s.peek_after(Some(cb), 5).unwrap().unwrap();
        assert_eq!(
            [ids(&a), ids(&b), ids(&c)].concat(),
            (0..15).collect::<Vec<_>>()
        );
        s.commit(cb).unwrap();
        // not committed past b: a restart of reading begins at c
        assert_eq!(ids(&s.peek(5).unwrap().unwrap().0), ids(&c));
        s.commit(cc).unwrap();
        let mut rest = Vec::new();
        let mut after = None;
        while let Some((r, cur)) = s.peek_after(after, 100).unwrap() {
            rest.extend(ids(&r));
            after = Some(cur);
        }
        assert_eq!(rest, (15..30).collect::<Vec<_>>());
        s.commit(after.unwrap()).unwrap();
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn uncommitted_frames_survive_a_restart_and_a_torn_tail_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(SpoolOptions::new(dir.path())).unwrap();
            s.append(&batch(0, 3)).unwrap();
            s.append(&batch(3, 3)).unwrap();
            let (r, _cursor) = s.peek(1).unwrap().unwrap();
            assert_eq!(ids(&r), vec![0, 1, 2]); // read, never committed
        }
        // A crash in the middle of a write: half a frame at the end.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
        drop(f);
        let (mut s, rec) = Spool::open(SpoolOptions::new(dir.path())).unwrap();
        assert_eq!(rec.frames, 2);
        assert_eq!(rec.records, 6);
        assert_eq!(rec.corrupt_bytes, 9);
        let (r, c) = s.peek(100).unwrap().unwrap();
        assert_eq!(ids(&r), (0..6).collect::<Vec<_>>());
        s.commit(c).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(SpoolOptions::new(dir.path())).unwrap();
            s.append(&batch(0, 2)).unwrap();
            s.append(&batch(2, 2)).unwrap();
            s.sync().unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        fs::write(&seg, bytes).unwrap();
        let (mut s, rec) = Spool::open(SpoolOptions::new(dir.path())).unwrap();
        assert_eq!(rec.frames, 1);
        assert!(rec.corrupt_bytes > 0);
        assert_eq!(ids(&s.peek(100).unwrap().unwrap().0), vec![0, 1]);
        let corrupt: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".corrupt"))
            .collect();
        assert_eq!(corrupt.len(), 1);
    }

    #[test]
    fn fsync_policies_all_write() {
        for p in [
            FsyncPolicy::Always,
            FsyncPolicy::Interval,
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut s, _) = Spool::open(SpoolOptions {
                fsync: p,
                fsync_interval: Duration::from_millis(1),
                ..SpoolOptions::new(dir.path())
            })
            .unwrap();
            s.append(&batch(0, 2)).unwrap();
            s.sync_if_due().unwrap();
            drop(s);
            let (_, rec) = Spool::open(SpoolOptions::new(dir.path())).unwrap();
            assert_eq!(rec.records, 2, "{p:?}");
        }
    }
}
