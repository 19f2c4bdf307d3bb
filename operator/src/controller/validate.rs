//! Validate step: the proxy configuration a StratumProxy and its StratumPool describe, checked
//! by the proxy's own rules ([`loka_config::Config::validate`]), and the settings of the
//! Kubernetes objects that the configuration does not cover (names, the data volume).
//!
//! No client. The CRDs' schema and CEL rules reject most mistakes at admission; this catches
//! the rest (and objects admitted by an older CRD), naming every bad field at once.

use super::build::proxy_config;
use crate::crd::{StratumPool, StratumProxy};
use kube::ResourceExt;
use loka_config::Config;

/// Longest StratumProxy name: its objects append up to `-config` and must stay DNS labels.
pub const MAX_PROXY_NAME: usize = 55;
/// Longest StratumProxy name with a persistent data volume: the StatefulSet's pods carry the
/// label `controller-revision-hash: <name>-<hash of up to 10 characters>`, and label values
/// have at most 63 characters.
pub const MAX_STATEFUL_PROXY_NAME: usize = 52;

/// Whether `s` is a quantity the CRD accepts for a volume size: a whole number not starting
/// with 0, an optional decimal fraction, an optional binary or decimal suffix (the CRD's
/// pattern `^[1-9][0-9]*([.][0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`).
pub fn is_size(s: &str) -> bool {
    const SUFFIXES: [&str; 12] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|suffix| s.strip_suffix(suffix))
        .unwrap_or(s);
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && !whole.starts_with('0') && fraction.is_none_or(digits)
}

/// Whether `s` is a lowercase RFC 1123 subdomain of at most 253 characters (what Secret names
/// are).
pub fn is_dns_subdomain(s: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253 && s.split('.').all(label)
}

/// Whether `s` is a valid key of a Secret: letters, digits, `-`, `_` and `.`, at most 253
/// characters, neither `.` nor starting with `..`.
pub fn is_secret_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && !s.starts_with("..")
}

/// Problems of `tls` the proxy configuration does not cover (see `tls` in the CRD).
fn tls_errors(proxy: &StratumProxy) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(tls) = &proxy.spec.tls else {
        return errors;
    };
    if !is_dns_subdomain(&tls.secret_name) {
        errors.push(format!(
            "tls.secretName: {:?} is not a Secret name (a lowercase RFC 1123 subdomain)",
            tls.secret_name
        ));
    }
    if !(1..=65535).contains(&tls.port) {
        errors.push(format!("tls.port: {} is outside 1..=65535", tls.port));
    }
    if let Some(s) = tls.reload_interval_seconds
        && s < 1
    {
        errors.push(format!("tls.reloadIntervalSeconds: {s} must be at least 1"));
    }
    errors
}

/// Problems of the upstreams' CA references (mounted at paths built from them).
fn pool_ca_errors(pool: &StratumPool) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, u) in pool.spec.upstreams.iter().enumerate() {
        let Some(r) = &u.ca_secret_ref else { continue };
        if !is_dns_subdomain(&r.name) {
            errors.push(format!(
                "upstreams[{i}].caSecretRef.name: {:?} is not a Secret name (a lowercase RFC 1123 subdomain)",
                r.name
            ));
        }
        if !is_secret_key(&r.key) {
            errors.push(format!(
                "upstreams[{i}].caSecretRef.key: {:?} is not a Secret key (letters, digits, '-', '_' and '.')",
                r.key
            ));
        }
    }
    errors
}

/// Problems of the data volume settings (see `dataVolume` in the CRD).
fn data_volume_errors(proxy: &StratumProxy) -> Vec<String> {
    let mut errors = Vec::new();
    let data = &proxy.spec.data_volume;
    if let Some(e) = &data.empty_dir
        && !is_size(&e.size_limit)
    {
        errors.push(format!(
            "dataVolume.emptyDir.sizeLimit: {:?} is not a quantity such as 1Gi",
            e.size_limit
        ));
    }
    if let Some(p) = &data.persistent {
        if data.empty_dir.is_some() {
            errors.push("dataVolume: takes emptyDir or persistent, not both".into());
        }
        if !is_size(&p.size) {
            errors.push(format!(
                "dataVolume.persistent.size: {:?} is not a quantity such as 10Gi",
                p.size
            ));
        }
        if p.access_modes.is_empty() {
            errors.push("dataVolume.persistent.accessModes: needs at least one mode".into());
        }
        let name = proxy.name_any();
        // Longer than MAX_PROXY_NAME is reported on its own.
        if (MAX_STATEFUL_PROXY_NAME + 1..=MAX_PROXY_NAME).contains(&name.len()) {
            errors.push(format!(
                "metadata.name: {name:?} is longer than {MAX_STATEFUL_PROXY_NAME} characters, \
                 the most a StatefulSet's pods allow (dataVolume.persistent)"
            ));
        }
    }
    errors
}

/// Build and check the configuration; `Err` lists every problem.
pub fn validate(proxy: &StratumProxy, pool: &StratumPool) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let name = proxy.name_any();
    if name.len() > MAX_PROXY_NAME {
        errors.push(format!(
            "metadata.name: {name:?} is longer than {MAX_PROXY_NAME} characters"
        ));
    }
    errors.extend(data_volume_errors(proxy));
    errors.extend(tls_errors(proxy));
    errors.extend(pool_ca_errors(pool));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_crd_pattern() {
        for good in ["1", "10Gi", "1.5Gi", "500M", "64Mi", "2Ti", "1000k", "3E"] {
            assert!(is_size(good), "{good}");
        }
        for bad in [
            "", "0", "0Gi", "01Gi", "Gi", "10GB", "10gi", "1.Gi", ".5Gi", "-1Gi", "10 Gi", "1e3",
            "10Gi ", "1.5.5Gi", "500m",
        ] {
            assert!(!is_size(bad), "{bad}");
        }
    }

    #[test]
    fn secret_names_and_keys() {
        for good in ["a", "edge-tls", "pool.example-ca", "0", &"a".repeat(253)] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in [
            "",
            "Edge",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a_b",
            "a/b",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        for good in ["ca.crt", "tls.crt", "CA_bundle-1.pem", ".hidden", "a..b"] {
            assert!(is_secret_key(good), "{good}");
        }
        for bad in ["", ".", "..", "..a", "a/b", "a b", &"k".repeat(254)] {
            assert!(!is_secret_key(bad), "{bad}");
        }
    }
}
