//! The journal: fold, replay of a step begun and not ended, and refusal of
//! damaged or foreign files (with the file left unchanged).

use std::path::{Path, PathBuf};

use ferry_orch::journal::{NewEvent, RunMeta, UnitMeta};
use ferry_orch::runbook::UnitProgress;
use ferry_orch::{Direction, Journal, OrchError, Outcome, Phase, Step, UnitState};
use serde_json::json;

fn meta() -> RunMeta {
    RunMeta {
        config_text: "source = \"par\"\n".into(),
        config_path: PathBuf::from("/x/migrate.toml"),
        plan_path: PathBuf::from("/x/plan.json"),
        plan_digest: "00ff".into(),
        source: "par".into(),
        destination: "gra".into(),
        started_at_ms: 1_700_000_000_000,
        units: vec![
            UnitMeta {
                id: "U1".into(),
                night: Some(1),
                sites: 3,
                filers: vec!["fs-1".into()],
            },
            UnitMeta {
                id: "U2".into(),
                night: Some(2),
                sites: 1,
                filers: vec!["fs-2".into()],
            },
        ],
    }
}

fn ev(
    unit: &str,
    step: Step,
    phase: Phase,
    epoch: Option<u64>,
    outcome: Option<Outcome>,
    detail: serde_json::Value,
) -> NewEvent {
    NewEvent {
        unit: unit.into(),
        step: Some(step),
        phase,
        attempt: 1,
        direction: Direction::Forward,
        epoch,
        outcome,
        detail: serde_json::from_value(detail).expect("a journal detail"),
    }
}

/// A journal where U1 is done and U2 stopped inside its freeze.
fn sample(path: &Path) {
    let j = Journal::create(path).unwrap();
    j.start_run(&meta()).unwrap();
    for s in Step::ALL {
        let epoch = match s {
            Step::Prepare => Some(1),
            Step::Freeze => Some(2),
            Step::Flip => Some(3),
            _ => None,
        };
        j.append(ev("U1", s, Phase::Begin, epoch, None, json!({})))
            .unwrap();
        let detail = if s == Step::Flip {
            json!({"freeze_ms": 1234, "summary": "flipped"})
        } else {
            json!({})
        };
        j.append(ev("U1", s, Phase::End, epoch, Some(Outcome::Ok), detail))
            .unwrap();
    }
    for s in [Step::Prepare, Step::PreCopy, Step::AwaitWindow] {
        j.append(ev("U2", s, Phase::Begin, None, None, json!({})))
            .unwrap();
        j.append(ev("U2", s, Phase::End, None, Some(Outcome::Ok), json!({})))
            .unwrap();
    }
    j.append(ev(
        "U2",
        Step::Freeze,
        Phase::Begin,
        Some(7),
        None,
        json!({"summary": "attempt 1, epoch 7"}),
    ))
    .unwrap();
}

#[test]
fn fold_gives_units_steps_and_waves() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    sample(&p);
    let j = Journal::open(&p).unwrap();
    let st = j.status().unwrap().unwrap();
    assert_eq!(
        (st.source.as_str(), st.destination.as_str()),
        ("par", "gra")
    );
    let u1 = &st.units[0];
    assert_eq!(u1.state, UnitState::Done);
    assert_eq!(u1.steps.len(), 9);
    assert_eq!(u1.freeze_ms, Some(1234));
    assert_eq!(u1.epoch, Some(3));
    assert_eq!(u1.steps[5].detail.as_deref(), Some("flipped"));
    let u2 = &st.units[1];
    assert_eq!(u2.state, UnitState::Running);
    assert_eq!(u2.step, Some(Step::Freeze));
    assert_eq!(u2.steps.last().unwrap().ended_at_ms, None);
    assert_eq!(st.waves.len(), 2);
    assert_eq!((st.waves[0].night, st.waves[0].done), (1, 1));
    // This handle holds the writer's lock: a run is going on.
    assert_eq!(st.state, ferry_orch::RunState::Running);
    drop(j);
    let ro = Journal::open_read_only(&p).unwrap();
    assert_eq!(
        ro.status().unwrap().unwrap().state,
        ferry_orch::RunState::Stopped
    );
}

#[test]
fn a_step_begun_and_not_ended_is_replayed_with_its_epoch() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    sample(&p);
    let j = Journal::open(&p).unwrap();
    let events = j.events().unwrap();
    let p2 = UnitProgress::of("U2", &events);
    assert_eq!(
        p2.open.map(|o| (o.step, o.epoch)),
        Some((Step::Freeze, Some(7)))
    );
    assert_eq!(p2.freeze_epoch, Some(7));
    assert_eq!(p2.terminal, None);
    let p1 = UnitProgress::of("U1", &events);
    assert_eq!(p1.terminal, Some(UnitState::Done));
    assert!(p1.open.is_none());
}

