//! The example in `docs/plan-format.md` is a checked fixture: the JSON block
//! after the marker line must be, value for value, the plan the planner writes
//! for `examples/inventory` with the parameters that block records. On a
//! mismatch the test prints a line diff; `FERRY_BLESS=1` rewrites the block
//! from the current planner (then review the doc's prose).

use std::path::PathBuf;

use ferry_inventory::Quiet;
use ferry_plan::{Constraints, CopyMode, Params, Plan, Window};
use serde_json::Value;

const MARKER: &str = "<!-- checked: crates/ferry-plan/tests/doc_example.rs -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The byte range of the JSON block that follows the marker line.
fn block(doc: &str) -> std::ops::Range<usize> {
    let at = doc.find(MARKER).expect("the marker line is in the doc");
    let open = "```json\n";
    let start = at
        + doc[at..]
            .find(open)
            .expect("a ```json block follows the marker")
        + open.len();
    let end = start + doc[start..].find("```").expect("the block is closed");
    start..end
}

/// The parameters the doc's plan records, as the planner takes them.
fn params_of(doc: &Value) -> Params {
    let p = &doc["parameters"];
    let f = |k: &str| {
        p[k].as_f64()
            .unwrap_or_else(|| panic!("parameters.{k} is a number"))
    };
    let names: Vec<&str> = p["constraints"]
        .as_array()
        .expect("parameters.constraints is a list")
        .iter()
        .map(|c| c.as_str().expect("constraint names are strings"))
        .collect();
    let constraints = if names.is_empty() {
        Constraints::NONE
    } else {
        Constraints::parse(&names.join(",")).expect("known constraints")
    };
    Params {
        constraints,
        window: Window::parse(p["window"].as_str().expect("parameters.window")).expect("a window"),
        bandwidth: f("bandwidth_bytes_per_s"),
        max_freeze: f("max_freeze_s"),
        nights: p["nights"].as_u64().map(|n| n as u32),
        parallel: f("parallel") as u32,
        change_rate: f("change_rate_per_day") / 86_400.0,
        scan_rate: f("scan_rate_bytes_per_s"),
        walk_rate: f("walk_rate_files_per_s"),
        copy_mode: p["copy_mode"]
            .as_str()
            .map(|m| CopyMode::parse(m).expect("a copy mode")),
        freeze_per_file: p["freeze_per_file_s"].as_f64(),
        db_check_rate: f("db_check_rate_bytes_per_s"),
        freeze_overhead: f("freeze_overhead_s"),
        // Absent from plans written before the pre-copy terms: 0.
        precopy_overhead: p["precopy_overhead_s"].as_f64().unwrap_or(0.0),
        precopy_per_file: p["precopy_per_file_s"].as_f64().unwrap_or(0.0),
        lead: f("lead_s"),
    }
}

/// A JSON value with its object keys in written order (serde_json's `Value`
/// sorts them), for laying out and diffing the doc's block.
enum Json {
    Scalar(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses JSON text (already known to be valid: `serde_json` read it).
    fn parse(text: &str) -> Json {
        let mut chars = text.trim().char_indices().peekable();
        let v = Json::value(text.trim(), &mut chars);
        assert!(chars.next().is_none(), "trailing text after the JSON value");
        v
    }

    fn value(text: &str, chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> Json {
        let skip = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        };
        skip(chars);
        let (start, c) = chars.next().expect("a value");
        let v = match c {
            '[' | '{' => {
                let close = if c == '[' { ']' } else { '}' };
                let mut items = Vec::new();
                loop {
                    skip(chars);
                    if chars.next_if(|(_, x)| *x == close).is_some() {
                        break;
                    }
                    let key = (c == '{').then(|| {
                        let Json::Scalar(k) = Json::value(text, chars) else {
                            panic!("an object key is a string")
                        };
                        skip(chars);
                        assert!(chars.next_if(|(_, x)| *x == ':').is_some());
                        k
                    });
                    items.push((key, Json::value(text, chars)));
                    skip(chars);
                    chars.next_if(|(_, x)| *x == ',');
                }
                if c == '[' {
                    Json::Array(items.into_iter().map(|(_, v)| v).collect())
                } else {
                    Json::Object(
                        items
                            .into_iter()
                            .map(|(k, v)| (k.unwrap_or_default(), v))
                            .collect(),
                    )
                }
            }
            '"' => {
                let mut escaped = false;
                let end = loop {
                    let (i, x) = chars.next().expect("a closed string");
                    match (escaped, x) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break i,
                        _ => escaped = false,
                    }
                };
                Json::Scalar(text[start..=end].to_string())
            }
            _ => {
                let mut end = start + c.len_utf8();
                while let Some((i, x)) =
                    chars.next_if(|(_, x)| !matches!(x, ',' | ']' | '}') && !x.is_whitespace())
                {
                    end = i + x.len_utf8();
                }
                Json::Scalar(text[start..end].to_string())
            }
        };
        v
    }

