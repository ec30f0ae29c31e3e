//! `migrate.toml` (docs/migrate-config.md): TOML in, a checked
//! [`MigrateConfig`] out. As in every Ferry config, serde first reads the file
//! into raw structs that keep the span of every value still to be checked
//! (unknown keys refused), then the checker builds the settings section by
//! section, so every error names `file:line:column` (ferry-conf's positions:
//! columns in characters). Secrets (router tokens, filer keys, database
//! URLs) are `<key>` or `<key>_file` under ferry-conf's one rule.

mod check;
mod raw;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ferry_conf::etcd::{EtcdAuth, EtcdTls};

use crate::error::{OrchError, Result};
use check::Cx;
use raw::RawConfig;

/// A checked `migrate.toml`.
#[derive(Clone, Debug)]
pub struct MigrateConfig {
    /// The file it was read from (relative paths inside are resolved against
    /// its directory).
    pub path: PathBuf,
    pub source: String,
    pub destination: String,
    pub datacenters: BTreeMap<String, DcSpec>,
    pub routers: Vec<RouterSpec>,
    pub filers: BTreeMap<String, FilerSpec>,
    /// `[db_servers.NAME]`: where each database server of the plan is in
    /// both datacenters.
    pub db_servers: BTreeMap<String, DbServerSpec>,
    pub db: DbSettings,
    pub copy: CopySettings,
    pub freeze: FreezeSettings,
    pub window: Option<Window>,
    pub check: CheckSettings,
    pub tracking: Option<std::net::SocketAddr>,
    /// `[store]`: where the journal is kept.
    pub store: StoreSettings,
}

/// `[store]`: where the journal is kept. Default: a SQLite file on this
/// machine (`--journal`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreSettings {
    #[default]
    Sqlite,
    /// In etcd under `P/runs/<run>/`, with the run's lease
    /// (docs/control-plane.md): another machine can resume the run. Boxed:
    /// the user and TLS files make it far larger than `Sqlite`.
    Etcd(Box<EtcdSettings>),
}

