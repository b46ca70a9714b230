//! The process lifecycle of the real `certgate run` binary, as systemd sees
//! it: the sd_notify protocol (READY/STATUS, WATCHDOG, RELOADING with
//! MONOTONIC_USEC, STOPPING), the drain on SIGTERM, socket activation, exit
//! codes for bind and configuration failures, and `systemd-analyze verify`
//! of the shipped units.

// Handing sockets to the daemon as systemd does takes libc calls.
#![allow(unsafe_code)]

mod common;
use common::*;

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const AUTHENTICATED: &str = "[authorization]\ndefault = \"authenticated\"\n";

// ------------------------------------------------------------ sd_notify ----

/// The receiving end of `NOTIFY_SOCKET`, as systemd holds it: every
/// datagram the daemon sent, in order, with its arrival time.
struct Notifications {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        received.lock().unwrap().push((Instant::now(), text));
                    }
                }
            });
        }
        Notifications {
            path,
            received,
            stop,
        }
    }

    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.received.lock().unwrap().clone()
    }

    fn len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The first message at index `from` or later that satisfies `pred`:
    /// its index and text.
    fn wait_for(&self, from: usize, pred: impl Fn(&str) -> bool, what: &str) -> (usize, String) {
        let mut found = None;
        let ok = eventually(Duration::from_secs(10), || {
            found = self
                .all()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| pred(m))
                .map(|(i, (_, m))| (i, m));
            found.is_some()
        });
        assert!(ok, "no {what} notification; got {:?}", self.lifecycle());
        found.unwrap()
    }

    /// Everything but the watchdog pings.
    fn lifecycle(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| !has(m, "WATCHDOG=1"))
            .collect()
    }

    /// Once told STOPPING=1, systemd must not hear RELOADING=1 or READY=1.
    fn assert_quiet_after_stopping(&self) {
        let lifecycle = self.lifecycle();
        let stopping = lifecycle
            .iter()
            .position(|m| has(m, "STOPPING=1"))
            .expect("STOPPING=1 sent");
        assert!(
            !lifecycle[stopping..]
                .iter()
                .any(|m| has(m, "READY=1") || has(m, "RELOADING=1")),
            "nothing but STOPPING=1 after the drain began: {lifecycle:?}"
        );
    }

    fn watchdog_pings(&self) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, m)| has(m, "WATCHDOG=1"))
            .map(|(t, _)| t)
            .collect()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a notification carries the exact line `line`.
fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// The value of `KEY=` in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// CLOCK_MONOTONIC in microseconds, the clock of MONOTONIC_USEC.
fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sd_notify_ready_watchdog_reload_and_stopping() {
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.extra = AUTHENTICATED.into();
    let notify = Notifications::bind(setup.path());
    // WATCHDOG_PID is deliberately left unset: sd_watchdog_enabled(3) then
    // applies WATCHDOG_USEC to this process (systemd sets it to the main
    // pid, which the unit test of `watchdog_period` covers).
    setup.env = vec![notify.env(), ("WATCHDOG_USEC".into(), "400000".into())];
    let mut gw = setup.start();

    let (index, ready) = notify.wait_for(0, |m| has(m, "READY=1"), "READY=1");
    assert_eq!(index, 0, "READY=1 is the first notification: {ready:?}");
    let status = field(&ready, "STATUS").expect("READY=1 carries STATUS=");
    assert!(
        status.starts_with(
            "generation 1, 1 server certificate(s), 1 client CA(s), 0 CRL(s), next expiry "
        ),
        "{status}"
    );
    let leaf = setup.ca.issue(&LeafSpec::client("notify"));
    let reply = setup
        .client(&leaf)
        .get(gw.addr, "/after-ready")
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the listener serves once READY=1 was sent"
    );

    // WATCHDOG=1 at half of WATCHDOG_USEC, again and again.
    assert!(
        eventually(Duration::from_secs(5), || notify.watchdog_pings().len()
            >= 4),
        "watchdog pings: {}",
        notify.watchdog_pings().len()
    );
    let pings = notify.watchdog_pings();
    let mean = (pings[pings.len() - 1] - pings[0]) / (pings.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(100),
        "pings every {mean:?}, expected about 200ms"
    );

    // SIGHUP: RELOADING=1 stamped with the monotonic clock, then READY=1.
    let mark = notify.len();
    let before = monotonic_usec();
    gw.signal("HUP");
    let (index, reloading) = notify.wait_for(mark, |m| has(m, "RELOADING=1"), "RELOADING=1");
    let after = monotonic_usec();
    let stamp: u128 = field(&reloading, "MONOTONIC_USEC")
        .expect("RELOADING=1 carries MONOTONIC_USEC=")
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        before <= stamp && stamp <= after,
        "MONOTONIC_USEC={stamp} not within [{before}, {after}]"
    );
    let (_, ready) = notify.wait_for(index + 1, |m| has(m, "READY=1"), "READY=1 after the reload");
    let status = field(&ready, "STATUS").expect("STATUS= after the reload");
    assert!(status.starts_with("generation 2, "), "{status}");

    // SIGTERM: STOPPING=1, asking systemd to wait for the whole drain.
    let mark = notify.len();
    gw.signal("TERM");
    let (_, stopping) = notify.wait_for(mark, |m| has(m, "STOPPING=1"), "STOPPING=1");
    assert_eq!(
        field(&stopping, "EXTEND_TIMEOUT_USEC"),
        Some("35000000"),
        "shutdown_timeout (30s) plus the exit margin: {stopping:?}"
    );
    let status = wait_exit(&mut gw, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.logs());
    notify.assert_quiet_after_stopping();
}

