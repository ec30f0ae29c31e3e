//! Lingering close of HTTP/1.1 client connections: when hyper closes a
//! connection, [`Lingering`] shuts down its write side (the client gets
//! every byte of the answer, then end of stream) and reads and discards
//! what the client still sends, until the client closes, or it has sent
//! nothing for [`LINGER_QUIET`], or [`LINGER_TIME`] has passed, or
//! [`LINGER_BYTES`] were read; only then is the socket closed.
//!
//! Why: the router answers some requests without reading their body (a
//! 502 when the remote router or server cannot be reached, a 503 at the
//! hold bound). Closing a socket whose receive buffer still holds bytes
//! makes the kernel send a reset instead of an end of stream, and a reset
//! also meets every body byte the client sends after it: the client's next
//! write fails (broken pipe), and an HTTP client sending a body takes that
//! failed write as the end of the exchange, before it reads the answer
//! waiting in its buffer (RFC 9112, 9.6 "Tear-down"; nginx's
//! `lingering_close`, HAProxy drains the same way). The test is
//! tests/lingering.rs.
//!
//! Bounded for hostile clients: time by [`LINGER_TIME`] (a client that
//! trickles a byte now and then gets no longer), memory by one stack buffer
//! per poll, and the connection keeps its slot of the listener's cap while
//! it lingers (it is still hyper's connection future).
//!
//! Not on upgraded connections: the tunnel passes a side's end of stream on
//! as a write shutdown, and what the client sends next is the tunnel's,
//! not ours to discard ([`LingerSwitch::off`] at a 101).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::settle::Settled;
use crate::stats::LingerEnd;

/// The longest a closing connection reads on (nginx's `lingering_time`
/// is 30 s; an answer's tail crosses a link in milliseconds).
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);
/// The most it reads: a client that sends fast reaches this in
/// milliseconds, and is then reset.
pub(crate) const LINGER_BYTES: u64 = 1 << 20;
/// How long a client may send nothing before the lingering ends (nginx's
/// `lingering_timeout`): one that has sent its body but does not close
/// is not waited for until [`LINGER_TIME`].
pub(crate) const LINGER_QUIET: Duration = Duration::from_millis(500);

/// What is read at a time while lingering (on the stack, per poll).
const SCRATCH: usize = 8 * 1024;

/// Turns the lingering of one connection off (at an upgrade).
#[derive(Clone)]
pub(crate) struct LingerSwitch(Arc<AtomicBool>);