fn assert_refused(path: &Path, what: &str) -> String {
    let before = std::fs::read(path).unwrap();
    let err = match Journal::open(path) {
        Ok(_) => panic!("{what}: a damaged journal was accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, OrchError::Journal { .. }), "{what}: {err:?}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "{what}: the file changed"
    );
    err.to_string()
}

/// Opens and closes the journal: the last connection to close folds the
/// WAL into the main file, so the bytes a test edits are all there.
fn settled(path: &Path) {
    drop(Journal::open(path).unwrap());
}

#[test]
fn a_flipped_byte_is_found_and_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    sample(&p);
    settled(&p);
    let mut bytes = std::fs::read(&p).unwrap();
    let needle = b"attempt 1, epoch 7";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("detail text in the file");
    bytes[at + 8] = b'2';
    std::fs::write(&p, &bytes).unwrap();
    let msg = assert_refused(&p, "flipped byte");
    assert!(msg.contains("event 25"), "{msg}");
}

#[test]
fn a_deleted_row_is_found() {
    for (which, expect) in [
        ("seq = 5", "event 5 is missing"),
        ("seq = (SELECT max(seq) FROM events)", "ends at event 24"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j.db");
        sample(&p);
        settled(&p);
        {
            let c = rusqlite::Connection::open(&p).unwrap();
            c.execute(&format!("DELETE FROM events WHERE {which}"), [])
                .unwrap();
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        let msg = assert_refused(&p, which);
        assert!(msg.contains(expect), "{which}: {msg}");
    }
}

#[test]
fn garbage_and_foreign_files_are_refused_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("garbage.db");
    std::fs::write(
        &g,
        b"this is not a database at all, just some text that goes on for a while....".repeat(20),
    )
    .unwrap();
    let msg = assert_refused(&g, "garbage");
    assert!(msg.contains("not a Ferry journal"), "{msg}");

    let other = d.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let msg = assert_refused(&other, "foreign sqlite");
    assert!(msg.contains("not a Ferry journal"), "{msg}");

    let newer = d.path().join("newer.db");
    sample(&newer);
    settled(&newer);
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    let msg = assert_refused(&newer, "other version");
    assert!(msg.contains("version 99"), "{msg}");
}

#[test]
fn create_refuses_a_journal_that_holds_a_run() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    sample(&p);
    assert!(matches!(
        Journal::create(&p),
        Err(OrchError::JournalInUse { .. })
    ));
}

const FIXTURE_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/journal-v1.db");

/// Writes the version-1 fixture (run once by hand, when the format was
/// made; kept so later versions prove they still read it).
#[test]
#[ignore]
fn write_v1_fixture() {
    let _ = std::fs::remove_file(FIXTURE_V1);
    sample(Path::new(FIXTURE_V1));
    settled(Path::new(FIXTURE_V1));
}

#[test]
fn the_v1_fixture_still_reads() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v1.db");
    std::fs::copy(FIXTURE_V1, &p).unwrap();
    let j = Journal::open_read_only(&p).unwrap();
    let st = j.status().unwrap().unwrap();
    assert_eq!(st.units.len(), 2);
    assert_eq!(st.units[0].state, UnitState::Done);
    assert_eq!(st.units[0].freeze_ms, Some(1234));
    assert_eq!(st.units[1].step, Some(Step::Freeze));
    assert_eq!(j.events().unwrap().len(), 25);
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("j.db");
    sample(&p);
    let first = Journal::open(&p).unwrap();
    match Journal::open(&p) {
        Err(e @ OrchError::Journal { .. }) => assert!(e.to_string().contains("another"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
    // A reader sees the run as going on.
    let ro = Journal::open_read_only(&p).unwrap();
    assert_eq!(
        ro.status().unwrap().unwrap().state,
        ferry_orch::RunState::Running
    );
    drop(first);
    assert!(Journal::open(&p).is_ok());
}

/// A journal written before ferry-journal existed is resumed: appended to
/// and read back whole.
#[test]
fn the_v1_fixture_can_be_resumed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("v1.db");
    std::fs::copy(FIXTURE_V1, &p).unwrap();
    let j = Journal::open(&p).unwrap();
    assert!(matches!(
        j.start_run(&meta()),
        Err(OrchError::JournalInUse { .. })
    ));
    let rec = j
        .append(ev(
            "U2",
            Step::Freeze,
            Phase::End,
            Some(7),
            Some(Outcome::Ok),
            json!({}),
        ))
        .unwrap();
    assert_eq!(rec.seq, 26);
    drop(j);
    let j = Journal::open_read_only(&p).unwrap();
    assert_eq!(j.unit_events("U2").unwrap().len(), 8);
    let st = j.status().unwrap().unwrap();
    assert_eq!(st.units[1].steps.last().unwrap().outcome, Some(Outcome::Ok));
}
