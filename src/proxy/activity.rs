//! What one client connection is doing, as its timers and its HTTP/1 idle
//! release need to know: requests in flight, when the last one started or
//! finished, when the bytes of an unfinished request head began, whether
//! the current request body has been read to its end, and whether the
//! transport has unflushed writes or is waiting for the client.
//!
//! The service and the bodies report into it ([`Activity::begin`],
//! [`InFlight`], [`RequestBody`]); the I/O wrapper reports reads and
//! writes. The connection loop (`connection.rs`) reads it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::signal::Signal;
use super::tunnel::PendingTunnel;
use crate::config::ListenerConfig;
use crate::exchange::{Progress, RequestBody, Watch};

/// How long a connection that was asked to close (idle or draining) and has
/// nothing in flight may take to do so before it is dropped: an HTTP/2 peer
/// that never answers the GOAWAY ping must not hold it open.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long an HTTP/1 connection must have been between requests before
/// its hyper connection is set aside. Under load the next request comes
/// sooner and the connection keeps its buffers (rebuilding them costs about
/// 5,000 instructions a request); an idle one sheds them after this.
pub(super) const SET_ASIDE_AFTER: Duration = Duration::from_millis(250);

/// Why a connection's timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// An HTTP/1 request head was started (or, for the first request, the
    /// handshake finished) and is still incomplete after `header_timeout`.
    HeadTimeout,
    /// Nothing in flight for `idle_timeout`: close gracefully.
    Idle,
    /// The HTTP/1 exchange in flight moved no byte for
    /// `stream_idle_timeout`: close at once.
    StreamIdle,
    /// Asked to close, nothing in flight, still open after [`CLOSE_GRACE`].
    Abandon,
}

/// What one connection is doing.
pub(super) struct Activity {
    inner: Mutex<Snapshot>,
    /// Only HTTP/1 has request heads to time: HTTP/2 frames (pings, window
    /// updates) arrive on idle connections too.
    tracks_heads: bool,
    /// The transport was handed bytes to write that no successful flush has
    /// confirmed since (hyper flushes only once its own buffer is empty).
    unflushed: AtomicBool,
    /// The last read found nothing to read.
    read_blocked: AtomicBool,
    /// A response said the client may not use the connection again.
    close_requested: AtomicBool,
    /// The HTTP/1 exchange in flight (restarted by each request). HTTP/2
    /// streams each have their own (see `streams`).
    pub(super) progress: Arc<Progress>,
    /// An HTTP/1 upgrade agreed by the last response, for the connection's
    /// task to run once hyper hands over the connection.
    tunnel: Mutex<Option<PendingTunnel>>,
    /// Wakes the connection loop when its next deadline may have moved
    /// earlier: a head started, an HTTP/1 request began, or the last
    /// in-flight request finished.
    pub(super) changed: Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) in_flight: usize,
    /// When the last request started or finished (or the handshake ended).
    pub(super) last: Instant,
    /// When the bytes of a not yet complete HTTP/1 request head began.
    pub(super) head_started: Option<Instant>,
}

impl Snapshot {
    /// The next deadline and what happens when it passes. While requests
    /// are in flight that is `exchange_deadline`, the HTTP/1 exchange's
    /// stall check; `None` on HTTP/2, whose streams time themselves.
    pub(super) fn next_expiry(
        &self,
        limits: &ListenerConfig,
        closing_since: Option<Instant>,
        exchange_deadline: Option<Instant>,
    ) -> Option<(Instant, Expiry)> {
        if let Some(started) = self.head_started {
            return Some((started + limits.header_timeout, Expiry::HeadTimeout));
        }
        if self.in_flight > 0 {
            return exchange_deadline.map(|at| (at, Expiry::StreamIdle));
        }
        Some(match closing_since {
            None => (self.last + limits.idle_timeout, Expiry::Idle),
            Some(since) => (self.last.max(since) + CLOSE_GRACE, Expiry::Abandon),
        })
    }
}

