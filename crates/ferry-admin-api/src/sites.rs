//! `/v1/sites...`: site records, atomic batches, queries and removals.
//!
//! Requests carry `host` and `placement` as text: the router checks them
//! itself so a refusal names the site (`sites[3]: host "a b": ...`). States
//! are [`SiteState`]s; epochs are plain numbers on the wire.

use ferry_model::Placement;
pub use ferry_model::SiteState;
use serde::{Deserialize, Serialize};

/// A site change: the body of `PUT /v1/sites/{host}` and an item of
/// [`SiteBatch`] (where `host` is required).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `pool:NAME` or `remote:NAME`.
    pub placement: String,
    #[serde(default)]
    pub state: SiteState,
    pub epoch: u64,
}

/// `POST /v1/sites`: changes applied together or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteBatch {
    pub sites: Vec<SiteChange>,
}

/// `POST /v1/sites/query` and `POST /v1/sites/remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostList {
    pub hosts: Vec<String>,
}

/// A site as `GET /v1/sites` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub host: String,
    pub placement: String,
    pub state: SiteState,
    pub epoch: u64,
}

/// A site with the requests it has now (`GET /v1/sites/{host}`, query).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub host: String,
    pub placement: String,
    pub state: SiteState,
    pub epoch: u64,
    /// Requests held because the site is frozen.
    pub held: u64,
    /// Requests forwarded that could still write at the source: not
    /// finished, and not yet answered with a committed answer (a fixed
    /// length after a whole request body; such an answer streams on to its
    /// client without counting, see ARCHITECTURE.md, "Stragglers at a freeze").
    pub in_flight: u64,
    /// While the site is frozen (routers that know it): what its drain
    /// deadline did. Absent from older routers and for sites not frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stragglers: Option<Stragglers>,
}

/// What a router did with a frozen site's requests at its drain deadline
/// (`[router] drain_timeout` after the freeze): the requests cut because
/// they could still write at the source, by reason, and those kept. A
/// freeze's acknowledgement (`in_flight` 0) lists these in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stragglers {
    /// The deadline has passed: the counts are final for this epoch.
    #[serde(default)]
    pub deadline_passed: bool,
    /// Uploads still sending their body.
    #[serde(default)]
    pub upload: u64,
    /// Safe requests (GET, HEAD, OPTIONS) still waiting for their answer.
    #[serde(default)]
    pub long_poll: u64,
    /// Answers without a fixed length still streaming (SSE, chunked).
    #[serde(default)]
    pub stream: u64,
    /// Upgraded connections (WebSockets): either side may write at any time.
    #[serde(default)]
    pub upgrade: u64,
    /// Unsafe requests still waiting for their answer: not cut (their
    /// application may be writing; closing the connection would not stop
    /// it), still in flight until they end or `request_timeout`.
    #[serde(default)]
    pub kept: u64,
}

impl Stragglers {
    /// Requests cut, every reason.
    pub fn cut(&self) -> u64 {
        self.upload + self.long_poll + self.stream + self.upgrade
    }
}

impl Site {
    /// The placement, when it is one this version knows.
    pub fn placement(&self) -> Option<Placement> {
        Placement::parse(&self.placement)
    }
}

/// A queried host the router does not have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsentSite {
    pub host: String,
    /// Always true.
    pub absent: bool,
}

/// One answer of a query: the site, or `{"host": ..., "absent": true}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueriedSite {
    Present(Site),
    Absent(AbsentSite),
}

impl QueriedSite {
    pub fn host(&self) -> &str {
        match self {
            QueriedSite::Present(s) => &s.host,
            QueriedSite::Absent(a) => &a.host,
        }
    }
}

/// `GET /v1/sites` (query string `prefix`, `limit`, `offset`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteListQuery {
    pub prefix: String,
    pub limit: Option<usize>,
    pub offset: usize,
}

/// The answer of `GET /v1/sites`: one page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitePage {
    /// Sites matching `prefix`, before `offset` and `limit`.
    pub total: u64,
    pub sites: Vec<SiteRecord>,
}

/// The answer of `POST /v1/sites/query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryAnswer {
    pub sites: Vec<QueriedSite>,
}

/// Counts of a change the router applied (`POST /v1/sites`, `PUT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub added: u64,
    pub changed: u64,
    /// Replays (same epoch and content): nothing was done for them.
    pub unchanged: u64,
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, o: Applied) {
        self.added += o.added;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
    }
}

/// A change with a stale epoch, in a 409 answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleSite {
    pub host: String,
    pub current_epoch: u64,
    pub given_epoch: u64,
}

/// The 409 answer of a site change: nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub error: String,
    /// The first 100 stale sites.
    pub stale: Vec<StaleSite>,
}

/// `POST /v1/sites/remove`, `DELETE /v1/sites/{host}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: u64,
}
