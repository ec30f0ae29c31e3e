//! The configuration of `ferry proxy`: TOML in, checked settings out.
//!
//! Reading happens in two stages, as in ripgrep's flag handling:
//!
//! 1. `raw`: serde reads the TOML into structs that mirror the file, keeping the
//!    byte span of every value that still needs checking and refusing unknown keys.
//! 2. `check`: the raw form becomes a [`Config`] whose fields are ready to use
//!    (addresses parsed, durations parsed, names cross-checked, relative paths
//!    resolved against the config file's directory, referenced files read).
//!
//! Every failure is a [`ConfigError`]; a bad value is reported as
//! `path:line:column: what`, with the name of the site, pool or server involved.
//!
//! Entry points: [`load`] (reads a file) and [`parse`] (text plus the path it
//! came from). Positions, durations and secrets follow ferry-conf's rules.
//! [`read_sites_file`] reads `[router] sites_file`, the bulk site list a router
//! loads at start (one `host placement [state] [epoch]` a line).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteState};
use serde::Deserialize;

mod check;
mod raw;
mod sites_file;

pub use check::check_host_port;
pub use sites_file::{
    read_sites_file, read_sites_file_with, ListedSite, SitesFileError, SitesList,
};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not valid TOML or a value is refused; `line` and `column` are
    /// 1-based and point at the offending value (or key).
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads and checks the config file at `path`. Relative paths inside it are
/// resolved against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Checks config `text`. `origin` is the file it came from: it names the file in
/// error messages and its directory anchors relative paths (files named by the
/// config, such as maintenance pages, are read here).
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    check::parse(text, origin)
}

/// A checked `ferry proxy` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub router: RouterSettings,
    pub admin: Option<AdminSettings>,
    pub listeners: Vec<ListenerSpec>,
    pub pools: Vec<PoolSpec>,
    pub remotes: Vec<RemoteSpec>,
    pub sites: Vec<SiteSpec>,
    pub tunnels: Vec<TunnelSpec>,
    /// `[[passthrough]]`: TLS listeners routed by SNI without terminating.
    pub passthroughs: Vec<PassthroughSpec>,
    /// `[tls]`: certificates for listeners with `tls = true`.
    pub tls: Option<TlsSettings>,
    /// `[store] backend = "etcd"`: the shared control store the router loads
    /// and watches (`None`: SQLite at `router.store`, or no store).
    pub etcd: Option<EtcdSettings>,
}

/// Whether this build can use `[store] backend = "etcd"` (cargo feature
/// `etcd` of ferry-config, turned on by ferry-proxy's and ferry's).
pub const ETCD_SUPPORTED: bool = cfg!(feature = "etcd");

/// `[store] backend = "etcd"`: the etcd cluster holding the control state.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Client URLs (`http://10.0.0.1:2379`, `https://...` with `ca_file`).
    pub endpoints: Vec<String>,
    /// Key prefix (`/ferry`), without a trailing `/`.
    pub prefix: String,
    /// `user` and the content of `password_file` (etcd authentication).
    pub auth: Option<(String, ferry_secret::Secret)>,
    /// Client TLS: the CA that signs the members' certificates, and this
    /// router's certificate and key (PEM) when the cluster requires them.
    pub tls: Option<EtcdTls>,
    /// TTL of the lease the router registers under (`P/routers/<name>`).
    pub lease_ttl: Duration,
    /// Bound on one request to etcd, retries included.
    pub request_timeout: Duration,
    /// SQLite copy of what the router applied, served from at a start while
    /// etcd is unreachable (settled sites only, see docs/control-plane.md).
    pub local_copy: Option<PathBuf>,
}

/// PEM of an etcd client's TLS settings: one type with the orchestrator's
/// `[store]`, checked by the same code (ferry-conf's `etcd`).
pub use ferry_conf::etcd::EtcdTls;

// By hand: `Secret` compares in constant time and has no `Eq` of its own.
impl PartialEq for EtcdSettings {
    fn eq(&self, o: &EtcdSettings) -> bool {
        self.auth == o.auth
            && self.tls == o.tls
            && self.endpoints == o.endpoints
            && self.prefix == o.prefix
            && self.lease_ttl == o.lease_ttl
            && self.request_timeout == o.request_timeout
            && self.local_copy == o.local_copy
    }
}

