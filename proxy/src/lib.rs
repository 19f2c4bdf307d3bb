//! Loka Stratum proxy: a validating, recording Stratum V1 mining proxy.
//!
//! Dependencies point one way, from the top down:
//! - [`runtime`]: starting and draining a whole proxy in-process (the binary, the demo and
//!   the tests use it); the only place that wires the parts together.
//! - [`api`]: the HTTP API (health, config and reload, stats, metrics, streams, admin, and
//!   Stratum over WebSocket through [`listener::run_session`]).
//! - [`listener`]: the Stratum listener (TCP), admission, one session task per miner.
//! - [`session`]: one miner connection (socket loop, methods, difficulty, shares, replies).
//! - [`upstream`]: pool client with failover; [`upstream::work`] the jobs it publishes;
//!   [`fanout`]: its jobs written to the plain-TCP miners' sockets without waking sessions.
//! - [`context`]: what sessions share; [`registry`]: live connections and admission.
//! - [`reload`]: a configuration reload as a pure plan (what applies now, what at restart).
//! - [`stats`]: atomic counters read by the API; [`events`]: share/connection events.
//! - [`settings`]: configuration file + environment + flags → [`loka_config::Config`].
//! - [`lines`]: bounded line reading from sockets; [`clock`]: timestamps; [`telemetry`];
//!   [`tls`]: the listener's reloadable certificate, pool certificate checks, TLS counters.
//! - [`demo`]: the self-contained demo (local pool simulator and hashing miners).

/// An enum of label values: each variant with its label, `ALL` in declaration order (a
/// counter array indexed by `variant as usize` has `ALL.len()` slots) and `as_str`.
macro_rules! labelled {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// Its label value (`reason`, `transport`) on its counter.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

pub mod api;
pub mod clock;
pub mod context;
pub mod demo;
pub mod fanout;
pub use loka_store::events;
pub mod lines;
pub mod listener;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod upstream;
