//! The loaded inventory ([`Inventory`]) and the only way to build one
//! ([`InventoryBuilder`], `builder.rs`), which checks every reference as rows
//! arrive; `sinks.rs` holds the adders of the four large tables, each borrowing
//! its own part of the builder so two files can load on two threads.

mod builder;
mod sinks;

pub use builder::{InventoryBuilder, LateProblem, UserRef};
pub(crate) use sinks::{DatabaseSink, HostingSink, SiteSink, UseSink};

use ferry_model::Hostname;

use crate::ids::*;
use crate::names::{Names, Strings};

/// Who a database tunnel saw using a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum User {
    /// A hosting of the inventory: a real dependency the planner can honour.
    Hosting(HostingId),
    /// Any other client address: it keeps using the database through the tunnel,
    /// wherever the database goes, so it ties nothing together.
    Client(ClientId),
}

/// One use of a database recorded by the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedUse {
    pub database: DatabaseId,
    pub user: User,
}

/// One inventory file as read: enough to tell later whether a plan was made from
/// the same data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// File name inside the inventory directory (`sites.csv`).
    pub name: String,
    /// Data rows (header, blank and comment lines not counted).
    pub rows: u64,
    pub bytes: u64,
    /// A 64-bit digest of the content ([`crate::digest`]), as 16 hex digits.
    pub digest: String,
}

/// Row counts per entity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub datacenters: usize,
    pub clusters: usize,
    pub ips: usize,
    pub filers: usize,
    pub db_servers: usize,
    pub databases: usize,
    pub hostings: usize,
    pub sites: usize,
    pub declared_uses: usize,
    pub observed_uses: usize,
}

/// A whole inventory, held compactly: names interned per kind, references as
/// `u32` ids, one column vector per attribute.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    datacenters: Names,
    clusters: Names,
    cluster_dc: Vec<DatacenterId>,
    ips: Names,
    ip_cluster: Vec<ClusterId>,
    filers: Names,
    filer_cluster: Vec<ClusterId>,
    db_servers: Names,
    db_server_cluster: Vec<ClusterId>,
    databases: Names,
    database_server: Vec<DbServerId>,
    database_bytes: Vec<u64>,
    hostings: Names,
    hosting_filer: Vec<FilerId>,
    hosting_directory: Strings,
    hosting_files: Vec<u64>,
    hosting_bytes: Vec<u64>,
    sites: Strings,
    site_hosting: Vec<HostingId>,
    site_ip: Vec<IpId>,
    declared: Vec<(HostingId, DatabaseId)>,
    observed: Vec<ObservedUse>,
    clients: Names,
    files: Vec<FileInfo>,
}

impl Inventory {
    pub fn counts(&self) -> Counts {
        Counts {
            datacenters: self.datacenters.len(),
            clusters: self.clusters.len(),
            ips: self.ips.len(),
            filers: self.filers.len(),
            db_servers: self.db_servers.len(),
            databases: self.databases.len(),
            hostings: self.hostings.len(),
            sites: self.sites.len(),
            declared_uses: self.declared.len(),
            observed_uses: self.observed.len(),
        }
    }

