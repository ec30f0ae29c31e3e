//! Failpoints and faults: ways to stop or break the orchestrator on purpose,
//! always compiled in, so the crash tests run the code that ships.
//!
//! `FERRY_FAILPOINTS` (read once, at start) is a comma-separated list of
//! `NAME=ACTION`:
//!
//! - NAME is `<step>:before` (the step's begin event is journaled, nothing
//!   done yet), `<step>:after` (the step's work is done, its end event is not
//!   written; also on the abandon path of `freeze` and `final_copy`), or one
//!   of the points inside a step: `pre_copy:inside` (after
//!   the first pass), `freeze:inside` (the destination routers acknowledged,
//!   the source routers are not sent the freeze yet), `final_copy:inside`
//!   (copied, not verified), `flip:inside` (the destination routers flipped,
//!   the source routers not yet). `<step>` is a [`Step::as_str`] name:
//!   prepare, pre_copy, await_window, freeze, final_copy, flip, unfreeze,
//!   post_check, done.
//! - ACTION is `kill` (SIGKILL to this process, exactly what `kill -9` does)
//!   or `pause` (create `$FERRY_FAILPOINT_DIR/<NAME, ':' -> '_'>.paused` and
//!   wait until someone deletes it: a test can then stop a router at a
//!   precise moment).
//!
//! Each failpoint fires at most once per process. In-process tests build
//! [`Failpoints`] with [`KillMode::Interrupt`]: `kill` then makes the runbook
//! return [`OrchError::Interrupted`] on the spot, writing nothing more, which
//! is what the journal sees of a killed process.
//!
//! `FERRY_FAULTS=skip-freeze:<router>` is a deliberate bug for the demo's
//! broken variant: the freeze is not sent to that router and it is counted as
//! having acknowledged. The router keeps serving at the source during the
//! freeze: the split brain the demo's checker must catch.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{OrchError, Result};
use crate::status::Step;

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
    /// Return [`OrchError::Interrupted`] (in-process tests).
    Interrupt,
}

/// The armed failpoints of this process.
pub struct Failpoints {
    armed: BTreeMap<String, Action>,
    fired: Mutex<HashSet<String>>,
    kill: KillMode,
    pause_dir: PathBuf,
}

/// Every valid failpoint name.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in Step::ALL {
        v.push(format!("{}:before", s.as_str()));
        v.push(format!("{}:after", s.as_str()));
    }
    for n in [
        "pre_copy:inside",
        "freeze:inside",
        "final_copy:inside",
        "flip:inside",
    ] {
        v.push(n.to_string());
    }
    v
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

    /// From `FERRY_FAILPOINTS` and `FERRY_FAILPOINT_DIR`.
    pub fn from_env() -> std::result::Result<Failpoints, String> {
        let spec = std::env::var("FERRY_FAILPOINTS").unwrap_or_default();
        let mut f = Failpoints::parse(&spec, KillMode::Process)?;
        if let Ok(d) = std::env::var("FERRY_FAILPOINT_DIR") {
            f.pause_dir = PathBuf::from(d);
        }
        Ok(f)
    }

    /// Parses `NAME=ACTION,...`; an unknown name or action is an error.
    pub fn parse(spec: &str, kill: KillMode) -> std::result::Result<Failpoints, String> {
        let valid = names();
        let mut armed = BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, action) = item.split_once('=').ok_or_else(|| {
                format!("FERRY_FAILPOINTS: {item:?}: expected NAME=kill or NAME=pause")
            })?;
            if !valid.iter().any(|v| v == name) {
                return Err(format!(
                    "FERRY_FAILPOINTS: unknown failpoint {name:?} (known: {})",
                    valid.join(", ")
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
    pub async fn hit(&self, name: &str) -> Result<()> {
        let Some(action) = self.armed.get(name).copied() else {
            return Ok(());
        };
        if !self.fired.lock().insert(name.to_string()) {
            return Ok(());
        }
        tracing::warn!(failpoint = name, ?action, "failpoint fired");
        match action {
            Action::Kill => match self.kill {
                KillMode::Process => {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                    // SIGKILL is not deliverable late; should it somehow
                    // return, stop as the in-process mode does.
                    Err(OrchError::Interrupted(name.to_string()))
                }
                KillMode::Interrupt => Err(OrchError::Interrupted(name.to_string())),
            },
            Action::Pause => {
                let file = self
                    .pause_dir
                    .join(format!("{}.paused", name.replace(':', "_")));
                std::fs::write(&file, name.as_bytes()).map_err(|source| OrchError::Io {
                    what: format!("failpoint {name}: cannot create {}", file.display()),
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

/// `FERRY_FAULTS`: deliberate bugs for the demo's broken variant.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Routers the freeze is not sent to (and counted as acknowledged).
    pub skip_freeze: Vec<String>,
}

impl Faults {
    pub fn from_env() -> std::result::Result<Faults, String> {
        Faults::parse(&std::env::var("FERRY_FAULTS").unwrap_or_default())
    }

    pub fn parse(spec: &str) -> std::result::Result<Faults, String> {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once(':') {
                Some(("skip-freeze", r)) if !r.is_empty() => f.skip_freeze.push(r.to_string()),
                _ => {
                    return Err(format!(
                        "FERRY_FAULTS: unknown fault {item:?} (known: skip-freeze:ROUTER)"
                    ))
                }
            }
        }
        Ok(f)
    }
}
