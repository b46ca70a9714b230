//! Certificate sources on the real binary: which certificate each SNI name
//! gets (exact, wildcard, default), server key types and PEM key encodings
//! through curl, key/certificate mistakes caught by `certgate check`,
//! PKCS#12 key and trust stores made by OpenSSL and by `dev-pki`, wrong
//! passwords, and an SNI certificate rotated by rename.
//!
//! Tests that drive `curl` or `openssl` skip with a message when the tool
//! is missing; CI installs both.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

// ------------------------------------------------------------ helpers ----

/// Accepts whatever certificate the server sends, whatever its name: these
/// tests ask *which* certificate the server chose. Handshake signatures are
/// still verified, so a completed handshake proves the server holds the
/// certificate's key.
#[derive(Debug)]
struct AnyServerName(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerName {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain the gateway serves for `sni` (`None`: no SNI extension sent),
/// read from the client side of a completed mTLS handshake.
fn served_chain(gw: &Gateway, client: &Leaf, sni: Option<&str>) -> Vec<CertificateDer<'static>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_slice_iter(client.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerName(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("localhost").to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(gw.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}"));
    }
    conn.peer_certificates()
        .expect("server certificates")
        .to_vec()
}

fn server_leaf(name: &str, key: KeyKind) -> LeafSpec {
    LeafSpec {
        cn: name.to_owned(),
        dns: vec![name.to_owned()],
        ips: vec![],
        key,
        ..LeafSpec::server()
    }
}

fn sni_pem_entry(name: &str, stem: &str) -> String {
    format!("[[server_tls.sni]]\nserver_name = \"{name}\"\ncert = \"{stem}.pem\"\nkey = \"{stem}.key\"\n\n")
}

fn sni_p12_entry(name: &str, p12: &str, password_file: &str) -> String {
    format!(
        "[[server_tls.sni]]\nserver_name = \"{name}\"\npkcs12 = \"{p12}\"\npkcs12_password_file = \"{password_file}\"\n\n"
    )
}

/// Writes `leaf` as `{stem}.pem` / `{stem}.key` and serves it for `name`.
fn add_sni(setup: &mut Setup, name: &str, stem: &str, leaf: &Leaf) {
    write(setup.path(), &format!("{stem}.pem"), &leaf.chain_pem);
    write(setup.path(), &format!("{stem}.key"), &leaf.key_pem);
    setup.extra.push_str(&sni_pem_entry(name, stem));
}

const PEM_DEFAULT: &str = "cert = \"server.pem\"\nkey = \"server.key\"\n";

/// The setup's config with the default server identity read from a PKCS#12
/// key store instead of `server.pem`/`server.key`.
fn write_pkcs12_config(setup: &Setup, p12: &str, password_file: &str) -> PathBuf {
    let text = setup.config_text();
    assert!(
        text.contains(PEM_DEFAULT),
        "harness config layout changed:\n{text}"
    );
    let text = text.replace(
        PEM_DEFAULT,
        &format!("pkcs12 = \"{p12}\"\npkcs12_password_file = \"{password_file}\"\n"),
    );
    write(setup.path(), "certgate.toml", &text)
}

