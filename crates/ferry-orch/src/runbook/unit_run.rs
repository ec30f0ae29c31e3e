//! The context every step of one unit runs in, and what every step does
//! at its edges: the journaled begin (skipped on replay) and end, a failure
//! that ends the unit, the epoch a step sends.

use super::unit::Unit;
use super::Orchestrator;
use crate::error::Result;
use crate::event::{Detail, NewEvent, Phase, StepDetail};
use crate::progress::UnitProgress;
use crate::status::{Outcome, Step, UnitState};

/// One step of one unit about to run: what each step used to be handed
/// one by one.
pub(super) struct UnitRun<'a> {
    pub(super) orch: &'a Orchestrator,
    pub(super) unit: &'a Unit,
    /// Where the unit stood before this step (folded from its events).
    pub(super) progress: &'a UnitProgress,
    /// The freeze attempt (1 for the steps before the first freeze).
    pub(super) attempt: u32,
    /// The step was begun before the orchestrator stopped: its begin is
    /// not journaled again.
    pub(super) replay: bool,
    /// On replay, the epoch the step's begin recorded.
    pub(super) open_epoch: Option<u64>,
}

impl UnitRun<'_> {
    /// An event of this unit (its id, direction and attempt).
    pub(super) fn event(
        &self,
        step: Option<Step>,
        phase: Phase,
        epoch: Option<u64>,
        outcome: Option<Outcome>,
        detail: Detail,
    ) -> NewEvent {
        NewEvent {
            unit: self.unit.id.clone(),
            step,
            phase,
            attempt: self.attempt,
            direction: self.unit.dir,
            epoch,
            outcome,
            detail,
        }
    }

    /// Journals the step's begin (unless it is being replayed) and passes
    /// its `before` failpoint.
    pub(super) async fn begin(
        &self,
        step: Step,
        epoch: Option<u64>,
        detail: impl Into<Detail>,
    ) -> Result<()> {
        let lane = self.orch.lane_of(&self.unit.id);
        let begin = if self.replay {
            tracing::info!(unit = %self.unit.id, lane, step = step.as_str(), "replaying a step begun before the orchestrator stopped");
            None
        } else {
            let mut detail = detail.into();
            // With several lanes, each begin names its unit's lane.
            if let (Detail::Step(d), Some(l)) = (&mut detail, lane) {
                d.report.insert("lane".into(), l.into());
            }
            Some(self.event(Some(step), Phase::Begin, epoch, None, detail))
        };
        Ok(self.orch.steps().begin(step.as_str(), begin).await?)
    }

    /// Passes the step's `after` failpoint and journals its end.
    pub(super) async fn end(
        &self,
        step: Step,
        epoch: Option<u64>,
        outcome: Outcome,
        detail: impl Into<Detail>,
    ) -> Result<()> {
        let end = self.event(Some(step), Phase::End, epoch, Some(outcome), detail.into());
        Ok(self.orch.steps().end(step.as_str(), end).await?)
    }

    /// Ends the step as failed, and with it the unit (no failpoint: the
    /// unit stops here).
    pub(super) fn fail(&self, step: Step, epoch: Option<u64>, message: String) -> Result<()> {
        tracing::error!(unit = %self.unit.id, step = step.as_str(), "{message}");
        self.orch.emit(
            self.event(
                Some(step),
                Phase::End,
                epoch,
                Some(Outcome::Failed),
                StepDetail {
                    summary: Some(message.clone()),
                    message: Some(message),
                    unit_state: Some(UnitState::Failed),
                    ..StepDetail::default()
                }
                .into(),
            ),
        )?;
        Ok(())
    }

    /// The epoch a step sends: the one its journaled `begin` recorded (a
    /// replay must send exactly the same change), else one above every epoch
    /// any router or the journal has seen for the unit's sites.
    pub(super) async fn step_epoch(&self) -> u64 {
        match self.open_epoch {
            Some(e) => e,
            None => {
                1 + self
                    .orch
                    .max_epoch_seen(&self.unit.sites)
                    .await
                    .max(self.progress.max_epoch)
            }
        }
    }
}
