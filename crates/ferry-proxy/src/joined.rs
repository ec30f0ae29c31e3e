//! Servers that joined a pool at run time (`POST /v1/pools/{pool}/servers`,
//! `ferry agent --join`, a scale policy's new servers) are in no config
//! file. A reload rebuilds the pools from the config, so [`Proxy::reload`]
//! takes them before ([`runtime_servers`]) and adds them back after
//! ([`rejoin`]) with their state. A server the new config names itself (by
//! name or address), or whose pool is gone, is not added back.
//!
//! They are also kept in the store ([`persist`] at a join, [`forget`] at a
//! leave; their states are the store's server states like any server's), and
//! [`restore`] adds them back when the router starts.
//!
//! [`Proxy::reload`]: crate::Proxy::reload

use std::sync::Arc;

use ferry_model::ServerState;
use ferry_router::Server;
use ferry_store::{JoinedServer, StoreError};

use crate::state::Shared;

/// Every server of the running pools that the running config does not name,
/// as (pool, server), in pool order.
pub(crate) fn runtime_servers(shared: &Shared) -> Vec<(String, Arc<Server>)> {
    let set = shared.pools.load();
    let mut out = Vec::new();
    for (pool, entry) in &set.pools {
        for s in &entry.pool.servers {
            if !entry.spec.servers.iter().any(|c| c.name == s.name) {
                out.push((pool.clone(), Arc::clone(s)));
            }
        }
    }
    out
}

/// Adds `joined` back to the pools after a reload.
pub(crate) fn rejoin(shared: &Shared, joined: Vec<(String, Arc<Server>)>) {
    for (pool, s) in joined {
        let configured = shared.pools.load().pools.get(&pool).map(|e| {
            e.spec
                .servers
                .iter()
                .any(|c| c.name == s.name || c.address == s.address)
        });
        match configured {
            None => {
                tracing::warn!(%pool, server = %s.name, "a server that joined at run time is dropped: its pool left the config");
                forget(shared, &pool, &s.name);
                continue;
            }
            Some(true) => {
                tracing::info!(%pool, server = %s.name, "a server that joined at run time is now in the config");
                forget(shared, &pool, &s.name);
                continue;
            }
            Some(false) => {}
        }
        let server = Server::new(s.name.clone(), s.address, s.tier, s.weight, s.state());
        match shared.add_server(&pool, server) {
            Ok(()) => {
                tracing::info!(%pool, server = %s.name, address = %s.address, state = s.state().as_str(), "server that joined at run time kept across the reload")
            }
            Err(e) => {
                tracing::warn!(%pool, server = %s.name, error = %e, "a server that joined at run time could not be kept across the reload")
            }
        }
    }
}

/// Records a server that just joined `pool`, with its state, so a restart
/// keeps it.
pub(crate) fn persist(shared: &Shared, pool: &str, s: &Server) -> Result<(), StoreError> {
    shared.store.put_joined_server(&JoinedServer {
        pool: pool.to_string(),
        name: s.name.clone(),
        address: s.address,
        tier: s.tier,
        weight: s.weight,
    })?;
    shared.store.put_server_state(pool, &s.name, s.state())
}

/// Forgets a server that left `pool` (a store failure is logged: the server
/// would come back at the next start, drained or not as it was).
pub(crate) fn forget(shared: &Shared, pool: &str, name: &str) {
    if let Err(e) = shared.store.remove_joined_server(pool, name) {
        tracing::error!(%pool, server = %name, error = %e, "cannot remove a server that left from the store: it will be back at the next start");
    }
}

/// Adds the servers that had joined before the router stopped, in the state
/// the store kept for them. One the config now names, or whose pool is
/// gone, is forgotten.
pub(crate) fn restore(shared: &Shared) -> Result<usize, StoreError> {
    let joined = shared.store.joined_servers()?;
    let states = shared.store.server_states()?;
    let mut restored = 0;
    for j in joined {
        let configured = shared.pools.load().pools.get(&j.pool).map(|e| {
            e.spec
                .servers
                .iter()
                .any(|c| c.name == j.name || c.address == j.address)
        });
        if configured != Some(false) {
            tracing::info!(pool = %j.pool, server = %j.name, "a server that joined before the restart is not restored: its pool is gone or the config names it");
            forget(shared, &j.pool, &j.name);
            continue;
        }
        let state = states
            .iter()
            .find(|(p, n, _)| *p == j.pool && *n == j.name)
            .map_or(ServerState::Ready, |(_, _, s)| *s);
        let server = Server::new(j.name.clone(), j.address, j.tier, j.weight, state);
        match shared.add_server(&j.pool, server) {
            Ok(()) => {
                restored += 1;
                tracing::info!(pool = %j.pool, server = %j.name, address = %j.address, state = state.as_str(), "server that joined before the restart restored");
            }
            Err(e) => {
                tracing::warn!(pool = %j.pool, server = %j.name, error = %e, "a server that joined before the restart could not be restored")
            }
        }
    }
    Ok(restored)
}
