//! HTTP/2 streams, run by their connection's own task, each under its own
//! stall clock (`listener.stream_idle_timeout`, see `crate::exchange`).
//!
//! hyper hands every stream it accepts to an executor. A task per stream
//! cost a scheduler round trip, an aligned allocation and a timer-wheel
//! entry per request, and moved each stream's work to another task than
//! the connection that reads and writes its frames. Here the executor only
//! queues the stream, and [`WithStreams`] polls the queued and running
//! streams together with the hyper connection. A stream that moves nothing
//! for `stream_idle_timeout` is dropped, which resets it (h2 sends
//! `RST_STREAM(CANCEL)` for a stream whose handles are gone) and drops its
//! upstream exchange; one sweep timer per connection finds them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Sleep;

use crate::exchange::{Progress, Watch};
use crate::metrics::Metrics;

tokio::task_local! {
    /// The progress of the HTTP/2 stream being polled.
    static STREAM: Arc<Progress>;
}

/// The progress of the HTTP/2 stream being polled, if any.
pub(super) fn current_stream() -> Option<Arc<Progress>> {
    STREAM.try_with(Arc::clone).ok()
}

/// What hyper spawned and the connection's task has not picked up yet.
type Queue = Arc<Mutex<Vec<Task>>>;

/// The executor of one HTTP/2 connection: it queues what hyper spawns for
/// [`WithStreams`] to run. hyper spawns streams from within the
/// connection's poll, and the upgrade pump of an RFC 8441 tunnel from
/// within the poll of the stream that accepted the tunnel: both inside
/// [`WithStreams::poll`], which picks them up before it returns.
#[derive(Clone, Default)]
pub(super) struct StreamExecutor {
    queue: Queue,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let task = match current_stream() {
            // Spawned by a stream: the pump that carries a tunnel's bytes
            // to the client. The tunnel's own clock (`idle_timeout`) bounds
            // it, and its end ends the pump; the stream clock, which nothing
            // here moves, would cut a busy tunnel.
            Some(_) => Task::new(Box::pin(future), None),
            None => {
                let progress = Arc::new(Progress::new());
                Task::new(
                    Box::pin(STREAM.scope(progress.clone(), future)),
                    Some(progress),
                )
            }
        };
        lock(&self.queue).push(task);
    }
}

fn lock(queue: &Queue) -> std::sync::MutexGuard<'_, Vec<Task>> {
    // A panic while pushing leaves a valid Vec behind.
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One spawned future: a stream, or a tunnel's pump (no stall clock).
struct Task {
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    progress: Option<Arc<Progress>>,
    /// How the sweep gets an expired stream polled (and so dropped).
    waker: Option<Waker>,
    expired: bool,
}

impl Task {
    fn new(
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
        progress: Option<Arc<Progress>>,
    ) -> Task {
        Task {
            future,
            progress,
            waker: None,
            expired: false,
        }
    }
}

impl Future for Task {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.expired {
            return Poll::Ready(());
        }
        if self.progress.is_some() && !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.waker = Some(cx.waker().clone());
        }
        self.future.as_mut().poll(cx)
    }
}

/// An HTTP/2 connection with the streams it spawned, polled as one future.
pub(super) struct WithStreams<C> {
    conn: Pin<Box<C>>,
    queue: Queue,
    running: FuturesUnordered<Task>,
    /// The queue's contents while they are moved to `running`, kept so
    /// that the queue's buffer is reused rather than made per stream.
    starting: Vec<Task>,
    idle: Duration,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    /// The earliest deadline of a stream as of the last sweep; unarmed
    /// while no stream runs. Progress only moves deadlines later, and a new
    /// stream's deadline is later than any running one's, so the sweep
    /// needs no timer update per stream or per byte.
    sweep: Option<Pin<Box<Sleep>>>,
    sweep_armed: bool,
}

impl<C> WithStreams<C> {
    pub(super) fn new(
        conn: C,
        executor: &StreamExecutor,
        idle: Duration,
        peer: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> WithStreams<C> {
        WithStreams {
            conn: Box::pin(conn),
            queue: executor.queue.clone(),
            running: FuturesUnordered::new(),
            starting: Vec::new(),
            idle,
            peer,
            metrics,
            sweep: None,
            sweep_armed: false,
        }
    }

    pub(super) fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }

    /// Polls the streams that woke (and new ones) until none is ready.
    fn run_streams(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
    }

    /// Moves what hyper spawned into `running`; false when there was none.
    fn start_spawned(&mut self) -> bool {
        std::mem::swap(&mut *lock(&self.queue), &mut self.starting);
        if self.starting.is_empty() {
            return false;
        }
        if !self.sweep_armed && self.starting.iter().any(|t| t.progress.is_some()) {
            self.arm_sweep(Instant::now() + self.idle);
        }
        for task in self.starting.drain(..) {
            self.running.push(task);
        }
        true
    }

    fn arm_sweep(&mut self, at: Instant) {
        match &mut self.sweep {
            Some(sleep) => sleep.as_mut().reset(at.into()),
            None => self.sweep = Some(Box::pin(tokio::time::sleep_until(at.into()))),
        }
        self.sweep_armed = true;
    }

    /// Ends the streams that stalled, and arms the sweep for the earliest
    /// deadline of the others; true when it ended some (woken, to be
    /// polled once more and dropped).
    fn poll_sweep(&mut self, cx: &mut Context<'_>) -> bool {
        let mut ended = false;
        while self.sweep_armed {
            let Some(sleep) = self.sweep.as_mut() else {
                break;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            self.sweep_armed = false;
            let now = Instant::now();
            let mut earliest: Option<Instant> = None;
            for task in self.running.iter_mut() {
                let Some(progress) = task.progress.as_ref().filter(|_| !task.expired) else {
                    continue;
                };
                match progress.watch(self.idle, now) {
                    Watch::Until(at) => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                    Watch::Expired => {
                        task.expired = true;
                        if let Some(waker) = task.waker.take() {
                            waker.wake();
                        }
                        stream_stalled(&self.metrics, self.peer, "resetting the stream");
                        ended = true;
                    }
                }
            }
            if let Some(at) = earliest {
                self.arm_sweep(at);
            }
        }
        ended
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        // The streams that woke first: the frames they queue are then
        // written by the connection's poll in the same turn.
        this.run_streams(cx);
        if let Poll::Ready(ended) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(ended);
        }
        // Then what that poll spawned, and what those spawn (a tunnel's
        // pump). The connection is not polled again for them: h2 wakes the
        // connection's task whenever a stream queues a frame or ends, as it
        // does when streams run in tasks of their own.
        while this.start_spawned() {
            this.run_streams(cx);
        }
        // Last, so that a sweep armed for a new stream is registered with
        // the timer before this returns.
        if this.poll_sweep(cx) {
            this.run_streams(cx);
        }
        Poll::Pending
    }
}

/// Counts and logs an exchange ended by `stream_idle_timeout`.
pub(super) fn stream_stalled(metrics: &Metrics, peer: SocketAddr, action: &str) {
    metrics.requests.stream_idle_timeouts.inc();
    tracing::info!(
        %peer,
        "request or response moved no byte for listener.stream_idle_timeout; {action}"
    );
}
