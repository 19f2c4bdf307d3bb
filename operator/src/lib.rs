//! Kubernetes operator for Loka Stratum. Not built yet: see issue 4 (StratumPool/StratumProxy
//! reconciled into running proxies). This crate only reserves its place in the workspace.
