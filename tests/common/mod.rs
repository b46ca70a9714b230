//! Shared integration-test harness: a PKI made at test time with rcgen,
//! the real `certgate` binary started on loopback, an in-process echo
//! upstream, an mTLS HTTP client (HTTP/1.1 and HTTP/2), and helpers to read
//! the admin endpoints. Every test gets its own temporary directory and
//! ephemeral ports, so tests run in parallel.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BIN: &str = env!("CARGO_BIN_EXE_certgate");

// ---------------------------------------------------------------- PKI ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa2048,
    Ed25519,
}

fn keypair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyKind::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
    .expect("key generation")
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x1000);

fn next_serial() -> SerialNumber {
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SerialNumber::from_slice(&n.to_be_bytes()[2..])
}

/// A certificate authority (root or intermediate) that can issue leaves and CRLs.
pub struct TestCa {
    pub pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// PEMs of the intermediates between this CA and its root (this CA's
    /// own certificate first when it is an intermediate).
    pub chain_pem: String,
}

impl TestCa {
    pub fn root(cn: &str) -> TestCa {
        Self::root_with(cn, KeyKind::P256)
    }

    pub fn root_with(cn: &str, kind: KeyKind) -> TestCa {
        let params = ca_params(cn);
        let key = keypair(kind);
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain_pem: String::new(),
        }
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, cn: &str) -> TestCa {
        let params = ca_params(cn);
        let key = keypair(KeyKind::P256);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
        }
    }

    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = keypair(spec.key);
        let params = spec.params();
        let serial = params.serial_number.clone().expect("serial set");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// A CRL from this CA revoking `revoked`, valid from an hour ago for `valid_for`.
    pub fn crl(&self, revoked: &[&Leaf]) -> String {
        self.crl_with(revoked, time::Duration::days(7))
    }

    pub fn crl_with(&self, revoked: &[&Leaf], valid_for: time::Duration) -> String {
        crl_params(revoked, valid_for, KeyIdMethod::Sha256)
            .signed_by(&self.issuer)
            .expect("sign CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// A CRL that claims to be `self`'s (its issuer name and authority key
    /// identifier) but is signed by `signer`, a look-alike with the same
    /// subject and another key (see [`impostor_ca`]).
    pub fn forged_crl(&self, signer: &TestCa, revoked: &[&Leaf]) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).expect("parse CA");
        let ski = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .expect("CA has a subject key identifier");
        crl_params(
            revoked,
            time::Duration::days(7),
            KeyIdMethod::PreSpecified(ski),
        )
        .signed_by(&signer.issuer)
        .expect("sign CRL")
        .pem()
        .expect("CRL PEM")
    }
}

