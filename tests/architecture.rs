//! The module graph in ARCHITECTURE.md is the one in `src/`: every
//! `crate::` path outside tests is read, grouped by top-level module, and
//! compared with the document's list, whose order is the rule (a module
//! uses only modules listed before it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `text` block of ARCHITECTURE.md: `module -> dep dep`, in order.
fn documented() -> Vec<(String, BTreeSet<String>)> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = doc.find("```text\n").expect("a ```text block") + "```text\n".len();
    let len = doc[start..].find("```").expect("closed block");
    doc[start..start + len]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (module, deps) = line.split_once("->").expect("`module -> deps`");
            (
                module.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules each module's non-test code names.
fn actual() -> Graph {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "main" || module == "lib" || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests may reach anywhere; the rule is for the code that ships.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for name in crate_paths(code) {
            if name != module && name != "self" {
                deps.insert(name);
            }
        }
    }
    graph
}

/// The first segment of every `crate::a`, and of every item in
/// `crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').expect("closed use group");
            names.extend(group[..end].split(',').filter_map(first_segment));
        } else if let Some(name) = first_segment(rest) {
            names.push(name);
        }
    }
    names
}

fn first_segment(path: &str) -> Option<String> {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn the_documented_module_graph_is_the_code() {
    let documented = documented();
    let actual = actual();
    let listed: BTreeSet<&String> = documented.iter().map(|(m, _)| m).collect();
    let modules: BTreeSet<&String> = actual.keys().collect();
    assert_eq!(
        listed, modules,
        "ARCHITECTURE.md lists other modules than src/ has"
    );
    for (module, deps) in &documented {
        assert_eq!(
            &actual[module], deps,
            "ARCHITECTURE.md's line for `{module}` differs from what src/{module} uses"
        );
    }
}

#[test]
fn modules_use_only_modules_listed_before_them() {
    let mut seen = BTreeSet::new();
    for (module, deps) in documented() {
        let later: Vec<&String> = deps.iter().filter(|d| !seen.contains(*d)).collect();
        assert!(
            later.is_empty(),
            "`{module}` uses {later:?}, listed after it: the graph must read bottom-up without cycles"
        );
        seen.insert(module);
    }
}

#[test]
fn crate_paths_are_read_from_groups_and_paths() {
    let code = "use crate::{config, tls::load};\nlet x = crate::clock::unix_now();";
    assert_eq!(crate_paths(code), ["config", "tls", "clock"]);
}
