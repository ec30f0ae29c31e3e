//! The proxy's shared state, built from a validated config, and the reload that
//! turns one config into the next without a gap.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ferry_config::{Config, PoolSpec, RemoteSpec};
use ferry_model::{Hostname, Placement, ServerState, SiteRecord, SiteState};
use ferry_router::{
    ApplyError, Balance, HostTable, Outcome, Pool, Server, SiteChange, SiteExtras, SiteId,
};
use ferry_store::{JoinedServer, Store, StoreError};
use parking_lot::Mutex;

use crate::accesslog::AccessLogger;
use crate::hold::Holds;
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::ProxyError;
use seed::seed;

mod seed;

/// The store of a router with no `store` configured: it keeps nothing. Writes
/// succeed and are forgotten, reads find nothing, so the admin API's changes go
/// straight to the table and a restart begins from the config alone. (Before,
/// such a router kept an in-memory SQLite copy of every site, ~80 MiB at a
/// million sites and an insert per site, which a restart forgot just the same.)
/// It does not meet the [`Store`] contract (nothing reads back): it is for the
/// router only and is not run through `ferry_store::conformance`.
pub(crate) struct NoStore;

impl Store for NoStore {
    fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        Ok(Vec::new())
    }

    fn site(&self, _host: &Hostname) -> Result<Option<SiteRecord>, StoreError> {
        Ok(None)
    }

    fn put_sites(&self, _records: &[SiteRecord]) -> Result<(), StoreError> {
        Ok(())
    }

    fn remove_sites(&self, _hosts: &[Hostname]) -> Result<(), StoreError> {
        Ok(())
    }

    fn server_states(&self) -> Result<Vec<(String, String, ServerState)>, StoreError> {
        Ok(Vec::new())
    }

    fn put_server_state(&self, _: &str, _: &str, _: ServerState) -> Result<(), StoreError> {
        Ok(())
    }

    fn joined_servers(&self) -> Result<Vec<JoinedServer>, StoreError> {
        Ok(Vec::new())
    }

    fn put_joined_server(&self, _server: &JoinedServer) -> Result<(), StoreError> {
        Ok(())
    }

    fn remove_joined_server(&self, _pool: &str, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn keeps_writes(&self) -> bool {
        false
    }
}

/// Router-wide settings that a reload may change.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub name: String,
    pub hold_max: Duration,
    pub retry_after: u32,
    pub operator_networks: Vec<ipnet::IpNet>,
    pub maintenance_page: Arc<str>,
    pub request_timeout: Duration,
    /// Bound on dialling an upstream for a passthrough connection.
    pub connect_timeout: Duration,
    /// Client deadlines (`[router]`, see `deadline.rs`).
    pub first_byte_timeout: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    /// A frozen site's requests that could still write are cut this long
    /// after the freeze (`straggler.rs`).
    pub drain_timeout: Duration,
}

/// Who may call the admin API.
pub(crate) enum AdminAuth {
    /// Callers must present this bearer token.
    Token(ferry_secret::Secret),
    /// `insecure_no_auth = true` on a loopback address.
    Open,
    /// No `[admin]` in the config: nobody (fails closed).
    Nobody,
}

impl AdminAuth {
    fn from_config(c: &Config) -> AdminAuth {
        match &c.admin {
            Some(a) => match &a.token {
                Some(t) => AdminAuth::Token(t.clone()),
                None if a.insecure_no_auth => AdminAuth::Open,
                // The config check refuses this; should it get here, nobody
                // gets in rather than everybody.
                None => AdminAuth::Nobody,
            },
            None => AdminAuth::Nobody,
        }
    }
}

/// Pools by name with the settings the proxy needs next to them.
pub(crate) struct PoolSet {
    pub pools: hashbrown::HashMap<String, PoolEntry>,
    /// Pools of other datacenters (`[[remote]] pools`) -> the remote that
    /// serves them: `pool:NAME` of a site whose record every router shares.
    pub elsewhere: hashbrown::HashMap<String, Arc<str>>,
}

