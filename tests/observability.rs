//! Observability end to end: real traffic through the daemon (good and
//! refused clients, denied and bad paths, a misbehaving upstream) moves the
//! right SPEC §6 series; the admin endpoints answer; access, refusal and
//! audit logs carry the fields operators search on and never key material;
//! `/metrics` passes `promtool check metrics`; a real Prometheus server
//! scrapes it; the shipped alert rules pass `promtool check rules`; the
//! Grafana dashboard queries only metrics the daemon exports, in PromQL
//! that Prometheus accepts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(10);

const ROLES_AND_RULES: &str = r#"
[roles]
default = []
audit = ["ROLE_ADMIN"]

[[roles.map]]
cn = "obs-user"
roles = ["ROLE_USER"]

[[roles.map]]
cn = "obs-admin"
roles = ["ROLE_ADMIN", "ROLE_USER"]

[[roles.map]]
cn = "nobody-has-this-cn"
roles = ["ROLE_AUDITOR"]

[authorization]
default = "deny"

[[authorization.rule]]
path = "/api"
roles = ["ROLE_USER"]

[[authorization.rule]]
path = "/admin"
roles = ["ROLE_ADMIN"]

# Forward the certificate too, so that a leak of header values into the
# logs would show up as PEM text.
[identity]
forward_cert = true
xfcc = true
"#;

const CA_SUBJECT: &str = "CN=certgate test client CA,O=certgate tests";

/// Everything the main traffic test needs to know about its gateway.
struct Fixture {
    setup: Setup,
    gw: Gateway,
    /// The server certificate's notAfter, whole seconds.
    server_not_after: OffsetDateTime,
    /// Bounds on the CRL's nextUpdate (made between these two instants).
    crl_next_update: (i64, i64),
    user: Leaf,
    admin: Leaf,
    revoked: Leaf,
}

/// A gateway with a CRL, a server certificate whose notAfter is known to
/// the second, and debug logging (the broadest output to search for leaks).
fn start_fixture(upstream: SocketAddr) -> Fixture {
    let mut setup = Setup::new(upstream);
    let server_not_after = (OffsetDateTime::now_utc() + time::Duration::days(90))
        .replace_nanosecond(0)
        .unwrap();
    let server = setup.server_ca.issue(&LeafSpec {
        not_after: server_not_after,
        ..LeafSpec::server()
    });
    write(setup.path(), "server.pem", &server.chain_pem);
    write(setup.path(), "server.key", &server.key_pem);

    let user = setup.ca.issue(&LeafSpec::client("obs-user"));
    let admin = setup.ca.issue(&LeafSpec::client("obs-admin"));
    let revoked = setup.ca.issue(&LeafSpec::client("obs-user"));
    // TestCa::crl: nextUpdate = now - 1h + 7d, encoded in whole seconds.
    let offset = (time::Duration::days(7) - time::Duration::hours(1)).whole_seconds();
    let before = OffsetDateTime::now_utc().unix_timestamp() + offset;
    setup.revoke(&[&revoked]);
    let after = OffsetDateTime::now_utc().unix_timestamp() + offset;

    setup.extra = ROLES_AND_RULES.into();
    setup.env.push(("CERTGATE_LOG".into(), "debug".into()));
    let gw = setup.start();
    Fixture {
        setup,
        gw,
        server_not_after,
        crl_next_update: (before - 1, after),
        user,
        admin,
        revoked,
    }
}

/// Every client certificate the gateway must refuse, with the `result`
/// label its handshake must be counted under.
fn refused_clients(setup: &Setup, revoked: &Leaf) -> Vec<(&'static str, TestClient)> {
    let now = OffsetDateTime::now_utc();
    let issue = |spec: LeafSpec| setup.client(&setup.ca.issue(&spec));
    vec![
        ("no_client_cert", setup.anonymous_client()),
        (
            "unknown_issuer",
            setup.client(&TestCa::root("some other CA").issue(&LeafSpec::client("obs-user"))),
        ),
        (
            "expired",
            issue(LeafSpec {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
                ..LeafSpec::client("obs-user")
            }),
        ),
        (
            "not_yet_valid",
            issue(LeafSpec {
                not_before: now + time::Duration::days(1),
                not_after: now + time::Duration::days(10),
                ..LeafSpec::client("obs-user")
            }),
        ),
        ("revoked", setup.client(revoked)),
        (
            "bad_usage",
            issue(LeafSpec {
                eku: Eku::Server,
                ..LeafSpec::client("obs-user")
            }),
        ),
    ]
}

