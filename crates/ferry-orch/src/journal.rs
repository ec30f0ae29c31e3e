//! The journal: an append-only SQLite log of one migration run.
//!
//! - `run`: one row of meta (the config text and path, the plan path and the
//!   BLAKE3 digest of its bytes, source and destination, start time, the
//!   selected units with what the status page shows of them).
//! - `events`: one row per step boundary (`begin` before a step acts, `end`
//!   after) and per note (a session start, a change a router still owes, an
//!   abandon under way, a rollback). Each row carries a BLAKE3 hash chained
//!   over the previous row's hash (the first over the run row's) and its own
//!   fields; `head` holds the last sequence number and hash, updated in the
//!   same transaction. So an edited byte, a deleted row (middle or last) or
//!   garbage is found when the journal is opened, and the row is named.
//!
//! Durability: WAL with `synchronous=FULL`: an event the orchestrator saw
//! committed survives a crash of the process or the machine. The schema
//! version is in `user_version`, the file's kind in `application_id`; a file
//! that is not ours is refused without being written (it is checked through
//! a read-only connection first).

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::{OrchError, Result};
use crate::status::{
    Direction, MigrationStatus, Outcome, RunState, Step, StepRecord, UnitState, UnitStatus,
    WaveStatus,
};

/// `PRAGMA user_version` of the schema this code writes.
pub const SCHEMA_VERSION: i64 = 1;
/// `PRAGMA application_id`: "FRYJ".
const APPLICATION_ID: i64 = 0x4652_594A;

const SCHEMA: &str = "
CREATE TABLE run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    config_text TEXT NOT NULL,
    config_path TEXT NOT NULL,
    plan_path TEXT NOT NULL,
    plan_digest TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    units TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    unit TEXT NOT NULL,
    step TEXT,
    phase TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    direction TEXT NOT NULL,
    epoch INTEGER,
    outcome TEXT,
    detail TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX events_by_unit ON events (unit, seq);
CREATE TABLE head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL
);
";

/// What a unit looks like in the run meta (what the status needs without the plan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitMeta {
    pub id: String,
    pub night: Option<u32>,
    pub sites: usize,
    pub filers: Vec<String>,
}

/// The run row.
#[derive(Clone, Debug, PartialEq)]
pub struct RunMeta {
    pub config_text: String,
    pub config_path: PathBuf,
    pub plan_path: PathBuf,
    pub plan_digest: String,
    pub source: String,
    pub destination: String,
    pub started_at_ms: u64,
    pub units: Vec<UnitMeta>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Begin,
    End,
    /// Not a step boundary: a session start, an owed change, an abandon under way...
    Note,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Begin => "begin",
            Phase::End => "end",
            Phase::Note => "note",
        }
    }
    fn parse(s: &str) -> Option<Phase> {
        [Phase::Begin, Phase::End, Phase::Note]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// An event to append.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewEvent {
    /// Unit id; empty for run-wide notes.
    pub unit: String,
    pub step: Option<Step>,
    pub phase: Phase,
    pub attempt: u32,
    pub direction: Direction,
    pub epoch: Option<u64>,
    pub outcome: Option<Outcome>,
    /// JSON object; a `"summary"` string, when present, is the line people see.
    pub detail: serde_json::Value,
}

/// A journaled event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: NewEvent,
}

fn dir_str(d: Direction) -> &'static str {
    match d {
        Direction::Forward => "forward",
        Direction::Reverse => "reverse",
    }
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Abandoned => "abandoned",
    }
}

fn parse_outcome(s: &str) -> Option<Outcome> {
    [Outcome::Ok, Outcome::Failed, Outcome::Abandoned]
        .into_iter()
        .find(|o| outcome_str(*o) == s)
}

/// Length-prefixed fields into one hasher, so no two field lists hash alike.
struct Chain(blake3::Hasher);

