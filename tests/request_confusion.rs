//! The request the gate authorizes is the request the upstream acts on
//! (SPEC §10), checked against upstreams that read requests the way real
//! application stacks do: a servlet container that routes on the path with
//! `;` parameters cut off each segment (Tomcat, Jetty, Spring), and a
//! CGI-style stack that reads `X_Client_Roles` and `X-Client-Roles` as one
//! name (WSGI, Rack, PHP, CGI). Each attack here got through before the
//! rules of §10 existed.

mod common;
#[path = "common/servlet.rs"]
mod servlet;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A servlet- and CGI-style upstream. Each request is answered with JSON:
/// the target it received, the path a servlet container routes that target
/// to, the CGI environment (`HTTP_*`) its headers become, and the body.
struct AppUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn app_upstream() -> AppUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    answer(req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    AppUpstream { addr, requests }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_owned();
    let routed = servlet::servlet_route(&target).map(|p| String::from_utf8_lossy(&p).into_owned());
    // CGI/1.1 §4.1.18: HTTP_ + the name upper-cased with `-` as `_`;
    // repeated names are joined with `,`, as WSGI servers do.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let key = format!(
            "HTTP_{}",
            name.as_str().to_ascii_uppercase().replace('-', "_")
        );
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        env.entry(key)
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "target": target,
        "routed": routed,
        "env": env,
        "body": String::from_utf8_lossy(&body),
    });
    Ok(Response::new(Full::new(Bytes::from(json.to_string()))))
}

/// The README's example: `/api` open to any verified client, `/api/billing`
/// for ROLE_BILLING only.
fn setup(upstream: &AppUpstream, listener_keys: &str) -> Setup {
    let mut setup = Setup::new(upstream.addr);
    setup.listener = Some(format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{listener_keys}"
    ));
    setup.extra = r#"
[roles]
default = ["ROLE_USER"]
[[roles.map]]
roles = ["ROLE_BILLING"]
cn = "billing-*"
[authorization]
default = "deny"
[[authorization.rule]]
path = "/api"
roles = []
[[authorization.rule]]
path = "/api/billing"
roles = ["ROLE_BILLING"]
"#
    .into();
    setup
}

fn env(reply: &Reply, key: &str) -> Option<String> {
    reply.json()["env"][key].as_str().map(str::to_owned)
}

// ---------------------------------------------------- path parameters ----

