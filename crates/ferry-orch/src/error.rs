//! The orchestrator's errors, in domain words, with what they concern.

use std::path::PathBuf;

/// Why a migration step, a journal or an input was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OrchError {
    /// `migrate.toml` could not be read.
    #[error("{}: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `migrate.toml` is invalid: `file:line:column` of the offending value
    /// (ferry-conf's positions).
    #[error(transparent)]
    Config(#[from] ferry_conf::Invalid),
    /// `plan.json` could not be read or is not a plan this version understands.
    #[error("plan {}: {message}", path.display())]
    Plan { path: PathBuf, message: String },
    /// The plan on disk is not the plan the journal recorded.
    #[error("plan {}: its BLAKE3 digest is {actual}, the journal recorded {recorded}: the plan changed since the run started; refusing to resume", path.display())]
    PlanChanged {
        path: PathBuf,
        recorded: String,
        actual: String,
    },
    /// A `--only` unit id the plan does not have.
    #[error("unit {0:?} is not in the plan")]
    UnknownUnit(String),
    /// The journal file is not a Ferry journal, or is damaged.
    #[error("journal {}: {message}", path.display())]
    Journal { path: PathBuf, message: String },
    /// SQLite failed while reading or writing the journal.
    #[error("journal {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// `run` on a journal that already holds a run.
    #[error("journal {} already holds a run (started {started}); use `ferry migrate resume`", path.display())]
    JournalInUse { path: PathBuf, started: String },
    /// A router's admin API could not be reached or answered with an error.
    #[error("router {router}: {message}")]
    Router {
        router: String,
        message: String,
        /// The router answered 409: a site holds a newer epoch.
        stale: bool,
    },
    /// The replicator failed.
    #[error("copy {job}: {source}")]
    Sync {
        job: String,
        source: ferry_sync::SyncError,
    },
    /// The database mover failed on one of the plan's database servers.
    #[error("database server {server}: {source}")]
    Db {
        server: String,
        source: ferry_db::Error,
    },
    /// A unit cannot be migrated as the plan and config describe it.
    #[error("unit {unit}: {message}")]
    Unit { unit: String, message: String },
    /// A failpoint stopped the runbook in-process (test mode of `kill`).
    #[error("interrupted at failpoint {0}")]
    Interrupted(String),
    /// This runner's lease on the run (etcd) ended and the journal refused
    /// its append: another runner holds the run (or will): it changes nothing more.
    #[error("journal {}: lost the lease to {holder}: this runner stops and changes nothing more", journal.display())]
    LostLease { journal: PathBuf, holder: String },
    /// Local I/O (directories, failpoint files).
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl OrchError {
    /// Bad input given by the user (config, plan, unit ids): exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            OrchError::ConfigRead { .. }
                | OrchError::Config { .. }
                | OrchError::Plan { .. }
                | OrchError::UnknownUnit(_)
        )
    }

    /// Refused: a journal that is not ours, damaged or already used, a plan that changed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            OrchError::Journal { .. }
                | OrchError::JournalInUse { .. }
                | OrchError::PlanChanged { .. }
        )
    }
}

pub type Result<T, E = OrchError> = std::result::Result<T, E>;

impl From<ferry_journal::Error> for OrchError {
    fn from(e: ferry_journal::Error) -> OrchError {
        use ferry_journal::ErrorKind;
        match e.kind {
            ErrorKind::Sqlite(source) => OrchError::Sqlite {
                path: e.path,
                source,
            },
            ErrorKind::LostLease { holder } => OrchError::LostLease {
                journal: e.path,
                holder,
            },
            ErrorKind::RunExists => OrchError::JournalInUse {
                path: e.path,
                started: "earlier".into(),
            },
            kind => OrchError::Journal {
                path: e.path,
                message: kind.to_string(),
            },
        }
    }
}

impl From<ferry_journal::FailpointError> for OrchError {
    fn from(e: ferry_journal::FailpointError) -> OrchError {
        match e {
            ferry_journal::FailpointError::Interrupted(name) => OrchError::Interrupted(name),
            ferry_journal::FailpointError::Pause { name, file, source } => OrchError::Io {
                what: format!("failpoint {name}: cannot create {}", file.display()),
                source,
            },
        }
    }
}

impl From<ferry_journal::StepError> for OrchError {
    fn from(e: ferry_journal::StepError) -> OrchError {
        match e {
            ferry_journal::StepError::Journal(e) => e.into(),
            ferry_journal::StepError::Failpoint(e) => e.into(),
        }
    }
}
