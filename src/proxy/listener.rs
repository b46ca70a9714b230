//! Accepting client connections: a bounded accept loop that backs off when
//! the process runs out of file descriptors, the TLS handshake under the
//! current state (bounded by `listener.handshake_timeout`), then HTTP/1.1 or
//! HTTP/2 (chosen by ALPN) until the client leaves, stalls sending a request
//! head (`listener.header_timeout`), goes idle (`listener.idle_timeout`), or
//! the gateway drains.
//!
//! The connection's timers live here rather than in hyper: hyper's
//! `header_read_timeout` starts whenever it waits for a head, including
//! between keep-alive requests, so it would close every idle keep-alive
//! connection after `header_timeout` and make `idle_timeout` meaningless.
//! Here, as in Go's `ReadHeaderTimeout`/`IdleTimeout` and nginx's
//! `client_header_timeout`/`keepalive_timeout`, an idle keep-alive connection
//! gets `idle_timeout`, and the head clock starts with its first byte.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::client::ClientContext;
use super::service;
use crate::config::ListenerConfig;
use crate::gateway::Gateway;
use crate::metrics::ActiveConnection;
use crate::state::State;
use crate::tls::{classify_error, HandshakeFailure};

/// hyper's cap on HTTP/1 request header fields (its default is 100, too few
/// for some legitimate clients; far below what a header flood needs).
const MAX_HEADER_COUNT: usize = 256;
/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams the client may reset before the gateway has even picked
/// them up; beyond this the connection gets GOAWAY (CVE-2023-44487, "rapid
/// reset"). h2's own default, stated so that it cannot drift.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the gateway may reset for protocol errors before it sends
/// GOAWAY (RUSTSEC-2024-0003); below h2's default of 1024.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// First and longest pause after `accept` fails for lack of descriptors or
/// memory: retrying at once would spin on the same error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a connection that was asked to close (idle or draining) and has
/// nothing in flight may take to do so before it is dropped: an HTTP/2 peer
/// that never answers the GOAWAY ping must not hold it open.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until the gateway drains; every connection task is
/// spawned on `tracker` so the caller can wait for them to finish.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, tracker: TaskTracker) {
    let max = gw.state().config.listener.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Beyond max_connections, new connections wait in the kernel backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = gw.drained() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = gw.drained() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "connection failed before accept; ignored");
                continue;
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM: the pending connection stays in the
                // backlog; retry once descriptors may have been freed.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = gw.drained() => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let gw = gw.clone();
        tracker.spawn(async move {
            handle_connection(gw, tcp, peer).await;
            drop(permit);
        });
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn handle_connection(gw: Arc<Gateway>, tcp: TcpStream, peer: SocketAddr) {
    let _active = ActiveConnection::open(&gw.metrics);
    let _ = tcp.set_nodelay(true);
    let state = gw.state();
    let limits = state.config.listener.clone();
    let Some(tls) = handshake(&gw, &state, tcp, peer).await else {
        return;
    };
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
    serve_http(gw, tls, client, &limits).await;
}

