//! Why an upstream session could not start or ended: typed, so the failover logic, the logs,
//! `GET /stats` (`last_error`) and the `loka_stratum_upstream_failures` counter (by
//! [`FailureKind`]) all say the same thing.

use crate::lines::ReadError;
use crate::tls::PoolFailure;
use crate::upstream::work::LayoutError;
use loka_stratum::StratumError;
use loka_stratum::pool::PoolLineError;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS with {host}:{port}: {detail}")]
    Tls {
        host: String,
        port: u16,
        reason: PoolFailure,
        detail: String,
    },
    #[error("handshake with {host}:{port} timed out after {after:?}")]
    HandshakeTimeout {
        host: String,
        port: u16,
        after: Duration,
    },
    #[error("subscribe refused: {0}")]
    SubscribeRefused(StratumError),
    #[error("pool refused authorization of {username:?}: {reason}")]
    AuthorizeRefused { username: String, reason: String },
    #[error("write to pool: {0}")]
    Write(std::io::Error),
    #[error("read from pool: {0}")]
    Read(ReadError),
    #[error("pool closed the connection")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] PoolLineError),
    #[error(transparent)]
    Extranonce(#[from] LayoutError),
    #[error("pool rejected {0} shares in a row")]
    Rejects(u32),
    #[error("no new job for {0:?}")]
    NoJob(Duration),
}

labelled! {
    /// A failure's kind: the `reason` label of `loka_stratum_upstream_failures`.
    FailureKind {
        Connect => "connect",
        Tls => "tls",
        Handshake => "handshake_timeout",
        Refused => "refused",
        Io => "io",
        Closed => "closed",
        Protocol => "protocol",
        Extranonce => "extranonce",
        Rejects => "rejects",
        NoJob => "no_job",
    }
}

impl UpstreamError {
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Connect { .. } => FailureKind::Connect,
            Self::Tls { .. } => FailureKind::Tls,
            Self::HandshakeTimeout { .. } => FailureKind::Handshake,
            Self::SubscribeRefused(_) | Self::AuthorizeRefused { .. } => FailureKind::Refused,
            Self::Write(_) => FailureKind::Io,
            Self::Read(ReadError::Io(_)) => FailureKind::Io,
            Self::Read(ReadError::Line(_)) => FailureKind::Protocol,
            Self::Closed => FailureKind::Closed,
            Self::Protocol(_) => FailureKind::Protocol,
            Self::Extranonce(_) => FailureKind::Extranonce,
            Self::Rejects(_) => FailureKind::Rejects,
            Self::NoJob(_) => FailureKind::NoJob,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_with_a_distinct_label() {
        let labels: std::collections::BTreeSet<_> =
            FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), FailureKind::ALL.len());
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(FailureKind::ALL.iter().position(|x| x == k), Some(i));
        }
        assert_eq!(UpstreamError::Rejects(5).kind(), FailureKind::Rejects);
        assert_eq!(
            UpstreamError::Rejects(5).to_string(),
            "pool rejected 5 shares in a row"
        );
    }
}
