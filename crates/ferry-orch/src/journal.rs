//! The migration journal: one [`ferry_journal`] file per `ferry migrate` run.
//!
//! Its own [`Kind`] (`Migration`, `application_id` "FRYJ", `user_version` 1):
//! - `run`: one row of meta (the config text and path, the plan path and the
//!   BLAKE3 digest of its bytes, source and destination, start time, the
//!   selected units with what the status page shows of them).
//! - `events`: one row per step boundary (`begin` before a step acts, `end`
//!   after) and per note (a session start, a change a router still owes, an
//!   abandon under way, a rollback).
//!
//! The hash chain, the checks at open (a file that is not ours or is
//! damaged is refused unchanged, naming the row), WAL + `synchronous=FULL`
//! and the writer's lock are ferry-journal's; the row hashes below are this
//! format's (version 1; `tests/fixtures/journal-v1.db` holds them). With
//! `[store] backend = "etcd"` the same rows and chain live in etcd under the
//! run's lease ([`JournalAt::Etcd`], `lease.rs`). What an
//! event records is typed in [`crate::event`]; the status is a pure fold of
//! the events ([`fold`], in `fold.rs`).

use std::path::{Path, PathBuf};

use ferry_journal::cell::{int, opt_text, text};
use ferry_journal::{Chain, Failpoints, Kind, Steps};
use rusqlite::types::Value;

use crate::error::{OrchError, Result};
use crate::status::{Direction, MigrationStatus, Outcome, Step};

pub use crate::event::{
    detail_line, Detail, EventRecord, NewEvent, Note, Paid, Phase, RunMeta, StepDetail, UnitMeta,
};
pub use crate::fold::fold;

pub use ferry_journal::now_ms;

/// `PRAGMA user_version` of the schema this code writes.
pub const SCHEMA_VERSION: i64 = 1;

/// The migration journal's format.
pub struct Migration;

impl Kind for Migration {
    /// "FRYJ".
    const APPLICATION_ID: i64 = 0x4652_594A;
    const SCHEMA_VERSION: i64 = SCHEMA_VERSION;
    const WHAT: &'static str = "Ferry journal";
    const COMMAND: &'static str = "ferry migrate";
    const SCHEMA: &'static str = "
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
    const RUN_COLUMNS: &'static [&'static str] = &[
        "config_text",
        "config_path",
        "plan_path",
        "plan_digest",
        "source",
        "destination",
        "started_at_ms",
        "units",
    ];
    const EVENT_COLUMNS: &'static [&'static str] = &[
        "unit",
        "step",
        "phase",
        "attempt",
        "direction",
        "epoch",
        "outcome",
        "detail",
    ];
    type Run = RunMeta;
    type Event = NewEvent;

    fn run_row(m: &RunMeta) -> std::result::Result<Vec<Value>, String> {
        let units = serde_json::to_string(&m.units).map_err(|e| e.to_string())?;
        Ok(vec![
            Value::Text(m.config_text.clone()),
            Value::Text(m.config_path.to_string_lossy().into_owned()),
            Value::Text(m.plan_path.to_string_lossy().into_owned()),
            Value::Text(m.plan_digest.clone()),
            Value::Text(m.source.clone()),
            Value::Text(m.destination.clone()),
            Value::Integer(m.started_at_ms as i64),
            Value::Text(units),
        ])
    }

    fn run_from_row(r: &[Value]) -> std::result::Result<RunMeta, String> {
        let t = |i: usize, what: &str| text(&r[i]).ok_or(format!("bad {what}"));
        let units: Vec<UnitMeta> =
            serde_json::from_str(t(7, "units")?).map_err(|e| format!("units: {e}"))?;
        Ok(RunMeta {
            config_text: t(0, "config_text")?.to_string(),
            config_path: PathBuf::from(t(1, "config_path")?),
            plan_path: PathBuf::from(t(2, "plan_path")?),
            plan_digest: t(3, "plan_digest")?.to_string(),
            source: t(4, "source")?.to_string(),
            destination: t(5, "destination")?.to_string(),
            started_at_ms: int(&r[6]).ok_or("bad started_at_ms")? as u64,
            units,
        })
    }

    fn run_hash(r: &[Value]) -> [u8; 32] {
        Chain::labelled("ferry-journal run v1")
            .text(&r[0])
            .text(&r[1])
            .text(&r[2])
            .text(&r[3])
            .text(&r[4])
            .text(&r[5])
            .int(&r[6])
            .text(&r[7])
            .done()
    }

    fn event_row(e: &NewEvent) -> Vec<Value> {
        let opt = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_string()));
        vec![
            Value::Text(e.unit.clone()),
            opt(e.step.map(Step::as_str)),
            Value::Text(e.phase.as_str().to_string()),
            Value::Integer(i64::from(e.attempt)),
            Value::Text(e.direction.as_str().to_string()),
            e.epoch.map_or(Value::Null, |x| Value::Integer(x as i64)),
            opt(e.outcome.map(Outcome::as_str)),
            Value::Text(e.detail.to_json().to_string()),
        ]
    }

    fn event_from_row(r: &[Value]) -> std::result::Result<NewEvent, String> {
        let bad = |f: &str| format!("bad {f}");
        Ok(NewEvent {
            unit: text(&r[0]).ok_or_else(|| bad("unit"))?.to_string(),
            step: match opt_text(&r[1]).ok_or_else(|| bad("step"))? {
                None => None,
                Some(s) => Some(Step::parse(s).ok_or_else(|| bad("step"))?),
            },
            phase: text(&r[2])
                .and_then(Phase::parse)
                .ok_or_else(|| bad("phase"))?,
            attempt: int(&r[3])
                .and_then(|a| u32::try_from(a).ok())
                .ok_or_else(|| bad("attempt"))?,
            direction: text(&r[4])
                .and_then(Direction::parse)
                .ok_or_else(|| bad("direction"))?,
            epoch: match &r[5] {
                Value::Null => None,
                v => Some(int(v).ok_or_else(|| bad("epoch"))? as u64),
            },
            outcome: match opt_text(&r[6]).ok_or_else(|| bad("outcome"))? {
                None => None,
                Some(o) => Some(Outcome::parse(o).ok_or_else(|| bad("outcome"))?),
            },
            detail: serde_json::from_str(text(&r[7]).ok_or_else(|| bad("detail"))?)
                .map_err(|e| format!("bad detail: {e}"))?,
        })
    }

    fn event_hash(prev: &[u8], seq: u64, at_ms: u64, r: &[Value]) -> [u8; 32] {
        Chain::labelled("ferry-journal event v1")
            .bytes(prev)
            .num(seq)
            .num(at_ms)
            .text(&r[0])
            .opt_text(&r[1])
            .text(&r[2])
            .int(&r[3])
            .text(&r[4])
            .opt_int_text(&r[5])
            .opt_text(&r[6])
            .text(&r[7])
            .done()
    }
}

