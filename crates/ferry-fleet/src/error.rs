//! The crate's error type: each variant names what failed and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A configuration file (agent exec config, fleet, runbook) is invalid:
    /// `file:line:column` of the offending value (ferry-conf's positions).
    #[error(transparent)]
    Config(#[from] ferry_conf::Invalid),
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
    /// The update is in etcd and another runner took its lease: this one
    /// stopped and changed nothing more.
    #[error("lost the update's lease to {holder}: another runner took it over")]
    LostLease { holder: String },
    /// Another runner holds the update's lease (etcd): the message names it.
    #[error("{0}")]
    Held(String),
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

/// Builds config errors for one file, at `file:line:col` by ferry-conf's rule.
pub(crate) struct ConfigErrors<'a> {
    pub text: &'a str,
    pub path: &'a std::path::Path,
}

impl ConfigErrors<'_> {
    fn source(&self) -> ferry_conf::Source<'_> {
        ferry_conf::Source {
            path: self.path,
            text: self.text,
        }
    }

    pub fn at(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> FleetError {
        self.source().error(span, message).into()
    }

    pub fn toml(&self, e: toml::de::Error) -> FleetError {
        self.source().toml(&e).into()
    }

    /// A check of ferry-conf refused a value.
    pub fn locate(&self, e: ferry_conf::SpanError) -> FleetError {
        self.source().locate(e).into()
    }
}