impl LingerSwitch {
    pub fn off(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A client connection whose shutdown lingers (see the module comment).
pub(crate) struct Lingering<S> {
    inner: S,
    armed: Arc<AtomicBool>,
    state: State,
    metrics: Arc<Metrics>,
}

enum State {
    Open,
    Draining(Drain),
    Closed,
}

impl<S> Lingering<S> {
    /// `armed`: whether its shutdown lingers (HTTP/1.1), until switched off.
    pub fn new(inner: S, armed: bool, metrics: Arc<Metrics>) -> (Lingering<S>, LingerSwitch) {
        let flag = Arc::new(AtomicBool::new(armed));
        let io = Lingering {
            inner,
            armed: Arc::clone(&flag),
            state: State::Open,
            metrics,
        };
        (io, LingerSwitch(flag))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lingering<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<S> {
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

    /// The write side's shutdown, then (armed) the lingering: ready once
    /// it has ended. A failed shutdown (the client is gone) does not linger.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    if !this.armed.load(Ordering::Acquire) {
                        this.state = State::Closed;
                        return Poll::Ready(Ok(()));
                    }
                    this.state = State::Draining(Drain::new(Instant::now()));
                }
                State::Draining(drain) => {
                    let end = ready!(drain.poll(&mut this.inner, cx));
                    this.metrics.lingering.count(end, drain.discarded);
                    tracing::trace!(?end, discarded = drain.discarded, "lingering close ended");
                    this.state = State::Closed;
                    return Poll::Ready(Ok(()));
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Reading and discarding until one of the bounds.
struct Drain {
    until: Instant,
    last_byte: Instant,
    discarded: u64,
    /// Wakes at the nearer of `until` and `last_byte + LINGER_QUIET` as
    /// they were when it was set; checked (and set again) when it fires.
    /// A `Settled` sleep: a process that was not scheduled for a while
    /// reads what arrived meanwhile before it judges the client quiet.
    timer: Pin<Box<Settled>>,
}

impl Drain {
    fn new(now: Instant) -> Drain {
        let until = now + LINGER_TIME;
        Drain {
            until,
            last_byte: now,
            discarded: 0,
            timer: Box::pin(Settled::until((now + LINGER_QUIET).min(until))),
        }
    }

    fn poll<S: AsyncRead + Unpin>(&mut self, io: &mut S, cx: &mut Context<'_>) -> Poll<LingerEnd> {
        let mut scratch = [0u8; SCRATCH];
        loop {
            // The byte bound also bounds this loop against a client whose
            // bytes are always ready.
            loop {
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                        return Poll::Ready(LingerEnd::ClientClosed)
                    }
                    Poll::Ready(Ok(())) => {
                        self.discarded += buf.filled().len() as u64;
                        self.last_byte = Instant::now();
                        if self.discarded >= LINGER_BYTES {
                            return Poll::Ready(LingerEnd::ByteLimit);
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(LingerEnd::Error),
                    Poll::Pending => break,
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            if now >= self.until {
                return Poll::Ready(LingerEnd::TimeLimit);
            }
            let quiet_at = self.last_byte + LINGER_QUIET;
            if now >= quiet_at {
                return Poll::Ready(LingerEnd::Quiet);
            }
            // Bytes came since the timer was set: wait on.
            self.timer = Box::pin(Settled::until(quiet_at.min(self.until)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A lingering server end over a pipe; the client end and the metrics.
    fn pipe(armed: bool) -> (Lingering<DuplexStream>, DuplexStream, Arc<Metrics>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let metrics = Arc::new(Metrics::default());
        let (io, _switch) = Lingering::new(server, armed, Arc::clone(&metrics));
        (io, client, metrics)
    }

    /// Shuts `io` down; how long that took.
    async fn shut(mut io: Lingering<DuplexStream>) -> Duration {
        let t0 = Instant::now();
        io.shutdown().await.expect("shutdown");
        t0.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn it_reads_until_the_client_closes_and_the_client_sees_the_answer_end() {
        let (mut io, mut client, metrics) = pipe(true);
        io.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            .await
            .unwrap();
        client.write_all(&[b'x'; 10_000]).await.unwrap();
        let closing = tokio::spawn(shut(io));
        // The client reads the answer to its end, then closes.
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 502"));
        drop(client);
        assert_eq!(closing.await.unwrap(), Duration::ZERO);
        let l = &metrics.lingering;
        assert_eq!(l.ended(LingerEnd::ClientClosed), 1);
        let text = render(&metrics);
        assert!(
            text.contains("ferry_lingering_discarded_bytes_total 10000"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_neither_sends_nor_closes_is_left_after_the_quiet_bound() {
        let (io, _client, metrics) = pipe(true);
        assert_eq!(shut(io).await, LINGER_QUIET);
        assert_eq!(metrics.lingering.ended(LingerEnd::Quiet), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_trickles_is_left_at_the_time_bound() {
        let (io, mut client, metrics) = pipe(true);
        let closing = tokio::spawn(shut(io));
        // A byte every 100 ms: never quiet for LINGER_QUIET.
        let trickle = tokio::spawn(async move {
            while client.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let took = closing.await.unwrap();
        assert!(
            took >= LINGER_TIME && took < LINGER_TIME + Duration::from_millis(10),
            "{took:?}"
        );
        assert_eq!(metrics.lingering.ended(LingerEnd::TimeLimit), 1);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_floods_is_left_at_the_byte_bound() {
        let (io, mut client, metrics) = pipe(true);
        let closing = tokio::spawn(shut(io));
        let flood = tokio::spawn(async move {
            let chunk = [b'x'; 16 * 1024];
            let mut sent = 0u64;
            while client.write_all(&chunk).await.is_ok() {
                sent += chunk.len() as u64;
            }
            sent
        });
        assert_eq!(closing.await.unwrap(), Duration::ZERO);
        assert_eq!(metrics.lingering.ended(LingerEnd::ByteLimit), 1);
        // The server end is dropped: the flood's writes fail soon after.
        let sent = flood.await.unwrap();
        assert!(sent < LINGER_BYTES + 200 * 1024, "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn switched_off_it_only_shuts_down() {
        let (client, server) = tokio::io::duplex(1024);
        let metrics = Arc::new(Metrics::default());
        let (io, switch) = Lingering::new(server, true, Arc::clone(&metrics));
        switch.off();
        assert_eq!(shut(io).await, Duration::ZERO);
        assert_eq!(render(&metrics).matches("} 0\n").count(), 5);
        drop(client);
    }

    fn render(m: &Metrics) -> String {
        let mut out = String::new();
        m.lingering.render(&mut out);
        out
    }
}
