//! Pure Stratum V1 protocol logic for Loka Stratum. No IO, no async runtime: everything here
//! is a function of its inputs, so it is unit-tested, property-tested and benchmarked alone.
//!
//! - [`codec`]: newline framing with a hard line-length limit (`LineDecoder`).
//! - [`message`]: parsing miner requests and pool messages, building server lines.
//! - [`pool`]: decoding what a pool sends a client.
//! - [`target`]: difficulties (exact decimals), 256-bit targets, `nbits`, hash → difficulty.
//! - [`job`]: a `mining.notify` job and the block header a share commits to.
//! - [`share`]: validating a submitted share (header hash, targets, ntime window, version mask).
//! - [`vardiff`]: per-miner difficulty retargeting, capped at the pool's difficulty.
//! - [`ledger`]: the difficulty each job's shares are judged at, as difficulties change.
//! - [`extranonce`]: splitting an upstream extranonce2 space among many miners.
//! - [`error`]: the Stratum error codes 20–25.
#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod extranonce;
pub mod job;
pub mod ledger;
pub mod message;
pub mod pool;
pub mod share;
pub mod target;
pub mod vardiff;

pub use error::StratumError;
pub use job::Job;
pub use target::{Difficulty, Target};

/// `SHA256(SHA256(data))`.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let first = Sha256::digest(data);
    Sha256::digest(first).into()
}
