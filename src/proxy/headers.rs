//! What the upstream sees: hop-by-hop headers and every header a client
//! could use to impersonate the gateway removed, then identity headers set
//! from the verified certificate. Identity values are computed once per
//! connection; per request only `HeaderValue` clones (reference counts) happen.

use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{IdentityConfig, UnderscoreHeaders};
use crate::identity::{join_list, Identity};

pub static X_CLIENT_SUBJECT: HeaderName = HeaderName::from_static("x-client-subject");
pub static X_CLIENT_ISSUER: HeaderName = HeaderName::from_static("x-client-issuer");
pub static X_CLIENT_SERIAL: HeaderName = HeaderName::from_static("x-client-serial");
pub static X_CLIENT_FINGERPRINT: HeaderName = HeaderName::from_static("x-client-fingerprint");
pub static X_CLIENT_SAN_DNS: HeaderName = HeaderName::from_static("x-client-san-dns");
pub static X_CLIENT_SAN_URI: HeaderName = HeaderName::from_static("x-client-san-uri");
pub static X_CLIENT_SAN_EMAIL: HeaderName = HeaderName::from_static("x-client-san-email");
pub static X_CLIENT_SPIFFE_ID: HeaderName = HeaderName::from_static("x-client-spiffe-id");
pub static X_CLIENT_NOT_AFTER: HeaderName = HeaderName::from_static("x-client-not-after");
pub static X_CLIENT_ROLES: HeaderName = HeaderName::from_static("x-client-roles");
pub static X_CLIENT_CERT: HeaderName = HeaderName::from_static("x-client-cert");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Identity header values for one connection's client certificate.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    always: Vec<(&'static HeaderName, HeaderValue)>,
    /// Built on first use: most deployments enable neither option, and the
    /// handshake path should not pay for them.
    cert: OnceLock<HeaderValue>,
    xfcc: OnceLock<HeaderValue>,
}

fn value(s: &str) -> HeaderValue {
    // Identity strings are escaped to visible ASCII and spaces, which is
    // always a valid header value; an empty value is the safe fallback.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl IdentityHeaders {
    pub fn new(id: &Identity) -> IdentityHeaders {
        let mut always = vec![
            (&X_CLIENT_SUBJECT, value(&id.subject)),
            (&X_CLIENT_ISSUER, value(&id.issuer)),
            (&X_CLIENT_SERIAL, value(&id.serial)),
            (&X_CLIENT_FINGERPRINT, value(&id.fingerprint_sha256)),
            (&X_CLIENT_NOT_AFTER, value(&id.not_after)),
        ];
        for (name, list) in [
            (&X_CLIENT_SAN_DNS, &id.dns),
            (&X_CLIENT_SAN_URI, &id.uri),
            (&X_CLIENT_SAN_EMAIL, &id.email),
        ] {
            if !list.is_empty() {
                always.push((name, value(&join_list(list))));
            }
        }
        if let Some(spiffe) = &id.spiffe_id {
            always.push((&X_CLIENT_SPIFFE_ID, value(spiffe)));
        }
        IdentityHeaders {
            always,
            cert: OnceLock::new(),
            xfcc: OnceLock::new(),
        }
    }
}

/// nginx's `$ssl_client_escaped_cert`: the PEM leaf, percent-encoded.
fn url_encoded_pem(der: &[u8]) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    // LF line endings, as nginx's `$ssl_client_escaped_cert` has them.
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    percent_encoding::utf8_percent_encode(&pem, KEEP).to_string()
}

/// Envoy's `x-forwarded-client-cert` element for this certificate.
fn xfcc(id: &Identity) -> String {
    let quote = |v: &str| {
        if v.contains([',', ';', '=', '"']) {
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            v.to_owned()
        }
    };
    let mut out = format!(
        "Hash={};Subject=\"{}\"",
        id.fingerprint_sha256,
        id.subject.replace('\\', "\\\\").replace('"', "\\\"")
    );
    for uri in &id.uri {
        out.push_str(";URI=");
        out.push_str(&quote(uri));
    }
    for dns in &id.dns {
        out.push_str(";DNS=");
        out.push_str(&quote(dns));
    }
    out
}

