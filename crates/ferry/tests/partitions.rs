//! Issue 17's partition scenarios, each a small `ferry rehearse --control
//! etcd --partition NAME`: two datacenters as network namespaces, 3 etcd
//! members split 2+1 across them, two routers per DC watching etcd, the
//! shop servers and their clients, the orchestrator's journal and lease in
//! etcd. Each breaks one thing mid-unit (docs/control-plane.md,
//! "Partitions rehearsed") and must end with every check of the rehearsal
//! passing: every acknowledged write exactly once at the destination, none
//! at the source after its freeze, none at the destination before its
//! flip, no failed request but those the scenario documents, every unit
//! done, and the fault having happened as told. Root is needed (CI runs as
//! root); the scenarios run one at a time (each is timing-sensitive: leases
//! of seconds on 2 shared cores).

#![cfg(feature = "etcd")]

use std::process::{Command, Stdio};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the scenario and returns the rehearsal's JSON summary after
/// asserting exit 0 and every check passed.
fn rehearse(partition: &str) -> serde_json::Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(
        is_root,
        "ferry rehearse creates network namespaces: run this test as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "rehearse",
            "--control",
            "etcd",
            "--partition",
            partition,
            "--sites",
            "40",
            "--filers",
            "2",
            "--lanes",
            "2",
            "--duration",
            "10s",
            "--latency",
            "1ms",
            "--large-file",
            "256K",
            "--json",
            "--report",
        ])
        .arg(dir.path().join("report.html"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}): {stdout}\nstderr:\n{stderr}"));
    let checks = doc["checks"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "{partition}: exit {:?}, failed checks: {failed:#?}\nstderr:\n{stderr}",
        out.status.code()
    );
    for name in [
        "requests",
        "units_done",
        "writes_exactly_once",
        "no_split_brain",
        "no_early_destination_writes",
        "verified_at_flip",
        "orchestrator",
        "partition",
    ] {
        assert!(
            checks.iter().any(|c| c["name"] == name),
            "{partition}: no check {name}: {checks:#?}"
        );
    }
    // No namespace of the run is left behind.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("ferry-{pid}-");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&prefix),
        "{partition}: namespaces left behind"
    );
    doc
}

