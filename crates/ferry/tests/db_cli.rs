//! `ferry db move` as an operator runs it by hand, against two real
//! `mariadbd` servers: a move with `--verify` (the full check before the
//! freeze, only changed rows inside it), then `--back` after the sites wrote
//! at the new home, and the exit codes of bad input; a leftover state file
//! of another move, the default state directory and `ferry db status`.

#[path = "../../ferry-db/tests/support/mod.rs"]
mod mariadb;

use std::path::Path;
use std::process::{Command, Output};

use mariadb::{Gtid, MariaDb};
use mysql_async::prelude::Queryable;

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("run ferry")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn rows(db: &MariaDb) -> Vec<(u64, String)> {
    let mut c = db.conn().await;
    c.query("SELECT id, v FROM shop.t ORDER BY id")
        .await
        .unwrap()
}

fn state(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_by_hand_then_back_with_what_was_written_since() {
    // Stock servers: both write in GTID domain 0 (issue 16), the
    // destination with a sequence of its own far ahead.
    let (src, dst) = tokio::join!(
        MariaDb::start_with(1, Gtid::STOCK),
        MariaDb::start_with(2, Gtid::STOCK)
    );
    dst.exec("CREATE DATABASE own; CREATE TABLE own.t (id INT PRIMARY KEY); SET SESSION gtid_seq_no = 100000; INSERT INTO own.t VALUES (1)")
        .await;
    src.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40)); \
         USE shop; INSERT INTO shop.t (v) SELECT CONCAT('seed ', seq) FROM seq_1_to_5000; \
         CREATE USER app@'%' IDENTIFIED BY 'pw'; GRANT ALL ON shop.* TO app@'%'",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let fwd = state(tmp.path(), "fwd.json");
    let (s_url, d_url) = (src.url(), dst.url());

    let o = ferry(&[
        "db", "move", "--from", &s_url, "--to", &d_url, "--db", "shop", "--verify", "--state", &fwd,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("verified before the freeze"), "{err}");
    assert!(err.contains("changed since"), "{err}");
    assert_eq!(rows(&src).await, rows(&dst).await);

    // The site writes at its new home; then the move goes back.
    let mut app = dst.conn_as("app", "pw").await.expect("app at the new home");
    app.query_drop("INSERT INTO shop.t (v) VALUES ('written at the new home')")
        .await
        .unwrap();
    app.query_drop("DELETE FROM shop.t WHERE id = 7")
        .await
        .unwrap();
    drop(app);
    let back = state(tmp.path(), "back.json");
    let o = ferry(&[
        "db", "move", "--back", &fwd, "--from", &d_url, "--to", &s_url, "--db", "shop", "--verify",
        "--state", &back,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let home = rows(&src).await;
    assert_eq!(home, rows(&dst).await);
    assert!(home.iter().any(|r| r.1 == "written at the new home"));
    assert!(!home.iter().any(|r| r.0 == 7));
    let mut app = src.conn_as("app", "pw").await.expect("app back home");
    app.query_drop("INSERT INTO shop.t (v) VALUES ('home again')")
        .await
        .unwrap();
    assert!(
        dst.conn_as("app", "pw").await.is_err(),
        "the old copy is locked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_and_changes_nothing() {
    let (src, dst) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    src.exec("CREATE DATABASE shop").await;
    let tmp = tempfile::tempdir().unwrap();
    let (s_url, d_url) = (src.url(), dst.url());
    let missing = state(tmp.path(), "none.json");
    for args in [
        // No forward move recorded.
        vec![
            "db", "move", "--back", &missing, "--from", &d_url, "--to", &s_url, "--db", "shop",
        ],
        // A database that does not exist.
        vec![
            "db", "move", "--from", &s_url, "--to", &d_url, "--db", "nope",
        ],
        // Not a URL.
        vec![
            "db", "move", "--from", "mysql//x", "--to", &d_url, "--db", "shop",
        ],
    ] {
        let mut a = args.clone();
        let st = state(tmp.path(), "s.json");
        a.extend(["--state", st.as_str()]);
        let o = ferry(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let mut c = dst.conn().await;
    let dbs: Vec<String> = c.query("SHOW DATABASES LIKE 'shop'").await.unwrap();
    assert!(dbs.is_empty(), "the destination was changed");
}

fn ferry_in(state_home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("XDG_STATE_HOME", state_home)
        .output()
        .expect("run ferry")
}

/// Issue 16: a state file left by an earlier move of a database with the
/// same name, between other servers, made a new move print "already
/// switched" and exit 0 with nothing moved. Now it is refused (exit 2,
/// naming what differs), and by default each move keeps its state in a
/// directory of its own, which `ferry db status` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_leftover_state_file_of_another_move_is_refused() {
    let (a, b, c, d) = tokio::join!(
        MariaDb::start_with(71, Gtid::STOCK),
        MariaDb::start_with(72, Gtid::STOCK),
        MariaDb::start_with(73, Gtid::STOCK),
        MariaDb::start_with(74, Gtid::STOCK)
    );
    for src in [&a, &c] {
        src.exec(
            "CREATE DATABASE shop; CREATE TABLE shop.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40)); \
             INSERT INTO shop.t (v) VALUES ('one'), ('two')",
        )
        .await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let leftover = state(tmp.path(), "ferry-db-shop.json");
    let o = ferry(&[
        "db",
        "move",
        "--from",
        &a.url(),
        "--to",
        &b.url(),
        "--db",
        "shop",
        "--state",
        &leftover,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let (c_url, d_url) = (c.url(), d.url());
    let o = ferry(&[
        "db", "move", "--from", &c_url, "--to", &d_url, "--db", "shop", "--state", &leftover,
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("already switched"), "{err}");
    assert!(err.contains("belongs to another move"), "{err}");
    assert!(
        err.contains(&format!(
            "recorded {}",
            a.url().trim_start_matches("mysql://root@")
        )),
        "{err}"
    );
    let mut conn = d.conn().await;
    let dbs: Vec<String> = conn.query("SHOW DATABASES LIKE 'shop'").await.unwrap();
    assert!(dbs.is_empty(), "the refused move changed the destination");

    // Without --state: a directory named for the servers and databases.
    let home = tmp.path().join("state");
    let o = ferry_in(
        &home,
        &[
            "db", "move", "--from", &c_url, "--to", &d_url, "--db", "shop",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dir = home
        .join("ferry/db")
        .join(format!("127.0.0.1_{}-to-127.0.0.1_{}-shop", c.port, d.port));
    assert!(dir.join("move.json").is_file(), "{}", stderr(&o));
    let o = ferry_in(&home, &["db", "status"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.starts_with("switched"), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{} -> 127.0.0.1:{}", c.port, d.port)),
        "{out}"
    );
    let o = ferry_in(&home, &["db", "status", &state(&dir, "move.json")]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.starts_with("move of shop: switched"), "{out}");
    assert!(out.contains("server_id 74"), "{out}");
    let o = ferry_in(&home, &["db", "status", &state(&dir, "none.json")]);
    assert_eq!(o.status.code(), Some(2));

    // --back finds the forward move's state by itself.
    let o = ferry_in(
        &home,
        &[
            "db", "move", "--back", "--from", &d_url, "--to", &c_url, "--db", "shop",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let back = home
        .join("ferry/db")
        .join(format!("127.0.0.1_{}-to-127.0.0.1_{}-shop", d.port, c.port));
    let o = ferry_in(&home, &["db", "status", &state(&back, "back.json")]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.starts_with("move back of shop: switched"), "{out}");
}
