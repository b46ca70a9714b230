//! Request-head checks that keep the gateway and the upstream reading the
//! same request: one well-formed `Host` (agreeing with HTTP/2's
//! `:authority`), and a body framed only by `Content-Length` or exactly
//! `Transfer-Encoding: chunked`. What two parsers could read differently is
//! refused, never guessed.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Uri, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("Host is not a valid host[:port]")]
    InvalidHost,
    #[error("Host disagrees with :authority")]
    HostMismatch,
    #[error("Transfer-Encoding other than exactly `chunked`")]
    UnsupportedTransferEncoding,
}

/// Checks `Host` (and `:authority` on HTTP/2) and the body framing headers.
///
/// # Errors
/// The first rule the head breaks.
pub fn check(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), HeadError> {
    check_host(version, uri, headers)?;
    check_framing(headers)
}

fn check_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), HeadError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    // `:authority` (hyper's URI authority on HTTP/2) is held to the same rules.
    let authority = uri.authority().map(|a| a.as_str().as_bytes());
    if !host
        .map(HeaderValue::as_bytes)
        .into_iter()
        .chain(authority)
        .all(valid_host)
    {
        return Err(HeadError::InvalidHost);
    }
    match (version, host, authority) {
        // An HTTP/1 origin-form target has no authority.
        (Version::HTTP_2, Some(host), Some(authority)) => {
            if same_authority(host.as_bytes(), authority) {
                Ok(())
            } else {
                Err(HeadError::HostMismatch)
            }
        }
        (Version::HTTP_11, None, _) => Err(HeadError::MissingHost),
        _ => Ok(()),
    }
}

/// `host[:port]` with a DNS-style name, an IPv4 address or a bracketed IPv6
/// address: no userinfo, path, spaces or percent-escapes.
fn valid_host(value: &[u8]) -> bool {
    let (name, port) = split_port(value);
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    let name_ok = match name {
        [b'[', inner @ .., b']'] => {
            std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
        }
        _ => {
            !name.is_empty()
                && name.len() <= 253
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        }
    };
    port_ok && name_ok
}

/// Splits off `:port`, minding bracketed IPv6 addresses.
fn split_port(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let after_brackets = value.iter().rposition(|&b| b == b']').map_or(0, |i| i + 1);
    match value[after_brackets..].iter().position(|&b| b == b':') {
        Some(i) => (
            &value[..after_brackets + i],
            Some(&value[after_brackets + i + 1..]),
        ),
        None => (value, None),
    }
}

/// Compares two authorities case-insensitively, with `:443` (the only
/// port an `https` request can default to) the same as no port.
fn same_authority(a: &[u8], b: &[u8]) -> bool {
    let without_default_port = |v: &[u8]| -> Vec<u8> {
        let (name, port) = split_port(v);
        let mut out = name.to_ascii_lowercase();
        if let Some(port) = port.filter(|p| *p != b"443") {
            out.push(b':');
            out.extend_from_slice(port);
        }
        out
    };
    without_default_port(a) == without_default_port(b)
}

fn check_framing(headers: &HeaderMap) -> Result<(), HeadError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(());
    };
    // With `chunked`, hyper has already dropped any `Content-Length`
    // (RFC 9112 §6.3), so the upstream sees the one framing read here.
    if codings.next().is_some() || !is_exactly_chunked(first) {
        return Err(HeadError::UnsupportedTransferEncoding);
    }
    Ok(())
}

