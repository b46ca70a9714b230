//! A fleet on loopback: three certgate processes sharing one config
//! directory (certificates, CRL, session-ticket keys) behind a real HAProxy
//! in TCP mode with `send-proxy-v2`.
//!
//! Under a load of new connections, resumed sessions and keep-alive
//! requests through HAProxy's round robin, the server certificate rotates
//! and a CRL revokes one client: no good request fails, the upstream sees
//! the client's own address in `x-forwarded-for` (clients connect from
//! 127.0.0.7, HAProxy from 127.0.0.1), and every replica refuses the revoked
//! client. `openssl s_client -sess_out`/`-sess_in` shows a session made on
//! one replica resuming on another, and the revoked client's session,
//! resumed after the CRL, refused on its first request.

mod common;
use common::*;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

const REPLICAS: usize = 3;
const CLIENT_ADDRESS: &str = "127.0.0.7";
const WAIT: Duration = Duration::from_secs(10);
/// The whole test must end well within this.
const TEST_BOUND: Duration = Duration::from_secs(60);

fn client_ip() -> IpAddr {
    CLIENT_ADDRESS.parse().unwrap()
}

/// A port nothing listens on now, for HAProxy to bind.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in the foreground, killed on drop.
struct Haproxy {
    child: Child,
    /// Round robin over every replica.
    round_robin: SocketAddr,
    /// One frontend per replica, to reach a chosen one through HAProxy.
    single: Vec<SocketAddr>,
}

