//! The operator commands, run as the real binary: `check` (exit 0 with a
//! summary, 2 with the file and reason), `explain` (0 allowed, 1 refused or
//! denied, 2 bad input), `--version`, `dev-pki`, and the man pages and
//! shell completions `generate` writes for packages.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use time::OffsetDateTime;

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn certgate_with_env(args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CERTGATE_CONFIG")
        .env_remove("CERTGATE_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run certgate");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn certgate(args: &[&str]) -> Run {
    certgate_with_env(args, &[])
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A setup whose config passes `check`; the upstream is never contacted.
fn setup() -> Setup {
    Setup::new("127.0.0.1:9".parse().unwrap())
}

#[test]
fn check_accepts_a_valid_config_and_prints_subjects_and_expiry() {
    let setup = setup();
    let not_after = (OffsetDateTime::now_utc() + time::Duration::days(200))
        .replace_nanosecond(0)
        .unwrap();
    let server = setup.server_ca.issue(&LeafSpec {
        not_after,
        ..LeafSpec::server()
    });
    write(setup.path(), "server.pem", &server.chain_pem);
    write(setup.path(), "server.key", &server.key_pem);
    let config = setup.write_config();

    let run = certgate(&["check", "-c", path_str(&config)]);
    assert_eq!(run.code, 0, "{run:?}");
    let expiry = not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for needle in [
        "is valid",
        "server: CN=localhost",
        &format!("not_after={expiry}"),
        "client_ca: CN=certgate test client CA,O=certgate tests",
        "authorization: default=deny",
    ] {
        assert!(
            run.stdout.contains(needle),
            "summary lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains("WARNING"),
        "200 days left is no warning:\n{}",
        run.stdout
    );

    // Without -c, $CERTGATE_CONFIG names the file.
    let run = certgate_with_env(&["check"], &[("CERTGATE_CONFIG", &config)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(path_str(&config)), "{}", run.stdout);
}

#[test]
fn check_warns_about_a_server_certificate_close_to_expiry() {
    let setup = setup();
    let soon = OffsetDateTime::now_utc() + time::Duration::days(10) + time::Duration::hours(1);
    let server = setup.server_ca.issue(&LeafSpec {
        not_after: soon,
        ..LeafSpec::server()
    });
    write(setup.path(), "server.pem", &server.chain_pem);
    write(setup.path(), "server.key", &server.key_pem);
    let run = certgate(&["check", "-c", path_str(&setup.write_config())]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("WARNING: expires in 10.04 days"),
        "{}",
        run.stdout
    );
}

#[test]
fn check_refuses_invalid_configs_naming_the_file_and_reason() {
    type Breaker = fn(&mut Setup);
    let cases: &[(&str, Breaker, &[&str])] = &[
        (
            "unknown key",
            |s| {
                s.listener = Some(
                    "[listener]\naddress = \"127.0.0.1:0\"\nhandshake_timout = \"10s\"\n".into(),
                );
            },
            &["certgate.toml", "handshake_timout"],
        ),
        (
            "unknown section",
            |s| s.extra = "[upsteam]\nurl = \"http://127.0.0.1:9\"\n".into(),
            &["certgate.toml", "upsteam"],
        ),
        (
            "missing certificate file",
            |s| std::fs::remove_file(s.path().join("server.pem")).unwrap(),
            &["server.pem", "cannot read"],
        ),
        (
            "key that does not match the certificate",
            |s| {
                let other = s.server_ca.issue(&LeafSpec::server());
                write(s.path(), "server.key", &other.key_pem);
            },
            &["server.key", "does not match", "server.pem"],
        ),
        (
            "empty CA bundle file",
            |s| {
                write(s.path(), "client-ca.pem", "");
            },
            &["client-ca.pem", "no CERTIFICATE"],
        ),
        (
            "empty CA directory",
            |s| {
                std::fs::create_dir(s.path().join("cas")).unwrap();
                s.client_auth = Some("[client_auth]\ntrusted_cas = [\"cas\"]\n".into());
            },
            &["cas", "bundle is empty"],
        ),
        (
            "bad duration",
            |s| {
                s.listener = Some(
                    "[listener]\naddress = \"127.0.0.1:0\"\nidle_timeout = \"10 parsecs\"\n".into(),
                );
            },
            &["certgate.toml", "listener.idle_timeout", "10 parsecs"],
        ),
        (
            "unparsable CRL",
            |s| {
                write(s.path(), "clients.crl", "not a CRL at all");
                s.client_auth = Some(
                    "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl\"]\n"
                        .into(),
                );
            },
            &["clients.crl", "not a CRL"],
        ),
    ];
    for (name, break_it, needles) in cases {
        let mut setup = setup();
        break_it(&mut setup);
        let run = certgate(&["check", "-c", path_str(&setup.write_config())]);
        assert_eq!(run.code, 2, "{name}: {run:?}");
        assert!(!run.stdout.contains("is valid"), "{name}: {run:?}");
        for needle in *needles {
            assert!(
                run.stderr.contains(needle),
                "{name}: stderr lacks {needle:?}:\n{}",
                run.stderr
            );
        }
    }
}

#[test]
fn check_with_a_missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nope.toml");
    let run = certgate(&["check", "-c", path_str(&config)]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("nope.toml"), "{}", run.stderr);
}

const EXPLAIN_RULES: &str = r#"
[roles]
default = []

[[roles.map]]
cn = "billing-*"
roles = ["ROLE_USER"]

[authorization]
default = "deny"

[[authorization.rule]]
path = "/api"
methods = ["GET"]
roles = ["ROLE_USER"]

[[authorization.rule]]
path = "/admin"
roles = ["ROLE_ADMIN"]
"#;

#[test]
fn explain_reports_identity_roles_and_decision_with_exit_codes() {
    let mut setup = setup();
    let now = OffsetDateTime::now_utc();
    let user = setup.ca.issue(&LeafSpec::client("billing-api"));
    let revoked = setup.ca.issue(&LeafSpec::client("billing-old"));
    let expired = setup.ca.issue(&LeafSpec {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
        ..LeafSpec::client("billing-api")
    });
    let stranger = TestCa::root("another CA").issue(&LeafSpec::client("billing-api"));
    for (file, leaf) in [
        ("user.pem", &user),
        ("revoked.pem", &revoked),
        ("expired.pem", &expired),
        ("stranger.pem", &stranger),
    ] {
        write(setup.path(), file, &leaf.chain_pem);
    }
    write(setup.path(), "clients.crl", &setup.ca.crl(&[&revoked]));
    setup.client_auth =
        Some("[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl\"]\n".into());
    setup.extra = EXPLAIN_RULES.into();
    let config = setup.write_config();
    let fingerprint = user.fingerprint();

    // (case, certificate file, --path, --method, exit code, expected output)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, i32, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "allowed",
            "user.pem",
            "/api/./orders//7?page=2",
            "get",
            0,
            &[
                "subject:     CN=billing-api,O=certgate tests",
                &fingerprint,
                "matched map[0]: cn=billing-* => ROLE_USER",
                "roles:       [ROLE_USER]",
                "request:     GET /api/orders/7",
                "decision:    ALLOW by rule[0]: GET /api => ROLE_USER",
            ],
        ),
        (
            "denied path",
            "user.pem",
            "/admin/users",
            "GET",
            1,
            &[
                "roles:       [ROLE_USER]",
                "DENY by rule[1] (missing role): * /admin => ROLE_ADMIN",
            ],
        ),
        (
            "denied method",
            "user.pem",
            "/api/orders",
            "DELETE",
            1,
            &[
                "request:     DELETE /api/orders",
                "DENY (method not allowed on this path)",
            ],
        ),
        (
            "no rule covers the path",
            "user.pem",
            "/other",
            "GET",
            1,
            &["DENY (no rule covers the path)"],
        ),
        (
            "unsafe path",
            "user.pem",
            "/api/a%2Fb",
            "GET",
            1,
            &["DENY (400: encoded slash"],
        ),
        (
            "built-in whoami",
            "user.pem",
            "/.certgate/whoami",
            "GET",
            0,
            &["ALLOW (built-in endpoint"],
        ),
        (
            "revoked",
            "revoked.pem",
            "/api/x",
            "GET",
            1,
            &[
                "chain:       REFUSED (revoked)",
                "DENY (the handshake would fail)",
            ],
        ),
        (
            "expired",
            "expired.pem",
            "/api/x",
            "GET",
            1,
            &["chain:       REFUSED (expired)", "not valid after"],
        ),
        (
            "untrusted issuer",
            "stranger.pem",
            "/api/x",
            "GET",
            1,
            &["chain:       REFUSED (unknown_issuer)"],
        ),
    ];
    for (name, cert, path, method, code, needles) in cases {
        let cert = setup.path().join(cert);
        let run = certgate(&[
            "explain",
            "-c",
            path_str(&config),
            "--cert",
            path_str(&cert),
            "--path",
            path,
            "--method",
            method,
        ]);
        assert_eq!(run.code, *code, "{name}: {run:?}");
        for needle in *needles {
            assert!(
                run.stdout.contains(needle),
                "{name}: output lacks {needle:?}:\n{}",
                run.stdout
            );
        }
        let refused = run.stdout.contains("REFUSED");
        assert!(
            !refused || !run.stdout.contains("roles:"),
            "{name}: no roles for a refused chain:\n{}",
            run.stdout
        );
    }
}

#[test]
fn explain_bad_input_exits_2() {
    let setup = setup();
    let config = setup.write_config();
    let leaf = setup.ca.issue(&LeafSpec::client("billing-api"));
    let cert = write(setup.path(), "leaf.pem", &leaf.chain_pem);
    let key = write(setup.path(), "leaf.key", &leaf.key_pem);
    let missing = setup.path().join("missing.pem");
    let cases: &[(&str, Vec<&str>, &str)] = &[
        (
            "missing cert file",
            vec!["--cert", path_str(&missing)],
            "missing.pem",
        ),
        (
            "a key instead of a certificate",
            vec!["--cert", path_str(&key)],
            "leaf.key",
        ),
        (
            "bad method",
            vec!["--cert", path_str(&cert), "--method", "GE T"],
            "not an HTTP method",
        ),
        ("no --cert", vec![], "--cert"),
    ];
    for (name, args, needle) in cases {
        let mut all = vec!["explain", "-c", path_str(&config)];
        all.extend(args);
        let run = certgate(&all);
        assert_eq!(run.code, 2, "{name}: {run:?}");
        assert!(
            run.stderr.contains(needle),
            "{name}: stderr lacks {needle:?}: {}",
            run.stderr
        );
        assert!(!run.stdout.contains("decision:"), "{name}: {run:?}");
    }

    let broken = write(setup.path(), "broken.toml", "[listener]\n");
    let run = certgate(&[
        "explain",
        "-c",
        path_str(&broken),
        "--cert",
        path_str(&cert),
    ]);
    assert_eq!(run.code, 2, "invalid config: {run:?}");
}

#[test]
fn version_and_usage() {
    let run = certgate(&["--version"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        format!("certgate {}", env!("CARGO_PKG_VERSION"))
    );

    let run = certgate(&["no-such-command"]);
    assert_eq!(run.code, 2, "{run:?}");
}

#[test]
fn dev_pki_writes_a_pki_whose_config_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dev");
    let run = certgate(&["dev-pki", "--out", path_str(&out)]);
    assert_eq!(run.code, 0, "{run:?}");
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "crl.pem",
        "certgate.toml",
        "admin.pem",
        "admin.key",
        "user.pem",
        "user.key",
        "unmapped.pem",
        "unmapped.key",
        "revoked.pem",
        "revoked.key",
    ] {
        assert!(out.join(file).is_file(), "dev-pki did not write {file}");
    }
    let mode = std::fs::metadata(out.join("server.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "private keys are readable by the owner only");

    let config = out.join("certgate.toml");
    let run = certgate(&["check", "-c", path_str(&config)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("1 revoked"), "{}", run.stdout);

    let explain = |who: &str, path: &str, method: &str| {
        let cert = out.join(format!("{who}.pem"));
        certgate(&[
            "explain",
            "-c",
            path_str(&config),
            "--cert",
            path_str(&cert),
            "--path",
            path,
            "--method",
            method,
        ])
    };
    assert_eq!(explain("admin", "/api/orders", "POST").code, 0);
    assert_eq!(explain("user", "/api/orders", "GET").code, 0);
    assert_eq!(explain("user", "/api/orders", "POST").code, 1);
    assert_eq!(explain("unmapped", "/api/orders", "GET").code, 1);
    let revoked = explain("revoked", "/api/orders", "GET");
    assert_eq!(revoked.code, 1, "{revoked:?}");
    assert!(
        revoked.stdout.contains("REFUSED (revoked)"),
        "{}",
        revoked.stdout
    );
}

/// The commands `certgate help` lists, as the user sees them.
fn visible_commands() -> Vec<String> {
    let run = certgate(&["help"]);
    assert_eq!(run.code, 0, "{run:?}");
    let list = run
        .stdout
        .split_once("Commands:\n")
        .expect("a Commands: list")
        .1;
    let commands: Vec<String> = list
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    assert!(
        ["run", "check", "explain"]
            .iter()
            .all(|c| commands.iter().any(|x| x == c)),
        "{commands:?}"
    );
    commands
}

#[test]
fn generated_man_pages_describe_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let run = certgate(&["generate", "man", path_str(dir.path())]);
    assert_eq!(run.code, 0, "{run:?}");
    let main_page = std::fs::read_to_string(dir.path().join("certgate.1")).unwrap();
    for command in visible_commands() {
        let page = dir.path().join(format!("certgate-{command}.1"));
        assert!(page.is_file(), "no man page for `{command}`");
        assert!(
            // roff escapes every '-'.
            main_page.contains(&format!("certgate\\-{}(1)", command.replace('-', "\\-"))),
            "certgate.1 does not list `{command}`:\n{main_page}"
        );
    }
    let sections: Vec<&str> = main_page
        .lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|h| h.trim_matches('"'))
        .collect();
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
        assert!(
            sections.contains(&section),
            "certgate.1 lacks {section}:\n{main_page}"
        );
    }
    assert!(
        !main_page.contains("generate"),
        "the packaging command stays hidden"
    );
    if !have("man") {
        eprintln!("man is not installed: rendering not checked");
        return;
    }
    let out = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("certgate.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("run man");
    let text = String::from_utf8_lossy(&out.stdout);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.is_empty(),
        "man: {warnings}"
    );
    for expected in [
        "certgate-check(1)",
        "CERTGATE_CONFIG",
        "2 invalid configuration",
    ] {
        assert!(
            text.contains(expected),
            "man certgate lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn generated_completions_complete_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let run = certgate(&["generate", "completions", path_str(dir.path())]);
    assert_eq!(run.code, 0, "{run:?}");
    let commands = visible_commands();
    for file in ["certgate.bash", "_certgate", "certgate.fish"] {
        let script = std::fs::read_to_string(dir.path().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        for command in &commands {
            assert!(
                script.contains(command.as_str()),
                "{file} lacks `{command}`"
            );
        }
        assert!(
            !script.contains("generate"),
            "{file} offers the hidden command"
        );
    }
    if !have("bash") {
        return;
    }
    // Bash loads the script and registers it for `certgate`.
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p certgate")
        .arg("bash")
        .arg(dir.path().join("certgate.bash"))
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("certgate"),
        "bash: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
