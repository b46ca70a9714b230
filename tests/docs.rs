//! The README's configuration reference is a valid config, and it names
//! every configuration key of the product contract (SPEC §3, and the §10
//! keys certgate implements, and the §13 fleet keys), so the two cannot
//! drift apart. Every other TOML example in the README, `docs/fleet.md` and
//! `docs/kubernetes.md` is a valid config or a fragment naming only keys
//! the reference documents. Nothing here reads outside the repository:
//! the contract's keys are listed below and its example config is
//! `tests/data/contract-config.toml`.

use std::collections::BTreeSet;
use std::path::Path;

/// The configuration keys of the product contract: its §3 configuration
/// block, the §10 keys certgate implements (`listener.path_parameters`,
/// `listener.underscore_headers`, `listener.stream_idle_timeout`), and the
/// §13 fleet keys.
const CONTRACT_KEYS: &[&str] = &[
    "listener.address",
    "listener.handshake_timeout",
    "listener.idle_timeout",
    "listener.header_timeout",
    "listener.max_connections",
    "listener.max_header_bytes",
    "listener.min_tls_version",
    "listener.shutdown_timeout",
    "listener.path_parameters",
    "listener.underscore_headers",
    "listener.stream_idle_timeout",
    "listener.proxy_protocol",
    "listener.proxy_protocol_from",
    "listener.session_ticket_keys",
    "server_tls.cert",
    "server_tls.key",
    "server_tls.sni.server_name",
    "server_tls.sni.cert",
    "server_tls.sni.key",
    "client_auth.trusted_cas",
    "client_auth.crls",
    "client_auth.unknown_revocation",
    "client_auth.crl_scope",
    "client_auth.expired_crl",
    "client_auth.crl_urls",
    "client_auth.crl_refresh",
    "client_auth.crl_cache_dir",
    "client_auth.ocsp",
    "server_tls.ocsp_stapling",
    "upstream.url",
    "upstream.connect_timeout",
    "upstream.timeout",
    "upstream.protocol",
    "upstream.endpoints",
    "upstream.health_check_path",
    "upstream.health_interval",
    "upstreams.billing.url",
    "route.path",
    "route.host",
    "route.upstream",
    "identity.forward_cert",
    "identity.xfcc",
    "roles.default",
    "roles.audit",
    "roles.map.roles",
    "roles.map.cn",
    "roles.map.ou",
    "authorization.default",
    "authorization.rule.path",
    "authorization.rule.methods",
    "authorization.rule.roles",
    "admin.address",
    "reload.watch",
    "reload.debounce",
    "reload.poll_interval",
    "log.level",
    "log.format",
    "log.access_log",
];

/// The contract's example configuration (§3), verbatim.
const CONTRACT_EXAMPLE: &str = include_str!("data/contract-config.toml");

/// The first ```toml block after `heading` in a markdown document.
fn toml_block_after<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` section"));
    let rest = &doc[start..];
    let open = rest.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let len = rest[open..].find("\n```").expect("closed block");
    &rest[open..open + len]
}

/// `section.key` for every key assigned in a TOML document.
fn keys(text: &str) -> BTreeSet<String> {
    let doc: toml::Table = toml::from_str(text).expect("block is TOML");
    let mut out = BTreeSet::new();
    for (section, value) in &doc {
        let tables: Vec<&toml::Table> = match value {
            toml::Value::Table(t) => vec![t],
            toml::Value::Array(a) => a.iter().filter_map(|v| v.as_table()).collect(),
            _ => continue,
        };
        for table in tables {
            for (key, v) in table {
                match v {
                    // Nested arrays of tables ([[roles.map]], [[server_tls.sni]]).
                    toml::Value::Array(a) if a.iter().all(|x| x.is_table()) && !a.is_empty() => {
                        for inner in a.iter().filter_map(|x| x.as_table()) {
                            out.extend(inner.keys().map(|k| format!("{section}.{key}.{k}")));
                        }
                    }
                    toml::Value::Table(inner) => {
                        out.extend(inner.keys().map(|k| format!("{section}.{key}.{k}")));
                    }
                    _ => {
                        out.insert(format!("{section}.{key}"));
                    }
                }
            }
        }
    }
    out
}

fn readme_reference() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    toml_block_after(&readme, "## Configuration reference").to_owned()
}

#[test]
fn readme_reference_is_a_valid_config() {
    let text = readme_reference();
    certgate::config::Config::from_toml(
        Path::new("/etc/certgate/certgate.toml"),
        &text,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("README reference does not parse: {e}"));
}

