//! A PKI made at test time with rcgen: CAs (roots and intermediates),
//! client and server leaves, and CRLs (including forged ones).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa2048,
    Ed25519,
}

fn keypair(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyKind::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
    }
    .expect("key generation")
}

static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0x1000);

fn next_serial() -> SerialNumber {
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SerialNumber::from_slice(&n.to_be_bytes()[2..])
}

/// A certificate authority (root or intermediate) that can issue leaves and CRLs.
pub struct TestCa {
    pub pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// PEMs of the intermediates between this CA and its root (this CA's
    /// own certificate first when it is an intermediate).
    pub chain_pem: String,
    /// The CA's private key (PKCS#8 PEM), for tools that sign as the CA
    /// (`openssl ocsp -rkey`).
    pub key_pem: String,
}

impl TestCa {
    pub fn root(cn: &str) -> TestCa {
        Self::root_with(cn, KeyKind::P256)
    }

    pub fn root_with(cn: &str, kind: KeyKind) -> TestCa {
        let params = ca_params(cn);
        let key = keypair(kind);
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            chain_pem: String::new(),
        }
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, cn: &str) -> TestCa {
        let params = ca_params(cn);
        let key = keypair(KeyKind::P256);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
        }
    }

    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = keypair(spec.key);
        let params = spec.params();
        let serial = params.serial_number.clone().expect("serial set");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// A CRL from this CA revoking `revoked`, valid from an hour ago for `valid_for`.
    pub fn crl(&self, revoked: &[&Leaf]) -> String {
        self.crl_with(revoked, time::Duration::days(7))
    }

    pub fn crl_with(&self, revoked: &[&Leaf], valid_for: time::Duration) -> String {
        crl_params(revoked, valid_for, KeyIdMethod::Sha256)
            .signed_by(&self.issuer)
            .expect("sign CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// A CRL that claims to be `self`'s (its issuer name and authority key
    /// identifier) but is signed by `signer`, a look-alike with the same
    /// subject and another key (see [`impostor_ca`]).
    pub fn forged_crl(&self, signer: &TestCa, revoked: &[&Leaf]) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).expect("parse CA");
        let ski = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .expect("CA has a subject key identifier");
        crl_params(
            revoked,
            time::Duration::days(7),
            KeyIdMethod::PreSpecified(ski),
        )
        .signed_by(&signer.issuer)
        .expect("sign CRL")
        .pem()
        .expect("CRL PEM")
    }
}

