//! The journal through a small test kind: the chain finds edits and
//! removals, a second writer (another process) is refused, a journal
//! reopens and goes on, and a step cut between begin and end is replayed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_journal::{
    Chain, ErrorKind, FailpointError, Failpoints, Journal, KillMode, Kind, Outcome, Record,
    StepError, Steps,
};
use rusqlite::types::Value;

/// A runbook of named steps.
struct Notes;

#[derive(Clone, Debug, PartialEq)]
struct Ev {
    step: String,
    begin: bool,
    outcome: Option<Outcome>,
}

impl Kind for Notes {
    const APPLICATION_ID: i64 = 0x5445_5354;
    const SCHEMA_VERSION: i64 = 1;
    const WHAT: &'static str = "test journal";
    const COMMAND: &'static str = "test";
    const SCHEMA: &'static str = "
        CREATE TABLE run (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, hash BLOB NOT NULL);
        CREATE TABLE events (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, step TEXT NOT NULL,
            phase TEXT NOT NULL, outcome TEXT, hash BLOB NOT NULL);
        CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL);
    ";
    const RUN_COLUMNS: &'static [&'static str] = &["name"];
    const EVENT_COLUMNS: &'static [&'static str] = &["step", "phase", "outcome"];
    type Run = String;
    type Event = Ev;

    fn run_row(run: &String) -> Result<Vec<Value>, String> {
        Ok(vec![Value::Text(run.clone())])
    }
    fn run_from_row(row: &[Value]) -> Result<String, String> {
        match &row[0] {
            Value::Text(s) => Ok(s.clone()),
            _ => Err("bad name".into()),
        }
    }
    fn run_hash(row: &[Value]) -> [u8; 32] {
        Chain::labelled("test run").text(&row[0]).done()
    }
    fn event_row(e: &Ev) -> Vec<Value> {
        vec![
            Value::Text(e.step.clone()),
            Value::Text(if e.begin { "begin" } else { "end" }.into()),
            e.outcome
                .map_or(Value::Null, |o| Value::Text(o.as_str().into())),
        ]
    }
    fn event_from_row(row: &[Value]) -> Result<Ev, String> {
        let text = |v: &Value| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        };
        Ok(Ev {
            step: text(&row[0]).ok_or("bad step")?,
            begin: text(&row[1]).ok_or("bad phase")? == "begin",
            outcome: match text(&row[2]) {
                None => None,
                Some(o) => Some(Outcome::parse(&o).ok_or("bad outcome")?),
            },
        })
    }
    fn event_hash(prev: &[u8], seq: u64, at_ms: u64, row: &[Value]) -> [u8; 32] {
        Chain::labelled("test event")
            .bytes(prev)
            .num(seq)
            .num(at_ms)
            .text(&row[0])
            .text(&row[1])
            .opt_text(&row[2])
            .done()
    }
}

type J = Journal<Notes>;

/// Tests here run one at a time: a child spawned by one test holds, until
/// its exec, copies of every descriptor the test process has open, the
/// other tests' journal locks included, so a reopen racing a spawn would
/// be refused.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn begin(step: &str) -> Ev {
    Ev {
        step: step.into(),
        begin: true,
        outcome: None,
    }
}

fn end(step: &str, o: Outcome) -> Ev {
    Ev {
        step: step.into(),
        begin: false,
        outcome: Some(o),
    }
}

fn sample(dir: &Path) -> PathBuf {
    let p = dir.join("j.db");
    let j = J::create(&p, Some(&"sample".to_string())).unwrap();
    for s in ["a", "b", "c"] {
        j.append(begin(s)).unwrap();
        j.append(end(s, Outcome::Ok)).unwrap();
    }
    drop(j);
    p
}

fn edit(p: &Path, sql: &str) {
    let c = rusqlite::Connection::open(p).unwrap();
    c.execute_batch(sql).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
}

fn refused(p: &Path) -> String {
    let before = std::fs::read(p).unwrap();
    let e = match J::open(p) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(std::fs::read(p).unwrap(), before, "the file changed");
    e
}

