//! A plain HTTP/1.1 exchange with an upstream server, run by the client
//! connection's own task: the request head written in one `write`, the
//! response head parsed from the connection's buffer, the body read as the
//! client takes it.
//!
//! Why not hyper's client here: its connection is a task of its own, so
//! every request crosses two channels (request in, response out) and two
//! task switches, and its body a third channel; the head goes through a
//! header map built for it. For the router's most common request (no body,
//! no upgrade: `upstream::Upstream::send_affine` picks this path) that was
//! about a third of its user-space work a request. Requests with a body,
//! upgrades and remote routers keep hyper's client.
//!
//! Bounds: a response head of at most [`MAX_HEAD`] bytes and
//! [`MAX_HEADERS`] headers, a chunk-size line or trailer section of at most
//! [`MAX_LINE`]; the caller's deadline covers the wait for the head, the
//! body's (`deadline::BodyDeadline`) each wait for body bytes.
//!
//! A connection goes back to its client connection's set (`Home`) only
//! when its response ended exactly where the server said it would, the
//! server keeps it open (HTTP/1.1, no `Connection: close`) and no byte
//! beyond it arrived.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The largest response head read (HAProxy's `tune.bufsize` is 16 KB,
/// nginx's `proxy_buffer_size` 4-8 KB; hyper's client allows ~400 KB).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have (hyper's client: 100).
pub(crate) const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, or trailer section, of a chunked body.
pub(crate) const MAX_LINE: usize = 8 * 1024;
/// How much is asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// An upstream connection this module speaks on.
pub(crate) struct H1Conn {
    io: TcpStream,
    server: std::net::SocketAddr,
    /// Bytes read and not yet used: never more than one response's.
    buf: BytesMut,
}

/// Where a finished exchange's connection goes back to (the client
/// connection's set, `upstream::Affinity`).
pub(crate) trait Home: Send + Sync {
    fn put_back(&self, conn: H1Conn);
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) struct ExchangeFailed {
    pub what: String,
    /// Nothing of an answer came: on a reused connection, the server had
    /// closed it while idle (the request can go again on a new one).
    pub nothing_back: bool,
}

fn failed(what: impl Into<String>, nothing_back: bool) -> ExchangeFailed {
    ExchangeFailed {
        what: what.into(),
        nothing_back,
    }
}

/// How the response's body ends (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes: the connection is not reused.
    UntilClose,
}

/// A parsed response head.
struct Head {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

impl H1Conn {
    pub fn new(io: TcpStream, server: std::net::SocketAddr) -> H1Conn {
        H1Conn {
            io,
            server,
            buf: BytesMut::new(),
        }
    }

    /// The server this connection goes to.
    pub fn server(&self) -> std::net::SocketAddr {
        self.server
    }

