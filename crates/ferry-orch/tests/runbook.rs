//! The runbook against real routers: a unit through every step, crash and
//! replay at every failpoint, an abandoned freeze, a failed verification,
//! rollback.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_trees_equal, world, World};
use ferry_orch::{
    Failpoints, KillMode, Options, OrchError, Orchestrator, Outcome, RunSummary, Step, UnitState,
};

fn now_opts() -> Options {
    Options {
        now: true,
        ..Options::default()
    }
}

/// Starts a run with `opts` and a pause at failpoint `point` (`freeze:inside`)
/// and waits until it holds there: the orchestrator, its run, and the pause
/// file whose removal lets the run go on.
async fn run_until_paused(
    w: &World,
    point: &str,
    opts: Options,
) -> (
    Arc<Orchestrator>,
    tokio::task::JoinHandle<ferry_orch::Result<RunSummary>>,
    PathBuf,
) {
    let pause_dir = w.path("pauses");
    std::fs::create_dir_all(&pause_dir).unwrap();
    let fp = Failpoints::parse(&format!("{point}=pause"), KillMode::Interrupt)
        .unwrap()
        .with_pause_dir(pause_dir.clone());
    let o = Arc::new(
        w.start(Options {
            failpoints: Arc::new(fp),
            ..opts
        })
        .await,
    );
    let o2 = o.clone();
    let run = tokio::spawn(async move { o2.run().await });
    let flag = pause_dir.join(format!("{}.paused", point.replace(':', "_")));
    while !flag.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (o, run, flag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_moves_through_every_step() {
    let w = world("").await;
    let o = w.start(now_opts()).await;
    let s = o.run().await.unwrap();
    assert!(s.ok(), "{s:?}");
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Done)]);
    w.assert_moved().await;
    let st = o.journal().status().unwrap().unwrap();
    let u = &st.units[0];
    assert_eq!(u.state, UnitState::Done);
    let steps: Vec<Step> = u.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL.to_vec());
    assert!(u
        .steps
        .iter()
        .all(|s| s.outcome == Some(Outcome::Ok) && s.ended_at_ms.is_some()));
    assert!(u.freeze_ms.is_some());
    assert_eq!(
        u.message,
        None,
        "post-check found differences: {:?}",
        u.steps.last()
    );
    assert_eq!(st.state, ferry_orch::RunState::Finished);
    // Epochs: prepare e, freeze e' > e, flip e' + 1, seen on both routers.
    let freeze = u
        .steps
        .iter()
        .find(|s| s.step == Step::Freeze)
        .unwrap()
        .epoch
        .unwrap();
    let flip = u
        .steps
        .iter()
        .find(|s| s.step == Step::Flip)
        .unwrap()
        .epoch
        .unwrap();
    assert_eq!(flip, freeze + 1);
    for r in ["par-1", "gra-1"] {
        for s in w.records(r).await {
            assert_eq!(s.epoch, flip, "{r} {s:?}");
        }
    }
    // Served from gra through both routers.
    assert_eq!(w.get(w.gra_traffic, "b.example").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_hosting_jobs_without_the_filer_constraint() {
    let w = world("").await;
    std::fs::write(&w.plan, common::plan_json(false)).unwrap();
    let o = w.start(now_opts()).await;
    assert!(o.run().await.unwrap().ok());
    assert_trees_equal(&w.path("par/fs-1/homes"), &w.path("gra/fs-1/homes"));
}

/// Kill (in-process: an `Interrupted` stop with nothing more journaled) at
/// every failpoint, resume from the journal, reach the same end state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_failpoint_then_resume() {
    for name in ferry_orch::failpoint::names() {
        let w = world("").await;
        let fp = Failpoints::parse(&format!("{name}=kill"), KillMode::Interrupt).unwrap();
        let o = w
            .start(Options {
                failpoints: Arc::new(fp),
                ..now_opts()
            })
            .await;
        match o.run().await {
            Err(OrchError::Interrupted(n)) => assert_eq!(n, name),
            other => panic!("{name}: expected an interruption, got {other:?}"),
        }
        drop(o);
        let r = Orchestrator::resume(&w.journal, now_opts()).unwrap();
        let s = r.run().await.unwrap();
        assert!(s.ok(), "{name}: {s:?}");
        w.assert_moved().await;
        let st = r.journal().status().unwrap().unwrap();
        assert_eq!(st.units[0].state, UnitState::Done, "{name}");
        // A resumed run journals each step's end once.
        let ends: Vec<Step> = st.units[0].steps.iter().map(|s| s.step).collect();
        assert_eq!(ends, Step::ALL.to_vec(), "{name}");
    }
}

