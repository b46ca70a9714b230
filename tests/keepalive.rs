//! HTTP/1.1 connections between requests: certgate sets hyper's connection
//! state aside once a response is flushed and the request body read, and
//! builds it anew when the client sends again. These tests hold requests
//! across that boundary with hand-made bytes (pipelined, split, with sized
//! and chunked bodies) and check that a request body is never read as the
//! next request; and that connections presenting the same certificate
//! chain share one credential.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Well over the 250 ms a connection must sit between requests before it
/// is set aside: the next bytes arrive after that has happened.
const PAUSE: Duration = Duration::from_millis(600);

async fn setup() -> Setup {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"deny\"\n\n[[authorization.rule]]\npath = \"/open\"\nroles = []\n\n[[authorization.rule]]\npath = \"/admin\"\nroles = [\"ROLE_ADMIN\"]\n".into();
    setup
}

/// One HTTP/1.1 response: status and body (the echo's JSON or the gateway's).
#[derive(Debug)]
struct Response {
    status: u16,
    body: String,
}

/// Reads `n` responses with Content-Length bodies from `s`.
async fn read_responses<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<Response> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while out.len() < n {
        if let Some((resp, used)) = parse_response(&buf) {
            buf.drain(..used);
            out.push(resp);
            continue;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response within 5 s")
            .expect("read");
        assert!(read > 0, "connection closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..read]);
    }
    assert!(buf.is_empty(), "unexpected bytes after the responses");
    out
}

fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).expect("ASCII head");
    let status = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().expect("content-length"))
        })
        .expect("responses here have a Content-Length");
    if buf.len() < head_end + length {
        return None;
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Some((Response { status, body }, head_end + length))
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_across_idle_pauses_pipelined_and_split() {
    let setup = setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("pooled"));
    let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();

    // Two whole requests and the start of a third in one write.
    tls.write_all(
        b"GET /open/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /open/2 HTTP/1.1\r\nhost: a\r\n\r\nGET /open/3 HT",
    )
    .await
    .unwrap();
    let first = read_responses(&mut tls, 2).await;
    assert_eq!(json(&first[0])["uri"], "/open/1");
    assert_eq!(json(&first[1])["uri"], "/open/2");

    // The rest of the third head after a pause, then a fourth request.
    tokio::time::sleep(PAUSE).await;
    tls.write_all(b"TP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let third = read_responses(&mut tls, 1).await;
    assert_eq!(third[0].status, 200);
    assert_eq!(json(&third[0])["uri"], "/open/3");

    for i in 4..7 {
        tokio::time::sleep(PAUSE).await;
        // A head split over two writes, each after a pause.
        tls.write_all(format!("GET /open/{i} HTTP/1.1\r\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(PAUSE / 3).await;
        tls.write_all(b"host: a\r\n\r\n").await.unwrap();
        let r = read_responses(&mut tls, 1).await;
        assert_eq!(json(&r[0])["uri"], format!("/open/{i}"));
        assert_eq!(
            json(&r[0])["headers"]["x-client-subject"][0],
            "CN=pooled,O=certgate tests"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sized_and_chunked_bodies_then_more_requests() {
    let setup = setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("uploader"));
    let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();

    // A sized body sent after a pause behind its head.
    tls.write_all(b"POST /open/sized HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(PAUSE).await;
    tls.write_all(b"hello world").await.unwrap();
    let r = read_responses(&mut tls, 1).await;
    assert_eq!(json(&r[0])["body_bytes"], 11, "{}", r[0].body);

    // A chunked body whose last chunk comes after a pause, with a
    // pipelined GET behind it.
    tokio::time::sleep(PAUSE).await;
    tls.write_all(b"POST /open/chunked HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(PAUSE).await;
    tls.write_all(b"6\r\n world\r\n0\r\n\r\nGET /open/after HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_responses(&mut tls, 2).await;
    assert_eq!(json(&r[0])["body_bytes"], 11, "{}", r[0].body);
    assert_eq!(json(&r[1])["uri"], "/open/after");

    tokio::time::sleep(PAUSE).await;
    tls.write_all(b"GET /open/last HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        json(&read_responses(&mut tls, 1).await[0])["uri"],
        "/open/last"
    );
}

/// A denied request's body is not read; bytes of it that arrive later must
/// never be taken for a request, whether the connection is then closed or
/// kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_unread_body_is_never_parsed_as_a_request() {
    let setup = setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("smuggler"));
    let smuggled = b"GET /open/smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    for (what, framing) in [
        ("sized", format!("content-length: {}\r\n", smuggled.len())),
        ("chunked", "transfer-encoding: chunked\r\n".to_string()),
    ] {
        let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();
        tls.write_all(format!("POST /admin/x HTTP/1.1\r\nhost: a\r\n{framing}\r\n").as_bytes())
            .await
            .unwrap();
        let denied = read_responses(&mut tls, 1).await;
        assert_eq!(denied[0].status, 403, "{what}");

        tokio::time::sleep(PAUSE).await;
        let body = if what == "chunked" {
            [
                format!("{:x}\r\n", smuggled.len()).into_bytes(),
                smuggled.to_vec(),
                b"\r\n0\r\n\r\n".to_vec(),
            ]
            .concat()
        } else {
            smuggled.to_vec()
        };
        // The gateway may already have closed: a failed write is fine.
        let _ = tls.write_all(&body).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            !rest.contains("/open/smuggled"),
            "{what}: body bytes were served as a request:\n{rest}"
        );
    }
    assert!(
        !gw.logs().contains("/open/smuggled"),
        "smuggled request reached the upstream"
    );
}

/// An upstream that answers as soon as it has a request head and then
/// reads (and drops) whatever else the connection brings.
async fn early_answering_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                    .await;
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// The upstream answers before the request body is all there; the client
/// then sends the rest after a pause. hyper is still reading that body, so
/// the connection must not be set aside: the rest is body, not a request.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_still_arriving_after_the_response_is_never_parsed_as_a_request() {
    let mut setup = Setup::new(early_answering_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("slow-uploader"));
    let mut tls = setup.client(&leaf).tls(gw.addr).await.unwrap();
    let smuggled = b"GET /open/smuggled HTTP/1.1\r\nhost: a\r\n\r\n";
    let length = 10 + smuggled.len();
    tls.write_all(
        format!("POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: {length}\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await
    .unwrap();
    let answered = read_responses(&mut tls, 1).await;
    assert_eq!(
        (answered[0].status, answered[0].body.as_str()),
        (200, "early")
    );

    tokio::time::sleep(PAUSE).await;
    let _ = tls.write_all(smuggled).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.read_to_end(&mut rest)).await;
    assert!(
        rest.is_empty(),
        "the rest of the body was answered as a request:\n{}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        !gw.logs().contains("/open/smuggled"),
        "smuggled request was served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_presenting_one_chain_share_its_credential() {
    let mut setup = setup().await;
    setup.extra.push_str(
        "\n[roles]\ndefault = [\"ROLE_USER\"]\n\n[[roles.map]]\ncn = \"admin-*\"\nroles = [\"ROLE_ADMIN\"]\n",
    );
    let gw = setup.start();
    let admin = setup.ca.issue(&LeafSpec::client("admin-1"));
    let user = setup.ca.issue(&LeafSpec::client("user-1"));
    let status = |gw: &Gateway| -> serde_json::Value {
        serde_json::from_str(&gw.admin_get("/status").1).unwrap()
    };

    let mut conns = Vec::new();
    for (cn, leaf, n) in [("admin-1", &admin, 3), ("user-1", &user, 2)] {
        for _ in 0..n {
            conns.push((cn, setup.client(leaf).connect(gw.addr).await.unwrap()));
        }
    }
    assert!(eventually(Duration::from_secs(2), || status(&gw)
        ["connections_active"]
        == 5));
    assert_eq!(status(&gw)["client_certificates_active"], 2);
    // Every connection gets its own certificate's identity and roles.
    for (cn, conn) in &mut conns {
        let reply = conn.get("/admin/x").await.unwrap();
        let expected = if *cn == "admin-1" { 200 } else { 403 };
        assert_eq!(reply.status, expected, "{cn}");
        let who = conn.get("/.certgate/whoami").await.unwrap().json();
        assert_eq!(who["subject"], format!("CN={cn},O=certgate tests"));
    }
    // Grants are counted per connection, shared credential or not.
    assert_eq!(
        gw.metric("certgate_role_grants_total{role=\"ROLE_ADMIN\"}"),
        3.0
    );
    assert_eq!(
        gw.metric("certgate_role_grants_total{role=\"ROLE_USER\"}"),
        5.0
    );

    conns.retain(|(cn, _)| *cn != "admin-1");
    assert!(
        eventually(Duration::from_secs(2), || status(&gw)
            ["client_certificates_active"]
            == 1),
        "{}",
        status(&gw)
    );
    conns.clear();
    assert!(eventually(Duration::from_secs(2), || status(&gw)
        ["client_certificates_active"]
        == 0));
    // A chain seen again after its last connection left gets a new credential.
    let reply = setup.client(&admin).get(gw.addr, "/admin/x").await.unwrap();
    assert_eq!(reply.status, 200);
}
