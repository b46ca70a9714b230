//! CRLs checked against the trusted CAs when a state is loaded. webpki
//! checks a CRL's signature only when a handshake needs it, so a CRL that
//! does not verify would refuse every client of its issuer; here it fails
//! the load instead, naming the file.
//!
//! A CRL's issuer is the trusted CA with the CRL's issuer name (byte for
//! byte, as webpki matches it) and, when both carry one, the subject key
//! identifier the CRL's authority key identifier names. A CRL whose issuer
//! is no trusted CA is an intermediate CA's, whose certificate only the
//! client presents: webpki verifies it against that certificate at the
//! handshake, and one that does not verify refuses as `bad_crl`, never as
//! `revoked`. `check` lists such CRLs. That CA must be
//! allowed to sign CRLs, and the signature must verify with its key under
//! one of the algorithms the handshake accepts (the crypto provider's
//! webpki algorithms, verified by webpki).

use std::path::PathBuf;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::asn1_rs::Any;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::*;

use super::LoadError;

/// Why a CRL cannot be used with the trusted CAs.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("unreadable CRL: {0}")]
    Unparsable(#[from] nom::Err<X509Error>),
    #[error("its authority key identifier matches none of the trusted CAs named {issuer}: it was signed with another key")]
    KeyIdMismatch { issuer: String },
    #[error("trusted CA {issuer} may not sign CRLs: its keyUsage lacks cRLSign")]
    IssuerNotCrlSigner { issuer: String },
    #[error("signature does not verify with the key of trusted CA {issuer}: {error}")]
    BadSignature {
        issuer: String,
        error: webpki::Error,
    },
    #[error("signature algorithm {oid} is not one the handshake accepts")]
    UnsupportedAlgorithm { oid: String },
}

/// A trusted CA as far as CRLs are concerned.
struct Ca<'a> {
    der: &'a CertificateDer<'static>,
    cert: X509Certificate<'a>,
    subject: String,
}

impl Ca<'_> {
    fn key_id(&self) -> Option<&[u8]> {
        self.cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
                _ => None,
            })
    }

    fn may_sign_crls(&self) -> bool {
        match self.cert.key_usage() {
            Ok(Some(ku)) => ku.value.crl_sign(),
            Ok(None) => true,
            Err(_) => false,
        }
    }
}

/// What the loaded CRLs cover, by subject (RFC 4514).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CrlCoverage {
    /// Trusted CAs that no CRL is issued by: with `unknown_revocation =
    /// "allow"` their clients are never revocation-checked.
    pub cas_without_crl: Vec<String>,
    /// Issuers of CRLs that are not trusted CAs (intermediates): verified
    /// at the handshake against the certificate the client presents.
    pub intermediate_issuers: Vec<String>,
}

