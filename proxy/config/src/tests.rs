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
    assert_eq!(
        parse_pool_url("stratum+tcp://pool.example.com:3333").unwrap(),
        ("pool.example.com".into(), 3333)
    );
    assert_eq!(
        parse_pool_url("127.0.0.1:1").unwrap(),
        ("127.0.0.1".into(), 1)
    );
    assert!(parse_pool_url("pool.example.com").is_err());
    assert!(parse_pool_url("pool:0").is_err());
    assert!(parse_pool_url("pool:x").is_err());
}

#[test]
fn schema_is_generated() {
    let schema = schemars::schema_for!(Config);
    let json = serde_json::to_string(&schema).unwrap();
    assert!(json.contains("max_connections_per_ip"));
}
