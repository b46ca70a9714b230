use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[listener]
address = "127.0.0.1:8443"
[server_tls]
cert = "server.pem"
key = "server.key"
[client_auth]
trusted_cas = ["ca.pem"]
[upstream]
url = "http://127.0.0.1:8080"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_env(text, &[])
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(
        Path::new("/etc/certgate/certgate.toml"),
        text,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn problems(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("config should be rejected")
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn minimal_config_gets_secure_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.listener.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.listener.max_connections, 10_000);
    assert_eq!(c.listener.max_header_bytes, 16_384);
    assert_eq!(c.listener.min_tls_version, TlsVersion::V1_2);
    assert_eq!(c.listener.stream_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.listener.path_parameters, PathParameters::Reject);
    assert_eq!(c.listener.underscore_headers, UnderscoreHeaders::Drop);
    assert_eq!(c.authorization.default, AuthzDefault::Deny);
    assert_eq!(c.client_auth.crl_scope, CrlScope::Chain);
    assert_eq!(c.admin.address, Some("127.0.0.1:9464".parse().unwrap()));
    assert!(c.reload.watch);
    assert_eq!(c.reload.debounce, Duration::from_millis(250));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.listener.proxy_protocol, ProxyProtocol::Off);
    assert!(c.listener.proxy_protocol_from.is_empty());
    assert_eq!(c.listener.session_ticket_keys, None);
}

#[test]
fn proxy_protocol_needs_trusted_cidrs() {
    let with = |extra: &str| MINIMAL.replace("[server_tls]", &format!("{extra}\n[server_tls]"));
    let c = parse(&with(
        "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"10.1.2.3/8\", \"192.0.2.7\", \"fd00::/8\"]",
    ))
    .unwrap();
    assert_eq!(c.listener.proxy_protocol, ProxyProtocol::V2);
    let nets: Vec<String> = c
        .listener
        .proxy_protocol_from
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    assert!(c.listener.proxy_trusted("10.200.0.1".parse().unwrap()));
    assert!(
        c.listener
            .proxy_trusted("::ffff:10.200.0.1".parse().unwrap()),
        "an IPv4 peer on a dual-stack socket"
    );
    assert!(!c.listener.proxy_trusted("192.0.2.8".parse().unwrap()));

    let cases = [
        (
            "proxy_protocol = \"any\"",
            "listener.proxy_protocol_from: must list",
        ),
        (
            "proxy_protocol = \"v3\"\nproxy_protocol_from = [\"10.0.0.0/8\"]",
            "listener.proxy_protocol: must be",
        ),
        (
            "proxy_protocol = \"v1\"\nproxy_protocol_from = [\"10.0.0.0/33\"]",
            "listener.proxy_protocol_from[0]: `10.0.0.0/33` is not a CIDR",
        ),
    ];
    for (extra, want) in cases {
        let got = problems(&with(extra));
        assert!(got.iter().any(|p| p.contains(want)), "{extra}: {got:?}");
    }
}

#[test]
fn session_ticket_keys_resolve_and_are_watched() {
    let c = parse(&MINIMAL.replace(
        "[server_tls]",
        "session_ticket_keys = \"tickets/keys\"\n[server_tls]",
    ))
    .unwrap();
    let keys = Path::new("/etc/certgate/tickets/keys");
    assert_eq!(c.listener.session_ticket_keys.as_deref(), Some(keys));
    assert!(
        c.files().iter().any(|f| f == keys),
        "reload watches the key file"
    );
}

#[test]
fn paths_resolve_against_the_config_directory() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.server_tls.default,
        CertSource::Pem {
            cert: "/etc/certgate/server.pem".into(),
            key: "/etc/certgate/server.key".into()
        }
    );
    assert_eq!(
        c.client_auth.trusted_cas,
        vec![PathBuf::from("/etc/certgate/ca.pem")]
    );
    let abs = MINIMAL.replace("\"ca.pem\"", "\"/srv/pki/ca.pem\"");
    assert_eq!(
        parse(&abs).unwrap().client_auth.trusted_cas,
        vec![PathBuf::from("/srv/pki/ca.pem")]
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    for (name, text) in [
        (
            "top-level section",
            format!("{MINIMAL}\n[listner]\naddress = \"x\"\n"),
        ),
        (
            "listener key",
            MINIMAL.replace(
                "address = \"127.0.0.1:8443\"",
                "address = \"127.0.0.1:8443\"\nadress = \"x\"",
            ),
        ),
        (
            "client_auth typo",
            MINIMAL.replace("trusted_cas", "trusted_ca"),
        ),
        (
            "role rule matcher",
            format!("{MINIMAL}\n[[roles.map]]\nroles = [\"R\"]\ncommon_name = \"x\"\n"),
        ),
    ] {
        let msg = problems(&text).join("\n");
        assert!(msg.contains("unknown field"), "case {name}: {msg}");
    }
    let msg = problems(&format!("{MINIMAL}\n[listner]\naddress = \"x\"\n")).join("\n");
    assert!(msg.contains("listner"), "{msg}");
}