    fn inline(&self) -> String {
        match self {
            Json::Scalar(s) => s.clone(),
            Json::Array(items) => {
                let parts: Vec<String> = items.iter().map(Json::inline).collect();
                format!("[{}]", parts.join(", "))
            }
            Json::Object(map) => {
                let parts: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.inline()))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
        }
    }

    /// As the doc shows it: a value that fits on its line stays on one line.
    fn layout(&self, indent: usize, prefix: usize, out: &mut String) {
        const WIDTH: usize = 90;
        let flat = self.inline();
        if indent + prefix + flat.len() <= WIDTH {
            out.push_str(&flat);
            return;
        }
        let pad = " ".repeat(indent + 2);
        let (open, close, n) = match self {
            Json::Scalar(s) => return out.push_str(s),
            Json::Array(items) => ('[', ']', items.len()),
            Json::Object(map) => ('{', '}', map.len()),
        };
        out.push(open);
        out.push('\n');
        for i in 0..n {
            out.push_str(&pad);
            match self {
                Json::Array(items) => items[i].layout(indent + 2, 0, out),
                Json::Object(map) => {
                    let key = format!("{}: ", map[i].0);
                    out.push_str(&key);
                    map[i].1.layout(indent + 2, key.len(), out);
                }
                Json::Scalar(_) => unreachable!("returned above"),
            }
            out.push_str(if i + 1 < n { ",\n" } else { "\n" });
        }
        out.push_str(&" ".repeat(indent));
        out.push(close);
    }

    fn shown(text: &str) -> String {
        let mut out = String::new();
        Json::parse(text).layout(0, 0, &mut out);
        out.push('\n');
        out
    }
}

/// A line diff (longest common subsequence) of `old` and `new`, changed
/// lines only, each with its line number in `old` or `new`.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // lcs[i][j]: length of the common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+{:4} {}\n", j + 1, b[j]));
            j += 1;
        } else {
            out.push_str(&format!("-{:4} {}\n", i + 1, a[i]));
            i += 1;
        }
    }
    out
}

#[test]
fn the_docs_example_plan_is_the_real_plan_of_the_example_inventory() {
    let path = root().join("docs/plan-format.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let range = block(&doc);
    let shown: Value = serde_json::from_str(&doc[range.clone()])
        .unwrap_or_else(|e| panic!("the doc's example is not JSON: {e}"));
    let params = params_of(&shown);
    // The prose says the example is planned with the default flags.
    assert_eq!(
        params,
        Params::default(),
        "the doc's example records other parameters than the default flags"
    );
    let inv = ferry_inventory::load_dir(&root().join("examples/inventory"), &Quiet).unwrap();
    let plan = Plan::build(&inv, &params, &Quiet).unwrap();
    let mut bytes = Vec::new();
    plan.write_json(&mut bytes).unwrap();
    let mut real: Value = serde_json::from_slice(&bytes).unwrap();
    // The version in `generator` moves with releases; the doc need not.
    real["generator"] = shown["generator"].clone();
    if real == shown {
        return;
    }
    let real_text = String::from_utf8(bytes).unwrap();
    if std::env::var_os("FERRY_BLESS").is_some() {
        let updated = format!(
            "{}{}{}",
            &doc[..range.start],
            Json::shown(&real_text),
            &doc[range.end..]
        );
        std::fs::write(&path, updated).unwrap();
        eprintln!("rewrote the example in {}", path.display());
        return;
    }
    panic!(
        "the example plan in docs/plan-format.md is not what the planner writes for \
         examples/inventory with the parameters it records (- doc, + real; `generator` aside):\n{}\n\
         rerun with FERRY_BLESS=1 to rewrite it",
        diff(&Json::shown(&doc[range]), &Json::shown(&real_text))
    );
}
