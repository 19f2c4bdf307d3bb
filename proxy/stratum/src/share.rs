//! Validating a submitted share against its job: extranonce2 size, ntime window, version mask,
//! then the header hash. Targets (miner, upstream, network) are compared by the caller, which
//! knows them; duplicates are keyed by [`ShareKey`].

use crate::error::StratumError;
use crate::job::Job;
use crate::message::Submit;
use crate::target::Target;

/// Per-connection parameters a share is judged with.
#[derive(Debug, Clone, Copy)]
pub struct ShareRules {
    /// Negotiated BIP310 mask (0 when version rolling is off).
    pub version_mask: u32,
    /// How far ntime may run ahead of the job's ntime, in seconds.
    pub ntime_window: u32,
    /// The extranonce2 size the miner was given.
    pub extranonce2_size: usize,
}

/// A share that hashed: the header it commits to and its hash.
#[derive(Debug, Clone, Copy)]
pub struct HashedShare {
    pub header: [u8; 80],
    pub hash: [u8; 32],
    /// The version in the header (after applying rolled bits).
    pub version: u32,
}

impl HashedShare {
    pub fn meets(&self, target: &Target) -> bool {
        target.is_met_by(&self.hash)
    }
}

/// The rolled version, or why the submitted bits are not allowed.
pub fn rolled_version(job_version: u32, bits: Option<u32>, mask: u32) -> Result<u32, StratumError> {
    match bits {
        None => Ok(job_version),
        Some(bits) if bits & !mask != 0 => Err(StratumError::other(format!(
            "Invalid version bits {bits:08x} outside mask {mask:08x}"
        ))),
        Some(bits) => Ok((job_version & !mask) | (bits & mask)),
    }
}

/// The version bits to send a pool whose mask is now `pool_mask`, for a header with
/// `version` rolled from the job's `job_version`: `Ok(None)` sends no version parameter
/// (the pool rolls nothing and nothing was rolled), `Ok(Some(bits))` the header's bits
/// under the mask. A header that differs from the job outside the pool's mask (rolled
/// under a mask the pool has since narrowed) cannot be sent: the pool would build another
/// header from it, and that header's hash is not the one the miner found.
pub fn version_bits_for_pool(
    job_version: u32,
    version: u32,
    pool_mask: u32,
) -> Result<Option<u32>, StratumError> {
    if (version ^ job_version) & !pool_mask != 0 {
        return Err(StratumError::other(format!(
            "Invalid version bits {version:08x} outside the pool's mask {pool_mask:08x}"
        )));
    }
    Ok((pool_mask != 0).then_some(version & pool_mask))
}

/// Check the cheap rules, then build the header and hash it.
pub fn hash_share(
    job: &Job,
    extranonce1: &[u8],
    submit: &Submit,
    rules: &ShareRules,
) -> Result<HashedShare, StratumError> {
    if submit.extranonce2.len() != rules.extranonce2_size {
        return Err(StratumError::other(format!(
            "Incorrect size of extranonce2: {} bytes, expected {}",
            submit.extranonce2.len(),
            rules.extranonce2_size
        )));
    }
    if submit.ntime < job.ntime {
        return Err(StratumError::other(
            "ntime out of range: before the job's ntime",
        ));
    }
    if u64::from(submit.ntime) > u64::from(job.ntime) + u64::from(rules.ntime_window) {
        return Err(StratumError::other(
            "ntime out of range: too far in the future",
        ));
    }
    let version = rolled_version(job.version, submit.version_bits, rules.version_mask)?;
    let root = job.merkle_root(&[extranonce1, &submit.extranonce2]);
    let header = job.header(&root, version, submit.ntime, submit.nonce);
    Ok(HashedShare {
        header,
        hash: crate::sha256d(&header),
        version,
    })
}

/// The longest extranonce1 and extranonce2, in bytes, sessions are set up with (pools hand
/// out 4 to 16): an upstream whose extranonce1 a miner would see whole is refused past it, and
/// so is a pool's extranonce2 size that leaves none of it to the miners.
pub const MAX_EXTRANONCE: usize = 16;

/// Identity of a share within one job: the first 128 bits of its header's hash. Two submits
/// for one job commit to the same header exactly when extranonce1, extranonce2, ntime, nonce
/// and version are all equal, so equal keys are duplicates; two different headers share
/// these bits only through a SHA-256 collision (with a million shares in one job, odds
/// of about 10^-27). 16 bytes a share instead of the 64 of those fields, kept for every
/// share of every live job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareKey(u128);

impl ShareKey {
    pub fn of(share: &HashedShare) -> ShareKey {
        let mut b = [0u8; 16];
        b.copy_from_slice(&share.hash[..16]);
        ShareKey(u128::from_le_bytes(b))
    }
}

impl std::hash::Hash for ShareKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The key is already uniformly distributed: its low half is the table's hash.
        state.write_u64(self.0 as u64);
    }
}

/// The hasher of a [`ShareKeySet`]: a key's own bits, no further mixing.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShareKeyHasher(u64);

impl std::hash::Hasher for ShareKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `ShareKey` is hashed with it, through `write_u64`; anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

/// The shares seen for one job.
pub type ShareKeySet =
    std::collections::HashSet<ShareKey, std::hash::BuildHasherDefault<ShareKeyHasher>>;

#[cfg(test)]
mod tests;
