//! WebSocket through the real daemon: over HTTP/1.1 `Upgrade` with a real
//! client and server (Python `websockets`: `tests/fixtures/python/ws_*.py`),
//! and over HTTP/2 (RFC 8441 extended CONNECT) with hyper's HTTP/2 client
//! and tokio-tungstenite. The upgrade is authorized like any GET; the
//! upstream sees identity headers, not the client's forged ones; tunnels
//! are counted, and close when idle, at the end of a drain, and when a CRL
//! reload revokes their certificate.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);
/// Bound for one client run.
const RUN: Duration = Duration::from_secs(30);
const TUNNELS: &str = "certgate_tunnels_active";
const REFUSED_OPEN: &str = "certgate_reload_refused_connections_total";

/// A gateway in front of the WebSocket echo server, with `ROLE_WS`
/// (certificates `ws-*`) required under `/ws`.
struct Ws {
    python: PathBuf,
    setup: Setup,
    _upstream: PyServer,
}

impl Ws {
    /// `None` (the test skips) when the test venv is missing locally.
    fn new() -> Option<Ws> {
        let python = python()?;
        let upstream = PyServer::start(&python, "ws_server.py", &[]);
        let mut setup = Setup::new(upstream.addr());
        setup.extra = r#"
[[roles.map]]
roles = ["ROLE_WS"]
cn = "ws-*"
[authorization]
default = "deny"
[[authorization.rule]]
path = "/ws"
methods = ["GET"]
roles = ["ROLE_WS"]
"#
        .into();
        write(setup.path(), "server-ca.pem", &setup.server_ca.pem);
        Some(Ws {
            python,
            setup,
            _upstream: upstream,
        })
    }

    /// Issues a client certificate with common name `cn`, written as
    /// `<cn>.pem` and `<cn>.key` for the Python client.
    fn leaf(&self, cn: &str) -> Leaf {
        let leaf = self.setup.ca.issue(&LeafSpec::client(cn));
        write(self.setup.path(), &format!("{cn}.pem"), &leaf.chain_pem);
        write(self.setup.path(), &format!("{cn}.key"), &leaf.key_pem);
        leaf
    }

    /// Starts `ws_client.py SCENARIO` as `cn` on `path`.
    fn client(&self, gw: &Gateway, scenario: &str, cn: &str, path: &str, secs: f64) -> PyProcess {
        let file = |name: String| self.setup.path().join(name).display().to_string();
        let args = [
            scenario.to_owned(),
            format!("wss://localhost:{}{path}", gw.addr.port()),
            file("server-ca.pem".into()),
            file(format!("{cn}.pem")),
            file(format!("{cn}.key")),
            secs.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        PyProcess::spawn(&self.python, "ws_client.py", &args)
    }
}

/// The single value of a header in the echo server's report.
fn header<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    let values = report["headers"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no {name} in {report}"));
    assert_eq!(
        values.len(),
        1,
        "{name} arrived {} times: {report}",
        values.len()
    );
    values[0].as_str().unwrap()
}

fn requests(gw: &Gateway, code: u16) -> f64 {
    gw.metric(&format!("certgate_requests_total{{code=\"{code}\"}}"))
}

fn wait_tunnels(gw: &Gateway, n: f64, case: &str) {
    assert!(
        eventually(WAIT, || gw.metric(TUNNELS) == n),
        "{case}: {TUNNELS} is {}, not {n}",
        gw.metric(TUNNELS)
    );
}

// ------------------------------------------- the HTTP/2 client ----

/// A WebSocket over one HTTP/2 stream (RFC 8441): CONNECT with
/// `:protocol = websocket` on a fresh TLS connection that negotiated h2.
/// Returns the response status and, on 200, the WebSocket.
async fn h2_websocket(
    setup: &Setup,
    gw: &Gateway,
    leaf: &Leaf,
    path: &str,
) -> (
    StatusCode,
    Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
) {
    let tls = setup
        .client_h2(leaf)
        .tls(gw.addr)
        .await
        .expect("TLS connect");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    // One exchange first, with the connection driven here: once it is
    // answered, the server's SETTINGS have arrived, and RFC 8441 lets a
    // client send `:protocol` only to a server whose
    // SETTINGS_ENABLE_CONNECT_PROTOCOL said so.
    let mut conn = Box::pin(conn);
    let whoami = Request::get("https://localhost/.certgate/whoami")
        .body(Empty::new())
        .unwrap();
    let reply = tokio::select! {
        reply = sender.send_request(whoami) => reply.expect("whoami"),
        end = &mut conn => panic!("the connection ended first: {end:?}"),
    };
    assert_eq!(reply.status(), 200);
    assert!(
        conn.is_extended_connect_protocol_enabled(),
        "the gateway did not offer SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    tokio::spawn(conn);
    let mut connect = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .header("x-client-subject", "CN=forged")
        .header("x-client-roles", "ROLE_ADMIN")
        .body(Empty::new())
        .unwrap();
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = sender
        .send_request(connect)
        .await
        .expect("extended CONNECT answered");
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        eprintln!("CONNECT {path}: {status} {body:?}");
        return (status, None);
    }
    let upgraded = hyper::upgrade::on(response).await.expect("upgraded stream");
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (status, Some(ws))
}

/// The next text or binary message, within `WAIT`.
async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the WebSocket is open")
            .expect("a message");
        if message.is_text() || message.is_binary() {
            return message;
        }
    }
}

