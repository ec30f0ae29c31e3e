use super::*;

use http_body_util::Full;
use hyper::body::Frame;
use tokio::io::AsyncReadExt;

fn buf(s: &str) -> BytesMut {
    BytesMut::from(s.as_bytes())
}

#[test]
fn a_plain_get_is_taken_and_leaves_what_follows() {
    let mut b = buf(
        "GET /a?b=1 HTTP/1.1\r\nHost: A.com\r\nConnection: keep-alive\r\nX-Y: z\r\n\r\nGET /next",
    );
    let Parsed::Simple(req) = parse(&mut b) else {
        panic!("not taken")
    };
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "A.com");
    assert_eq!(req.headers()["x-y"], "z");
    assert_eq!(&b[..], b"GET /next", "the pipelined rest stays");
    assert!(matches!(parse(&mut b), Parsed::Partial));
    assert_eq!(&b[..], b"GET /next");
}

#[test]
fn anything_not_plainly_simple_is_left_whole_for_hyper() {
    for head in [
        "POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 2\r\n\r\nhi",
        "GET / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.com\r\nExpect: 100-continue\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a.com\r\n\r\n",
        "GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n",
        "CONNECT a.com:443 HTTP/1.1\r\nHost: a.com\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a.com\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x01.com\r\n\r\n",
    ] {
        let mut b = buf(head);
        assert!(matches!(parse(&mut b), Parsed::Other), "taken: {head:?}");
        assert_eq!(&b[..], head.as_bytes(), "not left whole: {head:?}");
    }
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    let head = format!("GET / HTTP/1.1\r\nHost: a.com\r\n{many}\r\n");
    let mut b = buf(&head);
    assert!(matches!(parse(&mut b), Parsed::Other));
    assert_eq!(b.len(), head.len());
}

/// The bytes `write_response` puts on the wire for `resp`, and whether it
/// keeps the connection.
async fn wire<B>(resp: http::Response<B>, head_request: bool, close: bool) -> (String, bool)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (mut client, mut server) = tokio::io::duplex(1 << 20);
    let mut out = Vec::new();
    let keep = write_response(&mut server, resp, head_request, close, &mut out)
        .await
        .expect("written");
    drop(server);
    let mut got = String::new();
    client.read_to_string(&mut got).await.expect("read");
    (got, keep)
}

fn without_date(wire: &str) -> String {
    wire.split("\r\n")
        .filter(|l| !l.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn a_sized_answer_gets_its_length_and_a_date() {
    let mut resp = http::Response::new(Full::new(Bytes::from_static(b"hello")));
    resp.headers_mut()
        .insert("x-a", HeaderValue::from_static("1"));
    let (got, keep) = wire(resp, false, false).await;
    assert!(keep);
    assert!(got.contains("\r\ndate: "), "{got:?}");
    assert_eq!(
        without_date(&got),
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello"
    );
}

#[tokio::test]
async fn head_204_and_close_write_no_body_and_say_close() {
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    resp.headers_mut()
        .insert(header::DATE, HeaderValue::from_static("x"));
    let (got, keep) = wire(resp, true, false).await;
    assert!(keep);
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ncontent-length: 12\r\ndate: x\r\n\r\n"
    );

    let mut resp = http::Response::new(Full::new(Bytes::from_static(b"dropped")));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut()
        .insert(header::DATE, HeaderValue::from_static("x"));
    let (got, keep) = wire(resp, false, true).await;
    assert!(!keep, "asked to close");
    assert_eq!(
        got,
        "HTTP/1.1 204 No Content\r\ndate: x\r\nconnection: close\r\n\r\n"
    );

    // An answer that says close (the straggler's cut) closes.
    let mut resp = http::Response::new(Full::new(Bytes::from_static(b"x")));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp.headers_mut()
        .insert(header::DATE, HeaderValue::from_static("x"));
    let (got, keep) = wire(resp, false, false).await;
    assert!(!keep);
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ndate: x\r\nconnection: close\r\n\r\nx"
    );
}

