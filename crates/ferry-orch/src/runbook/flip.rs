//! Step `flip`: the databases switched to the destination first (a few
//! tries; the unit fails with every router still holding the sites at the
//! source if they refuse), then every router sent the destination placement,
//! active, at the next epoch: destination-side routers first. After the
//! flip began there is no going back: a router that does not take it is
//! retried until it does.

use std::time::Duration;

use serde_json::json;

use super::fencing::{send_flip, site_changes};
use super::unit_run::UnitRun;
use crate::dbmove;
use crate::error::Result;
use crate::event::StepDetail;
use crate::journal::now_ms;
use crate::router::RouterClient;
use crate::status::{Outcome, Step};
use ferry_model::SiteState;

/// Tries of a database switch before the unit fails.
const SWITCH_TRIES: u64 = 5;

impl UnitRun<'_> {
    pub(super) async fn flip(&self) -> Result<()> {
        let (o, u, p) = (self.orch, self.unit, self.progress);
        let step = Step::Flip;
        let epoch = self
            .open_epoch
            .unwrap_or(p.freeze_epoch.unwrap_or(p.max_epoch) + 1);
        self.begin(
            step,
            Some(epoch),
            StepDetail::summary(format!("epoch {epoch}")),
        )
        .await?;
        // The destination must be the databases' home before any request is
        // sent there. A few tries (the switch repeats safely); then the unit
        // fails with every router still holding the sites at the source.
        let mut switched = Vec::new();
        for g in &u.dbs {
            let mut tries = 0;
            let d = loop {
                tries += 1;
                match dbmove::switch(g, &o.cfg.db).await {
                    Ok(d) => break d,
                    Err(e) if tries >= SWITCH_TRIES => {
                        let msg = format!("switch refused before any router flipped: {e}");
                        return self.fail(step, Some(epoch), msg);
                    }
                    Err(e) => {
                        tracing::warn!(unit = %u.id, server = %g.server, error = %e, "switch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                    }
                }
            };
            switched.push(d);
        }
        let (dst_group, rest): (Vec<RouterClient>, Vec<RouterClient>) = o
            .routers
            .iter()
            .cloned()
            .partition(|r| r.spec.datacenter == u.to_dc);
        for (gi, group) in [dst_group, rest].into_iter().enumerate() {
            if gi == 1 {
                o.opts.failpoints.hit("flip:inside").await?;
            }
            let mut set = tokio::task::JoinSet::new();
            for r in group {
                let changes =
                    site_changes(&u.sites, &u.dest_placement(&r), SiteState::Active, epoch);
                set.spawn(async move {
                    let res = send_flip(&r, &changes).await;
                    (r.name().to_string(), res)
                });
            }
            while let Some(j) = set.join_next().await {
                if let Ok((name, Err(e))) = j {
                    let msg = format!(
                        "flip refused by router {name} after it began (a newer epoch there?): {e}"
                    );
                    return self.fail(step, Some(epoch), msg);
                }
            }
        }
        let freeze_ms = p.freeze_began_ms.map(|b| now_ms().saturating_sub(b));
        self.end(
            step,
            Some(epoch),
            Outcome::Ok,
            StepDetail {
                freeze_ms,
                ..StepDetail::summary(format!(
                    "serving from {}; frozen {} ms",
                    u.to_dc,
                    freeze_ms.unwrap_or(0)
                ))
            }
            .report(json!({ "databases": switched })),
        )
        .await
    }
}