impl Chain {
    fn new(label: &str) -> Chain {
        let mut c = Chain(blake3::Hasher::new());
        c.bytes(label.as_bytes());
        c
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Chain {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }
    fn num(&mut self, n: u64) -> &mut Chain {
        self.0.update(&n.to_le_bytes());
        self
    }
    fn opt(&mut self, s: Option<&str>) -> &mut Chain {
        match s {
            None => self.num(0),
            Some(s) => self.num(1).bytes(s.as_bytes()),
        }
    }
    fn done(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

fn run_hash(m: &RawRun) -> [u8; 32] {
    Chain::new("ferry-journal run v1")
        .bytes(m.config_text.as_bytes())
        .bytes(m.config_path.as_bytes())
        .bytes(m.plan_path.as_bytes())
        .bytes(m.plan_digest.as_bytes())
        .bytes(m.source.as_bytes())
        .bytes(m.destination.as_bytes())
        .num(m.started_at_ms as u64)
        .bytes(m.units.as_bytes())
        .done()
}

fn event_hash(prev: &[u8], e: &RawEvent) -> [u8; 32] {
    Chain::new("ferry-journal event v1")
        .bytes(prev)
        .num(e.seq as u64)
        .num(e.at_ms as u64)
        .bytes(e.unit.as_bytes())
        .opt(e.step.as_deref())
        .bytes(e.phase.as_bytes())
        .num(e.attempt as u64)
        .bytes(e.direction.as_bytes())
        .opt(e.epoch.map(|x| x.to_string()).as_deref())
        .opt(e.outcome.as_deref())
        .bytes(e.detail.as_bytes())
        .done()
}

/// Rows as stored (strings), before they are checked.
struct RawRun {
    config_text: String,
    config_path: String,
    plan_path: String,
    plan_digest: String,
    source: String,
    destination: String,
    started_at_ms: i64,
    units: String,
    hash: Vec<u8>,
}

struct RawEvent {
    seq: i64,
    at_ms: i64,
    unit: String,
    step: Option<String>,
    phase: String,
    attempt: i64,
    direction: String,
    epoch: Option<i64>,
    outcome: Option<String>,
    detail: String,
    hash: Vec<u8>,
}

/// An open journal. Shared between the runbook and the tracking server.
pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// `<journal>.lock`, flock-ed exclusively while this process may write:
    /// a second orchestrator on the same journal is refused, and `status`
    /// tells a live run from a dead one (the kernel drops the lock when the
    /// process dies, even by SIGKILL). A separate file: closing any other
    /// descriptor of the database would drop SQLite's own POSIX locks.
    lock: Option<std::fs::File>,
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the writer's lock of the journal at `path`.
fn take_lock(path: &Path) -> Result<std::fs::File> {
    let lp = lock_path(path);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lp)
        .map_err(|e| OrchError::Journal {
            path: path.to_path_buf(),
            message: format!("cannot open its lock file {}: {e}", lp.display()),
        })?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OrchError::Journal {
            path: path.to_path_buf(),
            message: "another `ferry migrate` process is using this journal (it holds the lock); wait for it or stop it".into(),
        }),
        Err(e) => Err(OrchError::Journal {
            path: path.to_path_buf(),
            message: format!("cannot lock {}: {e}", lp.display()),
        }),
    }
}