/// A body of given frames, of no known size.
struct Frames(std::collections::VecDeque<Result<Frame<Bytes>, std::io::Error>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.pop_front())
    }
}

fn stream(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Frames {
    Frames(frames.into())
}

#[tokio::test]
async fn an_unsized_body_is_chunked_with_its_trailers() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("7"));
    let big = vec![b'b'; READ_CHUNK + 1];
    let body = stream(vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::new())),
        Ok(Frame::data(Bytes::from(big.clone()))),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = http::Response::new(body);
    resp.headers_mut()
        .insert(header::DATE, HeaderValue::from_static("x"));
    let (got, keep) = wire(resp, false, false).await;
    assert!(keep);
    let want = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: x\r\n\r\n3\r\nabc\r\n{:x}\r\n{}\r\n0\r\nx-sum: 7\r\n\r\n",
        big.len(),
        String::from_utf8(big).unwrap()
    );
    assert_eq!(got, want);

    let body = stream(vec![Ok(Frame::data(Bytes::from_static(b"abc")))]);
    let mut resp = http::Response::new(body);
    resp.headers_mut()
        .insert(header::DATE, HeaderValue::from_static("x"));
    let (got, _) = wire(resp, false, false).await;
    assert!(got.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{got:?}");
}

#[tokio::test]
async fn a_body_that_breaks_its_length_or_fails_ends_the_connection() {
    let (_client, mut server) = tokio::io::duplex(1 << 16);
    let mut out = Vec::new();
    for frames in [
        vec![Ok(Frame::data(Bytes::from_static(b"abc")))],
        vec![Ok(Frame::data(Bytes::from_static(b"abcdefgh")))],
        vec![Err(std::io::Error::other("upstream reset"))],
    ] {
        let mut resp = http::Response::new(stream(frames));
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let r = write_response(&mut server, resp, false, false, &mut out).await;
        assert!(r.is_err(), "{r:?}");
    }
}

/// A router with one site, `a.com`, on one upstream that answers each
/// request with its method and path.
async fn router_with_upstream() -> Arc<Shared> {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let text = format!("{} {}", req.method(), req.uri().path());
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(text))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    let config = format!(
        "[router]\nname = \"dc1\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"web\"\n\n[[pool.server]]\nname = \"s1\"\naddress = \"{addr}\"\n\n\
         [[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n"
    );
    let config = ferry_config::parse(&config, std::path::Path::new("test.toml")).expect("config");
    let store = Arc::new(ferry_store::SqliteStore::in_memory().expect("store"));
    Arc::new(Shared::new(config, None, store).expect("shared"))
}

fn own(shared: Arc<Shared>, keepalive: Duration) -> (Own, watch::Sender<bool>) {
    let info = Arc::new(ConnInfo::new(
        "192.0.2.7:40000".parse().expect("client"),
        false,
        false,
        shared.upstream.affinity(),
    ));
    let (stop, shutdown) = watch::channel(false);
    let own = Own {
        shared,
        info,
        header_timeout: Duration::from_secs(60),
        keepalive_timeout: keepalive,
        shutdown,
        unread: Unread::default(),
    };
    (own, stop)
}

/// Reads from `client` until `want` answers (by their bodies) arrived.
async fn answers(client: &mut tokio::io::DuplexStream, bodies: &[&str]) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !bodies
        .iter()
        .all(|b| String::from_utf8_lossy(&got).contains(b))
    {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .expect("answers within 10 s")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(got).expect("utf-8")
}

