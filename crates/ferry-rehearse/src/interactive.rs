//! The clients that write and talk back: uploads (a body of 64-256 KiB
//! stored whole at the site, its hash in the answer) and WebSocket sessions
//! (10 messages echoed 50 ms apart, then a close). Each is one [`Record`];
//! every acknowledged upload is also kept, so the checks can find it, whole
//! and once, at the destination after the night.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_demo::topology::Site;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::exchange::{read_head, read_small_body, reuse_or_connect, within, Kind, Record};

/// Longer than the routers' hold_max (30 s): only a hang ends an exchange.
const TIMEOUT: Duration = Duration::from_secs(45);
/// Messages of one WebSocket session, and the pause between them: a
/// session in flight when its site is frozen holds the freeze until it
/// ends (an upgraded connection is cut only at the drain deadline), so
/// sessions are kept short (about 0.5 s) not to dwarf the freezes measured.
const MESSAGES: usize = 10;
const PAUSE: Duration = Duration::from_millis(50);

/// An upload the app acknowledged: where, and what it must find there.
#[derive(Clone, Debug)]
pub struct AckedUpload {
    pub site: usize,
    pub id: String,
    pub bytes: u64,
    pub hash: blake3::Hash,
}

/// What every interactive client shares.
#[derive(Clone)]
pub struct Shared {
    pub sites: Arc<Vec<Site>>,
    pub target: SocketAddr,
    pub stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<Vec<AckedUpload>>>,
}

/// Uploads back to back on one keep-alive connection (a new one after a
/// failure), each to the next site; client `n` names its uploads `u<n>-<seq>`.
pub async fn uploads(c: Shared, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut seq = 0usize;
    while !c.stop.load(Ordering::Relaxed) && !c.sites.is_empty() {
        seq += 1;
        let site = (n * 7 + seq) % c.sites.len();
        let id = format!("u{n}-{seq}");
        let body = body_of(&id);
        let (t0, sent_at_ms) = (Instant::now(), crate::unix_ms());
        let host = c.sites[site].host.clone();
        let r = within(TIMEOUT, upload(&mut conn, c.target, &host, &id, &body)).await;
        let failed = match r {
            Ok(()) => {
                c.acked.lock().push(AckedUpload {
                    site,
                    id,
                    bytes: body.len() as u64,
                    hash: blake3::hash(&body),
                });
                None
            }
            Err(reason) => Some(reason),
        };
        if failed.is_some() {
            conn = None;
        }
        out.push(Record {
            kind: Kind::Upload,
            site,
            sent_at_ms,
            took: t0.elapsed(),
            failed,
            bytes: body.len() as u64,
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// 64-256 KiB that depend on `id` only.
fn body_of(id: &str) -> Vec<u8> {
    let h = blake3::hash(id.as_bytes());
    let len = 64 * 1024 + (h.as_bytes()[0] as usize) * 768;
    let mut body = vec![0u8; len];
    blake3::Hasher::new()
        .update(id.as_bytes())
        .finalize_xof()
        .fill(&mut body);
    body
}

/// One upload on `conn` (opened if none); Ok when the app answered 201
/// with the body's length and hash.
async fn upload(
    conn: &mut Option<TcpStream>,
    target: SocketAddr,
    host: &str,
    id: &str,
    body: &[u8],
) -> Result<(), String> {
    let mut c = reuse_or_connect(conn, target).await?;
    // As curl does for a large body: the body goes only after 100
    // Continue, so an answer given without reading it (a router that
    // cannot reach the site: 502) is read whole instead of lost to a reset.
    let head = format!(
        "POST /upload?id={id} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())
        .await
        .map_err(|_| "connection error".to_string())?;
    let (status, length, close, mut answer) = match read_head(&mut c).await? {
        (100, ..) => {
            c.write_all(body)
                .await
                .map_err(|_| "connection error".to_string())?;
            read_head(&mut c).await?
        }
        // The body was never sent: the connection cannot carry another.
        (status, length, _, answer) => (status, length, true, answer),
    };
    read_small_body(&mut c, length, &mut answer).await?;
    if status != 201 {
        return Err(ferry_demo::load::failure_reason(status, &answer));
    }
    let want = format!("{} {}", body.len(), blake3::hash(body).to_hex());
    if String::from_utf8_lossy(&answer).trim() != want {
        return Err("wrong body".into());
    }
    if !close {
        *conn = Some(c);
    }
    Ok(())
}

/// WebSocket sessions one after the other, each to the next site.
pub async fn websockets(c: Shared, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut next = n;
    while !c.stop.load(Ordering::Relaxed) && !c.sites.is_empty() {
        next += 1;
        let site = next % c.sites.len();
        let (t0, sent_at_ms) = (Instant::now(), crate::unix_ms());
        let host = c.sites[site].host.clone();
        let r = tokio::time::timeout(TIMEOUT, session(c.target, &host)).await;
        let (failed, bytes) = match r {
            Ok(Ok(bytes)) => (None, bytes),
            Ok(Err(reason)) => (Some(reason), 0),
            Err(_) => (Some(format!("timeout after {}s", TIMEOUT.as_secs())), 0),
        };
        out.push(Record {
            kind: Kind::Websocket,
            site,
            sent_at_ms,
            took: t0.elapsed(),
            failed,
            bytes,
        });
        tokio::time::sleep(PAUSE).await;
    }
    out
}

/// One session: the handshake through the router, [`MESSAGES`] echoed,
/// then a close. Ok(bytes echoed).
async fn session(target: SocketAddr, host: &str) -> Result<u64, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|_| "connect error".to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{host}/ws"), stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp.body().clone().unwrap_or_default();
                ferry_demo::load::failure_reason(resp.status().as_u16(), &body)
            }
            e => format!("websocket handshake: {e}"),
        })?;
    let mut bytes = 0u64;
    for i in 0..MESSAGES {
        let text = format!("{host} {i}");
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|_| "websocket cut".to_string())?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == text => bytes += text.len() as u64,
            Some(Ok(_)) => return Err("websocket: wrong echo".into()),
            Some(Err(_)) | None => return Err("websocket cut".into()),
        }
        tokio::time::sleep(PAUSE).await;
    }
    let _ = ws.close(None).await;
    Ok(bytes)
}

