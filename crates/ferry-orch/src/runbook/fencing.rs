//! Fencing: what the runbook sends routers and reads back from them. Every
//! change carries an epoch (a router refuses an older one), so a stale or
//! replayed orchestrator can never undo a newer decision. A router that is
//! down when it must take a change (an abandon, a rollback) is *owed* it:
//! the debt is journaled and paid before the unit's next step. With the
//! journal in etcd, a runner checks its lease before each step (the epochs
//! stay the routers' own fence: no admin call carries a lease token).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::unit::Unit;
use super::Orchestrator;
use crate::error::{OrchError, Result};
use crate::event::{NewEvent, Note, Paid, Phase};
use crate::progress::UnitProgress;
use crate::router::{RouterClient, SiteChange, SiteReport};
use ferry_model::SiteState;

/// The same change for each of `sites`.
pub(super) fn site_changes(
    sites: &[String],
    placement: &str,
    state: SiteState,
    epoch: u64,
) -> Vec<SiteChange> {
    sites
        .iter()
        .map(|h| SiteChange {
            host: h.clone(),
            placement: placement.to_string(),
            state: state.as_str().to_string(),
            epoch,
        })
        .collect()
}

/// Per router, the unit's sites at the source with `state` and `epoch`.
pub(super) fn at_source(
    routers: &[RouterClient],
    u: &Unit,
    state: SiteState,
    epoch: u64,
) -> Vec<(RouterClient, Vec<SiteChange>)> {
    routers
        .iter()
        .map(|r| {
            (
                r.clone(),
                site_changes(&u.sites, &u.source_placement(r), state, epoch),
            )
        })
        .collect()
}

impl Orchestrator {
    /// The highest epoch any router reports for `sites` (routers that do not
    /// answer are skipped: the journal's own record covers what we sent them).
    pub(super) async fn max_epoch_seen(&self, sites: &[String]) -> u64 {
        let mut max = 0;
        for (r, res) in self.query_all(&self.routers, sites).await {
            match res {
                Ok(list) => max = list.iter().map(|s| s.epoch).fold(max, u64::max),
                Err(e) => tracing::warn!(router = r, error = %e, "cannot read the sites' epochs"),
            }
        }
        max
    }

    pub(super) async fn query_all(
        &self,
        routers: &[RouterClient],
        sites: &[String],
    ) -> Vec<(String, Result<Vec<SiteReport>>)> {
        self.query_all_by(routers, sites, None).await
    }

