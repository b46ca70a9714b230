//! Hostile and broken clients against the real daemon: connections that
//! never handshake, garbage and plaintext on the TLS port, old protocol
//! versions and weak cipher suites, oversized and stalled request heads,
//! idle keep-alive connections, HTTP/2 rapid reset, a stalled upstream,
//! request bodies the upstream does not read, connection churn, and running
//! out of file descriptors. After each, the daemon must still serve.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WHOAMI: &str = "/.certgate/whoami";

// ------------------------------------------------------------ helpers ----

/// A `[listener]` section on an ephemeral loopback port with `keys` added.
fn listener(keys: &str) -> Option<String> {
    Some(format!("[listener]\naddress = \"127.0.0.1:0\"\n{keys}\n"))
}

/// A setup whose every verified client may call any path.
async fn open_setup(listener_keys: &str) -> Setup {
    let mut setup = Setup::new(echo_upstream().await);
    setup.listener = listener(listener_keys);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
}

fn client_leaf(setup: &Setup) -> Leaf {
    setup.ca.issue(&LeafSpec::client("hardening-client"))
}

/// The daemon is still running, ready, and serves a verified client.
async fn assert_serving(gw: &mut Gateway, setup: &Setup, leaf: &Leaf) {
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "daemon exited; logs:\n{}",
        gw.logs()
    );
    assert_eq!(gw.admin_get("/readyz").0, 200, "/readyz");
    let reply = setup.client(leaf).get(gw.addr, WHOAMI).await.unwrap();
    assert_eq!(reply.status, 200, "whoami after the abuse");
}

/// Reads until the peer closes; returns what arrived and when it closed.
/// A TLS stream cut without close_notify reports an error: also a close.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Vec<u8>, Instant) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (seen, Instant::now()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn assert_between(what: &str, elapsed: Duration, min: Duration, max: Duration) {
    assert!(
        elapsed >= min && elapsed <= max,
        "{what}: took {elapsed:?}, expected between {min:?} and {max:?}"
    );
}

// ------------------------------------------------ hand-made TLS bytes ----

const TLS1_0: u16 = 0x0301;
const TLS1_1: u16 = 0x0302;
const TLS1_2: u16 = 0x0303;
/// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: AEAD, matches the P-256 server key.
const ECDHE_ECDSA_AES128_GCM: u16 = 0xc02b;
/// CBC, stream and export-era suites that a TLS 1.2 client may still offer.
const LEGACY_SUITES: &[u16] = &[
    0xc009, // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA
    0xc023, // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256
    0xc013, // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
    0x002f, // TLS_RSA_WITH_AES_128_CBC_SHA
    0x000a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
    0x0005, // TLS_RSA_WITH_RC4_128_SHA
];
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_PROTOCOL_VERSION: u8 = 70;

/// A ClientHello record as a TLS 1.2-or-older client sends it (no
/// supported_versions extension), offering ECDHE with P-256/X25519 and
/// ECDSA/RSA-PSS signatures.
fn client_hello(version: u16, suites: &[u16], compression: &[u8]) -> Vec<u8> {
    let extensions: [(u16, &[u8]); 3] = [
        (0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]), // supported_groups
        (0x000b, &[0x01, 0x00]),                         // ec_point_formats: uncompressed
        (0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04]), // signature_algorithms
    ];
    let mut body = version.to_be_bytes().to_vec();
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    suites.iter().for_each(|s| body.extend(s.to_be_bytes()));
    body.push(compression.len() as u8);
    body.extend(compression);
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend(kind.to_be_bytes());
        ext.extend((data.len() as u16).to_be_bytes());
        ext.extend(data);
    }
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut handshake = vec![1]; // client_hello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// What the server answered to a hand-made first flight.
#[derive(Debug, PartialEq, Eq)]
enum ServerReply {
    ServerHello,
    Alert(u8),
    Closed,
    Other(Vec<u8>),
}

async fn send_first_flight(addr: SocketAddr, bytes: &[u8]) -> ServerReply {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut header = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header)).await;
    if read.expect("server neither answered nor closed").is_err() {
        return ServerReply::Closed;
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    match (header[0], payload.as_slice()) {
        (0x15, [_level, description]) => ServerReply::Alert(*description),
        (0x16, [2, ..]) => ServerReply::ServerHello,
        _ => ServerReply::Other(header.to_vec()),
    }
}

