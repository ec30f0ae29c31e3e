//! Abandoning a freeze (a router did not acknowledge, a database did not
//! freeze, a final copy could not reach an agent) or a failed
//! verification: journaled first (a note with the
//! abandon's epoch), then the databases undone and every router sent
//! (source, active, e+1); a router that does not take it is owed it.

use std::time::Duration;

use serde_json::json;

use super::fencing::at_source;
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::Result;
use crate::event::{Note, Phase, StepDetail};
use crate::status::{Outcome, Step, UnitState};
use ferry_model::SiteState;

impl UnitRun<'_> {
    /// On the replay of a step whose abandon was journaled and not
    /// finished: finishes it (None when there is none to finish).
    pub(super) async fn resume_abandon(&self, step: Step, epoch: u64) -> Option<Result<()>> {
        if !self.replay {
            return None;
        }
        let a = self.progress.abandoning.clone()?;
        Some(
            self.finish_abandon(step, epoch, a.epoch, a.fail, a.reason)
                .await,
        )
    }

    /// Abandons the step: journals it, sends (source, active, e+1) everywhere.
    /// `fail`: the unit fails (no more attempts).
    pub(super) async fn abandon(
        &self,
        step: Step,
        epoch: u64,
        fail: bool,
        reason: String,
    ) -> Result<()> {
        let ab = epoch + 1;
        tracing::warn!(unit = %self.unit.id, step = step.as_str(), attempt = self.attempt, "abandoning the freeze: {reason}");
        self.orch.emit(
            self.event(
                Some(step),
                Phase::Note,
                Some(ab),
                None,
                Note::Abandoning {
                    abandon_epoch: ab,
                    fail,
                    reason: reason.clone(),
                }
                .into(),
            ),
        )?;
        self.finish_abandon(step, epoch, ab, fail, reason).await
    }

    async fn finish_abandon(
        &self,
        step: Step,
        epoch: u64,
        ab: u64,
        fail: bool,
        reason: String,
    ) -> Result<()> {
        let (o, u, attempt) = (self.orch, self.unit, self.attempt);
        // The databases first, while the routers still hold the sites (no
        // request meets a locked account): an abandoned freeze unlocks the
        // source and keeps the catch-up; a failed verification drops the
        // destination's copy too. Both may run again on replay.
        let mut db_error = None;
        for g in &u.dbs {
            // A final copy that could not run and is tried again undoes
            // what an abandoned freeze does: its databases were not copied.
            let undo = if fail {
                dbmove::rollback(g, &o.cfg.db).await
            } else {
                dbmove::unfreeze(g, &o.cfg.db).await
            };
            if let Err(e) = undo {
                tracing::error!(unit = %u.id, server = %g.server, error = %e, "cannot undo the database freeze");
                db_error.get_or_insert(e);
            }
        }
        // Bounded: a router that does not take it is owed the change, and it
        // is sent again before the unit's next step.
        let per_try = o
            .opts
            .admin_timeout
            .min(o.cfg.freeze.drain_timeout)
            .min(Duration::from_secs(2));
        let work = at_source(&o.routers, u, SiteState::Active, ab);
        let unpaid = o.send_with_retries(work, 3, per_try).await;
        for (r, c, why) in &unpaid {
            o.note_owed(u, attempt, r, c, why)?;
        }
        let (outcome, state, message) = if step == Step::FinalCopy && fail {
            (
                Outcome::Failed,
                UnitState::Failed,
                format!("verification failed; serving from {}: {reason}", u.from_dc),
            )
        } else if fail {
            (
                Outcome::Abandoned,
                UnitState::Failed,
                format!(
                    "freeze abandoned {attempt} time(s), giving up; serving from {}: {reason}",
                    u.from_dc
                ),
            )
        } else {
            (
                Outcome::Abandoned,
                UnitState::Waiting,
                format!(
                    "freeze attempt {attempt} abandoned, retrying in {:?}: {reason}",
                    o.cfg.freeze.retry_after
                ),
            )
        };
        if let Some(e) = db_error {
            // Not journaled as ended: a resume replays this abandon, the
            // database undo with it (the routers' changes are no-ops then).
            return Err(e);
        }
        let owed: Vec<&String> = unpaid.iter().map(|x| &x.0).collect();
        // Through `end`: the `<step>:after` failpoint sits here too, so a
        // crash between the abandon and its end event is tested.
        self.end(
            step,
            Some(epoch),
            outcome,
            StepDetail {
                summary: Some(message.clone()),
                message: Some(message),
                unit_state: Some(state),
                abandon_epoch: Some(ab),
                ..StepDetail::default()
            }
            .report(json!({"owed": owed, "reason": reason})),
        )
        .await
    }
}
