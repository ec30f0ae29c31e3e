//! The datacenters' MariaDB servers: per filer, a `mariadbd` in par with
//! the databases of that filer's sites and one in gra busy with databases
//! of its own, written all night (GTID binary logs, a domain per server,
//! replication started only by the mover). A server per filer, as a fleet
//! has a database server per cluster: the mover takes one move from a
//! server at a time (ferry-orch's runbook/db_turns.rs), so units on one
//! shared server would take turns instead of overlapping in their lanes.
//! The orchestrator moves each unit's databases with its files in the same
//! freeze (`[db_servers]` of migrate.toml); the app servers write the
//! sites' orders to their DC's server (`POST /db/order`); the checks read
//! both servers afterwards.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_demo::app_db::{SiteDb, ORDERS_TABLE};
use ferry_demo::check::{self, Check, OrderChecks};
use ferry_demo::topology::{self, Site, DESTINATION, SOURCE};
use ferry_orch::MigrationStatus;
use mysql_async::prelude::Queryable;

use crate::world::{Net, Place};

/// Filer f's servers listen on this + f inside their namespaces.
const FIRST_PORT: u16 = 3306;

/// The port of filer `f`'s servers (in both DCs).
pub fn port(f: u32) -> u16 {
    FIRST_PORT + f as u16
}

/// Filer `f`'s source server, in the inventory and migrate.toml.
fn server_name(f: u32) -> String {
    format!("sql-{}", topology::filer_name(f))
}
/// The orchestrator's account on both servers (inside the namespaces only).
const ADMIN_USER: &str = "ferry";
const ADMIN_PASSWORD: &str = "ferry-rehearse-db";
/// The destination's own databases on each of its servers, written all
/// night by their own client.
const OWN_DATABASES: usize = 2;
/// Rows of a site's catalogue: something for the first copy to carry.
const PRODUCTS: usize = 500;

pub const DB_ORDERS: OrderChecks = OrderChecks {
    exactly_once: "db_writes_exactly_once",
    no_split_brain: "db_no_split_brain",
    no_early_writes: "db_no_early_destination_writes",
    noun: "rows",
};
pub const OWN_WRITES: &str = "destination_databases_untouched";

/// The sites with a database: `per_filer` on each filer, after the sites
/// holding the large files (site i is on filer i mod `filers`).
pub fn pick(sites: &[Site], filers: u32, per_filer: u32) -> Vec<(usize, SiteDb)> {
    let filers = filers.max(1) as usize;
    let first = (2 * filers).min(sites.len().saturating_sub(per_filer as usize * filers));
    (first..sites.len())
        .take(per_filer as usize * filers)
        .map(|i| {
            (
                i,
                SiteDb {
                    port: port((i % filers) as u32),
                    database: format!("site_{i}"),
                    user: format!("site_{i}"),
                    password: format!("pw-{i}"),
                },
            )
        })
        .collect()
}

/// A `mariadbd` killed (by its pid) and reaped when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both servers, the sites' databases, and the destination's own writer.
pub struct Databases {
    _servers: Vec<Server>,
    pub sites: Vec<(usize, SiteDb)>,
    filers: u32,
    own: OwnWriter,
}

/// The server binaries: PATH first, then where Debian puts `mariadbd`.
fn program(name: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found: the rehearsal's databases need Debian's mariadb-server \
         (apt-get install -y mariadb-server), or --databases 0"
    )
}

impl Databases {
    /// Installs and starts every server (a data directory installed once
    /// and copied), creates the sites' databases and accounts at the
    /// source and the destination's own, and starts writing to those.
    pub async fn start(
        net: &Net,
        work: &Path,
        sites: &[Site],
        filers: u32,
        chosen: Vec<(usize, SiteDb)>,
    ) -> anyhow::Result<Databases> {
        let root = work.join("db");
        let servers = tokio::task::block_in_place(|| {
            let template = root.join("template");
            install(&template)?;
            let mut v = Vec::new();
            for f in 0..filers {
                for (k, dc) in [(0u32, SOURCE), (1, DESTINATION)] {
                    let dir = root.join(format!("{dc}-{}", topology::filer_name(f)));
                    copy_dir(&template, &dir)?;
                    // Server id and GTID domain: distinct on every server.
                    v.push(start_server(net, &dir, 1 + 2 * f + k, dc, port(f))?);
                }
            }
            anyhow::Ok(v)
        })?;
        for (i, server) in servers.iter().enumerate() {
            let place = if i % 2 == 0 { Place::Par } else { Place::Gra };
            let (log, p) = (server.dir.join("error.log"), port(i as u32 / 2));
            net.handle(place)
                .spawn(wait_ready(log, p))
                .await
                .context("the database readiness task")??;
        }
        for f in 0..filers {
            let setup = source_setup(sites, &chosen, port(f));
            net.handle(Place::Par)
                .spawn(async move { root_exec(port(f), &setup).await })
                .await??;
            net.handle(Place::Gra)
                .spawn(async move { root_exec(port(f), &own_setup()).await })
                .await??;
        }
        let own = OwnWriter::start(net, filers);
        Ok(Databases {
            _servers: servers,
            sites: chosen,
            filers,
            own,
        })
    }

