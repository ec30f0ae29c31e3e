//! Every crate's modules depend on each other one way (issue 19): this test
//! reads `crates/*/src/**/*.rs`, collects which top-level modules each one
//! names through its crate root (`use crate::m`, `crate::m::x`,
//! `use crate::{m, n}`), and fails naming the crate and the cycle.
//! Submodules count as their top-level module (`mover/freeze.rs` is
//! `mover`); comments are ignored. A cycle means two modules that cannot be
//! read, tested or moved apart: move the shared item into a leaf module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to; None for the crate
/// root (it declares and re-exports every module) and for `bin/` targets.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

/// The identifiers right after each `crate::` (and inside `crate::{..}`,
/// the first segment of each item, over several lines if need be) in
/// `code`, comments removed.
fn named_through_root(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // Items of the group: split at its own commas, up to its `}`.
        let (mut depth, mut item_start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.insert(ident(&group[item_start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.insert(ident(&group[item_start..i]));
                    item_start = i + 1;
                }
                _ => {}
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn collect(dir: &Path, root: &Path, graph: &mut Graph) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, graph);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let Some(module) = module_of(path.strip_prefix(root).unwrap()) else {
                continue;
            };
            let code = std::fs::read_to_string(&path).unwrap();
            graph
                .entry(module)
                .or_default()
                .extend(named_through_root(&code));
        }
    }
}

/// One cycle of `graph` (as `a -> b -> a`), if there is any. Names that are
/// not modules of the graph (re-exports such as `crate::Mover`) are skipped.
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

fn crates_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_crates_modules_depend_one_way() {
    let mut crates: Vec<_> = std::fs::read_dir(crates_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    crates.sort();
    assert!(crates.len() >= 10, "crates not found: {crates:?}");
    let mut cycles = Vec::new();
    for krate in &crates {
        let src = krate.join("src");
        let mut graph = Graph::new();
        collect(&src, &src, &mut graph);
        if let Some(cycle) = find_cycle(&graph) {
            let name = krate.file_name().unwrap().to_string_lossy();
            cycles.push(format!("{name}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "module cycles (move the shared item into a leaf module):\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_crates_that_had_cycles_are_read() {
    // The three crates that had cycles before issue 19: their graphs must
    // come out non-trivial, or the check above would pass by reading nothing.
    for (krate, modules) in [
        ("ferry-db", ["mover", "error", "preflight"]),
        ("ferry-proxy", ["forward", "state", "hold"]),
        ("ferry-sync", ["engine", "proto", "local"]),
    ] {
        let src = crates_dir().join(krate).join("src");
        let mut graph = Graph::new();
        collect(&src, &src, &mut graph);
        for m in modules {
            assert!(graph.contains_key(m), "{krate}: module {m} not read");
        }
        assert!(
            graph.values().map(BTreeSet::len).sum::<usize>() > 10,
            "{krate}: no imports read"
        );
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let code = "use crate::error::{Result, Side};\nuse crate::{accounts, state};\n\
                // crate::mover in a comment\nlet x = crate::gtid::GtidPos::default();\n\
                use crate::{\n    copy::{self, Counters},\n    schema,\n};";
    assert_eq!(
        named_through_root(code).into_iter().collect::<Vec<_>>(),
        ["accounts", "copy", "error", "gtid", "schema", "state"]
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
