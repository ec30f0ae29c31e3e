//! Ferry's control store: where a router's site placements, states and epochs
//! persist, so a restarted router resumes from its last state. (The runbooks'
//! journals are ferry-journal files, not kept here.)
//!
//! - [`Store`]: the trait every backend implements. It persists what it is given
//!   and does not judge epochs; the router has already applied the epoch rule
//!   ([`ferry_model::SiteRecord::judge`]) before it writes.
//! - [`SqliteStore`]: the embedded default, one SQLite file (WAL, `synchronous=FULL`:
//!   an acknowledged write is on disk). Its schema is versioned with
//!   `PRAGMA user_version` ([`SCHEMA_VERSION`]) and only grows.
//! - `EtcdStore` (cargo feature `etcd`): the store in an etcd v3 cluster, for
//!   routers in several datacenters. Keys under a prefix, one per site, written
//!   in transactions; reads are paged snapshots at one revision; `apply_sites`
//!   judges epochs inside the transaction (compare on the revisions judged).
//!   The trait stays synchronous: the store runs etcd-client on a runtime of its
//!   own and waits on a channel, so it can be called from any thread, a tokio
//!   worker included (see `etcd.rs`). Layout and semantics:
//!   `docs/control-plane.md`. The feature is off by default because
//!   etcd-client's build needs `protoc`; the embedded default needs nothing.
//! - [`StoreError`]: what went wrong, with the path, operation or host involved.
//! - [`conformance`]: the shared test suite that every implementation (SQLite,
//!   etcd) must pass.

use std::path::PathBuf;
use std::time::Duration;

use ferry_model::{Epoch, Hostname, ServerState, SiteRecord};

pub mod conformance;
#[cfg(feature = "etcd")]
mod etcd;
mod sqlite;

#[cfg(feature = "etcd")]
pub use etcd::{
    Applied, Change, ChangeBatch, EtcdAuth, EtcdConfig, EtcdStore, EtcdTlsConfig, Fleet, Lease,
    Snapshot, Watch, WatchError, LAYOUT_VERSION,
};
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

/// Persistent control state of one router.
///
/// Contract (checked by [`conformance::run_all`]):
/// - Writes are durable when they return.
/// - A batch ([`Store::put_sites`], [`Store::remove_sites`]) is applied all or
///   nothing, and readers never see part of one.
/// - What a store accepts it can read back unchanged. Epochs up to `2^63 - 1` must be
///   storable; a record a backend cannot represent is refused with
///   [`StoreError::Unstorable`] and the whole batch is refused with it.
pub trait Store: Send + Sync + 'static {
    /// Every site record, in host order.
    fn sites(&self) -> Result<Vec<SiteRecord>, StoreError>;

    /// The record of one site, if the store holds one.
    fn site(&self, host: &Hostname) -> Result<Option<SiteRecord>, StoreError>;

    /// Upserts all records in one transaction (all or nothing). Does not judge
    /// epochs: the caller (the router) has already applied the epoch rule; the store
    /// just persists. If a host appears twice in `records`, the later record wins.
    fn put_sites(&self, records: &[SiteRecord]) -> Result<(), StoreError>;

    /// Removes the sites in one transaction; hosts the store does not hold are ignored.
    fn remove_sites(&self, hosts: &[Hostname]) -> Result<(), StoreError>;

    /// Runtime server states (drain/maint set through the admin API) keyed by
    /// `(pool, server)`, in `(pool, server)` order.
    fn server_states(&self) -> Result<Vec<(String, String, ServerState)>, StoreError>;

    /// Sets the runtime state of one pool member, replacing any earlier one.
    fn put_server_state(
        &self,
        pool: &str,
        server: &str,
        state: ServerState,
    ) -> Result<(), StoreError>;

    /// Servers that joined pools at run time (in no config file), in
    /// `(pool, name)` order; their states are in [`Store::server_states`].
    fn joined_servers(&self) -> Result<Vec<JoinedServer>, StoreError>;

    /// Records a server that joined a pool, replacing one of the same pool
    /// and name.
    fn put_joined_server(&self, server: &JoinedServer) -> Result<(), StoreError>;

    /// Forgets a joined server; one the store does not hold is ignored.
    fn remove_joined_server(&self, pool: &str, name: &str) -> Result<(), StoreError>;

    /// Whether what is written is kept to be read back: true for every real
    /// store. False only for a store that forgets every write (a router run
    /// without a store), so a caller may skip writes whose only purpose is to
    /// keep what it holds anyway (a router's start skips writing a million
    /// sites it just loaded).
    fn keeps_writes(&self) -> bool {
        true
    }
}