#[test]
fn every_problem_is_reported_in_one_pass() {
    let text = MINIMAL
        .replace(
            "address = \"127.0.0.1:8443\"",
            "address = \"nowhere\"\nhandshake_timeout = \"10\"\nmin_tls_version = \"1.1\"",
        )
        .replace("url = \"http://127.0.0.1:8080\"", "url = \"ftp://x\"");
    let p = problems(&text);
    let at: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
    assert_eq!(
        at,
        vec![
            "listener.address",
            "listener.handshake_timeout",
            "listener.min_tls_version",
            "upstream.url"
        ],
        "{p:?}"
    );
}

#[test]
fn value_validation_table() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "zero duration",
            "idle_timeout = \"0s\"",
            "listener.idle_timeout",
        ),
        (
            "unitless duration",
            "idle_timeout = \"60\"",
            "listener.idle_timeout",
        ),
        (
            "duration that overflows the clock",
            "idle_timeout = \"9223372036854775807s\"",
            "listener.idle_timeout",
        ),
        (
            "duration over a day",
            "stream_idle_timeout = \"25h\"",
            "listener.stream_idle_timeout",
        ),
        (
            "path parameters",
            "path_parameters = \"strip\"",
            "listener.path_parameters",
        ),
        (
            "underscore headers",
            "underscore_headers = \"allow\"",
            "listener.underscore_headers",
        ),
        (
            "negative connections",
            "max_connections = -1",
            "listener.max_connections",
        ),
        (
            "huge header limit",
            "max_header_bytes = 99999999",
            "listener.max_header_bytes",
        ),
    ];
    for (name, line, at) in cases {
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:8443\"",
            &format!("address = \"127.0.0.1:8443\"\n{line}"),
        );
        let p = problems(&text);
        assert!(p.iter().any(|x| x.starts_with(at)), "case {name}: {p:?}");
    }
    let sections: &[(&str, &str, &str)] = &[
        (
            "revocation toggle",
            "[client_auth]\ntrusted_cas = [\"ca.pem\"]\nunknown_revocation = \"maybe\"",
            "client_auth.unknown_revocation",
        ),
        (
            "crl scope",
            "[client_auth]\ntrusted_cas = [\"ca.pem\"]\ncrl_scope = \"leaf\"",
            "client_auth.crl_scope",
        ),
        (
            "empty trust",
            "[client_auth]\ntrusted_cas = []",
            "client_auth.trusted_cas",
        ),
        (
            "ocsp mode",
            "[client_auth]\ntrusted_cas = [\"ca.pem\"]\nocsp = \"strict\"",
            "client_auth.ocsp",
        ),
        (
            "crl url scheme",
            "[client_auth]\ntrusted_cas = [\"ca.pem\"]\ncrl_urls = [\"ldap://ca.example.org/crl\"]",
            "client_auth.crl_urls",
        ),
        (
            "crl url without a host",
            "[client_auth]\ntrusted_cas = [\"ca.pem\"]\ncrl_urls = [\"http:///x.crl\"]",
            "client_auth.crl_urls",
        ),
        (
            "crl refresh under a second",
            "[client_auth]\ntrusted_cas = [\"ca.pem\"]\ncrl_refresh = \"500ms\"",
            "client_auth.crl_refresh",
        ),
    ];
    for (name, section, at) in sections {
        let text = MINIMAL.replace("[client_auth]\ntrusted_cas = [\"ca.pem\"]", section);
        let p = problems(&text);
        assert!(p.iter().any(|x| x.starts_with(at)), "case {name}: {p:?}");
    }
}

