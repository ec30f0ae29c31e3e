//! The error type of the replicator.

use std::path::PathBuf;

/// Why a replication step failed. Variants name the path or peer involved so an
/// operator can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A local file system operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A relative path in a request or manifest is not safe to use (`..`, absolute,
    /// NUL, empty component, `/` inside a name). Nothing was written.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A read or write would go through a symbolic link (or a non-directory)
    /// inside the volume. Refused: nothing is read or written outside the root.
    #[error("refused {path:?}: {component:?} is {what}, not a directory")]
    NotADirectory {
        path: String,
        component: String,
        what: &'static str,
    },
    /// The peer sent something the protocol does not allow.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A network operation with the peer failed.
    #[error("{peer}: {source}")]
    Net {
        peer: String,
        source: std::io::Error,
    },
    /// The peer could not prove it knows the pre-shared key (or we could not).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The remote agent refused or failed a request; its message is kept.
    #[error("agent refused: {0}")]
    Remote(String),
    /// An agent configuration is invalid.
    #[error("{path}:{line}:{column}: {message}")]
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A local source that is not there, or not what the mode reads (a
    /// directory in file mode, an image in block mode).
    #[error("{}: {reason}", path.display())]
    BadSource { path: PathBuf, reason: &'static str },
    /// The request is valid but not supported in this combination.
    #[error("{0}")]
    Unsupported(String),
    /// A key file is unreadable, empty, or open to others (see ferry-secret).
    #[error(transparent)]
    Secret(#[from] ferry_secret::SecretError),
    /// A basis or block reference points outside the file it refers to.
    #[error("{path:?}: {message}")]
    Corrupt { path: String, message: String },
}

impl SyncError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SyncError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when talking to the peer failed (refused, reset, timed out, no
    /// route): the peer may answer again later, and asking again is safe.
    pub fn is_network(&self) -> bool {
        matches!(self, SyncError::Net { .. })
    }

    /// True when the error is "the file is not there" (a file that vanished at the
    /// source between scan and read is skipped, as rsync does, not fatal).
    pub fn is_not_found(&self) -> bool {
        matches!(self, SyncError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;
