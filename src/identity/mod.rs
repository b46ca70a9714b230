//! The verified client leaf certificate, read once per connection into the
//! fields that role rules match ([`CertField`]) and identity headers carry. Parsing only:
//! the chain was already verified by rustls before this runs.
//!
//! Every string here is header-safe: visible ASCII and spaces, with any other
//! byte written as `\XX` (hex), so no certificate can inject a header line.
//! The renderings are also unambiguous: a `\` in a value is escaped too, so
//! two different certificates never render the same DN or SAN list.

use std::fmt::Write as _;

use serde::Serialize;
use x509_parser::prelude::*;

mod field;

pub use field::{CertField, Compare};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate has a malformed subjectAltName extension")]
    BadSan,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// RFC 4514 subject DN.
    pub subject: String,
    /// RFC 4514 issuer DN.
    pub issuer: String,
    #[serde(skip)]
    pub cn: Vec<String>,
    #[serde(skip)]
    pub ou: Vec<String>,
    #[serde(skip)]
    pub o: Vec<String>,
    #[serde(skip)]
    pub issuer_cn: Vec<String>,
    /// Lowercase hex, no leading zeros.
    pub serial: String,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,
    #[serde(skip)]
    pub dns: Vec<String>,
    #[serde(skip)]
    pub uri: Vec<String>,
    #[serde(skip)]
    pub email: Vec<String>,
    /// The `spiffe://` URI SAN, when there is exactly one.
    pub spiffe_id: Option<String>,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    #[serde(skip)]
    pub not_after_unix: i64,
}

impl Identity {
    /// Reads the identity fields of a DER certificate.
    ///
    /// # Errors
    /// The bytes are not a certificate, or its SAN extension is malformed.
    pub fn from_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let issuer = cert.issuer();

        let mut id = Identity {
            subject: rfc4514(subject),
            issuer: rfc4514(issuer),
            cn: attribute_values(subject, &oid_registry::OID_X509_COMMON_NAME),
            ou: attribute_values(subject, &oid_registry::OID_X509_ORGANIZATIONAL_UNIT),
            o: attribute_values(subject, &oid_registry::OID_X509_ORGANIZATION_NAME),
            issuer_cn: attribute_values(issuer, &oid_registry::OID_X509_COMMON_NAME),
            serial: serial_hex(cert.raw_serial()),
            fingerprint_sha256: fingerprint_sha256(der),
            not_before: rfc3339(cert.validity().not_before.timestamp()),
            not_after: rfc3339(cert.validity().not_after.timestamp()),
            not_after_unix: cert.validity().not_after.timestamp(),
            ..Identity::default()
        };

        let san = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::BadSan)?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(v) => id.dns.push(escape_visible(v)),
                GeneralName::URI(v) => id.uri.push(escape_visible(v)),
                GeneralName::RFC822Name(v) => id.email.push(escape_visible(v)),
                _ => {}
            }
        }
        let mut spiffe = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(v) if has_spiffe_scheme(v) => Some(*v),
                _ => None,
            });
        id.spiffe_id = match (spiffe.next(), spiffe.next()) {
            (Some(one), None) if is_spiffe_id(one) => Some(one.to_owned()),
            _ => None,
        };
        Ok(id)
    }
}

/// SHA-256 of a DER certificate, lowercase hex: the fingerprint logs,
/// headers and `/status` name certificates by.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// Whether `uri` is in the `spiffe` scheme, in any case: such a URI SAN
/// counts towards "exactly one", valid or not.
fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
}

/// A SPIFFE ID as the SPIFFE ID specification defines it: `spiffe://`, a
/// lowercase trust domain of `[a-z0-9.-_]` (no port, no userinfo), then
/// zero or more `/segment`s of `[A-Za-z0-9.-_]`, none empty, `.` or `..`;
/// no percent-encoding, query or fragment, no trailing `/`.
///
/// ```
/// use certgate::identity::is_spiffe_id;
///
/// assert!(is_spiffe_id("spiffe://acme.org/ns/pay/sa/billing"));
/// assert!(!is_spiffe_id("spiffe://acme.org/ns/pay/../admin"));
/// ```
pub fn is_spiffe_id(uri: &str) -> bool {
    /// The specification's limits on the whole ID and on the trust domain.
    const MAX_ID: usize = 2048;
    const MAX_TRUST_DOMAIN: usize = 255;
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return false;
    };
    let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let td_char = |b: u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_');
    let segment_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    uri.len() <= MAX_ID
        && !trust_domain.is_empty()
        && trust_domain.len() <= MAX_TRUST_DOMAIN
        && trust_domain.bytes().all(td_char)
        && path
            .split('/')
            .skip(1)
            .all(|segment| !matches!(segment, "" | "." | "..") && segment.bytes().all(segment_char))
}