/// CRL parameters revoking `revoked`, valid from an hour ago for `valid_for`.
fn crl_params(
    revoked: &[&Leaf],
    valid_for: time::Duration,
    key_identifier_method: KeyIdMethod,
) -> CertificateRevocationListParams {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::hours(2),
        next_update: now - time::Duration::hours(1) + valid_for,
        crl_number: next_serial(),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|l| RevokedCertParams {
                serial_number: l.serial.clone(),
                revocation_time: now - time::Duration::minutes(30),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method,
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certgate tests");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(365);
    p.serial_number = Some(next_serial());
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eku {
    Client,
    Server,
    None,
}

/// What a leaf certificate should look like.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub cn: String,
    pub ou: Vec<String>,
    pub o: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub eku: Eku,
    pub key: KeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Marks the leaf as a CA (basicConstraints CA:true).
    pub is_ca: bool,
    /// The keyUsage bits; `None` is `[DigitalSignature]` (see [`LeafSpec::with_key_usages`]).
    pub key_usages: Option<Vec<KeyUsagePurpose>>,
    /// Subject attributes added after the CN (so rendered before it), e.g. a
    /// second CN as `DnType::CustomDnType(vec![2, 5, 4, 3])`.
    pub extra_dn: Vec<(DnType, String)>,
}

impl LeafSpec {
    pub fn client(cn: &str) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            cn: cn.to_owned(),
            ou: vec![],
            o: Some("certgate tests".into()),
            dns: vec![],
            ips: vec![],
            uris: vec![],
            emails: vec![],
            eku: Eku::Client,
            key: KeyKind::P256,
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(30),
            is_ca: false,
            key_usages: None,
            extra_dn: vec![],
        }
    }

    /// The same leaf with exactly these keyUsage bits (an empty list
    /// leaves the extension out).
    pub fn with_key_usages(self, usages: &[KeyUsagePurpose]) -> LeafSpec {
        LeafSpec {
            key_usages: Some(usages.to_vec()),
            ..self
        }
    }

    /// A server certificate for localhost, 127.0.0.1 and ::1.
    pub fn server() -> LeafSpec {
        LeafSpec {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            eku: Eku::Server,
            o: None,
            ..LeafSpec::client("localhost")
        }
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.o {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        for ou in &self.ou {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(
            DnType::CommonName,
            rcgen::DnValue::Utf8String(self.cn.clone()),
        );
        for (ty, value) in &self.extra_dn {
            dn.push(ty.clone(), rcgen::DnValue::Utf8String(value.clone()));
        }
        p.distinguished_name = dn;
        p.subject_alt_names = self
            .dns
            .iter()
            .map(|d| SanType::DnsName(d.clone().try_into().expect("dns name")))
            .chain(self.ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .chain(
                self.uris
                    .iter()
                    .map(|u| SanType::URI(u.clone().try_into().expect("uri"))),
            )
            .chain(
                self.emails
                    .iter()
                    .map(|e| SanType::Rfc822Name(e.clone().try_into().expect("email"))),
            )
            .collect();
        p.extended_key_usages = match self.eku {
            Eku::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Eku::None => vec![],
        };
        p.key_usages = self
            .key_usages
            .clone()
            .unwrap_or_else(|| vec![KeyUsagePurpose::DigitalSignature]);
        if self.is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.serial_number = Some(next_serial());
        p.use_authority_key_identifier_extension = true;
        p
    }
}

/// An issued leaf: its PEM, its chain (leaf then intermediates), and key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub serial: SerialNumber,
}

impl Leaf {
    /// A self-signed certificate (not issued by any test CA).
    pub fn self_signed(spec: &LeafSpec) -> Leaf {
        let key = keypair(spec.key);
        let params = spec.params();
        let serial = params.serial_number.clone().expect("serial set");
        let cert = params.self_signed(&key).expect("self-sign");
        Leaf {
            cert_pem: cert.pem(),
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// SHA-256 of the DER, lowercase hex (what `x-client-fingerprint` carries).
    pub fn fingerprint(&self) -> String {
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &self.der,
        ))
    }

    /// Serial as lowercase hex without leading zeros (`x-client-serial`).
    pub fn serial_hex(&self) -> String {
        let h = hex::encode(self.serial.to_bytes());
        h.trim_start_matches('0').to_owned()
    }
}

/// A look-alike of `ca`: same subject, different key, self-signed.
pub fn impostor_ca(cn: &str) -> TestCa {
    TestCa::root(cn)
}

// ------------------------------------------------------------ files -----

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

/// Replaces `name` atomically (write a temp file, rename over), as deploy
/// tools and editors do.
pub fn replace_atomically(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write temp");
    std::fs::rename(&tmp, dir.join(name)).expect("rename into place");
}

// ---------------------------------------------------------- upstream ----

/// Starts the echo upstream on an ephemeral loopback port (on the current
/// tokio runtime) and returns its address.
pub async fn echo_upstream() -> SocketAddr {
    let (addr, server) = certgate::devtools::echo::bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind echo upstream");
    tokio::spawn(server);
    addr
}

// ----------------------------------------------------------- gateway ----

/// A standard test setup: a temp dir with a client CA, a server certificate
/// and a config pointing at `upstream`. Tweak `extra` (appended TOML) and the
/// files before `start()`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub server_ca: TestCa,
    pub upstream: SocketAddr,
    /// TOML sections appended after the generated ones.
    pub extra: String,
    /// Replaces the generated `[client_auth]` section when set.
    pub client_auth: Option<String>,
    /// Replaces the generated `[listener]` section when set.
    pub listener: Option<String>,
    /// Environment variables for the daemon.
    pub env: Vec<(String, String)>,
}

