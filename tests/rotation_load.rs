//! Server certificate rotation under load: clients keep opening new
//! connections while the certificate is renamed into place again and again,
//! and not one request may fail. Half of the clients reuse their TLS
//! session cache, as pooled API clients do (each rotation invalidates the
//! sessions they hold); the other half start with an empty cache every
//! time, so each of their requests is a full handshake.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROTATIONS: u64 = 10;
/// Requests that must succeed on each new certificate before the next
/// rotation, so that the load really spans every swap.
const REQUESTS_PER_GENERATION: u64 = 20;
/// The whole test, load included, must end well within this.
const TEST_BOUND: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, Debug)]
enum Sessions {
    /// One client (and session cache) for all requests: resumption.
    Reused,
    /// A new client per request: a full handshake every time.
    Fresh,
}

/// What every load task shares.
struct Load {
    addr: std::net::SocketAddr,
    server_ca_pem: String,
    leaf: Leaf,
    stop: AtomicBool,
    ok: AtomicU64,
}

/// Requests `/load` on a new connection each time until told to stop;
/// returns every failure, described.
async fn drive(load: Arc<Load>, proto: Proto, sessions: Sessions) -> Vec<String> {
    let reused = TestClient::new(&load.server_ca_pem, Some(&load.leaf), proto);
    let mut failures = Vec::new();
    while !load.stop.load(Ordering::Relaxed) {
        let client = match sessions {
            Sessions::Reused => reused.clone(),
            Sessions::Fresh => TestClient::new(&load.server_ca_pem, Some(&load.leaf), proto),
        };
        match client.get(load.addr, "/load").await {
            Ok(reply) if reply.status == 200 => {
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(reply) => failures.push(format!(
                "{proto:?}/{sessions:?}: status {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )),
            Err(e) => failures.push(format!("{proto:?}/{sessions:?}: {e}")),
        }
    }
    failures
}

/// Waits until `count` reaches `target`.
async fn wait_count(count: &AtomicU64, target: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while count.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_server_cert_under_load_fails_no_request() {
    tokio::time::timeout(TEST_BOUND, rotate_under_load())
        .await
        .expect("the load test exceeded its bound");
}

async fn rotate_under_load() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let mut gw = setup.start();
    let pid = gw.pid();
    let leaf = setup.ca.issue(&LeafSpec::client("load"));
    let probe = setup.client(&leaf);
    let load = Arc::new(Load {
        addr: gw.addr,
        server_ca_pem: setup.server_ca.pem.clone(),
        leaf,
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
    });
    let started = Instant::now();
    let tasks: Vec<_> = [
        (Proto::Http1, Sessions::Reused),
        (Proto::Http2, Sessions::Reused),
        (Proto::Http1, Sessions::Fresh),
        (Proto::Http2, Sessions::Fresh),
    ]
    .into_iter()
    .map(|(proto, sessions)| tokio::spawn(drive(load.clone(), proto, sessions)))
    .collect();

    for generation in 2..=ROTATIONS + 1 {
        let next = setup.rotate_server_cert();
        if let Err(e) = probe
            .wait_for_serial(gw.addr, &next.serial_hex(), Duration::from_secs(5))
            .await
        {
            load.stop.store(true, Ordering::Relaxed);
            panic!(
                "rotation to generation {generation} not served: {e}; logs:\n{}",
                gw.logs()
            );
        }
        assert_eq!(gw.metric("certgate_config_generation"), generation as f64);
        let target = load.ok.load(Ordering::Relaxed) + REQUESTS_PER_GENERATION;
        assert!(
            wait_count(&load.ok, target, Duration::from_secs(10)).await,
            "load stalled on generation {generation}"
        );
    }
    load.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.expect("load task panicked"));
    }
    let elapsed = started.elapsed();
    let total = load.ok.load(Ordering::Relaxed);
    println!(
        "{total} requests in {elapsed:.1?} ({:.0}/s) across {ROTATIONS} rotations, {} failed",
        total as f64 / elapsed.as_secs_f64(),
        failures.len()
    );

    assert!(
        failures.is_empty(),
        "{} of {} requests failed during rotation, first: {:#?}",
        failures.len(),
        total + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    assert!(
        total >= ROTATIONS * REQUESTS_PER_GENERATION,
        "only {total} requests"
    );
    assert_eq!(
        gw.metric("certgate_config_generation"),
        (ROTATIONS + 1) as f64
    );
    assert_eq!(
        gw.metric("certgate_reloads_total{result=\"success\"}"),
        ROTATIONS as f64
    );
    // Cert and key are two renames; on a busy disk the second can land
    // after the debounce, and that reload fails safely on the mismatched
    // pair until the key arrives. Any other failure is a bug.
    let failed = gw.metric("certgate_reloads_total{result=\"failure\"}");
    let logs = gw.logs();
    let half_pairs = logs
        .lines()
        .filter(|l| {
            l.contains("reload failed") && l.contains("private key does not match the certificate")
        })
        .count();
    assert_eq!(
        failed, half_pairs as f64,
        "a reload failed for another reason; logs:\n{logs}"
    );
    println!("{half_pairs} reload(s) saw a half-replaced pair and kept the previous one");
    let served = gw.metric("certgate_requests_total{code=\"200\"}");
    assert!(
        served >= total as f64,
        "gateway counted {served} answers, clients {total}"
    );
    assert_eq!(gw.pid(), pid);
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "certgate exited"
    );
}
