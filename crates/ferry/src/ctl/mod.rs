//! `ferry ctl`: the admin API's command-line client, one subcommand per
//! route (through `ferry-admin-api`'s client). Prints a table by default and
//! the API's JSON with `--json`.
//!
//! Exit codes are the binary's: 0 done, 1 failed (router unreachable, no
//! answer in time, a 5xx), 2 bad usage (a flag, an unreadable file or token
//! file), 3 refused by the router (a 4xx: unknown site, stale epoch, wrong
//! token), nothing changed.

mod certs;
mod pools;
mod routers;
mod sites;
mod table;
mod tunnels;

use std::path::PathBuf;
use std::time::Duration;

use ferry_admin_api::{AdminClient, AdminError};

use crate::Failure;
use certs::CertsCmd;
use pools::{PoolsCmd, StateArg};
use sites::SitesCmd;
use table::{Out, Table};
use tunnels::TunnelsCmd;

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
    /// The routers of an etcd control plane (not this router's admin API):
    /// list who is registered, seen and retired; retire one for good.
    Routers(routers::RoutersArgs),
}

/// A refusal (4xx) exits 3, anything else that failed exits 1.
pub(super) fn failure(e: AdminError) -> Failure {
    if e.is_refused() {
        Failure::refused(e)
    } else {
        Failure::from(e)
    }
}

pub async fn run(args: Args) -> Result<(), Failure> {
    if let Cmd::Routers(r) = args.command {
        let out = Out { json: args.json };
        return routers::run(&out, Duration::from_secs(args.timeout), r);
    }
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
        Cmd::Sites(c) => sites::run(&api, &out, c).await?,
        Cmd::Pools(c) => pools::run(&api, &out, c).await?,
        Cmd::Server {
            pool,
            server,
            state,
        } => {
            pools::run(
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
        Cmd::Certs(c) => certs::run(&api, &out, c).await?,
        Cmd::Tunnels(c) => tunnels::run(&api, &out, c).await?,
        // Answered above, before a router's API client is made.
        Cmd::Routers(_) => {}
    }
    Ok(())
}
