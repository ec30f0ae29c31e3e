//! The plain HTTP/1.1 client under [`AdminClient`](crate::AdminClient), also
//! used for requests through a router's traffic listener (the orchestrator's
//! fingerprints, the fleet's health checks) and for the fleet's calls to its
//! agents' exec servers.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Largest admin answer read (a page of sites, a query of 5,000 hosts, the
/// metrics of a large router are far below it); a larger one is an error,
/// not memory spent on a misbehaving peer.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A pooled HTTP/1.1 client (keep-alive, no Nagle). Cheap to clone: clones
/// share their connections.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

/// Why one exchange failed, before any status was judged.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Not sent, refused, reset, or the body broke off.
    Transport(String),
    /// No whole answer within the timeout.
    Timeout,
    /// The answer's body is larger than the limit.
    TooLarge,
}

impl Http {
    /// Connections give up after 2 s (a router on the same network answers
    /// a SYN in milliseconds; a dead one should not hold a run).
    pub fn new() -> Http {
        Http::with_connect_timeout(Duration::from_secs(2))
    }

    pub fn with_connect_timeout(connect: Duration) -> Http {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(connect));
        Http {
            client: Client::builder(TokioExecutor::new()).build(c),
        }
    }

    /// One request; the whole exchange (body included) bounded by `timeout`,
    /// the body read whole whatever its size. Errors are one line naming
    /// the URL.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        self.exchange(method, url, headers, body, timeout, usize::MAX)
            .await
            .map_err(|e| match e {
                ExchangeError::Transport(m) => format!("{url}: {m}"),
                ExchangeError::Timeout => format!("{url}: no answer within {timeout:?}"),
                ExchangeError::TooLarge => format!("{url}: answer too large"),
            })
    }

    /// Sends `req` and returns the answer as it starts, its body still to
    /// be read (for streamed answers such as an agent's command output).
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.client.request(req).await.map_err(|e| error_chain(&e))
    }

    /// One request whose answer body is at most `limit` bytes.
    pub(crate) async fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ExchangeError::Transport(format!("bad request: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ExchangeError::Transport(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        ExchangeError::TooLarge
                    } else {
                        ExchangeError::Transport(format!("reading the body: {e}"))
                    }
                })?
                .to_bytes();
            Ok((parts.status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout)?
    }
}

/// hyper-util's error says only "client error (Connect)"; its sources say
/// what happened ("Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