impl Setup {
    pub fn new(upstream: SocketAddr) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::root("certgate test client CA");
        let server_ca = TestCa::root("certgate test server CA");
        let server = server_ca.issue(&LeafSpec::server());
        write(dir.path(), "client-ca.pem", &ca.pem);
        write(dir.path(), "server.pem", &server.chain_pem);
        write(dir.path(), "server.key", &server.key_pem);
        Setup {
            dir,
            ca,
            server_ca,
            upstream,
            extra: String::new(),
            client_auth: None,
            listener: None,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_text(&self) -> String {
        let listener = self
            .listener
            .clone()
            .unwrap_or_else(|| "[listener]\naddress = \"127.0.0.1:0\"\n".into());
        let client_auth = self
            .client_auth
            .clone()
            .unwrap_or_else(|| "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\n".into());
        format!(
            "{listener}\n[server_tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n\n{client_auth}\n[upstream]\nurl = \"http://{}\"\nconnect_timeout = \"1s\"\ntimeout = \"5s\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{}\n",
            self.upstream, self.extra
        )
    }

    pub fn write_config(&self) -> PathBuf {
        write(self.path(), "certgate.toml", &self.config_text())
    }

    /// Writes the config and starts the daemon; panics if it does not get ready.
    pub fn start(&self) -> Gateway {
        let config = self.write_config();
        Gateway::start(&config, &self.env)
    }

    /// A client that trusts the server CA and presents `leaf`.
    pub fn client(&self, leaf: &Leaf) -> TestClient {
        TestClient::new(&self.server_ca.pem, Some(leaf), Proto::Http1)
    }

    pub fn client_h2(&self, leaf: &Leaf) -> TestClient {
        TestClient::new(&self.server_ca.pem, Some(leaf), Proto::Http2)
    }

    /// A client that presents no certificate.
    pub fn anonymous_client(&self) -> TestClient {
        TestClient::new(&self.server_ca.pem, None, Proto::Http1)
    }
}

/// A running `certgate run` process. Killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `certgate run -c config` with JSON logs and waits until it
    /// reports its listening address.
    pub fn start(config: &Path, env: &[(String, String)]) -> Gateway {
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env("CERTGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn certgate");
        Self::attach(child)
    }

    /// Follows the stderr of an already spawned daemon until it is listening.
    pub fn attach(mut child: Child) -> Gateway {
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(Option<SocketAddr>, Option<SocketAddr>)>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                let mut admin = None;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        let addr = v["address"].as_str().and_then(|a| a.parse().ok());
                        match v["message"].as_str() {
                            Some("admin listener ready") => admin = addr,
                            Some("certgate listening") => {
                                let _ = tx.send((addr, admin));
                            }
                            _ => {}
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
                let _ = tx.send((None, None));
            });
        }
        let (addr, admin) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or((None, None));
        let Some(addr) = addr else {
            let _ = child.kill();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "certgate did not start; logs:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        Gateway {
            child,
            addr,
            admin,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains every one of `needles`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> bool {
        eventually(timeout, || {
            self.logs
                .lock()
                .unwrap()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        })
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get_plain(self.admin.expect("admin listener enabled"), path)
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").1
    }

    /// The value of one sample, e.g. `certgate_tls_handshakes_total{result="ok"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one sample's value from Prometheus text (0 when absent).
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(sample)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

/// A minimal blocking HTTP/1.0 GET for the plain admin listener.
pub fn http_get_plain(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ------------------------------------------------------------ client ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// An mTLS client built on rustls + hyper, as a real API client would be.
#[derive(Clone)]
pub struct TestClient {
    config: Arc<rustls::ClientConfig>,
    proto: Proto,
}

/// A response with its body read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// For echo-upstream replies: the single value of a header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let v = &self.json()["headers"][name];
        let arr = v.as_array()?;
        assert_eq!(arr.len(), 1, "upstream saw {name} {} times: {v}", arr.len());
        arr[0].as_str().map(str::to_owned)
    }
}

