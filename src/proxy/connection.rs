//! HTTP over an established TLS connection: HTTP/1.1 or HTTP/2 (chosen by
//! ALPN, never guessed: RFC 9113 §3.3) until the client leaves, stalls
//! sending a request head (`listener.header_timeout`), goes idle
//! (`listener.idle_timeout`), or the gateway drains.
//!
//! The connection's timers live here rather than in hyper: hyper's
//! `header_read_timeout` starts whenever it waits for a head, including
//! between keep-alive requests, so it would close every idle keep-alive
//! connection after `header_timeout` and make `idle_timeout` meaningless.
//! Here, as in Go's `ReadHeaderTimeout`/`IdleTimeout` and nginx's
//! `client_header_timeout`/`keepalive_timeout`, an idle keep-alive connection
//! gets `idle_timeout`, and the head clock starts with its first byte.
//!
//! An HTTP/1.1 connection between requests keeps only its TLS stream. hyper
//! holds an 8 KiB read and an 8 KiB write buffer, a cached header map and a
//! slot for the request future for as long as a connection lives; an
//! mTLS gateway in front of connection-pooling clients holds thousands of
//! connections that are idle nearly all the time. So once a response is
//! flushed, the request body read to its end and the client has sent
//! nothing more for 250 ms, the hyper connection is taken apart
//! (`into_parts`: the stream, plus any bytes it read ahead) and dropped;
//! when the client sends again, a new one is built over the same stream,
//! starting with those bytes. nginx does the same with its keep-alive
//! buffers (at once; the pause here keeps busy connections from paying for
//! the rebuild on every request).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::CONNECTION;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::activity::{Activity, Expiry, Tracked, CLOSE_GRACE};
use super::client::ClientConnection;
use super::signal::Gate;
use super::streams::{current_stream, stream_stalled, StreamExecutor, WithStreams};
use super::tunnel::{Handoff, TunnelLimits};
use super::{service, ProxyBody};
use crate::config::ListenerConfig;
use crate::exchange::Progress;
use crate::gateway::Gateway;

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
/// How much larger than `max_header_bytes` an HTTP/2 header list may be
/// before h2 itself refuses it (see `http2_builder`).
const H2_HEADER_LIST_FACTOR: usize = 8;
/// The most an idle HTTP/1 connection reads (on the stack) when the client
/// sends again; the rest of a longer head stays in rustls for hyper.
const READ_AHEAD: usize = 4096;

type Tls = Box<TlsStream<TcpStream>>;

pub(super) async fn serve(
    gw: Arc<Gateway>,
    tls: Tls,
    client: Arc<ClientConnection>,
    limits: &ListenerConfig,
) {
    let peer = client.peer;
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let activity = Arc::new(Activity::new(!http2));
    let tunnel_limits = TunnelLimits {
        idle: limits.idle_timeout,
        shutdown: limits.shutdown_timeout,
    };
    let respond_to = {
        let (gw, client, activity) = (gw.clone(), client.clone(), activity.clone());
        move |req| {
            respond(
                gw.clone(),
                client.clone(),
                activity.clone(),
                req,
                tunnel_limits,
            )
        }
    };
    // One drain subscription for the connection's life: the loop below turns
    // twice per request, and a fresh `drain_started()` each time showed up in
    // profiles. Both ends are gated (see `signal`): the loop's turns do not
    // poll them unless they woke. Boxed: the refusal holds a timer for the
    // certificate's expiry, which an idle connection task should not carry
    // inline.
    let mut drained = Gate::new(Box::pin(gw.drain_started()));
    let mut refused = Gate::new(Box::pin({
        let (gw, client) = (gw.clone(), client.clone());
        async move { client.refused_later(&gw).await }
    }));
    let conn = Conn {
        activity,
        limits,
        tunnel_limits,
        peer,
        gw: gw.clone(),
        client,
        closing_since: None,
        timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
        timer_at: None,
    };
    let ends = Ends {
        drained: Pin::new(&mut drained),
        refused: Pin::new(&mut refused),
    };
    if http2 {
        // Boxed: hyper's HTTP/2 connection state is laid out inline in this
        // future; an HTTP/1 connection task should not carry its size.
        // The service future boxed: a stream holds it inline, and hyper
        // moves a stream twice before it runs, which cost more than the
        // allocation (callgrind). An HTTP/1 connection keeps it in a slot
        // that hyper already boxed.
        let service = service_fn(move |req| Box::pin(respond_to(req)));
        Box::pin(conn.serve_http2(tls, service, ends)).await;
    } else {
        conn.serve_http1(tls, service_fn(respond_to), ends).await;
    }
}

