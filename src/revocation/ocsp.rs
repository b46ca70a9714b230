//! OCSP (RFC 6960) about one certificate: the responder named in its
//! Authority Information Access, a request for its CertID (SHA-1, as
//! responders universally support) with a nonce when asked, and the checks
//! on the answer before anything believes it: a successful basic response,
//! signed by the issuer or by a responder certificate the issuer made for
//! OCSP signing (verified by webpki), about this CertID, with our nonce if
//! it echoes one, and current (thisUpdate not in the future, nextUpdate
//! not past). DER is read and written by `x509-ocsp`, never by hand.

use std::time::Duration;

use bytes::Bytes;
use der::asn1::{Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use http::Request;
use http_body_util::Full;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_cert::ext::Extension;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus,
    TbsRequest,
};
use x509_parser::asn1_rs::Any;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::http::{FetchError, HttpFetcher};

/// The largest OCSP response accepted (real ones are a few KiB).
const MAX_RESPONSE_BYTES: usize = 64 << 10;
/// The longest one OCSP exchange may take.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(5);
/// How far a response's times may be off (clock skew with the responder).
const CLOCK_SKEW: i64 = 300;

const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-kp-OCSPSigning (1.3.6.1.5.5.7.3.9), as webpki matches it.
const OCSP_SIGNING_EKU: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];

/// What a responder said about a certificate; also the `result` label of
/// `certgate_ocsp_checks_total` (with `error` for no usable answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked,
    Unknown,
}

impl OcspStatus {
    pub const ALL: [OcspStatus; 3] = [OcspStatus::Good, OcspStatus::Revoked, OcspStatus::Unknown];

    pub fn label(self) -> &'static str {
        match self {
            OcspStatus::Good => "good",
            OcspStatus::Revoked => "revoked",
            OcspStatus::Unknown => "unknown",
        }
    }
}

/// A verified answer about one certificate.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    pub status: OcspStatus,
    pub responder: String,
    pub this_update_unix: i64,
    /// nextUpdate; an answer without one is kept for `crl_refresh`.
    pub valid_until_unix: i64,
    /// The whole response, as a staple.
    pub der: Vec<u8>,
}

/// Why no answer could be believed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OcspError {
    #[error("the certificate names no OCSP responder (Authority Information Access)")]
    NoResponder,
    #[error("the issuer's certificate is not available to identify the certificate")]
    NoIssuer,
    #[error("certificate unreadable for OCSP: {0}")]
    Certificate(String),
    #[error("responder {responder}: {error}")]
    Fetch {
        responder: String,
        error: FetchError,
    },
    #[error("responder {responder}: {reason}")]
    Response { responder: String, reason: String },
}

/// The OCSP request for one certificate and what its answer must match.
pub struct Query {
    pub responder: String,
    cert_id: CertId,
    nonce: Option<Vec<u8>>,
    issuer: CertificateDer<'static>,
    request: Vec<u8>,
}

/// The first http(s) OCSP responder in the certificate's AIA.
pub fn responder_url(leaf_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(leaf_der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => aia
                .accessdescs
                .iter()
                .filter(|d| d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1")
                .find_map(|d| match &d.access_location {
                    GeneralName::URI(uri)
                        if uri.starts_with("http://") || uri.starts_with("https://") =>
                    {
                        Some((*uri).to_owned())
                    }
                    _ => None,
                }),
            _ => None,
        })
}

/// The issuer of `leaf` among `candidates`: the first whose subject is the
/// leaf's issuer name. Its key is checked by the answer's signature.
pub fn find_issuer<'a>(
    leaf_der: &[u8],
    candidates: impl IntoIterator<Item = &'a CertificateDer<'a>>,
) -> Option<CertificateDer<'static>> {
    let (_, leaf) = X509Certificate::from_der(leaf_der).ok()?;
    candidates.into_iter().find_map(|c| {
        let (_, cert) = X509Certificate::from_der(c).ok()?;
        (cert.subject().as_raw() == leaf.issuer().as_raw()).then(|| c.clone().into_owned())
    })
}

