//! The README's configuration reference is a valid config, and it names
//! every key of the product contract's configuration block (SPEC §3), so
//! the two cannot drift apart.

use std::collections::BTreeSet;
use std::path::Path;

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
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/SPEC.md");
    let Ok(spec) = std::fs::read_to_string(&spec_path) else {
        eprintln!("skipping: {} not present", spec_path.display());
        return;
    };
    let spec_keys = keys(toml_block_after(&spec, "## 3. Configuration"));
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
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/SPEC.md");
    let Ok(spec) = std::fs::read_to_string(&spec_path) else {
        eprintln!("skipping: {} not present", spec_path.display());
        return;
    };
    let block = toml_block_after(&spec, "## 3. Configuration");
    certgate::config::Config::from_toml(
        Path::new("/etc/certgate/certgate.toml"),
        block,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("SPEC §3 example is rejected: {e}"));
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
