//! `ferry migrate check` (and `ferry migrate run --dry-run`): everything a
//! run of the selected units would need, asked without changing anything.
//! Each check is one [`CheckLine`]: what, where, its [`Verdict`], why, and
//! how to fix it. [`check`] returns them all (a failed check does not stop
//! the others: an operator fixes everything in one round).
//!
//! What "changing nothing" means here: no journal is created (its directory
//! is asked with `access(2)`), routers are only read (`GET /v1/status`, the
//! sites' query), agents are opened and scanned for no path (a volume opened
//! for writing is only checked by the handshake, nothing is sent), and the
//! database servers are asked the mover's preconditions through
//! [`ferry_db::Mover::check`], which writes no state file.
//!
//! With `--resume` the journal is the run's, opened read-only and verified
//! (`resume`): done units are skipped, and the routers are compared with
//! the epochs it says they took.
//!
//! One file per kind of check: `routers`, `filers` (sides and room),
//! `databases`, `link` (`--measure-link`), `resume`; the plan, journal and
//! freeze lines are here.

mod databases;
mod filers;
mod link;
mod resume;
mod routers;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// The run would fail here.
    Failed,
    /// Could not be asked (said why); does not fail the check.
    Unchecked,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "FAILED",
            Verdict::Unchecked => "unchecked",
        }
    }
}

/// One check's answer.
#[derive(Clone, Debug, Serialize)]
pub struct CheckLine {
    /// What was checked: `plan`, `journal`, `router`, `sites`, `filer`,
    /// `room`, `database`, `freeze`.
    pub what: String,
    /// Where: a router, a filer side, a database server, a unit.
    pub at: String,
    pub verdict: Verdict,
    /// What was found.
    pub why: String,
    /// How to fix it (empty when ok).
    pub fix: String,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<9} {:<24} {:<9} {}",
            self.what,
            self.at,
            self.verdict.as_str(),
            self.why
        )?;
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every check's line, in the order they were asked.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub lines: Vec<CheckLine>,
}

impl CheckReport {
    /// Could the night run: no check failed.
    pub fn ok(&self) -> bool {
        self.failed().next().is_none()
    }

    pub fn failed(&self) -> impl Iterator<Item = &CheckLine> {
        self.lines.iter().filter(|l| l.verdict == Verdict::Failed)
    }

    fn push(
        &mut self,
        what: &str,
        at: impl Into<String>,
        verdict: Verdict,
        why: String,
        fix: &str,
    ) {
        self.lines.push(CheckLine {
            what: what.into(),
            at: at.into(),
            verdict,
            why,
            fix: if verdict == Verdict::Ok {
                String::new()
            } else {
                fix.into()
            },
        });
    }
}

/// What the check is told besides the config and the plan.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The journal a run would create.
    pub journal: PathBuf,
    /// Bound of each router and agent call.
    pub timeout: Duration,
    /// Time a bounded read from each filer's source (at most
    /// [`LINK_SAMPLE`] bytes, at most `timeout`) and predict each unit's
    /// pre-copy and final copy at that rate.
    pub measure_link: bool,
    /// Before `ferry migrate resume`: `journal` holds the run, opened
    /// read-only and verified; done units are skipped, and the routers
    /// must not be behind the epochs it says they took.
    pub resume: bool,
}

/// Most bytes `measure_link` reads from one filer.
pub const LINK_SAMPLE: u64 = 64 << 20;

/// The plan's numbers for one unit the orchestrator's [`PlanUnit`] does not
/// keep (read again from the file: the check alone needs them).
#[derive(Default, Deserialize)]
struct UnitNumbers {
    id: String,
    #[serde(default)]
    size: Option<Size>,
    #[serde(default)]
    freeze: Option<FreezeNumbers>,
}

#[derive(Default, Deserialize)]
struct Size {
    #[serde(default)]
    file_bytes: u64,
    #[serde(default)]
    files: u64,
}

#[derive(Default, Deserialize)]
struct FreezeNumbers {
    #[serde(default)]
    total_s: f64,
    #[serde(default)]
    final_copy_s: f64,
    #[serde(default)]
    final_bytes: f64,
    #[serde(default)]
    db_check_s: f64,
}

#[derive(Deserialize)]
struct PlanNumbers {
    #[serde(default)]
    units: Vec<UnitNumbers>,
}