/// `certgate check -c config`: (exit code, stdout, stderr).
fn check(config: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(config)
        .env_remove("CERTGATE_CONFIG")
        .output()
        .expect("run certgate check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The tools among `tools` that are not installed (`openssl` has no `--version`).
fn missing(tools: &[&'static str]) -> Vec<&'static str> {
    tools.iter().copied().filter(|t| !have(t)).collect()
}

macro_rules! require {
    ($($tool:literal),+) => {
        let absent = missing(&[$($tool),+]);
        if !absent.is_empty() {
            eprintln!("skipping: {} not installed", absent.join(", "));
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("openssl").current_dir(dir).args(args))
}

/// `openssl pkcs12 -export` of `{stem}.pem` + `{stem}.key` into `{stem}.p12`
/// with the password in `password_file`; `extra` adds flags such as `-legacy`.
fn export_p12(dir: &Path, stem: &str, password_file: &str, extra: &[&str]) -> Output {
    let (pem, key, p12) = (
        format!("{stem}.pem"),
        format!("{stem}.key"),
        format!("{stem}.p12"),
    );
    let pass = format!("file:{password_file}");
    let mut args = vec![
        "pkcs12", "-export", "-in", &pem, "-inkey", &key, "-out", &p12, "-passout", &pass,
    ];
    args.extend_from_slice(extra);
    Command::new("openssl")
        .current_dir(dir)
        .args(&args)
        .output()
        .expect("run openssl")
}

/// A client certificate from the setup's client CA, written as `{stem}.pem`/`.key`.
fn client_files(setup: &Setup, stem: &str) -> Leaf {
    let leaf = setup.ca.issue(&LeafSpec::client(stem));
    write(setup.path(), &format!("{stem}.pem"), &leaf.chain_pem);
    write(setup.path(), &format!("{stem}.key"), &leaf.key_pem);
    leaf
}

/// `GET https://{host}/.certgate/whoami` with curl, `host` resolved to the
/// gateway, verifying the server against `ca_file` (so the certificate
/// served for that SNI name must be valid for it). Returns the HTTP status.
fn curl_whoami(
    gw: &Gateway,
    dir: &Path,
    host: &str,
    ca_file: &str,
    client: &str,
    extra: &[&str],
) -> String {
    let port = gw.addr.port();
    let out = Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "--cacert",
            ca_file,
            "--cert",
            &format!("{client}.pem"),
            "--key",
            &format!("{client}.key"),
        ])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{host}:{port}/.certgate/whoami"))
        .output()
        .expect("run curl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

// -------------------------------------------------------------- SNI -----

#[tokio::test(flavor = "multi_thread")]
async fn sni_names_get_their_certificates_and_everything_else_the_default() {
    let mut setup = Setup::new(echo_upstream().await);
    let api = setup
        .server_ca
        .issue(&server_leaf("api.example.test", KeyKind::P256));
    let web = setup
        .server_ca
        .issue(&server_leaf("web.example.test", KeyKind::P256));
    let wild = setup
        .server_ca
        .issue(&server_leaf("*.example.test", KeyKind::P256));
    add_sni(&mut setup, "api.example.test", "api", &api);
    add_sni(&mut setup, "web.example.test", "web", &web);
    add_sni(&mut setup, "*.example.test", "wild", &wild);
    let gw = setup.start();
    let client = setup.ca.issue(&LeafSpec::client("sni-probe"));
    let default = served_chain(&gw, &client, None);
    assert_ne!(
        default[0], api.der,
        "the default is the setup's localhost certificate"
    );

    let cases: [(&str, Option<&str>, &CertificateDer<'static>); 8] = [
        ("exact name", Some("api.example.test"), &api.der),
        ("second exact name", Some("web.example.test"), &web.der),
        (
            "exact name in other case",
            Some("API.Example.Test"),
            &api.der,
        ),
        (
            "wildcard covers one label",
            Some("billing.example.test"),
            &wild.der,
        ),
        (
            "wildcard does not cover two labels",
            Some("a.b.example.test"),
            &default[0],
        ),
        (
            "wildcard does not cover the bare domain",
            Some("example.test"),
            &default[0],
        ),
        ("unknown name", Some("unknown.other.test"), &default[0]),
        ("no SNI", None, &default[0]),
    ];
    for (case, sni, expected) in cases {
        let served = served_chain(&gw, &client, sni);
        assert_eq!(&served[0], expected, "{case} ({sni:?})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_certificate_rotated_by_rename_is_served_within_two_seconds() {
    let mut setup = Setup::new(echo_upstream().await);
    let old = setup
        .server_ca
        .issue(&server_leaf("api.example.test", KeyKind::P256));
    add_sni(&mut setup, "api.example.test", "api", &old);
    let gw = setup.start();
    let client = setup.ca.issue(&LeafSpec::client("rotation-probe"));
    assert_eq!(
        served_chain(&gw, &client, Some("api.example.test"))[0],
        old.der
    );
    let default = served_chain(&gw, &client, None);

    let new = setup
        .server_ca
        .issue(&server_leaf("api.example.test", KeyKind::P384));
    let start = Instant::now();
    replace_atomically(setup.path(), "api.key", &new.key_pem);
    replace_atomically(setup.path(), "api.pem", &new.chain_pem);
    let rotated = eventually(Duration::from_secs(2), || {
        served_chain(&gw, &client, Some("api.example.test"))[0] == new.der
    });
    assert!(
        rotated,
        "new SNI certificate not served after {:?}; logs:\n{}",
        start.elapsed(),
        gw.logs()
    );
    assert_eq!(
        served_chain(&gw, &client, None),
        default,
        "the default certificate is unchanged"
    );
}

// ------------------------------------------------ key types and PEM -----

#[tokio::test(flavor = "multi_thread")]
async fn server_key_types_and_pem_key_encodings_complete_curl_handshakes() {
    require!("curl", "openssl");
    let mut setup = Setup::new(echo_upstream().await);
    let dir = setup.path().to_path_buf();
    for (name, kind) in [
        ("rsa2048.keys.test", KeyKind::Rsa2048),
        ("p256.keys.test", KeyKind::P256),
        ("p384.keys.test", KeyKind::P384),
        ("ed25519.keys.test", KeyKind::Ed25519),
    ] {
        let stem = name.split('.').next().unwrap();
        let leaf = setup.server_ca.issue(&server_leaf(name, kind));
        add_sni(&mut setup, name, stem, &leaf);
    }

    // RSA-4096 is not among the harness's key kinds: a self-signed
    // certificate, trusted by curl alongside the server CA.
    let rsa4096 =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["rsa4096.keys.test".to_owned()])
        .unwrap()
        .self_signed(&rsa4096)
        .unwrap();
    write(&dir, "rsa4096.pem", &cert.pem());
    write(&dir, "rsa4096.key", &rsa4096.serialize_pem());
    setup
        .extra
        .push_str(&sni_pem_entry("rsa4096.keys.test", "rsa4096"));
    write(
        &dir,
        "curl-ca.pem",
        &format!("{}{}", setup.server_ca.pem, cert.pem()),
    );

    // PKCS#1 and SEC1 key files, converted by OpenSSL from rcgen's PKCS#8.
    for (name, kind, convert, header) in [
        (
            "pkcs1.keys.test",
            KeyKind::Rsa2048,
            &["rsa", "-traditional"][..],
            "-----BEGIN RSA PRIVATE KEY-----",
        ),
        (
            "sec1.keys.test",
            KeyKind::P384,
            &["ec"][..],
            "-----BEGIN EC PRIVATE KEY-----",
        ),
    ] {
        let stem = name.split('.').next().unwrap();
        let leaf = setup.server_ca.issue(&server_leaf(name, kind));
        add_sni(&mut setup, name, stem, &leaf);
        let key = format!("{stem}.key");
        write(&dir, "pkcs8.key", &leaf.key_pem);
        let mut args = convert.to_vec();
        args.extend(["-in", "pkcs8.key", "-out", &key]);
        openssl(&dir, &args);
        let converted = std::fs::read_to_string(dir.join(&key)).unwrap();
        assert!(
            converted.starts_with(header),
            "{name}: openssl wrote {converted:.40}"
        );
    }

    client_files(&setup, "curl-client");
    let gw = setup.start();
    for host in [
        "rsa2048.keys.test",
        "rsa4096.keys.test",
        "p256.keys.test",
        "p384.keys.test",
        "ed25519.keys.test",
        "pkcs1.keys.test",
        "sec1.keys.test",
    ] {
        for (version, flags) in [("TLS 1.3", &[][..]), ("TLS 1.2", &["--tls-max", "1.2"][..])] {
            let status = curl_whoami(&gw, &dir, host, "curl-ca.pem", "curl-client", flags);
            assert_eq!(status, "200", "{host} over {version}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_not_matching_its_certificate_fails_check_naming_the_key_file() {
    let setup = Setup::new(echo_upstream().await);
    let other = setup.server_ca.issue(&LeafSpec::server());
    let key_file = write(setup.path(), "server.key", &other.key_pem);
    let (code, stdout, stderr) = check(&setup.write_config());
    assert_eq!(code, 2, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: private key does not match the certificate in",
            key_file.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_written_root_first_fails_check_saying_the_leaf_goes_first() {
    let setup = Setup::new(echo_upstream().await);
    let leaf = setup.server_ca.issue(&LeafSpec::server());
    write(
        setup.path(),
        "server.pem",
        &format!("{}{}", setup.server_ca.pem, leaf.cert_pem),
    );
    write(setup.path(), "server.key", &leaf.key_pem);
    let (code, _, stderr) = check(&setup.write_config());
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("must start with the leaf: the key belongs to certificate #2"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_certificates_expiring_within_30_days() {
    let mut setup = Setup::new(echo_upstream().await);
    let now = time::OffsetDateTime::now_utc();
    let long = setup.server_ca.issue(&LeafSpec {
        not_after: now + time::Duration::days(90),
        ..LeafSpec::server()
    });
    write(setup.path(), "server.pem", &long.chain_pem);
    write(setup.path(), "server.key", &long.key_pem);
    let soon = setup.server_ca.issue(&LeafSpec {
        not_after: now + time::Duration::days(10),
        ..server_leaf("soon.example.test", KeyKind::P256)
    });
    add_sni(&mut setup, "soon.example.test", "soon", &soon);
    let (code, stdout, stderr) = check(&setup.write_config());
    assert_eq!(code, 0, "{stderr}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
            .to_owned()
    };
    // Days with two decimals: ten days less the seconds since issuing.
    let soon = line("sni [soon.example.test]");
    assert!(
        soon.contains("WARNING: expires in 9.99 days")
            || soon.contains("WARNING: expires in 10.00 days"),
        "{stdout}"
    );
    assert!(!line("server:").contains("WARNING"), "{stdout}");
    assert!(!line("client_ca:").contains("WARNING"), "{stdout}");
}

// ------------------------------------------------------------ PKCS#12 ---

#[tokio::test(flavor = "multi_thread")]
async fn openssl_pkcs12_key_store_and_trust_store_serve_mtls_end_to_end() {
    require!("openssl");
    let mut setup = Setup::new(echo_upstream().await);
    let dir = setup.path().to_path_buf();
    let intermediate = setup
        .server_ca
        .intermediate("certgate test server intermediate");
    let leaf = intermediate.issue(&LeafSpec::server());
    write(&dir, "keystore.pem", &leaf.chain_pem);
    write(&dir, "keystore.key", &leaf.key_pem);
    write(&dir, "keystore.password", "correct horse\n");
    let out = export_p12(&dir, "keystore", "keystore.password", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = openssl(
        &dir,
        &[
            "pkcs12",
            "-in",
            "keystore.p12",
            "-passin",
            "file:keystore.password",
            "-info",
            "-noout",
        ],
    );
    let info = String::from_utf8_lossy(&info.stderr);
    assert!(
        info.contains("AES-256-CBC") && info.contains("MAC: sha256"),
        "not OpenSSL 3's modern default: {info}"
    );

    write(&dir, "trust.password", "changeit\n");
    openssl(
        &dir,
        &[
            "pkcs12",
            "-export",
            "-nokeys",
            "-in",
            "client-ca.pem",
            "-out",
            "clients.p12",
            "-passout",
            "file:trust.password",
        ],
    );
    setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"clients.p12\"]\ntrusted_cas_password_file = \"trust.password\"\n".into(),
    );
    let config = write_pkcs12_config(&setup, "keystore.p12", "keystore.password");
    let gw = Gateway::start(&config, &setup.env);

    // The harness client verifies against the server root, so it only
    // succeeds when the intermediate is served too.
    let client = setup.ca.issue(&LeafSpec::client("p12-client"));
    let reply = setup
        .client(&client)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        reply.json()["subject"]
            .as_str()
            .unwrap()
            .contains("CN=p12-client"),
        "{}",
        reply.json()
    );
    assert_eq!(
        served_chain(&gw, &client, None),
        vec![leaf.der.clone(), intermediate.der.clone()],
        "served chain is leaf first, then the intermediate"
    );
    let stranger = TestCa::root("not in the trust store").issue(&LeafSpec::client("stranger"));
    assert!(
        setup
            .client(&stranger)
            .get(gw.addr, "/.certgate/whoami")
            .await
            .is_err(),
        "a client from a CA outside the trust store is refused"
    );
}

/// Key, certificate and PKCS#12 all made by OpenSSL, as an operator would
/// (OpenSSL 3.0 cannot even read rcgen's PKCS#8 v2 Ed25519 keys). Each file
/// is an SNI entry, so one `certgate check` loads them all. The `-legacy`
/// variant needs OpenSSL's legacy provider and is skipped without it.
#[tokio::test(flavor = "multi_thread")]
async fn openssl_pkcs12_files_of_every_key_type_load_modern_and_legacy() {
    require!("openssl");
    let mut setup = Setup::new(echo_upstream().await);
    let dir = setup.path().to_path_buf();
    write(&dir, "p12.password", "s3cret\n");
    let mut expected = Vec::new();
    for (stem, newkey, key_type) in [
        (
            "p256",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            "ECDSA P-256",
        ),
        (
            "p384",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
            "ECDSA P-384",
        ),
        ("rsa2048", &["rsa:2048"][..], "RSA-2048"),
        ("ed25519", &["ed25519"][..], "Ed25519"),
    ] {
        for (variant, flags) in [("modern", &[][..]), ("legacy", &["-legacy"][..])] {
            let name = format!("{stem}-{variant}.p12.test");
            let file = format!("{stem}-{variant}");
            let (key_file, cert_file) = (format!("{file}.key"), format!("{file}.pem"));
            let (subject, san) = (format!("/CN={name}"), format!("subjectAltName=DNS:{name}"));
            let mut args = vec!["req", "-x509", "-nodes", "-days", "90", "-newkey"];
            args.extend(newkey);
            args.extend([
                "-keyout", &key_file, "-out", &cert_file, "-subj", &subject, "-addext", &san,
            ]);
            openssl(&dir, &args);
            let out = export_p12(&dir, &file, "p12.password", flags);
            if !out.status.success() && variant == "legacy" {
                eprintln!(
                    "skipping {name}: no legacy provider ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            setup.extra.push_str(&sni_p12_entry(
                &name,
                &format!("{file}.p12"),
                "p12.password",
            ));
            expected.push((name, key_type));
        }
    }
    let (code, stdout, stderr) = check(&setup.write_config());
    assert_eq!(code, 0, "{stderr}");
    for (name, key_type) in expected {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("[{name}]")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{stdout}"));
        assert!(line.contains(&format!("key={key_type}")), "{name}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_pkcs12_passwords_are_clear_errors_naming_the_files() {
    require!("openssl");
    let mut setup = Setup::new(echo_upstream().await);
    let dir = setup.path().to_path_buf();
    write(&dir, "right.password", "right\n");
    let keystore_password = write(&dir, "keystore.password", "wrong\n");
    std::fs::copy(dir.join("server.key"), dir.join("keystore.key")).unwrap();
    std::fs::copy(dir.join("server.pem"), dir.join("keystore.pem")).unwrap();
    assert!(export_p12(&dir, "keystore", "right.password", &[])
        .status
        .success());
    openssl(
        &dir,
        &[
            "pkcs12",
            "-export",
            "-nokeys",
            "-in",
            "client-ca.pem",
            "-out",
            "clients.p12",
            "-passout",
            "file:right.password",
        ],
    );
    write(&dir, "trust.password", "also wrong\n");
    setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"clients.p12\"]\ntrusted_cas_password_file = \"trust.password\"\n".into(),
    );
    let (code, stdout, stderr) = check(&write_pkcs12_config(
        &setup,
        "keystore.p12",
        "keystore.password",
    ));
    assert_eq!(code, 2, "stdout: {stdout}\nstderr: {stderr}");
    let keystore = format!(
        "{}: cannot open PKCS#12: wrong password (the password in {} does not open it)",
        dir.join("keystore.p12").display(),
        keystore_password.display()
    );
    assert!(stderr.contains(&keystore), "{stderr}");
    let truststore = format!(
        "{}: cannot open PKCS#12: wrong password",
        dir.join("clients.p12").display()
    );
    assert!(stderr.contains(&truststore), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_pki_pkcs12_files_serve_mtls_and_open_in_openssl() {
    let upstream = echo_upstream().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    run(Command::new(BIN).arg("dev-pki").arg("--out").arg(&dir));
    for (file, mode) in [
        ("server.p12", 0o600),
        ("server.p12.password", 0o600),
        ("ca-truststore.p12", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file} mode");
    }
    let config = write(
        &dir,
        "p12.toml",
        &format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n\n[server_tls]\npkcs12 = \"server.p12\"\npkcs12_password_file = \"server.p12.password\"\n\n\
             [client_auth]\ntrusted_cas = [\"ca-truststore.p12\"]\n\n[upstream]\nurl = \"http://{upstream}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n"
        ),
    );
    let gw = Gateway::start(&config, &[]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let user = Leaf {
        cert_pem: read("user.pem"),
        chain_pem: read("user.pem"),
        key_pem: read("user.key"),
        der: CertificateDer::from_pem_slice(read("user.pem").as_bytes()).unwrap(),
        serial: rcgen::SerialNumber::from_slice(&[1]),
    };
    let reply = TestClient::new(&read("ca.pem"), Some(&user), Proto::Http1)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        served_chain(&gw, &user, None)[0],
        CertificateDer::from_pem_slice(read("server.pem").as_bytes()).unwrap(),
        "server.p12 holds the same identity as server.pem"
    );

    if !missing(&["openssl"]).is_empty() {
        eprintln!("skipping the OpenSSL interoperability half: openssl not installed");
        return;
    }
    let info = openssl(
        &dir,
        &[
            "pkcs12",
            "-in",
            "server.p12",
            "-passin",
            "file:server.p12.password",
            "-info",
            "-nodes",
        ],
    );
    let err = String::from_utf8_lossy(&info.stderr);
    assert!(
        err.contains("AES-256-CBC") && err.contains("MAC: sha256"),
        "modern encryption: {err}"
    );
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("BEGIN PRIVATE KEY"),
        "key readable"
    );
    let trust = openssl(
        &dir,
        &[
            "pkcs12",
            "-in",
            "ca-truststore.p12",
            "-passin",
            "pass:",
            "-nokeys",
        ],
    );
    let ca = CertificateDer::from_pem_slice(read("ca.pem").as_bytes()).unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(&trust.stdout).unwrap(),
        ca,
        "trust store holds the CA"
    );
}
