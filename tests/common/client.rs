//! An mTLS client built on rustls + hyper (HTTP/1.1 and HTTP/2), the bare
//! TLS stream, and hand-written HTTP/1.1 exchanges.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::pki::Leaf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// An mTLS client built on rustls + hyper, as a real API client would be.
#[derive(Clone)]
pub struct TestClient {
    config: Arc<rustls::ClientConfig>,
    proto: Proto,
}

/// A response with its body read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// For echo-upstream replies: the single value of a header the upstream received.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        let v = &self.json()["headers"][name];
        let arr = v.as_array()?;
        assert_eq!(arr.len(), 1, "upstream saw {name} {} times: {v}", arr.len());
        arr[0].as_str().map(str::to_owned)
    }
}

impl TestClient {
    pub fn new(server_ca_pem: &str, leaf: Option<&Leaf>, proto: Proto) -> TestClient {
        Self::with_versions(server_ca_pem, leaf, proto, rustls::DEFAULT_VERSIONS)
    }

    pub fn with_versions(
        server_ca_pem: &str,
        leaf: Option<&Leaf>,
        proto: Proto,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TestClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match leaf {
            Some(leaf) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                        .map(|c| c.unwrap())
                        .collect();
                let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = match proto {
            Proto::Http1 => vec![b"http/1.1".to_vec()],
            Proto::Http2 => vec![b"h2".to_vec()],
        };
        TestClient {
            config: Arc::new(config),
            proto,
        }
    }

    /// The rustls config, for clients that drive the TLS connection by hand.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Opens a TLS connection and HTTP session. A refused client certificate
    /// usually surfaces on the first request (TLS 1.3 sends the server's
    /// verdict after the client considers the handshake done).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        self.connect_over(tcp).await
    }

    /// [`TestClient::connect`] over a TCP connection the caller opened (from
    /// a chosen source address, or after writing a PROXY protocol header).
    pub async fn connect_over(&self, tcp: tokio::net::TcpStream) -> Result<Conn, String> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let io = TokioIo::new(tls);
        let sender = match self.proto {
            Proto::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Proto::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Ok(Conn { sender })
    }

    /// One request on a fresh connection.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, String> {
        self.connect(addr).await?.get(path).await
    }

    pub async fn request(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        self.connect(addr)
            .await?
            .request(method, path, headers, body)
            .await
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An open connection; requests on it reuse it (keep-alive / HTTP/2 streams).
pub struct Conn {
    sender: Sender,
}

impl Conn {
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        // An `:authority` entry names the server in the way of the
        // protocol: the `:authority` of HTTP/2, the `Host` of HTTP/1.1.
        let authority = headers
            .iter()
            .find(|(k, _)| *k == ":authority")
            .map_or("localhost", |(_, v)| *v);
        let headers = headers.iter().filter(|(k, _)| *k != ":authority");
        let uri = match &self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("https://{authority}{path}"),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        let own_host = headers.clone().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if matches!(self.sender, Sender::H1(_)) && !own_host {
            builder = builder.header("host", authority);
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| {
            format!(
                "{e} ({:?})",
                std::error::Error::source(&e).map(|s| s.to_string())
            )
        })?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl TestClient {
    /// The bare TLS connection, for checking what ALPN chose or writing
    /// hand-made HTTP/1.1 bytes (header-name case, targets hyper's client
    /// would not send).
    pub async fn tls(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Conn {
    /// Another handle on the same HTTP/2 connection, so that several streams
    /// can be in flight at once; `None` for HTTP/1.1, which cannot multiplex.
    pub fn h2_handle(&self) -> Option<Conn> {
        match &self.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
            }),
            Sender::H1(_) => None,
        }
    }
}

/// A TCP connection to `addr` from `source` (any loopback address works
/// on Linux), so that a test can tell the client's address from a
/// balancer's on one machine.
pub async fn tcp_from(source: std::net::IpAddr, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source address");
    socket.connect(addr).await.expect("connect")
}

// ------------------------------------------- server certificate rotation ----

impl TestClient {
    /// The serial (lowercase hex, as [`Leaf::serial_hex`]) of the server
    /// certificate the gateway presents on a new connection. Resumption is
    /// off so that every call is a full handshake, not the certificate
    /// remembered from an earlier one.
    pub async fn served_serial(&self, addr: SocketAddr) -> Result<String, String> {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("the server sent no certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
        Ok(hex::encode(cert.tbs_certificate.raw_serial())
            .trim_start_matches('0')
            .to_owned())
    }

    /// Polls [`TestClient::served_serial`] until the gateway serves `serial`.
    pub async fn wait_for_serial(
        &self,
        addr: SocketAddr,
        serial: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.served_serial(addr).await;
            if seen.as_deref() == Ok(serial) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "served {seen:?} after {timeout:?}, expected serial {serial}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Sends one hand-written HTTP/1.1 request head (request line and header
/// lines, each ending in CRLF; `host` and `connection: close` are added) and
/// reads the reply, so that header-name case and request targets reach the
/// gateway exactly as written.
pub async fn raw_http1(client: &TestClient, addr: SocketAddr, head: &str) -> Reply {
    let request = format!("{head}host: localhost\r\nconnection: close\r\n\r\n");
    raw_exchange(client, addr, request.as_bytes()).await
}

/// Writes `request` exactly as given on a new connection and reads the reply
/// until the gateway closes (the request should say `connection: close`).
pub async fn raw_exchange(client: &TestClient, addr: SocketAddr, request: &[u8]) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = client.tls(addr).await.expect("TLS connect");
    tls.write_all(request).await.expect("write request");
    let mut raw = Vec::new();
    // The reply is complete once the gateway closes; a missing close_notify
    // after that is not this test's concern.
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut raw))
        .await
        .expect("reply in time");
    parse_http1(&raw)
}

pub fn parse_http1(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::from(body.to_owned()),
    }
}

/// A gateway-made error: its status, its JSON `error`, and a `request_id`
/// equal to the response's `x-request-id`.
pub fn assert_gateway_error(reply: &Reply, status: u16, error: &str, case: &str) {
    assert_eq!(
        reply.status,
        status,
        "{case}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let json = reply.json();
    assert_eq!(json["error"], error, "{case}: {json}");
    assert_eq!(
        json["request_id"].as_str(),
        reply
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        "{case}: request_id must match the x-request-id response header"
    );
}
