//! The journal's errors: which file, and what about it.

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
}