#[test]
fn the_chain_finds_an_edit_a_deleted_row_and_a_cut_end() {
    let _serial = one_at_a_time();
    for (sql, expect) in [
        (
            "UPDATE events SET step = 'x' WHERE seq = 2",
            "event 2 does not match its hash",
        ),
        (
            "UPDATE events SET at_ms = at_ms + 1 WHERE seq = 6",
            "event 6 does not match its hash",
        ),
        (
            "UPDATE run SET name = 'other'",
            "the run row does not match",
        ),
        ("DELETE FROM events WHERE seq = 3", "event 3 is missing"),
        ("DELETE FROM events WHERE seq = 6", "ends at event 5"),
        ("DROP TABLE head", "table head is missing"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        edit(&p, sql);
        let msg = refused(&p);
        assert!(msg.contains(expect), "{sql}: {msg}");
        assert!(J::open_read_only(&p).is_err(), "{sql}");
    }
}

#[test]
fn foreign_files_and_other_versions_are_refused() {
    let _serial = one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("g.db");
    std::fs::write(&g, b"not sqlite at all, just text ".repeat(40)).unwrap();
    assert!(refused(&g).contains("not a test journal"));
    let p = sample(d.path());
    edit(&p, "PRAGMA user_version = 7");
    let e = J::open(&p).err().unwrap();
    assert!(matches!(e.kind, ErrorKind::Version { found: 7, .. }), "{e}");
    assert!(matches!(
        J::create(&p, None).err().unwrap().kind,
        ErrorKind::Exists
    ));
    assert!(matches!(
        J::open(&d.path().join("none.db")).err().unwrap().kind,
        ErrorKind::Missing
    ));
}

#[test]
fn a_journal_reopens_and_goes_on() {
    let _serial = one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    let j = J::create(&p, None).unwrap();
    assert_eq!(j.run().unwrap(), None);
    assert!(matches!(
        j.append(begin("a")).err().unwrap().kind,
        ErrorKind::NoRun
    ));
    j.start_run(&"later".to_string()).unwrap();
    assert!(matches!(
        j.start_run(&"again".to_string()).err().unwrap().kind,
        ErrorKind::RunExists
    ));
    j.append(begin("a")).unwrap();
    drop(j);
    let j = J::open(&p).unwrap();
    let rec = j.append(end("a", Outcome::Ok)).unwrap();
    assert_eq!(rec.seq, 2);
    drop(j);
    let j = J::open_read_only(&p).unwrap();
    assert_eq!(j.run().unwrap().as_deref(), Some("later"));
    let ev = j.events().unwrap();
    assert_eq!(
        ev.iter()
            .map(|r| (r.seq, r.event.clone()))
            .collect::<Vec<_>>(),
        [(1, begin("a")), (2, end("a", Outcome::Ok))]
    );
    assert_eq!(j.events_where("step", "a").unwrap().len(), 2);
    assert!(j.events_where("hash", "a").is_err());
    assert!(!j.running());
}

/// The child of `a_lock_held_by_another_process_is_refused`: holds the
/// journal named by FERRY_JOURNAL_HOLD until it is killed.
#[test]
#[ignore]
fn hold_the_lock() {
    let Ok(p) = std::env::var("FERRY_JOURNAL_HOLD") else {
        return;
    };
    let _j = J::open(Path::new(&p)).unwrap();
    std::fs::write(format!("{p}.held"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_lock_held_by_another_process_is_refused() {
    let _serial = one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let p = sample(d.path());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "hold_the_lock", "--ignored", "--nocapture"])
        .env("FERRY_JOURNAL_HOLD", &p)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let held = d.path().join("j.db.held");
    let t0 = Instant::now();
    while !held.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the child never held the lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = J::open(&p).err().unwrap();
    assert!(
        matches!(e.kind, ErrorKind::Locked { command: "test" }),
        "{e}"
    );
    assert!(e.to_string().contains("another `test` process"), "{e}");
    assert!(ferry_journal::running(&p));
    // Readers are not refused.
    assert_eq!(J::open_read_only(&p).unwrap().events().unwrap().len(), 6);
    // kill -9: the kernel drops the lock.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ferry_journal::running(&p));
    J::open(&p).unwrap().append(begin("d")).unwrap();
}

/// Where a tiny runbook stands: the step begun and not ended, if any.
fn open_step(j: &J) -> Option<String> {
    let mut open = None;
    for r in j.events().unwrap() {
        if r.event.begin {
            open = Some(r.event.step);
        } else {
            open = None;
        }
    }
    open
}

/// Runs steps a, b, c; a step that began and did not end is replayed
/// (its begin not journaled again). Counts how often each acted.
async fn runbook(j: &J, fp: &Failpoints, acted: &[AtomicU32; 3]) -> Result<(), StepError> {
    let steps = Steps::new(j, fp);
    let replay = open_step(j);
    let done: Vec<String> = j
        .events()
        .unwrap()
        .into_iter()
        .filter(|r| r.event.outcome == Some(Outcome::Ok))
        .map(|r| r.event.step)
        .collect();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        if done.iter().any(|d| d == name) {
            continue;
        }
        let first = (replay.as_deref() != Some(name)).then(|| begin(name));
        let r = steps
            .run(
                name,
                first,
                async {
                    acted[i].fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(())
                },
                |o, _| end(name, o),
            )
            .await?;
        assert!(r.is_ok());
    }
    Ok(())
}

#[tokio::test]
// The guard orders whole tests; no task of this runtime takes it.
#[allow(clippy::await_holding_lock)]
async fn a_step_cut_between_begin_and_end_is_replayed() {
    let _serial = one_at_a_time();
    let known: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|s| [format!("{s}:before"), format!("{s}:after")])
        .collect();
    for point in &known {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        let j = J::create(&p, Some(&"r".to_string())).unwrap();
        let acted: [AtomicU32; 3] = Default::default();
        let fp = Failpoints::parse(&format!("{point}=kill"), KillMode::Interrupt, &known).unwrap();
        match runbook(&j, &fp, &acted).await {
            Err(StepError::Failpoint(FailpointError::Interrupted(n))) => assert_eq!(&n, point),
            other => panic!("{point}: {other:?}"),
        }
        let cut = point.split(':').next().unwrap();
        assert_eq!(open_step(&j).as_deref(), Some(cut), "{point}");
        drop(j);
        // The restart: the cut step runs again, its begin not repeated.
        let j = J::open(&p).unwrap();
        runbook(&j, &Failpoints::none(), &acted).await.unwrap();
        let ev: Vec<Ev> = j.events().unwrap().into_iter().map(|r| r.event).collect();
        let want: Vec<Ev> = ["a", "b", "c"]
            .iter()
            .flat_map(|s| [begin(s), end(s, Outcome::Ok)])
            .collect();
        assert_eq!(ev, want, "{point}");
        let i = ["a", "b", "c"].iter().position(|s| *s == cut).unwrap();
        let twice = point.ends_with(":after");
        for (k, a) in acted.iter().enumerate() {
            let n = if k == i && twice { 2 } else { 1 };
            assert_eq!(a.load(Ordering::SeqCst), n, "{point}: step {k}");
        }
    }
}

