//! HTTP/1.1 upgrades through the router: a real WebSocket echo server
//! upstream and a real WebSocket client (tokio-tungstenite on both sides).
//! The router passes the handshake on, answers the upstream's 101 and
//! splices both connections; a refusal is relayed; a silent tunnel closes at
//! `tunnel_idle_timeout`; a frozen site's tunnel is cut at `drain_timeout`
//! (reason `upgrade`) while other traffic goes on, and a new handshake is
//! held until the flip; maintenance answers 503; a remote site's handshake
//! crosses to the other router (plain and PROXY v2); h2c is not passed on.
// tungstenite's handshake callback returns its own large error type.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::support::client;
use crate::support::{metric, pool, router_config, site, workdir, Admin, Deadline, Ferry};

/// Generous bound on anything that should happen at once: only catches hangs.
const HANG: Duration = Duration::from_secs(20);

type Client = WebSocketStream<TcpStream>;

/// A WebSocket echo server on loopback: it greets each connection with
/// "hello", then sends every message back. `/forbidden` is refused with 403
/// before the upgrade; `/flood` sends without end instead of echoing.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut flood = false;
                let Ok(mut ws) =
                    tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp| {
                        handshake(req, resp, &mut flood)
                    })
                    .await
                else {
                    return;
                };
                if ws.send(Message::text("hello")).await.is_err() {
                    return;
                }
                if flood {
                    // Sends until the router stops taking.
                    let chunk = Message::binary(vec![7u8; 64 * 1024]);
                    while ws.send(chunk.clone()).await.is_ok() {}
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The echo server's handshake callback: `/forbidden` gets a 403, `/flood`
/// is noted.
fn handshake(req: &Request, resp: Response, flood: &mut bool) -> Result<Response, ErrorResponse> {
    *flood = req.uri().path() == "/flood";
    if req.uri().path() == "/forbidden" {
        let mut r = ErrorResponse::new(Some("no chat for you".into()));
        *r.status_mut() = http::StatusCode::FORBIDDEN;
        return Err(r);
    }
    Ok(resp)
}

/// A plain HTTP/1.1 server that records each request head and answers 200.
async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    (addr, heads)
}

/// A router with `ws.test` on the echo server and `plain.test` on the
/// recording server; `extra` goes into `[router]`.
async fn router(extra: &str) -> (tempfile::TempDir, Ferry, Arc<Mutex<Vec<String>>>) {
    let dir = workdir();
    let echo = echo_server().await;
    let (plain, heads) = recording_server().await;
    let config = router_config("dc1", extra)
        + &pool("ws", &[("echo", echo)])
        + &pool("plain", &[("rec", plain)])
        + &site("ws.test", "pool:ws", "epoch = 1")
        + &site("plain.test", "pool:plain", "");
    let ferry = Ferry::start(dir.path(), &config);
    (dir, ferry, heads)
}

