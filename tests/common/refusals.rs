//! Handshake refusals: what the client sees and how the gateway counts them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::TestClient;
use super::daemon::Gateway;
use super::tools::eventually;

/// How long a refusal takes to be seen by the client and counted.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);

/// Every `result` label of `certgate_tls_handshakes_total` (SPEC §6).
pub const HANDSHAKE_RESULTS: [&str; 12] = [
    "ok",
    "no_client_cert",
    "unknown_issuer",
    "expired",
    "not_yet_valid",
    "revoked",
    "bad_crl",
    "bad_usage",
    "bad_signature",
    "timeout",
    "protocol_error",
    "other",
];

pub fn handshakes(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "certgate_tls_handshakes_total{{result=\"{result}\"}}"
    ))
}

/// The first request of `client` fails with the TLS alert named `alert`,
/// and the refusal is counted under `label` and under no other result.
///
/// The request goes over the bare TLS stream: TLS 1.3 delivers the server's
/// verdict on the client certificate after the client considers the
/// handshake done, so the alert is what the first read returns (hyper's
/// client would only report that its connection task ended).
pub async fn assert_refused(gw: &Gateway, client: &TestClient, label: &str, alert: &str) {
    let err = match client.tls(gw.addr).await {
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET /.certgate/whoami HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            match tokio::time::timeout(REFUSAL_WAIT, tls.read_to_end(&mut buf))
                .await
                .expect("verdict in time")
            {
                Ok(_) => panic!(
                    "the gateway answered a client it must refuse: {}",
                    String::from_utf8_lossy(&buf)
                ),
                Err(e) => e.to_string(),
            }
        }
        Err(e) => e,
    };
    assert!(
        err.contains(&format!("received fatal alert: {alert}")),
        "expected the {alert} alert, got: {err}"
    );
    assert!(
        eventually(REFUSAL_WAIT, || handshakes(gw, label) == 1.0),
        "handshakes_total{{result=\"{label}\"}} did not reach 1; metrics:\n{}",
        gw.metrics()
    );
    for other in HANDSHAKE_RESULTS.iter().filter(|r| **r != label) {
        assert_eq!(
            handshakes(gw, other),
            0.0,
            "result=\"{other}\" moved for a {label} refusal"
        );
    }
    assert!(
        gw.wait_for_log(
            &["TLS handshake refused", &format!("\"reason\":\"{label}\"")],
            REFUSAL_WAIT
        ),
        "no refusal log line with reason {label}:\n{}",
        gw.logs()
    );
}
