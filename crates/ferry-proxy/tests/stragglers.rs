//! Stragglers at a freeze, with real clients (curl) through a router running
//! in-process (`Proxy::start`) to a small HTTP/1.1 upstream written here,
//! which records when every byte of every connection arrived. For each kind
//! of request still in flight when its site is frozen: the freeze is
//! acknowledged (the site answer shows 0 in flight, as the orchestrator
//! reads it), what the client saw, the cuts counted by reason (site answer,
//! `/metrics`, the log line naming the site), and that no byte reached the
//! upstream after the acknowledgement. The rule is ARCHITECTURE.md's
//! "Stragglers at a freeze"; the drain deadline here is 1 s.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_proxy::Proxy;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const TOKEN: &str = "stragglers-test-token";
/// Only to catch a hang: every wait here ends long before on a sane machine.
const BOUND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the log

/// What the router logged (every test of this binary; each uses its own host).
fn log_lines() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Sink;
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                log_lines().lock().expect("log").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Sink)
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn logged(host: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&log_lines().lock().expect("log")).into_owned();
    text.lines()
        .filter(|l| l.contains(&format!("site={host} ")))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- the upstream

/// What one upstream connection received.
#[derive(Default)]
struct Seen {
    /// When each read returned, and how many bytes.
    reads: Vec<(Instant, usize)>,
    path: String,
    content_length: usize,
    /// Body bytes received so far.
    body: usize,
    eof: Option<Instant>,
}

/// A small HTTP/1.1 server: one request per connection, its behaviour by path:
/// `/big` a fixed-length answer of `BIG` bytes, `/upload` reads the whole body
/// then answers, `/poll` never answers, `/sse` an event every 100 ms without
/// a length, `/slowpost` answers once the test releases it.
struct Upstream {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>,
    changed: Arc<Notify>,
    release: Arc<Notify>,
}

const BIG: usize = 4 << 20;

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Upstream {
            addr,
            conns: Arc::default(),
            changed: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
        };
        let (conns, changed, release) = (
            Arc::clone(&up.conns),
            Arc::clone(&up.changed),
            Arc::clone(&up.release),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new(Seen::default()));
                conns.lock().expect("conns").push(Arc::clone(&seen));
                changed.notify_waiters();
                tokio::spawn(serve(
                    stream,
                    seen,
                    Arc::clone(&changed),
                    Arc::clone(&release),
                ));
            }
        });
        up
    }

    /// Waits (bounded) until `cond` holds over the connections.
    async fn until(&self, what: &str, cond: impl Fn(&[Arc<Mutex<Seen>>]) -> bool) {
        let deadline = Instant::now() + BOUND;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.conns.lock().expect("conns")) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "upstream: never saw {what}");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), notified).await;
        }
    }

    /// Every connection's last read, and whether one was opened after `t`.
    fn last_read(&self) -> Option<Instant> {
        let conns = self.conns.lock().expect("conns");
        conns
            .iter()
            .filter_map(|c| c.lock().expect("seen").reads.last().map(|r| r.0))
            .max()
    }

    fn first(&self) -> Arc<Mutex<Seen>> {
        Arc::clone(&self.conns.lock().expect("conns")[0])
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn serve(
    stream: TcpStream,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    release: Arc<Notify>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        record(&seen, &changed, n);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let content_length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    {
        let mut s = seen.lock().expect("seen");
        s.path = path.clone();
        s.content_length = content_length;
        s.body = buf.len() - head_end;
    }
    changed.notify_waiters();
    let reader = tokio::spawn(read_rest(rd, Arc::clone(&seen), Arc::clone(&changed)));
    let body_whole = || {
        let s = seen.lock().expect("seen");
        s.body >= s.content_length
    };
    let wait_body = async {
        loop {
            let n = changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if body_whole() || seen.lock().expect("seen").eof.is_some() {
                return body_whole();
            }
            n.await;
        }
    };
    // The answers that need the whole request body first.
    let whole = matches!(path.as_str(), "/upload" | "/slowpost") && wait_body.await;
    match path.as_str() {
        "/big" => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\nConnection: close\r\n\r\n");
            if wr.write_all(head.as_bytes()).await.is_ok() {
                let block = vec![b'x'; 64 * 1024];
                for _ in 0..BIG / block.len() {
                    if wr.write_all(&block).await.is_err() {
                        break;
                    }
                }
            }
        }
        "/upload" if whole => answer(&mut wr, "uploaded").await,
        "/slowpost" if whole => {
            release.notified().await;
            answer(&mut wr, "done").await;
        }
        "/sse" => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if wr.write_all(head.as_bytes()).await.is_ok() {
                let event = "data: tick\n\n";
                let frame = format!("{:x}\r\n{event}\r\n", event.len());
                while !reader.is_finished() && wr.write_all(frame.as_bytes()).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // "/poll": never answers.
        _ => {}
    }
    // Held open until the router closes its side.
    let _ = reader.await;
    drop(wr);
}

async fn answer(wr: &mut OwnedWriteHalf, text: &str) {
    let msg = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = wr.write_all(msg.as_bytes()).await;
}

fn record(seen: &Mutex<Seen>, changed: &Notify, n: usize) {
    let now = Instant::now();
    let mut s = seen.lock().expect("seen");
    if n == 0 {
        s.eof.get_or_insert(now);
    } else {
        s.reads.push((now, n));
    }
    drop(s);
    changed.notify_waiters();
}

async fn read_rest(mut rd: OwnedReadHalf, seen: Arc<Mutex<Seen>>, changed: Arc<Notify>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut chunk).await.unwrap_or(0);
        if n > 0 {
            seen.lock().expect("seen").body += n;
        }
        record(&seen, &changed, n);
        if n == 0 {
            return;
        }
    }
}

