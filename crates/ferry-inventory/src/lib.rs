//! The inventory of a hosting platform: datacenters, clusters, public IPs,
//! filers, database servers, databases, hostings, sites, and the uses of
//! databases (declared by the platform, or observed by the database tunnel).
//!
//! - [`Inventory`]: the loaded data, compact (interned names, `u32` ids such as
//!   [`SiteId`], one vector per attribute) so 3 million sites fit in a few hundred MB.
//! - [`InventoryBuilder`]: the only way to make one; checks every reference and
//!   every name as rows arrive, so an `Inventory` is always consistent.
//! - [`load_dir`]: reads a directory with one file per entity, CSV or JSON Lines
//!   ([`Entity`] lists the files and columns); every problem is reported as a
//!   [`Problem`] naming file and line.
//! - [`generate`]: a deterministic synthetic inventory up to millions of sites.
//! - [`Progress`]: how long work reports progress without a UI dependency.

#![forbid(unsafe_code)]

mod csvline;
mod digest;
mod error;
mod generate;
mod ids;
mod load;
mod model;
mod names;
mod progress;
mod schema;

pub use digest::Digest;
pub use error::{InventoryError, Problem, RowError, MAX_PROBLEMS};
pub use generate::{generate, GenerateParams};
pub use ids::{
    ClientId, ClusterId, DatabaseId, DatacenterId, DbServerId, FilerId, HostingId, IpId, SiteId,
};
pub use load::load_dir;
pub use model::{
    Counts, FileInfo, Inventory, InventoryBuilder, LateProblem, ObservedUse, User, UserRef,
};
pub use names::{Names, Strings};
pub use progress::{Progress, Quiet};
pub use schema::{Column, Entity, Format};
