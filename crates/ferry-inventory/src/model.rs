//! The loaded inventory ([`Inventory`]) and the only way to build one
//! ([`InventoryBuilder`]), which checks every reference as rows arrive.

use std::net::IpAddr;

use ferry_model::Hostname;
use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;

use crate::error::RowError;
use crate::ids::*;
use crate::names::{Names, Strings};
use crate::schema::Entity;

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

/// Which user an observed use names, before lookup.
#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    Hosting(&'a str),
    Client(&'a str),
}

/// Builds an [`Inventory`] row by row. Every method checks the row against what
/// was added before (references must exist, names must be new), so rows must be
/// added in dependency order: datacenters, clusters, IPs / filers / database
/// servers, databases, hostings, sites, declared uses, observed uses.
///
/// `line` is only used in error messages ("first at line N"); code that builds an
/// inventory by hand can pass 0.
#[derive(Debug, Default)]
pub struct InventoryBuilder {
    inv: Inventory,
    lines: Lines,
    site_last_hosting: Cursor,
    use_last_hosting: Cursor,
    use_last_database: Cursor,
    // Duplicates of the largest tables are found by sorting at `finish`
    // (sequential memory) rather than by hashing every row as it arrives.
    site_hashes: Vec<(u64, u32)>,
    declared_keys: Vec<(u64, u32)>,
    observed_keys: Vec<(u64, u32)>,
    hasher: DefaultHashBuilder,
    scratch: String,
}

/// A problem found by [`InventoryBuilder::finish`], once every row is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateProblem {
    pub entity: Entity,
    pub line: u64,
    pub error: RowError,
}

/// First line of every entity, for duplicate messages; dropped by `finish`.
#[derive(Debug, Default)]
struct Lines {
    dc: Vec<u32>,
    cluster: Vec<u32>,
    ip: Vec<u32>,
    filer: Vec<u32>,
    db_server: Vec<u32>,
    database: Vec<u32>,
    hosting: Vec<u32>,
    site: Vec<u32>,
}

/// Exports list rows in the order of the tables they refer to (a hosting's
/// sites together, hostings in the order of the hostings file; a database's uses
/// right after it). A lookup first tries the id found last time and the one
/// after it, which costs a string compare in memory already being read, and
/// only then the hash table (two cache misses at millions of rows).
#[derive(Debug, Default)]
struct Cursor {
    last: Option<u32>,
}

impl Cursor {
    fn lookup(&mut self, names: &Names, kind: &'static str, name: &str) -> Result<u32, RowError> {
        if let Some(last) = self.last {
            for id in [last, last + 1] {
                if (id as usize) < names.len() && names.get(id) == name {
                    self.last = Some(id);
                    return Ok(id);
                }
            }
        }
        let id = lookup(names, kind, name)?;
        self.last = Some(id);
        Ok(id)
    }
}

fn nonempty(field: &'static str, value: &str) -> Result<(), RowError> {
    if value.is_empty() {
        Err(RowError::Empty { field })
    } else {
        Ok(())
    }
}

fn no_at(field: &'static str, value: &str) -> Result<(), RowError> {
    if value.contains('@') {
        Err(RowError::AtInName {
            field,
            value: value.to_string(),
        })
    } else {
        Ok(())
    }
}

fn lookup(names: &Names, kind: &'static str, name: &str) -> Result<u32, RowError> {
    names.find(name).ok_or_else(|| RowError::UnknownReference {
        kind,
        name: name.to_string(),
    })
}

fn line32(line: u64) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

/// Inserts a new unique name or reports the duplicate with its first line.
fn insert_unique(
    names: &mut Names,
    lines: &mut Vec<u32>,
    kind: &'static str,
    name: &str,
    line: u64,
) -> Result<u32, RowError> {
    match names.insert(name) {
        Ok(id) => {
            lines.push(line32(line));
            Ok(id)
        }
        Err(first) => Err(RowError::Duplicate {
            kind,
            name: name.to_string(),
            first_line: u64::from(lines[first as usize]),
        }),
    }
}

