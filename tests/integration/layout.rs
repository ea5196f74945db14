//! The shape of `src/` that the redesign of the engine's core settled on (issue 12), kept by a
//! test: no module imports from a module that imports it back, and no function is 80 lines or
//! longer. Reads the sources as text; needs no cluster.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LONGEST_FUNCTION: usize = 80;

/// Every `.rs` file under `src/`, by module path (`sync::report`; a folder's `mod.rs` is the
/// folder's module).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs") && !f.ends_with("lib.rs"))
        .map(|f| {
            let relative = f.strip_prefix(&src).expect("under src").with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&f).expect("readable source");
            (parts.join("::"), text)
        })
        .collect()
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &[&str], known: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| known.contains_key(candidate))
}

/// Which modules each module imports (`crate::…` and `super::…` paths).
fn imports(known: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in known {
        // A file's unit tests import from the file itself (`use super::*`): not a module edge.
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        let own: Vec<&str> = module.split("::").collect();
        let parent = &own[..own.len() - 1];
        for (prefix, base) in [("crate::", &[][..]), ("super::", parent)] {
            for (at, _) in text.match_indices(prefix) {
                let rest = &text[at + prefix.len()..];
                let path: Vec<&str> = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or_default()
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .collect();
                let full: Vec<&str> = base.iter().copied().chain(path).collect();
                if let Some(target) = module_of(&full, known)
                    && target != *module
                {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
        // A module declared in `module` (`mod x;`, `pub use x::…`) is imported by it.
        for line in text.lines() {
            let declared = line
                .trim()
                .trim_start_matches("pub ")
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(child) = declared {
                edges
                    .entry(module.clone())
                    .or_default()
                    .insert(format!("{module}::{child}"));
            }
        }
    }
    edges
}

/// Modules that import each other, directly or through others.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for (m, from_m) in &reachable {
        if !from_m.contains(*m) {
            continue;
        }
        let circle: BTreeSet<String> = from_m
            .iter()
            .filter(|other| reachable.get(other).is_some_and(|r| r.contains(*m)))
            .cloned()
            .collect();
        if !found.contains(&circle) {
            found.push(circle);
        }
    }
    found
}

/// `(lines, module::function)` for every function: from its `fn` line to the closing brace at
/// the same indentation (rustfmt's layout).
fn function_lengths(known: &BTreeMap<String, String>) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (module, text) in known {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let signature = [
                "pub fn ",
                "fn ",
                "pub async fn ",
                "async fn ",
                "pub(crate) fn ",
            ]
            .iter()
            .find_map(|p| trimmed.strip_prefix(p));
            let Some(rest) = signature else { continue };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if line.ends_with(';') || line.ends_with('}') {
                continue;
            }
            let close = format!("{indent}}}");
            let end = lines[i + 1..].iter().position(|l| *l == close);
            if let Some(end) = end {
                out.push((end + 2, format!("{module}::{name}")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let known = modules();
    assert!(known.contains_key("sync::report"), "{:?}", known.keys());
    let edges = imports(&known);
    let found = circles(&edges);
    assert!(found.is_empty(), "import circles: {found:?}");
    // The check can fail: a made-up back edge is found.
    let mut with_back_edge = edges.clone();
    with_back_edge
        .entry("plan".into())
        .or_default()
        .insert("sync".into());
    assert!(!circles(&with_back_edge).is_empty());
}

#[test]
fn every_function_in_src_is_shorter_than_eighty_lines() {
    let lengths = function_lengths(&modules());
    assert!(lengths.len() > 300, "functions found: {}", lengths.len());
    let long: Vec<&(usize, String)> = lengths
        .iter()
        .filter(|(n, _)| *n >= LONGEST_FUNCTION)
        .collect();
    assert!(long.is_empty(), "functions of 80 lines or more: {long:?}");
}
