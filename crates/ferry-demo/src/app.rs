//! The demo web app, the stand-in for a customer's PHP shop: serves a site's
//! files from its DC's copy of the filer, chosen by Host, and takes orders
//! (`POST /order`), each appended as one line to the site's `orders.log`.
//! Every accepted write says where and when it landed, which is what the
//! checker reads afterwards.

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
            let body = match Limited::new(req.into_body(), 64).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return reply(StatusCode::BAD_REQUEST, "bad body\n"),
            };
            let Some(seq) = std::str::from_utf8(&body)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
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
}
