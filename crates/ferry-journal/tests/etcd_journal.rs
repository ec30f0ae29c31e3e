//! The journal in etcd on a real 3-member cluster (cargo feature `etcd`):
//! it reads back what was appended and verifies like the SQLite file; a
//! runner whose lease ended cannot append once another took the run; two
//! handles chaining on the same head cannot both append; a tampered,
//! deleted or cut event fails verification with the SQLite journal's own words.

#[path = "etcd_cluster/mod.rs"]
mod etcd_cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_cluster::Cluster;
use ferry_journal::lease::RunLease;
use ferry_journal::{Chain, ErrorKind, Journal, Kind, Outcome};
use ferry_store::{EtcdConfig, EtcdStore};
use rusqlite::types::Value;

/// A runbook of named steps (the same shape as tests/journal.rs's).
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

fn store(c: &Cluster, prefix: &str) -> Arc<EtcdStore> {
    Arc::new(EtcdStore::connect(EtcdConfig::new(c.endpoints(), prefix)).expect("connect to etcd"))
}

/// The sample run: 3 steps, begin and end each.
fn fill(j: &J) {
    for s in ["a", "b", "c"] {
        j.append(begin(s)).unwrap();
        j.append(end(s, Outcome::Ok)).unwrap();
    }
}

/// Takes the run's lease for `holder`, retrying while another one's lease
/// lives (until the bound: only a hang fails the test).
fn acquire_when_free(s: &Arc<EtcdStore>, run: &str, holder: &str) -> RunLease {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match RunLease::acquire(s.clone(), run, holder, Duration::from_secs(2)) {
            Ok(l) => return l,
            Err(e) if matches!(e.kind, ErrorKind::Held { .. }) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("lease of {run}: {e}"),
        }
    }
}

#[test]
fn appends_read_back_and_verify_like_sqlite() {
    let c = Cluster::start(3);
    let s = store(&c, "/t1");
    let lease =
        RunLease::acquire(s.clone(), "night-1", "runner-a", Duration::from_secs(5)).unwrap();
    let j = J::create_etcd(
        s.clone(),
        "night-1",
        lease.fence(),
        Some(&"sample".to_string()),
    )
    .unwrap();
    assert!(j
        .path()
        .to_string_lossy()
        .starts_with("etcd:/t1/runs/night-1"));
    fill(&j);
    // A second create of the same run is refused, as a file that exists.
    let again = J::create_etcd(s.clone(), "night-1", lease.fence(), None)
        .err()
        .expect("refused");
    assert!(matches!(again.kind, ErrorKind::Exists), "{again}");

    // The same events in a SQLite journal read back the same.
    let dir = tempfile::tempdir().unwrap();
    let file = J::create(&dir.path().join("j.db"), Some(&"sample".to_string())).unwrap();
    fill(&file);
    let strip = |j: &J| -> Vec<(u64, Ev)> {
        j.events()
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.event))
            .collect()
    };

    let reader = J::open_etcd_read_only(s.clone(), "night-1").unwrap();
    reader.verify().unwrap();
    assert_eq!(reader.run().unwrap(), Some("sample".to_string()));
    assert_eq!(strip(&reader), strip(&file));
    assert_eq!(strip(&reader).len(), 6);
    let b: Vec<u64> = reader
        .events_where("step", "b")
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(b, vec![3, 4]);
    assert!(reader.running(), "the lease is held");
    assert!(!reader.is_writer());

    // Released: the next writer takes the run at once and goes on.
    drop(j);
    drop(lease);
    assert!(!reader.running(), "a released lease leaves no lock");
    let lease =
        RunLease::acquire(s.clone(), "night-1", "runner-b", Duration::from_secs(5)).unwrap();
    let j = J::open_etcd(s.clone(), "night-1", lease.fence()).unwrap();
    assert_eq!(j.append(begin("d")).unwrap().seq, 7);
    J::open_etcd_read_only(s.clone(), "night-1")
        .unwrap()
        .verify()
        .unwrap();

    // A run id that cannot name keys is refused before anything is sent.
    for bad in ["", "a/b", "..", "x y"] {
        let e = RunLease::acquire(s.clone(), bad, "r", Duration::from_secs(5))
            .err()
            .expect(bad);
        assert!(matches!(e.kind, ErrorKind::BadRunId { .. }), "{bad:?}: {e}");
    }
    // A run that does not exist is missing.
    let e = J::open_etcd_read_only(s, "nothing-here")
        .err()
        .expect("missing");
    assert!(matches!(e.kind, ErrorKind::Missing), "{e}");
}

