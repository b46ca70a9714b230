//! The rustls `ServerConfig` of one state generation: protocol versions,
//! ALPN, the client verifier, resumption keys (fresh, or the fleet's shared
//! ones), and certificate
//! selection by SNI. The resolver only looks into maps built at load time;
//! the handshake never does I/O.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::TlsVersion;

/// Session-ID cache entries per generation, for TLS 1.2 clients that do
/// not take tickets.
const SESSION_CACHE_SIZE: usize = 1024;

/// Server certificates: the default and those chosen by SNI.
#[derive(Debug)]
pub struct ServerCerts {
    pub default: Arc<CertifiedKey>,
    /// Exact lowercase names, and `*.suffix` wildcards stored under `*.suffix`.
    pub by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ServerCerts {
    pub fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ck) = self.by_name.get(&name) {
            return ck.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(ck) = self.by_name.get(&format!("*.{parent}")) {
                return ck.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.select(hello.server_name()))
    }
}

/// The TLS posture of the mTLS listener:
///
/// - TLS 1.2 and 1.3, or 1.3 only with `listener.min_tls_version = "1.3"`;
///   rustls has no SSLv3/TLS 1.0/1.1 at all.
/// - The aws-lc-rs provider's default suites, all AEAD with forward
///   secrecy: TLS 1.3 AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305; TLS 1.2
///   ECDHE-ECDSA/ECDHE-RSA with the same three. rustls implements no CBC,
///   RC4, 3DES, static-RSA or export suite. Key exchange: X25519, P-256,
///   P-384, X25519MLKEM768.
/// - No renegotiation and no compression: rustls implements neither (it
///   refuses a ClientHello that does not offer null compression).
/// - No 0-RTT early data (below), so no replayable requests upstream.
///
/// `shared_tickets` is the fleet's ticketer (`listener.session_ticket_keys`);
/// without it each generation makes its own random keys.
///
/// # Errors
/// rustls refuses the protocol versions for the provider (never in practice).
pub fn build_server_config(
    certs: Arc<ServerCerts>,
    verifier: Arc<dyn ClientCertVerifier>,
    min_version: TlsVersion,
    shared_tickets: Option<Arc<dyn ProducesTickets>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption by stateless tickets (AES-256-CBC + HMAC-SHA256 under
    // random in-memory keys, rotated every 6 hours): any number of clients
    // can resume and the gateway stores nothing per session, where a cache
    // holds ~1 KiB per session (the client chain included) and forgets
    // sessions once full. Fresh keys and a fresh session-ID cache per
    // generation: a session from an older generation cannot resume under
    // the new trust settings (STYLE: resumption is a boundary).
    //
    // Shared keys cross that boundary on purpose, so that a session resumes
    // on any replica and across reloads; what keeps it safe is that every
    // resumed session's chain is verified again under the current state
    // before its first request (proxy::verified), as a full handshake's is.
    config.ticketer = match shared_tickets {
        Some(shared) => shared,
        None => rustls::crypto::aws_lc_rs::Ticketer::new()?,
    };
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    // No 0-RTT: replayable requests must not reach the upstream.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}
