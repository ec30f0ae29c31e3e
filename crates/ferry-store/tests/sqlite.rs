//! Tests of `SqliteStore`: the shared conformance suite, then what only a file-backed
//! SQLite store has to prove (reopening, old files, crashes, corrupt rows, bulk).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};
use ferry_store::{conformance, SqliteStore, Store, StoreError, SCHEMA_VERSION};
use rusqlite::Connection;

fn host(name: &str) -> Hostname {
    Hostname::parse(name).unwrap()
}

fn record(name: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
    SiteRecord {
        host: host(name),
        placement: Placement::parse(placement).unwrap(),
        state,
        epoch: Epoch(epoch),
    }
}

/// `count` records `{prefix}{i}.example.com`, all at `epoch`.
fn batch(prefix: &str, count: usize, epoch: u64) -> Vec<SiteRecord> {
    (0..count)
        .map(|i| {
            record(
                &format!("{prefix}{i:06}.example.com"),
                "pool:web",
                SiteState::Active,
                epoch,
            )
        })
        .collect()
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("control.db")
}

#[test]
fn conformance_in_memory() {
    conformance::run_all(&|| Box::new(SqliteStore::in_memory().unwrap()));
}

#[test]
fn conformance_file_backed() {
    let dir = tempfile::tempdir().unwrap();
    let n = Cell::new(0);
    conformance::run_all(&|| {
        n.set(n.get() + 1);
        let path = dir.path().join(format!("store{}.db", n.get()));
        Box::new(SqliteStore::open(&path).unwrap())
    });
}

#[test]
fn reopened_store_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let sites = vec![
        record("a.example.com", "pool:web", SiteState::Frozen, 4),
        record("b.example.com", "remote:dc2", SiteState::Active, 5),
    ];
    {
        let store = SqliteStore::open(&path).unwrap();
        store.put_sites(&sites).unwrap();
        store
            .put_server_state("web", "w1", ServerState::Drain)
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.sites().unwrap(), sites);
    assert_eq!(
        store.server_states().unwrap(),
        vec![("web".into(), "w1".into(), ServerState::Drain)]
    );
    drop(store);

    let raw = Connection::open(&path).unwrap();
    let version: u32 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = raw
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// Pins schema version 1: a file written by that release opens and reads the same.
#[test]
fn v1_fixture_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    Connection::open(&path)
        .unwrap()
        .execute_batch(include_str!("fixtures/v1.sql"))
        .unwrap();

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.sites().unwrap(),
        vec![
            record("*.example.com", "remote:dc2", SiteState::Maintenance, 12),
            record(
                "blog.example.org",
                "pool:php-8",
                SiteState::Frozen,
                i64::MAX as u64
            ),
            record("shop.example.com", "pool:web", SiteState::Active, 3),
        ]
    );
    assert_eq!(
        store.server_states().unwrap(),
        vec![
            ("php-8".into(), "php1".into(), ServerState::Ready),
            ("web".into(), "web1".into(), ServerState::Drain),
            ("web".into(), "web2".into(), ServerState::Maint),
        ]
    );
    // The version-1 journal table is no longer read or written, and kept as is.
    let rows: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3);
    // And it stays writable.
    store
        .put_sites(&[record(
            "shop.example.com",
            "remote:dc2",
            SiteState::Active,
            4,
        )])
        .unwrap();
    assert_eq!(
        store
            .site(&host("shop.example.com"))
            .unwrap()
            .unwrap()
            .epoch,
        Epoch(4)
    );
}

