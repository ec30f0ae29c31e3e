//! Step `done`: journals where the unit now serves from (a forward run:
//! moved; a move back: rolled back).

use super::unit_run::UnitRun;
use crate::error::Result;
use crate::event::{Detail, StepDetail};
use crate::status::{Direction, Outcome, Step};

impl UnitRun<'_> {
    pub(super) async fn done(&self) -> Result<()> {
        let u = self.unit;
        self.begin(Step::Done, None, Detail::none()).await?;
        let msg = match u.dir {
            Direction::Forward => format!("moved to {}", u.to_dc),
            Direction::Reverse => format!("rolled back: serving from {}", u.to_dc),
        };
        self.end(Step::Done, None, Outcome::Ok, StepDetail::summary(msg))
            .await
    }
}
