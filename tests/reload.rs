//! Hot reload on the real daemon, same process throughout: server
//! certificates renamed into place or swapped in through a Kubernetes
//! `..data` symlink, bad files that must not replace a good state, client
//! CA and CRL changes, role rules, SIGHUP with the watcher off, and what
//! operators see (generation, `/status`, reload counters, logs).

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

const GENERATION: &str = "certgate_config_generation";
const RELOAD_OK: &str = "certgate_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "certgate_reloads_total{result=\"failure\"}";
/// The issue's bound for a rotation to reach the next handshake.
const ROTATION_DEADLINE: Duration = Duration::from_secs(2);

/// Waits until the gateway reports `generation`.
fn wait_generation(gw: &Gateway, generation: u64) {
    assert!(
        eventually(ROTATION_DEADLINE, || gw.metric(GENERATION)
            == generation as f64),
        "generation stayed {} (wanted {generation}); logs:\n{}",
        gw.metric(GENERATION),
        gw.logs()
    );
}

/// Waits for one refused handshake counted with `result`. The client sees
/// the refusal before the gateway has counted it, hence the wait.
fn wait_handshake_refused(gw: &Gateway, result: &str) {
    let sample = format!("certgate_tls_handshakes_total{{result=\"{result}\"}}");
    assert!(
        eventually(Duration::from_secs(1), || gw.metric(&sample) == 1.0),
        "{sample} is not 1; metrics:\n{}\nlogs:\n{}",
        gw.metrics(),
        gw.logs()
    );
}

/// The `/status` JSON.
fn status(gw: &Gateway) -> serde_json::Value {
    let (code, body) = gw.admin_get("/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// Asserts the process is the one that started and has not exited.
fn assert_same_process(gw: &mut Gateway, pid: u32) {
    assert_eq!(gw.pid(), pid);
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "certgate exited; logs:\n{}",
        gw.logs()
    );
}

/// Starts the daemon on `setup`'s config with `[server_tls]` naming `cert`
/// and `key` instead of the default `server.pem` and `server.key`.
fn start_with_server_files(setup: &Setup, cert: &str, key: &str) -> Gateway {
    let default_files = "cert = \"server.pem\"\nkey = \"server.key\"";
    let text = setup.config_text();
    assert!(text.contains(default_files), "{text}");
    let text = text.replace(
        default_files,
        &format!("cert = \"{cert}\"\nkey = \"{key}\""),
    );
    Gateway::start(&write(setup.path(), "certgate.toml", &text), &setup.env)
}

#[tokio::test(flavor = "multi_thread")]
async fn server_cert_renamed_into_place_is_served_on_next_handshake() {
    let setup = Setup::new(echo_upstream().await);
    let first = setup.rotate_server_cert();
    let mut gw = setup.start();
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );

    // Twice: the second rotation proves the watch survived the first rename.
    for generation in [2, 3] {
        let next = setup.rotate_server_cert();
        client
            .wait_for_serial(gw.addr, &next.serial_hex(), ROTATION_DEADLINE)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "rotation to generation {generation}: {e}; logs:\n{}",
                    gw.logs()
                )
            });
        wait_generation(&gw, generation);
        assert_same_process(&mut gw, pid);
    }
    // Two renames are two events: on a busy disk the second can come after
    // the debounce and a reload may see the new certificate with the old
    // key. That attempt fails safely (see the test below); all that counts
    // here is one successful reload per rotation.
    assert_eq!(gw.metric(RELOAD_OK), 2.0);
    assert!(gw.wait_for_log(
        &["\"message\":\"reloaded\"", "\"generation\":3"],
        Duration::from_secs(1)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_pem_rotates_in_a_single_rename() {
    let setup = Setup::new(echo_upstream().await);
    let first = setup.server_ca.issue(&LeafSpec::server());
    let bundle = |leaf: &Leaf| format!("{}{}", leaf.chain_pem, leaf.key_pem);
    write(setup.path(), "server-bundle.pem", &bundle(&first));
    let mut gw = start_with_server_files(&setup, "server-bundle.pem", "server-bundle.pem");
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );

    let next = setup.server_ca.issue(&LeafSpec::server());
    replace_atomically(setup.path(), "server-bundle.pem", &bundle(&next));
    client
        .wait_for_serial(gw.addr, &next.serial_hex(), ROTATION_DEADLINE)
        .await
        .unwrap();
    wait_generation(&gw, 2);
    // One file, one rename: no reload can see half of the update.
    assert_eq!(gw.metric(RELOAD_FAILED), 0.0, "logs:\n{}", gw.logs());
    assert_same_process(&mut gw, pid);
}

/// Writes `cert` and `key` into a new timestamped directory under `secret`
/// and points `..data` at it the way the kubelet does: a temporary symlink
/// renamed over `..data`, then the previous directory removed.
fn kubelet_publish(secret: &Path, stamp: &str, cert: &Leaf) {
    let dir = format!("..2026_01_01_00_00_{stamp}.000000001");
    std::fs::create_dir(secret.join(&dir)).unwrap();
    write(&secret.join(&dir), "tls.crt", &cert.chain_pem);
    write(&secret.join(&dir), "tls.key", &cert.key_pem);
    let previous = std::fs::read_link(secret.join("..data")).ok();
    std::os::unix::fs::symlink(&dir, secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    if let Some(previous) = previous {
        std::fs::remove_dir_all(secret.join(previous)).unwrap();
    }
    for name in ["tls.crt", "tls.key"] {
        let link = secret.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_data_symlink_swap_rotates_server_cert() {
    let setup = Setup::new(echo_upstream().await);
    // The secret is mounted in its own directory; the loose files of the
    // default setup are removed so that only the secret can be served.
    let secret = setup.path().join("tls");
    std::fs::create_dir(&secret).unwrap();
    std::fs::remove_file(setup.path().join("server.pem")).unwrap();
    std::fs::remove_file(setup.path().join("server.key")).unwrap();
    let first = setup.server_ca.issue(&LeafSpec::server());
    kubelet_publish(&secret, "00", &first);
    let mut gw = start_with_server_files(&setup, "tls/tls.crt", "tls/tls.key");
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );

    for (generation, stamp) in [(2, "01"), (3, "02")] {
        let next = setup.server_ca.issue(&LeafSpec::server());
        kubelet_publish(&secret, stamp, &next);
        client
            .wait_for_serial(gw.addr, &next.serial_hex(), ROTATION_DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("..data swap {stamp}: {e}; logs:\n{}", gw.logs()));
        wait_generation(&gw, generation);
        assert_same_process(&mut gw, pid);
    }
    assert_eq!(gw.metric(RELOAD_FAILED), 0.0, "logs:\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn half_written_certificate_keeps_previous_certificate_serving() {
    let mut setup = Setup::new(echo_upstream().await);
    // A fast poll, to show that it does not retry the same bad content.
    setup.extra = "[reload]\npoll_interval = \"100ms\"\n".into();
    let first = setup.rotate_server_cert();
    let mut gw = setup.start();
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));

    // Written in place and cut short, as a copy interrupted half-way.
    let next = setup.server_ca.issue(&LeafSpec::server());
    let cert_file = setup.path().join("server.pem");
    std::fs::write(&cert_file, &next.chain_pem[..next.chain_pem.len() / 2]).unwrap();

    assert!(
        eventually(ROTATION_DEADLINE, || gw.metric(RELOAD_FAILED) == 1.0),
        "no failed reload counted; logs:\n{}",
        gw.logs()
    );
    let cert_file = cert_file.display().to_string();
    assert!(
        gw.wait_for_log(
            &["\"level\":\"ERROR\"", "reload failed", &cert_file],
            Duration::from_secs(1)
        ),
        "no ERROR naming {cert_file}; logs:\n{}",
        gw.logs()
    );
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );
    let reported = status(&gw);
    assert_eq!(reported["generation"], 1);
    let error = reported["last_reload"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains(&cert_file),
        "/status last_reload.error: {reported}"
    );
    assert_eq!(gw.metric(GENERATION), 1.0);
    // A bad file is retried on the next change, not on every poll or in a
    // loop (the reloader's own reads of the files are not changes).
    assert!(
        !eventually(Duration::from_millis(750), || gw.metric(RELOAD_FAILED)
            > 1.0),
        "the failed reload was retried without a change; logs:\n{}",
        gw.logs()
    );
    assert_same_process(&mut gw, pid);

    let fixed = setup.rotate_server_cert();
    client
        .wait_for_serial(gw.addr, &fixed.serial_hex(), ROTATION_DEADLINE)
        .await
        .unwrap();
    wait_generation(&gw, 2);
    let reported = status(&gw);
    assert!(reported["last_reload"]["error"].is_null(), "{reported}");
    assert_eq!(gw.metric(RELOAD_OK), 1.0);
    assert_same_process(&mut gw, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn putting_the_previous_file_back_clears_the_failure() {
    let setup = Setup::new(echo_upstream().await);
    let first = setup.rotate_server_cert();
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));

    replace_atomically(setup.path(), "server.pem", "not a certificate\n");
    assert!(
        eventually(ROTATION_DEADLINE, || gw.metric(RELOAD_FAILED) == 1.0),
        "logs:\n{}",
        gw.logs()
    );
    assert!(!status(&gw)["last_reload"]["error"].is_null());

    // The files are again what is being served: that is a good load.
    replace_atomically(setup.path(), "server.pem", &first.chain_pem);
    wait_generation(&gw, 2);
    let reported = status(&gw);
    assert!(reported["last_reload"]["error"].is_null(), "{reported}");
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );
    assert_eq!(gw.metric(RELOAD_FAILED), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_replaced_before_its_key_keeps_previous_pair_serving() {
    let setup = Setup::new(echo_upstream().await);
    let first = setup.rotate_server_cert();
    let mut gw = setup.start();
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));

    // Longer than the debounce passes between the two renames, so the new
    // certificate is loaded alongside the old key.
    let next = setup.server_ca.issue(&LeafSpec::server());
    replace_atomically(setup.path(), "server.pem", &next.chain_pem);
    assert!(
        eventually(ROTATION_DEADLINE, || gw.metric(RELOAD_FAILED) == 1.0),
        "the mismatched pair was not refused; logs:\n{}",
        gw.logs()
    );
    let key_file = setup.path().join("server.key").display().to_string();
    assert!(
        gw.wait_for_log(
            &[
                "\"level\":\"ERROR\"",
                &key_file,
                "private key does not match the certificate"
            ],
            Duration::from_secs(1)
        ),
        "no ERROR naming {key_file}; logs:\n{}",
        gw.logs()
    );
    // New handshakes still complete, with the old, consistent pair.
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );
    assert_eq!(gw.metric(GENERATION), 1.0);
    assert_same_process(&mut gw, pid);

    replace_atomically(setup.path(), "server.key", &next.key_pem);
    client
        .wait_for_serial(gw.addr, &next.serial_hex(), ROTATION_DEADLINE)
        .await
        .unwrap();
    wait_generation(&gw, 2);
    assert_eq!(gw.metric(RELOAD_FAILED), 1.0);
    assert_same_process(&mut gw, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn appended_client_ca_admits_its_clients_without_restart() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let mut gw = setup.start();
    let pid = gw.pid();
    let partner = TestCa::root("partner client CA");
    let newcomer = setup.client(&partner.issue(&LeafSpec::client("partner-app")));
    let existing = setup.client(&setup.ca.issue(&LeafSpec::client("billing")));

    let refused = newcomer.get(gw.addr, "/v1/x").await;
    assert!(
        refused.is_err(),
        "admitted before its CA was trusted: {refused:?}"
    );
    wait_handshake_refused(&gw, "unknown_issuer");

    replace_atomically(
        setup.path(),
        "client-ca.pem",
        &format!("{}{}", setup.ca.pem, partner.pem),
    );
    wait_generation(&gw, 2);
    let admitted = newcomer.get(gw.addr, "/v1/x").await.unwrap();
    assert_eq!(
        admitted.status,
        200,
        "{}",
        String::from_utf8_lossy(&admitted.body)
    );
    let issuer = admitted.upstream_header("x-client-issuer").unwrap();
    assert!(issuer.contains("CN=partner client CA"), "{issuer}");
    assert_eq!(existing.get(gw.addr, "/v1/x").await.unwrap().status, 200);
    assert_same_process(&mut gw, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn new_crl_refuses_revoked_client_on_new_and_open_connections() {
    let mut setup = Setup::new(echo_upstream().await);
    write(setup.path(), "clients.crl.pem", &setup.ca.crl(&[]));
    setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n".into(),
    );
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let mut gw = setup.start();
    let pid = gw.pid();
    let leaf = setup.ca.issue(&LeafSpec::client("billing"));
    let bystander = setup.client(&setup.ca.issue(&LeafSpec::client("reporting")));
    // One client throughout: the session tickets it holds from before the
    // CRL must not let it resume its way back in.
    let revoked = setup.client(&leaf);
    let mut h1 = revoked.connect(gw.addr).await.unwrap();
    let mut h2 = setup.client_h2(&leaf).connect(gw.addr).await.unwrap();
    assert_eq!(h1.get("/v1/x").await.unwrap().status, 200);
    assert_eq!(h2.get("/v1/x").await.unwrap().status, 200);

    replace_atomically(setup.path(), "clients.crl.pem", &setup.ca.crl(&[&leaf]));
    wait_generation(&gw, 2);

    // The open connections end with the reload, not only at their next
    // request (SPEC §11): until they do, a request is refused with 403;
    // then the next one has to pass a handshake that refuses it.
    for (name, conn) in [("HTTP/1.1", &mut h1), ("HTTP/2", &mut h2)] {
        let mut ended = false;
        for _ in 0..20 {
            match conn.get("/v1/x").await {
                Err(_) => {
                    ended = true;
                    break;
                }
                Ok(reply) => {
                    assert_eq!(
                        reply.status,
                        403,
                        "{name}: {}",
                        String::from_utf8_lossy(&reply.body)
                    );
                    assert_eq!(reply.json()["error"], "certificate_rejected", "{name}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ended, "{name}: connection still usable after the refusal");
    }
    assert!(gw.wait_for_log(
        &[
            "a reload refused the client's certificate; closing its connection",
            "\"reason\":\"revoked\"",
            &leaf.fingerprint()
        ],
        Duration::from_secs(1)
    ));
    assert_eq!(gw.metric("certgate_reload_refused_connections_total"), 2.0);
    assert!(gw.wait_for_log(
        &[
            "open connection's client certificate refused",
            "\"reason\":\"revoked\"",
            &leaf.fingerprint()
        ],
        Duration::from_secs(1)
    ));

    let refused = revoked.get(gw.addr, "/v1/x").await;
    assert!(
        refused.is_err(),
        "revoked client got a new connection: {refused:?}"
    );
    wait_handshake_refused(&gw, "revoked");
    assert_eq!(bystander.get(gw.addr, "/v1/x").await.unwrap().status, 200);
    assert_same_process(&mut gw, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn role_rule_change_denies_next_request_on_open_connection() {
    let rules = |cn: &str| {
        format!(
            "[[roles.map]]\ncn = \"{cn}\"\nroles = [\"ROLE_BILLING\"]\n\n[authorization]\ndefault = \"deny\"\n\n[[authorization.rule]]\npath = \"/billing\"\nroles = [\"ROLE_BILLING\"]\n"
        )
    };
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = rules("billing");
    let mut gw = setup.start();
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("billing")));
    let mut conn = client.connect(gw.addr).await.unwrap();
    let allowed = conn.get("/billing/invoices").await.unwrap();
    assert_eq!(
        allowed.status,
        200,
        "{}",
        String::from_utf8_lossy(&allowed.body)
    );
    assert_eq!(
        allowed.upstream_header("x-client-roles").unwrap(),
        "ROLE_BILLING"
    );

    setup.extra = rules("someone-else");
    replace_atomically(setup.path(), "certgate.toml", &setup.config_text());
    wait_generation(&gw, 2);

    let denied = conn.get("/billing/invoices").await.unwrap();
    assert_eq!(
        denied.status,
        403,
        "{}",
        String::from_utf8_lossy(&denied.body)
    );
    assert_eq!(denied.json()["error"], "forbidden");
    let whoami = conn.get("/.certgate/whoami").await.unwrap();
    assert_eq!(whoami.json()["roles"], serde_json::json!([]));
    assert_same_process(&mut gw, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_when_watching_is_off() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[reload]\nwatch = false\npoll_interval = \"1h\"\n".into();
    let first = setup.rotate_server_cert();
    let mut gw = setup.start();
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("probe")));

    let next = setup.rotate_server_cert();
    // Several debounce periods: long enough for a watcher to have acted.
    assert!(
        !eventually(Duration::from_secs(1), || gw.metric(GENERATION) != 1.0),
        "reloaded without SIGHUP; logs:\n{}",
        gw.logs()
    );
    assert_eq!(
        client.served_serial(gw.addr).await.unwrap(),
        first.serial_hex()
    );

    gw.signal("HUP");
    client
        .wait_for_serial(gw.addr, &next.serial_hex(), ROTATION_DEADLINE)
        .await
        .unwrap();
    wait_generation(&gw, 2);
    assert!(gw.wait_for_log(
        &["\"message\":\"reloaded\"", "\"trigger\":\"Signal\""],
        Duration::from_secs(1)
    ));
    assert_same_process(&mut gw, pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_address_change_is_logged_and_keeps_the_bound_address() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let mut gw = setup.start();
    let pid = gw.pid();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("billing")));

    setup.listener = Some("[listener]\naddress = \"127.0.0.1:1\"\n".into());
    replace_atomically(setup.path(), "certgate.toml", &setup.config_text());
    wait_generation(&gw, 2);
    assert!(gw.wait_for_log(
        &[
            "\"level\":\"WARN\"",
            "listener.address changed",
            "127.0.0.1:1"
        ],
        Duration::from_secs(1)
    ));
    assert_eq!(client.get(gw.addr, "/v1/x").await.unwrap().status, 200);
    assert_same_process(&mut gw, pid);
}
