//! The usual request of a plain HTTP/1.1 connection (a keep-alive `GET` or
//! `HEAD` without a body) read and answered in the connection's own task,
//! without hyper's server: its dispatcher, the boxed request future and the
//! response's re-encoding cost about a third of the router's user-space
//! instructions a request (callgrind, `bench/proxy-vs-haproxy/cg.sh`).
//!
//! Only what is plainly simple is taken. Anything else (a body, an upgrade,
//! `Expect`, `Connection: close`, HTTP/1.0, a head httparse or `http`
//! refuses, one over 64 KB) is handed to hyper
//! (`server::serve_http`) at a request boundary, with the bytes read so far,
//! and the connection stays hyper's to its end: hyper's limits, error
//! answers, header deadline and lingering close apply to it unchanged. A
//! head split over reads (most often the first request of a connection
//! accepted before its head arrived: the sniff reads its first 24 bytes
//! alone) is read here within `header_timeout`, parsed again only when new
//! bytes hold a newline; one not whole by then closes the connection, as
//! hyper's header deadline does.
//!
//! Between requests the connection waits at most
//! `min(header_timeout, keepalive_timeout)` (counted in
//! `ferry_keepalive_closed_total` when the keep-alive deadline is the
//! shorter one, as hyper's path does), and closes at a shutdown. Writes
//! keep `SendDeadline`'s bound on a client that stops reading.

use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::deadline::BoxError;
use crate::forward;
use crate::headers::ConnInfo;
use crate::linger::Lingering;
use crate::settle::{Settled, Unread};
use crate::state::Shared;

/// hyper's default for a request head; a head with more goes to hyper.
const MAX_HEADERS: usize = 100;
/// hyper's bound on a request head here (`server.rs`, `max_buf_size`): a
/// larger one that arrived whole in one read is hyper's to refuse.
const MAX_HEAD: usize = 64 * 1024;
/// Read size while waiting for a request.
const READ_CHUNK: usize = 8 * 1024;

/// What serving a connection's simple requests needs.
pub(crate) struct Own {
    pub shared: Arc<Shared>,
    pub info: Arc<ConnInfo>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// The client's socket, asked at the idle deadline for unread bytes.
    pub unread: Unread,
}

/// How the own path left a connection.
pub(crate) enum After<S> {
    /// hyper serves the rest, starting with these bytes.
    HandOver(S, Vec<u8>),
    /// Closed: the client left, idled out, lied about a length, or the
    /// router shuts down.
    Closed,
}

/// Serves the simple requests of a plain HTTP/1.1 connection whose first
/// bytes are `prefix`, until one is not simple or the connection ends.
pub(crate) async fn serve<S>(own: Own, mut io: S, prefix: Vec<u8>) -> After<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK.max(prefix.len()));
    buf.extend_from_slice(&prefix);
    drop(prefix);
    let mut out = Vec::with_capacity(1024);
    let mut waits = Waits::new(&own.shutdown);
    loop {
        let closing = buf.is_empty()
            && (*own.shutdown.borrow()
                || !wait_for_request(&own, &mut io, &mut buf, &mut waits).await);
        if closing {
            return After::Closed;
        }
        let mut head_deadline = None;
        let req = loop {
            match parse(&mut buf) {
                Parsed::Simple(req) => break req,
                // Everything not plainly simple is hyper's; so is a head
                // past hyper's bound, for hyper to refuse (431).
                Parsed::Other => return After::HandOver(io, buf.to_vec()),
                Parsed::Partial if buf.len() > MAX_HEAD => {
                    return After::HandOver(io, buf.to_vec())
                }
                // A head split over reads: most often the first request of
                // a connection accepted before its head arrived (the sniff
                // read its first bytes alone). Read on within
                // `header_timeout` of its first partial parse.
                Parsed::Partial => {
                    let deadline =
                        *head_deadline.get_or_insert_with(|| Instant::now() + own.header_timeout);
                    let more = read_more_of_head(&own, &mut io, &mut buf, &mut waits, deadline);
                    if !more.await {
                        return After::Closed;
                    }
                }
            }
        };
        let head_request = req.method() == Method::HEAD;
        let handling =
            forward::handle_bodiless(Arc::clone(&own.shared), Arc::clone(&own.info), req);
        let resp = match unless_client_leaves(&mut io, &mut buf, handling).await {
            Some(Ok(resp)) => resp,
            Some(Err(never)) => match never {},
            None => return After::Closed,
        };
        let close = *own.shutdown.borrow();
        match write_response(&mut io, resp, head_request, close, &mut out).await {
            Ok(true) => {}
            Ok(false) => {
                // Closed by the router after an answer: lingering, as
                // hyper's connections are (`linger.rs`), so a request the
                // client sent meanwhile does not turn the close into a reset
                // that destroys the answer.
                let metrics = Arc::clone(&own.shared.metrics);
                let (mut io, _switch) = Lingering::new(io, true, metrics);
                let _ = io.shutdown().await;
                return After::Closed;
            }
            Err(_) => return After::Closed,
        }
    }
}

