//! Connections to upstream servers.
//!
//! - Local pools: each client connection keeps the upstream connections it used
//!   ([`Affinity`]), so a keep-alive client reuses the same upstream connection
//!   with no pool lookup or lock per request. When the client connection closes,
//!   its upstream connections go to a shared idle pool ([`IdlePool`]) that other
//!   client connections draw from before they dial.
//! - Requests without a body or an upgrade go over connections spoken by
//!   `upstream_h1.rs` in the client connection's own task; the others over
//!   hyper's client connections. Each kind has its own slots in both sets.
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

use crate::deadline::BoxError;
use crate::proxy_protocol;
use crate::upstream_h1::{H1Conn, Home, OwnBody};

/// An upstream response's body: from hyper's client, or read by
/// `upstream_h1.rs`.
pub(crate) enum UpstreamBody {
    Hyper(Incoming),
    Own(OwnBody),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::pin::Pin;
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Own(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Own(b) => b.size_hint(),
        }
    }
}

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
    own_by_server: Mutex<HashMap<SocketAddr, Vec<(Instant, H1Conn)>>>,
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

    fn take_own(&self, addr: SocketAddr) -> Option<H1Conn> {
        let mut map = self.own_by_server.lock();
        let list = map.get_mut(&addr)?;
        while let Some((since, mut conn)) = list.pop() {
            if since.elapsed() < IDLE_FOR && conn.is_idle_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put_own(&self, mut conn: H1Conn) {
        if !conn.is_idle_open() {
            return;
        }
        let mut map = self.own_by_server.lock();
        let list = map.entry(conn.server()).or_default();
        // The oldest first out: they are the nearest to the server's
        // idle timeout.
        list.retain(|(since, _)| since.elapsed() < IDLE_FOR);
        if list.len() < IDLE_PER_SERVER {
            list.push((Instant::now(), conn));
        }
    }
}

/// The `upstream_h1` connections of one client connection, shared with
/// the response bodies that bring them back when they end.
pub(crate) struct OwnConns {
    conns: Mutex<Vec<H1Conn>>,
    idle: Arc<IdlePool>,
}

impl OwnConns {
    fn take(&self, addr: SocketAddr) -> Option<H1Conn> {
        let mut conns = self.conns.lock();
        let i = conns.iter().position(|c| c.server() == addr)?;
        let mut conn = conns.swap_remove(i);
        drop(conns);
        conn.is_idle_open().then_some(conn)
    }
}

impl Home for OwnConns {
    fn put_back(&self, conn: H1Conn) {
        let mut conns = self.conns.lock();
        if conns.len() < AFFINE_PER_CLIENT {
            conns.push(conn);
        } else {
            drop(conns);
            self.idle.put_own(conn);
        }
    }
}

impl Drop for OwnConns {
    fn drop(&mut self) {
        for conn in self.conns.get_mut().drain(..) {
            self.idle.put_own(conn);
        }
    }
}

/// The upstream connections of one client connection.
pub(crate) struct Affinity {
    conns: Mutex<Vec<(SocketAddr, SendRequest<UpBody>)>>,
    own: Arc<OwnConns>,
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
            own: Arc::new(OwnConns {
                conns: Mutex::new(Vec::new()),
                idle: Arc::clone(&self.idle),
            }),
            idle: Arc::clone(&self.idle),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
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
        Ok(stream)
    }

    /// Sends a request without a body (its whole `head`, from
    /// `upstream_h1::request_head`) to `addr`, over a connection this client
    /// connection already holds, an idle one, or a new one; `upstream_h1`
    /// speaks it in this task. Only for requests that may go twice
    /// (idempotent, no body): one that a reused connection closed under
    /// before any answer goes again on a new connection.
    pub async fn send_own(
        &self,
        affinity: &Affinity,
        addr: SocketAddr,
        head: &[u8],
        head_request: bool,
        timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let home: Arc<dyn Home> = affinity.own.clone();
        let exchange = async {
            let reused = affinity.own.take(addr).or_else(|| self.idle.take_own(addr));
            if let Some(conn) = reused {
                match conn.exchange(head, head_request, Arc::clone(&home)).await {
                    Ok(resp) => return Ok(resp.map(UpstreamBody::Own)),
                    // The server closed it while it was idle: it never
                    // saw the request.
                    Err(e) if e.nothing_back => {}
                    Err(e) => return Err(UpstreamError::Exchange(e.what)),
                }
            }
            // Boxed: dialing happens once per upstream connection.
            let stream = Box::pin(self.connect(addr)).await?;
            match H1Conn::new(stream, addr)
                .exchange(head, head_request, home)
                .await
            {
                Ok(resp) => Ok(resp.map(UpstreamBody::Own)),
                Err(e) => Err(UpstreamError::Exchange(e.what)),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(r) => r,
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<SendRequest<UpBody>, UpstreamError> {
        let stream = self.connect(addr).await?;
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

    /// A GET over `send_own`, as `forward.rs` sends one without a body.
    async fn get_own(up: &Upstream, affinity: &Affinity, addr: SocketAddr) -> String {
        let head = b"GET / HTTP/1.1\r\nhost: a.com\r\n\r\n";
        let resp = up
            .send_own(affinity, addr, head, false, Duration::from_secs(10))
            .await
            .expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn own_connections_follow_their_client_and_then_go_idle() {
        let (addr, accepted) = server().await;
        let up = Upstream::new(Duration::from_secs(1));
        let first = up.affinity();
        for _ in 0..3 {
            assert_eq!(get_own(&up, &first, addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        drop(first);
        let second = up.affinity();
        assert_eq!(get_own(&up, &second, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let third = up.affinity();
        assert_eq!(get_own(&up, &third, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A server that answers one request per connection and closes it
    /// without saying so (as one does when its idle timeout fires just as
    /// the next request leaves): the request goes again on a new
    /// connection, and the client never sees it.
    #[tokio::test]
    async fn a_reused_connection_the_server_closed_is_replaced_unseen() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    // Closed with the answer, unannounced.
                });
            }
        });
        let up = Upstream::new(Duration::from_secs(1));
        let affinity = up.affinity();
        for _ in 0..3 {
            assert_eq!(get_own(&up, &affinity, addr).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
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
