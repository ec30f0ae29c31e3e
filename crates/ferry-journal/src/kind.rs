//! What a journal is made of, whatever it is stored in: a runbook's
//! [`Kind`] (its rows and their hashes), a journaled [`Record`], and the one
//! check of the hash chain ([`verify_chain`]) that both backends (the SQLite
//! file, the etcd keys) run on the rows they read back, so the same damage
//! is found and named the same way in either.

use rusqlite::types::Value;
use serde::Serialize;

/// One row's columns as stored (after `id`/`seq, at_ms`, before `hash`).
pub type Row = Vec<Value>;

/// What a runbook's journal looks like: its identity, its tables and how
/// its rows are encoded and hashed. The hashes are part of the persisted
/// format: once files exist, a kind's hash functions never change.
pub trait Kind {
    /// `PRAGMA application_id`: whose file this is.
    const APPLICATION_ID: i64;
    /// `PRAGMA user_version` of the schema this code reads and writes.
    const SCHEMA_VERSION: i64;
    /// What the file is, for "not a ...".
    const WHAT: &'static str;
    /// The command that writes it, for "another ... is using this journal".
    const COMMAND: &'static str;
    /// `CREATE TABLE run (id INTEGER PRIMARY KEY CHECK (id = 1), <RUN_COLUMNS>, hash BLOB NOT NULL)`,
    /// `CREATE TABLE events (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, <EVENT_COLUMNS>, hash BLOB NOT NULL)`,
    /// `CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL)`
    /// and any index.
    const SCHEMA: &'static str;
    const RUN_COLUMNS: &'static [&'static str];
    const EVENT_COLUMNS: &'static [&'static str];
    type Run;
    type Event;
    fn run_row(run: &Self::Run) -> Result<Row, String>;
    fn run_from_row(row: &[Value]) -> Result<Self::Run, String>;
    /// The run row's hash: the chain's first link.
    fn run_hash(row: &[Value]) -> [u8; 32];
    fn event_row(event: &Self::Event) -> Row;
    fn event_from_row(row: &[Value]) -> Result<Self::Event, String>;
    /// An event row's hash, chained over the previous row's `prev`.
    fn event_hash(prev: &[u8], seq: u64, at_ms: u64, row: &[Value]) -> [u8; 32];
}

/// A journaled event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record<E> {
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: E,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event row as stored: its sequence number, `at_ms` cell, columns and hash.
pub(crate) struct StoredEvent {
    pub seq: i64,
    pub at_ms: Value,
    pub row: Row,
    pub hash: Vec<u8>,
}

/// Checks the chain of rows read back from a journal: the run row against
/// its hash, every event in sequence over the previous hash, and the head
/// (last sequence number and hash) against the last event. `head` is what
/// the head row held (Err: why it could not be read). Answers the damage in
/// words (the caller wraps it in `ErrorKind::Damaged`).
pub(crate) fn verify_chain<K: Kind>(
    run: Option<(Row, Vec<u8>)>,
    events: Vec<StoredEvent>,
    head: impl FnOnce() -> Result<(i64, Vec<u8>), String>,
) -> Result<(), String> {
    let Some((run, run_hash)) = run else {
        if !events.is_empty() {
            return Err("events without a run row".into());
        }
        return Ok(());
    };
    let mut prev = run_hash;
    if K::run_hash(&run).as_slice() != prev.as_slice() {
        return Err("the run row does not match its hash (edited?)".into());
    }
    let mut expect = 1i64;
    for StoredEvent {
        seq,
        at_ms,
        row,
        hash,
    } in events
    {
        if seq != expect {
            return Err(format!(
                "event {expect} is missing (next row is {seq}): rows were deleted"
            ));
        }
        let at_ms = match at_ms {
            Value::Integer(t) => t as u64,
            _ => return Err(format!("event {seq}: at_ms is not a number")),
        };
        let h = K::event_hash(&prev, seq as u64, at_ms, &row);
        if h.as_slice() != hash.as_slice() {
            return Err(format!(
                "event {seq} does not match its hash (edited, or an earlier row changed)"
            ));
        }
        prev = hash;
        expect += 1;
    }
    let (hseq, hhash) = head()?;
    if hseq != expect - 1 || hhash != prev {
        return Err(format!(
            "the journal ends at event {} but its head says {hseq}: rows were removed at the end",
            expect - 1
        ));
    }
    Ok(())
}
