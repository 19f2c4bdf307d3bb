//! TLS on both sides of the proxy (rustls with the ring provider).
//!
//! Miners: the TLS listener presents the certificate of [`CertificateFiles`], read from two
//! PEM files and read again every `server.tls.reload_interval`; a new pair serves the next
//! handshakes while connected miners keep their sessions, and a pair that does not load is
//! logged and counted while the one in force stays.
//!
//! Pools: [`PoolTls`] checks a pool's certificate against the system's roots, a CA bundle,
//! or a pinned SHA-256 fingerprint (alone: exactly that certificate, as for a pool's
//! self-signed one; with a CA bundle: both). A refused certificate fails the connection
//! attempt like any other pool failure, with the reason ([`PoolFailure`]).

use parking_lot::{Mutex, RwLock};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

/// Setting up TLS failed; the message names the file or setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The one crypto provider of the process (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// SHA-256 of a certificate's DER bytes, as pinned by `tls_fingerprint`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

/// Every certificate in a PEM text, in order.
fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no PEM CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

/// The `notAfter` of a chain's first certificate, in Unix seconds (0 if it does not parse,
/// which [`certified_key`] has already ruled out).
fn not_after(key: &CertifiedKey) -> i64 {
    key.cert
        .first()
        .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map_or(0, |(_, cert)| cert.validity().not_after.timestamp())
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(cert_pem, cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError(format!(
            "{}: no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key_path.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        TlsError(format!(
            "{} with {}: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })
}

/// The miners' listener certificate: the pair of files, and what was last loaded from them.
#[derive(Debug)]
pub struct CertificateFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The bytes of the last pair read (loaded or refused), so an unchanged pair is neither
    /// parsed nor reported again.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertificateFiles {
    /// Load the pair; an error names the file and what is wrong with it.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let (cert, key) = (read(cert_file)?, read(key_file)?);
        let loaded = certified_key(&cert, cert_file, &key, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new((cert, key)),
        })
    }

    /// Read the files again. `Ok(true)`: a new certificate serves the next handshakes;
    /// `Ok(false)`: the files are as last read. An error (unreadable, unparsable, a key that
    /// does not match) is reported once per new content; the certificate in force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let read_pair =
            || -> Result<_, TlsError> { Ok((read(&self.cert_file)?, read(&self.key_file)?)) };
        let load = |(cert, key): &(Vec<u8>, Vec<u8>)| {
            certified_key(cert, &self.cert_file, key, &self.key_file)
        };
        let mut pair = read_pair()?;
        if *self.seen.lock() == pair {
            return Ok(false);
        }
        let mut loaded = load(&pair);
        if loaded.is_err() {
            // A Kubernetes Secret volume replaces both files at once (one symlink swap); a
            // read that straddled the swap paired a new certificate with the old key. Read
            // once more before calling the pair refused.
            let again = read_pair()?;
            if again != pair {
                loaded = load(&again);
                pair = again;
            }
        }
        *self.seen.lock() = pair;
        *self.current.write() = Arc::new(loaded?);
        Ok(true)
    }

    /// When the certificate in force expires (its `notAfter`), in Unix seconds.
    pub fn not_after(&self) -> i64 {
        not_after(&self.current())
    }

    /// The certificate in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The listener's rustls configuration: TLS 1.2 and 1.3, no client certificates, the
/// certificate taken from `certs` at each handshake.
pub fn server_config(certs: Arc<CertificateFiles>) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    Ok(Arc::new(config))
}

/// How the proxy checks one pool's certificate, built once from the pool's settings.
#[derive(Clone)]
pub struct PoolTls {
    pub config: Arc<ClientConfig>,
    /// What the certificate is checked against, for logs and equality.
    pub checked_by: String,
}

impl PartialEq for PoolTls {
    fn eq(&self, other: &Self) -> bool {
        self.checked_by == other.checked_by
    }
}
impl Eq for PoolTls {}

impl std::fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls({})", self.checked_by)
    }
}

/// The system's root certificates, read once.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, TlsError>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(TlsError(format!(
                    "no system root certificates found{why} (set the pool's tls_ca_file)"
                )));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

