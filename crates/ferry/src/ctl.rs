//! `ferry ctl`: the admin API's command-line client, one subcommand per
//! route (through `ferry-admin-api`'s client). Prints a table by default and
//! the API's JSON with `--json`.
//!
//! Exit codes are the binary's: 0 done, 1 failed (router unreachable, no
//! answer in time, a 5xx), 2 bad usage (a flag, an unreadable file or token
//! file), 3 refused by the router (a 4xx: unknown site, stale epoch, wrong
//! token), nothing changed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ferry_admin_api::certs::CertPair;
use ferry_admin_api::pools::{NewServer, Pool, ServerState};
use ferry_admin_api::sites::{QueriedSite, SiteBatch, SiteChange, SiteListQuery, SiteState};
use ferry_admin_api::tunnels::Tunnel;
use ferry_admin_api::{AdminClient, AdminError};
use serde::Serialize;

use crate::Failure;

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 done, 1 failed (unreachable, timeout, 5xx), \
    2 bad usage, 3 refused by the router (4xx; nothing changed)."
)]
pub struct Args {
    /// Admin API address of the router.
    #[arg(long, env = "FERRY_ADMIN", default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Bearer token of the admin API (a value on the command line is seen
    /// by every user in `ps`: prefer --token-file or the environment).
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token (readable by its owner only, as the
    /// router's `token_file`; trimmed). Wins over --token and the environment.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table (for scripts).
    #[arg(long, global = true)]
    json: bool,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Router name, site count, held and in-flight requests, listeners.
    Status,
    /// Whether the admin listener answers (GET /healthz, no token needed).
    Health,
    /// The Prometheus metrics (text; --json is not applicable).
    Metrics,
    /// Sites: list, get, set, apply a batch, query, remove.
    #[command(subcommand)]
    Sites(SitesCmd),
    /// Pools and their servers: list, set a server's state, join, leave.
    #[command(subcommand)]
    Pools(PoolsCmd),
    /// Set a server's state (same as `pools set`).
    #[command(hide = true)]
    Server {
        pool: String,
        server: String,
        #[arg(value_enum)]
        state: StateArg,
    },
    /// TLS certificates: list, show, add or replace, remove.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Database tunnels: list, show, uses, export, repoint.
    #[command(subcommand)]
    Tunnels(TunnelsCmd),
    /// Re-read the router's config file (same as SIGHUP).
    Reload,
}

#[derive(clap::Subcommand)]
enum SitesCmd {
    /// List sites in host order, a page at a time.
    List {
        /// Only hosts starting with this text.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// One site: placement, state, epoch, held and in-flight requests.
    Get { host: String },
    /// Add or change a site. What is not given is kept from the current
    /// record; without --epoch, the current epoch + 1.
    Set {
        host: String,
        /// pool:NAME or remote:NAME (required for a new site).
        #[arg(long)]
        placement: Option<String>,
        #[arg(long, value_enum)]
        state: Option<SiteStateArg>,
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Apply a JSON file {"sites": [{host, placement, state, epoch}, ...]}
    /// atomically: all changes or none.
    Apply { file: PathBuf },
    /// Several sites with their held and in-flight requests ("absent" for
    /// those the router does not have).
    Query {
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// Remove sites atomically (hosts the router does not have are ignored).
    Remove {
        #[arg(required = true)]
        hosts: Vec<String>,
    },
}

#[derive(clap::Subcommand)]
enum PoolsCmd {
    /// Every pool with its servers, health and serving tier.
    List,
    /// The servers of one pool.
    Servers { pool: String },
    /// Set a server's state: ready, drain (finish in-flight, take no new) or maint.
    Set {
        pool: String,
        server: String,
        #[arg(value_enum)]
        state: StateArg,
    },
    /// Add a server to a pool until the next reload or restart.
    Join {
        pool: String,
        name: String,
        /// IP:port of the server.
        address: std::net::SocketAddr,
        #[arg(long, default_value_t = 0)]
        tier: u8,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long, value_enum, default_value_t = StateArg::Ready)]
        state: StateArg,
    },
    /// Remove a server from a pool (it must be drained and idle: `pools set
    /// POOL SERVER drain` first, then wait until its active count is 0).
    Leave { pool: String, server: String },
}

#[derive(clap::Subcommand)]
enum CertsCmd {
    /// Every certificate, with the names it answers.
    List,
    /// One certificate.
    Show { name: String },
    /// Add or replace a certificate: PEM chain (leaf first) and private key.
    Add {
        name: String,
        #[arg(long)]
        chain: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Remove a certificate (not the default one).
    Remove { name: String },
}

#[derive(clap::Subcommand)]
enum TunnelsCmd {
    /// Every tunnel with its upstream and counters.
    List,
    /// One tunnel, with its login counts and Galera nodes.
    Show { name: String },
    /// Who used which database through a tunnel.
    Uses { name: String },
    /// Write the observed uses file now, and print its lines.
    Export,
    /// Send a tunnel's new connections to another server (HOST:PORT).
    Repoint { name: String, upstream: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StateArg {
    Ready,
    Drain,
    Maint,
}

impl From<StateArg> for ServerState {
    fn from(s: StateArg) -> ServerState {
        match s {
            StateArg::Ready => ServerState::Ready,
            StateArg::Drain => ServerState::Drain,
            StateArg::Maint => ServerState::Maint,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SiteStateArg {
    Active,
    Maintenance,
    Frozen,
}

impl From<SiteStateArg> for SiteState {
    fn from(s: SiteStateArg) -> SiteState {
        match s {
            SiteStateArg::Active => SiteState::Active,
            SiteStateArg::Maintenance => SiteState::Maintenance,
            SiteStateArg::Frozen => SiteState::Frozen,
        }
    }
}

/// A refusal (4xx) exits 3, anything else that failed exits 1.
fn failure(e: AdminError) -> Failure {
    if e.is_refused() {
        Failure::refused(e)
    } else {
        Failure::from(e)
    }
}

/// How one answer is printed.
struct Out {
    json: bool,
}

impl Out {
    /// The answer as JSON, or the table `table` makes of it.
    fn print<T: Serialize>(&self, answer: &T, table: impl FnOnce(&T) -> Table) {
        if self.json {
            match serde_json::to_string_pretty(answer) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("ferry: cannot print the answer as JSON: {e}"),
            }
        } else {
            print!("{}", table(answer));
        }
    }
}

/// Columns aligned on the widest cell.
struct Table {
    head: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&'static str]) -> Table {
        Table {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(mut self, cells: Vec<String>) -> Table {
        self.rows.push(cells);
        self
    }

    /// A two-column table of field names and values.
    fn fields(pairs: Vec<(&'static str, String)>) -> Table {
        let mut t = Table::new(&["FIELD", "VALUE"]);
        for (k, v) in pairs {
            t = t.row(vec![k.to_string(), v]);
        }
        t
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut widths: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |f: &mut std::fmt::Formatter<'_>, cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i == last {
                    writeln!(f, "{c}")?;
                } else {
                    write!(f, "{c:<w$}  ")?;
                }
            }
            Ok(())
        };
        line(f, self.head.clone())?;
        for row in &self.rows {
            line(f, row.iter().map(String::as_str).collect())?;
        }
        Ok(())
    }
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub async fn run(args: Args) -> Result<(), Failure> {
    let token = match &args.token_file {
        Some(path) => Some(
            ferry_secret::read_file("--token-file", path)
                .map_err(Failure::usage)?
                .expose()
                .to_string(),
        ),
        None => args.token,
    };
    let api = AdminClient::new(args.admin.clone(), &args.admin, token.as_deref())
        .with_timeout(Duration::from_secs(args.timeout));
    let out = Out { json: args.json };
    match args.command {
        Cmd::Status => {
            let s = api.status().await.map_err(failure)?;
            out.print(&s, |s| {
                Table::fields(vec![
                    ("name", s.name.clone()),
                    ("sites", s.sites.to_string()),
                    ("held", s.held.to_string()),
                    ("in_flight", s.in_flight.to_string()),
                    ("listeners", s.listeners.join(" ")),
                    ("open_connections", s.open_connections.to_string()),
                    ("requests_total", s.requests_total.to_string()),
                ])
            });
        }
        Cmd::Health => {
            let h = api.healthz().await.map_err(failure)?;
            out.print(&h, |h| Table::fields(vec![("ok", h.ok.to_string())]));
        }
        Cmd::Metrics => print!("{}", api.metrics().await.map_err(failure)?),
        Cmd::Reload => {
            let r = api.reload().await.map_err(failure)?;
            out.print(&r, |r| {
                Table::fields(vec![
                    ("sites_added", r.sites_added.to_string()),
                    ("sites_changed", r.sites_changed.to_string()),
                    ("sites_removed", r.sites_removed.to_string()),
                    ("pools", r.pools.to_string()),
                ])
            });
        }
        Cmd::Sites(c) => sites(&api, &out, c).await?,
        Cmd::Pools(c) => pools(&api, &out, c).await?,
        Cmd::Server {
            pool,
            server,
            state,
        } => {
            pools(
                &api,
                &out,
                PoolsCmd::Set {
                    pool,
                    server,
                    state,
                },
            )
            .await?
        }
        Cmd::Certs(c) => certs(&api, &out, c).await?,
        Cmd::Tunnels(c) => tunnels(&api, &out, c).await?,
    }
    Ok(())
}

async fn sites(api: &AdminClient, out: &Out, cmd: SitesCmd) -> Result<(), Failure> {
    match cmd {
        SitesCmd::List {
            prefix,
            limit,
            offset,
        } => {
            let q = SiteListQuery {
                prefix,
                limit: Some(limit),
                offset,
            };
            let page = api.list_sites(&q).await.map_err(failure)?;
            out.print(&page, |p| {
                let mut t = Table::new(&["HOST", "PLACEMENT", "STATE", "EPOCH"]);
                for s in &p.sites {
                    t = t.row(vec![
                        s.host.clone(),
                        s.placement.clone(),
                        s.state.to_string(),
                        s.epoch.to_string(),
                    ]);
                }
                let shown = p.sites.len();
                t.row(vec![format!("({shown} of {} sites)", p.total)])
            });
        }
        SitesCmd::Get { host } => {
            let s = api.get_site(&host).await.map_err(failure)?;
            out.print(&s, |s| site_table(&[QueriedSite::Present(s.clone())]));
        }
        SitesCmd::Set {
            host,
            placement,
            state,
            epoch,
        } => {
            // Fill what was not given from the current record.
            let current = if placement.is_none() || state.is_none() || epoch.is_none() {
                match api.get_site(&host).await {
                    Ok(s) => Some(s),
                    Err(e) if e.status() == Some(404) => None,
                    Err(e) => return Err(failure(e)),
                }
            } else {
                None
            };
            let placement = placement
                .or_else(|| current.as_ref().map(|c| c.placement.clone()))
                .ok_or_else(|| Failure::usage(anyhow!("--placement is required for a new site")))?;
            let change = SiteChange {
                host: None,
                placement,
                state: state
                    .map(SiteState::from)
                    .or_else(|| current.as_ref().map(|c| c.state))
                    .unwrap_or_default(),
                epoch: epoch.unwrap_or_else(|| current.as_ref().map_or(1, |c| c.epoch + 1)),
            };
            let a = api.put_site(&host, &change).await.map_err(failure)?;
            out.print(&a, applied_table);
        }
        SitesCmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))
                .map_err(Failure::usage)?;
            let batch: SiteBatch = serde_json::from_str(&text)
                .with_context(|| {
                    format!(
                        "{}: not a batch {{\"sites\": [{{host, placement, state, epoch}}, ...]}}",
                        file.display()
                    )
                })
                .map_err(Failure::usage)?;
            let a = api.apply(&batch).await.map_err(failure)?;
            out.print(&a, applied_table);
        }
        SitesCmd::Query { hosts } => {
            let sites = api.query(&hosts).await.map_err(failure)?;
            let answer = ferry_admin_api::sites::QueryAnswer { sites };
            out.print(&answer, |a| site_table(&a.sites));
        }
        SitesCmd::Remove { hosts } => {
            let r = api.remove_sites(&hosts).await.map_err(failure)?;
            out.print(&r, |r| {
                Table::fields(vec![("removed", r.removed.to_string())])
            });
        }
    }
    Ok(())
}

fn site_table(sites: &[QueriedSite]) -> Table {
    let mut t = Table::new(&["HOST", "PLACEMENT", "STATE", "EPOCH", "HELD", "IN_FLIGHT"]);
    for q in sites {
        t = t.row(match q {
            QueriedSite::Present(s) => vec![
                s.host.clone(),
                s.placement.clone(),
                s.state.to_string(),
                s.epoch.to_string(),
                s.held.to_string(),
                s.in_flight.to_string(),
            ],
            QueriedSite::Absent(a) => vec![a.host.clone(), "(absent)".into()],
        });
    }
    t
}

fn applied_table(a: &ferry_admin_api::sites::Applied) -> Table {
    Table::fields(vec![
        ("added", a.added.to_string()),
        ("changed", a.changed.to_string()),
        ("unchanged", a.unchanged.to_string()),
    ])
}

async fn pools(api: &AdminClient, out: &Out, cmd: PoolsCmd) -> Result<(), Failure> {
    match cmd {
        PoolsCmd::List => {
            let pools = api.pools().await.map_err(failure)?;
            let answer = ferry_admin_api::pools::PoolList { pools };
            out.print(&answer, |a| server_table(&a.pools));
        }
        PoolsCmd::Servers { pool } => {
            let found: Vec<Pool> = api
                .pools()
                .await
                .map_err(failure)?
                .into_iter()
                .filter(|p| p.name == pool)
                .collect();
            let Some(p) = found.first() else {
                return Err(Failure::refused(anyhow!(
                    "router {}: has no pool {pool:?}",
                    api.router()
                )));
            };
            out.print(p, |p| server_table(std::slice::from_ref(p)));
        }
        PoolsCmd::Set {
            pool,
            server,
            state,
        } => {
            let s = api
                .set_server(&pool, &server, state.into())
                .await
                .map_err(failure)?;
            out.print(&s, |s| {
                Table::new(&["POOL", "SERVER", "STATE"]).row(vec![
                    s.pool.clone(),
                    s.server.clone(),
                    s.state.as_str().to_string(),
                ])
            });
        }
        PoolsCmd::Join {
            pool,
            name,
            address,
            tier,
            weight,
            state,
        } => {
            let server = NewServer {
                name,
                address,
                tier,
                weight,
                state: state.into(),
            };
            let j = api.add_server(&pool, &server).await.map_err(failure)?;
            out.print(&j, |j| {
                Table::new(&["POOL", "SERVER", "ADDRESS", "TIER", "STATE"]).row(vec![
                    j.pool.clone(),
                    j.server.clone(),
                    j.address.clone(),
                    j.tier.to_string(),
                    j.state.as_str().to_string(),
                ])
            });
        }
        PoolsCmd::Leave { pool, server } => {
            let l = api.remove_server(&pool, &server).await.map_err(failure)?;
            out.print(&l, |l| {
                Table::new(&["POOL", "REMOVED"]).row(vec![l.pool.clone(), l.removed.clone()])
            });
        }
    }
    Ok(())
}

fn server_table(pools: &[Pool]) -> Table {
    let mut t = Table::new(&[
        "POOL", "SERVING", "SERVER", "ADDRESS", "TIER", "WEIGHT", "STATE", "HEALTHY", "ACTIVE",
        "SERVED",
    ]);
    for p in pools {
        if p.servers.is_empty() {
            t = t.row(vec![p.name.clone(), or_dash(p.serving_tier)]);
        }
        for s in &p.servers {
            t = t.row(vec![
                p.name.clone(),
                or_dash(p.serving_tier),
                s.name.clone(),
                s.address.clone(),
                s.tier.to_string(),
                s.weight.to_string(),
                s.state.as_str().to_string(),
                if s.healthy { "yes" } else { "no" }.to_string(),
                s.active.to_string(),
                s.served.to_string(),
            ]);
        }
    }
    t
}

async fn certs(api: &AdminClient, out: &Out, cmd: CertsCmd) -> Result<(), Failure> {
    let cert_table = |certs: &[ferry_admin_api::certs::Certificate]| {
        let mut t = Table::new(&["NAME", "DEFAULT", "KEY_CACHED", "HOSTS"]);
        for c in certs {
            t = t.row(vec![
                c.name.clone(),
                if c.default { "yes" } else { "" }.to_string(),
                if c.key_cached { "yes" } else { "no" }.to_string(),
                c.hosts.join(" "),
            ]);
        }
        t
    };
    match cmd {
        CertsCmd::List => {
            let list = api.certs().await.map_err(failure)?;
            out.print(&list, |l| cert_table(&l.certificates));
        }
        CertsCmd::Show { name } => {
            // The API lists certificates; it has no route for one.
            let list = api.certs().await.map_err(failure)?;
            let Some(c) = list.certificates.into_iter().find(|c| c.name == name) else {
                return Err(Failure::refused(anyhow!(
                    "router {}: has no certificate {name:?}",
                    api.router()
                )));
            };
            out.print(&c, |c| cert_table(std::slice::from_ref(c)));
        }
        CertsCmd::Add { name, chain, key } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))
                    .map_err(Failure::usage)
            };
            let pair = CertPair {
                chain: read(&chain)?,
                key: read(&key)?,
            };
            let s = api.put_cert(&name, &pair).await.map_err(failure)?;
            out.print(&s, |s| {
                Table::new(&["NAME", "REPLACED", "HOSTS"]).row(vec![
                    s.name.clone(),
                    if s.replaced { "yes" } else { "no" }.to_string(),
                    s.hosts.join(" "),
                ])
            });
        }
        CertsCmd::Remove { name } => {
            let r = api.delete_cert(&name).await.map_err(failure)?;
            out.print(&r, |r| Table::fields(vec![("removed", r.removed.clone())]));
        }
    }
    Ok(())
}

