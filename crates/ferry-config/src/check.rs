//! Turns the raw TOML form into a checked [`Config`], naming the line of every
//! refused value.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_model::{Hostname, Placement};
use ipnet::IpNet;

use crate::raw::RawGalera;
use crate::raw::RawPassthrough;
use crate::raw::RawTls;
use crate::raw::{
    RawAdmin, RawConfig, RawHealth, RawListener, RawPool, RawRemote, RawRouter, RawRule, RawServer,
    RawSite, RawTunnel, S,
};
use crate::GaleraCheck;
use crate::PassthroughSpec;
use crate::TlsSettings;
use crate::{
    parse_duration, AccessLog, AdminSettings, Config, ConfigError, HealthSpec, ListenerSpec,
    PathRule, PoolSpec, RemoteSpec, RouterSettings, ServerSpec, SiteSpec, TunnelSpec,
};

const DEFAULT_HOLD_MAX: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_AFTER: u32 = 30;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PASSIVE_FALL: u32 = 3;
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIER: i64 = 15;
const MAX_WEIGHT: i64 = 256;
const MAX_NAME_LEN: usize = 63;
const DEFAULT_TUNNEL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// MariaDB's own default `wait_timeout` (8 hours): the tunnel should not close
/// an idle connection the server would have kept.
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// Parsed keys kept by default: every busy site of a large router, a few MB.
const DEFAULT_TLS_KEY_CACHE: i64 = 10_000;
const DEFAULT_TLS_SESSION_CACHE: i64 = 100_000;
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
/// The admin API's own connection cap: a handful of operators, `ferry ctl`
/// and the orchestrator; small, so a flood of admin connections cannot use
/// the file descriptors traffic needs.
const DEFAULT_ADMIN_MAX_CONNECTIONS: i64 = 64;
/// nginx's stream `proxy_timeout` default (10 min): TLS connections idle
/// longer than that are gone from most clients' pools anyway.
const DEFAULT_PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_CONNECTIONS: std::ops::RangeInclusive<i64> = 1..=10_000_000;

type Result<T> = std::result::Result<T, ConfigError>;

pub(crate) fn parse(text: &str, origin: &Path) -> Result<Config> {
    let cx = Cx {
        text,
        origin,
        base: origin.parent().unwrap_or(Path::new("")),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        cx.error_at(at, e.message().trim_end().to_string())
    })?;
    cx.config(raw)
}

/// What every check needs to report a position and to resolve a path.
struct Cx<'a> {
    text: &'a str,
    origin: &'a Path,
    /// Directory of the config file: relative paths inside it are relative to it,
    /// not to the process's working directory, so the config means the same thing
    /// wherever `ferry` is started from.
    base: &'a Path,
}

