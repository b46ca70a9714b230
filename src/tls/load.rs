//! Reading TLS material from files. Each error names the file and says what
//! is wrong with it; nothing here logs key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::*;

use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    pub reason: String,
}

impl LoadError {
    pub fn new(file: &Path, reason: impl Into<String>) -> Self {
        LoadError {
            file: file.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// What a loaded certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// `server_tls`'s default certificate.
    Server,
    /// A `[[server_tls.sni]]` certificate.
    Sni,
    /// A trusted client CA.
    ClientCa,
}

impl CertKind {
    /// The name `check` and `/status` show.
    pub const fn label(self) -> &'static str {
        match self {
            CertKind::Server => "server",
            CertKind::Sni => "sni",
            CertKind::ClientCa => "client_ca",
        }
    }

    /// The `kind` label of the expiry gauge. SNI certificates are labelled
    /// `server`: they are served, and an alert on a served certificate
    /// should not depend on which name it answers.
    pub const fn metric_label(self) -> &'static str {
        match self {
            CertKind::Server | CertKind::Sni => "server",
            CertKind::ClientCa => "client_ca",
        }
    }

    /// Whether the gateway presents this certificate to clients.
    pub const fn is_served(self) -> bool {
        match self {
            CertKind::Server | CertKind::Sni => true,
            CertKind::ClientCa => false,
        }
    }
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl serde::Serialize for CertKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

/// What `check`, `/status` and the expiry metrics say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    pub kind: CertKind,
    /// For SNI certificates, the server name they answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    pub file: PathBuf,
    pub subject: String,
    pub dns_names: Vec<String>,
    /// IP address SANs.
    pub ip_addresses: Vec<String>,
    /// Lowercase hex, no leading zeros.
    pub serial: String,
    pub fingerprint_sha256: String,
    pub key_type: String,
    pub not_before: String,
    pub not_before_unix: i64,
    pub not_after: String,
    pub not_after_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CrlInfo {
    pub file: PathBuf,
    /// The URL it was fetched from (`client_auth.crl_urls`); `None` for a file.
    pub url: Option<String>,
    /// RFC 3339.
    pub this_update: String,
    pub issuer: String,
    pub revoked: usize,
    /// RFC 3339; absent when the CRL has no nextUpdate.
    pub next_update: Option<String>,
    pub next_update_unix: Option<i64>,
}

impl CrlInfo {
    /// Where the CRL comes from: its URL, or its file.
    pub fn source(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| self.file.display().to_string())
    }
}

/// Reads a file certgate will parse. A Java KeyStore is refused here,
/// whatever the file was configured as: no parser would recognize it, and
/// each would report a misleading DER or PEM error instead of the fix.
pub(super) fn read(file: &Path) -> Result<Vec<u8>, LoadError> {
    let bytes =
        std::fs::read(file).map_err(|e| LoadError::new(file, format!("cannot read: {e}")))?;
    if let Some(kind) = java_keystore(&bytes) {
        let f = file.display();
        return Err(LoadError::new(
            file,
            format!(
                "this is a {kind} store, which certgate does not read; convert it to PKCS#12 with \
                 `keytool -importkeystore -srckeystore {f} -destkeystore {f}.p12 -deststoretype pkcs12` \
                 and configure the .p12 file"
            ),
        ));
    }
    Ok(bytes)
}

/// The magic numbers `keytool` writes: JKS `FEEDFEED`, JCEKS `CECECECE`.
fn java_keystore(bytes: &[u8]) -> Option<&'static str> {
    match bytes.get(..4)? {
        [0xFE, 0xED, 0xFE, 0xED] => Some("Java KeyStore (JKS)"),
        [0xCE, 0xCE, 0xCE, 0xCE] => Some("Java JCEKS"),
        _ => None,
    }
}

/// A PEM chain, leaf first.
pub fn load_cert_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let bytes = read(file)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::new(file, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        let hint = if bytes.first() == Some(&0x30) {
            ": this looks like DER; convert it with `openssl x509 -inform der -in FILE -out FILE.pem`"
        } else {
            ""
        };
        return Err(LoadError::new(
            file,
            format!("no CERTIFICATE block found (expected PEM){hint}"),
        ));
    }
    for cert in &certs {
        X509Certificate::from_der(cert)
            .map_err(|e| LoadError::new(file, format!("unparsable certificate: {e}")))?;
    }
    Ok(certs)
}

/// A PEM private key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
pub fn load_private_key(file: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let bytes = read(file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        // The daemon cannot prompt for a passphrase, so say what to do.
        let hint = if bytes.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY") {
            "; the key is encrypted: decrypt it with `openssl pkey -in KEY -out KEY.plain` or use a PKCS#12 key store with a password file"
        } else {
            ""
        };
        LoadError::new(
            file,
            format!("no usable private key (PEM PKCS#8, SEC1 or PKCS#1 expected): {e}{hint}"),
        )
    })
}

/// Pairs a chain with its key, refusing a key that does not belong to the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, LoadError> {
    let provider = super::provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        LoadError::new(
            key_file,
            format!(
                "unsupported private key (RSA, ECDSA P-256/P-384/P-521 or Ed25519 expected): {e}"
            ),
        )
    })?;
    let ck = CertifiedKey::new(chain, signing_key);
    if key_matches(&ck) {
        return Ok(Arc::new(ck));
    }
    // A chain written root first is a common mistake; name it precisely.
    let leaf_at = (1..ck.cert.len())
        .find(|&i| key_matches(&CertifiedKey::new(vec![ck.cert[i].clone()], ck.key.clone())));
    let reason = match leaf_at {
        Some(i) => format!(
            "the certificate chain in {} must start with the leaf: the key belongs to certificate #{} in it; put that one first",
            cert_file.display(),
            i + 1
        ),
        None => format!(
            "private key does not match the certificate in {}",
            cert_file.display()
        ),
    };
    Err(LoadError::new(key_file, reason))
}

