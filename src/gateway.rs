//! The running gateway's shared handle: the current [`State`] behind an
//! `ArcSwap` (the reload task is its only writer), the metrics, the drain
//! signal, and reload bookkeeping for `/status`. It sits below the proxy:
//! what only the data path needs (the cache of verified clients) the proxy
//! owns itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::state::State;

/// What `/status` reports about reloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub last_attempt_unix: Option<i64>,
    pub last_success_unix: Option<i64>,
    pub last_error: Option<String>,
}

pub struct Gateway {
    state: ArcSwap<State>,
    pub metrics: Arc<Metrics>,
    draining: watch::Sender<bool>,
    /// The generation of the state now serving, for what must hear of a
    /// reload at once (connections whose certificate it may refuse).
    installed: watch::Sender<u64>,
    request_id_prefix: u64,
    request_counter: AtomicU64,
    reload_status: Mutex<ReloadStatus>,
}

impl Gateway {
    pub fn new(state: State, metrics: Arc<Metrics>) -> Arc<Gateway> {
        metrics.state_installed(&state);
        state.upstreams.start_health_checks();
        let mut prefix = [0u8; 8];
        // A random per-process prefix keeps request ids unique across restarts.
        let _ = aws_lc_rs::rand::fill(&mut prefix);
        Arc::new(Gateway {
            reload_status: Mutex::new(ReloadStatus {
                last_success_unix: Some(state.loaded_at_unix),
                ..ReloadStatus::default()
            }),
            installed: watch::channel(state.generation).0,
            state: ArcSwap::from_pointee(state),
            metrics,
            draining: watch::channel(false).0,
            request_id_prefix: u64::from_be_bytes(prefix),
            request_counter: AtomicU64::new(0),
        })
    }

    /// The state now serving. Connections and requests each take their own
    /// snapshot; a reload never changes a snapshot that is in use.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// Publishes a new state (reload task only). The state serves first and
    /// is reported after, so that a generation seen in `/metrics` or
    /// `/status` is already the one new handshakes and requests get.
    pub fn install(&self, state: State) {
        let state = Arc::new(state);
        state.upstreams.start_health_checks();
        self.state.store(state.clone());
        self.metrics.state_installed(&state);
        self.installed.send_replace(state.generation);
        let mut status = self.reload_status.lock().expect("status lock poisoned");
        status.last_attempt_unix = Some(state.loaded_at_unix);
        status.last_success_unix = Some(state.loaded_at_unix);
        status.last_error = None;
    }

    pub fn record_reload_failure(&self, error: String, at_unix: i64) {
        let mut status = self.reload_status.lock().expect("status lock poisoned");
        status.last_attempt_unix = Some(at_unix);
        status.last_error = Some(error);
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status
            .lock()
            .expect("status lock poisoned")
            .clone()
    }

    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes once draining has started.
    pub async fn drain_started(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await.map(|_| ());
    }

    /// Sees every state installed from now on.
    pub fn state_installs(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// 32 lowercase hex digits: the process prefix, then a counter.
    pub fn next_request_id(&self) -> HeaderValue {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        // Hex by hand: `format!` cost more per request than all of header
        // rewriting (callgrind, benches/harness.sh profile).
        let mut id = [0u8; 32];
        let (prefix, counter) = id.split_at_mut(16);
        hex::encode_to_slice(self.request_id_prefix.to_be_bytes(), prefix).expect("16 digits fit");
        hex::encode_to_slice(n.to_be_bytes(), counter).expect("16 digits fit");
        let mut id = HeaderValue::from_bytes(&id).expect("hex is a valid header value");
        mark_unique(&mut id);
        id
    }
}

/// Marks a value that no other request repeats (a request id) as never to
/// be indexed by HPACK: added to the HTTP/2 header table it would only
/// evict the entries that do repeat (identity headers, content types), and
/// the table search and insertion cost more than the literal.
pub fn mark_unique(value: &mut HeaderValue) {
    value.set_sensitive(true);
}
