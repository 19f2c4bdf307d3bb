//! Wire-level Stratum V1 test doubles for Loka Stratum, written independently of the
//! proxy's own protocol crate so that each cross-checks the other's byte order.
//!
//! Everything speaks real TCP (newline-delimited JSON) on 127.0.0.1.
//!
//! Modules:
//! - [`share`]: share maths — sha256d, coinbase/merkle root, 80-byte header, exact
//!   rational difficulties and 256-bit targets, notify parsing and nonce search.
//! - [`wire`]: line framing with a length limit and JSON-RPC line builders.
//! - [`pool`]: [`MockPool`], an upstream pool that validates every share and records it.
//! - [`miner`]: [`SimMiner`], a hashing miner (cpuminer/BitAxe/bfgminer flavours), and
//!   [`StratumClient`], a low-level client for step-by-step protocol tests.
//!
//! The `loka-bench` binary (`src/bin/loka-bench.rs`) is a load generator built on the same
//! pieces; see the crate README.

pub mod client;
pub mod miner;
pub mod pool;
pub mod share;
pub mod wait;
pub mod wire;

pub use miner::{MinerConfig, MinerHandle, MinerStats, SimMiner, StratumClient};
pub use pool::{MockPool, MockPoolConfig, PoolStats, SubmitRecord};
pub use share::{Difficulty, Job};
