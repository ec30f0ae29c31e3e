//! `[router]` and `[admin]`.

use std::time::Duration;

use ferry_conf::SecretKeys;
use ferry_model::Hostname;
use ipnet::IpNet;

use super::{Cx, Result};
use crate::raw::{RawAdmin, RawRouter, S};
use crate::{AccessLog, AdminSettings, ListenerSpec, RouterSettings, SiteSpec};

const DEFAULT_HOLD_MAX: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_AFTER: u32 = 30;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Client-side deadlines, chosen as HAProxy's recommended settings are
/// (`timeout http-request 10s`, `timeout client 30s`) rather than nginx's
/// (`client_header_timeout 60s`): a router in front of millions of sites is
/// the first thing a slowloris meets, and a real client sends its first
/// bytes and its head within milliseconds. A browser's preconnected socket
/// may wait a few seconds for its request: 10 s lets it.
const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// HAProxy's `timeout http-keep-alive` falls back to `timeout http-request`:
/// an idle connection costs a file descriptor and a slot of the cap.
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `send_timeout`/`client_body_timeout`/`proxy_read_timeout` are 60 s,
/// HAProxy's usual `timeout client/server` 30-50 s. 30 s: a paused video
/// stream survives, a client that stopped reading holds its request (and a
/// cutover's drain) for at most this long without progress.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The router's share of a freeze: requests of a frozen site that could
/// still write at the source get this long to finish before they are cut.
/// Half of `hold_max`'s default, so the requests held at the freeze outlive
/// the drain with room for the final copy, and below the orchestrator's
/// `[freeze] drain_timeout` default (10 s), so the cut lands before the
/// orchestrator gives the attempt up. Not `body_timeout` (30 s): that bounds
/// a body that stopped moving, not one that moves slowly.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// An upgraded connection (WebSocket) that moved no byte either way for
/// this long is closed. One hour, as HAProxy's usual `timeout tunnel`: a
/// WebSocket's application pings far more often, and a connection silent
/// longer is most likely a client that went away without a FIN.
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The admin API's own connection cap: a handful of operators, `ferry ctl`
/// and the orchestrator; small, so a flood of admin connections cannot use
/// the file descriptors traffic needs.
const DEFAULT_ADMIN_MAX_CONNECTIONS: i64 = 64;

