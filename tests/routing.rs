//! Several upstreams (SPEC §12): routes by path and host, endpoints
//! balanced round robin, passive and active health, 503 when no endpoint
//! is healthy, and pools that survive reloads which do not touch them.
//! The upstreams are real HTTP/1.1 and HTTP/2 (h2c) servers on loopback that
//! name themselves and count the connections they accept.

mod common;

use std::time::Duration;

use common::*;

const GENERATION: &str = "certgate_config_generation";

fn endpoint_up(gw: &Gateway, upstream: &str, addr: std::net::SocketAddr) -> f64 {
    gw.metric(&format!(
        "certgate_upstream_endpoint_up{{endpoint=\"{addr}\",upstream=\"{upstream}\"}}"
    ))
}

fn wait_generation(gw: &Gateway, generation: u64) {
    assert!(
        eventually(Duration::from_secs(3), || gw.metric(GENERATION)
            == generation as f64),
        "generation stayed {}; logs:\n{}",
        gw.metric(GENERATION),
        gw.logs()
    );
}

/// A GET of `path`, to `host` when given.
async fn get(conn: &mut Conn, path: &str, host: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = host.map(|h| (":authority", h)).into_iter().collect();
    conn.request(http::Method::GET, path, &headers, bytes::Bytes::new())
        .await
        .expect("request")
}

/// Which upstream answered, or the gateway's error.
async fn who(conn: &mut Conn, path: &str, host: Option<&str>) -> String {
    let reply = get(conn, path, host).await;
    match reply.headers.get("x-upstream") {
        Some(name) => name.to_str().unwrap().to_owned(),
        None => format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body)),
    }
}