/// A request in flight at the source longer than drain_timeout: the freeze
/// is abandoned (routers back to the source, active, e+1), retried, and the
/// unit fails after max_attempts, still served from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_that_does_not_drain_is_abandoned() {
    let w =
        world("[freeze]\ndrain_timeout = \"400ms\"\nretry_after = \"100ms\"\nmax_attempts = 2\n")
            .await;
    let port = w.par_traffic;
    let slow = tokio::spawn(async move {
        let _ = ferry_orch::router::Http::new()
            .request(
                http::Method::GET,
                &format!("http://127.0.0.1:{port}/slow"),
                &[("host", "a.example")],
                None,
                Duration::from_secs(10),
            )
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let o = w.start(now_opts()).await;
    let s = o.run().await.unwrap();
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Failed)]);
    let st = o.journal().status().unwrap().unwrap();
    let freezes: Vec<_> = st.units[0]
        .steps
        .iter()
        .filter(|s| s.step == Step::Freeze)
        .collect();
    assert_eq!(freezes.len(), 2);
    assert!(freezes
        .iter()
        .all(|f| f.outcome == Some(Outcome::Abandoned)));
    assert_eq!((freezes[0].attempt, freezes[1].attempt), (1, 2));
    assert!(freezes[1].epoch > freezes[0].epoch);
    assert!(
        st.units[0]
            .message
            .as_deref()
            .unwrap_or("")
            .contains("par-1"),
        "{:?}",
        st.units[0].message
    );
    for r in ["par-1", "gra-1"] {
        for site in w.records(r).await {
            assert_eq!(site.state, "active", "{r} {site:?}");
            let want = if r == "par-1" {
                "pool:par-web"
            } else {
                "remote:par"
            };
            assert_eq!(site.placement, want);
            assert_eq!(site.epoch, freezes[1].epoch.unwrap() + 1);
        }
    }
    slow.abort();
}

/// A destination file changed during the freeze (between copy and verify):
/// the roots differ, the freeze is abandoned and the unit fails, served
/// from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_mismatch_fails_the_unit() {
    let w = world("").await;
    let (o, run, flag) = run_until_paused(&w, "final_copy:inside", now_opts()).await;
    std::fs::write(w.path("gra/fs-1/homes/b/index.html"), "tampered\n").unwrap();
    std::fs::remove_file(&flag).unwrap();
    let s = run.await.unwrap().unwrap();
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Failed)]);
    let st = o.journal().status().unwrap().unwrap();
    let fc = st.units[0]
        .steps
        .iter()
        .find(|s| s.step == Step::FinalCopy)
        .unwrap();
    assert_eq!(fc.outcome, Some(Outcome::Failed));
    assert!(
        st.units[0]
            .message
            .as_deref()
            .unwrap()
            .contains("homes/b/index.html"),
        "{:?}",
        st.units[0].message
    );
    for s in w.records("par-1").await {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("pool:par-web", "active")
        );
    }
}

/// After the flip, rollback runs the runbook reversed: data copied back,
/// sites served from par again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_the_flip_moves_the_unit_back() {
    let w = world("").await;
    let o = w.start(now_opts()).await;
    assert!(o.run().await.unwrap().ok());
    std::fs::write(
        w.path("gra/fs-1/homes/a/orders/2.txt"),
        "order 2 taken at gra\n",
    )
    .unwrap();
    drop(o);
    let r = Orchestrator::resume(&w.journal, now_opts()).unwrap();
    assert_eq!(r.rollback("U1").await.unwrap(), UnitState::RolledBack);
    for s in w.records("par-1").await {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("pool:par-web", "active")
        );
    }
    for s in w.records("gra-1").await {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("remote:par", "active")
        );
    }
    assert_eq!(
        std::fs::read_to_string(w.path("par/fs-1/homes/a/orders/2.txt")).unwrap(),
        "order 2 taken at gra\n"
    );
    let st = r.journal().status().unwrap().unwrap();
    assert_eq!(st.units[0].state, UnitState::RolledBack);
    assert_eq!(st.units[0].direction, ferry_orch::Direction::Reverse);
}

