//! Client certificates and CRLs that must be refused, against the real
//! daemon and the operator commands: a leaf whose keyUsage does not allow
//! digitalSignature (`bad_usage`), a CRL that does not verify against its
//! issuer (the load fails at start, in `check` and `explain`, and a reload
//! keeps the previous state), an expired CRL under `expired_crl = "deny"`
//! (`bad_crl`), and `check`'s warning about CAs without a CRL.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rcgen::KeyUsagePurpose;

const CRL_AUTH: &str =
    "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n";

/// A setup whose every path is open to any verified client.
async fn open_setup() -> Setup {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `certgate ARGS`, killing it (and failing) if it has not exited
/// within 10 s: a `run` that should refuse to start must not hang the test.
fn certgate(args: &[&str]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("CERTGATE_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn certgate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "certgate {args:?} still running after 10 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

#[tokio::test(flavor = "multi_thread")]
async fn key_usage_without_digital_signature_is_refused_as_bad_usage() {
    let setup = open_setup().await;
    let gw = setup.start();
    let encipher_only = setup.ca.issue(
        &LeafSpec::client("key-encipherment-only")
            .with_key_usages(&[KeyUsagePurpose::KeyEncipherment]),
    );
    assert_refused(
        &gw,
        &setup.client(&encipher_only),
        "bad_usage",
        "CertificateUnknown",
    )
    .await;
    assert!(
        gw.wait_for_log(
            &["TLS handshake refused", "KeyUsageLacksDigitalSignature"],
            Duration::from_secs(1)
        ),
        "the refusal log line does not say why:\n{}",
        gw.logs()
    );

    // digitalSignature among other bits, or no keyUsage at all, is fine.
    for (case, usages) in [
        (
            "digitalSignature + keyEncipherment",
            &[
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ][..],
        ),
        ("no keyUsage extension", &[][..]),
    ] {
        let leaf = setup
            .ca
            .issue(&LeafSpec::client("signer").with_key_usages(usages));
        let reply = setup
            .client(&leaf)
            .get(gw.addr, "/.certgate/whoami")
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(reply.status, 200, "{case}");
    }
    assert_eq!(handshakes(&gw, "bad_usage"), 1.0);
}

#[test]
fn crl_that_does_not_verify_fails_start_and_check() {
    let mut setup = Setup::new("127.0.0.1:9".parse().unwrap());
    let impostor = impostor_ca("certgate test client CA");
    setup.client_auth = Some(CRL_AUTH.into());
    // (case, CRL, what the error says besides the file name)
    let cases = [
        (
            "signed by another key",
            setup.ca.forged_crl(&impostor, &[]),
            "signature does not verify",
        ),
        (
            "another key's identifier",
            impostor.crl(&[]),
            "authority key identifier",
        ),
    ];
    let config = setup.write_config();
    for (case, crl, reason) in cases {
        let crl_file = write(setup.path(), "clients.crl.pem", &crl);
        for command in ["check", "run"] {
            let run = certgate(&[command, "-c", path_str(&config)]);
            assert_eq!(run.code, 2, "{case}: {command}: {run:?}");
            for needle in [path_str(&crl_file), reason] {
                assert!(
                    run.stderr.contains(needle),
                    "{case}: {command}: stderr lacks {needle:?}:\n{}",
                    run.stderr
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crl_that_does_not_verify_fails_the_reload_and_revokes_nobody() {
    let mut setup = open_setup().await;
    write(setup.path(), "clients.crl.pem", &setup.ca.crl(&[]));
    setup.client_auth = Some(CRL_AUTH.into());
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("billing"));
    let client = setup.client(&leaf);
    let mut open = client.connect(gw.addr).await.unwrap();
    assert_eq!(open.get("/v1/x").await.unwrap().status, 200);

    // Claims to revoke the client, but is not the CA's.
    let impostor = impostor_ca("certgate test client CA");
    replace_atomically(
        setup.path(),
        "clients.crl.pem",
        &setup.ca.forged_crl(&impostor, &[&leaf]),
    );
    let failed = "certgate_reloads_total{result=\"failure\"}";
    assert!(
        eventually(Duration::from_secs(3), || gw.metric(failed) == 1.0),
        "no failed reload; logs:\n{}",
        gw.logs()
    );
    let crl_file = setup.path().join("clients.crl.pem").display().to_string();
    assert!(
        gw.wait_for_log(
            &["\"level\":\"ERROR\"", "reload failed", &crl_file],
            Duration::from_secs(1)
        ),
        "no ERROR naming {crl_file}; logs:\n{}",
        gw.logs()
    );
    assert_eq!(gw.metric("certgate_config_generation"), 1.0);
    // The old state serves: open and new connections are still let in.
    assert_eq!(open.get("/v1/x").await.unwrap().status, 200);
    assert_eq!(client.get(gw.addr, "/v1/x").await.unwrap().status, 200);
    for result in ["revoked", "bad_crl"] {
        assert_eq!(handshakes(&gw, result), 0.0, "{result}");
    }
}

#[test]
fn explain_reports_bad_usage_and_the_crl_error() {
    let mut setup = Setup::new("127.0.0.1:9".parse().unwrap());
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let leaf = setup.ca.issue(
        &LeafSpec::client("key-agreement-only").with_key_usages(&[KeyUsagePurpose::KeyAgreement]),
    );
    let cert = write(setup.path(), "client.pem", &leaf.chain_pem);
    let config = setup.write_config();
    let args = [
        "explain",
        "-c",
        path_str(&config),
        "--cert",
        path_str(&cert),
    ];
    let run = certgate(&args);
    assert_eq!(run.code, 1, "{run:?}");
    for needle in [
        "chain:       REFUSED (bad_usage)",
        "KeyUsageLacksDigitalSignature",
        "DENY (the handshake would fail)",
    ] {
        assert!(run.stdout.contains(needle), "lacks {needle:?}:\n{run:?}");
    }

    let impostor = impostor_ca("certgate test client CA");
    let crl_file = write(
        setup.path(),
        "clients.crl.pem",
        &setup.ca.forged_crl(&impostor, &[]),
    );
    setup.client_auth = Some(CRL_AUTH.into());
    setup.write_config();
    let run = certgate(&args);
    assert_eq!(run.code, 2, "{run:?}");
    for needle in [path_str(&crl_file), "signature does not verify"] {
        assert!(run.stderr.contains(needle), "lacks {needle:?}:\n{run:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_crl_under_deny_counts_bad_crl() {
    let mut setup = open_setup().await;
    // nextUpdate an hour ago.
    write(
        setup.path(),
        "clients.crl.pem",
        &setup.ca.crl_with(&[], time::Duration::ZERO),
    );
    setup.client_auth = Some(format!("{CRL_AUTH}expired_crl = \"deny\"\n"));
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("billing"));
    assert_refused(&gw, &setup.client(&leaf), "bad_crl", "UnknownCA").await;
}

#[test]
fn check_warns_about_trusted_cas_without_a_crl() {
    let mut setup = Setup::new("127.0.0.1:9".parse().unwrap());
    let uncovered = TestCa::root("partner CA");
    write(setup.path(), "partner-ca.pem", &uncovered.pem);
    write(setup.path(), "clients.crl.pem", &setup.ca.crl(&[]));
    let auth = "[client_auth]\ntrusted_cas = [\"client-ca.pem\", \"partner-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n";
    // (case, extra [client_auth] line, warned)
    for (case, extra, warned) in [
        ("unknown_revocation = allow", "", true),
        (
            "unknown_revocation = deny",
            "unknown_revocation = \"deny\"\n",
            false,
        ),
    ] {
        setup.client_auth = Some(format!("{auth}{extra}"));
        let config = setup.write_config();
        let run = certgate(&["check", "-c", path_str(&config)]);
        assert_eq!(run.code, 0, "{case}: {run:?}");
        let warning = run.stdout.lines().find(|l| l.starts_with("warning:"));
        if warned {
            let warning = warning.unwrap_or_else(|| panic!("{case}: no warning:\n{}", run.stdout));
            assert!(
                warning.contains("CN=partner CA,O=certgate tests"),
                "{case}: {warning}"
            );
            assert!(
                !warning.contains("certgate test client CA"),
                "{case}: the covered CA is named: {warning}"
            );
        } else {
            assert_eq!(warning, None, "{case}");
        }
    }

    // Every CA with a CRL: nothing to warn about.
    let both = format!("{}{}", setup.ca.crl(&[]), uncovered.crl(&[]));
    write(setup.path(), "clients.crl.pem", &both);
    setup.client_auth = Some(auth.into());
    let config = setup.write_config();
    let run = certgate(&["check", "-c", path_str(&config)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("warning:"), "{}", run.stdout);
}

/// A CRL whose issuer is no trusted CA is an intermediate's: only the
/// client presents that certificate, so webpki verifies the CRL at the
/// handshake. It revokes what it lists; forged, it refuses the
/// intermediate's clients as `bad_crl`, never as `revoked`.
#[tokio::test(flavor = "multi_thread")]
async fn intermediate_crls_are_verified_at_the_handshake() {
    let mut setup = open_setup().await;
    let intermediate = setup.ca.intermediate("certgate test intermediate CA");
    let good = intermediate.issue(&LeafSpec::client("good"));
    let revoked = intermediate.issue(&LeafSpec::client("revoked"));
    write(
        setup.path(),
        "clients.crl.pem",
        &intermediate.crl(&[&revoked]),
    );
    setup.client_auth = Some(CRL_AUTH.into());

    let check = certgate(&["check", "-c", path_str(&setup.write_config())]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.contains("CN=certgate test intermediate CA")
            && check.stdout.contains("verified at each handshake"),
        "{}",
        check.stdout
    );

    let gw = setup.start();
    assert_refused(
        &gw,
        &setup.client(&revoked),
        "revoked",
        "CertificateRevoked",
    )
    .await;
    assert_eq!(
        setup.client(&good).get(gw.addr, "/x").await.unwrap().status,
        200
    );

    // The intermediate's name, another key: unusable, so nobody is revoked by it.
    let impostor = impostor_ca("certgate test intermediate CA");
    replace_atomically(
        setup.path(),
        "clients.crl.pem",
        &intermediate.forged_crl(&impostor, &[&good]),
    );
    assert!(
        eventually(Duration::from_secs(3), || gw
            .metric("certgate_config_generation")
            == 2.0),
        "reloaded; logs:\n{}",
        gw.logs()
    );
    let refused = setup.client(&good).get(gw.addr, "/x").await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        eventually(Duration::from_secs(3), || handshakes(&gw, "bad_crl") == 1.0),
        "counted as bad_crl; metrics:\n{}",
        gw.metrics()
    );
    assert_eq!(
        handshakes(&gw, "revoked"),
        1.0,
        "only the listed client counted as revoked"
    );
}
