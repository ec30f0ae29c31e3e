//! The router's admin API as the tests use it.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::Value;

use super::client::{self, HttpClient};

/// The bearer token every test config sets.
pub const TOKEN: &str = "e2e-admin-token";

pub struct Admin {
    addr: SocketAddr,
    http: HttpClient,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Admin {
        Admin {
            addr,
            http: client::http1(),
        }
    }

    /// One call with an explicit `Authorization` header (or none). The answer's
    /// body is parsed as JSON when it is JSON, kept as a string otherwise.
    pub async fn call_as(
        &self,
        auth: Option<&str>,
        method: Method,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let reply = client::send(&self.http, req)
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
        let value = serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body));
        (reply.status, value)
    }

    /// A call with the right token and a raw body.
    pub async fn call(&self, method: Method, path: &str, body: &str) -> (u16, Value) {
        self.call_as(Some(&format!("Bearer {TOKEN}")), method, path, body)
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, "").await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::PUT, path, &body.to_string()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::POST, path, &body.to_string()).await
    }

    /// GET /v1/sites/HOST, which must exist.
    pub async fn site(&self, host: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/sites/{host}")).await;
        assert_eq!(status, 200, "GET /v1/sites/{host}: {v}");
        v
    }

    /// PUT /v1/sites/HOST, which must be accepted.
    pub async fn set_site(&self, host: &str, placement: &str, state: &str, epoch: u64) {
        let body = serde_json::json!({"placement": placement, "state": state, "epoch": epoch});
        let (status, v) = self.put(&format!("/v1/sites/{host}"), &body).await;
        assert_eq!(status, 200, "PUT /v1/sites/{host} {body}: {v}");
    }

    /// GET /metrics (with the token: the metrics name servers and nodes).
    pub async fn metrics(&self) -> String {
        let (status, v) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {v}");
        match v {
            Value::String(s) => s,
            other => panic!("/metrics is not text: {other}"),
        }
    }
}

/// The value of one series in a Prometheus text exposition, e.g.
/// `ferry_requests_total{class="2xx",state="active"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