#[test]
fn revocation_sources_are_off_by_default_and_read_as_written() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.client_auth.crl_urls.is_empty());
    assert_eq!(c.client_auth.crl_refresh, Duration::from_secs(3600));
    assert_eq!(c.client_auth.crl_cache_dir, None);
    assert_eq!(c.client_auth.ocsp, OcspMode::Off);
    assert!(!c.server_tls.ocsp_stapling);
    let text = MINIMAL
        .replace(
            "trusted_cas = [\"ca.pem\"]",
            "trusted_cas = [\"ca.pem\"]\ncrl_urls = [\"http://pki.example.org/ca.crl\"]\ncrl_refresh = \"1s\"\ncrl_cache_dir = \"cache\"\nocsp = \"hard\"",
        )
        .replace("key = \"server.key\"", "key = \"server.key\"\nocsp_stapling = true");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.client_auth.crl_urls[0].to_string(),
        "http://pki.example.org/ca.crl"
    );
    assert_eq!(c.client_auth.crl_refresh, Duration::from_secs(1));
    assert_eq!(
        c.client_auth.crl_cache_dir,
        Some(PathBuf::from("/etc/certgate/cache"))
    );
    assert_eq!(c.client_auth.ocsp, OcspMode::Hard);
    assert!(c.server_tls.ocsp_stapling);
}

#[test]
fn server_tls_needs_exactly_one_source() {
    let both = MINIMAL.replace(
        "key = \"server.key\"",
        "key = \"server.key\"\npkcs12 = \"s.p12\"",
    );
    assert!(problems(&both)[0].starts_with("server_tls"));
    let p12_without_password = MINIMAL.replace(
        "cert = \"server.pem\"\nkey = \"server.key\"",
        "pkcs12 = \"s.p12\"",
    );
    assert!(problems(&p12_without_password)[0].contains("pkcs12_password_file"));
    let p12 = MINIMAL.replace(
        "cert = \"server.pem\"\nkey = \"server.key\"",
        "pkcs12 = \"s.p12\"\npkcs12_password_file = \"s.pass\"",
    );
    assert!(matches!(
        parse(&p12).unwrap().server_tls.default,
        CertSource::Pkcs12 { .. }
    ));
}

#[test]
fn sni_names_are_validated_and_lowercased() {
    let ok = format!("{MINIMAL}\n[[server_tls.sni]]\nserver_name = \"API.Example.org\"\ncert = \"a.pem\"\nkey = \"a.key\"\n[[server_tls.sni]]\nserver_name = \"*.example.net\"\ncert = \"b.pem\"\nkey = \"b.key\"\n");
    let c = parse(&ok).unwrap();
    let names: Vec<&str> = c
        .server_tls
        .sni
        .iter()
        .map(|s| s.server_name.as_str())
        .collect();
    assert_eq!(names, vec!["api.example.org", "*.example.net"]);
    let bad = format!("{MINIMAL}\n[[server_tls.sni]]\nserver_name = \"bad name\"\ncert = \"a.pem\"\nkey = \"a.key\"\n");
    assert!(problems(&bad)[0].starts_with("server_tls.sni[0].server_name"));
}

#[test]
fn upstream_url_must_be_bare_http_or_https() {
    for (url, ok) in [
        ("http://127.0.0.1:8080", true),
        ("https://api.internal", true),
        ("http://127.0.0.1:8080/", true),
        ("http://127.0.0.1:8080/api", false),
        ("http://127.0.0.1:8080/?x=1", false),
        ("127.0.0.1:8080", false),
        ("unix:///run/x.sock", false),
    ] {
        let text = MINIMAL.replace("http://127.0.0.1:8080", url);
        assert_eq!(parse(&text).is_ok(), ok, "{url}");
    }
    let tls_on_http = MINIMAL.replace(
        "url = \"http://127.0.0.1:8080\"",
        "url = \"http://x\"\nca = \"up.pem\"",
    );
    assert!(problems(&tls_on_http)[0].contains("https"));
}

