//! The core data path against the real daemon: who gets through the TLS
//! handshake (and which `certgate_tls_handshakes_total` reason counts a
//! refusal), what identity the upstream sees and that clients cannot forge
//! it, role mapping and authorization, path normalization, HTTP/2, request
//! bodies, upstream failures, `/.certgate/whoami` and the optional
//! certificate-forwarding headers.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------ helpers ----

/// A setup whose every path is open to any verified client.
async fn open_setup() -> Setup {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    setup
}

fn roles_of(whoami: &serde_json::Value) -> Vec<String> {
    whoami["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("whoami without roles: {whoami}"))
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    certgate::identity::rfc3339(t.unix_timestamp())
}

fn is_generated_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// ------------------------------------------- 1. identity and forwarding ----

#[tokio::test(flavor = "multi_thread")]
async fn valid_client_gets_identity_and_forwarding_headers() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = r#"
[roles]
default = ["ROLE_USER"]
[[roles.map]]
roles = ["ROLE_BILLING"]
cn = "billing-*"
[authorization]
default = "authenticated"
"#
    .into();
    let gw = setup.start();
    let spec = LeafSpec {
        ou: vec!["payments".into()],
        dns: vec!["billing.internal.example".into(), "b2.example".into()],
        uris: vec!["spiffe://acme.org/ns/pay/sa/billing".into()],
        emails: vec!["ops@acme.org".into()],
        ..LeafSpec::client("billing-api")
    };
    let leaf = setup.ca.issue(&spec);
    let mut conn = setup.client(&leaf).connect(gw.addr).await.unwrap();

    let reply = conn
        .request(
            Method::GET,
            "/v1/items?x=1",
            &[
                ("x-request-id", "trace-abc_123"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "http"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["uri"], "/v1/items?x=1");
    let expected = [
        (
            "x-client-subject",
            "CN=billing-api,OU=payments,O=certgate tests".to_owned(),
        ),
        (
            "x-client-issuer",
            "CN=certgate test client CA,O=certgate tests".to_owned(),
        ),
        ("x-client-serial", leaf.serial_hex()),
        ("x-client-fingerprint", leaf.fingerprint()),
        (
            "x-client-san-dns",
            "billing.internal.example,b2.example".to_owned(),
        ),
        (
            "x-client-san-uri",
            "spiffe://acme.org/ns/pay/sa/billing".to_owned(),
        ),
        ("x-client-san-email", "ops@acme.org".to_owned()),
        (
            "x-client-spiffe-id",
            "spiffe://acme.org/ns/pay/sa/billing".to_owned(),
        ),
        ("x-client-not-after", rfc3339(spec.not_after)),
        ("x-client-roles", "ROLE_BILLING,ROLE_USER".to_owned()),
        // The client's own values are dropped: the gateway is the edge.
        ("x-forwarded-for", "127.0.0.1".to_owned()),
        ("x-forwarded-proto", "https".to_owned()),
        ("x-request-id", "trace-abc_123".to_owned()),
    ];
    for (name, value) in &expected {
        assert_eq!(
            reply.upstream_header(name).as_deref(),
            Some(value.as_str()),
            "header {name}"
        );
    }
    for absent in ["x-client-cert", "x-forwarded-client-cert"] {
        assert_eq!(
            reply.upstream_header(absent),
            None,
            "{absent} is off by default"
        );
    }
    assert_eq!(
        reply.headers["x-request-id"], "trace-abc_123",
        "response echoes the kept id"
    );

    // An id with a space (or too long) is replaced by a generated one,
    // which the upstream, the response and the next generated id agree on.
    let mut generated = Vec::new();
    for insane in ["bad id", &"a".repeat(129)] {
        let reply = conn
            .request(
                Method::GET,
                "/v1/items",
                &[("x-request-id", insane)],
                Bytes::new(),
            )
            .await
            .unwrap();
        let upstream_id = reply.upstream_header("x-request-id").unwrap();
        assert!(
            is_generated_request_id(&upstream_id),
            "{insane:?} replaced by {upstream_id:?}"
        );
        assert_eq!(reply.headers["x-request-id"], upstream_id.as_str());
        assert!(
            gw.wait_for_log(&["\"request_id\":", &upstream_id], WAIT),
            "access log lacks {upstream_id}"
        );
        generated.push(upstream_id);
    }
    assert_ne!(
        generated[0], generated[1],
        "generated request ids are unique"
    );
}

// ------------------------------------------- 2. refused at the handshake ----

#[tokio::test(flavor = "multi_thread")]
async fn no_client_certificate_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    assert_refused(
        &gw,
        &setup.anonymous_client(),
        "no_client_cert",
        "CertificateRequired",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_an_untrusted_ca_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    let other_ca = TestCa::root("some other CA");
    let leaf = other_ca.issue(&LeafSpec::client("stranger"));
    assert_refused(&gw, &setup.client(&leaf), "unknown_issuer", "UnknownCA").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificate_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    let now = OffsetDateTime::now_utc();
    let leaf = setup.ca.issue(&LeafSpec {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
        ..LeafSpec::client("old")
    });
    assert_refused(&gw, &setup.client(&leaf), "expired", "CertificateExpired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_yet_valid_certificate_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    let now = OffsetDateTime::now_utc();
    let leaf = setup.ca.issue(&LeafSpec {
        not_before: now + time::Duration::days(1),
        not_after: now + time::Duration::days(30),
        ..LeafSpec::client("early")
    });
    assert_refused(
        &gw,
        &setup.client(&leaf),
        "not_yet_valid",
        "CertificateExpired",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_revoked_by_a_configured_crl_is_refused() {
    let mut setup = open_setup().await;
    let revoked = setup.ca.issue(&LeafSpec::client("revoked"));
    let good = setup.ca.issue(&LeafSpec::client("good"));
    write(setup.path(), "clients.crl.pem", &setup.ca.crl(&[&revoked]));
    setup.client_auth = Some(
        "[client_auth]\ntrusted_cas = [\"client-ca.pem\"]\ncrls = [\"clients.crl.pem\"]\n".into(),
    );
    let gw = setup.start();
    assert_refused(
        &gw,
        &setup.client(&revoked),
        "revoked",
        "CertificateRevoked",
    )
    .await;
    // The CRL names one certificate, not the whole CA.
    let reply = setup
        .client(&good)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_auth_only_certificate_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec {
        eku: Eku::Server,
        ..LeafSpec::client("a-server-cert")
    });
    assert_refused(
        &gw,
        &setup.client(&leaf),
        "bad_usage",
        "UnsupportedCertificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_certificate_used_as_client_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec {
        is_ca: true,
        ..LeafSpec::client("sub-ca-posing-as-client")
    });
    assert_refused(&gw, &setup.client(&leaf), "bad_usage", "CertificateUnknown").await;
}

/// A self-signed CA with the trusted CA's exact subject: its leaves name the
/// trusted CA as issuer, so path building finds the real anchor and the
/// signature check is what refuses them.
#[tokio::test(flavor = "multi_thread")]
async fn look_alike_of_the_trusted_ca_is_refused() {
    let setup = open_setup().await;
    let gw = setup.start();
    let impostor = impostor_ca("certgate test client CA");
    let mut leaf = impostor.issue(&LeafSpec::client("impostor-client"));
    // Also send the impostor CA, as a client trying to supply its own chain would.
    leaf.chain_pem.push_str(&impostor.pem);
    assert_refused(&gw, &setup.client(&leaf), "bad_signature", "DecryptError").await;
}

// ------------------------------------------ 3. chains and key algorithms ----

#[tokio::test(flavor = "multi_thread")]
async fn client_chain_through_intermediate_and_every_key_type_work() {
    let setup = open_setup().await;
    let gw = setup.start();
    let intermediate = setup.ca.intermediate("certgate test issuing CA");
    let cases = [
        (
            "via intermediate",
            intermediate.issue(&LeafSpec::client("via-intermediate")),
            "certgate test issuing CA",
        ),
        (
            "rsa-2048",
            setup.ca.issue(&LeafSpec {
                key: KeyKind::Rsa2048,
                ..LeafSpec::client("rsa")
            }),
            "certgate test client CA",
        ),
        (
            "ecdsa-p384",
            setup.ca.issue(&LeafSpec {
                key: KeyKind::P384,
                ..LeafSpec::client("p384")
            }),
            "certgate test client CA",
        ),
        (
            "ed25519",
            setup.ca.issue(&LeafSpec {
                key: KeyKind::Ed25519,
                ..LeafSpec::client("ed25519")
            }),
            "certgate test client CA",
        ),
    ];
    for (name, leaf, issuer_cn) in &cases {
        let reply = setup.client(leaf).get(gw.addr, "/.certgate/whoami").await;
        let reply = reply.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reply.status, 200, "{name}");
        let json = reply.json();
        assert_eq!(json["fingerprint_sha256"], leaf.fingerprint(), "{name}");
        assert_eq!(
            json["issuer"],
            format!("CN={issuer_cn},O=certgate tests"),
            "{name}"
        );
    }
    assert_eq!(handshakes(&gw, "ok"), cases.len() as f64);
}

// ---------------------------------------------------- 4. forged headers ----

#[tokio::test(flavor = "multi_thread")]
async fn clients_cannot_forge_identity_headers() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[identity]\nxfcc = true\n[roles]\ndefault = [\"ROLE_USER\"]\n[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("honest"));
    let real_subject = "CN=honest,O=certgate tests";
    let real_xfcc = format!("Hash={};Subject=\"{real_subject}\"", leaf.fingerprint());

    // HTTP/1.1 as written on the wire: mixed case, each name twice.
    let forged = "X-Client-Roles: ROLE_ADMIN\r\nx-client-roles: ROLE_ROOT\r\n\
                  X-CLIENT-SUBJECT: CN=admin\r\nx-Client-Subject: CN=root\r\n\
                  X-Forwarded-Client-Cert: Hash=00\r\nx-forwarded-client-cert: Hash=11\r\n\
                  X-Client-Fingerprint: 00\r\nX-Client-Spiffe-Id: spiffe://evil/x\r\n";
    let h1 = raw_http1(
        &setup.client(&leaf),
        gw.addr,
        &format!("GET /x HTTP/1.1\r\n{forged}"),
    )
    .await;
    // HTTP/2 names are lowercase by protocol; send each twice.
    let h2_headers: Vec<(&str, &str)> = [
        "x-client-roles",
        "x-client-subject",
        "x-forwarded-client-cert",
        "x-client-spiffe-id",
    ]
    .iter()
    .flat_map(|n| [(*n, "forged-1"), (*n, "forged-2")])
    .collect();
    let h2 = setup
        .client_h2(&leaf)
        .request(gw.addr, Method::GET, "/x", &h2_headers, Bytes::new())
        .await
        .unwrap();

    for (proto, reply) in [("http/1.1", &h1), ("h2", &h2)] {
        assert_eq!(
            reply.status,
            200,
            "{proto}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        // upstream_header() also asserts the upstream saw exactly one value.
        assert_eq!(
            reply.upstream_header("x-client-roles").unwrap(),
            "ROLE_USER",
            "{proto}"
        );
        assert_eq!(
            reply.upstream_header("x-client-subject").unwrap(),
            real_subject,
            "{proto}"
        );
        assert_eq!(
            reply.upstream_header("x-forwarded-client-cert").unwrap(),
            real_xfcc,
            "{proto}"
        );
        assert_eq!(
            reply.upstream_header("x-client-fingerprint").unwrap(),
            leaf.fingerprint(),
            "{proto}"
        );
        assert_eq!(
            reply.upstream_header("x-client-spiffe-id"),
            None,
            "{proto}: the leaf has no SPIFFE id"
        );
    }
}

// ------------------------------------------------ 5. header injection ----

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_in_the_subject_cannot_inject_headers() {
    let setup = open_setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client(
        "evil\r\nx-injected: yes\r\nx-client-roles: ROLE_ADMIN",
    ));
    let reply = setup.client(&leaf).get(gw.addr, "/x").await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let escaped =
        "CN=evil\\0D\\0Ax-injected: yes\\0D\\0Ax-client-roles: ROLE_ADMIN,O=certgate tests";
    assert_eq!(reply.upstream_header("x-client-subject").unwrap(), escaped);
    assert_eq!(reply.upstream_header("x-injected"), None);
    assert_eq!(
        reply.upstream_header("x-client-roles").unwrap(),
        "",
        "no roles configured, none injected"
    );
    let whoami = setup
        .client(&leaf)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap();
    assert_eq!(whoami.json()["subject"], escaped);
}

// ------------------------------------------- 6. roles and authorization ----

#[tokio::test(flavor = "multi_thread")]
async fn role_rules_grant_the_union_of_matching_rules() {
    let mut setup = Setup::new(echo_upstream().await);
    let by_fingerprint = setup.ca.issue(&LeafSpec::client("pinned"));
    // Operators paste fingerprints in openssl's colon-separated uppercase form.
    let pinned = by_fingerprint
        .fingerprint()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    setup.extra = format!(
        r#"
[roles]
default = ["ROLE_BASE"]
[[roles.map]]
roles = ["ROLE_BILLING"]
cn = "billing-*"
[[roles.map]]
roles = ["ROLE_PAYMENTS"]
ou = ["hr", "pay*"]
[[roles.map]]
roles = ["ROLE_INTERNAL"]
dns = "*.internal.example"
[[roles.map]]
roles = ["ROLE_PARTNER"]
uri = "https://partner.example/*"
[[roles.map]]
roles = ["ROLE_MESH", "ROLE_BILLING"]
spiffe_id = "spiffe://acme.org/ns/*"
[[roles.map]]
roles = ["ROLE_PINNED"]
fingerprint_sha256 = "{pinned}"
[[roles.map]]
roles = ["ROLE_NEVER"]
cn = "billing-*"
ou = "nobody"
[authorization]
default = "authenticated"
"#
    );
    let gw = setup.start();
    let issue = |spec: LeafSpec| setup.ca.issue(&spec);
    let cases: Vec<(&str, Leaf, &[&str])> = vec![
        (
            "no rule matches: defaults only",
            issue(LeafSpec::client("nobody")),
            &["ROLE_BASE"],
        ),
        (
            "cn glob",
            issue(LeafSpec::client("billing-api")),
            &["ROLE_BASE", "ROLE_BILLING"],
        ),
        (
            "cn glob is anchored",
            issue(LeafSpec::client("xbilling-api")),
            &["ROLE_BASE"],
        ),
        (
            "ou: any pattern, any value",
            issue(LeafSpec {
                ou: vec!["eu".into(), "payments".into()],
                ..LeafSpec::client("svc")
            }),
            &["ROLE_BASE", "ROLE_PAYMENTS"],
        ),
        (
            "dns, case-insensitive",
            issue(LeafSpec {
                dns: vec!["API.Internal.Example".into()],
                ..LeafSpec::client("svc")
            }),
            &["ROLE_BASE", "ROLE_INTERNAL"],
        ),
        (
            "uri",
            issue(LeafSpec {
                uris: vec!["https://partner.example/acme".into()],
                ..LeafSpec::client("svc")
            }),
            &["ROLE_BASE", "ROLE_PARTNER"],
        ),
        (
            "spiffe id, union with cn rule, deduplicated",
            issue(LeafSpec {
                uris: vec!["spiffe://acme.org/ns/pay/sa/x".into()],
                ..LeafSpec::client("billing-x")
            }),
            &["ROLE_BASE", "ROLE_BILLING", "ROLE_MESH"],
        ),
        (
            "two spiffe URIs: no spiffe id",
            issue(LeafSpec {
                uris: vec![
                    "spiffe://acme.org/ns/a".into(),
                    "spiffe://acme.org/ns/b".into(),
                ],
                ..LeafSpec::client("svc")
            }),
            &["ROLE_BASE"],
        ),
        (
            "fingerprint",
            by_fingerprint.clone(),
            &["ROLE_BASE", "ROLE_PINNED"],
        ),
    ];
    for (name, leaf, roles) in &cases {
        let whoami = setup
            .client(leaf)
            .get(gw.addr, "/.certgate/whoami")
            .await
            .unwrap();
        assert_eq!(roles_of(&whoami.json()), *roles, "case {name}");
        let upstream = setup.client(leaf).get(gw.addr, "/x").await.unwrap();
        assert_eq!(
            upstream.upstream_header("x-client-roles").unwrap(),
            roles.join(","),
            "case {name}"
        );
    }
    let grants = gw.metric("certgate_role_grants_total{role=\"ROLE_PINNED\"}");
    assert!(grants >= 1.0, "ROLE_PINNED grants not counted");
    assert_eq!(
        gw.metric("certgate_role_grants_total{role=\"ROLE_NEVER\"}"),
        0.0
    );
}

const AUTHZ_RULES: &str = r#"
[roles]
default = ["ROLE_BASE"]
[[roles.map]]
roles = ["ROLE_BILLING"]
cn = "billing-*"
[[roles.map]]
roles = ["ROLE_ADMIN"]
cn = "admin"
[[authorization.rule]]
path = "/api"
roles = []
[[authorization.rule]]
path = "/api/billing"
methods = ["GET"]
roles = ["ROLE_BILLING", "ROLE_ADMIN"]
[[authorization.rule]]
path = "/api/billing"
methods = ["POST", "DELETE"]
roles = ["ROLE_ADMIN"]
[[authorization.rule]]
path = "/admin"
roles = ["ROLE_ADMIN"]
"#;

/// Runs (client, method, path, allowed) cases and checks that every denial
/// is a JSON 403 counted in `certgate_authz_denied_total`.
async fn check_authz(setup: &Setup, gw: &Gateway, cases: &[(&str, &Leaf, Method, &str, bool)]) {
    let mut denied = 0.0;
    for (who, leaf, method, path, allowed) in cases {
        let case = format!("{who} {method} {path}");
        let reply = setup
            .client(leaf)
            .request(gw.addr, method.clone(), path, &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        if *allowed {
            assert_eq!(
                reply.status,
                200,
                "{case}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.json()["uri"], *path, "{case}");
        } else {
            assert_gateway_error(&reply, 403, "forbidden", &case);
            denied += 1.0;
            assert_eq!(
                gw.metric("certgate_authz_denied_total"),
                denied,
                "{case}: denial not counted"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_with_default_deny() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = format!("{AUTHZ_RULES}\n[authorization]\ndefault = \"deny\"\n");
    let gw = setup.start();
    let plain = setup.ca.issue(&LeafSpec::client("plain"));
    let billing = setup.ca.issue(&LeafSpec::client("billing-api"));
    let admin = setup.ca.issue(&LeafSpec::client("admin"));
    check_authz(
        &setup,
        &gw,
        &[
            ("plain", &plain, Method::GET, "/api/orders", true),
            ("plain", &plain, Method::DELETE, "/api", true),
            (
                "plain: longest prefix wins over /api",
                &plain,
                Method::GET,
                "/api/billing/1",
                false,
            ),
            (
                "plain: segment prefix, not string prefix",
                &plain,
                Method::GET,
                "/api/billingx",
                true,
            ),
            ("billing", &billing, Method::GET, "/api/billing", true),
            ("billing", &billing, Method::GET, "/api/billing/1", true),
            (
                "billing: POST needs admin",
                &billing,
                Method::POST,
                "/api/billing/1",
                false,
            ),
            (
                "billing: no rule for PUT, no fallback to /api",
                &billing,
                Method::PUT,
                "/api/billing/1",
                false,
            ),
            ("admin", &admin, Method::POST, "/api/billing/1", true),
            ("admin", &admin, Method::DELETE, "/api/billing", true),
            ("admin", &admin, Method::GET, "/admin/users", true),
            ("billing", &billing, Method::GET, "/admin", false),
            (
                "admin: /administrator is not under /admin",
                &admin,
                Method::GET,
                "/administrator",
                false,
            ),
            ("admin: uncovered path", &admin, Method::GET, "/", false),
            (
                "plain: uncovered path",
                &plain,
                Method::GET,
                "/other",
                false,
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_with_default_authenticated() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = format!("{AUTHZ_RULES}\n[authorization]\ndefault = \"authenticated\"\n");
    let gw = setup.start();
    let plain = setup.ca.issue(&LeafSpec::client("plain"));
    let admin = setup.ca.issue(&LeafSpec::client("admin"));
    check_authz(
        &setup,
        &gw,
        &[
            ("plain: uncovered path", &plain, Method::GET, "/other", true),
            ("plain: uncovered root", &plain, Method::POST, "/", true),
            (
                "plain: covered rules still apply",
                &plain,
                Method::GET,
                "/admin",
                false,
            ),
            ("plain", &plain, Method::GET, "/api/billing", false),
            ("admin", &admin, Method::GET, "/admin", true),
        ],
    )
    .await;
}

// ------------------------------------------------------ 7. path attacks ----

#[tokio::test(flavor = "multi_thread")]
async fn path_attacks_are_refused_or_normalized_before_authorization() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = r#"
[[roles.map]]
roles = ["ROLE_ADMIN"]
cn = "admin"
[authorization]
default = "deny"
[[authorization.rule]]
path = "/public"
roles = []
[[authorization.rule]]
path = "/admin"
roles = ["ROLE_ADMIN"]
"#
    .into();
    let gw = setup.start();
    let user = setup.client(&setup.ca.issue(&LeafSpec::client("user")));
    let admin = setup.client(&setup.ca.issue(&LeafSpec::client("admin")));

    enum Expect {
        /// Forwarded, and the upstream received this target.
        Upstream(&'static str),
        /// Normalized, then refused by the rules.
        Forbidden,
        BadPath,
    }
    use Expect::*;
    let cases: &[(&str, &TestClient, &str, Expect)] = &[
        ("plain", &user, "/public/a", Upstream("/public/a")),
        (
            "dot segments and repeated slashes",
            &user,
            "/public//a/./b/../c",
            Upstream("/public/a/c"),
        ),
        (
            "encoded unreserved decoded",
            &user,
            "/%70ublic/%7Ea",
            Upstream("/public/~a"),
        ),
        (
            "query untouched",
            &user,
            "/public/a?next=/../admin&x=%2F",
            Upstream("/public/a?next=/../admin&x=%2F"),
        ),
        ("dotdot into /admin", &user, "/public/../admin", Forbidden),
        ("encoded dotdot", &user, "/public/%2e%2e/admin", Forbidden),
        (
            "upper-case encoded dotdot",
            &user,
            "/public/%2E%2E/admin/x",
            Forbidden,
        ),
        (
            "half-encoded dotdot",
            &user,
            "/public/.%2e/admin",
            Forbidden,
        ),
        ("double slash before admin", &user, "//admin", Forbidden),
        (
            "dotdot reaches admin for an admin",
            &admin,
            "/public/../admin/x",
            Upstream("/admin/x"),
        ),
        ("dotdot above the root", &user, "/../admin", BadPath),
        (
            "encoded dotdot above the root",
            &user,
            "/public/%2e%2e/%2e%2e/admin",
            BadPath,
        ),
        ("encoded slash", &user, "/public%2F..%2Fadmin", BadPath),
        (
            "encoded slash lower-case",
            &user,
            "/public/..%2fadmin",
            BadPath,
        ),
        ("encoded NUL", &user, "/public/a%00.json", BadPath),
        ("encoded backslash", &user, "/public/..%5Cadmin", BadPath),
        ("backslash", &user, "/public\\..\\admin", BadPath),
        (
            "dotdot with parameters",
            &user,
            "/public/..;/admin",
            BadPath,
        ),
        ("dot with parameters", &user, "/public/.;x/admin", BadPath),
        ("absolute form", &user, "https://localhost/admin", BadPath),
    ];
    let mut forbidden = 0.0;
    for (name, client, target, expect) in cases {
        let reply = raw_http1(client, gw.addr, &format!("GET {target} HTTP/1.1\r\n")).await;
        let case = format!("case {name}: GET {target}");
        match expect {
            Upstream(uri) => {
                assert_eq!(
                    reply.status,
                    200,
                    "{case}: {}",
                    String::from_utf8_lossy(&reply.body)
                );
                assert_eq!(reply.json()["uri"], *uri, "{case}");
            }
            Forbidden => {
                assert_gateway_error(&reply, 403, "forbidden", &case);
                forbidden += 1.0;
            }
            BadPath => assert_gateway_error(&reply, 400, "bad_path", &case),
        }
    }
    let asterisk = raw_http1(&user, gw.addr, "OPTIONS * HTTP/1.1\r\n").await;
    assert_gateway_error(&asterisk, 400, "bad_path", "asterisk form");
    assert_eq!(gw.metric("certgate_authz_denied_total"), forbidden);
}

// ----------------------------------------------------------- 8. HTTP/2 ----

/// An upstream that answers no request until `n` are in flight at once, so
/// a gateway that serialized a connection's streams would never get an answer.
async fn rendezvous_upstream(n: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let barrier = barrier.clone();
            let service = hyper::service::service_fn(move |_req| {
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"together",
                    ))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_is_negotiated_by_alpn() {
    let setup = open_setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("h2-client"));
    for (client, alpn) in [
        (setup.client_h2(&leaf), &b"h2"[..]),
        (setup.client(&leaf), &b"http/1.1"[..]),
    ] {
        let tls = client.tls(gw.addr).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    }
    let reply = setup
        .client_h2(&leaf)
        .get(gw.addr, "/h2/path?q=1")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let json = reply.json();
    assert_eq!(json["uri"], "/h2/path?q=1");
    assert_eq!(json["version"], "HTTP/1.1", "the upstream leg is HTTP/1.1");
    assert_eq!(
        reply.upstream_header("x-client-fingerprint").unwrap(),
        leaf.fingerprint()
    );
    assert_eq!(
        reply.upstream_header("host").unwrap(),
        "localhost",
        "h2 :authority becomes host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_on_one_connection_run_concurrently() {
    const STREAMS: usize = 8;
    let mut setup = Setup::new(rendezvous_upstream(STREAMS).await);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("multiplexer"));
    let conn = setup.client_h2(&leaf).connect(gw.addr).await.unwrap();
    let streams = (0..STREAMS).map(|i| {
        let mut stream = conn.h2_handle().expect("an HTTP/2 connection");
        tokio::spawn(async move { stream.get(&format!("/stream/{i}")).await })
    });
    let replies = tokio::time::timeout(Duration::from_secs(4), futures_join(streams.collect()))
        .await
        .expect("streams were not served concurrently");
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.unwrap_or_else(|e| panic!("stream {i}: {e}"));
        assert_eq!(reply.status, 200, "stream {i}");
        assert_eq!(reply.body, "together", "stream {i}");
    }
    assert_eq!(
        gw.metric("certgate_connections_total"),
        1.0,
        "all streams shared one connection"
    );
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("task panicked"));
    }
    out
}

// ------------------------------------------------------- 9. large body ----

#[tokio::test(flavor = "multi_thread")]
async fn one_mebibyte_body_streams_to_the_upstream() {
    let setup = open_setup().await;
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("uploader"));
    let body = Bytes::from((0..1 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    for (proto, client) in [
        ("http/1.1", setup.client(&leaf)),
        ("h2", setup.client_h2(&leaf)),
    ] {
        let reply = client
            .request(
                gw.addr,
                Method::POST,
                "/upload",
                &[("content-type", "application/octet-stream")],
                body.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("{proto}: {e}"));
        assert_eq!(reply.status, 200, "{proto}");
        let json = reply.json();
        assert_eq!(json["method"], "POST", "{proto}");
        assert_eq!(json["body_bytes"], 1 << 20, "{proto}");
    }
}

// ------------------------------------------------ 10. upstream failures ----

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_gives_502_and_the_gateway_keeps_serving() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut setup = Setup::new(dead);
    setup.extra = "[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let leaf = setup.ca.issue(&LeafSpec::client("patient"));
    let mut conn = setup.client(&leaf).connect(gw.addr).await.unwrap();

    let reply = conn.get("/anything").await.unwrap();
    assert_gateway_error(&reply, 502, "bad_gateway", "connection refused upstream");
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"connect\",upstream=\"default\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("certgate_upstream_errors_total{kind=\"timeout\",upstream=\"default\"}"),
        0.0
    );
    assert_eq!(gw.metric("certgate_requests_total{code=\"502\"}"), 1.0);

    let same_conn = conn.get("/.certgate/whoami").await.unwrap();
    assert_eq!(same_conn.status, 200, "the connection survives a 502");
    let new_conn = setup
        .client(&leaf)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap();
    assert_eq!(new_conn.status, 200, "the gateway keeps accepting");
}

// ---------------------------------------------------------- 11. whoami ----

#[tokio::test(flavor = "multi_thread")]
async fn whoami_returns_the_identity_and_roles() {
    let mut setup = Setup::new(echo_upstream().await);
    // whoami answers any verified client, even with every path denied.
    setup.extra = "[roles]\ndefault = [\"ROLE_USER\"]\n[[roles.map]]\nroles = [\"ROLE_OPS\"]\nou = \"ops\"\n[authorization]\ndefault = \"deny\"\n".into();
    let gw = setup.start();
    let spec = LeafSpec {
        ou: vec!["ops".into()],
        dns: vec!["ops.example".into()],
        uris: vec![
            "spiffe://acme.org/ops".into(),
            "https://ops.example/id".into(),
        ],
        emails: vec!["ops@example.org".into()],
        ..LeafSpec::client("ops-bot")
    };
    let leaf = setup.ca.issue(&spec);
    let reply = setup
        .client(&leaf)
        .get(gw.addr, "/.certgate/whoami")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let expected = serde_json::json!({
        "subject": "CN=ops-bot,OU=ops,O=certgate tests",
        "issuer": "CN=certgate test client CA,O=certgate tests",
        "serial": leaf.serial_hex(),
        "fingerprint_sha256": leaf.fingerprint(),
        "san": {
            "dns": ["ops.example"],
            "uri": ["spiffe://acme.org/ops", "https://ops.example/id"],
            "email": ["ops@example.org"],
        },
        "spiffe_id": "spiffe://acme.org/ops",
        "not_before": rfc3339(spec.not_before),
        "not_after": rfc3339(spec.not_after),
        "roles": ["ROLE_OPS", "ROLE_USER"],
    });
    assert_eq!(reply.json(), expected);

    let other = setup
        .client(&leaf)
        .get(gw.addr, "/.certgate/other")
        .await
        .unwrap();
    assert_gateway_error(&other, 404, "not_found", "unknown internal endpoint");
    let post = setup
        .client(&leaf)
        .request(
            gw.addr,
            Method::POST,
            "/.certgate/whoami",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_gateway_error(&post, 404, "not_found", "POST whoami");
}

// ----------------------------------------------- 12. certificate headers ----

#[tokio::test(flavor = "multi_thread")]
async fn forward_cert_and_xfcc_carry_the_leaf() {
    let mut setup = Setup::new(echo_upstream().await);
    setup.extra = "[identity]\nforward_cert = true\nxfcc = true\n[authorization]\ndefault = \"authenticated\"\n".into();
    let gw = setup.start();
    let intermediate = setup.ca.intermediate("certgate test issuing CA");
    let leaf = intermediate.issue(&LeafSpec {
        dns: vec!["a.example".into(), "b.example".into()],
        uris: vec!["spiffe://acme.org/x".into()],
        ..LeafSpec::client("forwarded")
    });
    let reply = setup.client(&leaf).get(gw.addr, "/x").await.unwrap();
    assert_eq!(reply.status, 200);

    let escaped = reply.upstream_header("x-client-cert").unwrap();
    assert!(
        escaped
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%-._~".contains(&b)),
        "x-client-cert is URL-encoded: {escaped}"
    );
    let pem = percent_encoding::percent_decode_str(&escaped)
        .decode_utf8()
        .unwrap();
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    assert_eq!(
        certs,
        vec![leaf.der.clone()],
        "x-client-cert is the leaf alone, not the chain"
    );

    let subject = "CN=forwarded,O=certgate tests";
    assert_eq!(
        reply.upstream_header("x-forwarded-client-cert").unwrap(),
        format!(
            "Hash={};Subject=\"{subject}\";URI=spiffe://acme.org/x;DNS=a.example;DNS=b.example",
            leaf.fingerprint()
        )
    );
}
