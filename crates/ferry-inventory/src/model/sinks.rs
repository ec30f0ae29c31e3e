//! The adders of the four large tables (hostings, databases, sites, uses).
//! Each borrows disjoint parts of the [`InventoryBuilder`](super::InventoryBuilder)
//! (see `table_sinks` and `link_sinks`), so two files load on two threads.

use std::hash::BuildHasher;

use ferry_model::Hostname;
use hashbrown::DefaultHashBuilder;

use super::builder::{
    insert_unique, line32, lookup, no_at, nonempty, parse_address, Cursor, UserRef,
};
use super::{ObservedUse, User};
use crate::error::RowError;
use crate::ids::*;
use crate::names::{Names, Strings};

/// True when `name` is already a valid, normalised exact hostname (lowercase,
/// no trailing dot), the common case, which then needs no allocation. Anything
/// else goes through [`Hostname::parse`], which normalises or explains.
pub(super) fn is_plain_hostname(name: &str) -> bool {
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

pub(crate) struct HostingSink<'a> {
    pub(super) filers: &'a Names,
    pub(super) hostings: &'a mut Names,
    pub(super) filer: &'a mut Vec<FilerId>,
    pub(super) directory: &'a mut Strings,
    pub(super) files: &'a mut Vec<u64>,
    pub(super) bytes: &'a mut Vec<u64>,
    pub(super) lines: &'a mut Vec<u32>,
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
    pub(super) servers: &'a Names,
    pub(super) databases: &'a mut Names,
    pub(super) server: &'a mut Vec<DbServerId>,
    pub(super) bytes: &'a mut Vec<u64>,
    pub(super) lines: &'a mut Vec<u32>,
    pub(super) scratch: &'a mut String,
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
    pub(super) hostings: &'a Names,
    pub(super) ips: &'a Names,
    pub(super) sites: &'a mut Strings,
    pub(super) hosting: &'a mut Vec<HostingId>,
    pub(super) ip: &'a mut Vec<IpId>,
    pub(super) lines: &'a mut Vec<u32>,
    pub(super) hashes: &'a mut Vec<(u64, u32)>,
    pub(super) hasher: &'a DefaultHashBuilder,
    pub(super) last: &'a mut Cursor,
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
    pub(super) hostings: &'a Names,
    pub(super) databases: &'a Names,
    pub(super) clients: &'a mut Names,
    pub(super) declared: &'a mut Vec<(HostingId, DatabaseId)>,
    pub(super) observed: &'a mut Vec<ObservedUse>,
    pub(super) declared_keys: &'a mut Vec<(u64, u32)>,
    pub(super) observed_keys: &'a mut Vec<(u64, u32)>,
    pub(super) last_hosting: &'a mut Cursor,
    pub(super) last_database: &'a mut Cursor,
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
