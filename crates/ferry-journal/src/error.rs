//! The journal's errors: which file (or etcd run), and what about it.

use std::path::PathBuf;

/// A journal that could not be opened, checked, read or written.
#[derive(Debug, thiserror::Error)]
#[error("journal {}: {kind}", path.display())]
pub struct Error {
    pub path: PathBuf,
    pub kind: ErrorKind,
}

/// What went wrong with a journal file.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("no such journal file")]
    Missing,
    /// `create` on a path where a file already is.
    #[error("already exists")]
    Exists,
    /// Not SQLite, or another application's SQLite file.
    #[error("not a {what} ({detail})")]
    NotOurs { what: &'static str, detail: String },
    #[error("journal schema version {found}; this ferry reads version {expected}")]
    Version { found: i64, expected: i64 },
    /// A row does not match its hash, rows are missing, a table is gone.
    #[error("damaged: {0}")]
    Damaged(String),
    /// Another process holds the writer's lock.
    #[error("another `{command}` process is using this journal (it holds the lock); wait for it or stop it")]
    Locked { command: &'static str },
    #[error("cannot lock {}: {source}", lock.display())]
    LockFile {
        lock: PathBuf,
        source: std::io::Error,
    },
    /// `start_run` on a journal that holds a run.
    #[error("already holds a run")]
    RunExists,
    /// An append before the run was recorded.
    #[error("no run recorded")]
    NoRun,
    /// A row the runbook's [`crate::Kind`] could not encode or decode.
    #[error("{0}")]
    Row(String),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A run id that cannot name etcd keys (`P/runs/<id>/`).
    #[error("run id {id:?}: {why}")]
    BadRunId { id: String, why: &'static str },
    /// Another runner holds the run's lease (etcd).
    #[error("run {run} is held by {holder}, who took it {since} (lease TTL {ttl_s} s): another runner is acting on it; wait until it ends, or until its lease expires if it is dead")]
    Held {
        run: String,
        holder: String,
        since: String,
        ttl_s: i64,
    },
    /// This runner's lease ended and another runner (or none yet) holds the
    /// run: it may change nothing more (etcd).
    #[error("lost the lease to {holder}: this runner changes nothing more")]
    LostLease { holder: String },
    /// etcd could not be asked or answered an error.
    #[error("etcd: {0}")]
    Etcd(String),
}