/// Canonical text of an IP address (so `2001:DB8::1` and `2001:db8::1` match).
fn parse_address(field: &'static str, value: &str) -> Result<String, RowError> {
    value
        .parse::<IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| RowError::BadAddress {
            field,
            value: value.to_string(),
        })
}

/// True when `name` is already a valid, normalised exact hostname (lowercase,
/// no trailing dot), the common case, which then needs no allocation. Anything
/// else goes through [`Hostname::parse`], which normalises or explains.
fn is_plain_hostname(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > ferry_model::MAX_HOSTNAME_LEN {
        return false;
    }
    let mut label = 0usize;
    for &c in b {
        match c {
            b'.' => {
                if label == 0 {
                    return false;
                }
                label = 0;
            }
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {
                label += 1;
                if label > 63 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    label > 0
}

impl InventoryBuilder {
    pub fn new() -> InventoryBuilder {
        InventoryBuilder::default()
    }

    /// Pre-sizes tables for about this many rows (estimates are fine).
    pub fn reserve(&mut self, hostings: usize, databases: usize, sites: usize, uses: usize) {
        let inv = &mut self.inv;
        inv.hostings.reserve_names(hostings, 12);
        inv.hosting_filer.reserve(hostings);
        inv.hosting_files.reserve(hostings);
        inv.hosting_bytes.reserve(hostings);
        self.lines.hosting.reserve(hostings);
        inv.databases.reserve_names(databases, 24);
        inv.database_server.reserve(databases);
        inv.database_bytes.reserve(databases);
        self.lines.database.reserve(databases);
        inv.sites.reserve(sites, 20);
        self.site_hashes.reserve(sites);
        inv.site_hosting.reserve(sites);
        inv.site_ip.reserve(sites);
        self.lines.site.reserve(sites);
        inv.declared.reserve(uses);
        self.declared_keys.reserve(uses);
    }

    pub fn add_datacenter(&mut self, name: &str, line: u64) -> Result<DatacenterId, RowError> {
        nonempty("name", name)?;
        insert_unique(
            &mut self.inv.datacenters,
            &mut self.lines.dc,
            "datacenter",
            name,
            line,
        )
        .map(DatacenterId)
    }

    pub fn add_cluster(
        &mut self,
        name: &str,
        datacenter: &str,
        line: u64,
    ) -> Result<ClusterId, RowError> {
        nonempty("name", name)?;
        nonempty("datacenter", datacenter)?;
        let dc = lookup(&self.inv.datacenters, "datacenter", datacenter)?;
        let id = insert_unique(
            &mut self.inv.clusters,
            &mut self.lines.cluster,
            "cluster",
            name,
            line,
        )?;
        self.inv.cluster_dc.push(DatacenterId(dc));
        Ok(ClusterId(id))
    }

    pub fn add_ip(&mut self, address: &str, cluster: &str, line: u64) -> Result<IpId, RowError> {
        nonempty("address", address)?;
        nonempty("cluster", cluster)?;
        let address = parse_address("address", address)?;
        let c = lookup(&self.inv.clusters, "cluster", cluster)?;
        let id = insert_unique(&mut self.inv.ips, &mut self.lines.ip, "IP", &address, line)?;
        self.inv.ip_cluster.push(ClusterId(c));
        Ok(IpId(id))
    }

    pub fn add_filer(&mut self, name: &str, cluster: &str, line: u64) -> Result<FilerId, RowError> {
        nonempty("name", name)?;
        nonempty("cluster", cluster)?;
        let c = lookup(&self.inv.clusters, "cluster", cluster)?;
        let id = insert_unique(
            &mut self.inv.filers,
            &mut self.lines.filer,
            "filer",
            name,
            line,
        )?;
        self.inv.filer_cluster.push(ClusterId(c));
        Ok(FilerId(id))
    }

    pub fn add_db_server(
        &mut self,
        name: &str,
        cluster: &str,
        line: u64,
    ) -> Result<DbServerId, RowError> {
        nonempty("name", name)?;
        nonempty("cluster", cluster)?;
        no_at("name", name)?;
        let c = lookup(&self.inv.clusters, "cluster", cluster)?;
        let id = insert_unique(
            &mut self.inv.db_servers,
            &mut self.lines.db_server,
            "database server",
            name,
            line,
        )?;
        self.inv.db_server_cluster.push(ClusterId(c));
        Ok(DbServerId(id))
    }

    pub fn add_database(
        &mut self,
        name: &str,
        server: &str,
        bytes: u64,
        line: u64,
    ) -> Result<DatabaseId, RowError> {
        self.table_sinks().1.add_database(name, server, bytes, line)
    }

    pub fn add_hosting(
        &mut self,
        name: &str,
        filer: &str,
        directory: &str,
        files: u64,
        bytes: u64,
        line: u64,
    ) -> Result<HostingId, RowError> {
        self.table_sinks()
            .0
            .add_hosting(name, filer, directory, files, bytes, line)
    }

    pub fn add_site(
        &mut self,
        hostname: &str,
        hosting: &str,
        ip: &str,
        line: u64,
    ) -> Result<SiteId, RowError> {
        self.link_sinks().0.add_site(hostname, hosting, ip, line)
    }

    pub fn add_declared_use(
        &mut self,
        hosting: &str,
        database: &str,
        line: u64,
    ) -> Result<(), RowError> {
        self.link_sinks()
            .1
            .add_declared_use(hosting, database, line)
    }

    pub fn add_observed_use(
        &mut self,
        database: &str,
        user: UserRef<'_>,
        line: u64,
    ) -> Result<(), RowError> {
        self.link_sinks().1.add_observed_use(database, user, line)
    }

    /// Adders for hostings and databases that borrow disjoint parts of the
    /// builder, so the two files can load on two threads.
    pub(crate) fn table_sinks(&mut self) -> (HostingSink<'_>, DatabaseSink<'_>) {
        let inv = &mut self.inv;
        (
            HostingSink {
                filers: &inv.filers,
                hostings: &mut inv.hostings,
                filer: &mut inv.hosting_filer,
                directory: &mut inv.hosting_directory,
                files: &mut inv.hosting_files,
                bytes: &mut inv.hosting_bytes,
                lines: &mut self.lines.hosting,
            },
            DatabaseSink {
                servers: &inv.db_servers,
                databases: &mut inv.databases,
                server: &mut inv.database_server,
                bytes: &mut inv.database_bytes,
                lines: &mut self.lines.database,
                scratch: &mut self.scratch,
            },
        )
    }

    /// Adders for sites and for uses, on disjoint parts of the builder (two
    /// threads), both reading the hostings.
    pub(crate) fn link_sinks(&mut self) -> (SiteSink<'_>, UseSink<'_>) {
        let inv = &mut self.inv;
        (
            SiteSink {
                hostings: &inv.hostings,
                ips: &inv.ips,
                sites: &mut inv.sites,
                hosting: &mut inv.site_hosting,
                ip: &mut inv.site_ip,
                lines: &mut self.lines.site,
                hashes: &mut self.site_hashes,
                hasher: &self.hasher,
                last: &mut self.site_last_hosting,
            },
            UseSink {
                hostings: &inv.hostings,
                databases: &inv.databases,
                clients: &mut inv.clients,
                declared: &mut inv.declared,
                observed: &mut inv.observed,
                declared_keys: &mut self.declared_keys,
                observed_keys: &mut self.observed_keys,
                last_hosting: &mut self.use_last_hosting,
                last_database: &mut self.use_last_database,
            },
        )
    }

    /// The inventory, once the checks that need every row pass (duplicate
    /// sites, a site on two hostings, duplicate uses); the builder's
    /// bookkeeping is dropped.
    pub fn finish(mut self) -> Result<Inventory, Vec<LateProblem>> {
        let mut problems = Vec::new();
        self.site_duplicates(&mut problems);
        let declared = std::mem::take(&mut self.declared_keys);
        let inv = &self.inv;
        use_duplicates(declared, Entity::DeclaredUses, &mut problems, |k| {
            let (h, d) = ((k >> 32) as u32, k as u32);
            format!("{} -> {}", inv.hostings.get(h), inv.databases.get(d))
        });
        let observed = std::mem::take(&mut self.observed_keys);
        use_duplicates(observed, Entity::ObservedUses, &mut problems, |k| {
            let d = (k >> 32) as u32;
            let id = (k as u32) & 0x7fff_ffff;
            let user = if k & 0x8000_0000 != 0 {
                inv.clients.get(id)
            } else {
                inv.hostings.get(id)
            };
            format!("{user} -> {}", inv.databases.get(d))
        });
        if !problems.is_empty() {
            problems.sort_by_key(|p| (p.entity as u8, p.line));
            return Err(problems);
        }
        let mut inv = self.inv;
        inv.sites.shrink_to_fit();
        inv.hostings.shrink_to_fit();
        inv.databases.shrink_to_fit();
        Ok(inv)
    }

    fn site_duplicates(&mut self, problems: &mut Vec<LateProblem>) {
        let mut hashes = std::mem::take(&mut self.site_hashes);
        hashes.sort_unstable();
        let inv = &self.inv;
        let mut i = 0;
        while i < hashes.len() {
            let mut j = i + 1;
            while j < hashes.len() && hashes[j].0 == hashes[i].0 {
                j += 1;
            }
            // Equal hashes: compare names; ids ascend, so the first is the original.
            for later in i + 1..j {
                let b = hashes[later].1;
                let Some(&(_, a)) = hashes[i..later]
                    .iter()
                    .find(|(_, a)| inv.sites.get(*a) == inv.sites.get(b))
                else {
                    continue;
                };
                let (ha, hb) = (inv.site_hosting[a as usize], inv.site_hosting[b as usize]);
                let first_line = u64::from(self.lines.site[a as usize]);
                let host = inv.sites.get(b).to_string();
                let error = if ha == hb {
                    RowError::Duplicate {
                        kind: "site",
                        name: host,
                        first_line,
                    }
                } else {
                    RowError::SiteOnTwoHostings {
                        host,
                        hosting: inv.hostings.get(hb.0).to_string(),
                        first_hosting: inv.hostings.get(ha.0).to_string(),
                        first_line,
                    }
                };
                problems.push(LateProblem {
                    entity: Entity::Sites,
                    line: u64::from(self.lines.site[b as usize]),
                    error,
                });
            }
            i = j;
        }
    }
}

/// Reports repeated `(key, line)` pairs: every later line of a key is a duplicate.
fn use_duplicates(
    mut keys: Vec<(u64, u32)>,
    entity: Entity,
    problems: &mut Vec<LateProblem>,
    name: impl Fn(u64) -> String,
) {
    keys.sort_unstable();
    let kind = match entity {
        Entity::DeclaredUses => "declared use",
        _ => "observed use",
    };
    let mut i = 0;
    while i < keys.len() {
        let mut j = i + 1;
        // Sorted by (key, line): keys[i] holds the first line of the run.
        while j < keys.len() && keys[j].0 == keys[i].0 {
            problems.push(LateProblem {
                entity,
                line: u64::from(keys[j].1),
                error: RowError::Duplicate {
                    kind,
                    name: name(keys[j].0),
                    first_line: u64::from(keys[i].1),
                },
            });
            j += 1;
        }
        i = j;
    }
}

pub(crate) struct HostingSink<'a> {
    filers: &'a Names,
    hostings: &'a mut Names,
    filer: &'a mut Vec<FilerId>,
    directory: &'a mut Strings,
    files: &'a mut Vec<u64>,
    bytes: &'a mut Vec<u64>,
    lines: &'a mut Vec<u32>,
}

impl HostingSink<'_> {
    pub(crate) fn add_hosting(
        &mut self,
        name: &str,
        filer: &str,
        directory: &str,
        files: u64,
        bytes: u64,
        line: u64,
    ) -> Result<HostingId, RowError> {
        nonempty("name", name)?;
        nonempty("filer", filer)?;
        let f = lookup(self.filers, "filer", filer)?;
        let id = insert_unique(self.hostings, self.lines, "hosting", name, line)?;
        self.filer.push(FilerId(f));
        self.directory.push(directory);
        self.files.push(files);
        self.bytes.push(bytes);
        Ok(HostingId(id))
    }
}

pub(crate) struct DatabaseSink<'a> {
    servers: &'a Names,
    databases: &'a mut Names,
    server: &'a mut Vec<DbServerId>,
    bytes: &'a mut Vec<u64>,
    lines: &'a mut Vec<u32>,
    scratch: &'a mut String,
}

