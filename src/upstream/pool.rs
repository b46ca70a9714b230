//! The upstream's idle connections: a stack of idle HTTP/1.1 connections
//! (the most recently used first, so the rest age out) and the one shared,
//! multiplexed HTTP/2 connection.
//!
//! There is one pool per upstream and one upstream address, so the pool
//! needs no key: checkout is a mutex and a `Vec::pop`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};

use crate::exchange::RequestBody;

/// Idle upstream connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle connections are looked over for closing.
const PRUNE_EVERY: Duration = Duration::from_secs(15);
/// The most idle HTTP/1.1 connections kept; beyond it the oldest is closed.
const MAX_IDLE: usize = 512;

type Http1Sender = http1::SendRequest<RequestBody>;
type Http2Sender = http2::SendRequest<RequestBody>;

#[derive(Default)]
pub(super) struct Pool {
    /// Oldest first; checkout takes from the end.
    idle: Mutex<Vec<(Instant, Http1Sender)>>,
    http2: Mutex<Option<Http2Sender>>,
    /// Held while an HTTP/2 connection is being opened, so that concurrent
    /// first requests share it rather than each opening their own.
    pub(super) http2_opening: tokio::sync::Mutex<()>,
    pruning: std::sync::OnceLock<()>,
    /// Under `protocol = "auto"`: the upstream chose HTTP/1.1 by ALPN, so
    /// new connections need not wait for a shared HTTP/2 one.
    chose_http1: AtomicBool,
}

impl Pool {
    /// The most recently returned idle HTTP/1.1 connection still open.
    pub(super) fn checkout_http1(&self) -> Option<Http1Sender> {
        let mut idle = self.lock_idle();
        while let Some((since, sender)) = idle.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Returns an HTTP/1.1 connection once its response has been read to
    /// the end; a connection that closes first is dropped.
    pub(super) fn recycle_http1(self: &Arc<Self>, mut sender: Http1Sender) {
        self.start_pruning();
        // A response without a body may leave the connection ready at once.
        if sender.is_ready() {
            self.keep_idle(sender);
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            if let Some(pool) = pool.upgrade() {
                pool.keep_idle(sender);
            }
        });
    }

    fn keep_idle(&self, sender: Http1Sender) {
        let mut idle = self.lock_idle();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push((Instant::now(), sender));
    }

    /// The shared HTTP/2 connection, when it is still open.
    pub(super) fn http2(&self) -> Option<Http2Sender> {
        let shared = self.lock_http2();
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    pub(super) fn share_http2(&self, sender: &Http2Sender) {
        *self.lock_http2() = Some(sender.clone());
    }

    pub(super) fn chose_http1(&self) -> bool {
        self.chose_http1.load(Ordering::Relaxed)
    }

    pub(super) fn note_chose_http1(&self) {
        self.chose_http1.store(true, Ordering::Relaxed);
    }

    /// Starts, once, the task that closes connections idle for too long.
    fn start_pruning(self: &Arc<Self>) {
        self.pruning.get_or_init(|| {
            let pool = Arc::downgrade(self);
            tokio::spawn(prune(pool));
        });
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Http1Sender)>> {
        self.idle.lock().expect("upstream pool lock poisoned")
    }

    fn lock_http2(&self) -> std::sync::MutexGuard<'_, Option<Http2Sender>> {
        self.http2.lock().expect("upstream pool lock poisoned")
    }
}

/// Runs until the pool is dropped (a reload replaced its upstream).
async fn prune(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.lock_idle()
            .retain(|(since, sender)| since.elapsed() < IDLE_TIMEOUT && !sender.is_closed());
    }
}
