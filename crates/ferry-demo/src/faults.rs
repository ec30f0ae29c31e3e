//! The faults `ferry demo --fault` injects on purpose, run beside the
//! orchestrator: each waits for the orchestrator to pause at a failpoint,
//! breaks something, and lets it go on.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_orch::{Direction, MigrationStatus, Outcome, Step};
use rustix::process::Signal;

use crate::orch;
use crate::topology::{Router, PAR_ROUTER};
use crate::Out;

/// The skip-freeze fault: each time the orchestrator pauses before a final
/// copy (the unit is frozen, or should be), lets the load complete 50 more
/// requests (bounded by 10 s: with every router frozen none would) and lets
/// the orchestrator go on.
pub(crate) async fn hold_freeze_open(
    fp: &Path,
    requests: &AtomicU64,
    done: &AtomicBool,
    out: &Out,
) {
    let pause = fp.join("final_copy_before.paused");
    while !done.load(Ordering::Relaxed) {
        if pause.exists() {
            let start = requests.load(Ordering::Relaxed);
            let end = Instant::now() + Duration::from_secs(10);
            while requests.load(Ordering::Relaxed) < start + 50 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            out.progress(&format!(
                "fault: {} requests answered while the unit was frozen",
                requests.load(Ordering::Relaxed) - start
            ));
            let _ = std::fs::remove_file(&pause);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The stop-router fault: when the orchestrator pauses inside the freeze
/// (destination acknowledged, source not yet asked), SIGSTOP the source router,
/// let the orchestrator go on, and SIGCONT the router once the journal shows
/// the freeze abandoned (bounded). Returns whether the router was stopped.
pub(crate) async fn stop_router(
    exe: &Path,
    run_at: &[String],
    fp: &Path,
    par: &Router,
    done: &AtomicBool,
    out: &Out,
) -> bool {
    let pause = fp.join("freeze_inside.paused");
    let mut stopped = false;
    while !done.load(Ordering::Relaxed) {
        if pause.exists() && !stopped {
            stopped = true;
            if let Err(e) = par.signal(Signal::STOP) {
                out.progress(&format!("fault: cannot stop {PAR_ROUTER}: {e:#}"));
                let _ = std::fs::remove_file(&pause);
                continue;
            }
            // From here on the router gets SIGCONT on every path.
            let _cont = Cont(par);
            out.progress(&format!(
                "fault: {PAR_ROUTER} stopped (SIGSTOP) before it got the freeze"
            ));
            let _ = std::fs::remove_file(&pause);
            let end = Instant::now() + Duration::from_secs(60);
            let mut seen = false;
            while Instant::now() < end && !done.load(Ordering::Relaxed) {
                if let Ok(s) = orch::status_with(exe, run_at).await {
                    if has_abandoned(&s) {
                        seen = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            out.progress(&if seen {
                format!("fault: the freeze was abandoned; {PAR_ROUTER} continued (SIGCONT)")
            } else {
                format!("fault: no abandoned freeze in the journal after 60s; {PAR_ROUTER} continued (SIGCONT)")
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stopped
}

/// Sends SIGCONT when dropped.
struct Cont<'a>(&'a Router);

impl Drop for Cont<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal(Signal::CONT);
    }
}

fn has_abandoned(s: &MigrationStatus) -> bool {
    s.units.iter().any(|u| {
        u.steps.iter().any(|r| {
            r.step == Step::Freeze
                && r.direction == Direction::Forward
                && r.outcome == Some(Outcome::Abandoned)
        })
    })
}
