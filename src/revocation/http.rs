//! Bounded HTTP for revocation data: one request, a deadline on the whole
//! exchange (connect, head and body), and a cap on the body's size, so a
//! slow or hostile CRL or OCSP server can neither stall a refresh nor grow
//! memory. Redirects are not followed: a PKI publishes the URL it serves.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a request for revocation data failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect or send: {0}")]
    Connect(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("the body is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("the body broke off: {0}")]
    Body(String),
}

/// A complete answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The HTTP client for CRL and OCSP requests (http, or https verified
/// against the system's roots). Cheap to clone; connections are pooled.
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpFetcher {
    /// Reads the system's root certificates: blocking file reads, done once
    /// per process on first use.
    fn default() -> HttpFetcher {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        HttpFetcher {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl HttpFetcher {
    /// Sends `req` and reads the answer, all within `timeout`, refusing a
    /// body over `limit` bytes before reading past it. Any status is an
    /// answer; callers decide which ones they accept.
    ///
    /// # Errors
    /// [`FetchError`]: no connection, the deadline passed, or the body is
    /// too large or broke off.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Answer, FetchError> {
        tokio::time::timeout(timeout, self.exchange(req, limit))
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Answer, FetchError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| FetchError::Connect(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge(limit));
        }
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge(limit)
                } else {
                    FetchError::Body(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// An error and its causes, for the log: hyper's own message alone
/// ("client error (Connect)") does not say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