/// Runs every check for the units `inputs` selected. The config and the
/// plan were read and matched by [`RunInputs::load`] already (its errors
/// are usage errors, before any check).
pub async fn check(inputs: &RunInputs, opts: &CheckOptions) -> CheckReport {
    let mut r = CheckReport::default();
    let mut units: Vec<&PlanUnit> = inputs
        .selected
        .iter()
        .filter_map(|id| inputs.plan.unit(id))
        .collect();
    plan_line(&mut r, inputs, &units);
    let resumed = if opts.resume {
        let resumed = resume::journal(&mut r, &opts.journal).unwrap_or_default();
        units.retain(|u| {
            if !resumed.done.contains(&u.id) {
                return true;
            }
            r.push(
                "unit",
                u.id.as_str(),
                Verdict::Ok,
                "done in the journal: skipped (resume leaves it)".into(),
                "",
            );
            false
        });
        resumed
    } else {
        journal(&mut r, &opts.journal);
        resume::Resumed::default()
    };
    let numbers = plan_numbers(&inputs.plan.path);
    routers::routers(&mut r, inputs, &units, opts.timeout, &resumed.started).await;
    filers::filers(&mut r, inputs, &units, &numbers, opts.timeout).await;
    // A unit under way has its mover's state beside the journal and its
    // databases (partly) at the destination: the preconditions were asked
    // when it started, resume continues from that state.
    let (under_way, fresh): (Vec<&PlanUnit>, Vec<&PlanUnit>) = units
        .iter()
        .partition(|u| resumed.started.contains_key(&u.id));
    for u in under_way {
        if !u.databases.is_empty() {
            r.push(
                "database",
                u.id.as_str(),
                Verdict::Unchecked,
                "the unit is under way: its mover continues from its state file beside the journal"
                    .into(),
                "`ferry migrate status` shows where it stopped",
            );
        }
    }
    databases::databases(&mut r, inputs, &fresh, &opts.journal).await;
    freezes(&mut r, inputs, &units, &numbers);
    if opts.measure_link {
        link::link(&mut r, inputs, &units, &numbers, opts.timeout).await;
    }
    r
}

fn plan_line(r: &mut CheckReport, inputs: &RunInputs, units: &[&PlanUnit]) {
    let sites: usize = units.iter().map(|u| u.sites().len()).sum();
    let filers: BTreeSet<String> = units
        .iter()
        .flat_map(|u| crate::runbook::unit_filers(u))
        .collect();
    let ids: Vec<&str> = units.iter().map(|u| u.id.as_str()).collect();
    let verdict = if units.is_empty() {
        Verdict::Failed
    } else {
        Verdict::Ok
    };
    r.push(
        "plan",
        inputs.plan.path.display().to_string(),
        verdict,
        format!(
            "digest {}, {} unit(s) to run ({}), {sites} sites, filers {}; every filer and database server is in {}",
            &inputs.plan.digest[..16.min(inputs.plan.digest.len())],
            units.len(),
            ids.join(", "),
            filers.into_iter().collect::<Vec<_>>().join(", "),
            inputs.cfg.path.display()
        ),
        "the plan schedules no unit: run `ferry plan` again, or name units with --only",
    );
}

/// The journal must not hold a run, and its directory must take a new
/// file: asked with access(2), so nothing is created.
fn journal(r: &mut CheckReport, path: &Path) {
    let at = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => {
            r.push(
                "journal",
                at,
                Verdict::Failed,
                "exists already (a run would refuse a journal that holds a run)".into(),
                "give --journal a new path, or `ferry migrate resume` that run",
            );
            return;
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            r.push(
                "journal",
                at,
                Verdict::Failed,
                format!("cannot be read: {e}"),
                "check the path and its permissions",
            );
            return;
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK) {
        Ok(()) => r.push(
            "journal",
            at,
            Verdict::Ok,
            format!("{} takes a new file", dir.display()),
            "",
        ),
        Err(e) => r.push(
            "journal",
            at,
            Verdict::Failed,
            format!("{} cannot take a new file: {e}", dir.display()),
            "create the directory, or make it writable by the orchestrator's user",
        ),
    }
}

fn plan_numbers(path: &Path) -> BTreeMap<String, UnitNumbers> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<PlanNumbers>(&b).ok())
        .map(|p| p.units.into_iter().map(|u| (u.id.clone(), u)).collect())
        .unwrap_or_default()
}

/// Each unit's predicted freeze (the planner's model) against the
/// configured `max_freeze`: past it the runbook would abandon the freeze.
fn freezes(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
) {
    let max = inputs.cfg.freeze.max_freeze.as_secs_f64();
    for u in units {
        let Some(f) = numbers.get(&u.id).and_then(|n| n.freeze.as_ref()) else {
            r.push(
                "freeze",
                u.id.as_str(),
                Verdict::Unchecked,
                "the plan has no freeze model for this unit".into(),
                "plan again with a current `ferry plan`",
            );
            continue;
        };
        let verdict = if f.total_s <= max {
            Verdict::Ok
        } else {
            Verdict::Failed
        };
        r.push(
            "freeze",
            u.id.as_str(),
            verdict,
            format!(
                "predicted {:.1} s (final copy {:.1} s, database check {:.1} s), max_freeze {:.0} s",
                f.total_s, f.final_copy_s, f.db_check_s, max
            ),
            "raise [freeze] max_freeze, or plan with a smaller --max-freeze so the unit is split",
        );
    }
}
