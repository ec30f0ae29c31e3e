//! [`Journal`]: one run's journal, in whichever backend holds it.
//!
//! - A SQLite file on the runner's disk (`sqlite.rs`, the default): three
//!   tables, WAL + `synchronous=FULL`, `<journal>.lock` flock-ed by the one
//!   process that may write.
//! - etcd keys under `P/runs/<id>/` (`etcd.rs`, cargo feature `etcd`): the
//!   same rows, appended by transactions that compare the run's lease
//!   (`lease.rs`), so a runner on another machine can take the run over and
//!   a paused one can append nothing after it.
//!
//! Both answer the same calls with the same errors, and both check the same
//! hash chain with the same code ([`crate::kind`]): what a runbook journals
//! and what a damaged journal is called do not depend on where it is kept.

use std::path::Path;

use crate::error::Error;
use crate::kind::{Kind, Record};
use crate::sqlite::Sqlite;

/// Is a live process holding the writer's lock of the SQLite journal at `path`?
pub fn running(path: &Path) -> bool {
    crate::sqlite::running(path)
}

enum Backend<K: Kind> {
    Sqlite(Sqlite<K>),
    #[cfg(feature = "etcd")]
    Etcd(crate::etcd::EtcdJournal<K>),
}

/// An open journal of kind `K`.
pub struct Journal<K: Kind>(Backend<K>);

/// Calls the same method on whichever backend holds the journal.
macro_rules! each {
    ($self:ident, $j:ident => $e:expr) => {
        match &$self.0 {
            Backend::Sqlite($j) => $e,
            #[cfg(feature = "etcd")]
            Backend::Etcd($j) => $e,
        }
    };
}

impl<K: Kind> Journal<K> {
    /// Creates a new SQLite journal at `path` (refused if a file is there),
    /// locked for writing; with `run`, the run row is written in the same
    /// transaction as the schema.
    pub fn create(path: &Path, run: Option<&K::Run>) -> Result<Journal<K>, Error> {
        Sqlite::create(path, run).map(|j| Journal(Backend::Sqlite(j)))
    }

    /// Opens an existing SQLite journal for writing after checking it whole
    /// (read-only first: a file that is not ours or is damaged is refused
    /// unchanged), then takes the writer's lock.
    pub fn open(path: &Path) -> Result<Journal<K>, Error> {
        Sqlite::open(path).map(|j| Journal(Backend::Sqlite(j)))
    }

    /// Opens an existing SQLite journal for reading only (a status, while a
    /// run may be writing it), after checking it whole.
    pub fn open_read_only(path: &Path) -> Result<Journal<K>, Error> {
        Sqlite::open_read_only(path).map(|j| Journal(Backend::Sqlite(j)))
    }

    /// A new journal for run `run_id` in etcd (refused if one is there),
    /// written under `fence` (the run's lease, taken first); with `run`, the
    /// run row in the same transaction.
    #[cfg(feature = "etcd")]
    pub fn create_etcd(
        store: std::sync::Arc<ferry_store::EtcdStore>,
        run_id: &str,
        fence: crate::lease::Fence,
        run: Option<&K::Run>,
    ) -> Result<Journal<K>, Error> {
        crate::etcd::EtcdJournal::create(store, run_id, fence, run)
            .map(|j| Journal(Backend::Etcd(j)))
    }

    /// Opens run `run_id`'s journal in etcd for writing under `fence`, after
    /// checking it whole.
    #[cfg(feature = "etcd")]
    pub fn open_etcd(
        store: std::sync::Arc<ferry_store::EtcdStore>,
        run_id: &str,
        fence: crate::lease::Fence,
    ) -> Result<Journal<K>, Error> {
        crate::etcd::EtcdJournal::open(store, run_id, fence).map(|j| Journal(Backend::Etcd(j)))
    }

    /// Opens run `run_id`'s journal in etcd for reading only, after checking
    /// it whole.
    #[cfg(feature = "etcd")]
    pub fn open_etcd_read_only(
        store: std::sync::Arc<ferry_store::EtcdStore>,
        run_id: &str,
    ) -> Result<Journal<K>, Error> {
        crate::etcd::EtcdJournal::open_read_only(store, run_id).map(|j| Journal(Backend::Etcd(j)))
    }

    /// Errs ([`crate::ErrorKind::LostLease`]) when this writer's lease may
    /// have ended, before acting on anything the journal does not guard; a
    /// SQLite journal (its flock lasts as long as the process) is always fine.
    pub fn check_fence(&self) -> Result<(), Error> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(()),
            #[cfg(feature = "etcd")]
            Backend::Etcd(j) => j.check_fence(),
        }
    }

    /// Where the journal is: the file, or `etcd:P/runs/<id>`.
    pub fn path(&self) -> &Path {
        each!(self, j => j.path())
    }

    /// This handle may write: it holds the file's lock, or the run's lease.
    pub fn is_writer(&self) -> bool {
        each!(self, j => j.is_writer())
    }

    /// A run is going on: this handle or another live process holds the
    /// lock (for etcd: the run's lease is held by someone).
    pub fn running(&self) -> bool {
        each!(self, j => j.running())
    }

    /// Records the run. Only once per journal.
    pub fn start_run(&self, run: &K::Run) -> Result<(), Error> {
        each!(self, j => j.start_run(run))
    }

    /// The run, None before it was recorded.
    pub fn run(&self) -> Result<Option<K::Run>, Error> {
        each!(self, j => j.run())
    }

    /// Checks the chain: run row, every event in sequence, the head.
    pub fn verify(&self) -> Result<(), Error> {
        each!(self, j => j.verify())
    }

    /// Appends an event, hash-chained, committed durably before this returns
    /// (in etcd: only while this runner still holds the run's lease).
    pub fn append(&self, event: K::Event) -> Result<Record<K::Event>, Error> {
        each!(self, j => j.append(event))
    }

    /// Every event, in order.
    pub fn events(&self) -> Result<Vec<Record<K::Event>>, Error> {
        each!(self, j => j.events())
    }

    /// The events whose `column` (one of the kind's event columns) holds
    /// `value`, in order.
    pub fn events_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Vec<Record<K::Event>>, Error> {
        each!(self, j => j.events_where(column, value))
    }
}
