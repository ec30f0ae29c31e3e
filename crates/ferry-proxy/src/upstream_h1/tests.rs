//! `upstream_h1` against raw servers on loopback that write what a test
//! gives them: framings, interim answers, lies and closes.

use super::*;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Keeps what comes home.
#[derive(Default)]
struct Kept(Mutex<Vec<H1Conn>>);

impl Home for Kept {
    fn put_back(&self, conn: H1Conn) {
        self.0.lock().push(conn);
    }
}

/// A raw server on loopback: per request (a head ending in CRLFCRLF)
/// it writes the next of `answers`, and closes the connection after
/// the last. Counts connections; records the request heads.
async fn server(
    answers: Vec<&'static [u8]>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (c, h) = (Arc::clone(&conns), Arc::clone(&heads));
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (h, answers) = (Arc::clone(&h), Arc::clone(&answers));
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = got.drain(..end + 4).collect();
                        h.lock().push(String::from_utf8_lossy(&head).into_owned());
                        let (next, last) = {
                            let mut a = answers.lock();
                            let next = a.next();
                            (next, a.len() == 0)
                        };
                        match next {
                            Some(a) => s.write_all(a).await.expect("answer"),
                            None => return,
                        }
                        if last {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, conns, heads)
}

async fn dial(addr: SocketAddr) -> H1Conn {
    H1Conn::new(TcpStream::connect(addr).await.expect("connect"), addr)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a.com\r\n\r\n";

/// A GET on a new connection to `addr`.
async fn ask(addr: SocketAddr, home: Arc<dyn Home>) -> Result<Response<OwnBody>, ExchangeFailed> {
    dial(addr).await.exchange(GET, false, home).await
}

async fn body_of(resp: Response<OwnBody>) -> Result<(Bytes, Option<HeaderMap>), String> {
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

#[tokio::test]
async fn a_sized_answer_comes_whole_and_its_connection_goes_home() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello";
    let (addr, conns, _) = server(vec![ok, ok, ok]).await;
    let home = Arc::new(Kept::default());
    let mut conn = dial(addr).await;
    for _ in 0..3 {
        let resp = conn
            .exchange(GET, false, home.clone())
            .await
            .expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        assert_eq!(body_of(resp).await.expect("body").0, "hello");
        conn = home.0.lock().pop().expect("the connection came home");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_chunked_answer_is_decoded_with_its_trailers() {
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 7\r\n\r\n";
    let (addr, _, _) = server(vec![chunked, chunked]).await;
    let home = Arc::new(Kept::default());
    let mut conn = dial(addr).await;
    for _ in 0..2 {
        let resp = conn
            .exchange(GET, false, home.clone())
            .await
            .expect("answer");
        let (body, trailers) = body_of(resp).await.expect("body");
        assert_eq!(body, "hello world");
        assert_eq!(trailers.expect("trailers")["x-sum"], "7");
        conn = home.0.lock().pop().expect("reused after a clean end");
    }
}

#[tokio::test]
async fn an_answer_without_length_ends_at_close_and_is_not_reused() {
    let close: &[u8] = b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nuntil the end";
    let (addr, _, _) = server(vec![close]).await;
    let home = Arc::new(Kept::default());
    let resp = ask(addr, home.clone()).await.expect("answer");
    assert_eq!(resp.body().size_hint().exact(), None);
    assert_eq!(body_of(resp).await.expect("body").0, "until the end");
    assert!(home.0.lock().is_empty(), "never reused");
}

#[tokio::test]
async fn head_and_no_content_answers_have_no_body() {
    let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
    let none: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
    let (addr, conns, _) = server(vec![head, none]).await;
    let home = Arc::new(Kept::default());
    let resp = dial(addr)
        .await
        .exchange(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", true, home.clone())
        .await
        .expect("answer");
    assert_eq!(resp.headers()["content-length"], "1000");
    assert!(resp.body().is_end_stream());
    let conn = home.0.lock().pop().expect("home at once");
    let resp = conn.exchange(GET, false, home.clone()).await.expect("204");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(body_of(resp).await.expect("body").0.is_empty());
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let two: &[u8] =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _, _) = server(vec![two]).await;
    let home = Arc::new(Kept::default());
    let resp = ask(addr, home).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("link").is_none());
    assert_eq!(body_of(resp).await.expect("body").0, "ok");
}

#[tokio::test]
async fn lying_framing_is_refused_or_never_reused() {
    let differ: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc";
    let (addr, _, _) = server(vec![differ]).await;
    let home = Arc::new(Kept::default());
    let e = ask(addr, home.clone()).await.expect_err("two lengths");
    assert!(e.what.contains("Content-Length"), "{}", e.what);

    let signed: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc";
    let (addr, _, _) = server(vec![signed]).await;
    assert!(ask(addr, home.clone()).await.is_err());

    // A coding and a length: the coding frames the body, and the
    // connection is not trusted with another request.
    let both: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let (addr, _, _) = server(vec![both]).await;
    let resp = ask(addr, home.clone()).await.expect("answer");
    assert_eq!(body_of(resp).await.expect("body").0, "ok");
    assert!(home.0.lock().is_empty());
}

#[tokio::test]
async fn a_head_without_end_is_cut_at_the_bound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = b"x-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        // Endless headers; the reader must stop, not grow.
        while s.write_all(line).await.is_ok() {}
    });
    let e = dial(addr)
        .await
        .exchange(GET, false, Arc::new(Kept::default()))
        .await
        .expect_err("too long");
    assert!(
        e.what.contains("longer than") || e.what.contains("bad response head"),
        "{}",
        e.what
    );
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_an_end() {
    let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
    let (addr, _, _) = server(vec![short]).await;
    let home = Arc::new(Kept::default());
    let resp = ask(addr, home.clone()).await.expect("answer");
    let e = body_of(resp).await.expect_err("cut short");
    assert!(e.contains("before the end of the body"), "{e}");
    assert!(home.0.lock().is_empty());
}