/// A server that joined a pool at run time (`POST /v1/pools/{pool}/servers`),
/// kept so the router still has it after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedServer {
    pub pool: String,
    pub name: String,
    pub address: std::net::SocketAddr,
    pub tier: u8,
    pub weight: u32,
}

/// Why the control store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's file could not be opened or set up.
    #[error("cannot open control store {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },

    /// The file was written by a newer Ferry whose format this build does not know.
    #[error(
        "control store {} has schema version {found}, this build supports up to \
         {supported}; run a newer Ferry or restore an older copy",
        .path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The file is an SQLite database, but not one Ferry created.
    #[error("{} is an SQLite database with other tables, not a Ferry control store", .path.display())]
    NotAStore { path: PathBuf },

    /// Bringing an older file's schema up to date failed; the file is left as it was.
    #[error(
        "cannot migrate control store {} from schema version {from} to {to}: {source}",
        .path.display()
    )]
    Migrate {
        path: PathBuf,
        from: u32,
        to: u32,
        source: rusqlite::Error,
    },

    /// A database operation failed.
    #[error("control store failed to {op}: {source}")]
    Sqlite {
        op: &'static str,
        source: rusqlite::Error,
    },

    /// A stored row no longer parses; `what` names it (site host, server state).
    #[error("control store holds a corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },

    /// A record this backend cannot represent faithfully; nothing of its batch was
    /// written.
    #[error("cannot store site {host}: {why}")]
    Unstorable { host: Hostname, why: String },

    /// The etcd prefix was laid out by a newer Ferry whose key layout this build
    /// does not know; nothing was read or written.
    #[error(
        "etcd prefix {prefix:?} has layout version {found}, this build supports up to \
         {supported}; run a newer Ferry"
    )]
    NewerLayout {
        prefix: String,
        found: u32,
        supported: u32,
    },

    /// An etcd request was refused or failed for good.
    #[error("etcd store failed to {op}: {source}")]
    Etcd {
        op: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// No etcd member answered within the request timeout (quorum lost, members
    /// unreachable). For a write, whether it was applied is unknown; every Ferry
    /// write is safe to send again.
    #[error(
        "etcd store could not {op}: no answer from a member with a leader within \
         {after:?} (last error: {last}); quorum lost or members unreachable"
    )]
    Unavailable {
        op: &'static str,
        after: Duration,
        last: String,
    },

    /// A judged write carried an epoch the stored record refuses (older, or the
    /// same with other content); nothing of its batch was written.
    #[error("stale change for site {host}: epoch {incoming} against stored epoch {stored}")]
    Stale {
        host: Hostname,
        stored: Epoch,
        incoming: Epoch,
    },

    /// Other writers changed the same records between every read and write.
    #[error("control store could not {op}: other writers won {attempts} times in a row")]
    Contended { op: &'static str, attempts: u32 },

    /// A batch too large for one etcd transaction failed after its first
    /// `written` of `total` items were written (each chunk is atomic).
    #[error("batch cut after {written} of {total} items: {source}")]
    Partial {
        written: usize,
        total: usize,
        source: Box<StoreError>,
    },
}