// ---------------------------------------------------------------- the router

struct Router {
    proxy: Arc<Proxy>,
    host: String,
    _dir: tempfile::TempDir,
}

async fn router(host: &str, up: &Upstream) -> Router {
    log_lines();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"[router]
name = "dc1"
hold_max = "30s"
drain_timeout = "1s"
retry_after = 3

[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[[listener]]
listen = "127.0.0.1:0"

[[pool]]
name = "web"

[[pool.server]]
name = "up"
address = "{}"

[[site]]
host = "{host}"
placement = "pool:web"
epoch = 1
"#,
        up.addr
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).expect("write config");
    let config = ferry_config::load(&path).expect("config");
    let proxy = Proxy::start(config, Some(path)).await.expect("start proxy");
    Router {
        proxy,
        host: host.to_string(),
        _dir: dir,
    }
}

impl Router {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.listen_addrs()[0])
    }

    /// One admin call; (status, body).
    async fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = self.proxy.admin_addr().expect("admin address");
        let mut s = TcpStream::connect(addr).await.expect("admin connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("admin write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("admin read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("http response");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, body.to_string())
    }

    /// The orchestrator's freeze: the site held at epoch 2.
    async fn freeze(&self) {
        let body = r#"{"placement": "pool:web", "state": "frozen", "epoch": 2}"#;
        let (status, text) = self
            .admin("PUT", &format!("/v1/sites/{}", self.host), body)
            .await;
        assert_eq!(status, 200, "{text}");
    }

    /// The site as the orchestrator's drain reads it (`POST /v1/sites/query`).
    async fn site(&self) -> Value {
        let body = format!(r#"{{"hosts": ["{}"]}}"#, self.host);
        let (status, text) = self.admin("POST", "/v1/sites/query", &body).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        v["sites"][0].clone()
    }

    /// Polls as the orchestrator does until the freeze is acknowledged:
    /// epoch 2, frozen, 0 in flight. The instant it was seen, and the site.
    async fn acknowledged(&self) -> (Instant, Value) {
        let deadline = Instant::now() + BOUND;
        loop {
            let s = self.site().await;
            if s["epoch"] == 2 && s["state"] == "frozen" && s["in_flight"] == 0 {
                return (Instant::now(), s);
            }
            assert!(
                Instant::now() < deadline,
                "the freeze was never acknowledged: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the site's drain deadline has passed; the site answer then.
    async fn past_deadline(&self) -> Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let s = self.site().await;
            if s["stragglers"]["deadline_passed"] == true {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the drain deadline never passed: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metric(&self, reason: &str) -> u64 {
        let (status, text) = self.admin("GET", "/metrics", "").await;
        assert_eq!(status, 200);
        let name = format!("ferry_stragglers_cut_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

fn curl(router: &Router, path: &str, args: &[&str]) -> Child {
    Command::new("curl")
        .args(["-sS", "--max-time", "60", "-H"])
        .arg(format!("Host: {}", router.host))
        .args(args)
        .arg(router.url(path))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl")
}

/// curl's exit code and what it wrote (`-w`, the body when not saved).
async fn finished(child: Child) -> (i32, String) {
    let out = tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("curl hung")
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// After the acknowledgement nothing of the site reached the upstream: each
/// connection was closed by the router, and the last byte read on any came
/// before the acknowledgement was seen.
async fn nothing_after(up: &Upstream, acked: Instant) {
    up.until("every connection closed by the router", |c| {
        c.iter().all(|s| s.lock().expect("seen").eof.is_some())
    })
    .await;
    let last = up.last_read().expect("the upstream read something");
    assert!(
        last <= acked,
        "a byte reached the upstream {:?} after the acknowledgement",
        last - acked
    );
}

// ---------------------------------------------------------------- the classes

/// A visitor reading a download slowly: 16 KiB every 20 ms through a
/// 64 KiB receive buffer (about 800 KB/s; 4 MiB take 5 s). Not curl's
/// `--limit-rate`: curl reads what the socket holds (megabytes on loopback)
/// at once and sleeps afterwards, so it is not a slow reader at the TCP
/// level. Answers (status line, body bytes) once the router closes.
fn slow_reader(r: &Router, path: &str) -> tokio::task::JoinHandle<(String, usize)> {
    let addr = r.proxy.listen_addrs()[0];
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        r.host
    );
    tokio::spawn(async move {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
        let mut s = sock.connect(addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("request");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end = find_head_end(&got).expect("a response head");
        let status = String::from_utf8_lossy(&got[..end])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        (status, got.len() - end)
    })
}

/// A large download read slowly: its answer is committed (GET, a length),
/// so it does not hold the freeze, and it completes while the site is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_streams_on_and_does_not_hold_the_freeze() {
    let up = Upstream::start().await;
    let r = router("download.example", &up).await;
    let client = slow_reader(&r, "/big");
    up.until("the download's request", |c| {
        c.first()
            .is_some_and(|s| s.lock().expect("seen").path == "/big")
    })
    .await;
    r.freeze().await;
    let (_, site) = r.acknowledged().await;
    assert_eq!(site["held"], 0);
    // 4 MiB at 800 KB/s take 5 s; the freeze did not wait for them.
    assert!(
        !client.is_finished(),
        "the download was over before the freeze was acknowledged"
    );
    let (status, body) = tokio::time::timeout(BOUND, client)
        .await
        .expect("the download hung")
        .expect("reader");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, BIG, "the whole download arrived");
    let site = r.past_deadline().await;
    assert_eq!(site["state"], "frozen", "frozen all along");
    let s = &site["stragglers"];
    assert_eq!(
        (
            s["upload"].as_u64(),
            s["long_poll"].as_u64(),
            s["stream"].as_u64(),
            s["kept"].as_u64()
        ),
        (Some(0), Some(0), Some(0), Some(0))
    );
    assert!(logged(&r.host).is_empty(), "nothing cut, nothing logged");
    assert_eq!(up.conns.lock().expect("conns").len(), 1);
    assert_eq!(r.metric("stream").await, 0);
}

/// An upload still sending at the deadline is cut: the client gets an error,
/// the source never gets the whole body, and nothing after the acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_cut_at_the_drain_deadline() {
    let up = Upstream::start().await;
    let r = router("upload.example", &up).await;
    let file = r._dir.path().join("upload.bin");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(&vec![b'u'; 16 << 20]))
        .expect("upload file");
    let file_arg = file.to_str().expect("path").to_string();
    let client = curl(
        &r,
        "/upload",
        &[
            "-T",
            &file_arg,
            "--limit-rate",
            "100K",
            "-H",
            "Expect:",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
    );
    up.until("some of the upload's body", |c| {
        c.first().is_some_and(|s| s.lock().expect("seen").body > 0)
    })
    .await;
    r.freeze().await;
    let site = r.site().await;
    if site["stragglers"]["deadline_passed"] == false {
        assert_eq!(
            site["in_flight"], 1,
            "the upload holds the freeze until its deadline: {site}"
        );
    }
    let (acked, site) = r.acknowledged().await;
    let s = &site["stragglers"];
    assert_eq!(s["deadline_passed"], true, "{site}");
    assert_eq!(s["upload"], 1, "{site}");
    assert_eq!(
        (
            s["long_poll"].as_u64(),
            s["stream"].as_u64(),
            s["kept"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    let (code, status) = finished(client).await;
    assert!(
        code != 0 || status != "200",
        "curl saw the upload succeed: exit {code}, status {status}"
    );
    nothing_after(&up, acked).await;
    let (body, length) = {
        let seen = up.first();
        let seen = seen.lock().expect("seen");
        (seen.body, seen.content_length)
    };
    assert!(
        body < length,
        "the source got the whole body ({body} bytes)"
    );
    assert_eq!(
        up.conns.lock().expect("conns").len(),
        1,
        "no new connection to the source"
    );
    assert_eq!(r.metric("upload").await, 1);
    let lines = logged(&r.host);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("upload=1") && l.contains("epoch=2")),
        "no log line for the cut: {lines:?}"
    );
}

/// A GET waiting for its answer (long polling) is cut and answered 503 with
/// Retry-After: the client comes back, is held, and goes where the site lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_cut_and_told_to_retry() {
    let up = Upstream::start().await;
    let r = router("poll.example", &up).await;
    let client = curl(&r, "/poll", &["-D", "-", "-o", "/dev/null"]);
    up.until("the long poll's request", |c| {
        c.first()
            .is_some_and(|s| s.lock().expect("seen").path == "/poll")
    })
    .await;
    r.freeze().await;
    let (acked, site) = r.acknowledged().await;
    assert_eq!(site["stragglers"]["long_poll"], 1, "{site}");
    let (code, head) = finished(client).await;
    assert_eq!(code, 0, "{head}");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 3"),
        "{head}"
    );
    nothing_after(&up, acked).await;
    assert_eq!(r.metric("long_poll").await, 1);
    assert!(logged(&r.host).iter().any(|l| l.contains("long_poll=1")));
}

/// Server-sent events (an answer without a length) are cut at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_cut() {
    let up = Upstream::start().await;
    let r = router("sse.example", &up).await;
    let client = curl(&r, "/sse", &["-N", "-o", "/dev/null"]);
    up.until("the event stream's request", |c| {
        c.first()
            .is_some_and(|s| s.lock().expect("seen").path == "/sse")
    })
    .await;
    r.freeze().await;
    let (acked, site) = r.acknowledged().await;
    assert_eq!(site["stragglers"]["stream"], 1, "{site}");
    let (code, _) = finished(client).await;
    assert_ne!(code, 0, "curl saw a complete answer");
    nothing_after(&up, acked).await;
    assert_eq!(r.metric("stream").await, 1);
    assert!(logged(&r.host).iter().any(|l| l.contains("stream=1")));
}

/// A POST whose body is whole and whose answer has not begun may be writing
/// at the source now: it is not cut, and the freeze waits for it (the
/// orchestrator abandons at its own drain_timeout if it lasts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_being_handled_is_kept_and_holds_the_freeze() {
    let up = Upstream::start().await;
    let r = router("order.example", &up).await;
    let client = curl(
        &r,
        "/slowpost",
        &["--data-binary", "order=1", "-w", " %{http_code}"],
    );
    up.until("the whole order", |c| {
        c.first().is_some_and(|s| {
            let s = s.lock().expect("seen");
            s.path == "/slowpost" && s.body >= s.content_length
        })
    })
    .await;
    r.freeze().await;
    let site = r.past_deadline().await;
    assert_eq!(
        site["in_flight"], 1,
        "not acknowledged while the write may go on: {site}"
    );
    assert_eq!(site["stragglers"]["kept"], 1, "{site}");
    assert_eq!(site["stragglers"]["upload"], 0);
    // The application answers: the freeze is acknowledged, the client served.
    up.release.notify_one();
    let (_, site) = r.acknowledged().await;
    assert_eq!(site["stragglers"]["kept"], 1);
    let (code, out) = finished(client).await;
    assert_eq!((code, out.as_str()), (0, "done 200"));
    assert!(logged(&r.host).iter().any(|l| l.contains("kept=1")));
}

/// The config refuses a drain deadline the held requests would not outlive.
#[test]
fn a_drain_deadline_above_hold_max_is_refused() {
    let text = "[router]\nname = \"dc1\"\nhold_max = \"2s\"\ndrain_timeout = \"5s\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n";
    let err = ferry_config::parse(text, Path::new("proxy.toml")).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("proxy.toml:4"), "{msg}");
    assert!(
        msg.contains("drain_timeout (5s) must be below hold_max (2s)"),
        "{msg}"
    );
}