/// Where a placement sends a request from this router.
pub(crate) enum Hop<'a> {
    /// One of this router's pools, by name.
    Local(&'a str),
    /// Another datacenter's router, by remote name: `remote:NAME`, or a pool
    /// that remote's datacenter holds.
    Remote(std::borrow::Cow<'a, str>),
}

/// A pool with what the request path needs next to it, resolved once per
/// config instead of once per request.
pub(crate) struct PoolEntry {
    pub pool: Arc<Pool>,
    pub spec: PoolSpec,
    /// Connection failures in a row that mark a server down; 0 when the pool
    /// has no active check to bring it back.
    pub passive_fall: u32,
    pub histogram: Arc<crate::metrics::Histogram>,
}

pub(crate) struct Shared {
    pub settings: ArcSwap<Settings>,
    pub pools: ArcSwap<PoolSet>,
    pub remotes: ArcSwap<HashMap<String, RemoteSpec>>,
    pub table: Arc<HostTable>,
    pub store: Arc<dyn Store>,
    pub holds: Holds,
    /// Requests forwarded, by site, and the freezes' drain deadlines
    /// (`straggler.rs`).
    pub stragglers: Arc<crate::straggler::Stragglers>,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    pub access_log: ArcSwap<AccessLogger>,
    /// The config last applied and the path it came from (for reloads).
    pub config: Mutex<(Config, Option<PathBuf>)>,
    pub admin_auth: ArcSwap<AdminAuth>,
    /// `[store] backend = "etcd"`: the control plane (set at start; empty
    /// otherwise).
    pub control: std::sync::OnceLock<Arc<dyn ControlPlane>>,
}

/// What the admin API asks of the control plane (`control/`, etcd); a
/// trait here so that this module does not name `control`, which names it.
pub(crate) trait ControlPlane: Send + Sync {
    /// Waits (bounded) until the router applied its own last write.
    fn await_written(&self);
    /// Its Prometheus lines.
    fn render_metrics(&self, out: &mut String);
}

pub(crate) const BUILTIN_MAINTENANCE_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>Maintenance</title></head><body><h1>Down for maintenance</h1><p>This site is being worked on and will be back shortly.</p></body></html>\n";

impl Settings {
    fn from_config(c: &Config) -> Settings {
        Settings {
            name: c.router.name.clone(),
            hold_max: c.router.hold_max,
            retry_after: c.router.retry_after,
            operator_networks: c.router.operator_networks.clone(),
            maintenance_page: c
                .router
                .maintenance_page
                .as_deref()
                .unwrap_or(BUILTIN_MAINTENANCE_PAGE)
                .into(),
            request_timeout: c.router.request_timeout,
            connect_timeout: c.router.connect_timeout,
            first_byte_timeout: c.router.first_byte_timeout,
            header_timeout: c.router.header_timeout,
            keepalive_timeout: c.router.keepalive_timeout,
            body_timeout: c.router.body_timeout,
            drain_timeout: c.router.drain_timeout,
        }
    }
}

/// Builds pools from the config, carrying over the live state (health, and the
/// administrative state when the config did not change it) of servers that keep
/// their pool, name and address.
fn build_pools(c: &Config, old: Option<(&PoolSet, &Config)>, metrics: &Metrics) -> PoolSet {
    let mut pools = hashbrown::HashMap::new();
    for spec in &c.pools {
        let servers = spec
            .servers
            .iter()
            .map(|s| {
                let prior = old.and_then(|(set, old_cfg)| {
                    let server = set.pools.get(&spec.name)?.pool.server(&s.name)?;
                    if server.address != s.address {
                        return None;
                    }
                    let old_state = old_cfg
                        .pools
                        .iter()
                        .find(|p| p.name == spec.name)?
                        .servers
                        .iter()
                        .find(|o| o.name == s.name)?
                        .state;
                    Some((Arc::clone(server), old_state))
                });
                let state = match &prior {
                    Some((server, old_state)) if *old_state == s.state => server.state(),
                    _ => s.state,
                };
                let server = Server::new(s.name.clone(), s.address, s.tier, s.weight, state);
                if let Some((p, _)) = &prior {
                    server.set_healthy(p.is_healthy());
                }
                Arc::new(server)
            })
            .collect();
        let balance = match spec.balance {
            ferry_config::Balance::RoundRobin => Balance::RoundRobin,
            ferry_config::Balance::LeastConn => Balance::LeastConn,
        };
        let rules = spec
            .rules
            .iter()
            .map(|r| (r.prefix.clone(), r.pool.clone()))
            .collect();
        let entry = PoolEntry {
            pool: Arc::new(Pool::new(spec.name.clone(), balance, servers, rules)),
            spec: spec.clone(),
            passive_fall: if spec.health.is_some() {
                spec.passive_fall
            } else {
                0
            },
            histogram: metrics.upstream(&spec.name),
        };
        pools.insert(spec.name.clone(), entry);
    }
    PoolSet {
        pools,
        elsewhere: elsewhere_of(c),
    }
}

fn elsewhere_of(c: &Config) -> hashbrown::HashMap<String, Arc<str>> {
    c.remotes
        .iter()
        .flat_map(|r| {
            let dc: Arc<str> = Arc::from(r.name.as_str());
            r.pools.iter().map(move |p| (p.clone(), Arc::clone(&dc)))
        })
        .collect()
}

/// The record a config gives a site.
fn record_of(s: &ferry_config::SiteSpec) -> SiteRecord {
    SiteRecord {
        host: s.host.clone(),
        placement: s.placement.clone(),
        state: s.state,
        epoch: s.epoch,
    }
}

fn site_changes(c: &Config) -> Vec<SiteChange> {
    c.sites
        .iter()
        .map(|s| SiteChange {
            record: record_of(s),
            extras: Some(SiteExtras {
                maintenance_page: s.maintenance_page.as_deref().map(Arc::from),
                rules: s
                    .rules
                    .iter()
                    .map(|r| (r.prefix.clone(), r.pool.clone()))
                    .collect(),
            }),
        })
        .collect()
}

impl Shared {
    /// Builds the state: the store's records (the state the router had when it
    /// stopped) seed the table, and the config's sites win where their epoch is
    /// newer. Only those are written to the store: a start from a filled store
    /// writes nothing back.
    pub fn new(
        config: Config,
        path: Option<PathBuf>,
        store: Arc<dyn Store>,
    ) -> Result<Shared, ProxyError> {
        let table = Arc::new(HostTable::new());
        table.set_default_site(config.router.default_site.clone());
        seed(&table, &config, store.as_ref())?;
        let metrics = Arc::new(Metrics::default());
        let pools = build_pools(&config, None, &metrics);
        for (pool, server, state) in store.server_states().map_err(ProxyError::Store)? {
            if let Some(s) = pools.pools.get(&pool).and_then(|p| p.pool.server(&server)) {
                s.set_state(state);
            }
        }
        let upstream = Upstream::new(config.router.connect_timeout);
        Ok(Shared {
            settings: ArcSwap::from_pointee(Settings::from_config(&config)),
            pools: ArcSwap::from_pointee(pools),
            remotes: ArcSwap::from_pointee(remotes_of(&config)),
            table,
            store,
            holds: Holds::default(),
            stragglers: Arc::new(crate::straggler::Stragglers::new(Arc::clone(&metrics))),
            metrics,
            upstream,
            access_log: ArcSwap::from_pointee(AccessLogger::open(
                &config.router.access_log,
                config.router.access_log_format,
            )?),
            admin_auth: ArcSwap::from_pointee(AdminAuth::from_config(&config)),
            control: std::sync::OnceLock::new(),
            config: Mutex::new((config, path)),
        })
    }

    /// Applies a new config: pools, remotes and settings are swapped whole; sites
    /// are changed one by one (never rebuilt), so requests in flight see either
    /// the old or the new state of a site. Listeners are reconciled by the caller.
    pub fn reload(&self, new: Config) -> Result<ReloadReport, ProxyError> {
        let mut guard = self.config.lock();
        let old = &guard.0;
        let (changes, removed) = self.site_changes_for(old, &new)?;
        let pools = build_pools(&new, Some((&self.pools.load(), old)), &self.metrics);
        self.persist_server_states(old, &new)?;
        let access_log = AccessLogger::open(&new.router.access_log, new.router.access_log_format)?;
        // The new pools go in before the sites that may point at them. The table
        // apply is atomic and, with the config lock held (API changes take it
        // too), can only fail if the store does: then the old pools come back.
        let old_pools = self.pools.swap(Arc::new(pools));
        let old_remotes = self.remotes.swap(Arc::new(remotes_of(&new)));
        let outcomes = match self.apply_sites_locked(changes) {
            Ok(o) => o,
            Err(e) => {
                self.pools.store(old_pools);
                self.remotes.store(old_remotes);
                return Err(ProxyError::Seed(e.to_string()));
            }
        };
        let removed = self
            .remove_sites_locked(&removed, |hosts| self.store.remove_sites(hosts))
            .map_err(|e| ProxyError::Seed(e.to_string()))?;
        self.table.set_default_site(new.router.default_site.clone());
        self.settings.store(Arc::new(Settings::from_config(&new)));
        self.access_log.store(Arc::new(access_log));
        self.admin_auth
            .store(Arc::new(AdminAuth::from_config(&new)));
        let report = ReloadReport::of(&outcomes, &removed, new.pools.len());
        guard.0 = new;
        Ok(report)
    }

    /// What a reload from `old` to `new` does to the sites: the changes to
    /// apply and the hosts to remove. Refused when a site would point at a
    /// pool or remote `new` lacks.
    fn site_changes_for(
        &self,
        old: &Config,
        new: &Config,
    ) -> Result<(Vec<SiteChange>, Vec<Hostname>), ProxyError> {
        let configured: Vec<SiteRecord> = new.sites.iter().map(record_of).collect();
        check_placements(new, configured.iter())?;
        // A site the orchestrator moved at run time keeps its runtime record
        // unless the config carries a newer epoch; extras always follow the config.
        let mut changes = site_changes(new);
        for change in &mut changes {
            if let Some(cur) = self.table.record(&change.record.host) {
                if cur.epoch >= change.record.epoch {
                    change.record = cur;
                }
            }
        }
        // A runtime record kept above may point at a pool or remote this config
        // no longer has: refuse the reload rather than strand the site.
        check_placements(new, changes.iter().map(|c| &c.record))?;
        // Sites that left the config are removed; sites added at run time through
        // the admin API were never in the config and are left alone.
        let new_hosts: HashSet<&str> = new.sites.iter().map(|s| s.host.as_str()).collect();
        let removed: Vec<Hostname> = old
            .sites
            .iter()
            .filter(|s| !new_hosts.contains(s.host.as_str()))
            .map(|s| s.host.clone())
            .collect();
        // Runtime sites that would point at a pool or remote the new config lacks
        // make the reload invalid: refuse rather than strand them. Only the
        // sites of a placement the new config lacks are looked at (none, most
        // of the time); the table is not copied.
        let known = Known::of(new);
        let gone: HashSet<&str> = removed.iter().map(Hostname::as_str).collect();
        let stranded = self.table.find_placed(
            |p| !known.has(p),
            |host| !gone.contains(host) && !new_hosts.contains(host),
        );
        if let Some(r) = stranded {
            return Err(unknown_placement(&r));
        }
        Ok((changes, removed))
    }

    /// Persists the server states that `new` changes from `old`.
    fn persist_server_states(&self, old: &Config, new: &Config) -> Result<(), ProxyError> {
        for p in &new.pools {
            for s in &p.servers {
                let old_state = old
                    .pools
                    .iter()
                    .find(|o| o.name == p.name)
                    .and_then(|o| o.servers.iter().find(|o| o.name == s.name))
                    .map(|o| o.state);
                if old_state.is_some_and(|o| o != s.state) {
                    self.store
                        .put_server_state(&p.name, &s.name, s.state)
                        .map_err(ProxyError::Store)?;
                }
            }
        }
        Ok(())
    }

    /// Applies site changes from the admin API. The config lock is held
    /// across the apply so a reload (which holds it for its whole run) never
    /// judges a snapshot that an API change made stale.
    pub fn apply_sites(
        &self,
        changes: Vec<SiteChange>,
    ) -> Result<Vec<(SiteId, Outcome)>, ApplyError<StoreError>> {
        let _config = self.config.lock();
        self.apply_sites_locked(changes)
    }

    /// The one place site records change at run time (admin API and reload;
    /// the caller holds the config lock): the table applies the batch (the
    /// store first), then the requests held on a site that was added or
    /// changed are woken to look it up again.
    fn apply_sites_locked(
        &self,
        changes: Vec<SiteChange>,
    ) -> Result<Vec<(SiteId, Outcome)>, ApplyError<StoreError>> {
        let outcomes = self
            .table
            .apply(changes, |recs| self.store.put_sites(recs))?;
        let changed: Vec<SiteId> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Added | Outcome::Changed))
            .map(|(id, _)| *id)
            .collect();
        self.holds.wake(&changed);
        Ok(outcomes)
    }

    /// Removes the sites of `hosts` (the caller holds the config lock):
    /// `persist` first, then the table. Requests held on a removed site are
    /// woken to look their host up again (404, or the default site) instead
    /// of waiting out `hold_max` for a site that is gone, and their freezes'
    /// drain deadlines end.
    pub(crate) fn remove_sites_locked<E>(
        &self,
        hosts: &[Hostname],
        persist: impl FnOnce(&[Hostname]) -> Result<(), E>,
    ) -> Result<Vec<(Hostname, Outcome)>, ApplyError<E>> {
        let ids: Vec<SiteId> = hosts
            .iter()
            .filter_map(|h| self.table.get(h).map(|r| r.site))
            .collect();
        let out = self.table.remove(hosts, persist)?;
        self.holds.wake(&ids);
        self.stragglers.settled(&ids);
        Ok(out)
    }

    /// Where `placement` sends a request from this router. A pool no remote
    /// claims is local (a missing one is answered 503 by the caller).
    pub(crate) fn hop<'a>(&self, placement: &'a Placement) -> Hop<'a> {
        match placement {
            Placement::Pool(name) => match self.pools.load().elsewhere.get(name.as_str()) {
                Some(dc) => Hop::Remote(dc.to_string().into()),
                None => Hop::Local(name),
            },
            Placement::Remote(dc) => Hop::Remote(dc.as_str().into()),
        }
    }

    /// A request another router sent on (`sent_on`: its `ferry-via`, believed
    /// on a trusted listener only) for a site frozen here, which a pool of
    /// this router serves: it goes through instead of being held. That router
    /// routed it before it applied the freeze (a frozen router holds new
    /// requests), counts it in flight and acknowledges the freeze only once
    /// it has finished, and the final copy waits for every acknowledgement:
    /// the request is part of that router's drain (cutover.md, step 1), over
    /// before any copy starts. Held here, it would hold the freeze hostage
    /// when both datacenters apply one shared record at once: the sender
    /// waits for its answer, this router waits for the flip.
    pub(crate) fn drained_by_sender(
        &self,
        sent_on: bool,
        host: &Hostname,
    ) -> Option<ferry_router::Route> {
        if !sent_on {
            return None;
        }
        let route = self.table.get(host)?;
        let local = matches!(self.hop(&route.placement), Hop::Local(_));
        (route.state == SiteState::Frozen && local).then_some(route)
    }

    /// Validates that every placement names a pool or remote of `config`.
    pub fn check_placement(&self, p: &Placement) -> bool {
        match p {
            Placement::Pool(name) => {
                let pools = self.pools.load();
                pools.pools.contains_key(name) || pools.elsewhere.contains_key(name)
            }
            Placement::Remote(name) => self.remotes.load().contains_key(name),
        }
    }

    /// Sets a server's administrative state and persists it.
    pub fn set_server_state(
        &self,
        pool: &str,
        server: &str,
        state: ServerState,
    ) -> Result<bool, ProxyError> {
        let pools = self.pools.load();
        let Some(s) = pools.pools.get(pool).and_then(|p| p.pool.server(server)) else {
            return Ok(false);
        };
        self.store
            .put_server_state(pool, server, state)
            .map_err(ProxyError::Store)?;
        s.set_state(state);
        Ok(true)
    }

    /// Adds a server to a pool at run time (an extra front server joining
    /// at a peak, `POST /v1/pools/{pool}/servers`): the pool is rebuilt
    /// with the same server objects (state, health and counts kept) plus
    /// the new one, and swapped in. It is not in the config: a reload or a
    /// restart forgets it, and the active health check (started per pool
    /// at start and reload) does not probe it; passive checks do.
    pub fn add_server(&self, pool: &str, server: Server) -> Result<(), RuntimeServerError> {
        // Serialised with reloads and other changes, which rebuild pools too.
        let _config = self.config.lock();
        let cur = self.pools.load();
        let entry = cur
            .pools
            .get(pool)
            .ok_or_else(|| RuntimeServerError::NoPool(pool.to_string()))?;
        if entry.pool.server(&server.name).is_some() {
            return Err(RuntimeServerError::Exists(server.name.clone()));
        }
        let mut servers = entry.pool.servers.clone();
        servers.push(Arc::new(server));
        self.swap_pool_servers(&cur, pool, servers);
        Ok(())
    }

    /// Removes a server added at run time (or a configured one, until the
    /// next reload). Only a drained server with no request in flight.
    pub fn remove_server(&self, pool: &str, name: &str) -> Result<(), RuntimeServerError> {
        let _config = self.config.lock();
        let cur = self.pools.load();
        let entry = cur
            .pools
            .get(pool)
            .ok_or_else(|| RuntimeServerError::NoPool(pool.to_string()))?;
        let s = entry
            .pool
            .server(name)
            .ok_or_else(|| RuntimeServerError::NoServer(name.to_string()))?;
        if s.state() == ServerState::Ready || s.active_requests() > 0 {
            return Err(RuntimeServerError::NotDrained {
                server: name.to_string(),
                state: s.state().as_str().to_string(),
                active: s.active_requests(),
            });
        }
        let servers = entry
            .pool
            .servers
            .iter()
            .filter(|s| s.name != name)
            .cloned()
            .collect();
        self.swap_pool_servers(&cur, pool, servers);
        Ok(())
    }

    fn swap_pool_servers(&self, cur: &PoolSet, pool: &str, servers: Vec<Arc<Server>>) {
        let pools = cur
            .pools
            .iter()
            .map(|(name, e)| {
                let p = if name == pool {
                    Arc::new(Pool::new(
                        e.pool.name.clone(),
                        e.pool.balance,
                        servers.clone(),
                        e.pool.rules.clone(),
                    ))
                } else {
                    Arc::clone(&e.pool)
                };
                let entry = PoolEntry {
                    pool: p,
                    spec: e.spec.clone(),
                    passive_fall: e.passive_fall,
                    histogram: Arc::clone(&e.histogram),
                };
                (name.clone(), entry)
            })
            .collect();
        self.pools.store(Arc::new(PoolSet {
            pools,
            elsewhere: cur.elsewhere.clone(),
        }));
    }
}

