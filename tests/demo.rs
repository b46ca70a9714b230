//! `certgate demo`: starts on a development PKI even when port 8080 is
//! taken, listens on `--port`, and prints the admin URL it really serves.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Kills the demo when the test ends, however it ends.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_runs_beside_a_busy_8080_on_the_port_it_is_given() {
    // Port 8080 taken, by this test or by whatever already holds it.
    let _busy = std::net::TcpListener::bind("127.0.0.1:8080");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let child = Command::new(BIN)
        .args(["demo", "--port", &port.to_string(), "--dir"])
        .arg(&pki)
        .env_remove("CERTGATE_CONFIG")
        .env("CERTGATE_LOG", "warn")
        // The admin listener on a port of its own, so that the URL printed
        // must be the one actually bound.
        .env("CERTGATE_ADMIN__ADDRESS", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn certgate demo");
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut printed = Vec::new();
    let admin_url = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("demo printed no admin URL:\n{}", printed.join("\n")));
        printed.push(line.clone());
        if let Some(url) = line.trim().strip_prefix("curl http://") {
            break url.to_owned();
        }
    };
    let text = printed.join("\n");
    assert!(
        text.contains(&format!("listening on https://localhost:{port}")),
        "{text}"
    );
    let admin: std::net::SocketAddr = admin_url
        .strip_suffix("/metrics")
        .expect("a /metrics URL")
        .parse()
        .expect("the admin URL names an IP:port");
    assert_ne!(admin.port(), 9464, "the configured port, not the bound one");
    let (status, body) = http_get_plain(admin, "/metrics");
    assert_eq!(status, 200, "{body}");

    // The demo's own client certificates get through to its echo upstream.
    let user = Leaf {
        cert_pem: std::fs::read_to_string(pki.join("user.pem")).unwrap(),
        chain_pem: std::fs::read_to_string(pki.join("user.pem")).unwrap(),
        key_pem: std::fs::read_to_string(pki.join("user.key")).unwrap(),
        der: rustls::pki_types::pem::PemObject::from_pem_file(pki.join("user.pem")).unwrap(),
        serial: rcgen::SerialNumber::from(vec![1]),
    };
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let client = TestClient::new(&ca, Some(&user), Proto::Http1);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let reply = client.get(addr, "/api/orders").await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}
