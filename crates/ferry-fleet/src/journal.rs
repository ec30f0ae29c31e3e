//! The update journal: one SQLite file per `ferry update` run.
//!
//! Written here rather than reusing ferry-orch's: that journal's rows are
//! shaped for migrations (units, waves, epochs, directions) and its fold
//! builds a migration status; an update is one list of steps. The same
//! guarantees, smaller:
//! - `run`: one row (level, primary, runbook and fleet paths with the BLAKE3
//!   digests of their bytes, start time), as JSON, with its hash;
//! - `events`: `begin` before a step acts (with what it will send: the
//!   router states it recorded, the epochs it will use), `end` after
//!   (`ok` or `failed`, with data), each with a BLAKE3 hash chained over the
//!   previous row's; `head` holds the last sequence number and hash, written
//!   in the same transaction, so an edited byte or a removed row (middle or
//!   last) is refused at open, naming the row.
//! - WAL + `synchronous=FULL`; `user_version` 1, `application_id` "FRYU".
//! - `<journal>.lock`, flock-ed while a process runs the update: a second
//!   runner is refused, and `status` can tell "running" from "interrupted"
//!   (the kernel drops the lock on kill -9).

use std::fs::File;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FleetError, Result};

const SCHEMA_VERSION: i64 = 1;
/// "FRYU".
const APPLICATION_ID: i64 = 0x4652_5955;

const SCHEMA: &str = "
CREATE TABLE run (id INTEGER PRIMARY KEY CHECK (id = 1), meta TEXT NOT NULL, hash BLOB NOT NULL);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    step TEXT NOT NULL,
    phase TEXT NOT NULL,
    outcome TEXT,
    data TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL);
";

/// What the run was started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub level: u8,
    pub primary: String,
    pub runbook_path: PathBuf,
    pub runbook_digest: String,
    pub fleet_path: PathBuf,
    pub fleet_digest: String,
    pub started_at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Begin,
    End,
}

/// One journal row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    /// The step's position in the plan.
    pub idx: usize,
    pub step: String,
    pub phase: Phase,
    /// `ok` or `failed` (end rows).
    pub outcome: Option<String>,
    pub data: Value,
}

