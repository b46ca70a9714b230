//! A refused client sees why (SPEC §15): the gateway sends the TLS alert,
//! shuts its write side and drains what the client already sent, so the
//! kernel never answers the client's unread request with a reset that
//! would destroy the alert. And the refusal's log line names the
//! certificate: subject, issuer, serial and fingerprint.
//!
//! The client here is the one that lost the alert most often in the field:
//! TLS 1.3, sending its certificate flight and its request in one write
//! (as Java's HttpClient and curl do), then reading the answer a moment
//! later.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;

/// Tries per refusal kind; every one must see the alert.
const TRIES: usize = 50;

/// The request's body, sent in two halves: one with the flight, the other
/// a moment later, as a client streaming a body does.
const BODY_HALF: usize = 16 * 1024;

/// One TLS 1.3 connection whose client writes its Certificate,
/// CertificateVerify, Finished, a request head and half its body in a
/// single write, then (a moment later, as a client streaming its body
/// does) the other half, and only then reads. What the client's TLS stack
/// reports: `received fatal alert: ...` when the alert arrived, anything
/// else (a reset or broken pipe on the write, an end of stream) when the
/// gateway's close lost it.
fn flight_and_request(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> String {
    let server_name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(config.clone(), server_name).unwrap();
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // ClientHello, then the server's flight up to its Finished: after it,
    // the client's own flight is queued and the handshake is done from the
    // client's side.
    while tls.is_handshaking() {
        while tls.wants_write() {
            tls.write_tls(&mut sock).expect("write ClientHello");
        }
        match tls.read_tls(&mut sock) {
            Ok(0) => return "end of stream during the handshake".into(),
            Ok(_) => {}
            Err(e) => return format!("read during the handshake: {e}"),
        }
        if let Err(e) = tls.process_new_packets() {
            return e.to_string();
        }
    }
    let head = format!(
        "POST /api HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        2 * BODY_HALF
    );
    let mut writes = Vec::new();
    for part in [
        [head.as_bytes(), &[b'x'; BODY_HALF]].concat(),
        vec![b'y'; BODY_HALF],
    ] {
        tls.writer().write_all(&part).unwrap();
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records).unwrap();
        }
        writes.push(records);
    }
    for (i, records) in writes.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = sock.write_all(records) {
            return format!("write {i}: {e}");
        }
    }
    loop {
        match tls.read_tls(&mut sock) {
            Ok(0) => return "end of stream without an alert".into(),
            Ok(_) => {}
            Err(e) => return format!("read: {e}"),
        }
        if let Err(e) = tls.process_new_packets() {
            return e.to_string();
        }
        let mut answer = Vec::new();
        let _ = tls.reader().read_to_end(&mut answer);
        if !answer.is_empty() {
            return format!("answered: {}", String::from_utf8_lossy(&answer));
        }
    }
}

/// A gateway with a CRL, and a client of each TLS 1.3 refusal with the
/// alert it must receive.
struct Refusals {
    setup: Setup,
    gw: Gateway,
    cases: Vec<(&'static str, &'static str, TestClient, Option<Leaf>)>,
}