#[test]
fn readme_reference_names_every_spec_key() {
    let spec_keys: BTreeSet<String> = CONTRACT_KEYS.iter().map(|k| k.to_string()).collect();
    let readme = readme_reference();
    // Keys shown commented out in the README count as documented.
    let uncommented: String = readme
        .lines()
        .map(|l| l.trim_start().trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&String> = spec_keys
        .iter()
        .filter(|k| {
            let leaf = k.rsplit('.').next().unwrap();
            !uncommented.contains(&format!("{leaf} ="))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README configuration reference lacks SPEC keys: {missing:?}"
    );
    assert!(
        spec_keys.len() > 30,
        "parsed too few SPEC keys: {spec_keys:?}"
    );
}

#[test]
fn spec_configuration_block_is_accepted() {
    certgate::config::Config::from_toml(
        Path::new("/etc/certgate/certgate.toml"),
        CONTRACT_EXAMPLE,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("SPEC §3 example is rejected: {e}"));
}

/// Every ```toml block of a markdown document, fences indented or not (a
/// block inside a list item), with the fence's indentation removed.
fn toml_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(indent) = line.strip_suffix("```toml") else {
            continue;
        };
        if !indent.trim().is_empty() {
            continue;
        }
        let mut block = String::new();
        loop {
            let line = lines.next().expect("a closed ```toml block");
            if line.trim() == "```" {
                break;
            }
            block.push_str(line.strip_prefix(indent).unwrap_or(line));
            block.push('\n');
        }
        blocks.push(block);
    }
    blocks
}

/// `text` with its commented-out assignments (`# key = value`, the way the
/// reference shows optional and alternative keys) made live.
fn with_commented_keys(text: &str) -> String {
    text.lines()
        .map(|line| match line.trim_start().strip_prefix("# ") {
            Some(rest)
                if toml::from_str::<toml::Table>(rest)
                    .is_ok_and(|t| t.len() == 1 && t.values().all(|v| !v.is_table())) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pages whose TOML examples must be configs or known fragments.
const DOCS_WITH_TOML: [&str; 5] = [
    "README.md",
    "docs/fleet.md",
    "docs/kubernetes.md",
    "docs/protocols.md",
    "docs/upstreams.md",
];

#[test]
fn every_toml_example_in_the_docs_is_a_config_or_a_known_fragment() {
    for page in DOCS_WITH_TOML {
        let doc =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
        check_toml_examples(page, &doc);
    }
}

/// `[upstreams.NAME]` takes the keys of `[upstream]`: `upstreams.billing.ca`
/// is documented as `upstream.ca`.
fn as_upstream_key(key: &str) -> String {
    match key
        .strip_prefix("upstreams.")
        .and_then(|rest| rest.split_once('.'))
    {
        Some((_name, k)) => format!("upstream.{k}"),
        None => key.to_owned(),
    }
}

fn check_toml_examples(page: &str, readme: &str) {
    let reference = with_commented_keys(&readme_reference());
    let known_keys: BTreeSet<String> = keys(&reference)
        .iter()
        .map(|k| as_upstream_key(k))
        .collect();
    let reference_table: toml::Table = toml::from_str(&reference).expect("reference is TOML");
    let known_sections: BTreeSet<&String> = reference_table.keys().collect();

    let blocks = toml_blocks(readme);
    assert_eq!(
        blocks.len(),
        readme.matches("```toml").count(),
        "{page}: every ```toml fence opens a block"
    );
    assert!(
        blocks.len() > 1,
        "{page}: too few TOML examples: {blocks:?}"
    );
    for block in &blocks {
        let table: toml::Table = toml::from_str(block)
            .unwrap_or_else(|e| panic!("{page} example is not TOML ({e}):\n{block}"));
        // A block that sets the required listener.address is meant as a
        // whole config; other [listener] blocks are fragments.
        if table
            .get("listener")
            .and_then(|l| l.get("address"))
            .is_some()
        {
            certgate::config::Config::from_toml(
                Path::new("/etc/certgate/certgate.toml"),
                block,
                Vec::new(),
            )
            .unwrap_or_else(|e| panic!("{page} example does not parse ({e}):\n{block}"));
            continue;
        }
        let sections: Vec<&String> = table
            .keys()
            .filter(|s| !known_sections.contains(s))
            .collect();
        assert!(
            sections.is_empty(),
            "{page} example names sections the reference lacks: {sections:?}\n{block}"
        );
        let names: BTreeSet<String> = keys(block).iter().map(|k| as_upstream_key(k)).collect();
        assert!(!names.is_empty(), "{page} example names no key:\n{block}");
        let unknown: Vec<&String> = names.difference(&known_keys).collect();
        assert!(
            unknown.is_empty(),
            "{page} example names keys the reference lacks: {unknown:?}\n{block}"
        );
    }
}

#[test]
fn readme_roles_table_lists_every_matcher_with_its_case_rule() {
    use certgate::identity::{CertField, Compare};
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("| matcher | compared with | case |")
        .expect("the Roles matcher table");
    let mut documented = Vec::new();
    for row in readme[start..].lines().skip(2) {
        if !row.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let case = *cells.last().unwrap();
        for name in cells[0].split(',').map(|n| n.trim().trim_matches('`')) {
            let field = CertField::from_name(name)
                .unwrap_or_else(|| panic!("README documents unknown matcher `{name}`"));
            let expected = match field.compare() {
                Compare::Exact | Compare::Dn => "exact",
                Compare::CaseInsensitive => "case-insensitive",
            };
            assert_eq!(case, expected, "README case rule of `{name}`");
            documented.push(field);
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        CertField::ALL,
        "README matcher table, once each"
    );
}
