//! `ferry inventory` and `ferry plan`, run as a user would: the real binary on
//! examples/inventory, on a broken copy of it, and on a generated inventory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ferry(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferry")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inventory")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn check_accepts_the_example() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ferry(
        &["inventory", "check", example().to_str().unwrap()],
        tmp.path(),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains(": ok"), "{out}");
    assert!(out.contains("11 sites on 6 hostings, 4 filers"), "{out}");

    let o = ferry(
        &["inventory", "check", "--json", example().to_str().unwrap()],
        tmp.path(),
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["counts"]["sites"], 11);
}

#[test]
fn check_refuses_a_bad_inventory_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("inv");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(example()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let sites = dir.join("sites.csv");
    let mut s = std::fs::read_to_string(&sites).unwrap();
    s.push_str("www.acme.example,blogger,192.0.2.20\n");
    std::fs::write(&sites, s).unwrap();
    let lines = std::fs::read_to_string(&sites).unwrap().lines().count();

    let o = ferry(&["inventory", "check", dir.to_str().unwrap()], tmp.path());
    assert_eq!(code(&o), 2);
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!(
            "sites.csv:{lines}: site www.acme.example is on hosting \"blogger\""
        )),
        "{out}"
    );
    assert!(text(&o.stderr).contains("1 problem"), "{}", text(&o.stderr));

    // plan refuses it too, before writing anything.
    let o = ferry(
        &[
            "plan",
            "--inventory",
            dir.to_str().unwrap(),
            "--out",
            "p.json",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains(&format!("sites.csv:{lines}:")));
    assert!(!tmp.path().join("p.json").exists());
}