/// CRL parameters revoking `revoked`, valid from an hour ago for `valid_for`.
fn crl_params(
    revoked: &[&Leaf],
    valid_for: time::Duration,
    key_identifier_method: KeyIdMethod,
) -> CertificateRevocationListParams {
    let now = OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::hours(2),
        next_update: now - time::Duration::hours(1) + valid_for,
        crl_number: next_serial(),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|l| RevokedCertParams {
                serial_number: l.serial.clone(),
                revocation_time: now - time::Duration::minutes(30),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method,
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certgate tests");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(365);
    p.serial_number = Some(next_serial());
    p
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eku {
    Client,
    Server,
    /// id-kp-OCSPSigning: a delegated OCSP responder.
    OcspSigning,
    None,
}

/// What a leaf certificate should look like.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub cn: String,
    pub ou: Vec<String>,
    pub o: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub eku: Eku,
    pub key: KeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Marks the leaf as a CA (basicConstraints CA:true).
    pub is_ca: bool,
    /// The keyUsage bits; `None` is `[DigitalSignature]` (see [`LeafSpec::with_key_usages`]).
    pub key_usages: Option<Vec<KeyUsagePurpose>>,
    /// Subject attributes added after the CN (so rendered before it), e.g. a
    /// second CN as `DnType::CustomDnType(vec![2, 5, 4, 3])`.
    pub extra_dn: Vec<(DnType, String)>,
    /// An OCSP responder URL for the Authority Information Access extension.
    pub ocsp_url: Option<String>,
}

impl LeafSpec {
    pub fn client(cn: &str) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            cn: cn.to_owned(),
            ou: vec![],
            o: Some("certgate tests".into()),
            dns: vec![],
            ips: vec![],
            uris: vec![],
            emails: vec![],
            eku: Eku::Client,
            key: KeyKind::P256,
            not_before: now - time::Duration::days(1),
            not_after: now + time::Duration::days(30),
            is_ca: false,
            key_usages: None,
            extra_dn: vec![],
            ocsp_url: None,
        }
    }

    /// The same leaf naming `url` as its OCSP responder (AIA).
    pub fn with_ocsp(self, url: &str) -> LeafSpec {
        LeafSpec {
            ocsp_url: Some(url.to_owned()),
            ..self
        }
    }

    /// The same leaf with exactly these keyUsage bits (an empty list
    /// leaves the extension out).
    pub fn with_key_usages(self, usages: &[KeyUsagePurpose]) -> LeafSpec {
        LeafSpec {
            key_usages: Some(usages.to_vec()),
            ..self
        }
    }

    /// A server certificate for localhost, 127.0.0.1 and ::1.
    pub fn server() -> LeafSpec {
        LeafSpec {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            eku: Eku::Server,
            o: None,
            ..LeafSpec::client("localhost")
        }
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.o {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        for ou in &self.ou {
            dn.push(DnType::OrganizationalUnitName, ou.as_str());
        }
        dn.push(
            DnType::CommonName,
            rcgen::DnValue::Utf8String(self.cn.clone()),
        );
        for (ty, value) in &self.extra_dn {
            dn.push(ty.clone(), rcgen::DnValue::Utf8String(value.clone()));
        }
        p.distinguished_name = dn;
        p.subject_alt_names = self
            .dns
            .iter()
            .map(|d| SanType::DnsName(d.clone().try_into().expect("dns name")))
            .chain(self.ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .chain(
                self.uris
                    .iter()
                    .map(|u| SanType::URI(u.clone().try_into().expect("uri"))),
            )
            .chain(
                self.emails
                    .iter()
                    .map(|e| SanType::Rfc822Name(e.clone().try_into().expect("email"))),
            )
            .collect();
        p.extended_key_usages = match self.eku {
            Eku::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Eku::OcspSigning => vec![ExtendedKeyUsagePurpose::OcspSigning],
            Eku::None => vec![],
        };
        p.key_usages = self
            .key_usages
            .clone()
            .unwrap_or_else(|| vec![KeyUsagePurpose::DigitalSignature]);
        if self.is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.serial_number = Some(next_serial());
        p.use_authority_key_identifier_extension = true;
        if let Some(url) = &self.ocsp_url {
            p.custom_extensions.push(aia_ocsp(url));
        }
        p
    }
}

/// An Authority Information Access extension (RFC 5280 §4.2.2.1) with one
/// OCSP access description; rcgen has no builder for it.
fn aia_ocsp(url: &str) -> rcgen::CustomExtension {
    const ID_AD_OCSP: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1];
    const ID_PE_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
    let value = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(ID_AD_OCSP));
                w.next()
                    .write_tagged_implicit(yasna::Tag::context(6), |w| w.write_ia5_string(url));
            });
        });
    });
    rcgen::CustomExtension::from_oid_content(ID_PE_AIA, value)
}

/// An issued leaf: its PEM, its chain (leaf then intermediates), and key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub serial: SerialNumber,
}

impl Leaf {
    /// A self-signed certificate (not issued by any test CA).
    pub fn self_signed(spec: &LeafSpec) -> Leaf {
        let key = keypair(spec.key);
        let params = spec.params();
        let serial = params.serial_number.clone().expect("serial set");
        let cert = params.self_signed(&key).expect("self-sign");
        Leaf {
            cert_pem: cert.pem(),
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// SHA-256 of the DER, lowercase hex (what `x-client-fingerprint` carries).
    pub fn fingerprint(&self) -> String {
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &self.der,
        ))
    }

    /// Serial as lowercase hex without leading zeros (`x-client-serial`).
    pub fn serial_hex(&self) -> String {
        let h = hex::encode(self.serial.to_bytes());
        h.trim_start_matches('0').to_owned()
    }
}

/// A look-alike of `ca`: same subject, different key, self-signed.
pub fn impostor_ca(cn: &str) -> TestCa {
    TestCa::root(cn)
}