#[test]
fn a_runner_whose_lease_ended_cannot_append() {
    let c = Cluster::start(3);
    let s = store(&c, "/t2");
    let a = RunLease::acquire(s.clone(), "night-2", "runner-a", Duration::from_secs(2)).unwrap();
    let ja = J::create_etcd(s.clone(), "night-2", a.fence(), Some(&"run".to_string())).unwrap();
    ja.append(begin("a")).unwrap();

    // While A's lease lives, B is refused, told who holds it and since when.
    let held = RunLease::acquire(s.clone(), "night-2", "runner-b", Duration::from_secs(2))
        .err()
        .expect("refused while held");
    match &held.kind {
        ErrorKind::Held { holder, since, .. } => {
            assert_eq!(holder, "runner-a");
            assert!(since.contains("s ago"), "{since}");
        }
        other => panic!("{other}"),
    }
    assert!(held.to_string().contains("held by runner-a"), "{held}");

    // A stops keeping its lease alive (a paused process); B takes over once
    // it has expired, and goes on from where the journal stands.
    a.stop_keep_alive();
    let b = acquire_when_free(&s, "night-2", "runner-b");
    assert!(b.fence().token() > a.fence().token());
    let jb = J::open_etcd(s.clone(), "night-2", b.fence()).unwrap();
    assert_eq!(jb.append(end("a", Outcome::Ok)).unwrap().seq, 2);

    // A wakes up: its next append fails, naming who holds the run now,
    // and its local check says so too.
    let e = ja
        .append(end("a", Outcome::Failed))
        .expect_err("A cannot append");
    match &e.kind {
        ErrorKind::LostLease { holder } => assert_eq!(holder, "runner-b"),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("lost the lease to runner-b"), "{e}");
    assert!(matches!(
        ja.check_fence().err().map(|e| e.kind),
        Some(ErrorKind::LostLease { .. })
    ));
    // Opening anew with A's old fence is no better.
    let e = J::open_etcd(s.clone(), "night-2", a.fence())
        .and_then(|j| j.append(begin("x")))
        .expect_err("stale fence");
    assert!(matches!(e.kind, ErrorKind::LostLease { .. }), "{e}");

    let r = J::open_etcd_read_only(s.clone(), "night-2").unwrap();
    r.verify().unwrap();
    let evs: Vec<Ev> = r.events().unwrap().into_iter().map(|r| r.event).collect();
    assert_eq!(evs, vec![begin("a"), end("a", Outcome::Ok)]);

    // Two handles chaining on the same head (same lease): only one appends.
    let j1 = J::open_etcd(s.clone(), "night-2", b.fence()).unwrap();
    let j2 = J::open_etcd(s.clone(), "night-2", b.fence()).unwrap();
    j1.append(begin("b")).unwrap();
    let e = j2.append(begin("c")).expect_err("second writer refused");
    assert!(matches!(e.kind, ErrorKind::Damaged(_)), "{e}");
    let r = J::open_etcd_read_only(s, "night-2").unwrap();
    r.verify().unwrap();
    assert_eq!(r.events().unwrap().len(), 3);
    drop(jb);
}

/// The damage found in the SQLite copy and in etcd, same words.
fn same_damage(
    s: &Arc<EtcdStore>,
    run: &str,
    sqlite_edit: &str,
    etcd_edit: impl FnOnce(&Arc<EtcdStore>, &str),
) -> String {
    let lease = RunLease::acquire(s.clone(), run, "runner", Duration::from_secs(5)).unwrap();
    let j = J::create_etcd(s.clone(), run, lease.fence(), Some(&"sample".to_string())).unwrap();
    fill(&j);
    drop(j);
    drop(lease);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.db");
    {
        let f = J::create(&p, Some(&"sample".to_string())).unwrap();
        fill(&f);
    }
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(sqlite_edit).unwrap();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(c);
    etcd_edit(s, &s.key(&format!("runs/{run}")));
    let in_file = J::open_read_only(&p)
        .err()
        .expect("the file is refused")
        .kind
        .to_string();
    let in_etcd = J::open_etcd_read_only(s.clone(), run)
        .err()
        .expect("etcd is refused");
    assert_eq!(in_etcd.kind.to_string(), in_file);
    assert!(matches!(in_etcd.kind, ErrorKind::Damaged(_)));
    in_file
}

fn put(s: &Arc<EtcdStore>, key: String, value: String) {
    s.call("test put", move |mut c| {
        let (k, v) = (key.clone(), value.clone());
        async move { c.put(k, v, None).await }
    })
    .unwrap();
}

fn delete(s: &Arc<EtcdStore>, key: String) {
    s.call("test delete", move |mut c| {
        let k = key.clone();
        async move { c.delete(k, None).await }
    })
    .unwrap();
}

fn get(s: &Arc<EtcdStore>, key: String) -> String {
    let r = s
        .call("test get", move |mut c| {
            let k = key.clone();
            async move { c.get(k, None).await }
        })
        .unwrap();
    String::from_utf8(r.kvs()[0].value().to_vec()).unwrap()
}

fn seq(base: &str, n: u64) -> String {
    format!("{base}/journal/{n:020}")
}

#[test]
fn damage_is_named_as_in_sqlite() {
    let c = Cluster::start(3);
    let s = store(&c, "/t3");
    // An edited event.
    let m = same_damage(
        &s,
        "edited",
        "UPDATE events SET step = 'z' WHERE seq = 2",
        |s, base| {
            let v = get(s, seq(base, 2)).replace("\"a\"", "\"z\"");
            put(s, seq(base, 2), v);
        },
    );
    assert!(m.contains("event 2 does not match its hash"), "{m}");
    // A middle event deleted.
    let m = same_damage(
        &s,
        "deleted",
        "DELETE FROM events WHERE seq = 3",
        |s, base| {
            delete(s, seq(base, 3));
        },
    );
    assert!(m.contains("event 3 is missing"), "{m}");
    // The last event cut (the head still says 6).
    let m = same_damage(&s, "cut", "DELETE FROM events WHERE seq = 6", |s, base| {
        delete(s, seq(base, 6));
    });
    assert!(m.contains("rows were removed at the end"), "{m}");
    // The run row edited.
    let m = same_damage(
        &s,
        "run-edited",
        "UPDATE run SET name = 'other'",
        |s, base| {
            let v = get(s, format!("{base}/run")).replace("sample", "other");
            put(s, format!("{base}/run"), v);
        },
    );
    assert!(m.contains("run row does not match its hash"), "{m}");
}
