//! Traffic listeners (HTTP/1.1 and h2c on the same port, optional PROXY v2
//! header, optional TLS with ALPN, see `tls.rs`) and the HTTP connection
//! serving they share with the admin API. Accepting, connection caps and
//! accept back-off are `listen.rs`'s; the deadlines of a connection
//! (first bytes, request head, keep-alive, stalled bodies) are applied here
//! with the pieces of `deadline.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use ferry_config::ListenerSpec;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::deadline::{self, Activity, BoxError, Guarded, Prefixed, SendDeadline, Sniffed};
use crate::forward;
use crate::h1_server;
use crate::headers::ConnInfo;
use crate::linger::Lingering;
use crate::listen::{self, Cap};
use crate::state::Shared;
use crate::stats::ListenerKind;
use crate::tls::{Alpn, TlsState};
use crate::ProxyError;

/// HTTP/2 pings while streams are open: a peer that stops answering for
/// the timeout is gone (a dead peer's streams would otherwise wait for TCP
/// to notice, minutes later). HAProxy and nginx do not ping; h2o and
/// Envoy's defaults are of this order.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection closed for idleness may take to finish its
/// GOAWAY exchange.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

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

/// A running traffic listener.
pub(crate) struct ListenerHandle {
    pub configured: SocketAddr,
    pub bound: SocketAddr,
    pub spec: Arc<ArcSwap<ListenerSpec>>,
    pub stop: watch::Sender<bool>,
}

/// Starts accepting on `group` (one socket per worker runtime, see
/// `listen::bind_group`). Connections get the shutdown signal from
/// `shutdown` (whole-proxy stop); `stop` ends only this listener's accept
/// loops. A connection holds a slot of the listener's own cap (if it has
/// one, fixed when it is bound; shared by the listener's sockets) and of the
/// router's `traffic` cap.
pub(crate) fn spawn_listener(
    shared: Arc<Shared>,
    group: Vec<(Handle, TcpListener)>,
    spec: ListenerSpec,
    shutdown: watch::Receiver<bool>,
    conns: Arc<ConnCount>,
    tls: Arc<ArcSwapOption<TlsState>>,
    traffic: Cap,
) -> Result<ListenerHandle, ProxyError> {
    let bound = match group.first().map(|(_, l)| l.local_addr()) {
        Some(Ok(a)) => a,
        Some(Err(source)) => {
            return Err(ProxyError::Bind {
                addr: spec.listen,
                source,
            })
        }
        None => {
            return Err(ProxyError::Bind {
                addr: spec.listen,
                source: std::io::Error::other("no worker runtime to listen on"),
            })
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let configured = spec.listen;
    let mut caps = Vec::with_capacity(2);
    if let Some(n) = spec.max_connections {
        caps.push(Cap::new(n));
    }
    caps.push(traffic);
    let spec = Arc::new(ArcSwap::from_pointee(spec));
    for (on, listener) in group {
        let spec_for_loop = Arc::clone(&spec);
        let shared = Arc::clone(&shared);
        let conns = Arc::clone(&conns);
        let tls = Arc::clone(&tls);
        let shutdown_conn = shutdown.clone();
        listen::spawn_on(
            &on,
            ListenerKind::Http,
            listener,
            caps.clone(),
            Arc::clone(&shared.metrics),
            Some(stop_rx.clone()),
            shutdown.clone(),
            move |stream, peer| {
                shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
                let spec = spec_for_loop.load_full();
                let shared = Arc::clone(&shared);
                let shutdown = shutdown_conn.clone();
                let guard = conns.enter();
                let tls = Arc::clone(&tls);
                async move {
                    serve_connection(shared, stream, peer, &spec, shutdown, &tls).await;
                    drop(guard);
                }
            },
        );
    }
    Ok(ListenerHandle {
        configured,
        bound,
        spec,
        stop: stop_tx,
    })
}

/// The deadlines of one HTTP connection (see `deadline.rs`).
#[derive(Clone, Copy)]
pub(crate) struct HttpLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
}

/// What serving one HTTP connection needs besides its I/O and the request
/// handler ([`serve_http`]), filled in by each of its callers.
pub(crate) struct HttpContext {
    pub peer: SocketAddr,
    /// Sniffed on plain listeners, from ALPN on TLS.
    pub proto: Alpn,
    /// The connection is TLS (responses are flattened into one record).
    pub tls: bool,
    pub limits: HttpLimits,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub shutdown: watch::Receiver<bool>,
    /// The client's socket, asked at a deadline for unread bytes.
    pub unread: crate::settle::Unread,
}

/// One client connection of a traffic listener: the PROXY header (trusted
/// listeners), then the TLS handshake or the protocol sniff, then HTTP until
/// the connection ends.
async fn serve_connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    shutdown: watch::Receiver<bool>,
    tls: &ArcSwapOption<TlsState>,
) {
    let _ = stream.set_nodelay(true);
    let settings = shared.settings.load_full();
    // Everything before the first request (PROXY header, protocol sniff)
    // must arrive within first_byte_timeout: a silent connection costs a
    // descriptor and a slot of the cap.
    let first_bytes = Instant::now() + settings.first_byte_timeout;
    let client = if spec.proxy_protocol {
        match client_from_proxy_header(&shared, &mut stream, peer, first_bytes).await {
            Some(client) => client,
            None => return,
        }
    } else {
        peer
    };
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
    let conn = HttpConn {
        peer,
        limits: HttpLimits {
            header_timeout: settings.header_timeout,
            keepalive_timeout: settings.keepalive_timeout,
        },
        body_timeout: settings.body_timeout,
        shutdown,
    };
    drop(settings);
    match tls {
        None => conn.serve_plain(shared, info, stream, first_bytes).await,
        Some(t) => conn.serve_tls(shared, info, stream, t).await,
    }
}

