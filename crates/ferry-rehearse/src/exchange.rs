//! What the rehearsal's own clients share: who sent a request, how it
//! went, and reading an HTTP/1.1 response head off a raw connection.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;

/// What kind of client sent a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The demo's keep-alive browsers: pages, assets, orders.
    Browser,
    Download,
    SlowReader,
    Upload,
    Websocket,
    /// An order written to the site's database (`POST /db/order`).
    DbOrder,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Browser => "browser",
            Kind::Download => "download",
            Kind::SlowReader => "slow_reader",
            Kind::Upload => "upload",
            Kind::Websocket => "websocket",
            Kind::DbOrder => "db_order",
        }
    }
}

/// One request as its client saw it.
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    pub site: usize,
    pub sent_at_ms: u64,
    pub took: Duration,
    pub failed: Option<String>,
    pub bytes: u64,
}

/// The keep-alive connection in `conn` if the last exchange left one, else
/// a new one to `target`.
pub(crate) async fn reuse_or_connect(
    conn: &mut Option<TcpStream>,
    target: std::net::SocketAddr,
) -> Result<TcpStream, String> {
    if let Some(c) = conn.take() {
        return Ok(c);
    }
    let c = TcpStream::connect(target)
        .await
        .map_err(|_| "connect error".to_string())?;
    let _ = c.set_nodelay(true);
    Ok(c)
}

/// `exchange` bounded by `limit`: its result, or a timeout as its failure.
pub(crate) async fn within<T>(
    limit: Duration,
    exchange: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {}s", limit.as_secs())))
}

/// Reads the rest of a small answer's body (up to its first 4 KiB) after
/// the bytes the head's read left in `answer`.
pub(crate) async fn read_small_body(
    conn: &mut TcpStream,
    length: u64,
    answer: &mut Vec<u8>,
) -> Result<(), String> {
    while (answer.len() as u64) < length.min(4096) {
        let mut more = [0u8; 1024];
        let n = conn
            .read(&mut more)
            .await
            .map_err(|_| "body cut short".to_string())?;
        if n == 0 {
            return Err("body cut short".into());
        }
        answer.extend_from_slice(&more[..n]);
    }
    Ok(())
}

/// Reads a response head: (status, content-length, connection: close, the
/// body bytes read past the head).
pub(crate) async fn read_head(conn: &mut TcpStream) -> Result<(u16, u64, bool, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let n = conn
            .read(&mut tmp)
            .await
            .map_err(|_| "connection error".to_string())?;
        if n == 0 {
            return Err("connection error".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "bad status line".to_string())?;
    let (mut length, mut close) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = v.parse::<u64>().ok();
        } else if k == "connection" && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    // An interim answer (100 Continue) has no body.
    let length = match (length, status) {
        (Some(n), _) => n,
        (None, 100..=199) => 0,
        (None, _) => return Err(format!("status {status} without content-length")),
    };
    Ok((status, length, close, buf[end + 4..].to_vec()))
}
