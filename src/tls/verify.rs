//! The client-certificate verifier (rustls' `WebPkiClientVerifier`, with
//! CRLs, plus the leaf checks webpki leaves out), the leaf it refused (for
//! the refusal's log line), and the mapping of its errors onto the
//! handshake-failure reasons that metrics and logs report.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{OtherError, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{ClientAuthConfig, CrlScope, RevocationFallback};

/// Why the client verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("not usable as a trust anchor: {0}")]
    TrustAnchor(rustls::Error),
    #[error("no trusted CA certificates")]
    NoTrustAnchors,
    #[error(transparent)]
    Builder(#[from] rustls::server::VerifierBuilderError),
}

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
/// The result is a [`ClientVerifier`]: webpki's verdict first, then the
/// leaf checks of [`check_leaf`].
///
/// # Errors
/// No usable trust anchor, or a CRL rustls cannot use.
pub fn build_client_verifier(
    cas: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    cfg: &ClientAuthConfig,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(VerifierError::TrustAnchor)?;
    }
    if roots.is_empty() {
        return Err(VerifierError::NoTrustAnchors);
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
            .with_crls(crls);
    if cfg.crl_scope == CrlScope::EndEntity {
        builder = builder.only_check_end_entity_revocation();
    }
    if cfg.unknown_revocation == RevocationFallback::Allow {
        builder = builder.allow_unknown_revocation_status();
    }
    if cfg.expired_crl == RevocationFallback::Deny {
        builder = builder.enforce_revocation_expiration();
    }
    let inner = builder.build()?;
    Ok(Arc::new(ClientVerifier { inner }))
}

tokio::task_local! {
    /// The leaf of the handshake under way in this task, kept when the
    /// verifier refuses it (see [`keep_refused_leaf`]).
    static REFUSED_LEAF: Arc<OnceLock<CertificateDer<'static>>>;
}

/// Runs `handshake`, keeping the leaf certificate the verifier refuses in
/// it: rustls drops the presented chain of a failed handshake, and the
/// refusal's log line must still name the certificate. The verifier runs
/// synchronously inside the handshake's poll, in this task, so a
/// task-local slot ties the refused leaf to this handshake and no other;
/// an accepted leaf is not copied.
pub async fn keep_refused_leaf<F: Future>(
    handshake: F,
) -> (F::Output, Option<CertificateDer<'static>>) {
    let slot = Arc::new(OnceLock::new());
    let output = REFUSED_LEAF.scope(slot.clone(), handshake).await;
    (output, slot.get().cloned())
}

/// Called on every refusal; a verification outside a handshake
/// (`explain`, the per-request re-check) has no slot and keeps nothing.
fn note_refused(end_entity: &CertificateDer<'_>) {
    let _ = REFUSED_LEAF.try_with(|slot| slot.set(end_entity.clone().into_owned()));
}

/// rustls-webpki's client verifier with certgate's checks on the leaf after
/// webpki has accepted the chain. Every other method is webpki's.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|verified| check_leaf(end_entity).map(|()| verified));
        if verified.is_err() {
            note_refused(end_entity);
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// A leaf that webpki accepts but certgate refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeafRefusal {
    /// keyUsage is present and does not assert digitalSignature, which a
    /// TLS client key needs to sign its CertificateVerify (RFC 5280
    /// §4.2.1.3; OpenSSL's `sslclient` purpose refuses it too).
    #[error("the client certificate's keyUsage extension does not allow digitalSignature")]
    KeyUsageLacksDigitalSignature,
}

/// The checks on an already verified leaf. A keyUsage extension x509-parser
/// cannot read (webpki does not look at it) is refused as a bad encoding.
///
/// The refusal is `CertificateError::Other`, so the reason reaches the log
/// line; rustls answers it with the `certificate_unknown` alert, as it does
/// webpki's own CA-as-client refusal.
fn check_leaf(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let bad_encoding = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, cert) = X509Certificate::from_der(end_entity).map_err(|_| bad_encoding())?;
    match cert.key_usage().map_err(|_| bad_encoding())? {
        Some(ku) if !ku.value.digital_signature() => {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(LeafRefusal::KeyUsageLacksDigitalSignature)),
            )))
        }
        _ => Ok(()),
    }
}

