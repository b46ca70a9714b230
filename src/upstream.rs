//! The pooled HTTP client to the one upstream (http or https, with its own
//! CA and optional client certificate), and the classification of its
//! failures ([`UpstreamError`]; the proxy answers them with 502/504).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::exchange::RequestBody;
use crate::tls::load::{self, LoadError};

/// Idle pooled upstream connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most one WARN per this long that the upstream is unreachable: while
/// it is down every request fails, and a line per request would flood the
/// journal (each request still has its access-log line).
const UNREACHABLE_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
    /// When "unreachable" was last logged, and the failures since.
    unreachable_logged: Mutex<(Option<Instant>, u64)>,
}

impl Upstream {
    /// # Errors
    /// The upstream CA or client certificate files cannot be used.
    pub fn build(cfg: &UpstreamConfig) -> Result<Upstream, LoadError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let tls = upstream_tls(cfg)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        let parts = cfg.url.clone().into_parts();
        Ok(Upstream {
            client,
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority: parts
                .authority
                .expect("config validation requires an authority in upstream.url"),
            timeout: cfg.timeout,
            unreachable_logged: Mutex::new((None, 0)),
        })
    }

    /// The upstream URI for a (normalized) path and query.
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .expect("scheme, authority and path are each valid")
    }

    /// Sends the request and waits for the response head, at most `upstream.timeout`.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => {
                self.log_unreachable(&e);
                Err(UpstreamError::Connect)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream exchange failed");
                Err(UpstreamError::Protocol)
            }
        }
    }
}

impl Upstream {
    /// WARN that the upstream cannot be reached, at most once per
    /// [`UNREACHABLE_LOG_INTERVAL`], with the failures left unlogged since.
    fn log_unreachable(&self, error: &hyper_util::client::legacy::Error) {
        let mut logged = self
            .unreachable_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if logged
            .0
            .is_some_and(|at| now.duration_since(at) < UNREACHABLE_LOG_INTERVAL)
        {
            logged.1 += 1;
            return;
        }
        let not_logged = std::mem::take(&mut logged.1);
        logged.0 = Some(now);
        drop(logged);
        let cause = std::error::Error::source(error).map(ToString::to_string);
        tracing::warn!(
            upstream = %self.authority,
            error = %error,
            cause = cause.as_deref(),
            failures_not_logged = not_logged,
            "upstream unreachable"
        );
    }
}

fn upstream_tls(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, LoadError> {
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