/// The TLS handshake, counted and logged; `None` when it failed or timed out.
async fn handshake(
    gw: &Gateway,
    state: &State,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Box<TlsStream<TcpStream>>> {
    let started = Instant::now();
    let accept = TlsAcceptor::from(state.tls.clone()).accept(tcp);
    let accept = tokio::time::timeout(state.config.listener.handshake_timeout, accept);
    // A handshake still under way when the drain starts could only lead to
    // a 503, and a silent peer would hold the drain for handshake_timeout.
    let outcome = tokio::select! {
        outcome = accept => outcome,
        _ = gw.drained() => {
            tracing::debug!(%peer, "TLS handshake abandoned: draining");
            return None;
        }
    };
    match outcome {
        Ok(Ok(tls)) => {
            gw.metrics.handshake_ok(started.elapsed().as_secs_f64());
            // Boxed: the stream (~1.2 KiB, mostly rustls state) would
            // otherwise be laid out several times over in the connection
            // task, which is kept for every open connection.
            Some(Box::new(tls))
        }
        Ok(Err(e)) => {
            let reason = classify_error(&e);
            gw.metrics.handshake_failed(reason);
            tracing::info!(%peer, reason = reason.label(), error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            gw.metrics.handshake_failed(HandshakeFailure::Timeout);
            tracing::info!(%peer, reason = "timeout", "TLS handshake not completed within listener.handshake_timeout");
            None
        }
    }
}

/// HTTP over an established TLS connection, with the connection's timers.
async fn serve_http(
    gw: Arc<Gateway>,
    tls: Box<TlsStream<TcpStream>>,
    client: Arc<ClientContext>,
    limits: &ListenerConfig,
) {
    let peer = client.peer;
    // RFC 9113 §3.3: HTTP/2 over TLS is negotiated by ALPN, never guessed.
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let activity = Arc::new(Activity::new(!http2));
    let io = TokioIo::new(Watched {
        inner: tls,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        let gw = gw.clone();
        service_fn(move |req| {
            let in_flight = activity.begin();
            let (gw, client) = (gw.clone(), client.clone());
            // `handle` is called inside the block: a future captured by an
            // `async` block takes its size twice there (capture and awaitee),
            // and hyper keeps a slot of this block's size per connection.
            async move {
                let resp = service::handle(gw, client, req).await?;
                // The request stays in flight until its response body is
                // sent, so a long download is not mistaken for idleness.
                Ok::<_, Infallible>(resp.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let builder = http_builder(http2, limits);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);

    let mut closing_since: Option<Instant> = None;
    // One drain subscription for the connection's life: the loop below turns
    // twice per request, and a fresh `drained()` each time showed up in profiles.
    let drained = gw.drained();
    tokio::pin!(drained);
    loop {
        let next = activity.snapshot().next_expiry(limits, closing_since);
        let timer = async move {
            match next {
                Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = &mut drained, if closing_since.is_none() => {
                closing_since = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.changed.notified() => {}
            _ = timer => {
                let now = Instant::now();
                match activity.snapshot().next_expiry(limits, closing_since) {
                    Some((at, expiry)) if at <= now => match expiry {
                        Expiry::HeadTimeout => {
                            tracing::info!(%peer, "request head not received within listener.header_timeout; closing");
                            return;
                        }
                        Expiry::Idle => {
                            tracing::debug!(%peer, "connection idle for listener.idle_timeout; closing");
                            closing_since = Some(now);
                            conn.as_mut().graceful_shutdown();
                        }
                        Expiry::Abandon => {
                            tracing::debug!(%peer, "connection did not close when asked; dropping it");
                            return;
                        }
                    },
                    _ => {}
                }
            }
        }
    }
}

/// hyper settings for one connection: the protocol ALPN chose, and limits.
fn http_builder(http2: bool, limits: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The head timer is ours (see the module docs); hyper's would
        // otherwise default to 30 s and also cut idle keep-alive connections.
        .header_read_timeout(None)
        .max_headers(MAX_HEADER_COUNT)
        // The JSON 431 comes from the service; this is hyper's hard stop
        // (a bare 431 and close) that bounds the memory a head can take.
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size((limits.max_header_bytes * 2) as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
    if http2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    }
}

/// Why a connection's timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// An HTTP/1 request head was started (or, for the first request, the
    /// handshake finished) and is still incomplete after `header_timeout`.
    HeadTimeout,
    /// Nothing in flight for `idle_timeout`: close gracefully.
    Idle,
    /// Asked to close, nothing in flight, still open after [`CLOSE_GRACE`].
    Abandon,
}

/// What one connection is doing, for its timers.
struct Activity {
    inner: Mutex<Snapshot>,
    /// Only HTTP/1 has request heads to time: HTTP/2 frames (pings, window
    /// updates) arrive on idle connections too.
    tracks_heads: bool,
    /// Wakes the connection loop when its next deadline may have moved
    /// earlier: a head started, or the last in-flight request finished.
    changed: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    in_flight: usize,
    /// When the last request started or finished (or the handshake ended).
    last: Instant,
    /// When the bytes of a not yet complete HTTP/1 request head began.
    head_started: Option<Instant>,
}

impl Snapshot {
    /// The next deadline and what happens when it passes; `None` while
    /// requests are in flight (their own timeouts bound them).
    fn next_expiry(
        &self,
        limits: &ListenerConfig,
        closing_since: Option<Instant>,
    ) -> Option<(Instant, Expiry)> {
        if let Some(started) = self.head_started {
            return Some((started + limits.header_timeout, Expiry::HeadTimeout));
        }
        if self.in_flight > 0 {
            return None;
        }
        Some(match closing_since {
            None => (self.last + limits.idle_timeout, Expiry::Idle),
            Some(since) => (self.last.max(since) + CLOSE_GRACE, Expiry::Abandon),
        })
    }
}

/// Keeps its request in flight until dropped (response sent or abandoned).
struct InFlight(Arc<Activity>);

impl Activity {
    fn new(http1: bool) -> Activity {
        let now = Instant::now();
        Activity {
            inner: Mutex::new(Snapshot {
                in_flight: 0,
                last: now,
                // The first request head is due within header_timeout of the
                // handshake, whether or not any byte of it arrives.
                head_started: http1.then_some(now),
            }),
            tracks_heads: http1,
            changed: Notify::new(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        *self.inner.lock().expect("activity lock poisoned")
    }

    /// hyper parsed a request head and called the service.
    fn begin(self: &Arc<Self>) -> InFlight {
        let mut s = self.inner.lock().expect("activity lock poisoned");
        s.in_flight += 1;
        s.last = Instant::now();
        s.head_started = None;
        InFlight(self.clone())
    }

    /// Bytes arrived from the client. With no request in flight on an
    /// HTTP/1 connection they are the start of the next head. (Bytes that
    /// arrive together with a previous request's body are not seen as a
    /// head start; that head then gets `idle_timeout` instead.)
    fn received(&self) {
        if !self.tracks_heads {
            return;
        }
        let mut s = self.inner.lock().expect("activity lock poisoned");
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            self.changed.notify_one();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.inner.lock().expect("activity lock poisoned");
        s.in_flight -= 1;
        s.last = Instant::now();
        if s.in_flight == 0 {
            self.0.changed.notify_one();
        }
    }
}

/// The TLS stream, reporting reads to the connection's [`Activity`].
struct Watched {
    inner: Box<TlsStream<TcpStream>>,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ListenerConfig {
        ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_connections: 10,
            max_header_bytes: 16384,
            min_tls_version: crate::config::TlsVersion::V1_2,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn connection_timers() {
        let l = limits();
        let t0 = Instant::now();
        let s = |in_flight, last_after: u64, head_after: Option<u64>| Snapshot {
            in_flight,
            last: t0 + Duration::from_secs(last_after),
            head_started: head_after.map(|h| t0 + Duration::from_secs(h)),
        };
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        // (name, activity, closing since, expected next deadline)
        type Case = (
            &'static str,
            Snapshot,
            Option<Instant>,
            Option<(Instant, Expiry)>,
        );
        let cases: &[Case] = &[
            (
                "first head due after handshake",
                s(0, 0, Some(0)),
                None,
                Some((at(10), Expiry::HeadTimeout)),
            ),
            (
                "idle keep-alive gets idle_timeout",
                s(0, 5, None),
                None,
                Some((at(65), Expiry::Idle)),
            ),
            (
                "next head counts from its first byte",
                s(0, 5, Some(40)),
                None,
                Some((at(50), Expiry::HeadTimeout)),
            ),
            ("in flight: no timer", s(2, 5, None), None, None),
            (
                "closing idle: grace",
                s(0, 5, None),
                Some(at(20)),
                Some((at(25), Expiry::Abandon)),
            ),
            (
                "closing after a late request",
                s(0, 30, None),
                Some(at(20)),
                Some((at(35), Expiry::Abandon)),
            ),
            (
                "closing never lifts the head timer",
                s(0, 5, Some(7)),
                Some(at(6)),
                Some((at(17), Expiry::HeadTimeout)),
            ),
            (
                "closing with requests in flight waits",
                s(1, 5, None),
                Some(at(6)),
                None,
            ),
        ];
        for (name, snapshot, closing, expected) in cases {
            assert_eq!(snapshot.next_expiry(&l, *closing), *expected, "case {name}");
        }
    }

    #[test]
    fn heads_are_only_tracked_on_http1() {
        let h2 = Arc::new(Activity::new(false));
        assert_eq!(
            h2.snapshot().head_started,
            None,
            "HTTP/2 starts without a head timer"
        );
        h2.received();
        assert_eq!(
            h2.snapshot().head_started,
            None,
            "HTTP/2 frames are not heads"
        );

        let h1 = Arc::new(Activity::new(true));
        assert!(
            h1.snapshot().head_started.is_some(),
            "HTTP/1 owes its first head"
        );
        let req = h1.begin();
        assert_eq!(
            h1.snapshot().head_started,
            None,
            "a parsed head stops the clock"
        );
        h1.received();
        assert_eq!(
            h1.snapshot().head_started,
            None,
            "body bytes of an in-flight request"
        );
        drop(req);
        assert_eq!(h1.snapshot().in_flight, 0);
        h1.received();
        assert!(
            h1.snapshot().head_started.is_some(),
            "bytes on an idle connection start a head"
        );
    }

    #[test]
    fn only_per_connection_accept_errors_skip_the_backoff() {
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(
            !is_connection_error(&io::Error::from_raw_os_error(24)),
            "EMFILE backs off"
        );
        assert!(
            !is_connection_error(&io::Error::from_raw_os_error(23)),
            "ENFILE backs off"
        );
    }
}
