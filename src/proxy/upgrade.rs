//! WebSocket through the gateway: which requests open one, and how their
//! heads change on the way. A WebSocket is opened by an HTTP/1.1 `GET`
//! with `Upgrade: websocket`, or on HTTP/2 by an RFC 8441 extended
//! `CONNECT` with `:protocol = websocket`. Either way it is authorized as
//! the `GET` it is on HTTP/1.1, and reaches the upstream as an HTTP/1.1
//! `Upgrade` (the upstream WebSocket servers people run speak HTTP/1.1).
//! Every other `Upgrade` (`h2c`, TLS) is dropped as a hop-by-hop header.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

static WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WebSocket {
    /// HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`.
    Http1Upgrade,
    /// HTTP/2 extended `CONNECT` (RFC 8441).
    ExtendedConnect,
}

impl WebSocket {
    /// The WebSocket a request opens, if it opens one.
    pub(super) fn requested<B>(req: &Request<B>) -> Option<WebSocket> {
        if req.version() == Version::HTTP_2 {
            let protocol = req.extensions().get::<hyper::ext::Protocol>();
            let websocket = protocol.is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
            return (req.method() == Method::CONNECT && websocket)
                .then_some(WebSocket::ExtendedConnect);
        }
        let headers = req.headers();
        let asks_upgrade = has_token(headers, &header::CONNECTION, "upgrade");
        let websocket = has_token(headers, &header::UPGRADE, "websocket");
        (req.version() == Version::HTTP_11
            && req.method() == Method::GET
            && asks_upgrade
            && websocket)
            .then_some(WebSocket::Http1Upgrade)
    }

    /// Makes the rewritten request head the upstream's HTTP/1.1 upgrade.
    /// Runs after hop-by-hop headers were stripped.
    pub(super) fn upstream_request<B>(self, req: &mut Request<B>) {
        *req.method_mut() = Method::GET;
        let headers = req.headers_mut();
        headers.insert(header::CONNECTION, UPGRADE.clone());
        headers.insert(header::UPGRADE, WEBSOCKET.clone());
        if self == WebSocket::ExtendedConnect {
            // RFC 8441 has no key; the HTTP/1.1 handshake needs one. The
            // upstream's answer to it is checked by nobody but this gateway,
            // which trusts its upstream.
            headers.insert(&SEC_WEBSOCKET_KEY, fresh_key());
        }
    }

    /// The client's answer to an upstream `101`: a `101` with the upgrade
    /// headers on HTTP/1.1, a `200` on HTTP/2 (RFC 8441 §5). Runs after
    /// hop-by-hop headers were stripped.
    pub(super) fn client_response(self, resp: &mut http::response::Parts) {
        match self {
            WebSocket::Http1Upgrade => {
                resp.headers.insert(header::CONNECTION, UPGRADE.clone());
                resp.headers.insert(header::UPGRADE, WEBSOCKET.clone());
            }
            WebSocket::ExtendedConnect => {
                resp.status = StatusCode::OK;
                resp.headers.remove(&SEC_WEBSOCKET_ACCEPT);
            }
        }
    }
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn fresh_key() -> HeaderValue {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system random source works");
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .version(version)
            .method(method)
            .uri("/ws");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_websocket_upgrades_of_get_open_a_tunnel() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            WebSocket::requested(&req(Version::HTTP_11, Method::GET, &ws)),
            Some(WebSocket::Http1Upgrade)
        );
        for (version, method, headers) in [
            (Version::HTTP_11, Method::POST, &ws[..]),
            (Version::HTTP_10, Method::GET, &ws[..]),
            (
                Version::HTTP_11,
                Method::GET,
                &[("upgrade", "websocket")][..],
            ),
            (
                Version::HTTP_11,
                Method::GET,
                &[("connection", "upgrade"), ("upgrade", "h2c")][..],
            ),
        ] {
            assert_eq!(WebSocket::requested(&req(version, method, headers)), None);
        }
    }

    #[test]
    fn extended_connect_needs_the_websocket_protocol() {
        let mut r = req(Version::HTTP_2, Method::CONNECT, &[]);
        assert_eq!(WebSocket::requested(&r), None);
        r.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(WebSocket::requested(&r), Some(WebSocket::ExtendedConnect));
    }

    #[test]
    fn extended_connect_reaches_the_upstream_as_a_keyed_get() {
        let mut r = req(Version::HTTP_2, Method::CONNECT, &[]);
        WebSocket::ExtendedConnect.upstream_request(&mut r);
        assert_eq!(r.method(), Method::GET);
        let headers = r.headers();
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["sec-websocket-key"].len(), 24);
    }
}
