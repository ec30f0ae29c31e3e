//! The demo web app, the stand-in for a customer's PHP shop: serves a site's
//! files from its DC's copy of the filer, chosen by Host, and takes orders
//! (`POST /order`), each appended as one line to the site's `orders.log`.
//! Every accepted write says where and when it landed, which is what the
//! checker reads afterwards. For the rehearsal's traffic mix it also takes
//! uploads (`POST /upload?id=ID`, stored whole as `uploads/ID` in the site,
//! answered with the content's hash) and echoes WebSocket messages
//! (`GET /ws`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What one app server needs: its DC, its name, and where each site lives.
pub struct AppConfig {
    pub dc: String,
    pub name: String,
    /// Host -> the site's directory in this DC's filer copy.
    pub sites: HashMap<String, PathBuf>,
    /// This DC's database server and the sites' databases (the rehearsal's
    /// `POST /db/order`); none in the demo.
    pub db: Option<crate::app_db::AppDb>,
}

/// A running app server; stops (drops its connections) when `stop` is sent.
pub struct AppServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl AppServer {
    pub async fn start(config: Arc<AppConfig>) -> anyhow::Result<AppServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(listener, config, rx));
        Ok(AppServer { addr, stop })
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn serve(listener: TcpListener, config: Arc<AppConfig>, mut stop: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let config = Arc::clone(&config);
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let config = Arc::clone(&config);
                async move { Ok::<_, Infallible>(handle(&config, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
        // Finished connections are reaped as we go, so the set stays small.
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The Host header without a port, lower-cased.
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let h = h.rsplit_once(':').map_or(h, |(name, _)| name);
    Some(h.to_ascii_lowercase())
}

/// A request path as a relative file path, or None if it could leave the
/// site's directory: only plain segments of [A-Za-z0-9._-], none starting
/// with a dot (so no `..`, no hidden files), no empty segments.
pub fn safe_path(path: &str) -> Option<PathBuf> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(PathBuf::from("index.html"));
    }
    let mut out = PathBuf::new();
    for seg in rest.split('/') {
        let ok = !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

async fn handle(config: &AppConfig, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(dir) = host_of(&req).and_then(|h| config.sites.get(&h).cloned()) else {
        return reply(StatusCode::NOT_FOUND, "no such site\n");
    };
    match (req.method().clone(), req.uri().path()) {
        (Method::POST, "/order") => {
            // Sequence numbers are short; a larger body is not an order.
            let Some(seq) = sequence(req).await else {
                return reply(StatusCode::BAD_REQUEST, "body must be a sequence number\n");
            };
            let micros = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let line = format!("{seq} {} {} {micros}\n", config.dc, config.name);
            match append(dir.join("orders.log"), line.as_bytes()) {
                Ok(()) => reply(StatusCode::CREATED, line),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("write failed: {e}\n"),
                ),
            }
        }
        (Method::POST, "/upload") => upload(&dir, req).await,
        (Method::POST, "/db/order") => db_order(config, req).await,
        (Method::GET, "/ws") => websocket(req),
        (Method::GET | Method::HEAD, path) => {
            let Some(rel) = safe_path(path) else {
                return reply(StatusCode::BAD_REQUEST, "bad path\n");
            };
            match tokio::fs::read(dir.join(rel)).await {
                Ok(bytes) => reply(StatusCode::OK, bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    reply(StatusCode::NOT_FOUND, "not found\n")
                }
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// `POST /db/order` with a sequence number as the body: one row in the
/// site's database (201 with `<seq> <dc> <app>`), 503 when the database
/// refused it, 404 for a site without one.
async fn db_order(config: &AppConfig, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (Some(db), Some(host)) = (config.db.as_ref(), host_of(&req)) else {
        return reply(StatusCode::NOT_FOUND, "no database here\n");
    };
    let Some(seq) = sequence(req).await else {
        return reply(StatusCode::BAD_REQUEST, "body must be a sequence number\n");
    };
    match db.order(&host, seq, &config.dc, &config.name).await {
        Ok(line) => reply(StatusCode::CREATED, line),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// A body of one sequence number (at most 64 bytes).
async fn sequence(req: Request<Incoming>) -> Option<u64> {
    let body = Limited::new(req.into_body(), 64).collect().await.ok()?;
    std::str::from_utf8(&body.to_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The largest upload the app takes.
const MAX_UPLOAD: usize = 4 << 20;

/// `POST /upload?id=ID`: the body stored as the site's `uploads/ID`, whole
/// or not at all (written aside, synced, renamed); answered 201 with
/// `<bytes> <blake3 hex>`. `ID` is letters, digits and `-` only.
async fn upload(dir: &std::path::Path, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let id = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("id="))
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_string);
    let Some(id) = id else {
        return reply(StatusCode::BAD_REQUEST, "upload needs ?id=[A-Za-z0-9-]+\n");
    };
    let body = match Limited::new(req.into_body(), MAX_UPLOAD).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "bad or too large body\n"),
    };
    let dir = dir.join("uploads");
    let stored = tokio::task::spawn_blocking({
        let body = body.clone();
        move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{id}.part"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(&id))
        }
    })
    .await;
    match stored {
        Ok(Ok(())) => reply(
            StatusCode::CREATED,
            format!("{} {}\n", body.len(), blake3::hash(&body).to_hex()),
        ),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("write failed: {e}\n"),
        ),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// `GET /ws` with a WebSocket handshake: 101, then every text or binary
/// message is sent back until the client closes.
fn websocket(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return reply(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n");
    };
    if !upgrade {
        return reply(StatusCode::BAD_REQUEST, "not a WebSocket handshake\n");
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// One `write(2)` on an O_APPEND descriptor: concurrent orders never
/// interleave, and a line is either wholly there or not. The file must exist
/// (it came with the site): a missing copy is an error, not a new empty log.
fn append(path: PathBuf, line: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    let n = f.write(line)?;
    if n != line.len() {
        return Err(std::io::Error::other(format!(
            "short write: {n} of {} bytes",
            line.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::safe_path;
    use std::path::PathBuf;

    #[test]
    fn paths_cannot_leave_the_site() {
        assert_eq!(safe_path("/"), Some(PathBuf::from("index.html")));
        assert_eq!(
            safe_path("/assets/file-01.css"),
            Some(PathBuf::from("assets/file-01.css"))
        );
        for bad in [
            "/../x",
            "/a/../../b",
            "/.hidden",
            "//x",
            "/a//b",
            "/a/",
            "x",
            "/a%2f..",
            "/a\\b",
        ] {
            assert_eq!(safe_path(bad), None, "{bad}");
        }
    }

    /// Raw HTTP/1.1 to the app: the status line and the body.
    async fn ask(app: std::net::SocketAddr, req: &[u8]) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(app).await.unwrap();
        c.write_all(req).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// An upload is stored whole under the site and answered with its
    /// length and hash; an id that could name another path is refused and
    /// writes nothing; a WebSocket message comes back.
    #[tokio::test]
    async fn uploads_are_stored_whole_by_id_and_websocket_messages_echo() {
        use futures_util::{SinkExt, StreamExt};
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("a.test");
        std::fs::create_dir_all(&site).unwrap();
        let config = super::AppConfig {
            dc: "par".into(),
            name: "par-web-1".into(),
            sites: [("a.test".to_string(), site.clone())].into(),
            db: None,
        };
        let app = super::AppServer::start(std::sync::Arc::new(config))
            .await
            .unwrap();

        let body = b"hello upload";
        let req = format!(
            "POST /upload?id=u1-1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (status, answer) = ask(app.addr, &[req.as_bytes(), body].concat()).await;
        assert!(status.contains("201"), "{status}");
        let want = format!("{} {}", body.len(), blake3::hash(body).to_hex());
        assert_eq!(answer.trim(), want);
        assert_eq!(std::fs::read(site.join("uploads/u1-1")).unwrap(), body);

        for id in ["..%2fx", "../x", "", "a/b", "a.b"] {
            let req = format!(
                "POST /upload?id={id} HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
            );
            let (status, _) = ask(app.addr, req.as_bytes()).await;
            assert!(status.contains("400"), "{id}: {status}");
        }
        let stored: Vec<_> = std::fs::read_dir(site.join("uploads")).unwrap().collect();
        assert_eq!(stored.len(), 1, "{stored:?}");

        let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async("ws://a.test/ws", stream)
            .await
            .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::text("ping"))
            .await
            .unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), "ping");
    }
}
