//! Step `freeze`: every router holds the unit's sites at a new epoch and
//! reports none in flight, destination-side routers first; then the
//! databases' writes are blocked at the source and their positions read.
//! A router that does not acknowledge by `drain_timeout` abandons the
//! attempt (`abandon.rs`).

use std::time::Instant;

use serde_json::json;

use super::fencing::{send_freeze, site_changes};
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::Result;
use crate::event::StepDetail;
use crate::router::RouterClient;
use crate::status::{Outcome, Step};
use ferry_model::SiteState;

impl UnitRun<'_> {
    pub(super) async fn freeze(&self) -> Result<()> {
        let (o, u) = (self.orch, self.unit);
        let step = Step::Freeze;
        let epoch = self.step_epoch().await;
        let attempt = self.attempt;
        self.begin(
            step,
            Some(epoch),
            StepDetail::summary(format!("attempt {attempt}, epoch {epoch}")),
        )
        .await?;
        if let Some(resumed) = self.resume_abandon(step, epoch).await {
            return resumed;
        }
        let last = attempt >= o.cfg.freeze.max_attempts;
        let (skipped, fleet) = match self.freeze_routers(epoch).await? {
            Ok(done) => done,
            Err((router, why)) => {
                let reason = format!("router {router} {why}");
                return self.abandon(step, epoch, last, reason).await;
            }
        };
        // Every router holds the sites: now the databases' writes are blocked
        // at the source, and only then is each position read.
        let mut positions = Vec::new();
        for g in &u.dbs {
            match dbmove::freeze(g, &o.cfg.db).await {
                Ok(d) => positions.push(d),
                Err(e) => return self.abandon(step, epoch, last, e.to_string()).await,
            }
        }
        let mut summary = format!("every router acknowledged epoch {epoch} with 0 in flight");
        match fleet.as_deref() {
            Some([]) => summary.push_str("; in etcd: no router to wait for"),
            Some(names) => summary.push_str(&format!("; in etcd: {}", names.join(", "))),
            None => {}
        }
        for d in &positions {
            summary.push_str(&format!("; {} frozen at {}", d.server, d.position));
        }
        let mut d = StepDetail::summary(summary);
        if !positions.is_empty() {
            d = d.report(json!({ "databases": positions }));
        }
        if !skipped.is_empty() {
            d = d.report(json!({ "fault_skipped": skipped }));
        }
        self.end(step, Some(epoch), Outcome::Ok, d).await
    }

    /// Sends the freeze to every router and waits for each group to drain:
    /// the destination-side routers first (they forward to the source; were
    /// a source router frozen first, a request a destination router had
    /// already forwarded to it would be held there while the forwarding
    /// router waits for that very request to finish: a drain deadlock).
    /// With the run in etcd, every router registered or seen there must then
    /// acknowledge it there too (`fleet_acks.rs`). Answers the routers
    /// skipped by the `skip-freeze` fault and those that acknowledged in
    /// etcd, or the first router that did not acknowledge in time (router, why).
    async fn freeze_routers(
        &self,
        epoch: u64,
    ) -> Result<std::result::Result<(Vec<String>, Option<Vec<String>>), (String, String)>> {
        let (o, u) = (self.orch, self.unit);
        let deadline = Instant::now() + o.cfg.freeze.drain_timeout;
        let (src_group, dst_group): (Vec<RouterClient>, Vec<RouterClient>) = o
            .routers
            .iter()
            .cloned()
            .partition(|r| r.spec.datacenter == u.from_dc);
        let mut skipped = Vec::new();
        for (gi, group) in [dst_group, src_group].into_iter().enumerate() {
            if gi == 1 {
                o.opts.failpoints.hit("freeze:inside").await?;
            }
            let mut acking = Vec::new();
            let mut set = tokio::task::JoinSet::new();
            for r in group {
                if o.opts.faults.skip_freeze.iter().any(|n| n == r.name()) {
                    // FERRY_FAULTS: a deliberate bug (see failpoint.rs).
                    tracing::error!(
                        router = r.name(),
                        "FAULT skip-freeze: not freezing this router"
                    );
                    skipped.push(r.name().to_string());
                    continue;
                }
                let changes =
                    site_changes(&u.sites, &u.source_placement(&r), SiteState::Frozen, epoch);
                acking.push(r.clone());
                let poll = o.opts.poll;
                set.spawn(async move {
                    let res = send_freeze(&r, &changes, deadline, poll).await;
                    (r.name().to_string(), res)
                });
            }
            let mut failed = None;
            while let Some(j) = set.join_next().await {
                if let Ok((name, Err(e))) = j {
                    failed.get_or_insert((name, e));
                }
            }
            if failed.is_none() {
                if let Err(f) = o.wait_drained(&acking, &u.sites, epoch, deadline).await {
                    failed = Some(f);
                }
            }
            if let Some(f) = failed {
                return Ok(Err(f));
            }
        }
        #[cfg(feature = "etcd")]
        if let Some(etcd) = o.journal.etcd_store() {
            return Ok(
                match o.wait_fleet_acks(etcd, &u.sites, epoch, deadline).await {
                    Ok(names) => Ok((skipped, Some(names))),
                    Err(f) => Err(f),
                },
            );
        }
        Ok(Ok((skipped, None)))
    }
}