// ----------------------------------------------------------------- drain ----

/// An upstream that answers `/slow` after `delay`, telling `arrived` when
/// such a request came in, and anything else at once.
async fn slow_upstream(delay: Duration) -> (SocketAddr, Arc<Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(Notify::new());
    let notify = arrived.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let arrived = notify.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let arrived = arrived.clone();
                async move {
                    let body = if req.uri().path() == "/slow" {
                        arrived.notify_one();
                        tokio::time::sleep(delay).await;
                        "slow"
                    } else {
                        "fast"
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        body.as_bytes(),
                    ))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, arrived)
}

/// Sends a request on `setup`'s gateway in the background; resolves once
/// the upstream holds it.
async fn start_slow_request(
    setup: &Setup,
    gw: &Gateway,
    arrived: &Notify,
) -> JoinHandle<Result<Reply, String>> {
    let leaf = setup.ca.issue(&LeafSpec::client("slow"));
    let client = setup.client(&leaf);
    let addr = gw.addr;
    let slow = tokio::spawn(async move { client.get(addr, "/slow").await });
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the slow request reached the upstream");
    slow
}

fn get(path: &str, http2: bool) -> Request<Full<Bytes>> {
    let builder = if http2 {
        Request::get(format!("https://localhost{path}"))
    } else {
        Request::get(path).header("host", "localhost")
    };
    builder.body(Full::new(Bytes::new())).unwrap()
}

async fn expect_fast(resp: Result<Response<Incoming>, hyper::Error>) {
    let resp = resp.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "fast");
}

/// A keep-alive connection that has finished one request and sits idle.
struct IdleConnection {
    /// The client closes the connection once its request handle is gone.
    _sender: Box<dyn std::any::Any + Send>,
    /// Resolves when the connection ends (`Err` if not cleanly).
    closed: JoinHandle<Result<(), hyper::Error>>,
}

async fn idle_connection(client: &TestClient, addr: SocketAddr, http2: bool) -> IdleConnection {
    let io = TokioIo::new(client.tls(addr).await.expect("TLS connect"));
    if http2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let closed = tokio::spawn(conn);
        expect_fast(send.send_request(get("/fast", true)).await).await;
        IdleConnection {
            _sender: Box::new(send),
            closed,
        }
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let closed = tokio::spawn(conn);
        expect_fast(send.send_request(get("/fast", false)).await).await;
        IdleConnection {
            _sender: Box::new(send),
            closed,
        }
    }
}

fn listener_with(extra: &str) -> Option<String> {
    Some(format!("[listener]\naddress = \"127.0.0.1:0\"\n{extra}"))
}

