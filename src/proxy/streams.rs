//! HTTP/2 streams, each in its own task under its own stall clock
//! (`listener.stream_idle_timeout`, see `crate::exchange`): hyper spawns a
//! task per stream through [`StreamExecutor`], which gives the stream a
//! [`Progress`] (reachable from the service as [`current_stream`]) and
//! drops the stream when it stops moving.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::exchange::{Progress, Watch};
use crate::metrics::Metrics;

tokio::task_local! {
    /// The progress of the HTTP/2 stream whose task is running.
    static STREAM: Arc<Progress>;
}

/// The progress of the HTTP/2 stream running on this task, if any.
pub(super) fn current_stream() -> Option<Arc<Progress>> {
    STREAM.try_with(Arc::clone).ok()
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
        tokio::spawn(WatchedStream {
            stream: Box::pin(STREAM.scope(progress.clone(), stream)),
            timer: Box::pin(tokio::time::sleep(idle)),
            progress,
            executor: self.clone(),
        });
    }
}

struct WatchedStream<F> {
    stream: Pin<Box<F>>,
    timer: Pin<Box<tokio::time::Sleep>>,
    progress: Arc<Progress>,
    executor: StreamExecutor,
}

impl<F: Future<Output = ()>> Future for WatchedStream<F> {
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
    metrics.requests.stream_idle_timeouts.inc();
    tracing::info!(
        %peer,
        "request or response moved no byte for listener.stream_idle_timeout; {action}"
    );
}
