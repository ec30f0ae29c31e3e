//! A small async client for the routers' admin API (docs/admin-api.yaml):
//! apply an atomic batch of site changes, query sites with their held and
//! in-flight counts; and a plain GET through a traffic listener for the
//! sites' fingerprints. Every error names the router.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::config::RouterSpec;
use crate::error::{OrchError, Result};

/// Hosts per query request: keeps each body far below the router's 32 MiB
/// limit and each answer quick.
pub const QUERY_CHUNK: usize = 5_000;
/// Site changes per admin batch: ~5 MB of JSON, well under the router's
/// 32 MiB body limit, so a unit of millions of sites still applies.
pub const APPLY_CHUNK: usize = 50_000;

/// One site change of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteChange {
    pub host: String,
    pub placement: String,
    pub state: String,
    pub epoch: u64,
}

/// A site as a router reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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

#[derive(Deserialize)]
struct QueryAnswer {
    sites: Vec<SiteReport>,
}

/// Counts of a batch the router applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Applied {
    pub added: u64,
    pub changed: u64,
    pub unchanged: u64,
}

/// The HTTP client shared by every router call.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(2)));
        Http {
            client: Client::builder(TokioExecutor::new()).build(c),
        }
    }

    /// One request; the whole exchange (body included) bounded by `timeout`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> std::result::Result<(StatusCode, Bytes), String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("bad request for {url}: {e}"))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the body: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts.status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    }
}

/// A router's admin API.
#[derive(Clone)]
pub struct RouterClient {
    pub spec: RouterSpec,
    http: Http,
    timeout: Duration,
}

impl RouterClient {
    pub fn new(spec: RouterSpec, http: Http, timeout: Duration) -> RouterClient {
        RouterClient {
            spec,
            http,
            timeout,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    fn err(&self, message: String, stale: bool) -> OrchError {
        OrchError::Router {
            router: self.spec.name.clone(),
            message,
            stale,
        }
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.spec.admin);
        let auth = format!("Bearer {}", self.spec.token);
        self.http
            .request(
                Method::POST,
                &url,
                &[("authorization", &auth)],
                Some(body),
                self.timeout,
            )
            .await
            .map_err(|m| self.err(m, false))
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
            let a = self.apply_batch(batch).await?;
            total.added += a.added;
            total.changed += a.changed;
            total.unchanged += a.unchanged;
        }
        Ok(total)
    }

    async fn apply_batch(&self, changes: &[SiteChange]) -> Result<Applied> {
        let body = serde_json::to_vec(&serde_json::json!({ "sites": changes }))
            .map_err(|e| self.err(e.to_string(), false))?;
        let (status, bytes) = self.post("/v1/sites", body).await?;
        match status {
            StatusCode::OK => serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("unreadable batch answer: {e}"), false)),
            StatusCode::CONFLICT => Err(self.err(
                format!(
                    "refused the batch (409): {}",
                    String::from_utf8_lossy(&bytes).trim()
                ),
                true,
            )),
            s => Err(self.err(
                format!(
                    "batch answered {s}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ),
                false,
            )),
        }
    }

    /// Reads `hosts` (in chunks of [`QUERY_CHUNK`]).
    pub async fn query(&self, hosts: &[String]) -> Result<Vec<SiteReport>> {
        let mut out = Vec::with_capacity(hosts.len());
        for chunk in hosts.chunks(QUERY_CHUNK) {
            let body = serde_json::to_vec(&serde_json::json!({ "hosts": chunk }))
                .map_err(|e| self.err(e.to_string(), false))?;
            let (status, bytes) = self.post("/v1/sites/query", body).await?;
            if status != StatusCode::OK {
                return Err(self.err(
                    format!(
                        "query answered {status}: {}",
                        String::from_utf8_lossy(&bytes).trim()
                    ),
                    false,
                ));
            }
            let a: QueryAnswer = serde_json::from_slice(&bytes)
                .map_err(|e| self.err(format!("unreadable query answer: {e}"), false))?;
            out.extend(a.sites);
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
