//! Accept loops: traffic listeners (HTTP/1.1 and h2c on the same port, optional
//! PROXY v2 header, optional TLS with ALPN, see `tls.rs`) and the admin listener. Each loop stops accepting when told,
//! and lets its connections finish.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use ferry_config::ListenerSpec;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::forward::{self, ConnInfo};
use crate::state::Shared;
use crate::tls::{Alpn, TlsState};
use crate::ProxyError;

/// How long a client may take to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts open connections so shutdown can wait for them.
#[derive(Default)]
pub(crate) struct ConnCount {
    open: AtomicUsize,
    zero: Notify,
}

pub(crate) struct ConnGuard(Arc<ConnCount>);

impl ConnCount {
    pub fn enter(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnGuard(Arc::clone(self))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let n = self.zero.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            n.await;
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Binds with SO_REUSEADDR so a restarted router rebinds at once.
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let io = |source| ProxyError::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(io)?;
    }
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&addr.into()).map_err(io)?;
    socket.listen(4096).map_err(io)?;
    TcpListener::from_std(socket.into()).map_err(io)
}

/// A running traffic listener.
pub(crate) struct ListenerHandle {
    pub configured: SocketAddr,
    pub bound: SocketAddr,
    pub spec: Arc<ArcSwap<ListenerSpec>>,
    pub stop: watch::Sender<bool>,
}

/// Starts accepting on `listener`. Connections get the shutdown signal from
/// `shutdown` (whole-proxy stop); `stop` ends only this listener's accept loop.
pub(crate) fn spawn_listener(
    shared: Arc<Shared>,
    listener: TcpListener,
    spec: ListenerSpec,
    shutdown: watch::Receiver<bool>,
    conns: Arc<ConnCount>,
    tls: Arc<ArcSwapOption<TlsState>>,
) -> Result<ListenerHandle, ProxyError> {
    let bound = listener.local_addr().map_err(|source| ProxyError::Bind {
        addr: spec.listen,
        source,
    })?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let configured = spec.listen;
    let spec = Arc::new(ArcSwap::from_pointee(spec));
    let spec_for_loop = Arc::clone(&spec);
    let mut shutdown_accept = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop_rx.changed() => break,
                _ = shutdown_accept.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
            let spec = spec_for_loop.load_full();
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            let guard = conns.enter();
            let tls = Arc::clone(&tls);
            tokio::spawn(async move {
                serve_connection(shared, stream, peer, &spec, shutdown, &tls).await;
                drop(guard);
            });
        }
    });
    Ok(ListenerHandle {
        configured,
        bound,
        spec,
        stop: stop_tx,
    })
}

async fn serve_connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    shutdown: watch::Receiver<bool>,
    tls: &ArcSwapOption<TlsState>,
) {
    let _ = stream.set_nodelay(true);
    let mut client = peer;
    if spec.proxy_protocol {
        match tokio::time::timeout(
            PROXY_HEADER_TIMEOUT,
            crate::proxy_protocol::read(&mut stream),
        )
        .await
        {
            Ok(Ok(h)) => {
                if let Some(src) = h.source {
                    client = src;
                }
            }
            Ok(Err(e)) => {
                shared
                    .metrics
                    .proxy_header_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "refused connection with a bad PROXY header");
                return;
            }
            Err(_) => {
                shared
                    .metrics
                    .proxy_header_errors
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let tls = if spec.tls {
        match tls.load_full() {
            Some(t) => Some(t),
            // Config checking refuses `tls = true` without `[tls]`: only a
            // connection accepted while a reload removes both gets here.
            // Closing is the safe answer (never plain HTTP on a TLS port).
            None => {
                tracing::warn!(%peer, "TLS listener but no [tls] section: connection closed");
                return;
            }
        }
    } else {
        None
    };
    let info = ConnInfo::new(
        client,
        spec.trusted,
        tls.is_some(),
        shared.upstream.affinity(),
    );
    match tls {
        None => serve_http(shared, TokioIo::new(stream), peer, info, None, shutdown).await,
        Some(t) => {
            let Some((stream, alpn)) = crate::tls::handshake(&t, stream, &shared.metrics.tls).await
            else {
                return;
            };
            drop(t);
            serve_http(
                shared,
                TokioIo::new(stream),
                peer,
                info,
                Some(alpn),
                shutdown,
            )
            .await
        }
    }
}

/// Serves HTTP on a connection: HTTP/1.1 or h2c by the client's first bytes
/// on plain listeners; on TLS, the protocol ALPN chose.
async fn serve_http<I>(
    shared: Arc<Shared>,
    io: I,
    peer: SocketAddr,
    info: ConnInfo,
    alpn: Option<Alpn>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| forward::handle(Arc::clone(&shared), info.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match alpn {
        None => builder,
        Some(Alpn::H2) => builder.http2_only(),
        Some(Alpn::Http1) => builder.http1_only(),
    };
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(64 * 1024)
        // Over TLS a vectored write seals each slice (head, body) as its own
        // record: flattened, a small response is one record.
        .writev(alpn.is_none());
    builder.http2().max_concurrent_streams(256);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