impl DatabaseSink<'_> {
    pub(crate) fn add_database(
        &mut self,
        name: &str,
        server: &str,
        bytes: u64,
        line: u64,
    ) -> Result<DatabaseId, RowError> {
        nonempty("name", name)?;
        nonempty("server", server)?;
        no_at("name", name)?;
        let s = lookup(self.servers, "database server", server)?;
        self.scratch.clear();
        self.scratch.push_str(name);
        self.scratch.push('@');
        self.scratch.push_str(server);
        let id = insert_unique(self.databases, self.lines, "database", self.scratch, line)?;
        self.server.push(DbServerId(s));
        self.bytes.push(bytes);
        Ok(DatabaseId(id))
    }
}

pub(crate) struct SiteSink<'a> {
    hostings: &'a Names,
    ips: &'a Names,
    sites: &'a mut Strings,
    hosting: &'a mut Vec<HostingId>,
    ip: &'a mut Vec<IpId>,
    lines: &'a mut Vec<u32>,
    hashes: &'a mut Vec<(u64, u32)>,
    hasher: &'a DefaultHashBuilder,
    last: &'a mut Cursor,
}

impl SiteSink<'_> {
    /// Adds a site. Duplicates (and a site on two hostings) are reported by
    /// [`InventoryBuilder::finish`].
    pub(crate) fn add_site(
        &mut self,
        hostname: &str,
        hosting: &str,
        ip: &str,
        line: u64,
    ) -> Result<SiteId, RowError> {
        nonempty("hostname", hostname)?;
        nonempty("hosting", hosting)?;
        nonempty("ip", ip)?;
        let parsed;
        let host = if is_plain_hostname(hostname) {
            hostname
        } else {
            parsed = Hostname::parse(hostname).map_err(|e| RowError::BadHostname {
                value: hostname.to_string(),
                reason: e.to_string(),
            })?;
            parsed.as_str()
        };
        let h = self.last.lookup(self.hostings, "hosting", hosting)?;
        // Most exports write addresses canonically; only re-format when needed.
        let ip_id = match self.ips.find(ip) {
            Some(id) => id,
            None => lookup(self.ips, "IP", &parse_address("ip", ip)?)?,
        };
        let id = self.sites.push(host);
        self.hashes.push((self.hasher.hash_one(host), id));
        self.lines.push(line32(line));
        self.hosting.push(HostingId(h));
        self.ip.push(IpId(ip_id));
        Ok(SiteId(id))
    }
}

