//! The `wan-cut*` and `router-cut*` scenarios: the link between the DCs,
//! or one router's reach to etcd and the orchestrator, cut at one moment
//! of a unit and repaired 8 s later.

use std::path::Path;
use std::time::Duration;

use ferry_demo::check::Check;
use ferry_demo::orch::RunEnd;

use super::excused::Excused;
use super::{block, finish, run_status, CutAt, Night, Outcome, Partition, PARTITION};
use crate::world::RouterAt;
use crate::Task;

/// Cuts what `p` says at the failpoint the runner `first` is paused at
/// (`pause`), lets it go on, repairs the cut 8 s later, and judges.
pub(super) async fn run(
    p: Partition,
    at: CutAt,
    night: &Night<'_>,
    routers: &[RouterAt],
    first: &mut Task<anyhow::Result<RunEnd>>,
    pause: &Path,
) -> anyhow::Result<Outcome> {
    let when = at.when();
    let cut = match p {
        Partition::RouterCut(_) => {
            let at = routers
                .iter()
                .position(|r| r.gate.is_some())
                .ok_or_else(|| anyhow::anyhow!("no router behind a gate"))?;
            Cut::Router(&routers[at])
        }
        _ => Cut::Wan,
    };
    let from_ms = crate::unix_ms();
    cut.set_up(night, false)?;
    night
        .out
        .progress(&format!("partition: {} {when}", cut.what()));
    let to_ms = release_and_restore(night, pause, &cut).await?;
    let last = finish(night, first).await?;
    let mut ok = last.status.success();
    let mut detail = format!(
        "{} for 8 s {when}; the night ended: {}",
        cut.what(),
        last.describe()
    );
    // What the run must show of the cut, beyond ending well.
    let shown = match (at, &cut) {
        // The copy was asked again, not failed the unit.
        (CutAt::PreCopy, _) => Some((
            "pre-copy",
            steps_where(night, ferry_orch::Step::PreCopy, |r| {
                r.detail
                    .as_deref()
                    .is_some_and(|d| d.contains("asked again"))
            })
            .await,
        )),
        // The unfreeze begun during the cut did not take the
        // silent router for one holding nothing: it waited for its
        // answer or named it.
        (CutAt::AfterFlip, Cut::Router(r)) => Some((
            "unfreeze",
            steps_where(night, ferry_orch::Step::Unfreeze, |s| {
                (from_ms..to_ms).contains(&s.started_at_ms)
                    && (s.ended_at_ms.is_some_and(|e| e >= to_ms)
                        || s.detail.as_deref().is_some_and(|d| d.contains(&r.name)))
            })
            .await,
        )),
        _ => None,
    };
    if let Some((what, lines)) = shown {
        ok &= lines.as_ref().is_ok_and(|l| !l.is_empty());
        detail.push_str(&match lines {
            Ok(l) if l.is_empty() => format!("; no {what} step shows the cut"),
            Ok(l) => format!("; {what}: {}", l.join("; ")),
            Err(e) => format!("; the run's status: {e:#}"),
        });
    }
    let excused = match cut {
        Cut::Wan => vec![wan_cut_failures(from_ms, to_ms)],
        Cut::Router(_) => Vec::new(),
    };
    Ok((last.clone(), Check::new(PARTITION, ok, detail), excused))
}

/// What a cut cuts: the link between the DCs (both ends down), or one
/// router from etcd and the orchestrator (its gate shut).
pub(super) enum Cut<'a> {
    Wan,
    Router(&'a RouterAt),
}

impl Cut<'_> {
    fn set_up(&self, night: &Night<'_>, up: bool) -> anyhow::Result<()> {
        match self {
            Cut::Wan => Ok(block(|| night.net.wan.set_up(up))?),
            Cut::Router(r) => {
                if let Some(g) = &r.gate {
                    g.set_open(up);
                }
                Ok(())
            }
        }
    }

    fn what(&self) -> String {
        match self {
            Cut::Wan => "the wan cut (both ends down)".to_string(),
            Cut::Router(r) => format!(
                "{} cut off from etcd and the orchestrator (its clients still reach it)",
                r.name
            ),
        }
    }

    fn back(&self) -> String {
        match self {
            Cut::Wan => "the wan is back".to_string(),
            Cut::Router(r) => format!("{} reaches etcd and is reached again", r.name),
        }
    }
}

/// Lets the paused runner go on into the cut, repairs it 8 s later;
/// returns when (Unix ms).
pub(super) async fn release_and_restore(
    night: &Night<'_>,
    pause: &Path,
    cut: &Cut<'_>,
) -> anyhow::Result<u64> {
    let _ = std::fs::remove_file(pause);
    tokio::time::sleep(Duration::from_secs(8)).await;
    cut.set_up(night, true)?;
    night.out.progress(&format!("partition: {}", cut.back()));
    Ok(crate::unix_ms())
}

/// What a cut of the wan from `from_ms` to `to_ms` costs by design: a site
/// still at the source, reached through the destination's routers, has no
/// path to it (502), and downloads across the link break. A request of such
/// a site already on its way across the link when a freeze begins is stuck
/// there: the destination's router, which took the freeze, cuts it at the
/// drain deadline (503; a WebSocket session, closed) rather than let it
/// hold the freeze.
pub(super) fn wan_cut_failures(from_ms: u64, to_ms: u64) -> Excused {
    Excused {
        from_ms,
        // Connections across the wan open again within a second, but a
        // source router that lost etcd answers again only once it has
        // read it afresh: a freeze begun in the first seconds after the
        // link is back may still cut a request stuck on the way to it at
        // its drain deadline (seen in CI: 4 s after, at `router-restart`).
        // So: up to a drain deadline (5 s) and a second after.
        to_ms: to_ms + 6_000,
        reasons: &[
            "status 502",
            "status 503 (site is being moved; the request was cut at the freeze's drain deadline",
            // A WebSocket session across the link: stalled, then cut (by
            // the drain deadline of a freeze, or by its client's timeout).
            "websocket cut",
        ],
        why: "through the other DC's routers while the wan was cut",
    }
}

/// The run's steps `step` that ended ok and satisfy `keep`, as
/// `U1: <the step's line>`.
async fn steps_where(
    night: &Night<'_>,
    step: ferry_orch::Step,
    keep: impl Fn(&ferry_orch::StepRecord) -> bool,
) -> anyhow::Result<Vec<String>> {
    let status = run_status(night).await?;
    Ok(status
        .units
        .iter()
        .flat_map(|u| u.steps.iter().map(move |r| (&u.id, r)))
        .filter(|(_, r)| r.step == step && r.outcome == Some(ferry_orch::Outcome::Ok) && keep(r))
        .map(|(id, r)| format!("{id}: {}", r.detail.as_deref().unwrap_or_default()))
        .collect())
}
