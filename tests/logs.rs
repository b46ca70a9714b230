//! Log lines as tools read them (SPEC §15): text logs are logfmt (every
//! field `key=value`, values with spaces, `=` or `"` quoted), parsed here
//! by a logfmt parser; durations are `_ms` fields with at most 3 decimals,
//! in text and JSON alike.

mod common;

use std::time::Duration;

use common::*;

/// A client whose subject holds spaces, commas and `=`, as an unquoted
/// value would break it into several fields.
fn awkward_client(setup: &Setup) -> Leaf {
    setup.ca.issue(&LeafSpec {
        ou: vec!["payments".into()],
        o: Some("Example Org = Co".into()),
        ..LeafSpec::client("svc one")
    })
}

/// Every field of a logfmt line, or the reason it is not logfmt.
fn logfmt_fields(line: &str) -> Result<Vec<(String, String)>, String> {
    logfmt::parse(line)
        .into_iter()
        .map(|p| match p.val {
            Some(v) if !p.key.is_empty() => Ok((p.key, v)),
            _ => Err(format!("`{}` is not key=value in: {line}", p.key)),
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// At most 3 decimals, as a number.
fn assert_ms(value: &str, what: &str) {
    let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(
        value.parse::<f64>().is_ok() && decimals <= 3,
        "{what} = {value}: not milliseconds with at most 3 decimals"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_parse_as_logfmt() {
    let mut setup = Setup::new(echo_upstream().await);
    let client = awkward_client(&setup);
    let revoked = setup.ca.issue(&LeafSpec {
        ou: vec!["payments".into()],
        ..LeafSpec::client("revoked one")
    });
    setup.revoke(&[&revoked]);
    setup.extra =
        "[authorization]\ndefault = \"authenticated\"\n\n[log]\nformat = \"text\"\n".into();
    let gw = setup.start();

    let reply = setup.client(&client).get(gw.addr, "/api/x").await.unwrap();
    assert_eq!(reply.status, 200);
    let subject = setup
        .client(&client)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap()
        .json()["subject"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(subject.contains(' ') && subject.contains(','));
    let _ = setup.client(&revoked).get(gw.addr, "/api/x").await;
    assert!(
        gw.wait_for_log(&["TLS handshake refused"], Duration::from_secs(5)),
        "{}",
        gw.logs()
    );

    let lines: Vec<String> = gw.logs.lock().unwrap().clone();
    let parsed: Vec<Vec<(String, String)>> = lines
        .iter()
        .map(|l| logfmt_fields(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for fields in &parsed {
        for key in ["ts", "level", "message"] {
            assert!(field(fields, key).is_some(), "no {key} in {fields:?}");
        }
    }
    let access = parsed
        .iter()
        .find(|f| field(f, "message") == Some("request") && field(f, "path") == Some("/api/x"))
        .expect("access line");
    assert_eq!(field(access, "subject"), Some(subject.as_str()));
    assert_eq!(field(access, "status"), Some("200"));
    for key in ["upstream_ms", "total_ms"] {
        assert_ms(field(access, key).expect(key), key);
    }
    let refusal = parsed
        .iter()
        .find(|f| field(f, "message") == Some("TLS handshake refused"))
        .expect("refusal line");
    assert_eq!(field(refusal, "reason"), Some("revoked"));
    assert_eq!(
        field(refusal, "serial"),
        Some(revoked.serial_hex().as_str())
    );
    assert!(
        field(refusal, "subject").is_some_and(|s| s.starts_with("CN=revoked one,OU=payments")),
        "{refusal:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_durations_have_at_most_three_decimals() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let client = setup.ca.issue(&LeafSpec::client("timed"));
    let gw = setup.start();
    for _ in 0..5 {
        let reply = setup.client(&client).get(gw.addr, "/api/x").await.unwrap();
        assert_eq!(reply.status, 200);
    }
    // All five access lines: the last may be written after the reply.
    assert!(eventually(Duration::from_secs(5), || gw
        .logs()
        .matches("\"total_ms\"")
        .count()
        >= 5));
    let logs = gw.logs();
    let mut seen = 0;
    for line in logs.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            panic!("not JSON: {line}");
        };
        for (key, value) in v.as_object().unwrap() {
            if key.ends_with("_ms") {
                // serde_json prints the f64 as the daemon wrote it.
                assert_ms(&value.to_string(), key);
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "{seen} _ms fields in:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_path_lines_log_the_path_as_sent() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let client = setup.ca.issue(&LeafSpec::client("pathy"));
    let gw = setup.start();
    let reply = setup
        .client(&client)
        .get(gw.addr, "/api/a%2Fb")
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert!(
        gw.wait_for_log(
            &["\"status\":400", "\"path\":\"/api/a%2Fb\""],
            Duration::from_secs(5)
        ),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_warning_but_not_one_per_request() {
    // Nothing listens on a port that was just bound and released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut setup = Setup::new(closed);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let client = setup.ca.issue(&LeafSpec::client("hopeful"));
    let gw = setup.start();
    const REQUESTS: usize = 10;
    for _ in 0..REQUESTS {
        let reply = setup.client(&client).get(gw.addr, "/api/x").await.unwrap();
        assert!(
            matches!(reply.status.as_u16(), 502 | 503),
            "{}",
            reply.status
        );
    }
    assert!(
        gw.wait_for_log(
            &["\"level\":\"WARN\"", "upstream endpoint resting"],
            Duration::from_secs(5)
        ),
        "{}",
        gw.logs()
    );
    let warnings = gw
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains("upstream"))
        .count();
    assert!(warnings < REQUESTS, "one WARN per request:\n{}", gw.logs());
}
