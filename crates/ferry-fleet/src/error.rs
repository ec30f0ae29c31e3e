//! The crate's error type: each variant names what failed and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A configuration file (agent exec config, fleet, runbook) is invalid.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The cause is in the message (not a `source`), so a message nested in
    /// another keeps it and `{:#}` does not print it twice.
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A router's admin API failed or refused a change.
    #[error("router {router}: {message}")]
    Router { router: String, message: String },
    /// The update journal is unreadable, tampered with, or locked.
    #[error("journal {}: {message}", path.display())]
    Journal { path: PathBuf, message: String },
    /// A replication (sync) between two servers failed.
    #[error("sync {from} -> {to}: {message}")]
    Sync {
        from: String,
        to: String,
        message: String,
    },
    /// An update step failed (exit code, check, timeout).
    #[error("step {step}: {message}")]
    Step { step: String, message: String },
    /// A failpoint stopped the update in-process (test mode of `kill`).
    #[error("interrupted at failpoint {0}")]
    Interrupted(String),
}

pub type Result<T> = std::result::Result<T, FleetError>;

impl FleetError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        FleetError::Io {
            what,
            path: path.into(),
            error,
        }
    }
}

/// 1-based line and column of a byte offset, for config errors.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Builds config errors for one file.
pub(crate) struct ConfigErrors<'a> {
    pub text: &'a str,
    pub path: &'a std::path::Path,
}

impl ConfigErrors<'_> {
    pub fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> FleetError {
        let (line, column) = line_col(self.text, span.start);
        FleetError::Config {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    pub fn toml(&self, e: toml::de::Error) -> FleetError {
        self.at(e.span().unwrap_or(0..0), e.message().to_string())
    }
}
