//! gRPC through the real daemon with real gRPC implementations on both
//! sides (grpcio: `tests/fixtures/python/grpc_server.py` and
//! `grpc_client.py`): the four call kinds, status and trailers, deadlines,
//! identity as metadata, gateway-made errors as gRPC statuses, HTTP/2
//! upstreams over h2c and over TLS by ALPN, an HTTP/1.1 client to an HTTP/2
//! upstream, and a CRL reload ending an open bidi call.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;

/// Bound for one client run (its calls carry shorter deadlines).
const CALL: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(5);
const ECHO: &str = "/certgate.test.Echo";

/// A gateway in front of a gRPC upstream, with `ROLE_GRPC` (certificates
/// `grpc-*`) required on the Echo service.
struct Grpc {
    python: PathBuf,
    setup: Setup,
}

impl Grpc {
    /// `None` (the test skips) when the test venv is missing locally.
    fn new(upstream: SocketAddr, protocol: &str) -> Option<Grpc> {
        let python = python()?;
        let mut setup = Setup::new(upstream);
        setup.extra = format!(
            r#"
[[roles.map]]
roles = ["ROLE_GRPC"]
cn = "grpc-*"
[authorization]
default = "deny"
[[authorization.rule]]
path = "{ECHO}"
roles = ["ROLE_GRPC"]
"#
        );
        setup.upstream_protocol(protocol);
        write(setup.path(), "server-ca.pem", &setup.server_ca.pem);
        Some(Grpc { python, setup })
    }

    /// Issues a client certificate with common name `cn` and writes it as
    /// `<cn>.pem` and `<cn>.key` for the client script.
    fn leaf(&self, cn: &str) -> Leaf {
        let leaf = self.setup.ca.issue(&LeafSpec::client(cn));
        write(self.setup.path(), &format!("{cn}.pem"), &leaf.chain_pem);
        write(self.setup.path(), &format!("{cn}.key"), &leaf.key_pem);
        leaf
    }

    fn args(&self, gw: &Gateway, scenario: &str, cn: &str, arg: Option<&str>) -> Vec<String> {
        let file = |name: String| self.setup.path().join(name).display().to_string();
        let mut args = vec![
            scenario.to_owned(),
            gw.addr.to_string(),
            file("server-ca.pem".into()),
            file(format!("{cn}.pem")),
            file(format!("{cn}.key")),
        ];
        args.extend(arg.map(str::to_owned));
        args
    }

    /// Runs one scenario of `grpc_client.py` as client `cn` (see [`Grpc::leaf`]).
    fn call(&self, gw: &Gateway, scenario: &str, cn: &str, arg: Option<&str>) -> serde_json::Value {
        let args = self.args(gw, scenario, cn, arg);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client(&self.python, "grpc_client.py", &args, CALL)
    }

