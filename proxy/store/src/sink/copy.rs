//! PostgreSQL's binary `COPY` format for shares: the file header and one tuple per share.

use crate::record::ShareRecord;
use crate::{Error, Result};
use sqlx::Encode;
use sqlx::encode::IsNull;
use sqlx::postgres::{PgArgumentBuffer, Postgres};
use uuid::Uuid;

/// The binary `COPY` file signature.
pub(super) const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// One share as a binary `COPY` tuple: the field count, then each field as its length
/// (-1 for NULL) and its bytes in PostgreSQL's binary form, in the order of `submissions` columns the writer fills (`SHARE_COLUMNS`).
/// Text is its UTF-8 bytes as it is (no escaping in binary format); the difficulty goes
/// through sqlx's own `numeric` encoder, the one its bound parameters use.
pub(super) fn copy_row(
    out: &mut Vec<u8>,
    s: &ShareRecord,
    worker: Uuid,
    numeric: &mut PgArgumentBuffer,
) -> Result<()> {
    fn field(out: &mut Vec<u8>, v: &[u8]) {
        // Every text is cut to its column's size when the record is made, far below 2 GiB.
        let len = i32::try_from(v.len()).unwrap_or(i32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(v);
    }
    fn opt(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(v) => field(out, v.as_bytes()),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out.extend_from_slice(&13i16.to_be_bytes());
    field(out, s.id.as_bytes());
    field(out, worker.as_bytes());
    for v in [
        &s.job_id,
        &s.extranonce1,
        &s.extranonce2,
        &s.ntime,
        &s.nonce,
    ] {
        field(out, v.as_bytes());
    }
    opt(out, s.version.as_deref());
    field(out, &[u8::from(s.accepted)]);
    opt(out, s.reject_reason.as_deref());
    numeric.clear();
    // A Decimal always encodes (IsNull::No): the column is NOT NULL.
    let _: IsNull = Encode::<Postgres>::encode_by_ref(&s.difficulty, numeric)
        .map_err(|e| Error::Invalid(format!("difficulty {}: {e}", s.difficulty)))?;
    field(out, numeric);
    opt(out, s.block_hash.as_deref());
    field(out, &(s.at_us - PG_EPOCH_US).to_be_bytes());
    Ok(())
}
