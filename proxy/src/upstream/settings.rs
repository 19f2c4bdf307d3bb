//! How an upstream session is run, from the configuration and the resolved pools.

use crate::tls::{PoolTls, TlsCounters, TlsError};
use crate::upstream::PoolErrors;
use crate::upstream::conn::PoolEndpoint;
use loka_config::{Config, Mode, UpstreamConfig};
use std::sync::Arc;

/// How an upstream session is run.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub pools: Vec<PoolEndpoint>,
    pub timing: UpstreamConfig,
    /// Aggregate mode folds the upstream extranonce1 into miners' coinb1.
    pub fold: bool,
    pub prefix_size: usize,
    pub min_miner_extranonce2: usize,
    pub max_miner_extranonce2: usize,
    /// Mask requested from the pool (0: do not negotiate version rolling).
    pub version_mask: u32,
    pub max_jobs: usize,
    /// Submit as `account.worker` (each worker authorized upstream on first use).
    pub forward_worker_names: bool,
    /// Where TLS handshakes with pools are counted (the proxy's [`crate::stats::Stats`]
    /// gives its own).
    pub tls_counters: Arc<TlsCounters>,
    /// Where each pool's last failure is kept (one for the proxy, shared by its tasks).
    pub pool_errors: Arc<PoolErrors>,
    /// Opened at each new job: the share writer holds its batches while the job goes out to
    /// every miner. Aggregate mode's upstream gets the writer's; one nobody reads otherwise.
    pub write_hold: loka_store::WriteHold,
}

/// A pool that cannot be connected to as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolSetupError {
    /// Its `password_env` names a variable that is not set.
    #[error("pools[{pool}].password_env: environment variable {var} is not set")]
    MissingPassword { pool: String, var: String },
    /// Its TLS settings do not load (an unreadable or empty CA file, no system roots).
    #[error("pools[{pool}].tls: {error}")]
    Tls { pool: String, error: TlsError },
}

/// Pool endpoints with passwords resolved through `lookup` (the environment, in `main`)
/// and TLS settings loaded (CA files read, the system's roots read once).
pub fn resolve_pools(
    cfg: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<PoolEndpoint>, PoolSetupError> {
    cfg.pools
        .iter()
        .map(|p| {
            let password = match (&p.password, &p.password_env) {
                (Some(pw), _) => pw.clone(),
                (None, Some(var)) => {
                    lookup(var).ok_or_else(|| PoolSetupError::MissingPassword {
                        pool: p.name.clone(),
                        var: var.clone(),
                    })?
                }
                (None, None) => "x".to_string(),
            };
            let tls = p
                .tls
                .then(|| {
                    PoolTls::new(
                        p.tls_ca_file.as_deref().map(std::path::Path::new),
                        p.tls_fingerprint_bytes(),
                    )
                })
                .transpose()
                .map_err(|error| PoolSetupError::Tls {
                    pool: p.name.clone(),
                    error,
                })?;
            Ok(PoolEndpoint {
                name: Arc::from(p.name.as_str()),
                host: p.host.clone(),
                port: p.port,
                username: p.username.clone(),
                password,
                tls,
            })
        })
        .collect()
}

impl UpstreamSettings {
    /// The settings `cfg` gives, for `pools` (resolved by [`resolve_pools`]).
    pub fn from_config(cfg: &Config, pools: Vec<PoolEndpoint>) -> Self {
        Self {
            pools,
            timing: cfg.upstream.clone(),
            fold: cfg.mining.mode == Mode::Aggregate,
            prefix_size: cfg.mining.extranonce_prefix_size,
            min_miner_extranonce2: cfg.mining.min_miner_extranonce2_size,
            max_miner_extranonce2: cfg.mining.max_miner_extranonce2_size,
            version_mask: cfg.version_rolling_mask(),
            max_jobs: cfg.mining.max_jobs,
            forward_worker_names: cfg.mining.forward_worker_names,
            tls_counters: Arc::default(),
            pool_errors: Arc::default(),
            write_hold: loka_store::WriteHold::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_inline_from_the_environment_or_are_named_when_missing() {
        let cfg = Config::from_toml(include_str!("../../proxy.example.toml")).unwrap();
        let e = resolve_pools(&cfg, |_| None).unwrap_err();
        assert_eq!(
            e,
            PoolSetupError::MissingPassword {
                pool: "main_pool".into(),
                var: "LOKA_POOL_PASSWORD".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "pools[main_pool].password_env: environment variable LOKA_POOL_PASSWORD is not set"
        );
        let pools = resolve_pools(&cfg, |v| {
            (v == "LOKA_POOL_PASSWORD").then(|| "s3cret".into())
        })
        .unwrap();
        assert_eq!(pools[0].password, "s3cret");
        assert_eq!(&*pools[0].name, "main_pool");
    }
}
