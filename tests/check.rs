//! `certgate check` finds everything in one pass and `--strict` fails on
//! what will break soon (SPEC §15); `run` logs the same at WARN, at start
//! and after a reload. Against the real binary.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use time::OffsetDateTime;

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn check(config: &Path, strict: bool) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("check").arg("-c").arg(config);
    if strict {
        cmd.arg("--strict");
    }
    let out = cmd
        .env_remove("CERTGATE_CONFIG")
        .env_remove("CERTGATE_LOG")
        .output()
        .expect("run certgate check");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A setup whose config passes `check`; the upstream is never contacted.
fn setup() -> Setup {
    Setup::new("127.0.0.1:9".parse().unwrap())
}

fn serve(setup: &Setup, spec: &LeafSpec) {
    let server = setup.server_ca.issue(spec);
    write(setup.path(), "server.pem", &server.chain_pem);
    write(setup.path(), "server.key", &server.key_pem);
}

#[test]
fn check_reports_five_problems_of_different_kinds_in_one_pass() {
    let mut setup = setup();
    // Two settings...
    setup.listener =
        Some("[listener]\naddress = \"127.0.0.1:0\"\nidle_timeout = \"10 parsecs\"\n".into());
    setup.extra = "[roles]\ndefault = [\"has,comma\"]\n".into();
    // ...and three files: a missing key, an empty CA bundle, a CRL that is
    // not one.
    std::fs::remove_file(setup.path().join("server.key")).unwrap();
    write(setup.path(), "client-ca.pem", "");
    write(setup.path(), "clients.crl", "not a CRL at all");
    setup.client_auth =
        Some("[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl\"]\n".into());
    let run = check(&setup.write_config(), false);
    assert_eq!(run.code, 2, "{run:?}");
    let problems: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("  - "))
        .collect();
    for (what, needles) in [
        ("bad duration", &["listener.idle_timeout", "10 parsecs"][..]),
        ("bad role name", &["roles", "has,comma"]),
        ("missing key file", &["server.key", "cannot read"]),
        ("empty CA bundle", &["client-ca.pem"]),
        ("unparsable CRL", &["clients.crl", "not a CRL"]),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| needles.iter().all(|n| p.contains(n))),
            "{what} not reported; stderr:\n{}",
            run.stderr
        );
    }
    assert_eq!(problems.len(), 5, "one line per problem:\n{}", run.stderr);
}

/// Unknown keys used to end the reading at the first: now each is named
/// (with its line) and the files are still checked.
#[test]
fn every_unknown_key_is_reported_and_the_files_are_still_checked() {
    let mut setup = setup();
    setup.listener = Some("[listener]\naddress = \"127.0.0.1:0\"\nidle_timout = \"30s\"\n".into());
    setup.extra = "[upstreams_typo]\nurl = \"http://127.0.0.1:9\"\n".into();
    std::fs::remove_file(setup.path().join("server.key")).unwrap();
    let run = check(&setup.write_config(), false);
    assert_eq!(run.code, 2, "{run:?}");
    for needle in [
        "unknown field `idle_timout`",
        "unknown field `upstreams_typo`",
        "server.key",
    ] {
        assert!(run.stderr.contains(needle), "{needle} in:\n{}", run.stderr);
    }
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);
}

#[test]
fn a_settings_problem_that_stands_in_for_a_file_is_reported_once() {
    let setup = setup();
    let config = setup.write_config();
    // cert given without key: a settings problem, and nothing to read.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("key = \"server.key\"\n", "");
    std::fs::write(&config, text).unwrap();
    let run = check(&config, false);
    assert_eq!(run.code, 2, "{run:?}");
    let problems: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("  - "))
        .collect();
    assert_eq!(problems.len(), 1, "{}", run.stderr);
    assert!(problems[0].contains("server_tls"), "{}", run.stderr);
}

#[test]
fn strict_check_exits_2_for_each_certificate_or_crl_that_needs_attention() {
    let now = OffsetDateTime::now_utc();
    type Breaker = Box<dyn Fn(&mut Setup)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "expired server certificate",
            Box::new(move |s| {
                serve(
                    s,
                    &LeafSpec {
                        not_before: now - time::Duration::days(30),
                        not_after: now - time::Duration::hours(1),
                        ..LeafSpec::server()
                    },
                );
            }),
            "expired at",
        ),
        (
            "server certificate not yet valid",
            Box::new(move |s| {
                serve(
                    s,
                    &LeafSpec {
                        not_before: now + time::Duration::days(1),
                        not_after: now + time::Duration::days(90),
                        ..LeafSpec::server()
                    },
                );
            }),
            "is not valid before",
        ),
        (
            "server certificate expiring within 7 days",
            Box::new(move |s| {
                serve(
                    s,
                    &LeafSpec {
                        not_after: now + time::Duration::days(4) + time::Duration::minutes(1411),
                        ..LeafSpec::server()
                    },
                );
            }),
            "expires in 4.98 days",
        ),
        (
            "CRL past nextUpdate",
            Box::new(|s| {
                // nextUpdate = now - 1h + 30 min.
                let crl = s.ca.crl_with(&[], time::Duration::minutes(30));
                write(s.path(), "clients.crl.pem", &crl);
                s.client_auth = Some(
                    "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n"
                        .into(),
                );
            }),
            "past its nextUpdate",
        ),
    ];
    for (case, break_it, needle) in cases {
        let mut setup = setup();
        break_it(&mut setup);
        let config = setup.write_config();
        let lenient = check(&config, false);
        assert_eq!(lenient.code, 0, "{case}: without --strict: {lenient:?}");
        assert!(
            lenient.stdout.contains(needle),
            "{case}: check does not say {needle:?}:\n{}",
            lenient.stdout
        );
        let strict = check(&config, true);
        assert_eq!(strict.code, 2, "{case}: {strict:?}");
    }
    let healthy = setup();
    let run = check(&healthy.write_config(), true);
    assert_eq!(run.code, 0, "a healthy config passes --strict: {run:?}");
    assert!(!run.stdout.contains("warning:"), "{}", run.stdout);
}

