//! One exchange in progress (a request and its response) as the gateway
//! tracks it: whether it still moves bytes (`listener.stream_idle_timeout`),
//! and how far the client's request body has come.
//!
//! An exchange is one request and its response: an HTTP/1.1 request on its
//! connection, or one HTTP/2 stream. While it is open it holds an upstream
//! connection and buffers, so a client that stops reading (an HTTP/2 stream
//! whose window it never opens, a TCP window it never drains) or stops
//! sending its body mid-way could otherwise hold them for as long as it
//! likes. Every body frame either way, and on HTTP/1.1 every byte read or
//! written on the connection, counts as progress; an exchange with none for
//! `stream_idle_timeout` is ended. The wait for the upstream's response head
//! after the whole request was sent is bounded by `upstream.timeout`
//! instead, so a slow upstream is reported as one (504), not as a stall.
//!
//! Who ends it (the proxy): on HTTP/1.1 the connection loop closes the
//! connection; on HTTP/2 the connection's task resets the stream. Either
//! way the upstream side is dropped with it, so a half-read upstream
//! connection never goes back to the pool.
//!
//! The client's request body travels upstream as a [`RequestBody`], which
//! reports its frames and its end here.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The moment [`Progress`] counts its milliseconds from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

/// What one exchange has done lately. Shared by its request body, its
/// response body, the service and whoever watches the clock.
#[derive(Debug)]
pub struct Progress {
    /// When a byte last moved, in milliseconds since [`epoch`].
    last: AtomicU64,
    /// The service is waiting for the upstream's response head.
    awaiting_head: AtomicBool,
    /// The client's request body has been read to its end (or had none).
    request_body_done: AtomicBool,
    /// The client's request body ended in an error (a malformed chunk, a
    /// connection closed mid-body): the client's fault, never the upstream's.
    request_body_failed: AtomicBool,
}

/// What the watcher of an exchange should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Look again at this instant.
    Until(Instant),
    /// Nothing has moved for `stream_idle_timeout`: end the exchange.
    Expired,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            last: AtomicU64::new(millis_since_epoch(Instant::now())),
            awaiting_head: AtomicBool::new(false),
            request_body_done: AtomicBool::new(false),
            request_body_failed: AtomicBool::new(false),
        }
    }

    /// Starts over for the next request on an HTTP/1.1 connection.
    pub fn restart(&self) {
        self.touch();
        self.awaiting_head.store(false, Ordering::Relaxed);
        self.request_body_done.store(false, Ordering::Relaxed);
        self.request_body_failed.store(false, Ordering::Relaxed);
    }

    /// Bytes moved.
    pub fn touch(&self) {
        self.last
            .store(millis_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    pub fn set_awaiting_head(&self, awaiting: bool) {
        self.awaiting_head.store(awaiting, Ordering::Relaxed);
        self.touch();
    }

    pub fn request_body_ended(&self, failed: bool) {
        self.request_body_done.store(true, Ordering::Relaxed);
        if failed {
            self.request_body_failed.store(true, Ordering::Relaxed);
        }
        self.touch();
    }

    pub fn request_body_done(&self) -> bool {
        self.request_body_done.load(Ordering::Relaxed)
    }

    pub fn request_body_failed(&self) -> bool {
        self.request_body_failed.load(Ordering::Relaxed)
    }

    /// Whether the exchange has stalled at `now`, or when to look again.
    pub fn watch(&self, idle: Duration, now: Instant) -> Watch {
        let waiting_for_upstream = self.awaiting_head.load(Ordering::Relaxed)
            && self.request_body_done.load(Ordering::Relaxed);
        if waiting_for_upstream {
            // upstream.timeout bounds this wait; look again afterwards.
            return Watch::Until(now + idle);
        }
        let last = epoch() + Duration::from_millis(self.last.load(Ordering::Relaxed));
        let deadline = last + idle;
        if deadline <= now {
            Watch::Expired
        } else {
            Watch::Until(deadline)
        }
    }
}

/// A client's request body on its way upstream. It reports each frame as
/// progress of its exchange, and its end: on HTTP/1 only then is hyper past
/// the body, waiting for the next head. A body dropped unread says
/// nothing; hyper then discards the rest or closes the connection.
pub struct RequestBody {
    inner: Incoming,
    progress: Arc<Progress>,
    /// Rewrites the client's trailer fields before they go upstream (the
    /// proxy strips what a client may not send, as it does in the head).
    trailers: fn(&mut http::HeaderMap),
}

impl RequestBody {
    /// `inner`, reporting into `progress`, which it marks done at once
    /// when there is no body.
    pub fn new(
        inner: Incoming,
        progress: Arc<Progress>,
        trailers: fn(&mut http::HeaderMap),
    ) -> RequestBody {
        if inner.is_end_stream() {
            progress.request_body_ended(false);
        }
        RequestBody {
            inner,
            progress,
            trailers,
        }
    }

    fn ended(&mut self, failed: bool) {
        self.progress.request_body_ended(failed);
    }

    /// The exchange this body belongs to.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        this.progress.touch();
        if let Some(Ok(frame)) = frame.as_mut() {
            if let Some(trailers) = frame.trailers_mut() {
                (this.trailers)(trailers);
            }
        }
        // hyper marks its side done before handing out the last data frame
        // of a sized body, or before the trailers or end of a chunked one.
        match &frame {
            Some(Err(_)) => this.ended(true),
            None => this.ended(false),
            Some(Ok(_)) if this.inner.is_end_stream() => this.ended(false),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_rules() {
        let idle = Duration::from_secs(10);
        let p = Progress::new();
        let start = Instant::now();
        assert!(matches!(p.watch(idle, start), Watch::Until(_)), "fresh");
        assert_eq!(
            p.watch(idle, start + Duration::from_secs(11)),
            Watch::Expired,
            "nothing moved"
        );

        p.set_awaiting_head(true);
        assert_eq!(
            p.watch(idle, start + Duration::from_secs(11)),
            Watch::Expired,
            "awaiting the head while the request body is still owed is a stall"
        );
        p.request_body_ended(false);
        let later = start + Duration::from_secs(100);
        assert_eq!(
            p.watch(idle, later),
            Watch::Until(later + idle),
            "only upstream.timeout bounds the wait for the head"
        );
        p.set_awaiting_head(false);
        assert_eq!(p.watch(idle, later), Watch::Expired);
        assert!(p.request_body_done() && !p.request_body_failed());

        p.restart();
        assert!(!p.request_body_done());
        assert!(matches!(p.watch(idle, Instant::now()), Watch::Until(_)));
        p.request_body_ended(true);
        assert!(p.request_body_failed());
    }
}