impl PoolTls {
    /// Roots from `ca_file` (or the system's), and an optional pinned fingerprint.
    pub fn new(ca_file: Option<&Path>, pin: Option<[u8; 32]>) -> Result<PoolTls, TlsError> {
        let chain = |roots: Arc<RootCertStore>| {
            WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsError(e.to_string()))
        };
        let file_roots = |path: &Path| -> Result<Arc<RootCertStore>, TlsError> {
            let mut roots = RootCertStore::empty();
            for cert in certificates(&read(path)?, path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
            }
            Ok(Arc::new(roots))
        };
        let (verifier, checked_by): (Arc<dyn ServerCertVerifier>, String) = match (ca_file, pin) {
            (None, None) => (chain(system_roots()?)?, "system roots".into()),
            (Some(path), None) => (
                chain(file_roots(path)?)?,
                format!("CA file {}", path.display()),
            ),
            // A pin alone is the whole check; with a CA file, both are.
            (path, Some(pin)) => {
                let chain = path.map(|p| chain(file_roots(p)?)).transpose()?;
                let pinned = format!("sha256 {}", hex::encode(pin));
                let checked_by = match path {
                    Some(p) => format!("CA file {} and {pinned}", p.display()),
                    None => pinned,
                };
                (Arc::new(Pinned { pin, chain }), checked_by)
            }
        };
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(PoolTls {
            config: Arc::new(config),
            checked_by,
        })
    }

    /// TLS over a connected stream to `host` (a name or an IP address, checked against the
    /// certificate unless a pin alone decides).
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host:?}: {e}"))
        })?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }
}

/// The pool's certificate is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("certificate fingerprint sha256 {got} is not the pinned {want}")]
pub struct FingerprintMismatch {
    pub got: String,
    pub want: String,
}

/// A pinned certificate, on top of the chain check when a CA bundle is set.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(chain) = &self.chain {
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        let got = fingerprint(end_entity);
        if got != self.pin {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(FingerprintMismatch {
                    got: hex::encode(got),
                    want: hex::encode(self.pin),
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A failed handshake in words: rustls' own, or the pin's for a fingerprint mismatch.
pub fn describe(e: &std::io::Error) -> String {
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) => {
            match o.0.downcast_ref::<FingerprintMismatch>() {
                Some(m) => format!("invalid peer certificate: {m}"),
                None => e.to_string(),
            }
        }
        _ => e.to_string(),
    }
}

/// The rustls error inside an IO error from a handshake, if there is one.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

labelled! {
    /// Why a miner's connection to the TLS port ended before its handshake completed.
    MinerFailure {
        /// The first bytes were not a TLS record (plain Stratum to the TLS port).
        PlainText => "plain_text",
        /// No complete handshake within `server.tls.handshake_timeout`.
        Timeout => "timeout",
        /// The client closed or reset the connection during the handshake.
        Closed => "closed",
        /// The handshake failed (no common version or cipher suite, a bad message, an alert).
        Protocol => "protocol",
    }
}

labelled! {
    /// Why a TLS handshake with a pool failed.
    PoolFailure {
        /// The certificate is not yet or no longer valid.
        Expired => "expired",
        /// The certificate does not name the pool's host.
        WrongHost => "wrong_host",
        /// The certificate does not chain to a trusted root (self-signed, unknown CA).
        UnknownIssuer => "unknown_issuer",
        /// The certificate is not the pinned one.
        Fingerprint => "fingerprint",
        /// Any other certificate problem (bad signature, revoked, wrong usage, unparsable).
        BadCertificate => "bad_certificate",
        /// The handshake failed otherwise (an alert, no common parameters, a bad message).
        Protocol => "protocol",
        /// The connection broke during the handshake.
        Io => "io",
    }
}

impl PoolFailure {
    /// The reason of a failed client handshake.
    pub fn of(e: &std::io::Error) -> PoolFailure {
        use CertificateError as C;
        match rustls_error(e) {
            None => PoolFailure::Io,
            Some(rustls::Error::InvalidCertificate(c)) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => PoolFailure::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => PoolFailure::WrongHost,
                C::UnknownIssuer => PoolFailure::UnknownIssuer,
                C::Other(o) if o.0.downcast_ref::<FingerprintMismatch>().is_some() => {
                    PoolFailure::Fingerprint
                }
                _ => PoolFailure::BadCertificate,
            },
            Some(_) => PoolFailure::Protocol,
        }
    }
}

impl MinerFailure {
    /// The reason of a failed server handshake.
    pub fn of(e: &std::io::Error) -> MinerFailure {
        match rustls_error(e) {
            Some(_) => MinerFailure::Protocol,
            None => MinerFailure::Closed,
        }
    }
}