impl Haproxy {
    fn start(dir: &Path, replicas: &[SocketAddr]) -> Haproxy {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let round_robin = addr(free_port());
        let single: Vec<SocketAddr> = replicas.iter().map(|_| addr(free_port())).collect();
        // The settings docs/fleet.md gives, on loopback.
        let mut cfg = String::from(
            "global\n    maxconn 1024\n\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\n",
        );
        cfg += &format!(
            "frontend mtls\n    bind {round_robin}\n    default_backend certgate\n\n\
             backend certgate\n    balance roundrobin\n"
        );
        for (i, r) in replicas.iter().enumerate() {
            cfg += &format!("    server replica{i} {r} send-proxy-v2\n");
        }
        for (i, (front, r)) in single.iter().zip(replicas).enumerate() {
            cfg += &format!(
                "\nfrontend replica{i}\n    bind {front}\n    default_backend replica{i}\n\
                 backend replica{i}\n    server replica{i} {r} send-proxy-v2\n"
            );
        }
        let path = write(dir, "haproxy.cfg", &cfg);
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("haproxy -c");
        assert!(check.status.success(), "haproxy -c: {check:?}\n{cfg}");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let proxy = Haproxy {
            child,
            round_robin,
            single,
        };
        let listening = |a: &SocketAddr| std::net::TcpStream::connect(a).is_ok();
        assert!(
            eventually(WAIT, || listening(&proxy.round_robin)
                && proxy.single.iter().all(listening)),
            "haproxy did not listen"
        );
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client's certificate and key as files, for openssl.
struct KeyPair {
    cert: PathBuf,
    key: PathBuf,
}

fn key_pair(dir: &Path, name: &str, leaf: &Leaf) -> KeyPair {
    KeyPair {
        cert: write(dir, &format!("{name}.pem"), &leaf.chain_pem),
        key: write(dir, &format!("{name}.key"), &leaf.key_pem),
    }
}

/// What one `openssl s_client` exchange showed.
struct Exchange {
    reused: bool,
    output: String,
}

impl Exchange {
    /// The response's status; s_client prints the response among its
    /// session dumps, not always at the start of a line.
    fn status(&self) -> Option<u16> {
        let (_, rest) = self.output.split_once("HTTP/1.1 ")?;
        rest.get(..3)?.parse().ok()
    }
}

/// One request through `addr` with `openssl s_client`, saving the session
/// to `session` (`-sess_out`) or resuming it from there (`-sess_in`).
fn s_client(dir: &Path, addr: SocketAddr, pair: &KeyPair, session: (&str, &Path)) -> Exchange {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(dir.join("server-ca.pem"))
        .arg("-cert")
        .arg(&pair.cert)
        .arg("-key")
        .arg(&pair.key)
        .arg(session.0)
        .arg(session.1)
        // Keep reading after stdin ends, until the gateway closes: the
        // session tickets and the response come after the request.
        .arg("-ign_eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /fleet HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let exited = eventually(WAIT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "openssl s_client did not finish");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    Exchange {
        reused: output.lines().any(|l| l.starts_with("Reused,")),
        output,
    }
}

/// What every load task shares.
struct Load {
    addr: SocketAddr,
    server_ca_pem: String,
    leaf: Leaf,
    stop: AtomicBool,
    ok: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
enum Style {
    /// A new client, so a full handshake, per request.
    Fresh,
    /// One client whose session cache resumes on whichever replica HAProxy picks.
    Resumed,
    /// One connection for every request.
    KeepAlive,
}

/// Requests through HAProxy until told to stop; every failure, described.
async fn drive(load: Arc<Load>, style: Style) -> Vec<String> {
    let shared = TestClient::new(&load.server_ca_pem, Some(&load.leaf), Proto::Http1);
    let mut failures = Vec::new();
    let mut kept = None;
    while !load.stop.load(Ordering::Relaxed) {
        let reply = match style {
            Style::KeepAlive => {
                if kept.is_none() {
                    let tcp = tcp_from(client_ip(), load.addr).await;
                    match shared.connect_over(tcp).await {
                        Ok(conn) => kept = Some(conn),
                        Err(e) => {
                            failures.push(format!("{style:?}: connect: {e}"));
                            continue;
                        }
                    }
                }
                kept.as_mut().unwrap().get("/load").await
            }
            Style::Fresh | Style::Resumed => {
                let client = match style {
                    Style::Fresh => {
                        TestClient::new(&load.server_ca_pem, Some(&load.leaf), Proto::Http1)
                    }
                    _ => shared.clone(),
                };
                let tcp = tcp_from(client_ip(), load.addr).await;
                match client.connect_over(tcp).await {
                    Ok(mut conn) => conn.get("/load").await,
                    Err(e) => Err(e),
                }
            }
        };
        match reply {
            Ok(r) if r.status == 200 => {
                let xff = r.upstream_header("x-forwarded-for");
                if xff.as_deref() != Some(CLIENT_ADDRESS) {
                    failures.push(format!("{style:?}: x-forwarded-for {xff:?}"));
                }
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => failures.push(format!(
                "{style:?}: status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => {
                failures.push(format!("{style:?}: {e}"));
                kept = None;
            }
        }
    }
    failures
}

fn generation(gw: &Gateway) -> f64 {
    gw.metric("certgate_config_generation")
}

/// Waits until every replica runs generation `at_least`.
fn all_reloaded(replicas: &[Gateway], at_least: f64) -> bool {
    eventually(WAIT, || replicas.iter().all(|r| generation(r) >= at_least))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_behind_haproxy_rotates_revokes_and_resumes() {
    if !have("haproxy") || !have("openssl") {
        eprintln!("skipping: haproxy and openssl are needed");
        return;
    }
    tokio::time::timeout(TEST_BOUND, fleet())
        .await
        .expect("the fleet test exceeded its bound");
}

async fn fleet() {
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.listener = Some(
        "[listener]\naddress = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\n\
         proxy_protocol_from = [\"127.0.0.1/32\"]\nsession_ticket_keys = \"ticket.keys\"\n"
            .into(),
    );
    setup.client_auth =
        Some("[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"ca.crl\"]\n".into());
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let dir = setup.path().to_path_buf();
    let mut key = [0u8; 80];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    let keys = base64::engine::general_purpose::STANDARD.encode(key);
    write(&dir, "ticket.keys", &format!("{keys}\n"));
    write(&dir, "ca.crl", &setup.ca.crl(&[]));
    write(&dir, "server-ca.pem", &setup.server_ca.pem);
    let good = setup.ca.issue(&LeafSpec::client("good"));
    let bad = setup.ca.issue(&LeafSpec::client("revoked-later"));
    let (good_files, bad_files) = (key_pair(&dir, "good", &good), key_pair(&dir, "bad", &bad));

    // One config file, three processes: each binds its own ports.
    let config = setup.write_config();
    let replicas: Vec<Gateway> = (0..REPLICAS)
        .map(|_| Gateway::start(&config, &setup.env))
        .collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let haproxy = Haproxy::start(&dir, &addrs);

    // Sessions made on replica 0, before any change.
    let (good_session, bad_session) = (dir.join("good.session"), dir.join("bad.session"));
    for (pair, session) in [(&good_files, &good_session), (&bad_files, &bad_session)] {
        let made = s_client(&dir, haproxy.single[0], pair, ("-sess_out", session));
        assert_eq!(made.status(), Some(200), "{}", made.output);
        assert!(!made.reused, "a first session is new");
    }
    let resumed = s_client(
        &dir,
        haproxy.single[1],
        &good_files,
        ("-sess_in", &good_session),
    );
    assert!(
        resumed.reused,
        "replica 0's session resumes on replica 1:\n{}",
        resumed.output
    );
    assert_eq!(resumed.status(), Some(200), "{}", resumed.output);

    // The load, through HAProxy's round robin.
    let load = Arc::new(Load {
        addr: haproxy.round_robin,
        server_ca_pem: setup.server_ca.pem.clone(),
        leaf: good.clone(),
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
    });
    let tasks: Vec<_> = [
        Style::Fresh,
        Style::Resumed,
        Style::KeepAlive,
        Style::KeepAlive,
    ]
    .into_iter()
    .map(|style| tokio::spawn(drive(load.clone(), style)))
    .collect();
    let wait_ok = |n: u64| {
        let load = load.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while load.ok.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            load.ok.load(Ordering::Relaxed) >= n
        }
    };
    assert!(wait_ok(100).await, "the load got going");

    // Rotate the server certificate, then revoke one client, while the load runs.
    setup.rotate_server_cert();
    assert!(
        all_reloaded(&replicas, 2.0),
        "every replica took the new certificate"
    );
    let served = load.ok.load(Ordering::Relaxed);
    assert!(wait_ok(served + 200).await, "load on the new certificate");
    replace_atomically(&dir, "ca.crl", &setup.ca.crl(&[&bad]));
    assert!(all_reloaded(&replicas, 3.0), "every replica took the CRL");
    let served = load.ok.load(Ordering::Relaxed);
    assert!(wait_ok(served + 200).await, "load after the CRL");
    load.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} good requests failed: {:?}",
        failures.len(),
        load.ok.load(Ordering::Relaxed) + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
    eprintln!(
        "good requests through HAProxy: {}, per replica: {:?}",
        load.ok.load(Ordering::Relaxed),
        replicas
            .iter()
            .map(|r| r.metric("certgate_requests_total{code=\"200\"}"))
            .collect::<Vec<_>>()
    );
    for (i, r) in replicas.iter().enumerate() {
        assert!(
            r.metric("certgate_requests_total{code=\"200\"}") > 0.0,
            "replica {i} served part of the load"
        );
        assert!(
            r.metric("certgate_proxy_protocol_total{result=\"ok\"}") > 0.0,
            "replica {i} read HAProxy's headers"
        );
    }

    // The revoked client, by a full handshake: refused by every replica.
    let bad_client = setup.client(&bad);
    for (i, front) in haproxy.single.iter().enumerate() {
        let tcp = tcp_from(client_ip(), *front).await;
        let refused = match bad_client.connect_over(tcp).await {
            Ok(mut conn) => conn.get("/load").await.err(),
            Err(e) => Some(e),
        };
        assert!(refused.is_some(), "replica {i} served the revoked client");
        assert!(
            eventually(WAIT, || handshakes(&replicas[i], "revoked") == 1.0),
            "replica {i} counted the revoked client"
        );
        assert!(
            replicas[i].wait_for_log(
                &[
                    "TLS handshake refused",
                    "\"reason\":\"revoked\"",
                    CLIENT_ADDRESS
                ],
                WAIT
            ),
            "replica {i} logged the refusal with the client's address"
        );
    }

    // The revoked client's session from before the CRL, resumed on another
    // replica: the TLS session resumes, the first request is refused.
    let resumed = s_client(
        &dir,
        haproxy.single[2],
        &bad_files,
        ("-sess_in", &bad_session),
    );
    assert!(
        resumed.reused,
        "the ticket still opens:\n{}",
        resumed.output
    );
    assert_eq!(resumed.status(), Some(403), "{}", resumed.output);
    assert!(
        resumed.output.contains("certificate_rejected"),
        "{}",
        resumed.output
    );
    assert!(
        replicas[2].wait_for_log(
            &[
                "resumed TLS session's client certificate refused by the current state",
                "\"reason\":\"revoked\"",
            ],
            WAIT
        ),
        "{}",
        replicas[2].logs()
    );
    // The good client's session from before both changes still resumes.
    let resumed = s_client(
        &dir,
        haproxy.single[2],
        &good_files,
        ("-sess_in", &good_session),
    );
    assert!(resumed.reused, "{}", resumed.output);
    assert_eq!(resumed.status(), Some(200), "{}", resumed.output);
}

/// One replica, shared ticket keys, and a reload between a client's two
/// connections: the ticket from before the CRL still opens under the new
/// generation (shared keys outlive reloads), and the resumed session is
/// refused on its first request, where a full handshake would be refused
/// at once. No balancer: this is the replica's own check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_from_before_a_revocation_does_not_resume_past_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.listener = Some(
        "[listener]\naddress = \"127.0.0.1:0\"\nsession_ticket_keys = \"ticket.keys\"\n".into(),
    );
    setup.client_auth =
        Some("[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"ca.crl\"]\n".into());
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let mut key = [0u8; 80];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    let keys = base64::engine::general_purpose::STANDARD.encode(key);
    write(setup.path(), "ticket.keys", &format!("{keys}\n"));
    write(setup.path(), "ca.crl", &setup.ca.crl(&[]));
    let leaf = setup
        .ca
        .issue(&LeafSpec::client("revoked-between-connections"));
    let gw = setup.start();
    // One client: its session cache carries the ticket to the next connection.
    let client = setup.client(&leaf);

    let exchange = |mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>| async move {
        tls.write_all(b"GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut raw)).await;
        parse_http1(&raw)
    };
    let first = client.tls(gw.addr).await.unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(exchange(first).await.status, 200);

    replace_atomically(setup.path(), "ca.crl", &setup.ca.crl(&[&leaf]));
    assert!(
        eventually(WAIT, || generation(&gw) >= 2.0),
        "the CRL is loaded"
    );

    let resumed = client.tls(gw.addr).await.unwrap();
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the ticket from generation 1 opens under generation 2"
    );
    let reply = exchange(resumed).await;
    assert_gateway_error(
        &reply,
        403,
        "certificate_rejected",
        "resumed past a revocation",
    );
    assert!(gw.wait_for_log(
        &[
            "resumed TLS session's client certificate refused by the current state",
            "\"reason\":\"revoked\"",
            "revoked-between-connections",
        ],
        WAIT
    ));
    assert_eq!(gw.metric("certgate_requests_total{code=\"403\"}"), 1.0);
    assert_eq!(gw.metric("certgate_requests_total{code=\"200\"}"), 1.0);
}
