//! Step `prepare`: destination directories created, every router knows
//! the unit's sites (the source routers must already serve them; the others
//! learn them as served from the source), the database movers' checks, the
//! sites' fingerprints taken for the post-check. A router that cannot be
//! asked is asked again (`ask_again_after`), up to `max_attempts` times.

use serde::Serialize;
use serde_json::json;

use super::fencing::site_changes;
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::Result;
use crate::event::StepDetail;
use crate::status::{Outcome, Step};
use ferry_model::SiteState;

/// Why the routers could not be prepared.
enum Unprepared {
    /// A router did not answer or refused the call: asked again.
    Unreachable(String),
    /// What a router answered rules the unit out (a site the source does
    /// not serve): the unit fails at once.
    Refused(String),
}

/// Sites a router was taught (as served from the source).
#[derive(Serialize)]
struct Taught {
    router: String,
    sites: usize,
}

impl UnitRun<'_> {
    pub(super) async fn prepare(&self) -> Result<()> {
        let (o, u) = (self.orch, self.unit);
        let step = Step::Prepare;
        let epoch = self.step_epoch().await;
        self.begin(
            step,
            Some(epoch),
            StepDetail::summary(format!(
                "{} sites, {} copy jobs",
                u.sites.len(),
                u.jobs.len()
            )),
        )
        .await?;
        for job in &u.jobs {
            if !job.to.starts_with("ferry://") && o.cfg.copy.mode == ferry_sync::Mode::File {
                if let Err(e) = std::fs::create_dir_all(&job.to) {
                    return self.fail(
                        step,
                        Some(epoch),
                        format!("{}: cannot create {}: {e}", job.label, job.to),
                    );
                }
            }
        }
        // A router out of reach (a link cut, a restart) is asked again
        // (`ask_again_after`), as many times as a freeze is tried.
        let mut tries = 1;
        let sent = loop {
            match self.teach_routers(epoch).await {
                Ok(sent) => break sent,
                Err(Unprepared::Unreachable(message)) if tries < o.cfg.freeze.max_attempts => {
                    let wait = super::ask_again_after(o.cfg.freeze.retry_after, tries);
                    tracing::warn!(unit = %u.id, tries, ?wait, "prepare: {message}; asking again");
                    tokio::time::sleep(wait).await;
                    tries += 1;
                }
                Err(Unprepared::Unreachable(message) | Unprepared::Refused(message)) => {
                    return self.fail(step, Some(epoch), message)
                }
            }
        };
        let mut db_detail = Vec::new();
        for g in &u.dbs {
            match dbmove::prepare(g, &o.cfg.db).await {
                Ok(d) => db_detail.push(d),
                Err(e) => return self.fail(step, Some(epoch), e.to_string()),
            }
        }
        let fps = o.fingerprints(&u.sites).await;
        let answering = fps.values().filter(|f| f.status != 0).count();
        self.end(
            step,
            Some(epoch),
            Outcome::Ok,
            StepDetail {
                fingerprints: Some(fps),
                ..StepDetail::summary(format!(
                    "{} sites known everywhere; {answering}/{} answered the fingerprint",
                    u.sites.len(),
                    u.sites.len()
                ))
            }
            .report(json!({"sent": sent, "databases": db_detail})),
        )
        .await
    }

    /// The source routers must already serve every site; the others learn
    /// them as served from the source, so traffic entering anywhere reaches
    /// it. Answers what was sent (per router), or why the unit fails.
    async fn teach_routers(&self, epoch: u64) -> std::result::Result<Vec<Taught>, Unprepared> {
        let (o, u) = (self.orch, self.unit);
        let mut sent = Vec::new();
        for (name, res) in o.query_all(&o.routers, &u.sites).await {
            let Some(r) = o.routers.iter().find(|r| r.name() == name) else {
                continue; // cannot happen: the names come from the same list
            };
            let list = res.map_err(|e| Unprepared::Unreachable(e.to_string()))?;
            if r.spec.datacenter == u.from_dc {
                let missing: Vec<&str> = list
                    .iter()
                    .filter(|s| s.absent)
                    .map(|s| s.host.as_str())
                    .collect();
                if !missing.is_empty() {
                    let shown: Vec<&str> = missing.iter().take(20).copied().collect();
                    return Err(Unprepared::Refused(format!(
                        "source router {name} does not know {} site(s) of the unit: {}",
                        missing.len(),
                        shown.join(", ")
                    )));
                }
                continue;
            }
            let want = u.source_placement(r);
            let todo: Vec<String> = list
                .iter()
                .filter(|s| s.absent || s.placement != want)
                .map(|s| s.host.clone())
                .collect();
            if todo.is_empty() {
                continue;
            }
            let changes = site_changes(&todo, &want, SiteState::Active, epoch);
            r.apply(&changes)
                .await
                .map_err(|e| Unprepared::Unreachable(e.to_string()))?;
            sent.push(Taught {
                router: name,
                sites: todo.len(),
            });
        }
        Ok(sent)
    }
}
