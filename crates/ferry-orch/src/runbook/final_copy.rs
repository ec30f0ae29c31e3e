//! Step `final_copy`: with the sites frozen, each job copied once more
//! (one pass: nothing moves during a freeze, see `copy::final_pass`), then
//! both ends compared by Merkle root; the databases wait for their freeze
//! position and compare checksums. Any difference (something written on
//! either side during the freeze) fails the unit through the abandon path:
//! the source untouched and writable again. A copy or proof that could not
//! run (an agent unreachable: the link between the datacenters cut) proves
//! nothing wrong: the freeze is abandoned the same way and tried again, like
//! a freeze a router did not acknowledge, until `max_attempts`.

use serde::Serialize;
use serde_json::{json, Value};

use super::copy;
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::Result;
use crate::event::{Detail, StepDetail};
use crate::status::{Outcome, Step};

/// Why the final copy cannot go on.
enum Stop {
    /// The two ends differ: the unit fails.
    Differ(String),
    /// The copy or the proof could not run: the freeze is tried again.
    Unreachable(String),
}

/// One job's last pass, as journaled.
#[derive(Serialize)]
struct Copied<'a> {
    job: &'a str,
    changed_entries: u64,
    changed_bytes: u64,
    /// What a second pass changed: journals before the one-pass final copy
    /// (issue 18) may hold a number; now always none.
    second_pass: Option<u64>,
}

/// One job's Merkle root (equal on both ends).
#[derive(Serialize)]
struct Root<'a> {
    job: &'a str,
    root: String,
}

impl UnitRun<'_> {
    pub(super) async fn final_copy(&self) -> Result<()> {
        let (o, u, p) = (self.orch, self.unit, self.progress);
        let step = Step::FinalCopy;
        let epoch = p.freeze_epoch.unwrap_or(p.max_epoch);
        self.begin(step, Some(epoch), Detail::none()).await?;
        if let Some(resumed) = self.resume_abandon(step, epoch).await {
            return resumed;
        }
        let last = self.attempt >= o.cfg.freeze.max_attempts;
        let passes = match self.copy_frozen().await {
            Ok(passes) => passes,
            Err(reason) => return self.abandon(step, epoch, last, reason).await,
        };
        o.opts.failpoints.hit("final_copy:inside").await?;
        let roots = match self.verify_jobs().await {
            Ok(roots) => roots,
            Err(Stop::Differ(reason)) => return self.abandon(step, epoch, true, reason).await,
            Err(Stop::Unreachable(reason)) => return self.abandon(step, epoch, last, reason).await,
        };
        let mut db_checks = Vec::new();
        for g in &u.dbs {
            match dbmove::final_copy(g, &o.cfg.db).await {
                Ok(dbmove::Final::Equal(d)) => db_checks.push(d),
                // The same path as a Merkle mismatch: abandon, the unit fails,
                // the source untouched (and writable again).
                Ok(dbmove::Final::Differ(reason)) => {
                    return self.abandon(step, epoch, true, reason).await
                }
                Err(e) => return self.abandon(step, epoch, true, e.to_string()).await,
            }
        }
        let mut summary = format!("{} jobs copied; Merkle roots equal", u.jobs.len());
        if !u.dbs.is_empty() {
            summary.push_str(&format!(
                "; {} database server(s) at the freeze position{}",
                u.dbs.len(),
                if o.cfg.db.verify {
                    ", checksums equal"
                } else {
                    ""
                }
            ));
        }
        self.end(
            step,
            Some(epoch),
            Outcome::Ok,
            StepDetail::summary(summary)
                .report(json!({"passes": passes, "roots": roots, "databases": db_checks})),
        )
        .await
    }

    /// The last passes of every job (what each changed).
    /// Every job's last pass; an error is a copy that could not run.
    async fn copy_frozen(&self) -> std::result::Result<Vec<Value>, String> {
        let cfg = &self.orch.cfg;
        let opts = copy::sync_opts(cfg.copy.checksum);
        let mut passes = Vec::new();
        for job in &self.unit.jobs {
            let a = copy::final_pass(job, cfg.copy.mode, &opts, &self.orch.budget)
                .await
                .map_err(|e| e.to_string())?;
            passes.push(json!(Copied {
                job: &job.label,
                changed_entries: a.changed_entries,
                changed_bytes: a.changed_bytes,
                second_pass: None,
            }));
        }
        Ok(passes)
    }

    /// Every job's two ends compared: their (equal) roots.
    async fn verify_jobs(&self) -> std::result::Result<Vec<Value>, Stop> {
        let cfg = &self.orch.cfg;
        let block_size = copy::sync_opts(cfg.copy.checksum).block_size;
        let mut roots = Vec::new();
        for job in &self.unit.jobs {
            let v = copy::verify(job, cfg.copy.mode, block_size)
                .await
                .map_err(|e| Stop::Unreachable(e.to_string()))?;
            if !v.equal {
                return Err(Stop::Differ(format!(
                    "{}: Merkle roots differ; first differing: {}",
                    job.label,
                    v.differing.join(", ")
                )));
            }
            roots.push(json!(Root {
                job: &job.label,
                root: v.root,
            }));
        }
        Ok(roots)
    }
}
