//! Share maths, implemented independently of the proxy so the two cross-check each other.
//!
//! * coinbase = `coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2`
//! * merkle root = `sha256d(coinbase)`, then `root = sha256d(root ‖ branch)` for each branch
//! * header = `LE32(version) ‖ prevhash_header ‖ root ‖ LE32(ntime) ‖ LE32(nbits) ‖ LE32(nonce)`
//!   where the notify's prevhash has the bytes of each 4-byte word reversed
//! * hash = `sha256d(header)` read as a little-endian 256-bit integer; a share meets
//!   difficulty `d` iff `hash ≤ floor(0xffff·2^208 / d)`.
//!
//! Difficulties are exact rationals parsed from their decimal text (`1e-7` is exactly
//! `1/10^7`); `f64` is only used for display and for the wire.

use std::fmt;
use std::str::FromStr;

use primitive_types::{U256, U512};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `sha256(sha256(data))`.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}

/// Display form of a hash (the byte-reversed hex that block explorers show).
pub fn hash_display_hex(hash: &[u8; 32]) -> String {
    let mut rev = *hash;
    rev.reverse();
    hex::encode(rev)
}

/// The hash read as a little-endian 256-bit integer.
pub fn hash_to_u256(hash: &[u8; 32]) -> U256 {
    U256::from_little_endian(hash)
}

/// Reverse the bytes of each 4-byte word (Stratum prevhash ⇄ header prevhash).
pub fn swap_words(bytes: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, i) in out.chunks_exact_mut(4).zip(bytes.chunks_exact(4)) {
        o.copy_from_slice(&[i[3], i[2], i[1], i[0]]);
    }
    out
}

/// Parse an 8-hex-digit big-endian u32 (version, ntime, nbits, nonce on the wire).
pub fn parse_u32_hex(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Format a u32 as 8 lowercase hex digits (big-endian), as Stratum sends it.
pub fn u32_hex(v: u32) -> String {
    format!("{v:08x}")
}

/// Merkle root from the coinbase parts and the branch list (all raw bytes as given).
pub fn merkle_root(
    coinb1: &[u8],
    extranonce1: &[u8],
    extranonce2: &[u8],
    coinb2: &[u8],
    branches: &[[u8; 32]],
) -> [u8; 32] {
    let mut coinbase =
        Vec::with_capacity(coinb1.len() + extranonce1.len() + extranonce2.len() + coinb2.len());
    coinbase.extend_from_slice(coinb1);
    coinbase.extend_from_slice(extranonce1);
    coinbase.extend_from_slice(extranonce2);
    coinbase.extend_from_slice(coinb2);
    let mut root = sha256d(&coinbase);
    let mut buf = [0u8; 64];
    for b in branches {
        buf[..32].copy_from_slice(&root);
        buf[32..].copy_from_slice(b);
        root = sha256d(&buf);
    }
    root
}

/// Build the 80-byte header. `prevhash_header` is already in header byte order
/// (see [`swap_words`]).
pub fn build_header(
    version: u32,
    prevhash_header: &[u8; 32],
    merkle_root: &[u8; 32],
    ntime: u32,
    nbits: u32,
    nonce: u32,
) -> [u8; 80] {
    let mut h = [0u8; 80];
    h[0..4].copy_from_slice(&version.to_le_bytes());
    h[4..36].copy_from_slice(prevhash_header);
    h[36..68].copy_from_slice(merkle_root);
    h[68..72].copy_from_slice(&ntime.to_le_bytes());
    h[72..76].copy_from_slice(&nbits.to_le_bytes());
    h[76..80].copy_from_slice(&nonce.to_le_bytes());
    h
}

/// `0xffff · 2^208`, the difficulty-1 target.
pub fn diff1_target() -> U256 {
    U256::from(0xffffu64) << 208
}

/// Network target from compact `nbits`. Negative or zero mantissas give 0; overflow
/// saturates at `U256::MAX`.
pub fn nbits_to_target(nbits: u32) -> U256 {
    let exp = nbits >> 24;
    let mantissa = nbits & 0x007f_ffff;
    if nbits & 0x0080_0000 != 0 || mantissa == 0 {
        return U256::zero();
    }
    let m = U256::from(mantissa);
    if exp <= 3 {
        m >> (8 * (3 - exp) as usize)
    } else {
        let shift = 8 * (exp - 3) as usize;
        if m.bits() + shift > 256 {
            U256::MAX
        } else {
            m << shift
        }
    }
}

/// Error from parsing a difficulty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DifficultyError(pub String);

impl fmt::Display for DifficultyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid difficulty: {}", self.0)
    }
}

