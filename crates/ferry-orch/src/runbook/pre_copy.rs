//! Step `pre_copy`: while the sites keep serving, each copy job's first
//! pass, then converging passes until one would fit in the freeze budget;
//! the databases' first copy and catch-up. Not converging is advisory: the
//! freeze goes on (and takes longer).

use serde::Serialize;
use serde_json::json;

use super::copy;
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::Result;
use crate::event::StepDetail;
use crate::status::{Outcome, Step};

/// One job's pre-copy, as journaled.
#[derive(Serialize)]
struct Converged<'a> {
    job: &'a str,
    first_pass: FirstPass,
    /// The first pass and the converging ones.
    passes: usize,
    ready: bool,
    reason: &'a str,
    predicted_final_s: Option<f64>,
}

#[derive(Serialize)]
struct FirstPass {
    changed_entries: u64,
    changed_bytes: u64,
}

impl UnitRun<'_> {
    pub(super) async fn pre_copy(&self) -> Result<()> {
        let (o, u) = (self.orch, self.unit);
        let step = Step::PreCopy;
        self.begin(
            step,
            None,
            StepDetail::summary(format!("{} copy jobs", u.jobs.len())),
        )
        .await?;
        let mode = o.cfg.copy.mode;
        let opts = copy::sync_opts(false);
        let mut results = Vec::new();
        let mut all_ready = true;
        for (i, job) in u.jobs.iter().enumerate() {
            let first = match copy::first_pass(job, mode, &opts, &o.budget).await {
                Ok(f) => f,
                Err(e) => return self.fail(step, None, e.to_string()),
            };
            if i == 0 {
                o.opts.failpoints.hit("pre_copy:inside").await?;
            }
            match copy::converge(job, &o.cfg, &opts, &o.budget).await {
                Ok(c) => {
                    all_ready &= c.ready;
                    results.push(json!(Converged {
                        job: &job.label,
                        first_pass: FirstPass {
                            changed_entries: first.changed_entries,
                            changed_bytes: first.changed_bytes,
                        },
                        passes: c.passes.len() + 1,
                        ready: c.ready,
                        reason: &c.reason,
                        predicted_final_s: c.passes.last().map(|p| p.predicted_final_secs),
                    }));
                }
                Err(e) => return self.fail(step, None, e.to_string()),
            }
        }
        let mut db_results = Vec::new();
        for g in &u.dbs {
            match dbmove::pre_copy(g, &o.cfg.db).await {
                Ok(d) => {
                    all_ready &= d.ready;
                    db_results.push(d);
                }
                Err(e) => return self.fail(step, None, e.to_string()),
            }
        }
        let summary = if all_ready {
            format!(
                "{} jobs converged within max_freeze {:?}{}",
                u.jobs.len(),
                o.cfg.freeze.max_freeze,
                if u.dbs.is_empty() {
                    String::new()
                } else {
                    format!("; {} database server(s) caught up", u.dbs.len())
                }
            )
        } else {
            "not converging for some jobs (the freeze budget is advisory here: the freeze goes on; see jobs)".to_string()
        };
        self.end(step, None, Outcome::Ok, StepDetail::summary(summary).report(json!({"converged": all_ready, "advisory": !all_ready, "jobs": results, "databases": db_results})))
            .await
    }
}
