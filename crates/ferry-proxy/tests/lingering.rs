//! An upload the router answers before reading its body (its remote router
//! cannot be reached) must reach the client as that answer, not as a reset
//! connection (issue 18: in `ferry rehearse --partition`, such uploads ended
//! as closed connections 1-4 ms after they were sent, where every other
//! request got its 502).
//!
//! A router in-process (`Proxy::start`, real sockets) forwards one site to a
//! `[[remote]]` that fails in one of three ways: it accepts, reads a little
//! of the request and closes; it accepts and resets at once; nothing listens
//! (refused). The client is the rehearsal's uploader: a POST of 256 KiB
//! written in chunks (so body bytes are in flight when the answer comes),
//! with or without `Expect: 100-continue`, that gives up when a write fails,
//! as an HTTP client sending a body does. Each case runs [`ROUNDS`] times:
//! the reset showed in some rounds only. The rule is ARCHITECTURE.md's
//! "Lingering close".

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const ROUNDS: usize = 50;
const BODY: usize = 256 * 1024;
const CHUNK: usize = 16 * 1024;
/// Only to catch a hang.
const BOUND: Duration = Duration::from_secs(20);
const HOST: &str = "upload.example";
const TOKEN: &str = "lingering-test-token";

/// How the remote router fails.
#[derive(Clone, Copy, Debug)]
enum Remote {
    /// Accepts, reads the request's first bytes, closes with the rest
    /// unread (the kernel resets the router's connection).
    ReadsThenCloses,
    /// Accepts and resets at once.
    Resets,
    /// Nothing listens.
    Refuses,
}

/// Starts the failing remote; its address.
async fn remote(kind: Remote) -> SocketAddr {
    if let Remote::Refuses = kind {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        return l.local_addr().expect("addr");
    }
    // A small receive buffer: the router's writes of the body block on it,
    // as they did behind the rehearsal's latency relay.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(64).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                match kind {
                    Remote::ReadsThenCloses => {
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf).await;
                    }
                    Remote::Resets => {
                        let _ = s.set_zero_linger();
                    }
                    Remote::Refuses => {}
                }
                drop(s);
            });
        }
    });
    addr
}

struct Router {
    proxy: Arc<Proxy>,
    _dir: tempfile::TempDir,
}

async fn router(remote: SocketAddr) -> Router {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"[router]
name = "dc1"

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:0"

[[remote]]
name = "dc2"
address = "{remote}"

[[site]]
host = "{HOST}"
placement = "remote:dc2"
epoch = 1
"#
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).expect("write config");
    let config = ferry_config::load(&path).expect("config");
    let proxy = Proxy::start(config, Some(path)).await.expect("start proxy");
    Router { proxy, _dir: dir }
}

impl Router {
    fn addr(&self) -> SocketAddr {
        self.proxy.listen_addrs()[0]
    }

    async fn metrics(&self) -> String {
        let admin = self.proxy.admin_addr().expect("admin address");
        let mut s = TcpStream::connect(admin).await.expect("connect");
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Reads up to the end of a response head; the head, or what went wrong.
async fn read_head(c: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(String::from_utf8_lossy(&buf[..i]).into_owned());
        }
        match c.read(&mut tmp).await {
            Ok(0) => return Err(format!("closed after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// One upload as the rehearsal's uploader sends it: the head, the body
/// (after a 100 Continue when `expect`), then the answer's head. A failed
/// write ends it: a client sending a body takes that as the end of the
/// exchange.
async fn upload(router: SocketAddr, expect: bool) -> Result<String, String> {
    let mut c = TcpStream::connect(router)
        .await
        .map_err(|e| e.to_string())?;
    let _ = c.set_nodelay(true);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {BODY}\r\n{}\r\n",
        if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        }
    );
    c.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write head: {e}"))?;
    if expect {
        let interim = read_head(&mut c).await?;
        if !interim.starts_with("HTTP/1.1 100") {
            // A final answer instead: the body is not sent.
            return Ok(interim);
        }
    }
    let chunk = vec![b'u'; CHUNK];
    for _ in 0..BODY / CHUNK {
        c.write_all(&chunk)
            .await
            .map_err(|e| format!("write body: {e}"))?;
        // Paced: body bytes are still on their way when the answer comes.
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
    read_head(&mut c).await
}

/// Runs [`ROUNDS`] uploads through a router to a `kind` remote; fails
/// naming every round whose client did not get the 502.
async fn every_upload_gets_its_502(kind: Remote, expect: bool) {
    let remote = remote(kind).await;
    let r = router(remote).await;
    let mut failed = Vec::new();
    for round in 0..ROUNDS {
        let got = tokio::time::timeout(BOUND, upload(r.addr(), expect))
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()));
        match got {
            Ok(head) if head.starts_with("HTTP/1.1 502") => {}
            Ok(head) => failed.push(format!("round {round}: {}", first_line(&head))),
            Err(e) => failed.push(format!("round {round}: {e}")),
        }
    }
    let metrics = r.metrics().await;
    assert!(
        failed.is_empty(),
        "{kind:?}, expect {expect}: {} of {ROUNDS} uploads got no 502:\n  {}\n{}",
        failed.len(),
        failed.join("\n  "),
        lingering_lines(&metrics)
    );
    // Without Expect the body was on its way: the router read the rest of
    // it before closing, and says so.
    if !expect {
        let discarded = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ferry_lingering_discarded_bytes_total "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        assert!(
            discarded.is_some_and(|n| n > 0),
            "no discarded bytes counted:\n{}",
            lingering_lines(&metrics)
        );
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn lingering_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("ferry_lingering"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn an_upload_to_a_remote_that_closes_mid_request_gets_its_502() {
    every_upload_gets_its_502(Remote::ReadsThenCloses, false).await;
}

#[tokio::test]
async fn an_upload_with_expect_to_a_remote_that_closes_mid_request_gets_its_502() {
    every_upload_gets_its_502(Remote::ReadsThenCloses, true).await;
}

#[tokio::test]
async fn an_upload_to_a_remote_that_resets_gets_its_502() {
    every_upload_gets_its_502(Remote::Resets, false).await;
}

#[tokio::test]
async fn an_upload_with_expect_to_a_remote_that_resets_gets_its_502() {
    every_upload_gets_its_502(Remote::Resets, true).await;
}

#[tokio::test]
async fn an_upload_to_a_remote_that_refuses_gets_its_502() {
    every_upload_gets_its_502(Remote::Refuses, false).await;
}

#[tokio::test]
async fn an_upload_with_expect_to_a_remote_that_refuses_gets_its_502() {
    every_upload_gets_its_502(Remote::Refuses, true).await;
}