/// Headers a client must never be able to set for the upstream: the whole
/// `x-client-*` and `x-forwarded-*` families (today's names and any added
/// later), `forwarded`, `x-real-ip`, and `x-request-id` (re-set by us), in
/// every spelling that CGI-style stacks read as the same name: `_` and `-`
/// are one character to them, and names arrive here lowercased.
fn is_spoofable(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    let starts =
        |prefix: &[u8]| n.len() >= prefix.len() && same_cgi_name(&n[..prefix.len()], prefix);
    starts(b"x-client-")
        || starts(b"x-forwarded-")
        || same_cgi_name(n, b"forwarded")
        || same_cgi_name(n, b"x-real-ip")
        || same_cgi_name(n, b"x-request-id")
}

/// Whether two lowercase names are one name to CGI, WSGI, Rack and PHP
/// (`HTTP_X_CLIENT_ROLES`).
fn same_cgi_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

fn has_underscore(name: &HeaderName) -> bool {
    name.as_str().contains('_')
}

/// Connection-level headers that apply to one hop only (RFC 9110 §7.6.1).
/// `Trailer` is not one of them: it announces end-to-end trailer fields.
/// `TE` is, but its `trailers` token is forwarded (see
/// [`prepare_request_headers`]).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "transfer-encoding",
    "upgrade",
];

static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Whether the client said it accepts trailers (`TE: trailers`): the one
/// `TE` token that is end to end in effect. gRPC servers refuse requests
/// without it, and an HTTP/1.1 upstream sends trailers only after it.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `Connection: keep-alive` on nearly every request and upstream response
    // names a header removed below anyway: skip parsing it (an allocation).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h)))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    remove_where(headers, is_hop_by_hop);
}

/// Moves the header values into one buffer of their own. hyper's values
/// are slices of the upstream connection's 8 KiB read buffer, and an
/// HTTP/2 connection's HPACK encoder keeps the values it indexes for as
/// long as the connection lives: without the copy, every open HTTP/2
/// client connection would pin an upstream read buffer.
pub fn detach_values(headers: &mut HeaderMap) {
    let total = headers.values().map(HeaderValue::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for v in headers.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    let mut at = 0;
    for v in headers.values_mut() {
        let len = v.len();
        // The bytes came from a valid value: this cannot fail, and if it
        // did the original would simply stay.
        if let Ok(mut detached) = HeaderValue::from_maybe_shared(buf.slice(at..at + len)) {
            detached.set_sensitive(v.is_sensitive());
            *v = detached;
        }
        at += len;
    }
}

fn remove_where(headers: &mut HeaderMap, pred: impl Fn(&HeaderName) -> bool) {
    // Usually none or one (`connection`) matches: rescanning a short map
    // per removal is cheaper than collecting the names into a Vec.
    while let Some(name) = headers.keys().find(|n| pred(n)).cloned() {
        headers.remove(name);
    }
}

/// Per-request inputs to [`prepare_request_headers`].
pub struct Forwarding<'a> {
    pub identity: &'a IdentityHeaders,
    /// The parsed identity and leaf DER, for the optional headers built lazily.
    pub id: &'a Identity,
    pub leaf_der: &'a [u8],
    pub roles: &'a HeaderValue,
    pub options: IdentityConfig,
    pub underscore_headers: UnderscoreHeaders,
    /// [`forwarded_for`] of the client, made once per connection.
    pub forwarded_for: &'a HeaderValue,
    pub request_id: &'a HeaderValue,
}

/// The `x-forwarded-for` value for a client address.
pub fn forwarded_for(peer_ip: IpAddr) -> HeaderValue {
    value(&peer_ip.to_string())
}

