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
//! return [`crate::OrchError::Interrupted`] on the spot, writing nothing
//! more, which is what the journal sees of a killed process.
//!
//! The mechanism (arming, firing once, kill, pause) is ferry-journal's, as
//! are the `<step>:before` / `<step>:after` points its step runner passes;
//! this module names the migration's points and keeps its faults.
//!
//! `FERRY_FAULTS=skip-freeze:<router>` is a deliberate bug for the demo's
//! broken variant: the freeze is not sent to that router and it is counted as
//! having acknowledged. The router keeps serving at the source during the
//! freeze: the split brain the demo's checker must catch.

use std::path::PathBuf;

use crate::error::Result;
use crate::status::Step;

pub use ferry_journal::{Action, KillMode};

/// The armed failpoints of this process: ferry-journal's mechanism with
/// the migration runbook's names.
#[derive(Default)]
pub struct Failpoints(ferry_journal::Failpoints);

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

impl Failpoints {
    pub fn none() -> Failpoints {
        Failpoints(ferry_journal::Failpoints::none())
    }

    /// From `FERRY_FAILPOINTS` and `FERRY_FAILPOINT_DIR`.
    pub fn from_env() -> std::result::Result<Failpoints, String> {
        ferry_journal::Failpoints::from_env(&names()).map(Failpoints)
    }

    /// Parses `NAME=ACTION,...`; an unknown name or action is an error.
    pub fn parse(spec: &str, kill: KillMode) -> std::result::Result<Failpoints, String> {
        ferry_journal::Failpoints::parse(spec, kill, &names()).map(Failpoints)
    }

    pub fn with_pause_dir(self, dir: PathBuf) -> Failpoints {
        Failpoints(self.0.with_pause_dir(dir))
    }

    /// Passes the failpoint `name`: fires its action if armed and not fired yet.
    pub async fn hit(&self, name: &str) -> Result<()> {
        Ok(self.0.hit(name).await?)
    }

    /// The mechanism, for ferry-journal's step runner.
    pub(crate) fn inner(&self) -> &ferry_journal::Failpoints {
        &self.0
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
