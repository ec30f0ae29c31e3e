//! [`SqliteStore`]: the control store in one SQLite file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};
use rusqlite::{params, Connection, Row, TransactionBehavior};

use crate::{JoinedServer, Store, StoreError};

/// The schema version this build writes and the newest it opens. Raise it only
/// together with a new entry in `MIGRATIONS` and a new `tests/fixtures/vN.sql`.
pub const SCHEMA_VERSION: u32 = 2;

/// `MIGRATIONS[v]` takes a database from schema version `v` to `v + 1`. A released
/// entry is never edited: files written by that release must keep opening, and
/// `tests/fixtures/` holds one such file per version to prove it.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // v0 -> v1: the first schema.
    "CREATE TABLE sites (
        host      TEXT PRIMARY KEY NOT NULL, -- normalised Hostname
        placement TEXT NOT NULL,             -- pool:NAME or remote:NAME
        state     TEXT NOT NULL,             -- active, maintenance or frozen
        epoch     INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE server_states (
        pool   TEXT NOT NULL,
        server TEXT NOT NULL,
        state  TEXT NOT NULL,                -- ready, drain or maint
        PRIMARY KEY (pool, server)
    ) WITHOUT ROWID;
    -- Written by schema-1 code (journal_append); nothing reads or writes it
    -- since the runbooks keep ferry-journal files. Kept: the schema only grows.
    CREATE TABLE journal (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT NOT NULL,
        body       TEXT NOT NULL,            -- JSON
        at_unix_ms INTEGER NOT NULL
    );",
    // v1 -> v2: servers that joined pools at run time.
    "CREATE TABLE joined_servers (
        pool    TEXT NOT NULL,
        server  TEXT NOT NULL,
        address TEXT NOT NULL,               -- IP:PORT
        tier    INTEGER NOT NULL,
        weight  INTEGER NOT NULL,
        PRIMARY KEY (pool, server)
    ) WITHOUT ROWID;",
];

const SELECT_JOINED: &str =
    "SELECT pool, server, address, tier, weight FROM joined_servers ORDER BY pool, server";
const UPSERT_JOINED: &str =
    "INSERT INTO joined_servers (pool, server, address, tier, weight) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (pool, server) DO UPDATE SET
       address = excluded.address, tier = excluded.tier, weight = excluded.weight";
const DELETE_JOINED: &str = "DELETE FROM joined_servers WHERE pool = ?1 AND server = ?2";

/// How long a write waits for another process holding the file's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const UPSERT_SITE: &str =
    "INSERT INTO sites (host, placement, state, epoch) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (host) DO UPDATE SET
       placement = excluded.placement, state = excluded.state, epoch = excluded.epoch";
const SELECT_SITES: &str = "SELECT host, placement, state, epoch FROM sites ORDER BY host";
const SELECT_SITE: &str = "SELECT host, placement, state, epoch FROM sites WHERE host = ?1";
const DELETE_SITE: &str = "DELETE FROM sites WHERE host = ?1";
const SELECT_SERVER_STATES: &str =
    "SELECT pool, server, state FROM server_states ORDER BY pool, server";
const UPSERT_SERVER_STATE: &str =
    "INSERT INTO server_states (pool, server, state) VALUES (?1, ?2, ?3)
     ON CONFLICT (pool, server) DO UPDATE SET state = excluded.state";
