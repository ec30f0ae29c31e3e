//! Active health checks: one task per pool with a `[pool.health]` section, asking
//! each server for the check path and counting rise/fall.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{Either, Empty};
use tokio::task::JoinHandle;

use crate::state::Shared;

/// Starts the checkers for the pools currently configured. The caller aborts the
/// returned tasks on reload and starts new ones (server state carries over).
pub(crate) fn spawn_checks(shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    let pools = shared.pools.load();
    let mut tasks = Vec::new();
    for entry in pools.pools.values() {
        let Some(health) = entry.spec.health.clone() else {
            continue;
        };
        let pool = Arc::clone(&entry.pool);
        let shared = Arc::clone(shared);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(health.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // All servers are checked together, so a dead server's timeout
                // does not delay the others.
                let mut checks = tokio::task::JoinSet::new();
                for server in &pool.servers {
                    let shared = Arc::clone(&shared);
                    let server = Arc::clone(server);
                    let health = health.clone();
                    let pool_name = pool.name.clone();
                    checks.spawn(async move {
                        let ok = check_once(&shared, server.address, &health.path, health.expect_status, health.timeout).await;
                        if let Some(up) = server.record_check(ok, health.rise, health.fall) {
                            if up {
                                tracing::info!(pool = %pool_name, server = %server.name, "server is up");
                            } else {
                                tracing::warn!(pool = %pool_name, server = %server.name, "server is down");
                            }
                        }
                    });
                }
                while checks.join_next().await.is_some() {}
            }
        }));
    }
    tasks
}

async fn check_once(
    shared: &Shared,
    addr: std::net::SocketAddr,
    path: &str,
    expect: u16,
    timeout: Duration,
) -> bool {
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
    else {
        return false;
    };
    let Ok(req) = Request::get(uri)
        .header("user-agent", "ferry-health-check")
        .body(Either::Right(Empty::<Bytes>::new()))
    else {
        return false;
    };
    match shared.upstream.send(req, timeout).await {
        Ok(resp) => resp.status().as_u16() == expect,
        Err(_) => false,
    }
}
