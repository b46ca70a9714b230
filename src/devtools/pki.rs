//! `certgate dev-pki`: a throwaway PKI for development and demos: a CA, a
//! server certificate for localhost (as PEM, and as a PKCS#12 key store with
//! its password file), the CA as a PKCS#12 trust store, client certificates
//! `admin`, `user`, `unmapped` and `revoked`, a CRL revoking the last, and a
//! ready `certgate.toml`. Never for production: the CA key sits next to the
//! certs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::tls::pkcs12;

/// The client certificates `dev-pki` issues, with the roles the generated
/// config maps them to.
pub const CLIENTS: [(&str, &str); 4] = [
    ("admin", "ROLE_ADMIN, ROLE_USER"),
    ("user", "ROLE_USER"),
    ("unmapped", "no roles"),
    ("revoked", "revoked by crl.pem"),
];

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
    #[error("PKCS#12 encoding failed: {0}")]
    Pkcs12(#[from] p12_keystore::error::Error),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn write(path: &Path, contents: impl AsRef<[u8]>, secret: bool) -> Result<(), DevPkiError> {
    let err = |source| DevPkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    file.write_all(contents.as_ref()).map_err(err)
}

fn name(cn: &str, ou: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certgate dev");
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_params(
    cn: &str,
    ou: Option<&str>,
    serial: u8,
    eku: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn, ou);
    p.serial_number = Some(SerialNumber::from_slice(&[0x10, serial]));
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(365);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    p
}

/// Writes the development PKI and config into `out` (created if needed).
///
/// # Errors
/// Key generation or a file write failed.
pub fn generate(out: &Path) -> Result<(), DevPkiError> {
    std::fs::create_dir_all(out).map_err(|source| DevPkiError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("certgate dev CA", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - Duration::hours(1);
    ca_params.not_after = now + Duration::days(3 * 365);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&out.join("ca.pem"), ca_cert.pem(), false)?;
    write(&out.join("ca.key"), ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server = leaf_params("localhost", None, 1, ExtendedKeyUsagePurpose::ServerAuth);
    server.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &issuer)?;
    write(&out.join("server.pem"), server_cert.pem(), false)?;
    write(&out.join("server.key"), server_key.serialize_pem(), true)?;
    write_pkcs12(
        out,
        server_cert.der(),
        &server_key.serialize_der(),
        ca_cert.der(),
    )?;

    let mut revoked_serial = None;
    for (i, (cn, _)) in CLIENTS.iter().enumerate() {
        let ou = match *cn {
            "admin" => Some("platform"),
            "user" => Some("apps"),
            _ => None,
        };
        let mut params = leaf_params(cn, ou, 0x20 + i as u8, ExtendedKeyUsagePurpose::ClientAuth);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://certgate.dev/{cn}").try_into()?,
        )];
        if *cn == "revoked" {
            revoked_serial = params.serial_number.clone();
        }
        let key = KeyPair::generate()?;
        write(
            &out.join(format!("{cn}.pem")),
            params.signed_by(&key, &issuer)?.pem(),
            false,
        )?;
        write(&out.join(format!("{cn}.key")), key.serialize_pem(), true)?;
    }

    let crl = CertificateRevocationListParams {
        this_update: now - Duration::hours(1),
        next_update: now + Duration::days(30),
        crl_number: SerialNumber::from_slice(&[1]),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: revoked_serial.expect("the revoked client is in CLIENTS"),
            revocation_time: now - Duration::minutes(30),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)?;
    write(&out.join("crl.pem"), crl.pem()?, false)?;
    write(&out.join("certgate.toml"), DEV_CONFIG, false)?;
    Ok(())
}

/// The same server identity and CA as PKCS#12, the way a Spring service
/// keeps them: `server.p12` with a random password in `server.p12.password`,
/// and `ca-truststore.p12` with certificate entries only and an empty
/// password (a trust store holds nothing secret; file permissions, not a
/// well-known password like `changeit`, protect its integrity).
fn write_pkcs12(
    out: &Path,
    server: &CertificateDer<'_>,
    server_key_pkcs8: &[u8],
    ca: &CertificateDer<'_>,
) -> Result<(), DevPkiError> {
    let mut secret = [0u8; 16];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| DevPkiError::Random)?;
    let password = hex::encode(secret);
    let keystore =
        pkcs12::write_keystore(std::slice::from_ref(server), server_key_pkcs8, &password)?;
    write(&out.join("server.p12"), keystore, true)?;
    write(
        &out.join("server.p12.password"),
        format!("{password}\n"),
        true,
    )?;
    let truststore = pkcs12::write_truststore(std::slice::from_ref(ca), "")?;
    write(&out.join("ca-truststore.p12"), truststore, false)
}

/// The config `dev-pki` writes: the demo's gateway, routes and roles.
pub const DEV_CONFIG: &str = r#"# certgate development configuration, written by `certgate dev-pki`.
# Paths are relative to this file.

[listener]
address = "127.0.0.1:8443"

[server_tls]
cert = "server.pem"
key = "server.key"
# or the same identity from the PKCS#12 key store:
# pkcs12 = "server.p12"
# pkcs12_password_file = "server.p12.password"

[client_auth]
trusted_cas = ["ca.pem"]         # or the PKCS#12 trust store: ["ca-truststore.p12"]
crls = ["crl.pem"]

[upstream]
url = "http://127.0.0.1:8080"

[roles]
default = []
audit = ["ROLE_ADMIN"]

[[roles.map]]
cn = "admin"
roles = ["ROLE_ADMIN", "ROLE_USER"]

[[roles.map]]
cn = "user"
ou = "apps"
roles = ["ROLE_USER"]

[authorization]
default = "deny"

[[authorization.rule]]
path = "/api"
methods = ["GET", "HEAD"]
roles = ["ROLE_USER"]

[[authorization.rule]]
path = "/api"
methods = ["POST", "PUT", "PATCH", "DELETE"]
roles = ["ROLE_ADMIN"]

[[authorization.rule]]
path = "/admin"
roles = ["ROLE_ADMIN"]

[[authorization.rule]]
path = "/public"
roles = []

[admin]
address = "127.0.0.1:9464"

[log]
format = "text"
"#;
