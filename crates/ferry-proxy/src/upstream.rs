//! Connections to upstream servers.
//!
//! - Local pools: each client connection keeps the upstream connections it used
//!   ([`Affinity`]), so a keep-alive client reuses the same upstream connection
//!   with no pool lookup or lock per request. When the client connection closes,
//!   its upstream connections go to a shared idle pool ([`IdlePool`]) that other
//!   client connections draw from before they dial.
//! - Remote routers and health checks: hyper-util's pooled client.
//!
//! Every upstream connection can be upgraded: a 101 hands it to the
//! response (`hyper::upgrade::on`, `tunnel_upgrade.rs`); hyper-util's pooled
//! client does the same and never reuses an upgraded connection.
//! - Remote routers that want a PROXY v2 header: a dedicated connection per
//!   request (it carries one client's address, so it is never shared).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::proxy_protocol;

/// A request body on its way upstream: the client's (cut if it stalls for
/// `body_timeout`) or none.
pub(crate) type UpBody =
    Either<crate::deadline::BodyDeadline<crate::straggler::Cuttable<Incoming>>, Empty<Bytes>>;

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
    idle: Arc<IdlePool>,
}

/// Idle upstream connections per server, left by client connections that closed.
#[derive(Default)]
pub(crate) struct IdlePool {
    by_server: Mutex<HashMap<SocketAddr, Vec<IdleConn>>>,
}

/// An idle connection and since when it has been idle.
type IdleConn = (Instant, SendRequest<UpBody>);

/// Idle connections kept per server, and for how long. The side that reuses
/// an idle connection must give up on it before the side that closes it:
/// a request written into a connection the server is closing for idleness is
/// lost with it (a POST cannot be replayed: the client gets a 502). Servers
/// close idle connections after 5 s (Apache's KeepAliveTimeout), 10 s (a
/// Ferry router's keepalive_timeout, for requests forwarded between
/// datacenters) or 75 s (nginx), so we stop reusing them before the shortest.
/// HAProxy purges idle server connections on a similar clock
/// (pool-purge-delay, 5 s).
const IDLE_PER_SERVER: usize = 256;
const IDLE_FOR: Duration = Duration::from_secs(4);
/// Upstream connections one client connection keeps (HTTP/2 clients may use
/// several at once; path rules send one client to several pools).
const AFFINE_PER_CLIENT: usize = 8;