/// One request, from the service hyper calls: authorized and proxied by
/// `service::handle`, tracked in the connection's [`Activity`] until its
/// response body has been sent.
async fn respond(
    gw: Arc<Gateway>,
    client: Arc<ClientConnection>,
    activity: Arc<Activity>,
    req: http::Request<Incoming>,
    tunnel_limits: TunnelLimits,
) -> Result<http::Response<Tracked<ProxyBody>>, Infallible> {
    let http2 = !activity.tracks_heads();
    // On HTTP/2 this runs under the stream's stall clock.
    let progress = match http2 {
        true => current_stream().unwrap_or_else(|| {
            debug_assert!(false, "HTTP/2 streams run under StreamExecutor");
            Arc::new(Progress::new())
        }),
        false => activity.progress.clone(),
    };
    let (in_flight, req) = activity.begin(req, progress.clone());
    let mut resp = service::handle(gw.clone(), client.clone(), req).await?;
    let handoff = resp.extensions_mut().remove::<Handoff>();
    if let Some(tunnel) = handoff.and_then(|h| h.take()) {
        if http2 {
            // The stream outlives this request's task; the
            // connection lives on while the stream is open.
            tokio::spawn(async move {
                let refused = client.refused_later(&gw);
                tunnel.run(&gw, &client, tunnel_limits, refused).await;
            });
        } else {
            // Run by the connection's own task once hyper hands
            // over the connection (see `serve_http1`).
            activity.set_tunnel(tunnel);
        }
    }
    // `Connection: close` from the gateway (a certificate a
    // reload refused, draining): hyper ends an HTTP/1
    // connection after this response by itself; an HTTP/2
    // connection, where the header cannot go, gets GOAWAY.
    if resp.headers().get(CONNECTION).is_some_and(|v| v == "close") {
        activity.request_close();
    }
    // The request stays in flight until its response body is
    // sent, so a long download is not mistaken for idleness.
    Ok::<_, Infallible>(resp.map(|body| Tracked {
        body,
        progress,
        _in_flight: in_flight,
    }))
}

/// The per-connection context of the serving loops.
struct Conn<'a> {
    activity: Arc<Activity>,
    limits: &'a ListenerConfig,
    tunnel_limits: TunnelLimits,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    client: Arc<ClientConnection>,
    /// When the connection was asked to close (idle or draining).
    closing_since: Option<Instant>,
    /// The connection's one timer, armed at `timer_at` (unarmed: `None`).
    /// Deadlines mostly move later (each request and byte pushes them out),
    /// so it is re-armed only when one moves earlier or when it fires:
    /// firing early is checked and costs a turn, while re-arming on every
    /// turn cost a timer-wheel update per turn.
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
}

/// What ends a connection from outside: the drain, and a reload whose
/// state refuses the client's certificate. Each completes once; the
/// connection ends or stops polling it when it does.
struct Ends<'e, D, R> {
    drained: Pin<&'e mut D>,
    refused: Pin<&'e mut R>,
}

/// Why [`Conn::drive`] returned.
enum Served {
    /// The connection is over.
    Ended,
    /// HTTP/1 between requests: the hyper connection may be taken apart.
    BetweenRequests,
}

/// How one poll of hyper and the activity in [`Conn::drive`] ended.
enum Turn {
    Served(Served),
    /// The activity changed: its deadlines are to be computed again.
    Changed,
}