impl std::error::Error for DifficultyError {}

/// A positive difficulty held as an exact rational `num / den`.
#[derive(Clone, PartialEq, Eq)]
pub struct Difficulty {
    num: U256,
    den: U256,
    text: String,
}

impl fmt::Debug for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Difficulty({})", self.text)
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MAX_DIGITS: usize = 38;
const MAX_EXP10: i32 = 38;

impl Difficulty {
    /// Difficulty 1.
    pub fn one() -> Self {
        Self {
            num: U256::one(),
            den: U256::one(),
            text: "1".into(),
        }
    }

    /// Parse decimal text: `1`, `0.001`, `1e-7`, `2.5E3`. Must be finite and > 0.
    pub fn parse(text: &str) -> Result<Self, DifficultyError> {
        let err = || DifficultyError(text.chars().take(64).collect());
        let t = text.trim();
        let (mant, exp) = match t.find(['e', 'E']) {
            Some(i) => {
                let e: i32 = t[i + 1..].parse().map_err(|_| err())?;
                (&t[..i], e)
            }
            None => (t, 0),
        };
        let mant = mant.strip_prefix('+').unwrap_or(mant);
        let (int_part, frac_part) = match mant.find('.') {
            Some(i) => (&mant[..i], &mant[i + 1..]),
            None => (mant, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty())
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let digits: String = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Err(err()); // zero
        }
        // drop trailing zeros into the exponent so long zero tails do not overflow
        let trimmed = digits.trim_end_matches('0');
        let exp10 = i64::from(exp) - frac_part.len() as i64 + (digits.len() - trimmed.len()) as i64;
        if trimmed.len() > MAX_DIGITS || exp10.abs() > i64::from(MAX_EXP10) {
            return Err(err());
        }
        let m = U256::from_dec_str(trimmed).map_err(|_| err())?;
        let pow = U256::from(10u64).pow(U256::from(exp10.unsigned_abs()));
        let (num, den) = if exp10 >= 0 {
            (m.checked_mul(pow).ok_or_else(err)?, U256::one())
        } else {
            (m, pow)
        };
        let as_f = t.parse::<f64>().ok().filter(|f| f.is_finite() && *f > 0.0);
        let text = match as_f {
            Some(f) => format!("{f}"),
            None => t.to_string(),
        };
        Ok(Self { num, den, text })
    }

    /// Difficulty from a float, through its shortest round-trip decimal text
    /// (so `1e-7` becomes exactly `1/10^7`).
    pub fn from_f64(d: f64) -> Result<Self, DifficultyError> {
        if !d.is_finite() || d <= 0.0 {
            return Err(DifficultyError(d.to_string()));
        }
        Self::parse(&format!("{d}"))
    }

    /// Difficulty from a JSON number (or a numeric string).
    pub fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => Self::parse(&n.to_string()).ok(),
            Value::String(s) => Self::parse(s).ok(),
            _ => None,
        }
    }

    /// The value for the wire: an integer when it is one, otherwise an `f64`.
    pub fn to_json(&self) -> Value {
        if self.den == U256::one() && self.num <= U256::from(u64::MAX) {
            Value::from(self.num.low_u64())
        } else {
            Value::from(self.as_f64())
        }
    }

    /// Re-derive the difficulty from what [`Self::to_json`] sends, so a sender validates
    /// against exactly the value a receiver will parse.
    pub fn wire_normalized(&self) -> Self {
        Self::from_json(&self.to_json()).unwrap_or_else(|| self.clone())
    }

    /// Approximate value, for display and statistics only.
    pub fn as_f64(&self) -> f64 {
        self.text.parse().unwrap_or(f64::NAN)
    }

    /// `floor(0xffff·2^208 · den / num)`, saturated at `U256::MAX`.
    pub fn target(&self) -> U256 {
        let n: U512 = diff1_target().full_mul(self.den);
        let q = n / U512::from(self.num);
        U256::try_from(q).unwrap_or(U256::MAX)
    }

    /// Whether a header hash meets this difficulty.
    pub fn is_met_by(&self, hash: &[u8; 32]) -> bool {
        hash_to_u256(hash) <= self.target()
    }

    /// Expected number of hashes to find one share (≈ d·2^32), for planning only.
    pub fn expected_hashes(&self) -> f64 {
        self.as_f64() * 4_294_967_296.0 * (65536.0 / 65535.0)
    }
}

