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
