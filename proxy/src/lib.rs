//! Loka Stratum proxy: a validating, recording Stratum V1 mining proxy.
//!
//! - [`server`]: the Stratum listener, limits, drain.
//! - [`session`]: one miner connection (state machine + socket loop).
//! - [`upstream`]: pool client with failover; [`upstream::work`] the jobs it publishes.
//! - [`lines`]: bounded line reading from sockets.
//! - [`stats`]: atomic counters read by the API; [`events`]: share/connection events.
//! - [`settings`]: configuration file + environment + flags → [`loka_config::Config`].
//! - [`reload`]: a configuration reload as a pure plan (what applies now, what at restart).
//! - [`proxy`]: starting and stopping a whole proxy in-process (used by `main`, tests, demo).
//! - [`demo`]: the self-contained demo (local pool simulator and hashing miners).

pub mod api;
pub mod demo;
pub use loka_store::events;
pub mod lines;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod session;
pub mod settings;
pub mod stats;
pub mod telemetry;
pub mod upstream;
