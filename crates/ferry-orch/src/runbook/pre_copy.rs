//! Step `pre_copy`: while the sites keep serving, each copy job's first
//! pass, then converging passes until one would fit in the freeze budget;
//! the databases' first copy and catch-up. Not converging is advisory: the
//! freeze goes on (and takes longer).

use serde::Serialize;
use serde_json::json;

use super::copy;
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::{OrchError, Result};
use crate::event::StepDetail;
use crate::status::{Outcome, Step};

/// One job's pre-copy, as journaled.
#[derive(Serialize)]
struct Converged<'a> {
    job: &'a str,
    first_pass: FirstPass,
    /// The first pass and the converging ones.
    passes: usize,
    /// How many times the job was begun (more than 1: an agent was out of
    /// reach).
    tries: u32,
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
        let mut results = Vec::new();
        let mut all_ready = true;
        let mut asked_again = 0;
        for (i, job) in u.jobs.iter().enumerate() {
            // An agent out of reach (a link cut, a restart) is asked again
            // (`ask_again_after`), as many times as a freeze is tried: a
            // pass changes nothing the sites serve, and the next one copies
            // only what the broken one did not.
            let mut tries = 1;
            let (first, c) = loop {
                match self.passes(job, i == 0 && tries == 1).await {
                    Err(OrchError::Sync { job, source })
                        if source.is_network() && tries < o.cfg.freeze.max_attempts =>
                    {
                        let wait = super::ask_again_after(o.cfg.freeze.retry_after, tries);
                        tracing::warn!(unit = %u.id, %job, tries, ?wait, "pre_copy: {source}; asking again");
                        tokio::time::sleep(wait).await;
                        tries += 1;
                    }
                    Err(e @ OrchError::Sync { .. }) => return self.fail(step, None, e.to_string()),
                    other => break other?,
                }
            };
            all_ready &= c.ready;
            asked_again += tries - 1;
            results.push(json!(Converged {
                job: &job.label,
                first_pass: FirstPass {
                    changed_entries: first.changed_entries,
                    changed_bytes: first.changed_bytes,
                },
                passes: c.passes.len() + 1,
                tries,
                ready: c.ready,
                reason: &c.reason,
                predicted_final_s: c.passes.last().map(|p| p.predicted_final_secs),
            }));
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
        let mut summary = if all_ready {
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
        if asked_again > 0 {
            summary.push_str(&format!(
                "; an agent out of reach was asked again {asked_again} time(s)"
            ));
        }
        self.end(step, None, Outcome::Ok, StepDetail::summary(summary).report(json!({"converged": all_ready, "advisory": !all_ready, "jobs": results, "databases": db_results})))
            .await
    }

    /// A job's first pass, then its converging passes. `failpoint`: the
    /// rehearsal's `pre_copy:inside` stops between the two.
    async fn passes(
        &self,
        job: &super::unit::Job,
        failpoint: bool,
    ) -> Result<(ferry_sync::PassSummary, ferry_sync::Convergence)> {
        let o = self.orch;
        let opts = copy::sync_opts(false);
        let first = copy::first_pass(job, o.cfg.copy.mode, &opts, &o.budget).await?;
        if failpoint {
            o.opts.failpoints.hit("pre_copy:inside").await?;
        }
        let converged = copy::converge(job, &o.cfg, &opts, &o.budget).await?;
        Ok((first, converged))
    }
}
