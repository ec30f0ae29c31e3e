//! The mover on servers as they are found in a datacenter (issue 16): GTID
//! domain layouts, destinations that are busy with databases of their own
//! and replicas themselves. Every move runs with a writer at the source
//! the whole time and a writer on another database of the destination the
//! whole time; each ends with every acknowledged source write present
//! once, the destination's own writes untouched, equal checksums, a source
//! that refuses the application's writes and a destination it logs in to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_db::{Mover, Phase};
use mysql_async::prelude::Queryable;
use mysql_async::Row;

use super::support::{Gtid, MariaDb};
use super::{all_rows, config, one, seed, wait_converged, writer};

/// A client of the destination's own database `own` (not moving): one
/// insert per transaction, values 1, 2, 3, ... in the sessions' GTID
/// domains `domains` in turn, until stopped. Returns how many were
/// acknowledged; a refused write fails the test.
struct OwnWriter {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

async fn own_writer(db: &MariaDb, domains: &[u32]) -> OwnWriter {
    db.exec(
        "CREATE DATABASE own; CREATE TABLE own.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v BIGINT NOT NULL)",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    for d in domains {
        let mut c = db.conn().await;
        c.query_drop(format!("SET SESSION gtid_domain_id = {d}"))
            .await
            .unwrap();
        conns.push(c);
    }
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        while !s.load(Ordering::Relaxed) {
            let k = conns.len();
            let c = &mut conns[n as usize % k];
            n += 1;
            c.query_drop(format!("INSERT INTO own.t (v) VALUES ({n})"))
                .await
                .unwrap_or_else(|e| panic!("the destination refused its own write {n}: {e}"));
            // A steady trickle, not a flood: two cores are shared by both
            // servers, the writers and the mover.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });
    OwnWriter { stop, task }
}

impl OwnWriter {
    /// Stops the writer and checks `own.t` holds exactly its writes.
    async fn stop_and_check(self, db: &MariaDb) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.task.await.unwrap();
        assert!(n > 100, "the destination's writer wrote only {n} rows");
        let mut c = db.conn().await;
        let v: Vec<u64> = c.query("SELECT v FROM own.t ORDER BY id").await.unwrap();
        assert_eq!(
            v,
            (1..=n).collect::<Vec<_>>(),
            "the destination's own rows changed"
        );
    }
}

/// A whole move of `shop` from `src` to `dst` through the library's steps,
/// with the app writing at the source until the freeze stops it.
async fn move_under_writes(src: &MariaDb, dst: &MariaDb, state: &std::path::Path) -> Mover {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = writer(src, stop.clone(), acked.clone());
    let mut m = Mover::open(config(src, dst, state)).await.unwrap();
    m.prepare().await.unwrap();
    m.first_copy(&|_| {}).await.unwrap();
    m.catch_up().await.unwrap();
    wait_converged(&mut m, 200).await;
    let online = m.verify_online(Duration::from_secs(60)).await.unwrap();
    assert!(online.equal(), "{online:?}");
    let at_online = acked.load(Ordering::Relaxed);
    let f = m.freeze().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), w)
        .await
        .unwrap()
        .unwrap();
    assert!(err.is_some(), "the writer was not stopped by the freeze");
    assert!(
        acked.load(Ordering::Relaxed) > at_online,
        "the source's writer must write the whole time"
    );
    m.wait_applied(&f.position, Duration::from_secs(60))
        .await
        .unwrap();
    let v = m.verify_frozen().await.unwrap();
    assert!(v.equal(), "{v:?}");
    m.switch().await.unwrap();
    assert_eq!(m.phase(), Phase::Switched);
    assert!(
        all_rows(src).await == all_rows(dst).await,
        "rows lost or doubled"
    );
    match src.conn_as("app", "s3cret").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 4151, "{e:?}"),
        other => panic!(
            "the source took a login after the switch: {}",
            other.is_ok()
        ),
    }
    let mut app = dst
        .conn_as("app", "s3cret")
        .await
        .expect("the app logs in at the destination");
    app.query_drop("INSERT INTO shop.log VALUES ('at the new home')")
        .await
        .unwrap();
    m
}

async fn slaves(db: &MariaDb) -> Vec<Row> {
    let mut c = db.conn().await;
    c.query("SHOW ALL SLAVES STATUS").await.unwrap()
}

/// Issue 16: two stock servers both write in GTID domain 0 and the
/// destination has written far more transactions than the source. The
/// catch-up used to ask the source for the destination's own last GTID
/// (error 1236, "not in the master's binlog"). Then the move back, with
/// the app writing at its new home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_shared_gtid_domain_with_a_busier_destination() {
    let (src, dst) = tokio::join!(
        MariaDb::start_with(41, Gtid::STOCK),
        MariaDb::start_with(42, Gtid::STOCK)
    );
    seed(&src).await;
    // The destination's own sequence in domain 0, far ahead of the source's.
    dst.exec("CREATE DATABASE busy; CREATE TABLE busy.t (id INT PRIMARY KEY); SET SESSION gtid_seq_no = 500000; INSERT INTO busy.t VALUES (1)")
        .await;
    let own = own_writer(&dst, &[0]).await;
    let tmp = tempfile::tempdir().unwrap();
    let fwd = tmp.path().join("fwd.json");
    drop(move_under_writes(&src, &dst, &fwd).await);
    assert!(slaves(&dst).await.is_empty());

    // Back, while the app writes at the destination and the destination's
    // own writer goes on.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = writer(&dst, stop.clone(), acked.clone());
    let back_state = tmp.path().join("back.json");
    let mut m = Mover::open_reverse(config(&dst, &src, &back_state), &fwd)
        .await
        .unwrap();
    m.catch_up().await.unwrap();
    wait_converged(&mut m, 200).await;
    let f = m.freeze().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), w)
        .await
        .unwrap()
        .unwrap();
    assert!(
        err.is_some(),
        "the freeze at the destination did not stop the app"
    );
    assert!(acked.load(Ordering::Relaxed) > 50);
    m.wait_applied(&f.position, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(m.verify().await.unwrap().equal());
    m.switch().await.unwrap();
    assert!(all_rows(&src).await == all_rows(&dst).await);
    src.conn_as("app", "s3cret")
        .await
        .expect("the app is home again");
    assert!(dst.conn_as("app", "s3cret").await.is_err());
    assert!(slaves(&src).await.is_empty());
    own.stop_and_check(&dst).await;
    assert_eq!(one(&dst, "SELECT COUNT(*) FROM busy.t").await, "1");
}