/// The JSON log lines of `gw` (the daemon logs JSON under the harness).
fn json_logs(gw: &Gateway) -> Vec<Value> {
    gw.logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for a JSON log line for which `pred` holds, and returns it.
fn wait_for_json_log(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    eventually(WAIT, || {
        found = json_logs(gw).into_iter().find(&pred);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no log line {what}; logs:\n{}", gw.logs()))
}

fn assert_metric(gw: &Gateway, sample: &str, expected: f64) {
    let mut last = f64::NAN;
    let ok = eventually(WAIT, || {
        last = gw.metric(sample);
        last == expected
    });
    assert!(
        ok,
        "{sample} = {last}, expected {expected}\n{}",
        gw.metrics()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_moves_every_counter_under_the_right_label() {
    let upstream = echo_upstream().await;
    let f = start_fixture(upstream);
    let gw = &f.gw;

    // One connection, several requests: allowed (with a path that needs
    // normalizing), bad path, denied path.
    let mut conn = f.setup.client(&f.user).connect(gw.addr).await.unwrap();
    let ok = conn.get("/api/./orders//1").await.unwrap();
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let bad = conn.get("/api/a%2Fb").await.unwrap();
    assert_eq!(bad.status, 400);
    let denied = conn
        .request(
            http::Method::GET,
            "/admin/users",
            &[("x-request-id", "obs-denied-1")],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["request_id"], "obs-denied-1");
    drop(conn);

    let admin = f
        .setup
        .client(&f.admin)
        .get(gw.addr, "/admin/users")
        .await
        .unwrap();
    assert_eq!(admin.status, 200);

    let refused = refused_clients(&f.setup, &f.revoked);
    for (label, client) in &refused {
        let result = client.get(gw.addr, "/api/x").await;
        assert!(result.is_err(), "{label}: the gateway answered {result:?}");
    }

    for (label, _) in &refused {
        assert_metric(
            gw,
            &format!("certgate_tls_handshakes_total{{result=\"{label}\"}}"),
            1.0,
        );
    }
    for (sample, expected) in [
        ("certgate_tls_handshakes_total{result=\"ok\"}", 2.0),
        ("certgate_tls_handshakes_total{result=\"other\"}", 0.0),
        ("certgate_tls_handshake_duration_seconds_count", 2.0),
        ("certgate_connections_total", 2.0 + refused.len() as f64),
        ("certgate_connections_active", 0.0),
        ("certgate_requests_total{code=\"200\"}", 2.0),
        ("certgate_requests_total{code=\"400\"}", 1.0),
        ("certgate_requests_total{code=\"403\"}", 1.0),
        ("certgate_request_duration_seconds_count", 4.0),
        ("certgate_authz_denied_total", 1.0),
        // Once per connection: the user's three requests grant ROLE_USER once.
        ("certgate_role_grants_total{role=\"ROLE_USER\"}", 2.0),
        ("certgate_role_grants_total{role=\"ROLE_ADMIN\"}", 1.0),
        ("certgate_role_grants_total{role=\"ROLE_AUDITOR\"}", 0.0),
        (
            "certgate_upstream_errors_total{kind=\"connect\",upstream=\"default\"}",
            0.0,
        ),
    ] {
        assert_metric(gw, sample, expected);
    }
    let metrics = gw.metrics();
    assert!(
        metrics.contains("certgate_role_grants_total{role=\"ROLE_AUDITOR\"} 0"),
        "configured roles are exposed before their first grant:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gauges_and_admin_endpoints_describe_the_loaded_state() {
    let upstream = echo_upstream().await;
    let started = OffsetDateTime::now_utc().unix_timestamp();
    let f = start_fixture(upstream);
    let gw = &f.gw;
    let not_after = f.server_not_after.unix_timestamp();

    let metrics = gw.metrics();
    let server_expiry = metric_value(
        &metrics,
        "certgate_certificate_expiry_timestamp_seconds{kind=\"server\",subject=\"CN=localhost\"}",
    );
    assert_eq!(
        server_expiry, not_after as f64,
        "server certificate notAfter\n{metrics}"
    );
    let ca_expiry = metric_value(
        &metrics,
        &format!("certgate_certificate_expiry_timestamp_seconds{{kind=\"client_ca\",subject=\"{CA_SUBJECT}\"}}"),
    );
    let year = 365 * 86_400;
    assert!(
        (started + year - 60..=started + year + 60).contains(&(ca_expiry as i64)),
        "client CA notAfter {ca_expiry}\n{metrics}"
    );
    let crl_next = metric_value(
        &metrics,
        &format!("certgate_crl_next_update_timestamp_seconds{{issuer=\"{CA_SUBJECT}\"}}"),
    ) as i64;
    let (lo, hi) = f.crl_next_update;
    assert!(
        (lo..=hi).contains(&crl_next),
        "CRL nextUpdate {crl_next} not in {lo}..={hi}\n{metrics}"
    );

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metric_value(
            &metrics,
            &format!("certgate_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    assert_eq!(metric_value(&metrics, "certgate_config_generation"), 1.0);
    assert_eq!(
        metric_value(&metrics, "certgate_config_last_reload_successful"),
        1.0
    );
    let loaded = metric_value(
        &metrics,
        "certgate_config_last_reload_success_timestamp_seconds",
    ) as i64;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (started..=now).contains(&loaded),
        "last successful load at {loaded}, test ran {started}..={now}"
    );

    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert_eq!(gw.admin_get("/readyz").0, 200);
    assert_eq!(gw.admin_get("/nope").0, 404);

    let (code, body) = gw.admin_get("/status");
    assert_eq!(code, 200);
    let status: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    assert_eq!(status["generation"], 1, "{status:#}");
    assert_eq!(status["version"], version);
    assert_eq!(status["draining"], false);
    assert_eq!(
        status["upstream"],
        format!("http://{upstream}/"),
        "{status:#}"
    );
    assert_eq!(status["connections_active"], 0, "{status:#}");
    assert!(status["last_reload"]["error"].is_null(), "{status:#}");
    assert!(status["last_reload"]["success"].is_string(), "{status:#}");
    let certs = status["certificates"]
        .as_array()
        .expect("certificates array");
    let server = certs
        .iter()
        .find(|c| c["kind"] == "server")
        .unwrap_or_else(|| panic!("no server certificate in {status:#}"));
    assert_eq!(server["subject"], "CN=localhost");
    assert_eq!(server["not_after_unix"], not_after);
    let rfc3339 = f
        .server_not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(server["not_after"], rfc3339.as_str());
    assert!(
        certs
            .iter()
            .any(|c| c["kind"] == "client_ca" && c["subject"] == CA_SUBJECT),
        "{status:#}"
    );
    let crl = &status["crls"][0];
    assert_eq!(crl["issuer"], CA_SUBJECT);
    assert_eq!(crl["revoked"], 1);
    assert_eq!(crl["next_update_unix"], crl_next);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_carry_access_refusal_and_audit_fields_but_no_key_material() {
    let upstream = echo_upstream().await;
    let f = start_fixture(upstream);
    let gw = &f.gw;

    let ok = f
        .setup
        .client(&f.user)
        .get(gw.addr, "/api/./orders//1?q=1")
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let request_id = ok.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(f
        .setup
        .client(&f.revoked)
        .get(gw.addr, "/api/x")
        .await
        .is_err());
    assert_eq!(
        f.setup
            .client(&f.admin)
            .get(gw.addr, "/admin")
            .await
            .unwrap()
            .status,
        200
    );

    let access = wait_for_json_log(gw, "for the allowed request", |v| {
        v["request_id"] == request_id.as_str()
    });
    let expect = |field: &str, value: Value| {
        assert_eq!(access[field], value, "access log field {field}: {access}");
    };
    expect("message", "request".into());
    expect("target", "certgate::access".into());
    expect("subject", "CN=obs-user,O=certgate tests".into());
    expect("fingerprint", f.user.fingerprint().into());
    expect("roles", "ROLE_USER".into());
    expect("method", "GET".into());
    expect("path", "/api/orders/1".into());
    expect("status", 200.into());
    let upstream_ms = access["upstream_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("upstream_ms: {access}"));
    let total_ms = access["total_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("total_ms: {access}"));
    assert!(upstream_ms > 0.0 && total_ms >= upstream_ms, "{access}");

    let refusal = wait_for_json_log(gw, "for the revoked client", |v| {
        v["message"] == "TLS handshake refused" && v["reason"] == "revoked"
    });
    let peer = refusal["peer"].as_str().unwrap_or_default();
    assert!(
        peer.starts_with("127.0.0.1:"),
        "refusal names the peer: {refusal}"
    );

    let audit = wait_for_json_log(gw, "auditing the ROLE_ADMIN grant", |v| {
        v["target"] == "certgate::audit"
    });
    assert_eq!(audit["level"], "WARN", "{audit}");
    assert_eq!(audit["subject"], "CN=obs-admin,O=certgate tests", "{audit}");
    assert_eq!(audit["role"], "ROLE_ADMIN", "{audit}");
    assert!(
        !json_logs(gw)
            .iter()
            .any(|v| v["target"] == "certgate::audit" && v["role"] != "ROLE_ADMIN"),
        "only audited roles are audited:\n{}",
        gw.logs()
    );

    let logs = gw.logs();
    for needle in [
        "PRIVATE KEY",
        "CERTIFICATE-----",
        "BEGIN%20CERTIFICATE",
        "CERTIFICATE%2D",
    ] {
        assert!(
            !logs.contains(needle),
            "a log line contains {needle:?}:\n{logs}"
        );
    }
    // The first base64 line of each certificate and key: present only if
    // PEM material leaked in some other framing.
    let server_pem = std::fs::read_to_string(f.setup.path().join("server.pem")).unwrap();
    let server_key = std::fs::read_to_string(f.setup.path().join("server.key")).unwrap();
    for (what, pem) in [
        ("user certificate", f.user.cert_pem.as_str()),
        ("user key", f.user.key_pem.as_str()),
        ("admin certificate", f.admin.cert_pem.as_str()),
        ("server certificate", server_pem.as_str()),
        ("server key", server_key.as_str()),
    ] {
        let body = pem.lines().nth(1).expect("PEM body line");
        assert!(
            !logs.contains(body),
            "the {what} appears in the logs:\n{logs}"
        );
    }
}

/// An upstream that misbehaves as told: `GARBAGE` answers something that
/// is not HTTP; `SILENT` accepts and never answers.
const GARBAGE: u8 = 0;
const SILENT: u8 = 1;

async fn misbehaving_upstream(mode: Arc<AtomicU8>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mode = mode.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if mode == GARBAGE {
                    let _ = tcp.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                drop(tcp);
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_are_counted_by_kind() {
    let mode = Arc::new(AtomicU8::new(GARBAGE));
    let (upstream, listener_task) = misbehaving_upstream(mode.clone()).await;
    let mut setup = Setup::new(upstream);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
        .env
        .push(("CERTGATE_UPSTREAM__TIMEOUT".into(), "500ms".into()));
    let gw = setup.start();
    let client = setup.client(&setup.ca.issue(&LeafSpec::client("obs-user")));

    let garbage = client.get(gw.addr, "/x").await.unwrap();
    assert_eq!(
        garbage.status,
        502,
        "{}",
        String::from_utf8_lossy(&garbage.body)
    );
    assert_metric(
        &gw,
        "certgate_upstream_errors_total{kind=\"protocol\",upstream=\"default\"}",
        1.0,
    );

    mode.store(SILENT, Ordering::SeqCst);
    let silent = client.get(gw.addr, "/x").await.unwrap();
    assert_eq!(silent.status, 504);
    assert_metric(
        &gw,
        "certgate_upstream_errors_total{kind=\"timeout\",upstream=\"default\"}",
        1.0,
    );

    // Closing the listener makes the next connect fail.
    listener_task.abort();
    let _ = listener_task.await;
    let down = client.get(gw.addr, "/x").await.unwrap();
    assert_eq!(down.status, 502);
    assert_metric(
        &gw,
        "certgate_upstream_errors_total{kind=\"connect\",upstream=\"default\"}",
        1.0,
    );

    assert_metric(
        &gw,
        "certgate_upstream_errors_total{kind=\"protocol\",upstream=\"default\"}",
        1.0,
    );
    assert_metric(
        &gw,
        "certgate_upstream_errors_total{kind=\"timeout\",upstream=\"default\"}",
        1.0,
    );
    assert_metric(&gw, "certgate_requests_total{code=\"502\"}", 2.0);
    assert_metric(&gw, "certgate_requests_total{code=\"504\"}", 1.0);
    let request_id = down.json()["request_id"].as_str().unwrap().to_owned();
    let line = wait_for_json_log(&gw, "for the upstream-down request", |v| {
        v["request_id"] == request_id.as_str()
    });
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["error"], "upstream unreachable", "{line}");
}

// ------------------------------------------------------- promtool ------

/// Why a Prometheus tool test cannot run here, if it cannot.
fn missing(tool: &str) -> Option<String> {
    (!have(tool))
        .then(|| format!("SKIPPED: `{tool}` is not installed (Debian package `prometheus`)"))
}

/// Runs `promtool args...` with `stdin`, returning (success, stdout + stderr).
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_lint_after_traffic() {
    if let Some(why) = missing("promtool") {
        eprintln!("{why}");
        return;
    }
    let upstream = echo_upstream().await;
    let f = start_fixture(upstream);
    let gw = &f.gw;
    // Populate histograms and labelled series (codes, roles, failures).
    assert_eq!(
        f.setup
            .client(&f.user)
            .get(gw.addr, "/api/x")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        f.setup
            .client(&f.user)
            .get(gw.addr, "/admin")
            .await
            .unwrap()
            .status,
        403
    );
    assert!(f
        .setup
        .client(&f.revoked)
        .get(gw.addr, "/api/x")
        .await
        .is_err());
    assert_metric(gw, "certgate_tls_handshakes_total{result=\"revoked\"}", 1.0);

    let metrics = gw.metrics();
    for populated in [
        "certgate_requests_total{code=\"403\"} 1",
        "certgate_request_duration_seconds_count 2",
        "certgate_tls_handshake_duration_seconds_count 2",
        "certgate_role_grants_total{role=\"ROLE_USER\"} 2",
    ] {
        assert!(
            metrics.contains(populated),
            "expected {populated:?} in\n{metrics}"
        );
    }
    let (ok, findings) = promtool(&["check", "metrics"], &metrics);
    assert!(
        ok && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}\n--- input:\n{metrics}"
    );
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    if let Some(why) = missing("promtool") {
        eprintln!("{why}");
        return;
    }
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus-alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{text}",
        rules.display()
    );
    // An empty file passes too: every alert in the file must have been read.
    let alerts = std::fs::read_to_string(&rules)
        .unwrap()
        .matches("- alert:")
        .count();
    assert!(
        alerts >= 5,
        "expected the documented alerts, found {alerts}"
    );
    assert!(
        text.contains(&format!("SUCCESS: {alerts} rules found")),
        "{text}"
    );
}

// ----------------------------------------------------- Prometheus ------

/// A Prometheus server process, killed and reaped on drop (also when the
/// test panics).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: certgate\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_file = write(dir.path(), "prometheus.yml", &config);
        let addr = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data.result` of an instant query, or `None` while Prometheus
    /// is not answering yet.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        // http_get_plain panics when nothing listens; Prometheus may still be starting.
        std::net::TcpStream::connect(self.addr).ok()?;
        let (code, body) = http_get_plain(self.addr, &format!("/api/v1/query?query={encoded}"));
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["status"] == "success")
            .then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_admin_listener() {
    const PROMETHEUS: &str = "/usr/bin/prometheus";
    if !Path::new(PROMETHEUS).exists() {
        eprintln!("SKIPPED: {PROMETHEUS} is not installed (Debian package `prometheus`)");
        return;
    }
    let upstream = echo_upstream().await;
    let mut setup = Setup::new(upstream);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("obs-user"));
    assert_eq!(
        setup.client(&leaf).get(gw.addr, "/x").await.unwrap().status,
        200
    );

    let prom = Prometheus::start(gw.admin.expect("admin listener"));
    let value = |r: &Value| r["value"][1].as_str().map(str::to_owned);
    let mut up = None;
    let mut ok_handshakes = None;
    let scraped = eventually(Duration::from_secs(30), || {
        up = prom.query("up").and_then(|r| r.first().and_then(value));
        ok_handshakes = prom
            .query("certgate_tls_handshakes_total{result=\"ok\"}")
            .and_then(|r| r.first().and_then(value));
        up.as_deref() == Some("1") && ok_handshakes.is_some()
    });
    assert!(
        scraped,
        "Prometheus did not scrape certgate within 30 s: up={up:?}, handshakes ok={ok_handshakes:?}\nprometheus log:\n{}",
        prom.log()
    );
    assert_eq!(ok_handshakes.as_deref(), Some("1"));
}

// ------------------------------------------------ Grafana dashboard ----

/// Every PromQL expression of the Grafana dashboard: its panels' targets,
/// its annotations and its template variables' queries.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The `certgate_*` and `process_*` metric names an expression reads.
fn metric_names(promql: &str) -> BTreeSet<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("certgate_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Metric families in Prometheus text, by name, with their type.
fn metric_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// Whether `name` is exported: a family, or a histogram's `_bucket`,
/// `_sum` or `_count` series.
fn exported(families: &BTreeMap<String, String>, name: &str) -> bool {
    families.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|family| families.get(family))
                .is_some_and(|kind| kind == "histogram")
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn grafana_dashboard_queries_only_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    let panels_without_query: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .filter(|p| dashboard_queries(p).iter().all(|q| q.trim().is_empty()))
        .collect();
    assert!(
        panels_without_query.is_empty(),
        "panels that query nothing: {panels_without_query:?}"
    );
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(
        queried.len() >= 15,
        "the dashboard should cover the gateway's metrics, queries only {queried:?}"
    );

    // A gateway with a CRL and traffic: every labelled series exists.
    let upstream = echo_upstream().await;
    let f = start_fixture(upstream);
    let gw = &f.gw;
    let client = f.setup.client(&f.user);
    assert_eq!(client.get(gw.addr, "/api/x").await.unwrap().status, 200);
    assert_eq!(client.get(gw.addr, "/admin").await.unwrap().status, 403);
    let families = metric_families(&gw.metrics());
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported(&families, name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}\nexported: {:?}",
        families.keys()
    );

    // Every expression is PromQL that a real Prometheus evaluates, with
    // Grafana's variables as a dashboard would fill them in.
    const PROMETHEUS: &str = "/usr/bin/prometheus";
    if !Path::new(PROMETHEUS).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{PROMETHEUS} is not installed, and CI must run every test"
        );
        eprintln!(
            "SKIPPED the PromQL check: {PROMETHEUS} is not installed (Debian package `prometheus`)"
        );
        return;
    }
    let prom = Prometheus::start(gw.admin.expect("admin listener"));
    assert!(
        eventually(Duration::from_secs(30), || prom.query("up").is_some()),
        "Prometheus did not answer within 30 s:\n{}",
        prom.log()
    );
    for query in &queries {
        let promql = query
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        let promql = match promql.strip_prefix("label_values(") {
            // label_values(metric, label) is Grafana's; the metric selector is PromQL.
            Some(args) => args
                .rsplit_once(',')
                .expect("label_values(m, l)")
                .0
                .to_owned(),
            None => promql,
        };
        assert!(
            prom.query(&promql).is_some(),
            "Prometheus refuses the dashboard's query {query:?} (as {promql:?})"
        );
    }
}