/// The answer, unless the client closes its side first: then the request
/// is dropped, its upstream exchange with it, as hyper does (HTTP/1.1
/// without half-close; a held request of a client that left is not sent on
/// after the hold). Bytes the client sends meanwhile (a pipelined request)
/// are kept for after; then, as in hyper, the socket is not read again
/// until the answer is out.
async fn unless_client_leaves<S, F>(
    io: &mut S,
    buf: &mut BytesMut,
    mut answer: F,
) -> Option<F::Output>
where
    S: AsyncRead + Unpin,
    F: std::future::Future + Unpin,
{
    let mut watching = buf.is_empty();
    loop {
        tokio::select! {
            biased;
            out = &mut answer => return Some(out),
            read = io.read_buf(buf), if watching => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => watching = false,
            },
        }
    }
}

/// Reads more of a request head that arrived in part, until its bytes
/// may end it (a newline among the new ones: a trickling client is not
/// parsed again for every byte); `false` when the connection is to close:
/// the client left, the head is not whole by `deadline` (hyper's
/// `header_read_timeout` closes such a connection too), a shutdown.
async fn read_more_of_head<S: AsyncRead + Unpin>(
    own: &Own,
    io: &mut S,
    buf: &mut BytesMut,
    waits: &mut Waits,
    deadline: Instant,
) -> bool {
    let settled = crate::settle::sleep_until_read(deadline, own.unread.clone());
    tokio::pin!(settled);
    loop {
        let from = buf.len();
        buf.reserve(READ_CHUNK);
        let more = tokio::select! {
            biased;
            read = io.read_buf(buf) => matches!(read, Ok(n) if n > 0),
            () = waits.stopping.as_mut() => false,
            () = &mut settled => false,
        };
        if !more {
            return false;
        }
        if buf[from..].contains(&b'\n') || buf.len() > MAX_HEAD {
            return true;
        }
    }
}

