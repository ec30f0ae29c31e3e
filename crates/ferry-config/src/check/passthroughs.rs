//! `[[passthrough]]`: SNI passthrough listeners.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use super::{Cx, Result};
use crate::raw::RawPassthrough;
use crate::{AdminSettings, ListenerSpec, PassthroughSpec, TunnelSpec};

/// nginx's stream `proxy_timeout` default (10 min): TLS connections idle
/// longer than that are gone from most clients' pools anyway.
const DEFAULT_PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Passthrough listeners: defaults chosen so that a slow or silent client is
/// dropped quickly and a real ClientHello (a few hundred bytes, about 1.8 KiB
/// with post-quantum key shares) always fits.
const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CLIENT_HELLO: i64 = 16 * 1024;

/// The addresses already taken when passthroughs are checked.
struct Taken<'a> {
    listeners: &'a [ListenerSpec],
    admin: Option<&'a AdminSettings>,
    tunnels: &'a [TunnelSpec],
    /// Passthroughs checked so far, with the span of their `listen`.
    passthroughs: HashMap<SocketAddr, Range<usize>>,
}

impl Cx<'_> {
    pub(super) fn passthroughs(
        &self,
        raw: Vec<RawPassthrough>,
        listeners: &[ListenerSpec],
        admin: Option<&AdminSettings>,
        tunnels: &[TunnelSpec],
    ) -> Result<Vec<PassthroughSpec>> {
        let mut taken = Taken {
            listeners,
            admin,
            tunnels,
            passthroughs: HashMap::new(),
        };
        raw.iter()
            .map(|p| self.passthrough(p, &mut taken))
            .collect()
    }

    /// `listen`, refused if another listener of any kind has it.
    fn passthrough_listen(&self, p: &RawPassthrough, taken: &mut Taken<'_>) -> Result<SocketAddr> {
        let listen = self.socket_addr("passthrough listen", &p.listen)?;
        let ctx = format!("passthrough {listen}");
        // Port 0 asks the system for a free port, so two of them never collide.
        if listen.port() == 0 {
            return Ok(listen);
        }
        if let Some(first) = taken.passthroughs.get(&listen) {
            return Err(self.error(
                p.listen.span(),
                format!(
                    "{ctx}: listen is already used by the passthrough at line {}",
                    self.line_of(first)
                ),
            ));
        }
        let other = taken.listeners.iter().any(|l| l.listen == listen)
            || taken.admin.is_some_and(|a| a.listen == listen)
            || taken.tunnels.iter().any(|t| t.listen == listen);
        if other {
            return Err(self.error(
                p.listen.span(),
                format!("{ctx}: listen is also a [[listener]], [admin] or [[tunnels]] address"),
            ));
        }
        taken.passthroughs.insert(listen, p.listen.span());
        Ok(listen)
    }

    fn passthrough(&self, p: &RawPassthrough, taken: &mut Taken<'_>) -> Result<PassthroughSpec> {
        let listen = self.passthrough_listen(p, taken)?;
        let ctx = format!("passthrough {listen}");
        let backend_port = self.ranged(
            &format!("{ctx}: backend_port"),
            Some(&p.backend_port),
            1..=65535,
            443,
        )?;
        let hold_max = match &p.hold_max {
            Some(h) => Some(self.duration(&format!("{ctx}: hold_max"), Some(h), Duration::ZERO)?),
            None => None,
        };
        let maintenance_terminator = match &p.maintenance_terminator {
            Some(t) => Some(self.socket_addr(&format!("{ctx}: maintenance_terminator"), t)?),
            None => None,
        };
        let mut trusted_networks = Vec::with_capacity(p.trusted_networks.len());
        for n in &p.trusted_networks {
            trusted_networks.push(self.network_of(&format!("{ctx}: trusted_networks"), n)?);
        }
        let proxy_protocol = match &p.proxy_protocol {
            // A PROXY header names the client: believed from anyone, it
            // lets any client claim an operator's address (as HTTP
            // listeners need `trusted`).
            Some(v) if *v.get_ref() && trusted_networks.is_empty() => {
                return Err(self.error(
                    v.span(),
                    format!(
                        "{ctx}: proxy_protocol = true needs trusted_networks (the routers allowed to send PROXY headers, e.g. [\"10.1.0.0/24\"])"
                    ),
                ))
            }
            Some(v) => *v.get_ref(),
            None => false,
        };
        // Without PROXY headers there is nothing to trust: the list would
        // suggest a restriction that does not exist.
        if let (false, Some(first)) = (proxy_protocol, p.trusted_networks.first()) {
            return Err(self.error(
                first.span(),
                format!("{ctx}: trusted_networks without proxy_protocol = true has no effect"),
            ));
        }
        Ok(PassthroughSpec {
            listen,
            proxy_protocol,
            trusted_networks,
            idle_timeout: self.positive_duration(
                &format!("{ctx}: idle_timeout"),
                p.idle_timeout.as_ref(),
                DEFAULT_PASSTHROUGH_IDLE_TIMEOUT,
            )?,
            max_connections: self.connection_cap(
                &format!("{ctx}: max_connections"),
                p.max_connections.as_ref(),
            )?,
            // Range-checked above.
            backend_port: u16::try_from(backend_port).unwrap_or(443),
            send_proxy: p.send_proxy,
            hold_max,
            client_hello_timeout: self.positive_duration(
                &format!("{ctx}: client_hello_timeout"),
                p.client_hello_timeout.as_ref(),
                DEFAULT_CLIENT_HELLO_TIMEOUT,
            )?,
            max_client_hello: self.ranged(
                &format!("{ctx}: max_client_hello"),
                p.max_client_hello.as_ref(),
                512..=256 * 1024,
                DEFAULT_MAX_CLIENT_HELLO,
            )? as usize,
            maintenance_terminator,
        })
    }
}
