//! Wake-ups for a connection's loop that cost nothing to poll while
//! nothing happened.
//!
//! The loop in `connection.rs` turns at least twice per request and polls
//! everything that can end or re-time the connection each time: the drain,
//! a reload that refuses the certificate, and its activity. Behind tokio's
//! `watch` and `Notify` each of those polls takes a lock; callgrind counted
//! about 3,000 instructions per keep-alive request for them. A [`Signal`]
//! is a flag and a waker; a [`Gate`] polls the future behind it only after
//! that future has asked to be woken.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// A flag that one task awaits and anyone raises. Raising it while nobody
/// waits is kept: the next wait returns at once (as `Notify::notify_one`).
#[derive(Default)]
pub(super) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub(super) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Until the next [`Signal::poll_raised`], a raise only sets the flag:
    /// for raises from inside the waiting task's own poll, which checks the
    /// flag after.
    pub(super) fn mute(&self) {
        drop(self.waker.take());
    }

    /// Ready once after each raise.
    pub(super) fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A raise between the check and the registration woke nobody.
        match self.raised.swap(false, Ordering::AcqRel) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.raise();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raise();
    }
}

/// A future polled only when it woke itself (and the first time): polling
/// the gate in between is a flag check.
pub(super) struct Gate<F> {
    inner: F,
    signal: Arc<Signal>,
    waker: Waker,
}

impl<F: Future + Unpin> Gate<F> {
    pub(super) fn new(inner: F) -> Gate<F> {
        let signal = Arc::new(Signal::default());
        signal.raised.store(true, Ordering::Relaxed);
        Gate {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future + Unpin> Future for Gate<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        std::task::ready!(this.signal.poll_raised(cx));
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; pending until `ready` is set, waking itself
    /// through the last waker it was given when `wake` is called.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            match self.ready.load(Ordering::SeqCst) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_after_it_woke() {
        let (polls, ready, waker) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(std::sync::Mutex::new(None)),
        );
        let mut gate = Gate::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        });
        let outer = Arc::new(Signal::default());
        let outer_waker = Waker::from(outer.clone());
        let mut cx = Context::from_waker(&outer_waker);
        assert!(Pin::new(&mut gate).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gate).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled");

        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        assert!(
            outer.raised.load(Ordering::SeqCst),
            "the inner wake reaches the task awaiting the gate"
        );
        assert!(Pin::new(&mut gate).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_raise_before_the_wait_is_kept_once() {
        let signal = Signal::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        signal.raise();
        assert!(signal.poll_raised(&mut cx).is_ready());
        assert!(signal.poll_raised(&mut cx).is_pending());
    }

    #[test]
    fn a_muted_raise_wakes_nobody_and_is_seen_by_the_next_poll() {
        let signal = Signal::default();
        let task = Arc::new(Signal::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        assert!(signal.poll_raised(&mut cx).is_pending());

        signal.mute();
        signal.raise();
        assert!(!task.raised.load(Ordering::SeqCst), "muted: no wake-up");
        assert!(signal.poll_raised(&mut cx).is_ready());

        // A pending poll registers the task again: the next raise wakes it.
        assert!(signal.poll_raised(&mut cx).is_pending());
        signal.raise();
        assert!(task.raised.load(Ordering::SeqCst));
    }
}
