//! What must hold before a move starts, checked on both servers while
//! nothing has changed yet ([`check`], called by `Mover::prepare`). Each
//! [`Problem`] names the server, what is wrong and the setting or
//! statement that fixes it; all of them are reported at once, so an
//! operator fixes everything in one round. Some only cost time or checks
//! (a table without a primary key): those are warnings in the
//! `PrepareReport`, not refusals.
//!
//! The GTID rules come from how MariaDB replicates: one `gtid_slave_pos`
//! per server, one entry per domain, shared by all its replication
//! connections. A source domain the destination also writes in is fine
//! (the catch-up sets only the source's entry) unless strict mode is on,
//! which refuses a replica position behind the server's own binary log in
//! that domain (error 1947) on the destination, and on the source for the
//! move back. A source domain another connection of the destination
//! already replicates cannot be shared at all: each would rewind the other.

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::accounts;
use crate::endpoint::{ident, quote};
use crate::error::{Problem, Result, Side, SqlContext};
use crate::gtid::GtidPos;
use crate::replica;
use crate::state::Account;

/// What [`check`] found: refusals (the move must not start) and warnings.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub refusals: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// The two servers as `check` sees them.
pub(crate) struct Servers<'a> {
    pub src: &'a mut Conn,
    pub src_addr: String,
    pub dst: &'a mut Conn,
    pub dst_addr: String,
    /// The replication connection this move will create at the destination.
    pub connection: &'a str,
}

impl Servers<'_> {
    fn problem(&self, side: Side, what: String, fix: String) -> Problem {
        let addr = match side {
            Side::Source => self.src_addr.clone(),
            Side::Destination => self.dst_addr.clone(),
        };
        Problem {
            side,
            addr,
            what,
            fix,
        }
    }
}

/// Everything the move needs from both servers for `dbs`, moved with
/// `accounts` (those using the databases) and the `roles` they hold.
pub(crate) async fn check(
    s: &mut Servers<'_>,
    dbs: &[String],
    accounts: &[Account],
    roles: &[String],
    source_bytes: u64,
    dest_binlog: bool,
) -> Result<Findings> {
    let mut f = check_replication(s).await?;
    tables(s, dbs, &mut f).await?;
    programs(s, dbs, accounts, roles, &mut f).await?;
    room(s, source_bytes, dest_binlog, &mut f).await?;
    Ok(f)
}

/// The source's binary log and the GTID layout of both servers: what a
/// catch-up needs, the move back's too.
pub(crate) async fn check_replication(s: &mut Servers<'_>) -> Result<Findings> {
    let mut f = Findings::default();
    binlog(s, &mut f).await?;
    gtid(s, &mut f).await?;
    Ok(f)
}

/// A boolean variable read as text (`ON`, or `1` on some versions).
fn on(v: &str) -> bool {
    v == "1" || v.eq_ignore_ascii_case("on")
}