/// A WebSocket client connected to `ws://HOST/PATH` through the router.
async fn connect(
    router: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(router).await.expect("connect");
    let url = format!("ws://{host}{path}");
    let (ws, resp) = tokio::time::timeout(HANG, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake in time")?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

async fn next_text(ws: &mut Client) -> String {
    match tokio::time::timeout(HANG, ws.next())
        .await
        .expect("a message in time")
    {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Waits until the connection ends (close frame, error or end of stream);
/// returns when.
async fn closed(ws: &mut Client) -> Instant {
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Instant::now(),
            // Control frames are not the end.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_both_ways_through_the_router() {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let extra = format!("access_log = \"{}\"", log.path().display());
    let (_dir, ferry, _) = router(&extra).await;
    let admin = Admin::new(ferry.admin);
    let mut ws = connect(ferry.addr(), "ws.test", "/chat")
        .await
        .expect("upgrade");
    // The server speaks first, then answers.
    assert_eq!(next_text(&mut ws).await, "hello");
    for i in 0..5 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .expect("send");
        assert_eq!(next_text(&mut ws).await, format!("message {i}"));
    }
    // A large binary message: more than the router's buffers, both ways.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send big");
    match tokio::time::timeout(HANG, ws.next())
        .await
        .expect("echo in time")
    {
        Some(Ok(Message::Binary(b))) => assert!(b[..] == big[..], "the echo differs"),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    let m = admin.metrics().await;
    assert_eq!(metric(&m, "ferry_upgrades_total"), Some(1.0));
    assert_eq!(metric(&m, "ferry_upgrades_open"), Some(1.0));
    // The upgraded connection keeps its slot of the listener.
    let open_http = "ferry_open_connections_by_kind{kind=\"http\"}";
    assert_eq!(metric(&m, open_http), Some(1.0), "{m}");
    let site = admin.site("ws.test").await;
    assert_eq!(site["in_flight"], 1, "a tunnel counts in flight: {site}");

    ws.close(None).await.expect("close");
    closed(&mut ws).await;
    drop(ws);
    let deadline = Deadline::new("the tunnel ended and was counted", HANG);
    loop {
        let m = admin.metrics().await;
        if metric(&m, "ferry_upgrades_open") == Some(0.0) && metric(&m, open_http) == Some(0.0) {
            let up = metric(&m, "ferry_upgrade_bytes_total{direction=\"to_upstream\"}");
            let down = metric(&m, "ferry_upgrade_bytes_total{direction=\"to_client\"}");
            assert!(up.unwrap_or(0.0) > 1_000_000.0, "{m}");
            assert!(down.unwrap_or(0.0) > 1_000_000.0, "{m}");
            assert_eq!(
                metric(&m, "ferry_upgrades_closed_total{how=\"closed\"}"),
                Some(1.0)
            );
            break;
        }
        deadline.tick().await;
    }
    assert_eq!(admin.site("ws.test").await["in_flight"], 0);
    // The access log's line comes at the end, with the tunnel's bytes.
    let deadline = Deadline::new("the tunnel's access log line", HANG);
    loop {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("/chat")) {
            assert!(line.contains("\" 101 "), "{line}");
            let bytes: u64 = line
                .split("\" 101 ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|b| b.parse().ok())
                .unwrap_or(0);
            assert!(bytes > 1_000_000, "bytes to the client logged: {line}");
            break;
        }
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_relayed_as_it_came() {
    let (_dir, ferry, _) = router("").await;
    match connect(ferry.addr(), "ws.test", "/forbidden").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = resp.body().as_deref().unwrap_or_default();
            // The upstream ends its body by closing; the router relays it
            // chunked, which the WebSocket client leaves undecoded.
            let body = String::from_utf8_lossy(body);
            assert!(body.contains("no chat for you"), "{body:?}");
        }
        Err(e) => panic!("expected the 403, got {e}"),
        Ok(_) => panic!("expected the 403, got an upgrade"),
    }
    // And the router is fine after it.
    let mut ws = connect(ferry.addr(), "ws.test", "/chat")
        .await
        .expect("upgrade");
    assert_eq!(next_text(&mut ws).await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_closed_at_tunnel_idle_timeout() {
    let (_dir, ferry, _) = router("tunnel_idle_timeout = \"1s\"").await;
    let admin = Admin::new(ferry.admin);
    let mut ws = connect(ferry.addr(), "ws.test", "/quiet")
        .await
        .expect("upgrade");
    assert_eq!(next_text(&mut ws).await, "hello");
    let silent_since = Instant::now();
    let at = closed(&mut ws).await;
    let silent = at - silent_since;
    assert!(
        silent >= Duration::from_millis(900) && silent < Duration::from_secs(10),
        "closed after {silent:?} of silence"
    );
    let deadline = Deadline::new("the idle close counted", HANG);
    while metric(
        &admin.metrics().await,
        "ferry_upgrades_closed_total{how=\"idle\"}",
    ) != Some(1.0)
    {
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sites_websocket_is_cut_at_drain_timeout_and_other_requests_go_on() {
    let (_dir, ferry, _) = router("drain_timeout = \"1s\"").await;
    let admin = Admin::new(ferry.admin);
    let mut ws = connect(ferry.addr(), "ws.test", "/live")
        .await
        .expect("upgrade");
    assert_eq!(next_text(&mut ws).await, "hello");

    admin.set_site("ws.test", "pool:ws", "frozen", 2).await;
    let frozen_at = Instant::now();
    // Until the deadline it still carries messages and holds the freeze.
    ws.send(Message::text("still here")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "still here");
    let site = admin.site("ws.test").await;
    assert_eq!(site["in_flight"], 1, "the tunnel holds the freeze: {site}");

    let cut_at = closed(&mut ws).await;
    let after = cut_at - frozen_at;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(10),
        "cut {after:?} after the freeze (drain_timeout 1s)"
    );
    let deadline = Deadline::new("the cut counted and the site drained", HANG);
    loop {
        let site = admin.site("ws.test").await;
        if site["in_flight"] == 0 && site["stragglers"]["deadline_passed"] == true {
            assert_eq!(site["stragglers"]["upgrade"], 1, "{site}");
            assert_eq!(site["stragglers"]["long_poll"], 0, "{site}");
            break;
        }
        deadline.tick().await;
    }
    let m = admin.metrics().await;
    assert_eq!(
        metric(&m, "ferry_stragglers_cut_total{reason=\"upgrade\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "ferry_upgrades_closed_total{how=\"cut\"}"),
        Some(1.0)
    );
    // A plain GET of another site is not touched by the freeze or the cut.
    let reply = client::get(&client::http1(), ferry.addr(), "plain.test", "/")
        .await
        .expect("plain GET");
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    // The frozen site's new handshake is held like any request, and goes
    // through once the site is active again.
    let addr = ferry.addr();
    let held = tokio::spawn(async move { connect(addr, "ws.test", "/again").await });
    let deadline = Deadline::new("the handshake held", HANG);
    while admin.site("ws.test").await["held"] != 1 {
        deadline.tick().await;
    }
    admin.set_site("ws.test", "pool:ws", "active", 3).await;
    let mut again = held.await.expect("task").expect("upgrade after the flip");
    assert_eq!(next_text(&mut again).await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_not_passed_on() {
    let (_dir, ferry, heads) = router("").await;
    let ask = b"GET /h2 HTTP/1.1\r\nHost: plain.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let reply = client::raw(ferry.addr(), ask, Duration::from_secs(2)).await;
    assert_eq!(reply.status(), Some(200), "answered as a plain request");
    let heads = heads.lock().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /h2 http/1.1\r\n"), "{head}");
    for gone in ["upgrade:", "http2-settings:", "connection: upgrade"] {
        assert!(!head.contains(gone), "{gone} passed on: {head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_to_the_router_of_the_other_datacenter() {
    use crate::support::free_port;
    let (dir_a, dir_b) = (workdir(), workdir());
    let echo = echo_server().await;
    // B's listeners: a trusted one, and one that wants a PROXY v2 header.
    let (trusted, pp) = (free_port(), free_port());
    let config_b = router_config("dc-b", "")
        + &format!(
            "\n[[listener]]\nlisten = \"127.0.0.1:{trusted}\"\ntrusted = true\n\n\
             [[listener]]\nlisten = \"127.0.0.1:{pp}\"\ntrusted = true\nproxy_protocol = true\n"
        )
        + &pool("ws", &[("echo", echo)])
        + &site("ws.test", "pool:ws", "")
        + &site("wspp.test", "pool:ws", "");
    let b = Ferry::start(dir_b.path(), &config_b);
    let config_a = router_config("dc-a", "")
        + &format!(
            "\n[[remote]]\nname = \"b\"\naddress = \"127.0.0.1:{trusted}\"\n\n\
             [[remote]]\nname = \"bpp\"\naddress = \"127.0.0.1:{pp}\"\nproxy_protocol = true\n"
        )
        + &site("ws.test", "remote:b", "")
        + &site("wspp.test", "remote:bpp", "");
    let a = Ferry::start(dir_a.path(), &config_a);
    for host in ["ws.test", "wspp.test"] {
        let mut ws = connect(a.addr(), host, "/far").await.expect("upgrade");
        assert_eq!(next_text(&mut ws).await, "hello", "{host}");
        ws.send(Message::text("across")).await.expect("send");
        assert_eq!(next_text(&mut ws).await, "across", "{host}");
        ws.close(None).await.expect("close");
        closed(&mut ws).await;
    }
    for (router, name) in [(&a, "A"), (&b, "B")] {
        let m = Admin::new(router.admin).metrics().await;
        assert_eq!(metric(&m, "ferry_upgrades_total"), Some(2.0), "{name}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_to_a_site_in_maintenance_gets_its_503() {
    let (_dir, ferry, _) = router("retry_after = 9").await;
    let admin = Admin::new(ferry.admin);
    admin.set_site("ws.test", "pool:ws", "maintenance", 2).await;
    match connect(ferry.addr(), "ws.test", "/chat").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "9");
        }
        Err(e) => panic!("expected the 503, got {e}"),
        Ok(_) => panic!("expected the 503, got an upgrade"),
    }
    let m = admin.metrics().await;
    assert_eq!(metric(&m, "ferry_upgrades_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_at_body_timeout() {
    let (_dir, ferry, _) = router("body_timeout = \"1s\"").await;
    let admin = Admin::new(ferry.admin);
    // A raw handshake, then the client reads nothing while the server floods.
    let mut stream = TcpStream::connect(ferry.addr()).await.expect("connect");
    stream
        .write_all(
            b"GET /flood HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("handshake");
    let deadline = Deadline::new("the tunnel of a client not reading closed", HANG);
    loop {
        let m = admin.metrics().await;
        let stalled = metric(&m, "ferry_body_timeouts_total{stalled=\"client_receive\"}");
        if metric(&m, "ferry_upgrades_closed_total{how=\"closed\"}") == Some(1.0) {
            assert_eq!(stalled, Some(1.0), "{m}");
            assert_eq!(metric(&m, "ferry_upgrades_open"), Some(0.0));
            let sent = metric(&m, "ferry_upgrade_bytes_total{direction=\"to_client\"}");
            // The socket buffers' worth, not what the server would send.
            assert!(sent.unwrap_or(0.0) < 64e6, "{m}");
            break;
        }
        deadline.tick().await;
    }
    drop(stream);
}
