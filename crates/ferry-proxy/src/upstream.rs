//! Connections to upstream servers: a keep-alive pool per server for local pools,
//! and dedicated connections that start with a PROXY v2 header for remote routers
//! that want one (such a connection carries one client's address, so it is never
//! shared between clients).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proxy_protocol;

pub(crate) type UpBody = Either<Incoming, Empty<Bytes>>;

/// Why an upstream exchange failed, and whether it may be retried elsewhere.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection could be made: nothing was sent, a retry is safe.
    Connect(String),
    /// The connection broke after the request may have been sent.
    Exchange(String),
    Timeout,
}

pub(crate) struct Upstream {
    client: Client<HttpConnector, UpBody>,
    connect_timeout: Duration,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream {
            client,
            connect_timeout,
        }
    }

    /// Sends `req` (whose URI is absolute: `http://ADDR/path`) over a pooled connection.
    pub async fn send(
        &self,
        req: Request<UpBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Exchange(error_chain(&e))),
        }
    }

    /// Sends `req` over a new connection to `addr` that begins with a PROXY v2
    /// header naming `client` as the source.
    pub async fn send_with_proxy_header(
        &self,
        addr: SocketAddr,
        client: SocketAddr,
        req: Request<UpBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let connect = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let header = proxy_protocol::encode(client, addr);
            stream.write_all(&header).await?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => return Err(UpstreamError::Connect("connect timed out".into())),
            Ok(Err(e)) => return Err(UpstreamError::Connect(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                // The connection ends with the exchange; its error, if any, has
                // already reached the sender.
                let _ = conn.await;
            });
            sender
                .send_request(req)
                .await
                .map_err(|e| UpstreamError::Exchange(e.to_string()))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
