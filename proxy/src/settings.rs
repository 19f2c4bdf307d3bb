//! Configuration from a TOML file, then environment variables, then command-line flags (each
//! flag has an environment variable; a flag on the command line wins). Building the final
//! [`Config`] is pure over the parsed flags and the file text, and reports every error.

use clap::{Args, Parser, Subcommand};
use loka_config::{Config, ConfigErrors, LogFormat, Mode, PoolConfig, PoolUrl, parse_pool_url};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "loka-proxy",
    version,
    about = "Loka Stratum: a validating, recording Stratum V1 mining proxy"
)]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run,
    /// Run a self-contained demo: a local pool simulator, hashing miners and the proxy.
    Demo {
        /// Number of simulated miners.
        #[arg(long, default_value_t = 4)]
        miners: usize,
        /// Stop after this many seconds (0 = run until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
    /// Validate the configuration and print it (passwords hidden), then exit.
    CheckConfig,
    /// Read a password on standard input and print its Argon2id hash for `admin.password_hash`.
    HashPassword,
    /// Earnings (blocks found, pool payouts) and their distribution to miners, in the
    /// configured share store. Prints JSON.
    Earnings {
        #[command(subcommand)]
        action: EarningsCommand,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum EarningsCommand {
    /// Record an earning.
    Add {
        /// The pool's name, as configured (`[[pools]] name`).
        #[arg(long = "pool-name")]
        pool: String,
        /// Amount in BTC (at most 8 decimals), e.g. 3.125
        #[arg(long)]
        amount: rust_decimal::Decimal,
        /// Fee in BTC, taken off before distribution.
        #[arg(long, default_value = "0")]
        fee: rust_decimal::Decimal,
        /// Transaction hash (64 hex digits).
        #[arg(long)]
        tx: Option<String>,
        #[arg(long)]
        block_hash: Option<String>,
        #[arg(long)]
        block_height: Option<i32>,
        /// pending, confirmed or failed.
        #[arg(long, default_value = "pending")]
        status: String,
        /// When it was earned (RFC 3339; default now). Closes the distribution window.
        #[arg(long)]
        earned_at: Option<String>,
        /// Distribute it right away: proportional or pplns.
        #[arg(long)]
        distribute: Option<String>,
        /// PPLNS window, in total difficulty of accepted shares.
        #[arg(long)]
        window: Option<rust_decimal::Decimal>,
    },
    /// Split a recorded earning over the miners' accepted shares (once).
    Distribute {
        /// The earning's id.
        earning: String,
        /// proportional (shares since the pool's previous earning) or pplns.
        #[arg(long, default_value = "proportional")]
        method: String,
        /// PPLNS window, in total difficulty of accepted shares.
        #[arg(long)]
        window: Option<rust_decimal::Decimal>,
        /// Proportional: start of the window (RFC 3339) instead of the previous earning.
        #[arg(long)]
        since: Option<String>,
        /// Compute and print, record nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Recent earnings, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Per-miner earnings summary (accepted shares, difficulty and payouts per miner).
    Summary,
}

/// Settings that override the configuration file.
#[derive(Debug, Default, Clone, Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(short, long, env = "LOKA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Stratum listen address.
    #[arg(long, env = "LOKA_BIND", global = true)]
    pub bind: Option<String>,
    /// Stratum listen port (default 3333).
    #[arg(long, env = "LOKA_PORT", global = true)]
    pub port: Option<u16>,
    /// HTTP API port (default 9090).
    #[arg(long, env = "LOKA_API_PORT", global = true)]
    pub api_port: Option<u16>,
    /// aggregate (many miners per upstream session) or passthrough (one each).
    #[arg(long, env = "LOKA_MODE", global = true, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Most concurrent miner connections.
    #[arg(long, env = "LOKA_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<u32>,
    /// Most connections per client IP (0 = unlimited).
    #[arg(long, env = "LOKA_MAX_CONNECTIONS_PER_IP", global = true)]
    pub max_connections_per_ip: Option<u32>,
    /// Upstream pool URL(s) in failover order, e.g. stratum+tcp://pool.example.com:3333 or
    /// stratum+ssl://pool.example.com:4443 (TLS, verified against the system's roots)
    /// (replaces the file's pools; comma-separated in the environment variable).
    #[arg(
        long = "pool",
        env = "LOKA_POOLS",
        value_delimiter = ',',
        global = true
    )]
    pub pools: Vec<String>,
    /// Pool account for --pool.
    #[arg(long, env = "LOKA_POOL_USER", global = true)]
    pub pool_user: Option<String>,
    /// Pool password for --pool.
    #[arg(
        long,
        env = "LOKA_POOL_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub pool_password: Option<String>,
    /// Share store: postgres://… (empty: embedded SQLite).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Log format: pretty or json.
    #[arg(long, env = "LOKA_LOG_FORMAT", global = true, value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or loka_proxy=debug.
    #[arg(long, env = "LOKA_LOG", global = true)]
    pub log_level: Option<String>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "aggregate" => Ok(Mode::Aggregate),
        "passthrough" => Ok(Mode::Passthrough),
        other => Err(format!("{other:?} is not a mode (aggregate, passthrough)")),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not a log format (pretty, json)")),
    }
}