    /// Starts a long `bidi_live` call of `seconds` as client `cn`.
    fn bidi_live(&self, gw: &Gateway, cn: &str, seconds: u32) -> PyProcess {
        let args = self.args(gw, "bidi_live", cn, Some(&seconds.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        PyProcess::spawn(&self.python, "grpc_client.py", &args)
    }
}

/// The h2c gRPC fixture server.
fn grpc_upstream(python: &Path) -> PyServer {
    PyServer::start(python, "grpc_server.py", &[])
}

fn assert_ok(result: &serde_json::Value, case: &str, gw: &Gateway) {
    assert_eq!(
        result["code"],
        "OK",
        "{case}: {result}; logs:\n{}",
        gw.logs()
    );
}

/// The single value of a metadata key the gRPC server received.
fn metadata<'a>(reply: &'a serde_json::Value, key: &str) -> &'a str {
    let values = reply["metadata"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {reply}"));
    assert_eq!(
        values.len(),
        1,
        "{key} arrived {} times: {reply}",
        values.len()
    );
    values[0].as_str().unwrap()
}

fn requests(gw: &Gateway, code: u16) -> f64 {
    gw.metric(&format!("certgate_requests_total{{code=\"{code}\"}}"))
}

// ------------------------------------------------------- the calls ----

#[tokio::test(flavor = "multi_thread")]
async fn unary_streaming_and_bidi_calls_pass_end_to_end() {
    let Some(python) = python() else { return };
    let upstream = grpc_upstream(&python);
    let grpc = Grpc::new(upstream.addr(), "http2").unwrap();
    grpc.leaf("grpc-alice");
    let gw = grpc.setup.start();

    let unary = grpc.call(&gw, "unary", "grpc-alice", None);
    assert_ok(&unary, "unary", &gw);
    assert_eq!(unary["reply"]["request"], "hello");

    let server_stream = grpc.call(&gw, "server_stream", "grpc-alice", None);
    assert_ok(&server_stream, "server-streaming", &gw);
    assert_eq!(
        server_stream["replies"],
        serde_json::json!(["0", "1", "2", "3", "4"])
    );

    let client_stream = grpc.call(&gw, "client_stream", "grpc-alice", None);
    assert_ok(&client_stream, "client-streaming", &gw);
    assert_eq!(client_stream["reply"], "a,b,c");

    let bidi = grpc.call(&gw, "bidi", "grpc-alice", None);
    assert_ok(&bidi, "bidi", &gw);
    assert_eq!(bidi["replies"], serde_json::json!(["one", "two", "three"]));

    // Every call is an ordinary request to the operator: counted under 200
    // and in the access log with its method path.
    assert!(
        eventually(WAIT, || requests(&gw, 200) == 4.0),
        "requests_total{{code=\"200\"}}: {}",
        requests(&gw, 200)
    );
    for method in ["Unary", "ServerStream", "ClientStream", "Bidi"] {
        let path = format!("\"path\":\"{ECHO}/{method}\"");
        assert!(
            gw.wait_for_log(&["\"message\":\"request\"", &path, "\"status\":200"], WAIT),
            "no access log line for {method}:\n{}",
            gw.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_reaches_the_grpc_server_as_metadata_and_forged_metadata_does_not() {
    let Some(python) = python() else { return };
    let upstream = grpc_upstream(&python);
    let grpc = Grpc::new(upstream.addr(), "http2").unwrap();
    let leaf = grpc.leaf("grpc-alice");
    let gw = grpc.setup.start();

    // The client sends x-client-subject: CN=forged and x-client-roles: ROLE_ADMIN.
    let result = grpc.call(&gw, "unary", "grpc-alice", None);
    assert_ok(&result, "unary", &gw);
    let reply = &result["reply"];
    assert_eq!(
        metadata(reply, "x-client-subject"),
        "CN=grpc-alice,O=certgate tests"
    );
    assert_eq!(metadata(reply, "x-client-roles"), "ROLE_GRPC");
    assert_eq!(metadata(reply, "x-client-fingerprint"), leaf.fingerprint());
    assert_eq!(metadata(reply, "x-client-serial"), leaf.serial_hex());
    assert_eq!(metadata(reply, "x-forwarded-proto"), "https");
    // A sane client request id is kept, as for any request.
    assert_eq!(metadata(reply, "x-request-id"), "grpc-test-1");
    // The :authority the client sent, not the upstream's address.
    assert_eq!(reply["authority"], format!("localhost:{}", gw.addr.port()));
    // grpc-timeout reached the server: it saw the client's 10 s deadline
    // (a server without one has an unbounded time remaining).
    let remaining = reply["time_remaining"].as_f64().unwrap();
    assert!(
        remaining > 1.0 && remaining <= 10.0,
        "the server's deadline was {remaining} s, not the client's 10 s: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_ok_status_and_deadline_reach_the_client() {
    let Some(python) = python() else { return };
    let upstream = grpc_upstream(&python);
    let grpc = Grpc::new(upstream.addr(), "http2").unwrap();
    grpc.leaf("grpc-alice");
    let gw = grpc.setup.start();

    // grpc-status and grpc-message come in the upstream's trailers.
    let failed = grpc.call(&gw, "fail", "grpc-alice", None);
    assert_eq!(failed["code"], "FAILED_PRECONDITION", "{failed}");
    assert_eq!(failed["details"], "the echo is closed today", "{failed}");

    // Slow(3 s) under a 0.5 s deadline.
    let started = Instant::now();
    let late = grpc.call(&gw, "deadline", "grpc-alice", None);
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the deadline was not kept: {:?}",
        started.elapsed()
    );
    // The gateway is still serving this client afterwards.
    assert_ok(
        &grpc.call(&gw, "unary", "grpc-alice", None),
        "unary after",
        &gw,
    );
}

// ------------------------------------------- gateway-made errors ----

#[tokio::test(flavor = "multi_thread")]
async fn denied_call_is_permission_denied_with_the_request_id() {
    let Some(python) = python() else { return };
    let upstream = grpc_upstream(&python);
    let grpc = Grpc::new(upstream.addr(), "http2").unwrap();
    grpc.leaf("intruder");
    let gw = grpc.setup.start();

    let result = grpc.call(&gw, "unary", "intruder", None);
    assert_eq!(result["code"], "PERMISSION_DENIED", "{result}");
    let details = result["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("forbidden") && details.contains("grpc-test-1"),
        "grpc-message should name the error and the request id: {result}"
    );
    assert!(
        eventually(WAIT, || requests(&gw, 403) == 1.0),
        "a denied gRPC call is counted under 403; metrics:\n{}",
        gw.metrics()
    );
    assert_eq!(requests(&gw, 200), 0.0, "counted as the 200 it is sent as");
    assert_eq!(gw.metric("certgate_authz_denied_total"), 1.0);
    assert!(
        gw.wait_for_log(
            &[
                "\"message\":\"request\"",
                "\"request_id\":\"grpc-test-1\"",
                &format!("\"path\":\"{ECHO}/Unary\""),
                "forbidden"
            ],
            WAIT
        ),
        "no access log line for the denied call:\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_unavailable() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let Some(grpc) = Grpc::new(closed, "http2") else {
        return;
    };
    grpc.leaf("grpc-alice");
    let gw = grpc.setup.start();

    let result = grpc.call(&gw, "unary", "grpc-alice", None);
    assert_eq!(result["code"], "UNAVAILABLE", "{result}");
    assert!(
        result["details"]
            .as_str()
            .unwrap_or_default()
            .contains("bad_gateway"),
        "{result}"
    );
    assert!(
        eventually(WAIT, || requests(&gw, 502) == 1.0),
        "counted under 502; metrics:\n{}",
        gw.metrics()
    );
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"connect\",upstream=\"default\"}"),
        1.0
    );
}

/// One gRPC-shaped request by hyper's HTTP/2 client, so that the HTTP
/// framing of a gateway-made gRPC error is seen as it is sent.
async fn raw_grpc(setup: &Setup, gw: &Gateway, leaf: &Leaf, path: &str) -> Reply {
    // A length-prefixed message: uncompressed, 5 bytes "hello".
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let headers = [
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
    ];
    setup
        .client_h2(leaf)
        .request(gw.addr, Method::POST, path, &headers, message)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_errors_for_grpc_requests_are_trailers_only_grpc_statuses() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = format!(
        "[authorization]\ndefault = \"deny\"\n[[authorization.rule]]\npath = \"{ECHO}\"\nroles = []\n"
    );
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("grpc-alice"));
    // (path, the HTTP status it stands for, grpc-status, error); 502 is
    // in `unreachable_upstream_is_unavailable`.
    let cases = [
        ("/other.Service/Call", 403, "7", "forbidden"),
        ("/.certgate/nope", 404, "12", "not_found"),
        ("/certgate.test.Echo/%2fUnary", 400, "13", "bad_path"),
    ];
    for (path, http_code, grpc_status, error) in cases {
        let before = requests(&gw, http_code);
        let reply = raw_grpc(&setup, &gw, &leaf, path).await;
        let case = format!("{path} ({http_code})");
        assert_eq!(reply.status, 200, "{case}: {reply:?}");
        assert_eq!(
            reply
                .headers
                .get("grpc-status")
                .map(|v| v.to_str().unwrap()),
            Some(grpc_status),
            "{case}: trailers-only: grpc-status in the one HEADERS frame: {reply:?}"
        );
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/grpc"),
            "{case}: {reply:?}"
        );
        assert!(reply.body.is_empty(), "{case}: no message: {reply:?}");
        let request_id = reply.headers["x-request-id"].to_str().unwrap();
        let message = reply.headers["grpc-message"].to_str().unwrap();
        assert!(
            message.contains(error) && message.contains(request_id),
            "{case}: grpc-message {message:?} should carry {error} and {request_id}"
        );
        assert!(
            eventually(WAIT, || requests(&gw, http_code) == before + 1.0),
            "{case}: not counted under {http_code}; metrics:\n{}",
            gw.metrics()
        );
    }
    assert_eq!(requests(&gw, 200), 0.0, "no error counted as 200");

