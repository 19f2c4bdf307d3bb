//! `POST /config/reload` as a pure plan: which settings of a new configuration take effect
//! now, and which keep their running value until the proxy restarts.
//!
//! Settings read once at start (the listeners, the TLS port and its certificate's paths
//! among them, whose files the listener re-reads by itself; the mode and extranonce layout the upstream
//! session and allocator were built with, the upstream task's timing, storage, the API,
//! logging, telemetry) keep their running value in the configuration the proxy holds after
//! a reload, so that nothing reading it (new sessions, `GET /config`, the durable-ack
//! policy) acts on a value that is not in force. They are reported as needing a restart.

use loka_config::Config;

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadPlan {
    /// The configuration in force after the reload: the new one, with every setting that
    /// needs a restart kept at its running value.
    pub config: Config,
    /// Settings that changed but take effect only after a restart.
    pub requires_restart: Vec<&'static str>,
}

/// Plan a reload from the running configuration to `new`.
pub fn plan(running: &Config, mut new: Config) -> ReloadPlan {
    let mut requires_restart = Vec::new();
    macro_rules! keep {
        ($($name:literal => $($field:ident).+;)*) => {$(
            if running.$($field).+ != new.$($field).+ {
                requires_restart.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        )*};
    }
    keep! {
        "server.bind_address" => server.bind_address;
        "server.port" => server.port;
        "server.max_connections" => server.max_connections;
        "server.tls" => server.tls;
        "api" => api;
        "mining.mode" => mining.mode;
        "mining.extranonce_prefix_size" => mining.extranonce_prefix_size;
        "mining.min_miner_extranonce2_size" => mining.min_miner_extranonce2_size;
        "mining.max_miner_extranonce2_size" => mining.max_miner_extranonce2_size;
        "mining.version_rolling_mask" => mining.version_rolling_mask;
        "mining.forward_worker_names" => mining.forward_worker_names;
        "mining.max_jobs" => mining.max_jobs;
        "upstream" => upstream;
        "storage" => storage;
        "admin" => admin;
        "rate_limiting" => rate_limiting;
        "logging" => logging;
        "telemetry" => telemetry;
    }
    ReloadPlan {
        config: new,
        requires_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loka_config::Mode;

    #[test]
    fn settings_read_at_start_keep_their_running_value() {
        let running = Config::default();
        let mut new = running.clone();
        new.mining.mode = Mode::Passthrough;
        new.storage.acknowledge = loka_config::AckPolicy::Durable;
        new.server.port = 4444;
        new.server.tls = Some(loka_config::TlsListenerConfig::default());
        new.mining.ntime_window_secs = 600;
        new.vardiff.target_shares_per_minute = 6.0;
        let p = plan(&running, new);
        assert_eq!(
            p.requires_restart,
            vec!["server.port", "server.tls", "mining.mode", "storage"]
        );
        assert_eq!(p.config.server.tls, None);
        assert_eq!(p.config.mining.mode, running.mining.mode);
        assert_eq!(p.config.storage, running.storage);
        assert_eq!(p.config.server.port, running.server.port);
        // Live settings take effect.
        assert_eq!(p.config.mining.ntime_window_secs, 600);
        assert_eq!(p.config.vardiff.target_shares_per_minute, 6.0);
    }

    #[test]
    fn an_unchanged_configuration_needs_nothing() {
        let c = Config::default();
        let p = plan(&c, c.clone());
        assert!(p.requires_restart.is_empty());
        assert_eq!(p.config, c);
    }
}
