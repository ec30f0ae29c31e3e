//! The catch-up: the replication connection at the destination that applies
//! the source's changes since the snapshot.

use crate::error::Result;
use crate::gtid::GtidPos;
use crate::replica;
use crate::replica::Lag;
use crate::state::Phase;

use super::Mover;

impl Mover {
    /// Starts applying the source's changes since the snapshot at the
    /// destination (or, for a resumed move, since the last applied
    /// position, whichever is further), and returns once the replication
    /// connection runs. The changes keep flowing until `switch` or
    /// `rollback`, whether this mover lives or not.
    pub async fn catch_up(&mut self) -> Result<()> {
        self.need(
            "catch-up",
            &[Phase::Copied, Phase::CatchingUp, Phase::Frozen],
        )?;
        // A new replication connection starts at the snapshot, or where an
        // earlier one of this move had got to (the source's domains only:
        // the destination's other entries are not ours to set).
        let snapshot = self.state.snapshot.clone().unwrap_or_default();
        let from = match &self.state.applied {
            Some(applied) => GtidPos::resume_from(&snapshot, applied),
            None => snapshot,
        };
        replica::start(
            &mut self.dst,
            &self.cfg.source,
            &self.cfg.connection,
            &self.cfg.databases,
            &from,
        )
        .await?;
        if self.state.phase == Phase::Copied {
            self.state.phase = Phase::CatchingUp;
        }
        self.save()?;
        Ok(())
    }

    /// How far the destination is behind; records the applied position.
    pub async fn lag(&mut self) -> Result<Lag> {
        self.need("lag", &[Phase::CatchingUp, Phase::Frozen])?;
        let lag = replica::lag(&mut self.src, &mut self.dst, &self.cfg.connection).await?;
        self.state.applied = Some(lag.applied_position.clone());
        self.save()?;
        Ok(lag)
    }

    /// Stops the catch-up without removing it (tests and operators pausing
    /// a move); `catch_up` starts it again from where it stopped.
    pub async fn pause(&mut self) -> Result<()> {
        replica::stop(&mut self.dst, &self.cfg.connection).await
    }
}
