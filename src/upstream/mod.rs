//! The client of the one upstream: http or https (with its own CA and
//! optional client certificate), HTTP/1.1 or HTTP/2 as `upstream.protocol`
//! says (`connect`), over the upstream's own pool of connections (`pool`);
//! and the classification of its failures ([`UpstreamError`]; the proxy
//! answers them with 502/504).

mod connect;
mod pool;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use connect::{Connected, Connector, Want};
use pool::Pool;

use crate::config::UpstreamConfig;
use crate::exchange::RequestBody;
use crate::tls::load::{self, LoadError};

/// Why an upstream exchange failed; also the `kind` label of
/// `certgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream unreachable")]
    Connect,
    #[error("upstream did not answer within upstream.timeout")]
    Timeout,
    #[error("upstream broke the exchange")]
    Protocol,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 3] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
        }
    }
}

pub struct Upstream {
    connector: Connector,
    pool: Arc<Pool>,
    scheme: Scheme,
    /// The url's authority: the `:authority` of a request that came without
    /// a host (HTTP/1.0), and the `Host` an HTTP/1.1 upstream then gets.
    authority: Authority,
    timeout: Duration,
}

impl Upstream {
    /// # Errors
    /// The upstream CA or client certificate files cannot be used.
    pub fn build(cfg: &UpstreamConfig) -> Result<Upstream, LoadError> {
        let parts = cfg.url.clone().into_parts();
        Ok(Upstream {
            connector: Connector::new(cfg)?,
            pool: Arc::default(),
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority: parts
                .authority
                .expect("config validation requires an authority in upstream.url"),
            timeout: cfg.timeout,
        })
    }

    /// Sends a request in origin form (`/path?query`, the client's `Host`
    /// among its headers) and waits for the response head, connecting
    /// first if need be: all within `upstream.timeout`.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.within_timeout(self.exchange(req, Want::Configured))
            .await
    }

    /// Sends an `Upgrade` request (WebSocket) on a new HTTP/1.1 connection
    /// of its own: after a `101` the connection belongs to the tunnel.
    pub async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.within_timeout(self.exchange(req, Want::Http1)).await
    }

    async fn within_timeout(
        &self,
        exchange: impl std::future::Future<Output = Result<Response<Incoming>, UpstreamError>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    async fn exchange(
        &self,
        req: Request<RequestBody>,
        want: Want,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let connection = match want {
            Want::Configured => self.checkout().await?,
            Want::Http1 => self.connector.connect(Want::Http1).await?,
        };
        match connection {
            Connected::Http1(mut sender) => {
                let resp = sender
                    .send_request(self.http1_request(req))
                    .await
                    .map_err(|e| broke(&e))?;
                if want == Want::Configured {
                    self.pool.recycle_http1(sender);
                }
                Ok(resp)
            }
            Connected::Http2(mut sender) => sender
                .send_request(self.http2_request(req))
                .await
                .map_err(|e| broke(&e)),
        }
    }

    /// A connection for the next request: the shared HTTP/2 one, an idle
    /// HTTP/1.1 one, or a new one.
    async fn checkout(&self) -> Result<Connected, UpstreamError> {
        if let Some(shared) = self.pool.http2() {
            return Ok(Connected::Http2(shared));
        }
        if let Some(idle) = self.pool.checkout_http1() {
            return Ok(Connected::Http1(idle));
        }
        if !self.connector.may_speak_http2() || self.pool.chose_http1() {
            return self.connector.connect(Want::Configured).await;
        }
        // One HTTP/2 connection carries every request: the first request
        // opens it while the others wait for it.
        let _opening = self.pool.http2_opening.lock().await;
        if let Some(shared) = self.pool.http2() {
            return Ok(Connected::Http2(shared));
        }
        let connected = self.connector.connect(Want::Configured).await?;
        match &connected {
            Connected::Http2(sender) => self.pool.share_http2(sender),
            Connected::Http1(_) => self.pool.note_chose_http1(),
        }
        Ok(connected)
    }

    fn http1_request(&self, mut req: Request<RequestBody>) -> Request<RequestBody> {
        *req.version_mut() = Version::HTTP_11;
        if !req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(self.authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        req
    }

    /// HTTP/2 carries the host as `:authority` (RFC 9113 §8.3.1): the one
    /// the client sent, and the url's only when the client sent none.
    fn http2_request(&self, mut req: Request<RequestBody>) -> Request<RequestBody> {
        *req.version_mut() = Version::HTTP_2;
        let authority = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are each valid");
        req
    }
}

/// A failure after the connection was made.
fn broke(e: &hyper::Error) -> UpstreamError {
    tracing::debug!(error = %e, "upstream exchange failed");
    UpstreamError::Protocol
}

fn tls_client_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, LoadError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca {
        Some(ca) => {
            for (file, cert) in load::load_ca_certs(std::slice::from_ref(ca), None)? {
                roots.add(cert).map_err(|e| {
                    LoadError::new(&file, format!("not usable as a trust anchor: {e}"))
                })?;
            }
        }
        None if cfg.is_https() => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        None => {}
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            LoadError::new(
                cfg.ca.as_deref().unwrap_or("upstream".as_ref()),
                e.to_string(),
            )
        })?
        .with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load::load_cert_chain(cert)?;
            let private = load::load_private_key(key)?;
            // Checks the pair matches before handing it to rustls.
            load::certified_key(chain.clone(), private.clone_key(), cert, key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| LoadError::new(key, format!("unusable client key: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