#[test]
fn newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let newer = SCHEMA_VERSION + 1;
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE sites_v2 (x); PRAGMA user_version = {newer};"
        ))
        .unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::NewerSchema {
            path: p,
            found,
            supported,
        }) => {
            assert_eq!((p, found, supported), (path.clone(), newer, SCHEMA_VERSION));
        }
        Err(other) => panic!("expected NewerSchema, got {other}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
    let mode: String = Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(
        mode, "delete",
        "the refused file's journal mode was changed"
    );
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    let other_app = dir.path().join("other.db");
    Connection::open(&other_app)
        .unwrap()
        .execute_batch("CREATE TABLE users (name TEXT);")
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&other_app),
        Err(StoreError::NotAStore { path }) if path == other_app
    ));

    let not_sqlite = dir.path().join("notes.txt");
    std::fs::write(&not_sqlite, "x".repeat(4096)).unwrap();
    assert!(matches!(
        SqliteStore::open(&not_sqlite),
        Err(StoreError::Open { path, .. }) if path == not_sqlite
    ));

    let missing_dir = dir.path().join("no/such/dir/control.db");
    let err = SqliteStore::open(&missing_dir).err().unwrap();
    assert!(
        err.to_string().contains("no/such/dir/control.db"),
        "error does not name the path: {err}"
    );
}

/// A batch that fails partway, as a killed writer would, leaves nothing behind.
#[test]
fn failed_put_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    let before = batch("keep", 10, 1);
    store.put_sites(&before).unwrap();

    // Overwrites of existing hosts and new hosts first, then one that SQLite cannot
    // hold: the error comes after thousands of rows were written in the transaction.
    let mut doomed = batch("keep", 10, 2);
    doomed.extend(batch("new", 5_000, 1));
    doomed.push(record(
        "last.example.com",
        "pool:web",
        SiteState::Active,
        u64::MAX,
    ));
    match store.put_sites(&doomed) {
        Err(StoreError::Unstorable { host, .. }) => assert_eq!(host.as_str(), "last.example.com"),
        other => panic!("expected Unstorable, got {other:?}"),
    }
    assert_eq!(store.sites().unwrap(), before);
    // The connection is usable afterwards: the transaction was rolled back, not left
    // open.
    store.put_sites(&batch("new", 3, 1)).unwrap();
    assert_eq!(store.sites().unwrap().len(), 13);
    drop(store);
    assert_eq!(
        SqliteStore::open(&db_path(&dir))
            .unwrap()
            .sites()
            .unwrap()
            .len(),
        13
    );
}

/// Another process (here: another connection) reading the file while a router
/// writes sees each batch whole or not at all.
#[test]
fn other_connections_see_whole_batches() {
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let writer = SqliteStore::open(&db_path(&dir)).unwrap();
    let reader = SqliteStore::open(&db_path(&dir)).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| loop {
            let finished = done.load(Ordering::Acquire);
            let seen = reader.sites().unwrap();
            assert!(
                seen.is_empty() || seen.len() == N,
                "reader saw {} rows",
                seen.len()
            );
            if let Some(first) = seen.first() {
                assert!(seen.iter().all(|r| r.epoch == first.epoch));
            }
            if finished {
                assert_eq!(seen.len(), N);
                assert_eq!(seen[0].epoch, Epoch(10));
                break;
            }
        });
        for epoch in 1..=10 {
            writer.put_sites(&batch("s", N, epoch)).unwrap();
        }
        done.store(true, Ordering::Release);
    });
}

#[test]
fn corrupt_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let cases = [
        (
            "INSERT INTO sites VALUES ('bad.example.com', 'bucket:x', 'active', 1)",
            "site \"bad.example.com\"",
        ),
        (
            "INSERT INTO sites VALUES ('bad.example.com', 'pool:web', 'sleeping', 1)",
            "site \"bad.example.com\"",
        ),
        (
            "INSERT INTO sites VALUES ('bad.example.com', 'pool:web', 'active', -1)",
            "site \"bad.example.com\"",
        ),
        (
            "INSERT INTO sites VALUES ('bad.example.com', 7, 'active', 1)",
            "site \"bad.example.com\"",
        ),
        (
            "INSERT INTO sites VALUES ('Bad.Example.com', 'pool:web', 'active', 1)",
            "site \"Bad.Example.com\"",
        ),
        (
            "INSERT INTO sites VALUES ('bad host', 'pool:web', 'active', 1)",
            "site \"bad host\"",
        ),
        (
            "INSERT INTO server_states VALUES ('web', 'w9', 'asleep')",
            "server state of web/w9",
        ),
    ];
    for (i, (insert, named)) in cases.iter().enumerate() {
        let path = path.with_extension(format!("{i}.db"));
        let store = SqliteStore::open(&path).unwrap();
        let good = record("good.example.com", "pool:web", SiteState::Active, 1);
        store.put_sites(std::slice::from_ref(&good)).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(insert, [])
            .unwrap();

        let err = if insert.contains("server_states") {
            store.server_states().unwrap_err()
        } else {
            // The good row still reads alone; the list as a whole does not.
            assert_eq!(store.site(&good.host).unwrap(), Some(good));
            store.sites().unwrap_err()
        };
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what == named),
            "case {insert}: expected Corrupt naming {named}, got {err}"
        );
    }
}

