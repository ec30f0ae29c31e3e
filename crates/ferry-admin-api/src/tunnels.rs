//! `/v1/tunnels...`: database tunnels, their counters and observed uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A tunnel (`GET /v1/tunnels`, `GET`/`PUT /v1/tunnels/{tunnel}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub name: String,
    /// The bound address (port 0 resolved); none before it is bound.
    pub listen: Option<String>,
    /// Where new connections go now.
    pub upstream: String,
    pub configured_upstream: String,
    pub server: String,
    pub observe: bool,
    pub connections_total: u64,
    pub open_connections: u64,
    pub connect_failures: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub idle_closed: u64,
    /// Connections refused because no Galera node was usable.
    #[serde(default)]
    pub no_usable_node: u64,
    /// Connections by login outcome (accepted, refused, tls, unobserved, off).
    pub logins: BTreeMap<String, u64>,
    /// The Galera check; none without one.
    #[serde(default)]
    pub galera: Option<Galera>,
}

/// A tunnel's Galera check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Galera {
    /// Where new connections go; none when no node is usable.
    pub chosen: Option<String>,
    pub nodes: Vec<GaleraNode>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaleraNode {
    pub addr: String,
    pub usable: bool,
    /// wsrep_local_state_comment (cluster status, size), or why the check failed.
    pub state: String,
    pub checked_ms_ago: u64,
}

/// The answer of `GET /v1/tunnels`, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelList {
    pub tunnels: Vec<Tunnel>,
}

/// `PUT /v1/tunnels/{tunnel}`: where new connections go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repoint {
    /// HOST:PORT.
    pub upstream: String,
}

/// One (client, user, database) seen through a tunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelUse {
    pub client: String,
    pub user: String,
    /// None when the client chose no database.
    pub database: Option<String>,
    pub connections: u64,
}

/// The answer of `GET /v1/tunnels/{tunnel}/uses`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelUses {
    pub tunnel: String,
    pub server: String,
    pub uses: Vec<TunnelUse>,
}

/// A line of the observed uses file: `DB@SERVER` used from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedUse {
    pub database: String,
    pub client: String,
}

/// The answer of `POST /v1/tunnels/uses/export`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsesExport {
    /// The file written; none when no `observed_uses_file` is configured.
    pub written: Option<String>,
    pub lines: u64,
    pub uses: Vec<ObservedUse>,
}
