//! The accounts that use the moving databases: found from the grant tables,
//! locked at the freeze (and their sessions ended), copied with their
//! password hashes and grants at the switch.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use crate::endpoint::{account, quote};
use crate::error::{Error, Result, Side, SqlContext};
use crate::state::Account;

/// Accounts with a privilege on any of `dbs` (database, table, column or
/// routine level; `mysql.db` patterns such as `shop\_%` included), directly
/// or through a role (roles granted to roles followed), without the
/// mover's own account. Roles themselves cannot log in: they are not here
/// (see [`roles_of`]).
pub(crate) async fn users_of(conn: &mut Conn, side: Side, dbs: &[String]) -> Result<Vec<Account>> {
    let me: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .ctx(side, || "CURRENT_USER()".into())?;
    let me = me.unwrap_or_default();
    let mut grantees: Vec<Account> = Vec::new();
    for db in dbs {
        let q = quote(db);
        let sql = format!(
            "SELECT User, Host FROM mysql.db WHERE {q} LIKE Db \
             UNION SELECT User, Host FROM mysql.tables_priv WHERE Db = {q} \
             UNION SELECT User, Host FROM mysql.columns_priv WHERE Db = {q} \
             UNION SELECT User, Host FROM mysql.procs_priv WHERE Db = {q}"
        );
        let rows: Vec<(String, String)> = conn.query(&sql).await.ctx(side, || sql.clone())?;
        grantees.extend(rows.into_iter().map(|(user, host)| Account { user, host }));
    }
    // Roles (an empty host) pass their privileges to whoever holds them.
    let roles: Vec<String> = grantees
        .iter()
        .filter(|a| a.host.is_empty())
        .map(|a| a.user.clone())
        .collect();
    let mapping = role_mapping(conn, side).await?;
    let mut found: Vec<Account> = Vec::new();
    let holders = holders_of(&mapping, &roles);
    for a in grantees.into_iter().chain(holders) {
        // Roles have an empty host; they are not log-in accounts.
        if a.host.is_empty() || format!("{}@{}", a.user, a.host) == me || found.contains(&a) {
            continue;
        }
        found.push(a);
    }
    found.sort_by(|a, b| (&a.user, &a.host).cmp(&(&b.user, &b.host)));
    Ok(found)
}

/// `mysql.roles_mapping`: (grantee user, grantee host, role); a role
/// granted to a role has an empty host.
async fn role_mapping(conn: &mut Conn, side: Side) -> Result<Vec<(String, String, String)>> {
    let sql = "SELECT User, Host, Role FROM mysql.roles_mapping";
    conn.query(sql).await.ctx(side, || sql.into())
}

/// Every grantee holding one of `roles`, through any chain of roles.
fn holders_of(mapping: &[(String, String, String)], roles: &[String]) -> Vec<Account> {
    let mut roles: Vec<String> = roles.to_vec();
    let mut out = Vec::new();
    let mut i = 0;
    while i < roles.len() {
        for (user, host, role) in mapping {
            if role != &roles[i] {
                continue;
            }
            if host.is_empty() {
                if !roles.contains(user) {
                    roles.push(user.clone());
                }
            } else {
                out.push(Account {
                    user: user.clone(),
                    host: host.clone(),
                });
            }
        }
        i += 1;
    }
    out
}

