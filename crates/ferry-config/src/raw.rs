//! The config file as written: serde's view of the TOML, before any checking.
//!
//! Fields that need a semantic check keep their [`Spanned`] position so the
//! checker can name the line. Every table denies unknown keys so a typo is an
//! error instead of a silently ignored setting.

use ferry_model::{Epoch, ServerState, SiteState};
use serde::Deserialize;
use toml::Spanned;

use crate::{AccessLogFormat, Balance};

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub router: RawRouter,
    pub admin: Option<RawAdmin>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<RawPool>,
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RawRemote>,
    #[serde(default, rename = "site")]
    pub sites: Vec<RawSite>,
    #[serde(default)]
    pub tunnels: Vec<RawTunnel>,
    #[serde(default, rename = "passthrough")]
    pub passthroughs: Vec<RawPassthrough>,
    pub tls: Option<RawTls>,
    pub store: Option<RawStore>,
}

/// `[store]`: where the router's control state lives (SQLite or etcd).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub backend: S<String>,
    /// SQLite: the file (same as `[router] store`).
    pub path: Option<S<String>>,
    pub endpoints: Option<S<Vec<S<String>>>>,
    pub prefix: Option<S<String>>,
    pub user: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub cert_file: Option<S<String>>,
    pub key_file: Option<S<String>>,
    pub lease_ttl: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub local_copy: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouter {
    pub name: S<String>,
    pub hold_max: Option<S<String>>,
    pub retry_after: Option<u32>,
    pub store: Option<S<String>>,
    pub sites_file: Option<S<String>>,
    pub access_log: Option<S<String>>,
    pub access_log_format: Option<AccessLogFormat>,
    #[serde(default)]
    pub operator_networks: Vec<S<String>>,
    pub maintenance_page: Option<S<String>>,
    pub default_site: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub observed_uses_file: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub first_byte_timeout: Option<S<String>>,
    pub header_timeout: Option<S<String>>,
    pub keepalive_timeout: Option<S<String>>,
    pub body_timeout: Option<S<String>>,
    pub drain_timeout: Option<S<String>>,
    pub tunnel_idle_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: S<String>,
    pub token: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub insecure_no_auth: Option<S<bool>>,
    pub max_connections: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub listen: S<String>,
    #[serde(default)]
    pub trusted: bool,
    pub proxy_protocol: Option<S<bool>>,
    pub tls: Option<S<bool>>,
    pub max_connections: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert_dir: S<String>,
    pub default_cert: Option<S<String>>,
    pub key_cache: Option<S<i64>>,
    pub session_cache: Option<S<i64>>,
    pub tickets: Option<bool>,
    pub handshake_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: S<String>,
    #[serde(default)]
    pub balance: Balance,
    pub health: Option<RawHealth>,
    pub passive_fall: Option<u32>,
    #[serde(default, rename = "server")]
    pub servers: Vec<RawServer>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
    pub scale: Option<RawScale>,
}

/// `[pool.scale]`: the pool's scale policy (checked in `check/scale.rs`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScale {
    pub signal: Option<S<String>>,
    pub add_above: S<f64>,
    pub remove_below: S<f64>,
    pub hold: Option<S<String>>,
    pub cooldown: Option<S<String>>,
    pub min_servers: Option<S<i64>>,
    pub max_servers: S<i64>,
    pub add_command: S<Vec<String>>,
    pub remove_command: S<Vec<String>>,
    pub command_timeout: Option<S<String>>,
    pub drain_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub path: Option<S<String>>,
    pub expect_status: Option<S<i64>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub rise: Option<S<i64>>,
    pub fall: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub name: S<String>,
    pub address: S<String>,
    pub tier: Option<S<i64>>,
    pub weight: Option<S<i64>>,
    #[serde(default)]
    pub state: ServerState,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub prefix: S<String>,
    pub pool: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRemote {
    pub name: S<String>,
    pub address: S<String>,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The remote router's `[[passthrough]]` listener, for SNI passthrough.
    pub passthrough: Option<S<String>>,
    /// Pools of the remote's datacenter: a site placed `pool:NAME` on one of
    /// them is forwarded to this remote (records shared by every router).
    #[serde(default)]
    pub pools: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSite {
    pub host: S<String>,
    pub placement: S<String>,
    #[serde(default)]
    pub state: SiteState,
    #[serde(default)]
    pub epoch: Epoch,
    pub maintenance_page: Option<S<String>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTunnel {
    pub name: S<String>,
    pub listen: S<String>,
    pub upstream: S<String>,
    pub server: Option<S<String>>,
    #[serde(default = "yes")]
    pub observe: bool,
    pub connect_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub galera: Option<RawGalera>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGalera {
    #[serde(default)]
    pub nodes: Vec<S<String>>,
    pub user: S<String>,
    pub password: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub interval: Option<S<String>>,
    #[serde(default)]
    pub allow_donor: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassthrough {
    pub listen: S<String>,
    pub proxy_protocol: Option<S<bool>>,
    #[serde(default)]
    pub trusted_networks: Vec<S<String>>,
    pub backend_port: S<i64>,
    #[serde(default)]
    pub send_proxy: bool,
    pub hold_max: Option<S<String>>,
    pub client_hello_timeout: Option<S<String>>,
    pub max_client_hello: Option<S<i64>>,
    pub maintenance_terminator: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
}