#[tokio::test]
async fn a_connection_closed_while_idle_says_nothing_came_back() {
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _, _) = server(vec![ok]).await;
    let home = Arc::new(Kept::default());
    let resp = ask(addr, home.clone()).await.expect("answer");
    drop(resp);
    let conn = home.0.lock().pop().expect("home");
    let e = conn
        .exchange(GET, false, home.clone())
        .await
        .expect_err("closed");
    assert!(e.nothing_back, "{e:?}");
}

#[tokio::test]
async fn connection_and_keep_alive_stay_behind_unless_connection_names_others() {
    // nginx's usual: neither reaches the map (hop-by-hop, the client never
    // sees them), and the connection is reused.
    let usual: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok";
    // `Connection` naming another header stays, for `strip_hop_by_hop`
    // (forward.rs, `Exchange::respond`) to remove that header with it;
    // `Keep-Alive` is left out all the same.
    let naming: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nok";
    // `close` is still read: the connection is not reused.
    let closing: &[u8] =
        b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive , CLOSE\r\ncontent-length: 2\r\n\r\nok";
    let (addr, conns, _) = server(vec![usual, naming, closing]).await;
    let home = Arc::new(Kept::default());

    let resp = ask(addr, home.clone()).await.expect("usual");
    assert!(resp.headers().get(header::CONNECTION).is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(resp.headers()[header::SERVER], "nginx");
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "2");
    assert_eq!(body_of(resp).await.expect("body").0, "ok");
    let conn = home.0.lock().pop().expect("kept alive");

    let resp = conn
        .exchange(GET, false, home.clone())
        .await
        .expect("naming");
    assert_eq!(
        resp.headers()[header::CONNECTION],
        "keep-alive, x-secret",
        "named headers are removed with Connection, in respond()"
    );
    assert_eq!(resp.headers()["x-secret"], "1");
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(body_of(resp).await.expect("body").0, "ok");
    let conn = home.0.lock().pop().expect("kept alive");

    let resp = conn
        .exchange(GET, false, home.clone())
        .await
        .expect("closing");
    assert!(resp.headers().get(header::CONNECTION).is_none());
    assert_eq!(body_of(resp).await.expect("body").0, "ok");
    assert!(home.0.lock().is_empty(), "Connection: close is obeyed");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[test]
fn header_names_are_found_in_any_case_with_their_roles() {
    for (raw, role) in [
        ("Content-Length", Role::ContentLength),
        ("TRANSFER-ENCODING", Role::TransferEncoding),
        ("connection", Role::Connection),
        ("Keep-Alive", Role::KeepAlive),
        ("Date", Role::Other),
        ("X-Content-Length", Role::Other),
        ("Proxy-Connection", Role::Other),
    ] {
        let (name, got) = header_name(raw.as_bytes()).expect(raw);
        assert_eq!(name.as_str(), raw.to_ascii_lowercase());
        assert_eq!(got, role, "{raw}");
    }
    // The names told without http's parser are the ones it would give.
    for raw in [
        "DATE",
        "ETag",
        "Vary",
        "Server",
        "Expires",
        "Location",
        "Set-Cookie",
        "Content-Type",
        "Last-Modified",
        "Accept-Ranges",
        "Cache-Control",
        "Content-Encoding",
        "x-dat",
        "dates",
    ] {
        let (name, got) = header_name(raw.as_bytes()).expect(raw);
        assert_eq!(name, HeaderName::from_bytes(raw.as_bytes()).expect(raw));
        assert_eq!(got, Role::Other, "{raw}");
    }
    assert!(header_name(b"bad name").is_err());
}
