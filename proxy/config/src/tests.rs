use super::*;

fn valid() -> Config {
    Config {
        pools: vec![PoolConfig {
            name: "main".into(),
            host: "127.0.0.1".into(),
            port: 3334,
            username: "acct".into(),
            password: Some("x".into()),
            password_env: None,
            tls: false,
            tls_ca_file: None,
            tls_fingerprint: None,
        }],
        ..Config::default()
    }
}

#[test]
fn defaults_plus_a_pool_are_valid_and_round_trip() {
    let c = valid();
    c.validate().unwrap();
    let text = c.to_toml();
    assert_eq!(Config::from_toml(&text).unwrap(), c);
}

#[test]
fn a_full_file_parses() {
    let c = Config::from_toml(
        r#"
        [server]
        port = 4444
        handshake_timeout = "5s"
        [mining]
        mode = "passthrough"
        [vardiff]
        min_difficulty = 0.001
        initial_difficulty = "0.5"
        [[pools]]
        name = "a"
        host = "pool.example.com"
        port = 3333
        username = "acct"
        password_env = "POOL_PASSWORD"
        [[pools]]
        name = "b"
        host = "10.0.0.2"
        port = 3333
        username = "acct"
        "#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.server.port, 4444);
    assert_eq!(c.server.handshake_timeout, Duration::from_secs(5));
    assert_eq!(c.mining.mode, Mode::Passthrough);
    assert_eq!(c.vardiff.min_difficulty.to_string(), "0.001");
    assert_eq!(c.vardiff.initial_difficulty.to_string(), "0.5");
    assert_eq!(c.pools[1].name, "b");
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    let err = Config::from_toml("[server]\nprot = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("prot"), "{err}");
    let err = Config::from_toml("[server]\nport = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("port"), "{err}");
    let err = Config::from_toml("[mining]\nmode = \"relay\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("relay") || err.contains("mode"), "{err}");
    let err = Config::from_toml("[server]\nidle_timeout = \"forever\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("idle_timeout"), "{err}");
}

#[test]
fn every_violation_is_reported_at_once() {
    let mut c = valid();
    c.server.bind_address = "not-an-ip".into();
    c.server.max_connections = 70_000;
    c.vardiff.min_difficulty = Decimal::from(10);
    c.vardiff.max_difficulty = Decimal::from(1);
    c.mining.version_rolling_mask = "xyz".into();
    c.pools.push(c.pools[0].clone());
    c.pools[1].port = 0;
    c.api.port = c.server.port;
    let errs = c.validate().unwrap_err().0;
    let joined = errs.join("\n");
    for needle in [
        "server.bind_address",
        "server.max_connections",
        "vardiff.min_difficulty",
        "mining.version_rolling_mask",
        "pools[1].name",
        "pools[1].port",
        "api.port",
    ] {
        assert!(joined.contains(needle), "missing {needle} in {joined}");
    }
    let mut c = valid();
    c.pools.clear();
    assert!(c.validate().unwrap_err().0[0].contains("pools"));
}

#[test]
fn pool_urls() {
    let url = |host: &str, port, tls| PoolUrl {
        host: host.into(),
        port,
        tls,
    };
    assert_eq!(
        parse_pool_url("stratum+tcp://pool.example.com:3333").unwrap(),
        url("pool.example.com", 3333, false)
    );
    assert_eq!(
        parse_pool_url("127.0.0.1:1").unwrap(),
        url("127.0.0.1", 1, false)
    );
    assert_eq!(
        parse_pool_url("stratum+ssl://pool.example.com:4443").unwrap(),
        url("pool.example.com", 4443, true)
    );
    assert_eq!(
        parse_pool_url("stratum+tls://[::1]:4443").unwrap(),
        url("::1", 4443, true)
    );
    assert!(parse_pool_url("pool.example.com").is_err());
    assert!(parse_pool_url("pool:0").is_err());
    assert!(parse_pool_url("pool:x").is_err());
    let e = parse_pool_url("https://pool.example.com:443").unwrap_err();
    assert!(e.contains("scheme \"https\""), "{e}");
}

#[test]
fn tls_settings_are_checked_field_by_field() {
    let mut c = valid();
    c.server.tls = Some(TlsListenerConfig {
        port: c.server.port,
        cert_file: " ".into(),
        key_file: String::new(),
        reload_interval: Duration::ZERO,
        handshake_timeout: Duration::ZERO,
    });
    c.pools[0].tls_fingerprint = Some("ab:cd".into());
    c.pools[0].tls_ca_file = Some(String::new());
    let errors = c.validate().unwrap_err().0;
    for needle in [
        "server.tls.port",
        "server.tls.cert_file",
        "server.tls.key_file",
        "server.tls.reload_interval",
        "server.tls.handshake_timeout",
        "pools[0].tls: tls_ca_file and tls_fingerprint need tls = true",
        "pools[0].tls_ca_file",
        "pools[0].tls_fingerprint: \"ab:cd\"",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "missing {needle} in {errors:?}"
        );
    }

    let fp = "AB:".repeat(31) + "CD";
    assert_eq!(parse_fingerprint(&fp).unwrap()[31], 0xcd);
    assert_eq!(parse_fingerprint(&"0f".repeat(32)), Some([0x0f; 32]));
    assert_eq!(parse_fingerprint(&"0f".repeat(31)), None);
    assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);

    let text = format!(
        "[server.tls]\ncert_file = '/tls/tls.crt'\nkey_file = '/tls/tls.key'\n\n\
         [[pools]]\nname = 'p'\nhost = 'pool.example.com'\nport = 4443\nusername = 'u'\n\
         tls = true\ntls_fingerprint = '{fp}'\n"
    );
    let c = Config::from_toml(&text).unwrap();
    c.validate().unwrap();
    let tls = c.server.tls.as_ref().unwrap();
    assert_eq!(tls.port, 3334);
    assert_eq!(tls.reload_interval, Duration::from_secs(30));
    assert!(c.pools[0].tls);
    assert_eq!(c.pools[0].tls_fingerprint_bytes().unwrap()[0], 0xab);
    assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    // Plain pools serialise as before: no TLS keys.
    assert!(!Config::default().to_toml().contains("tls"));
    let e = Config::from_toml("[server.tls]\ncert = 'x'\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cert"), "{e}");
}

#[test]
fn schema_is_generated() {
    let schema = schemars::schema_for!(Config);
    let json = serde_json::to_string(&schema).unwrap();
    assert!(json.contains("max_connections_per_ip"));
}