/// Reads the PROXY v2 header of a connection from a trusted listener: the
/// client it names (the peer when it names none), or `None` when the
/// connection is closed (bad or missing header, counted).
async fn client_from_proxy_header(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    first_bytes: Instant,
) -> Option<SocketAddr> {
    let read = crate::proxy_protocol::read(stream);
    let header = crate::settle::timeout_at(first_bytes, read).await;
    if !matches!(header, Ok(Ok(_))) {
        shared
            .metrics
            .proxy_header_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    match header {
        Ok(Ok(h)) => Some(h.source.unwrap_or(peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "refused connection with a bad PROXY header");
            None
        }
        Err(_) => {
            count_silent(shared);
            None
        }
    }
}

/// A connection that sent nothing within `first_byte_timeout`.
fn count_silent(shared: &Shared) {
    shared
        .metrics
        .deadlines
        .first_byte_timeouts
        .fetch_add(1, Ordering::Relaxed);
}

/// A traffic connection past its PROXY header, to be served HTTP once its
/// protocol is known.
struct HttpConn {
    peer: SocketAddr,
    limits: HttpLimits,
    body_timeout: Duration,
    shutdown: watch::Receiver<bool>,
}

impl HttpConn {
    /// Plain HTTP: the first bytes tell HTTP/1.1 from h2c. HTTP/1.1's
    /// simple requests are served by `h1_server.rs` until one is not, then
    /// hyper serves the rest of the connection.
    async fn serve_plain(
        self,
        shared: Arc<Shared>,
        mut info: ConnInfo,
        mut stream: TcpStream,
        first_bytes: Instant,
    ) {
        let Some((kind, prefix)) = deadline::sniff(&mut stream, first_bytes).await else {
            count_silent(&shared);
            return;
        };
        let proto = match kind {
            Sniffed::H2 => Alpn::H2,
            Sniffed::Http1 => Alpn::Http1,
        };
        info.h2 = proto == Alpn::H2;
        let info = Arc::new(info);
        let unread = crate::settle::Unread::of(&stream);
        let io = SendDeadline::new(stream, self.body_timeout, Arc::clone(&shared.metrics));
        let (io, prefix) = match kind {
            Sniffed::H2 => (io, prefix),
            Sniffed::Http1 => {
                let own = h1_server::Own {
                    shared: Arc::clone(&shared),
                    info: Arc::clone(&info),
                    header_timeout: self.limits.header_timeout,
                    keepalive_timeout: self.limits.keepalive_timeout,
                    shutdown: self.shutdown.clone(),
                    unread: unread.clone(),
                };
                match h1_server::serve(own, io, prefix).await {
                    h1_server::After::HandOver(io, rest) => (io, rest),
                    h1_server::After::Closed => return,
                }
            }
        };
        let io = Prefixed::new(prefix, io);
        self.serve(shared, info, io, proto, false, unread).await
    }

    /// TLS: ALPN tells HTTP/2 from HTTP/1.1. No separate first-byte wait:
    /// `[tls] handshake_timeout` bounds the whole handshake, its first byte
    /// included.
    async fn serve_tls(
        self,
        shared: Arc<Shared>,
        mut info: ConnInfo,
        stream: TcpStream,
        tls: Arc<TlsState>,
    ) {
        let unread = crate::settle::Unread::of(&stream);
        let io = SendDeadline::new(stream, self.body_timeout, Arc::clone(&shared.metrics));
        let handshake = crate::tls::handshake(&tls, io, self.peer, &shared.metrics.tls);
        let Some((stream, alpn)) = handshake.await else {
            return;
        };
        // Not kept for the connection's life: a reload may replace it.
        drop(tls);
        info.h2 = alpn == Alpn::H2;
        let info = Arc::new(info);
        self.serve(shared, info, stream, alpn, true, unread).await
    }

    async fn serve<I>(
        self,
        shared: Arc<Shared>,
        info: Arc<ConnInfo>,
        io: I,
        proto: Alpn,
        tls: bool,
        unread: crate::settle::Unread,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = Arc::clone(&shared.metrics);
        let upgraded = Arc::clone(&info);
        let mut shutdown = self.shutdown.clone();
        let handler = move |req| {
            let fut = forward::handle(Arc::clone(&shared), Arc::clone(&info), req);
            async move {
                match fut.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        };
        let cx = HttpContext {
            peer: self.peer,
            proto,
            tls,
            limits: self.limits,
            metrics,
            shutdown: self.shutdown,
            unread,
        };
        serve_http(io, handler, cx).await;
        // An upgraded connection (`tunnel_upgrade.rs`) lives on after
        // hyper's: it keeps its slot until its tunnel ends, or the router
        // shuts down.
        tokio::select! {
            () = upgraded.tunnel_ended() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Serves HTTP on a connection whose protocol is known (sniffed on plain
/// listeners, ALPN on TLS): HTTP/1.1 with `header_timeout` for each request
/// head, or HTTP/2 with pings; on both, the connection is closed once it
/// has had no request in progress for `keepalive_timeout`. Used by the
/// traffic listeners and the admin API.
pub(crate) async fn serve_http<I, H, Fut, B>(io: I, handler: H, cx: HttpContext)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let HttpContext {
        peer,
        proto,
        tls,
        limits,
        metrics,
        mut shutdown,
        unread,
    } = cx;
    let activity = Activity::new();
    // HTTP/1.1 connections the router closes read on a little before they
    // are closed (`linger.rs`): a client still sending a body it was
    // answered without gets that answer, not a reset.
    let (io, linger) = Lingering::new(io, proto == Alpn::Http1, Arc::clone(&metrics));
    let svc = {
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let active = activity.enter();
            let fut = handler(req);
            let linger = linger.clone();
            async move {
                let resp = fut.await;
                // The connection becomes a tunnel: what the client sends
                // after its end of stream is the tunnel's.
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    linger.off();
                }
                Ok::<_, Infallible>(resp.map(|b| Guarded::new(b, active)))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match proto {
        Alpn::H2 => builder.http2_only(),
        Alpn::Http1 => builder.http1_only(),
    };
    builder
        .http1()
        // The timer starts when hyper waits for a head, so it bounds the
        // idle time between keep-alive requests as well as the head itself.
        .timer(crate::settle::SettledTimer(unread.clone()))
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        // Over TLS a vectored write seals each slice (head, body) as its own
        // record: flattened, a small response is one record.
        .writev(!tls);
    builder
        .http2()
        .timer(crate::settle::SettledTimer(unread.clone()))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    // With upgrades: a request the router proxies as an HTTP/1.1 upgrade
    // (a WebSocket, `tunnel_upgrade.rs`) takes the connection over after
    // its 101; the connection future then ends and the tunnel goes on.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    loop {
        let wake = activity
            .idle_deadline(limits.keepalive_timeout)
            .unwrap_or_else(|| Instant::now() + limits.keepalive_timeout);
        // The connection first: when the process was not scheduled for a
        // while (a stalled VM, SIGSTOP), the idle timer and a request that
        // arrived meanwhile are ready together; polling the connection first
        // reads the request (no longer idle), where a random pick closed the
        // connection with the request unread (a POST's 502 at the client).
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::trace!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            _ = crate::settle::sleep_until_read(wake, unread.clone()) => {
                let idle = activity
                    .idle_deadline(limits.keepalive_timeout)
                    .is_some_and(|at| at <= Instant::now());
                if idle {
                    metrics.deadlines.idle_closed.fetch_add(1, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: HttpLimits = HttpLimits {
        header_timeout: Duration::from_secs(60),
        keepalive_timeout: Duration::from_secs(10),
    };

    /// Serves `handler` on one end of a duplex pipe; returns the other end.
    fn serve_one<H, Fut>(
        handler: H,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> tokio::io::DuplexStream
    where
        H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, shutdown) = watch::channel(false);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        tokio::spawn(async move {
            let cx = HttpContext {
                peer,
                proto: Alpn::Http1,
                tls: false,
                limits: LIMITS,
                metrics,
                shutdown,
                unread: crate::settle::Unread::default(),
            };
            serve_http(server, handler, cx).await;
            drop(tx);
        });
        client
    }

    /// Reads until the end of the stream; the bytes read and when it ended.
    async fn read_to_close(c: &mut tokio::io::DuplexStream) -> (String, Instant) {
        let mut text = Vec::new();
        let _ = c.read_to_end(&mut text).await;
        (String::from_utf8_lossy(&text).into_owned(), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keepalive_connection_is_closed_after_the_timeout() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let handler = |_req| async { Response::new(Full::new(Bytes::from_static(b"ok"))) };
        let mut c = serve_one(handler, Arc::clone(&metrics));
        let start = Instant::now();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (text, closed) = read_to_close(&mut c).await;
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
        assert_eq!(closed - start, LIMITS.keepalive_timeout);
        assert_eq!(metrics.deadlines.idle_closed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_is_not_idle() {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        // An answer that takes three keep-alive periods.
        let handler = |_req| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(Full::new(Bytes::from_static(b"late")))
        };
        let mut c = serve_one(handler, Arc::clone(&metrics));
        let start = Instant::now();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (text, closed) = read_to_close(&mut c).await;
        assert!(text.ends_with("late"), "{text}");
        assert_eq!(
            closed - start,
            Duration::from_secs(30) + LIMITS.keepalive_timeout
        );
    }
}