/// The check this module adds: every acknowledged upload at the
/// destination, whole.
pub const UPLOADS: &str = "uploads";

/// Every upload the app acknowledged is at the destination after the
/// night, byte for byte (its length and hash as acknowledged).
pub fn check_uploads(
    acked: &[AckedUpload],
    sites: &[Site],
    work: &std::path::Path,
) -> ferry_demo::check::Check {
    let root = work.join(ferry_demo::topology::DESTINATION);
    let mut missing = Vec::new();
    let mut differ = Vec::new();
    for u in acked {
        let Some(site) = sites.get(u.site) else {
            missing.push(u.id.clone());
            continue;
        };
        let path = site.dir(&root).join("uploads").join(&u.id);
        match std::fs::read(&path) {
            Ok(b) if b.len() as u64 == u.bytes && blake3::hash(&b) == u.hash => {}
            Ok(_) => differ.push(format!("{}/{}", site.host, u.id)),
            Err(_) => missing.push(format!("{}/{}", site.host, u.id)),
        }
    }
    let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let mut detail = format!(
        "{} acknowledged uploads; {} missing at {}, {} different",
        acked.len(),
        missing.len(),
        ferry_demo::topology::DESTINATION,
        differ.len()
    );
    if !missing.is_empty() {
        detail.push_str(&format!("; missing: {}", first(&missing)));
    }
    if !differ.is_empty() {
        detail.push_str(&format!("; different: {}", first(&differ)));
    }
    ferry_demo::check::Check::new(
        UPLOADS,
        // None acknowledged is `traffic_mix`'s to judge (no uploader may
        // have run).
        missing.is_empty() && differ.is_empty(),
        detail,
    )
}
