//! `ferry migrate rollback UNIT`: before the flip began, the databases
//! undone and every router sent (source, active) at a new epoch; after it,
//! the reverse runbook (copy back, freeze at the destination, flip back),
//! window skipped.

use super::fencing::at_source;
use super::{Orchestrator, UnitProgress};
use crate::dbmove;
use crate::error::{OrchError, Result};
use crate::event::{NewEvent, Note, Phase};
use crate::status::{Direction, UnitState};
use ferry_model::SiteState;

/// Tries of each router's change before it is owed.
const TRIES: u32 = 5;

impl Orchestrator {
    /// Rolls unit `id` back to the source (see the module doc).
    pub async fn rollback(&self, id: &str) -> Result<UnitState> {
        if !self.selected.iter().any(|u| u == id) {
            return Err(OrchError::UnknownUnit(id.to_string()));
        }
        self.session_note("rollback")?;
        let p = UnitProgress::of(id, &self.journal.unit_events(id)?);
        if p.terminal == Some(UnitState::RolledBack) {
            return Ok(UnitState::RolledBack);
        }
        if p.flip_begun {
            if p.direction == Some(Direction::Reverse) {
                // A rollback already under way: go on with it.
                return self.run_unit(id, Direction::Reverse).await;
            }
            let fresh = UnitProgress {
                max_epoch: p.max_epoch,
                ..UnitProgress::default()
            };
            return self
                .run_unit_from(id, Direction::Reverse, fresh, true)
                .await;
        }
        self.rollback_before_flip(id, &p).await
    }

    async fn rollback_before_flip(&self, id: &str, p: &UnitProgress) -> Result<UnitState> {
        let unit = self.unit(id, Direction::Forward)?;
        // The databases first, while the routers may still hold the sites:
        // the destination's copy dropped, the source accounts unlocked. An
        // error stops the rollback before any router change (run it again).
        for g in &unit.dbs {
            dbmove::rollback(g, &self.cfg.db).await?;
        }
        let seen = self.max_epoch_seen(&unit.sites).await;
        let epoch = 1 + seen.max(p.max_epoch);
        let attempt = p.attempt.max(1);
        let note = |detail: Note| NewEvent {
            unit: id.to_string(),
            step: None,
            phase: Phase::Note,
            attempt,
            direction: Direction::Forward,
            epoch: Some(epoch),
            outcome: None,
            detail: detail.into(),
        };
        self.emit(note(Note::Rollback {
            summary: format!(
                "rollback before the flip: every router back to the source, active, epoch {epoch}"
            ),
        }))?;
        let changes = at_source(&self.routers, &unit, SiteState::Active, epoch);
        let unpaid = self
            .send_with_retries(changes, TRIES, self.opts.admin_timeout)
            .await;
        for (r, c, why) in &unpaid {
            self.note_owed(&unit, attempt, r, c, why)?;
        }
        self.emit(note(Note::RolledBack {
            unit_state: UnitState::RolledBack,
            message: format!("rolled back before the flip: serving from {}", unit.from_dc),
        }))?;
        Ok(UnitState::RolledBack)
    }
}
