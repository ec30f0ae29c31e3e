//! Deadlines on client connections, so that no connection, request or body
//! is held by a peer that stopped moving:
//!
//! - [`sniff`]: the first bytes of a plain HTTP connection within
//!   `first_byte_timeout` (enough to tell HTTP/1.1 from h2c), kept in a
//!   [`Prefixed`] stream for hyper to read again.
//! - [`SendDeadline`]: a write to the client that stays blocked for
//!   `body_timeout` (the client stopped reading) fails, which ends the
//!   connection and drops its response bodies, and with them their in-flight
//!   counts. A timer inside a response body could not do this: hyper stops
//!   polling the body while the socket is full.
//! - [`BodyDeadline`]: a request body (client to server) or response body
//!   (server to client) that yields no frame for `body_timeout` while it is
//!   being read ends with an error.
//! - [`Activity`]: requests in progress on one client connection, so it is
//!   closed once it has had none for `keepalive_timeout`.
//! - [`splice`]: both directions of a passthrough connection, closed when
//!   no byte moved either way for `idle_timeout`.
//!
//! Stalls are counted in `ferry_body_timeouts_total{stalled=...}`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::stats::Stalled;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2 connection preface a client with prior knowledge sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plain connection said.
pub(crate) enum Sniffed {
    H2,
    Http1,
}

/// Reads the first bytes of a plain connection by `deadline`: at least
/// enough to tell HTTP/1.1 from h2c (the 24 bytes of the h2 preface), and
/// whatever the kernel already holds ([`ReadNow`]). `None`: nothing (or not
/// enough to decide) arrived in time, or the client closed.
pub(crate) async fn sniff<S>(stream: &mut S, deadline: Instant) -> Option<(Sniffed, Vec<u8>)>
where
    S: AsyncRead + ReadNow + Unpin,
{
    let mut buf = match stream.read_now() {
        Now::Bytes(b) => b,
        Now::Closed => return None,
        Now::Nothing => Vec::with_capacity(H2_PREFACE.len()),
    };
    if let Some(kind) = classify(&buf) {
        return Some((kind, buf));
    }
    let read = async {
        loop {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - buf.len();
            let n = stream.read(&mut chunk[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(kind) = classify(&buf) {
                return Some(kind);
            }
        }
    };
    let kind = crate::settle::timeout_at(deadline, read).await.ok()??;
    Some((kind, buf))
}

/// What the first bytes say, if they say enough: anything that leaves the
/// h2 preface is HTTP/1.1.
fn classify(first: &[u8]) -> Option<Sniffed> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Sniffed::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Sniffed::H2)
    } else {
        None
    }
}

/// Bytes a fresh connection's first read takes at most without waiting
/// (a request head of usual size; the rest is read as usual).
const READ_NOW_MAX: usize = 4096;

/// What [`ReadNow::read_now`] found.
pub(crate) enum Now {
    Bytes(Vec<u8>),
    /// The peer closed (or the socket failed) before sending anything.
    Closed,
    /// Nothing yet (or the stream cannot tell): wait for it.
    Nothing,
}

/// The first read of a connection just accepted, without waiting for the
/// runtime. Tokio lets a socket be read only once its I/O driver has
/// reported it readable, and a new socket has no readiness until the driver
/// has run again (after every task queued before it, on a busy thread: the
/// wait that new connections paid on top of busy keep-alive ones). A client
/// has usually sent its request by the time its connection is accepted, so
/// the kernel is asked directly, as HAProxy reads right after accepting.
pub(crate) trait ReadNow {
    fn read_now(&mut self) -> Now;
}