/// Rewrites an incoming request's headers into what the upstream receives.
pub fn prepare_request_headers(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    // Room for what is added below, made once: an HTTP/2 request's map has
    // none to spare, and growing it one insert at a time rehashed it twice
    // per request.
    headers.reserve(f.identity.always.len() + 7);
    let trailers = accepts_trailers(headers);
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, TRAILERS.clone());
    }
    match f.underscore_headers {
        UnderscoreHeaders::Drop => remove_where(headers, |n| is_spoofable(n) || has_underscore(n)),
        UnderscoreHeaders::Keep => remove_where(headers, is_spoofable),
    }
    for (name, v) in &f.identity.always {
        headers.insert(*name, v.clone());
    }
    headers.insert(&X_CLIENT_ROLES, f.roles.clone());
    if f.options.forward_cert {
        let cert = f
            .identity
            .cert
            .get_or_init(|| value(&url_encoded_pem(f.leaf_der)));
        headers.insert(&X_CLIENT_CERT, cert.clone());
    }
    if f.options.xfcc {
        let xfcc = f.identity.xfcc.get_or_init(|| value(&xfcc(f.id)));
        headers.insert(&X_FORWARDED_CLIENT_CERT, xfcc.clone());
    }
    headers.insert(&X_FORWARDED_FOR, f.forwarded_for.clone());
    headers.insert(&X_FORWARDED_PROTO, HTTPS.clone());
    headers.insert(&X_REQUEST_ID, f.request_id.clone());
}

/// Rewrites a client's request trailers for the upstream: the names a
/// client may never set (identity and forwarding headers, in every
/// spelling), any name with `_`, and hop-by-hop names are removed, since
/// some upstream stacks merge trailers into the request's headers.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    remove_where(trailers, |n| {
        is_spoofable(n) || has_underscore(n) || is_hop_by_hop(n)
    });
}