impl TestClient {
    pub fn new(server_ca_pem: &str, leaf: Option<&Leaf>, proto: Proto) -> TestClient {
        Self::with_versions(server_ca_pem, leaf, proto, rustls::DEFAULT_VERSIONS)
    }

    pub fn with_versions(
        server_ca_pem: &str,
        leaf: Option<&Leaf>,
        proto: Proto,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TestClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match leaf {
            Some(leaf) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                        .map(|c| c.unwrap())
                        .collect();
                let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match proto {
            Proto::Http1 => vec![b"http/1.1".to_vec()],
            Proto::Http2 => vec![b"h2".to_vec()],
        };
        TestClient {
            config: Arc::new(config),
            proto,
        }
    }

    /// Opens a TLS connection and HTTP session. A refused client certificate
    /// usually surfaces on the first request (TLS 1.3 sends the server's
    /// verdict after the client considers the handshake done).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let io = TokioIo::new(tls);
        let sender = match self.proto {
            Proto::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Proto::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Ok(Conn { sender })
    }

    /// One request on a fresh connection.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, String> {
        self.connect(addr).await?.get(path).await
    }

    pub async fn request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        self.connect(addr)
            .await?
            .request(method, path, headers, body)
            .await
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An open connection; requests on it reuse it (keep-alive / HTTP/2 streams).
pub struct Conn {
    sender: Sender,
}

impl Conn {
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let uri = match &self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://localhost{path}"),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if matches!(self.sender, Sender::H1(_)) {
            builder = builder.header("host", "localhost");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| {
            format!(
                "{e} ({:?})",
                std::error::Error::source(&e).map(|s| s.to_string())
            )
        })?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Whether `tool` is installed. Tests that drive a tool skip with a message
/// when it is missing on a developer's machine; under CI (`CI` set), where
/// `.ci/run` installs every tool, a missing one fails the test instead.
pub fn have(tool: &str) -> bool {
    // `openssl` answers `version`; most other tools `--version`.
    let found = ["--version", "version"].iter().any(|arg| {
        Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    assert!(
        found || std::env::var_os("CI").is_none(),
        "`{tool}` is not installed, and CI must run every test (.ci/run installs it)"
    );
    found
}

// --------------------------------------------- handshake refusals ----

/// How long a refusal takes to be seen by the client and counted.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);

/// Every `result` label of `certgate_tls_handshakes_total` (SPEC §6).
pub const HANDSHAKE_RESULTS: [&str; 12] = [
    "ok",
    "no_client_cert",
    "unknown_issuer",
    "expired",
    "not_yet_valid",
    "revoked",
    "bad_crl",
    "bad_usage",
    "bad_signature",
    "timeout",
    "protocol_error",
    "other",
];

pub fn handshakes(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "certgate_tls_handshakes_total{{result=\"{result}\"}}"
    ))
}

/// The first request of `client` fails with the TLS alert named `alert`,
/// and the refusal is counted under `label` and under no other result.
///
/// The request goes over the bare TLS stream: TLS 1.3 delivers the server's
/// verdict on the client certificate after the client considers the
/// handshake done, so the alert is what the first read returns (hyper's
/// client would only report that its connection task ended).
pub async fn assert_refused(gw: &Gateway, client: &TestClient, label: &str, alert: &str) {
    let err = match client.tls(gw.addr).await {
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET /.certgate/whoami HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            match tokio::time::timeout(REFUSAL_WAIT, tls.read_to_end(&mut buf))
                .await
                .expect("verdict in time")
            {
                Ok(_) => panic!(
                    "the gateway answered a client it must refuse: {}",
                    String::from_utf8_lossy(&buf)
                ),
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e,
    };
    assert!(
        err.contains(&format!("received fatal alert: {alert}")),
        "expected the {alert} alert, got: {err}"
    );
    assert!(
        eventually(REFUSAL_WAIT, || handshakes(gw, label) == 1.0),
        "handshakes_total{{result=\"{label}\"}} did not reach 1; metrics:\n{}",
        gw.metrics()
    );
    for other in HANDSHAKE_RESULTS.iter().filter(|r| **r != label) {
        assert_eq!(
            handshakes(gw, other),
            0.0,
            "result=\"{other}\" moved for a {label} refusal"
        );
    }
    assert!(
        gw.wait_for_log(
            &["TLS handshake refused", &format!("\"reason\":\"{label}\"")],
            REFUSAL_WAIT
        ),
        "no refusal log line with reason {label}:\n{}",
        gw.logs()
    );
}

// ------------------------------------------ raw TLS and HTTP/2 streams ----

impl TestClient {
    /// The bare TLS connection, for checking what ALPN chose or writing
    /// hand-made HTTP/1.1 bytes (header-name case, targets hyper's client
    /// would not send).
    pub async fn tls(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Conn {
    /// Another handle on the same HTTP/2 connection, so that several streams
    /// can be in flight at once; `None` for HTTP/1.1, which cannot multiplex.
    pub fn h2_handle(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => None,
        }
    }
}

// ------------------------------------------- server certificate rotation ----

impl TestClient {
    /// The serial (lowercase hex, as [`Leaf::serial_hex`]) of the server
    /// certificate the gateway presents on a new connection. Resumption is
    /// off so that every call is a full handshake, not the certificate
    /// remembered from an earlier one.
    pub async fn served_serial(&self, addr: SocketAddr) -> Result<String, String> {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("the server sent no certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
        Ok(hex::encode(cert.tbs_certificate.raw_serial())
            .trim_start_matches('0')
            .to_owned())
    }

    /// Polls [`TestClient::served_serial`] until the gateway serves `serial`.
    pub async fn wait_for_serial(
        &self,
        addr: SocketAddr,
        serial: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.served_serial(addr).await;
            if seen.as_deref() == Ok(serial) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "served {seen:?} after {timeout:?}, expected serial {serial}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Setup {
    /// Issues a new server certificate from `server_ca` and renames it over
    /// `server.pem`, then its key over `server.key`, as a deploy tool does:
    /// both land within one `reload.debounce` window. Before `start()`, this
    /// is how a test learns the serial of the first certificate.
    pub fn rotate_server_cert(&self) -> Leaf {
        let leaf = self.server_ca.issue(&LeafSpec::server());
        replace_atomically(self.path(), "server.pem", &leaf.chain_pem);
        replace_atomically(self.path(), "server.key", &leaf.key_pem);
        leaf
    }
}

// ------------------------------------------ hand-written HTTP/1.1 ----

/// Sends one hand-written HTTP/1.1 request head (request line and header
/// lines, each ending in CRLF; `host` and `connection: close` are added) and
/// reads the reply, so that header-name case and request targets reach the
/// gateway exactly as written.
pub async fn raw_http1(client: &TestClient, addr: SocketAddr, head: &str) -> Reply {
    let request = format!("{head}host: localhost\r\nconnection: close\r\n\r\n");
    raw_exchange(client, addr, request.as_bytes()).await
}

/// Writes `request` exactly as given on a new connection and reads the reply
/// until the gateway closes (the request should say `connection: close`).
pub async fn raw_exchange(client: &TestClient, addr: SocketAddr, request: &[u8]) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = client.tls(addr).await.expect("TLS connect");
    tls.write_all(request).await.expect("write request");
    let mut raw = Vec::new();
    // The reply is complete once the gateway closes; a missing close_notify
    // after that is not this test's concern.
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw))
        .await
        .expect("reply in time");
    parse_http1(&raw)
}

pub fn parse_http1(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

/// A gateway-made error: its status, its JSON `error`, and a `request_id`
/// equal to the response's `x-request-id`.
pub fn assert_gateway_error(reply: &Reply, status: u16, error: &str, case: &str) {
    assert_eq!(
        reply.status,
        status,
        "{case}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let json = reply.json();
    assert_eq!(json["error"], error, "{case}: {json}");
    assert_eq!(
        json["request_id"].as_str(),
        reply
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        "{case}: request_id must match the x-request-id response header"
    );
}
