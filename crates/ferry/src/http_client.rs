//! A small HTTP/1.1 client for the admin API and the demo's traffic.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    pub fn new(timeout: Duration) -> HttpClient {
        HttpClient::from_source(timeout, None)
    }

    /// A client whose connections start from `source` (a loopback alias such
    /// as 127.0.0.2), so a router sees a different client address.
    pub fn from_source(timeout: Duration, source: Option<std::net::IpAddr>) -> HttpClient {
        let mut c = HttpConnector::new();
        c.set_local_address(source);
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(3)));
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(c),
            timeout,
        }
    }

    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("building a request for {url}"))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| anyhow!("{url}: no answer within {:?}", self.timeout))?
            .with_context(|| url.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| anyhow!("{url}: body not received within {:?}", self.timeout))?
            .with_context(|| format!("{url}: reading the body"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            body,
        })
    }
}