impl Cx<'_> {
    /// Everything in `[router]` except `default_site`, which needs the sites.
    pub(super) fn router(&self, r: &RawRouter) -> Result<RouterSettings> {
        let name = self.name("router", &r.name)?;
        let store = match &r.store {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.error(
                    s.span(),
                    "store is an empty path (leave it out to keep no state across restarts)",
                ));
            }
            Some(s) => Some(self.resolve(s.get_ref())),
            None => None,
        };
        let access_log =
            match &r.access_log {
                None => AccessLog::Off,
                Some(a) => match a.get_ref().as_str() {
                    "off" => AccessLog::Off,
                    "stdout" => AccessLog::Stdout,
                    "stderr" => AccessLog::Stderr,
                    "" => return Err(self.error(
                        a.span(),
                        "access_log is empty (use \"off\", \"stdout\", \"stderr\" or a file path)",
                    )),
                    path => AccessLog::File(self.resolve(path)),
                },
            };
        let mut operator_networks = Vec::with_capacity(r.operator_networks.len());
        for net in &r.operator_networks {
            operator_networks.push(self.network(net)?);
        }
        let maintenance_page = match &r.maintenance_page {
            Some(p) => Some(self.read_named_file("maintenance_page", p)?),
            None => None,
        };
        let observed_uses_file = match &r.observed_uses_file {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.error(
                    s.span(),
                    "observed_uses_file is an empty path (leave it out to keep uses in memory)",
                ));
            }
            Some(s) => Some(self.resolve(s.get_ref())),
            None => None,
        };
        let sites_file = match &r.sites_file {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.error(s.span(), "sites_file is an empty path"));
            }
            Some(s) => Some(self.resolve(s.get_ref())),
            None => None,
        };
        let hold_max = self.duration("hold_max", r.hold_max.as_ref(), DEFAULT_HOLD_MAX)?;
        // Left out, the drain follows a short hold_max down (half of it), so a
        // config that was valid before drain_timeout existed still is.
        let default_drain = if hold_max.is_zero() {
            DEFAULT_DRAIN_TIMEOUT
        } else {
            DEFAULT_DRAIN_TIMEOUT.min(hold_max / 2)
        };
        let drain_timeout =
            self.positive_duration("drain_timeout", r.drain_timeout.as_ref(), default_drain)?;
        // A request that arrives as the freeze begins is held up to hold_max;
        // the drain must end before that, or every such request gets a 503
        // while the router still waits for the old ones. (hold_max = 0 holds
        // nothing: there is no such request.)
        if !hold_max.is_zero() && drain_timeout >= hold_max {
            let span = r
                .drain_timeout
                .as_ref()
                .or(r.hold_max.as_ref())
                .map(|s| s.span())
                .unwrap_or_else(|| r.name.span());
            return Err(self.error(
                span,
                format!(
                    "drain_timeout ({drain_timeout:?}) must be below hold_max ({hold_max:?}): \
                     requests held when a freeze begins would get 503 before its drain ends"
                ),
            ));
        }
        Ok(RouterSettings {
            name,
            sites_file,
            observed_uses_file,
            hold_max,
            retry_after: r.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            store,
            access_log,
            access_log_format: r.access_log_format.unwrap_or_default(),
            operator_networks,
            maintenance_page,
            default_site: None,
            connect_timeout: self.positive_duration(
                "connect_timeout",
                r.connect_timeout.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            request_timeout: self.positive_duration(
                "request_timeout",
                r.request_timeout.as_ref(),
                DEFAULT_REQUEST_TIMEOUT,
            )?,
            max_connections: self.connection_cap("max_connections", r.max_connections.as_ref())?,
            first_byte_timeout: self.positive_duration(
                "first_byte_timeout",
                r.first_byte_timeout.as_ref(),
                DEFAULT_FIRST_BYTE_TIMEOUT,
            )?,
            header_timeout: self.positive_duration(
                "header_timeout",
                r.header_timeout.as_ref(),
                DEFAULT_HEADER_TIMEOUT,
            )?,
            keepalive_timeout: self.positive_duration(
                "keepalive_timeout",
                r.keepalive_timeout.as_ref(),
                DEFAULT_KEEPALIVE_TIMEOUT,
            )?,
            body_timeout: self.positive_duration(
                "body_timeout",
                r.body_timeout.as_ref(),
                DEFAULT_BODY_TIMEOUT,
            )?,
            drain_timeout,
            tunnel_idle_timeout: self.positive_duration(
                "tunnel_idle_timeout",
                r.tunnel_idle_timeout.as_ref(),
                DEFAULT_TUNNEL_IDLE_TIMEOUT,
            )?,
        })
    }

    fn network(&self, net: &S<String>) -> Result<IpNet> {
        self.network_of("operator_networks", net)
    }

    pub(super) fn default_site(
        &self,
        raw: Option<&S<String>>,
        sites: &[SiteSpec],
    ) -> Result<Option<Hostname>> {
        let Some(raw) = raw else { return Ok(None) };
        let host = Hostname::parse(raw.get_ref()).map_err(|e| {
            self.error(raw.span(), format!("default_site {:?}: {e}", raw.get_ref()))
        })?;
        if !sites.iter().any(|s| s.host == host) {
            return Err(self.error(
                raw.span(),
                format!("default_site \"{host}\" names no [[site]]"),
            ));
        }
        Ok(Some(host))
    }

    pub(super) fn admin(&self, a: RawAdmin, listeners: &[ListenerSpec]) -> Result<AdminSettings> {
        let listen = self.socket_addr("admin listen", &a.listen)?;
        // Port 0 asks the system for a free port, so two of them never collide.
        if listen.port() != 0 && listeners.iter().any(|l| l.listen == listen) {
            return Err(self.error(
                a.listen.span(),
                format!("admin listen {listen} is also a [[listener]] address"),
            ));
        }
        // An empty token would be compared against an absent header and let
        // anyone in: the rule refuses it. No minimum length: routers'
        // admin tokens of any length are accepted today (see ferry-conf).
        let token = self.secret(SecretKeys {
            owner: "admin",
            key: "token",
            inline: a.token.as_ref(),
            file: a.token_file.as_ref(),
            min_chars: 0,
        })?;
        let insecure_no_auth = match &a.insecure_no_auth {
            Some(v) if *v.get_ref() => {
                if token.is_some() {
                    return Err(self.error(
                        v.span(),
                        "admin: insecure_no_auth = true with a token: keep one",
                    ));
                }
                // Anyone who can connect may change every site: only a
                // listener no other machine can reach may do without a token.
                if !listen.ip().is_loopback() {
                    return Err(self.error(
                        v.span(),
                        format!(
                            "admin: insecure_no_auth = true needs a loopback listen address, not {listen}"
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        if token.is_none() && !insecure_no_auth {
            return Err(self.error(
                a.listen.span(),
                "admin: no token: set token_file (a file readable by its owner only) or token; \
                 insecure_no_auth = true turns authentication off on a loopback address",
            ));
        }
        Ok(AdminSettings {
            listen,
            token,
            insecure_no_auth,
            max_connections: self.ranged(
                "admin max_connections",
                a.max_connections.as_ref(),
                1..=65_536,
                DEFAULT_ADMIN_MAX_CONNECTIONS,
            )? as usize,
        })
    }
}