/// Waits up to `timeout` for the WebSocket to end (a close frame, an error
/// or the stream's end); true when it did.
async fn ends_within<S>(ws: &mut WebSocketStream<S>, timeout: Duration) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ------------------------------------------------------ HTTP/1.1 ----

#[tokio::test(flavor = "multi_thread")]
async fn http1_websocket_echoes_and_its_upstream_sees_identity_not_forgeries() {
    let Some(ws) = Ws::new() else { return };
    let leaf = ws.leaf("ws-alice");
    let gw = ws.setup.start();

    // A path that normalization changes: the upstream sees the normalized one.
    let mut client = ws.client(&gw, "echo", "ws-alice", "/ws//chat/./room", 10.0);
    let report = client.expect_line(RUN, "the server's header report");
    let report = report
        .get("report")
        .unwrap_or_else(|| panic!("no upgrade: {report}; logs:\n{}", gw.logs()));
    assert_eq!(report["path"], "/ws/chat/room", "{report}");
    assert_eq!(
        header(report, "x-client-subject"),
        "CN=ws-alice,O=certgate tests"
    );
    assert_eq!(header(report, "x-client-roles"), "ROLE_WS");
    assert_eq!(header(report, "x-client-fingerprint"), leaf.fingerprint());
    assert_eq!(
        header(report, "host"),
        format!("localhost:{}", gw.addr.port())
    );
    assert_eq!(header(report, "upgrade").to_ascii_lowercase(), "websocket");

    let text = client.expect_line(WAIT, "the text echo");
    assert_eq!(text["text"], "hello text", "{text}");
    let binary = client.expect_line(WAIT, "the binary echo");
    assert_eq!(binary["binary"], "000162696e617279ff", "{binary}");
    let end = client.expect_line(WAIT, "the end");
    assert_eq!(end["end"], "done", "{end}");

    assert!(
        eventually(WAIT, || requests(&gw, 101) == 1.0),
        "requests_total{{code=\"101\"}}: {}",
        requests(&gw, 101)
    );
    assert!(
        gw.wait_for_log(
            &[
                "\"message\":\"request\"",
                "\"path\":\"/ws/chat/room\"",
                "\"status\":101"
            ],
            WAIT
        ),
        "no access log line for the upgrade:\n{}",
        gw.logs()
    );
    wait_tunnels(&gw, 0.0, "after the client closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_upgrade_gets_403_and_no_tunnel() {
    let Some(ws) = Ws::new() else { return };
    ws.leaf("intruder");
    ws.leaf("ws-alice");
    let gw = ws.setup.start();

    for (cn, path) in [("intruder", "/ws/chat"), ("ws-alice", "/admin")] {
        let mut client = ws.client(&gw, "echo", cn, path, 10.0);
        let refused = client.expect_line(RUN, "the refusal");
        assert_eq!(refused["refused"], 403, "{cn} on {path}: {refused}");
        let body: serde_json::Value =
            serde_json::from_str(refused["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"], "forbidden", "{body}");
    }
    assert!(eventually(WAIT, || requests(&gw, 403) == 2.0));
    assert_eq!(requests(&gw, 101), 0.0);
    assert_eq!(gw.metric(TUNNELS), 0.0);
    assert_eq!(gw.metric("certgate_authz_denied_total"), 2.0);
}

// -------------------------------------------------------- HTTP/2 ----

#[tokio::test(flavor = "multi_thread")]
async fn http2_extended_connect_reaches_an_http1_websocket_upstream() {
    let Some(ws) = Ws::new() else { return };
    let leaf = ws.leaf("ws-alice");
    let gw = ws.setup.start();

    let (status, socket) = h2_websocket(&ws.setup, &gw, &leaf, "/ws/h2").await;
    assert_eq!(status, 200, "logs:\n{}", gw.logs());
    let mut socket = socket.unwrap();
    wait_tunnels(&gw, 1.0, "one open HTTP/2 tunnel");
    // The upgrade is counted as the 200 the client got (the whoami before
    // it is the other one), never as a 101 it did not see.
    assert!(
        eventually(WAIT, || requests(&gw, 200) == 2.0),
        "requests_total{{code=\"200\"}}: {}",
        requests(&gw, 200)
    );
    assert_eq!(requests(&gw, 101), 0.0);

    let Message::Text(report) = next_message(&mut socket).await else {
        panic!("the report is a text message")
    };
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["path"], "/ws/h2", "{report}");
    // An ordinary HTTP/1.1 Upgrade upstream, with the key the gateway made.
    assert_eq!(header(&report, "upgrade").to_ascii_lowercase(), "websocket");
    assert!(!header(&report, "sec-websocket-key").is_empty());
    assert_eq!(
        header(&report, "x-client-subject"),
        "CN=ws-alice,O=certgate tests"
    );
    assert_eq!(header(&report, "x-client-roles"), "ROLE_WS");
    assert_eq!(header(&report, "host"), "localhost");

    socket.send(Message::text("over h2")).await.unwrap();
    assert_eq!(next_message(&mut socket).await, Message::text("over h2"));
    let bytes = Bytes::from_static(b"\x00\x01h2\xff");
    socket.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_message(&mut socket).await, Message::binary(bytes));

    // A second tunnel, over HTTP/1.1, counts too.
    let mut h1 = ws.client(&gw, "hold", "ws-alice", "/ws/h1", 20.0);
    assert!(h1.expect_line(RUN, "the report").get("report").is_some());
    wait_tunnels(&gw, 2.0, "an HTTP/2 and an HTTP/1.1 tunnel");

    // A closing client reads on until the server's close frame, then goes.
    socket.close(None).await.unwrap();
    assert!(ends_within(&mut socket, WAIT).await, "no close handshake");
    drop(socket);
    wait_tunnels(&gw, 1.0, "after the HTTP/2 tunnel closed");
    drop(h1);
    wait_tunnels(&gw, 0.0, "after the HTTP/1.1 client went away");

    // Denied like a GET on its path.
    let (status, socket) = h2_websocket(&ws.setup, &gw, &leaf, "/admin").await;
    assert_eq!(status, 403);
    assert!(socket.is_none());
}