/// `[store] backend = "etcd"`. The connection keys are a router's
/// `[store]`'s, checked by the same code (ferry-conf's `etcd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `http://HOST:PORT` of the members (`https://` with `tls`).
    pub endpoints: Vec<String>,
    /// The key prefix `P` (default `/ferry`), as the routers' `[store]`.
    pub prefix: String,
    /// `user` and the content of `password_file` (etcd authentication).
    pub auth: Option<EtcdAuth>,
    /// `ca_file`, and `cert_file` with `key_file`: TLS to the members.
    pub tls: Option<EtcdTls>,
    /// The run id: the journal lives under `P/runs/<run>/`.
    pub run: String,
    /// TTL of the run's lease: how long after its runner stops (dies, is
    /// paused, is cut off) another may take the run over. Default 10 s.
    pub lease_ttl: Duration,
    /// Bound of each etcd request. Default 5 s.
    pub request_timeout: Duration,
    /// The routers load their sites from this etcd too, one record per site
    /// for all of them: every router is sent the pool a site lives in
    /// ([`placement`]). Default false: each router keeps its own records.
    pub shared_records: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcSpec {
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    pub name: String,
    pub datacenter: String,
    /// `http://host:port` of the admin API (no trailing slash).
    pub admin: String,
    /// `http://host:port` of a traffic listener, for fingerprints.
    pub traffic: Option<String>,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilerSpec {
    /// A local directory (resolved) or `ferry://HOST:PORT/VOLUME`.
    pub source: String,
    pub destination: String,
    /// The agents' pre-shared key, derived ([`ferry_sync::proto::derive_key`]).
    pub key: Option<[u8; 32]>,
}

/// One database server of the plan (`name@server`), as `mysql://` URLs of
/// the mover's account at the source and at the destination. Checked when
/// loaded; the passwords never show in `Debug`.
#[derive(Clone)]
pub struct DbServerSpec {
    pub source: String,
    pub destination: String,
}

impl std::fmt::Debug for DbServerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Endpoint's Display is user@host:port, never the password.
        let show = |side, url: &str| {
            ferry_db::Endpoint::parse(side, url)
                .map(|e| e.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        f.debug_struct("DbServerSpec")
            .field("source", &show(ferry_db::Side::Source, &self.source))
            .field(
                "destination",
                &show(ferry_db::Side::Destination, &self.destination),
            )
            .finish()
    }
}

/// `[db]`: how the runbook drives the database mover.
#[derive(Clone, Debug)]
pub struct DbSettings {
    /// Prove the databases equal: every chunk on snapshots in the pre-copy,
    /// the rows changed since inside the freeze.
    pub verify: bool,
    /// The first copy goes to the destination's binary log (off: as
    /// myloader's default, faster, for a destination without replicas or
    /// Galera peers).
    pub dest_binlog: bool,
    /// The pre-copy waits until the destination is at most this many
    /// transactions behind before the unit may freeze.
    pub max_lag: u64,
    /// Parallel connections for the first copy and the checksums.
    pub workers: usize,
    /// How long the pre-copy waits for the lag to fall under `max_lag`
    /// (advisory, as the files' convergence: the freeze goes on).
    pub catch_up_timeout: Duration,
    /// How long the final copy waits for the destination to apply the
    /// position read at the freeze.
    pub wait_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct CopySettings {
    pub mode: ferry_sync::Mode,
    pub max_passes: u32,
    pub checksum: bool,
}

#[derive(Clone, Debug)]
pub struct FreezeSettings {
    pub max_freeze: Duration,
    pub drain_timeout: Duration,
    pub retry_after: Duration,
    pub max_attempts: u32,
    /// How long the unfreeze step waits for held requests to reach 0.
    pub unfreeze_timeout: Duration,
}

/// `[window]`: minutes after 00:00 UTC. `end < start` wraps past midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_min: u32,
    pub end_min: u32,
}

impl Window {
    /// Is `minute` (after 00:00 UTC) inside the window?
    pub fn contains(&self, minute: u32) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

#[derive(Clone, Debug)]
pub struct CheckSettings {
    pub via: String,
    pub path: String,
    pub timeout: Duration,
}

impl MigrateConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<MigrateConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| OrchError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        MigrateConfig::parse(&text, path)
    }

    /// Checks `text`, which came from `origin` (named in errors; its directory
    /// anchors relative paths).
    pub fn parse(text: &str, origin: &Path) -> Result<MigrateConfig> {
        let cx = Cx { text, origin };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| OrchError::from(cx.source().toml(&e)))?;
        cx.check(raw)
    }

    pub fn router(&self, name: &str) -> Option<&RouterSpec> {
        self.routers.iter().find(|r| r.name == name)
    }

    /// The routers of datacenter `dc`, in file order.
    pub fn routers_of<'a>(&'a self, dc: &'a str) -> impl Iterator<Item = &'a RouterSpec> + 'a {
        self.routers.iter().filter(move |r| r.datacenter == dc)
    }

    pub fn pool_of(&self, dc: &str) -> &str {
        self.datacenters.get(dc).map_or("", |d| d.pool.as_str())
    }

    /// Whether the routers share one record per site (`[store]
    /// shared_records`: they load and watch the same records in etcd).
    pub fn shared_records(&self) -> bool {
        matches!(&self.store, StoreSettings::Etcd(e) if e.shared_records)
    }

    /// The placement a router of `router_dc` is sent for a site living in
    /// `site_dc`. Shared records name the pool the site lives in, for every
    /// router (each resolves it: its own pool, or the `[[remote]]` whose
    /// `pools` hold it); a router's own record says `pool:` in the site's
    /// datacenter and `remote:DC` elsewhere.
    pub fn placement(&self, router_dc: &str, site_dc: &str) -> String {
        placement(
            self.shared_records(),
            router_dc,
            site_dc,
            self.pool_of(site_dc),
        )
    }
}

/// [`MigrateConfig::placement`] for a site living in pool `site_pool`.
pub(crate) fn placement(shared: bool, router_dc: &str, site_dc: &str, site_pool: &str) -> String {
    if shared || router_dc == site_dc {
        format!("pool:{site_pool}")
    } else {
        format!("remote:{site_dc}")
    }
}