/// Why a server cannot be added to or removed from a pool at run time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeServerError {
    #[error("no pool {0}")]
    NoPool(String),
    #[error("no server {0} in the pool")]
    NoServer(String),
    #[error("a server named {0} is already in the pool")]
    Exists(String),
    #[error(
        "server {server} is {state} with {active} requests in flight: drain it first and wait"
    )]
    NotDrained {
        server: String,
        state: String,
        active: u32,
    },
}

fn remotes_of(c: &Config) -> HashMap<String, RemoteSpec> {
    c.remotes
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect()
}

fn check_placements<'a>(
    c: &Config,
    records: impl Iterator<Item = &'a SiteRecord>,
) -> Result<(), ProxyError> {
    let known = Known::of(c);
    for r in records {
        if !known.has(&r.placement) {
            return Err(unknown_placement(r));
        }
    }
    Ok(())
}

fn unknown_placement(r: &SiteRecord) -> ProxyError {
    ProxyError::UnknownPlacement {
        host: r.host.clone(),
        placement: r.placement.clone(),
    }
}

/// The pools and remotes a config names, for checking placements.
struct Known<'a> {
    pools: HashSet<&'a str>,
    remotes: HashSet<&'a str>,
}

impl<'a> Known<'a> {
    fn of(c: &'a Config) -> Known<'a> {
        Known {
            pools: c
                .pools
                .iter()
                .map(|p| p.name.as_str())
                .chain(
                    c.remotes
                        .iter()
                        .flat_map(|r| r.pools.iter().map(String::as_str)),
                )
                .collect(),
            remotes: c.remotes.iter().map(|r| r.name.as_str()).collect(),
        }
    }

    fn has(&self, p: &Placement) -> bool {
        match p {
            Placement::Pool(name) => self.pools.contains(name.as_str()),
            Placement::Remote(name) => self.remotes.contains(name.as_str()),
        }
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    pub sites_added: usize,
    pub sites_changed: usize,
    pub sites_removed: usize,
    pub pools: usize,
}

impl ReloadReport {
    fn of(
        applied: &[(SiteId, Outcome)],
        removed: &[(Hostname, Outcome)],
        pools: usize,
    ) -> ReloadReport {
        let count =
            |list: &[(SiteId, Outcome)], k: Outcome| list.iter().filter(|(_, o)| *o == k).count();
        ReloadReport {
            sites_added: count(applied, Outcome::Added),
            sites_changed: count(applied, Outcome::Changed),
            sites_removed: removed
                .iter()
                .filter(|(_, o)| *o == Outcome::Removed)
                .count(),
            pools,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::{Epoch, SiteState};
    use ferry_store::SqliteStore;
    use std::path::Path;

    /// A config with pools `web` and `other` (unless `without_other`) and
    /// the sites `(host, pool, epoch)`.
    fn config(sites: &[(&str, &str, u64)], without_other: bool) -> Config {
        let mut text = String::from(
            "[router]\nname = \"dc1\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"web\"\n[[pool.server]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n",
        );
        if !without_other {
            text += "\n[[pool]]\nname = \"other\"\n[[pool.server]]\nname = \"b\"\naddress = \"127.0.0.1:10\"\n";
        }
        for (host, pool, epoch) in sites {
            text += &format!(
                "\n[[site]]\nhost = \"{host}\"\nplacement = \"pool:{pool}\"\nepoch = {epoch}\n"
            );
        }
        ferry_config::parse(&text, Path::new("test.toml")).expect("config")
    }

    fn shared(c: Config) -> Shared {
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        Shared::new(c, None, store).expect("shared")
    }

    fn change(host: &str, pool: &str, state: SiteState, epoch: u64) -> SiteChange {
        SiteChange {
            record: SiteRecord {
                host: Hostname::parse(host).expect("host"),
                placement: Placement::Pool(pool.into()),
                state,
                epoch: Epoch(epoch),
            },
            extras: None,
        }
    }

    fn record(s: &Shared, host: &str) -> Option<SiteRecord> {
        s.table.record(&Hostname::parse(host).expect("host"))
    }

    /// A pool of another datacenter resolves to its remote; a request another
    /// router sent on passes a freeze only where this router's own pool serves
    /// the site, and only when it says it came from a router.
    #[test]
    fn pools_elsewhere_and_requests_drained_by_their_sender() {
        let text = "[router]\nname = \"dc1\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
             [[remote]]\nname = \"dc2\"\naddress = \"127.0.0.1:11\"\npools = [\"far\"]\n\n\
             [[pool]]\nname = \"web\"\n[[pool.server]]\nname = \"a\"\naddress = \"127.0.0.1:9\"\n\n\
             [[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\nepoch = 1\n\n\
             [[site]]\nhost = \"b.com\"\nplacement = \"pool:far\"\nepoch = 1\n";
        let s = shared(ferry_config::parse(text, Path::new("test.toml")).expect("config"));
        let far = Placement::Pool("far".into());
        assert!(s.check_placement(&far));
        assert!(matches!(s.hop(&far), Hop::Remote(dc) if dc == "dc2"));
        assert!(matches!(
            s.hop(&Placement::Pool("web".into())),
            Hop::Local("web")
        ));
        let (a, b) = (
            Hostname::parse("a.com").expect("host"),
            Hostname::parse("b.com").expect("host"),
        );
        assert!(
            s.drained_by_sender(true, &a).is_none(),
            "active: the usual path"
        );
        s.apply_sites(vec![
            change("a.com", "web", SiteState::Frozen, 2),
            change("b.com", "far", SiteState::Frozen, 2),
        ])
        .expect("freeze");
        let through = s.drained_by_sender(true, &a).expect("sent on by a router");
        assert_eq!(
            (through.state, through.epoch),
            (SiteState::Frozen, Epoch(2))
        );
        assert!(s.drained_by_sender(false, &a).is_none(), "a client is held");
        assert!(
            s.drained_by_sender(true, &b).is_none(),
            "not served here: held"
        );
    }

    /// Before: a request held on a frozen site that was then removed waited
    /// out hold_max (30 s) and got a 503 for a site that no longer existed.
    #[tokio::test(start_paused = true)]
    async fn removing_a_frozen_site_answers_its_held_requests_at_once() {
        use crate::hold::{Hold, Unrouted};
        let s = shared(config(&[("a.com", "web", 1)], false));
        s.apply_sites(vec![change("a.com", "web", SiteState::Frozen, 2)])
            .expect("freeze");
        let held_total = std::sync::atomic::AtomicU64::new(0);
        let hold = Hold {
            table: &s.table,
            holds: &s.holds,
            max: Duration::from_secs(30),
            held_total: &held_total,
        };
        let t0 = tokio::time::Instant::now();
        let remove = async {
            // The request is held (counted) before the site goes.
            while held_total.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
            let _config = s.config.lock();
            let host = Hostname::parse("a.com").expect("host");
            s.remove_sites_locked(&[host], |h| s.store.remove_sites(h))
                .expect("remove");
        };
        let (routed, ()) = tokio::join!(hold.route("a.com", std::future::pending()), remove);
        assert_eq!(routed.err(), Some(Unrouted::UnknownSite));
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "waited out hold_max"
        );
    }

    #[test]
    fn a_reload_keeps_a_runtime_record_unless_the_config_is_newer() {
        let s = shared(config(&[("a.com", "web", 1)], false));
        // The orchestrator moved it at run time.
        s.apply_sites(vec![change("a.com", "other", SiteState::Maintenance, 5)])
            .expect("apply");
        let report = s
            .reload(config(&[("a.com", "web", 1)], false))
            .expect("reload");
        assert_eq!((report.sites_added, report.sites_changed), (0, 0));
        let kept = record(&s, "a.com").expect("site");
        assert_eq!((kept.epoch, kept.state), (Epoch(5), SiteState::Maintenance));
        let report = s
            .reload(config(&[("a.com", "web", 6)], false))
            .expect("reload");
        assert_eq!(report.sites_changed, 1);
        let newer = record(&s, "a.com").expect("site");
        assert_eq!(newer.placement, Placement::Pool("web".into()));
        assert_eq!((newer.epoch, newer.state), (Epoch(6), SiteState::Active));
    }

    #[test]
    fn a_reload_that_would_strand_a_runtime_site_is_refused() {
        let s = shared(config(&[("a.com", "web", 1)], false));
        // Added through the admin API: in no config.
        s.apply_sites(vec![change("b.com", "other", SiteState::Active, 1)])
            .expect("apply");
        let err = s.reload(config(&[("a.com", "web", 1)], true));
        assert!(
            matches!(err, Err(ProxyError::UnknownPlacement { ref host, .. }) if host.as_str() == "b.com"),
            "{err:?}"
        );
        // Nothing changed: the pool it points at is still there.
        assert!(s.check_placement(&Placement::Pool("other".into())));
        assert!(record(&s, "b.com").is_some());
    }

    #[test]
    fn a_site_that_left_the_config_is_removed_and_runtime_sites_stay() {
        let s = shared(config(
            &[("a.com", "web", 1), ("gone.com", "web", 1)],
            false,
        ));
        s.apply_sites(vec![change("b.com", "other", SiteState::Active, 1)])
            .expect("apply");
        let report = s
            .reload(config(&[("a.com", "web", 1), ("new.com", "web", 1)], false))
            .expect("reload");
        assert_eq!((report.sites_added, report.sites_removed), (1, 1));
        assert!(record(&s, "gone.com").is_none());
        assert!(record(&s, "new.com").is_some());
        assert!(record(&s, "b.com").is_some(), "runtime site left alone");
        // Persisted: a restart on the same store sees the same sites.
        let hosts: Vec<String> = s
            .store
            .sites()
            .expect("sites")
            .into_iter()
            .map(|r| r.host.as_str().to_string())
            .collect();
        assert!(hosts.contains(&"new.com".to_string()) && !hosts.contains(&"gone.com".to_string()));
    }

    /// A SQLite store that counts the site records written to it.
    struct Counting {
        inner: SqliteStore,
        written: std::sync::atomic::AtomicUsize,
    }

    impl Counting {
        fn written(&self) -> usize {
            self.written.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Store for Counting {
        fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
            self.inner.sites()
        }
        fn site(&self, host: &Hostname) -> Result<Option<SiteRecord>, StoreError> {
            self.inner.site(host)
        }
        fn put_sites(&self, records: &[SiteRecord]) -> Result<(), StoreError> {
            self.written
                .fetch_add(records.len(), std::sync::atomic::Ordering::SeqCst);
            self.inner.put_sites(records)
        }
        fn remove_sites(&self, hosts: &[Hostname]) -> Result<(), StoreError> {
            self.inner.remove_sites(hosts)
        }
        fn server_states(&self) -> Result<Vec<(String, String, ServerState)>, StoreError> {
            self.inner.server_states()
        }
        fn put_server_state(&self, p: &str, s: &str, st: ServerState) -> Result<(), StoreError> {
            self.inner.put_server_state(p, s, st)
        }
        fn joined_servers(&self) -> Result<Vec<JoinedServer>, StoreError> {
            self.inner.joined_servers()
        }
        fn put_joined_server(&self, server: &JoinedServer) -> Result<(), StoreError> {
            self.inner.put_joined_server(server)
        }
        fn remove_joined_server(&self, pool: &str, name: &str) -> Result<(), StoreError> {
            self.inner.remove_joined_server(pool, name)
        }
    }

    /// A store holding `n` sites `s{i}.example` (pool `web`, or `other` for
    /// odd i, epoch 3), its write counter at zero.
    fn filled(n: usize) -> Arc<Counting> {
        let inner = SqliteStore::in_memory().expect("store");
        let records: Vec<SiteRecord> = (0..n)
            .map(|i| {
                change(
                    &format!("s{i}.example"),
                    if i % 2 == 1 { "other" } else { "web" },
                    SiteState::Active,
                    3,
                )
                .record
            })
            .collect();
        inner.put_sites(&records).expect("fill");
        Arc::new(Counting {
            inner,
            written: Default::default(),
        })
    }

    #[test]
    fn a_start_from_a_filled_store_writes_nothing_back_and_routes_every_site() {
        let n = 200_000;
        let store = filled(n);
        let s = Shared::new(config(&[], false), None, store.clone()).expect("shared");
        assert_eq!(store.written(), 0, "site records written at start");
        assert_eq!(s.table.len(), n);
        for i in 0..n {
            let want = if i % 2 == 1 { "other" } else { "web" };
            let route = s
                .table
                .lookup(&format!("s{i}.example"))
                .unwrap_or_else(|| panic!("s{i}.example not routed"));
            assert_eq!(*route.placement, Placement::Pool(want.into()));
            assert_eq!(route.epoch, Epoch(3));
        }
    }

    #[test]
    fn at_start_only_the_config_sites_newer_than_the_store_are_written() {
        let store = filled(10);
        // s0: the store's epoch 3 wins over the config's 2 (nothing written);
        // s2: the config's epoch 4 wins (written); s3: the same epoch, the
        // store wins; new.example: only in the config (written).
        let c = config(
            &[
                ("s0.example", "other", 2),
                ("s2.example", "other", 4),
                ("s3.example", "web", 3),
                ("new.example", "web", 1),
            ],
            false,
        );
        let s = Shared::new(c, None, store.clone()).expect("shared");
        assert_eq!(store.written(), 2);
        assert_eq!(s.table.len(), 11);
        let placement = |h: &str| record(&s, h).expect("site").placement;
        assert_eq!(placement("s0.example"), Placement::Pool("web".into()));
        assert_eq!(placement("s2.example"), Placement::Pool("other".into()));
        assert_eq!(placement("s3.example"), Placement::Pool("other".into()));
        // The store now holds what the table holds.
        let mut held = store.sites().expect("sites");
        let mut routed = s.table.records();
        held.sort_by(|a, b| a.host.cmp(&b.host));
        routed.sort_by(|a, b| a.host.cmp(&b.host));
        assert_eq!(held, routed);
    }

    #[test]
    fn a_stored_site_whose_pool_left_the_config_fails_the_start() {
        let store = filled(2);
        // s1 points at `other`, which this config lacks.
        let err = Shared::new(
            config(&[("new.example", "web", 1)], true),
            None,
            store.clone(),
        );
        assert!(
            matches!(err, Err(ProxyError::UnknownPlacement { ref host, .. }) if host.as_str() == "s1.example"),
            "{:?}",
            err.err()
        );
        assert_eq!(store.written(), 0, "nothing written before the refusal");
        // A newer config record for it replaces it: then the start goes on.
        let c = config(&[("s1.example", "web", 4)], true);
        let s = Shared::new(c, None, store.clone()).expect("shared");
        assert_eq!(store.written(), 1);
        assert_eq!(
            record(&s, "s1.example").expect("s1").placement,
            Placement::Pool("web".into())
        );
    }

    #[test]
    fn without_a_store_admin_changes_apply_and_nothing_is_kept() {
        let store: Arc<dyn Store> = Arc::new(NoStore);
        let s = Shared::new(config(&[("a.com", "web", 1)], false), None, store).expect("shared");
        s.apply_sites(vec![change("b.com", "other", SiteState::Active, 1)])
            .expect("apply");
        // Stale changes are still refused: the table judges epochs, not the store.
        assert!(matches!(
            s.apply_sites(vec![change("a.com", "other", SiteState::Active, 0)]),
            Err(ApplyError::Stale(_))
        ));
        assert_eq!(record(&s, "b.com").expect("b").epoch, Epoch(1));
        assert!(s.store.sites().expect("sites").is_empty());
        // A restart (a new state on a new NoStore) starts from the config alone.
        let again = Shared::new(
            config(&[("a.com", "web", 1)], false),
            None,
            Arc::new(NoStore),
        )
        .expect("shared");
        assert!(record(&again, "b.com").is_none());
        assert!(record(&again, "a.com").is_some());
    }

    #[test]
    fn the_sites_file_seeds_the_table_and_only_what_is_newer_than_the_store_is_written() {
        let dir = tempfile::tempdir().expect("dir");
        let list = dir.path().join("sites.txt");
        // s0 is stored with epoch 3: the file's epoch 2 loses, its 5 wins.
        let with_list = |epoch_line: &str| {
            std::fs::write(
                &list,
                format!("s0.example pool:other active {epoch_line}\nf1.example pool:web\n"),
            )
            .expect("write");
            let mut c = config(&[], false);
            c.router.sites_file = Some(list.clone());
            c
        };
        let store = filled(4);
        let s = Shared::new(with_list("2"), None, store.clone()).expect("shared");
        assert_eq!(store.written(), 1, "only f1.example, which the store lacks");
        assert_eq!(s.table.len(), 5);
        assert_eq!(
            record(&s, "s0.example").expect("s0").placement,
            Placement::Pool("web".into())
        );
        let s = Shared::new(with_list("5"), None, store.clone()).expect("shared");
        // f1.example is stored now (unchanged: not written again); s0 is newer.
        assert_eq!(store.written(), 2);
        assert_eq!(
            record(&s, "s0.example").expect("s0").placement,
            Placement::Pool("other".into())
        );
        // A bad line refuses the start, naming the file and line.
        std::fs::write(&list, "ok.example pool:web\nbad.example pool:gone\n").expect("write");
        let mut c = config(&[], false);
        c.router.sites_file = Some(list.clone());
        let err = Shared::new(c, None, Arc::new(NoStore))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("sites.txt:2:13: "), "{err}");
    }

    #[test]
    fn a_host_twice_in_the_sites_file_refuses_the_start_even_where_the_store_wins() {
        let dir = tempfile::tempdir().expect("dir");
        let list = dir.path().join("sites.txt");
        let mut c = config(&[], false);
        c.router.sites_file = Some(list.clone());
        // s1 is stored with epoch 3: both of its lines lose to the store, and
        // are still a duplicate; x.example is new, twice.
        std::fs::write(
            &list,
            "s1.example pool:web active 1\nx.example pool:web\ns1.example pool:other active 2\n\nX.example. pool:web\n",
        )
        .expect("write");
        let store = filled(4);
        let err = Shared::new(c.clone(), None, store.clone())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("sites.txt:3:1: site s1.example is listed twice (first at line 1)"),
            "{err}"
        );
        assert!(
            err.contains("sites.txt:5:1: site x.example is listed twice (first at line 2)"),
            "{err}"
        );
        assert_eq!(store.written(), 0);
        // Without the repeats the same file starts, s1 kept from the store.
        std::fs::write(&list, "s1.example pool:web active 1\nx.example pool:web\n").expect("write");
        let s = Shared::new(c, None, store.clone()).expect("shared");
        assert_eq!(store.written(), 1);
        assert_eq!(s.table.len(), 5);
        assert_eq!(record(&s, "s1.example").expect("s1").epoch, Epoch(3));
    }
}
