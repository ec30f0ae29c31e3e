//! The router as a whole: `/healthz`, `/v1/status`, `/v1/reload`, and the
//! error body every refusal carries.

use serde::{Deserialize, Serialize};

/// `GET /healthz` (no token needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
}

/// `GET /v1/status`: the router at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `[router] name`.
    pub name: String,
    pub sites: u64,
    pub held: u64,
    pub in_flight: u64,
    pub listeners: Vec<String>,
    pub open_connections: u64,
    pub requests_total: u64,
}

/// What a reload changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub sites_added: usize,
    pub sites_changed: usize,
    pub sites_removed: usize,
    pub pools: usize,
}

/// The answer of `POST /v1/reload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    pub reloaded: ReloadReport,
}

/// Every error answer: what was refused and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
