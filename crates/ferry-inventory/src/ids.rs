//! Compact ids: every entity is a `u32` index into its table, so the planner's
//! arrays stay small at millions of rows and ids of different kinds cannot be
//! mixed up.

macro_rules! ids {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u32);

        impl $name {
            /// The row index in the entity's table.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    )*};
}

ids!(
    /// A datacenter.
    DatacenterId,
    /// A cluster (web servers, filers and database servers behind shared IPs).
    ClusterId,
    /// A public IP address.
    IpId,
    /// A filer volume.
    FilerId,
    /// A database server.
    DbServerId,
    /// A database (`name@server`).
    DatabaseId,
    /// A hosting (customer account).
    HostingId,
    /// A site (hostname).
    SiteId,
    /// A client address seen by the database tunnel that is not a hosting.
    ClientId,
);
