//! Stratum over TLS, over real sockets: miners through the proxy's TLS port (and the plain
//! port beside it), the listener's certificate rotated under load, wrong transports closed
//! and counted, and the proxy mining to TLS pools: verified against a CA file, pinned, and
//! refused when the certificate is expired, for another host or self-signed.

mod common;

use common::{WAIT, config, pool, pool_with, proxy};
use loka_config::Mode;
use loka_proxy::tls::{MinerFailure, PoolFailure};
use loka_sim::client::StratumClient;
use loka_sim::miner::{MinerConfig, SimMiner};
use loka_test_support::wait_until;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (host names or IP addresses) signed by this CA.
    fn leaf(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The CA's certificate written to `dir/ca.pem` (a pool's `tls_ca_file`); its path.
    fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A client that trusts this CA only.
    fn client(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn self_signed(names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server presenting this certificate (the pool simulator's side).
    fn server(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.der.clone()], key)
                .unwrap(),
        )
    }

    fn sha256_hex(&self) -> String {
        hex::encode(loka_proxy::tls::fingerprint(&self.der))
    }

    /// Write the pair as a Kubernetes TLS Secret volume does: a new directory, then the
    /// names swapped to it.
    fn write(&self, dir: &Path) {
        let tmp = dir.join(format!("..{}", rand_suffix()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("tls.crt"), &self.cert_pem).unwrap();
        std::fs::write(tmp.join("tls.key"), &self.key_pem).unwrap();
        for name in ["tls.crt", "tls.key"] {
            std::fs::rename(tmp.join(name), dir.join(name)).unwrap();
        }
        let _ = std::fs::remove_dir(&tmp);
    }
}

