//! A `mining.notify` job and the 80-byte block header a share commits to.
//!
//! Byte order: coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2;
//! root = sha256d(coinbase), then root = sha256d(root ‖ branch) for each branch as given;
//! header = LE32(version) ‖ prevhash (each 4-byte word of the notify hex byte-reversed) ‖ root
//! ‖ LE32(ntime) ‖ LE32(nbits) ‖ LE32(nonce), the u32 fields read from big-endian hex.

use crate::message::{MessageError, hex_u32};
use crate::target::Target;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One unit of work as a pool sent it (`mining.notify` params), decoded once.
#[derive(Clone)]
pub struct Job {
    pub job_id: String,
    /// The prevhash as the notify carries it (hex text).
    pub prevhash_hex: String,
    /// The prevhash in header order (each 4-byte word of the notify bytes reversed).
    pub prevhash: [u8; 32],
    pub coinb1: Vec<u8>,
    pub coinb2: Vec<u8>,
    pub merkle_branch: Vec<[u8; 32]>,
    pub version: u32,
    pub nbits: u32,
    pub ntime: u32,
    pub clean_jobs: bool,
    /// SHA-256 state after absorbing `coinb1`: shares only hash what follows it.
    coinb1_state: Sha256,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("job_id", &self.job_id)
            .field("prevhash", &self.prevhash_hex)
            .field("version", &format_args!("{:08x}", self.version))
            .field("nbits", &format_args!("{:08x}", self.nbits))
            .field("ntime", &format_args!("{:08x}", self.ntime))
            .field("branches", &self.merkle_branch.len())
            .field("clean_jobs", &self.clean_jobs)
            .finish()
    }
}

impl Job {
    /// Build from decoded fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: String,
        prevhash_hex: &str,
        coinb1: Vec<u8>,
        coinb2: Vec<u8>,
        merkle_branch: Vec<[u8; 32]>,
        version: u32,
        nbits: u32,
        ntime: u32,
        clean_jobs: bool,
    ) -> Result<Self, MessageError> {
        let raw: [u8; 32] = hex::decode(prevhash_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| MessageError::invalid("prevhash", "32 bytes of hex"))?;
        let mut coinb1_state = Sha256::new();
        coinb1_state.update(&coinb1);
        Ok(Self {
            job_id,
            prevhash_hex: prevhash_hex.to_ascii_lowercase(),
            prevhash: swap_words(&raw),
            coinb1,
            coinb2,
            merkle_branch,
            version,
            nbits,
            ntime,
            clean_jobs,
            coinb1_state,
        })
    }

    /// Decode the params array of a `mining.notify`.
    pub fn from_notify_params(params: &Value) -> Result<Self, MessageError> {
        let p = params
            .as_array()
            .ok_or_else(|| MessageError::invalid("params", "an array"))?;
        if p.len() < 9 {
            return Err(MessageError::invalid("params", "9 notify fields"));
        }
        let s = |i: usize, name: &'static str| {
            p[i].as_str()
                .ok_or_else(|| MessageError::invalid(name, "a string"))
        };
        let hexbytes = |i: usize, name: &'static str| {
            hex::decode(s(i, name)?).map_err(|_| MessageError::invalid(name, "hex"))
        };
        let job_id = match &p[0] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(MessageError::invalid("job_id", "a string")),
        };
        let branches = p[4]
            .as_array()
            .ok_or_else(|| MessageError::invalid("merkle_branch", "an array"))?
            .iter()
            .map(|b| {
                b.as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    .ok_or_else(|| MessageError::invalid("merkle_branch", "32-byte hex hashes"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let clean = p[8]
            .as_bool()
            .ok_or_else(|| MessageError::invalid("clean_jobs", "a boolean"))?;
        Job::new(
            job_id,
            s(1, "prevhash")?,
            hexbytes(2, "coinb1")?,
            hexbytes(3, "coinb2")?,
            branches,
            hex_u32(s(5, "version")?, "version")?,
            hex_u32(s(6, "nbits")?, "nbits")?,
            hex_u32(s(7, "ntime")?, "ntime")?,
            clean,
        )
    }

    /// The notify params for this job with another job id and coinbase parts (a proxy folds
    /// the upstream extranonce1 into `coinb1` and pads `coinb2`).
    pub fn notify_params(&self, job_id: &str, coinb1: &[u8], coinb2: &[u8], clean: bool) -> Value {
        Value::Array(vec![
            Value::String(job_id.to_string()),
            Value::String(self.prevhash_hex.clone()),
            Value::String(hex::encode(coinb1)),
            Value::String(hex::encode(coinb2)),
            Value::Array(
                self.merkle_branch
                    .iter()
                    .map(|b| Value::String(hex::encode(b)))
                    .collect(),
            ),
            Value::String(format!("{:08x}", self.version)),
            Value::String(format!("{:08x}", self.nbits)),
            Value::String(format!("{:08x}", self.ntime)),
            Value::Bool(clean),
        ])
    }

    /// The network (block) target from `nbits`.
    pub fn network_target(&self) -> Target {
        Target::from_nbits(self.nbits)
    }

    /// Merkle root for a coinbase of `coinb1 ‖ parts… ‖ coinb2`.
    pub fn merkle_root(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = self.coinb1_state.clone();
        for part in parts {
            h.update(part);
        }
        h.update(&self.coinb2);
        let mut root: [u8; 32] = Sha256::digest(h.finalize()).into();
        let mut buf = [0u8; 64];
        for branch in &self.merkle_branch {
            buf[..32].copy_from_slice(&root);
            buf[32..].copy_from_slice(branch);
            root = crate::sha256d(&buf);
        }
        root
    }

    /// The 80-byte header of a share.
    pub fn header(&self, root: &[u8; 32], version: u32, ntime: u32, nonce: u32) -> [u8; 80] {
        build_header(version, &self.prevhash, root, ntime, self.nbits, nonce)
    }
}

/// Assemble an 80-byte block header; `prevhash` and `root` in header (internal) byte order.
pub fn build_header(
    version: u32,
    prevhash: &[u8; 32],
    root: &[u8; 32],
    ntime: u32,
    nbits: u32,
    nonce: u32,
) -> [u8; 80] {
    let mut h = [0u8; 80];
    h[0..4].copy_from_slice(&version.to_le_bytes());
    h[4..36].copy_from_slice(prevhash);
    h[36..68].copy_from_slice(root);
    h[68..72].copy_from_slice(&ntime.to_le_bytes());
    h[72..76].copy_from_slice(&nbits.to_le_bytes());
    h[76..80].copy_from_slice(&nonce.to_le_bytes());
    h
}

/// Reverse the bytes of each 4-byte word (Stratum's prevhash encoding ↔ header order).
pub fn swap_words(b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, i) in out.chunks_exact_mut(4).zip(b.chunks_exact(4)) {
        o.copy_from_slice(&[i[3], i[2], i[1], i[0]]);
    }
    out
}
