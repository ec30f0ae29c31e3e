//! The crate's modules depend on each other one way. A test reads
//! `src/**/*.rs`, collects which modules each one names through the crate
//! root (`use crate::m`, `crate::m::x`, `use crate::{m, n}`), and fails
//! naming the cycle if there is one. Comments are ignored; a file in a
//! directory counts as its top-level module. The root (`lib.rs`) is left
//! out: it declares and wires every module, and the items it owns (`Proxy`,
//! `ProxyError`) are not modules.
//!
//! (ferry-db has the same check for its own modules, `ferry-db/src/layering.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to; `None` for the root
/// and for this file (its tests name modules in strings).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "layering").then(|| name.to_string())
}

/// The first path segment after each `crate::` in `code` (each item of a
/// `crate::{..}` group), comments removed.
fn named_through_root(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let mut rest = line.split("//").next().unwrap_or("");
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // One level of braces: the crate's imports need no more.
                let inner = group.split('}').next().unwrap_or("");
                out.extend(inner.split(',').map(|i| ident(i.trim())));
            } else {
                out.insert(ident(rest));
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn collect(dir: &Path, root: &Path, graph: &mut Graph) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, graph);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src");
            let Some(module) = module_of(rel) else {
                continue;
            };
            let code = std::fs::read_to_string(&path).expect("read module");
            graph
                .entry(module)
                .or_default()
                .extend(named_through_root(&code));
        }
    }
}

/// One cycle of `graph` (as `a -> b -> a`), if it has any. Names that are
/// not modules (root items such as `crate::ProxyError`) are skipped.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if next != m && graph.contains_key(next) {
                if let Some(c) = visit(next, graph, done, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut done, &mut Vec::new()))
}

#[test]
fn modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    collect(&src, &src, &mut graph);
    assert!(graph.contains_key("forward") && graph.contains_key("state"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "module cycle in ferry-proxy: {} (move what both sides need into a leaf module)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let code =
        "use crate::stats::{Stalled, PassthroughStats};\nuse crate::{hold, state, ProxyError};\n\
                // crate::admin in a comment\nlet m = crate::metrics::Metrics::default();";
    assert_eq!(
        named_through_root(code).into_iter().collect::<Vec<_>>(),
        ["ProxyError", "hold", "metrics", "state", "stats"]
    );
    let edges = |pairs: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in pairs {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(
        find_cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        find_cycle(&edges(&[("a", "b"), ("a", "c"), ("b", "c")])),
        None
    );
}
