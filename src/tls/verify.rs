//! The client-certificate verifier (rustls' `WebPkiClientVerifier`, with
//! CRLs) and the mapping of its errors onto the handshake-failure reasons
//! that metrics and logs report.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};

use crate::config::{ClientAuthConfig, CrlScope, Toggle};

/// Builds the verifier that every handshake (and every per-request
/// re-check after a reload) uses. Each revocation knob is set on purpose:
///
/// - `crl_scope = "chain"` (default) checks every certificate in the chain
///   against CRLs; `"end_entity"` only the leaf.
/// - `unknown_revocation = "allow"` (default) accepts a certificate whose
///   issuer has no CRL loaded; `"deny"` refuses it.
/// - `expired_crl = "allow"` (default) keeps using a CRL past nextUpdate;
///   `"deny"` refuses certificates that only an expired CRL covers.
///
/// # Errors
/// No usable trust anchor, or a CRL rustls cannot use.
pub fn build_client_verifier(
    cas: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    cfg: &ClientAuthConfig,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("not usable as a trust anchor: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates".into());
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
            .with_crls(crls);
    if cfg.crl_scope == CrlScope::EndEntity {
        builder = builder.only_check_end_entity_revocation();
    }
    if cfg.unknown_revocation == Toggle::Allow {
        builder = builder.allow_unknown_revocation_status();
    }
    if cfg.expired_crl == Toggle::Deny {
        builder = builder.enforce_revocation_expiration();
    }
    builder.build().map_err(|e| e.to_string())
}

/// Why a handshake failed, as the `result` label of
/// `certgate_tls_handshakes_total` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// Revoked by a CRL, or revocation status unknown/stale under a `deny` policy.
    Revoked,
    /// Wrong extended key usage, or a CA certificate presented as a client.
    BadUsage,
    BadSignature,
    Timeout,
    ProtocolError,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::UnknownIssuer,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::Revoked,
        HandshakeFailure::BadUsage,
        HandshakeFailure::BadSignature,
        HandshakeFailure::Timeout,
        HandshakeFailure::ProtocolError,
        HandshakeFailure::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::UnknownIssuer => "unknown_issuer",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::BadUsage => "bad_usage",
            HandshakeFailure::BadSignature => "bad_signature",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ProtocolError => "protocol_error",
            HandshakeFailure::Other => "other",
        }
    }
}

/// Classifies an error from the TLS accept (an `io::Error` that may wrap a
/// `rustls::Error`).
pub fn classify_error(err: &std::io::Error) -> HandshakeFailure {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(e) => classify_rustls(e),
        None => HandshakeFailure::ProtocolError,
    }
}

pub fn classify_rustls(err: &rustls::Error) -> HandshakeFailure {
    use rustls::Error as E;
    match err {
        E::NoCertificatesPresented => HandshakeFailure::NoClientCert,
        E::InvalidCertificate(ce) => classify_certificate(ce),
        E::InvalidCertRevocationList(_) => HandshakeFailure::Revoked,
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::PeerIncompatible(_)
        | E::PeerMisbehaved(_)
        | E::AlertReceived(_)
        | E::DecryptError
        | E::NoApplicationProtocol
        | E::PeerSentOversizedRecord => HandshakeFailure::ProtocolError,
        _ => HandshakeFailure::Other,
    }
}

#[allow(deprecated)]
fn classify_certificate(err: &CertificateError) -> HandshakeFailure {
    use CertificateError as C;
    match err {
        C::UnknownIssuer => HandshakeFailure::UnknownIssuer,
        C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => HandshakeFailure::NotYetValid,
        C::Revoked
        | C::UnknownRevocationStatus
        | C::ExpiredRevocationList
        | C::ExpiredRevocationListContext { .. } => HandshakeFailure::Revoked,
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => HandshakeFailure::BadUsage,
        C::BadSignature
        | C::UnsupportedSignatureAlgorithm
        | C::UnsupportedSignatureAlgorithmContext { .. }
        | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            HandshakeFailure::BadSignature
        }
        C::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity | webpki::Error::EndEntityUsedAsCa) => {
                HandshakeFailure::BadUsage
            }
            _ => HandshakeFailure::Other,
        },
        _ => HandshakeFailure::Other,
    }
}
