//! Where a unit stands, read back from its journal events: the step to run
//! next, or the step to replay (begun, not ended) with the epoch its begin
//! recorded; the freeze attempt; changes routers still owe.

use serde_json::Value;

use crate::journal::{EventRecord, Phase};
use crate::router::SiteChange;
use crate::status::{Direction, Outcome, Step, UnitState};

/// A change a router did not take (unreachable) and still owes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Owed {
    pub(crate) router: String,
    pub(crate) changes: Vec<SiteChange>,
}

/// Where a unit stands, folded from its journal events.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub direction: Option<Direction>,
    /// The freeze attempt of the last step begun.
    pub attempt: u32,
    /// A step begun and not ended: (step, epoch, begin time).
    pub open: Option<(Step, Option<u64>, u64)>,
    /// The last ended step with its outcome.
    pub last_end: Option<(Step, Outcome, u64)>,
    pub terminal: Option<UnitState>,
    pub freeze_epoch: Option<u64>,
    pub freeze_began_ms: Option<u64>,
    /// An abandon journaled for the open step: (epoch, fail the unit, reason).
    pub abandoning: Option<(u64, bool, String)>,
    pub fingerprints: Option<Value>,
    /// The highest epoch this unit's events carry.
    pub max_epoch: u64,
    /// A forward flip was begun (rollback must then go through the reverse runbook).
    pub flip_begun: bool,
    pub(crate) owed: Vec<Owed>,
}

impl Progress {
    /// Folds `unit`'s events.
    pub fn of(unit: &str, events: &[EventRecord]) -> Progress {
        let mut p = Progress::default();
        for rec in events.iter().filter(|r| r.event.unit == unit) {
            let e = &rec.event;
            if let Some(ep) = e.epoch {
                p.max_epoch = p.max_epoch.max(ep);
            }
            for k in ["epoch", "abandon_epoch"] {
                if let Some(ep) = e.detail.get(k).and_then(Value::as_u64) {
                    p.max_epoch = p.max_epoch.max(ep);
                }
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
                    if p.open.map(|o| o.0) != Some(step) {
                        p.abandoning = None;
                    }
                    p.open = Some((step, e.epoch, rec.at_ms));
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
                    p.last_end = Some((step, outcome, rec.at_ms));
                    if step == Step::Prepare && outcome == Outcome::Ok {
                        p.fingerprints = e.detail.get("fingerprints").cloned();
                    }
                    if step == Step::Done && outcome == Outcome::Ok {
                        p.terminal = Some(match e.direction {
                            Direction::Forward => UnitState::Done,
                            Direction::Reverse => UnitState::RolledBack,
                        });
                    }
                }
                Phase::Note => match e.detail.get("kind").and_then(Value::as_str) {
                    Some("abandoning") => {
                        p.abandoning = Some((
                            e.detail
                                .get("abandon_epoch")
                                .and_then(Value::as_u64)
                                .unwrap_or(0),
                            e.detail
                                .get("fail")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            e.detail
                                .get("reason")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                        ));
                    }
                    Some("owed") => {
                        if let (Some(r), Some(c)) =
                            (e.detail.get("router"), e.detail.get("changes"))
                        {
                            if let (Some(r), Ok(c)) =
                                (r.as_str(), serde_json::from_value(c.clone()))
                            {
                                p.owed.push(Owed {
                                    router: r.to_string(),
                                    changes: c,
                                });
                            }
                        }
                    }
                    Some("paid") => {
                        let r = e.detail.get("router").and_then(Value::as_str).unwrap_or("");
                        let ep = e.detail.get("epoch").and_then(Value::as_u64);
                        p.owed.retain(|o| {
                            !(o.router == r && o.changes.first().map(|c| c.epoch) == ep)
                        });
                    }
                    _ => {}
                },
            }
            match e.detail.get("unit_state").and_then(Value::as_str) {
                Some("failed") => p.terminal = Some(UnitState::Failed),
                Some("rolled_back") => p.terminal = Some(UnitState::RolledBack),
                _ => {}
            }
        }
        p
    }
}