/// Whether the key is the leaf's. `Unknown` means the key type cannot
/// report its public key; rustls would then find out in the handshake.
fn key_matches(ck: &CertifiedKey) -> bool {
    matches!(
        ck.keys_match(),
        Ok(())
            | Err(rustls::Error::InconsistentKeys(
                rustls::InconsistentKeys::Unknown
            ))
    )
}

/// Trusted CA certificates from PEM files, directories of PEM files, and
/// PKCS#12 trust stores (opened with `password_file`, or no password).
/// In a directory, hidden entries are skipped (Kubernetes keeps the real
/// files under `..data`, reached through the visible symlinks) and files
/// without a CERTIFICATE block are ignored.
pub fn load_ca_certs(
    paths: &[PathBuf],
    password_file: Option<&Path>,
) -> Result<Vec<(PathBuf, CertificateDer<'static>)>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| LoadError::new(path, format!("cannot read: {e}")))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| LoadError::new(path, format!("cannot list directory: {e}")))?
                .filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for file in entries {
                let bytes = read(&file)?;
                let certs = CertificateDer::pem_slice_iter(&bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| LoadError::new(&file, format!("bad PEM: {e}")))?;
                out.extend(certs.into_iter().map(|c| (file.clone(), c)));
            }
            continue;
        }
        let bytes = read(path)?;
        let certs = if super::pkcs12::looks_like_pkcs12(path, &bytes) {
            let password = match password_file {
                Some(f) => super::pkcs12::read_password(f)?,
                None => String::new(),
            };
            super::pkcs12::load_truststore(path, &password, password_file)?
        } else {
            load_cert_chain(path)?
        };
        out.extend(certs.into_iter().map(|c| (path.clone(), c)));
    }
    Ok(out)
}

/// CRLs in PEM (`X509 CRL` blocks) or DER.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<(PathBuf, CertificateRevocationListDer<'static>)>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = read(path)?;
        let crls = crls_from_bytes(&bytes).map_err(|reason| LoadError::new(path, reason))?;
        out.extend(crls.into_iter().map(|crl| (path.clone(), crl)));
    }
    Ok(out)
}

/// The CRLs in a file's or a download's bytes: PEM `X509 CRL` blocks or
/// one DER CRL, each of which must parse.
///
/// # Errors
/// Why the bytes hold no usable CRL.
pub fn crls_from_bytes(bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let crls: Vec<CertificateRevocationListDer<'static>> =
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::pem_slice_iter(bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad PEM CRL: {e}"))?
        } else {
            vec![CertificateRevocationListDer::from(bytes.to_vec())]
        };
    if crls.is_empty() {
        return Err("no X509 CRL block found".into());
    }
    for crl in &crls {
        parse_crl(crl)?;
    }
    Ok(crls)
}

fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, String> {
    CertificateRevocationList::from_der(der)
        .map(|(_, crl)| crl)
        .map_err(|e| format!("not a CRL (PEM or DER expected): {e}"))
}

pub fn crl_info(file: &Path, der: &[u8]) -> Option<CrlInfo> {
    let crl = parse_crl(der).ok()?;
    let next = crl.next_update().map(|t| t.timestamp());
    Some(CrlInfo {
        file: file.to_path_buf(),
        url: None,
        this_update: crate::identity::rfc3339(crl.last_update().timestamp()),
        issuer: crate::identity::rfc4514(crl.issuer()),
        revoked: crl.iter_revoked_certificates().count(),
        next_update: next.map(crate::identity::rfc3339),
        next_update_unix: next,
    })
}

pub fn cert_info(
    kind: CertKind,
    server_name: Option<&str>,
    file: &Path,
    der: &[u8],
) -> Option<CertInfo> {
    let id = Identity::from_der(der).ok()?;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertInfo {
        kind,
        server_name: server_name.map(str::to_owned),
        file: file.to_path_buf(),
        subject: id.subject,
        dns_names: id.dns,
        ip_addresses: ip_addresses(&cert),
        serial: id.serial,
        fingerprint_sha256: id.fingerprint_sha256,
        key_type: key_type(&cert),
        not_before: id.not_before,
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after: id.not_after,
        not_after_unix: id.not_after_unix,
    })
}

/// The iPAddress SANs, IPv4 or IPv6 (other lengths are name constraints'
/// address ranges, never a certificate's own address).
fn ip_addresses(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn key_type(cert: &X509Certificate<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA-{}", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ECDSA P-256".into(),
            384 => "ECDSA P-384".into(),
            // x509-parser counts P-521's 66-byte coordinates as 528 bits.
            521 | 528 => "ECDSA P-521".into(),
            n => format!("ECDSA {n}-bit"),
        },
        _ => {
            let oid = cert.public_key().algorithm.algorithm.to_id_string();
            match oid.as_str() {
                "1.3.101.112" => "Ed25519".into(),
                "1.3.101.113" => "Ed448".into(),
                other => other.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn encrypted_key_says_how_to_decrypt_it() {
        let pem =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let (_dir, path) = file_with(pem);
        let err = load_private_key(&path).unwrap_err();
        assert!(err.reason.contains("the key is encrypted"), "{err}");
    }

    #[test]
    fn der_certificate_says_to_convert_it_to_pem() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let (_dir, path) = file_with(cert.cert.der());
        let err = load_cert_chain(&path).unwrap_err();
        assert!(err.reason.contains("looks like DER"), "{err}");
    }
}
