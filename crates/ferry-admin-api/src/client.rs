//! [`AdminClient`]: one router's admin API, one method per route.

use std::time::Duration;

use bytes::Bytes;
use ferry_model::ServerState;
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::certs::{CertList, CertPair, CertRemoved, CertStored};
use crate::error::AdminError;
use crate::http::{ExchangeError, Http, MAX_ANSWER};
use crate::pools::{
    NewServer, Pool, PoolList, ServerJoined, ServerLeft, ServerStateSet, SetServerState,
};
use crate::router::{ErrorBody, Health, ReloadReport, Reloaded, Status};
use crate::routes::{self, Route};
use crate::sites::{
    Applied, HostList, QueriedSite, QueryAnswer, Removed, Site, SiteBatch, SiteChange,
    SiteListQuery, SitePage,
};
use crate::tunnels::{Repoint, Tunnel, TunnelList, TunnelUses, UsesExport};

/// The admin API of one router. Cheap to clone (connections are shared
/// with every clone of its [`Http`]).
#[derive(Clone)]
pub struct AdminClient {
    http: Http,
    /// The router's name, as errors name it.
    router: String,
    /// `http://HOST:PORT`, no trailing slash.
    base: String,
    authorization: Option<String>,
    timeout: Duration,
    max_answer: usize,
}