    /// Whether a reused connection looks usable: the server has not closed
    /// it, nor sent anything, while it was idle. Asks the socket only when
    /// the runtime saw it become readable (no system call otherwise).
    pub fn is_idle_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self.io.try_read(&mut probe) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            // Closed (0), or bytes nobody asked for.
            Ok(_) => false,
        }
    }

    /// Sends `head` and reads the response head. `head_request`: the
    /// request was HEAD (no body comes back whatever the headers say).
    pub async fn exchange(
        mut self,
        head: &[u8],
        head_request: bool,
        home: Arc<dyn Home>,
    ) -> Result<Response<OwnBody>, ExchangeFailed> {
        if let Err(e) = self.io.write_all(head).await {
            return Err(failed(format!("writing the request: {e}"), true));
        }
        let mut got_bytes = false;
        let head = loop {
            if !self.buf.is_empty() {
                got_bytes = true;
                match self.parse_head(head_request)? {
                    Some((h, rest))
                        if h.response.status().is_informational()
                            && h.response.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        // 100 Continue, 103 Early Hints: the final answer follows.
                        self.buf = into_mut(rest);
                        continue;
                    }
                    Some(found) => break found,
                    None if self.buf.len() >= MAX_HEAD => {
                        return Err(failed(
                            format!("response head longer than {MAX_HEAD} bytes"),
                            false,
                        ))
                    }
                    None => {}
                }
            }
            self.buf.reserve(READ_SIZE);
            match tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf).await {
                Ok(0) => {
                    return Err(failed(
                        "connection closed before a whole response head",
                        !got_bytes,
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(failed(format!("reading the response: {e}"), !got_bytes)),
            }
        };
        let (
            Head {
                response,
                framing,
                keep_alive,
            },
            rest,
        ) = head;
        let (parts, ()) = response.into_parts();
        let home = keep_alive.then_some(home);
        // A whole response already read: the connection goes back now,
        // before the client has even taken the body.
        if let Framing::Length(n) = framing {
            if n == rest.len() as u64 {
                if let Some(home) = home {
                    home.put_back(self);
                }
                return Ok(Response::from_parts(parts, OwnBody(BodyState::Ready(rest))));
            }
        }
        self.buf = into_mut(rest);
        let body = OwnBody(BodyState::Reading(Box::new(Reading {
            conn: self,
            framing,
            chunk: ChunkState::Size,
            home,
        })));
        Ok(Response::from_parts(parts, body))
    }

    /// The response head at the start of the buffer, taken out of it;
    /// `None` while incomplete.
    ///
    /// The buffer is frozen first so that the header values can share its
    /// bytes (no copy, no table of where they are); what follows the head
    /// comes back with it. `Keep-Alive`, and `Connection` unless it names
    /// other headers, are read but left out of the map: hop-by-hop, they
    /// would be removed before the client (`headers::strip_hop_by_hop`).
    fn parse_head(&mut self, head_request: bool) -> Result<Option<(Head, Bytes)>, ExchangeFailed> {
        let bytes = std::mem::take(&mut self.buf).freeze();
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &bytes,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                self.buf = into_mut(bytes);
                return Ok(None);
            }
            Err(e) => return Err(failed(format!("bad response head: {e}"), false)),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| failed(format!("bad response status {code}"), false))?;
        let version = if parsed.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let n = parsed.headers.len();
        let mut headers = HeaderMap::with_capacity(n);
        let (mut length, mut lengths_differ, mut chunked, mut other_coding) =
            (None::<u64>, false, false, false);
        let mut close = version == Version::HTTP_10;
        for h in parsed.headers.iter() {
            let (name, role) = header_name(h.name.as_bytes())?;
            // httparse took only the bytes a `HeaderValue` may hold, so a
            // header left out of the map below refuses nothing it would.
            match role {
                Role::ContentLength => match parse_length(h.value) {
                    Some(v) if length.is_none_or(|l| l == v) => length = Some(v),
                    Some(_) => lengths_differ = true,
                    None => return Err(failed("bad Content-Length in the response", false)),
                },
                Role::TransferEncoding => {
                    // Only the last coding tells the framing (RFC 9112 6.3).
                    let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                    chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                    other_coding |= !chunked;
                }
                Role::Connection => {
                    let mut names_others = false;
                    for t in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")) {
                            names_others = true;
                        }
                    }
                    // Hop-by-hop, removed on the way to the client; kept
                    // only when it names other headers to remove with it
                    // (`headers::strip_hop_by_hop`). nginx sends
                    // `Connection: keep-alive` with every answer.
                    if !names_others {
                        continue;
                    }
                }
                // Hop-by-hop, removed on the way to the client anyway.
                Role::KeepAlive => continue,
                Role::Other => {}
            }
            let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value))
                .map_err(|_| failed(format!("bad value of response header {name}"), false))?;
            headers.append(name, value);
        }
        let bodiless = head_request || status.is_informational() || matches!(code, 204 | 304);
        let has_coding = chunked || other_coding;
        let framing = if bodiless {
            Framing::Length(0)
        } else if has_coding {
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if lengths_differ {
            return Err(failed(
                "response with differing Content-Length values",
                false,
            ));
        } else {
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        // Both a coding and a length: a smuggling attempt or a broken
        // server; the connection is not trusted with another request.
        let keep_alive = !close
            && framing != Framing::UntilClose
            && !(has_coding && length.is_some())
            && status != StatusCode::SWITCHING_PROTOCOLS;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        let rest = bytes.slice(len..);
        Ok(Some((
            Head {
                response,
                framing,
                keep_alive,
            },
            rest,
        )))
    }
}

/// What [`H1Conn::parse_head`] reads in a response header, besides
/// passing it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    Other,
}

/// `Keep-Alive`, which http has no constant for.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A response header's name and role. The names most answers carry are
/// told by their length and one comparison; http's parser (a copy into a
/// lowercase buffer, then its whole table of names) is for the others,
/// which can only be [`Role::Other`]: any spelling of the four names with
/// a role is found first.
fn header_name(raw: &[u8]) -> Result<(HeaderName, Role), ExchangeFailed> {
    let is = |name: &str| raw.eq_ignore_ascii_case(name.as_bytes());
    let known = match raw.len() {
        4 if is("date") => (header::DATE, Role::Other),
        4 if is("etag") => (header::ETAG, Role::Other),
        4 if is("vary") => (header::VARY, Role::Other),
        6 if is("server") => (header::SERVER, Role::Other),
        7 if is("expires") => (header::EXPIRES, Role::Other),
        8 if is("location") => (header::LOCATION, Role::Other),
        10 if is("connection") => (header::CONNECTION, Role::Connection),
        10 if is("keep-alive") => (KEEP_ALIVE.clone(), Role::KeepAlive),
        10 if is("set-cookie") => (header::SET_COOKIE, Role::Other),
        12 if is("content-type") => (header::CONTENT_TYPE, Role::Other),
        13 if is("last-modified") => (header::LAST_MODIFIED, Role::Other),
        13 if is("accept-ranges") => (header::ACCEPT_RANGES, Role::Other),
        13 if is("cache-control") => (header::CACHE_CONTROL, Role::Other),
        14 if is("content-length") => (header::CONTENT_LENGTH, Role::ContentLength),
        16 if is("content-encoding") => (header::CONTENT_ENCODING, Role::Other),
        17 if is("transfer-encoding") => (header::TRANSFER_ENCODING, Role::TransferEncoding),
        _ => {
            let name = HeaderName::from_bytes(raw)
                .map_err(|_| failed("bad response header name", false))?;
            (name, Role::Other)
        }
    };
    Ok(known)
}

