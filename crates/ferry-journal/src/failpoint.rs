//! Failpoints: ways to stop a runbook on purpose, always compiled in, so the
//! crash tests run the code that ships.
//!
//! A spec (`FERRY_FAILPOINTS`, read once at start) is a comma-separated list
//! of `NAME=ACTION`. The runbook says which names exist: [`crate::Steps`]
//! passes `<step>:before` (the step's begin is journaled, nothing done yet)
//! and `<step>:after` (the step's work is done, its end is not journaled);
//! a runbook may add points inside its steps. ACTION is `kill` (SIGKILL to
//! this process, exactly what `kill -9` does) or `pause` (create
//! `<pause dir>/<NAME, ':' -> '_'>.paused` and wait until someone deletes
//! it: a test can then act at a precise moment).
//!
//! Each failpoint fires at most once per process. In-process tests use
//! [`KillMode::Interrupt`]: `kill` then returns
//! [`FailpointError::Interrupted`] on the spot and the runbook writes
//! nothing more, which is what the journal sees of a killed process.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Pause,
}

/// What `kill` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillMode {
    /// SIGKILL the process.
    Process,
    /// Return [`FailpointError::Interrupted`] (in-process tests).
    Interrupt,
}

/// A failpoint that stopped the runbook.
#[derive(Debug, thiserror::Error)]
pub enum FailpointError {
    /// `kill` in [`KillMode::Interrupt`] (or a SIGKILL that did not land).
    #[error("interrupted at failpoint {0}")]
    Interrupted(String),
    /// `pause` could not create its file.
    #[error("failpoint {name}: cannot create {}: {source}", file.display())]
    Pause {
        name: String,
        file: PathBuf,
        source: std::io::Error,
    },
}

/// The armed failpoints of this process.
pub struct Failpoints {
    armed: BTreeMap<String, Action>,
    fired: Mutex<HashSet<String>>,
    kill: KillMode,
    pause_dir: PathBuf,
}

impl Default for Failpoints {
    fn default() -> Self {
        Failpoints::none()
    }
}

impl Failpoints {
    pub fn none() -> Failpoints {
        Failpoints {
            armed: BTreeMap::new(),
            fired: Mutex::new(HashSet::new()),
            kill: KillMode::Process,
            pause_dir: std::env::temp_dir(),
        }
    }

    /// From `FERRY_FAILPOINTS` and `FERRY_FAILPOINT_DIR` (the pause files'
    /// directory), with the runbook's `known` names.
    pub fn from_env(known: &[String]) -> Result<Failpoints, String> {
        let spec = std::env::var("FERRY_FAILPOINTS").unwrap_or_default();
        let mut f = Failpoints::parse(&spec, KillMode::Process, known)?;
        if let Ok(d) = std::env::var("FERRY_FAILPOINT_DIR") {
            f.pause_dir = PathBuf::from(d);
        }
        Ok(f)
    }

    /// Parses `NAME=ACTION,...`; a name not in `known` or an unknown action is an error.
    pub fn parse(spec: &str, kill: KillMode, known: &[String]) -> Result<Failpoints, String> {
        let mut armed = BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, action) = item.split_once('=').ok_or_else(|| {
                format!("FERRY_FAILPOINTS: {item:?}: expected NAME=kill or NAME=pause")
            })?;
            if !known.iter().any(|v| v == name) {
                return Err(format!(
                    "FERRY_FAILPOINTS: unknown failpoint {name:?} (known: {})",
                    known.join(", ")
                ));
            }
            let action = match action {
                "kill" => Action::Kill,
                "pause" => Action::Pause,
                other => {
                    return Err(format!(
                        "FERRY_FAILPOINTS: {name}: unknown action {other:?} (kill or pause)"
                    ))
                }
            };
            armed.insert(name.to_string(), action);
        }
        Ok(Failpoints {
            armed,
            fired: Mutex::new(HashSet::new()),
            kill,
            pause_dir: std::env::temp_dir(),
        })
    }

    pub fn with_pause_dir(mut self, dir: PathBuf) -> Failpoints {
        self.pause_dir = dir;
        self
    }

    /// Passes the failpoint `name`: fires its action if armed and not fired yet.
    pub async fn hit(&self, name: &str) -> Result<(), FailpointError> {
        let Some(action) = self.armed.get(name).copied() else {
            return Ok(());
        };
        if !self.fired.lock().insert(name.to_string()) {
            return Ok(());
        }
        tracing::warn!(failpoint = name, ?action, "failpoint fired");
        match action {
            Action::Kill => {
                if self.kill == KillMode::Process {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                }
                // SIGKILL is not deliverable late; should it somehow
                // return, stop as the in-process mode does.
                Err(FailpointError::Interrupted(name.to_string()))
            }
            Action::Pause => {
                let file = self
                    .pause_dir
                    .join(format!("{}.paused", name.replace(':', "_")));
                std::fs::write(&file, name.as_bytes()).map_err(|source| FailpointError::Pause {
                    name: name.to_string(),
                    file: file.clone(),
                    source,
                })?;
                while file.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }
        }
    }
}
