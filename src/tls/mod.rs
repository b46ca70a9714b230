//! Everything TLS: reading certificates, keys and CRLs from disk (`load`),
//! checking CRLs against the trusted CAs (`crl`), the client-certificate
//! verifier and the meaning of its errors (`verify`), the rustls
//! `ServerConfig` with SNI certificate selection (`server`), and the
//! session-ticket keys a fleet shares (`tickets`).
//! Chain validation itself is rustls-webpki's; nothing here re-implements it.

pub mod crl;
pub mod load;
pub mod pkcs12;
pub mod server;
pub mod tickets;
pub mod verify;

pub use load::{CertInfo, CertKind, CrlInfo, LoadError};
pub use server::{build_server_config, ServerCerts};
pub use verify::{build_client_verifier, classify_error, keep_refused_leaf, HandshakeFailure};

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The process-wide crypto provider (aws-lc-rs), built once: every config
/// and verifier of every state generation shares it.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Installs [`provider`] as the process default, once at start-up (rustls
/// would otherwise pick one implicitly, or panic when two are compiled in);
/// harmless when already done.
pub fn install_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}