#[tokio::test(flavor = "multi_thread")]
async fn semicolon_parameters_are_refused_by_default_on_http1_and_http2() {
    let upstream = app_upstream().await;
    let setup = setup(&upstream, "");
    let gw = setup.start();
    let user_leaf = setup.ca.issue(&LeafSpec::client("user"));
    let billing_leaf = setup.ca.issue(&LeafSpec::client("billing-1"));

    // The control: the rules themselves work.
    let user = setup.client(&user_leaf);
    let ok = user.get(gw.addr, "/api/items").await.unwrap();
    assert_eq!(ok.status, 200);
    let denied = user.get(gw.addr, "/api/billing/42").await.unwrap();
    assert_gateway_error(&denied, 403, "forbidden", "control");

    let served_before = upstream.requests.load(Ordering::SeqCst);
    let mut refused = 0.0;
    for client in [
        setup.client(&user_leaf),
        setup.client_h2(&user_leaf),
        setup.client(&billing_leaf),
    ] {
        for method in [Method::GET, Method::DELETE] {
            for target in [
                "/api/billing;x/42",
                "/api/items;jsessionid=1",
                "/api/..;/api/billing/1",
            ] {
                let reply = client
                    .request(gw.addr, method.clone(), target, &[], Bytes::new())
                    .await
                    .unwrap();
                assert_gateway_error(&reply, 400, "bad_path", &format!("{method} {target}"));
                refused += 1.0;
            }
        }
    }
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        served_before,
        "no request with a `;` reached the upstream"
    );
    assert_eq!(gw.metric("certgate_requests_total{code=\"400\"}"), refused);
    assert!(
        gw.wait_for_log(&["path parameters"], std::time::Duration::from_secs(5)),
        "the access log says why: {}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_parameters_are_cut_off_for_authorization_and_kept_upstream() {
    let upstream = app_upstream().await;
    let setup = setup(&upstream, "path_parameters = \"allow\"\n");
    let gw = setup.start();
    let user_leaf = setup.ca.issue(&LeafSpec::client("user"));
    let billing_leaf = setup.ca.issue(&LeafSpec::client("billing-1"));

    for (user, billing) in [
        (setup.client(&user_leaf), setup.client(&billing_leaf)),
        (setup.client_h2(&user_leaf), setup.client_h2(&billing_leaf)),
    ] {
        for method in [Method::GET, Method::DELETE] {
            for target in [
                "/api/billing;x/42",
                "/api/billing;jsessionid=1",
                "/api/..;/api/billing/1",
                "/api/items/..;x/billing/7",
            ] {
                let reply = user
                    .request(gw.addr, method.clone(), target, &[], Bytes::new())
                    .await
                    .unwrap();
                assert_gateway_error(&reply, 403, "forbidden", &format!("user {method} {target}"));
            }
        }
        // What the gate allows, the servlet routes to the path it judged.
        for (client, target, forwarded, routed) in [
            (
                &user,
                "/api/items;jsessionid=1",
                "/api/items;jsessionid=1",
                "/api/items",
            ),
            (&user, "/api/a;x/../items", "/api/items", "/api/items"),
            (
                &user,
                "/api/items%3Bx/1",
                "/api/items%3Bx/1",
                "/api/items;x/1",
            ),
            (
                &billing,
                "/api/billing;x/42",
                "/api/billing;x/42",
                "/api/billing/42",
            ),
            (
                &billing,
                "/api/..;/api/billing/1",
                "/api/billing/1",
                "/api/billing/1",
            ),
        ] {
            let reply = client.get(gw.addr, target).await.unwrap();
            assert_eq!(
                reply.status,
                200,
                "{target}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            let json = reply.json();
            assert_eq!(json["target"], forwarded, "{target}");
            assert_eq!(json["routed"], routed, "{target}");
        }
    }
}

// -------------------------------------------------- underscore headers ----

#[tokio::test(flavor = "multi_thread")]
async fn underscore_spellings_cannot_reach_a_cgi_upstream_as_identity_headers() {
    let upstream = app_upstream().await;
    for keys in ["", "underscore_headers = \"keep\"\n"] {
        let setup = setup(&upstream, keys);
        let gw = setup.start();
        let leaf = setup.ca.issue(&LeafSpec::client("user"));
        for client in [setup.client(&leaf), setup.client_h2(&leaf)] {
            let reply = client
                .request(
                    gw.addr,
                    Method::GET,
                    "/api/items",
                    &[
                        ("X_Client_Roles", "ROLE_ADMIN"),
                        ("x_client_subject", "CN=admin"),
                        ("X_Forwarded_For", "6.6.6.6"),
                        ("x-forwarded_proto", "http"),
                        ("X_Real_IP", "6.6.6.6"),
                        ("x_request_id", "forged-id"),
                        ("X_Custom_Flag", "1"),
                    ],
                    Bytes::new(),
                )
                .await
                .unwrap();
            assert_eq!(reply.status, 200);
            let case = format!("config {keys:?}");
            assert_eq!(
                env(&reply, "HTTP_X_CLIENT_ROLES").as_deref(),
                Some("ROLE_USER"),
                "{case}"
            );
            let subject = env(&reply, "HTTP_X_CLIENT_SUBJECT").unwrap();
            assert!(
                subject.contains("CN=user") && !subject.contains("admin"),
                "{case}: {subject}"
            );
            assert_eq!(
                env(&reply, "HTTP_X_FORWARDED_FOR").as_deref(),
                Some("127.0.0.1"),
                "{case}"
            );
            assert_eq!(
                env(&reply, "HTTP_X_FORWARDED_PROTO").as_deref(),
                Some("https"),
                "{case}"
            );
            assert_eq!(env(&reply, "HTTP_X_REAL_IP"), None, "{case}");
            let request_id = env(&reply, "HTTP_X_REQUEST_ID").unwrap();
            assert_ne!(request_id, "forged-id", "{case}");
            let custom = env(&reply, "HTTP_X_CUSTOM_FLAG");
            if keys.is_empty() {
                assert_eq!(custom, None, "dropped by default");
            } else {
                assert_eq!(custom.as_deref(), Some("1"), "kept when asked");
            }
        }
    }
}

// ------------------------------------------------------------- Host ----

#[tokio::test(flavor = "multi_thread")]
async fn host_must_be_one_valid_authority() {
    let upstream = app_upstream().await;
    let setup = setup(&upstream, "");
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("user")));

    let good = raw_exchange(
        &client,
        gw.addr,
        b"GET /api/items HTTP/1.1\r\nhost: api.example:8443\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(good.status, 200);
    assert_eq!(
        env(&good, "HTTP_HOST").as_deref(),
        Some("api.example:8443"),
        "forwarded unchanged"
    );

    let served_before = upstream.requests.load(Ordering::SeqCst);
    let cases: &[(&str, &str)] = &[
        (
            "two Host headers",
            "host: api.example\r\nhost: admin.example\r\n",
        ),
        ("missing Host", ""),
        ("userinfo", "host: user@api.example\r\n"),
        ("path", "host: api.example/admin\r\n"),
        ("bad port", "host: api.example:80x\r\n"),
    ];
    for (name, host_lines) in cases {
        let request = format!("GET /api/items HTTP/1.1\r\n{host_lines}connection: close\r\n\r\n");
        let reply = raw_exchange(&client, gw.addr, request.as_bytes()).await;
        assert_gateway_error(&reply, 400, "bad_host", name);
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), served_before);

    // HTTP/2: a `host` that disagrees with `:authority` (the name a client's
    // TLS and routing used) is refused; one that agrees passes.
    let h2 = setup.client_h2(&setup.ca.issue(&LeafSpec::client("user")));
    let mismatch = h2
        .request(
            gw.addr,
            Method::GET,
            "/api/items",
            &[("host", "admin.example")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_gateway_error(
        &mismatch,
        400,
        "bad_host",
        "h2 host disagrees with :authority",
    );
    let agree = h2
        .request(
            gw.addr,
            Method::GET,
            "/api/items",
            &[("host", "LOCALHOST:443")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        agree.status,
        200,
        "{}",
        String::from_utf8_lossy(&agree.body)
    );
    assert_eq!(
        gw.metric("certgate_requests_total{code=\"400\"}"),
        cases.len() as f64 + 1.0
    );
}

// ------------------------------------------------- Transfer-Encoding ----

#[tokio::test(flavor = "multi_thread")]
async fn only_plain_chunked_framing_reaches_the_upstream() {
    let upstream = app_upstream().await;
    let setup = setup(&upstream, "");
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("user")));
    let head = |te: &str| {
        format!("POST /api/items HTTP/1.1\r\nhost: localhost\r\n{te}connection: close\r\n\r\n")
    };
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";

    let good = raw_exchange(
        &client,
        gw.addr,
        format!("{}{chunked_body}", head("transfer-encoding: Chunked\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(good.status, 200);
    assert_eq!(good.json()["body"], "hello");

    // Both framings: chunked wins and `Content-Length` is dropped before the
    // upstream sees the request (RFC 9112 §6.3), so both read one body.
    let both = raw_exchange(
        &client,
        gw.addr,
        format!(
            "{}{chunked_body}",
            head("content-length: 50\r\ntransfer-encoding: chunked\r\n")
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(both.status, 200);
    assert_eq!(both.json()["body"], "hello");
    assert_eq!(env(&both, "HTTP_CONTENT_LENGTH"), None);

    let served_before = upstream.requests.load(Ordering::SeqCst);
    let refused: &[(&str, &str, u16, &str)] = &[
        (
            "gzip then chunked",
            "transfer-encoding: gzip, chunked\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
        (
            "chunked twice in one",
            "transfer-encoding: chunked, chunked\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
        (
            "chunked in two headers",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
            501,
            "unsupported_transfer_encoding",
        ),
    ];
    for (name, te, status, error) in refused {
        let reply = raw_exchange(
            &client,
            gw.addr,
            format!("{}{chunked_body}", head(te)).as_bytes(),
        )
        .await;
        assert_gateway_error(&reply, *status, error, name);
        assert_eq!(
            reply.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{name}: the connection is not reused after a refused framing"
        );
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), served_before);
    assert_eq!(gw.metric("certgate_requests_total{code=\"501\"}"), 3.0);
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"protocol\",upstream=\"default\"}"),
        0.0
    );
}
