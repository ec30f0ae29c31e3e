//! HTTP/1.1 upgrades (WebSockets and other protocols, never h2c): after the
//! upstream's 101 the client connection and the upstream connection are
//! spliced, byte for byte, until both sides are done.
//!
//! - `forward.rs` asks ([`crate::headers::upgrade_asked`]), passes the
//!   upgrade up, and on a 101 builds a [`PendingTunnel`] that rides on the
//!   101 response ([`attach`]); `handle` takes it off ([`take`]) and runs it
//!   once hyper has written the 101 ([`PendingTunnel::run`]).
//! - Bounds: `copy_bidirectional`'s fixed buffer per direction (a client
//!   that never reads stops the upstream's bytes at the router's buffer
//!   and the kernel's); `[router] tunnel_idle_timeout` without a byte
//!   either way closes both (`deadline::splice`, HAProxy's `timeout
//!   tunnel`); a side's end of stream is passed on as a write shutdown.
//! - Stragglers: the tunnel keeps its request registered and counted in
//!   flight for its site; at a freeze's drain deadline it is cut, reason
//!   `upgrade` (`straggler.rs`): either side may write at any time.
//! - Counted in `ferry_upgrades_*` (open, total, bytes both ways, how it
//!   ended) and logged in the access log when it ends (status 101, bytes
//!   to the client, duration of the whole tunnel).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_router::{Pick, Tracked};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::Metrics;
use crate::stats::TunnelEnd;
use crate::straggler::InFlight;

/// Everything a tunnel needs once the 101 is on its way to the client.
pub(crate) struct PendingTunnel {
    /// The client connection, once hyper has written the 101.
    pub client: OnUpgrade,
    /// The upstream connection, handed over by its 101.
    pub upstream: OnUpgrade,
    /// Registered for a freeze's drain deadline, marked upgraded.
    pub straggler: InFlight,
    /// Counts the request in flight for its site while the tunnel lives.
    pub in_flight: Tracked,
    /// Counts the connection on its server (local pools).
    pub server: Option<Pick>,
    /// `[router] tunnel_idle_timeout`.
    pub idle: Duration,
    pub metrics: Arc<Metrics>,
}

/// How a tunnel went: for the access log and the debug log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelDone {
    pub to_upstream: u64,
    pub to_client: u64,
    pub end: TunnelEnd,
}

/// The pending tunnel as a response extension (extensions must be
/// `Clone`; only the first taker gets it).
#[derive(Clone)]
struct Slot(Arc<Mutex<Option<PendingTunnel>>>);

/// Puts `tunnel` on the 101 `resp` that starts it.
pub(crate) fn attach<B>(resp: &mut http::Response<B>, tunnel: PendingTunnel) {
    resp.extensions_mut()
        .insert(Slot(Arc::new(Mutex::new(Some(tunnel)))));
}

/// The tunnel `resp` starts, if any.
pub(crate) fn take<B>(resp: &mut http::Response<B>) -> Option<PendingTunnel> {
    resp.extensions_mut()
        .remove::<Slot>()
        .and_then(|s| s.0.lock().take())
}

impl PendingTunnel {
    /// Waits for both connections (bounded by the idle timeout), then
    /// splices them until both are done, the tunnel idles, or a freeze's
    /// drain deadline cuts it.
    pub async fn run(self) -> TunnelDone {
        let PendingTunnel {
            client,
            upstream,
            straggler,
            in_flight,
            server,
            idle,
            metrics,
        } = self;
        metrics.upgrades.total.fetch_add(1, Ordering::Relaxed);
        let _open = Open::enter(Arc::clone(&metrics));
        let to_upstream = AtomicU64::new(0);
        let to_client = AtomicU64::new(0);
        let both = async { tokio::join!(client, upstream) };
        let end = match tokio::time::timeout(idle, both).await {
            Ok((Ok(client), Ok(upstream))) => {
                let mut client = Counted {
                    io: TokioIo::new(client),
                    read: &to_upstream,
                    total: &metrics.upgrades.bytes_to_upstream,
                };
                let mut upstream = Counted {
                    io: TokioIo::new(upstream),
                    read: &to_client,
                    total: &metrics.upgrades.bytes_to_client,
                };
                let splice = crate::deadline::splice(&mut client, &mut upstream, idle);
                match straggler.unless_cut(splice).await {
                    Some(false) => TunnelEnd::Closed,
                    Some(true) => TunnelEnd::Idle,
                    // Dropped here: both connections close, nothing more
                    // reaches the source.
                    None => TunnelEnd::Cut,
                }
            }
            Ok((client, upstream)) => {
                tracing::debug!(
                    client_error = ?client.err(),
                    upstream_error = ?upstream.err(),
                    "an upgrade did not complete"
                );
                TunnelEnd::Failed
            }
            Err(_) => TunnelEnd::Failed,
        };
        metrics.upgrades.ended(end);
        // Counted in flight, and on its server, until here.
        drop((in_flight, server, straggler));
        TunnelDone {
            to_upstream: to_upstream.load(Ordering::Relaxed),
            to_client: to_client.load(Ordering::Relaxed),
            end,
        }
    }
}

/// One open tunnel on the `ferry_upgrades_open` gauge until dropped.
struct Open(Arc<Metrics>);

impl Open {
    fn enter(metrics: Arc<Metrics>) -> Open {
        metrics.upgrades.open.fetch_add(1, Ordering::Relaxed);
        Open(metrics)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.upgrades.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A side of the tunnel that counts the bytes read from it (what goes to
/// the other side), for this tunnel and in all.
struct Counted<'a, T> {
    io: T,
    read: &'a AtomicU64,
    total: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.read.fetch_add(n, Ordering::Relaxed);
            this.total.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
