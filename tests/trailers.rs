//! Trailers through the real daemon, both ways, for every pairing of an
//! HTTP/1.1 or HTTP/2 client with an HTTP/1.1 or HTTP/2 (h2c) upstream.
//! The upstream is a small hyper server in this test that reports the
//! request trailers it received and answers with trailers of its own. On
//! HTTP/1.1 the rules are the protocol's: a response carries trailers to a
//! client that sent `TE: trailers`, for fields the upstream declared in
//! `Trailer`; request trailers are the ones the client declared. A trailer
//! cannot carry identity: a forged `x-client-*` trailer never reaches the
//! upstream.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// A body of one data frame and then `trailers`, of unknown length, so that
/// HTTP/1.1 sends it chunked.
fn with_trailers(data: Bytes, trailers: &[(&str, &str)]) -> Frames {
    let mut map = HeaderMap::new();
    for (k, v) in trailers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(data)),
        Ok(Frame::trailers(map)),
    ]))
}

fn to_map(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        map.entry(k.as_str().to_owned())
            .or_default()
            .push(v.to_str().unwrap_or("<non-ascii>").to_owned());
    }
    map
}

/// The upstream: reads the whole request, then answers with a JSON report
/// (version, headers, body, request trailers) and the trailers
/// `x-checksum` and `grpc-status`, declared in `Trailer`.
async fn report(req: Request<Incoming>) -> Result<Response<Frames>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await;
    let (body, trailers) = match collected {
        Ok(c) => {
            let trailers = c.trailers().map(to_map);
            (
                String::from_utf8_lossy(&c.to_bytes()).into_owned(),
                trailers,
            )
        }
        Err(e) => (format!("<body error: {e}>"), None),
    };
    let json = serde_json::json!({
        "version": format!("{:?}", parts.version),
        "headers": to_map(&parts.headers),
        "body": body,
        "trailers": trailers,
    });
    let mut response = Response::new(with_trailers(
        Bytes::from(json.to_string()),
        &[("x-checksum", "c0ffee"), ("grpc-status", "0")],
    ));
    response.headers_mut().insert(
        http::header::TRAILER,
        HeaderValue::from_static("x-checksum, grpc-status"),
    );
    Ok(response)
}

/// Serves [`report`] over HTTP/1.1 and h2c (prior knowledge).
async fn trailer_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service_fn(report))
                    .await;
            });
        }
    });
    addr
}

/// What the client got: the upstream's report and the response trailers.
struct Exchange {
    status: u16,
    report: serde_json::Value,
    trailers: Option<HeaderMap>,
}

/// One POST with a body and request trailers (`x-checksum`, and a forged
/// `x-client-roles`), both declared in `Trailer`; with `te: trailers` when
/// `te` is set.
async fn exchange(setup: &Setup, gw: &Gateway, leaf: &Leaf, proto: Proto, te: bool) -> Exchange {
    let client = TestClient::new(&setup.server_ca.pem, Some(leaf), proto);
    let tls = TokioIo::new(client.tls(gw.addr).await.expect("TLS connect"));
    let mut request = Request::post(match proto {
        Proto::Http1 => "/v1/upload",
        Proto::Http2 => "https://localhost/v1/upload",
    })
    .header("trailer", "x-checksum, x-client-roles");
    if proto == Proto::Http1 {
        request = request.header("host", "localhost");
    }
    if te {
        request = request.header("te", "trailers");
    }
    let request = request
        .body(with_trailers(
            Bytes::from_static(b"payload"),
            &[("x-checksum", "42"), ("x-client-roles", "ROLE_ADMIN")],
        ))
        .unwrap();
    let response = match proto {
        Proto::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(tls).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await
        }
        Proto::Http2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), tls)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await
        }
    }
    .expect("response");
    let status = response.status().as_u16();
    let collected = response.into_body().collect().await.expect("whole body");
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    let report = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::json!({ "raw": String::from_utf8_lossy(&body) }));
    Exchange {
        status,
        report,
        trailers,
    }
}

