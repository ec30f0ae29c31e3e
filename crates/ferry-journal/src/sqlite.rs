//! The journal file: an append-only SQLite log of one run (the default
//! backend of [`crate::Journal`]).
//!
//! Three tables, whatever the runbook: `run` (one row, id 1: what the run
//! was started with), `events` (`seq`, `at_ms`, the runbook's columns) and
//! `head` (one row: the last sequence number and hash). Each row carries a
//! BLAKE3 hash chained over the previous row's (the first event's over the
//! run row's); `head` is updated in the same transaction as the event. So an
//! edited byte, a deleted row (middle or last) or garbage is found when the
//! journal is opened, and the row is named.
//!
//! Durability: WAL with `synchronous=FULL`: an event a runbook saw committed
//! survives a crash of the process or the machine. A file that is not ours
//! (`application_id`) or of another schema (`user_version`) is refused
//! without being written: it is checked through a read-only connection
//! before any writable one is opened.
//!
//! `<journal>.lock` is flock-ed exclusively while a process may write: a
//! second writer is refused, and [`running`] tells a live run from a dead
//! one (the kernel drops the lock when the process dies, even by SIGKILL).
//! A separate file: closing any other descriptor of the database would drop
//! SQLite's own POSIX locks.

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, ErrorKind};
use crate::kind::now_ms;
use crate::kind::{verify_chain, Kind, Record, Row, StoredEvent};

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Is a live process holding the writer's lock of the journal at `path`?
pub fn running(path: &Path) -> bool {
    let Ok(f) = File::open(lock_path(path)) else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

/// An open SQLite journal of kind `K`.
pub(crate) struct Sqlite<K: Kind> {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The writer's lock; None for a read-only handle.
    lock: Option<File>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Sqlite<K> {
    fn fail(path: &Path, kind: ErrorKind) -> Error {
        Error {
            path: path.to_path_buf(),
            kind,
        }
    }

    fn err(&self, kind: ErrorKind) -> Error {
        Sqlite::<K>::fail(&self.path, kind)
    }

    fn damaged(&self, message: impl Into<String>) -> Error {
        self.err(ErrorKind::Damaged(message.into()))
    }

    fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |e| Sqlite::<K>::fail(path, ErrorKind::Sqlite(e))
    }

    /// Takes the writer's lock of the journal at `path`.
    fn take_lock(path: &Path) -> Result<File, Error> {
        let lock = lock_path(path);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| {
                Sqlite::<K>::fail(
                    path,
                    ErrorKind::LockFile {
                        lock: lock.clone(),
                        source,
                    },
                )
            })?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(f),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Sqlite::<K>::fail(
                path,
                ErrorKind::Locked {
                    command: K::COMMAND,
                },
            )),
            Err(e) => Err(Sqlite::<K>::fail(
                path,
                ErrorKind::LockFile {
                    lock,
                    source: e.into(),
                },
            )),
        }
    }

    /// Creates a new journal at `path` (refused if a file is there), locked
    /// for writing; with `run`, the run row is written in the same
    /// transaction as the schema.
    pub fn create(path: &Path, run: Option<&K::Run>) -> Result<Sqlite<K>, Error> {
        if path.exists() {
            return Err(Sqlite::<K>::fail(path, ErrorKind::Exists));
        }
        let j = Sqlite::<K>::open_rw(path)?;
        {
            let conn = j.conn.lock();
            let sql = Sqlite::<K>::sql(path);
            let tx = conn.unchecked_transaction().map_err(&sql)?;
            tx.execute_batch(K::SCHEMA).map_err(&sql)?;
            tx.execute_batch(&format!(
                "PRAGMA application_id = {}; PRAGMA user_version = {};",
                K::APPLICATION_ID,
                K::SCHEMA_VERSION
            ))
            .map_err(&sql)?;
            if let Some(run) = run {
                j.insert_run(&tx, run)?;
            }
            tx.commit().map_err(&sql)?;
        }
        Ok(j)
    }

    /// Opens an existing journal for writing after checking it whole
    /// (read-only first: a file that is not ours or is damaged is refused
    /// unchanged), then takes the writer's lock.
    pub fn open(path: &Path) -> Result<Sqlite<K>, Error> {
        drop(Sqlite::<K>::open_read_only(path)?);
        let j = Sqlite::<K>::open_rw(path)?;
        j.check_kind()?;
        Ok(j)
    }

    /// Opens an existing journal for reading only (a status, while a run
    /// may be writing it), after checking it whole.
    pub fn open_read_only(path: &Path) -> Result<Sqlite<K>, Error> {
        if !path.is_file() {
            return Err(Sqlite::<K>::fail(path, ErrorKind::Missing));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(Sqlite::<K>::sql(path))?;
        let j = Sqlite {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            lock: None,
            kind: PhantomData,
        };
        j.check_kind()?;
        j.verify()?;
        Ok(j)
    }

    fn open_rw(path: &Path) -> Result<Sqlite<K>, Error> {
        let lock = Sqlite::<K>::take_lock(path)?;
        let sql = Sqlite::<K>::sql(path);
        let conn = Connection::open(path).map_err(&sql)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .map_err(&sql)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")
            .map_err(&sql)?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            lock: Some(lock),
            kind: PhantomData,
        })
    }

    fn check_kind(&self) -> Result<(), Error> {
        let conn = self.conn.lock();
        let not_ours = |e: rusqlite::Error| {
            self.err(ErrorKind::NotOurs {
                what: K::WHAT,
                detail: format!("cannot read it as SQLite: {e}"),
            })
        };
        let app: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(not_ours)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(not_ours)?;
        if app != K::APPLICATION_ID {
            return Err(self.err(ErrorKind::NotOurs {
                what: K::WHAT,
                detail: format!(
                    "SQLite application_id {app:#x}, expected {:#x}",
                    K::APPLICATION_ID
                ),
            }));
        }
        if version != K::SCHEMA_VERSION {
            return Err(self.err(ErrorKind::Version {
                found: version,
                expected: K::SCHEMA_VERSION,
            }));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This handle holds the writer's lock.
    pub fn is_writer(&self) -> bool {
        self.lock.is_some()
    }

    /// A run is going on: this handle or another live process holds the lock.
    pub fn running(&self) -> bool {
        self.is_writer() || running(&self.path)
    }

    fn insert_run(&self, conn: &Connection, run: &K::Run) -> Result<(), Error> {
        let row = K::run_row(run).map_err(|m| self.err(ErrorKind::Row(format!("run row: {m}"))))?;
        let hash = K::run_hash(&row);
        let sql = Sqlite::<K>::sql(&self.path);
        let marks: Vec<String> = (1..row.len() + 2).map(|i| format!("?{i}")).collect();
        let text = format!(
            "INSERT INTO run (id, {}, hash) VALUES (1, {})",
            K::RUN_COLUMNS.join(", "),
            marks.join(", ")
        );
        let mut args = row;
        args.push(Value::Blob(hash.to_vec()));
        conn.execute(&text, params_from_iter(args)).map_err(&sql)?;
        conn.execute(
            "INSERT INTO head (id, seq, hash) VALUES (1, 0, ?1)",
            [hash.to_vec()],
        )
        .map_err(&sql)?;
        Ok(())
    }

    /// Records the run. Only once per journal.
    pub fn start_run(&self, run: &K::Run) -> Result<(), Error> {
        let conn = self.conn.lock();
        let sql = Sqlite::<K>::sql(&self.path);
        let tx = conn.unchecked_transaction().map_err(&sql)?;
        let n: i64 = tx
            .query_row("SELECT count(*) FROM run", [], |r| r.get(0))
            .map_err(&sql)?;
        if n > 0 {
            return Err(self.err(ErrorKind::RunExists));
        }
        self.insert_run(&tx, run)?;
        tx.commit().map_err(&sql)
    }

    /// The run row's columns and hash, None before the run is recorded.
    fn raw_run(&self, conn: &Connection) -> Result<Option<(Row, Value)>, Error> {
        let n = K::RUN_COLUMNS.len();
        conn.query_row(
            &format!(
                "SELECT {}, hash FROM run WHERE id = 1",
                K::RUN_COLUMNS.join(", ")
            ),
            [],
            |r| {
                let row = (0..n)
                    .map(|i| r.get(i))
                    .collect::<rusqlite::Result<Row>>()?;
                Ok((row, r.get(n)?))
            },
        )
        .optional()
        .map_err(|e| self.err(ErrorKind::Row(format!("run row unreadable: {e}"))))
    }

    /// The run, None before it was recorded.
    pub fn run(&self) -> Result<Option<K::Run>, Error> {
        let conn = self.conn.lock();
        let Some((row, _)) = self.raw_run(&conn)? else {
            return Ok(None);
        };
        K::run_from_row(&row)
            .map(Some)
            .map_err(|m| self.err(ErrorKind::Row(format!("run row: {m}"))))
    }

    fn select_events(
        &self,
        filter: Option<(&str, &str)>,
    ) -> Result<Vec<(i64, Value, Row, Value)>, Error> {
        let conn = self.conn.lock();
        let bad = |e: rusqlite::Error| self.damaged(e.to_string());
        let n = K::EVENT_COLUMNS.len();
        let cols = format!(
            "SELECT seq, at_ms, {}, hash FROM events",
            K::EVENT_COLUMNS.join(", ")
        );
        let (text, args): (String, Vec<&str>) = match filter {
            None => (format!("{cols} ORDER BY seq"), vec![]),
            Some((c, v)) => (format!("{cols} WHERE {c} = ?1 ORDER BY seq"), vec![v]),
        };
        let mut stmt = conn.prepare(&text).map_err(bad)?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                let row = (2..n + 2)
                    .map(|i| r.get(i))
                    .collect::<rusqlite::Result<Row>>()?;
                Ok((r.get(0)?, r.get(1)?, row, r.get(n + 2)?))
            })
            .map_err(bad)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(bad)
    }

    /// Checks the chain: run row, every event in sequence, the head.
    pub fn verify(&self) -> Result<(), Error> {
        {
            let conn = self.conn.lock();
            let bad = |e: rusqlite::Error| self.damaged(e.to_string());
            for t in ["run", "events", "head"] {
                let n: i64 = conn
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                        [t],
                        |r| r.get(0),
                    )
                    .map_err(bad)?;
                if n != 1 {
                    return Err(self.damaged(format!("table {t} is missing")));
                }
            }
        }
        let run = {
            let conn = self.conn.lock();
            self.raw_run(&conn)?
        };
        let stored = |v: Value| match v {
            Value::Blob(b) => b,
            _ => Vec::new(),
        };
        let run = run.map(|(row, hash)| (row, stored(hash)));
        let events = self
            .select_events(None)?
            .into_iter()
            .map(|(seq, at_ms, row, hash)| StoredEvent {
                seq,
                at_ms,
                row,
                hash: stored(hash),
            })
            .collect();
        let head = || {
            self.conn
                .lock()
                .query_row("SELECT seq, hash FROM head WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(|e| format!("head row: {e}"))
        };
        verify_chain::<K>(run, events, head).map_err(|m| self.damaged(m))
    }

    /// Appends an event, hash-chained, committed durably before this returns.
    pub fn append(&self, event: K::Event) -> Result<Record<K::Event>, Error> {
        let conn = self.conn.lock();
        let sql = Sqlite::<K>::sql(&self.path);
        let tx = conn.unchecked_transaction().map_err(&sql)?;
        let (hseq, prev): (i64, Vec<u8>) = tx
            .query_row("SELECT seq, hash FROM head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(&sql)?
            .ok_or_else(|| self.err(ErrorKind::NoRun))?;
        let seq = hseq + 1;
        let at_ms = now_ms();
        let row = K::event_row(&event);
        let hash = K::event_hash(&prev, seq as u64, at_ms, &row);
        let marks: Vec<String> = (1..row.len() + 4).map(|i| format!("?{i}")).collect();
        let text = format!(
            "INSERT INTO events (seq, at_ms, {}, hash) VALUES ({})",
            K::EVENT_COLUMNS.join(", "),
            marks.join(", ")
        );
        let mut args = vec![Value::Integer(seq), Value::Integer(at_ms as i64)];
        args.extend(row);
        args.push(Value::Blob(hash.to_vec()));
        tx.execute(&text, params_from_iter(args)).map_err(&sql)?;
        tx.execute(
            "UPDATE head SET seq = ?1, hash = ?2 WHERE id = 1",
            rusqlite::params![seq, hash.to_vec()],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)?;
        Ok(Record {
            seq: seq as u64,
            at_ms,
            event,
        })
    }

    /// Every event, in order.
    pub fn events(&self) -> Result<Vec<Record<K::Event>>, Error> {
        self.decode(self.select_events(None)?)
    }

    /// The events whose `column` (one of the kind's event columns) holds
    /// `value`, in order.
    pub fn events_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Vec<Record<K::Event>>, Error> {
        if !K::EVENT_COLUMNS.contains(&column) {
            return Err(self.err(ErrorKind::Row(format!("no event column {column:?}"))));
        }
        self.decode(self.select_events(Some((column, value)))?)
    }

    fn decode(&self, rows: Vec<(i64, Value, Row, Value)>) -> Result<Vec<Record<K::Event>>, Error> {
        rows.into_iter()
            .map(|(seq, at_ms, row, _)| {
                let what = |m: String| self.err(ErrorKind::Row(format!("event {seq}: {m}")));
                let Value::Integer(at_ms) = at_ms else {
                    return Err(what("bad at_ms".into()));
                };
                Ok(Record {
                    seq: seq as u64,
                    at_ms: at_ms as u64,
                    event: K::event_from_row(&row).map_err(what)?,
                })
            })
            .collect()
    }
}
