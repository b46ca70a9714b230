//! Opening one upstream connection: TCP (bounded by
//! `upstream.connect_timeout`, together with the TLS handshake), TLS with
//! the ALPN protocols the configured `upstream.protocol` allows, and the
//! hyper handshake of the HTTP version the connection speaks. The
//! connection's task is spawned here; the caller gets its sender.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::UpstreamError;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::exchange::RequestBody;
use crate::tls::load::LoadError;

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Which HTTP versions a new connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// As `upstream.protocol` says.
    Configured,
    /// HTTP/1.1 whatever `upstream.protocol` says: an `Upgrade` (WebSocket)
    /// exists only there.
    Http1,
}

/// A new upstream connection, ready for its first request. Requests carry
/// the client's body; health checks carry none.
pub(super) enum Connected<B = RequestBody> {
    Http1(http1::SendRequest<B>),
    Http2(http2::SendRequest<B>),
}

pub(super) struct Connector {
    host: String,
    port: u16,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    tls: Option<Arc<Tls>>,
}

/// `https://` upstreams: the server name and a client config per ALPN offer.
struct Tls {
    server_name: ServerName<'static>,
    configured: TlsConnector,
    http1: TlsConnector,
}

impl Tls {
    fn new(cfg: &UpstreamConfig) -> Result<Tls, LoadError> {
        let base = super::tls_client_config(cfg)?;
        let with_alpn = |alpn: &[&[u8]]| {
            let mut config = base.clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(config))
        };
        let configured: &[&[u8]] = match cfg.protocol {
            UpstreamProtocol::Http1 => &[ALPN_HTTP11],
            UpstreamProtocol::Http2 => &[ALPN_H2],
            UpstreamProtocol::Auto => &[ALPN_H2, ALPN_HTTP11],
        };
        let (host, _) = split_address(cfg.url.authority().map_or("", |a| a.as_str()));
        let server_name = ServerName::try_from(host.clone()).map_err(|e| {
            LoadError::new(
                std::path::Path::new(&format!("upstream {} url", cfg.name)),
                format!("`{host}` is no TLS server name: {e}"),
            )
        })?;
        Ok(Tls {
            server_name,
            configured: with_alpn(configured),
            http1: with_alpn(&[ALPN_HTTP11]),
        })
    }
}

/// `host:port` (or a bare host) as the resolver and rustls want the host:
/// `[::1]` is `::1` to them. A missing port is 0; config validation makes
/// sure there is one where it matters.
fn split_address(address: &str) -> (String, u16) {
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().unwrap_or(0)),
        _ => (address, 0),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host.to_owned(), port)
}

impl Connector {
    /// One connector per endpoint (`endpoints`, or the url's own address);
    /// all share the TLS settings, whose server name is the url's host.
    ///
    /// # Errors
    /// The upstream CA or client certificate files cannot be used.
    pub(super) fn for_endpoints(cfg: &UpstreamConfig) -> Result<Vec<Connector>, LoadError> {
        let tls = if cfg.is_https() {
            Some(Arc::new(Tls::new(cfg)?))
        } else {
            None
        };
        Ok(cfg
            .addresses()
            .into_iter()
            .map(|address| {
                let (host, port) = split_address(&address);
                Connector {
                    host,
                    port,
                    protocol: cfg.protocol,
                    connect_timeout: cfg.connect_timeout,
                    tls: tls.clone(),
                }
            })
            .collect())
    }

    /// `host:port`, as `certgate_upstream_endpoint_up` names it.
    pub(super) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether a connection made for [`Want::Configured`] may speak HTTP/2.
    pub(super) fn may_speak_http2(&self) -> bool {
        match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => self.tls.is_some(),
        }
    }

    pub(super) async fn connect<B>(&self, want: Want) -> Result<Connected<B>, UpstreamError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let opened = tokio::time::timeout(self.connect_timeout, self.open(want)).await;
        let (io, http2) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, host = %self.host, port = self.port, "upstream connect failed");
                return Err(UpstreamError::Connect);
            }
            Err(_) => {
                tracing::debug!(host = %self.host, port = self.port, "upstream connect timed out");
                return Err(UpstreamError::Connect);
            }
        };
        match io {
            Io::Plain(tcp) => handshake(tcp, http2).await,
            Io::Tls(tls) => handshake(*tls, http2).await,
        }
    }

    /// TCP, then TLS where the url says so; and whether to speak HTTP/2.
    async fn open(&self, want: Want) -> std::io::Result<(Io, bool)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            let http2 = want == Want::Configured && self.protocol == UpstreamProtocol::Http2;
            return Ok((Io::Plain(tcp), http2));
        };
        let connector = match want {
            Want::Configured => &tls.configured,
            Want::Http1 => &tls.http1,
        };
        let stream = connector.connect(tls.server_name.clone(), tcp).await?;
        let http2 = match want {
            Want::Http1 => false,
            // Offered h2 only: a server that negotiates nothing still gets
            // HTTP/2, which is what it was configured for.
            Want::Configured if self.protocol == UpstreamProtocol::Http2 => true,
            Want::Configured => stream.get_ref().1.alpn_protocol() == Some(ALPN_H2),
        };
        Ok((Io::Tls(Box::new(stream)), http2))
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn handshake<T, B>(io: T, http2: bool) -> Result<Connected<B>, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    let failed = |e: hyper::Error| {
        tracing::debug!(error = %e, "upstream HTTP handshake failed");
        UpstreamError::Connect
    };
    if http2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(Connected::Http2(sender))
    } else {
        let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(failed)?;
        tokio::spawn(async move {
            // With upgrades: a `101` hands the connection to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        Ok(Connected::Http1(sender))
    }
}
