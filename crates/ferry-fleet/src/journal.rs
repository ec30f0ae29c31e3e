//! The update journal: one [`ferry_journal`] file per `ferry update` run.
//!
//! Its own [`Kind`] (`Update`, `application_id` "FRYU", `user_version` 1):
//! an update is one list of steps, not a migration's units and waves.
//! - `run`: one row, [`RunMeta`] as JSON (level, primary, runbook and
//!   fleet paths with the BLAKE3 digests of their bytes, start time);
//! - `events`: `begin` before a step acts (with what it will send: the
//!   router states it recorded, the epochs it will use), `end` after (a
//!   typed [`Outcome`], with data).
//!
//! The chain, the checks at open, durability and the writer's lock are
//! ferry-journal's; the hashes below are this format's (version 1, the
//! fixture `tests/fixtures/update-journal-v1.db` holds them).

use std::path::{Path, PathBuf};

use ferry_journal::cell::{int, opt_text, text};
use ferry_journal::{
    Chain, ErrorKind, FailpointError, Failpoints, Kind, Outcome, StepError, Steps,
};
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use crate::error::{FleetError, Result};

pub use ferry_journal::now_ms;

/// The update journal's format.
pub struct Update;

/// "FRYU".
const APPLICATION_ID: i64 = 0x4652_5955;

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

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Begin => "begin",
            Phase::End => "end",
        }
    }
}

/// One row to journal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// The step's position in the plan.
    pub idx: usize,
    pub step: String,
    pub phase: Phase,
    /// End rows: how the step ended.
    pub outcome: Option<Outcome>,
    pub data: serde_json::Value,
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
    /// End rows: how the step ended.
    pub outcome: Option<Outcome>,
    pub data: serde_json::Value,
}

impl Kind for Update {
    const APPLICATION_ID: i64 = APPLICATION_ID;
    const SCHEMA_VERSION: i64 = 1;
    const WHAT: &'static str = "ferry update journal";
    const COMMAND: &'static str = "ferry update";
    const SCHEMA: &'static str = "
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
    const RUN_COLUMNS: &'static [&'static str] = &["meta"];
    const EVENT_COLUMNS: &'static [&'static str] = &["idx", "step", "phase", "outcome", "data"];
    type Run = RunMeta;
    type Event = Entry;

    fn run_row(run: &RunMeta) -> std::result::Result<Vec<Value>, String> {
        let meta = serde_json::to_string(run).map_err(|e| e.to_string())?;
        Ok(vec![Value::Text(meta)])
    }

    fn run_from_row(row: &[Value]) -> std::result::Result<RunMeta, String> {
        serde_json::from_str(text(&row[0]).ok_or("meta is not text")?).map_err(|e| e.to_string())
    }

    fn run_hash(row: &[Value]) -> [u8; 32] {
        Chain::new()
            .raw(b"ferry-update-journal v1")
            .text(&row[0])
            .done()
    }

    fn event_row(e: &Entry) -> Vec<Value> {
        vec![
            Value::Integer(e.idx as i64),
            Value::Text(e.step.clone()),
            Value::Text(e.phase.as_str().into()),
            e.outcome
                .map_or(Value::Null, |o| Value::Text(o.as_str().into())),
            Value::Text(e.data.to_string()),
        ]
    }

    fn event_from_row(row: &[Value]) -> std::result::Result<Entry, String> {
        let idx = int(&row[0]).ok_or("bad idx")?;
        Ok(Entry {
            idx: usize::try_from(idx).map_err(|_| "bad idx")?,
            step: text(&row[1]).ok_or("bad step")?.to_string(),
            phase: match text(&row[2]) {
                Some("begin") => Phase::Begin,
                Some("end") => Phase::End,
                p => return Err(format!("unknown phase {p:?}")),
            },
            outcome: match opt_text(&row[3]).ok_or("bad outcome")? {
                None => None,
                Some(o) => Some(Outcome::parse(o).ok_or("bad outcome")?),
            },
            data: serde_json::from_str(text(&row[4]).ok_or("bad data")?)
                .map_err(|e| format!("data: {e}"))?,
        })
    }

    /// Version 1: the previous hash raw, then every field length-prefixed
    /// (numbers as 8 little-endian bytes, no outcome as empty text).
    fn event_hash(prev: &[u8], seq: u64, at_ms: u64, row: &[Value]) -> [u8; 32] {
        Chain::new()
            .raw(prev)
            .bytes(&seq.to_le_bytes())
            .bytes(&at_ms.to_le_bytes())
            .int_bytes(&row[0])
            .text(&row[1])
            .text(&row[2])
            .text_or_empty(&row[3])
            .text(&row[4])
            .done()
    }
}

