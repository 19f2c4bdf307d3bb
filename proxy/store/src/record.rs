//! What the writer stores: events turned into records with their identity fixed (a UUIDv7 id
//! and the judged instant in microseconds), text made to fit the columns, and a compact binary
//! form for the spool.
//!
//! A record is built once, when the writer takes the event off the queue; from then on the
//! same bytes go to the database, to the spool and back, so a replay is the very same row.

use crate::events::{ConnectionEvent, Event, ShareEvent};
use compact_str::CompactString;
use rust_decimal::Decimal;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// A judged share, ready for `submissions`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareRecord {
    pub id: Uuid,
    /// Microseconds since the Unix epoch (the judged instant; part of the unique key).
    pub at_us: i64,
    pub connection_id: u64,
    /// The full login ("alice.rig1").
    pub worker: Arc<str>,
    pub pool: Arc<str>,
    pub job_id: CompactString,
    pub extranonce1: CompactString,
    pub extranonce2: CompactString,
    pub ntime: CompactString,
    pub nonce: CompactString,
    pub version: Option<CompactString>,
    pub accepted: bool,
    pub reject_reason: Option<String>,
    pub difficulty: Decimal,
    pub block_hash: Option<String>,
}

/// A worker authorized on a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRecord {
    pub at_us: i64,
    pub connection_id: u64,
    pub worker: String,
    pub pool: String,
    pub remote: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// A connection (and the worker it carried) ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DisconnectRecord {
    pub at_us: i64,
    pub connection_id: u64,
    pub worker: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Share(ShareRecord),
    Connect(ConnectRecord),
    Disconnect(DisconnectRecord),
}

impl Record {
    pub fn at_us(&self) -> i64 {
        match self {
            Record::Share(s) => s.at_us,
            Record::Connect(c) => c.at_us,
            Record::Disconnect(d) => d.at_us,
        }
    }
}

/// Microseconds since the epoch (0 before it).
pub fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `s` without NUL bytes and cut to at most `max` characters (on a character boundary).
pub fn fit(s: &str, max: usize) -> String {
    fit_owned(s.to_owned(), max)
}

/// [`fit`] for a string the caller gives away (a `String`, a `CompactString`, an
/// `Arc<str>`): kept as it is when it already fits, so a share's fields move into its record.
pub fn fit_owned<T: AsRef<str> + for<'a> From<&'a str>>(s: T, max: usize) -> T {
    let r = s.as_ref();
    // The usual case, a short clean string: at most `max` bytes is at most `max` characters.
    if r.len() <= max && !r.contains('\0') {
        return s;
    }
    let out: String = r.chars().filter(|c| *c != '\0').take(max).collect();
    T::from(out.as_str())
}

/// The miner of a login: the part before the first dot ("alice.rig1" → "alice").
pub fn miner_of(worker: &str) -> &str {
    match worker.split_once('.') {
        Some((m, _)) if !m.is_empty() => m,
        _ => worker,
    }
}

/// Turns events into records. `pool_hint` names the pool a newly authorized worker is
/// credited to (the events do not say; it follows the pool of the latest share).
pub struct Recorder {
    pool_hint: String,
}

impl Recorder {
    pub fn new(default_pool: impl Into<String>) -> Self {
        Self {
            pool_hint: default_pool.into(),
        }
    }

    /// `None` for events that store nothing (a connection that has not authorized).
    pub fn record(&mut self, event: Event) -> Option<Record> {
        match event {
            Event::Share(s) => {
                if *s.pool != *self.pool_hint {
                    self.pool_hint = s.pool.to_string();
                }
                Some(Record::Share(share_record(s)))
            }
            Event::Connection(ConnectionEvent::Connected { .. }) => None,
            Event::Connection(ConnectionEvent::Authorized {
                at,
                connection_id,
                worker,
                pool,
                user_agent,
                remote,
            }) => Some(Record::Connect(ConnectRecord {
                at_us: micros(at),
                connection_id,
                worker: fit(&worker, 255),
                pool: fit(
                    if pool.is_empty() {
                        &self.pool_hint
                    } else {
                        &pool
                    },
                    255,
                ),
                remote: Some(remote.ip()),
                user_agent: user_agent.map(|u| fit(&u, 255)),
            })),
            Event::Connection(ConnectionEvent::Disconnected {
                at,
                connection_id,
                worker,
                reason,
            }) => worker.map(|w| {
                Record::Disconnect(DisconnectRecord {
                    at_us: micros(at),
                    connection_id,
                    worker: fit(&w, 255),
                    reason: fit(&reason, 255),
                })
            }),
        }
    }
}

fn share_record(s: ShareEvent) -> ShareRecord {
    let at_us = micros(s.at);
    let secs = u64::try_from(at_us.div_euclid(1_000_000)).unwrap_or(0);
    let nanos = u32::try_from(at_us.rem_euclid(1_000_000) * 1000).unwrap_or(0);
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos));
    ShareRecord {
        id,
        at_us,
        connection_id: s.connection_id,
        worker: fit_owned(s.worker, 255),
        pool: fit_owned(s.pool, 255),
        job_id: fit_owned(s.job_id, 64),
        extranonce1: fit_owned(s.extranonce1, 16),
        extranonce2: fit_owned(s.extranonce2, 32),
        ntime: fit_owned(s.ntime, 8),
        nonce: fit_owned(s.nonce, 8),
        version: s.version.map(|v| fit_owned(v, 8)),
        accepted: s.accepted,
        reject_reason: s.reject_reason.map(|r| fit(r, 255)),
        difficulty: fit_difficulty(s.difficulty),
        block_hash: s.block_hash.map(|h| fit_owned(h, 64)),
    }
}