/// File text (if any) + overrides → a validated configuration, or every problem at once.
pub fn build(file_text: Option<&str>, o: &Overrides) -> Result<Config, ConfigErrors> {
    let mut cfg = match file_text {
        Some(text) => Config::from_toml(text)?,
        None => Config::default(),
    };
    let mut errors = Vec::new();
    if let Some(v) = &o.bind {
        cfg.server.bind_address = v.clone();
    }
    if let Some(v) = o.port {
        cfg.server.port = v;
    }
    if let Some(v) = o.api_port {
        cfg.api.port = v;
    }
    if let Some(v) = o.mode {
        cfg.mining.mode = v;
    }
    if let Some(v) = o.max_connections {
        cfg.server.max_connections = v;
    }
    if let Some(v) = o.max_connections_per_ip {
        cfg.server.max_connections_per_ip = v;
    }
    if !o.pools.is_empty() {
        match &o.pool_user {
            None => errors.push("--pool-user (LOKA_POOL_USER): required with --pool".to_string()),
            Some(user) => {
                cfg.pools.clear();
                for (i, url) in o.pools.iter().enumerate() {
                    match parse_pool_url(url) {
                        Ok(PoolUrl { host, port, tls }) => cfg.pools.push(PoolConfig {
                            name: if i == 0 {
                                "primary".into()
                            } else {
                                format!("backup{i}")
                            },
                            host,
                            port,
                            username: user.clone(),
                            password: o.pool_password.clone(),
                            password_env: None,
                            tls,
                            tls_ca_file: None,
                            tls_fingerprint: None,
                        }),
                        Err(e) => errors.push(format!("--pool: {e}")),
                    }
                }
            }
        }
    }
    if let Some(v) = &o.database_url {
        cfg.storage.database_url = v.clone();
    }
    if let Some(v) = o.log_format {
        cfg.logging.format = v;
    }
    if let Some(v) = &o.log_level {
        cfg.logging.level = v.clone();
    }
    if let Err(e) = cfg.validate() {
        errors.extend(e.0);
    }
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The configuration with secrets removed, for printing.
pub fn sanitized(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    for p in &mut c.pools {
        if p.password.is_some() {
            p.password = Some("********".into());
        }
    }
    if let Some(at) = c.storage.database_url.find('@') {
        let scheme_end = c.storage.database_url.find("://").map_or(0, |i| i + 3);
        c.storage
            .database_url
            .replace_range(scheme_end..at, "********");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_every_error_is_reported() {
        let file = "[server]\nport = 4000\n[[pools]]\nname='a'\nhost='10.0.0.1'\nport=3333\nusername='acct'\n";
        let o = Overrides {
            port: Some(5000),
            ..Default::default()
        };
        let cfg = build(Some(file), &o).unwrap();
        assert_eq!(cfg.server.port, 5000);
        assert_eq!(cfg.pools[0].host, "10.0.0.1");

        let o = Overrides {
            pools: vec!["stratum+tcp://p:1".into(), "q:2".into()],
            pool_user: Some("u".into()),
            ..Default::default()
        };
        let cfg = build(None, &o).unwrap();
        assert_eq!(cfg.pools.len(), 2);
        assert_eq!((cfg.pools[1].host.as_str(), cfg.pools[1].port), ("q", 2));
        assert!(!cfg.pools[0].tls);

        let o = Overrides {
            pools: vec!["stratum+ssl://p:4443".into(), "stratum+tls://q:4444".into()],
            pool_user: Some("u".into()),
            ..Default::default()
        };
        let cfg = build(None, &o).unwrap();
        assert!(cfg.pools.iter().all(|p| p.tls), "{:?}", cfg.pools);
        assert_eq!(cfg.pools[1].port, 4444);

        let o = Overrides {
            pools: vec!["nonsense".into()],
            bind: Some("x".into()),
            ..Default::default()
        };
        let errs = build(None, &o).unwrap_err().0.join("\n");
        assert!(errs.contains("--pool-user"), "{errs}");
        assert!(errs.contains("server.bind_address"), "{errs}");
    }

    #[test]
    fn sanitized_hides_secrets() {
        let mut cfg = Config::default();
        cfg.storage.database_url = "postgres://loka:secret@db:5432/loka".into();
        cfg.pools.push(PoolConfig {
            name: "a".into(),
            host: "h".into(),
            port: 1,
            username: "u".into(),
            password: Some("pw".into()),
            password_env: None,
            tls: false,
            tls_ca_file: None,
            tls_fingerprint: None,
        });
        let s = sanitized(&cfg).to_toml();
        assert!(!s.contains("secret") && !s.contains("\"pw\""), "{s}");
        assert!(s.contains("postgres://********@db:5432/loka"));
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "loka-proxy",
            "--port",
            "1",
            "--mode",
            "passthrough",
            "demo",
            "--miners",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.overrides.port, Some(1));
        assert!(matches!(cli.command, Some(Command::Demo { miners: 2, .. })));
        assert!(Cli::try_parse_from(["loka-proxy", "--mode", "relay"]).is_err());
    }

    #[test]
    fn earnings_subcommands_parse() {
        let cli = Cli::try_parse_from([
            "loka-proxy",
            "earnings",
            "add",
            "--pool-name",
            "main",
            "--amount",
            "3.125",
            "--distribute",
            "pplns",
            "--window",
            "1000000",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Earnings {
                action: EarningsCommand::Add { amount, window, .. },
            }) => {
                assert_eq!(amount.to_string(), "3.125");
                assert_eq!(window.map(|w| w.to_string()).as_deref(), Some("1000000"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "loka-proxy",
                "earnings",
                "add",
                "--pool",
                "p",
                "--amount",
                "x"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["loka-proxy", "earnings", "distribute", "abc", "--dry-run"])
                .is_ok()
        );
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_example_configuration_is_valid() {
        let cfg = super::build(
            Some(include_str!("../proxy.example.toml")),
            &super::Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.pools.len(), 2);
        let defaults = loka_config::Config {
            pools: cfg.pools.clone(),
            ..Default::default()
        };
        assert_eq!(cfg, defaults, "the example shows the defaults");
    }

    #[test]
    fn the_examples_tls_listener_block_is_valid_once_uncommented() {
        let text = include_str!("../proxy.example.toml");
        let start = text.find("# [server.tls]").expect("a [server.tls] example");
        let lines: Vec<&str> = text[start..]
            .lines()
            .take_while(|l| l.starts_with("# "))
            .collect();
        let end = start + lines.iter().map(|l| l.len() + 1).sum::<usize>();
        let block: String = lines.iter().map(|l| format!("{}\n", &l[2..])).collect();
        let uncommented = format!("{}{block}{}", &text[..start], &text[end..]);
        let cfg =
            super::build(Some(&uncommented), &super::Overrides::default()).expect("valid config");
        let tls = cfg.server.tls.expect("the block sets server.tls");
        assert_eq!(tls.cert_file, "/etc/loka/tls/tls.crt");
        assert_eq!(
            loka_config::TlsListenerConfig {
                cert_file: tls.cert_file.clone(),
                key_file: tls.key_file.clone(),
                ..Default::default()
            },
            tls,
            "the example shows the defaults"
        );
    }
}