pub struct Journal {
    path: PathBuf,
    conn: Mutex<Connection>,
    _lock: Option<File>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn row_hash(prev: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    for f in fields {
        h.update(&(f.len() as u64).to_le_bytes());
        h.update(f);
    }
    h.finalize().as_bytes().to_vec()
}

fn event_hash(prev: &[u8], e: &Event) -> Vec<u8> {
    let data = e.data.to_string();
    let phase = match e.phase {
        Phase::Begin => "begin",
        Phase::End => "end",
    };
    row_hash(
        prev,
        &[
            &e.seq.to_le_bytes(),
            &e.at_ms.to_le_bytes(),
            &(e.idx as u64).to_le_bytes(),
            e.step.as_bytes(),
            phase.as_bytes(),
            e.outcome.as_deref().unwrap_or("").as_bytes(),
            data.as_bytes(),
        ],
    )
}

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl Journal {
    fn err(path: &Path, message: impl Into<String>) -> FleetError {
        FleetError::Journal {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    fn lock(path: &Path) -> Result<File> {
        let lp = lock_path(path);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .map_err(|e| FleetError::io("open journal lock", &lp, e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| Journal::err(path, "another `ferry update` is running on this journal"))?;
        Ok(f)
    }

    /// Whether a process holds the journal (a run is alive).
    pub fn running(path: &Path) -> bool {
        match File::open(lock_path(path)) {
            Ok(f) => {
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
            }
            Err(_) => false,
        }
    }

    /// Creates a new journal; an existing file is refused.
    pub fn create(path: &Path, meta: &RunMeta) -> Result<Journal> {
        if path.exists() {
            return Err(Journal::err(
                path,
                "already exists: `ferry update resume` continues it, or choose another --journal",
            ));
        }
        let lock = Journal::lock(path)?;
        let conn = Connection::open(path).map_err(|e| Journal::err(path, e.to_string()))?;
        let meta_text =
            serde_json::to_string(meta).map_err(|e| Journal::err(path, e.to_string()))?;
        let hash = row_hash(b"ferry-update-journal v1", &[meta_text.as_bytes()]);
        let setup = || -> rusqlite::Result<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch("BEGIN")?;
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
            conn.execute(
                "INSERT INTO run (id, meta, hash) VALUES (1, ?1, ?2)",
                params![meta_text, hash],
            )?;
            conn.execute(
                "INSERT INTO head (id, seq, hash) VALUES (1, 0, ?1)",
                params![hash],
            )?;
            conn.execute_batch("COMMIT")
        };
        setup().map_err(|e| Journal::err(path, e.to_string()))?;
        Ok(Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: Some(lock),
        })
    }

    /// Opens for writing (resume): locked, checked.
    pub fn open(path: &Path) -> Result<Journal> {
        let lock = Journal::lock(path)?;
        let j = Journal::open_checked(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        Ok(Journal {
            _lock: Some(lock),
            ..j
        })
    }

    /// Opens for reading (status), checked, not locked.
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        Journal::open_checked(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }

    fn open_checked(path: &Path, flags: OpenFlags) -> Result<Journal> {
        if !path.exists() {
            return Err(Journal::err(path, "no such journal"));
        }
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| Journal::err(path, e.to_string()))?;
        let ids = (|| -> rusqlite::Result<(i64, i64)> {
            Ok((
                conn.pragma_query_value(None, "application_id", |r| r.get(0))?,
                conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
            ))
        })();
        match ids {
            Ok((APPLICATION_ID, SCHEMA_VERSION)) => {}
            Ok((APPLICATION_ID, v)) => {
                return Err(Journal::err(
                    path,
                    format!("schema version {v}; this ferry reads {SCHEMA_VERSION}"),
                ))
            }
            _ => return Err(Journal::err(path, "not a ferry update journal")),
        }
        let j = Journal {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            _lock: None,
        };
        j.check_chain()?;
        Ok(j)
    }

    fn check_chain(&self) -> Result<()> {
        let (meta_text, run_hash): (String, Vec<u8>) = self
            .conn
            .lock()
            .query_row("SELECT meta, hash FROM run WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| Journal::err(&self.path, format!("run row: {e}")))?;
        if row_hash(b"ferry-update-journal v1", &[meta_text.as_bytes()]) != run_hash {
            return Err(Journal::err(
                &self.path,
                "the run row was changed (hash mismatch)",
            ));
        }
        let mut prev = run_hash;
        let mut last = 0u64;
        for (e, stored) in self.rows()? {
            if e.seq != last + 1 {
                return Err(Journal::err(
                    &self.path,
                    format!("row {} is missing", last + 1),
                ));
            }
            if event_hash(&prev, &e) != stored {
                return Err(Journal::err(
                    &self.path,
                    format!("row {} was changed (hash mismatch)", e.seq),
                ));
            }
            prev = stored;
            last = e.seq;
        }
        let (seq, hash): (u64, Vec<u8>) = self
            .conn
            .lock()
            .query_row("SELECT seq, hash FROM head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| Journal::err(&self.path, format!("head row: {e}")))?;
        if seq != last || hash != prev {
            return Err(Journal::err(
                &self.path,
                format!(
                    "the head names row {seq} but the chain ends at row {last} (rows removed?)"
                ),
            ));
        }
        Ok(())
    }

    fn rows(&self) -> Result<Vec<(Event, Vec<u8>)>> {
        let conn = self.conn.lock();
        let mut st = conn
            .prepare(
                "SELECT seq, at_ms, idx, step, phase, outcome, data, hash FROM events ORDER BY seq",
            )
            .map_err(|e| Journal::err(&self.path, e.to_string()))?;
        let rows = st
            .query_map([], |r| {
                let phase: String = r.get(4)?;
                let data: String = r.get(6)?;
                Ok((
                    r.get::<_, u64>(0)?,
                    r.get::<_, u64>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, String>(3)?,
                    phase,
                    r.get::<_, Option<String>>(5)?,
                    data,
                    r.get::<_, Vec<u8>>(7)?,
                ))
            })
            .map_err(|e| Journal::err(&self.path, e.to_string()))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at_ms, idx, step, phase, outcome, data, hash) =
                row.map_err(|e| Journal::err(&self.path, e.to_string()))?;
            let phase = match phase.as_str() {
                "begin" => Phase::Begin,
                "end" => Phase::End,
                p => {
                    return Err(Journal::err(
                        &self.path,
                        format!("row {seq}: unknown phase {p:?}"),
                    ))
                }
            };
            let data = serde_json::from_str(&data)
                .map_err(|e| Journal::err(&self.path, format!("row {seq}: data: {e}")))?;
            out.push((
                Event {
                    seq,
                    at_ms,
                    idx: idx as usize,
                    step,
                    phase,
                    outcome,
                    data,
                },
                hash,
            ));
        }
        Ok(out)
    }

    pub fn meta(&self) -> Result<RunMeta> {
        let text: String = self
            .conn
            .lock()
            .query_row("SELECT meta FROM run WHERE id = 1", [], |r| r.get(0))
            .map_err(|e| Journal::err(&self.path, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| Journal::err(&self.path, format!("run row: {e}")))
    }

    pub fn events(&self) -> Result<Vec<Event>> {
        Ok(self.rows()?.into_iter().map(|(e, _)| e).collect())
    }

    /// Appends one row (and moves the head) in one transaction.
    pub fn append(
        &self,
        idx: usize,
        step: &str,
        phase: Phase,
        outcome: Option<&str>,
        data: Value,
    ) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction()
            .map_err(|e| Journal::err(&self.path, e.to_string()))?;
        let (seq, prev): (u64, Vec<u8>) = tx
            .query_row("SELECT seq, hash FROM head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| Journal::err(&self.path, e.to_string()))?;
        let e = Event {
            seq: seq + 1,
            at_ms: now_ms(),
            idx,
            step: step.to_string(),
            phase,
            outcome: outcome.map(str::to_string),
            data,
        };
        let hash = event_hash(&prev, &e);
        let phase = match phase {
            Phase::Begin => "begin",
            Phase::End => "end",
        };
        tx.execute(
            "INSERT INTO events (seq, at_ms, idx, step, phase, outcome, data, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![e.seq, e.at_ms, e.idx as u64, e.step, phase, e.outcome, e.data.to_string(), hash],
        )
        .and_then(|_| tx.execute("UPDATE head SET seq = ?1, hash = ?2 WHERE id = 1", params![e.seq, hash]))
        .and_then(|_| tx.commit())
        .map_err(|err| Journal::err(&self.path, format!("appending row {}: {err}", e.seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RunMeta {
        RunMeta {
            level: 2,
            primary: "s1".into(),
            runbook_path: "u.toml".into(),
            runbook_digest: "d".into(),
            fleet_path: "f.toml".into(),
            fleet_digest: "e".into(),
            started_at_ms: 1,
        }
    }

    #[test]
    fn round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.db");
        let j = Journal::create(&p, &meta()).unwrap();
        j.append(0, "record", Phase::Begin, None, serde_json::json!({}))
            .unwrap();
        j.append(
            0,
            "record",
            Phase::End,
            Some("ok"),
            serde_json::json!({"r1": {"s1": "ready"}}),
        )
        .unwrap();
        assert!(Journal::running(&p));
        assert!(
            Journal::open(&p).is_err(),
            "a second writer must be refused"
        );
        drop(j);
        assert!(!Journal::running(&p));
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.meta().unwrap(), meta());
        let ev = j.events().unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].data["r1"]["s1"], "ready");
        assert!(Journal::create(&p, &meta()).is_err());
    }

    #[test]
    fn tampering_is_refused_naming_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.db");
        let j = Journal::create(&p, &meta()).unwrap();
        for i in 0..3 {
            j.append(i, "s", Phase::Begin, None, serde_json::json!({"i": i}))
                .unwrap();
        }
        drop(j);
        let c = Connection::open(&p).unwrap();
        c.execute("UPDATE events SET data = '{\"i\":9}' WHERE seq = 2", [])
            .unwrap();
        drop(c);
        let e = Journal::open_read_only(&p).err().unwrap().to_string();
        assert!(e.contains("row 2 was changed"), "{e}");
        let c = Connection::open(&p).unwrap();
        c.execute("DELETE FROM events WHERE seq >= 2", []).unwrap();
        drop(c);
        let e = Journal::open_read_only(&p).err().unwrap().to_string();
        assert!(e.contains("head names row 3"), "{e}");
    }
}