pub(crate) struct UseSink<'a> {
    hostings: &'a Names,
    databases: &'a Names,
    clients: &'a mut Names,
    declared: &'a mut Vec<(HostingId, DatabaseId)>,
    observed: &'a mut Vec<ObservedUse>,
    declared_keys: &'a mut Vec<(u64, u32)>,
    observed_keys: &'a mut Vec<(u64, u32)>,
    last_hosting: &'a mut Cursor,
    last_database: &'a mut Cursor,
}

impl UseSink<'_> {
    fn database_ref(&mut self, database: &str) -> Result<DatabaseId, RowError> {
        nonempty("database", database)?;
        if !database.contains('@') {
            return Err(RowError::BadDatabaseRef {
                value: database.to_string(),
            });
        }
        self.last_database
            .lookup(self.databases, "database", database)
            .map(DatabaseId)
    }

    /// Adds a declared use; a repeated one is reported by
    /// [`InventoryBuilder::finish`].
    pub(crate) fn add_declared_use(
        &mut self,
        hosting: &str,
        database: &str,
        line: u64,
    ) -> Result<(), RowError> {
        nonempty("hosting", hosting)?;
        let h = self
            .last_hosting
            .lookup(self.hostings, "hosting", hosting)?;
        let d = self.database_ref(database)?;
        self.declared_keys
            .push(((u64::from(h) << 32) | u64::from(d.0), line32(line)));
        self.declared.push((HostingId(h), d));
        Ok(())
    }

    /// Adds an observed use; a repeated one is reported by
    /// [`InventoryBuilder::finish`].
    pub(crate) fn add_observed_use(
        &mut self,
        database: &str,
        user: UserRef<'_>,
        line: u64,
    ) -> Result<(), RowError> {
        let d = self.database_ref(database)?;
        let (user, low) = match user {
            UserRef::Hosting(h) => {
                nonempty("hosting", h)?;
                let id = self.last_hosting.lookup(self.hostings, "hosting", h)?;
                (User::Hosting(HostingId(id)), id)
            }
            UserRef::Client(c) => {
                nonempty("client", c)?;
                let addr = parse_address("client", c)?;
                let id = self.clients.intern(&addr);
                (User::Client(ClientId(id)), id | 0x8000_0000)
            }
        };
        self.observed_keys
            .push(((u64::from(d.0) << 32) | u64::from(low), line32(line)));
        self.observed.push(ObservedUse { database: d, user });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_hostnames_match_the_router_rules() {
        for name in ["www.example.com", "a", "x-y_z.example", "1.2.3.4"] {
            assert!(is_plain_hostname(name), "{name}");
            assert_eq!(Hostname::parse(name).unwrap().as_str(), name);
        }
        // Not plain: either invalid, or valid but not normalised (slow path).
        for name in [
            "",
            "WWW.example.com",
            "example.com.",
            "a..b",
            ".a",
            "*.a.com",
            "a b",
        ] {
            assert!(!is_plain_hostname(name), "{name}");
        }
        let long = "a".repeat(64);
        assert!(!is_plain_hostname(&long));
        assert!(Hostname::parse(&long).is_err());
    }

    #[test]
    fn a_site_on_two_hostings_is_refused_with_both_lines() {
        let mut b = InventoryBuilder::new();
        b.add_datacenter("par", 2).unwrap();
        b.add_cluster("c1", "par", 2).unwrap();
        b.add_ip("192.0.2.1", "c1", 2).unwrap();
        b.add_filer("fs1", "c1", 2).unwrap();
        b.add_hosting("h1", "fs1", "/h1", 1, 1, 2).unwrap();
        b.add_hosting("h2", "fs1", "/h2", 1, 1, 3).unwrap();
        b.add_site("WWW.A.com.", "h1", "192.0.2.1", 7).unwrap();
        b.add_site("www.b.com", "h1", "192.0.2.1", 8).unwrap();
        b.add_site("www.a.com", "h2", "192.0.2.1", 9).unwrap();
        b.add_site("www.a.com", "h1", "192.0.2.1", 10).unwrap();
        let problems = b.finish().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(matches!(
            &problems[0],
            LateProblem {
                line: 9,
                error: RowError::SiteOnTwoHostings { first_line: 7, .. },
                ..
            }
        ));
        assert!(matches!(
            &problems[1],
            LateProblem {
                line: 10,
                error: RowError::Duplicate { first_line: 7, .. },
                ..
            }
        ));
    }

    #[test]
    fn sites_are_normalised_and_found() {
        let mut b = InventoryBuilder::new();
        b.add_datacenter("par", 1).unwrap();
        b.add_cluster("c1", "par", 1).unwrap();
        b.add_ip("192.0.2.1", "c1", 1).unwrap();
        b.add_filer("fs1", "c1", 1).unwrap();
        b.add_hosting("h1", "fs1", "/h1", 1, 1, 1).unwrap();
        b.add_site("WWW.A.com.", "h1", "192.0.2.1", 1).unwrap();
        let inv = b.finish().unwrap();
        assert_eq!(inv.site_name(SiteId(0)), "www.a.com");
        assert_eq!(inv.find_site("WWW.a.com"), Some(SiteId(0)));
        assert_eq!(inv.find_site("www.z.com"), None);
    }
}
