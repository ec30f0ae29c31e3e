//! Step `await_window`: waits for the configured window (minutes of the
//! day, UTC), unless `--now` or a move back skips it.

use std::time::{Duration, Instant};

use serde_json::json;

use super::unit_run::UnitRun;
use crate::error::Result;
use crate::event::{Detail, StepDetail};
use crate::journal::now_ms;
use crate::status::{Outcome, Step};

/// How often the clock is looked at while waiting.
const CHECK_EVERY: Duration = Duration::from_secs(5);

impl UnitRun<'_> {
    pub(super) async fn await_window(&self, skip: bool) -> Result<()> {
        let o = self.orch;
        let step = Step::AwaitWindow;
        self.begin(step, None, Detail::none()).await?;
        let detail = if o.opts.now || skip {
            StepDetail::summary("skipped (--now)").report(json!({"skipped": true}))
        } else if let Some(w) = o.cfg.window {
            let started = Instant::now();
            loop {
                let minute = ((now_ms() / 60_000) % 1440) as u32;
                if w.contains(minute) {
                    break;
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
            StepDetail::summary(format!(
                "window open after {:.0}s",
                started.elapsed().as_secs_f64()
            ))
        } else {
            StepDetail::summary("no window configured")
        };
        self.end(step, None, Outcome::Ok, detail).await
    }
}