/// Each call's default bound, body included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl AdminClient {
    /// `router` names the router in errors; `base` is its admin address
    /// (`http://127.0.0.1:9090`); `token` the bearer token (none for a
    /// router with `insecure_no_auth`).
    pub fn new(router: impl Into<String>, base: &str, token: Option<&str>) -> AdminClient {
        AdminClient {
            http: Http::new(),
            router: router.into(),
            base: base.trim_end_matches('/').to_string(),
            authorization: token.map(|t| format!("Bearer {t}")),
            timeout: DEFAULT_TIMEOUT,
            max_answer: MAX_ANSWER,
        }
    }

    /// Shares `http`'s connections (one pool for every router of a run).
    pub fn with_http(mut self, http: Http) -> AdminClient {
        self.http = http;
        self
    }

    /// Bounds each call, body included.
    pub fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
        self
    }

    /// Reads answers of at most `limit` bytes.
    pub fn with_max_answer(mut self, limit: usize) -> AdminClient {
        self.max_answer = limit;
        self
    }

    pub fn router(&self) -> &str {
        &self.router
    }

    /// One call; the answer's body when the status is a success.
    async fn send(
        &self,
        route: Route,
        args: &[&str],
        query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let path = route.path_with(args);
        let url = format!("{}{path}{query}", self.base);
        let call = || format!("{} {path}", route.method());
        let method = Method::from_bytes(route.method().as_bytes()).unwrap_or(Method::GET);
        let mut headers = Vec::new();
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.as_str()));
        }
        let (status, bytes) = self
            .http
            .exchange(method, &url, &headers, body, self.timeout, self.max_answer)
            .await
            .map_err(|e| match e {
                ExchangeError::Transport(message) => AdminError::Transport {
                    router: self.router.clone(),
                    route: call(),
                    message,
                },
                ExchangeError::Timeout => AdminError::Timeout {
                    router: self.router.clone(),
                    route: call(),
                    after: self.timeout,
                },
                ExchangeError::TooLarge => AdminError::TooLarge {
                    router: self.router.clone(),
                    route: call(),
                    limit: self.max_answer,
                },
            })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| text.clone());
            return Err(AdminError::Status {
                router: self.router.clone(),
                route: call(),
                status: status.as_u16(),
                message,
                body: text,
            });
        }
        Ok((status, bytes))
    }

    /// A call whose answer is `T`'s JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        route: Route,
        args: &[&str],
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        self.call_query(route, args, "", body).await
    }

    async fn call_query<T: DeserializeOwned>(
        &self,
        route: Route,
        args: &[&str],
        query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        let (_, bytes) = self.send(route, args, query, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| AdminError::Unreadable {
            router: self.router.clone(),
            route: route.call(args),
            message: e.to_string(),
        })
    }

    fn json(&self, route: Route, v: &impl Serialize) -> Result<Vec<u8>, AdminError> {
        serde_json::to_vec(v).map_err(|e| AdminError::Unreadable {
            router: self.router.clone(),
            route: route.call(&[]),
            message: format!("cannot encode the request: {e}"),
        })
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<Health, AdminError> {
        self.call(Route::Healthz, &[], None).await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, AdminError> {
        let (_, bytes) = self.send(Route::Metrics, &[], "", None).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, AdminError> {
        self.call(Route::Status, &[], None).await
    }

    /// `GET /v1/sites`: one page, sorted by host.
    pub async fn list_sites(&self, q: &SiteListQuery) -> Result<SitePage, AdminError> {
        let mut query = format!("?prefix={}&offset={}", routes::encode(&q.prefix), q.offset);
        if let Some(limit) = q.limit {
            query.push_str(&format!("&limit={limit}"));
        }
        self.call_query(Route::ListSites, &[], &query, None).await
    }

    /// `GET /v1/sites/{host}`.
    pub async fn get_site(&self, host: &str) -> Result<Site, AdminError> {
        self.call(Route::GetSite, &[host], None).await
    }

    /// `PUT /v1/sites/{host}`.
    pub async fn put_site(&self, host: &str, change: &SiteChange) -> Result<Applied, AdminError> {
        let body = self.json(Route::PutSite, change)?;
        self.call(Route::PutSite, &[host], Some(body)).await
    }

    /// `DELETE /v1/sites/{host}`.
    pub async fn delete_site(&self, host: &str) -> Result<Removed, AdminError> {
        self.call(Route::DeleteSite, &[host], None).await
    }

    /// `POST /v1/sites`: one atomic batch (a 409 is [`AdminError::is_conflict`]).
    pub async fn apply(&self, batch: &SiteBatch) -> Result<Applied, AdminError> {
        let body = self.json(Route::ApplySites, batch)?;
        self.call(Route::ApplySites, &[], Some(body)).await
    }

    /// `POST /v1/sites/query`.
    pub async fn query(&self, hosts: &[String]) -> Result<Vec<QueriedSite>, AdminError> {
        let body = self.json(
            Route::QuerySites,
            &HostList {
                hosts: hosts.to_vec(),
            },
        )?;
        let a: QueryAnswer = self.call(Route::QuerySites, &[], Some(body)).await?;
        Ok(a.sites)
    }

    /// `POST /v1/sites/remove`.
    pub async fn remove_sites(&self, hosts: &[String]) -> Result<Removed, AdminError> {
        let body = self.json(
            Route::RemoveSites,
            &HostList {
                hosts: hosts.to_vec(),
            },
        )?;
        self.call(Route::RemoveSites, &[], Some(body)).await
    }

    /// `GET /v1/pools`.
    pub async fn pools(&self) -> Result<Vec<Pool>, AdminError> {
        let a: PoolList = self.call(Route::ListPools, &[], None).await?;
        Ok(a.pools)
    }

    /// `PUT /v1/pools/{pool}/servers/{server}`.
    pub async fn set_server(
        &self,
        pool: &str,
        server: &str,
        state: ServerState,
    ) -> Result<ServerStateSet, AdminError> {
        let body = self.json(Route::SetServer, &SetServerState { state })?;
        self.call(Route::SetServer, &[pool, server], Some(body))
            .await
    }

    /// `POST /v1/pools/{pool}/servers` (a 409 when the name is taken).
    pub async fn add_server(
        &self,
        pool: &str,
        server: &NewServer,
    ) -> Result<ServerJoined, AdminError> {
        let body = self.json(Route::AddServer, server)?;
        self.call(Route::AddServer, &[pool], Some(body)).await
    }

    /// `DELETE /v1/pools/{pool}/servers/{server}`.
    pub async fn remove_server(&self, pool: &str, server: &str) -> Result<ServerLeft, AdminError> {
        self.call(Route::RemoveServer, &[pool, server], None).await
    }

    /// `GET /v1/certs`.
    pub async fn certs(&self) -> Result<CertList, AdminError> {
        self.call(Route::ListCerts, &[], None).await
    }

    /// `PUT /v1/certs/{name}` with a JSON pair.
    pub async fn put_cert(&self, name: &str, pair: &CertPair) -> Result<CertStored, AdminError> {
        let body = self.json(Route::PutCert, pair)?;
        self.call(Route::PutCert, &[name], Some(body)).await
    }

    /// `DELETE /v1/certs/{name}`.
    pub async fn delete_cert(&self, name: &str) -> Result<CertRemoved, AdminError> {
        self.call(Route::DeleteCert, &[name], None).await
    }

    /// `GET /v1/tunnels`.
    pub async fn tunnels(&self) -> Result<Vec<Tunnel>, AdminError> {
        let a: TunnelList = self.call(Route::ListTunnels, &[], None).await?;
        Ok(a.tunnels)
    }

    /// `GET /v1/tunnels/{tunnel}`.
    pub async fn tunnel(&self, name: &str) -> Result<Tunnel, AdminError> {
        self.call(Route::GetTunnel, &[name], None).await
    }

    /// `PUT /v1/tunnels/{tunnel}`: new connections go to `upstream`.
    pub async fn repoint_tunnel(&self, name: &str, upstream: &str) -> Result<Tunnel, AdminError> {
        let body = self.json(
            Route::RepointTunnel,
            &Repoint {
                upstream: upstream.to_string(),
            },
        )?;
        self.call(Route::RepointTunnel, &[name], Some(body)).await
    }

    /// `GET /v1/tunnels/{tunnel}/uses`.
    pub async fn tunnel_uses(&self, name: &str) -> Result<TunnelUses, AdminError> {
        self.call(Route::TunnelUses, &[name], None).await
    }

    /// `POST /v1/tunnels/uses/export`.
    pub async fn export_uses(&self) -> Result<UsesExport, AdminError> {
        self.call(Route::ExportUses, &[], None).await
    }

    /// `POST /v1/reload`.
    pub async fn reload(&self) -> Result<ReloadReport, AdminError> {
        let a: Reloaded = self.call(Route::Reload, &[], None).await?;
        Ok(a.reloaded)
    }
}
