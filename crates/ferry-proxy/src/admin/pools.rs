//! `/v1/pools...`: pools and their servers; a server's state, and servers
//! joining and leaving at run time.

use ferry_admin_api::pools::{
    NewServer, Pool, PoolList, Server, ServerJoined, ServerLeft, ServerStateSet, SetServerState,
};
use http::StatusCode;

use super::{answer, error, ok, read_body, Resp};
use crate::state::RuntimeServerError;
use crate::Proxy;

/// Every pool, sorted by name, with its servers' state and counts.
pub(super) fn list(proxy: &Proxy) -> Resp {
    let pools = proxy.shared.pools.load();
    let mut names: Vec<_> = pools.pools.keys().collect();
    names.sort();
    let pools = names
        .into_iter()
        .map(|n| {
            let p = &pools.pools[n].pool;
            Pool {
                name: p.name.clone(),
                serving_tier: p.serving_tier(),
                servers: p
                    .servers
                    .iter()
                    .map(|s| Server {
                        name: s.name.clone(),
                        address: s.address.to_string(),
                        tier: s.tier,
                        weight: s.weight,
                        state: s.state(),
                        healthy: s.is_healthy(),
                        active: s.active_requests().into(),
                        served: s.served(),
                    })
                    .collect(),
                scale: pools.pools[n]
                    .spec
                    .scale
                    .as_ref()
                    .map(|policy| proxy.scale.view(&p.name, policy)),
            }
        })
        .collect();
    ok(&PoolList { pools })
}

pub(super) fn set_server(proxy: &Proxy, pool: &str, server: &str, body: &[u8]) -> Resp {
    let b: SetServerState = match read_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match proxy.shared.set_server_state(pool, server, b.state) {
        Ok(true) => ok(&ServerStateSet {
            pool: pool.to_string(),
            server: server.to_string(),
            state: b.state,
        }),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no server {server} in pool {pool}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn runtime_server_error(e: RuntimeServerError) -> Resp {
    use RuntimeServerError as E;
    let status = match &e {
        E::NoPool(_) | E::NoServer(_) => StatusCode::NOT_FOUND,
        E::Exists(_) | E::NotDrained { .. } => StatusCode::CONFLICT,
    };
    error(status, e)
}

pub(super) fn add_server(proxy: &Proxy, pool: &str, body: &[u8]) -> Resp {
    let b: NewServer = match read_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let name_ok = !b.name.is_empty()
        && b.name.len() <= 64
        && b.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return error(
            StatusCode::BAD_REQUEST,
            format!("name {:?}: 1-64 letters, digits, '-', '_', '.'", b.name),
        );
    }
    let server = ferry_router::Server::new(b.name.clone(), b.address, b.tier, b.weight, b.state);
    let kept = ferry_router::Server::new(b.name.clone(), b.address, b.tier, b.weight, b.state);
    match proxy.shared.add_server(pool, server) {
        Ok(()) => {
            tracing::info!(%pool, server = %b.name, address = %b.address, tier = b.tier, "server joined");
            if let Err(e) = crate::joined::persist(&proxy.shared, pool, &kept) {
                tracing::error!(%pool, server = %b.name, error = %e, "a joined server could not be stored");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("server {} joined pool {pool}, but the store failed ({e}): it will be forgotten at the next restart", b.name),
                );
            }
            answer(
                StatusCode::CREATED,
                &ServerJoined {
                    pool: pool.to_string(),
                    server: b.name,
                    address: b.address.to_string(),
                    tier: b.tier,
                    state: b.state,
                },
            )
        }
        Err(e) => runtime_server_error(e),
    }
}

pub(super) fn remove_server(proxy: &Proxy, pool: &str, server: &str) -> Resp {
    match proxy.shared.remove_server(pool, server) {
        Ok(()) => {
            tracing::info!(%pool, %server, "server left");
            crate::joined::forget(&proxy.shared, pool, server);
            ok(&ServerLeft {
                pool: pool.to_string(),
                removed: server.to_string(),
            })
        }
        Err(e) => runtime_server_error(e),
    }
}
