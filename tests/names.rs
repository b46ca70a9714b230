//! Certificate names against the real daemon (SPEC §10 "Certificate
//! names"): a certificate cannot make its identity headers look like
//! another certificate's, nor satisfy a role rule by hiding RDN separators
//! in a value, carrying an attribute twice or presenting a SPIFFE-looking
//! URI that is not a SPIFFE ID.

mod common;

use std::process::Command;

use common::*;
use rcgen::DnType;

/// `/admin` needs `ROLE_ADMIN`; everything else is open to any verified client.
fn admin_only(rule: &str) -> String {
    format!(
        r#"
[[roles.map]]
roles = ["ROLE_ADMIN"]
{rule}
[authorization]
default = "authenticated"
[[authorization.rule]]
path = "/admin"
roles = ["ROLE_ADMIN"]
"#
    )
}

async fn get(setup: &Setup, gw: &Gateway, leaf: &Leaf, path: &str) -> Reply {
    setup.client(leaf).get(gw.addr, path).await.expect("reply")
}

#[tokio::test(flavor = "multi_thread")]
async fn subject_wildcard_does_not_span_an_escaped_comma() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = admin_only(r#"subject = "CN=*,OU=admins,*""#);
    let gw = setup.start();

    let attacker = setup.ca.issue(&LeafSpec {
        ou: vec!["dev".into()],
        ..LeafSpec::client("x,OU=admins")
    });
    let reply = get(&setup, &gw, &attacker, "/").await;
    assert_eq!(
        reply.upstream_header("x-client-subject").as_deref(),
        Some("CN=x\\,OU=admins,OU=dev,O=certgate tests")
    );
    assert_gateway_error(
        &get(&setup, &gw, &attacker, "/admin").await,
        403,
        "forbidden",
        "a CN holding `,OU=admins`",
    );

    let admin = setup.ca.issue(&LeafSpec {
        ou: vec!["admins".into()],
        ..LeafSpec::client("alice")
    });
    assert_eq!(get(&setup, &gw, &admin, "/admin").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn san_header_values_escape_backslash() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();

    let mut seen = Vec::new();
    for uri in ["https://lab.test/a,b", "https://lab.test/a\\2Cb"] {
        let leaf = setup.ca.issue(&LeafSpec {
            uris: vec![uri.into()],
            ..LeafSpec::client("lab")
        });
        let reply = get(&setup, &gw, &leaf, "/").await;
        seen.push(reply.upstream_header("x-client-san-uri").expect(uri));
    }
    assert_eq!(
        seen,
        ["https://lab.test/a\\2Cb", "https://lab.test/a\\5C2Cb"],
        "two different URI SANs must render two different values"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_common_name_makes_a_cn_rule_ambiguous() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = admin_only(r#"cn = "admin""#);
    let gw = setup.start();

    let spec = LeafSpec {
        extra_dn: vec![(DnType::CustomDnType(vec![2, 5, 4, 3]), "nobody".into())],
        ..LeafSpec::client("admin")
    };
    let leaf = setup.ca.issue(&spec);
    let reply = get(&setup, &gw, &leaf, "/").await;
    let subject = reply.upstream_header("x-client-subject").unwrap();
    assert!(subject.starts_with("CN=nobody,CN=admin,"), "{subject}");
    assert_eq!(reply.upstream_header("x-client-roles").as_deref(), Some(""));
    assert_gateway_error(
        &get(&setup, &gw, &leaf, "/admin").await,
        403,
        "forbidden",
        "two CNs",
    );

    // `explain` names the rule and why it does not grant.
    let cert = write(setup.path(), "two-cns.pem", &leaf.chain_pem);
    let out = Command::new(BIN)
        .args(["explain", "-c"])
        .arg(setup.write_config())
        .arg("--cert")
        .arg(&cert)
        .args(["--path", "/admin"])
        .env_remove("CERTGATE_CONFIG")
        .env_remove("CERTGATE_LOG")
        .output()
        .expect("run certgate explain");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("map[0]: ambiguous: certificate has 2 CN values"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_id_is_set_only_for_a_valid_spiffe_id() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = admin_only(r#"spiffe_id = "spiffe://td/ns/prod/*""#);
    let gw = setup.start();

    let dotted = "spiffe://td/ns/prod/../../admin";
    let leaf = setup.ca.issue(&LeafSpec {
        uris: vec![dotted.into()],
        ..LeafSpec::client("workload")
    });
    let reply = get(&setup, &gw, &leaf, "/").await;
    assert_eq!(reply.upstream_header("x-client-spiffe-id"), None);
    assert_eq!(
        reply.upstream_header("x-client-san-uri").as_deref(),
        Some(dotted)
    );
    assert_gateway_error(
        &get(&setup, &gw, &leaf, "/admin").await,
        403,
        "forbidden",
        "a `..` segment",
    );
    let whoami = get(&setup, &gw, &leaf, "/.certgate/whoami").await.json();
    assert!(whoami["spiffe_id"].is_null(), "{whoami}");

    let valid = "spiffe://td/ns/prod/sa/api";
    let leaf = setup.ca.issue(&LeafSpec {
        uris: vec![valid.into()],
        ..LeafSpec::client("workload")
    });
    let reply = get(&setup, &gw, &leaf, "/").await;
    assert_eq!(
        reply.upstream_header("x-client-spiffe-id").as_deref(),
        Some(valid)
    );
    assert_eq!(get(&setup, &gw, &leaf, "/admin").await.status, 200);
}
