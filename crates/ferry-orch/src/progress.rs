//! Where a unit stands, read back from its journal events: the step to run
//! next, or the step to replay (begun, not ended) with the epoch its begin
//! recorded; the freeze attempt; changes routers still owe.

use std::collections::BTreeMap;

use crate::event::{Detail, Note, Phase};
use crate::journal::EventRecord;
use crate::router::{Fingerprint, SiteChange};
use crate::status::{Direction, Outcome, Step, UnitState};

/// A change a router did not take (unreachable) and still owes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Owed {
    pub(crate) router: String,
    pub(crate) changes: Vec<SiteChange>,
}

/// A step begun and not ended (run again on replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenStep {
    pub step: Step,
    /// The epoch its begin recorded (a replay sends the same).
    pub epoch: Option<u64>,
    pub began_ms: u64,
}

/// The last step that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedStep {
    pub step: Step,
    pub outcome: Outcome,
    pub at_ms: u64,
}

/// An abandon journaled for the open step and not finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abandoning {
    /// The epoch every router is sent (source, active).
    pub epoch: u64,
    /// The unit fails (no attempt left, or a failed verification).
    pub fail: bool,
    pub reason: String,
}

/// Where a unit stands, folded from its journal events.
#[derive(Clone, Debug, Default)]
pub struct UnitProgress {
    pub direction: Option<Direction>,
    /// The freeze attempt of the last step begun.
    pub attempt: u32,
    pub open: Option<OpenStep>,
    pub last_end: Option<EndedStep>,
    pub terminal: Option<UnitState>,
    pub freeze_epoch: Option<u64>,
    pub freeze_began_ms: Option<u64>,
    pub abandoning: Option<Abandoning>,
    /// What each site answered at prepare (for the post-check).
    pub fingerprints: Option<BTreeMap<String, Fingerprint>>,
    /// The highest epoch this unit's events carry.
    pub max_epoch: u64,
    /// A forward flip was begun (rollback must then go through the reverse runbook).
    pub flip_begun: bool,
    pub(crate) owed: Vec<Owed>,
}

impl UnitProgress {
    /// Folds `unit`'s events.
    pub fn of(unit: &str, events: &[EventRecord]) -> UnitProgress {
        let mut p = UnitProgress::default();
        for rec in events.iter().filter(|r| r.event.unit == unit) {
            let e = &rec.event;
            if let Some(ep) = e.epoch {
                p.max_epoch = p.max_epoch.max(ep);
            }
            if let Some(ep) = e.detail.epoch() {
                p.max_epoch = p.max_epoch.max(ep);
            }
            match e.phase {
                Phase::Begin => {
                    let Some(step) = e.step else { continue };
                    if p.direction != Some(e.direction) {
                        // A new direction (rollback) starts over.
                        p.terminal = None;
                        p.last_end = None;
                    }
                    p.direction = Some(e.direction);
                    p.attempt = e.attempt;
                    if p.open.map(|o| o.step) != Some(step) {
                        p.abandoning = None;
                    }
                    p.open = Some(OpenStep {
                        step,
                        epoch: e.epoch,
                        began_ms: rec.at_ms,
                    });
                    if step == Step::Freeze {
                        p.freeze_epoch = e.epoch;
                        p.freeze_began_ms = Some(rec.at_ms);
                    }
                    if step == Step::Flip && e.direction == Direction::Forward {
                        p.flip_begun = true;
                    }
                }
                Phase::End => {
                    let Some(step) = e.step else { continue };
                    p.open = None;
                    p.abandoning = None;
                    let outcome = e.outcome.unwrap_or(Outcome::Ok);
                    p.last_end = Some(EndedStep {
                        step,
                        outcome,
                        at_ms: rec.at_ms,
                    });
                    if step == Step::Prepare && outcome == Outcome::Ok {
                        if let Detail::Step(d) = &e.detail {
                            p.fingerprints = d.fingerprints.clone();
                        }
                    }
                    if step == Step::Done && outcome == Outcome::Ok {
                        p.terminal = Some(match e.direction {
                            Direction::Forward => UnitState::Done,
                            Direction::Reverse => UnitState::RolledBack,
                        });
                    }
                }
                Phase::Note => match &e.detail {
                    Detail::Note(Note::Abandoning {
                        abandon_epoch,
                        fail,
                        reason,
                    }) => {
                        p.abandoning = Some(Abandoning {
                            epoch: *abandon_epoch,
                            fail: *fail,
                            reason: reason.clone(),
                        })
                    }
                    Detail::Note(Note::Owed {
                        router, changes, ..
                    }) => p.owed.push(Owed {
                        router: router.clone(),
                        changes: changes.clone(),
                    }),
                    Detail::Note(Note::Paid { router, epoch, .. }) => {
                        p.owed.retain(|o| {
                            !(&o.router == router
                                && o.changes.first().map(|c| c.epoch) == Some(*epoch))
                        });
                    }
                    _ => {}
                },
            }
            match e.detail.unit_state() {
                Some(UnitState::Failed) => p.terminal = Some(UnitState::Failed),
                Some(UnitState::RolledBack) => p.terminal = Some(UnitState::RolledBack),
                _ => {}
            }
        }
        p
    }
}