/// The control store in one SQLite file (or in memory, for tests).
///
/// One connection behind a mutex: the store's callers are a router's admin path and
/// the orchestrator, neither of which needs parallel reads, and one connection
/// keeps every write ordered. Other processes may open the same file; SQLite's WAL
/// keeps their readers on the last committed state.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, bringing an older schema up to
    /// date. A file from a newer Ferry is refused without being changed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, path)
    }

    /// A store that lives only as long as this value; for tests and dry runs.
    pub fn in_memory() -> Result<Self, StoreError> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::init(conn, path)
    }

    fn init(mut conn: Connection, path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Look at the version before changing anything, even the journal mode: a
        // newer Ferry's file is left exactly as it was.
        let found = schema_version(&conn, path)?;
        if found > SCHEMA_VERSION {
            return Err(newer_schema(path, found));
        }
        // WAL lets readers in other processes see the last commit while a write is
        // under way; FULL syncs the WAL at every commit, so an acknowledged write
        // survives a power cut, not only a crash. (Where WAL is impossible, e.g. in
        // memory, SQLite keeps its own mode, which is just as safe.)
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        if found < SCHEMA_VERSION {
            migrate(&mut conn, path)?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock still guards a consistent connection: a panic while it was
        // held dropped any open rusqlite Transaction, which rolls back.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads `PRAGMA user_version`; 0 is a database no Ferry has set up yet.
fn schema_version(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let raw: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // Ferry never writes a negative version, so such a file is someone else's.
    u32::try_from(raw).map_err(|_| StoreError::NotAStore {
        path: path.to_path_buf(),
    })
}

fn newer_schema(path: &Path, found: u32) -> StoreError {
    StoreError::NewerSchema {
        path: path.to_path_buf(),
        found,
        supported: SCHEMA_VERSION,
    }
}

/// Runs the missing migrations in one transaction, so a failure (or a crash) leaves
/// the file at its old version rather than half-migrated.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let path_buf = || PathBuf::from(path);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| StoreError::Open {
            path: path_buf(),
            source,
        })?;
    // Another process may have migrated the file between our first look and our
    // taking the write lock.
    let from = schema_version(&tx, path)?;
    if from > SCHEMA_VERSION {
        return Err(newer_schema(path, from));
    }
    if from == SCHEMA_VERSION {
        return Ok(());
    }
    let migrate_err = |source| StoreError::Migrate {
        path: path_buf(),
        from,
        to: SCHEMA_VERSION,
        source,
    };
    if from == 0 {
        // Version 0 is also what any foreign SQLite file reports; only an empty one
        // is ours to set up.
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .map_err(migrate_err)?;
        if tables > 0 {
            return Err(StoreError::NotAStore { path: path_buf() });
        }
    }
    for step in MIGRATIONS.iter().skip(from as usize) {
        tx.execute_batch(step).map_err(migrate_err)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(migrate_err)?;
    tx.commit().map_err(migrate_err)
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

/// Checks that `record` can be written and read back unchanged, and gives the
/// values to write.
fn site_columns(record: &SiteRecord) -> Result<(String, i64), StoreError> {
    let unstorable = |why: String| StoreError::Unstorable {
        host: record.host.clone(),
        why,
    };
    // SQLite integers are signed 64-bit; wrapping a larger epoch would store a
    // negative number and break the order of changes.
    let epoch = i64::try_from(record.epoch.0).map_err(|_| {
        unstorable(format!(
            "epoch {} is above the largest storable, {}",
            record.epoch,
            i64::MAX
        ))
    })?;
    let placement = record.placement.to_string();
    // An empty pool or DC name prints as "pool:", which does not parse back; storing
    // it would make every later read of the sites fail.
    if Placement::parse(&placement).as_ref() != Some(&record.placement) {
        return Err(unstorable(format!(
            "placement {placement:?} would not read back"
        )));
    }
    Ok((placement, epoch))
}

fn site_from_row(row: &Row<'_>) -> Result<SiteRecord, StoreError> {
    let raw_host: String = row
        .get(0)
        .map_err(|e| corrupt("site row", format!("host: {e}")))?;
    let what = || format!("site {raw_host:?}");
    let host = Hostname::parse(&raw_host).map_err(|e| corrupt(what(), e.to_string()))?;
    // A host stored in another spelling would never be found by `site()`.
    if host.as_str() != raw_host {
        return Err(corrupt(
            what(),
            format!("host is not in normal form (expected {host:?})"),
        ));
    }
    let raw_placement: String = row
        .get(1)
        .map_err(|e| corrupt(what(), format!("placement: {e}")))?;
    let placement = Placement::parse(&raw_placement).ok_or_else(|| {
        corrupt(
            what(),
            format!("placement {raw_placement:?} is not pool:NAME or remote:NAME"),
        )
    })?;
    let raw_state: String = row
        .get(2)
        .map_err(|e| corrupt(what(), format!("state: {e}")))?;
    let state = parse_site_state(&raw_state)
        .ok_or_else(|| corrupt(what(), format!("unknown state {raw_state:?}")))?;
    let raw_epoch: i64 = row
        .get(3)
        .map_err(|e| corrupt(what(), format!("epoch: {e}")))?;
    let epoch = u64::try_from(raw_epoch)
        .map_err(|_| corrupt(what(), format!("epoch {raw_epoch} is negative")))?;
    Ok(SiteRecord {
        host,
        placement,
        state,
        epoch: Epoch(epoch),
    })
}

// These lists name every variant so that a new one in ferry-model shows up here as
// a state that does not read back, caught by the conformance suite.
fn parse_site_state(raw: &str) -> Option<SiteState> {
    [SiteState::Active, SiteState::Maintenance, SiteState::Frozen]
        .into_iter()
        .find(|s| s.as_str() == raw)
}

fn parse_server_state(raw: &str) -> Option<ServerState> {
    [ServerState::Ready, ServerState::Drain, ServerState::Maint]
        .into_iter()
        .find(|s| s.as_str() == raw)
}

fn server_state_from_row(row: &Row<'_>) -> Result<(String, String, ServerState), StoreError> {
    let pool: String = row
        .get(0)
        .map_err(|e| corrupt("server state row", format!("pool: {e}")))?;
    let server: String = row
        .get(1)
        .map_err(|e| corrupt("server state row", format!("server: {e}")))?;
    let what = || format!("server state of {pool}/{server}");
    let raw_state: String = row
        .get(2)
        .map_err(|e| corrupt(what(), format!("state: {e}")))?;
    let state = parse_server_state(&raw_state)
        .ok_or_else(|| corrupt(what(), format!("unknown state {raw_state:?}")))?;
    Ok((pool, server, state))
}

impl Store for SqliteStore {
    fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(SELECT_SITES)
            .map_err(sql("read sites"))?;
        let mut rows = stmt.query([]).map_err(sql("read sites"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql("read sites"))? {
            out.push(site_from_row(row)?);
        }
        Ok(out)
    }

    fn site(&self, host: &Hostname) -> Result<Option<SiteRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(SELECT_SITE)
            .map_err(sql("read a site"))?;
        let mut rows = stmt.query([host.as_str()]).map_err(sql("read a site"))?;
        match rows.next().map_err(sql("read a site"))? {
            Some(row) => site_from_row(row).map(Some),
            None => Ok(None),
        }
    }

    fn put_sites(&self, records: &[SiteRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        // IMMEDIATE takes the write lock up front, so a concurrent writer in another
        // process makes us wait (busy timeout) instead of failing halfway.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin writing sites"))?;
        {
            let mut stmt = tx.prepare_cached(UPSERT_SITE).map_err(sql("write sites"))?;
            for record in records {
                let (placement, epoch) = site_columns(record)?;
                stmt.execute(params![
                    record.host.as_str(),
                    placement,
                    record.state.as_str(),
                    epoch
                ])
                .map_err(sql("write sites"))?;
            }
        }
        // An early return above drops `tx`, which rolls the whole batch back.
        tx.commit().map_err(sql("commit written sites"))
    }

    fn remove_sites(&self, hosts: &[Hostname]) -> Result<(), StoreError> {
        if hosts.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql("begin removing sites"))?;
        {
            let mut stmt = tx
                .prepare_cached(DELETE_SITE)
                .map_err(sql("remove sites"))?;
            for host in hosts {
                stmt.execute([host.as_str()]).map_err(sql("remove sites"))?;
            }
        }
        tx.commit().map_err(sql("commit removed sites"))
    }

    fn server_states(&self) -> Result<Vec<(String, String, ServerState)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(SELECT_SERVER_STATES)
            .map_err(sql("read server states"))?;
        let mut rows = stmt.query([]).map_err(sql("read server states"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql("read server states"))? {
            out.push(server_state_from_row(row)?);
        }
        Ok(out)
    }

    fn put_server_state(
        &self,
        pool: &str,
        server: &str,
        state: ServerState,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.prepare_cached(UPSERT_SERVER_STATE)
            .and_then(|mut stmt| stmt.execute(params![pool, server, state.as_str()]))
            .map_err(sql("write a server state"))?;
        Ok(())
    }

    fn joined_servers(&self) -> Result<Vec<JoinedServer>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(SELECT_JOINED)
            .map_err(sql("read joined servers"))?;
        let mut rows = stmt.query([]).map_err(sql("read joined servers"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql("read joined servers"))? {
            let get = |i| -> Result<String, StoreError> {
                row.get::<_, String>(i).map_err(sql("read joined servers"))
            };
            let (pool, name, address) = (get(0)?, get(1)?, get(2)?);
            let tier: i64 = row.get(3).map_err(sql("read joined servers"))?;
            let weight: i64 = row.get(4).map_err(sql("read joined servers"))?;
            let corrupt = |detail: String| StoreError::Corrupt {
                what: format!("joined server {pool}/{name}"),
                detail,
            };
            out.push(JoinedServer {
                address: address
                    .parse()
                    .map_err(|_| corrupt(format!("address {address:?}")))?,
                tier: u8::try_from(tier).map_err(|_| corrupt(format!("tier {tier}")))?,
                weight: u32::try_from(weight).map_err(|_| corrupt(format!("weight {weight}")))?,
                pool,
                name,
            });
        }
        Ok(out)
    }

    fn put_joined_server(&self, s: &JoinedServer) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.prepare_cached(UPSERT_JOINED)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    s.pool,
                    s.name,
                    s.address.to_string(),
                    s.tier,
                    s.weight
                ])
            })
            .map_err(sql("write a joined server"))?;
        Ok(())
    }

    fn remove_joined_server(&self, pool: &str, name: &str) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.prepare_cached(DELETE_JOINED)
            .and_then(|mut stmt| stmt.execute(params![pool, name]))
            .map_err(sql("remove a joined server"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_texts_read_back() {
        for s in [SiteState::Active, SiteState::Maintenance, SiteState::Frozen] {
            assert_eq!(parse_site_state(s.as_str()), Some(s));
        }
        for s in [ServerState::Ready, ServerState::Drain, ServerState::Maint] {
            assert_eq!(parse_server_state(s.as_str()), Some(s));
        }
        assert_eq!(parse_site_state("Active"), None);
        assert_eq!(parse_server_state(""), None);
    }

    #[test]
    fn unstorable_records_are_named() {
        let rec = |placement, epoch| SiteRecord {
            host: Hostname::parse("a.example.com").unwrap(),
            placement,
            state: SiteState::Active,
            epoch: Epoch(epoch),
        };
        let err = site_columns(&rec(Placement::Pool("web".into()), u64::MAX)).unwrap_err();
        assert!(
            matches!(&err, StoreError::Unstorable { host, .. } if host.as_str() == "a.example.com"),
            "{err}"
        );
        assert!(site_columns(&rec(Placement::Remote(String::new()), 1)).is_err());
        let ok = site_columns(&rec(Placement::Pool("a:b".into()), i64::MAX as u64)).unwrap();
        assert_eq!(ok, ("pool:a:b".to_string(), i64::MAX));
    }
}
