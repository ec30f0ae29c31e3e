//! The routers' admin API calls an update makes, through
//! `ferry-admin-api`'s client: pool server states, joins and leaves, site
//! records, and a pool's live counts.
//!
//! States cross this module as text (`"ready"`, `"maintenance"`): the update
//! runbook journals them so; they become the API's typed values here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_admin_api::pools::NewServer;
use ferry_admin_api::sites::SiteChange;
use ferry_admin_api::{AdminClient, AdminError, Http};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{FleetError, Result};
use crate::runbook::Router;

/// A server of a pool as a router reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct PoolServer {
    pub name: String,
    pub state: String,
    pub active: u64,
}

/// A site record as a router reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct SiteRecord {
    pub placement: String,
    pub state: String,
    pub epoch: u64,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn client(http: &Http, r: &Router) -> AdminClient {
    AdminClient::new(r.name.clone(), &r.admin, Some(&r.token))
        .with_http(http.clone())
        .with_timeout(TIMEOUT)
}

fn err(r: &Router, message: String) -> FleetError {
    FleetError::Router {
        router: r.name.clone(),
        message,
    }
}

fn api_err(e: AdminError) -> FleetError {
    FleetError::Router {
        router: e.router().to_string(),
        message: e.detail(),
    }
}

/// A state given as text (`"drain"`) as the API's enum.
fn parse_state<T: DeserializeOwned>(r: &Router, what: &str, state: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(state.to_string()))
        .map_err(|_| err(r, format!("{what}: no such state {state:?}")))
}

/// The servers of `pool` at router `r`.
pub async fn pool_servers(http: &Http, r: &Router, pool: &str) -> Result<Vec<PoolServer>> {
    let pools = client(http, r).pools().await.map_err(api_err)?;
    pools
        .into_iter()
        .find(|p| p.name == pool)
        .map(|p| {
            p.servers
                .into_iter()
                .map(|s| PoolServer {
                    name: s.name,
                    state: s.state.as_str().to_string(),
                    active: s.active,
                })
                .collect()
        })
        .ok_or_else(|| err(r, format!("has no pool {pool:?}")))
}

/// Sets a server's administrative state (ready, drain, maint).
pub async fn set_server(
    http: &Http,
    r: &Router,
    pool: &str,
    server: &str,
    state: &str,
) -> Result<()> {
    let state = parse_state(r, &format!("server {pool}/{server}"), state)?;
    client(http, r)
        .set_server(pool, server, state)
        .await
        .map_err(api_err)?;
    Ok(())
}

/// Waits until none of `servers` has a request in flight at `r`.
pub async fn wait_idle(
    http: &Http,
    r: &Router,
    pool: &str,
    servers: &[String],
    limit: Duration,
) -> Result<()> {
    let end = Instant::now() + limit;
    loop {
        let busy: BTreeMap<String, u64> = pool_servers(http, r, pool)
            .await?
            .into_iter()
            .filter(|s| servers.contains(&s.name) && s.active > 0)
            .map(|s| (s.name, s.active))
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(err(
                r,
                format!("requests still in flight after {limit:?}: {busy:?}"),
            ));
        }
        // The API has no "wait until idle" call: poll, briefly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_site(http: &Http, r: &Router, host: &str) -> Result<SiteRecord> {
    let s = client(http, r).get_site(host).await.map_err(api_err)?;
    Ok(SiteRecord {
        placement: s.placement,
        state: s.state.as_str().to_string(),
        epoch: s.epoch,
    })
}

/// Puts a site record; the epoch rule makes a replay of the same record a
/// no-op.
pub async fn put_site(http: &Http, r: &Router, host: &str, rec: &SiteRecord) -> Result<()> {
    let change = SiteChange {
        host: None,
        placement: rec.placement.clone(),
        state: parse_state(r, &format!("site {host}"), &rec.state)?,
        epoch: rec.epoch,
    };
    client(http, r).put_site(host, &change).await.map_err(|e| {
        err(
            r,
            format!("{} ({} epoch {})", e.detail(), rec.state, rec.epoch),
        )
    })?;
    Ok(())
}

/// Adds this server to `pool` at router `r` (`POST /v1/pools/{pool}/servers`).
/// Already there with the same name (a restarted agent): left as it is.
pub async fn join(
    http: &Http,
    r: &Router,
    pool: &str,
    name: &str,
    address: &str,
    tier: u8,
    weight: u32,
) -> Result<()> {
    let address = address
        .parse()
        .map_err(|e| err(r, format!("join {pool}: address {address:?}: {e}")))?;
    let server = NewServer {
        name: name.to_string(),
        address,
        tier,
        weight,
        state: ferry_admin_api::pools::ServerState::Ready,
    };
    match client(http, r).add_server(pool, &server).await {
        Ok(_) => Ok(()),
        // Joined before this agent restarted: make sure it takes traffic.
        Err(e) if e.is_conflict() => set_server(http, r, pool, name, "ready").await,
        Err(e) => Err(api_err(e)),
    }
}

/// Drains this server at `r`, waits until it has no request in flight
/// (at most `limit`), then removes it from the pool.
pub async fn leave(http: &Http, r: &Router, pool: &str, name: &str, limit: Duration) -> Result<()> {
    set_server(http, r, pool, name, "drain").await?;
    wait_idle(http, r, pool, &[name.to_string()], limit).await?;
    match client(http, r).remove_server(pool, name).await {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) => Err(api_err(e)),
    }
}
