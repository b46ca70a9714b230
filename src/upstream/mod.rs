//! The clients of the upstreams: each one http or https (with its own CA
//! and optional client certificate), HTTP/1.1 or HTTP/2 as its `protocol`
//! says (`connect`), balanced round robin over its endpoints (`endpoint`),
//! each with its own pool of connections (`pool`) and its health, passive or
//! checked (`health`); the routes between upstreams (`routes`); and the
//! classification of failures ([`UpstreamError`]; the proxy answers them
//! with 502/503/504).

mod connect;
mod endpoint;
mod health;
mod pool;
mod routes;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use connect::{Connected, Connector, Want};
use endpoint::Endpoint;
pub use routes::Upstreams;

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
    #[error("no upstream endpoint is healthy")]
    NoHealthyEndpoint,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 4] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Protocol,
        UpstreamError::NoHealthyEndpoint,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
            UpstreamError::NoHealthyEndpoint => "no_healthy_upstream",
        }
    }
}

pub struct Upstream {
    /// What it was built from: a reload keeps it (and its connections)
    /// when this and the files it read are unchanged.
    config: UpstreamConfig,
    files_digest: Vec<u8>,
    endpoints: Vec<Endpoint>,
    /// Round robin: the endpoint after the last one chosen.
    next: AtomicUsize,
    scheme: Scheme,
    /// The url's authority: the `:authority` of a request that came without
    /// a host (HTTP/1.0), and the `Host` an HTTP/1.1 upstream then gets.
    authority: Authority,
    timeout: Duration,
    health_checks: OnceLock<()>,
}

impl Upstream {
    /// # Errors
    /// The upstream CA or client certificate files cannot be used.
    pub fn build(cfg: &UpstreamConfig) -> Result<Upstream, LoadError> {
        let parts = cfg.url.clone().into_parts();
        let endpoints = Connector::for_endpoints(cfg)?
            .into_iter()
            .map(|c| Endpoint::new(c, cfg.health_interval))
            .collect();
        Ok(Upstream {
            config: cfg.clone(),
            files_digest: files_digest(cfg),
            endpoints,
            next: AtomicUsize::new(0),
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority: parts
                .authority
                .expect("config validation requires an authority in upstream.url"),
            timeout: cfg.timeout,
            health_checks: OnceLock::new(),
        })
    }

    /// This upstream, kept for a new state when `cfg` and the files it
    /// names are what it was built from; else a new one (the old one's
    /// connections close as the last request of the old state is done).
    ///
    /// # Errors
    /// The upstream CA or client certificate files cannot be used.
    pub fn rebuild(
        old: Option<&Arc<Upstream>>,
        cfg: &UpstreamConfig,
    ) -> Result<Arc<Upstream>, LoadError> {
        match old {
            Some(old) if old.config == *cfg && old.files_digest == files_digest(cfg) => {
                Ok(old.clone())
            }
            _ => Upstream::build(cfg).map(Arc::new),
        }
    }

