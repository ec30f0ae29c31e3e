//! The mover against real MariaDB servers (see `support`): moves under
//! continuous writes, the freeze, resume after a kill, accounts, rollback
//! and bad input.

mod layouts;
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_db::{Error, Mover, MoverConfig, Phase, Scope, Side};
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};
use support::MariaDb;

const SEED_ORDERS: u64 = 20_000;

/// A shop database with the shapes a copy gets wrong: an auto-increment
/// key, a composite key, a table without a key, binary and non-ASCII data,
/// NULLs, a generated column, a view; an app account with database grants
/// and a report account with a table grant.
async fn seed(src: &MariaDb) {
    src.exec(&format!(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; USE shop;
         CREATE TABLE shop.orders (
            id BIGINT AUTO_INCREMENT PRIMARY KEY,
            customer VARCHAR(64) NOT NULL,
            amount DECIMAL(10,2) NOT NULL,
            ratio DOUBLE,
            flags BIT(5),
            note BLOB NULL,
            created DATETIME(3) NOT NULL,
            doubled DECIMAL(12,2) AS (amount * 2) VIRTUAL
         ) ENGINE=InnoDB;
         CREATE TABLE shop.items (
            order_id BIGINT NOT NULL, line INT NOT NULL, sku VARCHAR(32) CHARACTER SET latin1,
            PRIMARY KEY (order_id, line)) ENGINE=InnoDB;
         CREATE TABLE shop.log (msg TEXT) ENGINE=InnoDB;
         INSERT INTO shop.orders (customer, amount, ratio, flags, note, created)
           SELECT CONCAT('café ✓ ', seq, ' it''s \\\\ \"q\"'), seq / 7, seq / 3.0, seq % 32,
                  IF(seq % 5 = 0, NULL, UNHEX(SHA2(seq, 256))),
                  '2024-01-01 00:00:00.123' + INTERVAL seq SECOND
           FROM seq_1_to_{SEED_ORDERS};
         INSERT INTO shop.items SELECT seq DIV 3 + 1, seq % 3, CONCAT('sku-', seq) FROM seq_0_to_5999;
         INSERT INTO shop.log SELECT CONCAT('line ', seq) FROM seq_1_to_500;
         CREATE VIEW shop.big_orders AS SELECT id, amount FROM shop.orders WHERE amount > 100;
         CREATE TRIGGER shop.log_delete AFTER DELETE ON shop.items FOR EACH ROW
           INSERT INTO shop.log VALUES (CONCAT('deleted item ', OLD.order_id));
         CREATE FUNCTION shop.vat(x DECIMAL(10,2)) RETURNS DECIMAL(10,2) DETERMINISTIC RETURN x * 1.2;
         CREATE EVENT shop.nightly ON SCHEDULE EVERY 1 DAY STARTS CURRENT_TIMESTAMP + INTERVAL 1 DAY
           DO DELETE FROM shop.log WHERE msg = 'expired';
         CREATE USER app@'%' IDENTIFIED BY 's3cret';
         GRANT SELECT, INSERT, UPDATE, DELETE ON shop.* TO app@'%';
         CREATE USER report@'%' IDENTIFIED BY 'r3port';
         GRANT SELECT ON shop.orders TO report@'%';"
    ))
    .await;
}

/// A client loop writing as the app account: inserts, updates, deletes,
/// until stopped or refused. Returns the count of acknowledged writes and
/// the error that stopped it.
fn writer(
    db: &MariaDb,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Option<mysql_async::Error>> {
    let url = db.url_as("app", "s3cret");
    tokio::spawn(async move {
        let opts = mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&url).unwrap())
            .prefer_socket(false);
        let mut c = match mysql_async::Conn::new(opts).await {
            Ok(c) => c,
            Err(e) => return Some(e),
        };
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = x % SEED_ORDERS + 1;
            let sql = match x % 10 {
                0..=4 => format!(
                    "INSERT INTO shop.orders (customer, amount, ratio, flags, note, created) \
                     VALUES ('w{x}', {}, {}, {}, UNHEX('00ff{:04x}'), NOW(3))",
                    x % 1000,
                    (x % 77) as f64 / 13.0,
                    x % 32,
                    x % 65536
                ),
                5..=6 => format!(
                    "UPDATE shop.orders SET amount = amount + 1, note = NULL WHERE id = {id}"
                ),
                7 => format!("DELETE FROM shop.orders WHERE id = {id}"),
                8 => format!(
                    "INSERT IGNORE INTO shop.items VALUES ({id}, {}, 'n{x}')",
                    x % 50 + 3
                ),
                _ => format!("INSERT INTO shop.log VALUES ('w{x}')"),
            };
            if let Err(e) = c.query_drop(&sql).await {
                return Some(e);
            }
            acked.fetch_add(1, Ordering::Relaxed);
        }
        None
    })
}

