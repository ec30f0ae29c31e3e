//! [`InventoryBuilder`]: rows in dependency order, each checked against what
//! came before (references exist, names are new); the checks that need every
//! row (duplicates of the largest tables) run at `finish`.

use std::net::IpAddr;

use hashbrown::DefaultHashBuilder;

use super::sinks::{DatabaseSink, HostingSink, SiteSink, UseSink};
use super::Inventory;
use crate::error::RowError;
use crate::ids::*;
use crate::names::Names;
use crate::schema::Entity;

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
pub(super) struct Cursor {
    last: Option<u32>,
}

impl Cursor {
    pub(super) fn lookup(
        &mut self,
        names: &Names,
        kind: &'static str,
        name: &str,
    ) -> Result<u32, RowError> {
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

pub(super) fn nonempty(field: &'static str, value: &str) -> Result<(), RowError> {
    if value.is_empty() {
        Err(RowError::Empty { field })
    } else {
        Ok(())
    }
}

pub(super) fn no_at(field: &'static str, value: &str) -> Result<(), RowError> {
    if value.contains('@') {
        Err(RowError::AtInName {
            field,
            value: value.to_string(),
        })
    } else {
        Ok(())
    }
}

pub(super) fn lookup(names: &Names, kind: &'static str, name: &str) -> Result<u32, RowError> {
    names.find(name).ok_or_else(|| RowError::UnknownReference {
        kind,
        name: name.to_string(),
    })
}

pub(super) fn line32(line: u64) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX)
}

/// Inserts a new unique name or reports the duplicate with its first line.
pub(super) fn insert_unique(
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
pub(super) fn parse_address(field: &'static str, value: &str) -> Result<String, RowError> {
    value
        .parse::<IpAddr>()
        .map(|a| a.to_string())
        .map_err(|_| RowError::BadAddress {
            field,
            value: value.to_string(),
        })
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

#[cfg(test)]
mod tests {
    use super::super::sinks::is_plain_hostname;
    use super::*;
    use ferry_model::Hostname;

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