#[tokio::test]
// The guard orders whole tests; no task of this runtime takes it.
#[allow(clippy::await_holding_lock)]
async fn a_failed_step_is_journaled_failed_and_answered() {
    let _serial = one_at_a_time();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    let j = J::create(&p, Some(&"r".to_string())).unwrap();
    let fp = Failpoints::parse("a:after=kill", KillMode::Interrupt, &["a:after".into()]).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let on = |r: &Record<Ev>| seen.lock().unwrap().push(r.seq);
    let steps = Steps::new(&j, &fp).on_append(&on);
    let r = steps
        .run(
            "a",
            Some(begin("a")),
            async { Err::<(), _>("boom") },
            |o, _| end("a", o),
        )
        .await
        .unwrap();
    assert_eq!(r, Err("boom"));
    // A failure is not the `after` point: the failpoint did not fire.
    assert_eq!(
        j.events().unwrap().last().unwrap().event,
        end("a", Outcome::Failed)
    );
    assert_eq!(*seen.lock().unwrap(), [1, 2]);
    for o in Outcome::ALL {
        assert_eq!(Outcome::parse(o.as_str()), Some(o));
    }
    assert!(Failpoints::parse("z:before=kill", KillMode::Interrupt, &[]).is_err());
    assert!(Failpoints::parse("a:after=boom", KillMode::Interrupt, &["a:after".into()]).is_err());
}