impl ReadNow for tokio::net::TcpStream {
    fn read_now(&mut self) -> Now {
        use std::io::Read;
        let mut chunk = [0u8; READ_NOW_MAX];
        // The socket is non-blocking: nothing there is WouldBlock. Bytes
        // read here are not seen by tokio's readiness, which is only ever
        // cleared by a read that would block: nothing is lost.
        match (&*socket2::SockRef::from(&*self)).read(&mut chunk) {
            Ok(0) => Now::Closed,
            Ok(n) => Now::Bytes(chunk[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Now::Nothing,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Now::Nothing,
            Err(_) => Now::Closed,
        }
    }
}

/// In-memory pipes (tests) are read the usual way.
impl ReadNow for tokio::io::DuplexStream {
    fn read_now(&mut self) -> Now {
        Now::Nothing
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A client stream whose writes fail once one stays blocked for `timeout`.
pub(crate) struct SendDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write is blocked, disarmed when one goes through.
    blocked: Option<Pin<Box<crate::settle::Settled>>>,
    stats: Arc<Metrics>,
}

impl<S> SendDeadline<S> {
    pub fn new(inner: S, timeout: Duration, stats: Arc<Metrics>) -> SendDeadline<S> {
        SendDeadline {
            inner,
            timeout,
            blocked: None,
            stats,
        }
    }

    /// After the inner write said Pending: Pending until the deadline, then
    /// the error that ends the connection.
    fn still_blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .blocked
            .get_or_insert_with(|| Box::pin(crate::settle::sleep_until(Instant::now() + timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.blocked = None;
                self.stats.deadlines.count(Stalled::ClientReceive);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for body_timeout",
                )))
            }
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.still_blocked(cx),
            ready => {
                self.blocked = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}

/// Why a [`BodyDeadline`] body ended early.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the {what} for {timeout:?} (body_timeout)")]
pub(crate) struct BodyStalled {
    what: &'static str,
    timeout: Duration,
}

impl BodyStalled {
    pub fn new(what: &'static str, timeout: Duration) -> BodyStalled {
        BodyStalled { what, timeout }
    }
}

/// A body that fails when, while polled, it yields nothing for `timeout`.
pub(crate) struct BodyDeadline<B> {
    inner: B,
    timeout: Duration,
    waiting: Option<Pin<Box<crate::settle::Settled>>>,
    stalled: Stalled,
    stats: Arc<Metrics>,
}

impl<B> BodyDeadline<B> {
    pub fn new(
        inner: B,
        timeout: Duration,
        stalled: Stalled,
        stats: Arc<Metrics>,
    ) -> BodyDeadline<B> {
        BodyDeadline {
            inner,
            timeout,
            waiting: None,
            stalled,
            stats,
        }
    }
}

impl<B> Body for BodyDeadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.waiting = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this.waiting.get_or_insert_with(|| {
                    Box::pin(crate::settle::sleep_until(Instant::now() + timeout))
                });
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.waiting = None;
                        this.stats.deadlines.count(this.stalled);
                        let what = match this.stalled {
                            Stalled::ClientSend => "request body",
                            Stalled::Upstream | Stalled::ClientReceive => "response body",
                        };
                        tracing::debug!(what, ?timeout, "body stalled: cut");
                        Poll::Ready(Some(Err(Box::new(BodyStalled { what, timeout }))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Requests in progress on one client connection, and since when it has
/// had none.
pub(crate) struct Activity {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// A request begins; it ends when the guard (kept in its response
    /// body) is dropped.
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }

    /// When the connection will have been idle for `limit`, if it is idle
    /// now (`None`: a request is in progress).
    pub fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock() + limit)
    }
}

pub(crate) struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // Stamp first, so a watcher that sees 0 active reads a fresh time.
        *self.0.idle_since.lock() = Instant::now();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress on its
/// connection until it is finished or dropped.
pub(crate) struct Guarded<B> {
    inner: B,
    _active: ActiveGuard,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, active: ActiveGuard) -> Guarded<B> {
        Guarded {
            inner,
            _active: active,
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that stamps the time of each byte moved either way.
struct Touch<'a, S> {
    inner: S,
    last: &'a Mutex<Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Touch<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            *this.last.lock() = Instant::now();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touch<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            *this.last.lock() = Instant::now();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Copies both ways (half-closes passed on) until both sides are done, or
/// no byte moved either way for `idle`. Returns true when cut for idleness.
pub(crate) async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Mutex::new(Instant::now());
    let mut a = Touch {
        inner: a,
        last: &last,
    };
    let mut b = Touch {
        inner: b,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = *last.lock() + idle;
        // The copy first: after a stall of the process, bytes that arrived
        // meanwhile count as activity before the idle timer is looked at.
        tokio::select! {
            biased;
            _ = &mut copy => return false,
            _ = crate::settle::sleep_until(deadline) => {
                if *last.lock() + idle <= Instant::now() {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    #[tokio::test(start_paused = true)]
    async fn sniff_tells_h2_from_http1_and_gives_up_on_silence() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let (kind, bytes) = sniff(&mut server, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(kind, Sniffed::H2));
        assert_eq!(bytes, H2_PREFACE);

        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (kind, bytes) = sniff(&mut server, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(kind, Sniffed::Http1));
        let mut again = Prefixed::new(bytes, server);
        let mut line = [0u8; 16];
        again.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET / HTTP/1.1\r\n");

        // Silent, and a partial preface that stops: both time out.
        let (_client, mut server) = tokio::io::duplex(1024);
        assert!(sniff(&mut server, Instant::now() + Duration::from_secs(1))
            .await
            .is_none());
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PRI * HT").await.unwrap();
        assert!(sniff(&mut server, Instant::now() + Duration::from_secs(1))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn sniff_reads_a_new_connection_without_waiting_for_the_runtime() {
        use std::io::Write;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n";
        client.write_all(request).unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // The request is in the kernel's buffer; the runtime has not run
        // since the socket was registered, so it knows nothing of it.
        let unread = crate::settle::Unread::of(&server);
        let t0 = std::time::Instant::now();
        while !unread.waiting() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "request not delivered"
            );
            std::thread::yield_now();
        }
        let mut sniffing =
            std::pin::pin!(sniff(&mut server, Instant::now() + Duration::from_secs(5)));
        let first = std::future::poll_fn(|cx| Poll::Ready(sniffing.as_mut().poll(cx))).await;
        let Poll::Ready(Some((kind, bytes))) = first else {
            panic!("the first read waited for the runtime");
        };
        assert!(matches!(kind, Sniffed::Http1));
        // The whole request at once, for hyper to read again.
        assert_eq!(bytes, request);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_the_timeout_fails_and_is_counted() {
        let stats = metrics();
        // A peer that reads nothing: the duplex buffer fills.
        let (_reader, writer) = tokio::io::duplex(64);
        let mut w = SendDeadline::new(writer, Duration::from_secs(30), Arc::clone(&stats));
        let start = Instant::now();
        let err = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(stats.deadlines.stalls(Stalled::ClientReceive), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_moving_reader_is_not_cut() {
        let stats = metrics();
        let (mut reader, writer) = tokio::io::duplex(64);
        let mut w = SendDeadline::new(writer, Duration::from_secs(30), Arc::clone(&stats));
        let drain = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += reader.read(&mut buf).await.unwrap();
            }
        });
        w.write_all(&[0u8; 1024]).await.unwrap();
        drain.await.unwrap();
        assert_eq!(stats.deadlines.stalls(Stalled::ClientReceive), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_yielding_fails() {
        let stats = metrics();
        /// One frame, then nothing ever again.
        struct OnceThenSilent(bool);
        impl Body for OnceThenSilent {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                let this = self.get_mut();
                if std::mem::replace(&mut this.0, true) {
                    Poll::Pending
                } else {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
                }
            }
        }
        let mut b = BodyDeadline::new(
            OnceThenSilent(false),
            Duration::from_secs(5),
            Stalled::Upstream,
            Arc::clone(&stats),
        );
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "x");
        let start = Instant::now();
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(stats.deadlines.stalls(Stalled::Upstream), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_is_idle_only_without_requests() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        assert!(a.idle_deadline(limit).is_some());
        let g = a.enter();
        assert!(a.idle_deadline(limit).is_none());
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(g);
        assert_eq!(a.idle_deadline(limit), Some(Instant::now() + limit));
    }

    #[tokio::test(start_paused = true)]
    async fn splice_closes_after_idle_and_not_before() {
        let (mut c1, mut c2) = tokio::io::duplex(1024);
        let (mut u1, mut u2) = tokio::io::duplex(1024);
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            // Traffic every 5 s for 20 s, then silence.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                c1.write_all(b"ping").await.unwrap();
                u2.read_exact(&mut buf[..4]).await.unwrap();
            }
            (c1, u2)
        });
        let start = Instant::now();
        assert!(splice(&mut c2, &mut u1, Duration::from_secs(8)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(28));
        drop(echo.await.unwrap());
    }
}