/// DECIMAL(20,8): 8 decimals (rounded down, never credited more), at most 12 integer digits
/// (a larger value is stored as the column's largest, 999999999999.99999999).
fn fit_difficulty(d: Decimal) -> Decimal {
    let max = Decimal::from_i128_with_scale(99_999_999_999_999_999_999, 8);
    d.round_dp_with_strategy(8, rust_decimal::RoundingStrategy::ToZero)
        .clamp(Decimal::ZERO, max)
}

// ---------------------------------------------------------------------------------------------
// Binary form (spool payload). Little-endian; strings u16 length + UTF-8; options a 0/1 tag.

const TAG_SHARE: u8 = 1;
const TAG_CONNECT: u8 = 2;
const TAG_DISCONNECT: u8 = 3;

/// Append the encoding of `records` to `out`.
pub fn encode(records: &[Record], out: &mut Vec<u8>) {
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        match r {
            Record::Share(s) => {
                out.push(TAG_SHARE);
                out.extend_from_slice(s.id.as_bytes());
                out.extend_from_slice(&s.at_us.to_le_bytes());
                out.extend_from_slice(&s.connection_id.to_le_bytes());
                for t in [
                    &*s.worker,
                    &*s.pool,
                    &s.job_id,
                    &s.extranonce1,
                    &s.extranonce2,
                    &s.ntime,
                    &s.nonce,
                ] {
                    put_str(out, t);
                }
                put_opt(out, s.version.as_deref());
                out.push(u8::from(s.accepted));
                put_opt(out, s.reject_reason.as_deref());
                out.extend_from_slice(&s.difficulty.serialize());
                put_opt(out, s.block_hash.as_deref());
            }
            Record::Connect(c) => {
                out.push(TAG_CONNECT);
                out.extend_from_slice(&c.at_us.to_le_bytes());
                out.extend_from_slice(&c.connection_id.to_le_bytes());
                put_str(out, &c.worker);
                put_str(out, &c.pool);
                put_opt(out, c.remote.map(|ip| ip.to_string()).as_deref());
                put_opt(out, c.user_agent.as_deref());
            }
            Record::Disconnect(d) => {
                out.push(TAG_DISCONNECT);
                out.extend_from_slice(&d.at_us.to_le_bytes());
                out.extend_from_slice(&d.connection_id.to_le_bytes());
                put_str(out, &d.worker);
                put_str(out, &d.reason);
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad spool record: {0}")]
pub struct DecodeError(pub &'static str);

/// Decode a payload written by [`encode`].
pub fn decode(mut b: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let r = &mut b;
    let n = take_u32(r)? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let tag = take(r, 1)?[0];
        out.push(match tag {
            TAG_SHARE => {
                let id = Uuid::from_slice(take(r, 16)?).map_err(|_| DecodeError("uuid"))?;
                let at_us = take_i64(r)?;
                let connection_id = take_i64(r)? as u64;
                let worker = take_str(r)?.into();
                let pool = take_str(r)?.into();
                let job_id = take_str(r)?.into();
                let extranonce1 = take_str(r)?.into();
                let extranonce2 = take_str(r)?.into();
                let ntime = take_str(r)?.into();
                let nonce = take_str(r)?.into();
                let version = take_opt(r)?.map(Into::into);
                let accepted = take(r, 1)?[0] != 0;
                let reject_reason = take_opt(r)?;
                let mut dec = [0u8; 16];
                dec.copy_from_slice(take(r, 16)?);
                let difficulty = Decimal::deserialize(dec);
                let block_hash = take_opt(r)?;
                Record::Share(ShareRecord {
                    id,
                    at_us,
                    connection_id,
                    worker,
                    pool,
                    job_id,
                    extranonce1,
                    extranonce2,
                    ntime,
                    nonce,
                    version,
                    accepted,
                    reject_reason,
                    difficulty,
                    block_hash,
                })
            }
            TAG_CONNECT => Record::Connect(ConnectRecord {
                at_us: take_i64(r)?,
                connection_id: take_i64(r)? as u64,
                worker: take_str(r)?,
                pool: take_str(r)?,
                remote: take_opt(r)?.and_then(|s| s.parse().ok()),
                user_agent: take_opt(r)?,
            }),
            TAG_DISCONNECT => Record::Disconnect(DisconnectRecord {
                at_us: take_i64(r)?,
                connection_id: take_i64(r)? as u64,
                worker: take_str(r)?,
                reason: take_str(r)?,
            }),
            _ => return Err(DecodeError("unknown record tag")),
        });
    }
    if !b.is_empty() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if b.len() < n {
        return Err(DecodeError("truncated"));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn take_u32(b: &mut &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")))
}

fn take_i64(b: &mut &[u8]) -> Result<i64, DecodeError> {
    Ok(i64::from_le_bytes(take(b, 8)?.try_into().expect("8 bytes")))
}

fn take_str(b: &mut &[u8]) -> Result<String, DecodeError> {
    let n = u16::from_le_bytes(take(b, 2)?.try_into().expect("2 bytes")) as usize;
    String::from_utf8(take(b, n)?.to_vec()).map_err(|_| DecodeError("utf-8"))
}

fn take_opt(b: &mut &[u8]) -> Result<Option<String>, DecodeError> {
    match take(b, 1)?[0] {
        0 => Ok(None),
        1 => take_str(b).map(Some),
        _ => Err(DecodeError("option tag")),
    }
}
