//! PROXY protocol input (`listener.proxy_protocol`): v1 and v2 headers
//! (TCP4, TCP6, LOCAL) from a trusted balancer give the client's address to
//! `x-forwarded-for` and the logs; a header from an untrusted peer, a
//! trusted peer without one, a malformed one and one never finished within
//! `listener.handshake_timeout` each close the connection, counted under
//! their `result` in `certgate_proxy_protocol_total` and logged.
//!
//! On loopback, the "balancer" connects from 127.0.0.2 (the only trusted
//! address) and an untrusted client from 127.0.0.1.

mod common;
use common::*;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ppp::v2::{Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BALANCER: &str = "127.0.0.2";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(5);

fn balancer() -> IpAddr {
    BALANCER.parse().unwrap()
}

fn start(upstream: SocketAddr) -> (Setup, Gateway, Leaf) {
    let mut setup = Setup::new(upstream);
    setup.listener = Some(format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nhandshake_timeout = \"1s\"\n\
         proxy_protocol = \"any\"\nproxy_protocol_from = [\"{BALANCER}/32\"]\n"
    ));
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let leaf = setup.ca.issue(&LeafSpec::client("behind-a-balancer"));
    let gw = setup.start();
    (setup, gw, leaf)
}

fn count(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "certgate_proxy_protocol_total{{result=\"{result}\"}}"
    ))
}

/// A connection from the balancer that has already written `header`.
async fn after_header(gw: &Gateway, header: &[u8]) -> TcpStream {
    let mut tcp = tcp_from(balancer(), gw.addr).await;
    tcp.write_all(header).await.expect("write header");
    tcp
}

/// A v2 PROXY header for a TCP connection from `source` to `destination`.
fn v2(source: &str, destination: &str) -> Vec<u8> {
    let addresses: (SocketAddr, SocketAddr) =
        (source.parse().unwrap(), destination.parse().unwrap());
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses)
        .build()
        .expect("v2 header")
}

/// A v2 LOCAL header, as a balancer's health check sends: no addresses.
fn v2_local() -> Vec<u8> {
    Builder::new(Version::Two | Command::Local, 0)
        .build()
        .expect("v2 header")
}

