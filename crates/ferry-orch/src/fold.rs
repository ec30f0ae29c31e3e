//! The migration's status as its journal tells it: a pure fold of the run
//! meta and the events ([`fold`]), served by the tracking server and shown
//! by `ferry migrate status`.

use crate::event::{EventRecord, Phase, RunMeta, UnitMeta};
use crate::status::{
    Direction, MigrationStatus, Outcome, RunState, Step, StepRecord, UnitState, UnitStatus,
    WaveStatus,
};

pub use crate::event::detail_line;

/// Folds the events into the status types; `running`: an orchestrator
/// process holds the journal now.
pub fn fold(meta: &RunMeta, events: &[EventRecord], running: bool) -> MigrationStatus {
    let mut units: Vec<UnitStatus> = meta.units.iter().map(pending).collect();
    let mut updated = meta.started_at_ms;
    for rec in events {
        updated = updated.max(rec.at_ms);
        if let Some(u) = units.iter_mut().find(|u| u.id == rec.event.unit) {
            apply(u, rec);
        }
    }
    MigrationStatus {
        source: meta.source.clone(),
        destination: meta.destination.clone(),
        state: run_state(&units, running),
        started_at_ms: meta.started_at_ms,
        updated_at_ms: updated,
        waves: waves(&units),
        units,
    }
}

/// A unit before any of its events.
fn pending(u: &UnitMeta) -> UnitStatus {
    UnitStatus {
        id: u.id.clone(),
        wave: u.night,
        sites: u.sites,
        filers: u.filers.clone(),
        state: UnitState::Pending,
        direction: Direction::Forward,
        step: None,
        attempt: 0,
        epoch: None,
        freeze_ms: None,
        message: None,
        steps: Vec::new(),
    }
}

/// One event of the unit.
fn apply(u: &mut UnitStatus, rec: &EventRecord) {
    let e = &rec.event;
    if let Some(ep) = e.epoch {
        u.epoch = Some(u.epoch.map_or(ep, |x| x.max(ep)));
    }
    match (e.phase, e.step) {
        (Phase::Begin, Some(step)) => begin(u, rec, step),
        (Phase::End, Some(step)) => end(u, rec, step),
        // A step boundary without a step is not one (never written).
        (Phase::Begin | Phase::End, None) => return,
        (Phase::Note, _) => {}
    }
    if let Some(m) = e.detail.message() {
        u.message = Some(m.to_string());
    }
    match e.detail.unit_state() {
        Some(s @ (UnitState::Waiting | UnitState::Failed | UnitState::RolledBack)) => u.state = s,
        Some(UnitState::Running) => u.state = UnitState::Running,
        // Done and pending come from the steps themselves.
        Some(UnitState::Done | UnitState::Pending) | None => {}
    }
}

fn begin(u: &mut UnitStatus, rec: &EventRecord, step: Step) {
    let e = &rec.event;
    // A replayed step (begin again after a crash) keeps one record.
    let open = u.steps.last().is_some_and(|s| {
        s.step == step
            && s.ended_at_ms.is_none()
            && s.attempt == e.attempt
            && s.direction == e.direction
    });
    if !open {
        u.steps.push(StepRecord {
            step,
            attempt: e.attempt,
            direction: e.direction,
            started_at_ms: rec.at_ms,
            ended_at_ms: None,
            outcome: None,
            epoch: e.epoch,
            detail: detail_line(&e.detail),
        });
    }
    u.step = Some(step);
    u.state = UnitState::Running;
    u.attempt = e.attempt;
    u.direction = e.direction;
}

fn end(u: &mut UnitStatus, rec: &EventRecord, step: Step) {
    let e = &rec.event;
    if let Some(s) = u
        .steps
        .iter_mut()
        .rev()
        .find(|s| s.step == step && s.ended_at_ms.is_none())
    {
        s.ended_at_ms = Some(rec.at_ms);
        s.outcome = e.outcome;
        if let Some(d) = detail_line(&e.detail) {
            s.detail = Some(d);
        }
        if s.epoch.is_none() {
            s.epoch = e.epoch;
        }
    }
    if step == Step::Flip {
        if let Some(f) = e.detail.freeze_ms() {
            u.freeze_ms = Some(f);
        }
    }
    if step == Step::Done && e.outcome == Some(Outcome::Ok) {
        u.state = match e.direction {
            Direction::Forward => UnitState::Done,
            Direction::Reverse => UnitState::RolledBack,
        };
    }
}

fn run_state(units: &[UnitStatus], running: bool) -> RunState {
    let terminal = |s: UnitState| {
        matches!(
            s,
            UnitState::Done | UnitState::Failed | UnitState::RolledBack
        )
    };
    if !units.is_empty() && units.iter().all(|u| terminal(u.state)) {
        RunState::Finished
    } else if running {
        RunState::Running
    } else {
        RunState::Stopped
    }
}

/// The units by night, with how many are done.
fn waves(units: &[UnitStatus]) -> Vec<WaveStatus> {
    let mut waves: Vec<WaveStatus> = Vec::new();
    for u in units {
        let night = u.wave.unwrap_or(0);
        let i = match waves.iter().position(|w| w.night == night) {
            Some(i) => i,
            None => {
                waves.push(WaveStatus {
                    night,
                    units: Vec::new(),
                    done: 0,
                });
                waves.len() - 1
            }
        };
        waves[i].units.push(u.id.clone());
        if u.state == UnitState::Done {
            waves[i].done += 1;
        }
    }
    waves.sort_by_key(|w| w.night);
    waves
}