#[tokio::test]
async fn pipelined_gets_are_answered_in_order_then_a_post_goes_to_hyper_whole() {
    use tokio::io::AsyncWriteExt;
    let (own, _stop) = own(router_with_upstream().await, Duration::from_secs(60));
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let first = b"GET /one HTTP/1.1\r\nHost: a.com\r\n\r\nHEAD /two HTTP/1.1\r\nHost: a.com\r\n\r\nGET /three HTTP/1.1\r\nHost: nowhere.com\r\n\r\n";
    let served = tokio::spawn(serve(own, server, first.to_vec()));
    let got = answers(&mut client, &["GET /one", "no site for host nowhere.com"]).await;
    let one = got.find("GET /one").expect("first");
    let three = got.find("404 Not Found").expect("third");
    assert!(one < three, "{got}");
    assert!(
        !got.contains("HEAD /two"),
        "a HEAD answer has no body: {got}"
    );
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
    let post = "POST /four HTTP/1.1\r\nHost: a.com\r\nContent-Length: 2\r\n\r\nhi";
    client.write_all(post.as_bytes()).await.expect("write");
    match tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("handed over in time")
        .expect("task")
    {
        After::HandOver(_, rest) => assert_eq!(rest, post.as_bytes()),
        After::Closed => panic!("closed, not handed over"),
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_keepalive_deadline_and_counted() {
    let shared = router_with_upstream().await;
    let (own, _stop) = own(Arc::clone(&shared), Duration::from_millis(200));
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(serve(
        own,
        server,
        b"GET /one HTTP/1.1\r\nHost: a.com\r\n\r\n".to_vec(),
    ));
    answers(&mut client, &["GET /one"]).await;
    let after = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("closed in time")
        .expect("task");
    assert!(matches!(after, After::Closed));
    let idle = shared.metrics.deadlines.idle_closed.load(Ordering::Relaxed);
    assert_eq!(idle, 1);
}

#[tokio::test]
async fn a_shutdown_closes_an_idle_connection() {
    let (own, stop) = own(router_with_upstream().await, Duration::from_secs(60));
    let (_client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(serve(own, server, Vec::new()));
    stop.send(true).expect("send");
    let after = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("closed in time")
        .expect("task");
    assert!(matches!(after, After::Closed));
}

#[tokio::test]
async fn a_request_whose_client_leaves_is_dropped_not_answered() {
    use tokio::io::AsyncWriteExt;
    // An upstream that takes requests and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = silent.accept().await {
            let mut b = [0u8; 1024];
            let n = stream.read(&mut b).await.unwrap_or(0);
            let _ = seen_tx.send(n);
            held.push(stream);
        }
    });
    let config = format!(
        "[router]\nname = \"dc1\"\nrequest_timeout = \"5m\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pool]]\nname = \"web\"\n\n[[pool.server]]\nname = \"s1\"\naddress = \"{addr}\"\n\n\
         [[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n"
    );
    let config = ferry_config::parse(&config, std::path::Path::new("test.toml")).expect("config");
    let store = Arc::new(ferry_store::SqliteStore::in_memory().expect("store"));
    let shared = Arc::new(Shared::new(config, None, store).expect("shared"));
    let (own, _stop) = own(shared, Duration::from_secs(60));
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(serve(own, server, Vec::new()));
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a.com\r\n\r\n")
        .await
        .expect("write");
    // The request reached the upstream; then the client leaves.
    let n = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("forwarded in time");
    assert!(n > Some(0));
    client.shutdown().await.expect("half-close");
    let after = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("dropped long before the request timeout")
        .expect("task");
    assert!(matches!(after, After::Closed));
}

/// A client whose bytes arrive as the given reads, one read each, then
/// nothing more (the connection stays open, silent), and that keeps what
/// the router writes to it.
struct Scripted {
    reads: std::collections::VecDeque<Vec<u8>>,
    written: Arc<parking_lot::Mutex<Vec<u8>>>,
}

