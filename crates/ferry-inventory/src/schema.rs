//! The inventory's files: one per entity, CSV (with a header) or JSON Lines,
//! and the columns each takes. The README documents the same table.

/// One column of an entity file.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub required: bool,
}

const fn req(name: &'static str) -> Column {
    Column {
        name,
        required: true,
    }
}

const fn opt(name: &'static str) -> Column {
    Column {
        name,
        required: false,
    }
}

/// The entities, in the order they must be loaded (references point backwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Datacenters,
    Clusters,
    Ips,
    Filers,
    DbServers,
    Databases,
    Hostings,
    Sites,
    DeclaredUses,
    ObservedUses,
}

/// Most columns any entity has.
pub(crate) const MAX_COLUMNS: usize = 5;

impl Entity {
    pub const ALL: [Entity; 10] = [
        Entity::Datacenters,
        Entity::Clusters,
        Entity::Ips,
        Entity::Filers,
        Entity::DbServers,
        Entity::Databases,
        Entity::Hostings,
        Entity::Sites,
        Entity::DeclaredUses,
        Entity::ObservedUses,
    ];

    /// File name without extension.
    pub fn stem(self) -> &'static str {
        match self {
            Entity::Datacenters => "datacenters",
            Entity::Clusters => "clusters",
            Entity::Ips => "ips",
            Entity::Filers => "filers",
            Entity::DbServers => "db_servers",
            Entity::Databases => "databases",
            Entity::Hostings => "hostings",
            Entity::Sites => "sites",
            Entity::DeclaredUses => "declared_uses",
            Entity::ObservedUses => "observed_uses",
        }
    }

    pub fn columns(self) -> &'static [Column] {
        // Constants, because calls to `req` in a returned array literal are not
        // promoted to 'static.
        const NAME: &[Column] = &[req("name")];
        const NAME_DC: &[Column] = &[req("name"), req("datacenter")];
        const IPS: &[Column] = &[req("address"), req("cluster")];
        const NAME_CLUSTER: &[Column] = &[req("name"), req("cluster")];
        const DATABASES: &[Column] = &[req("name"), req("server"), req("bytes")];
        const HOSTINGS: &[Column] = &[
            req("name"),
            req("filer"),
            opt("directory"),
            req("files"),
            req("bytes"),
        ];
        const SITES: &[Column] = &[req("hostname"), req("hosting"), req("ip")];
        const DECLARED: &[Column] = &[req("hosting"), req("database")];
        const OBSERVED: &[Column] = &[req("database"), opt("hosting"), opt("client")];
        match self {
            Entity::Datacenters => NAME,
            Entity::Clusters => NAME_DC,
            Entity::Ips => IPS,
            Entity::Filers | Entity::DbServers => NAME_CLUSTER,
            Entity::Databases => DATABASES,
            Entity::Hostings => HOSTINGS,
            Entity::Sites => SITES,
            Entity::DeclaredUses => DECLARED,
            Entity::ObservedUses => OBSERVED,
        }
    }

    /// "name, cluster" for messages.
    pub(crate) fn column_list(self) -> String {
        self.columns()
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// File format of one entity file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}