    /// `default` for `[upstream]`, else its `[upstreams.NAME]` name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Each endpoint's address and whether it takes requests now.
    pub fn endpoint_health(&self) -> impl Iterator<Item = (&str, bool)> {
        self.endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.is_up()))
    }

    /// Sends a request in origin form (`/path?query`, the client's `Host`
    /// among its headers) and waits for the response head, connecting
    /// first if need be: all within `upstream.timeout`.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.timed_exchange(req, Want::Configured).await
    }

    /// Sends an `Upgrade` request (WebSocket) on a new HTTP/1.1 connection
    /// of its own: after a `101` the connection belongs to the tunnel.
    pub async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.timed_exchange(req, Want::Http1).await
    }

    /// [`Upstream::exchange`] within `upstream.timeout`.
    async fn timed_exchange(
        &self,
        req: Request<RequestBody>,
        want: Want,
    ) -> Result<Response<Incoming>, UpstreamError> {
        tokio::time::timeout(self.timeout, self.exchange(req, want))
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// The endpoints that take requests now, starting with the next in turn.
    fn up_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let n = self.endpoints.len();
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        (0..n)
            .map(move |i| &self.endpoints[(start + i) % n])
            .filter(|e| e.is_up())
    }

    async fn exchange(
        &self,
        req: Request<RequestBody>,
        want: Want,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // A failed connect sent nothing: the next endpoint may take the
        // request, so one endpoint going down costs clients no error while
        // another is up.
        let mut outcome = Err(UpstreamError::NoHealthyEndpoint);
        let mut chosen = None;
        for endpoint in self.up_endpoints() {
            outcome = match want {
                Want::Configured => self.checkout(endpoint).await,
                Want::Http1 => connect(endpoint, Want::Http1).await.map(|c| (c, false)),
            };
            if outcome.is_ok() {
                chosen = Some(endpoint);
                break;
            }
        }
        let (connection, reused) = outcome?;
        let endpoint = chosen.expect("set with the connection");
        match connection {
            Connected::Http1(mut sender) => {
                let resp = match sender.try_send_request(self.http1_request(req)).await {
                    Ok(resp) => resp,
                    Err(mut failed) => match failed.take_message() {
                        // The connection closed before a byte of the request
                        // went out (the upstream ended it while it was idle):
                        // once more on a new connection, when that is safe.
                        Some(req) if reused && is_idempotent(req.method()) => {
                            let (fresh, resp) = Box::pin(retry_http1(endpoint, req)).await?;
                            sender = fresh;
                            resp
                        }
                        _ => return Err(broke(failed.error())),
                    },
                };
                if want == Want::Configured {
                    endpoint.pool.recycle_http1(sender);
                }
                Ok(resp)
            }
            Connected::Http2(mut sender) => sender
                .send_request(self.http2_request(req))
                .await
                .map_err(|e| broke(&e)),
        }
    }

    /// A connection for the next request on `endpoint`: the shared HTTP/2
    /// one, an idle HTTP/1.1 one, or a new one; and whether it was reused.
    async fn checkout(&self, endpoint: &Endpoint) -> Result<(Connected, bool), UpstreamError> {
        let pool = &endpoint.pool;
        if let Some(shared) = pool.http2() {
            return Ok((Connected::Http2(shared), true));
        }
        if let Some(idle) = pool.checkout_http1() {
            return Ok((Connected::Http1(idle), true));
        }
        if !endpoint.connector.may_speak_http2() || pool.chose_http1() {
            return Ok((connect(endpoint, Want::Configured).await?, false));
        }
        // Boxed, as connecting is: a request that finds a connection
        // should not carry this path's state in its future.
        Box::pin(open_shared(endpoint)).await
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

/// The first request to an endpoint that may speak HTTP/2 opens the one
/// connection that carries every request, while the others wait for it.
async fn open_shared(endpoint: &Endpoint) -> Result<(Connected, bool), UpstreamError> {
    let pool = &endpoint.pool;
    let _opening = pool.http2_opening.lock().await;
    if let Some(shared) = pool.http2() {
        return Ok((Connected::Http2(shared), true));
    }
    let connected = connect(endpoint, Want::Configured).await?;
    match &connected {
        Connected::Http2(sender) => pool.share_http2(sender),
        Connected::Http1(_) => pool.note_chose_http1(),
    }
    Ok((connected, false))
}

/// `req` once more, on a new HTTP/1.1 connection: the idle one it was
/// given closed before a byte of it went out.
async fn retry_http1(
    endpoint: &Endpoint,
    req: Request<RequestBody>,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<RequestBody>,
        Response<Incoming>,
    ),
    UpstreamError,
> {
    tracing::debug!(endpoint = %endpoint.address, "idle upstream connection closed; retrying on a new one");
    let Connected::Http1(mut fresh) = connect(endpoint, Want::Http1).await? else {
        unreachable!("asked for HTTP/1.1");
    };
    let resp = fresh.send_request(req).await.map_err(|e| broke(&e))?;
    Ok((fresh, resp))
}

/// A new connection to `endpoint`, counted in its health.
async fn connect(endpoint: &Endpoint, want: Want) -> Result<Connected, UpstreamError> {
    // Boxed: the TCP, TLS and HTTP handshakes' state is large, and inline it
    // would be part of every request's future, which an HTTP/2 stream
    // moves (memcpy) on every request, connecting or not.
    match Box::pin(endpoint.connector.connect(want)).await {
        Ok(connected) => {
            endpoint.connected();
            Ok(connected)
        }
        Err(e) => {
            endpoint.connect_failed();
            Err(e)
        }
    }
}

/// Methods whose effect a repeat cannot change (RFC 9110 §9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// A digest of the files an upstream reads, to tell whether a reload
/// changed them. A file that cannot be read digests as its error, so the
/// build that follows reports it.
fn files_digest(cfg: &UpstreamConfig) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in cfg.files() {
        match std::fs::read(&file) {
            Ok(bytes) => ctx.update(&bytes),
            Err(e) => ctx.update(e.to_string().as_bytes()),
        }
    }
    ctx.finish().as_ref().to_vec()
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