fn detail(doc: &serde_json::Value, name: &str) -> String {
    doc["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn attempts(doc: &serde_json::Value) -> Vec<u64> {
    doc["units"]
        .as_array()
        .map(|us| us.iter().filter_map(|u| u["attempts"].as_u64()).collect())
        .unwrap_or_default()
}

/// Scenario 3, first half: one destination member lost inside a freeze.
#[test]
fn one_etcd_member_lost_inside_a_freeze_the_night_goes_on() {
    let doc = rehearse("etcd-member");
    assert!(detail(&doc, "partition").contains("m1 killed"), "{doc}");
}

/// Scenario 3, second half: quorum lost inside a freeze; nothing splits,
/// the night ends once the members are back.
#[test]
fn quorum_lost_inside_a_freeze_nothing_splits_and_the_night_ends() {
    let doc = rehearse("etcd-quorum");
    assert!(detail(&doc, "partition").contains("no quorum"), "{doc}");
}

/// Scenario 4, first half: the runner killed (-9) mid-unit; a runner in
/// the other datacenter resumes from the journal in etcd.
#[test]
fn a_killed_runner_is_resumed_from_the_other_datacenter() {
    let doc = rehearse("orchestrator-killed");
    assert!(
        detail(&doc, "partition").contains("killed (SIGKILL)"),
        "{doc}"
    );
}

/// Scenario 4, second half: the runner stopped inside its freeze; another
/// takes over; the first, woken, exits 4 having changed nothing (the data
/// checks would see a write it let through).
#[test]
fn a_paused_runner_woken_after_a_takeover_exits_4() {
    let doc = rehearse("orchestrator-paused");
    assert!(
        detail(&doc, "partition").contains("continued: exit code 4"),
        "{doc}"
    );
}

/// Scenario 6: the link between the DCs cut while a unit is frozen; the
/// final copy cannot reach the source, the freeze is abandoned (the site
/// serves from the source again) and tried again once the link is back.
#[test]
fn the_wan_cut_during_a_final_copy_abandons_the_freeze_and_retries() {
    let doc = rehearse("wan-cut");
    assert!(
        attempts(&doc).iter().any(|&a| a >= 2),
        "no unit needed a second attempt: {doc}"
    );
}

/// Scenario 5: a router joins inside a freeze; it loads the sites from
/// etcd, registers, every later freeze waits for it, and it serves every
/// site at the end.
#[test]
fn a_router_that_joins_during_a_migration_is_waited_for_and_serves() {
    let doc = rehearse("router-joins");
    let d = detail(&doc, "partition");
    assert!(d.contains("40 sites, 200 each"), "{d}");
    assert!(!d.contains("acknowledged by it: 0"), "{d}");
}

/// Scenario 2: a source router killed inside a freeze and started again
/// while etcd is out of its reach (the link cut: no quorum in its DC): it
/// starts from its local copy, the frozen unit held; once the link is back
/// the freeze is tried again and the night ends.
#[test]
fn a_router_restarted_without_etcd_serves_from_its_local_copy() {
    let doc = rehearse("router-restart");
    let d = detail(&doc, "partition");
    assert!(d.contains("ready from its local copy"), "{d}");
}

/// Scenario 1 for the source's routers, before a freeze: cut from etcd's
/// quorum and the orchestrator (their clients still reach them), they
/// cannot acknowledge; the freeze is abandoned and tried again.
#[test]
fn the_wan_cut_before_a_freeze_holds_the_freeze_until_it_is_back() {
    let doc = rehearse("wan-cut-before-freeze");
    assert!(
        attempts(&doc).iter().any(|&a| a >= 2),
        "no unit needed a second attempt: {doc}"
    );
}

/// Scenario 1 for the source's routers, after a flip: the next unit's
/// prepare cannot reach them and asks again; nothing splits.
#[test]
fn the_wan_cut_after_a_flip_splits_nothing_and_the_night_ends() {
    let doc = rehearse("wan-cut-after-flip");
    assert!(
        detail(&doc, "partition").contains("after a unit's flip"),
        "{doc}"
    );
}

/// The link cut inside a unit's pre-copy (between its first pass and the
/// converging ones): the copy cannot reach the source's agent and asks it
/// again later; the unit is not failed for the night.
#[test]
fn the_wan_cut_inside_a_pre_copy_is_waited_out() {
    let doc = rehearse("wan-cut-pre-copy");
    let d = detail(&doc, "partition");
    assert!(d.contains("an agent out of reach was asked again"), "{d}");
}

/// Scenario 1 for one router, before a freeze: par-1 alone cut off from
/// etcd and the orchestrator (its clients still reach it, par-2 and the
/// link stay up) cannot take the freeze: it is abandoned and tried again.
#[test]
fn a_router_cut_off_before_a_freeze_holds_the_freeze_until_it_is_back() {
    let doc = rehearse("router-cut-before-freeze");
    assert!(
        attempts(&doc).iter().any(|&a| a >= 2),
        "no unit needed a second attempt: {doc}"
    );
}

/// Scenario 1 for one router, during a freeze: par-1 took the freeze, then
/// was cut off; it keeps the unit's sites held (never serves them from the
/// source again), the flip waits for it, and the data checks find every
/// write once at the destination and none at the source after the freeze.
#[test]
fn a_router_cut_off_inside_a_freeze_keeps_its_sites_held() {
    let doc = rehearse("router-cut-frozen");
    assert!(detail(&doc, "partition").contains("par-1 cut off"), "{doc}");
}

/// Scenario 1 for one router, after a flip: par-1 misses the flip while
/// cut off; the unfreeze does not count the silent router as holding
/// nothing (it waits for its answer, or names it).
#[test]
fn a_router_cut_off_after_a_flip_is_waited_for_by_the_unfreeze() {
    let doc = rehearse("router-cut-after-flip");
    assert!(detail(&doc, "partition").contains("unfreeze: U1"), "{doc}");
}