async fn vars(conn: &mut Conn, side: Side, names: &[&str]) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT {}",
        names
            .iter()
            .map(|n| format!("CAST(@@GLOBAL.{n} AS CHAR)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row: Option<mysql_async::Row> = conn.query_first(&sql).await.ctx(side, || sql.clone())?;
    let row = row.map(|r| r.unwrap()).unwrap_or_default();
    Ok(names
        .iter()
        .enumerate()
        .map(|(i, _)| match row.get(i) {
            Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect())
}

/// The source writes a row-based binary log with full row images: the
/// catch-up applies row events, and the freeze's check reads every row's
/// key from them.
async fn binlog(s: &mut Servers<'_>, f: &mut Findings) -> Result<()> {
    let v = vars(
        s.src,
        Side::Source,
        &["log_bin", "binlog_format", "binlog_row_image"],
    )
    .await?;
    if !on(&v[0]) {
        f.refusals.push(s.problem(
            Side::Source,
            "the binary log is off (log_bin = OFF)".into(),
            "start the server with log_bin (log-bin = <name> in its configuration) and binlog_format = ROW".into(),
        ));
        return Ok(());
    }
    if v[1] != "ROW" {
        f.refusals.push(s.problem(
            Side::Source,
            format!("binlog_format = {}; the catch-up needs row events", v[1]),
            "SET GLOBAL binlog_format = ROW (and binlog_format = ROW in its configuration), then reconnect the clients (sessions keep the format they started with)".into(),
        ));
    }
    if v[2] != "FULL" {
        f.refusals.push(s.problem(
            Side::Source,
            format!(
                "binlog_row_image = {}; row events must carry whole rows (tables without a primary key, the freeze's check of changed rows)",
                v[2]
            ),
            "SET GLOBAL binlog_row_image = FULL (and in its configuration), then reconnect the clients".into(),
        ));
    }
    Ok(())
}

/// Domains a server writes in: those of its binary log and the one its
/// new sessions get.
fn written_domains(binlog: &GtidPos, default_domain: &str) -> Vec<u32> {
    let mut d: Vec<u32> = binlog.domains().collect();
    if let Ok(n) = default_domain.parse() {
        if !d.contains(&n) {
            d.push(n);
        }
    }
    d.sort_unstable();
    d
}

async fn gtid(s: &mut Servers<'_>, f: &mut Findings) -> Result<()> {
    let names = ["gtid_domain_id", "gtid_strict_mode"];
    let sv = vars(s.src, Side::Source, &names).await?;
    let dv = vars(s.dst, Side::Destination, &names).await?;
    let src_pos = replica::binlog_position(s.src, Side::Source).await?;
    let dst_pos = replica::binlog_position(s.dst, Side::Destination).await?;
    let dst_slave = replica::gtid_var(s.dst, Side::Destination, "gtid_slave_pos").await?;
    let src_domains = written_domains(&src_pos, &sv[0]);
    let dst_domains = written_domains(&dst_pos, &dv[0]);
    let shared: Vec<u32> = src_domains
        .iter()
        .copied()
        .filter(|d| dst_domains.contains(d))
        .collect();
    // A domain neither server uses, for the fix that gives the source its own.
    let free = src_domains
        .iter()
        .chain(&dst_domains)
        .chain(dst_slave.domains().collect::<Vec<_>>().iter())
        .max()
        .map_or(1, |m| m + 1);
    let own_domain = format!(
        "give the source a GTID domain of its own: SET GLOBAL gtid_domain_id = {free} at the source (and in its configuration), then reconnect its clients"
    );
    if !shared.is_empty() {
        let list = shared
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        for (side, strict) in [(Side::Source, &sv[1]), (Side::Destination, &dv[1])] {
            if on(strict) {
                let why = match side {
                    Side::Destination => "it would refuse the source's position there (error 1947)",
                    Side::Source => "a move back would be refused there (error 1947)",
                };
                f.refusals.push(s.problem(
                    side,
                    format!("gtid_strict_mode = ON while both servers write in GTID domain {list}: {why}"),
                    format!("SET GLOBAL gtid_strict_mode = OFF on the {side} (and in its configuration), or {own_domain}"),
                ));
            }
        }
    }
    // Other replication connections of the destination. One from the same
    // source shares every one of its domains with ours (another move still
    // running); one from elsewhere shares a domain when it has applied
    // transactions in it from another server.
    let others: Vec<(String, String)> = replica::connections(s.dst)
        .await?
        .into_iter()
        .filter(|(c, _)| c != s.connection)
        .collect();
    for (name, from) in &others {
        if *from == s.src_addr {
            f.refusals.push(s.problem(
                Side::Destination,
                format!("its replication connection {name:?} already replicates from the source (another move still running?); both would share the source's GTID positions"),
                "finish or roll back that move first, one move from a source into a destination at a time".into(),
            ));
        }
    }
    if !others.is_empty() {
        let names = others
            .iter()
            .map(|(c, _)| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        for d in &src_domains {
            let Some(theirs) = dst_slave.server_in(*d) else {
                continue;
            };
            if src_pos.server_in(*d) == Some(theirs) {
                continue;
            }
            f.refusals.push(s.problem(
                Side::Destination,
                format!(
                    "it already replicates GTID domain {d} (gtid_slave_pos has {d}-{theirs}-..., connections {names}) and the source writes in that domain too; one position per domain serves all connections"
                ),
                own_domain.clone(),
            ));
        }
    }
    Ok(())
}

/// Engines and keys of the moving tables.
async fn tables(s: &mut Servers<'_>, dbs: &[String], f: &mut Findings) -> Result<()> {
    let list = dbs.iter().map(|d| quote(d)).collect::<Vec<_>>().join(",");
    let sql = format!(
        "SELECT t.TABLE_SCHEMA, t.TABLE_NAME, COALESCE(t.ENGINE, ''), \
         (SELECT COUNT(*) FROM information_schema.STATISTICS k WHERE k.TABLE_SCHEMA = t.TABLE_SCHEMA \
          AND k.TABLE_NAME = t.TABLE_NAME AND k.INDEX_NAME = 'PRIMARY') \
         FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA IN ({list}) AND t.TABLE_TYPE = 'BASE TABLE' \
         ORDER BY 1, 2"
    );
    let rows: Vec<(String, String, String, u64)> =
        s.src.query(&sql).await.ctx(Side::Source, || sql.clone())?;
    for (db, table, engine, pk) in rows {
        let name = format!("{}.{}", ident(&db), ident(&table));
        if !engine.eq_ignore_ascii_case("InnoDB") {
            f.refusals.push(s.problem(
                Side::Source,
                format!("table {db}.{table} uses ENGINE={engine}: its copy cannot be taken in the consistent snapshot the catch-up starts from"),
                format!("ALTER TABLE {name} ENGINE = InnoDB"),
            ));
        }
        if pk == 0 {
            f.warnings.push(s.problem(
                Side::Source,
                format!("table {db}.{table} has no primary key: each row the catch-up changes there is found by a scan at the destination, and the checks read the table whole"),
                format!("ALTER TABLE {name} ADD PRIMARY KEY (...) if it is large or busy"),
            ));
        }
    }
    Ok(())
}

/// Views, triggers, routines and events of the moving databases, checked
/// for what they need at the destination after the switch: their DEFINER
/// (an account missing there makes them fail, error 1449 on every write to
/// a trigger's table) and the other databases their bodies name (a
/// database that neither moves nor exists there makes them fail too: the
/// catch-up carries only the moving databases).
async fn programs(
    s: &mut Servers<'_>,
    dbs: &[String],
    accounts: &[Account],
    roles: &[String],
    f: &mut Findings,
) -> Result<()> {
    let list = dbs.iter().map(|d| quote(d)).collect::<Vec<_>>().join(",");
    let sql = format!(
        "SELECT 'view', TABLE_SCHEMA, TABLE_NAME, DEFINER, SECURITY_TYPE, VIEW_DEFINITION \
           FROM information_schema.VIEWS WHERE TABLE_SCHEMA IN ({list}) \
         UNION ALL SELECT 'trigger', TRIGGER_SCHEMA, TRIGGER_NAME, DEFINER, 'DEFINER', ACTION_STATEMENT \
           FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA IN ({list}) \
         UNION ALL SELECT LOWER(ROUTINE_TYPE), ROUTINE_SCHEMA, ROUTINE_NAME, DEFINER, SECURITY_TYPE, \
           COALESCE(ROUTINE_DEFINITION, '') FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA IN ({list}) \
         UNION ALL SELECT 'event', EVENT_SCHEMA, EVENT_NAME, DEFINER, 'DEFINER', EVENT_DEFINITION \
           FROM information_schema.EVENTS WHERE EVENT_SCHEMA IN ({list}) ORDER BY 2, 3"
    );
    let rows: Vec<(String, String, String, String, String, String)> =
        s.src.query(&sql).await.ctx(Side::Source, || sql.clone())?;
    if rows.is_empty() {
        return Ok(());
    }
    // Databases of the source that stay there and are missing at the
    // destination: a body naming one breaks after the switch.
    let sql = "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA";
    let at_source: Vec<String> = s.src.query(sql).await.ctx(Side::Source, || sql.into())?;
    let at_dest: Vec<String> = s
        .dst
        .query(sql)
        .await
        .ctx(Side::Destination, || sql.into())?;
    let left_behind: Vec<String> = at_source
        .into_iter()
        .filter(|d| !dbs.contains(d) && !at_dest.contains(d))
        .collect();
    for (kind, db, name, definer, security, body) in rows {
        let invoker = if matches!(kind.as_str(), "view" | "procedure" | "function") {
            " (or SQL SECURITY INVOKER)"
        } else {
            ""
        };
        // `user@host`; a user name may itself hold '@', a host name not.
        // A role as definer has an empty host.
        let (user, host) = definer.rsplit_once('@').unwrap_or((&definer, ""));
        let moved = accounts.iter().any(|a| a.user == user && a.host == host)
            || (host.is_empty() && roles.iter().any(|r| r == user));
        if security == "DEFINER"
            && !moved
            && !accounts::exists(s.dst, Side::Destination, user, host).await?
        {
            f.refusals.push(s.problem(
                Side::Destination,
                format!("{kind} {db}.{name} runs as DEFINER {definer}, which does not exist there and is not moved with the databases (it has no privilege on them)"),
                format!("create {} there, or redefine the {kind} at the source with another DEFINER{invoker}", crate::endpoint::account(user, host)),
            ));
        }
        let lower = body.to_lowercase();
        for other in &left_behind {
            let o = other.to_lowercase();
            if lower.contains(&format!("`{o}`.")) || names_qualified(&lower, &o) {
                f.refusals.push(s.problem(
                    Side::Source,
                    format!("{kind} {db}.{name} uses database {other}, which does not move and does not exist at the destination"),
                    format!("move {other} in the same move (--db {} {other}), create it at the destination, or change the {kind}", dbs.join(" ")),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `body` names `db.` unquoted as a whole word (not the tail of
/// another name: `myshop.` does not name `shop`).
fn names_qualified(body: &str, db: &str) -> bool {
    let pat = format!("{db}.");
    body.match_indices(&pat).any(|(i, _)| {
        body[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'))
    })
}

/// Free space where the destination keeps its data, when the server can
/// say (the `disks` plugin's information_schema.DISKS).
async fn room(
    s: &mut Servers<'_>,
    source_bytes: u64,
    dest_binlog: bool,
    f: &mut Findings,
) -> Result<()> {
    let datadir = vars(s.dst, Side::Destination, &["datadir"])
        .await?
        .remove(0);
    let sql = "SELECT Path, Available FROM information_schema.DISKS";
    let disks: Vec<(String, u64)> = match s.dst.query(sql).await {
        Ok(d) => d,
        // 1109: unknown table, the plugin is not loaded.
        Err(mysql_async::Error::Server(e)) if e.code == 1109 => {
            f.warnings.push(s.problem(
                Side::Destination,
                "free space not checked (information_schema.DISKS is missing)".into(),
                "INSTALL SONAME 'disks' there to have it checked".into(),
            ));
            return Ok(());
        }
        Err(e) => return Err(e).ctx(Side::Destination, || sql.into()),
    };
    // The mount holding the data directory: the longest path that prefixes it.
    let Some((path, kib)) = disks
        .into_iter()
        .filter(|(p, _)| datadir.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
    else {
        return Ok(());
    };
    // The copy's rows again in the binary log when it is logged.
    let need = source_bytes.saturating_mul(if dest_binlog { 2 } else { 1 });
    let free = kib.saturating_mul(1024);
    if need > free {
        let mib = |b: u64| b / (1 << 20);
        f.refusals.push(s.problem(
            Side::Destination,
            format!(
                "about {} MiB needed (data and indexes at the source{}) and {} MiB free on {path}",
                mib(need),
                if dest_binlog {
                    ", twice with the binary log"
                } else {
                    ""
                },
                mib(free)
            ),
            "free space there, or move fewer databases at a time".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qualified_name_is_found_as_a_whole_word() {
        assert!(names_qualified("insert into audit.log values (1)", "audit"));
        assert!(names_qualified("audit.log", "audit"));
        assert!(!names_qualified(
            "insert into myaudit.log values (1)",
            "audit"
        ));
        assert!(!names_qualified("insert into audit_x.log", "audit"));
        assert!(written_domains(&GtidPos::parse("0-1-5,3-1-2").unwrap(), "7") == vec![0, 3, 7]);
        assert!(on("ON") && on("1") && !on("OFF") && !on("0"));
    }
}