/// Before the flip, rollback only unfreezes at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_before_the_flip_unfreezes_at_the_source() {
    let w = world("").await;
    let fp = Failpoints::parse("final_copy:before=kill", KillMode::Interrupt).unwrap();
    let o = w
        .start(Options {
            failpoints: Arc::new(fp),
            ..now_opts()
        })
        .await;
    assert!(matches!(o.run().await, Err(OrchError::Interrupted(_))));
    // Frozen everywhere now.
    assert!(w.records("par-1").await.iter().all(|s| s.state == "frozen"));
    drop(o);
    let r = Orchestrator::resume(&w.journal, now_opts()).unwrap();
    assert_eq!(r.rollback("U1").await.unwrap(), UnitState::RolledBack);
    for s in w.records("par-1").await {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("pool:par-web", "active")
        );
    }
    for s in w.records("gra-1").await {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("remote:par", "active")
        );
    }
    let st = r.journal().status().unwrap().unwrap();
    assert_eq!(st.units[0].state, UnitState::RolledBack);
    // The run has nothing more to do for it.
    assert_eq!(r.run().await.unwrap().units[0].1, UnitState::RolledBack);
}

/// The source router goes down after the destination acknowledged the
/// freeze: the freeze is abandoned, the abandon it could not take is
/// recorded as owed, paid before the next step once the router is back,
/// and the second attempt moves the unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_down_during_the_freeze_owes_the_abandon() {
    let w =
        world("[freeze]\ndrain_timeout = \"500ms\"\nretry_after = \"1500ms\"\nmax_attempts = 2\n")
            .await;
    let (o, run, flag) = run_until_paused(
        &w,
        "freeze:inside",
        Options {
            admin_timeout: Duration::from_millis(300),
            ..now_opts()
        },
    )
    .await;
    w.par_admin.set_down(true);
    std::fs::remove_file(&flag).unwrap();
    // Wait for the abandon, then bring par back during retry_after.
    loop {
        let st = o.journal().status().unwrap().unwrap();
        if st.units[0].state == UnitState::Waiting {
            break;
        }
        assert!(!run.is_finished(), "{:?}", st.units[0]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.par_admin.set_down(false);
    let s = run.await.unwrap().unwrap();
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Done)]);
    let events = o.journal().unit_events("U1").unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e.event.detail.kind())
        .collect();
    assert!(kinds.contains(&"owed"), "{kinds:?}");
    assert!(kinds.contains(&"paid"), "{kinds:?}");
    let st = o.journal().status().unwrap().unwrap();
    let freezes: Vec<_> = st.units[0]
        .steps
        .iter()
        .filter(|s| s.step == Step::Freeze)
        .collect();
    assert_eq!(freezes.len(), 2);
    assert_eq!(freezes[0].outcome, Some(Outcome::Abandoned));
    assert!(
        freezes[0].detail.as_deref().unwrap_or("").contains("par-1"),
        "{:?}",
        freezes[0].detail
    );
    assert_eq!(freezes[1].outcome, Some(Outcome::Ok));
    w.assert_moved().await;
}

/// After the destination flipped, a source router that cannot be reached is
/// retried until it takes the flip; the unit then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flip_waits_for_a_source_router_that_is_down() {
    let w = world("").await;
    let (_o, run, flag) = run_until_paused(
        &w,
        "flip:inside",
        Options {
            admin_timeout: Duration::from_millis(300),
            ..now_opts()
        },
    )
    .await;
    w.par_admin.set_down(true);
    std::fs::remove_file(&flag).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!run.is_finished(), "the flip must wait for par");
    // par is still frozen: it never serves the site at the source again.
    w.par_admin.set_down(false);
    let s = run.await.unwrap().unwrap();
    assert!(s.ok(), "{s:?}");
    w.assert_moved().await;
}

/// FERRY_FAULTS=skip-freeze:ROUTER (the demo's broken variant): the router
/// is never frozen and the run still "succeeds"; the freeze says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skip_freeze_fault_leaves_a_router_unfrozen() {
    let w = world("").await;
    let faults = ferry_orch::Faults::parse("skip-freeze:par-1").unwrap();
    let (o, run, flag) = run_until_paused(
        &w,
        "final_copy:before",
        Options {
            faults,
            ..now_opts()
        },
    )
    .await;
    assert!(w.records("par-1").await.iter().all(|s| s.state == "active"));
    assert!(w.records("gra-1").await.iter().all(|s| s.state == "frozen"));
    std::fs::remove_file(&flag).unwrap();
    assert!(run.await.unwrap().unwrap().ok());
    let ev = o.journal().unit_events("U1").unwrap();
    let freeze_end = ev
        .iter()
        .find(|e| e.event.step == Some(Step::Freeze) && e.event.phase == ferry_orch::Phase::End)
        .unwrap();
    assert_eq!(
        freeze_end.event.detail.to_json()["fault_skipped"][0],
        "par-1"
    );
}

