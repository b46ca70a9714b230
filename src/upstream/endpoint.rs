//! One address of an upstream: its connector, its own pool, and its health.
//!
//! Health is passive unless `health_check_path` is set: connects that fail
//! three times in a row rest the endpoint for `health_interval`, and each
//! failure after a rest, before any success, doubles the rest up to a
//! minute. With a health check, a `GET` of that path every
//! `health_interval` decides: 2xx/3xx is healthy, anything else (or no
//! answer within `connect_timeout` + `timeout`) rests the endpoint until
//! a check passes again; failed connects still rest it in between.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connect::Connector;
use super::pool::Pool;

/// Failed connects in a row that rest an endpoint.
const FAILURES_TO_REST: u32 = 3;
/// The longest rest of passive health.
const MAX_REST: Duration = Duration::from_secs(60);

pub(super) struct Endpoint {
    pub(super) connector: Connector,
    pub(super) pool: Arc<Pool>,
    pub(super) address: String,
    health: Health,
}

struct Health {
    interval: Duration,
    failures: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint rests; 0: up.
    resting_until: AtomicU64,
    /// The last rest's length in milliseconds; 0 after a success.
    rest: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Endpoint {
    pub(super) fn new(connector: Connector, health_interval: Duration) -> Endpoint {
        Endpoint {
            address: connector.address(),
            connector,
            pool: Arc::default(),
            health: Health {
                interval: health_interval,
                failures: AtomicU32::new(0),
                resting_until: AtomicU64::new(0),
                rest: AtomicU64::new(0),
            },
        }
    }

    /// Whether requests may go here now.
    pub(super) fn is_up(&self) -> bool {
        self.health.resting_until.load(Ordering::Relaxed) <= now_ms()
    }

    pub(super) fn connected(&self) {
        let h = &self.health;
        h.failures.store(0, Ordering::Relaxed);
        h.rest.store(0, Ordering::Relaxed);
    }

    /// A connect failed. Returns whether this put the endpoint to rest.
    pub(super) fn connect_failed(&self) -> bool {
        let h = &self.health;
        let failures = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let rested_before = h.rest.load(Ordering::Relaxed) > 0;
        if failures < FAILURES_TO_REST && !rested_before {
            return false;
        }
        let interval = u64::try_from(h.interval.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(MAX_REST.as_millis()).unwrap_or(u64::MAX);
        let rest = match h.rest.load(Ordering::Relaxed) {
            0 => interval.min(max),
            last => last.saturating_mul(2).min(max).max(interval.min(max)),
        };
        self.rest_for(rest);
        true
    }

    /// An active check failed: rest until the next one passes.
    pub(super) fn check_failed(&self) {
        let interval = u64::try_from(self.health.interval.as_millis()).unwrap_or(u64::MAX);
        // Past the next check, which clears it if it passes.
        self.rest_for(interval.saturating_mul(2));
    }

    pub(super) fn check_passed(&self) {
        self.connected();
        self.health.resting_until.store(0, Ordering::Relaxed);
    }

    fn rest_for(&self, ms: u64) {
        let h = &self.health;
        h.rest.store(ms, Ordering::Relaxed);
        h.failures.store(0, Ordering::Relaxed);
        h.resting_until
            .store(now_ms().saturating_add(ms), Ordering::Relaxed);
        tracing::warn!(endpoint = %self.address, rest_ms = ms, "upstream endpoint resting: connects failing");
    }
}
