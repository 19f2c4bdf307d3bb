//! Kubernetes operator for Loka Stratum.
//!
//! Crate map:
//! - [`crd`]: the `StratumPool` and `StratumProxy` custom resources (group `loka.io`,
//!   version `v1alpha1`) and the CRD YAML generated from them.
//! - [`controller`]: the reconcile pipeline read → validate → build → apply → status;
//!   [`controller::build`] and [`controller::validate`] are pure, the rest is a thin IO shell.
//! - [`lease`]: leader election on a `coordination.k8s.io` Lease.
//! - [`metrics`]: the operator's own Prometheus metrics; [`http`]: `/metrics`, `/healthz`,
//!   `/readyz`.
//!
//! The binary (`src/main.rs`) only parses the command line and wires these together.
#![forbid(unsafe_code)]

pub mod controller;
pub mod crd;
pub mod http;
pub mod lease;
pub mod metrics;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "loka-operator";

/// Errors of the operator. The variant name doubles as the `error` label of the failure metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising {0}: {1}")]
    Serialize(&'static str, serde_json::Error),
    #[error("{0} has no namespace")]
    MissingNamespace(String),
    #[error("publishing event: {0}")]
    Event(kube::Error),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Serialize(..) => "serialize",
            Error::MissingNamespace(_) => "missing_namespace",
            Error::Event(_) => "event",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