/// Where a run's journal is: a SQLite file (`--journal`), or etcd
/// (`[store] backend = "etcd"`: [`crate::lease::EtcdRun`], with the run's
/// lease when this process is its runner).
#[derive(Clone)]
pub enum JournalAt {
    File(PathBuf),
    #[cfg(feature = "etcd")]
    Etcd(crate::lease::EtcdRun),
}

impl From<&Path> for JournalAt {
    fn from(p: &Path) -> JournalAt {
        JournalAt::File(p.to_path_buf())
    }
}

impl From<&PathBuf> for JournalAt {
    fn from(p: &PathBuf) -> JournalAt {
        JournalAt::File(p.clone())
    }
}

impl From<PathBuf> for JournalAt {
    fn from(p: PathBuf) -> JournalAt {
        JournalAt::File(p)
    }
}

#[cfg(feature = "etcd")]
impl From<crate::lease::EtcdRun> for JournalAt {
    fn from(r: crate::lease::EtcdRun) -> JournalAt {
        JournalAt::Etcd(r)
    }
}

/// An open journal. Shared between the runbook and the tracking server.
pub struct Journal {
    inner: ferry_journal::Journal<Migration>,
    /// The run's lease (etcd), kept alive as long as the journal is open.
    #[cfg(feature = "etcd")]
    _lease: Option<std::sync::Arc<ferry_journal::lease::RunLease>>,
    /// The etcd cluster the run lives in: its routers acknowledge freezes
    /// there too (`runbook/fleet_acks.rs`).
    #[cfg(feature = "etcd")]
    etcd: Option<std::sync::Arc<ferry_store::EtcdStore>>,
}

impl Journal {
    fn wrap(inner: ferry_journal::Journal<Migration>) -> Journal {
        Journal {
            inner,
            #[cfg(feature = "etcd")]
            _lease: None,
            #[cfg(feature = "etcd")]
            etcd: None,
        }
    }

    /// The etcd cluster of a run kept in etcd (`None` for a SQLite journal).
    #[cfg(feature = "etcd")]
    pub(crate) fn etcd_store(&self) -> Option<std::sync::Arc<ferry_store::EtcdStore>> {
        self.etcd.clone()
    }

    /// An etcd run's journal, opened (or created) with `f` under its lease.
    #[cfg(feature = "etcd")]
    fn etcd(
        r: crate::lease::EtcdRun,
        f: impl FnOnce(
            std::sync::Arc<ferry_store::EtcdStore>,
            &str,
            Option<ferry_journal::lease::Fence>,
        )
            -> std::result::Result<ferry_journal::Journal<Migration>, ferry_journal::Error>,
    ) -> Result<Journal> {
        let fence = r.lease.as_ref().map(|l| l.fence());
        Ok(Journal {
            inner: f(r.store.clone(), &r.run, fence)?,
            _lease: r.lease,
            etcd: Some(r.store),
        })
    }