/// The HTTP version the upstream received the request in.
async fn upstream_version(conn: &mut Conn, path: &str, host: Option<&str>) -> String {
    let reply = get(conn, path, host).await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    reply.headers["x-upstream-version"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn upstream_section(name: &str, endpoints: &[&NamedUpstream], extra: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    format!(
        "[upstreams.{name}]\nurl = \"http://{}\"\nendpoints = [{}]\nconnect_timeout = \"1s\"\ntimeout = \"5s\"\nhealth_interval = \"1s\"\n{extra}\n",
        endpoints[0].addr,
        list.join(", ")
    )
}

const OPEN: &str = "[authorization]\ndefault = \"authenticated\"\n";

/// A default upstream `main`, and `billing` with endpoints `b1` and `b2`
/// (its `extra` keys added) serving `/billing`.
async fn billing_with_two_endpoints(
    extra: &str,
) -> (NamedUpstream, NamedUpstream, NamedUpstream, Setup) {
    let (main, b1, b2) = (
        NamedUpstream::start("main").await,
        NamedUpstream::start("b1").await,
        NamedUpstream::start("b2").await,
    );
    let mut setup = Setup::new(main.addr);
    setup.extra = format!(
        "{OPEN}{}[[route]]\npath = \"/billing\"\nupstream = \"billing\"\n",
        upstream_section("billing", &[&b1, &b2], extra)
    );
    (main, b1, b2, setup)
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_path_and_host_reach_three_upstreams() {
    let (main, billing, reports) = (
        NamedUpstream::start("main").await,
        NamedUpstream::start("billing").await,
        NamedUpstream::start_h2("reports").await,
    );
    let mut setup = Setup::new(main.addr);
    setup.extra = format!(
        "{OPEN}{}{}[[route]]\npath = \"/billing\"\nupstream = \"billing\"\n\n[[route]]\npath = \"/\"\nhost = \"reports.example.org\"\nupstream = \"reports\"\n",
        upstream_section("billing", &[&billing], ""),
        upstream_section("reports", &[&reports], "protocol = \"http2\"\n"),
    );
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("router")));
    let mut conn = client.connect(gw.addr).await.unwrap();
    assert_eq!(who(&mut conn, "/billing/42", None).await, "billing");
    assert_eq!(who(&mut conn, "/billingx", None).await, "main");
    assert_eq!(who(&mut conn, "/other", None).await, "main");
    assert_eq!(
        who(&mut conn, "/other", Some("reports.example.org:8443")).await,
        "reports"
    );
    // The longest path wins over a route with a host but a shorter path.
    assert_eq!(
        who(&mut conn, "/billing/1", Some("reports.example.org")).await,
        "billing"
    );
    // Routing follows the normalized path, as authorization does.
    assert_eq!(who(&mut conn, "/x/../billing/7", None).await, "billing");
    let mut h2 = setup
        .client_h2(&setup.ca.issue(&LeafSpec::client("router2")))
        .connect(gw.addr)
        .await
        .unwrap();
    assert_eq!(who(&mut h2, "/billing/42", None).await, "billing");
    // reports speaks HTTP/2 to the gateway whatever the client speaks, and
    // billing HTTP/1.1.
    let reports_host = Some("reports.example.org");
    assert_eq!(
        upstream_version(&mut conn, "/r", reports_host).await,
        "HTTP/2.0"
    );
    assert_eq!(
        upstream_version(&mut h2, "/r", reports_host).await,
        "HTTP/2.0"
    );
    assert_eq!(
        upstream_version(&mut h2, "/billing/1", None).await,
        "HTTP/1.1"
    );
    assert_eq!(
        gw.metric("certgate_upstream_requests_total{code=\"200\",upstream=\"billing\"}"),
        5.0
    );
    assert_eq!(
        gw.metric("certgate_upstream_requests_total{code=\"200\",upstream=\"reports\"}"),
        3.0
    );
    assert_eq!(
        gw.metric("certgate_upstream_requests_total{code=\"200\",upstream=\"default\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_endpoints_share_the_load_within_ten_percent() {
    let (main, b1, b2, setup) = billing_with_two_endpoints("").await;
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("loader")));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let mut conn = client.connect(gw.addr).await.unwrap();
        handles.push(tokio::spawn(async move {
            for _ in 0..250 {
                let reply = conn.get("/billing/x").await.unwrap();
                assert_eq!(reply.status, 200);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let (s1, s2) = (b1.served(), b2.served());
    assert_eq!(s1 + s2, 1000);
    assert!((450..=550).contains(&s1), "b1 served {s1}, b2 {s2}");
    assert_eq!(main.served(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_endpoint_rests_after_three_failed_connects_and_comes_back() {
    let (_main, mut b1, b2, setup) = billing_with_two_endpoints("").await;
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("prober")));
    b1.stop();
    // A refused connect sent nothing: the other endpoint takes the request.
    for _ in 0..10 {
        assert_eq!(client.get(gw.addr, "/billing/x").await.unwrap().status, 200);
    }
    assert_eq!(
        endpoint_up(&gw, "billing", b1.addr),
        0.0,
        "{}",
        gw.metrics()
    );
    assert_eq!(endpoint_up(&gw, "billing", b2.addr), 1.0);
    assert!(gw.wait_for_log(
        &["upstream endpoint resting", &b1.addr.to_string()],
        Duration::from_secs(1)
    ));
    b1.restart().await;
    // Back after its rest (health_interval), on the next request that tries it.
    let before = b1.served();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b1.served() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "b1 never served again; logs:\n{}",
            gw.logs()
        );
        assert_eq!(client.get(gw.addr, "/billing/x").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(endpoint_up(&gw, "billing", b1.addr), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_healthy_endpoint_is_503_no_healthy_upstream() {
    let (_main, mut b1, mut b2, setup) = billing_with_two_endpoints("").await;
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("unlucky")));
    b1.stop();
    b2.stop();
    let mut last = None;
    for _ in 0..6 {
        last = Some(client.get(gw.addr, "/billing/x").await.unwrap());
    }
    assert_gateway_error(
        &last.unwrap(),
        503,
        "no_healthy_upstream",
        "all endpoints resting",
    );
    assert_eq!(endpoint_up(&gw, "billing", b1.addr), 0.0);
    assert_eq!(endpoint_up(&gw, "billing", b2.addr), 0.0);
    assert!(
        gw.metric(
            "certgate_upstream_errors_total{kind=\"no_healthy_upstream\",upstream=\"billing\"}"
        ) >= 1.0
    );
    assert!(
        gw.metric("certgate_upstream_errors_total{kind=\"connect\",upstream=\"billing\"}") >= 1.0
    );
    // The default upstream is another pool and is untouched.
    assert_eq!(client.get(gw.addr, "/other").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_health_check_takes_an_endpoint_out_and_back() {
    let (_main, b1, _b2, setup) =
        billing_with_two_endpoints("health_check_path = \"/health\"").await;
    let gw = setup.start();
    b1.set_healthy(false);
    assert!(
        eventually(Duration::from_secs(4), || endpoint_up(
            &gw, "billing", b1.addr
        ) == 0.0),
        "{}",
        gw.metrics()
    );
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("checked")));
    let before = b1.served();
    for _ in 0..10 {
        assert_eq!(client.get(gw.addr, "/billing/x").await.unwrap().status, 200);
    }
    assert_eq!(b1.served(), before, "a failing endpoint got requests");
    b1.set_healthy(true);
    assert!(
        eventually(Duration::from_secs(4), || endpoint_up(
            &gw, "billing", b1.addr
        ) == 1.0),
        "{}",
        gw.metrics()
    );
    assert!(gw.wait_for_log(
        &["upstream health check failed", "\"status\":503"],
        Duration::from_secs(1)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_reload_keeps_upstream_connections_and_an_upstream_change_drains_only_its_pool() {
    let (main, billing) = (
        NamedUpstream::start("main").await,
        NamedUpstream::start("billing").await,
    );
    let mut setup = Setup::new(main.addr);
    write(setup.path(), "clients.crl.pem", &setup.ca.crl(&[]));
    setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n".into(),
    );
    let billing_section = |timeout: &str| {
        upstream_section("billing", &[&billing], "")
            .replace("timeout = \"5s\"", &format!("timeout = \"{timeout}\""))
    };
    setup.extra = format!(
        "{OPEN}{}[[route]]\npath = \"/billing\"\nupstream = \"billing\"\n",
        billing_section("5s")
    );
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("steady")));
    let mut conn = client.connect(gw.addr).await.unwrap();
    assert_eq!(who(&mut conn, "/x", None).await, "main");
    assert_eq!(who(&mut conn, "/billing/1", None).await, "billing");
    let (main_before, billing_before) = (main.accepted(), billing.accepted());

    // A CRL change: every upstream keeps its connections.
    let other = setup.ca.issue(&LeafSpec::client("other"));
    replace_atomically(setup.path(), "clients.crl.pem", &setup.ca.crl(&[&other]));
    wait_generation(&gw, 2);
    assert_eq!(who(&mut conn, "/x", None).await, "main");
    assert_eq!(who(&mut conn, "/billing/1", None).await, "billing");
    assert_eq!(
        (main.accepted(), billing.accepted()),
        (main_before, billing_before)
    );

    // billing's settings change: only its pool starts over.
    let mut changed = setup.config_text();
    changed = changed.replace(&billing_section("5s"), &billing_section("6s"));
    replace_atomically(setup.path(), "certgate.toml", &changed);
    wait_generation(&gw, 3);
    assert_eq!(who(&mut conn, "/x", None).await, "main");
    assert_eq!(who(&mut conn, "/billing/1", None).await, "billing");
    assert_eq!(main.accepted(), main_before, "the default pool was dropped");
    assert_eq!(billing.accepted(), billing_before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_the_upstream_closed_costs_a_get_nothing() {
    let main = NamedUpstream::start_with("main", Some(Duration::from_millis(300))).await;
    let mut setup = Setup::new(main.addr);
    setup.extra = OPEN.into();
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("patient")));
    let mut conn = client.connect(gw.addr).await.unwrap();
    for round in 0..3 {
        assert_eq!(who(&mut conn, "/x", None).await, "main", "round {round}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(
        main.accepted(),
        3,
        "each request after an idle close needs a new connection"
    );
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"protocol\",upstream=\"default\"}"),
        0.0
    );
}