#[test]
fn plan_of_the_example_explains_and_writes_plan_json() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ferry(
        &[
            "plan",
            "--inventory",
            example().to_str().unwrap(),
            "--out",
            "plan.json",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    let out = text(&o.stdout);
    // The shared database glues two filers; the undeclared use glues a third.
    assert!(
        out.contains("shop@sql002-1 joins fs-002-a (declared+observed), fs-002-b (declared)"),
        "{out}"
    );
    assert!(
        out.contains(
            "crm@sql010-1 joins fs-002-b (observed), fs-010-a (declared) [across clusters]"
        ),
        "{out}"
    );
    assert!(out.contains("What each constraint costs"), "{out}");
    assert!(out.contains("- observed-db"), "{out}");
    assert!(out.contains("Plan written to plan.json"), "{out}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("plan.json")).unwrap()).unwrap();
    assert_eq!(doc["format"], "ferry-plan");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["summary"]["complete"], true);
    assert_eq!(doc["units"][0]["filers"].as_array().unwrap().len(), 3);

    // The same run twice writes the same bytes.
    let o = ferry(
        &[
            "plan",
            "--inventory",
            example().to_str().unwrap(),
            "--out",
            "again.json",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0);
    assert_eq!(
        std::fs::read(tmp.path().join("plan.json")).unwrap(),
        std::fs::read(tmp.path().join("again.json")).unwrap()
    );
}

#[test]
fn plan_json_summary_and_dot() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = example();
    let inv = inv.to_str().unwrap();
    let o = ferry(
        &["plan", "--inventory", inv, "--out", "p.json", "--json"],
        tmp.path(),
    );
    assert_eq!(code(&o), 0);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["units"], 3);
    assert_eq!(doc["largest_units"][0]["glue"].as_array().unwrap().len(), 2);

    // --dot by a member's name: DOT on stdout, the summary on stderr.
    let o = ferry(
        &[
            "plan",
            "--inventory",
            inv,
            "--out",
            "p.json",
            "--dot",
            "www.acme.example",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0);
    let dot = text(&o.stdout);
    assert!(dot.starts_with("graph ferry_units {"), "{dot}");
    assert!(
        dot.contains("filer fs-002-a") && dot.contains("shop@sql002-1"),
        "{dot}"
    );
    assert!(
        dot.contains("style=dashed"),
        "an observed use is dashed: {dot}"
    );
    assert!(text(&o.stderr).contains("Largest units"));

    // --largest K into a file.
    let o = ferry(
        &[
            "plan",
            "--inventory",
            inv,
            "--out",
            "p.json",
            "--largest",
            "2",
            "--graph-out",
            "g.dot",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0);
    let dot = std::fs::read_to_string(tmp.path().join("g.dot")).unwrap();
    assert_eq!(dot.matches("subgraph cluster_u").count(), 2);

    let o = ferry(
        &[
            "plan",
            "--inventory",
            inv,
            "--out",
            "p.json",
            "--dot",
            "nothing.example",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("no unit matches"));
}

#[test]
fn impossible_units_are_reported_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ferry(
        &[
            "plan",
            "--inventory",
            example().to_str().unwrap(),
            "--out",
            "p.json",
            "--constraints",
            "ip,filer,declared-db,observed-db",
            "--freeze-overhead",
            "0s",
            "--db-check-rate",
            "5MB/s",
            "--max-freeze",
            "5m",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 1, "{}", text(&o.stdout));
    let out = text(&o.stdout);
    assert!(
        out.contains("Impossible units (1): never scheduled"),
        "{out}"
    );
    assert!(out.contains("freeze = 0s overhead"), "{out}");
    assert!(text(&o.stderr).contains("the plan is incomplete"));
    // Written all the same, with the unit marked.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("p.json")).unwrap()).unwrap();
    assert_eq!(doc["summary"]["impossible_units"], 1);
    assert_eq!(doc["units"][0]["status"], "impossible");
    assert_eq!(doc["units"][0]["reason"], "freeze-exceeds-max-freeze");
}

#[test]
fn bad_flags_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = example();
    let inv = inv.to_str().unwrap();
    for (flag, value, says) in [
        ("--window", "5-1", "invalid window"),
        ("--bandwidth", "fast", "invalid rate"),
        ("--constraints", "filer,dns", "unknown constraint"),
        ("--max-freeze", "soon", "invalid duration"),
        ("--parallel", "0", "--parallel must be greater than zero"),
        ("--precopy-per-file", "1", "a unit is needed"),
        ("--precopy-overhead", "soon", "invalid duration"),
    ] {
        let o = ferry(
            &["plan", "--inventory", inv, "--out", "p.json", flag, value],
            tmp.path(),
        );
        assert_eq!(code(&o), 2, "{flag} {value}");
        assert!(
            text(&o.stderr).contains(says),
            "{flag}: {}",
            text(&o.stderr)
        );
    }
    let o = ferry(
        &["plan", "--inventory", "/nonexistent", "--out", "p.json"],
        tmp.path(),
    );
    assert_eq!(code(&o), 2);
    assert!(text(&o.stderr).contains("not a directory"));
}

/// Issue 18: `--precopy-overhead` and `--precopy-per-file` land in
/// plan.json's parameters and in each unit's `precopy` (overhead + files x
/// per file + bytes over the link).
#[test]
fn precopy_flags_feed_each_units_precopy() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ferry(
        &[
            "plan",
            "--inventory",
            example().to_str().unwrap(),
            "--copy-mode",
            "files",
            "--precopy-overhead",
            "2s",
            "--precopy-per-file",
            "500us",
            "--out",
            "plan.json",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("pre-copy 2s + 500 µs a file"));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("plan.json")).unwrap()).unwrap();
    let p = &doc["parameters"];
    assert_eq!(p["precopy_overhead_s"], 2.0);
    assert_eq!(p["precopy_per_file_s"], 0.0005);
    let bandwidth = p["bandwidth_bytes_per_s"].as_f64().unwrap();
    for u in doc["units"].as_array().unwrap() {
        let (size, pre) = (&u["size"], &u["precopy"]);
        let files = size["files"].as_f64().unwrap();
        let bytes = size["file_bytes"].as_f64().unwrap() + size["db_bytes"].as_f64().unwrap();
        let expected = 2.0 + files * 0.0005 + bytes / bandwidth;
        let total = pre["total_s"].as_f64().unwrap();
        // plan.json rounds to the millisecond.
        assert!((total - expected).abs() < 0.002, "{u}");
        assert_eq!(pre["overhead_s"], 2.0);
    }
}

#[test]
fn generate_then_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let o = ferry(
        &[
            "inventory",
            "generate",
            "--sites",
            "30000",
            "--seed",
            "5",
            "--out",
            "inv",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("30,000 sites"));
    // Deterministic: the same seed writes the same files.
    let o = ferry(
        &[
            "inventory",
            "generate",
            "--sites",
            "30000",
            "--seed",
            "5",
            "--out",
            "inv2",
        ],
        tmp.path(),
    );
    assert_eq!(code(&o), 0);
    for f in [
        "sites.csv",
        "hostings.csv",
        "databases.csv",
        "declared_uses.csv",
        "observed_uses.csv",
    ] {
        assert_eq!(
            std::fs::read(tmp.path().join("inv").join(f)).unwrap(),
            std::fs::read(tmp.path().join("inv2").join(f)).unwrap(),
            "{f}"
        );
    }
    let o = ferry(&["inventory", "check", "inv"], tmp.path());
    assert_eq!(code(&o), 0, "{}", text(&o.stdout));

    let o = ferry(
        &["plan", "--inventory", "inv", "--out", "plan.json", "--json"],
        tmp.path(),
    );
    assert!(code(&o) == 0 || code(&o) == 1, "{}", text(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["inventory"]["sites"], 30000);
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("plan.json")).unwrap()).unwrap();
    let sites: usize = plan["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["size"]["sites"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(sites, 30000);
    // Some filers are glued by shared databases in a generated inventory.
    assert!(plan["units"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["size"]["filers"].as_u64().unwrap() > 1));
}