impl Scripted {
    fn new(reads: &[&[u8]]) -> (Scripted, Arc<parking_lot::Mutex<Vec<u8>>>) {
        let written = Arc::default();
        let s = Scripted {
            reads: reads.iter().map(|r| r.to_vec()).collect(),
            written: Arc::clone(&written),
        };
        (s, written)
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.reads.pop_front() {
            Some(chunk) => {
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
            // Silent: only a deadline or the answer wakes the reader.
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.lock().extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn served_within_10s(served: tokio::task::JoinHandle<After<Scripted>>) -> After<Scripted> {
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("ended in time")
        .expect("task")
}

#[tokio::test]
async fn a_head_split_over_reads_is_read_here_not_handed_over() {
    let (own, _stop) = own(router_with_upstream().await, Duration::from_secs(60));
    // The sniff's first 24 bytes, the rest of the head in two more reads,
    // then a POST (hyper's).
    let post = b"POST /two HTTP/1.1\r\nHost: a.com\r\nContent-Length: 2\r\n\r\nhi";
    let (io, written) = Scripted::new(&[b"Host: a.", b"com\r\n\r\n", post]);
    let served = tokio::spawn(serve(own, io, b"GET /one HTTP/1.1\r\n".to_vec()));
    match served_within_10s(served).await {
        After::HandOver(_, rest) => assert_eq!(rest, post, "only the POST is hyper's"),
        After::Closed => panic!("closed, not handed over"),
    }
    let got = String::from_utf8(written.lock().clone()).expect("utf-8");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("GET /one"), "{got}");
}

#[tokio::test]
async fn a_head_that_trickles_is_read_here_until_whole() {
    let (own, _stop) = own(router_with_upstream().await, Duration::from_secs(60));
    let head = b"GET /one HTTP/1.1\r\nHost: a.com\r\nX-A: 1\r\n\r\n";
    let post = b"POST /two HTTP/1.1\r\nHost: a.com\r\nContent-Length: 2\r\n\r\nhi";
    let mut reads: Vec<&[u8]> = head[1..].chunks(1).collect();
    reads.push(post);
    let (io, written) = Scripted::new(&reads);
    let served = tokio::spawn(serve(own, io, head[..1].to_vec()));
    match served_within_10s(served).await {
        After::HandOver(_, rest) => assert_eq!(rest, post, "only the POST is hyper's"),
        After::Closed => panic!("closed, not handed over"),
    }
    let got = String::from_utf8(written.lock().clone()).expect("utf-8");
    assert!(got.ends_with("GET /one"), "{got}");
}

#[tokio::test]
async fn a_partial_head_over_64_kb_goes_to_hyper_whole() {
    let (own, _stop) = own(router_with_upstream().await, Duration::from_secs(60));
    let long = vec![b'a'; 8 * 1024];
    let reads: Vec<&[u8]> = std::iter::repeat_n(&long[..], 9).collect();
    let (io, written) = Scripted::new(&reads);
    let first = b"GET /one HTTP/1.1\r\nHost: a.com\r\nX-Long: ".to_vec();
    let served = tokio::spawn(serve(own, io, first.clone()));
    match served_within_10s(served).await {
        After::HandOver(_, rest) => {
            assert!(rest.len() > MAX_HEAD, "{}", rest.len());
            assert!(rest.starts_with(&first));
            assert!(rest[first.len()..].iter().all(|&b| b == b'a'));
        }
        After::Closed => panic!("closed, not handed over"),
    }
    assert!(written.lock().is_empty(), "nothing answered here");
}

#[tokio::test]
async fn a_head_not_whole_by_the_header_deadline_closes_the_connection() {
    let (mut own, _stop) = own(router_with_upstream().await, Duration::from_secs(60));
    own.header_timeout = Duration::from_millis(200);
    let (io, written) = Scripted::new(&[b"Host: a."]);
    let served = tokio::spawn(serve(own, io, b"GET /one HTTP/1.1\r\n".to_vec()));
    assert!(matches!(served_within_10s(served).await, After::Closed));
    assert!(written.lock().is_empty(), "nothing answered");
}

#[tokio::test]
async fn a_shutdown_closes_a_connection_waiting_for_the_rest_of_a_head() {
    let (own, stop) = own(router_with_upstream().await, Duration::from_secs(60));
    let (io, written) = Scripted::new(&[b"Host: a."]);
    let served = tokio::spawn(serve(own, io, b"GET /one HTTP/1.1\r\n".to_vec()));
    stop.send(true).expect("send");
    assert!(matches!(served_within_10s(served).await, After::Closed));
    assert!(written.lock().is_empty(), "nothing answered");
}
