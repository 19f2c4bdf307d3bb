//! Validate step: the proxy configuration a StratumProxy and its StratumPool describe, checked
//! by the proxy's own rules ([`loka_config::Config::validate`]).
//!
//! No client. The CRDs' schema and CEL rules reject most mistakes at admission; this catches
//! the rest (and objects admitted by an older CRD), naming every bad field at once.

use super::build::proxy_config;
use crate::crd::{StratumPool, StratumProxy};
use kube::ResourceExt;
use loka_config::Config;

/// Longest StratumProxy name: its objects append up to `-config` and must stay DNS labels.
pub const MAX_PROXY_NAME: usize = 55;

/// Build and check the configuration; `Err` lists every problem.
pub fn validate(proxy: &StratumProxy, pool: &StratumPool) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let name = proxy.name_any();
    if name.len() > MAX_PROXY_NAME {
        errors.push(format!(
            "metadata.name: {name:?} is longer than {MAX_PROXY_NAME} characters"
        ));
    }
    let config = proxy_config(proxy, pool);
    if let Err(e) = config.validate() {
        errors.extend(e.0);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}