impl Eq for EtcdSettings {}

/// `[tls]`: TLS termination settings shared by every `tls = true` listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Directory of `NAME.pem` files (chain + key, or the key in `NAME.key`).
    pub cert_dir: PathBuf,
    /// Certificate name (file stem) for clients whose SNI matches none.
    pub default_cert: Option<String>,
    /// Parsed private keys kept in memory (least recently used dropped first).
    pub key_cache: usize,
    /// TLS 1.2 session-id cache entries; 0 keeps no session ids.
    pub session_cache: usize,
    /// Session tickets (TLS 1.3 resumption, and TLS 1.2 clients that ask);
    /// `false` is HAProxy's `no-tls-tickets`.
    pub tickets: bool,
    /// A client that has not finished its handshake by then is disconnected.
    pub handshake_timeout: Duration,
}

/// `[router]`: this router's identity and its behaviour for every site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSettings {
    /// This router's datacenter name (`[a-z0-9_-]+`); used to refuse loops.
    pub name: String,
    /// How long requests of a frozen site are held before they get a 503.
    pub hold_max: Duration,
    /// Seconds in the `Retry-After` header of 503 answers.
    pub retry_after: u32,
    /// SQLite state file; `None` keeps no state: admin changes are forgotten
    /// at restart.
    pub store: Option<PathBuf>,
    /// The bulk site list loaded at start, before the listeners open
    /// ([`read_sites_file`], format in `sites_file.rs`).
    pub sites_file: Option<PathBuf>,
    pub access_log: AccessLog,
    pub access_log_format: AccessLogFormat,
    /// Client networks let through while a site is in maintenance.
    pub operator_networks: Vec<ipnet::IpNet>,
    /// Content of the default maintenance page (HTML), read at load time.
    pub maintenance_page: Option<String>,
    /// Site that serves requests whose host matches no site.
    pub default_site: Option<Hostname>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Where the database tunnels' observed uses are written (JSON Lines in the
    /// inventory's `observed_uses` format); `None` keeps them in memory only.
    pub observed_uses_file: Option<PathBuf>,
    /// Client connections open at once over every traffic listener,
    /// passthrough listener and tunnel; at the cap, accepting pauses (new
    /// connections wait in the kernel's backlog). `None`: derived at start
    /// from the open-file limit, as HAProxy derives `maxconn`.
    pub max_connections: Option<usize>,
    /// A new connection must send its first bytes within this (its PROXY
    /// header, and on plain HTTP enough to tell HTTP/1.1 from h2c; on TLS
    /// listeners `[tls] handshake_timeout` bounds the handshake whole).
    pub first_byte_timeout: Duration,
    /// A request head must be whole within this (HTTP/1.1: counted from the
    /// end of the previous response on a keep-alive connection).
    pub header_timeout: Duration,
    /// A client connection with no request in progress is closed after this
    /// (HTTP/2: GOAWAY).
    pub keepalive_timeout: Duration,
    /// A request or response body that moves no byte for this long is cut
    /// (client not sending, client not reading, server not sending).
    pub body_timeout: Duration,
    /// How long after a site is frozen its requests that could still write
    /// at the source may go on; then they are cut (`straggler.rs` in
    /// ferry-proxy). Below `hold_max`, so the requests held at the freeze
    /// outlive its drain.
    pub drain_timeout: Duration,
    /// An upgraded connection (a WebSocket) with no byte either way for this
    /// long is closed (HAProxy's `timeout tunnel`).
    pub tunnel_idle_timeout: Duration,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

/// Layout of access log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// The Apache/nginx "combined" line.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// `[admin]`: the admin HTTP API.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Bearer token required by every call but `/healthz`; from `token` or the
    /// trimmed content of `token_file` (a file readable by its owner only).
    /// `None` only with `insecure_no_auth` on a loopback address.
    pub token: Option<ferry_secret::Secret>,
    /// `insecure_no_auth = true`: no token, anyone who can connect may call
    /// the API. Accepted only when `listen` is a loopback address.
    pub insecure_no_auth: bool,
    /// Admin connections open at once (its own cap, outside the traffic
    /// one, so the API stays reachable while traffic fills the router).
    pub max_connections: usize,
}