/// Is a live process holding the writer's lock of the journal at `path`?
fn locked_elsewhere(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(lock_path(path)) else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Journal {
    fn err(&self, message: impl Into<String>) -> OrchError {
        OrchError::Journal {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> OrchError + '_ {
        move |source| OrchError::Sqlite {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Opens an existing journal after checking it whole (read-only first:
    /// a file that is not ours or is damaged is refused unchanged).
    pub fn open(path: &Path) -> Result<Journal> {
        if !path.is_file() {
            return Err(OrchError::Journal {
                path: path.to_path_buf(),
                message: "no such journal file".into(),
            });
        }
        Journal::check_file(path)?;
        Journal::open_rw(path, false)
    }

    /// Opens an existing journal for reading only (`ferry migrate status`,
    /// while a run may be writing it), after checking it whole.
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        if !path.is_file() {
            return Err(OrchError::Journal {
                path: path.to_path_buf(),
                message: "no such journal file".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(Journal::sql(path))?;
        let j = Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            lock: None,
        };
        j.check_kind()?;
        j.verify()?;
        Ok(j)
    }

    /// Opens the journal at `path` for a new run: creates it if missing; an
    /// existing file must be a valid journal with no run yet.
    pub fn create(path: &Path) -> Result<Journal> {
        if path.exists() {
            let j = Journal::open(path)?;
            if let Some(m) = j.meta()? {
                return Err(OrchError::JournalInUse {
                    path: path.to_path_buf(),
                    started: format!("{} ms since the epoch", m.started_at_ms),
                });
            }
            return Ok(j);
        }
        Journal::open_rw(path, true)
    }

    /// Checks a journal file through a read-only connection.
    fn check_file(path: &Path) -> Result<()> {
        Journal::open_read_only(path).map(drop)
    }

    fn check_kind(&self) -> Result<()> {
        let conn = self.conn.lock();
        let not_ours = |e: rusqlite::Error| {
            self.err(format!(
                "not a Ferry journal (cannot read it as SQLite: {e})"
            ))
        };
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(not_ours)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(not_ours)?;
        if app != APPLICATION_ID {
            return Err(self.err(format!(
                "not a Ferry journal (SQLite application_id {app:#x}, expected {APPLICATION_ID:#x})"
            )));
        }
        if version != SCHEMA_VERSION {
            return Err(self.err(format!(
                "journal schema version {version}; this ferry reads version {SCHEMA_VERSION}"
            )));
        }
        Ok(())
    }

    fn open_rw(path: &Path, fresh: bool) -> Result<Journal> {
        let lock = take_lock(path)?;
        let sql = Journal::sql(path);
        let conn = Connection::open(path).map_err(&sql)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .map_err(&sql)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")
            .map_err(&sql)?;
        if fresh {
            let tx = conn.unchecked_transaction().map_err(&sql)?;
            tx.execute_batch(SCHEMA).map_err(&sql)?;
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(&sql)?;
            tx.commit().map_err(&sql)?;
        }
        let j = Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            lock: Some(lock),
        };
        if !fresh {
            j.check_kind()?;
        }
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the run. Only once per journal.
    pub fn start_run(&self, m: &RunMeta) -> Result<()> {
        let units = serde_json::to_string(&m.units).map_err(|e| self.err(e.to_string()))?;
        let raw = RawRun {
            config_text: m.config_text.clone(),
            config_path: m.config_path.to_string_lossy().into_owned(),
            plan_path: m.plan_path.to_string_lossy().into_owned(),
            plan_digest: m.plan_digest.clone(),
            source: m.source.clone(),
            destination: m.destination.clone(),
            started_at_ms: m.started_at_ms as i64,
            units,
            hash: Vec::new(),
        };
        let hash = run_hash(&raw);
        let conn = self.conn.lock();
        let sql = Journal::sql(&self.path);
        let tx = conn.unchecked_transaction().map_err(&sql)?;
        let n: i64 = tx
            .query_row("SELECT count(*) FROM run", [], |r| r.get(0))
            .map_err(&sql)?;
        if n > 0 {
            return Err(OrchError::JournalInUse {
                path: self.path.clone(),
                started: "earlier".into(),
            });
        }
        tx.execute(
            "INSERT INTO run (id, config_text, config_path, plan_path, plan_digest, source, destination, started_at_ms, units, hash)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![raw.config_text, raw.config_path, raw.plan_path, raw.plan_digest, raw.source, raw.destination, raw.started_at_ms, raw.units, hash.to_vec()],
        )
        .map_err(&sql)?;
        tx.execute(
            "INSERT INTO head (id, seq, hash) VALUES (1, 0, ?1)",
            params![hash.to_vec()],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)
    }

    fn raw_run(&self, conn: &Connection) -> Result<Option<RawRun>> {
        conn.query_row(
            "SELECT config_text, config_path, plan_path, plan_digest, source, destination, started_at_ms, units, hash FROM run WHERE id = 1",
            [],
            |r| {
                Ok(RawRun {
                    config_text: r.get(0)?,
                    config_path: r.get(1)?,
                    plan_path: r.get(2)?,
                    plan_digest: r.get(3)?,
                    source: r.get(4)?,
                    destination: r.get(5)?,
                    started_at_ms: r.get(6)?,
                    units: r.get(7)?,
                    hash: r.get(8)?,
                })
            },
        )
        .optional()
        .map_err(|e| self.err(format!("run row unreadable: {e}")))
    }

    /// The run meta, None before `start_run`.
    pub fn meta(&self) -> Result<Option<RunMeta>> {
        let conn = self.conn.lock();
        let Some(r) = self.raw_run(&conn)? else {
            return Ok(None);
        };
        let units: Vec<UnitMeta> =
            serde_json::from_str(&r.units).map_err(|e| self.err(format!("run row: units: {e}")))?;
        Ok(Some(RunMeta {
            config_text: r.config_text,
            config_path: PathBuf::from(r.config_path),
            plan_path: PathBuf::from(r.plan_path),
            plan_digest: r.plan_digest,
            source: r.source,
            destination: r.destination,
            started_at_ms: r.started_at_ms as u64,
            units,
        }))
    }

    /// Checks the chain: run row, every event in sequence, the head.
    pub fn verify(&self) -> Result<()> {
        let conn = self.conn.lock();
        let bad = |e: rusqlite::Error| self.err(format!("damaged: {e}"));
        for t in ["run", "events", "head"] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [t],
                    |r| r.get(0),
                )
                .map_err(bad)?;
            if n != 1 {
                return Err(self.err(format!("damaged: table {t} is missing")));
            }
        }
        let Some(run) = self.raw_run(&conn)? else {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .map_err(bad)?;
            if n > 0 {
                return Err(self.err("damaged: events without a run row"));
            }
            return Ok(());
        };
        if run_hash(&run).as_slice() != run.hash.as_slice() {
            return Err(self.err("damaged: the run row does not match its hash (edited?)"));
        }
        let mut prev = run.hash.clone();
        let mut expect = 1i64;
        let mut stmt = conn
            .prepare("SELECT seq, at_ms, unit, step, phase, attempt, direction, epoch, outcome, detail, hash FROM events ORDER BY seq")
            .map_err(bad)?;
        let rows = stmt.query_map([], read_raw_event).map_err(bad)?;
        for row in rows {
            let e = row.map_err(bad)?;
            if e.seq != expect {
                return Err(self.err(format!(
                    "damaged: event {expect} is missing (next row is {}): rows were deleted",
                    e.seq
                )));
            }
            let h = event_hash(&prev, &e);
            if h.as_slice() != e.hash.as_slice() {
                return Err(self.err(format!(
                    "damaged: event {} does not match its hash (edited, or an earlier row changed)",
                    e.seq
                )));
            }
            prev = e.hash;
            expect += 1;
        }
        let (hseq, hhash): (i64, Vec<u8>) = conn
            .query_row("SELECT seq, hash FROM head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(format!("damaged: head row: {e}")))?;
        if hseq != expect - 1 || hhash != prev {
            return Err(self.err(format!(
                "damaged: the journal ends at event {} but its head says {hseq}: rows were removed at the end",
                expect - 1
            )));
        }
        Ok(())
    }

    /// Appends an event (hash-chained; committed durably before this returns).
    pub fn append(&self, ev: NewEvent) -> Result<EventRecord> {
        let conn = self.conn.lock();
        let sql = Journal::sql(&self.path);
        let tx = conn.unchecked_transaction().map_err(&sql)?;
        let (hseq, hhash): (i64, Vec<u8>) = tx
            .query_row("SELECT seq, hash FROM head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(format!("no run recorded ({e})")))?;
        let at_ms = now_ms();
        let mut raw = RawEvent {
            seq: hseq + 1,
            at_ms: at_ms as i64,
            unit: ev.unit.clone(),
            step: ev.step.map(|s| s.as_str().to_string()),
            phase: ev.phase.as_str().to_string(),
            attempt: i64::from(ev.attempt),
            direction: dir_str(ev.direction).to_string(),
            epoch: ev.epoch.map(|x| x as i64),
            outcome: ev.outcome.map(|o| outcome_str(o).to_string()),
            detail: ev.detail.to_string(),
            hash: Vec::new(),
        };
        raw.hash = event_hash(&hhash, &raw).to_vec();
        tx.execute(
            "INSERT INTO events (seq, at_ms, unit, step, phase, attempt, direction, epoch, outcome, detail, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![raw.seq, raw.at_ms, raw.unit, raw.step, raw.phase, raw.attempt, raw.direction, raw.epoch, raw.outcome, raw.detail, raw.hash],
        )
        .map_err(&sql)?;
        tx.execute(
            "UPDATE head SET seq = ?1, hash = ?2 WHERE id = 1",
            params![raw.seq, raw.hash],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)?;
        Ok(EventRecord {
            seq: raw.seq as u64,
            at_ms,
            event: ev,
        })
    }

    /// Every event, in order.
    pub fn events(&self) -> Result<Vec<EventRecord>> {
        self.select_events(None)
    }

    /// The events of one unit, in order.
    pub fn unit_events(&self, unit: &str) -> Result<Vec<EventRecord>> {
        self.select_events(Some(unit))
    }

    fn select_events(&self, unit: Option<&str>) -> Result<Vec<EventRecord>> {
        let conn = self.conn.lock();
        let bad = |e: rusqlite::Error| self.err(format!("damaged: {e}"));
        const COLS: &str = "SELECT seq, at_ms, unit, step, phase, attempt, direction, epoch, outcome, detail, hash FROM events";
        let (sql, args): (String, Vec<&str>) = match unit {
            None => (format!("{COLS} ORDER BY seq"), vec![]),
            Some(u) => (format!("{COLS} WHERE unit = ?1 ORDER BY seq"), vec![u]),
        };
        let mut stmt = conn.prepare(&sql).map_err(bad)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), read_raw_event)
            .map_err(bad)?;
        let mut out = Vec::new();
        for row in rows {
            let r = row.map_err(bad)?;
            let what = |f: &str| self.err(format!("event {}: bad {f}", r.seq));
            let step = match &r.step {
                None => None,
                Some(s) => Some(Step::parse(s).ok_or_else(|| what("step"))?),
            };
            out.push(EventRecord {
                seq: r.seq as u64,
                at_ms: r.at_ms as u64,
                event: NewEvent {
                    unit: r.unit.clone(),
                    step,
                    phase: Phase::parse(&r.phase).ok_or_else(|| what("phase"))?,
                    attempt: u32::try_from(r.attempt).map_err(|_| what("attempt"))?,
                    direction: match r.direction.as_str() {
                        "forward" => Direction::Forward,
                        "reverse" => Direction::Reverse,
                        _ => return Err(what("direction")),
                    },
                    epoch: r.epoch.map(|x| x as u64),
                    outcome: match &r.outcome {
                        None => None,
                        Some(o) => Some(parse_outcome(o).ok_or_else(|| what("outcome"))?),
                    },
                    detail: serde_json::from_str(&r.detail).map_err(|_| what("detail"))?,
                },
            });
        }
        Ok(out)
    }

    /// The migration as the events tell it; None before a run was recorded.
    pub fn status(&self) -> Result<Option<MigrationStatus>> {
        let Some(meta) = self.meta()? else {
            return Ok(None);
        };
        let events = self.events()?;
        let running = self.lock.is_some() || locked_elsewhere(&self.path);
        Ok(Some(fold(&meta, &events, running)))
    }
}

fn read_raw_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawEvent> {
    Ok(RawEvent {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        unit: r.get(2)?,
        step: r.get(3)?,
        phase: r.get(4)?,
        attempt: r.get(5)?,
        direction: r.get(6)?,
        epoch: r.get(7)?,
        outcome: r.get(8)?,
        detail: r.get(9)?,
        hash: r.get(10)?,
    })
}

/// The line people see for an event's detail.
pub fn detail_line(d: &serde_json::Value) -> Option<String> {
    match d.get("summary").and_then(|s| s.as_str()) {
        Some(s) => Some(s.to_string()),
        None if d.as_object().is_some_and(|o| o.is_empty()) || d.is_null() => None,
        None => Some(d.to_string()),
    }
}

/// Folds the events into the status types; `running`: an orchestrator
/// process holds the journal now.
pub fn fold(meta: &RunMeta, events: &[EventRecord], running: bool) -> MigrationStatus {
    let mut units: Vec<UnitStatus> = meta
        .units
        .iter()
        .map(|u| UnitStatus {
            id: u.id.clone(),
            wave: u.night,
            sites: u.sites,
            filers: u.filers.clone(),
            state: UnitState::Pending,
            direction: Direction::Forward,
            step: None,
            attempt: 0,
            epoch: None,
            freeze_ms: None,
            message: None,
            steps: Vec::new(),
        })
        .collect();
    let mut updated = meta.started_at_ms;
    for rec in events {
        updated = updated.max(rec.at_ms);
        let e = &rec.event;
        if e.unit.is_empty() {
            continue;
        }
        let Some(u) = units.iter_mut().find(|u| u.id == e.unit) else {
            continue;
        };
        if let Some(ep) = e.epoch {
            u.epoch = Some(u.epoch.map_or(ep, |x| x.max(ep)));
        }
        let unit_state = e.detail.get("unit_state").and_then(|s| s.as_str());
        let message = e.detail.get("message").and_then(|s| s.as_str());
        match e.phase {
            Phase::Begin => {
                let Some(step) = e.step else { continue };
                // A replayed step (begin again after a crash) keeps one record.
                let open = u.steps.last().is_some_and(|s| {
                    s.step == step
                        && s.ended_at_ms.is_none()
                        && s.attempt == e.attempt
                        && s.direction == e.direction
                });
                if !open {
                    u.steps.push(StepRecord {
                        step,
                        attempt: e.attempt,
                        direction: e.direction,
                        started_at_ms: rec.at_ms,
                        ended_at_ms: None,
                        outcome: None,
                        epoch: e.epoch,
                        detail: detail_line(&e.detail),
                    });
                }
                u.step = Some(step);
                u.state = UnitState::Running;
                u.attempt = e.attempt;
                u.direction = e.direction;
            }
            Phase::End => {
                let Some(step) = e.step else { continue };
                if let Some(s) = u
                    .steps
                    .iter_mut()
                    .rev()
                    .find(|s| s.step == step && s.ended_at_ms.is_none())
                {
                    s.ended_at_ms = Some(rec.at_ms);
                    s.outcome = e.outcome;
                    if let Some(d) = detail_line(&e.detail) {
                        s.detail = Some(d);
                    }
                    if s.epoch.is_none() {
                        s.epoch = e.epoch;
                    }
                }
                if step == Step::Flip {
                    if let Some(f) = e.detail.get("freeze_ms").and_then(|f| f.as_u64()) {
                        u.freeze_ms = Some(f);
                    }
                }
                if step == Step::Done && e.outcome == Some(Outcome::Ok) {
                    u.state = match e.direction {
                        Direction::Forward => UnitState::Done,
                        Direction::Reverse => UnitState::RolledBack,
                    };
                }
            }
            Phase::Note => {}
        }
        if let Some(m) = message {
            u.message = Some(m.to_string());
        }
        match unit_state {
            Some("waiting") => u.state = UnitState::Waiting,
            Some("failed") => u.state = UnitState::Failed,
            Some("rolled_back") => u.state = UnitState::RolledBack,
            Some("running") => u.state = UnitState::Running,
            _ => {}
        }
    }
    let terminal = |s: UnitState| {
        matches!(
            s,
            UnitState::Done | UnitState::Failed | UnitState::RolledBack
        )
    };
    let state = if !units.is_empty() && units.iter().all(|u| terminal(u.state)) {
        RunState::Finished
    } else if running {
        RunState::Running
    } else {
        RunState::Stopped
    };
    let mut waves: Vec<WaveStatus> = Vec::new();
    for u in &units {
        let night = u.wave.unwrap_or(0);
        let w = match waves.iter_mut().position(|w| w.night == night) {
            Some(i) => &mut waves[i],
            None => {
                waves.push(WaveStatus {
                    night,
                    units: Vec::new(),
                    done: 0,
                });
                waves.last_mut().expect("just pushed")
            }
        };
        w.units.push(u.id.clone());
        if u.state == UnitState::Done {
            w.done += 1;
        }
    }
    waves.sort_by_key(|w| w.night);
    MigrationStatus {
        source: meta.source.clone(),
        destination: meta.destination.clone(),
        state,
        started_at_ms: meta.started_at_ms,
        updated_at_ms: updated,
        waves,
        units,
    }
}