/// The roles `accounts` hold, directly or through other roles: created at
/// the destination before the accounts, whose grants name them.
pub(crate) async fn roles_of(
    conn: &mut Conn,
    side: Side,
    accounts: &[Account],
) -> Result<Vec<String>> {
    let mapping = role_mapping(conn, side).await?;
    let mut roles: Vec<String> = Vec::new();
    for (user, host, role) in &mapping {
        if accounts.iter().any(|a| &a.user == user && &a.host == host) && !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    let mut i = 0;
    while i < roles.len() {
        for (user, host, role) in &mapping {
            if host.is_empty() && user == &roles[i] && !roles.contains(role) {
                roles.push(role.clone());
            }
        }
        i += 1;
    }
    roles.sort();
    Ok(roles)
}

/// Creates `roles` at `dst` (those missing) with the grants they have at
/// `src`: all roles first, then the grants, since a role may be granted to
/// another. A role already there keeps its grants and gets these too.
pub(crate) async fn copy_roles(src: &mut Conn, dst: &mut Conn, roles: &[String]) -> Result<()> {
    let mut grants = Vec::new();
    for r in roles {
        let sql = format!("SHOW GRANTS FOR {}", quote(r));
        let g: Vec<String> = src.query(&sql).await.ctx(Side::Source, || sql)?;
        grants.extend(g);
        let sql = format!("CREATE ROLE IF NOT EXISTS {}", quote(r));
        dst.query_drop(&sql).await.ctx(Side::Destination, || sql)?;
    }
    for g in grants {
        dst.query_drop(&g)
            .await
            .ctx(Side::Destination, || format!("copying a role's grant: {g}"))?;
    }
    Ok(())
}

/// Accounts, other than ours, whose global privileges let them write
/// anywhere: the freeze cannot lock them without locking out operators, so
/// they are reported instead.
pub(crate) async fn global_writers(conn: &mut Conn, side: Side) -> Result<Vec<Account>> {
    let sql = "SELECT User, Host FROM mysql.user WHERE is_role = 'N' \
               AND (Insert_priv = 'Y' OR Update_priv = 'Y' OR Delete_priv = 'Y') \
               AND CONCAT(User, '@', Host) <> CURRENT_USER() ORDER BY User, Host";
    let rows: Vec<(String, String)> = conn.query(sql).await.ctx(side, || sql.into())?;
    Ok(rows
        .into_iter()
        .map(|(user, host)| Account { user, host })
        .collect())
}

pub(crate) async fn show_create(
    conn: &mut Conn,
    side: Side,
    a: &Account,
) -> Result<Option<String>> {
    let sql = format!("SHOW CREATE USER {}", account(&a.user, &a.host));
    match conn.query_first::<String, _>(&sql).await {
        Ok(s) => Ok(s),
        // 1133 (or 1396 on some versions): no such account.
        Err(mysql_async::Error::Server(e)) if matches!(e.code, 1133 | 1396) => Ok(None),
        Err(e) => Err(e).ctx(side, || sql),
    }
}

/// `SHOW CREATE USER` ends with ` ACCOUNT LOCK` on a locked account.
pub(crate) fn is_locked(create: &str) -> bool {
    create.contains(" ACCOUNT LOCK")
}

/// Whether `who` (`user@host` as a DEFINER column shows it) is an account
/// or a role at the server of `conn`.
pub(crate) async fn exists(conn: &mut Conn, side: Side, user: &str, host: &str) -> Result<bool> {
    let sql = format!(
        "SELECT COUNT(*) FROM mysql.user WHERE User = {} AND Host = {}",
        quote(user),
        quote(host)
    );
    let n: Option<u64> = conn.query_first(&sql).await.ctx(side, || sql.clone())?;
    Ok(n.unwrap_or(0) > 0)
}

pub(crate) async fn set_locked(conn: &mut Conn, a: &Account, locked: bool) -> Result<()> {
    let sql = format!(
        "ALTER USER {} ACCOUNT {}",
        account(&a.user, &a.host),
        if locked { "LOCK" } else { "UNLOCK" }
    );
    conn.query_drop(&sql).await.ctx(Side::Source, || sql)
}

/// Ends every session of `users` (by user name: a session's matched host
/// pattern is not visible, so a same-named account elsewhere loses its
/// sessions too, the safe side) and waits until they are gone: a killed
/// session may still be committing, and the position read after this must
/// include that commit or never see it.
pub(crate) async fn end_sessions(
    conn: &mut Conn,
    users: &[Account],
    wait: Duration,
) -> Result<u64> {
    if users.is_empty() {
        return Ok(0);
    }
    let names: Vec<String> = users.iter().map(|a| quote(&a.user)).collect();
    let sql = format!(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE USER IN ({}) AND ID <> CONNECTION_ID()",
        names.join(",")
    );
    let ids: Vec<u64> = conn.query(&sql).await.ctx(Side::Source, || sql.clone())?;
    for id in &ids {
        match conn.query_drop(format!("KILL CONNECTION {id}")).await {
            // 1094: unknown thread, it ended by itself.
            Err(mysql_async::Error::Server(e)) if e.code == 1094 => {}
            r => r.ctx(Side::Source, || format!("KILL CONNECTION {id}"))?,
        }
    }
    let started = Instant::now();
    loop {
        let left: Vec<u64> = conn.query(&sql).await.ctx(Side::Source, || sql.clone())?;
        if left.is_empty() {
            return Ok(ids.len() as u64);
        }
        if started.elapsed() > wait {
            return Err(Error::SessionsSurvived {
                ids: left,
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The statements that recreate `a` elsewhere: `CREATE USER` (password
/// hash, plugin, limits), without the lock when it is the freeze's
/// (`unlock`), then its grants.
pub(crate) async fn recreate_statements(
    conn: &mut Conn,
    a: &Account,
    unlock: bool,
) -> Result<Vec<String>> {
    let Some(mut create) = show_create(conn, Side::Source, a).await? else {
        return Ok(Vec::new());
    };
    if unlock {
        create = create.replace(" ACCOUNT LOCK", "");
    }
    let mut out = vec![create];
    let sql = format!("SHOW GRANTS FOR {}", account(&a.user, &a.host));
    let grants: Vec<String> = conn.query(&sql).await.ctx(Side::Source, || sql)?;
    out.extend(grants);
    Ok(out)
}