/// TLS counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Miners' handshakes completed on the TLS port.
    pub miner_handshakes: AtomicU64,
    miner_failures: [AtomicU64; MinerFailure::ALL.len()],
    /// Handshakes completed with pools.
    pub pool_handshakes: AtomicU64,
    pool_failures: [AtomicU64; PoolFailure::ALL.len()],
    /// New listener certificates taken from the files.
    pub certificate_reloads: AtomicU64,
    /// Certificate files read but refused (the certificate in force stayed).
    pub certificate_reload_errors: AtomicU64,
    /// Connections to the plain port that began with a TLS handshake (closed).
    pub tls_on_plain_port: AtomicU64,
    /// When the listener's certificate in force expires, in Unix seconds (0: no TLS port).
    pub certificate_not_after: AtomicI64,
}

impl TlsCounters {
    pub fn miner_failed(&self, why: MinerFailure) {
        self.miner_failures[why as usize].fetch_add(1, Relaxed);
    }

    pub fn pool_failed(&self, why: PoolFailure) {
        self.pool_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Every miner-side reason with its count.
    pub fn miner_failures(&self) -> impl Iterator<Item = (MinerFailure, u64)> + '_ {
        MinerFailure::ALL
            .iter()
            .map(|&k| (k, self.miner_failures[k as usize].load(Relaxed)))
    }

    /// Every pool-side reason with its count.
    pub fn pool_failures(&self) -> impl Iterator<Item = (PoolFailure, u64)> + '_ {
        PoolFailure::ALL
            .iter()
            .map(|&k| (k, self.pool_failures[k as usize].load(Relaxed)))
    }
}

/// A self-signed certificate for localhost and its key, as PEM (unit tests).
#[cfg(test)]
pub(crate) fn self_signed_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_label() {
        assert_eq!(MinerFailure::ALL.len(), 4);
        assert_eq!(PoolFailure::ALL.len(), 7);
        let c = TlsCounters::default();
        for (i, &k) in PoolFailure::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.pool_failed(k);
            }
        }
        for (i, &k) in MinerFailure::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.miner_failed(k);
            }
        }
        let pool: Vec<_> = c.pool_failures().map(|(k, n)| (k.as_str(), n)).collect();
        assert_eq!(pool.len(), 7);
        for (i, (_, n)) in pool.iter().enumerate() {
            assert_eq!(*n, i as u64 + 1);
        }
        let labels: std::collections::BTreeSet<_> = pool.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels.len(), 7);
        let miner: Vec<_> = c.miner_failures().map(|(_, n)| n).collect();
        assert_eq!(miner, [1, 2, 3, 4]);
    }

    #[test]
    fn certificate_files_are_reloaded_when_they_change_and_a_bad_pair_is_reported_once() {
        let dir = std::env::temp_dir().join(format!(
            "loka-tls-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let write = |(c, k): &(String, String)| {
            std::fs::write(&cert, c).unwrap();
            std::fs::write(&key, k).unwrap();
        };
        let leaf = |f: &CertificateFiles| f.current().cert[0].clone();
        let (a, b, c) = (self_signed_pair(), self_signed_pair(), self_signed_pair());
        write(&a);
        let files = CertificateFiles::load(&cert, &key).unwrap();
        let first = leaf(&files);
        // rcgen's default validity ends on 4096-01-01T00:00:00Z.
        assert_eq!(files.not_after(), 67_090_118_400);
        assert_eq!(files.reload(), Ok(false), "unchanged files");

        write(&b);
        assert_eq!(files.reload(), Ok(true));
        let second = leaf(&files);
        assert_ne!(first, second);

        // The key of another certificate: refused, once; the second certificate stays.
        std::fs::write(&key, &c.1).unwrap();
        let e = files.reload().unwrap_err().to_string();
        assert!(e.contains("tls.crt with") && e.contains("tls.key"), "{e}");
        assert_eq!(
            files.reload(),
            Ok(false),
            "the same bad pair is not reported again"
        );
        assert_eq!(leaf(&files), second);

        write(&c);
        assert_eq!(files.reload(), Ok(true));
        assert_ne!(leaf(&files), second);

        std::fs::remove_file(&key).unwrap();
        assert!(files.reload().unwrap_err().to_string().contains("tls.key"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pinned_pool_is_refused_with_the_fingerprint_reason() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                FingerprintMismatch {
                    got: "aa".into(),
                    want: "bb".into(),
                },
            )))),
        );
        assert_eq!(PoolFailure::of(&e), PoolFailure::Fingerprint);
        assert_eq!(
            describe(&e),
            "invalid peer certificate: certificate fingerprint sha256 aa is not the pinned bb"
        );
        let expired = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(PoolFailure::of(&expired), PoolFailure::Expired);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(PoolFailure::of(&eof), PoolFailure::Io);
        assert_eq!(MinerFailure::of(&eof), MinerFailure::Closed);
    }
}