async fn gateway(protocol: &str) -> (Setup, Gateway, Leaf) {
    let mut setup = Setup::new(trailer_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup.upstream_protocol(protocol);
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("alice"));
    (setup, gw, leaf)
}

#[tokio::test(flavor = "multi_thread")]
async fn trailers_pass_both_ways_for_every_client_and_upstream_protocol() {
    for protocol in ["http1", "http2"] {
        let (setup, gw, leaf) = gateway(protocol).await;
        let upstream_version = if protocol == "http2" {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        for proto in [Proto::Http1, Proto::Http2] {
            let case = format!("{proto:?} client, {protocol} upstream");
            let got = exchange(&setup, &gw, &leaf, proto, true).await;
            assert_eq!(
                got.status,
                200,
                "{case}: {}; logs:\n{}",
                got.report,
                gw.logs()
            );
            let report = &got.report;
            assert_eq!(report["version"], upstream_version, "{case}: {report}");
            assert_eq!(report["body"], "payload", "{case}: {report}");

            // Request trailers: the declared one arrives, the forged identity
            // does not (neither as a trailer nor as a header).
            let trailers = &report["trailers"];
            assert_eq!(
                trailers["x-checksum"],
                serde_json::json!(["42"]),
                "{case}: {report}"
            );
            assert!(
                !report.to_string().contains("ROLE_ADMIN"),
                "{case}: a forged x-client-roles trailer reached the upstream: {report}"
            );
            assert_eq!(
                report["headers"]["te"],
                serde_json::json!(["trailers"]),
                "{case}: te: trailers forwarded: {report}"
            );

            // Response trailers.
            let trailers = got
                .trailers
                .unwrap_or_else(|| panic!("{case}: no response trailers; {report}"));
            assert_eq!(trailers["x-checksum"], "c0ffee", "{case}: {trailers:?}");
            assert_eq!(trailers["grpc-status"], "0", "{case}: {trailers:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_client_without_te_trailers_gets_the_body_and_no_trailers() {
    for protocol in ["http1", "http2"] {
        let (setup, gw, leaf) = gateway(protocol).await;
        let got = exchange(&setup, &gw, &leaf, Proto::Http1, false).await;
        assert_eq!(got.status, 200, "{protocol}: {}", got.report);
        assert_eq!(got.report["body"], "payload", "{protocol}: {}", got.report);
        assert!(
            got.trailers.is_none(),
            "{protocol}: trailers sent to a client that did not ask: {:?}",
            got.trailers
        );
        // Request trailers still pass: the client declared them.
        assert_eq!(
            got.report["trailers"]["x-checksum"],
            serde_json::json!(["42"]),
            "{protocol}: {}",
            got.report
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn te_reaches_the_upstream_as_trailers_only() {
    for protocol in ["http1", "http2"] {
        let mut setup = Setup::new(echo_upstream().await);
        setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
        setup.upstream_protocol(protocol);
        let gw = setup.start();
        let client = setup.client(&setup.ca.issue(&LeafSpec::client("alice")));
        // (what the client sends, what the upstream gets)
        for (sent, forwarded) in [
            ("trailers", Some("trailers")),
            ("gzip, trailers", Some("trailers")),
            ("gzip", None),
        ] {
            let head = format!("GET /v1/x HTTP/1.1\r\nte: {sent}\r\n");
            let reply = raw_http1(&client, gw.addr, &head).await;
            assert_eq!(reply.status, 200, "{protocol}, te: {sent}: {reply:?}");
            let seen = reply.json();
            let te = seen["headers"]["te"].as_array().map(|v| {
                assert_eq!(v.len(), 1, "{protocol}, te: {sent}: {seen}");
                v[0].as_str().unwrap().to_owned()
            });
            assert_eq!(te.as_deref(), forwarded, "{protocol}, te: {sent}: {seen}");
        }
    }
}