/// A comma-separated list whose items cannot be confused with the separator:
/// items come from [`escape_visible`], where every `\` starts a `\XX`
/// escape, and a `,` inside an item is written `\2C`.
pub fn join_list(values: &[String]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for c in v.chars() {
            match c {
                ',' => out.push_str("\\2C"),
                c => out.push(c),
            }
        }
    }
    out
}

fn attribute_values(name: &X509Name<'_>, oid: &oid_registry::Oid<'_>) -> Vec<String> {
    name.iter_by_oid(oid)
        .map(|a| match attribute_text(a) {
            AttributeText::Text(s) => escape_visible(&s),
            AttributeText::Der(hex) => hex,
        })
        .collect()
}

/// An attribute value as RFC 4514 §2.4 writes it.
enum AttributeText {
    /// A string type, decoded (BMPString from UTF-16).
    Text(String),
    /// Anything else: `#` and the hex of the value's DER encoding (tag and
    /// length included, so values of different types never look alike).
    Der(String),
}

fn attribute_text(attr: &AttributeTypeAndValue<'_>) -> AttributeText {
    if let Ok(s) = attr.as_str() {
        return AttributeText::Text(s.to_owned());
    }
    let value = attr.attr_value();
    if value.tag() == asn1_rs::Tag::BmpString && value.data.len() % 2 == 0 {
        let units: Vec<u16> = value
            .data
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        if let Ok(s) = String::from_utf16(&units) {
            return AttributeText::Text(s);
        }
    }
    AttributeText::Der(format!("#{}", hex::encode(der_of(value))))
}

/// The DER encoding of a parsed value, put back together from its tag bytes,
/// content length and content (x509-parser keeps the content only).
fn der_of(value: &asn1_rs::Any<'_>) -> Vec<u8> {
    let len = value.data.len();
    // asn1-rs keeps the identifier bytes of everything it parses.
    let mut out = value.header.raw_tag().unwrap_or_default().to_vec();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value.data);
    out
}

fn short_name(oid: &oid_registry::Oid<'_>) -> Option<&'static str> {
    use oid_registry::*;
    Some(match oid {
        o if *o == OID_X509_COMMON_NAME => "CN",
        o if *o == OID_X509_COUNTRY_NAME => "C",
        o if *o == OID_X509_LOCALITY_NAME => "L",
        o if *o == OID_X509_STATE_OR_PROVINCE_NAME => "ST",
        o if *o == OID_X509_STREET_ADDRESS => "STREET",
        o if *o == OID_X509_ORGANIZATION_NAME => "O",
        o if *o == OID_X509_ORGANIZATIONAL_UNIT => "OU",
        o if *o == OID_DOMAIN_COMPONENT => "DC",
        o if o.to_id_string() == "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 4514: RDNs last-to-first, `,` between RDNs, `+` within one, and the
/// special characters escaped. Non-visible bytes become `\XX` afterwards.
pub fn rfc4514(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match short_name(attr.attr_type()) {
                Some(n) => out.push_str(n),
                None => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attribute_text(attr) {
                AttributeText::Text(text) => escape_dn_value(&text, &mut out),
                AttributeText::Der(hex) => out.push_str(&hex),
            }
        }
    }
    out
}

fn escape_dn_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else {
            push_visible(c, out);
        }
    }
}

/// Copies `value`, writing `\` and every byte that is not visible ASCII or
/// space as `\XX`, so that every `\` in the result starts an escape.
pub fn escape_visible(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\5C"),
            c => push_visible(c, &mut out),
        }
    }
    out
}

fn push_visible(c: char, out: &mut String) {
    if c == ' ' || c.is_ascii_graphic() {
        out.push(c);
    } else {
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            let _ = write!(out, "\\{b:02X}");
        }
    }
}

fn serial_hex(raw: &[u8]) -> String {
    let hex = hex::encode(raw);
    match hex.trim_start_matches('0') {
        "" => "0".to_owned(),
        s => s.to_owned(),
    }
}