fn is_exactly_chunked(v: &HeaderValue) -> bool {
    v.as_bytes().eq_ignore_ascii_case(b"chunked")
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers<'a> = &'a [(&'a str, &'a str)];
    type HostCase<'a> = (
        &'a str,
        Version,
        &'a str,
        Headers<'a>,
        Result<(), HeadError>,
    );

    fn head(version: Version, uri: &str, headers: &[(&str, &str)]) -> Result<(), HeadError> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        check(version, &uri.parse().unwrap(), &map)
    }

    #[test]
    fn host_rules() {
        use HeadError::*;
        let h1 = Version::HTTP_11;
        let h2 = Version::HTTP_2;
        let cases: &[HostCase] = &[
            ("plain", h1, "/", &[("host", "api.example")], Ok(())),
            (
                "with port",
                h1,
                "/",
                &[("host", "api.example:8443")],
                Ok(()),
            ),
            ("ipv4", h1, "/", &[("host", "127.0.0.1:1")], Ok(())),
            ("ipv6", h1, "/", &[("host", "[::1]:8443")], Ok(())),
            ("ipv6 no port", h1, "/", &[("host", "[::1]")], Ok(())),
            ("missing on 1.1", h1, "/", &[], Err(MissingHost)),
            ("missing on 1.0", Version::HTTP_10, "/", &[], Ok(())),
            (
                "two",
                h1,
                "/",
                &[("host", "a.example"), ("host", "b.example")],
                Err(DuplicateHost),
            ),
            (
                "userinfo",
                h1,
                "/",
                &[("host", "user@a.example")],
                Err(InvalidHost),
            ),
            (
                "path",
                h1,
                "/",
                &[("host", "a.example/x")],
                Err(InvalidHost),
            ),
            ("space", h1, "/", &[("host", "a example")], Err(InvalidHost)),
            ("empty", h1, "/", &[("host", "")], Err(InvalidHost)),
            (
                "empty port",
                h1,
                "/",
                &[("host", "a.example:")],
                Err(InvalidHost),
            ),
            (
                "bad port",
                h1,
                "/",
                &[("host", "a.example:8x")],
                Err(InvalidHost),
            ),
            (
                "escape",
                h1,
                "/",
                &[("host", "a%2eexample")],
                Err(InvalidHost),
            ),
            ("bad ipv6", h1, "/", &[("host", "[zz]")], Err(InvalidHost)),
            ("h2 authority only", h2, "https://a.example/", &[], Ok(())),
            (
                "h2 agreeing host",
                h2,
                "https://A.example/",
                &[("host", "a.EXAMPLE")],
                Ok(()),
            ),
            (
                "h2 default port ignored",
                h2,
                "https://a.example:443/",
                &[("host", "a.example")],
                Ok(()),
            ),
            (
                "h2 host disagrees",
                h2,
                "https://a.example/",
                &[("host", "admin.example")],
                Err(HostMismatch),
            ),
            (
                "h2 port disagrees",
                h2,
                "https://a.example:8443/",
                &[("host", "a.example")],
                Err(HostMismatch),
            ),
            ("h2 host only", h2, "/", &[("host", "a.example")], Ok(())),
            (
                "h2 authority userinfo",
                h2,
                "https://u@a.example/",
                &[],
                Err(InvalidHost),
            ),
        ];
        for (name, version, uri, headers, expected) in cases {
            assert_eq!(head(*version, uri, headers), *expected, "case {name}");
        }
    }

    #[test]
    fn framing_rules() {
        use HeadError::*;
        let host = ("host", "a");
        let cases: &[(&str, Headers, Result<(), HeadError>)] = &[
            ("no body headers", &[host], Ok(())),
            ("length", &[host, ("content-length", "3")], Ok(())),
            ("chunked", &[host, ("transfer-encoding", "chunked")], Ok(())),
            (
                "chunked any case",
                &[host, ("transfer-encoding", "Chunked")],
                Ok(()),
            ),
            (
                "gzip then chunked",
                &[host, ("transfer-encoding", "gzip, chunked")],
                Err(UnsupportedTransferEncoding),
            ),
            (
                "chunked twice",
                &[
                    host,
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(UnsupportedTransferEncoding),
            ),
            (
                "identity",
                &[host, ("transfer-encoding", "identity")],
                Err(UnsupportedTransferEncoding),
            ),
            (
                "padded",
                &[host, ("transfer-encoding", "chunked ")],
                Err(UnsupportedTransferEncoding),
            ),
        ];
        for (name, headers, expected) in cases {
            assert_eq!(
                head(Version::HTTP_11, "/", headers),
                *expected,
                "case {name}"
            );
        }
    }
}