#[test]
fn upstream_protocol_is_one_of_three_and_http1_by_default() {
    assert_eq!(
        parse(MINIMAL).unwrap().upstream.protocol,
        UpstreamProtocol::Http1
    );
    for (word, protocol) in [
        ("http1", UpstreamProtocol::Http1),
        ("http2", UpstreamProtocol::Http2),
        ("auto", UpstreamProtocol::Auto),
    ] {
        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:8080\"",
            &format!("url = \"http://127.0.0.1:8080\"\nprotocol = \"{word}\""),
        );
        assert_eq!(parse(&text).unwrap().upstream.protocol, protocol, "{word}");
    }
    let h2c = MINIMAL.replace(
        "url = \"http://127.0.0.1:8080\"",
        "url = \"http://127.0.0.1:8080\"\nprotocol = \"h2c\"",
    );
    let problems = problems(&h2c);
    assert!(problems[0].contains("upstream.protocol"), "{problems:?}");
    assert!(problems[0].contains("\"http2\""), "{problems:?}");
}

#[test]
fn role_and_route_rules_are_validated() {
    let no_matcher = format!("{MINIMAL}\n[[roles.map]]\nroles = [\"R\"]\n");
    assert!(problems(&no_matcher)[0].contains("at least one matcher"));
    let bad_role = format!("{MINIMAL}\n[[roles.map]]\nroles = [\"A,B\"]\ncn = \"x\"\n");
    assert!(problems(&bad_role)[0].starts_with("roles.map[0]"));
    let bad_route = format!("{MINIMAL}\n[[authorization.rule]]\npath = \"/a/../b\"\nroles = []\n");
    assert!(problems(&bad_route)[0].starts_with("authorization.rule[0]"));
    let lists = format!("{MINIMAL}\n[[roles.map]]\nroles = [\"R\"]\ncn = [\"a-*\", \"b\"]\nfingerprint_sha256 = \"AB:CD\"\n");
    let c = parse(&lists).unwrap();
    assert_eq!(c.roles.map[0].patterns(CertField::Cn).unwrap().len(), 2);
    assert_eq!(
        c.roles.map[0]
            .patterns(CertField::FingerprintSha256)
            .unwrap()[0]
            .as_str(),
        "abcd"
    );
}

#[test]
fn environment_overrides_any_key() {
    let c = parse_env(
        MINIMAL,
        &[
            ("CERTGATE_LISTENER__ADDRESS", "0.0.0.0:9443"),
            ("CERTGATE_LISTENER__MAX_CONNECTIONS", "50"),
            ("CERTGATE_RELOAD__WATCH", "false"),
            ("CERTGATE_LISTENER__MIN_TLS_VERSION", "1.3"),
            ("CERTGATE_CLIENT_AUTH__CRLS", "[\"a.crl\", \"b.crl\"]"),
            ("CERTGATE_LOG", "debug"),
            ("CERTGATE_CONFIG", "/elsewhere.toml"),
        ],
    )
    .unwrap();
    assert_eq!(c.listener.address, "0.0.0.0:9443".parse().unwrap());
    assert_eq!(c.listener.max_connections, 50);
    assert!(!c.reload.watch);
    assert_eq!(c.listener.min_tls_version, TlsVersion::V1_3);
    assert_eq!(c.client_auth.crls.len(), 2);
    let typo = parse_env(MINIMAL, &[("CERTGATE_LISTENER__ADRESS", "x")]).unwrap_err();
    assert!(typo.to_string().contains("adress"), "{typo}");
}

#[test]
fn duration_parsing() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "10sec"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn config_lists_every_named_file() {
    let text = MINIMAL.replace(
        "trusted_cas = [\"ca.pem\"]",
        "trusted_cas = [\"ca.pem\", \"cas.d\"]\ncrls = [\"c.crl\"]",
    );
    let files = parse(&text).unwrap().files();
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        names,
        vec![
            "/etc/certgate/certgate.toml",
            "/etc/certgate/server.pem",
            "/etc/certgate/server.key",
            "/etc/certgate/ca.pem",
            "/etc/certgate/cas.d",
            "/etc/certgate/c.crl"
        ]
    );
}

#[test]
fn matchers_in_any_order_compile_per_field() {
    let text = format!(
        "{MINIMAL}\n[[roles.map]]\nserial = \"00:1A\"\nroles = [\"R\"]\ndns = \"API.Lab\"\ncn = \"API\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.roles.map[0].describe(),
        "cn=API dns=api.lab serial=1a => R",
        "field order; dns and serial folded, cn exact"
    );
}
