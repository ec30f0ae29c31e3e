//! `/v1/pools...`: pools, their servers, and servers' states, joins and leaves.

pub use ferry_model::ServerState;
use serde::{Deserialize, Serialize};

/// A server of a pool (`GET /v1/pools`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    /// IP:port.
    pub address: String,
    /// 0 is preferred; a higher tier serves only when every lower one is down.
    pub tier: u8,
    pub weight: u32,
    pub state: ServerState,
    pub healthy: bool,
    /// Requests in progress on this server.
    pub active: u64,
    /// Requests sent to this server since start.
    pub served: u64,
}

/// A pool and its servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    /// The tier serving now; none when no server can serve.
    pub serving_tier: Option<u8>,
    pub servers: Vec<Server>,
    /// The pool's scale policy and where it stands; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
}

/// A pool's scale policy (`[pool.scale]`) and its last decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// What the policy watches (`inflight_per_server`).
    pub signal: String,
    /// The signal over the last second.
    pub value: f64,
    pub add_above: f64,
    pub remove_below: f64,
    /// Servers taking traffic (state `ready`).
    pub servers: u32,
    /// Servers the policy wants (servers plus or minus the action in flight).
    pub wanted: u32,
    pub min_servers: u32,
    pub max_servers: u32,
    /// The last decision: `add`, `remove`, or why nothing is done (`steady`,
    /// `holding`, `busy`, `cooldown`, `back_off`, `at_max`, `at_min`).
    pub decision: String,
    /// The action in flight (`add`, or `remove SERVER`), at most one.
    pub in_flight: Option<String>,
    /// Failed actions in a row (the back-off doubles with each).
    pub failures: u32,
    /// The last action that ended.
    pub last_action: Option<ScaleAction>,
}

/// A scale action that ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAction {
    /// `add` or `remove`.
    pub action: String,
    /// The server removed (none for an add: the new server names itself
    /// when it joins).
    pub server: Option<String>,
    /// `ok`, `failed`, `timeout`, `not_started`, `drain_timeout`.
    pub result: String,
    /// What happened, in words (exit status, error).
    pub detail: String,
    /// Seconds since it ended.
    pub ended_secs_ago: u64,
}

/// The answer of `GET /v1/pools`, sorted by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

/// `PUT /v1/pools/{pool}/servers/{server}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetServerState {
    pub state: ServerState,
}

/// The answer of `PUT /v1/pools/{pool}/servers/{server}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStateSet {
    pub pool: String,
    pub server: String,
    pub state: ServerState,
}

/// `POST /v1/pools/{pool}/servers`: a server joining at run time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    /// 1-64 letters, digits, '-', '_', '.'.
    pub name: String,
    /// IP:port of the server's HTTP instance.
    pub address: std::net::SocketAddr,
    #[serde(default)]
    pub tier: u8,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub state: ServerState,
}

fn one() -> u32 {
    1
}

/// The answer of `POST /v1/pools/{pool}/servers` (201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerJoined {
    pub pool: String,
    pub server: String,
    pub address: String,
    pub tier: u8,
    pub state: ServerState,
}

/// The answer of `DELETE /v1/pools/{pool}/servers/{server}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLeft {
    pub pool: String,
    pub removed: String,
}