/// Why a handshake failed, as the `result` label of
/// `certgate_tls_handshakes_total` names it.
///
/// Revocation outcomes split by what the operator has to fix:
///
/// | rustls error | label |
/// |---|---|
/// | `CertificateError::Revoked` | `revoked` |
/// | `CertificateError::UnknownRevocationStatus` (`unknown_revocation = "deny"`) | `revoked` |
/// | `CertificateError::ExpiredRevocationList*` (`expired_crl = "deny"`) | `bad_crl` |
/// | `Error::InvalidCertRevocationList(_)` (bad CRL signature, issuer not a CRL signer, unsupported CRL algorithm) | `bad_crl` |
///
/// `bad_crl` means a loaded CRL that would decide the certificate cannot be
/// used: nothing is known against the certificate, and refreshing or fixing
/// the CRL lets the client in again. `UnknownRevocationStatus` stays
/// `revoked`: no CRL was at fault (none covers the issuer), and `deny` is the
/// operator's choice to treat "not known to be good" as revoked; counting it
/// as `bad_crl` would page for a CRL that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownIssuer,
    Expired,
    NotYetValid,
    /// On a CRL, or revocation status unknown under `unknown_revocation = "deny"`.
    Revoked,
    /// A CRL needed for the decision is unusable (see the table above).
    BadCrl,
    /// Wrong extended key usage, keyUsage without digitalSignature, or a CA
    /// certificate presented as a client.
    BadUsage,
    BadSignature,
    Timeout,
    ProtocolError,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 11] = [
        HandshakeFailure::NoClientCert,
        HandshakeFailure::UnknownIssuer,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::Revoked,
        HandshakeFailure::BadCrl,
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
            HandshakeFailure::BadCrl => "bad_crl",
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
        E::InvalidCertRevocationList(_) => HandshakeFailure::BadCrl,
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
        C::Revoked | C::UnknownRevocationStatus => HandshakeFailure::Revoked,
        C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
            HandshakeFailure::BadCrl
        }
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
            _ => match other.0.downcast_ref::<LeafRefusal>() {
                Some(LeafRefusal::KeyUsageLacksDigitalSignature) => HandshakeFailure::BadUsage,
                None => HandshakeFailure::Other,
            },
        },
        _ => HandshakeFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertRevocationListError;

    #[test]
    fn revocation_and_leaf_errors_get_their_labels() {
        let other = |e: LeafRefusal| CertificateError::Other(OtherError(Arc::new(e)));
        let cases: [(&str, rustls::Error, HandshakeFailure); 6] = [
            (
                "on a CRL",
                CertificateError::Revoked.into(),
                HandshakeFailure::Revoked,
            ),
            (
                "no CRL for the issuer, deny",
                CertificateError::UnknownRevocationStatus.into(),
                HandshakeFailure::Revoked,
            ),
            (
                "expired CRL, deny",
                CertificateError::ExpiredRevocationList.into(),
                HandshakeFailure::BadCrl,
            ),
            (
                "CRL signature",
                rustls::Error::InvalidCertRevocationList(CertRevocationListError::BadSignature),
                HandshakeFailure::BadCrl,
            ),
            (
                "issuer not a CRL signer",
                rustls::Error::InvalidCertRevocationList(
                    CertRevocationListError::IssuerInvalidForCrl,
                ),
                HandshakeFailure::BadCrl,
            ),
            (
                "keyUsage without digitalSignature",
                other(LeafRefusal::KeyUsageLacksDigitalSignature).into(),
                HandshakeFailure::BadUsage,
            ),
        ];
        for (case, err, want) in cases {
            assert_eq!(classify_rustls(&err), want, "{case}");
        }
    }
}