    /// Opens an existing journal for writing after checking it whole
    /// (read-only first: a file that is not ours or is damaged is refused
    /// unchanged). In etcd, under the run's lease (taken by the caller).
    pub fn open(at: impl Into<JournalAt>) -> Result<Journal> {
        match at.into() {
            JournalAt::File(p) => Ok(Journal::wrap(ferry_journal::Journal::open(&p)?)),
            #[cfg(feature = "etcd")]
            JournalAt::Etcd(r) => Journal::etcd(r, |store, run, fence| match fence {
                Some(f) => ferry_journal::Journal::open_etcd(store, run, f),
                None => ferry_journal::Journal::open_etcd_read_only(store, run),
            }),
        }
    }

    /// Opens an existing journal for reading only (`ferry migrate status`,
    /// while a run may be writing it), after checking it whole.
    pub fn open_read_only(at: impl Into<JournalAt>) -> Result<Journal> {
        match at.into() {
            JournalAt::File(p) => Ok(Journal::wrap(ferry_journal::Journal::open_read_only(&p)?)),
            #[cfg(feature = "etcd")]
            JournalAt::Etcd(r) => Journal::etcd(r, |store, run, _| {
                ferry_journal::Journal::open_etcd_read_only(store, run)
            }),
        }
    }

    /// Opens the journal at `at` for a new run: creates it if missing; an
    /// existing one must be a valid journal with no run yet.
    pub fn create(at: impl Into<JournalAt>) -> Result<Journal> {
        // One arm in a build without etcd.
        #[allow(clippy::infallible_destructuring_match)]
        let path = match at.into() {
            JournalAt::File(p) => p,
            #[cfg(feature = "etcd")]
            JournalAt::Etcd(r) => {
                let j = Journal::etcd(r, |store, run, fence| {
                    let Some(fence) = fence else {
                        return Err(ferry_journal::Error {
                            path: format!("etcd:runs/{run}").into(),
                            kind: ferry_journal::ErrorKind::Etcd(
                                "a run is started only under its lease".into(),
                            ),
                        });
                    };
                    match ferry_journal::Journal::create_etcd(
                        store.clone(),
                        run,
                        fence.clone(),
                        None,
                    ) {
                        Err(e) if matches!(e.kind, ferry_journal::ErrorKind::Exists) => {
                            ferry_journal::Journal::open_etcd(store, run, fence)
                        }
                        other => other,
                    }
                })?;
                if let Some(m) = j.meta()? {
                    return Err(OrchError::JournalInUse {
                        path: j.path().to_path_buf(),
                        started: format!("{} ms since the epoch", m.started_at_ms),
                    });
                }
                return Ok(j);
            }
        };
        let path = path.as_path();
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
        Ok(Journal::wrap(ferry_journal::Journal::create(path, None)?))
    }

    /// Errs with [`OrchError::LostLease`] when this runner's lease (etcd)
    /// may have ended: before acting on anything the journal does not guard.
    pub fn check_fence(&self) -> Result<()> {
        Ok(self.inner.check_fence()?)
    }

    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// Records the run. Only once per journal.
    pub fn start_run(&self, m: &RunMeta) -> Result<()> {
        Ok(self.inner.start_run(m)?)
    }

    /// The run meta, None before `start_run`.
    pub fn meta(&self) -> Result<Option<RunMeta>> {
        Ok(self.inner.run()?)
    }

    /// Checks the chain: run row, every event in sequence, the head.
    pub fn verify(&self) -> Result<()> {
        Ok(self.inner.verify()?)
    }

    /// Appends an event (hash-chained; committed durably before this returns).
    pub fn append(&self, ev: NewEvent) -> Result<EventRecord> {
        Ok(self.inner.append(ev)?)
    }

    /// Every event, in order.
    pub fn events(&self) -> Result<Vec<EventRecord>> {
        Ok(self.inner.events()?)
    }

    /// The events of one unit, in order.
    pub fn unit_events(&self, unit: &str) -> Result<Vec<EventRecord>> {
        Ok(self.inner.events_where("unit", unit)?)
    }

    /// The migration as the events tell it; None before a run was recorded.
    pub fn status(&self) -> Result<Option<MigrationStatus>> {
        let Some(meta) = self.meta()? else {
            return Ok(None);
        };
        let events = self.events()?;
        Ok(Some(fold(&meta, &events, self.inner.running())))
    }

    /// The step runner of this journal.
    pub(crate) fn steps<'a>(&'a self, failpoints: &'a Failpoints) -> Steps<'a, Migration> {
        Steps::new(&self.inner, failpoints)
    }
}