async fn rows(db: &MariaDb, sql: &str) -> Vec<Vec<Value>> {
    let mut c = db.conn().await;
    let r: Vec<Row> = c.query(sql).await.unwrap();
    r.into_iter().map(|r| r.unwrap()).collect()
}

/// Every table's full row set, ordered: equal means nothing lost, nothing
/// doubled, nothing changed.
async fn all_rows(db: &MariaDb) -> Vec<Vec<Vec<Value>>> {
    vec![
        rows(db, "SELECT * FROM shop.orders ORDER BY id").await,
        rows(db, "SELECT * FROM shop.items ORDER BY order_id, line").await,
        rows(
            db,
            "SELECT msg, COUNT(*) FROM shop.log GROUP BY msg ORDER BY msg",
        )
        .await,
        rows(db, "SELECT * FROM shop.big_orders ORDER BY id").await,
    ]
}

fn config(src: &MariaDb, dst: &MariaDb, state: &Path) -> MoverConfig {
    let mut cfg =
        MoverConfig::new(&src.url(), &dst.url(), vec!["shop".into()], state.into()).unwrap();
    // Small chunks: many of them, so chunk edges are exercised.
    cfg.chunk_rows = 1500;
    cfg
}

async fn wait_converged(m: &mut Mover, max_behind: u64) {
    let started = Instant::now();
    loop {
        let lag = m.lag().await.unwrap();
        if lag.transactions <= max_behind {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no convergence: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn grants(db: &MariaDb, account: &str) -> Vec<String> {
    let mut c = db.conn().await;
    let mut g: Vec<String> = c.query(format!("SHOW GRANTS FOR {account}")).await.unwrap();
    g.sort();
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_under_writes_with_no_loss_and_refuses_writes_after_freeze() {
    let (src, dst) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    seed(&src).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("move.json");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = writer(&src, stop.clone(), acked.clone());

    let mut m = Mover::open(config(&src, &dst, &state)).await.unwrap();
    let prep = m.prepare().await.unwrap();
    assert_eq!(prep.accounts.len(), 2, "{:?}", prep.accounts);
    let copy = m.first_copy(&|_| {}).await.unwrap();
    eprintln!(
        "first copy: {} rows, {} chunks, {:.1} MB in {:?} ({:.0} rows/s), snapshot lock {:?}",
        copy.rows,
        copy.chunks,
        copy.bytes as f64 / 1e6,
        copy.elapsed,
        copy.rows as f64 / copy.elapsed.as_secs_f64(),
        copy.lock_held
    );
    assert!(copy.chunks > 10);
    // By default the copied rows are in the destination's binary log.
    assert!(write_rows_events(&dst).await > 0);
    // They went as LOAD DATA LOCAL INFILE (the server allows it by default).
    let loads: Vec<(String, u64)> = dst
        .conn()
        .await
        .query("SHOW GLOBAL STATUS LIKE 'Com_load'")
        .await
        .unwrap();
    assert!(loads[0].1 >= copy.chunks, "{loads:?}");
    // The event came along, off until the switch.
    let status = "SELECT STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'shop'";
    assert_eq!(one(&dst, status).await, "DISABLED");
    assert_eq!(one(&src, status).await, "ENABLED");
    let at_copy = acked.load(Ordering::Relaxed);
    m.catch_up().await.unwrap();
    // Let the writer go on against a running catch-up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_converged(&mut m, 200).await;
    assert!(
        acked.load(Ordering::Relaxed) > at_copy + 50,
        "the writer must write during catch-up"
    );
    // The full check on snapshots, with the writer still writing.
    let online = m.verify_online(Duration::from_secs(30)).await.unwrap();
    assert!(online.equal(), "{online:?}");
    assert!(
        matches!(online.scope, Scope::Snapshot { .. }),
        "{:?}",
        online.scope
    );
    assert!(online.rows() as u64 >= SEED_ORDERS / 2, "{online:?}");
    let at_online = acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_converged(&mut m, 200).await;
    assert!(
        acked.load(Ordering::Relaxed) > at_online,
        "the writer must write after the online check"
    );

    let frozen_at = Instant::now();
    let f = m.freeze().await.unwrap();
    // The writer's session was killed: its next write fails.
    let err = tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .unwrap()
        .unwrap();
    assert!(err.is_some(), "the writer was not stopped by the freeze");
    // A new session of the app is refused: the account is locked.
    match src.conn_as("app", "s3cret").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 4151, "{e:?}"),
        other => panic!(
            "a write session at the frozen source was accepted: {:?}",
            other.is_ok()
        ),
    }
    m.wait_applied(&f.position, Duration::from_secs(10))
        .await
        .unwrap();
    let v = m.verify_frozen().await.unwrap();
    assert!(v.equal(), "{v:?}");
    // Inside the freeze only the rows changed since the online check, and
    // in full the table without a key.
    let (keys, whole_tables) = changed_rows(&v);
    assert!(keys > 0, "{v:?}");
    assert_eq!(whole_tables.len(), 1, "{whole_tables:?}");
    assert!(whole_tables[0].starts_with("shop.log"), "{whole_tables:?}");
    let sw = m.switch().await.unwrap();
    let freeze_len = frozen_at.elapsed();
    eprintln!(
        "freeze to switch: {freeze_len:?} (locked {}, sessions ended {}, verified {} rows in {} chunks)",
        f.locked.len(),
        f.sessions_ended,
        v.rows(),
        v.chunks()
    );
    assert_eq!(sw.accounts.len(), 2);
    assert_eq!(m.phase(), Phase::Switched);
    // The event runs at the new home only.
    assert_eq!(one(&dst, status).await, "ENABLED");
    assert_eq!(one(&src, status).await, "DISABLED");

    // Zero lost, zero doubled: the full row sets are equal.
    let (a, b) = (all_rows(&src).await, all_rows(&dst).await);
    assert_eq!(a[0].len(), b[0].len());
    assert!(a == b, "row sets differ after the switch");
    assert!(a[0].len() as u64 > SEED_ORDERS / 2);

    // Triggers and routines came along.
    let programs = rows(
        &dst,
        "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'shop' \
         UNION ALL SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'shop'",
    )
    .await;
    assert_eq!(programs.len(), 2, "{programs:?}");

    // Credentials and grants came along; the app writes at its new home.
    for acc in ["app@'%'", "report@'%'"] {
        assert_eq!(grants(&src, acc).await, grants(&dst, acc).await);
    }
    let mut app = dst
        .conn_as("app", "s3cret")
        .await
        .expect("app logs in at the destination");
    app.query_drop("INSERT INTO shop.log VALUES ('after switch')")
        .await
        .unwrap();
    assert!(dst.conn_as("app", "wrong").await.is_err());
    let mut root = dst.conn().await;
    let conns: Vec<Row> = root.query("SHOW ALL SLAVES STATUS").await.unwrap();
    assert!(
        conns.is_empty(),
        "the catch-up connection must be gone after the switch"
    );
    // The source stays locked after the switch.
    assert!(src.conn_as("app", "s3cret").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mover_resumes_catch_up_from_its_recorded_position() {
    let (src, dst) = tokio::join!(MariaDb::start(11), MariaDb::start(12));
    seed(&src).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("move.json");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let w = writer(&src, stop.clone(), acked.clone());

    let cfg = config(&src, &dst, &state);
    let task = tokio::spawn(async move {
        let mut m = Mover::open(cfg).await.unwrap();
        m.prepare().await.unwrap();
        m.first_copy(&|_| {}).await.unwrap();
        m.catch_up().await.unwrap();
        loop {
            m.lag().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Kill it mid catch-up: once the state file says it is catching up and
    // has recorded an applied position.
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        if text.contains("catching_up") && text.contains("\"applied\": \"") {
            break;
        }
        assert!(!task.is_finished(), "the mover failed before its catch-up");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no catch-up: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    // Worst case for the resume: the catch-up stopped with the mover (as
    // after a destination restart), and writes went on meanwhile.
    dst.exec("STOP SLAVE 'ferry_shop'").await;
    let before = acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(acked.load(Ordering::Relaxed) > before + 50);

    let mut m = Mover::open(config(&src, &dst, &state)).await.unwrap();
    assert!(m.resumed());
    assert_eq!(m.phase(), Phase::CatchingUp);
    m.catch_up().await.unwrap();
    wait_converged(&mut m, 200).await;
    let f = m.freeze().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = w.await;
    m.wait_applied(&f.position, Duration::from_secs(20))
        .await
        .unwrap();
    let v = m.verify().await.unwrap();
    assert!(v.equal(), "{v:?}");
    m.switch().await.unwrap();
    assert!(
        all_rows(&src).await == all_rows(&dst).await,
        "rows lost or doubled across the resume"
    );
}

async fn databases(db: &MariaDb) -> Vec<Vec<Value>> {
    rows(db, "SHOW DATABASES").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_freeze_leaves_the_source_writable_and_the_destination_clean() {
    let (src, dst) = tokio::join!(MariaDb::start(21), MariaDb::start(22));
    seed(&src).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("move.json");
    let src_before = all_rows(&src).await;
    let dst_dbs = databases(&dst).await;
    let mut m = Mover::open(config(&src, &dst, &state)).await.unwrap();
    m.prepare().await.unwrap();
    m.first_copy(&|_| {}).await.unwrap();
    m.catch_up().await.unwrap();
    let f = m.freeze().await.unwrap();
    assert_eq!(f.locked.len(), 2);
    assert!(src.conn_as("app", "s3cret").await.is_err());
    m.rollback().await.unwrap();
    assert_eq!(m.phase(), Phase::RolledBack);
    assert_eq!(databases(&dst).await, dst_dbs);
    assert!(
        all_rows(&src).await == src_before,
        "rollback changed the source"
    );
    let mut app = src.conn_as("app", "s3cret").await.expect("app unlocked");
    app.query_drop("INSERT INTO shop.log VALUES ('after rollback')")
        .await
        .unwrap();
    let mut root = dst.conn().await;
    let conns: Vec<Row> = root.query("SHOW ALL SLAVES STATUS").await.unwrap();
    assert!(conns.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let (src, dst) = tokio::join!(MariaDb::start(31), MariaDb::start(32));
    seed(&src).await;
    dst.exec("CREATE DATABASE taken; CREATE TABLE taken.t (id INT PRIMARY KEY); INSERT INTO taken.t VALUES (7)")
        .await;
    src.exec("CREATE DATABASE taken").await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("move.json");
    let before = (
        databases(&src).await,
        databases(&dst).await,
        all_rows(&src).await,
    );

    let open = |from: String, to: String, db: &str| {
        let cfg = MoverConfig::new(&from, &to, vec![db.into()], state.clone()).unwrap();
        async move {
            match Mover::open(cfg).await {
                Ok(mut m) => m.prepare().await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
    };

    let e = open(src.url_as("root", "nope"), dst.url(), "shop")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::AccessDenied {
                side: Side::Source,
                ..
            }
        ),
        "{e}"
    );
    eprintln!("wrong source password: {e}");
    let e = open(src.url(), dst.url_as("root", "nope"), "shop")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::AccessDenied {
                side: Side::Destination,
                ..
            }
        ),
        "{e}"
    );
    let e = open(src.url(), dst.url(), "nosuchdb").await.unwrap_err();
    assert!(
        matches!(e, Error::DatabaseMissing { ref db, .. } if db == "nosuchdb"),
        "{e}"
    );
    eprintln!("missing database: {e}");
    let e = open(src.url(), dst.url(), "taken").await.unwrap_err();
    assert!(
        matches!(e, Error::DatabaseExists { ref db, .. } if db == "taken"),
        "{e}"
    );
    eprintln!("existing database: {e}");
    let e =
        MoverConfig::new("http://x", &dst.url(), vec!["shop".into()], state.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidUrl {
                side: Side::Source,
                ..
            }
        ),
        "{e}"
    );

    assert!(
        !state.exists(),
        "a refused move must not leave a state file"
    );
    let after = (
        databases(&src).await,
        databases(&dst).await,
        all_rows(&src).await,
    );
    assert!(before == after, "a refused move changed a server");
    assert_eq!(rows(&dst, "SELECT * FROM taken.t").await.len(), 1);
    let mut root = dst.conn().await;
    let conns: Vec<Row> = root.query("SHOW ALL SLAVES STATUS").await.unwrap();
    assert!(conns.is_empty());
    src.conn_as("app", "s3cret")
        .await
        .expect("the source's accounts are untouched");
}

/// An abandoned freeze: `unfreeze` unlocks the accounts and the catch-up
/// goes on (a write made after it reaches the destination); the next
/// freeze and a switch interrupted after removing the replication
/// connection (replayed from the state file) still end with equal data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfreeze_keeps_the_catch_up_and_an_interrupted_switch_replays() {
    let (src, dst) = tokio::join!(MariaDb::start(31), MariaDb::start(32));
    seed(&src).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("move.json");
    let mut m = Mover::open(config(&src, &dst, &state)).await.unwrap();
    m.prepare().await.unwrap();
    m.first_copy(&|_| {}).await.unwrap();
    m.catch_up().await.unwrap();
    m.freeze().await.unwrap();
    assert!(src.conn_as("app", "s3cret").await.is_err());
    m.unfreeze().await.unwrap();
    assert_eq!(m.phase(), Phase::CatchingUp);
    assert!(m.frozen_at().is_none());
    let mut app = src.conn_as("app", "s3cret").await.expect("app unlocked");
    app.query_drop("INSERT INTO shop.log VALUES ('between freezes')")
        .await
        .unwrap();
    drop(app);
    let f = m.freeze().await.unwrap();
    assert_eq!(f.locked.len(), 2, "locked again by the second freeze");
    m.wait_applied(&f.position, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(m.verify().await.unwrap().equal());
    // A switch that stopped right after removing the connection: the
    // state file says the check passed; the connection is gone.
    let text = std::fs::read_to_string(&state).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["switch_checked"] = serde_json::Value::Bool(true);
    std::fs::write(&state, v.to_string()).unwrap();
    dst.exec("STOP SLAVE 'ferry_shop'; RESET SLAVE 'ferry_shop' ALL")
        .await;
    drop(m);
    let mut m = Mover::open(config(&src, &dst, &state)).await.unwrap();
    m.switch().await.unwrap();
    assert_eq!(m.phase(), Phase::Switched);
    assert!(all_rows(&src).await == all_rows(&dst).await);
    assert!(dst.conn_as("app", "s3cret").await.is_ok());
}

/// What a freeze check covered: changed rows by key, tables in full.
fn changed_rows(v: &ferry_db::VerifyReport) -> (u64, Vec<String>) {
    match &v.scope {
        Scope::Changed {
            keys, whole_tables, ..
        } => (*keys, whole_tables.clone()),
        other => panic!("the freeze checked {other}"),
    }
}

/// Row events in every binary log file of `db`.
async fn write_rows_events(db: &MariaDb) -> usize {
    let mut c = db.conn().await;
    let files: Vec<Row> = c.query("SHOW BINARY LOGS").await.unwrap();
    let mut n = 0;
    for f in files {
        let name: String = f.get(0).unwrap();
        let events: Vec<Row> = c
            .query(format!("SHOW BINLOG EVENTS IN '{name}'"))
            .await
            .unwrap();
        n += events
            .iter()
            .filter(|e| {
                e.get::<String, _>("Event_type")
                    .is_some_and(|t| t.starts_with("Write_rows"))
            })
            .count();
    }
    n
}

/// Reads one value from `db`.
async fn one(db: &MariaDb, sql: &str) -> String {
    let mut c = db.conn().await;
    let v: Option<String> = c.query_first(sql).await.unwrap();
    v.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_find_a_destination_row_that_differs_before_and_inside_the_freeze() {
    let (src, dst) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    seed(&src).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&src, &dst, &tmp.path().join("m.json"));
    cfg.dest_binlog = false;
    // A destination that refuses LOAD DATA LOCAL: the copy uses INSERTs.
    dst.exec("SET GLOBAL local_infile = OFF").await;
    let mut m = Mover::open(cfg).await.unwrap();
    m.prepare().await.unwrap();
    m.first_copy(&|_| {}).await.unwrap();
    // A copy kept out of the destination's binary log.
    assert_eq!(write_rows_events(&dst).await, 0);
    assert_eq!(
        one(&dst, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'COM_LOAD'").await,
        "0"
    );
    m.catch_up().await.unwrap();
    wait_converged(&mut m, 0).await;

    // A row changed behind the catch-up's back at the destination: the
    // online check names its chunk.
    let original = one(&src, "SELECT amount FROM shop.orders WHERE id = 500").await;
    dst.exec("UPDATE shop.orders SET amount = amount + 1 WHERE id = 500")
        .await;
    let online = m.verify_online(Duration::from_secs(30)).await.unwrap();
    assert!(!online.equal());
    let bad: Vec<&String> = online.tables.iter().flat_map(|t| &t.mismatched).collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("shop.orders"), "{bad:?}");
    dst.exec(&format!(
        "UPDATE shop.orders SET amount = {original} WHERE id = 500"
    ))
    .await;
    let online = m.verify_online(Duration::from_secs(30)).await.unwrap();
    assert!(online.equal(), "{online:?}");

    // Changes after the online check: the freeze check looks at exactly
    // those rows, and finds the one that differs at the destination.
    src.exec(
        "UPDATE shop.orders SET amount = amount + 5 WHERE id IN (10, 11, 12);
         UPDATE shop.items SET sku = 'changed' WHERE order_id = 7 AND line = 1;
         DELETE FROM shop.orders WHERE id = 13;",
    )
    .await;
    let f = m.freeze().await.unwrap();
    m.wait_applied(&f.position, Duration::from_secs(30))
        .await
        .unwrap();
    let v = m.verify_frozen().await.unwrap();
    assert!(v.equal(), "{v:?}");
    let (keys, whole_tables) = changed_rows(&v);
    assert_eq!(keys, 5, "{v:?}");
    assert!(whole_tables.is_empty(), "{whole_tables:?}");
    dst.exec("UPDATE shop.orders SET amount = 0 WHERE id = 11")
        .await;
    let v = m.verify_frozen().await.unwrap();
    assert!(!v.equal());
    let bad: Vec<&String> = v.tables.iter().flat_map(|t| &t.mismatched).collect();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("shop.orders"), "{bad:?}");
    // The full check agrees.
    assert!(!m.verify().await.unwrap().equal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_after_the_online_check_makes_the_freeze_check_everything() {
    let (src, dst) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    seed(&src).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut m = Mover::open(config(&src, &dst, &tmp.path().join("m.json")))
        .await
        .unwrap();
    m.prepare().await.unwrap();
    m.first_copy(&|_| {}).await.unwrap();
    m.catch_up().await.unwrap();
    wait_converged(&mut m, 0).await;
    assert!(m
        .verify_online(Duration::from_secs(30))
        .await
        .unwrap()
        .equal());
    src.exec("ALTER TABLE shop.items ADD COLUMN extra INT NOT NULL DEFAULT 7")
        .await;
    let f = m.freeze().await.unwrap();
    m.wait_applied(&f.position, Duration::from_secs(30))
        .await
        .unwrap();
    let v = m.verify_frozen().await.unwrap();
    assert!(v.equal(), "{v:?}");
    match &v.scope {
        Scope::FullBecause(why) => assert!(why.contains("ALTER TABLE"), "{why}"),
        other => panic!("the freeze checked {other}"),
    }
    assert!(v.rows() as u64 > SEED_ORDERS / 2);
}
