//! `ferry rehearse` at the small size CI can afford: 200 sites on 4 filers,
//! 1 ms each way (the copy pays round trips per file: 5 ms makes it
//! minutes), two datacenters as network namespaces, the real routers,
//! agents, planner and orchestrator, a MariaDB server per filer in each
//! DC. Asserts exit 0, every check in the JSON output (the databases'
//! among them), the per-unit numbers, and that no namespace or database
//! server of the run is left behind. CI runs as root; without root the first test fails (it does not
//! skip). The second pins the not-root answer (exit 2 and its message),
//! dropping root with `setpriv` when run as root.

use std::process::Command;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn is_root() -> bool {
    // `id -u` keeps the test free of a dependency for one syscall.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Namespaces named after a pid (`ferry-<pid>-<role>`).
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("ferry-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_small_night_passes_every_check_and_leaves_no_namespace() {
    assert!(
        is_root(),
        "ferry rehearse creates network namespaces: run this test as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("rehearse.html");
    let child = ferry()
        .args([
            "rehearse",
            "--sites",
            "200",
            "--filers",
            "4",
            "--lanes",
            "4",
            "--duration",
            "20s",
            "--latency",
            "1ms",
            "--large-file",
            "1M",
            "--json",
            "--report",
        ])
        .arg(&report)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}): {stdout}\nstderr:\n{stderr}"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "checks: {:#}\nstderr:\n{stderr}",
        doc["checks"]
    );
    assert_eq!(doc["ok"], true);
    let checks = doc["checks"].as_array().unwrap();
    for name in [
        "requests",
        "units_done",
        "traffic_mix",
        "writes_exactly_once",
        "no_split_brain",
        "no_early_destination_writes",
        "verified_at_flip",
        "uploads",
        "db_writes_exactly_once",
        "db_no_split_brain",
        "db_no_early_destination_writes",
        "destination_databases_untouched",
        "orchestrator",
        "report",
    ] {
        let c = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"));
        assert_eq!(c["ok"], true, "{c}");
    }
    let units = doc["units"].as_array().unwrap();
    assert_eq!(units.len(), 4, "{units:#?}");
    for u in units {
        assert_eq!(u["state"], "done", "{u}");
        assert!(u["freeze_ms"].as_u64().is_some(), "{u}");
        assert!(u["predicted_freeze_ms"].as_u64().is_some(), "{u}");
        assert!(u["predicted_precopy_ms"].as_u64().is_some(), "{u}");
    }
    for kind in ["browser", "download", "slow_reader", "db_order"] {
        assert!(
            doc["requests"][kind]["sent"].as_u64().unwrap_or(0) > 0,
            "{kind}: {}",
            doc["requests"]
        );
    }
    assert_eq!(doc["namespaces"].as_array().map(Vec::len), Some(3));
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(page.contains("The rehearsal") && page.contains("U1"));
    assert_eq!(namespaces_of(pid), Vec::<String>::new());
    // The database servers it started (in its work directory) are gone too.
    assert_eq!(rehearsal_databases(), Vec::<String>::new());
}

/// Command lines of `mariadbd` processes whose data lives in a rehearsal's
/// work directory (`ferry-rehearse-*`).
fn rehearsal_databases() -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("mariadbd") && cmd.contains("ferry-rehearse-") {
            left.push(cmd);
        }
    }
    left
}

#[test]
fn without_root_it_says_so_and_exits_2() {
    if is_root() {
        // Dropping root needs a user to drop to; `setpriv` does it when present.
        let Ok(out) = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .args(["rehearse", "--sites", "10", "--filers", "1"])
            .output()
        else {
            panic!("setpriv is needed to run this test as root");
        };
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("ferry rehearse needs root to create network namespaces"),
            "{out:?}"
        );
    } else {
        let out = ferry()
            .args(["rehearse", "--sites", "10", "--filers", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("ferry rehearse needs root to create network namespaces"));
    }
}