// ----------------------------------------------------- hand-made HTTP/2 ----

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM_END_HEADERS: u8 = 0x5;
const NO_ERROR: u32 = 0x0;

#[derive(Debug)]
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl H2Frame {
    /// The error code of a GOAWAY frame.
    fn error_code(&self) -> u32 {
        u32::from_be_bytes(self.payload[4..8].try_into().unwrap())
    }
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// The client connection preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut p = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    p.extend(h2_frame(SETTINGS, 0, 0, &[]));
    p
}

/// HPACK for `GET https://localhost/.certgate/whoami` (static-table method
/// and scheme, literal path and authority).
fn whoami_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x04, WHOAMI.len() as u8];
    block.extend(WHOAMI.as_bytes());
    block.extend([0x01, 9]);
    block.extend(b"localhost");
    block
}

/// Sends `flight`, then reads frames (each with its arrival time) until the
/// server closes. Acknowledges the server's SETTINGS, and its PINGs when
/// `answer_pings`.
async fn h2_exchange<S: AsyncRead + tokio::io::AsyncWrite>(
    tls: S,
    flight: &[u8],
    answer_pings: bool,
    limit: Duration,
) -> (Vec<(Instant, H2Frame)>, Instant) {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let _ = wr.write_all(flight).await;
    let mut frames = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => panic!("HTTP/2 connection still open after {limit:?}: {frames:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, Instant::now()),
            Ok(Ok(n)) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while pending.len() >= 9 {
            let len = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
            if pending.len() < 9 + len {
                break;
            }
            let frame = H2Frame {
                kind: pending[3],
                flags: pending[4],
                stream: u32::from_be_bytes(pending[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload: pending[9..9 + len].to_vec(),
            };
            pending.drain(..9 + len);
            let reply = match (frame.kind, frame.flags & ACK) {
                (SETTINGS, 0) => Some(h2_frame(SETTINGS, ACK, 0, &[])),
                (PING, 0) if answer_pings => Some(h2_frame(PING, ACK, 0, &frame.payload)),
                _ => None,
            };
            if let Some(reply) = reply {
                let _ = wr.write_all(&reply).await;
            }
            frames.push((Instant::now(), frame));
        }
    }
}

// ------------------------------------------------------------- tests ----

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_do_not_block_clients_and_are_closed_after_handshake_timeout() {
    let setup = open_setup("handshake_timeout = \"2s\"").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        setup.client(&leaf).get(gw.addr, WHOAMI),
    )
    .await
    .expect("valid client starved by silent connections")
    .unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        opened.elapsed() < Duration::from_millis(1500),
        "valid client waited {:?}, as if behind the silent connections",
        opened.elapsed()
    );

    let closes = silent.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
            (n.map(|r| r.map_err(|e| e.kind())), Instant::now())
        })
    });
    for close in closes {
        let (result, at) = close.await.unwrap();
        assert_eq!(result, Ok(Ok(0)), "silent connection not closed with EOF");
        assert!(
            at - opened >= Duration::from_millis(1900),
            "closed after {:?}, before handshake_timeout",
            at - opened
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("certgate_tls_handshakes_total{result=\"timeout\"}")
            == 200.0),
        "timeouts counted: {}",
        gw.metric("certgate_tls_handshakes_total{result=\"timeout\"}")
    );
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("certgate_connections_active")
        == 0.0));
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_wait_in_the_backlog() {
    let setup = open_setup("max_connections = 2\nhandshake_timeout = \"30s\"").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    let silent = [
        TcpStream::connect(gw.addr).await.unwrap(),
        TcpStream::connect(gw.addr).await.unwrap(),
    ];
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("certgate_connections_active")
        == 2.0));
    let (client, addr) = (setup.client(&leaf), gw.addr);
    let waiting = tokio::spawn(async move { client.get(addr, WHOAMI).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served with max_connections = 2"
    );
    assert_eq!(
        gw.metric("certgate_connections_active"),
        2.0,
        "connections accepted past the limit"
    );

    // Freeing one slot lets the queued client in at once.
    let freed = Instant::now();
    drop(silent);
    let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("queued client not served after slots were freed")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        freed.elapsed() < Duration::from_secs(2),
        "served {:?} after slots were freed",
        freed.elapsed()
    );
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_plaintext_http_on_the_tls_port_are_closed() {
    let setup = open_setup("").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    let mut noise = vec![0u8; 4096];
    aws_lc_rs::rand::fill(&mut noise).unwrap();
    noise[0] = 0x42; // not a TLS content type
    let inputs: [(&str, &[u8]); 3] = [
        ("random bytes", &noise),
        (
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
        (
            "TLS record header with a huge length",
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01],
        ),
    ];
    for (name, bytes) in inputs {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let (reply, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        assert!(
            !String::from_utf8_lossy(&reply).contains("HTTP/"),
            "{name}: answered with HTTP: {reply:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || gw
            .metric("certgate_tls_handshakes_total{result=\"protocol_error\"}")
            == 3.0),
        "protocol errors counted: {}",
        gw.metric("certgate_tls_handshakes_total{result=\"protocol_error\"}")
    );
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_posture_old_versions_weak_suites_and_compression_are_refused() {
    let setup = open_setup("").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    let cases: [(&str, Vec<u8>, ServerReply); 5] = [
        (
            "control: TLS 1.2 with an AEAD suite",
            client_hello(TLS1_2, &[ECDHE_ECDSA_AES128_GCM], &[0]),
            ServerReply::ServerHello,
        ),
        (
            "TLS 1.0",
            client_hello(TLS1_0, LEGACY_SUITES, &[0]),
            ServerReply::Alert(ALERT_PROTOCOL_VERSION),
        ),
        (
            "TLS 1.1",
            client_hello(TLS1_1, LEGACY_SUITES, &[0]),
            ServerReply::Alert(ALERT_PROTOCOL_VERSION),
        ),
        (
            "TLS 1.2 with only CBC/3DES/RC4 suites",
            client_hello(TLS1_2, LEGACY_SUITES, &[0]),
            ServerReply::Alert(ALERT_HANDSHAKE_FAILURE),
        ),
        (
            "TLS 1.2 with only DEFLATE compression",
            client_hello(TLS1_2, &[ECDHE_ECDSA_AES128_GCM], &[1]),
            ServerReply::Alert(ALERT_ILLEGAL_PARAMETER),
        ),
    ];
    for (name, hello, expected) in cases {
        assert_eq!(send_first_flight(gw.addr, &hello).await, expected, "{name}");
    }

    for (name, versions) in [
        ("TLS 1.2", &[&rustls::version::TLS12][..]),
        ("TLS 1.3", &[&rustls::version::TLS13][..]),
    ] {
        let client =
            TestClient::with_versions(&setup.server_ca.pem, Some(&leaf), Proto::Http1, versions);
        let reply = client.get(gw.addr, WHOAMI).await.unwrap();
        assert_eq!(reply.status, 200, "{name} client");
    }
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn min_tls_version_1_3_refuses_tls_1_2() {
    let setup = open_setup("min_tls_version = \"1.3\"").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    let tls12 = TestClient::with_versions(
        &setup.server_ca.pem,
        Some(&leaf),
        Proto::Http1,
        &[&rustls::version::TLS12],
    );
    let err = tls12.get(gw.addr, WHOAMI).await.unwrap_err();
    assert!(
        err.contains("ProtocolVersion"),
        "TLS 1.2 client error: {err}"
    );
    assert_eq!(
        send_first_flight(
            gw.addr,
            &client_hello(TLS1_2, &[ECDHE_ECDSA_AES128_GCM], &[0])
        )
        .await,
        ServerReply::Alert(ALERT_PROTOCOL_VERSION),
        "hand-made TLS 1.2 hello"
    );
    assert!(eventually(Duration::from_secs(5), || gw.metric(
        "certgate_tls_handshakes_total{result=\"protocol_error\"}"
    ) == 2.0));
    assert_serving(&mut gw, &setup, &leaf).await; // the default client speaks 1.3
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_and_header_floods_are_refused() {
    let setup = open_setup("").await; // max_header_bytes = 16384
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    // Over max_header_bytes but within hyper's buffer: the gateway's JSON 431.
    let big = "a".repeat(20 * 1024);
    for client in [setup.client(&leaf), setup.client_h2(&leaf)] {
        let reply = client
            .request(
                gw.addr,
                Method::GET,
                "/x",
                &[("x-big", big.as_str())],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 431);
        assert_eq!(reply.json()["error"], "request_header_fields_too_large");
    }

    // 64 KiB: beyond hyper's buffer, refused before the head is complete.
    let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();
    let head = format!(
        "GET /x HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (mut rd, mut wr) = tokio::io::split(&mut tls);
    let write = async { wr.write_all(head.as_bytes()).await };
    let (_, (reply, _)) = tokio::join!(write, read_until_closed(&mut rd, Duration::from_secs(5)));
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 431"), "64 KiB head: {reply:?}");

    // 2,000 small headers: more fields than the gateway accepts.
    let values: Vec<(String, String)> =
        (0..2000).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let headers: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let reply = setup
        .client(&leaf)
        .request(gw.addr, Method::GET, "/x", &headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 431, "HTTP/1.1 header flood");
    let reply = setup
        .client_h2(&leaf)
        .request(gw.addr, Method::GET, "/x", &headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 431, "HTTP/2 header flood");
    assert_serving(&mut gw, &setup, &leaf).await;
}

const TIMERS: &str = "header_timeout = \"1s\"\nidle_timeout = \"3s\"";

#[tokio::test(flavor = "multi_thread")]
async fn stalled_request_heads_are_cut_after_header_timeout() {
    let setup = open_setup(TIMERS).await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    let client = setup.client(&leaf);
    let second = Duration::from_secs(1);
    let slack = Duration::from_millis(2500);

    let silent = async {
        let mut tls = client.tls(gw.addr).await.unwrap();
        let start = Instant::now();
        let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        assert_between(
            "no head at all",
            closed - start,
            second - Duration::from_millis(100),
            second + slack,
        );
    };
    let half = async {
        let mut tls = client.tls(gw.addr).await.unwrap();
        let start = Instant::now();
        tls.write_all(b"GET /.certgate/whoami HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .unwrap();
        let (seen, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        assert!(seen.is_empty(), "half head answered: {seen:?}");
        assert_between(
            "half-sent head",
            closed - start,
            second - Duration::from_millis(100),
            second + slack,
        );
    };
    let trickle = async {
        let tls = client.tls(gw.addr).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let start = Instant::now();
        let drip = async {
            for b in b"GET /.certgate/whoami HTTP/1.1\r\nx-slow: ".iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let (_, (_, closed)) =
            tokio::join!(drip, read_until_closed(&mut rd, Duration::from_secs(10)));
        assert_between(
            "trickled head",
            closed - start,
            second - Duration::from_millis(100),
            second + slack,
        );
    };
    let keep_alive = async {
        let mut tls = client.tls(gw.addr).await.unwrap();
        let request = b"GET /.certgate/whoami HTTP/1.1\r\nhost: localhost\r\n\r\n";
        tls.write_all(request).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "first request");
        // Idle for twice header_timeout: still open, and serves again.
        tokio::time::sleep(2 * second).await;
        tls.write_all(request).await.unwrap();
        let n = tls.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "keep-alive request after 2x header_timeout: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        let start = Instant::now();
        tls.write_all(b"GET /.certgate/whoami HTTP/1.1\r\n")
            .await
            .unwrap();
        let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        assert_between(
            "half head on a keep-alive connection",
            closed - start,
            second - Duration::from_millis(100),
            second + slack,
        );
    };
    tokio::join!(silent, half, trickle, keep_alive);
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let setup = open_setup(TIMERS).await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    let idle = Duration::from_secs(3);

    // HTTP/1.1: after a response, the connection gets idle_timeout (not
    // header_timeout) and is then closed.
    let h1 = async {
        let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();
        tls.write_all(b"GET /.certgate/whoami HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let start = Instant::now();
        let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        assert_between(
            "idle HTTP/1.1",
            closed - start,
            idle - Duration::from_millis(300),
            idle + Duration::from_millis(2500),
        );
    };
    // HTTP/2: GOAWAY after idle_timeout, then closed once the client has
    // answered GOAWAY's ping; a client that ignores it is dropped after the
    // close grace (5 s) instead of holding the connection.
    let h2 = |answers_pings: bool| {
        let client = setup.client_h2(&leaf);
        let addr = gw.addr;
        async move {
            let tls = client.tls(addr).await.unwrap();
            let mut flight = h2_preface();
            flight.extend(h2_frame(
                HEADERS,
                END_STREAM_END_HEADERS,
                1,
                &whoami_block(),
            ));
            let (frames, closed) =
                h2_exchange(tls, &flight, answers_pings, Duration::from_secs(15)).await;
            let answered = frames
                .iter()
                .find(|(_, f)| f.kind == HEADERS && f.stream == 1)
                .expect("whoami answered")
                .0;
            let goaway = frames
                .iter()
                .find(|(_, f)| f.kind == GOAWAY)
                .expect("GOAWAY sent");
            assert_eq!(goaway.1.error_code(), NO_ERROR, "graceful GOAWAY");
            (goaway.0 - answered, closed - answered)
        }
    };
    let h2_polite = async {
        let (goaway, closed) = h2(true).await;
        assert_between(
            "HTTP/2 GOAWAY",
            goaway,
            idle - Duration::from_millis(300),
            idle + Duration::from_millis(2500),
        );
        assert_between(
            "HTTP/2 close",
            closed,
            idle - Duration::from_millis(300),
            idle + Duration::from_millis(2500),
        );
    };
    let h2_deaf = async {
        let (goaway, closed) = h2(false).await;
        assert_between(
            "HTTP/2 GOAWAY",
            goaway,
            idle - Duration::from_millis(300),
            idle + Duration::from_millis(2500),
        );
        let grace = Duration::from_secs(5);
        assert_between(
            "HTTP/2 drop",
            closed,
            idle + grace - Duration::from_millis(300),
            idle + grace + Duration::from_millis(2500),
        );
    };
    tokio::join!(h1, h2_polite, h2_deaf);
    assert!(eventually(Duration::from_secs(5), || gw
        .metric("certgate_connections_active")
        == 0.0));
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_gets_504_near_upstream_timeout() {
    // An upstream that accepts and never answers.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = stalled.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stalled.accept().await {
            held.push(s);
        }
    });
    let mut setup = Setup::new(upstream);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
        .env
        .push(("CERTGATE_UPSTREAM__TIMEOUT".into(), "1s".into()));
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);

    let start = Instant::now();
    let reply = setup.client(&leaf).get(gw.addr, "/slow").await.unwrap();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "gateway_timeout");
    assert_between(
        "504",
        start.elapsed(),
        Duration::from_millis(950),
        Duration::from_secs(3),
    );
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"timeout\",upstream=\"default\"}"),
        1.0
    );
    assert_serving(&mut gw, &setup, &leaf).await;
    held.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_stream_with_back_pressure() {
    // An upstream that reads nothing: the request body must back up to the
    // client through the gateway, not pile up in the gateway's memory.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = deaf.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = deaf.accept().await {
            held.push(s);
        }
    });
    let mut setup = Setup::new(upstream);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
        .env
        .push(("CERTGATE_UPSTREAM__TIMEOUT".into(), "30s".into()));
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    assert_eq!(
        setup
            .client(&leaf)
            .get(gw.addr, WHOAMI)
            .await
            .unwrap()
            .status,
        200
    );
    let rss_before = rss_kib(gw.pid());

    const BODY: usize = 256 << 20;
    let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();
    let head =
        format!("POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: {BODY}\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    // Write until a write makes no progress for a second: the pipe is full.
    while sent < BODY {
        match tokio::time::timeout(Duration::from_secs(1), tls.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("upload failed after {sent} bytes: {e}"),
            Err(_) => break,
        }
    }
    let grown = rss_kib(gw.pid()).saturating_sub(rss_before);
    eprintln!("back-pressure: {sent} of {BODY} body bytes accepted, gateway RSS +{grown} KiB");
    assert!(
        sent < BODY / 4,
        "{sent} bytes accepted with an upstream that reads nothing"
    );
    assert!(
        grown < 32 * 1024,
        "gateway RSS grew {grown} KiB while {sent} bytes were pending"
    );
    drop(tls);
    assert_serving(&mut gw, &setup, &leaf).await;
    held.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_rapid_reset_gets_goaway() {
    const CANCEL: u32 = 0x8;
    const ENHANCE_YOUR_CALM: u32 = 0xb;

    let setup = open_setup("").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    let tls = setup.client_h2(&leaf).tls(gw.addr).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let mut flight = h2_preface();
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        flight.extend(h2_frame(
            HEADERS,
            END_STREAM_END_HEADERS,
            stream,
            &whoami_block(),
        ));
        flight.extend(h2_frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let (frames, _) = h2_exchange(tls, &flight, true, Duration::from_secs(10)).await;
    let goaway = frames
        .iter()
        .find(|(_, f)| f.kind == GOAWAY)
        .map(|(_, f)| f.error_code());
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY error code after 500 reset streams"
    );
    assert_serving(&mut gw, &setup, &leaf).await;
}

/// The first flight of a real TLS 1.3 client (no certificate needed: it
/// never gets further).
fn rustls_client_hello() -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_churn_leaves_no_connections_or_descriptors_behind() {
    const ROUNDS: usize = 1000;
    let setup = open_setup("").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    let client = setup.client(&leaf);
    assert_eq!(client.get(gw.addr, WHOAMI).await.unwrap().status, 200);
    let baseline = fd_count(gw.pid());
    let hello = rustls_client_hello();

    // Each round: one full mTLS request, one ClientHello then FIN, one
    // ClientHello then RST after the server's reply, one bare connect + RST.
    let addr = gw.addr;
    let started = Instant::now();
    let workers = (0..16).map(|w| {
        let client = client.clone();
        let hello = hello.clone();
        tokio::spawn(async move {
            for _ in (w..ROUNDS).step_by(16) {
                let reply = client.get(addr, WHOAMI).await.unwrap();
                assert_eq!(reply.status, 200);

                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(&hello).await.unwrap();
                drop(tcp);

                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(&hello).await.unwrap();
                let _ = tcp.read(&mut [0u8; 512]).await;
                tcp.set_zero_linger().unwrap();
                drop(tcp);

                let tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_zero_linger().unwrap();
                drop(tcp);
            }
        })
    });
    for w in workers.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    let churn = started.elapsed();

    // The last connections may still wait in the backlog when the clients
    // are done: every one is accepted and counted before any check.
    let connections = (1 + 4 * ROUNDS) as f64;
    assert!(
        eventually(Duration::from_secs(10), || gw
            .metric("certgate_connections_total")
            == connections),
        "connections counted: {}, made: {connections}",
        gw.metric("certgate_connections_total")
    );
    assert!(
        eventually(Duration::from_secs(10), || gw
            .metric("certgate_connections_active")
            == 0.0),
        "connections still counted active: {}",
        gw.metric("certgate_connections_active")
    );
    assert!(
        eventually(Duration::from_secs(10), || fd_count(gw.pid()) <= baseline),
        "daemon holds {} descriptors, {baseline} before the churn",
        fd_count(gw.pid())
    );
    assert_eq!(
        gw.metric("certgate_tls_handshakes_total{result=\"ok\"}"),
        (1 + ROUNDS) as f64
    );
    eprintln!("churn: {} connections in {churn:?}", 4 * ROUNDS);
    assert_serving(&mut gw, &setup, &leaf).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let setup = open_setup("handshake_timeout = \"1s\"").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    let limit = fd_count(gw.pid()) + 16;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", gw.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("skipped: prlimit unavailable or not permitted");
        return;
    }

    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    assert!(
        gw.wait_for_log(
            &["accept failed; backing off", "os error 24"],
            Duration::from_secs(5)
        ),
        "no EMFILE backoff logged; logs:\n{}",
        gw.logs()
    );
    // The silent connections time out, descriptors come back, the backlog
    // drains, and a client queued behind it all is served.
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        setup.client(&leaf).get(gw.addr, WHOAMI),
    )
    .await
    .expect("not served after descriptors were freed")
    .unwrap();
    assert_eq!(reply.status, 200);
    drop(silent);
    assert!(eventually(Duration::from_secs(10), || gw
        .metric("certgate_connections_active")
        == 0.0));
    assert_serving(&mut gw, &setup, &leaf).await;
}

/// A flood of idle connections to the admin port: the gateway takes at most
/// `admin::MAX_CONNECTIONS` of them at once (the rest wait in the backlog),
/// and serves probes again as soon as the flood goes.
#[tokio::test(flavor = "multi_thread")]
async fn admin_connection_flood_is_bounded() {
    // Within the listen backlog (128), so that every connect completes.
    const FLOOD: usize = 120;
    let setup = open_setup("").await;
    let mut gw = setup.start();
    let leaf = client_leaf(&setup);
    let admin = gw.admin.expect("admin listener");
    let baseline = fd_count(gw.pid());
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect(admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = fd_count(gw.pid()) - baseline;
    assert!(
        held <= certgate::admin::MAX_CONNECTIONS,
        "the daemon took {held} of {FLOOD} admin connections"
    );
    drop(flood);
    assert!(
        eventually(Duration::from_secs(5), || fd_count(gw.pid()) <= baseline),
        "admin connections released"
    );
    assert_serving(&mut gw, &setup, &leaf).await;
}