    /// Host -> database, for the app servers.
    pub fn by_host(&self, sites: &[Site]) -> HashMap<String, SiteDb> {
        self.sites
            .iter()
            .map(|(i, db)| (sites[*i].host.clone(), db.clone()))
            .collect()
    }

    /// The checks: the sites' orders (exactly once at the destination, none
    /// at the source after the freeze, none at the destination before the
    /// flip) and the destination's own databases (every write there).
    pub async fn check(
        self,
        net: &Net,
        sites: &Arc<Vec<Site>>,
        acked: Vec<Vec<u64>>,
        status: Option<MigrationStatus>,
    ) -> Vec<Check> {
        let own = self.own.finish(net, self.filers).await;
        let names: Vec<(usize, u16, String)> = self
            .sites
            .iter()
            .map(|(i, db)| (*i, db.port, db.database.clone()))
            .collect();
        let read = |place: Place| {
            let names = names.clone();
            net.handle(place).spawn(async move { orders(&names).await })
        };
        let (src, dst) = (read(Place::Par).await, read(Place::Gra).await);
        let (src, dst) = match (src, dst) {
            (Ok(Ok(s)), Ok(Ok(d))) => (s, d),
            (s, d) => {
                let why = |r: Result<anyhow::Result<_>, tokio::task::JoinError>| match r {
                    Ok(Ok(_)) => String::new(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => e.to_string(),
                };
                let detail = format!("reading the orders: {} {}", why(s), why(d));
                return vec![Check::new(DB_ORDERS.exactly_once, false, detail), own];
            }
        };
        let sites = Arc::clone(sites);
        let mut checks = tokio::task::spawn_blocking(move || {
            check::check_order_lines(&DB_ORDERS, &sites, &acked, status.as_ref(), |i, _| {
                let get = |m: &HashMap<usize, String>| m.get(&i).cloned().unwrap_or_default();
                (get(&src), get(&dst))
            })
        })
        .await
        .unwrap_or_else(|e| vec![Check::new(DB_ORDERS.exactly_once, false, e.to_string())]);
        checks.push(own);
        checks
    }
}

/// A fresh data directory in `dir` (`data`, `tmp`).
fn install(dir: &Path) -> anyhow::Result<()> {
    for d in ["data", "tmp"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let out = Command::new(program("mariadb-install-db")?)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--user=root")
        .arg("--skip-test-db")
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .output()
        .context("running mariadb-install-db")?;
    if !out.status.success() {
        bail!(
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `cp -a from to`: a copy of an installed data directory.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        bail!(
            "copying {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts `mariadbd` on the data directory in `dir`, in `dc`'s namespace
/// on `port`: server id and GTID domain `n`, strict GTIDs, binary log in
/// rows, no replication until the mover starts it.
fn start_server(net: &Net, dir: &Path, n: u32, dc: &str, port: u16) -> anyhow::Result<Server> {
    let ns = if dc == SOURCE { &net.par } else { &net.gra };
    let path = |name: &str| dir.join(name).display().to_string();
    let child = ns
        .command(program("mariadbd")?)
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", path("data")))
        .arg(format!("--socket={}", path("sock")))
        .arg(format!("--tmpdir={}", path("tmp")))
        .arg(format!("--pid-file={}", path("pid")))
        .arg(format!("--log-error={}", path("error.log")))
        .arg(format!("--port={port}"))
        .arg("--bind-address=0.0.0.0")
        .arg("--skip-name-resolve")
        .arg("--log-bin=binlog")
        .arg(format!("--server-id={n}"))
        .arg(format!("--gtid-domain-id={n}"))
        .arg("--gtid-strict-mode=1")
        .arg("--binlog-format=ROW")
        .arg("--skip-slave-start")
        // A rehearsal's server, not a durable one: small and quick.
        .arg("--innodb-buffer-pool-size=32M")
        .arg("--innodb-log-file-size=32M")
        .arg("--innodb-flush-log-at-trx-commit=2")
        .arg("--sync-binlog=0")
        .arg("--performance-schema=OFF")
        .arg("--max-connections=500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting mariadbd in {dc}"))?;
    Ok(Server {
        child,
        dir: dir.to_path_buf(),
    })
}

fn root_opts(port: u16) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .into()
}

/// Ready when root logs in (from inside the namespace), within 60 s.
async fn wait_ready(log: PathBuf, port: u16) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = mysql_async::Conn::new(root_opts(port)).await {
            let _ = c.disconnect().await;
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "mariadbd not ready after 60s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn root_exec(port: u16, sql: &str) -> anyhow::Result<()> {
    let mut c = mysql_async::Conn::new(root_opts(port)).await?;
    c.query_drop(sql).await.with_context(|| {
        format!(
            "setting up a database server: {}",
            &sql[..sql.len().min(200)]
        )
    })?;
    let _ = c.disconnect().await;
    Ok(())
}

/// The orchestrator's account, valid from the other DC too.
fn admin_account() -> String {
    format!(
        "CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
         GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION; "
    )
}

/// At the source server on `port`: the orchestrator's account; per
/// chosen site there its database (orders, and a catalogue for the first
/// copy) and its account, from the app servers' address.
fn source_setup(sites: &[Site], chosen: &[(usize, SiteDb)], port: u16) -> String {
    let mut sql = admin_account();
    for (i, db) in chosen.iter().filter(|(_, db)| db.port == port) {
        let d = &db.database;
        let _ = write!(
            sql,
            "CREATE DATABASE {d}; USE {d}; {ORDERS_TABLE}; \
             CREATE TABLE products (id INT PRIMARY KEY, name VARCHAR(80) NOT NULL, \
             price_cents INT NOT NULL, description TEXT NOT NULL); \
             CREATE USER '{u}'@'127.0.0.1' IDENTIFIED BY '{p}'; \
             GRANT ALL ON {d}.* TO '{u}'@'127.0.0.1'; ",
            u = db.user,
            p = db.password,
        );
        let rows: Vec<String> = (0..PRODUCTS)
            .map(|k| {
                format!(
                    "({k}, 'product {k} of {}', {}, REPEAT('x', {}))",
                    sites[*i].host,
                    100 + k * 7,
                    50 + k % 200
                )
            })
            .collect();
        let _ = write!(sql, "INSERT INTO products VALUES {}; ", rows.join(", "));
    }
    sql
}

fn own_setup() -> String {
    let mut sql = admin_account();
    for k in 0..OWN_DATABASES {
        let _ = write!(
            sql,
            "CREATE DATABASE gra_own_{k}; \
             CREATE TABLE gra_own_{k}.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             seq BIGINT NOT NULL UNIQUE, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)); "
        );
    }
    sql
}

/// The destination's own client: one insert every 10 ms, round robin over
/// its servers and their databases, all night.
struct OwnWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl OwnWriter {
    fn start(net: &Net, filers: u32) -> OwnWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (acked, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, a, e) = (stop.clone(), acked.clone(), errors.clone());
        let task = net.handle(Place::Gra).spawn(async move {
            let mut conns: Vec<Option<mysql_async::Conn>> = (0..filers).map(|_| None).collect();
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) && filers > 0 {
                let f = (seq % u64::from(filers)) as u32;
                let slot = &mut conns[f as usize];
                if slot.is_none() {
                    *slot = mysql_async::Conn::new(root_opts(port(f))).await.ok();
                }
                let Some(c) = slot.as_mut() else {
                    e.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let sql = format!(
                    "INSERT INTO gra_own_{}.events (seq) VALUES ({seq})",
                    (seq / u64::from(filers)) as usize % OWN_DATABASES
                );
                if c.query_drop(sql).await.is_err() {
                    e.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                    continue;
                }
                seq += 1;
                a.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        OwnWriter {
            stop,
            acked,
            errors,
            task,
        }
    }

    /// Stops the writer; the check: every acknowledged insert is there,
    /// once, and none failed.
    async fn finish(self, net: &Net, filers: u32) -> Check {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let (acked, errors) = (
            self.acked.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
        let counted = net
            .handle(Place::Gra)
            .spawn(async move {
                let mut rows = 0u64;
                for f in 0..filers {
                    let mut c = mysql_async::Conn::new(root_opts(port(f))).await?;
                    for k in 0..OWN_DATABASES {
                        let n: Option<u64> = c
                            .query_first(format!("SELECT COUNT(*) FROM gra_own_{k}.events"))
                            .await?;
                        rows += n.unwrap_or(0);
                    }
                }
                anyhow::Ok(rows)
            })
            .await;
        match counted {
            Ok(Ok(rows)) => Check::new(
                OWN_WRITES,
                acked > 0 && rows == acked && errors == 0,
                format!(
                    "{DESTINATION}'s own databases ({OWN_DATABASES} on each of its {filers} servers): \
                     {acked} inserts acknowledged during the night, {rows} rows, {errors} refused"
                ),
            ),
            Ok(Err(e)) => Check::new(OWN_WRITES, false, format!("counting: {e:#}")),
            Err(e) => Check::new(OWN_WRITES, false, format!("counting: {e}")),
        }
    }
}

/// Each database's orders (site index, server port, name) as `<seq> <dc>
/// <app> <micros>` lines, by site index; a database not on its server
/// reads as none.
async fn orders(names: &[(usize, u16, String)]) -> anyhow::Result<HashMap<usize, String>> {
    let mut conns: HashMap<u16, mysql_async::Conn> = HashMap::new();
    let mut out = HashMap::new();
    for (i, port, db) in names {
        if !conns.contains_key(port) {
            conns.insert(*port, mysql_async::Conn::new(root_opts(*port)).await?);
        }
        let Some(c) = conns.get_mut(port) else {
            continue;
        };
        let exists: Option<String> = c
            .exec_first(
                "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
                (db,),
            )
            .await?;
        if exists.is_none() {
            continue;
        }
        let rows: Vec<(u64, String, String, u64)> = c
            .query(format!(
                "SELECT seq, dc, app, micros FROM {db}.orders ORDER BY id"
            ))
            .await?;
        let mut text = String::new();
        for (seq, dc, app, micros) in rows {
            let _ = writeln!(text, "{seq} {dc} {app} {micros}");
        }
        out.insert(*i, text);
    }
    Ok(out)
}

/// The inventory's database files: the source servers, each chosen site's
/// database (bytes: about its catalogue) declared by its hosting.
pub fn write_inventory(
    dir: &Path,
    sites: &[Site],
    filers: u32,
    chosen: &[(usize, SiteDb)],
) -> anyhow::Result<()> {
    let mut servers = String::from("name,cluster\n");
    for f in 0..filers {
        let _ = writeln!(servers, "{},par-c1", server_name(f));
    }
    std::fs::write(dir.join("db_servers.csv"), servers)?;
    let (mut dbs, mut uses) = (
        String::from("name,server,bytes\n"),
        String::from("hosting,database\n"),
    );
    for (i, db) in chosen {
        let hosting = sites[*i].host.trim_end_matches(".demo.test");
        let server = server_name(u32::from(db.port - FIRST_PORT));
        let _ = writeln!(dbs, "{},{server},{}", db.database, PRODUCTS * 200);
        let _ = writeln!(uses, "{hosting},{}@{server}", db.database);
    }
    std::fs::write(dir.join("databases.csv"), dbs)?;
    std::fs::write(dir.join("declared_uses.csv"), uses)?;
    Ok(())
}

/// migrate.toml's `[db_servers]` and `[db]`: each source as the
/// orchestrator (in the destination DC) reaches its port (`source`), the
/// destinations local.
pub fn migrate_section(filers: u32, source: impl Fn(u16) -> std::net::SocketAddr) -> String {
    let mut c = String::new();
    for f in 0..filers {
        let _ = write!(
            c,
            "\n[db_servers.{}]\nsource = \"mysql://{ADMIN_USER}:{ADMIN_PASSWORD}@{}\"\n\
             destination = \"mysql://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{}\"\n",
            server_name(f),
            source(port(f)),
            port(f)
        );
    }
    c.push_str("\n[db]\nmax_lag = 50\ncatch_up_timeout = \"60s\"\n");
    c
}