impl From<ferry_journal::Error> for FleetError {
    fn from(e: ferry_journal::Error) -> FleetError {
        let message = match e.kind {
            ErrorKind::LostLease { holder } => return FleetError::LostLease { holder },
            kind @ ErrorKind::Held { .. } => return FleetError::Held(kind.to_string()),
            ErrorKind::Exists => {
                "already exists: `ferry update resume` continues it, or choose another --journal"
                    .to_string()
            }
            kind => kind.to_string(),
        };
        FleetError::Journal {
            path: e.path,
            message,
        }
    }
}

impl From<StepError> for FleetError {
    fn from(e: StepError) -> FleetError {
        match e {
            StepError::Journal(e) => e.into(),
            StepError::Failpoint(FailpointError::Interrupted(name)) => {
                FleetError::Interrupted(name)
            }
            StepError::Failpoint(FailpointError::Pause { file, source, .. }) => {
                FleetError::io("create failpoint pause file", file, source)
            }
        }
    }
}

/// An open update journal, and (in etcd, for the runner) the run's lease,
/// kept alive as long as the journal is open.
pub struct Journal(
    ferry_journal::Journal<Update>,
    // Held, never read: dropping it ends the lease's keep-alive.
    #[allow(dead_code)] Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
);

/// An update kept in etcd (`ferry update --control etcd`, cargo feature
/// `etcd`): under `P/runs/<run>/`, the same rows and chain as the file, every
/// append guarded by the run's lease (docs/control-plane.md, "The
/// orchestrator's lease and journal in etcd"): a runner that was paused past
/// its lease while another took the update over can append nothing, so it
/// can begin no step.
#[cfg(feature = "etcd")]
pub struct EtcdRun {
    store: std::sync::Arc<ferry_store::EtcdStore>,
    run: String,
    lease: Option<std::sync::Arc<ferry_journal::lease::RunLease>>,
}

#[cfg(feature = "etcd")]
impl EtcdRun {
    /// Run `run` of the cluster `store` is connected to, read only (`ferry
    /// update status`) until [`EtcdRun::take`]. The caller connects (with
    /// the user and TLS files of its settings, and its own words for a
    /// refusal).
    pub fn read_only(store: std::sync::Arc<ferry_store::EtcdStore>, run: &str) -> EtcdRun {
        EtcdRun {
            store,
            run: run.to_string(),
            lease: None,
        }
    }

    /// Takes the run's lease for `holder` (refused while another runner's
    /// lease lives, naming it).
    pub fn take(mut self, holder: &str, ttl: std::time::Duration) -> Result<EtcdRun> {
        let lease =
            ferry_journal::lease::RunLease::acquire(self.store.clone(), &self.run, holder, ttl)?;
        self.lease = Some(std::sync::Arc::new(lease));
        Ok(self)
    }

    fn fence(&self) -> Result<ferry_journal::lease::Fence> {
        self.lease
            .as_ref()
            .map(|l| l.fence())
            .ok_or_else(|| FleetError::Journal {
                path: format!("etcd:runs/{}", self.run).into(),
                message: "an update is written only under its lease".into(),
            })
    }

    fn guard(&self) -> Option<std::sync::Arc<dyn std::any::Any + Send + Sync>> {
        self.lease
            .clone()
            .map(|l| l as std::sync::Arc<dyn std::any::Any + Send + Sync>)
    }
}

#[cfg(feature = "etcd")]
impl Journal {
    /// A new update in etcd, under the lease `at` holds.
    pub fn create_etcd(at: &EtcdRun, meta: &RunMeta) -> Result<Journal> {
        let j = ferry_journal::Journal::create_etcd(
            at.store.clone(),
            &at.run,
            at.fence()?,
            Some(meta),
        )?;
        Ok(Journal(j, at.guard()))
    }