    /// Queries every router at once; with a deadline, a router that has
    /// not answered by then counts as an error (the freeze must not wait on
    /// it past drain_timeout).
    async fn query_all_by(
        &self,
        routers: &[RouterClient],
        sites: &[String],
        deadline: Option<Instant>,
    ) -> Vec<(String, Result<Vec<SiteReport>>)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in routers.iter().enumerate() {
            let r = r.clone();
            let sites = sites.to_vec();
            set.spawn(async move {
                let name = r.name().to_string();
                let res = match deadline {
                    None => r.query(&sites).await,
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        match tokio::time::timeout(left, r.query(&sites)).await {
                            Ok(x) => x,
                            Err(_) => Err(OrchError::Router {
                                router: name.clone(),
                                message: "did not answer the query in time".into(),
                                stale: false,
                            }),
                        }
                    }
                };
                (i, name, res)
            });
        }
        let mut out: Vec<(usize, String, Result<Vec<SiteReport>>)> = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(x) = j {
                out.push(x);
            }
        }
        out.sort_by_key(|x| x.0);
        out.into_iter().map(|(_, n, r)| (n, r)).collect()
    }

    /// Sends the changes a router still owes (it was unreachable when an
    /// abandon or rollback was sent), before the unit's next step.
    pub(super) async fn pay_owed(&self, u: &Unit, p: &mut UnitProgress) -> Result<()> {
        // Before every step: a runner whose lease (etcd) may have ended sends
        // routers nothing more (the journal's guarded appends are the hard
        // rule; this stops it before a router call that etcd does not guard).
        self.journal.check_fence()?;
        for o in p.owed.clone() {
            let Some(r) = self.routers.iter().find(|r| r.name() == o.router) else {
                continue;
            };
            let epoch = o.changes.first().map_or(0, |c| c.epoch);
            let outcome = match r.apply(&o.changes).await {
                Ok(_) => Paid::Applied,
                // A newer epoch superseded it: nothing owed any more.
                Err(OrchError::Router { stale: true, .. }) => Paid::Superseded,
                Err(e) => {
                    tracing::warn!(unit = %u.id, router = %o.router, error = %e, "router still unreachable; its change stays owed");
                    continue;
                }
            };
            self.emit(NewEvent {
                unit: u.id.clone(),
                step: None,
                phase: Phase::Note,
                attempt: p.attempt,
                direction: u.dir,
                epoch: Some(epoch),
                outcome: None,
                detail: Note::Paid {
                    router: o.router.clone(),
                    epoch,
                    how: outcome,
                }
                .into(),
            })?;
            p.owed.retain(|x| x != &o);
        }
        Ok(())
    }

    /// Journals that `router` owes `changes` (it did not take them).
    pub(super) fn note_owed(
        &self,
        u: &Unit,
        attempt: u32,
        router: &str,
        changes: &[SiteChange],
        why: &str,
    ) -> Result<()> {
        tracing::warn!(unit = %u.id, router, error = why, "router did not take the change; it is owed and retried before the next step");
        self.emit(NewEvent {
            unit: u.id.clone(),
            step: None,
            phase: Phase::Note,
            attempt,
            direction: u.dir,
            epoch: changes.first().map(|c| c.epoch),
            outcome: None,
            detail: Note::Owed {
                router: router.to_string(),
                changes: changes.to_vec(),
                error: why.to_string(),
            }
            .into(),
        })?;
        Ok(())
    }

    /// Sends each router its changes, retrying `tries` times; answers the
    /// ones that still failed (router, changes, error).
    pub(super) async fn send_with_retries(
        &self,
        work: Vec<(RouterClient, Vec<SiteChange>)>,
        tries: u32,
        per_try: Duration,
    ) -> Vec<(String, Vec<SiteChange>, String)> {
        let mut set = tokio::task::JoinSet::new();
        for (r, changes) in work {
            set.spawn(async move {
                let mut last = String::new();
                for i in 0..tries.max(1) {
                    match tokio::time::timeout(per_try, r.apply(&changes)).await {
                        Ok(Ok(_)) => return None,
                        Ok(Err(e @ OrchError::Router { stale: true, .. })) => {
                            return Some((r.name().to_string(), changes, e.to_string()));
                        }
                        Err(_) => {
                            last = format!("no answer within {per_try:?}");
                        }
                        Ok(Err(e)) => {
                            last = e.to_string();
                            tokio::time::sleep(Duration::from_millis(200 * u64::from(i + 1))).await;
                        }
                    }
                }
                Some((r.name().to_string(), changes, last))
            });
        }
        let mut out = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(Some(x)) = j {
                out.push(x);
            }
        }
        out
    }

    /// Waits until every router of `group` reports `epoch`, frozen, and 0 in
    /// flight for every site; by `deadline`. Errs with (router, why).
    pub(super) async fn wait_drained(
        &self,
        group: &[RouterClient],
        sites: &[String],
        epoch: u64,
        deadline: Instant,
    ) -> std::result::Result<(), (String, String)> {
        let mut pending: Vec<RouterClient> = group.to_vec();
        let mut why: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut still = Vec::new();
            for (name, res) in self.query_all_by(&pending, sites, Some(deadline)).await {
                let not_drained = match res {
                    Ok(list) => list
                        .iter()
                        .find(|s| {
                            s.absent
                                || s.epoch != epoch
                                || s.state != SiteState::Frozen.as_str()
                                || s.in_flight > 0
                        })
                        .map(|s| {
                            format!(
                                "{}: epoch {} {} in flight {}",
                                s.host, s.epoch, s.state, s.in_flight
                            )
                        }),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(w) = not_drained {
                    why.insert(name.clone(), w);
                    if let Some(r) = pending.iter().find(|r| r.name() == name) {
                        still.push(r.clone());
                    }
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let r = still[0].name().to_string();
                let w = why.get(&r).cloned().unwrap_or_default();
                return Err((
                    r,
                    format!("did not acknowledge epoch {epoch} with 0 in flight in time ({w})"),
                ));
            }
            pending = still;
            tokio::time::sleep(self.opts.poll).await;
        }
    }
}

/// Sends a freeze to `r` until it takes it or `deadline` (a stale epoch
/// ends it at once). Spawned per router: owns what it needs.
pub(super) async fn send_freeze(
    r: &RouterClient,
    changes: &[SiteChange],
    deadline: Instant,
    poll: Duration,
) -> std::result::Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("did not take the freeze in time".to_string());
        }
        match tokio::time::timeout(left, r.apply(changes)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e @ OrchError::Router { stale: true, .. })) => return Err(e.to_string()),
            Ok(Err(e)) => {
                tracing::warn!(router = r.name(), error = %e, "freeze not taken yet; retrying");
                tokio::time::sleep(poll.max(Duration::from_millis(100)).min(left)).await;
            }
            Err(_) => return Err("did not answer in time".to_string()),
        }
    }
}

/// Sends a flip to `r`, retrying with backoff for as long as it takes (after
/// the flip began there is no going back: a router that does not take it
/// stays frozen, which holds its requests but never splits the site).
pub(super) async fn send_flip(r: &RouterClient, changes: &[SiteChange]) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match r.apply(changes).await {
            Ok(_) => return Ok(()),
            Err(e @ OrchError::Router { stale: true, .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(router = r.name(), error = %e, retry_in = ?backoff, "flip not taken; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
