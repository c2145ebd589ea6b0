//! The module map stays layered: no two modules of `src/` import each other, directly or
//! through others. An import cycle lets a change anywhere in it reach everything in it, and
//! hides which module is the lower layer. Read from the source text (`crate::module` and
//! `lookalike::module` paths outside comments), so it needs no build of anything else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a source file belongs to: `src/index/ann.rs` → `index`; the binary's
/// files (`main.rs`, `cli/`) → `cli`.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" => None,
        "main" => Some("cli".into()),
        other => Some(other.to_string()),
    }
}

/// The top-level modules a file refers to through `crate::` (or `lookalike::` from the binary).
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for root in ["crate::", "lookalike::"] {
            let mut rest = code;
            while let Some(at) = rest.find(root) {
                rest = &rest[at + root.len()..];
                // `crate::{a, b::c}`: each name in the braces; `crate::a::b`: `a`.
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group.split('}').next().unwrap_or("").split(',').map(|n| n.trim().split("::").next().unwrap_or("")).collect(),
                    None => vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")],
                };
                found.extend(names.into_iter().filter(|n| modules.contains(*n)).map(str::to_string));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module → the modules it imports, for the whole `src/` tree.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f.strip_prefix(&src).ok()?)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = file.strip_prefix(&src).ok().and_then(module_of) else { continue };
        let text = std::fs::read_to_string(file).expect("source file");
        let uses = references(&text, &modules);
        graph.entry(module.clone()).or_default().extend(uses.into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(graph: &BTreeMap<String, BTreeSet<String>>, node: &str, start: &str, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let graph = import_graph();
    assert!(graph.contains_key("search") && graph.contains_key("catalog"), "the source tree was read: {graph:?}");
    let cycles: Vec<String> = graph.keys().filter_map(|m| cycle_from(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "import cycles between modules:\n  {}", cycles.join("\n  "));
}

#[test]
fn the_plain_data_types_import_nothing_of_lookalike() {
    let graph = import_graph();
    assert_eq!(graph.get("types").map(BTreeSet::len), Some(0), "types imports {:?}", graph.get("types"));
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])].into_iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect();
    assert_eq!(cycle_from(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    assert_eq!(cycle_from(&graph, "d"), None);
    let modules: BTreeSet<String> = ["search", "index", "catalog"].map(String::from).into();
    assert_eq!(references("use crate::{search::X, index};\n// crate::catalog in a comment\n", &modules), ["index", "search"].map(String::from).into());
}