// ------------------------------------------------- when tunnels end ----

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_close_after_idle_timeout_and_busy_ones_stay() {
    let Some(mut ws) = Ws::new() else { return };
    ws.setup.listener =
        Some("[listener]\naddress = \"127.0.0.1:0\"\nidle_timeout = \"1s\"\n".into());
    let leaf = ws.leaf("ws-alice");
    let gw = ws.setup.start();

    let started = Instant::now();
    let mut idle = ws.client(&gw, "hold", "ws-alice", "/ws/idle", 15.0);
    let mut busy = ws.client(&gw, "chat", "ws-alice", "/ws/busy", 3.0);
    let (_, h2) = h2_websocket(&ws.setup, &gw, &leaf, "/ws/idle-h2").await;
    let mut h2 = h2.expect("HTTP/2 tunnel");

    let end = idle.until("end", RUN);
    assert_eq!(end["end"], "closed", "{end}");
    let t = end["t"].as_f64().unwrap();
    assert!(
        (0.9..4.0).contains(&t),
        "the idle HTTP/1.1 tunnel closed after {t} s: {end}"
    );
    assert!(
        ends_within(&mut h2, Duration::from_secs(4)).await,
        "the idle HTTP/2 tunnel is still open after {:?}",
        started.elapsed()
    );

    // Messages every 100 ms for 3 s, three times the idle timeout.
    let end = busy.until("end", RUN);
    assert_eq!(
        end["end"],
        "done",
        "the busy tunnel was closed: {end}; {:?}",
        busy.seen()
    );
    let echoes = busy
        .seen()
        .iter()
        .filter(|l| l.get("echo").is_some())
        .count();
    assert!(echoes >= 20, "{echoes} echoes: {:?}", busy.seen());
    wait_tunnels(&gw, 0.0, "after all three ended");
}

