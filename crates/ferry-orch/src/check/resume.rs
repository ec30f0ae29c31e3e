//! `ferry migrate check --resume`: the journal of a run to resume, opened
//! read-only, its chain verified and its events folded. What the other
//! checks then need from it: the units done (skipped), the units under way
//! (their routers' epochs must not be behind what the journal says every
//! router took), the routers that still owe a change (behind on purpose:
//! resume sends it first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{CheckReport, Verdict};
use crate::event::{Detail, Note, Phase};
use crate::journal::Journal;
use crate::status::UnitState;

/// What the journal of the run to resume says.
#[derive(Debug, Default)]
pub(super) struct Resumed {
    /// Units moved: reported done, not checked.
    pub done: BTreeSet<String>,
    /// Units with events (started, not done): what the routers must hold.
    pub started: BTreeMap<String, Expect>,
}

/// What the routers must hold for a unit under way.
#[derive(Debug, Default)]
pub(super) struct Expect {
    /// The highest epoch of an ended step (the routers took it before the
    /// step's end was written): 0 when no step sent one yet.
    pub epoch: u64,
    /// Routers that owe a change (unreachable when it was sent; resume
    /// sends it again before anything else).
    pub owing: BTreeSet<String>,
    /// The step the unit is at, for the lines.
    pub at: String,
}

/// The journal line(s); `None` when there is nothing to resume from (the
/// line says why, failed).
pub(super) fn journal(r: &mut CheckReport, path: &Path) -> Option<Resumed> {
    let at = path.display().to_string();
    let fail = |r: &mut CheckReport, why: String, fix: &str| {
        r.push("journal", at.clone(), Verdict::Failed, why, fix);
        None
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => {}
        Ok(_) => {
            return fail(
                r,
                "is empty: no run to resume".into(),
                "give --journal the run's journal, or check without --resume for a new run",
            )
        }
        Err(e) => {
            return fail(
                r,
                format!("cannot be read: {e}"),
                "give --journal the run's journal, or check without --resume for a new run",
            )
        }
    }
    let j = match Journal::open_read_only(path) {
        Ok(j) => j,
        Err(e) => {
            return fail(
                r,
                format!("cannot be opened: {e}"),
                "restore the journal from its copy; `ferry migrate status` shows what it holds",
            )
        }
    };
    if let Err(e) = j.verify() {
        return fail(
            r,
            format!("its chain does not verify: {e}"),
            "restore the journal from its copy: resume refuses a damaged journal",
        );
    }
    let (meta, events, status) = match (j.meta(), j.events(), j.status()) {
        (Ok(Some(m)), Ok(ev), Ok(Some(st))) => (m, ev, st),
        (Ok(None), ..) => {
            return fail(
                r,
                "holds no run: nothing to resume".into(),
                "check without --resume for a new run",
            )
        }
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            return fail(
                r,
                format!("cannot be read: {e}"),
                "restore the journal from its copy",
            )
        }
        (_, _, Ok(None)) => return fail(r, "holds no run".into(), ""),
    };
    let mut out = Resumed::default();
    for u in &status.units {
        if u.state == UnitState::Done {
            out.done.insert(u.id.clone());
        } else if !u.steps.is_empty() {
            let step = u.step.map_or("?".to_string(), |s| s.as_str().to_string());
            out.started.insert(
                u.id.clone(),
                Expect {
                    at: format!("{} at {step}", u.state.as_str()),
                    ..Expect::default()
                },
            );
        }
    }
    for rec in &events {
        let e = &rec.event;
        let Some(x) = out.started.get_mut(&e.unit) else {
            continue;
        };
        match (&e.phase, &e.detail) {
            (Phase::End, d) => {
                let ep = e.epoch.into_iter().chain(d.epoch()).max();
                x.epoch = x.epoch.max(ep.unwrap_or(0));
            }
            (Phase::Note, Detail::Note(Note::Owed { router, .. })) => {
                x.owing.insert(router.clone());
            }
            (Phase::Note, Detail::Note(Note::Paid { router, .. })) => {
                x.owing.remove(router);
            }
            _ => {}
        }
    }
    let list = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let started: Vec<String> = out
        .started
        .iter()
        .map(|(id, x)| format!("{id} ({}, epoch {})", x.at, x.epoch))
        .collect();
    r.push(
        "journal",
        at,
        Verdict::Ok,
        format!(
            "opened read-only, chain verified: a run started at {} ms since the epoch, {} event(s); done: {}; under way: {}",
            meta.started_at_ms,
            events.len(),
            list(out.done.iter().map(String::as_str).collect()),
            list(started.iter().map(String::as_str).collect()),
        ),
        "",
    );
    Some(out)
}