/// `resume` re-reads the plan from its recorded path and refuses a plan
/// whose bytes changed; the journal is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_a_changed_plan() {
    let w = world("").await;
    let fp = Failpoints::parse("pre_copy:before=kill", KillMode::Interrupt).unwrap();
    let o = w
        .start(Options {
            failpoints: Arc::new(fp),
            ..now_opts()
        })
        .await;
    assert!(o.run().await.is_err());
    drop(o);
    let mut plan = std::fs::read_to_string(&w.plan).unwrap();
    plan.push(' ');
    std::fs::write(&w.plan, plan).unwrap();
    let before = std::fs::read(&w.journal).unwrap();
    match Orchestrator::resume(&w.journal, now_opts()) {
        Err(e @ OrchError::PlanChanged { .. }) => {
            assert!(e.to_string().contains("plan.json"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a changed plan was accepted"),
    }
    assert_eq!(std::fs::read(&w.journal).unwrap(), before);
}

/// A site the source router does not serve: prepare fails the unit and
/// names the site; nothing was frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_fails_a_unit_whose_sites_the_source_does_not_know() {
    let w = world("").await;
    let plan = std::fs::read_to_string(&w.plan)
        .unwrap()
        .replace("\"b.example\"", "\"c.example\"");
    std::fs::write(&w.plan, plan).unwrap();
    let o = w.start(now_opts()).await;
    let s = o.run().await.unwrap();
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Failed)]);
    let st = o.journal().status().unwrap().unwrap();
    let m = st.units[0].message.clone().unwrap_or_default();
    assert!(m.contains("c.example") && m.contains("par-1"), "{m}");
    assert!(w
        .records("par-1")
        .await
        .iter()
        .all(|s| s.absent || s.state == "active"));
}

/// Killed between an abandon and its end event (`freeze:after` on the
/// abandon path): the resumed run finishes the abandon, then goes on with
/// the next attempt, which is abandoned too; the unit fails at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_an_abandon_is_replayed() {
    let w =
        world("[freeze]\ndrain_timeout = \"400ms\"\nretry_after = \"100ms\"\nmax_attempts = 2\n")
            .await;
    let port = w.par_traffic;
    let slow = tokio::spawn(async move {
        let _ = ferry_orch::router::Http::new()
            .request(
                http::Method::GET,
                &format!("http://127.0.0.1:{port}/slow"),
                &[("host", "a.example")],
                None,
                Duration::from_secs(10),
            )
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fp = Failpoints::parse("freeze:after=kill", KillMode::Interrupt).unwrap();
    let o = w
        .start(Options {
            failpoints: Arc::new(fp),
            ..now_opts()
        })
        .await;
    assert!(matches!(o.run().await, Err(OrchError::Interrupted(_))));
    drop(o);
    let r = Orchestrator::resume(&w.journal, now_opts()).unwrap();
    let s = r.run().await.unwrap();
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Failed)]);
    let st = r.journal().status().unwrap().unwrap();
    let freezes: Vec<_> = st.units[0]
        .steps
        .iter()
        .filter(|s| s.step == Step::Freeze)
        .collect();
    assert_eq!(freezes.len(), 2, "{freezes:?}");
    assert!(freezes
        .iter()
        .all(|f| f.outcome == Some(Outcome::Abandoned)));
    for site in w.records("par-1").await {
        assert_eq!(
            (site.placement.as_str(), site.state.as_str()),
            ("pool:par-web", "active")
        );
    }
    slow.abort();
}

/// Site changes go to a router in batches; the batches add up, and a
/// replay of the same changes (a run stopped between batches) changes
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_changes_apply_in_batches_and_replay_as_no_ops() {
    let w = world("").await;
    let client = w.client("par-1");
    let before = w.records("par-1").await;
    let changes: Vec<ferry_orch::router::SiteChange> = before
        .iter()
        .map(|s| ferry_orch::router::SiteChange {
            host: s.host.clone(),
            placement: s.placement.clone(),
            state: "frozen".into(),
            epoch: s.epoch + 1,
        })
        .collect();
    assert!(changes.len() >= 3, "the world has {} sites", changes.len());
    let a = client.apply_in(&changes, 2).await.unwrap();
    assert_eq!(a.changed as usize, changes.len(), "{a:?}");
    for s in w.records("par-1").await {
        assert_eq!(s.state, "frozen", "{s:?}");
    }
    let again = client.apply_in(&changes, 2).await.unwrap();
    assert_eq!(again.changed, 0, "{again:?}");
    assert_eq!(again.unchanged as usize, changes.len(), "{again:?}");
}
