//! Catch-up through a named MariaDB replication connection on the
//! destination (multi-source replication), filtered to the moving databases.
//!
//! Why not stream the binlog ourselves: the server already applies row
//! events exactly (types, charsets, DDL, large transactions, parallel
//! apply), and with `MASTER_USE_GTID=slave_pos` it records the applied
//! position in `mysql.gtid_slave_pos` in the same transaction as the
//! change, so a crash of the mover or of either server resumes with no loss
//! and no duplicate. The mover only configures, watches and removes the
//! connection; killing the mover does not even pause the catch-up.
//! Costs: the destination must reach the source's address and the mover's
//! account needs `REPLICATION SLAVE` there; filters set with `SET GLOBAL`
//! are not kept across a destination restart, so they are set again before
//! every `START SLAVE` (destinations should run with `skip-slave-start`).

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};

use crate::endpoint::{quote, Endpoint};
use crate::error::{Error, Result, Side, SqlContext};
use crate::gtid::GtidPos;

const D: Side = Side::Destination;

/// What the destination's replication connection reports.
#[derive(Debug, Clone, Default)]
pub struct Lag {
    /// Transactions of the source not yet applied at the destination.
    pub transactions: u64,
    /// The server's own estimate (`Seconds_Behind_Master`); none while the
    /// connection is not running.
    pub seconds: Option<u64>,
    pub source_position: GtidPos,
    pub applied_position: GtidPos,
    pub io_running: bool,
    pub sql_running: bool,
}

fn conn_name_literal(name: &str) -> String {
    quote(name)
}

async fn status(dest: &mut Conn, name: &str) -> Result<Option<Row>> {
    let sql = format!("SHOW SLAVE {} STATUS", conn_name_literal(name));
    match dest.query_first::<Row, _>(&sql).await {
        Ok(r) => Ok(r),
        // 1617: there is no master connection by that name.
        Err(mysql_async::Error::Server(e)) if e.code == 1617 => Ok(None),
        Err(e) => Err(e).ctx(D, || sql),
    }
}

fn field(row: &Row, name: &str) -> String {
    row.get_opt::<Option<String>, _>(name)
        .and_then(|r| r.ok())
        .flatten()
        .unwrap_or_default()
}

pub(crate) async fn exists(dest: &mut Conn, name: &str) -> Result<bool> {
    Ok(status(dest, name).await?.is_some())
}

pub(crate) async fn gtid_var(conn: &mut Conn, side: Side, var: &str) -> Result<GtidPos> {
    let sql = format!("SELECT @@GLOBAL.{var}");
    let s: Option<String> = conn.query_first(&sql).await.ctx(side, || sql.clone())?;
    GtidPos::parse(&s.unwrap_or_default()).map_err(|m| Error::Replication {
        connection: String::new(),
        message: format!("{var}: {m}"),
    })
}

/// `@@gtid_binlog_pos` of either side.
pub(crate) async fn binlog_position(conn: &mut Conn, side: Side) -> Result<GtidPos> {
    gtid_var(conn, side, "gtid_binlog_pos").await
}

pub(crate) async fn source_position(src: &mut Conn) -> Result<GtidPos> {
    gtid_var(src, Side::Source, "gtid_binlog_pos").await
}