/// Bytes back into a buffer to read more into: without a copy when nothing
/// else holds them.
fn into_mut(bytes: Bytes) -> BytesMut {
    bytes
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

/// A Content-Length value: digits only (a list of equal values, as some
/// servers send, is treated by the caller as repeated headers are).
fn parse_length(v: &[u8]) -> Option<u64> {
    let mut all = v.split(|&b| b == b',').map(|p| {
        let p = p.trim_ascii();
        if p.is_empty() || p.len() > 19 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        p.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    });
    let first = all.next()??;
    for next in all {
        if next? != first {
            return None;
        }
    }
    Some(first)
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Finished,
}

/// A response body read from an [`H1Conn`] as the client takes it.
pub(crate) struct OwnBody(BodyState);

impl std::fmt::Debug for OwnBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            BodyState::Ready(_) => "OwnBody(ready)",
            BodyState::Reading(_) => "OwnBody(reading)",
            BodyState::Done => "OwnBody(done)",
        })
    }
}

enum BodyState {
    /// The whole body, read with the head; the connection has gone home.
    Ready(Bytes),
    /// Boxed: most answers are whole with their head (`Ready`), and the
    /// body is moved a few times on its way to the client.
    Reading(Box<Reading>),
    Done,
}

struct Reading {
    conn: H1Conn,
    /// `Length` counts what is left.
    framing: Framing,
    chunk: ChunkState,
    /// Where the connection goes after a clean end; `None`: closed.
    home: Option<Arc<dyn Home>>,
}

/// What one step of a chunked body's reader found in the buffer.
enum Step {
    Frame(Frame<Bytes>),
    End,
    /// More bytes are needed.
    More,
}

impl OwnBody {
    /// Ends the body: the connection goes home when the response ended
    /// exactly at the end of what was read, else it is closed.
    fn finish(&mut self) {
        if let BodyState::Reading(reading) = std::mem::replace(&mut self.0, BodyState::Done) {
            let Reading { conn, home, .. } = *reading;
            if let Some(home) = home.filter(|_| conn.buf.is_empty()) {
                home.put_back(conn);
            }
        }
    }
}

/// One step of the chunked reader over `buf`.
fn chunk_step(buf: &mut BytesMut, state: &mut ChunkState) -> Result<Step, String> {
    loop {
        match *state {
            ChunkState::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => return Ok(Step::More),
                _ => return Err("bad chunk size line in the response body".into()),
            },
            ChunkState::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *state = if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                };
                return Ok(Step::Frame(Frame::data(data)));
            }
            ChunkState::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                buf.advance(2);
                *state = ChunkState::Size;
            }
            ChunkState::Finished => return Ok(Step::End),
            ChunkState::Trailers => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    return Ok(Step::End);
                }
                let mut slots = [httparse::EMPTY_HEADER; 32];
                return match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            let name = HeaderName::from_bytes(f.name.as_bytes());
                            let value = HeaderValue::from_bytes(f.value);
                            if let (Ok(name), Ok(value)) = (name, value) {
                                trailers.append(name, value);
                            }
                        }
                        buf.advance(used);
                        // The trailers frame is the body's last.
                        *state = ChunkState::Finished;
                        Ok(Step::Frame(Frame::trailers(trailers)))
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => Ok(Step::More),
                    _ => Err("bad trailer section in the response body".into()),
                };
            }
        }
    }
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            let (conn, framing, chunk) = match &mut this.0 {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Ready(bytes) => {
                    let bytes = std::mem::take(bytes);
                    this.0 = BodyState::Done;
                    if bytes.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                BodyState::Reading(r) => {
                    let Reading {
                        conn,
                        framing,
                        chunk,
                        ..
                    } = &mut **r;
                    (conn, framing, chunk)
                }
            };
            match framing {
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = conn
                        .buf
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        // Home before the client has written the last
                        // bytes: the next request finds it there.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked => match chunk_step(&mut conn.buf, chunk) {
                    Ok(Step::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => {
                        this.0 = BodyState::Done;
                        return Poll::Ready(Some(Err(std::io::Error::other(e))));
                    }
                },
                _ => {}
            }
            // Nothing usable in the buffer: read more.
            conn.buf.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            ));
            match read {
                Ok(0) if *framing == Framing::UntilClose => {
                    this.0 = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.0 = BodyState::Done;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.0 = BodyState::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyState::Done => true,
            BodyState::Ready(b) => b.is_empty(),
            BodyState::Reading(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Ready(b) => SizeHint::with_exact(b.len() as u64),
            BodyState::Reading(r) => match r.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