#[test]
fn bulk_put_of_100k() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    let records = batch("bulk", 100_000, 7);
    store.put_sites(&records).unwrap();
    let read = store.sites().unwrap();
    assert_eq!(read.len(), 100_000);
    // Host names are zero-padded, so creation order is host order.
    assert_eq!(read[0], records[0]);
    assert_eq!(read[54_321], records[54_321]);
    assert_eq!(read[99_999], records[99_999]);
    assert_eq!(
        store.site(&records[77_777].host).unwrap().as_ref(),
        Some(&records[77_777])
    );
}

const CRASH_CHILD_ENV: &str = "FERRY_STORE_CRASH_CHILD_DB";
const CRASH_FIRST: usize = 20_000;
const CRASH_BIG: usize = 200_000;

/// The writer half of `killed_writer_leaves_all_or_nothing`, run in a child process;
/// without its environment variable it does nothing.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let store = SqliteStore::open(Path::new(&path)).unwrap();
    let first = batch("first", CRASH_FIRST, 1);
    let big = batch("big", CRASH_BIG, 1);
    let started = Instant::now();
    store.put_sites(&first).unwrap();
    // Aim for the middle of the big batch: half its expected duration.
    let halfway = started.elapsed() * (CRASH_BIG / CRASH_FIRST / 2) as u32;
    std::thread::spawn(move || store.put_sites(&big));
    std::thread::sleep(halfway.max(Duration::from_millis(5)));
    std::process::abort();
}

/// A writer process killed in the middle of a batch: the file opens afterwards and
/// holds either the whole batch or none of it.
#[test]
fn killed_writer_leaves_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");

    let store = SqliteStore::open(&path).unwrap();
    let count = store.sites().unwrap().len();
    assert!(
        count == CRASH_FIRST || count == CRASH_FIRST + CRASH_BIG,
        "after the crash the store holds {count} sites, a partial batch"
    );
    eprintln!(
        "killed writer: the big batch was {}",
        if count == CRASH_FIRST {
            "lost whole"
        } else {
            "committed whole"
        }
    );
    store.put_sites(&batch("after", 1, 1)).unwrap();
    assert_eq!(store.sites().unwrap().len(), count + 1);
}

/// Pins schema version 2: the servers that joined pools at run time read
/// back as written, and a version-1 file gains the (empty) table.
#[test]
fn v2_fixture_still_opens() {
    use ferry_store::JoinedServer;
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    Connection::open(&path)
        .unwrap()
        .execute_batch(include_str!("fixtures/v2.sql"))
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.joined_servers().unwrap(),
        vec![
            JoinedServer {
                pool: "web".into(),
                name: "extra1".into(),
                address: "10.0.0.21:80".parse().unwrap(),
                tier: 0,
                weight: 1,
            },
            JoinedServer {
                pool: "web".into(),
                name: "extra2".into(),
                address: "[2001:db8::22]:8080".parse().unwrap(),
                tier: 1,
                weight: 4,
            },
        ]
    );
    assert_eq!(store.sites().unwrap().len(), 3);

    let dir1 = tempfile::tempdir().unwrap();
    let path1 = db_path(&dir1);
    Connection::open(&path1)
        .unwrap()
        .execute_batch(include_str!("fixtures/v1.sql"))
        .unwrap();
    let store = SqliteStore::open(&path1).unwrap();
    assert_eq!(store.joined_servers().unwrap(), vec![]);
}
