//! `ferry ctl tunnels ...`: database tunnels, their uses, and re-pointing.

use ferry_admin_api::tunnels::{Tunnel, TunnelList};
use ferry_admin_api::AdminClient;

use super::failure;
use super::table::{or_dash, Out, Table};
use crate::Failure;

#[derive(clap::Subcommand)]
pub(super) enum TunnelsCmd {
    /// Every tunnel with its upstream and counters.
    List,
    /// One tunnel, with its login counts and Galera nodes.
    Show {
        /// The tunnel's name.
        name: String,
    },
    /// Who used which database through a tunnel.
    Uses {
        /// The tunnel's name.
        name: String,
    },
    /// Write the observed uses file now, and print its lines.
    Export,
    /// Send a tunnel's new connections to another server (HOST:PORT).
    Repoint {
        /// The tunnel's name.
        name: String,
        /// HOST:PORT of the database server.
        upstream: String,
    },
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

pub(super) async fn run(api: &AdminClient, out: &Out, cmd: TunnelsCmd) -> Result<(), Failure> {
    match cmd {
        TunnelsCmd::List => {
            let tunnels = api.tunnels().await.map_err(failure)?;
            let answer = TunnelList { tunnels };
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
