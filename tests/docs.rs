//! The configuration reference, `examples/certgate.toml`, is a valid
//! config; it names every configuration key of the product contract (SPEC
//! §3, the §10 keys certgate implements, and the §13 fleet keys) and every
//! key the parser accepts, so neither can drift from it. Every TOML example
//! in the README and in `docs/` is a valid config or a fragment naming only
//! keys the reference documents. Nothing here reads outside the repository: the
//! contract's keys are listed below and its example config is
//! `tests/data/contract-config.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference_path() -> PathBuf {
    repo("examples/certgate.toml")
}

fn reference() -> String {
    read(&reference_path())
}

fn parse_config(path: &Path, text: &str) -> Result<certgate::config::Config, String> {
    certgate::config::Config::from_toml(path, text, Vec::new()).map_err(|e| e.to_string())
}

/// `text` with its commented-out assignments and table headers (`# key =
/// value`, `# [[server_tls.sni]]`: the way the reference shows optional
/// keys, alternatives and optional sections) made live.
fn with_commented_keys(text: &str) -> String {
    text.lines()
        .map(|line| match line.trim_start().strip_prefix("# ") {
            Some(rest) if is_table_header(rest) => rest,
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

/// `[section]` or `[[section.array]]`, optionally followed by a comment.
fn is_table_header(line: &str) -> bool {
    let head = line.split('#').next().unwrap_or("").trim();
    head.starts_with('[')
        && head.ends_with(']')
        && toml::from_str::<toml::Table>(head).is_ok_and(|t| t.values().all(|v| !v.is_str()))
}

/// `section.key` (`section.array.key` for the nested tables such as
/// `[[roles.map]]`) for every key assigned in a TOML document.
fn keys(text: &str) -> BTreeSet<String> {
    let doc: toml::Table = toml::from_str(text).expect("block is TOML");
    let mut out = BTreeSet::new();
    for (section, value) in &doc {
        for table in tables(value) {
            for (key, v) in table {
                let nested = tables(v);
                if nested.is_empty() {
                    out.insert(format!("{section}.{key}"));
                }
                for inner in nested {
                    out.extend(inner.keys().map(|k| format!("{section}.{key}.{k}")));
                }
            }
        }
    }
    out
}

/// The tables a value holds: itself, or the tables of an array of tables.
fn tables(value: &toml::Value) -> Vec<&toml::Table> {
    match value {
        toml::Value::Table(t) => vec![t],
        toml::Value::Array(a) if !a.is_empty() && a.iter().all(|x| x.is_table()) => {
            a.iter().filter_map(|v| v.as_table()).collect()
        }
        _ => Vec::new(),
    }
}

#[test]
fn reference_is_a_valid_config() {
    parse_config(&reference_path(), &reference())
        .unwrap_or_else(|e| panic!("examples/certgate.toml does not parse: {e}"));
}

#[test]
fn reference_names_every_contract_key() {
    let documented = keys(&with_commented_keys(&reference()));
    let missing: Vec<&&str> = CONTRACT_KEYS
        .iter()
        .filter(|k| !documented.contains(**k))
        .collect();
    assert!(
        missing.is_empty(),
        "examples/certgate.toml lacks contract keys: {missing:?}"
    );
}

/// The keys serde names in an unknown-field error: "expected one of `a`,
/// `b`, `c`", "expected `a` or `b`", "expected `a`".
fn expected_fields(error: &str) -> BTreeSet<String> {
    let list = error
        .split_once("expected one of ")
        .or_else(|| error.split_once("expected "))
        .unwrap_or_else(|| panic!("not an unknown-field error: {error}"))
        .1;
    let list = list.lines().next().unwrap_or("");
    list.split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

/// The parser knows no key the reference leaves out: an unknown key put
/// into each table of the reference makes the parser list the keys that
/// table accepts, and each must be documented there (live or commented out).
#[test]
fn reference_documents_every_key_the_parser_accepts() {
    let live = with_commented_keys(&reference());
    let documented: BTreeSet<String> = keys(&live).iter().map(|k| as_upstream_key(k)).collect();
    let doc: toml::Table = toml::from_str(&live).expect("reference is TOML");
    // (path of the table, its key prefix in `documented`)
    let mut targets: Vec<(Vec<String>, String)> = vec![(Vec::new(), String::new())];
    for (section, value) in &doc {
        let Some(table) = value.as_table() else {
            continue;
        };
        // `[upstreams]` is a map of names, each with `[upstream]`'s keys:
        // only its entries are probed.
        if section != "upstreams" {
            targets.push((vec![section.clone()], format!("{section}.")));
        }
        for (key, inner) in table {
            if !tables(inner).is_empty() {
                targets.push((
                    vec![section.clone(), key.clone()],
                    format!("{section}.{key}."),
                ));
            }
        }
    }
    let path = reference_path();
    for (table_path, prefix) in &targets {
        let mut probe = doc.clone();
        let mut table = &mut probe;
        for part in table_path {
            table = match table.get_mut(part).expect("table exists") {
                toml::Value::Table(t) => t,
                toml::Value::Array(a) => a[0].as_table_mut().expect("array of tables"),
                _ => unreachable!(),
            };
        }
        table.insert("zz_undocumented".into(), toml::Value::Integer(1));
        let text = toml::to_string(&probe).unwrap();
        let error = parse_config(&path, &text).expect_err("an unknown key is refused");
        assert!(
            error.contains("zz_undocumented"),
            "the refusal names the unknown key: {error}"
        );
        let accepted = expected_fields(&error);
        assert!(
            !accepted.is_empty(),
            "no accepted keys listed for [{}]: {error}",
            table_path.join(".")
        );
        let missing: Vec<String> = accepted
            .iter()
            .filter(|k| {
                if prefix.is_empty() {
                    !doc.contains_key(k.as_str())
                } else {
                    let key = as_upstream_key(&format!("{prefix}{k}"));
                    !documented.contains(&key)
                        && !documented.iter().any(|d| d.starts_with(&format!("{key}.")))
                }
            })
            .cloned()
            .collect();
        assert!(
            missing.is_empty(),
            "examples/certgate.toml does not document [{}] keys the parser accepts: {missing:?}",
            table_path.join(".")
        );
    }
}

#[test]
fn contract_configuration_block_is_accepted() {
    parse_config(Path::new("/etc/certgate/certgate.toml"), CONTRACT_EXAMPLE)
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

/// The README and every page in `docs/`, by path relative to the repository.
fn markdown_pages() -> BTreeMap<String, String> {
    let mut pages = BTreeMap::new();
    pages.insert("README.md".to_owned(), read(&repo("README.md")));
    for entry in std::fs::read_dir(repo("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            pages.insert(name, read(&path));
        }
    }
    pages
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

#[test]
fn every_toml_example_in_the_docs_is_a_config_or_a_known_fragment() {
    let reference = with_commented_keys(&reference());
    let known_keys: BTreeSet<String> = keys(&reference)
        .iter()
        .map(|k| as_upstream_key(k))
        .collect();
    let reference_table: toml::Table = toml::from_str(&reference).expect("reference is TOML");
    let known_sections: BTreeSet<&String> = reference_table.keys().collect();

    let pages = markdown_pages();
    assert!(pages.len() > 5, "too few pages: {:?}", pages.keys());
    let mut examples = 0;
    for (page, text) in &pages {
        let blocks = toml_blocks(text);
        assert_eq!(
            blocks.len(),
            text.matches("```toml").count(),
            "{page}: every ```toml fence opens a block"
        );
        examples += blocks.len();
        for block in &blocks {
            let table: toml::Table = toml::from_str(block)
                .unwrap_or_else(|e| panic!("{page}: example is not TOML ({e}):\n{block}"));
            // A block that sets the required listener.address is meant as a
            // whole config; other [listener] blocks are fragments.
            if table
                .get("listener")
                .and_then(|l| l.get("address"))
                .is_some()
            {
                parse_config(Path::new("/etc/certgate/certgate.toml"), block)
                    .unwrap_or_else(|e| panic!("{page}: example does not parse ({e}):\n{block}"));
                continue;
            }
            let sections: Vec<&String> = table
                .keys()
                .filter(|s| !known_sections.contains(s))
                .collect();
            assert!(
                sections.is_empty(),
                "{page}: example names sections the reference lacks: {sections:?}\n{block}"
            );
            let names: BTreeSet<String> = keys(block).iter().map(|k| as_upstream_key(k)).collect();
            assert!(!names.is_empty(), "{page}: example names no key:\n{block}");
            let unknown: Vec<&String> = names.difference(&known_keys).collect();
            assert!(
                unknown.is_empty(),
                "{page}: example names keys the reference lacks: {unknown:?}\n{block}"
            );
        }
    }
    assert!(examples > 10, "too few TOML examples: {examples}");
}

#[test]
fn roles_table_lists_every_matcher_with_its_case_rule() {
    use certgate::identity::{CertField, Compare};
    let page = read(&repo("docs/requests.md"));
    let start = page
        .find("| matcher | compared with | case |")
        .expect("the Roles matcher table in docs/requests.md");
    let mut documented = Vec::new();
    for row in page[start..].lines().skip(2) {
        if !row.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let case = *cells.last().unwrap();
        for name in cells[0].split(',').map(|n| n.trim().trim_matches('`')) {
            let field = CertField::from_name(name)
                .unwrap_or_else(|| panic!("docs/requests.md documents unknown matcher `{name}`"));
            let expected = match field.compare() {
                Compare::Exact | Compare::Dn => "exact",
                Compare::CaseInsensitive => "case-insensitive",
            };
            assert_eq!(case, expected, "docs/requests.md case rule of `{name}`");
            documented.push(field);
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        CertField::ALL,
        "docs/requests.md matcher table, once each"
    );
}

/// The README stays an overview: the details live in `docs/`.
#[test]
fn readme_stays_short() {
    let lines = read(&repo("README.md")).lines().count();
    assert!(
        lines <= 320,
        "README.md has {lines} lines; move details to docs/"
    );
}
