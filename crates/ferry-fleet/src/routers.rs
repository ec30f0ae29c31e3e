//! The routers' admin API calls an update makes (docs/admin-api.yaml):
//! pool server states, site records, and a pool's live counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::error::{FleetError, Result};
use crate::runbook::Router;
use ferry_orch::router::Http;

/// A server of a pool as a router reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct PoolServer {
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub active: u64,
}

#[derive(Deserialize)]
struct PoolReport {
    name: String,
    servers: Vec<PoolServer>,
}

#[derive(Deserialize)]
struct PoolsAnswer {
    pools: Vec<PoolReport>,
}

/// A site record as a router reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct SiteRecord {
    pub placement: String,
    pub state: String,
    pub epoch: u64,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn err(r: &Router, message: String) -> FleetError {
    FleetError::Router {
        router: r.name.clone(),
        message,
    }
}

async fn call(
    http: &Http,
    r: &Router,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, bytes::Bytes)> {
    let url = format!("{}{path}", r.admin);
    let auth = format!("Bearer {}", r.token);
    http.request(
        method,
        &url,
        &[("authorization", &auth)],
        body.map(|b| b.to_string().into_bytes()),
        TIMEOUT,
    )
    .await
    .map_err(|m| err(r, m))
}

fn refused(r: &Router, what: &str, status: StatusCode, body: &[u8]) -> FleetError {
    err(
        r,
        format!("{what}: {status}: {}", String::from_utf8_lossy(body).trim()),
    )
}

/// The servers of `pool` at router `r`.
pub async fn pool_servers(http: &Http, r: &Router, pool: &str) -> Result<Vec<PoolServer>> {
    let (status, body) = call(http, r, Method::GET, "/v1/pools", None).await?;
    if status != StatusCode::OK {
        return Err(refused(r, "GET /v1/pools", status, &body));
    }
    let a: PoolsAnswer =
        serde_json::from_slice(&body).map_err(|e| err(r, format!("unreadable pools: {e}")))?;
    a.pools
        .into_iter()
        .find(|p| p.name == pool)
        .map(|p| p.servers)
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
    let path = format!("/v1/pools/{pool}/servers/{server}");
    let (status, body) = call(http, r, Method::PUT, &path, Some(json!({ "state": state }))).await?;
    if status != StatusCode::OK {
        return Err(refused(r, &format!("PUT {path} {state}"), status, &body));
    }
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_site(http: &Http, r: &Router, host: &str) -> Result<SiteRecord> {
    let path = format!("/v1/sites/{host}");
    let (status, body) = call(http, r, Method::GET, &path, None).await?;
    if status != StatusCode::OK {
        return Err(refused(r, &format!("GET {path}"), status, &body));
    }
    serde_json::from_slice(&body).map_err(|e| err(r, format!("unreadable site {host}: {e}")))
}

/// Puts a site record; the epoch rule makes a replay of the same record a
/// no-op.
pub async fn put_site(http: &Http, r: &Router, host: &str, rec: &SiteRecord) -> Result<()> {
    let path = format!("/v1/sites/{host}");
    let body = json!({"placement": rec.placement, "state": rec.state, "epoch": rec.epoch});
    let (status, answer) = call(http, r, Method::PUT, &path, Some(body)).await?;
    if status != StatusCode::OK {
        return Err(refused(
            r,
            &format!("PUT {path} ({} epoch {})", rec.state, rec.epoch),
            status,
            &answer,
        ));
    }
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
    let path = format!("/v1/pools/{pool}/servers");
    let body =
        json!({"name": name, "address": address, "tier": tier, "weight": weight, "state": "ready"});
    let (status, answer) = call(http, r, Method::POST, &path, Some(body)).await?;
    match status {
        StatusCode::CREATED => Ok(()),
        StatusCode::CONFLICT => {
            // Joined before this agent restarted: make sure it takes traffic.
            set_server(http, r, pool, name, "ready").await
        }
        s => Err(refused(r, &format!("POST {path} {name}"), s, &answer)),
    }
}

/// Drains this server at `r`, waits until it has no request in flight
/// (at most `limit`), then removes it from the pool.
pub async fn leave(http: &Http, r: &Router, pool: &str, name: &str, limit: Duration) -> Result<()> {
    set_server(http, r, pool, name, "drain").await?;
    wait_idle(http, r, pool, &[name.to_string()], limit).await?;
    let path = format!("/v1/pools/{pool}/servers/{name}");
    let (status, answer) = call(http, r, Method::DELETE, &path, None).await?;
    if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
        return Err(refused(r, &format!("DELETE {path}"), status, &answer));
    }
    Ok(())
}