#[test]
fn check_shows_ip_sans_serial_and_days_with_decimals() {
    let setup = setup();
    let now = OffsetDateTime::now_utc();
    let server = setup.server_ca.issue(&LeafSpec {
        ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        not_after: now
            + time::Duration::days(12)
            + time::Duration::hours(12)
            + time::Duration::minutes(1),
        ..LeafSpec::server()
    });
    write(setup.path(), "server.pem", &server.chain_pem);
    write(setup.path(), "server.key", &server.key_pem);
    let run = check(&setup.write_config(), false);
    assert_eq!(run.code, 0, "{run:?}");
    for needle in [
        "127.0.0.1",
        "::1",
        &format!("serial={}", server.serial_hex()),
        "WARNING: expires in 12.50 days",
    ] {
        assert!(
            run.stdout.contains(needle),
            "no {needle:?} in:\n{}",
            run.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_warns_at_start_and_after_a_reload() {
    let setup = Setup::new(echo_upstream().await);
    let now = OffsetDateTime::now_utc();
    serve(
        &setup,
        &LeafSpec {
            not_after: now + time::Duration::days(3),
            ..LeafSpec::server()
        },
    );
    let gw = setup.start();
    let warned = |needle: &str| {
        gw.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["level"] == "WARN" && v["message"] == "served certificate or CRL needs attention"
            })
            .any(|v| v["problem"].as_str().is_some_and(|p| p.contains(needle)))
    };
    assert!(
        eventually(Duration::from_secs(5), || warned("expires in 2.99 days")
            || warned("expires in 3.00 days")),
        "no WARN at start:\n{}",
        gw.logs()
    );

    // A reload to a certificate that expired: WARN again, for the new one.
    let expired = setup.server_ca.issue(&LeafSpec {
        not_before: now - time::Duration::days(30),
        not_after: now - time::Duration::hours(2),
        ..LeafSpec::server()
    });
    replace_atomically(setup.path(), "server.pem", &expired.chain_pem);
    replace_atomically(setup.path(), "server.key", &expired.key_pem);
    gw.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || warned("expired at")),
        "no WARN after the reload:\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_names_served_certificates_by_serial_and_fingerprint() {
    let setup = Setup::new(echo_upstream().await);
    let server = setup.server_ca.issue(&LeafSpec {
        ips: vec!["127.0.0.1".parse().unwrap()],
        ..LeafSpec::server()
    });
    write(setup.path(), "server.pem", &server.chain_pem);
    write(setup.path(), "server.key", &server.key_pem);
    let gw = setup.start();
    let (code, body) = gw.admin_get("/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let served = status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "server")
        .unwrap_or_else(|| panic!("no server certificate in {status}"));
    assert_eq!(served["serial"], server.serial_hex().as_str(), "{served}");
    assert_eq!(
        served["fingerprint_sha256"],
        server.fingerprint().as_str(),
        "{served}"
    );
    assert_eq!(served["ip_addresses"][0], "127.0.0.1", "{served}");
}

/// Runs `keytool ARGS` in `dir`, panicking with its output if it fails.
fn keytool(dir: &Path, args: &[&str]) {
    let out = Command::new("keytool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run keytool");
    assert!(
        out.status.success(),
        "keytool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn java_keystores_are_named_with_the_keytool_command_that_converts_them() {
    if !have("keytool") {
        eprintln!("skipping: keytool is not installed (CI installs it)");
        return;
    }
    let mut setup = setup();
    let dir = setup.path().to_path_buf();
    keytool(
        &dir,
        &[
            "-genkeypair",
            "-keystore",
            "server.jks",
            "-storetype",
            "jks",
            "-storepass",
            "changeit",
            "-keypass",
            "changeit",
            "-alias",
            "server",
            "-keyalg",
            "EC",
            "-dname",
            "CN=localhost",
        ],
    );
    keytool(
        &dir,
        &[
            "-importcert",
            "-noprompt",
            "-keystore",
            "trust.jks",
            "-storetype",
            "jks",
            "-storepass",
            "changeit",
            "-alias",
            "clients",
            "-file",
            "client-ca.pem",
        ],
    );
    write(&dir, "server.jks.password", "changeit\n");
    setup.client_auth = Some("[client_auth]\ntrusted_cas = [\"trust.jks\"]\n".into());
    let config = setup.write_config();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "cert = \"server.pem\"\nkey = \"server.key\"\n",
        "pkcs12 = \"server.jks\"\npkcs12_password_file = \"server.jks.password\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let run = check(&config, false);
    assert_eq!(run.code, 2, "{run:?}");
    for store in ["server.jks", "trust.jks"] {
        assert!(
            run.stderr.lines().any(|l| l.contains(store)
                && l.contains("Java KeyStore (JKS)")
                && l.contains("keytool -importkeystore")
                && l.contains("-deststoretype pkcs12")),
            "{store} is not named as a JKS store with the fix:\n{}",
            run.stderr
        );
    }
}
