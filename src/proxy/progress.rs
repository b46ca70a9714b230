//! Whether an exchange in progress still moves bytes
//! (`listener.stream_idle_timeout`).
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
//! Who ends it: on HTTP/1.1 the connection loop (the connection closes); on
//! HTTP/2 the stream's own task, run by [`StreamExecutor`] (the stream is
//! reset). Either way the upstream side is dropped with it, so a half-read
//! upstream connection never goes back to the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

tokio::task_local! {
    /// The progress of the HTTP/2 stream whose task is running.
    static STREAM: Arc<Progress>;
}

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
pub(super) struct Progress {
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
pub(super) enum Watch {
    /// Look again at this instant.
    Until(Instant),
    /// Nothing has moved for `stream_idle_timeout`: end the exchange.
    Expired,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            last: AtomicU64::new(millis_since_epoch(Instant::now())),
            awaiting_head: AtomicBool::new(false),
            request_body_done: AtomicBool::new(false),
            request_body_failed: AtomicBool::new(false),
        }
    }

    /// The progress of the HTTP/2 stream running on this task, if any.
    pub(super) fn current_stream() -> Option<Arc<Progress>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// Starts over for the next request on an HTTP/1.1 connection.
    pub(super) fn restart(&self) {
        self.touch();
        self.awaiting_head.store(false, Ordering::Relaxed);
        self.request_body_done.store(false, Ordering::Relaxed);
        self.request_body_failed.store(false, Ordering::Relaxed);
    }

    /// Bytes moved.
    pub(super) fn touch(&self) {
        self.last
            .store(millis_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    pub(super) fn set_awaiting_head(&self, awaiting: bool) {
        self.awaiting_head.store(awaiting, Ordering::Relaxed);
        self.touch();
    }

    pub(super) fn request_body_ended(&self, failed: bool) {
        self.request_body_done.store(true, Ordering::Relaxed);
        if failed {
            self.request_body_failed.store(true, Ordering::Relaxed);
        }
        self.touch();
    }

    pub(super) fn request_body_done(&self) -> bool {
        self.request_body_done.load(Ordering::Relaxed)
    }

    pub(super) fn request_body_failed(&self) -> bool {
        self.request_body_failed.load(Ordering::Relaxed)
    }

    /// Whether the exchange has stalled at `now`, or when to look again.
    pub(super) fn watch(&self, idle: Duration, now: Instant) -> Watch {
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

/// Runs the tasks hyper spawns for HTTP/2 streams, each under its own
/// stall clock: a stream that moves nothing for `stream_idle_timeout` is
/// dropped, which resets it (h2 sends `RST_STREAM(CANCEL)` for a stream
/// whose handles are gone) and drops its upstream exchange.
#[derive(Clone)]
pub(super) struct StreamExecutor {
    pub(super) idle: Duration,
    pub(super) peer: SocketAddr,
    pub(super) metrics: Arc<Metrics>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let progress = Arc::new(Progress::new());
        let idle = self.idle;
        tokio::spawn(Watched {
            stream: Box::pin(STREAM.scope(progress.clone(), stream)),
            timer: Box::pin(tokio::time::sleep(idle)),
            progress,
            executor: self.clone(),
        });
    }
}

struct Watched<F> {
    stream: Pin<Box<F>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    progress: Arc<Progress>,
    executor: StreamExecutor,
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // The timer is only moved when it fires: progress is an atomic
        // store, never a timer reset.
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.progress.watch(self.executor.idle, now) {
                Watch::Until(at) => self.timer.as_mut().reset(at.into()),
                Watch::Expired => {
                    stream_stalled(
                        &self.executor.metrics,
                        self.executor.peer,
                        "resetting the stream",
                    );
                    return Poll::Ready(());
                }
            }
        }
        Poll::Pending
    }
}

/// Counts and logs an exchange ended by `stream_idle_timeout`.
pub(super) fn stream_stalled(metrics: &Metrics, peer: SocketAddr, action: &str) {
    metrics.stream_idle_timeouts.inc();
    tracing::info!(
        %peer,
        "request or response moved no byte for listener.stream_idle_timeout; {action}"
    );
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