    pub fn datacenter_name(&self, id: DatacenterId) -> &str {
        self.datacenters.get(id.0)
    }
    pub fn cluster_name(&self, id: ClusterId) -> &str {
        self.clusters.get(id.0)
    }
    pub fn cluster_datacenter(&self, id: ClusterId) -> DatacenterId {
        self.cluster_dc[id.index()]
    }
    pub fn ip_address(&self, id: IpId) -> &str {
        self.ips.get(id.0)
    }
    pub fn ip_cluster(&self, id: IpId) -> ClusterId {
        self.ip_cluster[id.index()]
    }
    pub fn filer_name(&self, id: FilerId) -> &str {
        self.filers.get(id.0)
    }
    /// The cluster of each filer, indexed by [`FilerId`].
    pub fn filer_clusters(&self) -> &[ClusterId] {
        &self.filer_cluster
    }
    pub fn db_server_name(&self, id: DbServerId) -> &str {
        self.db_servers.get(id.0)
    }
    pub fn db_server_cluster(&self, id: DbServerId) -> ClusterId {
        self.db_server_cluster[id.index()]
    }
    /// `name@server`.
    pub fn database_name(&self, id: DatabaseId) -> &str {
        self.databases.get(id.0)
    }
    pub fn database_servers(&self) -> &[DbServerId] {
        &self.database_server
    }
    pub fn database_bytes(&self) -> &[u64] {
        &self.database_bytes
    }
    pub fn hosting_name(&self, id: HostingId) -> &str {
        self.hostings.get(id.0)
    }
    pub fn hosting_filers(&self) -> &[FilerId] {
        &self.hosting_filer
    }
    pub fn hosting_directory(&self, id: HostingId) -> &str {
        self.hosting_directory.get(id.0)
    }
    pub fn hosting_files(&self) -> &[u64] {
        &self.hosting_files
    }
    pub fn hosting_bytes(&self) -> &[u64] {
        &self.hosting_bytes
    }
    pub fn site_name(&self, id: SiteId) -> &str {
        self.sites.get(id.0)
    }
    pub fn site_hostings(&self) -> &[HostingId] {
        &self.site_hosting
    }
    pub fn site_ips(&self) -> &[IpId] {
        &self.site_ip
    }
    /// Declared uses: (hosting, database) pairs, each once.
    pub fn declared_uses(&self) -> &[(HostingId, DatabaseId)] {
        &self.declared
    }
    /// Uses the database tunnel recorded, each once.
    pub fn observed_uses(&self) -> &[ObservedUse] {
        &self.observed
    }
    pub fn client_address(&self, id: ClientId) -> &str {
        self.clients.get(id.0)
    }
    /// The files the inventory was read from (empty when built in code).
    pub fn files(&self) -> &[FileInfo] {
        &self.files
    }
    pub(crate) fn set_files(&mut self, files: Vec<FileInfo>) {
        self.files = files;
    }

    pub fn find_filer(&self, name: &str) -> Option<FilerId> {
        self.filers.find(name).map(FilerId)
    }
    pub fn find_hosting(&self, name: &str) -> Option<HostingId> {
        self.hostings.find(name).map(HostingId)
    }
    pub fn find_database(&self, name: &str) -> Option<DatabaseId> {
        self.databases.find(name).map(DatabaseId)
    }
    /// Looks a site up by hostname (normalised like the router does). A linear
    /// scan: sites carry no index (the loader finds duplicates by sorting), and
    /// this serves one-off queries such as `ferry plan --dot www.example.com`.
    pub fn find_site(&self, name: &str) -> Option<SiteId> {
        let h = Hostname::parse(name).ok()?;
        self.sites
            .iter()
            .position(|s| s == h.as_str())
            .map(|i| SiteId(i as u32))
    }

    /// Approximate heap bytes held, for memory reports.
    pub fn heap_bytes(&self) -> usize {
        let names = [
            &self.datacenters,
            &self.clusters,
            &self.ips,
            &self.filers,
            &self.db_servers,
            &self.databases,
            &self.hostings,
            &self.clients,
        ];
        names.iter().map(|n| n.heap_bytes()).sum::<usize>()
            + self.sites.heap_bytes()
            + self.hosting_directory.heap_bytes()
            + 4 * (self.cluster_dc.capacity()
                + self.ip_cluster.capacity()
                + self.filer_cluster.capacity()
                + self.db_server_cluster.capacity()
                + self.database_server.capacity()
                + self.hosting_filer.capacity()
                + self.site_hosting.capacity()
                + self.site_ip.capacity())
            + 8 * (self.database_bytes.capacity()
                + self.hosting_files.capacity()
                + self.hosting_bytes.capacity()
                + self.declared.capacity())
            + 12 * self.observed.capacity()
    }
}
