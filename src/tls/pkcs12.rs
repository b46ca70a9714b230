//! PKCS#12 key stores and trust stores, for teams that already keep their
//! server identity in `server.ssl.key-store` and their client CAs in a
//! `trust-store`. The `p12-keystore` crate reads modern (PBES2 with
//! AES-256 and an HMAC-SHA-256 MAC, OpenSSL 3's default) and legacy
//! (`-legacy`: 3DES keys, RC2-40 certificates, SHA-1 MAC) files, and hands
//! back keys as PKCS#8 whatever their type. Passwords come from files only.
//!
//! Trust stores are read bag by bag rather than through the crate's Java
//! model: that model keeps only certificates carrying Oracle's "trusted"
//! attribute (what `keytool` writes), and would silently drop every
//! certificate of an `openssl pkcs12 -export -nokeys` trust store.

use std::path::Path;

use p12_keystore::error::Error as P12Error;
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, Pkcs12Archive,
    Pkcs12ImportPolicy, PrivateKey, PrivateKeyChain,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::load::read;
use super::LoadError;

/// Reads a password file, dropping one trailing newline (as `echo` writes it).
pub fn read_password(file: &Path) -> Result<String, LoadError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| LoadError::new(file, format!("cannot read password file: {e}")))?;
    Ok(text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_owned())
}

/// What went wrong opening `file`, in an operator's words. `password_file`
/// is where the password came from (`None`: no password was configured).
fn open_error(file: &Path, password_file: Option<&Path>, err: &P12Error) -> LoadError {
    let reason = match err {
        // With a MAC (every OpenSSL and Java store) a wrong password fails
        // the integrity check; without one it fails decryption instead.
        P12Error::MacError(_) | P12Error::UnpadError | P12Error::Pkcs5Error(_) => match password_file {
            Some(pw) => format!(
                "cannot open PKCS#12: wrong password (the password in {} does not open it)",
                pw.display()
            ),
            None => "cannot open PKCS#12: it is password-protected and no password file is configured \
                     (client_auth.trusted_cas_password_file)"
                .to_owned(),
        },
        P12Error::DerError(_) | P12Error::InvalidVersion | P12Error::UnsupportedContentType => {
            format!("not a PKCS#12 file (or a damaged one): {err}")
        }
        _ => format!("cannot open PKCS#12: {err}"),
    };
    LoadError::new(file, reason)
}

fn der(cert: &Certificate) -> CertificateDer<'static> {
    CertificateDer::from(cert.as_der().to_vec())
}