/// An HTTP/2 tunnel is a stream that outlives its request: its traffic,
/// not `stream_idle_timeout`, keeps it open (the tunnel's own clock is
/// `idle_timeout`).
#[tokio::test(flavor = "multi_thread")]
async fn busy_http2_tunnel_outlives_stream_idle_timeout() {
    let Some(mut ws) = Ws::new() else { return };
    ws.setup.listener = Some(
        "[listener]\naddress = \"127.0.0.1:0\"\nstream_idle_timeout = \"1s\"\nidle_timeout = \"20s\"\n"
            .into(),
    );
    let leaf = ws.leaf("ws-alice");
    let gw = ws.setup.start();
    let (_, socket) = h2_websocket(&ws.setup, &gw, &leaf, "/ws/long-h2").await;
    let mut socket = socket.expect("HTTP/2 tunnel");
    assert!(next_message(&mut socket).await.is_text(), "the report");

    // A message every 200 ms for 3 s, three times stream_idle_timeout.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let text = format!("message {n}");
        socket.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(
            next_message(&mut socket).await,
            Message::text(text),
            "after {:?}; logs:\n{}",
            started.elapsed(),
            gw.logs()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.metric("certgate_stream_idle_timeouts_total"), 0.0);
    wait_tunnels(&gw, 1.0, "the busy HTTP/2 tunnel");
}