fn rand_suffix() -> String {
    loka_store::uuid::Uuid::new_v4().simple().to_string()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loka-tls-{tag}-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The proxy's TLS listener on 127.0.0.1:0 with the pair in `dir`.
fn with_tls_listener(cfg: &mut loka_config::Config, dir: &Path, reload: Duration) {
    cfg.server.tls = Some(loka_config::TlsListenerConfig {
        port: 0,
        cert_file: dir.join("tls.crt").display().to_string(),
        key_file: dir.join("tls.key").display().to_string(),
        reload_interval: reload,
        handshake_timeout: Duration::from_secs(2),
    });
}

/// A miner hashing at 20,000 hashes a second (a share about every 20 ms at 1e-7).
fn hashing_miner(addr: std::net::SocketAddr, user: impl Into<String>) -> MinerConfig {
    MinerConfig {
        hashrate: Some(20_000.0),
        ..MinerConfig::new(addr, user)
    }
}

fn tls_miner(addr: std::net::SocketAddr, user: &str, ca: &Ca) -> MinerConfig {
    MinerConfig {
        tls: Some((ca.client(), "localhost".into())),
        ..hashing_miner(addr, user)
    }
}

/// A validity that ended in 2021.
fn expired(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
}

/// Every pool of `cfg` over TLS, trusting the CA file at `ca_file`.
fn trust(cfg: &mut loka_config::Config, ca_file: &Path) {
    for p in &mut cfg.pools {
        p.tls = true;
        p.tls_ca_file = Some(ca_file.display().to_string());
    }
}

/// Handshakes with pools that failed for `why`.
fn pool_failures(proxy: &loka_proxy::runtime::ProxyHandle, why: PoolFailure) -> u64 {
    proxy
        .shared
        .stats
        .tls
        .pool_failures()
        .find(|(r, _)| *r == why)
        .map_or(0, |(_, n)| n)
}

/// What `/health/pool` says of each pool.
async fn health_pools(proxy: &loka_proxy::runtime::ProxyHandle) -> Vec<serde_json::Value> {
    let url = format!("http://{}/health/pool", proxy.api_addr.unwrap());
    let health: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    health["pools"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_miner_mines_through_the_tls_port_beside_the_plain_one() {
    let pool = pool().await;
    let ca = Ca::new("Loka test CA");
    let dir = temp_dir("miner");
    ca.leaf(&["localhost", "127.0.0.1"], |_| {}).write(&dir);
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.api.enabled = true;
    cfg.api.port = 0;
    with_tls_listener(&mut cfg, &dir, Duration::from_secs(60));
    let proxy = proxy(cfg).await;
    let tls_addr = proxy.tls_addr.expect("a TLS listener");

    let secure = SimMiner::spawn(tls_miner(tls_addr, "farm.tls", &ca));
    let plain = SimMiner::spawn(hashing_miner(proxy.stratum_addr, "farm.plain"));
    for m in [&secure, &plain] {
        let s = m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{s:?}");
        assert_eq!(s.disconnects, 0, "{s:?}");
    }
    pool.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();

    let stats = &proxy.shared.stats;
    assert_eq!(stats.tls.miner_handshakes.load(Relaxed), 1);
    let by: Vec<_> = stats
        .connections_by_transport()
        .map(|(t, n)| (t.as_str(), n))
        .collect();
    assert_eq!(by, [("tcp", 1), ("tls", 1), ("websocket", 0)]);

    let url = format!("http://{}/metrics/prometheus", proxy.api_addr.unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for line in [
        "loka_stratum_connections_by_transport_total{transport=\"tls\"} 1",
        "loka_stratum_tls_handshakes_total{side=\"miner\"} 1",
        "loka_stratum_tls_handshake_failures_total{side=\"pool\",reason=\"expired\"} 0",
        "loka_stratum_tls_certificate_reloads_total{result=\"loaded\"} 0",
        // rcgen's default validity ends on 4096-01-01T00:00:00Z.
        "loka_stratum_tls_certificate_expiry_timestamp_seconds{} 67090118400",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }

    secure.stop();
    plain.stop();
    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wrong_transport_on_either_port_is_closed_and_counted() {
    let pool = pool().await;
    let ca = Ca::new("Loka test CA");
    let dir = temp_dir("wrong");
    ca.leaf(&["localhost"], |_| {}).write(&dir);
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    with_tls_listener(&mut cfg, &dir, Duration::from_secs(60));
    let proxy = proxy(cfg).await;
    let tls = &proxy.shared.stats.tls;

    // Plain Stratum to the TLS port: closed without an answer, cleanly (FIN, not a reset).
    let mut plain = tokio::net::TcpStream::connect(proxy.tls_addr.unwrap())
        .await
        .unwrap();
    plain
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut rest))
        .await
        .expect("closed within the wait");
    assert_eq!(
        read.unwrap(),
        0,
        "a clean end of stream, nothing said: {rest:?}"
    );
    wait_until("a plain-text client counted", WAIT, || {
        tls.miner_failures()
            .any(|(r, n)| r == MinerFailure::PlainText && n == 1)
    })
    .await;

    // TLS to the plain port: the handshake fails, the connection is closed and counted.
    let refused = StratumClient::connect_tls(proxy.stratum_addr, ca.client(), "localhost").await;
    assert!(refused.is_err(), "a TLS handshake on the plain port");
    wait_until("a ClientHello on the plain port counted", WAIT, || {
        tls.tls_on_plain_port.load(Relaxed) == 1
    })
    .await;

    // A raw TLS record to the plain port: read, then a clean end of stream.
    let mut hello = tokio::net::TcpStream::connect(proxy.stratum_addr)
        .await
        .unwrap();
    let mut record = vec![0x16, 0x03, 0x01, 0x01, 0x00];
    record.resize(5 + 256, 0x01);
    hello.write_all(&record).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, hello.read_to_end(&mut rest))
        .await
        .expect("closed within the wait");
    assert_eq!(read.unwrap(), 0, "a clean end of stream: {rest:?}");
    wait_until(
        "the second ClientHello on the plain port counted",
        WAIT,
        || tls.tls_on_plain_port.load(Relaxed) == 2,
    )
    .await;

    // A client that connects to the TLS port and says nothing is dropped at the timeout.
    let silent = tokio::net::TcpStream::connect(proxy.tls_addr.unwrap())
        .await
        .unwrap();
    wait_until("a silent client timed out", WAIT, || {
        tls.miner_failures()
            .any(|(r, n)| r == MinerFailure::Timeout && n == 1)
    })
    .await;
    drop(silent);

    // A client that does not trust the certificate aborts its handshake: counted.
    let stranger = Ca::new("Another CA");
    let distrust =
        StratumClient::connect_tls(proxy.tls_addr.unwrap(), stranger.client(), "localhost").await;
    assert!(distrust.is_err());
    wait_until("an aborted handshake counted", WAIT, || {
        tls.miner_failures()
            .any(|(r, n)| r == MinerFailure::Protocol && n == 1)
    })
    .await;
    assert_eq!(tls.miner_handshakes.load(Relaxed), 0);
    // Only the two ClientHellos to the plain port reached a session (which closed them).
    assert_eq!(proxy.shared.stats.connections_total.load(Relaxed), 2);

    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate the TLS port presents to a new connection.
async fn presented(addr: std::net::SocketAddr, ca: &Ca) -> CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca.client())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_no_miner_is_dropped() {
    let pool = pool().await;
    let ca = Ca::new("Loka test CA");
    let dir = temp_dir("rotate");
    let first = ca.leaf(&["localhost"], |_| {});
    first.write(&dir);
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    with_tls_listener(&mut cfg, &dir, Duration::from_millis(100));
    let proxy = proxy(cfg).await;
    let addr = proxy.tls_addr.unwrap();
    let tls = &proxy.shared.stats.tls;
    assert_eq!(presented(addr, &ca).await, first.der);

    let miners: Vec<_> = (0..8)
        .map(|i| SimMiner::spawn(tls_miner(addr, &format!("farm.rig{i}"), &ca)))
        .collect();
    for m in &miners {
        m.wait_for(|s| s.accepted >= 2, WAIT).await.unwrap();
    }

    // A new certificate (a new key) from the same CA, swapped in as a Secret update does.
    let second = ca.leaf(&["localhost"], |_| {});
    second.write(&dir);
    wait_until("the new certificate loaded", WAIT, || {
        tls.certificate_reloads.load(Relaxed) == 1
    })
    .await;
    assert_eq!(presented(addr, &ca).await, second.der);

    // A broken pair (the key of another certificate) is refused; the second one stays.
    let other = ca.leaf(&["localhost"], |_| {});
    std::fs::write(dir.join("tls.key"), &other.key_pem).unwrap();
    wait_until("the mismatched pair refused", WAIT, || {
        tls.certificate_reload_errors.load(Relaxed) == 1
    })
    .await;
    assert_eq!(presented(addr, &ca).await, second.der);

    // Every miner kept its connection and goes on mining.
    for m in &miners {
        let before = m.stats().accepted;
        let s = m
            .wait_for(|s| s.accepted >= before + 2, WAIT)
            .await
            .unwrap();
        assert_eq!((s.connects, s.disconnects), (1, 0), "{s:?}");
        assert_eq!(s.rejected_total(), 0, "{s:?}");
    }
    assert_eq!(tls.certificate_reloads.load(Relaxed), 1);
    for m in &miners {
        m.stop();
    }
    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_proxy_refuses_to_start_on_a_bad_certificate_pair_naming_the_file() {
    let ca = Ca::new("Loka test CA");
    let dir = temp_dir("bad");
    let leaf = ca.leaf(&["localhost"], |_| {});
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    let mut cfg = config(&["127.0.0.1:1".parse().unwrap()], Mode::Aggregate);
    with_tls_listener(&mut cfg, &dir, Duration::from_secs(60));
    let pools = loka_proxy::upstream::resolve_pools(&cfg, |_| None).unwrap();
    let e = loka_proxy::runtime::start(cfg.clone(), pools.clone(), None)
        .await
        .err()
        .expect("a key file without a key");
    let text = format!("{e:#}");
    assert!(
        text.contains("server.tls") && text.contains("tls.key"),
        "{text}"
    );

    std::fs::remove_file(dir.join("tls.crt")).unwrap();
    let e = loka_proxy::runtime::start(cfg, pools, None)
        .await
        .err()
        .expect("a missing certificate file");
    let text = format!("{e:#}");
    assert!(text.contains("tls.crt"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS pool simulator presenting `leaf`.
async fn tls_pool(leaf: &Leaf) -> loka_sim::pool::MockPool {
    let server = leaf.server();
    pool_with(move |c| loka_sim::pool::MockPoolConfig {
        tls: Some(server),
        ..c
    })
    .await
}

async fn mine_to_a_tls_pool(mode: Mode) {
    let ca = Ca::new("Pool CA");
    let dir = temp_dir("pool");
    let pool = tls_pool(&ca.leaf(&["127.0.0.1"], |_| {})).await;
    let mut cfg = config(&[pool.addr()], mode);
    trust(&mut cfg, &ca.write(&dir));
    let proxy = proxy(cfg).await;
    let miners: Vec<_> = (0..2)
        .map(|i| SimMiner::spawn(hashing_miner(proxy.stratum_addr, format!("farm.rig{i}"))))
        .collect();
    for m in &miners {
        let s = m.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
        assert_eq!(s.rejected_total(), 0, "{s:?}");
    }
    let p = pool.wait_for(|s| s.accepted >= 2, WAIT).await.unwrap();
    assert_eq!(p.rejected_total(), 0, "{p:?}");
    assert_eq!(p.tls_handshake_failures, 0);
    let handshakes = proxy.shared.stats.tls.pool_handshakes.load(Relaxed);
    let sessions = if mode == Mode::Aggregate { 1 } else { 2 };
    assert_eq!(handshakes, sessions, "one TLS session per upstream session");
    for m in &miners {
        m.stop();
    }
    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_proxy_mines_to_a_tls_pool_in_aggregate_mode() {
    mine_to_a_tls_pool(Mode::Aggregate).await;
}

#[tokio::test]
async fn the_proxy_mines_to_a_tls_pool_in_passthrough_mode() {
    mine_to_a_tls_pool(Mode::Passthrough).await;
}

#[tokio::test]
async fn expired_wrong_host_self_signed_and_unpinned_pool_certificates_are_refused_and_failed_over()
{
    let ca = Ca::new("Pool CA");
    let dir = temp_dir("refused");
    let ca_file = ca.write(&dir);
    let expired = tls_pool(&ca.leaf(&["127.0.0.1"], expired)).await;
    let wrong_host = tls_pool(&ca.leaf(&["pool.example.com"], |_| {})).await;
    let self_signed = tls_pool(&Leaf::self_signed(&["127.0.0.1"])).await;
    let pinned_leaf = Leaf::self_signed(&["127.0.0.1"]);
    let mispinned = tls_pool(&pinned_leaf).await;
    let good = tls_pool(&ca.leaf(&["127.0.0.1"], |_| {})).await;
    let bad = [&expired, &wrong_host, &self_signed, &mispinned];
    let mut cfg = config(
        &[
            expired.addr(),
            wrong_host.addr(),
            self_signed.addr(),
            mispinned.addr(),
            good.addr(),
        ],
        Mode::Aggregate,
    );
    trust(&mut cfg, &ca_file);
    // Pinned to another certificate than the one it presents.
    cfg.pools[3].tls_ca_file = None;
    cfg.pools[3].tls_fingerprint = Some(Leaf::self_signed(&["127.0.0.1"]).sha256_hex());
    cfg.api.enabled = true;
    cfg.api.port = 0;
    let proxy = proxy(cfg).await;
    let miner = SimMiner::spawn(hashing_miner(proxy.stratum_addr, "farm.rig"));
    miner.wait_for(|s| s.accepted >= 3, WAIT).await.unwrap();
    good.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();
    for p in bad {
        // Each saw the proxy's handshake fail; none got a Stratum session.
        p.wait_for(|s| s.tls_handshake_failures >= 1, WAIT)
            .await
            .unwrap();
        assert_eq!(p.stats().connections_total, 0);
    }
    let tls = &proxy.shared.stats.tls;
    for why in [
        PoolFailure::Expired,
        PoolFailure::WrongHost,
        PoolFailure::UnknownIssuer,
        PoolFailure::Fingerprint,
    ] {
        assert!(
            pool_failures(&proxy, why) >= 1,
            "{why:?}: {:?}",
            tls.pool_failures().collect::<Vec<_>>()
        );
    }
    assert_eq!(pool_failures(&proxy, PoolFailure::Io), 0);
    // Each pool's reason, as `/health/pool` shows it.
    let pools = health_pools(&proxy).await;
    for (i, words) in [
        "certificate expired",
        "not valid for name",
        "UnknownIssuer",
        "is not the pinned",
    ]
    .iter()
    .enumerate()
    {
        let e = pools[i]["last_error"].as_str().unwrap_or_default();
        assert!(
            e.starts_with("TLS with 127.0.0.1:") && e.contains(words),
            "pool{i}: {e:?}"
        );
        assert_eq!(pools[i]["tls"], true);
        assert!(pools[i]["last_error_at"].is_string());
    }
    assert_eq!(pools[4]["status"], "connected");
    assert_eq!(pools[4]["last_error"], serde_json::Value::Null);
    let status = &proxy.shared.upstream.as_ref().unwrap().status;
    let failures: Vec<_> = status.failures().filter(|(_, n)| *n > 0).collect();
    assert!(
        failures.iter().all(|(k, _)| k.as_str() == "tls"),
        "{failures:?}"
    );
    miner.stop();
    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pool_with_a_self_signed_certificate_is_mined_to_when_pinned() {
    let leaf = Leaf::self_signed(&["127.0.0.1"]);
    let pool = tls_pool(&leaf).await;
    let mut cfg = config(&[pool.addr()], Mode::Aggregate);
    cfg.pools[0].tls = true;
    // Colon-separated, upper case: as `openssl x509 -fingerprint -sha256` prints it.
    let fp = leaf.sha256_hex().to_uppercase();
    let colons: Vec<_> = (0..32).map(|i| &fp[2 * i..2 * i + 2]).collect();
    cfg.pools[0].tls_fingerprint = Some(colons.join(":"));
    let proxy = proxy(cfg).await;
    let miner = SimMiner::spawn(hashing_miner(proxy.stratum_addr, "farm.rig"));
    miner.wait_for(|s| s.accepted >= 2, WAIT).await.unwrap();
    pool.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();
    assert_eq!(proxy.shared.stats.tls.pool_handshakes.load(Relaxed), 1);
    miner.stop();
    proxy.drain(Duration::from_secs(2)).await;
}

#[test]
fn a_pool_ca_file_that_does_not_load_is_named() {
    let dir = temp_dir("ca");
    let mut cfg = config(&["127.0.0.1:1".parse().unwrap()], Mode::Aggregate);
    cfg.pools[0].tls = true;
    cfg.pools[0].tls_ca_file = Some(dir.join("missing.pem").display().to_string());
    let e = loka_proxy::upstream::resolve_pools(&cfg, |_| None).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("pools[pool0].tls: ") && text.contains("missing.pem"),
        "{text}"
    );
    std::fs::write(dir.join("empty.pem"), "no certificates here\n").unwrap();
    cfg.pools[0].tls_ca_file = Some(dir.join("empty.pem").display().to_string());
    let text = loka_proxy::upstream::resolve_pools(&cfg, |_| None)
        .unwrap_err()
        .to_string();
    assert!(text.contains("no PEM CERTIFICATE block"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_pin_on_top_of_a_ca_file_requires_both() {
    let ca = Ca::new("Pool CA");
    let dir = temp_dir("both");
    let ca_file = ca.write(&dir);
    let leaf = ca.leaf(&["127.0.0.1"], |_| {});
    let pinned = tls_pool(&leaf).await;
    // Chains to the CA, but is not the pinned certificate.
    let other = tls_pool(&ca.leaf(&["127.0.0.1"], |_| {})).await;
    let mut cfg = config(&[other.addr(), pinned.addr()], Mode::Aggregate);
    trust(&mut cfg, &ca_file);
    for p in &mut cfg.pools {
        p.tls_fingerprint = Some(leaf.sha256_hex());
    }
    let proxy = proxy(cfg).await;
    let miner = SimMiner::spawn(hashing_miner(proxy.stratum_addr, "farm.rig"));
    miner.wait_for(|s| s.accepted >= 2, WAIT).await.unwrap();
    pinned.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();
    other
        .wait_for(|s| s.tls_handshake_failures >= 1, WAIT)
        .await
        .unwrap();
    assert_eq!(other.stats().connections_total, 0);
    assert!(pool_failures(&proxy, PoolFailure::Fingerprint) >= 1);
    miner.stop();
    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Passthrough runs an upstream task per miner: a refused pool certificate still shows in
/// `/health/pool` and the counters, and the miner mines on the next pool.
#[tokio::test]
async fn a_refused_pool_certificate_shows_in_health_in_passthrough_mode() {
    let ca = Ca::new("Pool CA");
    let dir = temp_dir("passthrough");
    let expired = tls_pool(&ca.leaf(&["127.0.0.1"], expired)).await;
    let good = tls_pool(&ca.leaf(&["127.0.0.1"], |_| {})).await;
    let mut cfg = config(&[expired.addr(), good.addr()], Mode::Passthrough);
    trust(&mut cfg, &ca.write(&dir));
    cfg.api.enabled = true;
    cfg.api.port = 0;
    let proxy = proxy(cfg).await;
    let miner = SimMiner::spawn(hashing_miner(proxy.stratum_addr, "farm.rig"));
    miner.wait_for(|s| s.accepted >= 2, WAIT).await.unwrap();
    good.wait_for(|s| s.accepted >= 1, WAIT).await.unwrap();
    assert_eq!(expired.stats().connections_total, 0);
    let pools = health_pools(&proxy).await;
    let e = pools[0]["last_error"].as_str().unwrap_or_default();
    assert!(e.contains("certificate expired"), "{pools:?}");
    assert_eq!(pools[1]["last_error"], serde_json::Value::Null);
    assert!(pool_failures(&proxy, PoolFailure::Expired) >= 1);
    miner.stop();
    proxy.drain(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
