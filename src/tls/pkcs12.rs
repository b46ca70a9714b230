//! PKCS#12 key stores and trust stores, for teams that already keep their
//! server identity in `server.ssl.key-store` and their client CAs in a
//! `trust-store`. Both modern (PBES2/AES) and legacy (3DES/RC2) encryption
//! are read by the `p12-keystore` crate. Passwords come from files only.

use std::path::Path;

use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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

fn open(file: &Path, password: &str, policy: Pkcs12ImportPolicy) -> Result<KeyStore, LoadError> {
    let data = std::fs::read(file).map_err(|e| LoadError::new(file, format!("cannot read: {e}")))?;
    KeyStore::from_pkcs12(&data, password, policy).map_err(|e| {
        LoadError::new(
            file,
            format!("cannot open PKCS#12 (wrong password, or not a PKCS#12 file): {e}"),
        )
    })
}

/// The first private key in the store and its certificate chain, leaf first.
pub fn load_keystore(
    file: &Path,
    password_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LoadError> {
    let password = read_password(password_file)?;
    let store = open(file, &password, Pkcs12ImportPolicy::Strict)?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| LoadError::new(file, "PKCS#12 holds no private key with a certificate"))?;
    let certs: Vec<CertificateDer<'static>> = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    if certs.is_empty() {
        return Err(LoadError::new(file, "PKCS#12 private key has no certificate"));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key))
}

/// Every certificate in a trust store (Java `trust-store` style: certificate
/// entries without keys), plus the chains of any key entries.
pub fn load_truststore(
    file: &Path,
    password: &str,
) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let store = open(file, password, Pkcs12ImportPolicy::Relaxed)?;
    let mut out = Vec::new();
    for (_, entry) in store.entries() {
        match entry {
            KeyStoreEntry::Certificate(c) => out.push(CertificateDer::from(c.as_der().to_vec())),
            KeyStoreEntry::PrivateKeyChain(chain) => out.extend(
                chain
                    .certs()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_der().to_vec())),
            ),
            KeyStoreEntry::Secret(_) => {}
        }
    }
    if out.is_empty() {
        return Err(LoadError::new(file, "PKCS#12 trust store holds no certificates"));
    }
    Ok(out)
}

/// PKCS#12 files are DER (a SEQUENCE), PEM files are text: tell them apart
/// by content, with the usual extensions as a hint.
pub fn looks_like_pkcs12(file: &Path, bytes: &[u8]) -> bool {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("p12" | "pfx")) || bytes.first() == Some(&0x30)
}