/// What a connection waits on between requests, made once for its life:
/// a timer or a shutdown waiter made for each wait was put in the runtime's
/// timer wheel, and in the shutdown signal's waiter list, and taken out
/// again, under their locks, at every request.
struct Waits {
    /// The idle deadline, moved on at each wait: while a deadline only
    /// moves later, tokio leaves the timer where it is in its wheel.
    idle: Option<Settled>,
    /// Ready once the router shuts down (or its signal is gone).
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Waits {
    fn new(shutdown: &watch::Receiver<bool>) -> Waits {
        let mut shutdown = shutdown.clone();
        Waits {
            idle: None,
            stopping: Box::pin(async move {
                let _ = shutdown.changed().await;
            }),
        }
    }
}

/// Waits for the next request's first bytes; `false` when the connection
/// is to close (the client left, the idle deadline, a shutdown).
async fn wait_for_request<S: AsyncRead + Unpin>(
    own: &Own,
    io: &mut S,
    buf: &mut BytesMut,
    waits: &mut Waits,
) -> bool {
    let keepalive_first = own.keepalive_timeout <= own.header_timeout;
    let wait = own.keepalive_timeout.min(own.header_timeout);
    let at = Instant::now() + wait;
    let deadline = match &mut waits.idle {
        Some(timer) => {
            timer.reset(at);
            timer
        }
        None => waits.idle.insert(Settled::watching(at, own.unread.clone())),
    };
    buf.reserve(READ_CHUNK);
    tokio::select! {
        // The socket first: a request that arrived while the process was
        // not scheduled is read, not dropped with the connection.
        biased;
        read = io.read_buf(buf) => matches!(read, Ok(n) if n > 0),
        () = waits.stopping.as_mut() => false,
        () = deadline => {
            if keepalive_first {
                let m = &own.shared.metrics;
                m.deadlines.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            false
        }
    }
}

// Not boxed: the request is moved once, into its handler; a box would be
// an allocation a request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Simple(Request<()>),
    /// Whole, but for hyper: a body, an upgrade, an unusual head.
    Other,
    Partial,
}

/// A whole request head at the start of `buf`, taken off it when simple.
/// Header values share the head's bytes (split off `buf`, no copy); the
/// rest of `buf` keeps its allocation for the next read once they are
/// dropped.
fn parse(buf: &mut BytesMut) -> Parsed {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Parsed::Other,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(path)) = (parsed.version, parsed.path) else {
        return Parsed::Other;
    };
    if !path.starts_with('/') {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let path_at = at(path.as_bytes());
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Other;
        };
        if !simple_field(&name, h.value) {
            return Parsed::Other;
        }
        fields.push((name, at(h.value)));
    }
    let head = buf.split_to(len).freeze();
    let slice = |(from, n): (usize, usize)| head.slice(from..from + n);
    let Ok(uri) = Uri::from_maybe_shared(slice(path_at)) else {
        buf.unsplit_head(head);
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value_at) in fields {
        let Ok(value) = HeaderValue::from_maybe_shared(slice(value_at)) else {
            buf.unsplit_head(head);
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Simple(req)
}

/// A header that keeps a request simple: none that frames a body, asks
/// for an upgrade or a `100 Continue`, or says anything in `Connection`
/// beyond `keep-alive` (its default in HTTP/1.1).
fn simple_field(name: &HeaderName, value: &[u8]) -> bool {
    if name == header::CONNECTION {
        return value
            .split(|&b| b == b',')
            .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
    }
    !(name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::EXPECT
        || name == header::TE
        || name == header::TRAILER)
}

/// `BytesMut` has no way to put a split-off head back; the head is kept
/// whole for hyper by copying it in front of the rest (rare: a head that
/// `http` refuses after httparse took it).
trait UnsplitHead {
    fn unsplit_head(&mut self, head: Bytes);
}

impl UnsplitHead for BytesMut {
    fn unsplit_head(&mut self, head: Bytes) {
        let mut whole = BytesMut::with_capacity(head.len() + self.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(self);
        *self = whole;
    }
}

/// How a response body is framed to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes (none for `HEAD`, 204, 304).
    Length(u64),
    Chunked,
}

/// Writes `resp`; `Ok(true)` when the connection can carry another
/// request. The head, and the first part of the body when it is already
/// there, go out in one write.
async fn write_response<S, B>(
    io: &mut S,
    resp: http::Response<B>,
    head_request: bool,
    mut close: bool,
    out: &mut Vec<u8>,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    if status.is_informational() {
        // Only an upgrade's 101 is ever passed on, and those are hyper's.
        return Err(io::Error::other("an interim answer as the final one"));
    }
    close |= parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"));
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    let no_body = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let framing = match (declared, body.size_hint().exact()) {
        _ if no_body => Framing::Length(0),
        (Some(n), _) => Framing::Length(n),
        (None, Some(n)) => {
            if !(head_request && n == 0) {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            Framing::Length(n)
        }
        (None, None) => {
            header_line(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        }
    };
    if !parts.headers.contains_key(header::DATE) {
        date::with(|d| header_line(out, b"date", d));
    }
    for (name, value) in parts.headers.iter() {
        if name == header::CONNECTION {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close {
        header_line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if head_request || no_body {
        // The upstream sent none for these; what the router made is dropped.
        io.write_all(out).await?;
        return Ok(!close);
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::Chunked => 0,
    };
    let mut terminated = false;
    // The first frame when it is already there goes out with the head.
    let mut first = Some(poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await);
    loop {
        let frame = match first.take() {
            Some(Poll::Ready(f)) => f,
            Some(Poll::Pending) | None => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e.into())),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers end a chunked body; a sized one drops them, as
                // hyper does.
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in trailers.iter() {
                        header_line(out, name.as_str().as_bytes(), value.as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    terminated = true;
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(_) => {
                let n = data.len() as u64;
                if n > left {
                    return Err(io::Error::other("response body longer than its length"));
                }
                left -= n;
            }
            Framing::Chunked => {
                let _ = write!(out, "{:x}\r\n", data.len());
            }
        }
        if data.len() >= READ_CHUNK {
            // Large: written from its own buffer, not copied.
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= READ_CHUNK {
            io.write_all(out).await?;
            out.clear();
        }
    }
    if left > 0 {
        return Err(io::Error::other("response body shorter than its length"));
    }
    if framing == Framing::Chunked && !terminated {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(!close)
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `Date` header hyper adds to answers without one, formatted once a
/// second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with(|cell| {
            let mut c = cell.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            f(c.1.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests;