    // A request that is not gRPC still gets the JSON error.
    let plain = setup.client_h2(&leaf).get(gw.addr, "/other").await.unwrap();
    assert_gateway_error(&plain, 403, "forbidden", "non-gRPC request");
}

// ------------------------------------------ upstream protocols ----

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_speaks_h2_by_alpn_with_http2_and_auto() {
    let Some(python) = python() else { return };
    // The upstream's own CA and certificate (for localhost).
    let upstream_ca = TestCa::root("certgate test upstream CA");
    let cert = upstream_ca.issue(&LeafSpec::server());
    let dir = tempfile::tempdir().unwrap();
    let cert_file = write(dir.path(), "upstream.pem", &cert.chain_pem);
    let key_file = write(dir.path(), "upstream.key", &cert.key_pem);
    let ca_file = write(dir.path(), "upstream-ca.pem", &upstream_ca.pem);
    let upstream = PyServer::start(
        &python,
        "grpc_server.py",
        &[
            "--tls",
            cert_file.to_str().unwrap(),
            key_file.to_str().unwrap(),
        ],
    );
    // grpcio's TLS server speaks only h2, so a call that passes proves ALPN
    // chose it.
    for protocol in ["http2", "auto"] {
        let mut grpc = Grpc::new(upstream.addr(), protocol).unwrap();
        grpc.setup.env.extend([
            (
                "CERTGATE_UPSTREAM__URL".into(),
                format!("https://localhost:{}", upstream.port),
            ),
            (
                "CERTGATE_UPSTREAM__CA".into(),
                ca_file.display().to_string(),
            ),
        ]);
        grpc.leaf("grpc-alice");
        let gw = grpc.setup.start();
        let unary = grpc.call(&gw, "unary", "grpc-alice", None);
        assert_ok(&unary, protocol, &gw);
        assert_eq!(
            unary["reply"]["authority"],
            format!("localhost:{}", gw.addr.port()),
            "{protocol}: the client's :authority, not the upstream url's"
        );
        assert_eq!(
            metadata(&unary["reply"], "x-client-subject"),
            "CN=grpc-alice,O=certgate tests"
        );
        let bidi = grpc.call(&gw, "bidi", "grpc-alice", None);
        assert_ok(&bidi, protocol, &gw);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_and_http2_clients_reach_either_kind_of_upstream_with_their_host() {
    for protocol in ["http1", "http2"] {
        let mut setup = Setup::new(echo_upstream().await);
        setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
        setup.upstream_protocol(protocol);
        let gw = setup.start();
        let leaf = setup.ca.issue(&LeafSpec::client("alice"));
        let expected_version = if protocol == "http2" {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };

        // HTTP/1.1 client with its own Host.
        let reply = raw_http1(&setup.client(&leaf), gw.addr, "GET /v1/items HTTP/1.1\r\n").await;
        assert_eq!(reply.status, 200, "{protocol}: {reply:?}");
        let seen = reply.json();
        assert_eq!(seen["version"], expected_version, "{protocol}: {seen}");
        assert_eq!(authority_seen(&seen), "localhost", "{protocol}: {seen}");
        assert_eq!(
            seen["headers"]["x-client-subject"][0], "CN=alice,O=certgate tests",
            "{protocol}: {seen}"
        );

        // HTTP/2 client: its :authority (with a port) is what the upstream gets.
        let mut conn = setup.client_h2(&leaf).connect(gw.addr).await.unwrap();
        let reply = conn.get("/v1/items").await.unwrap();
        assert_eq!(reply.status, 200, "{protocol}: {reply:?}");
        let seen = reply.json();
        assert_eq!(seen["version"], expected_version, "{protocol}: {seen}");
        assert_eq!(authority_seen(&seen), "localhost", "{protocol}: {seen}");
    }
}

/// The authority an echo upstream request carried: `Host` over HTTP/1.1,
/// `:authority` (in the absolute URI hyper gives) over HTTP/2.
fn authority_seen(echo: &serde_json::Value) -> String {
    if echo["version"] == "HTTP/2.0" {
        let uri: http::Uri = echo["uri"].as_str().unwrap().parse().unwrap();
        assert!(
            echo["headers"]["host"].is_null(),
            "an HTTP/2 upstream gets :authority, not a Host header: {echo}"
        );
        uri.authority().expect("absolute URI").to_string()
    } else {
        let hosts = echo["headers"]["host"].as_array().expect("one Host");
        assert_eq!(hosts.len(), 1, "{echo}");
        hosts[0].as_str().unwrap().to_owned()
    }
}

// ------------------------------------------------ revocation ----

#[tokio::test(flavor = "multi_thread")]
async fn crl_reload_ends_the_revoked_clients_open_bidi_call_only() {
    let Some(python) = python() else { return };
    let upstream = grpc_upstream(&python);
    let mut grpc = Grpc::new(upstream.addr(), "http2").unwrap();
    write(
        grpc.setup.path(),
        "clients.crl.pem",
        &grpc.setup.ca.crl(&[]),
    );
    grpc.setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n".into(),
    );
    let revoked = grpc.leaf("grpc-revoked");
    grpc.leaf("grpc-bystander");
    let gw = grpc.setup.start();

    let mut victim = grpc.bidi_live(&gw, "grpc-revoked", 8);
    let mut bystander = grpc.bidi_live(&gw, "grpc-bystander", 8);
    for (name, call) in [("revoked", &mut victim), ("bystander", &mut bystander)] {
        for _ in 0..3 {
            let line = call.expect_line(CALL, "an echo");
            assert!(
                line.get("echo").is_some(),
                "{name}: {line}; logs:\n{}",
                gw.logs()
            );
        }
    }

    replace_atomically(
        grpc.setup.path(),
        "clients.crl.pem",
        &grpc.setup.ca.crl(&[&revoked]),
    );
    assert!(
        eventually(WAIT, || gw.metric("certgate_config_generation") == 2.0),
        "the CRL was not reloaded; logs:\n{}",
        gw.logs()
    );
    let reloaded = Instant::now();

    // The revoked call ends with an error within ~2 s of the reload.
    let end = victim.until("code", Duration::from_secs(3));
    let ended_after = reloaded.elapsed();
    assert_ne!(end["code"], "OK", "the revoked call ended normally: {end}");
    assert!(
        ended_after < Duration::from_millis(2500),
        "the revoked call ended {ended_after:?} after the reload: {end}"
    );
    assert!(
        gw.wait_for_log(&["\"reason\":\"revoked\"", &revoked.fingerprint()], WAIT),
        "no log line names the revoked certificate:\n{}",
        gw.logs()
    );
    let refused = gw.metric("certgate_reload_refused_connections_total");
    assert!(
        refused >= 1.0,
        "reload_refused_connections_total: {refused}"
    );

    // The other client's call goes on answering after that, to its end.
    let mut echoes_after = 0;
    let last = loop {
        let line = bystander.expect_line(Duration::from_secs(15), "the bystander's call");
        if line.get("echo").is_none() {
            break line;
        }
        echoes_after += 1;
    };
    assert_eq!(last["code"], "OK", "the bystander's call failed: {last}");
    assert!(
        echoes_after >= 10,
        "the bystander's call stalled after the reload: {echoes_after} echoes; {:?}",
        bystander.seen()
    );
}
