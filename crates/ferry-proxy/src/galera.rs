//! Health of a Galera node, for database tunnels (`galera_pool.rs`): a node
//! takes queries only when it is Synced, in the primary component and
//! ready. A donor (serving a state transfer) or a node desynced by an
//! operator is still up and answers, but lags or stalls writes: a tunnel
//! leaves it unless told otherwise.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

/// Why a node's state could not be read (it then counts as not usable).
#[derive(Debug, thiserror::Error)]
#[error("Galera node {addr}: {message}")]
pub struct GaleraError {
    /// `host:port` asked (empty when the URL did not parse).
    pub addr: String,
    pub message: String,
}

/// `wsrep_local_state`, as documented by Galera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsrepState {
    /// 1: joining the cluster (state transfer requested).
    Joining,
    /// 2: serving a state transfer, or desynced (`wsrep_desync = ON`).
    DonorDesynced,
    /// 3: state received, catching up.
    Joined,
    /// 4: in sync with the cluster.
    Synced,
    /// Any other number (0 = initialized, not yet joined).
    Other(u8),
}

impl WsrepState {
    pub fn from_number(n: u8) -> WsrepState {
        match n {
            1 => WsrepState::Joining,
            2 => WsrepState::DonorDesynced,
            3 => WsrepState::Joined,
            4 => WsrepState::Synced,
            n => WsrepState::Other(n),
        }
    }
}

/// What one node says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaleraNode {
    /// `host:port` asked.
    pub addr: String,
    pub state: WsrepState,
    /// `wsrep_local_state_comment` ("Synced", "Donor/Desynced", ...).
    pub state_comment: String,
    /// `wsrep_cluster_status`: "Primary" when in the quorum component.
    pub cluster_status: String,
    /// `wsrep_ready`: the node accepts queries.
    pub ready: bool,
    pub cluster_size: u32,
}

/// Reads a node's wsrep status over one short connection. A server without
/// Galera (no `wsrep_local_state`) is an error, not a healthy node.
pub async fn galera_state(url: &str) -> Result<GaleraNode, GaleraError> {
    let opts = Opts::from_url(url).map_err(|e| GaleraError {
        addr: String::new(),
        message: format!("invalid URL: {e}"),
    })?;
    let opts = Opts::from(OptsBuilder::from_opts(opts).prefer_socket(false));
    let addr = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    let err = |message: String| GaleraError {
        addr: addr.clone(),
        message,
    };
    let mut conn = Conn::new(opts)
        .await
        .map_err(|e| err(format!("cannot connect: {e}")))?;
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state', \
             'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_ready', \
             'wsrep_cluster_size')",
        )
        .await
        .map_err(|e| err(format!("reading wsrep status: {e}")))?;
    let _ = conn.disconnect().await;
    let get = |name: &str| {
        rows.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let Some(state) = get("wsrep_local_state") else {
        return Err(err("not a Galera node (no wsrep_local_state)".into()));
    };
    let state = state
        .trim()
        .parse::<u8>()
        .map(WsrepState::from_number)
        .map_err(|_| err(format!("wsrep_local_state {state:?} is not a number")))?;
    Ok(GaleraNode {
        addr: addr.clone(),
        state,
        state_comment: get("wsrep_local_state_comment").unwrap_or_default(),
        cluster_status: get("wsrep_cluster_status").unwrap_or_default(),
        ready: get("wsrep_ready").is_some_and(|v| v.eq_ignore_ascii_case("ON")),
        cluster_size: get("wsrep_cluster_size")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    })
}

/// Whether a pool may send queries to `node`: Synced, in the primary
/// component and ready. A donor/desynced node only with `allow_donor` (a
/// cluster whose every node is a donor still serves, slowly, rather than
/// not at all; the caller decides).
pub fn usable(node: &GaleraNode, allow_donor: bool) -> bool {
    let state_ok = match node.state {
        WsrepState::Synced => true,
        WsrepState::DonorDesynced => allow_donor,
        _ => false,
    };
    state_ok && node.ready && node.cluster_status == "Primary"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(state: u8, status: &str, ready: bool) -> GaleraNode {
        GaleraNode {
            addr: "127.0.0.1:3306".into(),
            state: WsrepState::from_number(state),
            state_comment: String::new(),
            cluster_status: status.into(),
            ready,
            cluster_size: 3,
        }
    }

    #[test]
    fn only_synced_primary_ready_nodes_are_usable() {
        assert!(usable(&node(4, "Primary", true), false));
        assert!(!usable(&node(4, "non-Primary", true), false));
        assert!(!usable(&node(4, "Primary", false), false));
        for s in [0, 1, 3, 5] {
            assert!(!usable(&node(s, "Primary", true), false), "state {s}");
            assert!(!usable(&node(s, "Primary", true), true), "state {s}");
        }
    }

    #[test]
    fn donors_only_when_allowed() {
        let donor = node(2, "Primary", true);
        assert_eq!(donor.state, WsrepState::DonorDesynced);
        assert!(!usable(&donor, false));
        assert!(usable(&donor, true));
        assert!(!usable(&node(2, "non-Primary", true), true));
    }
}