impl Conn<'_> {
    async fn serve_http1<S, D, R>(mut self, mut tls: Tls, service: S, mut ends: Ends<'_, D, R>)
    where
        S: HttpService<Incoming, ResBody = Tracked<ProxyBody>, Error = Infallible> + Clone,
        D: Future<Output = ()>,
        R: Future<Output = &'static str>,
    {
        let mut read_ahead = Bytes::new();
        loop {
            if read_ahead.is_empty() {
                match self.await_bytes(&mut tls, &mut ends).await {
                    Some(bytes) => read_ahead = bytes,
                    None => return,
                }
            }
            let io = TokioIo::new(Watched {
                inner: tls,
                read_ahead,
                activity: self.activity.clone(),
            });
            // Boxed: the idle connection task then keeps a pointer, not
            // hyper's connection state laid out inline.
            let conn = http1_builder(self.limits)
                .serve_connection(io, service.clone())
                .with_upgrades();
            let mut conn = Box::pin(conn);
            let served = self
                .drive(conn.as_mut(), |c| c.graceful_shutdown(), &mut ends)
                .await;
            // `None`: hyper handed the connection over to an upgrade.
            let parts = match served {
                Served::Ended => None,
                Served::BetweenRequests => Pin::into_inner(conn).into_parts(),
            };
            match parts {
                None => {
                    if let Some(tunnel) = self.activity.take_tunnel() {
                        let (gw, client) = (&self.gw, &self.client);
                        tunnel
                            .run(gw, client, self.tunnel_limits, ends.refused.as_mut())
                            .await;
                    }
                    return;
                }
                Some(parts) => {
                    let watched = parts.io.into_inner();
                    tls = watched.inner;
                    read_ahead = concat(&parts.read_buf, watched.read_ahead);
                    if !read_ahead.is_empty() {
                        // Bytes hyper read behind the last request (pipelined)
                        // and that do not make a whole head yet: the next
                        // head has begun, and its clock starts now.
                        self.activity.received();
                    }
                }
            }
        }
    }

    async fn serve_http2<S, D, R>(mut self, tls: Tls, service: S, mut ends: Ends<'_, D, R>)
    where
        S: HttpService<Incoming, ResBody = Tracked<ProxyBody>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        D: Future<Output = ()>,
        R: Future<Output = &'static str>,
    {
        let io = TokioIo::new(Watched {
            inner: tls,
            read_ahead: Bytes::new(),
            activity: self.activity.clone(),
        });
        let executor = StreamExecutor::default();
        let conn = http2_builder(self.limits, executor.clone()).serve_connection(io, service);
        let mut conn = WithStreams::new(
            conn,
            &executor,
            self.limits.stream_idle_timeout,
            self.peer,
            self.gw.metrics.clone(),
        );
        self.drive(
            Pin::new(&mut conn),
            |mut c| c.conn().graceful_shutdown(),
            &mut ends,
        )
        .await;
    }

    /// An HTTP/1 connection between requests, holding nothing but its TLS
    /// stream: the first bytes the client sends, or `None` when the
    /// connection is over (closed by the client, timed out, draining).
    async fn await_bytes<D, R>(&mut self, tls: &mut Tls, ends: &mut Ends<'_, D, R>) -> Option<Bytes>
    where
        D: Future<Output = ()>,
        R: Future<Output = &'static str>,
    {
        let activity = &self.activity;
        let (deadline, expiry) = activity
            .next_expiry(&activity.snapshot(), self.limits, None, Instant::now())
            .expect("nothing is in flight between requests");
        tokio::select! {
            read = poll_fn(|cx| poll_read_ahead(tls, cx)) => match read {
                Ok(bytes) if !bytes.is_empty() => {
                    self.activity.received();
                    Some(bytes)
                }
                // The client closed between requests; answer in kind.
                Ok(_) => {
                    close(tls).await;
                    None
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    None
                }
            },
            _ = ends.drained.as_mut() => {
                close(tls).await;
                None
            }
            reason = ends.refused.as_mut() => {
                self.refused(reason);
                close(tls).await;
                None
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                log_expiry(self.peer, expiry);
                if expiry == Expiry::Idle {
                    close(tls).await;
                }
                None
            }
        }
    }

    /// Serves one hyper connection under the connection's timers until it
    /// ends or, on HTTP/1, sits between requests.
    async fn drive<C, D, R>(
        &mut self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: impl Fn(Pin<&mut C>),
        ends: &mut Ends<'_, D, R>,
    ) -> Served
    where
        C: Future<Output = Result<(), hyper::Error>>,
        D: Future<Output = ()>,
        R: Future<Output = &'static str>,
    {
        let (activity, limits, peer) = (self.activity.clone(), self.limits, self.peer);
        // Whether the last turn only re-timed the connection after hyper
        // had returned Pending in it. hyper is not polled again then: its
        // wakers are registered, and a wake during this poll has the task
        // polled again.
        let mut retimed_only = false;
        loop {
            if self.closing_since.is_none() && activity.close_requested() {
                tracing::debug!(%peer, "closing the connection after a response that ends it");
                self.closing_since = Some(Instant::now());
                graceful_shutdown(conn.as_mut());
                retimed_only = false;
            }
            let closing = self.closing_since.is_some();
            let snapshot = activity.snapshot();
            let mut next = activity
                .next_expiry(&snapshot, limits, self.closing_since, Instant::now())
                .map(|(at, _)| at);
            if !closing {
                next = next
                    .into_iter()
                    .chain(activity.set_aside_at(&snapshot))
                    .min();
            }
            if let Some(at) = next.filter(|at| self.timer_at.is_none_or(|armed| *at < armed)) {
                self.timer.as_mut().reset(at.into());
                self.timer_at = Some(at);
            }
            let mut skip_hyper = std::mem::take(&mut retimed_only);
            let turn = poll_fn(|cx| {
                if !std::mem::take(&mut skip_hyper) {
                    // The service and the bodies run inside hyper's poll and
                    // change the activity there: they need not wake this
                    // task, which looks at the activity right after.
                    activity.changed.mute();
                    match conn.as_mut().poll(cx) {
                        Poll::Ready(result) => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            return Poll::Ready(Turn::Served(Served::Ended));
                        }
                        // Checked right after hyper returned: it is waiting
                        // for the client and for nothing else.
                        Poll::Pending if !closing && activity.between_requests(Instant::now()) => {
                            return Poll::Ready(Turn::Served(Served::BetweenRequests));
                        }
                        Poll::Pending => {}
                    }
                }
                activity.changed.poll_raised(cx).map(|()| Turn::Changed)
            });
            tokio::select! {
                turn = turn => match turn {
                    Turn::Served(served) => return served,
                    Turn::Changed => retimed_only = true,
                },
                _ = ends.drained.as_mut(), if !closing => {
                    self.closing_since = Some(Instant::now());
                    graceful_shutdown(conn.as_mut());
                }
                // Every stream and exchange of the connection ends with it.
                reason = ends.refused.as_mut() => {
                    self.refused(reason);
                    return Served::Ended;
                }
                () = self.timer.as_mut(), if self.timer_at.is_some() => {
                    self.timer_at = None;
                    let now = Instant::now();
                    let snapshot = activity.snapshot();
                    match activity.next_expiry(&snapshot, limits, self.closing_since, now) {
                        Some((at, expiry)) if at <= now => {
                            if expiry == Expiry::StreamIdle {
                                stream_stalled(&self.gw.metrics, peer, "closing the connection");
                            } else {
                                log_expiry(peer, expiry);
                            }
                            match expiry {
                                Expiry::HeadTimeout | Expiry::Abandon | Expiry::StreamIdle => {
                                    return Served::Ended
                                }
                                Expiry::Idle => {
                                    self.closing_since = Some(now);
                                    graceful_shutdown(conn.as_mut());
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl Conn<'_> {
    fn refused(&self, reason: &'static str) {
        // An upgrade agreed just before is not carried out.
        drop(self.activity.take_tunnel());
        let identity = &self.client.verified.identity;
        self.gw.metrics.connections.refused_by_reload.inc();
        tracing::warn!(
            peer = %self.peer,
            subject = %identity.subject,
            fingerprint = %identity.fingerprint_sha256,
            reason,
            "a reload refused the client's certificate; closing its connection"
        );
    }
}

fn log_expiry(peer: SocketAddr, expiry: Expiry) {
    match expiry {
        Expiry::HeadTimeout => tracing::info!(
            %peer,
            "request head not received within listener.header_timeout; closing"
        ),
        Expiry::Idle => {
            tracing::debug!(%peer, "connection idle for listener.idle_timeout; closing");
        }
        Expiry::Abandon => {
            tracing::debug!(%peer, "connection did not close when asked; dropping it");
        }
        // Counted and logged by `stream_stalled`.
        Expiry::StreamIdle => {}
    }
}

/// Sends close_notify and FIN to a client between requests, as hyper does
/// when it closes an idle connection (bounded: a peer that stopped reading
/// cannot hold the task).
async fn close(tls: &mut Tls) {
    let _ = tokio::time::timeout(CLOSE_GRACE, tls.shutdown()).await;
}

/// Reads what the client sent into a buffer on the stack, so that a
/// connection waiting here holds no buffer of its own. Empty: end of stream.
fn poll_read_ahead(tls: &mut Tls, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
    let mut buf = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
    let mut buf = ReadBuf::uninit(&mut buf);
    std::task::ready!(Pin::new(&mut **tls).poll_read(cx, &mut buf))?;
    Poll::Ready(Ok(Bytes::copy_from_slice(buf.filled())))
}

/// Bytes hyper read but did not parse, then what it never read of the
/// previous read-ahead. `first` is copied, never kept: it shares hyper's
/// 8 KiB read buffer, which is what the idle connection is shedding.
fn concat(first: &[u8], second: Bytes) -> Bytes {
    if first.is_empty() {
        return second;
    }
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(first);
    joined.extend_from_slice(&second);
    joined.freeze()
}

fn http1_builder(limits: &ListenerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // The head timer is ours (see the module docs); hyper's would
        // otherwise default to 30 s and also cut idle keep-alive connections.
        .header_read_timeout(None)
        .max_headers(MAX_HEADER_COUNT)
        // The JSON 431 comes from the service; this is hyper's hard stop
        // (a bare 431 and close) that bounds the memory a head can take.
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024));
    builder
}

fn http2_builder(
    limits: &ListenerConfig,
    executor: StreamExecutor,
) -> http2::Builder<StreamExecutor> {
    let mut builder = http2::Builder::new(executor);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // The header list size a client is told it may send: a head above
        // `max_header_bytes` but below this reaches the service and gets its
        // counted, JSON 431; beyond it h2 answers a bare 431 and resets the
        // stream. This bounds the memory a head can take.
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes * H2_HEADER_LIST_FACTOR).unwrap_or(u32::MAX),
        )
        // WebSocket over HTTP/2 (RFC 8441 extended CONNECT).
        .enable_connect_protocol()
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// The TLS stream as hyper sees it: bytes read ahead first, and every read,
/// write and flush reported to the connection's [`Activity`].
struct Watched {
    inner: Tls,
    read_ahead: Bytes,
    activity: Arc<Activity>,
}

impl Watched {
    fn wrote_some(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.sent();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead.split_to(n));
            if this.read_ahead.is_empty() {
                // An empty slice would still keep its allocation.
                this.read_ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.activity.received(),
            Poll::Pending => this.activity.read_blocked(true),
            // End of stream or an error: hyper closes the connection.
            Poll::Ready(_) => this.activity.read_blocked(false),
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
        let this = self.get_mut();
        this.activity.wrote();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote_some(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.wrote();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote_some(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.activity.flushed();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_keeps_order() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            concat(b"GET / HT", b("TP/1.1\r\n")),
            b("GET / HTTP/1.1\r\n")
        );
        assert_eq!(concat(b"", b("rest")), b("rest"));
        assert_eq!(concat(b"unparsed", b("")), b("unparsed"));
    }
}
