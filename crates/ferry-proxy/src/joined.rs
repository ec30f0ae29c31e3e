//! Servers that joined a pool at run time (`POST /v1/pools/{pool}/servers`,
//! `ferry agent --join`, a scale policy's new servers) are in no config
//! file. A reload rebuilds the pools from the config, so [`Proxy::reload`]
//! takes them before ([`runtime_servers`]) and adds them back after
//! ([`rejoin`]) with their state. A server the new config names itself (by
//! name or address), or whose pool is gone, is not added back.
//!
//! [`Proxy::reload`]: crate::Proxy::reload

use std::sync::Arc;

use ferry_router::Server;

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
                continue;
            }
            Some(true) => {
                tracing::info!(%pool, server = %s.name, "a server that joined at run time is now in the config");
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