// By hand: `Secret` compares in constant time and has no `Eq` of its own.
impl PartialEq for AdminSettings {
    fn eq(&self, other: &AdminSettings) -> bool {
        self.listen == other.listen
            && self.token == other.token
            && self.insecure_no_auth == other.insecure_no_auth
            && self.max_connections == other.max_connections
    }
}

impl Eq for AdminSettings {}

/// `[[listener]]`: an address that accepts client (or peer router) traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub listen: SocketAddr,
    /// Peers are routers of other datacenters: their `X-Forwarded-For`/`Forwarded`
    /// and PROXY v2 headers are believed.
    pub trusted: bool,
    /// Every connection must start with a PROXY v2 header (only on trusted listeners).
    pub proxy_protocol: bool,
    /// Connections are TLS (certificates from `[tls]`), after the PROXY header if any.
    pub tls: bool,
    /// Connections open at once on this listener (within the router's
    /// `max_connections`); `None`: only the router's cap.
    pub max_connections: Option<usize>,
}

/// `[[pool]]`: a group of local servers that serve sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub balance: Balance,
    pub health: Option<HealthSpec>,
    /// Consecutive connection failures that mark a server down; 0 turns it off.
    pub passive_fall: u32,
    pub servers: Vec<ServerSpec>,
    /// Path rules in the order written; the router picks the longest matching prefix.
    pub rules: Vec<PathRule>,
    /// `[pool.scale]`: servers added at peaks and removed after.
    pub scale: Option<ScaleSpec>,
}

/// `[pool.scale]`: when to add a server to a pool and when to remove one,
/// and the provider's commands that do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSpec {
    pub signal: ScaleSignal,
    /// A server is added once the signal has stayed above this for `hold`.
    pub add_above: SignalLevel,
    /// A server is removed once the signal has stayed below this for `hold`
    /// (below `add_above`: the gap between them is the hysteresis).
    pub remove_below: SignalLevel,
    pub hold: Duration,
    /// No new decision for this long after an action ended.
    pub cooldown: Duration,
    /// Ready servers the policy keeps at least (it adds below this) ...
    pub min_servers: u32,
    /// ... and at most (it never adds above this).
    pub max_servers: u32,
    /// Argument vector run (never through a shell) to start one more server;
    /// the server joins the pool itself (`ferry agent --join`).
    pub add_command: Vec<String>,
    /// Argument vector run after a server left the pool; `FERRY_POOL`,
    /// `FERRY_SERVER` and `FERRY_ADDRESS` name it.
    pub remove_command: Vec<String>,
    /// A command still running after this is killed (its process group) and
    /// counts as failed.
    pub command_timeout: Duration,
    /// How long a leaving server may take to finish its requests in flight
    /// before it is deregistered anyway.
    pub drain_timeout: Duration,
}

/// What a scale policy watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScaleSignal {
    /// Requests in flight in the pool divided by its ready servers.
    #[default]
    InflightPerServer,
    /// The 95th percentile of the pool's upstream latency over the last
    /// second, in milliseconds (coarse: the bound of its histogram bucket).
    P95Latency,
}

impl ScaleSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleSignal::InflightPerServer => "inflight_per_server",
            ScaleSignal::P95Latency => "p95_latency",
        }
    }
}

/// A level of a scale signal, kept in thousandths so the config stays `Eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignalLevel(pub u64);

impl SignalLevel {
    pub fn get(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// How a pool spreads requests over the servers of its best healthy tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

/// `[pool.health]`: the active HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub path: String,
    pub expect_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server back.
    pub rise: u32,
    /// Consecutive failures that take a server down.
    pub fall: u32,
}

/// `[[pool.server]]`: one member of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub address: SocketAddr,
    /// Priority tier, 0 best; a tier serves only when every better one is down.
    pub tier: u8,
    pub weight: u32,
    pub state: ServerState,
}

/// `[[pool.rule]]` / `[[site.rule]]`: requests whose path starts with `prefix`
/// go to `pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub prefix: String,
    pub pool: String,
}