/// Size of the request head as `max_header_bytes` counts it: each field as
/// `name: value\r\n`.
pub fn head_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// A client-supplied request id is kept when it is short and plain.
pub fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            subject: "CN=a\\0D\\0Ab,O=Acme".into(),
            issuer: "CN=CA".into(),
            serial: "1f".into(),
            fingerprint_sha256: "ab".repeat(32),
            dns: vec!["a.example".into(), "b.example".into()],
            uri: vec!["spiffe://acme/x".into()],
            spiffe_id: Some("spiffe://acme/x".into()),
            not_after: "2030-01-01T00:00:00Z".into(),
            ..Identity::default()
        }
    }

    #[test]
    fn te_keeps_only_trailers_and_trailer_is_end_to_end() {
        for (te, kept) in [
            ("trailers", true),
            ("gzip, Trailers", true),
            ("trailers;q=0.5", true),
            ("gzip", false),
            ("trailersx", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_str(te).unwrap());
            h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
            rewrite(
                &mut h,
                IdentityConfig::default(),
                UnderscoreHeaders::Drop,
                "127.0.0.9",
            );
            assert_eq!(
                h.get(header::TE).map(|v| v.to_str().unwrap()),
                kept.then_some("trailers"),
                "{te}"
            );
            assert_eq!(h[header::TRAILER], "x-checksum", "{te}");
        }
    }

    #[test]
    fn spoofed_identity_headers_are_replaced_whatever_their_case() {
        let mut h = HeaderMap::new();
        for name in [
            "X-Client-Roles",
            "x-client-subject",
            "X-FORWARDED-CLIENT-CERT",
            "x-client-anything-new",
            "x-forwarded-for",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
            "x_client_roles",
            "X_Forwarded_For",
            "x-client_subject",
            "x_real-ip",
            "x_request_id",
            "FORWARDED",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("forged"),
            );
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        h.insert("x_custom_flag", HeaderValue::from_static("kept"));
        rewrite(
            &mut h,
            IdentityConfig::default(),
            UnderscoreHeaders::Keep,
            "127.0.0.9",
        );
        assert!(h.iter().all(|(_, v)| v != "forged"), "{h:?}");
        assert_eq!(h["x-client-roles"], "ROLE_USER");
        assert_eq!(h["x-client-subject"], "CN=a\\0D\\0Ab,O=Acme");
        assert_eq!(h["x-client-san-dns"], "a.example,b.example");
        assert_eq!(h["x-client-spiffe-id"], "spiffe://acme/x");
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["accept"], "*/*");
        assert_eq!(h["x_custom_flag"], "kept", "underscore_headers = keep");
        assert!(h.get("x-client-cert").is_none() && h.get("x-forwarded-client-cert").is_none());
        assert_eq!(h.get_all("x-client-roles").iter().count(), 1);
    }

    /// Rewrites `h` for the test identity with roles `ROLE_USER`, as the
    /// request service does.
    fn rewrite(
        h: &mut HeaderMap,
        options: IdentityConfig,
        underscores: UnderscoreHeaders,
        ip: &str,
    ) {
        let id = identity();
        let ids = IdentityHeaders::new(&id);
        prepare_request_headers(
            h,
            &Forwarding {
                identity: &ids,
                id: &id,
                leaf_der: b"der-bytes",
                roles: &HeaderValue::from_static("ROLE_USER"),
                options,
                underscore_headers: underscores,
                forwarded_for: &forwarded_for(ip.parse().unwrap()),
                request_id: &HeaderValue::from_static("rid"),
            },
        );
    }

    #[test]
    fn optional_certificate_headers() {
        let mut h = HeaderMap::new();
        let both = IdentityConfig {
            forward_cert: true,
            xfcc: true,
        };
        rewrite(&mut h, both, UnderscoreHeaders::Drop, "::1");
        let cert = h["x-client-cert"].to_str().unwrap();
        assert!(cert.starts_with("-----BEGIN%20CERTIFICATE-----"), "{cert}");
        assert_eq!(
            h["x-forwarded-client-cert"],
            format!("Hash={};Subject=\"CN=a\\\\0D\\\\0Ab,O=Acme\";URI=spiffe://acme/x;DNS=a.example;DNS=b.example", "ab".repeat(32)).as_str()
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn underscore_headers_are_dropped_by_default() {
        let mut h = HeaderMap::new();
        h.insert("x_custom_flag", HeaderValue::from_static("1"));
        h.insert("my_token", HeaderValue::from_static("1"));
        h.insert("x-plain", HeaderValue::from_static("1"));
        rewrite(
            &mut h,
            IdentityConfig::default(),
            UnderscoreHeaders::Drop,
            "::1",
        );
        assert!(h.keys().all(|n| !n.as_str().contains('_')), "{h:?}");
        assert_eq!(h["x-plain"], "1");
    }

    #[test]
    fn cgi_spellings_of_protected_names() {
        for name in [
            "x_client_roles",
            "x-client_anything",
            "x_forwarded_host",
            "forwarded",
            "x_real_ip",
            "x_request-id",
        ] {
            assert!(is_spoofable(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            "x-clients",
            "x_clientroles",
            "forwarded-by",
            "x-request",
            "x_request_ids",
        ] {
            assert!(!is_spoofable(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn request_id_sanity() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("has space")));
        assert!(!sane_request_id(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }

    #[test]
    fn detached_values_keep_their_bytes_and_order() {
        let upstream = bytes::Bytes::from_static(b"application/jsonabc\x80def");
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_maybe_shared(upstream.slice(..16)).unwrap(),
        );
        h.append(
            "x-a",
            HeaderValue::from_maybe_shared(upstream.slice(16..19)).unwrap(),
        );
        h.append(
            "x-a",
            HeaderValue::from_maybe_shared(upstream.slice(19..)).unwrap(),
        );
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        h.insert(header::AUTHORIZATION, secret);
        let before = h.clone();
        detach_values(&mut h);
        assert_eq!(h, before);
        assert!(h[header::AUTHORIZATION].is_sensitive());
        for v in h.values() {
            let p = v.as_bytes().as_ptr() as usize;
            let outside =
                p < upstream.as_ptr() as usize || p >= upstream.as_ptr() as usize + upstream.len();
            assert!(outside, "{v:?} still points into the upstream buffer");
        }
    }
}