impl FromStr for Difficulty {
    type Err = DifficultyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<f64> for Difficulty {
    type Error = DifficultyError;
    fn try_from(d: f64) -> Result<Self, Self::Error> {
        Self::from_f64(d)
    }
}

/// Difficulty of a hash: `0xffff·2^208 / hash` (approximate, for display).
pub fn hash_difficulty(hash: &[u8; 32]) -> f64 {
    let h = hash_to_u256(hash);
    if h.is_zero() {
        return f64::INFINITY;
    }
    u256_to_f64(diff1_target()) / u256_to_f64(h)
}

fn u256_to_f64(v: U256) -> f64 {
    let b = v.to_big_endian();
    b.iter().fold(0.0, |acc, &x| acc * 256.0 + f64::from(x))
}

/// A parsed `mining.notify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub job_id: String,
    /// Prevhash exactly as the notify carries it (hex).
    pub prevhash_hex: String,
    /// Prevhash in header byte order.
    pub prevhash_header: [u8; 32],
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    pub clean_jobs: bool,
}

/// A share found by [`Job::search`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundShare {
    pub extranonce2: Vec<u8>,
    pub ntime: u32,
    pub nonce: u32,
    /// Version bits to submit as the 6th param (only the masked bits), if rolling.
    pub version_bits: Option<u32>,
    /// Full header version used.
    pub version: u32,
    pub hash: [u8; 32],
}

impl Job {
    /// Parse `mining.notify` params:
    /// `[job_id, prevhash, coinb1, coinb2, [branches], version, nbits, ntime, clean_jobs]`.
    pub fn from_notify_params(params: &Value) -> Result<Self, String> {
        let p = params.as_array().ok_or("notify params not an array")?;
        if p.len() < 9 {
            return Err(format!("notify has {} params, expected 9", p.len()));
        }
        let s = |i: usize, name: &str| -> Result<&str, String> {
            p[i].as_str()
                .ok_or_else(|| format!("notify {name} not a string"))
        };
        let hexv = |i: usize, name: &str| -> Result<Vec<u8>, String> {
            hex::decode(s(i, name)?).map_err(|e| format!("notify {name}: {e}"))
        };
        let prevhash_hex = s(1, "prevhash")?.to_string();
        let prev: [u8; 32] = hex::decode(&prevhash_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or("notify prevhash is not 32 bytes of hex")?;
        let mut merkle_branch = Vec::new();
        for b in p[4].as_array().ok_or("notify merkle_branch not an array")? {
            let v: [u8; 32] = b
                .as_str()
                .and_then(|s| hex::decode(s).ok())
                .and_then(|v| v.try_into().ok())
                .ok_or("notify merkle branch is not 32 bytes of hex")?;
            merkle_branch.push(v);
        }
        let u = |i: usize, name: &str| -> Result<u32, String> {
            parse_u32_hex(s(i, name)?).ok_or_else(|| format!("notify {name} not 8 hex digits"))
        };
        Ok(Self {
            job_id: match &p[0] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            prevhash_hex,
            prevhash_header: swap_words(&prev),
            coinb1: hexv(2, "coinb1")?,
            coinb2: hexv(3, "coinb2")?,
            merkle_branch,
            version: u(5, "version")?,
            nbits: u(6, "nbits")?,
            ntime: u(7, "ntime")?,
            clean_jobs: p[8].as_bool().unwrap_or(false),
        })
    }

    /// The notify params for this job.
    pub fn to_notify_params(&self) -> Value {
        Value::Array(vec![
            Value::from(self.job_id.clone()),
            Value::from(self.prevhash_hex.clone()),
            Value::from(hex::encode(&self.coinb1)),
            Value::from(hex::encode(&self.coinb2)),
            Value::Array(
                self.merkle_branch
                    .iter()
                    .map(|b| Value::from(hex::encode(b)))
                    .collect(),
            ),
            Value::from(u32_hex(self.version)),
            Value::from(u32_hex(self.nbits)),
            Value::from(u32_hex(self.ntime)),
            Value::from(self.clean_jobs),
        ])
    }

    pub fn merkle_root(&self, en1: &[u8], en2: &[u8]) -> [u8; 32] {
        merkle_root(&self.coinb1, en1, en2, &self.coinb2, &self.merkle_branch)
    }

    /// Full header for a share.
    pub fn header(&self, en1: &[u8], en2: &[u8], version: u32, ntime: u32, nonce: u32) -> [u8; 80] {
        build_header(
            version,
            &self.prevhash_header,
            &self.merkle_root(en1, en2),
            ntime,
            self.nbits,
            nonce,
        )
    }

    /// Header hash for a share.
    pub fn share_hash(
        &self,
        en1: &[u8],
        en2: &[u8],
        version: u32,
        ntime: u32,
        nonce: u32,
    ) -> [u8; 32] {
        sha256d(&self.header(en1, en2, version, ntime, nonce))
    }

    /// Search nonces `start_nonce..start_nonce+max_hashes` (wrapping) for a header whose
    /// hash is ≤ `target`, with the given extranonce2 and version bits.
    /// Returns the share found (if any) and the number of hashes done.
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        en1: &[u8],
        en2: &[u8],
        version_bits: Option<(u32, u32)>,
        ntime: u32,
        target: &U256,
        start_nonce: u32,
        max_hashes: u32,
    ) -> (Option<FoundShare>, u32) {
        let version = match version_bits {
            Some((bits, mask)) => (self.version & !mask) | (bits & mask),
            None => self.version,
        };
        let root = self.merkle_root(en1, en2);
        let header = build_header(version, &self.prevhash_header, &root, ntime, self.nbits, 0);
        let hasher = HeaderHasher::new(&header);
        let target_le = target.to_little_endian();
        let mut nonce = start_nonce;
        for i in 0..max_hashes {
            let hash = hasher.hash(nonce);
            if le_le(&hash, &target_le) {
                return (
                    Some(FoundShare {
                        extranonce2: en2.to_vec(),
                        ntime,
                        nonce,
                        version_bits: version_bits.map(|(b, m)| b & m),
                        version,
                        hash,
                    }),
                    i + 1,
                );
            }
            nonce = nonce.wrapping_add(1);
        }
        (None, max_hashes)
    }
}