/// The `replicate_wild_do_table` value for `dbs`: `db.%` each, with `_` and
/// `%` in names escaped (they are wildcards there).
fn filter(dbs: &[String]) -> String {
    dbs.iter()
        .map(|d| {
            format!(
                "{}.%",
                d.replace('\\', "\\\\")
                    .replace('_', "\\_")
                    .replace('%', "\\%")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How many times the start position is read again when the destination's
/// own writes moved its binary log on between the read and the SET.
const OWN_WRITES_RACED: u32 = 50;

/// Creates (if missing) and starts connection `name`, applying the source's
/// changes to `dbs`. A new connection starts at `from`, which names only
/// the source's GTID domains; an existing one goes on from where the
/// destination has got to.
///
/// MariaDB keeps one `gtid_slave_pos` for all of a server's replication
/// connections, one entry per domain, and a connection asks its source for
/// the whole of it. So the source's domains are set to `from` and every
/// other entry is left as it is: other connections' positions stay theirs,
/// and the destination's own transactions (its binary log, which is not in
/// `gtid_slave_pos`) fill only domains the source does not write in. They
/// must not decide a source domain: when both servers write
/// in the same domain (domain 0 on every stock server), the destination's
/// own GTID is one the source never had (error 1236). A shared domain is
/// safe for the applier as long as no other connection replicates it and
/// strict mode is off; `preflight` refuses the other cases before the copy.
pub(crate) async fn start(
    dest: &mut Conn,
    source: &Endpoint,
    name: &str,
    dbs: &[String],
    from: &GtidPos,
) -> Result<()> {
    let lit = conn_name_literal(name);
    if !exists(dest, name).await? {
        // gtid_slave_pos can only be set with every replication connection
        // stopped. Stopped before it is read: a connection still applying
        // would move its own entry between our read and our write, and the
        // write would rewind it.
        let running = running_connections(dest).await?;
        let mut stopped = Vec::new();
        let set = async {
            for r in &running {
                dest.query_drop(format!("STOP SLAVE {}", quote(r)))
                    .await
                    .ctx(D, || format!("STOP SLAVE {r:?}"))?;
                stopped.push(r.clone());
            }
            // The destination's own domains at least as far as its binary
            // log (strict mode refuses a position that lacks them or is
            // behind, error 1948; the source has no such domain and skips
            // them), then the source's domains exactly at `from`. With
            // strict mode off, a shared domain's position behind the
            // destination's own binary log is a warning (1947), not an error.
            // A busy destination writes on between our read of its binary
            // log and the SET: strict mode then refuses the position as
            // behind (1947 or 1948), so it is read and set again (bounded;
            // a source domain behind is refused by preflight, never here).
            let mut tries = 0;
            loop {
                let current = gtid_var(dest, D, "gtid_slave_pos").await?;
                let own = gtid_var(dest, D, "gtid_binlog_pos").await?;
                let pos = GtidPos::overlaid(&GtidPos::newest(&current, &own), from);
                let set = format!("SET GLOBAL gtid_slave_pos = {}", quote(&pos.to_string()));
                match dest.query_drop(&set).await {
                    Ok(()) => break,
                    Err(mysql_async::Error::Server(e))
                        if (e.code == 1947 || e.code == 1948) && tries < OWN_WRITES_RACED =>
                    {
                        tries += 1;
                    }
                    Err(e) => {
                        return Err(e).ctx(D, || format!("SET GLOBAL gtid_slave_pos = {pos}"))
                    }
                }
            }
            let sql = format!(
                "CHANGE MASTER {lit} TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = {}, \
                 MASTER_PASSWORD = {}, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
                quote(source.host()),
                source.port(),
                quote(source.user()),
                quote(source.password())
            );
            dest.query_drop(&sql)
                .await
                .ctx(D, || format!("CHANGE MASTER {lit} TO {}", source))
        }
        .await;
        // The others run again whatever happened to ours.
        for r in &stopped {
            dest.query_drop(format!("START SLAVE {}", quote(r)))
                .await
                .ctx(D, || format!("START SLAVE {r:?}"))?;
        }
        set?;
    } else {
        dest.query_drop(format!("STOP SLAVE {lit}"))
            .await
            .ctx(D, || format!("STOP SLAVE {lit}"))?;
    }
    let sql = format!(
        "SET GLOBAL {name}.replicate_wild_do_table = {}",
        quote(&filter(dbs))
    );
    dest.query_drop(&sql).await.ctx(D, || sql.clone())?;
    dest.query_drop(format!("START SLAVE {lit}"))
        .await
        .ctx(D, || format!("START SLAVE {lit}"))?;
    // Bounded wait for both threads, so a refused login or a purged binlog
    // is reported here rather than as lag that never shrinks.
    let started = Instant::now();
    loop {
        let lag = check(dest, name).await?;
        if lag.0 && lag.1 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(Error::Replication {
                connection: name.into(),
                message: "did not start within 10 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SHOW ALL SLAVES STATUS` of the destination: a row per replication
/// connection.
async fn replication_status(dest: &mut Conn) -> Result<Vec<Row>> {
    dest.query("SHOW ALL SLAVES STATUS")
        .await
        .ctx(D, || "SHOW ALL SLAVES STATUS".into())
}

/// Every replication connection of the destination: its name and the
/// `host:port` it replicates from.
pub(crate) async fn connections(dest: &mut Conn) -> Result<Vec<(String, String)>> {
    let rows = replication_status(dest).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                field(r, "Connection_name"),
                format!("{}:{}", field(r, "Master_Host"), field(r, "Master_Port")),
            )
        })
        .collect())
}

pub(crate) async fn running_connections(dest: &mut Conn) -> Result<Vec<String>> {
    let rows = replication_status(dest).await?;
    Ok(rows
        .iter()
        .filter(|r| field(r, "Slave_SQL_Running") == "Yes" || field(r, "Slave_IO_Running") == "Yes")
        .map(|r| field(r, "Connection_name"))
        .collect())
}

/// (io running, sql running, seconds behind); an error the connection
/// stopped on is returned as [`Error::Replication`].
async fn check(dest: &mut Conn, name: &str) -> Result<(bool, bool, Option<u64>)> {
    let Some(row) = status(dest, name).await? else {
        return Err(Error::Replication {
            connection: name.into(),
            message: "the connection does not exist".into(),
        });
    };
    let io = field(&row, "Slave_IO_Running");
    let sql = field(&row, "Slave_SQL_Running") == "Yes";
    let sql_err = field(&row, "Last_SQL_Error");
    let io_err = field(&row, "Last_IO_Error");
    if !sql && !sql_err.is_empty() {
        return Err(Error::Replication {
            connection: name.into(),
            message: sql_err,
        });
    }
    // "Connecting" is the IO thread retrying; an error with it stopped is
    // final (wrong password, binlog purged).
    if io == "No" && !io_err.is_empty() {
        return Err(Error::Replication {
            connection: name.into(),
            message: io_err,
        });
    }
    let secs = field(&row, "Seconds_Behind_Master").parse().ok();
    Ok((io == "Yes", sql, secs))
}

pub(crate) async fn lag(src: &mut Conn, dest: &mut Conn, name: &str) -> Result<Lag> {
    let (io_running, sql_running, seconds) = check(dest, name).await?;
    let source_position = source_position(src).await?;
    let applied_position = gtid_var(dest, D, "gtid_slave_pos").await?;
    Ok(Lag {
        transactions: source_position.transactions_ahead_of(&applied_position),
        seconds,
        source_position,
        applied_position,
        io_running,
        sql_running,
    })
}

/// `MASTER_GTID_WAIT`: until the destination has applied `pos`, or `timeout`.
pub(crate) async fn wait(
    dest: &mut Conn,
    name: &str,
    pos: &GtidPos,
    timeout: Duration,
) -> Result<()> {
    check(dest, name).await?;
    let sql = format!(
        "SELECT MASTER_GTID_WAIT({}, {})",
        quote(&pos.to_string()),
        timeout.as_secs_f64()
    );
    let r: Option<i64> = dest.query_first(&sql).await.ctx(D, || sql.clone())?;
    match r {
        Some(0) => Ok(()),
        _ => {
            // A stop on an error explains the timeout better than the timeout.
            check(dest, name).await?;
            Err(Error::WaitTimeout {
                position: pos.to_string(),
                waited: timeout,
            })
        }
    }
}

/// Stops and forgets connection `name`; a missing one is fine (rollback
/// and switch may run again after a crash).
pub(crate) async fn remove(dest: &mut Conn, name: &str) -> Result<()> {
    if !exists(dest, name).await? {
        return Ok(());
    }
    let lit = conn_name_literal(name);
    dest.query_drop(format!("STOP SLAVE {lit}"))
        .await
        .ctx(D, || format!("STOP SLAVE {lit}"))?;
    dest.query_drop(format!("RESET SLAVE {lit} ALL"))
        .await
        .ctx(D, || format!("RESET SLAVE {lit} ALL"))?;
    Ok(())
}

/// Stops connection `name` wherever its applier stands. With
/// [`apply_until`] it holds the destination at one position exactly;
/// [`resume_applier`] must follow, whatever happened in between. (Both
/// threads: MariaDB takes `UNTIL master_gtid_pos` only from a connection
/// stopped entirely.)
pub(crate) async fn stop_applier(dest: &mut Conn, name: &str) -> Result<()> {
    let lit = conn_name_literal(name);
    dest.query_drop(format!("STOP SLAVE {lit}"))
        .await
        .ctx(D, || format!("STOP SLAVE {lit}"))
}

/// Runs the stopped applier of `name` up to `pos` (which must not be behind
/// where it stands) and waits, at most `timeout`, until it has stopped there.
pub(crate) async fn apply_until(
    dest: &mut Conn,
    name: &str,
    pos: &GtidPos,
    timeout: Duration,
) -> Result<()> {
    let lit = conn_name_literal(name);
    let sql = format!(
        "START SLAVE {lit} UNTIL master_gtid_pos = {}",
        quote(&pos.to_string())
    );
    dest.query_drop(&sql).await.ctx(D, || sql.clone())?;
    // MASTER_GTID_WAIT returns once the position is applied; the applier
    // stops right after the transaction that reaches it.
    wait(dest, name, pos, timeout).await?;
    let started = Instant::now();
    loop {
        let (_, sql_running, _) = check(dest, name).await?;
        if !sql_running {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(Error::WaitTimeout {
                position: pos.to_string(),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts whatever of connection `name` is stopped (a note, not an error,
/// for a thread already running).
pub(crate) async fn resume_applier(dest: &mut Conn, name: &str) -> Result<()> {
    let lit = conn_name_literal(name);
    dest.query_drop(format!("START SLAVE {lit}"))
        .await
        .ctx(D, || format!("START SLAVE {lit}"))
}

/// Stops connection `name` without forgetting it (a paused catch-up).
pub(crate) async fn stop(dest: &mut Conn, name: &str) -> Result<()> {
    if exists(dest, name).await? {
        let lit = conn_name_literal(name);
        dest.query_drop(format!("STOP SLAVE {lit}"))
            .await
            .ctx(D, || format!("STOP SLAVE {lit}"))?;
    }
    Ok(())
}
