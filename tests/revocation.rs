//! Revocation from where PKIs publish it: CRLs fetched from a real HTTP
//! server on loopback (revalidation, a slow server, an oversized body, a
//! forged and a stale CRL, a restart from the cache), OCSP answers from a
//! real `openssl ocsp` responder (good, revoked, unknown, gone; soft and
//! hard), and OCSP stapling checked with `openssl s_client -status`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(15);

fn der_crl(pem: &str) -> Vec<u8> {
    let (_, crl) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("CRL PEM");
    crl.contents
}

/// A client_auth section fetching `url` every second, cached in `cache/`.
fn fetching(url: &str) -> String {
    format!(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrl_urls = [\"{url}\"]\ncrl_refresh = \"1s\"\ncrl_cache_dir = \"cache\"\n"
    )
}

fn fetches(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "certgate_crl_fetches_total{{result=\"{result}\"}}"
    ))
}

/// Waits for `n` more fetches with `result` than `before`.
fn wait_fetches(gw: &Gateway, result: &str, before: f64, case: &str) {
    assert!(
        eventually(WAIT, || fetches(gw, result) > before),
        "{case}: no fetch counted as {result}; metrics:\n{}",
        gw.metrics()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fetched_crls_are_revalidated_verified_and_reach_open_connections() {
    let mut setup = Setup::new(echo_upstream().await);
    let publisher = Publisher::start(&der_crl(&setup.ca.crl(&[])));
    setup.client_auth = Some(fetching(&publisher.url("/clients.crl")));
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    assert_eq!(fetches(&gw, "ok"), 1.0, "the fetch at start");
    let leaf = setup.ca.issue(&LeafSpec::client("billing"));
    let client = setup.client(&leaf);
    let mut open = client.connect(gw.addr).await.unwrap();
    assert_eq!(open.get("/v1/x").await.unwrap().status, 200);

    // Revalidation: the unchanged CRL is answered 304 and counted so.
    wait_fetches(&gw, "not_modified", 0.0, "revalidation");
    assert!(
        publisher
            .revalidated
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // A CRL that revokes the client reaches the open connection.
    publisher.publish(&der_crl(&setup.ca.crl(&[&leaf])));
    assert!(
        eventually(WAIT, || fetches(&gw, "ok") >= 2.0),
        "new CRL not fetched"
    );
    let mut refused = None;
    assert!(eventually(WAIT, || {
        let reply = futures_lite_block(open.get("/v1/x"));
        let done = reply.as_ref().map_or(true, |r| r.status == 403);
        refused = Some(reply);
        done
    }));
    match refused.unwrap() {
        Ok(reply) => assert_gateway_error(
            &reply,
            403,
            "certificate_rejected",
            "revoked by a fetched CRL",
        ),
        // The reload ended the open connection itself (SPEC §11).
        Err(_) => assert!(gw.wait_for_log(
            &["a reload refused the client's certificate; closing its connection"],
            WAIT
        )),
    }
    assert!(
        client.get(gw.addr, "/v1/x").await.is_err(),
        "new handshake refused"
    );
    let csv = gw.metric("certgate_tls_handshakes_total{result=\"revoked\"}");
    assert!(csv >= 1.0, "handshake refusal counted as revoked");

    // Every bad download is an error and keeps the last good CRL (which
    // revokes the client): none of them lets it back in.
    let impostor = impostor_ca("certgate test client CA");
    let stranger = TestCa::root("a CA certgate does not trust");
    let bad: [(&str, Vec<u8>, Duration); 5] = [
        (
            "issued by a CA not in trusted_cas",
            der_crl(&stranger.crl(&[])),
            Duration::ZERO,
        ),
        (
            "signed by the wrong key",
            der_crl(&setup.ca.forged_crl(&impostor, &[])),
            Duration::ZERO,
        ),
        (
            "stale",
            der_crl(&setup.ca.crl_with(&[], time::Duration::minutes(30))),
            Duration::ZERO,
        ),
        ("oversized", vec![0x30; 17 << 20], Duration::ZERO),
        ("slow", der_crl(&setup.ca.crl(&[])), Duration::from_secs(3)),
    ];
    for (case, body, delay) in bad {
        publisher.set_delay(delay);
        publisher.publish(&body);
        let before = fetches(&gw, "error");
        wait_fetches(&gw, "error", before, case);
        assert!(
            client.get(gw.addr, "/v1/x").await.is_err(),
            "{case}: the last good CRL must stay in use"
        );
    }
    publisher.set_delay(Duration::ZERO);
    assert!(gw.wait_for_log(&["CRL fetch failed", "does not verify"], WAIT));
    assert!(gw.wait_for_log(
        &["CRL fetch failed", "not in client_auth.trusted_cas"],
        WAIT
    ));
    assert!(gw.wait_for_log(&["CRL fetch failed", "stale"], WAIT));
    assert!(gw.wait_for_log(&["CRL fetch failed", "larger than"], WAIT));
    assert!(gw.wait_for_log(&["CRL fetch failed", "no complete answer"], WAIT));
    let bystander = setup.client(&setup.ca.issue(&LeafSpec::client("reporting")));
    assert_eq!(bystander.get(gw.addr, "/v1/x").await.unwrap().status, 200);
}

/// Runs a future to completion from inside an `eventually` closure.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_needs_the_crl_or_its_cached_copy() {
    let mut setup = Setup::new(echo_upstream().await);
    // Nothing listens there, and nothing is cached: the start fails, naming the URL.
    let gone = format!("http://127.0.0.1:{}/gone.crl", free_port());
    setup.client_auth = Some(fetching(&gone));
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(setup.write_config())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&gone) && stderr.contains("no cached copy"),
        "{stderr}"
    );

    // Fetched once, the CRL is cached; a start without the server uses it.
    let leaf = setup.ca.issue(&LeafSpec::client("billing"));
    let publisher = Publisher::start(&der_crl(&setup.ca.crl(&[&leaf])));
    setup.client_auth = Some(fetching(&publisher.url("/clients.crl")));
    drop(setup.start());
    let config = setup.path().join("certgate.toml");
    let online = Command::new(BIN)
        .args(["check", "--online", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&online.stdout);
    let url = publisher.url("/clients.crl");
    assert!(report.contains(&format!("crl fetch {url}: ok")), "{report}");
    write(setup.path(), "leaf.pem", &leaf.cert_pem);
    let explained = Command::new(BIN)
        .args(["explain", "--cert"])
        .arg(setup.path().join("leaf.pem"))
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&explained.stdout);
    assert!(report.contains("REFUSED (revoked)"), "{report}");
    assert!(
        report.contains(&format!("revocation:  CRL {url} (this_update=")),
        "{report}"
    );
    drop(publisher);
    let gw = setup.start();
    assert!(gw.wait_for_log(&["starting with the cached copy"], WAIT));
    assert!(
        setup.client(&leaf).get(gw.addr, "/v1/x").await.is_err(),
        "still revoked"
    );
    let check = Command::new(BIN)
        .args(["check", "-c"])
        .arg(setup.path().join("certgate.toml"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains("clients.crl") && report.contains("this_update="),
        "{report}"
    );
}

fn ocsp_setup(upstream: std::net::SocketAddr, mode: &str) -> Setup {
    let mut setup = Setup::new(upstream);
    setup.client_auth = Some(format!(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\nocsp = \"{mode}\"\ncrl_refresh = \"1s\"\n"
    ));
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
}

fn ocsp_checks(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "certgate_ocsp_checks_total{{result=\"{result}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn ocsp_soft_asks_the_responder_and_lets_unknown_and_unreachable_in() {
    if !have("openssl") {
        return;
    }
    let setup = ocsp_setup(echo_upstream().await, "soft");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let good = setup.ca.issue(&LeafSpec::client("good").with_ocsp(&url));
    let revoked = setup.ca.issue(&LeafSpec::client("revoked").with_ocsp(&url));
    let unknown = setup.ca.issue(&LeafSpec::client("unknown").with_ocsp(&url));
    let mut responder =
        OcspResponder::start_on(port, setup.path(), &setup.ca, &[&good], &[&revoked]);
    let gw = setup.start();

    let mut open = setup.client(&good).connect(gw.addr).await.unwrap();
    assert_eq!(open.get("/v1/x").await.unwrap().status, 200, "good");
    assert_eq!(ocsp_checks(&gw, "good"), 1.0);
    let reply = setup.client(&revoked).get(gw.addr, "/v1/x").await.unwrap();
    assert_gateway_error(&reply, 403, "certificate_rejected", "revoked by OCSP");
    assert_eq!(ocsp_checks(&gw, "revoked"), 1.0);
    assert!(gw.wait_for_log(
        &["client certificate refused by OCSP", &revoked.fingerprint()],
        WAIT
    ));
    let reply = setup.client(&unknown).get(gw.addr, "/v1/x").await.unwrap();
    assert_eq!(reply.status, 200, "soft lets unknown in");
    assert_eq!(ocsp_checks(&gw, "unknown"), 1.0);

    // Revoked at the responder: the open connection's next request after
    // the answer runs out (no nextUpdate: crl_refresh) is refused.
    responder.revoke(&good);
    let mut status = 0;
    assert!(eventually(WAIT, || {
        status = futures_lite_block(open.get("/v1/x")).map_or(0, |r| r.status.as_u16());
        status != 200
    }));
    assert_eq!(status, 403, "the open connection is refused");
    assert!(
        eventually(WAIT, || futures_lite_block(open.get("/v1/x")).is_err()),
        "and closed after the refusal"
    );

    responder.stop();
    let late = setup.ca.issue(&LeafSpec::client("late").with_ocsp(&url));
    let reply = setup.client(&late).get(gw.addr, "/v1/x").await.unwrap();
    assert_eq!(
        reply.status, 200,
        "soft lets the client in without a responder"
    );
    assert!(ocsp_checks(&gw, "error") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ocsp_hard_refuses_unknown_and_unreachable() {
    if !have("openssl") {
        return;
    }
    let setup = ocsp_setup(echo_upstream().await, "hard");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let good = setup.ca.issue(&LeafSpec::client("good").with_ocsp(&url));
    let unknown = setup.ca.issue(&LeafSpec::client("unknown").with_ocsp(&url));
    let mut responder = OcspResponder::start_on(port, setup.path(), &setup.ca, &[&good], &[]);
    let gw = setup.start();
    let first = setup.client(&good).get(gw.addr, "/v1/x").await.unwrap();
    assert_eq!(first.status, 200, "{}", gw.logs());
    let reply = setup.client(&unknown).get(gw.addr, "/v1/x").await.unwrap();
    assert_gateway_error(&reply, 403, "certificate_rejected", "hard refuses unknown");
    let no_aia = setup.ca.issue(&LeafSpec::client("no responder"));
    let reply = setup.client(&no_aia).get(gw.addr, "/v1/x").await.unwrap();
    assert_gateway_error(
        &reply,
        403,
        "certificate_rejected",
        "hard refuses without a responder",
    );
    responder.stop();
    let late = setup.ca.issue(&LeafSpec::client("late").with_ocsp(&url));
    let reply = setup.client(&late).get(gw.addr, "/v1/x").await.unwrap();
    assert_gateway_error(
        &reply,
        403,
        "certificate_rejected",
        "hard refuses without an answer",
    );
    assert!(ocsp_checks(&gw, "error") >= 2.0);
    // The answer about `good` is cached until it runs out; a new
    // connection inside that time needs no responder.
    assert_eq!(ocsp_checks(&gw, "good"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn served_certificates_are_stapled() {
    if !have("openssl") {
        return;
    }
    let mut setup = Setup::new(echo_upstream().await);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let server = setup.server_ca.issue(&LeafSpec::server().with_ocsp(&url));
    // The chain carries the issuer: what the response is verified against.
    write(
        setup.path(),
        "server.pem",
        &format!("{}{}", server.cert_pem, setup.server_ca.pem),
    );
    write(setup.path(), "server.key", &server.key_pem);
    let _responder = OcspResponder::start_on(port, setup.path(), &setup.server_ca, &[&server], &[]);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup.listener = Some("[listener]\naddress = \"127.0.0.1:0\"\n".into());
    let text = setup.config_text().replace(
        "key = \"server.key\"\n",
        "key = \"server.key\"\nocsp_stapling = true\n",
    );
    let config = write(setup.path(), "certgate.toml", &text);
    let gw = Gateway::start(&config, &[]);
    let leaf = setup.ca.issue(&LeafSpec::client("billing"));
    write(setup.path(), "client.pem", &leaf.cert_pem);
    write(setup.path(), "client.key", &leaf.key_pem);
    write(setup.path(), "server-ca.pem", &setup.server_ca.pem);
    let mut report = String::new();
    let stapled = eventually(WAIT, || {
        let out = Command::new("openssl")
            .args(["s_client", "-status", "-connect"])
            .arg(gw.addr.to_string())
            .args(["-servername", "localhost", "-CAfile"])
            .arg(setup.path().join("server-ca.pem"))
            .arg("-cert")
            .arg(setup.path().join("client.pem"))
            .arg("-key")
            .arg(setup.path().join("client.key"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        report = String::from_utf8_lossy(&out.stdout).into_owned();
        report.contains("OCSP Response Status: successful") && report.contains("Cert Status: good")
    });
    assert!(stapled, "no good staple:\n{report}\n{}", gw.logs());
    let subject = "certgate_ocsp_staple_next_update_timestamp_seconds{subject=\"CN=localhost\"}";
    assert!(gw.metric(subject) > 0.0, "{}", gw.metrics());
    if have("promtool") {
        // Every revocation metric, the staple gauge populated, passes the linter.
        let metrics = gw.metrics();
        let mut lint = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        lint.stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = lint.wait_with_output().unwrap();
        let findings = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && findings.trim().is_empty(),
            "{findings}"
        );
        for family in ["certgate_crl_fetches_total", "certgate_ocsp_checks_total"] {
            assert!(
                metrics.contains(&format!("# TYPE {family} counter")),
                "{family}"
            );
        }
    }
}

#[test]
fn revocation_alerts_pass_promtool_test_rules() {
    if !have("promtool") {
        return;
    }
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let out = Command::new("promtool")
        .args(["test", "rules", "prometheus-alerts.test.yml"])
        .current_dir(&docs)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

/// `openssl ocsp` answering `request` from an index listing `good`,
/// signed by `signer` (certificate and key PEM), valid for a day.
fn openssl_answer(
    dir: &std::path::Path,
    ca: &TestCa,
    good: &Leaf,
    signer: (&str, &str),
    request: &[u8],
) -> Vec<u8> {
    let serial = hex::encode_upper(good.serial.to_bytes());
    write(
        dir,
        "index.txt",
        &format!("V\t301231235959Z\t\t{serial}\tunknown\t/CN=test\n"),
    );
    write(dir, "ca.pem", &ca.pem);
    write(dir, "signer.pem", signer.0);
    write(dir, "signer.key", signer.1);
    std::fs::write(dir.join("req.der"), request).unwrap();
    let out = Command::new("openssl")
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "ca.pem",
            "-rsigner",
            "signer.pem",
        ])
        .args([
            "-rkey",
            "signer.key",
            "-reqin",
            "req.der",
            "-respout",
            "resp.der",
            "-ndays",
            "1",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join("resp.der")).unwrap()
}

#[test]
fn ocsp_answers_are_believed_only_when_authorized_fresh_and_about_the_request() {
    use certgate::revocation::ocsp::Query;
    use certgate::revocation::OcspStatus;
    if !have("openssl") {
        return;
    }
    certgate::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::root("ocsp test CA");
    let url = "http://127.0.0.1:9/";
    let leaf = ca.issue(&LeafSpec::client("good").with_ocsp(url));
    let other = ca.issue(&LeafSpec::client("other").with_ocsp(url));
    let delegated = ca.issue(&LeafSpec {
        eku: Eku::OcspSigning,
        ..LeafSpec::client("responder")
    });
    let not_a_responder = ca.issue(&LeafSpec::client("not a responder"));
    let impostor = impostor_ca("ocsp test CA");
    let query =
        |l: &Leaf, nonce| Query::new(&l.der, ca.der.clone(), url.to_owned(), nonce).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ttl = Duration::from_secs(60);

    let asked = query(&leaf, true);
    let by_ca = openssl_answer(
        dir.path(),
        &ca,
        &leaf,
        (&ca.pem, &ca.key_pem),
        asked.request_der(),
    );
    let answer = asked.verify(&by_ca, now, ttl).expect("signed by the CA");
    assert_eq!(answer.status, OcspStatus::Good);
    assert!(answer.valid_until_unix > now + 3600, "nextUpdate a day on");
    let by_delegate = openssl_answer(
        dir.path(),
        &ca,
        &leaf,
        (&delegated.cert_pem, &delegated.key_pem),
        asked.request_der(),
    );
    asked
        .verify(&by_delegate, now, ttl)
        .expect("signed by a delegated responder");

    let unsigned = "not signed by the issuer or a responder it authorized";
    let cases: [(&str, &Query, Vec<u8>, i64, &str); 5] = [
        (
            "signed by a certificate without id-kp-OCSPSigning",
            &asked,
            openssl_answer(
                dir.path(),
                &ca,
                &leaf,
                (&not_a_responder.cert_pem, &not_a_responder.key_pem),
                asked.request_der(),
            ),
            now,
            unsigned,
        ),
        (
            "signed by a look-alike CA",
            &asked,
            openssl_answer(
                dir.path(),
                &ca,
                &leaf,
                (&impostor.pem, &impostor.key_pem),
                asked.request_der(),
            ),
            now,
            unsigned,
        ),
        (
            "past its nextUpdate",
            &asked,
            by_ca.clone(),
            now + 3 * 86_400,
            "stale",
        ),
        (
            "the nonce of another request",
            &query(&leaf, true),
            by_ca,
            now,
            "nonce",
        ),
        (
            "about another certificate",
            &query(&other, false),
            openssl_answer(
                dir.path(),
                &ca,
                &leaf,
                (&ca.pem, &ca.key_pem),
                query(&leaf, false).request_der(),
            ),
            now,
            "no answer about this certificate",
        ),
    ];
    for (case, query, response, at, reason) in cases {
        let err = query
            .verify(&response, at, ttl)
            .expect_err(case)
            .to_string();
        assert!(err.contains(reason), "{case}: {err}");
    }
}

/// Every TOML example in docs/revocation.md, laid over a minimal config,
/// is a config certgate accepts: each names only real keys and values.
#[test]
fn revocation_doc_examples_are_valid_config() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/revocation.md"),
    )
    .unwrap();
    let base = "[listener]\naddress = \"127.0.0.1:8443\"\n[server_tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n[client_auth]\ntrusted_cas = [\"ca.pem\"]\n[upstream]\nurl = \"http://127.0.0.1:8080\"\n";
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("\n```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 6, "found {} blocks", blocks.len());
    for block in blocks {
        let mut config: toml::Table = toml::from_str(base).unwrap();
        let example: toml::Table = toml::from_str(block).unwrap_or_else(|e| panic!("{block}: {e}"));
        for (section, table) in example {
            let into = config[&section].as_table_mut().unwrap();
            into.extend(table.as_table().unwrap().clone());
        }
        certgate::config::Config::from_toml(
            std::path::Path::new("/etc/certgate/certgate.toml"),
            &toml::to_string(&config).unwrap(),
            Vec::new(),
        )
        .unwrap_or_else(|e| panic!("{block}\n{e}"));
    }
}