fn wait_exit(gw: &mut Gateway, timeout: Duration) -> ExitStatus {
    let mut status = None;
    eventually(timeout, || {
        status = gw.child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.unwrap_or_else(|| {
        panic!(
            "certgate still running after {timeout:?}; logs:\n{}",
            gw.logs()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_requests_and_closes_idle_connections() {
    let (upstream, arrived) = slow_upstream(Duration::from_millis(2500)).await;
    let mut setup = Setup::new(upstream);
    setup.listener = listener_with("shutdown_timeout = \"10s\"\n");
    setup.extra = AUTHENTICATED.into();
    let notify = Notifications::bind(setup.path());
    setup.env = vec![notify.env()];
    let mut gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("idle"));
    // Idle long enough (over 250 ms) to have been set aside, holding only
    // its TLS stream, and idle just now, still in hyper.
    let set_aside_h1 = idle_connection(&setup.client(&leaf), gw.addr, false).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let idle_h1 = idle_connection(&setup.client(&leaf), gw.addr, false).await;
    let idle_h2 = idle_connection(&setup.client_h2(&leaf), gw.addr, true).await;
    let mut slow = start_slow_request(&setup, &gw, &arrived).await;

    let signalled = Instant::now();
    gw.signal("TERM");
    // Idle connections end at once (HTTP/1.1 closes, HTTP/2 gets GOAWAY),
    // not when the drain ends.
    tokio::select! {
        (set_aside, h1, h2) = async {
            (set_aside_h1.closed.await.unwrap(), idle_h1.closed.await.unwrap(), idle_h2.closed.await.unwrap())
        } => {
            set_aside.expect("set-aside HTTP/1.1 connection closed cleanly");
            h1.expect("idle HTTP/1.1 connection closed cleanly");
            h2.expect("idle HTTP/2 connection closed cleanly (GOAWAY)");
        }
        r = &mut slow => panic!("the slow request ended ({r:?}) before the idle connections were closed"),
    }

    assert_eq!(
        gw.admin_get("/readyz"),
        (503, "draining\n".into()),
        "/readyz while draining"
    );
    let mut refused = None;
    eventually(Duration::from_secs(2), || {
        refused = std::net::TcpStream::connect(gw.addr)
            .err()
            .map(|e| e.kind());
        refused.is_some()
    });
    assert_eq!(
        refused,
        Some(ErrorKind::ConnectionRefused),
        "a new connection during the drain"
    );
    gw.signal("HUP");
    assert!(
        gw.wait_for_log(
            &["reload skipped: draining", "SIGHUP"],
            Duration::from_secs(5)
        ),
        "SIGHUP during the drain is ignored:\n{}",
        gw.logs()
    );
    // A file change still reloads, but systemd, told STOPPING=1, must not
    // hear RELOADING=1 or READY=1 again.
    setup.rotate_server_cert();
    assert!(
        gw.wait_for_log(&["reloaded", "\"generation\":2"], Duration::from_secs(5)),
        "{}",
        gw.logs()
    );

    let reply = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "slow");
    let status = wait_exit(&mut gw, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.logs());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exited within shutdown_timeout"
    );
    assert!(gw.logs().contains("drained; exiting"), "{}", gw.logs());
    notify.assert_quiet_after_stopping();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_past_shutdown_timeout_exits_1_on_time() {
    let (upstream, arrived) = slow_upstream(Duration::from_secs(5)).await;
    let mut setup = Setup::new(upstream);
    setup.listener = listener_with("shutdown_timeout = \"500ms\"\n");
    setup.extra = AUTHENTICATED.into();
    let mut gw = setup.start();
    let slow = start_slow_request(&setup, &gw, &arrived).await;

    let signalled = Instant::now();
    gw.signal("TERM");
    let status = wait_exit(&mut gw, Duration::from_secs(4));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", gw.logs());
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM; shutdown_timeout is 500ms"
    );
    assert!(
        gw.wait_for_log(
            &[
                "connections still open after listener.shutdown_timeout",
                "\"open_connections\":1"
            ],
            Duration::from_secs(1)
        ),
        "{}",
        gw.logs()
    );
    let cut = slow.await.unwrap();
    assert!(
        cut.is_err(),
        "the request cut by the exit has no response: {cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_signal_ends_the_drain_at_once() {
    let (upstream, arrived) = slow_upstream(Duration::from_secs(5)).await;
    let mut setup = Setup::new(upstream);
    setup.listener = listener_with("shutdown_timeout = \"30s\"\n");
    setup.extra = AUTHENTICATED.into();
    let mut gw = setup.start();
    let _slow = start_slow_request(&setup, &gw, &arrived).await;

    gw.signal("TERM");
    assert!(gw.wait_for_log(&["draining", "SIGTERM"], Duration::from_secs(5)));
    let signalled = Instant::now();
    gw.signal("INT");
    let status = wait_exit(&mut gw, Duration::from_secs(3));
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", gw.logs());
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert!(
        gw.logs().contains("second signal during the drain"),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_stuck_before_its_tls_handshake_does_not_hold_the_drain() {
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.listener = listener_with("handshake_timeout = \"30s\"\nshutdown_timeout = \"5s\"\n");
    let mut gw = setup.start();
    // A port scanner or load-balancer probe: connects, never says hello.
    let _silent = std::net::TcpStream::connect(gw.addr).unwrap();
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("certgate_connections_active")
        == 1.0));

    gw.signal("TERM");
    let status = wait_exit(&mut gw, Duration::from_secs(3));
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.logs());
}

// ----------------------------------------------------- socket activation ----

/// Starts the daemon as systemd does for a socket unit: `sockets` become
/// descriptors 3, 4, ... with `LISTEN_FDS` and `LISTEN_PID` set.
fn spawn_activated(config: &Path, sockets: &[&TcpListener], env: &[(&str, &str)]) -> Gateway {
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    assert!(fds.len() <= 2);
    // Every variable is set in the child: a Command given any environment
    // of its own execs with that, dropping what pre_exec set.
    let count = fds.len().to_string();
    let vars: Vec<(CString, CString)> = [("LISTEN_FDS", count.as_str()), ("CERTGATE_LOG", "info")]
        .iter()
        .chain(env)
        .map(|(k, v)| (CString::new(*k).unwrap(), CString::new(*v).unwrap()))
        .collect();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls fcntl, dup2, getpid and (un)setenv; glibc keeps malloc usable
    // after fork, and nothing else runs in the child.
    unsafe { cmd.pre_exec(move || activate(&fds, &vars)) };
    Gateway::attach(cmd.spawn().expect("spawn certgate"))
}

/// In the child: the sockets to descriptors 3, 4, ..., the environment,
/// and `LISTEN_PID` naming this process, which only exists after the fork.
fn activate(fds: &[RawFd], vars: &[(CString, CString)]) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // First move every socket above the target range (close-on-exec, so
    // these copies do not leak): one may already sit at 3 or 4, where the
    // first dup2 would overwrite it.
    let mut high = [0; 2];
    for (slot, &fd) in high.iter_mut().zip(fds) {
        // SAFETY: descriptor syscalls on descriptors this process owns.
        *slot = check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) })?;
    }
    for (target, &fd) in (3..).zip(&high[..fds.len()]) {
        // dup2 leaves close-on-exec off on the target, so exec keeps it.
        check(unsafe { libc::dup2(fd, target) })?;
    }
    // SAFETY (all below): NUL-terminated strings; the child has one thread.
    for name in [
        c"NOTIFY_SOCKET",
        c"LISTEN_PID",
        c"LISTEN_FDNAMES",
        c"WATCHDOG_USEC",
    ] {
        check(unsafe { libc::unsetenv(name.as_ptr()) })?;
    }
    for (k, v) in vars {
        check(unsafe { libc::setenv(k.as_ptr(), v.as_ptr(), 1) })?;
    }
    let mut pid = [0u8; 16];
    write!(&mut pid[..], "{}\0", unsafe { libc::getpid() })?;
    check(unsafe { libc::setenv(c"LISTEN_PID".as_ptr(), pid.as_ptr().cast(), 1) })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn socket_activation_serves_on_the_sockets_systemd_passed() {
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    // TEST-NET-1 is not a local address: binding the configured addresses
    // would fail, so only the passed sockets can serve.
    setup.listener = Some("[listener]\naddress = \"192.0.2.1:8443\"\n".into());
    setup.extra = AUTHENTICATED.into();
    let config = setup.write_config();
    let leaf = setup.ca.issue(&LeafSpec::client("activated"));

    // Two sockets, as certgate.socket passes them: mTLS first, admin second.
    let mtls = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = spawn_activated(
        &config,
        &[&mtls, &admin],
        &[("CERTGATE_ADMIN__ADDRESS", "192.0.2.1:9464")],
    );
    assert_eq!(gw.addr, mtls.local_addr().unwrap(), "mTLS on descriptor 3");
    assert_eq!(
        gw.admin,
        Some(admin.local_addr().unwrap()),
        "admin on descriptor 4"
    );
    let reply = setup
        .client(&leaf)
        .get(gw.addr, "/activated")
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(gw.admin_get("/healthz"), (200, "ok\n".into()));
    assert!(
        gw.logs().contains("using socket passed by systemd"),
        "{}",
        gw.logs()
    );
    drop(gw);

    // One socket: the admin listener binds admin.address itself.
    let mtls = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = spawn_activated(&config, &[&mtls], &[]);
    assert_eq!(gw.addr, mtls.local_addr().unwrap());
    let admin = gw.admin.expect("admin listener bound from the config");
    assert_ne!(admin, gw.addr);
    let reply = setup
        .client(&leaf)
        .get(gw.addr, "/activated")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(gw.admin_get("/readyz"), (200, "ready\n".into()));
}

