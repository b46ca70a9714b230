//! Accepting client connections: a bounded accept loop, the TLS handshake
//! under the current state, then HTTP/1.1 or HTTP/2 (by ALPN or preface)
//! until the client leaves, goes idle, or the gateway drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::client::ClientContext;
use super::service;
use crate::gateway::Gateway;
use crate::metrics::ActiveConnection;
use crate::tls::{classify_error, HandshakeFailure};

/// hyper's cap on request header fields (its default is 100, too few for
/// some legitimate clients; far below what a header flood needs).
const MAX_HEADER_COUNT: usize = 256;
/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long to wait before accepting again after the process ran out of
/// file descriptors, instead of spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until the gateway drains; every connection task is
/// spawned on `tracker` so the caller can wait for them to finish.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, tracker: TaskTracker) {
    let max = gw.state().config.listener.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    loop {
        // Beyond max_connections, new connections wait in the kernel backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = gw.drained() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = gw.drained() => break,
        };
        let gw = gw.clone();
        tracker.spawn(async move {
            handle_connection(gw, tcp, peer).await;
            drop(permit);
        });
    }
}

async fn handle_connection(gw: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr) {
    let _active = ActiveConnection::open(&gw.metrics);
    let _ = tcp.set_nodelay(true);
    let state = gw.state();
    let limits = state.config.listener.clone();
    let started = Instant::now();

    let accept = TlsAcceptor::from(state.tls.clone()).accept(tcp);
    let tls = match tokio::time::timeout(limits.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = classify_error(&e);
            gw.metrics.handshake_failed(reason);
            tracing::info!(%peer, reason = reason.label(), error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            gw.metrics.handshake_failed(HandshakeFailure::Timeout);
            tracing::info!(%peer, reason = "timeout", "TLS handshake not completed within listener.handshake_timeout");
            return;
        }
    };
    gw.metrics.handshake_ok(started.elapsed().as_secs_f64());

    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let client = match ClientContext::new(peer, chain, &state, &gw.metrics) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "verified client certificate has unreadable identity fields; closing");
            return;
        }
    };
    drop(state);

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(MAX_HEADER_COUNT)
        // The JSON 431 comes from the service; this is hyper's hard stop.
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size((limits.max_header_bytes * 2) as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);

    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        let gw = gw.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            let client = client.clone();
            let guard = activity.begin();
            async move {
                let resp = service::handle(gw, client, req).await;
                drop(guard);
                resp
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);

    let mut shutting_down = false;
    loop {
        let idle_deadline = activity.idle_deadline(limits.idle_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = gw.drained(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline.into()), if !shutting_down => {
                if activity.is_idle_for(limits.idle_timeout) {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// In-flight requests and the time of the last request start or finish,
/// for `listener.idle_timeout`.
struct Activity {
    inner: std::sync::Mutex<(usize, Instant)>,
}

struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            inner: std::sync::Mutex::new((0, Instant::now())),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        let mut g = self.inner.lock().expect("activity lock poisoned");
        g.0 += 1;
        g.1 = Instant::now();
        InFlight(self.clone())
    }

    fn last(&self) -> (usize, Instant) {
        *self.inner.lock().expect("activity lock poisoned")
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        let (in_flight, last) = self.last();
        if in_flight > 0 {
            Instant::now() + idle
        } else {
            last + idle
        }
    }

    fn is_idle_for(&self, idle: Duration) -> bool {
        let (in_flight, last) = self.last();
        in_flight == 0 && last.elapsed() >= idle
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut g = self.0.inner.lock().expect("activity lock poisoned");
        g.0 -= 1;
        g.1 = Instant::now();
    }
}
