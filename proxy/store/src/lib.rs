//! Share storage for Loka Stratum.
//!
//! - [`events`]: the share and connection events the Stratum path emits (bounded queue).
//! - [`record`]: events turned into rows with a fixed identity, and their spool encoding.
//! - [`spool`]: the append-only, checksummed local log used while the database is away.
//! - [`db`]: the database ([`Store`]): PostgreSQL or embedded SQLite, migrations, pools,
//!   partitions and retention, health.
//! - [`sink`]: writing one batch of records (idempotent, worker/miner upserts).
//! - [`writer`]: the task between the event queue and the database ([`StoreHandle`]).
//! - [`accounting`]: earnings and their proportional / PPLNS distribution, exact to the satoshi.
//! - [`stats`]: the read side for the API (worker and pool statistics, reporting queries).
//!
//! See `proxy/store/README.md` for the design.

pub mod accounting;
pub mod db;
pub mod events;
pub mod record;
pub mod sink;
pub mod spool;
pub mod stats;
#[doc(hidden)]
pub mod writer;

pub use db::{Backend, DatabaseHealth, MigrationStatus, PoolInfo, Store};
pub use writer::{
    ShutdownReport, StoreHandle, StoreStatus, WriteHold, WriterOptions, spawn_writer,
};
pub use {chrono, compact_str, uuid};

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("spool: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Worth retrying later (the database is unreachable, restarting, overloaded, or the
    /// transaction lost a race), as opposed to a row the database will never take.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => sqlx_transient(e),
            Error::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_transient(e),
            Error::Migrate(_) => true,
            Error::Io(_) | Error::Timeout(_) => true,
            Error::Invalid(_) | Error::NotFound(_) => false,
        }
    }

    /// A unique key refused a row (SQLSTATE 23505): the row, or one with its key, is stored.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Db(sqlx::Error::Database(db)) if db.is_unique_violation())
    }
}

fn sqlx_transient(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::BeginFailed => true,
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if let Ok(n) = code.parse::<u32>() {
                // SQLite primary codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN
                return matches!(n & 0xff, 5 | 6 | 10 | 13 | 14);
            }
            matches!(
                code.get(..2),
                Some("08" | "40" | "53" | "55" | "57" | "58" | "XX")
            )
        }
        _ => false,
    }
}
