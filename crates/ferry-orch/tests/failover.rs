//! An orchestrator that fails over (cargo feature `etcd`): the run's journal
//! in a real 3-member etcd, real routers and filers (tests/common). A runner
//! holds the run's lease; a second one is refused while it lives; the first
//! stops keeping it alive at the end of its freeze (in-process stand-in for
//! SIGSTOP: its task waits at a pause, its keep-alive stops) until the
//! lease expires; the second takes over and finishes the unit; the first,
//! woken up, can append nothing, stops with `LostLease` naming the second,
//! and changes nothing at the routers; the end state is an uninterrupted run's.

mod common;
#[path = "../../ferry-journal/tests/etcd_cluster/mod.rs"]
mod etcd_cluster;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::world;
use etcd_cluster::Cluster;
use ferry_orch::config::EtcdSettings;
use ferry_orch::lease::EtcdRun;
use ferry_orch::{
    Failpoints, Journal, KillMode, Options, OrchError, Orchestrator, Outcome, Step, UnitState,
};

fn now_opts() -> Options {
    Options {
        now: true,
        ..Options::default()
    }
}

fn settings(c: &Cluster, prefix: &str) -> EtcdSettings {
    EtcdSettings {
        endpoints: c.endpoints(),
        prefix: prefix.to_string(),
        auth: None,
        tls: None,
        run: "night-1".to_string(),
        lease_ttl: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        shared_records: false,
    }
}

/// Takes the run for `holder` once the lease before it has expired (only a
/// hang fails: the bound is generous).
fn take_when_free(s: &EtcdSettings, holder: &str) -> EtcdRun {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match EtcdRun::take(s, Some(holder)) {
            Ok(r) => return r,
            Err(e) if e.to_string().contains("is held by") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("take the run for {holder}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_runner_is_taken_over_and_changes_nothing() {
    let c = Cluster::start(3);
    let w = world("").await;
    let s = settings(&c, "/failover");

    // Runner A takes the run and pauses at the end of its freeze.
    let run_a = EtcdRun::take(&s, Some("runner-a")).unwrap();
    let lease_a = run_a.lease().unwrap().clone();
    let pause_dir = w.path("pauses");
    std::fs::create_dir_all(&pause_dir).unwrap();
    let fp = Failpoints::parse("freeze:after=pause", KillMode::Interrupt)
        .unwrap()
        .with_pause_dir(pause_dir.clone());
    let a = Arc::new(
        Orchestrator::start(
            w.inputs(),
            run_a,
            Options {
                failpoints: Arc::new(fp),
                ..now_opts()
            },
        )
        .unwrap(),
    );
    let a2 = a.clone();
    let run = tokio::spawn(async move { a2.run().await });
    let flag = pause_dir.join("freeze_after.paused");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !flag.exists() {
        assert!(!run.is_finished(), "A ended before its pause");
        assert!(Instant::now() < deadline, "A never reached freeze:after");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second runner is refused while A's lease lives, naming A.
    let refused = EtcdRun::take(&s, Some("runner-b"))
        .err()
        .expect("refused while held");
    let text = refused.to_string();
    assert!(text.contains("held by runner-a"), "{text}");
    assert!(text.contains("s ago"), "{text}");

    // A is paused: its keep-alive stops too. B takes the run over once the
    // lease expired and resumes from where the journal stands.
    lease_a.stop_keep_alive();
    let run_b = take_when_free(&s, "runner-b");
    let b = Orchestrator::resume(run_b, now_opts()).unwrap();
    let summary = b.run().await.unwrap();
    assert!(summary.ok(), "{summary:?}");
    assert_eq!(summary.units, vec![("U1".to_string(), UnitState::Done)]);
    w.assert_moved().await;
    let events = b.journal().events().unwrap().len();
    let records = (w.records("par-1").await, w.records("gra-1").await);

    // A wakes up: its next journal write (the freeze's end) is refused; it
    // stops naming B and sends the routers nothing.
    std::fs::remove_file(&flag).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("A stops")
        .unwrap();
    match ended {
        Err(OrchError::LostLease { holder, journal }) => {
            assert_eq!(holder, "runner-b");
            assert!(journal.to_string_lossy().contains("/failover/runs/night-1"));
        }
        other => panic!("A should have lost its lease: {other:?}"),
    }
    assert_eq!(b.journal().events().unwrap().len(), events, "A appended");
    assert_eq!(
        (w.records("par-1").await, w.records("gra-1").await),
        records,
        "A changed a router"
    );

    // The end state is an uninterrupted run's: the unit moved, every step
    // ended once, ok, the chain verifies.
    w.assert_moved().await;
    let reader = Journal::open_read_only(EtcdRun::read_only(&s).unwrap()).unwrap();
    reader.verify().unwrap();
    let st = reader.status().unwrap().unwrap();
    let u = &st.units[0];
    assert_eq!(u.state, UnitState::Done);
    let steps: Vec<Step> = u.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, Step::ALL.to_vec());
    assert!(u.steps.iter().all(|s| s.outcome == Some(Outcome::Ok)));
    let flip = u.steps.iter().find(|s| s.step == Step::Flip).unwrap();
    for r in ["par-1", "gra-1"] {
        for rec in w.records(r).await {
            assert_eq!(Some(rec.epoch), flip.epoch, "{r} {rec:?}");
        }
    }
    drop(b);
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_etcd_is_refused_twice_and_resumed_after_a_clean_stop() {
    let c = Cluster::start(3);
    let w = world("").await;
    let s = settings(&c, "/again");
    // A run that stops at a failpoint (in process: as a crash) releases its
    // lease when dropped; the next runner resumes at once.
    let fp = Failpoints::parse("final_copy:before=kill", KillMode::Interrupt).unwrap();
    let a = Orchestrator::start(
        w.inputs(),
        EtcdRun::take(&s, Some("runner-a")).unwrap(),
        Options {
            failpoints: Arc::new(fp),
            ..now_opts()
        },
    )
    .unwrap();
    assert!(matches!(a.run().await, Err(OrchError::Interrupted(_))));
    // Starting the same run again is refused: it holds a run.
    drop(a);
    let again = Orchestrator::start(
        w.inputs(),
        EtcdRun::take(&s, Some("runner-x")).unwrap(),
        now_opts(),
    );
    assert!(
        matches!(again, Err(OrchError::JournalInUse { .. })),
        "{:?}",
        again.err()
    );
    let b = Orchestrator::resume(EtcdRun::take(&s, Some("runner-b")).unwrap(), now_opts()).unwrap();
    assert!(b.run().await.unwrap().ok());
    w.assert_moved().await;
}

/// A run kept in etcd is rolled back by another runner, under its own
/// lease: the unit moves back, and the journal in etcd says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_etcd_is_rolled_back_by_another_runner() {
    let c = Cluster::start(3);
    let w = world("").await;
    let s = settings(&c, "/rollback");
    let a = Orchestrator::start(
        w.inputs(),
        EtcdRun::take(&s, Some("runner-a")).unwrap(),
        now_opts(),
    )
    .unwrap();
    assert!(a.run().await.unwrap().ok());
    drop(a);
    let b = Orchestrator::resume(EtcdRun::take(&s, Some("runner-b")).unwrap(), now_opts()).unwrap();
    // While runner-b holds the run, nobody else may roll it back.
    let refused = EtcdRun::take(&s, Some("runner-c"))
        .err()
        .map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("is held by") && e.contains("runner-b")),
        "{refused:?}"
    );
    assert_eq!(b.rollback("U1").await.unwrap(), UnitState::RolledBack);
    for r in w.records("par-1").await {
        assert_eq!(
            (r.placement.as_str(), r.state.as_str()),
            ("pool:par-web", "active")
        );
    }
    drop(b);
    let reader = Journal::open_read_only(EtcdRun::read_only(&s).unwrap()).unwrap();
    let st = reader.status().unwrap().unwrap();
    assert_eq!(st.units[0].state, UnitState::RolledBack);
}

