//! The update journal's format only grows: a journal written by the first
//! version (`fixtures/update-journal-v1.db`: a level-2 run killed during its
//! upgrade step) must keep opening, verifying and folding the same way.

use std::path::{Path, PathBuf};

use ferry_fleet::journal::{Journal, Phase, RunMeta};
use serde_json::json;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/update-journal-v1.db")
}

#[test]
fn the_v1_journal_still_opens() {
    // Copied: opening checks the chain without writing, but SQLite's WAL
    // files must not appear next to the committed fixture.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("j.db");
    std::fs::copy(fixture(), &p).unwrap();
    let j = Journal::open_read_only(&p).unwrap();
    let meta = j.meta().unwrap();
    assert_eq!(meta.level, 2);
    assert_eq!(meta.primary, "s1");
    let ev = j.events().unwrap();
    assert_eq!(ev.len(), 5);
    assert_eq!(ev[1].data["states"]["r1"]["s3"], "drain");
    assert_eq!(ev[4].step, "step:setup:upgrade");
    assert_eq!(ev[4].phase, Phase::Begin);
    // And it can be resumed: appended to.
    drop(j);
    let j = Journal::open(&p).unwrap();
    j.append(
        2,
        "step:setup:upgrade",
        Phase::End,
        Some("ok"),
        json!({"exit": 0}),
    )
    .unwrap();
    drop(j);
    assert_eq!(
        Journal::open_read_only(&p).unwrap().events().unwrap().len(),
        6
    );
}

/// Writes the fixture when it is missing (never overwrites: the file is
/// what version 1 wrote). `cargo test -p ferry-fleet -- --ignored`.
#[test]
#[ignore]
fn write_v1_fixture_if_missing() {
    let p = fixture();
    if p.exists() {
        return;
    }
    let meta = RunMeta {
        level: 2,
        primary: "s1".into(),
        runbook_path: "/etc/ferry/update.toml".into(),
        runbook_digest: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
        fleet_path: "/etc/ferry/fleet.toml".into(),
        fleet_digest: "4878ca0425c739fa427f7eda20fe845f6b2e46ba5fe2a14df5b1e32f50603215".into(),
        started_at_ms: 1_795_474_661_123,
    };
    let j = Journal::create(&p, &meta).unwrap();
    j.append(0, "record", Phase::Begin, None, json!({}))
        .unwrap();
    j.append(
        0,
        "record",
        Phase::End,
        Some("ok"),
        json!({"states": {"r1": {"s1": "ready", "s2": "ready", "s3": "drain"}}}),
    )
    .unwrap();
    j.append(1, "drain-primary", Phase::Begin, None, json!({}))
        .unwrap();
    j.append(1, "drain-primary", Phase::End, Some("ok"), json!({}))
        .unwrap();
    j.append(2, "step:setup:upgrade", Phase::Begin, None, json!({}))
        .unwrap();
    drop(j);
    // One file: fold the WAL into the database.
    let c = rusqlite::Connection::open(&p).unwrap();
    c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    drop(c);
    let _ = std::fs::remove_file(p.with_extension("db.lock"));
}