/// The one private key in the store and its certificate chain, leaf first
/// (the crate links the key to its certificate by local key id, then
/// follows issuers).
///
/// # Errors
/// Unreadable files, a wrong password, no key with a certificate, or more
/// than one key (which one to serve would be a guess).
pub fn load_keystore(
    file: &Path,
    password_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LoadError> {
    let password = read_password(password_file)?;
    let store = KeyStore::from_pkcs12(&read(file)?, &password, Pkcs12ImportPolicy::Strict)
        .map_err(|e| open_error(file, Some(password_file), &e))?;
    let keys: Vec<(&String, &PrivateKeyChain)> = store
        .entries()
        .filter_map(|(alias, entry)| match entry {
            KeyStoreEntry::PrivateKeyChain(chain) => Some((alias, chain)),
            _ => None,
        })
        .collect();
    let chain = match keys.as_slice() {
        [] => {
            return Err(LoadError::new(
                file,
                "PKCS#12 holds no private key with its certificate (a trust store given as a key store?)",
            ))
        }
        [(_, chain)] => chain,
        many => {
            let aliases: Vec<&str> = many.iter().map(|(a, _)| a.as_str()).collect();
            return Err(LoadError::new(
                file,
                format!(
                    "PKCS#12 holds {} private keys ({}); certgate serves one per file: export the one to serve",
                    many.len(),
                    aliases.join(", ")
                ),
            ));
        }
    };
    let certs: Vec<CertificateDer<'static>> = chain.certs().iter().map(der).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key))
}

/// Every certificate in a trust store: `keytool`-style trusted certificate
/// entries, `openssl pkcs12 -nokeys` certificates, and the certificates of
/// any key entries. An empty `password` with `password_file = None` opens
/// stores made without a password.
///
/// # Errors
/// Unreadable file, wrong password, or no certificate in the store.
pub fn load_truststore(
    file: &Path,
    password: &str,
    password_file: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let archive = Pkcs12Archive::from_pkcs12(&read(file)?, password)
        .map_err(|e| open_error(file, password_file, &e))?;
    let certs: Vec<CertificateDer<'static>> =
        archive.certs.iter().map(|bag| der(&bag.cert)).collect();
    if certs.is_empty() {
        return Err(LoadError::new(
            file,
            "PKCS#12 trust store holds no certificates",
        ));
    }
    Ok(certs)
}

/// PKCS#12 files are DER, PEM files are text; a DER certificate is DER too
/// and must not be mistaken for a store. The usual extensions decide first.
pub fn looks_like_pkcs12(file: &Path, bytes: &[u8]) -> bool {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(ext.as_deref(), Some("p12" | "pfx")) {
        return true;
    }
    bytes.first() == Some(&0x30) && x509_parser::parse_x509_certificate(bytes).is_err()
}

/// Writes one key entry (alias `server`) as PBES2/AES-256-CBC with an
/// HMAC-SHA-256 MAC, the encryption OpenSSL 3 and Java 17+ use by default.
///
/// # Errors
/// An empty chain, `key_pkcs8` not PKCS#8 DER, or a certificate not X.509 DER.
pub fn write_keystore(
    chain: &[CertificateDer<'_>],
    key_pkcs8: &[u8],
    password: &str,
) -> Result<Vec<u8>, P12Error> {
    let certs = chain
        .iter()
        .map(|c| Certificate::from_der(c))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = chain.first().ok_or(P12Error::InvalidData)?;
    // OpenSSL links key and certificate by the leaf's hash; any stable id works.
    let local_key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
    let entry = PrivateKeyChain::new(
        local_key_id.as_ref(),
        PrivateKey::from_der(key_pkcs8)?,
        certs,
    );
    let mut store = KeyStore::new();
    store.add_entry("server", KeyStoreEntry::PrivateKeyChain(entry));
    modern(&store, password)
}

/// Writes certificate-only entries (aliases `ca`, `ca-2`, ...) marked
/// trusted the way `keytool -importcert` marks them, so Java reads them too.
///
/// # Errors
/// A certificate is not X.509 DER.
pub fn write_truststore(cas: &[CertificateDer<'_>], password: &str) -> Result<Vec<u8>, P12Error> {
    let mut store = KeyStore::new();
    for (i, ca) in cas.iter().enumerate() {
        let alias = if i == 0 {
            "ca".to_owned()
        } else {
            format!("ca-{}", i + 1)
        };
        store.add_entry(
            &alias,
            KeyStoreEntry::Certificate(Certificate::from_der(ca)?),
        );
    }
    modern(&store, password)
}

fn modern(store: &KeyStore, password: &str) -> Result<Vec<u8>, P12Error> {
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .write()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_leaf() -> (
        rcgen::CertifiedKey<rcgen::KeyPair>,
        rcgen::CertifiedKey<rcgen::KeyPair>,
    ) {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let leaf = rcgen::generate_simple_self_signed(vec!["leaf.test".into()]).unwrap();
        (ca, leaf)
    }

    fn temp_file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn keystore_round_trips_key_and_chain_leaf_first() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf) = ca_and_leaf();
        let chain = [leaf.cert.der().clone(), ca.cert.der().clone()];
        let p12 = write_keystore(&chain, &leaf.signing_key.serialize_der(), "s3cret").unwrap();
        let file = temp_file(dir.path(), "server.p12", &p12);
        let pw = temp_file(dir.path(), "pw", b"s3cret\n");
        let (certs, key) = load_keystore(&file, &pw).unwrap();
        assert_eq!(certs[0], *leaf.cert.der(), "leaf first");
        assert_eq!(
            key.secret_der(),
            leaf.signing_key.serialize_der().as_slice()
        );
    }

    #[test]
    fn wrong_password_names_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, leaf) = ca_and_leaf();
        let p12 = write_keystore(
            &[leaf.cert.der().clone()],
            &leaf.signing_key.serialize_der(),
            "right",
        )
        .unwrap();
        let file = temp_file(dir.path(), "server.p12", &p12);
        let pw = temp_file(dir.path(), "pw", b"wrong");
        let err = load_keystore(&file, &pw).unwrap_err();
        assert_eq!(err.file, file);
        assert!(
            err.reason.contains("wrong password") && err.reason.contains("/pw"),
            "{err}"
        );
    }

    #[test]
    fn java_style_truststore_keeps_every_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = ca_and_leaf();
        let cas = [ca.cert.der().clone(), other.cert.der().clone()];
        let file = temp_file(
            dir.path(),
            "trust.p12",
            &write_truststore(&cas, "").unwrap(),
        );
        assert_eq!(load_truststore(&file, "", None).unwrap(), cas);
    }

    #[test]
    fn truststore_with_password_but_none_configured_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ca_and_leaf();
        let file = temp_file(
            dir.path(),
            "trust.p12",
            &write_truststore(&[ca.cert.der().clone()], "changeit").unwrap(),
        );
        let err = load_truststore(&file, "", None).unwrap_err();
        assert!(err.reason.contains("trusted_cas_password_file"), "{err}");
    }

    #[test]
    fn der_certificate_is_not_taken_for_pkcs12() {
        let (ca, _) = ca_and_leaf();
        assert!(!looks_like_pkcs12(Path::new("ca.der"), ca.cert.der()));
        let p12 = write_truststore(&[ca.cert.der().clone()], "").unwrap();
        assert!(looks_like_pkcs12(Path::new("trust.bin"), &p12));
        assert!(looks_like_pkcs12(Path::new("trust.P12"), b"anything"));
    }
}
