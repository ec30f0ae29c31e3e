//! The runbook with a database: real routers (in process) and two real
//! MariaDB servers (private `mariadbd` instances with GTID binlogs). A
//! unit's files and its database move in the same freeze; an abandoned
//! freeze leaves the source writable; a crash anywhere resumes to the same
//! end state with no lost rows.

mod common;
#[path = "../../ferry-db/tests/support/mod.rs"]
mod dbsupport;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{world, World};
use dbsupport::{Gtid, MariaDb};
use ferry_orch::{
    Failpoints, KillMode, Options, OrchError, Orchestrator, Outcome, Phase, Step, UnitState,
};
use mysql_async::prelude::Queryable;

fn now_opts() -> Options {
    Options {
        now: true,
        ..Options::default()
    }
}

struct DbWorld {
    w: World,
    src: MariaDb,
    dst: MariaDb,
}

/// The common world plus a source and a destination server; unit U1 also
/// moves database `shop` of server `sql1`, used by account shop@127.0.0.1.
async fn db_world(extra: &str) -> DbWorld {
    db_world_with(extra, None).await
}

/// [`db_world`] with both servers set up with `gtid` (default: distinct
/// domains 1 and 2, strict mode).
async fn db_world_with(extra: &str, gtid: Option<Gtid>) -> DbWorld {
    let (src, dst) = match gtid {
        Some(g) => tokio::join!(MariaDb::start_with(1, g), MariaDb::start_with(2, g)),
        None => (MariaDb::start(1).await, MariaDb::start(2).await),
    };
    src.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40) NOT NULL, n BIGINT NOT NULL); \
         CREATE USER 'shop'@'127.0.0.1' IDENTIFIED BY 'pw'; \
         GRANT ALL ON shop.* TO 'shop'@'127.0.0.1'",
    )
    .await;
    for i in 0..200 {
        src.exec(&format!(
            "INSERT INTO shop.orders (v, n) VALUES ('seed{i}', {i})"
        ))
        .await;
    }
    let w = world(&format!(
        "[db_servers.sql1]\nsource = \"{}\"\ndestination = \"{}\"\n\n[db]\nmax_lag = 20\ncatch_up_timeout = \"20s\"\n{extra}",
        src.url(),
        dst.url()
    ))
    .await;
    let plan = common::plan_json(true).replacen(
        r#""filers":["fs-1"],"#,
        r#""filers":["fs-1"],"databases":["shop@sql1"],"#,
        1,
    );
    std::fs::write(&w.plan, plan).unwrap();
    DbWorld { w, src, dst }
}

/// A client writing as the site does: inserts, updates, deletes, over and
/// over, reconnecting after a refusal (the freeze locks its account).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn write_loop(db: &MariaDb) -> Load {
    let url = db.url_as("shop", "pw");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let (s, a) = (stop.clone(), acked.clone());
    let task = tokio::spawn(async move {
        let mut i: u64 = 0;
        while !s.load(Ordering::SeqCst) {
            let opts =
                mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&url).unwrap())
                    .prefer_socket(false);
            let Ok(mut c) = mysql_async::Conn::new(opts).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let sql = match i % 5 {
                    3 => "UPDATE shop.orders SET n = n + 1 ORDER BY id DESC LIMIT 1".to_string(),
                    4 => "DELETE FROM shop.orders ORDER BY id LIMIT 1".to_string(),
                    _ => format!("INSERT INTO shop.orders (v, n) VALUES ('w{i}', {i})"),
                };
                if c.query_drop(&sql).await.is_err() {
                    break;
                }
                a.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    Load { stop, acked, task }
}

impl Load {
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.acked.load(Ordering::SeqCst)
    }
}

async fn rows(db: &MariaDb) -> Vec<(u64, String, i64)> {
    let mut c = db.conn().await;
    c.query("SELECT id, v, n FROM shop.orders ORDER BY id")
        .await
        .unwrap()
}

