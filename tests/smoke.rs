mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn valid_client_reaches_upstream_with_identity() {
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("billing-api"));
    let reply = setup.client(&leaf).get(gw.addr, "/v1/x").await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.upstream_header("x-client-fingerprint").unwrap(),
        leaf.fingerprint()
    );
    assert_eq!(
        gw.metric("certgate_tls_handshakes_total{result=\"ok\"}"),
        1.0
    );
}

/// `TOKIO_WORKER_THREADS=1` runs the daemon on tokio's current-thread
/// scheduler: it serves both protocols, reloads and drains there too.
#[tokio::test(flavor = "multi_thread")]
async fn one_worker_thread_serves_reloads_and_drains() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup.env.push(("TOKIO_WORKER_THREADS".into(), "1".into()));
    let mut gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("one-thread"));
    for client in [setup.client(&leaf), setup.client_h2(&leaf)] {
        let reply = client.get(gw.addr, "/v1/x").await.unwrap();
        assert_eq!(reply.status, 200);
    }
    gw.signal("HUP");
    assert!(
        eventually(std::time::Duration::from_secs(5), || gw
            .metric("certgate_config_generation")
            == 2.0),
        "no reload: {}",
        gw.logs()
    );
    let reply = setup.client(&leaf).get(gw.addr, "/v1/y").await.unwrap();
    assert_eq!(reply.status, 200);
    gw.signal("TERM");
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status:?}; logs:\n{}", gw.logs());
}