impl IdlePool {
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<UpBody>> {
        let mut map = self.by_server.lock();
        let list = map.get_mut(&addr)?;
        while let Some((since, tx)) = list.pop() {
            if since.elapsed() < IDLE_FOR && tx.is_ready() {
                return Some(tx);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, tx: SendRequest<UpBody>) {
        if !tx.is_ready() {
            return;
        }
        let mut map = self.by_server.lock();
        let list = map.entry(addr).or_default();
        if list.len() < IDLE_PER_SERVER {
            list.push((Instant::now(), tx));
        }
    }
}

/// The upstream connections of one client connection.
pub(crate) struct Affinity {
    conns: Mutex<Vec<(SocketAddr, SendRequest<UpBody>)>>,
    idle: Arc<IdlePool>,
}

impl Affinity {
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<UpBody>> {
        let mut conns = self.conns.lock();
        let i = conns
            .iter()
            .position(|(a, tx)| *a == addr && tx.is_ready())?;
        Some(conns.swap_remove(i).1)
    }

    fn put(&self, addr: SocketAddr, tx: SendRequest<UpBody>) {
        let mut conns = self.conns.lock();
        if conns.len() < AFFINE_PER_CLIENT {
            conns.push((addr, tx));
        } else {
            drop(conns);
            self.idle.put(addr, tx);
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        for (addr, tx) in self.conns.get_mut().drain(..) {
            self.idle.put(addr, tx);
        }
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_FOR)
            .pool_max_idle_per_host(256)
            .build(connector);
        Upstream {
            client,
            connect_timeout,
            idle: Arc::default(),
        }
    }

    /// A new, empty set of upstream connections for one client connection.
    pub fn affinity(&self) -> Affinity {
        Affinity {
            conns: Mutex::new(Vec::new()),
            idle: Arc::clone(&self.idle),
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<SendRequest<UpBody>, UpstreamError> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Err(_) => {
                return Err(UpstreamError::Connect(format!(
                    "connect to {addr} timed out"
                )))
            }
            Ok(Err(e)) => return Err(UpstreamError::Connect(format!("connect to {addr}: {e}"))),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(format!("handshake with {addr}: {e}")))?;
        tokio::spawn(async move {
            // Ends when the server closes or every sender is dropped; an error
            // here has already been returned to the request that saw it.
            // With upgrades: after a 101 the connection is handed to the
            // response's `OnUpgrade` (`tunnel_upgrade.rs`).
            let _ = conn.with_upgrades().await;
        });
        Ok(tx)
    }

    /// Sends `req` (origin-form URI, Host set) to `addr` over a connection this
    /// client connection already holds, an idle one, or a new one. A reused
    /// connection that turns out closed before the request was written is
    /// replaced transparently (the request was not sent).
    pub async fn send_affine(
        &self,
        affinity: &Affinity,
        addr: SocketAddr,
        req: Request<UpBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let exchange = async {
            let mut req = req;
            let reused = affinity.take(addr).or_else(|| self.idle.take(addr));
            if let Some(mut tx) = reused {
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        affinity.put(addr, tx);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        Some(back) => req = back,
                        None => return Err(UpstreamError::Exchange(error_chain(&e.into_error()))),
                    },
                }
            }
            // Boxed: dialing happens once per upstream connection; unboxed,
            // its state would be part of every request's future.
            let mut tx = Box::pin(self.dial(addr)).await?;
            match tx.send_request(req).await {
                Ok(resp) => {
                    affinity.put(addr, tx);
                    Ok(resp)
                }
                Err(e) => Err(UpstreamError::Exchange(error_chain(&e))),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
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
                // The connection ends with the exchange (or is handed to the
                // response after a 101); its error, if any, has already
                // reached the sender.
                let _ = conn.with_upgrades().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// A keep-alive HTTP/1.1 server on loopback answering "ok"; counts the
    /// connections it accepted.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, accepted)
    }

    async fn get(up: &Upstream, affinity: &Affinity, addr: SocketAddr) -> String {
        let req = Request::get("/")
            .header(http::header::HOST, "a.com")
            .body(Either::Right(Empty::new()))
            .expect("request");
        let resp = up
            .send_affine(affinity, addr, req, Duration::from_secs(10))
            .await
            .expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_client_connection_keeps_its_upstream_connection() {
        let (addr, accepted) = server().await;
        let up = Upstream::new(Duration::from_secs(1));
        let affinity = up.affinity();
        for _ in 0..3 {
            assert_eq!(get(&up, &affinity, addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_departed_client_leaves_its_connection_to_the_next() {
        let (addr, accepted) = server().await;
        let up = Upstream::new(Duration::from_secs(1));
        let first = up.affinity();
        assert_eq!(get(&up, &first, addr).await, "ok");
        // Its client connection closed: the upstream connection goes idle.
        drop(first);
        let second = up.affinity();
        assert_eq!(get(&up, &second, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Two clients at once need two connections.
        let third = up.affinity();
        assert_eq!(get(&up, &third, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let up = Upstream::new(Duration::from_secs(1));
        let req = Request::get("/")
            .header(http::header::HOST, "a.com")
            .body(Either::Right(Empty::new()))
            .expect("request");
        let got = up
            .send_affine(&up.affinity(), addr, req, Duration::from_secs(10))
            .await;
        assert!(matches!(got, Err(UpstreamError::Connect(_))), "{got:?}");
    }
}
