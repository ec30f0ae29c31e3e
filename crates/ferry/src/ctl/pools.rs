//! `ferry ctl pools ...`: pools and their servers (list, a server's state,
//! joining and leaving).

use anyhow::anyhow;
use ferry_admin_api::pools::{NewServer, Pool, PoolList, ServerState};
use ferry_admin_api::AdminClient;

use super::failure;
use super::table::{or_dash, Out, Table};
use crate::Failure;

#[derive(clap::Subcommand)]
pub(super) enum PoolsCmd {
    /// Every pool with its servers, health and serving tier.
    List,
    /// The servers of one pool.
    Servers {
        /// The pool's name.
        pool: String,
    },
    /// Set a server's state: ready, drain (finish in-flight, take no new) or maint.
    Set {
        /// The pool's name.
        pool: String,
        /// The server's name in the pool.
        server: String,
        #[arg(value_enum)]
        state: StateArg,
    },
    /// Add a server to a pool (kept by the router across reloads and
    /// restarts until it leaves).
    Join {
        /// The pool's name.
        pool: String,
        /// The new server's name (1-64 letters, digits, '-', '_', '.').
        name: String,
        /// IP:port of the server.
        address: std::net::SocketAddr,
        /// 0 is preferred; a higher tier serves when every lower one is down.
        #[arg(long, default_value_t = 0)]
        tier: u8,
        /// Its share of the pool's requests among servers of its tier.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Its state on joining.
        #[arg(long, value_enum, default_value_t = StateArg::Ready)]
        state: StateArg,
    },
    /// Remove a server from a pool (it must be drained and idle: `pools set
    /// POOL SERVER drain` first, then wait until its active count is 0).
    Leave {
        /// The pool's name.
        pool: String,
        /// The server's name in the pool.
        server: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum StateArg {
    /// Takes new requests (when healthy).
    Ready,
    /// Takes no new requests; those in flight finish.
    Drain,
    /// Out of service.
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

pub(super) async fn run(api: &AdminClient, out: &Out, cmd: PoolsCmd) -> Result<(), Failure> {
    match cmd {
        PoolsCmd::List => {
            let pools = api.pools().await.map_err(failure)?;
            let answer = PoolList { pools };
            out.print(&answer, |a| server_table(&a.pools));
            print_scale(out, &answer.pools);
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
            print_scale(out, std::slice::from_ref(p));
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

/// Below the servers, the scale policies (`[pool.scale]`) and where they
/// stand; in JSON they are the pools' `scale` field.
fn print_scale(out: &Out, pools: &[Pool]) {
    if out.json || pools.iter().all(|p| p.scale.is_none()) {
        return;
    }
    let mut t = Table::new(&[
        "POOL",
        "SIGNAL",
        "NOW",
        "ADD>",
        "REMOVE<",
        "SERVERS",
        "WANTED",
        "MIN",
        "MAX",
        "DECISION",
        "IN FLIGHT",
        "LAST ACTION",
    ]);
    for p in pools {
        let Some(s) = &p.scale else {
            continue;
        };
        let last = s.last_action.as_ref().map(|a| {
            let server = a
                .server
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            format!(
                "{}{server}: {} ({}s ago; {})",
                a.action, a.result, a.ended_secs_ago, a.detail
            )
        });
        let decision = if s.failures > 0 {
            format!("{} ({} failed in a row)", s.decision, s.failures)
        } else {
            s.decision.clone()
        };
        t = t.row(vec![
            p.name.clone(),
            s.signal.clone(),
            s.value.to_string(),
            s.add_above.to_string(),
            s.remove_below.to_string(),
            s.servers.to_string(),
            s.wanted.to_string(),
            s.min_servers.to_string(),
            s.max_servers.to_string(),
            decision,
            or_dash(s.in_flight.as_ref()),
            or_dash(last),
        ]);
    }
    print!("\n{t}");
}