/// `[[remote]]`: the router of another datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub name: String,
    pub address: SocketAddr,
    /// Send a PROXY v2 header on each connection to carry the client address.
    pub proxy_protocol: bool,
    /// The remote router's `[[passthrough]]` listener (it must have
    /// `proxy_protocol = true`: the PROXY v2 header is always sent there).
    pub passthrough: Option<SocketAddr>,
    /// Pools that live in the remote's datacenter: `pool:NAME` on one of them
    /// is forwarded to this remote. With records shared by every router (etcd),
    /// a site's placement names the pool it lives in, and each router resolves
    /// it: its own pool, or the remote whose datacenter holds it.
    pub pools: Vec<String>,
}

/// `[[site]]`: one hostname (or `*.` pattern) and where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub host: Hostname,
    pub placement: Placement,
    pub state: SiteState,
    pub epoch: Epoch,
    /// Content of this site's maintenance page (HTML), read at load time.
    pub maintenance_page: Option<String>,
    pub rules: Vec<PathRule>,
}

/// `[[tunnels]]`: a TCP port forwarded to a database server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub name: String,
    pub listen: SocketAddr,
    /// `host:port` of the database server; a host name is resolved at each
    /// connection, so a DNS change needs no reload.
    pub upstream: String,
    /// Server name used in observed uses (`database@server`); the tunnel's name
    /// when not given.
    pub server: String,
    /// Read the MySQL handshake of each connection to learn who uses what.
    pub observe: bool,
    pub connect_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// `[tunnels.galera]`: the upstream is one node of a Galera cluster;
    /// new connections go to the first usable node of `upstream`, then
    /// `nodes`, as the health check last saw them.
    pub galera: Option<GaleraCheck>,
}

/// The health check of a Galera node pool behind a tunnel.
#[derive(Clone, PartialEq, Eq)]
pub struct GaleraCheck {
    /// The other nodes, in order of preference after the tunnel's upstream
    /// (one writer at a time avoids certification conflicts).
    pub nodes: Vec<String>,
    /// The account the check logs in with (needs no privilege: it reads
    /// `wsrep_%` status variables).
    pub user: String,
    pub password: String,
    pub interval: Duration,
    /// A donor still serves (`wsrep_sst_donor_rejects_queries` off); use it
    /// when nothing else is usable.
    pub allow_donor: bool,
}

// Hand-written so the password never reaches a log line.
impl std::fmt::Debug for GaleraCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GaleraCheck")
            .field("nodes", &self.nodes)
            .field("user", &self.user)
            .field("interval", &self.interval)
            .field("allow_donor", &self.allow_donor)
            .finish_non_exhaustive()
    }
}

/// `[[passthrough]]`: a TCP listener for TLS that reads the ClientHello's
/// server name, routes by it like a Host header, and splices the encrypted
/// bytes to the site's placement without terminating TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughSpec {
    pub listen: SocketAddr,
    /// Every connection starts with a PROXY v2 header from another router (whose
    /// client address is then believed); such connections are never sent on to
    /// a remote again.
    pub proxy_protocol: bool,
    /// Peers allowed to send that PROXY header (required with
    /// `proxy_protocol`); a connection from any other address is closed.
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// Port of the TLS servers of a `pool:NAME` site: the pool's servers' IP
    /// addresses with this port (their HTTP port is for HTTP traffic).
    pub backend_port: u16,
    /// Put a PROXY v2 header before the TLS bytes sent to local servers and
    /// to the maintenance terminator.
    pub send_proxy: bool,
    /// How long a frozen site's new connections wait (`[router] hold_max`
    /// unless set here).
    pub hold_max: Option<Duration>,
    /// A client must have sent its whole ClientHello by then.
    pub client_hello_timeout: Duration,
    /// Largest ClientHello accepted, in bytes on the wire.
    pub max_client_hello: usize,
    /// A local TLS server that answers the maintenance page; without it, a
    /// site in maintenance has its connections closed.
    pub maintenance_terminator: Option<SocketAddr>,
    /// A spliced connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once on this listener (within the router's
    /// `max_connections`); `None`: only the router's cap.
    pub max_connections: Option<usize>,
}

#[cfg(test)]
mod tests;
