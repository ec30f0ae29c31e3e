//! Routing decisions, without I/O: which site a Host belongs to, what state it is
//! in, and which server of which pool takes the request.
//!
//! - [`HostTable`]: hostname -> [`SiteId`] -> packed (placement, state, epoch),
//!   built for millions of sites; lookups are O(1), a change rewrites one word.
//! - [`Pool`] and [`Server`]: priority tiers, weights, round robin or least
//!   connections, administrative states and health (active rise/fall, passive).
//! - [`match_rule`]: path-prefix rules (`/admin` -> back-office pool).
//!
//! The proxy (`ferry-proxy`) does the I/O and calls into this crate.

#![forbid(unsafe_code)]

mod names;
mod pool;
mod table;

pub use pool::{match_rule, Balance, Pick, Pool, Server};
pub use table::{
    ApplyError, HostTable, Loaded, NewSite, Outcome, PlacementId, Route, SiteChange, SiteExtras,
    SiteId, Tracked, MAX_EPOCH,
};

use ferry_model::{Epoch, Hostname};

/// Why the table refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("site {host}: epoch {epoch} exceeds the largest supported ({MAX_EPOCH})")]
    EpochTooLarge { host: Hostname, epoch: Epoch },
    #[error("site {host} appears twice in one batch")]
    DuplicateInBatch { host: Hostname },
    #[error("more than 65535 distinct placements")]
    TooManyPlacements,
    #[error("the site table is full")]
    TableFull,
}
