//! The mover's errors: what failed, on which side, in domain words.

use std::path::PathBuf;
use std::time::Duration;

/// Which server an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// One thing in the way of a move, and how to clear it (found by
/// [`crate::Mover::prepare`], refused in [`Error::Preconditions`] or
/// reported as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub side: Side,
    /// The server's address as given.
    pub addr: String,
    pub what: String,
    /// The setting or statement to change.
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}; fix: {}",
            self.side, self.addr, self.what, self.fix
        )
    }
}

/// Everything the mover can fail with. Variants that come before any change
/// (`InvalidUrl`, `Connect`, `AccessDenied`, `DatabaseMissing`,
/// `DatabaseExists`, `AccountConflict`, `Preconditions`) are raised by
/// [`crate::Mover::prepare`], which changes nothing on either side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {side} URL: {message}")]
    InvalidUrl { side: Side, message: String },
    // The driver's error is in the message, not a `source`: its own chain
    // repeats the server's text, and a printed chain would show it thrice.
    #[error("cannot connect to the {side} server {addr}: {error}")]
    Connect {
        side: Side,
        addr: String,
        error: mysql_async::Error,
    },
    #[error("the {side} server {addr} refused the login of {user:?}: {message}")]
    AccessDenied {
        side: Side,
        addr: String,
        user: String,
        message: String,
    },
    #[error("database {db:?} does not exist at the source {addr}")]
    DatabaseMissing { db: String, addr: String },
    #[error("database {db:?} already exists at the destination {addr}")]
    DatabaseExists { db: String, addr: String },
    #[error(
        "account {account} already exists at the destination with other credentials or options"
    )]
    AccountConflict { account: String },
    #[error("the move cannot start (nothing was changed):{}", list(.problems))]
    Preconditions { problems: Vec<Problem> },
    #[error("the source {addr} cannot feed a catch-up: {reason}")]
    NotReplicable { addr: String, reason: String },
    #[error("{side} server, {what}: {error}")]
    Sql {
        side: Side,
        what: String,
        error: mysql_async::Error,
    },
    #[error("replication connection {connection:?} at the destination stopped: {message}")]
    Replication { connection: String, message: String },
    #[error("the destination did not apply {position} within {waited:?}")]
    WaitTimeout { position: String, waited: Duration },
    #[error(
        "sessions of the frozen accounts were still running {waited:?} after KILL: ids {ids:?}"
    )]
    SessionsSurvived { ids: Vec<u64>, waited: Duration },
    #[error(
        "state file {path} belongs to another move ({}); give this move its own state file, or remove that one if its move is over",
        .differences.join("; ")
    )]
    StateMismatch {
        path: PathBuf,
        differences: Vec<String>,
    },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{step} is not possible at phase {phase}")]
    Phase { step: &'static str, phase: String },
    #[error("table {db}.{table}: {message}")]
    Table {
        db: String,
        table: String,
        message: String,
    },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a side and a description to a driver error; a refused login
/// becomes [`Error::AccessDenied`] so the caller can tell "wrong password" from
/// "server down".
pub(crate) trait SqlContext<T> {
    fn ctx(self, side: Side, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SqlContext<T> for std::result::Result<T, mysql_async::Error> {
    fn ctx(self, side: Side, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error::Sql {
            side,
            what: what(),
            error,
        })
    }
}
