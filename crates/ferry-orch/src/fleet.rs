//! With the run in etcd, a freeze is complete only when every router of the
//! fleet acknowledged it there, not only the routers migrate.toml lists:
//! every registered router and every router ever seen that an operator has
//! not retired ([`crate::acks`], docs/control-plane.md "Who must acknowledge
//! a freeze"). A seen router that is gone blocks the freeze until it comes
//! back and acknowledges, or is retired (`ferry ctl routers retire`); at the
//! deadline (`drain_timeout`) the runbook abandons the attempt, as for a
//! router that does not drain. [`wait_freeze_acks`] is what the freeze step
//! runs (`runbook/freeze.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_store::{EtcdStore, Fleet};

use crate::acks::{freeze_acks, Acks, Registration};
use crate::journal::now_ms;

/// The fastest the fleet is read again while waiting.
const MIN_POLL: Duration = Duration::from_millis(100);

/// The freeze's revision, once every freeze write was answered: the newest
/// revision of the unit's site records (`sites`), so a router that applied
/// it holds the freeze. Not the cluster's revision: registrations move that
/// too, and a router applies no revision that touched no site. Sites not in
/// etcd (routers that keep their own records): the cluster's revision.
pub async fn freeze_revision(etcd: &Arc<EtcdStore>, sites: &[String]) -> Result<i64, String> {
    let sites = sites.to_vec();
    let newest = blocking(etcd, move |e| e.sites_revision(&sites))
        .await
        .map_err(|e| format!("cannot read the freeze's revision in etcd: {e}"))?;
    if newest > 0 {
        return Ok(newest);
    }
    blocking(etcd, |e| e.revision())
        .await
        .map_err(|e| format!("cannot read the freeze's revision in etcd: {e}"))
}

/// Waits until every router the fleet must count acknowledged the freeze at
/// `epoch` written by `freeze_revision` (see [`freeze_revision`]); `seen`
/// is told each new verdict while it waits. Answers the routers that
/// acknowledged, or (router, why) for the first one still awaited at
/// `deadline` ("etcd" when etcd could not be read).
pub async fn wait_freeze_acks(
    etcd: &Arc<EtcdStore>,
    epoch: u64,
    freeze_revision: i64,
    deadline: Instant,
    poll: Duration,
    mut seen: impl FnMut(&Acks) + Send,
) -> Result<Vec<String>, (String, String)> {
    let poll = poll.max(MIN_POLL);
    let mut last_said = String::new();
    loop {
        let verdict = match blocking(etcd, |e| e.fleet()).await {
            Ok(fleet) => {
                note_seen(etcd, &fleet).await;
                Ok(judge(&fleet, freeze_revision, epoch))
            }
            Err(e) => Err(format!(
                "cannot read the routers' registrations in etcd: {e}"
            )),
        };
        match &verdict {
            Ok(acks) if acks.complete() => {
                seen(acks);
                tracing::info!(
                    epoch,
                    freeze_revision,
                    routers = %acks.acknowledged.join(", "),
                    "every router registered or seen in etcd acknowledged the freeze"
                );
                return Ok(acks.acknowledged.clone());
            }
            Ok(acks) => {
                let said = acks.describe_waiting();
                if said != last_said {
                    seen(acks);
                    tracing::warn!(epoch, freeze_revision, waiting = %said, "the freeze waits for routers in etcd");
                    last_said = said;
                }
            }
            Err(e) => tracing::warn!(epoch, error = %e, "the freeze cannot read etcd"),
        }
        if Instant::now() >= deadline {
            return Err(match verdict {
                Ok(acks) => {
                    let (name, why) = acks.waiting[0].clone();
                    (
                        name,
                        format!(
                            "did not acknowledge epoch {epoch} (etcd revision {freeze_revision}) in etcd in time: {why}"
                        ),
                    )
                }
                Err(e) => ("etcd".into(), e),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Records every registered router as seen (routers of this build do it
/// themselves; this covers one that did not), so it is awaited by every
/// later freeze even once it is gone.
async fn note_seen(etcd: &Arc<EtcdStore>, fleet: &Fleet) {
    let seen: BTreeSet<&str> = fleet.seen.iter().map(|(n, _)| n.as_str()).collect();
    for (name, _) in &fleet.registered {
        if seen.contains(name.as_str()) {
            continue;
        }
        let value = serde_json::json!({ "first_ms": now_ms(), "by": "orchestrator" }).to_string();
        let n = name.clone();
        if let Err(e) = blocking(etcd, move |e| e.note_seen(&n, &value)).await {
            tracing::warn!(router = %name, error = %e, "cannot record a router as seen in etcd");
        }
    }
}

/// [`freeze_acks`] over what etcd holds.
fn judge(fleet: &Fleet, freeze_revision: i64, epoch: u64) -> Acks {
    let registered: BTreeMap<String, Result<Registration, String>> = fleet
        .registered
        .iter()
        .map(|(n, v)| (n.clone(), Registration::parse(v)))
        .collect();
    let seen: BTreeSet<String> = fleet.seen.iter().map(|(n, _)| n.clone()).collect();
    let retired: BTreeSet<String> = fleet.retired.iter().map(|(n, _)| n.clone()).collect();
    freeze_acks(&registered, &seen, &retired, freeze_revision, epoch)
}

/// The store's calls block (bounded by its request timeout): off the runtime.
async fn blocking<T: Send + 'static>(
    etcd: &Arc<EtcdStore>,
    f: impl FnOnce(&EtcdStore) -> Result<T, ferry_store::StoreError> + Send + 'static,
) -> Result<T, ferry_store::StoreError> {
    let etcd = Arc::clone(etcd);
    match tokio::task::spawn_blocking(move || f(&etcd)).await {
        Ok(r) => r,
        Err(e) => Err(ferry_store::StoreError::Unavailable {
            op: "read the routers",
            after: std::time::Duration::ZERO,
            last: format!("the blocking task failed: {e}"),
        }),
    }
}