impl Cx<'_> {
    fn error_at(&self, offset: usize, message: String) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        self.error_at(span.start, message.into())
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    fn resolve(&self, path: &str) -> PathBuf {
        // `join` keeps an absolute `path` as it is.
        self.base.join(path)
    }

    /// Reads a file named by the config (key `what`), reporting the key's line if
    /// it cannot: a missing maintenance page must stop the start, not show up as
    /// an empty 503 later.
    fn read_named_file(&self, what: &str, name: &S<String>) -> Result<String> {
        if name.get_ref().is_empty() {
            return Err(self.error(name.span(), format!("{what} is an empty path")));
        }
        let path = self.resolve(name.get_ref());
        std::fs::read_to_string(&path).map_err(|e| {
            self.error(
                name.span(),
                format!(
                    "{what} {:?}: cannot read {}: {e}",
                    name.get_ref(),
                    path.display()
                ),
            )
        })
    }

    fn duration(
        &self,
        what: &str,
        value: Option<&S<String>>,
        default: Duration,
    ) -> Result<Duration> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref())
                .map_err(|e| self.error(v.span(), format!("{what}: {e}"))),
        }
    }

    fn positive_duration(
        &self,
        what: &str,
        value: Option<&S<String>>,
        default: Duration,
    ) -> Result<Duration> {
        let d = self.duration(what, value, default)?;
        match value {
            Some(v) if d.is_zero() => Err(self.error(v.span(), format!("{what} must be above 0"))),
            _ => Ok(d),
        }
    }

    fn ranged(
        &self,
        what: &str,
        value: Option<&S<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64> {
        match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.error(
                v.span(),
                format!(
                    "{what} {} is out of range {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    }

    /// Names of routers, pools, remotes and servers end up in placements
    /// (`pool:NAME`), admin API paths and metric labels, so they stay plain.
    fn name(&self, kind: &str, name: &S<String>) -> Result<String> {
        let n = name.get_ref();
        let plain = n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if n.is_empty() || n.len() > MAX_NAME_LEN || !plain {
            return Err(self.error(
                name.span(),
                format!(
                    "{kind} name {n:?} must be 1 to {MAX_NAME_LEN} characters among a-z, 0-9, '-' and '_'"
                ),
            ));
        }
        Ok(n.clone())
    }

    fn socket_addr(&self, what: &str, value: &S<String>) -> Result<SocketAddr> {
        let v = value.get_ref();
        v.parse().map_err(|_| {
            let names_a_host = v.rsplit_once(':').is_some_and(|(host, _)| {
                !host.starts_with('[')
                    && host.parse::<IpAddr>().is_err()
                    && host.bytes().any(|b| b.is_ascii_alphabetic())
            });
            let hint = if names_a_host {
                " (host names are not accepted: write an IP address, e.g. \"127.0.0.1:8081\" or \"[::1]:80\")"
            } else {
                " (expected IP:PORT, e.g. \"127.0.0.1:8081\" or \"[::1]:80\")"
            };
            self.error(value.span(), format!("{what} {v:?} is not a socket address{hint}"))
        })
    }

    fn config(&self, raw: RawConfig) -> Result<Config> {
        // Sections are checked in the order they usually appear in the file, so
        // the first error reported is the first one a reader meets.
        let router = self.router(&raw.router)?;
        let raw_listener_tls: Vec<Range<usize>> = raw
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref().filter(|t| *t.get_ref()).map(|t| t.span()))
            .collect();
        let listeners = self.listeners(raw.listeners)?;
        let admin = match raw.admin {
            Some(a) => Some(self.admin(a, &listeners)?),
            None => None,
        };
        let pools = self.pools(raw.pools)?;
        let pool_names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let remotes = self.remotes(raw.remotes, &router.name, &listeners)?;
        let sites = self.sites(raw.sites, &pool_names, &remotes)?;
        let router = RouterSettings {
            default_site: self.default_site(raw.router.default_site.as_ref(), &sites)?,
            ..router
        };
        let tunnels = self.tunnels(raw.tunnels, &listeners, admin.as_ref())?;
        let passthroughs =
            self.passthroughs(raw.passthroughs, &listeners, admin.as_ref(), &tunnels)?;
        let tls = self.tls(raw.tls.as_ref(), &raw_listener_tls)?;
        Ok(Config {
            router,
            admin,
            listeners,
            pools,
            remotes,
            sites,
            tunnels,
            passthroughs,
            tls,
        })
    }

    /// `[tls]`, and every `tls = true` listener needs it.
    fn tls(
        &self,
        raw: Option<&RawTls>,
        tls_listeners: &[Range<usize>],
    ) -> Result<Option<TlsSettings>> {
        let Some(t) = raw else {
            return match tls_listeners.first() {
                Some(span) => Err(self.error(
                    span.clone(),
                    "listener has tls = true but there is no [tls] section (cert_dir)",
                )),
                None => Ok(None),
            };
        };
        if t.cert_dir.get_ref().is_empty() {
            return Err(self.error(t.cert_dir.span(), "tls cert_dir is an empty path"));
        }
        let cert_dir = self.resolve(t.cert_dir.get_ref());
        if !cert_dir.is_dir() {
            return Err(self.error(
                t.cert_dir.span(),
                format!(
                    "tls cert_dir {:?}: {} is not a directory",
                    t.cert_dir.get_ref(),
                    cert_dir.display()
                ),
            ));
        }
        let default_cert = match &t.default_cert {
            Some(d) if d.get_ref().is_empty() => {
                return Err(self.error(
                    d.span(),
                    "tls default_cert is empty (leave it out for no default)",
                ))
            }
            Some(d) => {
                let file = cert_dir.join(format!("{}.pem", d.get_ref()));
                if d.get_ref().contains('/') || !file.is_file() {
                    return Err(self.error(
                        d.span(),
                        format!(
                            "tls default_cert {:?}: no {} (the name of a certificate file, without .pem)",
                            d.get_ref(),
                            file.display()
                        ),
                    ));
                }
                Some(d.get_ref().clone())
            }
            None => None,
        };
        Ok(Some(TlsSettings {
            cert_dir,
            default_cert,
            key_cache: self.ranged(
                "tls key_cache",
                t.key_cache.as_ref(),
                1..=100_000_000,
                DEFAULT_TLS_KEY_CACHE,
            )? as usize,
            session_cache: self.ranged(
                "tls session_cache",
                t.session_cache.as_ref(),
                0..=100_000_000,
                DEFAULT_TLS_SESSION_CACHE,
            )? as usize,
            tickets: t.tickets.unwrap_or(true),
            handshake_timeout: self.positive_duration(
                "tls handshake_timeout",
                t.handshake_timeout.as_ref(),
                DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            )?,
        }))
    }

    /// Everything in `[router]` except `default_site`, which needs the sites.
    fn router(&self, r: &RawRouter) -> Result<RouterSettings> {
        let name = self.name("router", &r.name)?;
        let store = match &r.store {
            Some(s) if s.get_ref().is_empty() => {
                return Err(self.error(
                    s.span(),
                    "store is an empty path (leave it out to keep state in memory)",
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
        Ok(RouterSettings {
            name,
            observed_uses_file,
            hold_max: self.duration("hold_max", r.hold_max.as_ref(), DEFAULT_HOLD_MAX)?,
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
        })
    }

    /// An optional connection cap (`None` when not set).
    fn connection_cap(&self, what: &str, value: Option<&S<i64>>) -> Result<Option<usize>> {
        match value {
            None => Ok(None),
            // Range-checked to 1..=10,000,000: fits any usize.
            Some(v) => Ok(Some(
                self.ranged(what, Some(v), MAX_CONNECTIONS, 0)? as usize
            )),
        }
    }

    /// A network (`10.0.0.0/8`) or one address, for `what`.
    fn network_of(&self, what: &str, net: &S<String>) -> Result<IpNet> {
        let s = net.get_ref();
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(n);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
        Err(self.error(
            net.span(),
            format!(
                "{what}: {s:?} is neither a network (\"10.0.0.0/8\", \"2001:db8::/32\") nor an IP address"
            ),
        ))
    }

    fn network(&self, net: &S<String>) -> Result<IpNet> {
        self.network_of("operator_networks", net)
    }

    fn default_site(
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

    fn admin(&self, a: RawAdmin, listeners: &[ListenerSpec]) -> Result<AdminSettings> {
        let listen = self.socket_addr("admin listen", &a.listen)?;
        // Port 0 asks the system for a free port, so two of them never collide.
        if listen.port() != 0 && listeners.iter().any(|l| l.listen == listen) {
            return Err(self.error(
                a.listen.span(),
                format!("admin listen {listen} is also a [[listener]] address"),
            ));
        }
        let token = match (a.token, a.token_file) {
            (Some(_), Some(f)) => {
                return Err(self.error(
                    f.span(),
                    "admin: token and token_file are mutually exclusive, keep one",
                ))
            }
            // An empty token would be compared against an absent header and
            // let anyone in: `Secret` refuses it.
            (Some(t), None) => Some(
                ferry_secret::Secret::new("admin token", t.get_ref().as_str())
                    .map_err(|e| self.error(t.span(), e.to_string()))?,
            ),
            (None, Some(f)) => Some(self.secret_file("admin token_file", &f)?),
            (None, None) => None,
        };
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

    /// A secret file named by the config: readable by its owner only,
    /// trimmed, not empty (ferry-secret's rule); refused at the key's line.
    fn secret_file(&self, what: &str, name: &S<String>) -> Result<ferry_secret::Secret> {
        if name.get_ref().is_empty() {
            return Err(self.error(name.span(), format!("{what} is an empty path")));
        }
        let path = self.resolve(name.get_ref());
        ferry_secret::read_file(what, &path).map_err(|e| self.error(name.span(), e.to_string()))
    }

    fn listeners(&self, raw: Vec<RawListener>) -> Result<Vec<ListenerSpec>> {
        if raw.is_empty() {
            return Err(self.error_at(
                0,
                "no [[listener]]: at least one listen address is needed".to_string(),
            ));
        }
        let mut seen: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for l in raw {
            let listen = self.socket_addr("listener listen", &l.listen)?;
            if let Some(first) = seen.get(&listen) {
                return Err(self.error(
                    l.listen.span(),
                    format!(
                        "listener {listen} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(listen, l.listen.span());
            let proxy_protocol = match l.proxy_protocol {
                // Requiring PROXY headers from untrusted peers would let any
                // client claim any source address.
                Some(p) if *p.get_ref() && !l.trusted => {
                    return Err(self.error(
                        p.span(),
                        format!("listener {listen}: proxy_protocol = true needs trusted = true"),
                    ))
                }
                Some(p) => p.into_inner(),
                None => false,
            };
            out.push(ListenerSpec {
                listen,
                trusted: l.trusted,
                proxy_protocol,
                tls: l.tls.as_ref().is_some_and(|t| *t.get_ref()),
                max_connections: self.connection_cap(
                    &format!("listener {listen}: max_connections"),
                    l.max_connections.as_ref(),
                )?,
            });
        }
        Ok(out)
    }

    fn pools(&self, raw: Vec<RawPool>) -> Result<Vec<PoolSpec>> {
        // Rules name pools, possibly ones defined further down: collect names first.
        let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
        for p in &raw {
            self.name("pool", &p.name)?;
            if let Some(first) = seen.get(p.name.get_ref().as_str()) {
                return Err(self.error(
                    p.name.span(),
                    format!(
                        "pool {:?} is defined twice (first at line {})",
                        p.name.get_ref(),
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(p.name.get_ref(), p.name.span());
        }
        let names: Vec<&str> = raw.iter().map(|p| p.name.get_ref().as_str()).collect();
        raw.iter().map(|p| self.pool(p, &names)).collect()
    }

    fn pool(&self, p: &RawPool, pool_names: &[&str]) -> Result<PoolSpec> {
        let name = p.name.get_ref().clone();
        let ctx = format!("pool {name:?}");
        if p.servers.is_empty() {
            return Err(self.error(
                p.name.span(),
                format!("{ctx} has no servers (add a [[pool.server]])"),
            ));
        }
        let mut servers = Vec::with_capacity(p.servers.len());
        let mut names: HashMap<&str, Range<usize>> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, &str> = HashMap::new();
        for s in &p.servers {
            let server = self.server(&ctx, s)?;
            if let Some(first) = names.get(server.name.as_str()) {
                return Err(self.error(
                    s.name.span(),
                    format!(
                        "{ctx}: server {:?} is defined twice (first at line {})",
                        server.name,
                        self.line_of(first)
                    ),
                ));
            }
            if let Some(other) = addrs.get(&server.address) {
                return Err(self.error(
                    s.address.span(),
                    format!(
                        "{ctx}: server {:?} has the same address as server {other:?} ({})",
                        server.name, server.address
                    ),
                ));
            }
            names.insert(s.name.get_ref(), s.name.span());
            addrs.insert(server.address, s.name.get_ref());
            servers.push(server);
        }
        let health = match &p.health {
            Some(h) => Some(self.health(&ctx, h)?),
            None => None,
        };
        Ok(PoolSpec {
            name,
            balance: p.balance,
            health,
            passive_fall: p.passive_fall.unwrap_or(DEFAULT_PASSIVE_FALL),
            servers,
            rules: self.rules(&ctx, &p.rules, pool_names)?,
        })
    }

    fn server(&self, ctx: &str, s: &RawServer) -> Result<ServerSpec> {
        let name = self.name(&format!("{ctx}: server"), &s.name)?;
        let ctx = format!("{ctx}: server {name:?}");
        let address = self.socket_addr(&format!("{ctx}: address"), &s.address)?;
        let tier = self.ranged(&format!("{ctx}: tier"), s.tier.as_ref(), 0..=MAX_TIER, 0)?;
        let weight = self.ranged(
            &format!("{ctx}: weight"),
            s.weight.as_ref(),
            1..=MAX_WEIGHT,
            1,
        )?;
        Ok(ServerSpec {
            name,
            address,
            // Both were range-checked just above, so the conversions cannot fail.
            tier: u8::try_from(tier).unwrap_or(u8::MAX),
            weight: u32::try_from(weight).unwrap_or(1),
            state: s.state,
        })
    }

    fn health(&self, ctx: &str, h: &RawHealth) -> Result<HealthSpec> {
        let ctx = format!("{ctx}: health");
        let path = match &h.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                return Err(self.error(
                    p.span(),
                    format!("{ctx}: path {:?} must start with '/'", p.get_ref()),
                ))
            }
        };
        let expect_status = self.ranged(
            &format!("{ctx}: expect_status"),
            h.expect_status.as_ref(),
            100..=599,
            200,
        )?;
        let rise = self.ranged(&format!("{ctx}: rise"), h.rise.as_ref(), 1..=1000, 2)?;
        let fall = self.ranged(&format!("{ctx}: fall"), h.fall.as_ref(), 1..=1000, 3)?;
        Ok(HealthSpec {
            path,
            // Range-checked above; the fallbacks are unreachable.
            expect_status: u16::try_from(expect_status).unwrap_or(200),
            interval: self.positive_duration(
                &format!("{ctx}: interval"),
                h.interval.as_ref(),
                DEFAULT_HEALTH_INTERVAL,
            )?,
            timeout: self.positive_duration(
                &format!("{ctx}: timeout"),
                h.timeout.as_ref(),
                DEFAULT_HEALTH_TIMEOUT,
            )?,
            rise: u32::try_from(rise).unwrap_or(2),
            fall: u32::try_from(fall).unwrap_or(3),
        })
    }

    fn rules(&self, ctx: &str, raw: &[RawRule], pool_names: &[&str]) -> Result<Vec<PathRule>> {
        let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let prefix = r.prefix.get_ref();
            if !prefix.starts_with('/') {
                return Err(self.error(
                    r.prefix.span(),
                    format!("{ctx}: rule prefix {prefix:?} must start with '/'"),
                ));
            }
            // Two rules with one prefix would leave the longest-match choice to chance.
            if let Some(first) = seen.get(prefix.as_str()) {
                return Err(self.error(
                    r.prefix.span(),
                    format!(
                        "{ctx}: rule prefix {prefix:?} is given twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(prefix, r.prefix.span());
            let pool = r.pool.get_ref();
            if !pool_names.contains(&pool.as_str()) {
                return Err(self.error(
                    r.pool.span(),
                    format!("{ctx}: rule {prefix:?} names pool {pool:?}, which is not defined"),
                ));
            }
            out.push(PathRule {
                prefix: prefix.clone(),
                pool: pool.clone(),
            });
        }
        Ok(out)
    }

    fn remotes(
        &self,
        raw: Vec<RawRemote>,
        router_name: &str,
        listeners: &[ListenerSpec],
    ) -> Result<Vec<RemoteSpec>> {
        let mut seen: HashMap<String, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let name = self.name("remote", &r.name)?;
            if let Some(first) = seen.get(&name) {
                return Err(self.error(
                    r.name.span(),
                    format!(
                        "remote {name:?} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            if name == router_name {
                return Err(self.error(
                    r.name.span(),
                    format!("remote {name:?} has this router's own name (router.name)"),
                ));
            }
            let address = self.socket_addr(&format!("remote {name:?}: address"), &r.address)?;
            // Forwarding to our own listener would loop forever.
            if listeners.iter().any(|l| l.listen == address) {
                return Err(self.error(
                    r.address.span(),
                    format!("remote {name:?}: address {address} is one of this router's listeners"),
                ));
            }
            let passthrough = match &r.passthrough {
                Some(p) => Some(self.socket_addr(&format!("remote {name:?}: passthrough"), p)?),
                None => None,
            };
            seen.insert(name.clone(), r.name.span());
            out.push(RemoteSpec {
                name,
                address,
                proxy_protocol: r.proxy_protocol,
                passthrough,
            });
        }
        Ok(out)
    }

    fn sites(
        &self,
        raw: Vec<RawSite>,
        pool_names: &[&str],
        remotes: &[RemoteSpec],
    ) -> Result<Vec<SiteSpec>> {
        let mut seen: HashMap<Hostname, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for s in raw {
            let host = Hostname::parse(s.host.get_ref()).map_err(|e| {
                self.error(s.host.span(), format!("site {:?}: {e}", s.host.get_ref()))
            })?;
            let ctx = format!("site \"{host}\"");
            if let Some(first) = seen.get(&host) {
                return Err(self.error(
                    s.host.span(),
                    format!(
                        "{ctx} is defined twice (first at line {})",
                        self.line_of(first)
                    ),
                ));
            }
            seen.insert(host.clone(), s.host.span());
            let text = s.placement.get_ref();
            let placement = Placement::parse(text).ok_or_else(|| {
                self.error(
                    s.placement.span(),
                    format!("{ctx}: placement {text:?} is not \"pool:NAME\" or \"remote:NAME\""),
                )
            })?;
            let exists = match &placement {
                Placement::Pool(p) => pool_names.contains(&p.as_str()),
                Placement::Remote(r) => remotes.iter().any(|x| &x.name == r),
            };
            if !exists {
                return Err(self.error(
                    s.placement.span(),
                    format!("{ctx}: placement \"{placement}\" names no pool or remote"),
                ));
            }
            let maintenance_page = match &s.maintenance_page {
                Some(p) => Some(self.read_named_file(&format!("{ctx}: maintenance_page"), p)?),
                None => None,
            };
            out.push(SiteSpec {
                rules: self.rules(&ctx, &s.rules, pool_names)?,
                host,
                placement,
                state: s.state,
                epoch: s.epoch,
                maintenance_page,
            });
        }
        Ok(out)
    }
}

impl Cx<'_> {
    fn tunnels(
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
        let password = match (g.password, g.password_file) {
            (Some(_), Some(f)) => {
                return Err(self.error(
                    f.span(),
                    format!(
                        "{ctx}: galera password and password_file are mutually exclusive, keep one"
                    ),
                ))
            }
            (Some(p), None) => p.into_inner(),
            (None, Some(f)) => self
                .secret_file(&format!("{ctx}: galera password_file"), &f)?
                .expose()
                .to_string(),
            (None, None) => String::new(),
        };
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

/// How often a tunnel's Galera nodes are checked by default: a desynced node
/// stops getting new connections within about this long.
const DEFAULT_GALERA_INTERVAL: Duration = Duration::from_secs(2);

/// Passthrough listeners: defaults chosen so that a slow or silent client is
/// dropped quickly and a real ClientHello (a few hundred bytes, about 1.8 KiB
/// with post-quantum key shares) always fits.
const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CLIENT_HELLO: i64 = 16 * 1024;

impl Cx<'_> {
    fn passthroughs(
        &self,
        raw: Vec<RawPassthrough>,
        listeners: &[ListenerSpec],
        admin: Option<&AdminSettings>,
        tunnels: &[TunnelSpec],
    ) -> Result<Vec<PassthroughSpec>> {
        let mut addrs: HashMap<SocketAddr, Range<usize>> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for p in raw {
            let listen = self.socket_addr("passthrough listen", &p.listen)?;
            let ctx = format!("passthrough {listen}");
            // Port 0 asks the system for a free port, so two of them never collide.
            if listen.port() != 0 {
                if let Some(first) = addrs.get(&listen) {
                    return Err(self.error(
                        p.listen.span(),
                        format!(
                            "{ctx}: listen is already used by the passthrough at line {}",
                            self.line_of(first)
                        ),
                    ));
                }
                let taken = listeners.iter().any(|l| l.listen == listen)
                    || admin.is_some_and(|a| a.listen == listen)
                    || tunnels.iter().any(|t| t.listen == listen);
                if taken {
                    return Err(self.error(
                        p.listen.span(),
                        format!(
                            "{ctx}: listen is also a [[listener]], [admin] or [[tunnels]] address"
                        ),
                    ));
                }
                addrs.insert(listen, p.listen.span());
            }
            let backend_port = self.ranged(
                &format!("{ctx}: backend_port"),
                Some(&p.backend_port),
                1..=65535,
                443,
            )?;
            let hold_max = match &p.hold_max {
                Some(h) => {
                    Some(self.duration(&format!("{ctx}: hold_max"), Some(h), Duration::ZERO)?)
                }
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
            out.push(PassthroughSpec {
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
            });
        }
        Ok(out)
    }
}

/// Checks a `host:port` upstream (an IP, `[v6]` or a host name, and a port
/// above 0); the answer says what is wrong. Shared with the admin API so a
/// re-pointed tunnel obeys the same rule as a configured one.
pub fn check_host_port(s: &str) -> std::result::Result<(), &'static str> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        // Port 0 means "any free port" when listening, nothing when connecting.
        return if a.port() == 0 {
            Err("has no valid port (1..=65535)")
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("is not HOST:PORT (e.g. \"10.0.0.5:3306\")");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("has no valid port (1..=65535)"),
    }
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !plain {
        return Err("has no valid host (an IP address, \"[v6]\" or a host name)");
    }
    Ok(())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // Spans from toml fall on character boundaries; stepping back is only a guard.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
