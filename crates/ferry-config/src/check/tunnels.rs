//! `[[tunnels]]` and their Galera checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use ferry_conf::SecretKeys;

use super::{check_host_port, Cx, Result};
use crate::raw::{RawGalera, RawTunnel};
use crate::{AdminSettings, GaleraCheck, ListenerSpec, TunnelSpec};

const DEFAULT_TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// MariaDB's own default `wait_timeout` (8 hours): the tunnel should not close
/// an idle connection the server would have kept.
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// How often a tunnel's Galera nodes are checked by default: a desynced node
/// stops getting new connections within about this long.
const DEFAULT_GALERA_INTERVAL: Duration = Duration::from_secs(2);

impl Cx<'_> {
    pub(super) fn tunnels(
        &self,
        raw: Vec<RawTunnel>,
        listeners: &[ListenerSpec],
        admin: Option<&AdminSettings>,
    ) -> Result<Vec<TunnelSpec>> {
        let mut names: HashMap<String, Range<usize>> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for t in raw {
            let name = self.name("tunnel", &t.name)?;
            if let Some(first) = names.get(&name) {
                return Err(self.error(
                    t.name.span(),
                    format!(
                        "tunnel {name:?} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            names.insert(name.clone(), t.name.span());
            let ctx = format!("tunnel {name:?}");
            let listen = self.socket_addr(&format!("{ctx}: listen"), &t.listen)?;
            // Port 0 asks the system for a free port, so two of them never collide.
            if listen.port() != 0 {
                if let Some(first) = addrs.get(&listen) {
                    return Err(self.error(
                        t.listen.span(),
                        format!(
                            "{ctx}: listen {listen} is already used by the tunnel at line {}",
                            self.line_of(first)
                        ),
                    ));
                }
                let taken = listeners.iter().any(|l| l.listen == listen)
                    || admin.is_some_and(|a| a.listen == listen);
                if taken {
                    return Err(self.error(
                        t.listen.span(),
                        format!("{ctx}: listen {listen} is also a [[listener]] or [admin] address"),
                    ));
                }
                addrs.insert(listen, t.listen.span());
            }
            let upstream = t.upstream.get_ref();
            if let Err(why) = check_host_port(upstream) {
                return Err(self.error(
                    t.upstream.span(),
                    format!("{ctx}: upstream {upstream:?} {why}"),
                ));
            }
            let server = match &t.server {
                Some(s) => self.name(&format!("{ctx}: server"), s)?,
                None => name.clone(),
            };
            out.push(TunnelSpec {
                connect_timeout: self.positive_duration(
                    &format!("{ctx}: connect_timeout"),
                    t.connect_timeout.as_ref(),
                    DEFAULT_TUNNEL_CONNECT_TIMEOUT,
                )?,
                idle_timeout: self.positive_duration(
                    &format!("{ctx}: idle_timeout"),
                    t.idle_timeout.as_ref(),
                    DEFAULT_TUNNEL_IDLE_TIMEOUT,
                )?,
                galera: match t.galera {
                    Some(g) => Some(self.galera(&ctx, g)?),
                    None => None,
                },
                upstream: upstream.clone(),
                name,
                listen,
                server,
                observe: t.observe,
            });
        }
        Ok(out)
    }

    fn galera(&self, ctx: &str, g: RawGalera) -> Result<GaleraCheck> {
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for n in &g.nodes {
            if let Err(why) = check_host_port(n.get_ref()) {
                return Err(self.error(
                    n.span(),
                    format!("{ctx}: galera node {:?} {why}", n.get_ref()),
                ));
            }
            nodes.push(n.get_ref().clone());
        }
        if g.user.get_ref().is_empty() {
            return Err(self.error(g.user.span(), format!("{ctx}: galera user is empty")));
        }
        // No password at all is an account without one.
        let password = self
            .secret(SecretKeys {
                owner: &format!("{ctx}: galera"),
                key: "password",
                inline: g.password.as_ref(),
                file: g.password_file.as_ref(),
                min_chars: 0,
            })?
            .map_or_else(String::new, |p| p.expose().to_string());
        Ok(GaleraCheck {
            nodes,
            user: g.user.into_inner(),
            password,
            interval: self.positive_duration(
                &format!("{ctx}: galera interval"),
                g.interval.as_ref(),
                DEFAULT_GALERA_INTERVAL,
            )?,
            allow_donor: g.allow_donor,
        })
    }
}