impl Query {
    /// The request about `leaf`, issued by `issuer`, to `responder`.
    /// `nonce`: ask the responder to echo a fresh random value (answers to
    /// clients), or not (staples, which responders often pre-sign).
    ///
    /// # Errors
    /// A certificate `x509-cert` cannot read.
    pub fn new(
        leaf: &[u8],
        issuer: CertificateDer<'static>,
        responder: String,
        nonce: bool,
    ) -> Result<Query, OcspError> {
        let bad = |e: der::Error| OcspError::Certificate(e.to_string());
        let leaf = x509_cert::Certificate::from_der(leaf).map_err(bad)?;
        let issuing = x509_cert::Certificate::from_der(&issuer).map_err(bad)?;
        let sha1 = |bytes: &[u8]| {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
            OctetString::new(d.as_ref()).map_err(bad)
        };
        let issuer_name = leaf.tbs_certificate.issuer.to_der().map_err(bad)?;
        let issuer_key = issuing
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: SHA1,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: sha1(&issuer_name)?,
            issuer_key_hash: sha1(issuer_key)?,
            serial_number: leaf.tbs_certificate.serial_number,
        };
        let nonce = nonce.then(|| {
            let mut n = vec![0u8; 16];
            let _ = aws_lc_rs::rand::fill(&mut n);
            n
        });
        let extensions = match &nonce {
            Some(n) => Some(vec![Extension {
                extn_id: NONCE,
                critical: false,
                extn_value: OctetString::new(
                    OctetString::new(n.clone())
                        .map_err(bad)?
                        .to_der()
                        .map_err(bad)?,
                )
                .map_err(bad)?,
            }]),
            None => None,
        };
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: x509_ocsp::Version::V1,
                requestor_name: None,
                request_list: vec![x509_ocsp::Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                request_extensions: extensions,
            },
            optional_signature: None,
        }
        .to_der()
        .map_err(bad)?;
        Ok(Query {
            responder,
            cert_id,
            nonce,
            issuer,
            request,
        })
    }

    /// The DER request, as POSTed to the responder.
    pub fn request_der(&self) -> &[u8] {
        &self.request
    }

    /// Asks the responder (HTTP POST) and verifies its answer.
    /// `no_next_update_ttl`: how long an answer without nextUpdate is kept.
    ///
    /// # Errors
    /// [`OcspError`]: unreachable, slow, or an answer that fails a check.
    pub async fn ask(
        &self,
        http: &HttpFetcher,
        no_next_update_ttl: Duration,
    ) -> Result<OcspAnswer, OcspError> {
        let fetch = |error| OcspError::Fetch {
            responder: self.responder.clone(),
            error,
        };
        let req = Request::post(&self.responder)
            .header(http::header::CONTENT_TYPE, "application/ocsp-request")
            .header(http::header::ACCEPT, "application/ocsp-response")
            .body(Full::new(Bytes::from(self.request.clone())))
            .map_err(|e| fetch(FetchError::Connect(e.to_string())))?;
        let answer = http
            .send(req, MAX_RESPONSE_BYTES, MAX_QUERY_TIME)
            .await
            .map_err(fetch)?;
        if answer.status != http::StatusCode::OK {
            return Err(fetch(FetchError::Status(answer.status.as_u16())));
        }
        self.verify(&answer.body, crate::clock::unix_now(), no_next_update_ttl)
    }

    /// Every check on a response, at time `now`.
    ///
    /// # Errors
    /// [`OcspError::Response`] naming the check that failed.
    pub fn verify(
        &self,
        der: &[u8],
        now: i64,
        no_next_update_ttl: Duration,
    ) -> Result<OcspAnswer, OcspError> {
        let refuse = |reason: String| OcspError::Response {
            responder: self.responder.clone(),
            reason,
        };
        let response =
            OcspResponse::from_der(der).map_err(|e| refuse(format!("unreadable: {e}")))?;
        if response.response_status != OcspResponseStatus::Successful {
            return Err(refuse(format!("status {:?}", response.response_status)));
        }
        let bytes = response
            .response_bytes
            .ok_or_else(|| refuse("no response bytes".into()))?;
        if bytes.response_type != BASIC {
            return Err(refuse(format!(
                "response type {} is not basic",
                bytes.response_type
            )));
        }
        let basic_der = bytes.response.as_bytes();
        let basic = BasicOcspResponse::from_der(basic_der)
            .map_err(|e| refuse(format!("unreadable basic response: {e}")))?;
        self.check_signature(basic_der, &basic, now)
            .map_err(refuse)?;
        self.check_nonce(&basic).map_err(refuse)?;
        let single = basic
            .tbs_response_data
            .responses
            .iter()
            .find(|r| same_cert(&r.cert_id, &self.cert_id))
            .ok_or_else(|| refuse("no answer about this certificate".into()))?;
        let unix = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
        let this_update = unix(&single.this_update);
        if this_update > now + CLOCK_SKEW {
            return Err(refuse("thisUpdate is in the future".into()));
        }
        let valid_until = match &single.next_update {
            Some(next) if unix(next) + CLOCK_SKEW < now => {
                return Err(refuse(format!(
                    "stale: nextUpdate {} has passed",
                    crate::identity::rfc3339(unix(next))
                )))
            }
            Some(next) => unix(next),
            None => now + no_next_update_ttl.as_secs() as i64,
        };
        let status = match single.cert_status {
            CertStatus::Good(_) => OcspStatus::Good,
            CertStatus::Revoked(_) => OcspStatus::Revoked,
            CertStatus::Unknown(_) => OcspStatus::Unknown,
        };
        Ok(OcspAnswer {
            status,
            responder: self.responder.clone(),
            this_update_unix: this_update,
            valid_until_unix: valid_until,
            der: der.to_vec(),
        })
    }

    /// The response is signed by the issuer, or by a certificate in it that
    /// the issuer made for OCSP signing, valid now (webpki decides).
    fn check_signature(
        &self,
        basic_der: &[u8],
        basic: &BasicOcspResponse,
        now: i64,
    ) -> Result<(), String> {
        let (tbs, algorithm) =
            signed_parts(basic_der).ok_or_else(|| "unreadable signed data".to_owned())?;
        let signature = basic
            .signature
            .as_bytes()
            .ok_or_else(|| "signature is not whole bytes".to_owned())?;
        if verify_with(&self.issuer, tbs, algorithm, signature) {
            return Ok(());
        }
        let anchor = webpki::anchor_from_trusted_cert(&self.issuer)
            .map_err(|e| format!("issuer unusable: {e}"))?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
        let algs = crate::tls::provider().signature_verification_algorithms.all;
        for cert in basic.certs.iter().flatten() {
            let Ok(der) = cert.to_der() else { continue };
            let der = CertificateDer::from(der);
            let Ok(responder) = webpki::EndEntityCert::try_from(&der) else {
                continue;
            };
            let authorized = responder.verify_for_usage(
                algs,
                std::slice::from_ref(&anchor),
                &[],
                time,
                webpki::KeyUsage::required(OCSP_SIGNING_EKU),
                None,
                None,
            );
            if authorized.is_ok() && verify_with(&der, tbs, algorithm, signature) {
                return Ok(());
            }
        }
        Err("not signed by the issuer or a responder it authorized for OCSP signing".into())
    }

    fn check_nonce(&self, basic: &BasicOcspResponse) -> Result<(), String> {
        let (Some(sent), Some(extensions)) =
            (&self.nonce, &basic.tbs_response_data.response_extensions)
        else {
            // Many responders answer from pre-signed responses without a
            // nonce; freshness then rests on thisUpdate and nextUpdate.
            return Ok(());
        };
        let Some(echoed) = extensions.iter().find(|e| e.extn_id == NONCE) else {
            return Ok(());
        };
        let echoed = OctetString::from_der(echoed.extn_value.as_bytes())
            .map(|o| o.as_bytes().to_vec())
            .unwrap_or_else(|_| echoed.extn_value.as_bytes().to_vec());
        if echoed == *sent {
            Ok(())
        } else {
            Err("the nonce does not match the request's".into())
        }
    }
}

fn same_cert(a: &CertId, b: &CertId) -> bool {
    a.hash_algorithm.oid == b.hash_algorithm.oid
        && a.issuer_name_hash == b.issuer_name_hash
        && a.issuer_key_hash == b.issuer_key_hash
        && a.serial_number == b.serial_number
}

/// The signed bytes (tbsResponseData as sent) and the contents of the
/// signatureAlgorithm, the form webpki's algorithms are identified by.
fn signed_parts(basic_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, outer) = Any::from_der(basic_der).ok()?;
    let data = outer.data;
    let (rest, _) = Any::from_der(data).ok()?;
    let tbs = &data[..data.len() - rest.len()];
    let (_, algorithm) = Any::from_der(rest).ok()?;
    Some((tbs, algorithm.data))
}

/// Whether `signature` over `message` verifies with `signer`'s key under
/// one of the handshake's algorithms that `algorithm` names.
fn verify_with(
    signer: &CertificateDer<'_>,
    message: &[u8],
    algorithm: &[u8],
    signature: &[u8],
) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(signer) else {
        return false;
    };
    crate::tls::provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| alg.signature_alg_id().as_ref() == algorithm)
        .any(|alg| cert.verify_signature(*alg, message, signature).is_ok())
}
