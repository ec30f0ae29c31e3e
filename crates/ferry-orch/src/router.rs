//! The orchestrator's side of the routers' admin API: batches of site
//! changes and queries in chunks, through `ferry-admin-api`'s client; and a
//! plain GET through a traffic listener for the sites' fingerprints.
//!
//! [`SiteChange`] and [`SiteReport`] are the runbook's own records (journaled
//! with the events, so their JSON stays as it is); they become the API's
//! typed bodies here, at the one place the orchestrator talks to routers.

use std::time::Duration;

use ferry_admin_api::sites::{QueriedSite, SiteBatch};
use ferry_admin_api::{AdminClient, AdminError};
use http::Method;
use serde::{Deserialize, Serialize};

use crate::config::RouterSpec;
use crate::error::{OrchError, Result};

pub use ferry_admin_api::sites::Applied;
/// The HTTP client shared by every router call (and the fingerprints).
pub use ferry_admin_api::Http;

/// Hosts per query request: keeps each body far below the router's 32 MiB
/// limit and each answer quick.
pub const QUERY_CHUNK: usize = 5_000;
/// Site changes per admin batch: ~5 MB of JSON, well under the router's
/// 32 MiB body limit, so a unit of millions of sites still applies.
pub const APPLY_CHUNK: usize = 50_000;

/// One site change of a batch, as the runbook journals it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteChange {
    pub host: String,
    pub placement: String,
    pub state: String,
    pub epoch: u64,
}

/// A site as a router reports it (`absent` when it has none of that name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SiteReport {
    pub host: String,
    #[serde(default)]
    pub absent: bool,
    #[serde(default)]
    pub placement: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub in_flight: u64,
}

impl From<QueriedSite> for SiteReport {
    fn from(q: QueriedSite) -> SiteReport {
        match q {
            QueriedSite::Present(s) => SiteReport {
                host: s.host,
                absent: false,
                placement: s.placement,
                state: s.state.as_str().to_string(),
                epoch: s.epoch,
                held: s.held,
                in_flight: s.in_flight,
            },
            QueriedSite::Absent(a) => SiteReport {
                host: a.host,
                absent: true,
                ..SiteReport::default()
            },
        }
    }
}

/// A router's admin API.
#[derive(Clone)]
pub struct RouterClient {
    pub spec: RouterSpec,
    api: AdminClient,
}

impl RouterClient {
    pub fn new(spec: RouterSpec, http: Http, timeout: Duration) -> RouterClient {
        let api = AdminClient::new(spec.name.clone(), &spec.admin, Some(&spec.token))
            .with_http(http)
            .with_timeout(timeout);
        RouterClient { spec, api }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn err(&self, e: AdminError) -> OrchError {
        // A 409 answer to a site change: a site holds a newer epoch.
        let stale = e.is_conflict();
        let message = match &e {
            // The whole answer: a 409 lists the stale sites.
            AdminError::Status {
                route,
                status,
                body,
                ..
            } => format!("{route} answered {status}: {body}"),
            _ => e.detail(),
        };
        OrchError::Router {
            router: self.spec.name.clone(),
            message,
            stale,
        }
    }

    /// Applies `changes` as one atomic batch. A 409 (a site holds a newer
    /// epoch, or the same epoch with other content) is an error with `stale`.
    pub async fn apply(&self, changes: &[SiteChange]) -> Result<Applied> {
        self.apply_in(changes, APPLY_CHUNK).await
    }

    /// [`apply`](Self::apply) in batches of `chunk` changes. Each batch is
    /// atomic at the router; several are not, which is safe: every change
    /// carries its epoch, so a run stopped between batches replays them all
    /// and the router keeps what it already has (the epoch rule).
    pub async fn apply_in(&self, changes: &[SiteChange], chunk: usize) -> Result<Applied> {
        let mut total = Applied::default();
        for batch in changes.chunks(chunk.max(1)) {
            let sites = batch
                .iter()
                .map(|c| self.to_api(c))
                .collect::<Result<Vec<_>>>()?;
            total += self
                .api
                .apply(&SiteBatch { sites })
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(total)
    }

    fn to_api(&self, c: &SiteChange) -> Result<ferry_admin_api::sites::SiteChange> {
        let state =
            serde_json::from_value(serde_json::Value::String(c.state.clone())).map_err(|_| {
                OrchError::Router {
                    router: self.spec.name.clone(),
                    message: format!("site {}: no such state {:?}", c.host, c.state),
                    stale: false,
                }
            })?;
        Ok(ferry_admin_api::sites::SiteChange {
            host: Some(c.host.clone()),
            placement: c.placement.clone(),
            state,
            epoch: c.epoch,
        })
    }

    /// Reads `hosts` (in chunks of [`QUERY_CHUNK`]).
    pub async fn query(&self, hosts: &[String]) -> Result<Vec<SiteReport>> {
        let mut out = Vec::with_capacity(hosts.len());
        for chunk in hosts.chunks(QUERY_CHUNK) {
            let sites = self.api.query(chunk).await.map_err(|e| self.err(e))?;
            out.extend(sites.into_iter().map(SiteReport::from));
        }
        Ok(out)
    }
}

/// A site's answer, for the post-check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// HTTP status, or 0 when there was no answer.
    pub status: u16,
    /// BLAKE3 of the body (hex), or the error when there was no answer.
    pub body: String,
}

/// GET `path` of `host` through the router's traffic address.
pub async fn fingerprint(
    http: &Http,
    traffic: &str,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Fingerprint {
    let url = format!("{traffic}{path}");
    match http
        .request(Method::GET, &url, &[("host", host)], None, timeout)
        .await
    {
        Ok((s, body)) => Fingerprint {
            status: s.as_u16(),
            body: blake3::hash(&body).to_hex().to_string(),
        },
        Err(e) => Fingerprint { status: 0, body: e },
    }
}