impl Activity {
    pub(super) fn new(http1: bool) -> Activity {
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
            unflushed: AtomicBool::new(false),
            read_blocked: AtomicBool::new(false),
            close_requested: AtomicBool::new(false),
            progress: Arc::new(Progress::new()),
            tunnel: Mutex::new(None),
            changed: Signal::default(),
        }
    }

    /// HTTP/1: the connection has request heads to time, and one exchange
    /// at a time.
    pub(super) fn tracks_heads(&self) -> bool {
        self.tracks_heads
    }

    pub(super) fn set_tunnel(&self, tunnel: PendingTunnel) {
        *self.tunnel.lock().expect("activity lock poisoned") = Some(tunnel);
    }

    pub(super) fn take_tunnel(&self) -> Option<PendingTunnel> {
        self.tunnel.lock().expect("activity lock poisoned").take()
    }

    /// [`Snapshot::next_expiry`] for this connection at `now`.
    pub(super) fn next_expiry(
        &self,
        snapshot: &Snapshot,
        limits: &ListenerConfig,
        closing_since: Option<Instant>,
        now: Instant,
    ) -> Option<(Instant, Expiry)> {
        let exchange_deadline = (self.tracks_heads && snapshot.in_flight > 0).then(|| {
            match self.progress.watch(limits.stream_idle_timeout, now) {
                Watch::Until(at) => at,
                Watch::Expired => now,
            }
        });
        snapshot.next_expiry(limits, closing_since, exchange_deadline)
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.inner.lock().expect("activity lock poisoned")
    }

    /// hyper parsed a request head and called the service. The request is
    /// in flight until the returned guard is dropped; its body reports to
    /// its exchange (`progress`: the connection's on HTTP/1, where it also
    /// tells when the body has been read to its end, the stream's on HTTP/2).
    pub(super) fn begin(
        self: &Arc<Self>,
        req: Request<Incoming>,
        progress: Arc<Progress>,
    ) -> (InFlight, Request<RequestBody>) {
        if self.tracks_heads {
            // The connection's one exchange starts over with each request.
            progress.restart();
        }
        let req =
            req.map(|inner| RequestBody::new(inner, progress, super::headers::strip_trailers));
        (self.begin_request(), req)
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.last = Instant::now();
        s.head_started = None;
        drop(s);
        if self.tracks_heads {
            // The connection's timer moves from the head to the exchange.
            self.changed.raise();
        }
        InFlight(self.clone())
    }

    /// Bytes arrived from the client. With no request in flight on an
    /// HTTP/1 connection they are the start of the next head. (Bytes that
    /// arrive together with a previous request are not seen as a head start
    /// here; if they do not make a whole head, the connection loop starts
    /// the head clock when it sets the hyper connection aside.)
    pub(super) fn received(&self) {
        self.read_blocked.store(false, Ordering::Relaxed);
        if !self.tracks_heads {
            return;
        }
        self.progress.touch();
        let mut s = self.lock();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            self.changed.raise();
        }
    }

    /// A read found nothing (or ended the stream).
    pub(super) fn read_blocked(&self, blocked: bool) {
        self.read_blocked.store(blocked, Ordering::Relaxed);
    }

    /// The client took bytes: progress of the HTTP/1 exchange (a reader
    /// that stops reading stops it). HTTP/2 streams count their own frames.
    pub(super) fn sent(&self) {
        if self.tracks_heads {
            self.progress.touch();
        }
    }

    /// Bytes were offered to the transport (whether or not it took them).
    pub(super) fn wrote(&self) {
        self.unflushed.store(true, Ordering::Relaxed);
    }

    /// A flush completed: nothing the HTTP layer wrote is still buffered.
    pub(super) fn flushed(&self) {
        self.unflushed.store(false, Ordering::Relaxed);
    }

    /// Asks the connection loop to close the connection gracefully once
    /// what is in flight is done (HTTP/2: GOAWAY).
    pub(super) fn request_close(&self) {
        self.close_requested.store(true, Ordering::Relaxed);
        self.changed.raise();
    }

    pub(super) fn close_requested(&self) -> bool {
        self.close_requested.load(Ordering::Relaxed)
    }

    /// Whether an HTTP/1 connection has sat between requests, with nothing
    /// of its own to do, for [`SET_ASIDE_AFTER`] at `now`, so that its HTTP
    /// state may be set aside until the client sends again: no request in
    /// flight, the last request body read to its end (so the next bytes are
    /// a head, never body bytes), no head begun, every response byte
    /// flushed, and the last read found nothing.
    pub(super) fn between_requests(&self, now: Instant) -> bool {
        if self.unflushed.load(Ordering::Relaxed) || !self.read_blocked.load(Ordering::Relaxed) {
            return false;
        }
        // HTTP/1 is one request at a time: hyper parses a head only after
        // the previous body was read or discarded.
        let s = self.snapshot();
        self.progress.request_body_done() && self.set_aside_at(&s).is_some_and(|at| at <= now)
    }

    /// When [`Activity::between_requests`] may next turn true, for the
    /// connection's timer; `None` on HTTP/2 and while a request or head is
    /// under way.
    pub(super) fn set_aside_at(&self, s: &Snapshot) -> Option<Instant> {
        (self.tracks_heads && s.in_flight == 0 && s.head_started.is_none())
            .then_some(s.last + SET_ASIDE_AFTER)
    }
}

