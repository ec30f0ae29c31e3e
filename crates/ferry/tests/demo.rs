//! `ferry demo` as a user runs it: the real binary migrates small sets of
//! sites under load and its checker must pass; killed at every failpoint and
//! resumed it must still pass; a stopped router must block the freeze; and a
//! broken fence must be caught.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// One demo at a time per test (the crash test runs its own two): each one
/// already keeps a 2-core machine busy, and freezes must not starve.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running demo. It leads its own process group, so its routers and
/// orchestrator children are killed with it when a test fails or hangs.
struct Demo {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Demo {
    fn start(args: &[&str], dir: &Path) -> Demo {
        let mut child = Command::new(FERRY)
            .arg("demo")
            .args(args)
            .arg("--json")
            .arg("--report")
            .arg(dir.join("report.html"))
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("FERRY_FAILPOINTS")
            .env_remove("FERRY_FAULTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting ferry demo");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let read = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = Some(read(Box::new(out)));
        let stderr = Some(read(Box::new(err)));
        Demo {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits at most `limit` (a hang is a failure) and returns the exit code,
    /// the JSON summary and stderr (the human progress).
    fn finish(mut self, limit: Duration) -> Outcome {
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for ferry demo") {
                break s;
            }
            if Instant::now() > end {
                self.kill_group();
                let err = self.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!(
                    "ferry demo still running after {limit:?}:\n{}",
                    err.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        Outcome {
            code: status.code().unwrap_or(-1),
            json,
            stderr,
        }
    }

    fn kill_group(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

struct Outcome {
    code: i32,
    json: Value,
    stderr: String,
}

impl Outcome {
    fn check(&self, name: &str) -> Option<&Value> {
        self.json["checks"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
    }

    fn ok(&self, name: &str) -> Option<bool> {
        self.check(name).and_then(|c| c["ok"].as_bool())
    }

    fn failed_checks(&self) -> Vec<String> {
        self.json["checks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c["ok"] != true)
                    .map(|c| format!("{}: {}", c["name"], c["detail"]))
                    .collect()
            })
            .unwrap_or_else(|| vec!["no JSON summary".to_string()])
    }

    fn explain(&self) -> String {
        format!(
            "exit {}; failed checks: {:#?}\n--- stderr ---\n{}",
            self.code,
            self.failed_checks(),
            self.stderr
        )
    }

    /// Exit 0, every check ok, no failed request.
    fn assert_all_pass(&self) {
        assert_eq!(self.code, 0, "{}", self.explain());
        assert!(self.failed_checks().is_empty(), "{}", self.explain());
        assert_eq!(self.json["requests"]["failed"], 0, "{}", self.explain());
        assert!(
            self.json["requests"]["sent"].as_u64() > Some(0),
            "{}",
            self.explain()
        );
    }
}

fn demo(args: &[&str], limit: Duration) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Demo::start(args, dir.path()).finish(limit);
    if out.code == 0 {
        let report = dir.path().join("report.html");
        let html = std::fs::read_to_string(&report).unwrap_or_default();
        assert!(
            html.contains("writes_exactly_once"),
            "report lacks the checks table"
        );
    }
    out
}

const EVERY_CHECK: [&str; 8] = [
    "requests",
    "units_done",
    "writes_exactly_once",
    "no_split_brain",
    "no_early_destination_writes",
    "verified_at_flip",
    "orchestrator",
    "report",
];

#[test]
fn small_demo_migrates_under_load_and_passes_every_check() {
    let _g = serial();
    let out = demo(
        &["--sites", "12", "--filers", "2", "--duration", "3s"],
        Duration::from_secs(180),
    );
    out.assert_all_pass();
    for name in EVERY_CHECK {
        assert_eq!(out.ok(name), Some(true), "{name}: {}", out.explain());
    }
    let units = out.json["units"].as_array().expect("units");
    assert_eq!(units.len(), 2, "one unit per filer: {}", out.json);
    for u in units {
        assert!(u["freeze_ms"].as_u64().is_some(), "freeze length of {u}");
    }
}

#[test]
fn killed_at_every_failpoint_and_resumed_still_passes() {
    let _g = serial();
    let mut names: Vec<String> = Vec::new();
    for step in [
        "prepare",
        "pre_copy",
        "await_window",
        "freeze",
        "final_copy",
        "flip",
        "unfreeze",
        "post_check",
        "done",
    ] {
        names.push(format!("{step}:before"));
        names.push(format!("{step}:after"));
    }
    for n in [
        "pre_copy:inside",
        "freeze:inside",
        "final_copy:inside",
        "flip:inside",
    ] {
        names.push(n.to_string());
    }
    let queue = Mutex::new(names.clone());
    let failures = Mutex::new(Vec::new());
    // Two demos at a time: half the wall time, still room for the freezes.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some(name) = queue.lock().unwrap().pop() else {
                    break;
                };
                let out = demo(
                    &[
                        "--sites",
                        "8",
                        "--filers",
                        "2",
                        "--duration",
                        "2s",
                        "--crash-at",
                        &name,
                    ],
                    Duration::from_secs(240),
                );
                let killed = out.ok("failpoint_reached") == Some(true);
                if out.code != 0 || !killed || !out.failed_checks().is_empty() {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("--crash-at {name}: {}", out.explain()));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} failpoints failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_stopped_router_blocks_the_freeze_and_the_retry_flips() {
    let _g = serial();
    let out = demo(
        &[
            "--sites",
            "8",
            "--filers",
            "2",
            "--duration",
            "3s",
            "--fault",
            "stop-router",
        ],
        Duration::from_secs(240),
    );
    out.assert_all_pass();
    assert_eq!(out.ok("freeze_abandoned"), Some(true), "{}", out.explain());
}

#[test]
fn a_router_that_ignores_the_freeze_is_caught_as_split_brain() {
    let _g = serial();
    let out = demo(
        &[
            "--sites",
            "8",
            "--filers",
            "2",
            "--duration",
            "3s",
            "--fault",
            "skip-freeze",
        ],
        Duration::from_secs(240),
    );
    assert_eq!(out.code, 1, "{}", out.explain());
    // The source router kept writing while the unit was frozen: the checker
    // sees writes at the source after the freeze.
    assert_eq!(out.ok("no_split_brain"), Some(false), "{}", out.explain());
    // The clients noticed nothing, and no destination write came early: only
    // the data checks can tell.
    assert_eq!(out.ok("requests"), Some(true), "{}", out.explain());
    assert_eq!(
        out.ok("no_early_destination_writes"),
        Some(true),
        "{}",
        out.explain()
    );
    assert_eq!(out.ok("report"), Some(true), "{}", out.explain());
}

/// `--control etcd`: a 3-member etcd, two routers per datacenter sharing one
/// record per site, the journal and lease in etcd. Every check passes, and
/// every freeze was acknowledged in etcd by all four routers.
#[cfg(feature = "etcd")]
#[test]
fn the_demo_runs_on_etcd_with_two_routers_per_datacenter() {
    let _g = serial();
    let out = demo(
        &[
            "--sites",
            "12",
            "--filers",
            "2",
            "--duration",
            "4s",
            "--control",
            "etcd",
        ],
        Duration::from_secs(240),
    );
    out.assert_all_pass();
    for name in EVERY_CHECK {
        assert_eq!(out.ok(name), Some(true), "{name}: {}", out.explain());
    }
    let acked = out
        .stderr
        .lines()
        .filter(|l| l.contains(" freeze ok ") && l.contains("in etcd: gra-1, gra-2, par-1, par-2"))
        .count();
    assert_eq!(
        acked, 2,
        "each unit's freeze, by all four routers:\n{}",
        out.stderr
    );
}

/// `--control etcd --crash-at`: the runner is killed (SIGKILL) inside a
/// unit; another `ferry migrate resume --control etcd` (refused while the
/// dead runner's lease lives: the demo tries again) takes the run over from
/// the journal in etcd and finishes it, and every check still passes.
#[cfg(feature = "etcd")]
#[test]
fn killed_on_etcd_and_taken_over_by_another_runner() {
    let _g = serial();
    for point in ["freeze:inside", "final_copy:inside", "flip:after"] {
        let out = demo(
            &[
                "--sites",
                "8",
                "--filers",
                "2",
                "--duration",
                "2s",
                "--control",
                "etcd",
                "--crash-at",
                point,
            ],
            Duration::from_secs(240),
        );
        out.assert_all_pass();
        assert_eq!(
            out.ok("failpoint_reached"),
            Some(true),
            "{point}: {}",
            out.explain()
        );
    }
}

/// `--control etcd --fault stop-router`: par-1 is SIGSTOPped inside a freeze
/// (cut from etcd, the orchestrator and its clients at once; its lease
/// expires). The freeze waits for it and is abandoned; once it continues it
/// loads a fresh snapshot, registers again, and the retry flips. Nothing is
/// lost or written in two places meanwhile.
#[cfg(feature = "etcd")]
#[test]
fn a_stopped_router_on_etcd_blocks_the_freeze_and_the_retry_flips() {
    let _g = serial();
    let out = demo(
        &[
            "--sites",
            "8",
            "--filers",
            "2",
            "--duration",
            "3s",
            "--control",
            "etcd",
            "--fault",
            "stop-router",
        ],
        Duration::from_secs(240),
    );
    out.assert_all_pass();
    assert_eq!(out.ok("freeze_abandoned"), Some(true), "{}", out.explain());
}

/// Without the feature the flag is refused as bad usage, before anything starts.
#[cfg(not(feature = "etcd"))]
#[test]
fn the_demo_on_etcd_needs_the_feature() {
    let out = demo(&["--control", "etcd"], Duration::from_secs(60));
    assert_eq!(out.code, 2, "{}", out.explain());
    assert!(
        out.stderr.contains("built without etcd support"),
        "{}",
        out.stderr
    );
}
