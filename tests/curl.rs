//! The gateway as operators first meet it: driven by the real `curl` binary
//! (OpenSSL, nghttp2), not by a Rust client that shares rustls with the
//! server. Each test skips with a printed reason when curl is missing; CI
//! installs it.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// A running gateway (every path open to verified clients) plus the PEM
/// files curl reads.
struct CurlSetup {
    setup: Setup,
    gw: Gateway,
    leaf: Leaf,
}

impl CurlSetup {
    async fn start() -> CurlSetup {
        let mut setup = Setup::new(echo_upstream().await);
        setup.extra =
            "[roles]\ndefault = [\"ROLE_USER\"]\n[authorization]\ndefault = \"authenticated\"\n"
                .into();
        let leaf = setup.ca.issue(&LeafSpec::client("curl-client"));
        write(setup.path(), "server-ca.pem", &setup.server_ca.pem);
        write(setup.path(), "client.pem", &leaf.chain_pem);
        write(setup.path(), "client.key", &leaf.key_pem);
        let gw = setup.start();
        CurlSetup { setup, gw, leaf }
    }

    fn file(&self, name: &str) -> String {
        self.setup.path().join(name).to_string_lossy().into_owned()
    }

    /// Runs curl against `path` on the gateway, presenting the client
    /// certificate when `with_cert`; stdout ends with a line
    /// `<status> <http version>`.
    async fn curl(&self, path: &str, with_cert: bool, extra: &[&str]) -> Output {
        let port = self.gw.addr.port();
        let mut args: Vec<String> = vec![
            "--silent".into(),
            "--show-error".into(),
            "--max-time".into(),
            "10".into(),
            "--resolve".into(),
            format!("localhost:{port}:127.0.0.1"),
            "--cacert".into(),
            self.file("server-ca.pem"),
            "--write-out".into(),
            "\n%{http_code} %{http_version}".into(),
        ];
        if with_cert {
            args.extend([
                "--cert".into(),
                self.file("client.pem"),
                "--key".into(),
                self.file("client.key"),
            ]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(format!("https://localhost:{port}{path}"));
        tokio::task::spawn_blocking(move || {
            Command::new("curl").args(&args).output().expect("run curl")
        })
        .await
        .expect("curl task")
    }
}

/// Splits curl's stdout into (status, http version, body).
fn parse(out: &Output) -> (u16, String, serde_json::Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, trailer) = stdout.rsplit_once('\n').expect("write-out line");
    let (status, version) = trailer.split_once(' ').expect("status and version");
    let body = serde_json::from_str(body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {body}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status.parse().expect("status"), version.to_owned(), body)
}

fn curl_missing() -> bool {
    if have("curl") {
        return false;
    }
    eprintln!("skipping: curl is not installed (CI installs it)");
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_client_certificate_gets_identity_headers() {
    if curl_missing() {
        return;
    }
    let t = CurlSetup::start().await;
    let out = t
        .curl(
            "/v1/items",
            true,
            &["--http1.1", "--header", "X-Client-Roles: ROLE_ADMIN"],
        )
        .await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, version, echo) = parse(&out);
    assert_eq!((status, version.as_str()), (200, "1.1"));
    let header = |name: &str| echo["headers"][name].clone();
    assert_eq!(
        header("x-client-subject"),
        serde_json::json!(["CN=curl-client,O=certgate tests"])
    );
    assert_eq!(
        header("x-client-fingerprint"),
        serde_json::json!([t.leaf.fingerprint()])
    );
    assert_eq!(
        header("x-client-roles"),
        serde_json::json!(["ROLE_USER"]),
        "curl's forged roles are dropped"
    );
    assert_eq!(header("x-forwarded-proto"), serde_json::json!(["https"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_without_client_certificate_fails() {
    if curl_missing() {
        return;
    }
    let t = CurlSetup::start().await;
    let out = t.curl("/v1/items", false, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "curl without a certificate got through: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Which error curl reports depends on when the alert overtakes it: the
    // TLS 1.3 alert itself (56, "tlsv13 alert certificate required"), a
    // failed send (55) or, with TLS 1.2 semantics, a failed handshake (35).
    // The metric below says why the gateway refused.
    assert!(
        matches!(out.status.code(), Some(35 | 55 | 56)),
        "unexpected curl error: {stderr}"
    );
    assert!(
        eventually(Duration::from_secs(5), || t
            .gw
            .metric("certgate_tls_handshakes_total{result=\"no_client_cert\"}")
            == 1.0),
        "refusal not counted as no_client_cert:\n{}",
        t.gw.metrics()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http2_works() {
    if curl_missing() {
        return;
    }
    let t = CurlSetup::start().await;
    let out = t.curl("/v2/items?page=2", true, &["--http2"]).await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, version, echo) = parse(&out);
    assert_eq!(
        (status, version.as_str()),
        (200, "2"),
        "ALPN must select h2"
    );
    assert_eq!(echo["uri"], "/v2/items?page=2");
    assert_eq!(
        echo["headers"]["x-client-fingerprint"],
        serde_json::json!([t.leaf.fingerprint()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_path_as_is_dotdot_gets_400() {
    if curl_missing() {
        return;
    }
    let t = CurlSetup::start().await;
    let out = t.curl("/../etc/passwd", true, &["--path-as-is"]).await;
    let (status, _, body) = parse(&out);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_path");
    // Without --path-as-is curl resolves the dots itself: the gateway sees a clean path.
    let (status, _, echo) = parse(&t.curl("/../etc/passwd", true, &[]).await);
    assert_eq!((status, echo["uri"].as_str()), (200, Some("/etc/passwd")));
}

/// A 56 KiB HTTP/2 header list (90 fields of 640 bytes, as a client with
/// large cookies or tokens sends): the gateway's own final 431, counted and
/// logged like any refusal, never h2's bare 431 and stream reset or a
/// REFUSED_STREAM that tells curl to retry on new connections. (Past 64 KiB
/// curl's nghttp2 refuses to send a header block at all, whatever the
/// server allows: that REFUSED_STREAM is the client's own.)
#[tokio::test(flavor = "multi_thread")]
async fn curl_http2_header_block_over_the_limit_gets_a_final_431() {
    if curl_missing() {
        return;
    }
    let t = CurlSetup::start().await;
    let value = "a".repeat(640);
    let headers: Vec<String> = (0..90).map(|i| format!("x-h{i}: {value}")).collect();
    let mut args = vec!["--http2"];
    for h in &headers {
        args.extend(["--header", h.as_str()]);
    }
    let out = t.curl("/v2/items", true, &args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (status, version, body) = parse(&out);
    assert_eq!((status, version.as_str()), (431, "2"), "{stderr}");
    assert_eq!(body["error"], "request_header_fields_too_large");
    assert!(!stderr.contains("REFUSED_STREAM"), "{stderr}");
    assert_eq!(t.gw.metric("certgate_requests_total{code=\"431\"}"), 1.0);
    assert_eq!(
        t.gw.metric("certgate_connections_total"),
        1.0,
        "curl did not retry on new connections"
    );
}