pub fn rfc3339(unix: i64) -> String {
    ::time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair, SanType};

    fn cert(configure: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        configure(&mut params);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_subject_sans_and_spiffe_id() {
        let der = cert(|p| {
            p.distinguished_name
                .push(DnType::OrganizationName, "Acme, Inc.");
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, "payments");
            p.distinguished_name.push(DnType::CommonName, "billing-api");
            p.subject_alt_names = vec![
                SanType::DnsName("billing.internal".try_into().unwrap()),
                SanType::URI("spiffe://acme.org/ns/pay/sa/billing".try_into().unwrap()),
                SanType::Rfc822Name("ops@acme.org".try_into().unwrap()),
            ];
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x1a, 0x2b]));
        });
        let id = Identity::from_der(&der).unwrap();
        assert_eq!(id.subject, "CN=billing-api,OU=payments,O=Acme\\, Inc.");
        assert_eq!(id.issuer, id.subject);
        assert_eq!(id.cn, vec!["billing-api"]);
        assert_eq!(id.o, vec!["Acme, Inc."]);
        assert_eq!(id.dns, vec!["billing.internal"]);
        assert_eq!(id.email, vec!["ops@acme.org"]);
        assert_eq!(
            id.spiffe_id.as_deref(),
            Some("spiffe://acme.org/ns/pay/sa/billing")
        );
        assert_eq!(id.serial, "1a2b");
        assert_eq!(id.fingerprint_sha256.len(), 64);
        assert!(id.not_after.ends_with('Z'), "{}", id.not_after);
    }

    #[test]
    fn two_spiffe_uris_give_no_spiffe_id() {
        let der = cert(|p| {
            p.subject_alt_names = vec![
                SanType::URI("spiffe://a/x".try_into().unwrap()),
                SanType::URI("spiffe://a/y".try_into().unwrap()),
            ];
        });
        assert_eq!(Identity::from_der(&der).unwrap().spiffe_id, None);
    }

    #[test]
    fn control_bytes_and_unicode_are_escaped() {
        let der = cert(|p| {
            p.distinguished_name.push(
                DnType::CommonName,
                DnValue::Utf8String("evil\r\nx-client-roles: ROLE_ADMIN é".into()),
            );
        });
        let id = Identity::from_der(&der).unwrap();
        assert_eq!(
            id.subject,
            "CN=evil\\0D\\0Ax-client-roles: ROLE_ADMIN \\C3\\A9"
        );
        assert!(id
            .subject
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic()));
    }

    #[test]
    fn list_items_cannot_fake_separators() {
        assert_eq!(join_list(&["a,b".into(), "c".into()]), "a\\2Cb,c");
        assert_eq!(
            join_list(&[escape_visible("a\\2Cb"), "c".into()]),
            "a\\5C2Cb,c"
        );
    }

    #[test]
    fn renderings_are_unambiguous() {
        let uri = |u: &str| {
            let der = cert(|p| p.subject_alt_names = vec![SanType::URI(u.try_into().unwrap())]);
            Identity::from_der(&der).unwrap().uri
        };
        let subject = |values: Vec<(DnType, DnValue)>| {
            let der = cert(|p| {
                for (ty, v) in values {
                    p.distinguished_name.push(ty, v);
                }
            });
            Identity::from_der(&der).unwrap().subject
        };
        let utf8 = |s: &str| DnValue::Utf8String(s.into());
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "uri comma",
                join_list(&uri("https://lab.test/a,b")),
                "https://lab.test/a\\2Cb",
            ),
            (
                "uri backslash",
                join_list(&uri("https://lab.test/a\\2Cb")),
                "https://lab.test/a\\5C2Cb",
            ),
            (
                "dn backslash is not an escape",
                subject(vec![(DnType::CommonName, utf8("\\C3\\A9"))]),
                "CN=\\\\C3\\\\A9",
            ),
            (
                "dn utf-8 is an escape",
                subject(vec![(DnType::CommonName, utf8("é"))]),
                "CN=\\C3\\A9",
            ),
            (
                "dn comma in a value",
                subject(vec![(DnType::CommonName, utf8("x,OU=admins"))]),
                "CN=x\\,OU=admins",
            ),
            (
                "dn plus in a value",
                subject(vec![(DnType::CommonName, utf8("x+OU=admins"))]),
                "CN=x\\+OU=admins",
            ),
            (
                "dn value that looks like hex",
                subject(vec![(DnType::CommonName, utf8("#14026162"))]),
                "CN=\\#14026162",
            ),
            (
                "dn string type without a decoder: DER with its tag",
                subject(vec![(
                    DnType::CommonName,
                    DnValue::TeletexString("ab".try_into().unwrap()),
                )]),
                "CN=#14026162",
            ),
            (
                "dn BMPString decoded",
                subject(vec![(
                    DnType::CommonName,
                    DnValue::BmpString("ab".try_into().unwrap()),
                )]),
                "CN=ab",
            ),
            (
                "dn type without a short name",
                subject(vec![(DnType::CustomDnType(vec![1, 2, 3, 4]), utf8("x"))]),
                "1.2.3.4=x",
            ),
        ];
        for (case, got, expected) in cases {
            assert_eq!(got, expected, "case {case}");
        }
    }

    #[test]
    fn odd_length_bmp_string_is_not_truncated() {
        // Name ::= { { CN = BMPString 00 61 62 } }: a UTF-16 "a" and a stray
        // byte, which must not render like CN=a.
        let name = [
            0x30, 0x0e, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x1e, 0x03, 0x00,
            0x61, 0x62,
        ];
        let (_, name) = X509Name::from_der(&name).unwrap();
        assert_eq!(rfc4514(&name), "CN=#1e03006162");
    }

    #[test]
    fn der_of_long_values_has_long_form_length() {
        let der = cert(|p| {
            p.distinguished_name.push(
                DnType::CommonName,
                DnValue::TeletexString("a".repeat(200).as_str().try_into().unwrap()),
            );
        });
        let subject = Identity::from_der(&der).unwrap().subject;
        assert_eq!(subject, format!("CN=#1481c8{}", "61".repeat(200)));
    }

    #[test]
    fn spiffe_id_table() {
        let cases: &[(&str, bool)] = &[
            ("spiffe://acme.org/ns/pay/sa/billing", true),
            ("spiffe://acme.org", true),
            ("spiffe://a-b_c.0/A.b-C_9", true),
            ("spiffe://td/ns/prod/../../admin", false),
            ("spiffe://td/ns/./x", false),
            ("spiffe://td/ns//x", false),
            ("spiffe://td/ns/", false),
            ("spiffe://td/", false),
            ("spiffe://", false),
            ("spiffe:///ns", false),
            ("spiffe://TD/ns", false),
            ("SPIFFE://td/ns", false),
            ("spiffe://td:443/ns", false),
            ("spiffe://user@td/ns", false),
            ("spiffe://td/ns%2Fx", false),
            ("spiffe://td/ns?x=1", false),
            ("spiffe://td/ns#x", false),
            ("spiffe://td/n s", false),
            ("spiffe://td/n\\s", false),
            ("spiffe://td/né", false),
            ("https://td/ns", false),
        ];
        for (uri, expected) in cases {
            assert_eq!(is_spiffe_id(uri), *expected, "{uri}");
        }
        let long_domain = format!("spiffe://{}/x", "a".repeat(256));
        assert!(!is_spiffe_id(&long_domain), "trust domain over 255 bytes");
        let long_id = format!("spiffe://td/{}", "a".repeat(2048));
        assert!(!is_spiffe_id(&long_id), "id over 2048 bytes");
    }

    #[test]
    fn spiffe_id_needs_exactly_one_valid_spiffe_uri() {
        let spiffe_id = |uris: &[&str]| {
            let der = cert(|p| {
                p.subject_alt_names = uris
                    .iter()
                    .map(|u| SanType::URI((*u).try_into().unwrap()))
                    .collect();
            });
            Identity::from_der(&der).unwrap().spiffe_id
        };
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            (
                "one valid",
                &["spiffe://a/x", "https://a/x"],
                Some("spiffe://a/x"),
            ),
            ("one invalid", &["spiffe://a/../x"], None),
            (
                "valid and invalid",
                &["spiffe://a/x", "spiffe://a/%78"],
                None,
            ),
            (
                "valid and uppercase scheme",
                &["spiffe://a/x", "SPIFFE://a/y"],
                None,
            ),
        ];
        for (case, uris, expected) in cases {
            assert_eq!(spiffe_id(uris).as_deref(), *expected, "case {case}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Identity::from_der(b"not a certificate").is_err());
        assert!(Identity::from_der(&[]).is_err());
    }
}