/// Socket activation and the PROXY protocol together: the header is read
/// on the socket systemd passed, as on one certgate bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn socket_activation_takes_proxy_protocol_headers() {
    use tokio::io::AsyncWriteExt;
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.listener = Some(
        "[listener]\naddress = \"192.0.2.1:8443\"\nproxy_protocol = \"v2\"\n\
         proxy_protocol_from = [\"127.0.0.1\"]\n"
            .into(),
    );
    setup.extra = AUTHENTICATED.into();
    let config = setup.write_config();
    let leaf = setup
        .ca
        .issue(&LeafSpec::client("activated-behind-a-balancer"));
    let mtls = TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = spawn_activated(&config, &[&mtls], &[]);
    assert_eq!(gw.addr, mtls.local_addr().unwrap());

    let addresses: (SocketAddr, SocketAddr) = (
        "198.51.100.23:50000".parse().unwrap(),
        "10.0.0.1:8443".parse().unwrap(),
    );
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .build()
    .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&header).await.unwrap();
    let reply = setup
        .client(&leaf)
        .connect_over(tcp)
        .await
        .unwrap()
        .get("/activated")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.upstream_header("x-forwarded-for").as_deref(),
        Some("198.51.100.23")
    );
    assert_eq!(
        gw.metric("certgate_proxy_protocol_total{result=\"ok\"}"),
        1.0
    );
}