async fn refusals() -> Refusals {
    let mut setup = Setup::new(echo_upstream().await);
    let now = OffsetDateTime::now_utc();
    let revoked = setup.ca.issue(&LeafSpec::client("revoked-client"));
    setup.revoke(&[&revoked]);
    let expired = setup.ca.issue(&LeafSpec {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
        ..LeafSpec::client("expired-client")
    });
    let stranger = TestCa::root("some other CA").issue(&LeafSpec::client("stranger"));
    let gw = setup.start();
    let tls13 = |leaf: Option<&Leaf>| {
        TestClient::with_versions(
            &setup.server_ca.pem,
            leaf,
            Proto::Http1,
            &[&rustls::version::TLS13],
        )
    };
    let cases = vec![
        (
            "revoked",
            "CertificateRevoked",
            tls13(Some(&revoked)),
            Some(revoked.clone()),
        ),
        (
            "expired",
            "CertificateExpired",
            tls13(Some(&expired)),
            Some(expired.clone()),
        ),
        (
            "unknown_issuer",
            "UnknownCA",
            tls13(Some(&stranger)),
            Some(stranger.clone()),
        ),
        ("no_client_cert", "CertificateRequired", tls13(None), None),
    ];
    Refusals { setup, gw, cases }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refused_tls13_client_receives_its_alert() {
    let Refusals { gw, cases, .. } = refusals().await;
    let addr = gw.addr;
    let results = tokio::task::spawn_blocking(move || {
        cases
            .into_iter()
            .map(|(label, alert, client, _)| {
                let config = client.config();
                let seen: Vec<String> = (0..TRIES)
                    .map(|_| flight_and_request(&config, addr))
                    .collect();
                (label, alert, seen)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (label, alert, seen) in results {
        let want = format!("received fatal alert: {alert}");
        let lost: Vec<&String> = seen.iter().filter(|e| **e != want).collect();
        assert!(
            lost.is_empty(),
            "{label}: {} of {TRIES} tries did not see `{want}`: {lost:?}",
            lost.len()
        );
        // Counted as the alert goes out, so the last one may lag the client.
        assert!(
            eventually(Duration::from_secs(5), || handshakes(&gw, label)
                == TRIES as f64),
            "{label}: {} refusals counted, not {TRIES}",
            handshakes(&gw, label)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refusal_log_lines_name_the_certificate() {
    let Refusals { gw, cases, .. } = refusals().await;
    for (label, alert, client, leaf) in &cases {
        let (config, addr) = (client.config(), gw.addr);
        let seen = tokio::task::spawn_blocking(move || flight_and_request(&config, addr))
            .await
            .unwrap();
        assert_eq!(seen, format!("received fatal alert: {alert}"), "{label}");
        assert!(
            gw.wait_for_log(
                &["TLS handshake refused", &format!("\"reason\":\"{label}\"")],
                Duration::from_secs(5)
            ),
            "{label}: no refusal line:\n{}",
            gw.logs()
        );
        let Some(leaf) = leaf else { continue };
        let serial = leaf.serial_hex();
        let fingerprint = leaf.fingerprint();
        let line = gw
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "TLS handshake refused" && v["serial"] == serial.as_str());
        let line = line.unwrap_or_else(|| {
            panic!(
                "{label}: no refusal line with serial {serial}:\n{}",
                gw.logs()
            )
        });
        let (subject, issuer) = match *label {
            "unknown_issuer" => ("CN=stranger", "CN=some other CA"),
            "revoked" => ("CN=revoked-client", "CN=certgate test client CA"),
            _ => ("CN=expired-client", "CN=certgate test client CA"),
        };
        let field = |name: &str| line[name].as_str().unwrap_or_default().to_owned();
        assert_eq!(line["reason"], *label, "{label}");
        assert!(field("subject").contains(subject), "{label}: {line}");
        assert!(field("issuer").contains(issuer), "{label}: {line}");
        assert_eq!(line["fingerprint"], fingerprint.as_str(), "{label}: {line}");
    }
    // No certificate, nothing to name: the line says so by leaving them out.
    let anonymous = gw
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["reason"] == "no_client_cert")
        .expect("no_client_cert refusal logged");
    assert!(anonymous.get("fingerprint").is_none(), "{anonymous}");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_prints_the_alert_name() {
    if !have("curl") {
        eprintln!("skipping: curl is not installed (CI installs it)");
        return;
    }
    let Refusals {
        setup, gw, cases, ..
    } = refusals().await;
    let (_, _, _, revoked) = &cases[0];
    let revoked = revoked.as_ref().unwrap();
    write(setup.path(), "revoked.pem", &revoked.chain_pem);
    write(setup.path(), "revoked.key", &revoked.key_pem);
    write(setup.path(), "server-ca.pem", &setup.server_ca.pem);
    let file = |name: &str| setup.path().join(name);
    for i in 0..10 {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--tlsv1.3",
                "--max-time",
                "10",
                "--data-binary",
                "@-",
            ])
            .arg("--cacert")
            .arg(file("server-ca.pem"))
            .arg("--cert")
            .arg(file("revoked.pem"))
            .arg("--key")
            .arg(file("revoked.key"))
            .arg(format!("https://localhost:{}/api", gw.addr.port()))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run curl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("certificate revoked"),
            "try {i}: curl did not print the alert: {stderr}"
        );
    }
}