/// `a ≤ b` for two 32-byte little-endian integers.
fn le_le(a: &[u8; 32], b: &[u8; 32]) -> bool {
    for i in (0..32).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    true
}

const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Fast sha256d of an 80-byte header that varies only in its nonce (midstate reuse).
#[derive(Clone)]
pub struct HeaderHasher {
    midstate: [u32; 8],
    tail: [u8; 64],
}

impl HeaderHasher {
    pub fn new(header: &[u8; 80]) -> Self {
        let mut midstate = SHA256_IV;
        let mut first = [0u8; 64];
        first.copy_from_slice(&header[..64]);
        sha2::block_api::compress256(&mut midstate, &[first]);
        let mut tail = [0u8; 64];
        tail[..16].copy_from_slice(&header[64..80]);
        tail[16] = 0x80;
        tail[56..64].copy_from_slice(&(80u64 * 8).to_be_bytes());
        Self { midstate, tail }
    }

    /// sha256d of the header with this nonce (raw digest bytes).
    pub fn hash(&self, nonce: u32) -> [u8; 32] {
        let mut block = self.tail;
        block[12..16].copy_from_slice(&nonce.to_le_bytes());
        let mut st = self.midstate;
        sha2::block_api::compress256(&mut st, &[block]);
        let mut second = [0u8; 64];
        for (i, w) in st.iter().enumerate() {
            second[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        second[32] = 0x80;
        second[56..64].copy_from_slice(&(32u64 * 8).to_be_bytes());
        let mut st2 = SHA256_IV;
        sha2::block_api::compress256(&mut st2, &[second]);
        let mut out = [0u8; 32];
        for (i, w) in st2.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difficulty_parsing_is_exact() {
        let d = Difficulty::parse("1e-7").unwrap();
        assert_eq!(d.num, U256::one());
        assert_eq!(d.den, U256::from(10_000_000u64));
        assert_eq!(Difficulty::parse("0.0000001").unwrap(), d);
        assert_eq!(Difficulty::from_f64(1e-7).unwrap(), d);
        assert_eq!(Difficulty::parse("1").unwrap().target(), diff1_target());
        assert_eq!(
            Difficulty::parse("2").unwrap().target(),
            diff1_target() / U256::from(2)
        );
        assert_eq!(
            Difficulty::parse("0.5").unwrap().target(),
            diff1_target() * U256::from(2)
        );
        assert_eq!(
            Difficulty::parse("1e-7").unwrap().target(),
            diff1_target() * U256::from(10_000_000u64)
        );
        // 3 does not divide 2^224·0xffff exactly: floor
        let t3 = Difficulty::parse("3").unwrap().target();
        assert_eq!(t3, diff1_target() / U256::from(3));
        assert_eq!(Difficulty::parse("1e-40").unwrap_err().0, "1e-40");
        for bad in ["", "0", "-1", "abc", "1e", ".", "0.000", "NaN", "inf"] {
            assert!(Difficulty::parse(bad).is_err(), "{bad}");
        }
        // tiny difficulty saturates
        assert_eq!(Difficulty::parse("1e-30").unwrap().target(), U256::MAX);
        assert_eq!(
            Difficulty::parse("65536").unwrap().to_json(),
            Value::from(65536u64)
        );
        assert_eq!(
            Difficulty::from_json(&serde_json::json!(0.001)).unwrap(),
            Difficulty::parse("0.001").unwrap()
        );
    }

    #[test]
    fn nbits_targets() {
        assert_eq!(nbits_to_target(0x1d00ffff), diff1_target());
        assert_eq!(
            nbits_to_target(0x207fffff),
            U256::from(0x7fffffu64) << (8 * (0x20 - 3))
        );
        assert_eq!(nbits_to_target(0x03123456), U256::from(0x123456u64));
        assert_eq!(nbits_to_target(0x02123456), U256::from(0x1234u64));
        assert_eq!(nbits_to_target(0x04923456), U256::zero());
        assert_eq!(nbits_to_target(0xff7fffff), U256::MAX);
    }

    #[test]
    fn midstate_hasher_matches_plain_sha256d() {
        let mut header = [0u8; 80];
        for (i, b) in header.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let h = HeaderHasher::new(&header);
        for nonce in [0u32, 1, 0xdeadbeef, u32::MAX] {
            let mut hd = header;
            hd[76..80].copy_from_slice(&nonce.to_le_bytes());
            assert_eq!(h.hash(nonce), sha256d(&hd));
        }
    }

    #[test]
    fn notify_roundtrip() {
        let params = serde_json::json!([
            "j1",
            "00000000000000000000000000000000000000000000000000000000000000ff",
            "0102",
            "0304",
            ["11".repeat(32)],
            "20000000",
            "1d00ffff",
            "5f5e1000",
            true
        ]);
        let job = Job::from_notify_params(&params).unwrap();
        assert_eq!(job.prevhash_header[28..32], [0xff, 0, 0, 0]);
        assert_eq!(job.to_notify_params(), params);
        assert!(Job::from_notify_params(&serde_json::json!([1, 2])).is_err());
        assert!(Job::from_notify_params(&serde_json::json!("x")).is_err());
    }
}

/// A `mining.submit` as sent: the hex fields as text.
#[derive(Debug, Clone, Copy)]
pub struct Submitted<'a> {
    pub extranonce2: &'a str,
    pub ntime: &'a str,
    pub nonce: &'a str,
    pub version_bits: Option<&'a str>,
}

/// What a pool judges a connection's shares with.
#[derive(Debug, Clone, Copy)]
pub struct PoolRules {
    pub extranonce2_size: usize,
    /// Negotiated BIP310 mask (0: none).
    pub version_mask: u32,
    /// Seconds ntime may run ahead of the job's.
    pub ntime_window: u32,
}

/// A share that hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    /// The header's version, rolled bits applied.
    pub version: u32,
    pub hash: [u8; 32],
    /// Whether the hash meets the difficulty it was judged at.
    pub meets: bool,
}

/// A share refused before hashing: the Stratum error code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub i64, pub &'static str);

/// Judge a share as this pool does (everything but the job lookup and duplicates): sizes and
/// hex, the ntime window, version bits within the mask, then the hash against `difficulty`.
/// Written apart from the proxy's own code so that each checks the other.
pub fn judge(
    job: &Job,
    extranonce1: &[u8],
    s: &Submitted<'_>,
    rules: &PoolRules,
    difficulty: &Difficulty,
) -> Result<Judged, Refused> {
    const OTHER: i64 = 20;
    let Some(en2) = hex::decode(s.extranonce2)
        .ok()
        .filter(|v| v.len() == rules.extranonce2_size)
    else {
        return Err(Refused(OTHER, "Incorrect size of extranonce2"));
    };
    let ntime = parse_u32_hex(s.ntime).ok_or(Refused(OTHER, "Malformed ntime"))?;
    let nonce = parse_u32_hex(s.nonce).ok_or(Refused(OTHER, "Malformed nonce"))?;
    if ntime < job.ntime || u64::from(ntime) > u64::from(job.ntime) + u64::from(rules.ntime_window)
    {
        return Err(Refused(OTHER, "ntime out of range"));
    }
    let mask = rules.version_mask;
    let version = match s.version_bits {
        None => job.version,
        Some(v) => {
            let bits = parse_u32_hex(v).ok_or(Refused(OTHER, "Malformed version bits"))?;
            if bits & !mask != 0 {
                return Err(Refused(OTHER, "Version bits outside the negotiated mask"));
            }
            (job.version & !mask) | (bits & mask)
        }
    };
    let hash = job.share_hash(extranonce1, &en2, version, ntime, nonce);
    Ok(Judged {
        version,
        hash,
        meets: hash_to_u256(&hash) <= difficulty.target(),
    })
}