    /// An update in etcd, to resume under the lease `at` holds.
    pub fn open_etcd(at: &EtcdRun) -> Result<Journal> {
        let j = ferry_journal::Journal::open_etcd(at.store.clone(), &at.run, at.fence()?)?;
        Ok(Journal(j, at.guard()))
    }

    /// An update in etcd, read only (status).
    pub fn open_etcd_read_only(at: &EtcdRun) -> Result<Journal> {
        let j = ferry_journal::Journal::open_etcd_read_only(at.store.clone(), &at.run)?;
        Ok(Journal(j, None))
    }
}

impl Journal {
    /// Whether a process holds the journal (a run is alive).
    pub fn running(path: &Path) -> bool {
        ferry_journal::running(path)
    }

    /// Creates a new journal with its run; an existing file is refused.
    pub fn create(path: &Path, meta: &RunMeta) -> Result<Journal> {
        Ok(Journal(
            ferry_journal::Journal::create(path, Some(meta))?,
            None,
        ))
    }

    /// Opens for writing (resume): checked, locked.
    pub fn open(path: &Path) -> Result<Journal> {
        Ok(Journal(ferry_journal::Journal::open(path)?, None))
    }

    /// Opens for reading (status), checked, not locked.
    pub fn open_read_only(path: &Path) -> Result<Journal> {
        Ok(Journal(ferry_journal::Journal::open_read_only(path)?, None))
    }

    pub fn meta(&self) -> Result<RunMeta> {
        self.0.run()?.ok_or_else(|| FleetError::Journal {
            path: self.0.path().to_path_buf(),
            message: "holds no run".into(),
        })
    }

    pub fn events(&self) -> Result<Vec<Event>> {
        Ok(self
            .0
            .events()?
            .into_iter()
            .map(|r| Event {
                seq: r.seq,
                at_ms: r.at_ms,
                idx: r.event.idx,
                step: r.event.step,
                phase: r.event.phase,
                outcome: r.event.outcome,
                data: r.event.data,
            })
            .collect())
    }

    /// Appends one row as stored: `outcome` is the stored word (`ok`,
    /// `failed`), refused if it is none. The runbook writes through
    /// [`Journal::steps`]; this is for tools and tests.
    pub fn append(
        &self,
        idx: usize,
        step: &str,
        phase: Phase,
        outcome: Option<&str>,
        data: serde_json::Value,
    ) -> Result<()> {
        let outcome = match outcome {
            None => None,
            Some(o) => Some(Outcome::parse(o).ok_or_else(|| FleetError::Journal {
                path: self.0.path().to_path_buf(),
                message: format!("unknown outcome {o:?}"),
            })?),
        };
        self.0.append(Entry {
            idx,
            step: step.to_string(),
            phase,
            outcome,
            data,
        })?;
        Ok(())
    }

    /// The step runner of this journal.
    pub(crate) fn steps<'a>(&'a self, failpoints: &'a Failpoints) -> Steps<'a, Update> {
        Steps::new(&self.0, failpoints)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rusqlite::Connection;

    pub(crate) fn meta() -> RunMeta {
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
        assert!(j
            .append(0, "record", Phase::End, Some("fine"), serde_json::json!({}))
            .is_err());
        assert!(Journal::running(&p));
        let e = Journal::open(&p).err().unwrap().to_string();
        assert!(e.contains("another `ferry update`"), "{e}");
        drop(j);
        assert!(!Journal::running(&p));
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.meta().unwrap(), meta());
        let ev = j.events().unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].data["r1"]["s1"], "ready");
        assert_eq!(ev[1].outcome, Some(Outcome::Ok));
        let e = Journal::create(&p, &meta()).err().unwrap().to_string();
        assert!(e.contains("already exists"), "{e}");
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
        assert!(e.contains("event 2 does not match its hash"), "{e}");
        let c = Connection::open(&p).unwrap();
        c.execute("DELETE FROM events WHERE seq >= 2", []).unwrap();
        drop(c);
        let e = Journal::open_read_only(&p).err().unwrap().to_string();
        assert!(e.contains("its head says 3"), "{e}");
        let c = Connection::open(&p).unwrap();
        c.execute_batch("PRAGMA application_id = 7").unwrap();
        drop(c);
        let e = Journal::open_read_only(&p).err().unwrap().to_string();
        assert!(e.contains("not a ferry update journal"), "{e}");
    }
}