// ------------------------------------------------------------ exit codes ----

/// Runs `certgate <args>` to its exit: status and stderr.
fn run_to_exit(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child: Child = Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certgate");
    let mut status = None;
    eventually(Duration::from_secs(10), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        panic!("certgate {args:?} did not exit");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn bind_failure_exits_1_naming_the_address() {
    let setup = Setup::new("127.0.0.1:9".parse().unwrap());
    let config = setup.write_config();
    for key in ["listener.address", "admin.address"] {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let var = format!("CERTGATE_{}", key.to_uppercase().replace('.', "__"));
        let (status, stderr) = run_to_exit(&["run"], &config, &[(&var, &addr)]);
        assert_eq!(status.code(), Some(1), "{key}: {status:?}\n{stderr}");
        let expected = format!("cannot listen on {addr} ({key})");
        assert!(
            stderr.contains(&expected),
            "{key}: expected {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn invalid_configuration_exits_2_before_binding() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key",
            "[listener]\naddress = \"127.0.0.1:0\"\nadress = \"x\"\n",
            "adress",
        ),
        (
            "bad duration",
            "[listener]\naddress = \"127.0.0.1:0\"\nshutdown_timeout = \"30\"\n",
            "shutdown_timeout",
        ),
        (
            "missing certificate",
            "[listener]\naddress = \"127.0.0.1:0\"\n",
            "missing.pem",
        ),
    ];
    for (name, listener, needle) in cases {
        let mut setup = Setup::new("127.0.0.1:9".parse().unwrap());
        setup.listener = Some(listener.to_string());
        let mut text = setup.config_text();
        if *name == "missing certificate" {
            text = text.replace("cert = \"server.pem\"", "cert = \"missing.pem\"");
        }
        let config = write(setup.path(), "certgate.toml", &text);
        // `check` is the unit's ExecStartPre: it must refuse the same configs.
        for command in ["run", "check"] {
            let (status, stderr) = run_to_exit(&[command], &config, &[]);
            assert_eq!(
                status.code(),
                Some(2),
                "{name} ({command}): {status:?}\n{stderr}"
            );
            assert!(
                stderr.contains(needle),
                "{name} ({command}): expected {needle:?} in\n{stderr}"
            );
        }
    }
}

// ----------------------------------------------------------------- units ----

/// `systemd/verify.sh` needs systemd's tools, and root to give files to
/// the certgate user inside its throwaway root.
fn can_verify_units() -> bool {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped: systemd/verify.sh must run as root (it chowns inside a temporary root)"
        );
        return false;
    }
    true
}

fn run_verify(dir: &Path) -> (bool, String) {
    let out = Command::new("sh")
        .arg(dir.join("verify.sh"))
        .arg(BIN)
        .output()
        .expect("run verify.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if !can_verify_units() {
        return;
    }
    let (ok, out) = run_verify(&Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd"));
    assert!(ok, "{out}");
    assert!(
        out.contains("systemd units, sysusers and tmpfiles: ok"),
        "{out}"
    );
}

#[test]
fn systemd_unit_check_catches_a_misspelled_hardening_key() {
    if !can_verify_units() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let unit = dir.path().join("certgate.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\nProtectSystem=strict\n"));
    std::fs::write(
        &unit,
        text.replace("\nProtectSystem=strict\n", "\nProtectSystm=strict\n"),
    )
    .unwrap();
    let (ok, out) = run_verify(dir.path());
    assert!(!ok, "a misspelled key must fail the check:\n{out}");
    assert!(out.contains("Unknown key 'ProtectSystm'"), "{out}");
}