#[tokio::test(flavor = "multi_thread")]
async fn crl_reload_closes_the_revoked_clients_tunnels_only() {
    let Some(mut ws) = Ws::new() else { return };
    write(ws.setup.path(), "clients.crl.pem", &ws.setup.ca.crl(&[]));
    ws.setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n".into(),
    );
    let revoked = ws.leaf("ws-revoked");
    ws.leaf("ws-bystander");
    let gw = ws.setup.start();

    let mut victim = ws.client(&gw, "chat", "ws-revoked", "/ws/a", 10.0);
    let mut bystander = ws.client(&gw, "chat", "ws-bystander", "/ws/b", 6.0);
    let (_, h2) = h2_websocket(&ws.setup, &gw, &revoked, "/ws/a-h2").await;
    let mut victim_h2 = h2.expect("HTTP/2 tunnel");
    for (name, client) in [("revoked", &mut victim), ("bystander", &mut bystander)] {
        client.until("echo", RUN);
        assert!(
            client.seen()[0].get("report").is_some(),
            "{name}: {:?}",
            client.seen()
        );
    }
    wait_tunnels(&gw, 3.0, "before the reload");

    replace_atomically(
        ws.setup.path(),
        "clients.crl.pem",
        &ws.setup.ca.crl(&[&revoked]),
    );
    assert!(
        eventually(WAIT, || gw.metric("certgate_config_generation") == 2.0),
        "the CRL was not reloaded; logs:\n{}",
        gw.logs()
    );
    let reloaded = Instant::now();

    let end = victim.until("end", Duration::from_secs(4));
    assert_eq!(end["end"], "closed", "{end}");
    assert!(
        reloaded.elapsed() < Duration::from_millis(2500),
        "the revoked HTTP/1.1 tunnel closed {:?} after the reload",
        reloaded.elapsed()
    );
    assert!(
        ends_within(&mut victim_h2, Duration::from_millis(2500)).await,
        "the revoked HTTP/2 tunnel is open {:?} after the reload",
        reloaded.elapsed()
    );
    assert!(
        gw.wait_for_log(&["\"reason\":\"revoked\"", &revoked.fingerprint()], WAIT),
        "no log line names the revoked certificate:\n{}",
        gw.logs()
    );
    // Its HTTP/1.1 tunnel and its HTTP/2 connection.
    assert!(
        gw.metric(REFUSED_OPEN) >= 2.0,
        "{REFUSED_OPEN}: {}",
        gw.metric(REFUSED_OPEN)
    );

    let before = bystander.seen().len();
    let end = bystander.until("end", RUN);
    assert_eq!(end["end"], "done", "the bystander's tunnel closed: {end}");
    let after = bystander.seen().len() - before;
    assert!(
        after >= 10,
        "the bystander's tunnel stalled: {:?}",
        bystander.seen()
    );
    wait_tunnels(&gw, 0.0, "after the reload and the bystander's end");
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_closes_tunnels_by_shutdown_timeout_and_exits_zero() {
    let Some(mut ws) = Ws::new() else { return };
    ws.setup.listener =
        Some("[listener]\naddress = \"127.0.0.1:0\"\nshutdown_timeout = \"1s\"\n".into());
    let leaf = ws.leaf("ws-alice");
    let mut gw = ws.setup.start();

    let mut h1 = ws.client(&gw, "chat", "ws-alice", "/ws/drain", 20.0);
    h1.until("echo", RUN);
    let (_, h2) = h2_websocket(&ws.setup, &gw, &leaf, "/ws/drain-h2").await;
    let mut h2 = h2.expect("HTTP/2 tunnel");
    wait_tunnels(&gw, 2.0, "before the drain");

    gw.signal("TERM");
    let signalled = Instant::now();
    let end = h1.until("end", Duration::from_secs(5));
    assert_eq!(end["end"], "closed", "{end}");
    let closed_after = signalled.elapsed();
    assert!(
        closed_after < Duration::from_secs(3),
        "the HTTP/1.1 tunnel closed {closed_after:?} after SIGTERM"
    );
    assert!(
        ends_within(&mut h2, Duration::from_secs(3)).await,
        "the HTTP/2 tunnel is open {:?} after SIGTERM",
        signalled.elapsed()
    );
    let mut status = None;
    assert!(
        eventually(WAIT, || {
            status = gw.child.try_wait().unwrap();
            status.is_some()
        }),
        "certgate did not exit after the drain; logs:\n{}",
        gw.logs()
    );
    assert_eq!(status.unwrap().code(), Some(0), "logs:\n{}", gw.logs());
}