/// The end state of a moved unit: files and sites moved, the destination
/// has exactly the source's rows, the source account is locked and the
/// destination accepts the same credentials, the freeze journaled its
/// position.
async fn assert_db_moved(d: &DbWorld, o: &Orchestrator) {
    d.w.assert_moved().await;
    let (a, b) = (rows(&d.src).await, rows(&d.dst).await);
    assert!(a.len() > 100, "{}", a.len());
    assert_eq!(a, b, "row sets differ");
    let refused = d.src.conn_as("shop", "pw").await;
    assert!(refused.is_err(), "the source account is not locked");
    let mut c = d
        .dst
        .conn_as("shop", "pw")
        .await
        .expect("credentials moved");
    c.query_drop("INSERT INTO shop.orders (v, n) VALUES ('after', 0)")
        .await
        .unwrap();
    let events = o.journal().unit_events("U1").unwrap();
    let freeze_end = events
        .iter()
        .rev()
        .find(|r| {
            r.event.step == Some(Step::Freeze)
                && r.event.phase == Phase::End
                && r.event.outcome == Some(Outcome::Ok)
        })
        .expect("a freeze ended");
    let detail = freeze_end.event.detail.to_json();
    let pos = detail["databases"][0]["position"].as_str().unwrap_or("");
    // The source's position: its domain, its server id.
    let domain: String = {
        let mut c = d.src.conn().await;
        c.query_first("SELECT @@gtid_domain_id")
            .await
            .unwrap()
            .unwrap_or_default()
    };
    assert!(
        pos.starts_with(&format!("{domain}-1-")),
        "freeze detail: {detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_a_database_move_in_one_freeze_under_writes() {
    let d = db_world("").await;
    let load = write_loop(&d.src);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = d.w.start(now_opts()).await;
    let s = o.run().await.unwrap();
    let acked = load.stop().await;
    assert!(s.ok(), "{s:?}: {:?}", o.journal().status().unwrap());
    assert!(acked > 20, "the load wrote only {acked} times");
    assert_db_moved(&d, &o).await;
    // The full check ran before the freeze; inside it, only changed rows.
    let events = o.journal().unit_events("U1").unwrap();
    let ended = |step: Step| {
        events
            .iter()
            .rev()
            .find(|r| r.event.step == Some(step) && r.event.phase == Phase::End)
            .map(|r| r.event.detail.to_json())
            .unwrap_or_default()
    };
    let pre = ended(Step::PreCopy);
    let online = pre["databases"][0]["verified_online"]["scope"]
        .as_str()
        .unwrap_or("");
    assert!(online.contains("on snapshots"), "pre-copy detail: {pre}");
    let fin = ended(Step::FinalCopy);
    let scope = fin["databases"][0]["scope"].as_str().unwrap_or("");
    assert!(scope.contains("changed since"), "final copy detail: {fin}");
}

/// Issue 16 through `ferry migrate`: two stock servers, both writing in
/// GTID domain 0, the destination far ahead in it and writing to a
/// database of its own the whole time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_servers_sharing_gtid_domain_0_with_a_busy_destination() {
    let d = db_world_with("", Some(Gtid::STOCK)).await;
    d.dst
        .exec(
            "CREATE DATABASE own; CREATE TABLE own.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, n BIGINT NOT NULL); \
             SET SESSION gtid_seq_no = 500000; INSERT INTO own.t (n) VALUES (0)",
        )
        .await;
    let own_stop = Arc::new(AtomicBool::new(false));
    let own = {
        let url = d.dst.url();
        let stop = own_stop.clone();
        tokio::spawn(async move {
            let opts = mysql_async::Opts::from_url(&url).unwrap();
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                c.query_drop(format!("INSERT INTO own.t (n) VALUES ({n})"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let load = write_loop(&d.src);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = d.w.start(now_opts()).await;
    let s = o.run().await.unwrap();
    let acked = load.stop().await;
    own_stop.store(true, Ordering::SeqCst);
    let own_n = own.await.unwrap();
    assert!(s.ok(), "{s:?}: {:?}", o.journal().status().unwrap());
    assert!(acked > 20, "the load wrote only {acked} times");
    assert_db_moved(&d, &o).await;
    let mut c = d.dst.conn().await;
    let ns: Vec<u64> = c.query("SELECT n FROM own.t ORDER BY id").await.unwrap();
    assert_eq!(
        ns,
        (0..=own_n).collect::<Vec<_>>(),
        "the destination's own rows changed"
    );
}

/// Crash right after the database freeze (accounts locked, end not
/// journaled), resume with the source router unreachable: the replayed
/// freeze is abandoned, which unlocks the source (a write succeeds), and
/// the next attempt completes once the router is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_freeze_unlocks_the_source_and_the_retry_completes() {
    let d =
        db_world("\n[freeze]\ndrain_timeout = \"400ms\"\nretry_after = \"3s\"\nmax_attempts = 3\n")
            .await;
    let load = write_loop(&d.src);
    let fp = Failpoints::parse("freeze:after=kill", KillMode::Interrupt).unwrap();
    let o =
        d.w.start(Options {
            failpoints: Arc::new(fp),
            ..now_opts()
        })
        .await;
    assert!(matches!(o.run().await, Err(OrchError::Interrupted(_))));
    drop(o);
    assert!(
        d.src.conn_as("shop", "pw").await.is_err(),
        "the freeze locked the source account"
    );
    d.w.par_admin.set_down(true);
    let r = Arc::new(Orchestrator::resume(&d.w.journal, now_opts()).unwrap());
    let r2 = r.clone();
    let run = tokio::spawn(async move { r2.run().await });
    // Wait for the abandoned attempt.
    loop {
        let ev = r.journal().unit_events("U1").unwrap();
        if ev.iter().any(|e| {
            e.event.step == Some(Step::Freeze) && e.event.outcome == Some(Outcome::Abandoned)
        }) {
            break;
        }
        assert!(!run.is_finished(), "{:?}", run.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = d
        .src
        .conn_as("shop", "pw")
        .await
        .expect("the abandon unlocked the source account");
    c.query_drop("INSERT INTO shop.orders (v, n) VALUES ('between attempts', 1)")
        .await
        .expect("the source takes writes again");
    drop(c);
    d.w.par_admin.set_down(false);
    let s = run.await.unwrap().unwrap();
    load.stop().await;
    assert_eq!(s.units, vec![("U1".to_string(), UnitState::Done)]);
    let rows_dst = rows(&d.dst).await;
    assert!(rows_dst.iter().any(|r| r.1 == "between attempts"));
    assert_db_moved(&d, &r).await;
}

/// Interrupted after the freeze and inside the final copy, resumed: the
/// same end state, no lost rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_freeze_resumes_without_losing_rows() {
    for name in ["freeze:after", "final_copy:inside"] {
        let d = db_world("").await;
        let load = write_loop(&d.src);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fp = Failpoints::parse(&format!("{name}=kill"), KillMode::Interrupt).unwrap();
        let o =
            d.w.start(Options {
                failpoints: Arc::new(fp),
                ..now_opts()
            })
            .await;
        match o.run().await {
            Err(OrchError::Interrupted(n)) => assert_eq!(n, name),
            other => panic!("{name}: expected an interruption, got {other:?}"),
        }
        drop(o);
        let r = Orchestrator::resume(&d.w.journal, now_opts()).unwrap();
        let s = r.run().await.unwrap();
        load.stop().await;
        assert!(s.ok(), "{name}: {s:?}");
        assert_db_moved(&d, &r).await;
        let st = r.journal().status().unwrap().unwrap();
        let ends: Vec<Step> = st.units[0].steps.iter().map(|s| s.step).collect();
        assert_eq!(ends, Step::ALL.to_vec(), "{name}");
    }
}

/// Rollback after the flip moves the database back too: what the site
/// wrote at the destination after the flip reaches the source (no first
/// copy: the catch-up starts where the destination stood at the switch),
/// the source's account is the site's again, the destination's is locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_the_flip_moves_the_database_back_with_the_new_rows() {
    let d = db_world("").await;
    let o = d.w.start(now_opts()).await;
    assert!(o.run().await.unwrap().ok());
    assert_db_moved(&d, &o).await;
    drop(o);
    // The site lives at the destination now and keeps writing there.
    let load = write_loop(&d.dst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = Orchestrator::resume(&d.w.journal, now_opts()).unwrap();
    assert_eq!(r.rollback("U1").await.unwrap(), UnitState::RolledBack);
    let acked = load.stop().await;
    assert!(
        acked > 20,
        "the load wrote only {acked} times at the destination"
    );

    let (a, b) = (rows(&d.src).await, rows(&d.dst).await);
    assert_eq!(a, b, "the source lacks rows written at the destination");
    assert!(a.iter().any(|r| r.1.starts_with('w')), "no row of the load");
    let mut c = d
        .src
        .conn_as("shop", "pw")
        .await
        .expect("the source account is unlocked again");
    c.query_drop("INSERT INTO shop.orders (v, n) VALUES ('back home', 1)")
        .await
        .unwrap();
    assert!(
        d.dst.conn_as("shop", "pw").await.is_err(),
        "the destination account must be locked after moving back"
    );
    for s in d.w.records("par-1").await {
        assert_eq!(
            (s.placement.as_str(), s.state.as_str()),
            ("pool:par-web", "active")
        );
    }
    // The source follows nobody afterwards.
    let mut root = d.src.conn().await;
    let conns: Vec<mysql_async::Row> = root.query("SHOW ALL SLAVES STATUS").await.unwrap();
    assert!(conns.is_empty(), "the move back's catch-up is still there");
    let events = r.journal().unit_events("U1").unwrap();
    let pre = events
        .iter()
        .rev()
        .find(|e| {
            e.event.step == Some(Step::Prepare)
                && e.event.phase == Phase::End
                && e.event.direction == ferry_orch::Direction::Reverse
        })
        .expect("a reverse prepare");
    assert!(
        pre.event.detail.to_json()["databases"][0]["moving_back_from"].is_string(),
        "{:?}",
        pre.event.detail
    );
}

/// Two lanes whose units' databases live on one server: the mover allows
/// one move from a source into a destination at a time (a second
/// replication connection from it would share its GTID positions), so the
/// second unit waits for the first's turn instead of failing at prepare or
/// pre-copy. Both move with equal rows, and their database moves (first
/// step to done) do not overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lanes_with_databases_on_one_server_take_turns_and_both_move() {
    let d = db_world("").await;
    d.src
        .exec(
            "CREATE DATABASE shop2; \
             CREATE TABLE shop2.items (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL); \
             INSERT INTO shop2.items VALUES (1, 'one'), (2, 'two'), (3, 'three')",
        )
        .await;
    // One unit a hosting, each with its database, in two lanes.
    std::fs::write(
        &d.w.plan,
        r#"{"format":"ferry-plan","version":1,"generator":"test",
"parameters":{"constraints":["declared-db"],"parallel":2},
"units":[
 {"id":"U1","status":"scheduled","night":1,"lane":0,"order":0,"filers":["fs-1"],"databases":["shop@sql1"],
   "hostings":[{"name":"a","filer":"fs-1","directory":"/homes/a","sites":["a.example","www.a.example"]}]},
 {"id":"U2","status":"scheduled","night":1,"lane":1,"order":1,"filers":["fs-1"],"databases":["shop2@sql1"],
   "hostings":[{"name":"b","filer":"fs-1","directory":"/homes/b","sites":["b.example"]}]}
]}"#,
    )
    .unwrap();
    let o =
        d.w.start(Options {
            now: true,
            parallel: Some(2),
            ..Options::default()
        })
        .await;
    let s = o.run().await.unwrap();
    assert!(s.ok(), "{s:?}: {:?}", o.journal().status().unwrap());
    d.w.assert_moved().await;
    assert_eq!(rows(&d.src).await, rows(&d.dst).await, "shop differs");
    let items = |db: &MariaDb| {
        let url = db.url();
        async move {
            let opts = mysql_async::Opts::from_url(&url).unwrap();
            let mut c = mysql_async::Conn::new(opts).await.unwrap();
            let v: Vec<(i32, String)> = c
                .query("SELECT id, v FROM shop2.items ORDER BY id")
                .await
                .unwrap();
            v
        }
    };
    assert_eq!(items(&d.dst).await.len(), 3, "shop2 not moved");
    // Each unit's span, its first step begun to its last ended.
    let span = |u: &str| {
        let ev = o.journal().unit_events(u).unwrap();
        let steps: Vec<_> = ev.iter().filter(|r| r.event.step.is_some()).collect();
        (steps.first().unwrap().at_ms, steps.last().unwrap().at_ms)
    };
    let (a, b) = (span("U1"), span("U2"));
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "moves overlapped: U1 {a:?}, U2 {b:?}"
    );
}
