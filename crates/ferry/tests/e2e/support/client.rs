//! Clients: hyper where many requests are needed, curl where a user's own tool
//! is the point, and raw bytes over TCP for what no well-behaved client sends.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest wait for one answer: only there to turn a hang into a failure.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(15);

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// HTTP/1.1 with keep-alive.
pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/2 over cleartext with prior knowledge (h2c).
pub fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An answer as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// "HTTP/1.1" or "HTTP/2".
    pub version: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Backend` header our backends put on every answer.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }
}

/// `METHOD http://ADDR/PATH` with `Host: host`.
pub fn request(method: Method, addr: SocketAddr, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// Sends `req` and reads the whole answer; a transport error or a hang is `Err`.
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            version: match parts.version {
                http::Version::HTTP_2 => "HTTP/2".to_string(),
                v => format!("{v:?}"),
            },
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(REQUEST_LIMIT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_LIMIT:?}"))?
}

/// GET `path` for `host` from the router at `addr`.
pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Reply, String> {
    send(client, request(Method::GET, addr, host, path)).await
}

/// Runs `curl -sS -i` with `args` and parses what it printed. Panics if curl
/// itself fails (no connection, timeout): callers test answers, not transports.
pub async fn curl(args: &[&str]) -> Reply {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "15"])
        .args(args)
        .output()
        .await
        .expect("running curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("curl {args:?}: no header block in {text:?}"));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?}: bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    Reply {
        status,
        version,
        headers,
        body: body.to_string(),
    }
}

/// What a raw exchange produced.
#[derive(Debug)]
pub struct Raw {
    pub text: String,
    /// The router closed the connection (we read end of file).
    pub closed: bool,
}

impl Raw {
    /// Status of the first response.
    pub fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
    }

    /// How many response heads came back.
    pub fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count()
    }
}

/// Connects to `addr`, from `from` when given (any 127.0.0.0/8 address works).
pub async fn connect(addr: SocketAddr, from: Option<IpAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("binding {ip}: {e}"));
    }
    socket
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// Writes `bytes` on a fresh connection and reads until the router closes it
/// or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Raw {
    raw_on(connect(addr, None).await, bytes, wait).await
}

pub async fn raw_on(mut stream: TcpStream, bytes: &[u8], wait: Duration) -> Raw {
    stream.write_all(bytes).await.expect("writing request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(end, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the answer is a close too.
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    Raw {
        text: String::from_utf8_lossy(&buf).into_owned(),
        closed,
    }
}

/// A minimal TLS 1.3 ClientHello record, with an SNI extension when
/// `server_name` is given: enough for the passthrough listener's parser.
pub fn client_hello(server_name: Option<&str>) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = server_name {
        let n = name.len() as u16;
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&(n + 5).to_be_bytes());
        ext.extend_from_slice(&(n + 3).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&n.to_be_bytes());
        ext.extend_from_slice(name.as_bytes());
    }
    // supported_versions: TLS 1.3.
    ext.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    record.extend_from_slice(&msg);
    record
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming `src`
/// as the client and `dst` as the address it reached.
#[allow(dead_code)] // used by the abuse suite
pub fn proxy_v2_header(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}