/// Waits for the gateway to close `tcp` and returns how long that took.
async fn closed_by_gateway(mut tcp: TcpStream, case: &str) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("{case}: the gateway sent {n} bytes instead of closing"),
        Err(_) => panic!("{case}: the connection was not closed within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_from_the_balancer_name_the_client() {
    let upstream = echo_upstream().await;
    let (setup, gw, leaf) = start(upstream);
    let client = setup.client(&leaf);
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "v1 TCP4",
            b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8443\r\n".to_vec(),
            "198.51.100.7",
        ),
        (
            "v1 TCP6",
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8443\r\n".to_vec(),
            "2001:db8::7",
        ),
        (
            "v2 TCP4",
            v2("203.0.113.9:51000", "10.0.0.1:8443"),
            "203.0.113.9",
        ),
        (
            "v2 TCP6",
            v2("[2001:db8::9]:51000", "[2001:db8::1]:8443"),
            "2001:db8::9",
        ),
        ("v2 LOCAL: the balancer's own address", v2_local(), BALANCER),
    ];
    for (i, (case, header, want)) in cases.iter().enumerate() {
        let tcp = after_header(&gw, header).await;
        let mut conn = client
            .connect_over(tcp)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}\n{}", gw.logs()));
        // Two requests: the address holds for the connection's life.
        for _ in 0..2 {
            let reply = conn.get("/who").await.unwrap();
            assert_eq!(reply.status, 200, "{case}");
            assert_eq!(
                reply.upstream_header("x-forwarded-for").as_deref(),
                Some(*want),
                "{case}"
            );
        }
        assert!(
            eventually(WAIT, || count(&gw, "ok") == (i + 1) as f64),
            "{case}: counted as ok"
        );
    }

    // The header's address is the peer of every log line, a refusal's too:
    // no client certificate after a v1 header.
    let tcp = after_header(&gw, b"PROXY TCP4 198.51.100.99 10.0.0.1 40001 8443\r\n").await;
    let refused = setup.anonymous_client().connect_over(tcp).await;
    if let Ok(mut conn) = refused {
        assert!(conn.get("/who").await.is_err(), "no client certificate");
    }
    assert!(
        gw.wait_for_log(
            &["TLS handshake refused", "\"peer\":\"198.51.100.99:40001\""],
            WAIT
        ),
        "{}",
        gw.logs()
    );
    for result in ["untrusted", "missing", "invalid"] {
        assert_eq!(count(&gw, result), 0.0, "{result} stays 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_without_a_good_header_from_a_trusted_peer_are_closed() {
    let upstream = echo_upstream().await;
    let (setup, gw, leaf) = start(upstream);
    let client = setup.client(&leaf);

    // Untrusted: a valid header, but from an address not in
    // proxy_protocol_from; closed before it is read, whatever it says.
    let mut tcp = tcp_from("127.0.0.1".parse().unwrap(), gw.addr).await;
    tcp.write_all(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8443\r\n")
        .await
        .unwrap();
    closed_by_gateway(tcp, "untrusted").await;
    // ... and a plain TLS client from there gets no service either.
    let direct = tcp_from("127.0.0.1".parse().unwrap(), gw.addr).await;
    assert!(client.connect_over(direct).await.is_err(), "untrusted TLS");
    assert!(eventually(WAIT, || count(&gw, "untrusted") == 2.0));

    // Missing: the trusted balancer starts TLS at once.
    let tcp = tcp_from(balancer(), gw.addr).await;
    let err = client.connect_over(tcp).await.err();
    assert!(err.is_some(), "TLS without a header from the balancer");
    assert!(eventually(WAIT, || count(&gw, "missing") == 1.0));

    // Missing: a trusted peer that sends nothing is closed at the
    // handshake timeout, not held.
    let tcp = tcp_from(balancer(), gw.addr).await;
    let took = closed_by_gateway(tcp, "silent").await;
    assert!(
        took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100) && took < HANDSHAKE_TIMEOUT * 3,
        "silent peer closed after {took:?}"
    );
    assert!(eventually(WAIT, || count(&gw, "missing") == 2.0));

    // Invalid: malformed headers of either version.
    let mut bad_family = v2("192.0.2.1:1", "192.0.2.2:2");
    bad_family[13] = 0x41; // no such address family
    let malformed: [(&str, Vec<u8>); 4] = [
        (
            "v1 bad address",
            b"PROXY TCP4 198.51.100.300 10.0.0.1 1 2\r\n".to_vec(),
        ),
        (
            "v1 no CRLF within 107 bytes",
            format!("PROXY {}", "A".repeat(120)).into_bytes(),
        ),
        ("plain HTTP", b"POST / HTTP/1.1\r\n\r\n".to_vec()),
        ("v2 unknown address family", bad_family),
    ];
    for (i, (case, header)) in malformed.iter().enumerate() {
        let tcp = after_header(&gw, header).await;
        closed_by_gateway(tcp, case).await;
        assert!(
            eventually(WAIT, || count(&gw, "invalid") == (i + 1) as f64),
            "{case}: counted as invalid\n{}",
            gw.logs()
        );
    }

    // Invalid: a header begun and never finished (slowloris on the header)
    // is closed at the handshake timeout.
    let tcp = after_header(&gw, b"PROXY TCP4 198.51.100.7 10.0").await;
    let took = closed_by_gateway(tcp, "unfinished").await;
    assert!(
        took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100) && took < HANDSHAKE_TIMEOUT * 3,
        "unfinished header closed after {took:?}"
    );
    assert!(eventually(WAIT, || count(&gw, "invalid") == 5.0));

    for (result, reason) in [
        ("untrusted", "peer is not in listener.proxy_protocol_from"),
        ("missing", "did not begin with a PROXY protocol header"),
        (
            "missing",
            "no PROXY protocol header within listener.handshake_timeout",
        ),
        ("invalid", "malformed PROXY protocol v1 header"),
        ("invalid", "malformed PROXY protocol v2 header"),
        ("invalid", "not finished within listener.handshake_timeout"),
    ] {
        assert!(
            gw.wait_for_log(
                &[
                    "PROXY protocol header refused",
                    &format!("\"result\":\"{result}\""),
                    reason
                ],
                WAIT
            ),
            "{result}: {reason}\n{}",
            gw.logs()
        );
    }
    assert_eq!(count(&gw, "ok"), 0.0);
    // Refused before TLS: no handshake was attempted, so none is counted.
    assert_eq!(handshakes(&gw, "ok"), 0.0);
    // The gateway still serves the balancer.
    let tcp = after_header(&gw, b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8443\r\n").await;
    let reply = client
        .connect_over(tcp)
        .await
        .unwrap()
        .get("/x")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_for_one_version_refuses_the_other() {
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.listener = Some(format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\n\
         proxy_protocol_from = [\"{BALANCER}\"]\n"
    ));
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let leaf = setup.ca.issue(&LeafSpec::client("v2-only"));
    let gw = setup.start();
    let tcp = after_header(&gw, b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 8443\r\n").await;
    closed_by_gateway(tcp, "v1 on a v2 listener").await;
    assert!(eventually(WAIT, || count(&gw, "invalid") == 1.0));
    assert!(gw.wait_for_log(
        &["PROXY protocol v1 header, but listener.proxy_protocol = \\\"v2\\\""],
        WAIT
    ));
    let tcp = after_header(&gw, &v2("203.0.113.9:51000", "10.0.0.1:8443")).await;
    let reply = setup
        .client(&leaf)
        .connect_over(tcp)
        .await
        .unwrap()
        .get("/x")
        .await
        .unwrap();
    assert_eq!(
        reply.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9")
    );
}