/// `[store]` is checked at its lines: what etcd needs, what SQLite refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_settings_are_checked_at_their_lines() {
    use ferry_orch::config::StoreSettings;
    use ferry_orch::MigrateConfig;
    let w = world("").await;
    let base = std::fs::read_to_string(&w.config).unwrap();
    let parse = |extra: &str| MigrateConfig::parse(&format!("{base}\n{extra}"), &w.config);
    assert_eq!(parse("").unwrap().store, StoreSettings::Sqlite);
    let ok = parse(
        "[store]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379/\"]\nrun = \"night-1\"\nlease_ttl = \"3s\"\n",
    )
    .unwrap();
    match ok.store {
        StoreSettings::Etcd(e) => {
            assert_eq!(e.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
            assert_eq!((e.prefix.as_str(), e.run.as_str()), ("/ferry", "night-1"));
            assert_eq!(e.lease_ttl, Duration::from_secs(3));
        }
        other => panic!("{other:?}"),
    }
    let lines = base.lines().count();
    for (extra, want, line) in [
        ("[store]\nbackend = \"zk\"\n", "expected \"sqlite\" or \"etcd\"", 2),
        ("[store]\nbackend = \"etcd\"\nrun = \"r\"\n", "needs endpoints", 2),
        (
            "[store]\nbackend = \"etcd\"\nendpoints = [\"http://h:1\"]\n",
            "needs run",
            2,
        ),
        (
            "[store]\nbackend = \"etcd\"\nendpoints = [\"h:1\"]\nrun = \"r\"\n",
            "store: endpoint \"h:1\" is not http://HOST:PORT",
            3,
        ),
        (
            "[store]\nbackend = \"etcd\"\nendpoints = [\"http://h:1\"]\nrun = \"a/b\"\n",
            "store run",
            4,
        ),
        (
            "[store]\nbackend = \"etcd\"\nendpoints = [\"http://h:1\"]\nrun = \"r\"\nlease_ttl = \"2h\"\n",
            "lease_ttl",
            5,
        ),
        (
            "[store]\nbackend = \"sqlite\"\nrun = \"r\"\n",
            "only with backend = \"etcd\"",
            3,
        ),
    ] {
        let e = parse(extra).expect_err(extra).to_string();
        assert!(e.contains(want), "{extra}: {e}");
        // The error names the line of the offending value.
        let at = format!(":{}:", lines + 1 + line);
        assert!(e.contains(&at), "{extra}: {e} (expected {at})");
    }
}