fn tunnel_table(tunnels: &[Tunnel]) -> Table {
    let mut t = Table::new(&[
        "NAME", "LISTEN", "UPSTREAM", "SERVER", "OPEN", "TOTAL", "FAILURES", "GALERA",
    ]);
    for x in tunnels {
        let galera = x.galera.as_ref().map(|g| {
            let usable = g.nodes.iter().filter(|n| n.usable).count();
            format!(
                "{usable}/{} usable, chosen {}",
                g.nodes.len(),
                or_dash(g.chosen.as_ref())
            )
        });
        t = t.row(vec![
            x.name.clone(),
            or_dash(x.listen.as_ref()),
            x.upstream.clone(),
            x.server.clone(),
            x.open_connections.to_string(),
            x.connections_total.to_string(),
            x.connect_failures.to_string(),
            or_dash(galera),
        ]);
    }
    t
}

async fn tunnels(api: &AdminClient, out: &Out, cmd: TunnelsCmd) -> Result<(), Failure> {
    match cmd {
        TunnelsCmd::List => {
            let tunnels = api.tunnels().await.map_err(failure)?;
            let answer = ferry_admin_api::tunnels::TunnelList { tunnels };
            out.print(&answer, |a| tunnel_table(&a.tunnels));
        }
        TunnelsCmd::Show { name } => {
            let t = api.tunnel(&name).await.map_err(failure)?;
            out.print(&t, |t| {
                let mut fields = vec![
                    ("name", t.name.clone()),
                    ("listen", or_dash(t.listen.as_ref())),
                    ("upstream", t.upstream.clone()),
                    ("configured_upstream", t.configured_upstream.clone()),
                    ("server", t.server.clone()),
                    ("observe", t.observe.to_string()),
                    ("connections_total", t.connections_total.to_string()),
                    ("open_connections", t.open_connections.to_string()),
                    ("connect_failures", t.connect_failures.to_string()),
                    ("bytes_to_upstream", t.bytes_to_upstream.to_string()),
                    ("bytes_to_client", t.bytes_to_client.to_string()),
                    ("idle_closed", t.idle_closed.to_string()),
                    ("no_usable_node", t.no_usable_node.to_string()),
                ];
                let logins: Vec<String> =
                    t.logins.iter().map(|(k, v)| format!("{k}={v}")).collect();
                fields.push(("logins", logins.join(" ")));
                if let Some(g) = &t.galera {
                    fields.push(("galera_chosen", or_dash(g.chosen.as_ref())));
                    for n in &g.nodes {
                        let usable = if n.usable { "usable" } else { "not usable" };
                        fields.push(("galera_node", format!("{} {usable}: {}", n.addr, n.state)));
                    }
                }
                Table::fields(fields)
            });
        }
        TunnelsCmd::Uses { name } => {
            let u = api.tunnel_uses(&name).await.map_err(failure)?;
            out.print(&u, |u| {
                let mut t = Table::new(&["CLIENT", "USER", "DATABASE", "CONNECTIONS"]);
                for x in &u.uses {
                    t = t.row(vec![
                        x.client.clone(),
                        x.user.clone(),
                        or_dash(x.database.as_ref()),
                        x.connections.to_string(),
                    ]);
                }
                t
            });
        }
        TunnelsCmd::Export => {
            let e = api.export_uses().await.map_err(failure)?;
            out.print(&e, |e| {
                let mut t = Table::new(&["DATABASE", "CLIENT"]);
                for u in &e.uses {
                    t = t.row(vec![u.database.clone(), u.client.clone()]);
                }
                let written = e.written.as_deref().unwrap_or("(no observed_uses_file)");
                t.row(vec![format!("({} lines; written: {written})", e.lines)])
            });
        }
        TunnelsCmd::Repoint { name, upstream } => {
            let t = api
                .repoint_tunnel(&name, &upstream)
                .await
                .map_err(failure)?;
            out.print(&t, |t| tunnel_table(std::slice::from_ref(t)));
        }
    }
    Ok(())
}