/// Keeps its request in flight until dropped (response sent or abandoned).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        s.last = Instant::now();
        if s.in_flight == 0 {
            self.0.changed.raise();
        }
    }
}

/// A response body that holds its request's [`InFlight`] until it is
/// done, and reports each frame as progress of its exchange.
pub(super) struct Tracked<B> {
    pub(super) body: B,
    pub(super) progress: Arc<Progress>,
    pub(super) _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        this.progress.touch();
        Poll::Ready(frame)
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
            path_parameters: Default::default(),
            underscore_headers: Default::default(),
            stream_idle_timeout: Duration::from_secs(60),
            proxy_protocol: crate::config::ProxyProtocol::Off,
            proxy_protocol_from: Vec::new(),
            session_ticket_keys: None,
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
            (
                "in flight: no timer of the connection's",
                s(2, 5, None),
                None,
                None,
            ),
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
            assert_eq!(
                snapshot.next_expiry(&l, *closing, None),
                *expected,
                "case {name}"
            );
        }
        assert_eq!(
            s(1, 5, None).next_expiry(&l, None, Some(at(70))),
            Some((at(70), Expiry::StreamIdle)),
            "an HTTP/1 exchange in flight: its stall check"
        );
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
        let req = h1.begin_request();
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
    fn between_requests_needs_every_condition() {
        let later = || Instant::now() + SET_ASIDE_AFTER;
        let h1 = Arc::new(Activity::new(true));
        h1.read_blocked(true);
        assert!(!h1.between_requests(later()), "the first head is owed");
        assert_eq!(h1.set_aside_at(&h1.snapshot()), None);
        let req = h1.begin_request();
        assert!(!h1.between_requests(later()), "request in flight");
        assert_eq!(h1.set_aside_at(&h1.snapshot()), None);
        h1.wrote();
        drop(req);
        let done = h1.snapshot().last;
        assert_eq!(
            h1.set_aside_at(&h1.snapshot()),
            Some(done + SET_ASIDE_AFTER)
        );
        assert!(
            !h1.between_requests(later()),
            "request body not read to its end"
        );
        h1.progress.request_body_ended(false);
        assert!(!h1.between_requests(later()), "response not flushed");
        h1.flushed();
        assert!(
            !h1.between_requests(done + SET_ASIDE_AFTER / 2),
            "not idle for long enough"
        );
        assert!(
            h1.between_requests(done + SET_ASIDE_AFTER),
            "flushed, idle, nothing to read"
        );
        h1.received();
        assert!(
            !h1.between_requests(later()),
            "bytes of the next head arrived"
        );

        let h2 = Arc::new(Activity::new(false));
        h2.read_blocked(true);
        drop(h2.begin_request());
        assert!(!h2.between_requests(later()), "HTTP/2 is never set aside");
        assert_eq!(h2.set_aside_at(&h2.snapshot()), None);
    }
}