/// Verifies every CRL issued by a trusted CA against it.
///
/// # Errors
/// One [`LoadError`] per CRL that does not verify, naming its file and the
/// [`CrlError`].
pub fn verify_crls(
    crls: &[(PathBuf, CertificateRevocationListDer<'static>)],
    cas: &[(PathBuf, CertificateDer<'static>)],
) -> Result<CrlCoverage, Vec<LoadError>> {
    // A CA that x509-parser cannot read cannot be a rustls trust anchor
    // either; building the verifier reports it.
    let cas: Vec<Ca<'_>> = cas
        .iter()
        .filter_map(|(_, der)| {
            let (_, cert) = X509Certificate::from_der(der).ok()?;
            let subject = crate::identity::rfc4514(cert.subject());
            Some(Ca { der, cert, subject })
        })
        .collect();
    let mut covered = vec![false; cas.len()];
    let mut intermediate_issuers = Vec::new();
    let mut problems = Vec::new();
    for (file, der) in crls {
        match issuers_of(der, &cas) {
            Ok(Issuers::Trusted(verified)) => verified.into_iter().for_each(|i| covered[i] = true),
            Ok(Issuers::Intermediate(issuer)) => intermediate_issuers.push(issuer),
            Err(e) => problems.push(LoadError::new(file, e.to_string())),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut uncovered: Vec<String> = cas
        .iter()
        .zip(covered)
        .filter(|(_, covered)| !covered)
        .map(|(ca, _)| ca.subject.clone())
        .collect();
    uncovered.sort();
    uncovered.dedup();
    intermediate_issuers.sort();
    intermediate_issuers.dedup();
    Ok(CrlCoverage {
        cas_without_crl: uncovered,
        intermediate_issuers,
    })
}

/// Who issued a CRL.
enum Issuers {
    /// The indexes of the trusted CAs it verifies against (never empty).
    Trusted(Vec<usize>),
    /// No trusted CA has its issuer's name: this subject's.
    Intermediate(String),
}

fn issuers_of(der: &[u8], cas: &[Ca<'_>]) -> Result<Issuers, CrlError> {
    let (_, crl) = CertificateRevocationList::from_der(der)?;
    let issuer = crate::identity::rfc4514(crl.issuer());
    let named: Vec<usize> = (0..cas.len())
        .filter(|&i| cas[i].cert.subject().as_raw() == crl.issuer().as_raw())
        .collect();
    if named.is_empty() {
        return Ok(Issuers::Intermediate(issuer));
    }
    let authority_key_id = crl
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        });
    let candidates: Vec<usize> = named
        .into_iter()
        .filter(|&i| match (authority_key_id, cas[i].key_id()) {
            (Some(aki), Some(ski)) => aki == ski,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(CrlError::KeyIdMismatch { issuer });
    }

    let mut verified = Vec::new();
    let mut last_error = None;
    for i in candidates {
        let ca = &cas[i];
        let outcome = if ca.may_sign_crls() {
            verify_signature(der, &crl, ca)
        } else {
            Err(CrlError::IssuerNotCrlSigner {
                issuer: ca.subject.clone(),
            })
        };
        match outcome {
            Ok(()) => verified.push(i),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) if verified.is_empty() => Err(e),
        _ => Ok(Issuers::Trusted(verified)),
    }
}

/// The CRL's signature, checked by webpki with `ca`'s key under each of
/// the provider's algorithms that the CRL's signatureAlgorithm names.
fn verify_signature(
    der: &[u8],
    crl: &CertificateRevocationList<'_>,
    ca: &Ca<'_>,
) -> Result<(), CrlError> {
    let bad = |error| CrlError::BadSignature {
        issuer: ca.subject.clone(),
        error,
    };
    let unsupported = || CrlError::UnsupportedAlgorithm {
        oid: crl.signature_algorithm.algorithm.to_id_string(),
    };
    let algorithm_id = signature_algorithm_id(der).ok_or_else(unsupported)?;
    let signer = webpki::EndEntityCert::try_from(ca.der).map_err(bad)?;
    let tbs = crl.tbs_cert_list.as_ref();
    let signature = crl.signature_value.data.as_ref();
    let mut outcome = Err(unsupported());
    // Several algorithms share an identifier (ECDSA with SHA-256 on P-256
    // and on P-384 keys); webpki refuses those that do not fit the key.
    for alg in super::provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| alg.signature_alg_id().as_ref() == algorithm_id)
    {
        match signer.verify_signature(*alg, tbs, signature) {
            Ok(()) => return Ok(()),
            Err(e @ webpki::Error::InvalidSignatureForPublicKey) => outcome = Err(bad(e)),
            Err(e) if matches!(outcome, Err(CrlError::UnsupportedAlgorithm { .. })) => {
                outcome = Err(bad(e));
            }
            Err(_) => {}
        }
    }
    outcome
}

/// The contents of the CRL's outer signatureAlgorithm (an
/// `AlgorithmIdentifier` without its SEQUENCE header), the form webpki's
/// algorithms are identified by.
fn signature_algorithm_id(der: &[u8]) -> Option<&[u8]> {
    let (_, certificate_list) = Any::from_der(der).ok()?;
    let (rest, _tbs) = Any::from_der(certificate_list.data).ok()?;
    let (_, algorithm) = Any::from_der(rest).ok()?;
    Some(algorithm.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
    };

    struct TestCa {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(cn: &str, alg: &'static rcgen::SignatureAlgorithm, crl_sign: bool) -> TestCa {
        ca_with_key(cn, KeyPair::generate_for(alg).unwrap(), crl_sign)
    }

    fn ca_with_key(cn: &str, key: KeyPair, crl_sign: bool) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        if crl_sign {
            params.key_usages.push(KeyUsagePurpose::CrlSign);
        }
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn crl(signer: &TestCa, key_id: KeyIdMethod) -> CertificateRevocationListDer<'static> {
        let now = ::time::OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now,
            next_update: now + ::time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: key_id,
        }
        .signed_by(&signer.issuer)
        .unwrap()
        .der()
        .clone()
    }

    fn ski(ca: &TestCa) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(&ca.der).unwrap();
        let cas = [Ca {
            der: &ca.der,
            cert,
            subject: String::new(),
        }];
        cas[0].key_id().unwrap().to_vec()
    }

    fn check(
        crl: CertificateRevocationListDer<'static>,
        cas: &[&TestCa],
    ) -> Result<CrlCoverage, String> {
        let crls = [(PathBuf::from("c.crl"), crl)];
        let cas: Vec<_> = cas
            .iter()
            .map(|c| (PathBuf::from("ca.pem"), c.der.clone()))
            .collect();
        verify_crls(&crls, &cas).map_err(|e| {
            assert_eq!(e.len(), 1);
            e[0].to_string()
        })
    }

    #[test]
    fn crls_verify_against_their_issuer_whatever_its_key_type() {
        for (name, alg) in [
            ("P-256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("P-384", &rcgen::PKCS_ECDSA_P384_SHA384),
            ("Ed25519", &rcgen::PKCS_ED25519),
        ] {
            let issuer = ca("issuer", alg, true);
            let other = ca("other", &rcgen::PKCS_ECDSA_P256_SHA256, true);
            let coverage = check(crl(&issuer, KeyIdMethod::Sha256), &[&issuer, &other])
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                coverage.cas_without_crl,
                vec!["CN=other".to_owned()],
                "{name}"
            );
            assert!(coverage.intermediate_issuers.is_empty(), "{name}");
        }
    }

    #[test]
    fn crls_that_do_not_verify_are_refused_with_the_reason() {
        let issuer = ca("issuer", &rcgen::PKCS_ECDSA_P256_SHA256, true);
        let look_alike = ca("issuer", &rcgen::PKCS_ECDSA_P256_SHA256, true);
        // rcgen signs CRLs only for a CA with cRLSign: the trusted
        // certificate is another one for the same name and key, without it.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let same_key = KeyPair::try_from(key.serialize_der().as_slice()).unwrap();
        let crl_signer = ca_with_key("issuer", key, true);
        let no_crl_sign = ca_with_key("issuer", same_key, false);
        let cases: [(
            &str,
            CertificateRevocationListDer<'static>,
            &[&TestCa],
            &str,
        ); 3] = [
            (
                "signed by another key",
                crl(&look_alike, KeyIdMethod::PreSpecified(ski(&issuer))),
                &[&issuer],
                "c.crl: signature does not verify with the key of trusted CA CN=issuer",
            ),
            (
                "another key's identifier",
                crl(&look_alike, KeyIdMethod::Sha256),
                &[&issuer],
                "authority key identifier matches none of the trusted CAs named CN=issuer",
            ),
            (
                "issuer without cRLSign",
                crl(&crl_signer, KeyIdMethod::Sha256),
                &[&no_crl_sign],
                "may not sign CRLs",
            ),
        ];
        for (case, crl, cas, reason) in cases {
            let err = check(crl, cas).expect_err(case);
            assert!(err.contains(reason), "{case}: {err}");
        }
    }

    #[test]
    fn a_crl_of_an_issuer_that_is_no_trusted_ca_is_left_to_the_handshake() {
        let root = ca("root", &rcgen::PKCS_ECDSA_P256_SHA256, true);
        let intermediate = ca("intermediate", &rcgen::PKCS_ECDSA_P256_SHA256, true);
        let coverage = check(crl(&intermediate, KeyIdMethod::Sha256), &[&root]).unwrap();
        assert_eq!(
            coverage.intermediate_issuers,
            vec!["CN=intermediate".to_owned()]
        );
        assert_eq!(coverage.cas_without_crl, vec!["CN=root".to_owned()]);
    }

    #[test]
    fn a_crl_verifies_if_one_of_the_ca_certificates_named_like_its_issuer_signed_it() {
        let old = ca("issuer", &rcgen::PKCS_ECDSA_P256_SHA256, true);
        let new = ca("issuer", &rcgen::PKCS_ECDSA_P256_SHA256, true);
        check(crl(&new, KeyIdMethod::Sha256), &[&old, &new]).unwrap();
    }
}
