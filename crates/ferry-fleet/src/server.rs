//! The exec server an agent runs: HTTP/1.1 on its own address (the sync
//! port speaks a binary protocol in blocking threads; commands want
//! streaming and timeouts, which hyper and tokio give for free).
//!
//! `POST /v1/exec` with `Authorization: Bearer TOKEN` and
//! `{"argv": [...], "timeout_ms": N}`:
//! - 401 no or unknown token; 400 unreadable body; 408 body too slow; 413
//!   body too large; 403 not in the allow-list (or not for this caller);
//!   429 `max_running` commands already running; 503 the audit log cannot
//!   be written (nothing is run unrecorded); 422 the program cannot start;
//! - 200 `application/x-ndjson`: one `{"stream": "stdout"|"stderr",
//!   "line": ...}` per output line as it comes, then one
//!   `{"exit": N|null, "signal": N|null, "timed_out": bool, "duration_ms": N}`.
//!
//! Every authenticated request, refused or run, is in the audit log; a
//! command runs only once its `accepted` record is on disk. Unauthenticated
//! requests are counted and written as one record per interval (a flood
//! must not turn into one synced write each). Audit writes run on tokio's
//! blocking pool, never on a runtime thread.
//!
//! A command runs in its own process group, which is killed (TERM, then
//! KILL after a grace) when its timeout passes or when the caller goes
//! away, so a killed `ferry update` leaves nothing running behind it; what
//! the command left in its group when it exits is killed too, and output
//! readers still held open by an escaped process are aborted.
//!
//! Every connection is bounded ([`Limits`]): a connection cap, a deadline
//! for a request's head (also the idle limit of a kept-alive connection),
//! for its body, and for each response write. `GET /healthz` answers 200
//! (503 while the audit log cannot be written); `GET /metrics` (a caller's
//! token) the counters in Prometheus text.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_journal::now_ms;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::allow::{decide, AllowEntry, Refusal};
use crate::audit::AuditLog;
use crate::error::Result;
use crate::exec_config::{ExecConfig, Limits};

/// Largest request body (an argument vector).
const MAX_BODY: usize = 64 * 1024;
/// Largest buffered request head; hyper answers 431 beyond it.
const MAX_HEAD: usize = 32 * 1024;
/// Longest output line sent as one record; longer lines are split.
const MAX_LINE: usize = 64 * 1024;
/// Output records queued for a caller before the command's pipes wait: a
/// record is at most MAX_LINE bytes JSON-escaped (up to 6x for control
/// bytes), so this bounds a command's queued output to ~12 MiB.
const OUTPUT_RECORDS: usize = 32;
/// Between TERM and KILL when a command is stopped.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long output still in the pipes is awaited once the command ended (a
/// process that left the group may hold them open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Longest wait, when the server stops, for its commands to be stopped
/// and recorded (TERM, the KILL grace, the output drain, and some).
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Distinct client addresses kept per batch of unauthenticated requests.
const UNAUTH_PEERS: usize = 16;
/// Sent to a connection over `max_connections` before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 53\r\nretry-after: 5\r\nconnection: close\r\n\r\n{\"error\":\"too many connections to this exec server\"}\n";

type RespBody = Either<Full<Bytes>, ChannelBody>;

/// A response body fed by a channel: each message is one NDJSON line.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// Counters of the server, served at `GET /metrics`.
#[derive(Default)]
struct Stats {
    connections_refused: AtomicU64,
    unauthenticated: AtomicU64,
    bad_request: AtomicU64,
    refused: AtomicU64,
    busy: AtomicU64,
    audit_refused: AtomicU64,
    spawn_failed: AtomicU64,
    started: AtomicU64,
    audit_failures: AtomicU64,
    /// The last audit write failed (healthz answers 503 meanwhile).
    audit_failing: AtomicBool,
}

/// Unauthenticated requests since the last audit record of them.
#[derive(Default)]
struct UnauthBatch {
    count: u64,
    first: Option<SocketAddr>,
    peers: Vec<IpAddr>,
    since_ms: u64,
}

/// The state of a running exec server.
pub struct ExecServer {
    cfg: ExecConfig,
    audit: Arc<AuditLog>,
    seq: AtomicU64,
    /// Distinguishes this agent's run ids from an earlier process's.
    boot: u64,
    connections: Arc<Semaphore>,
    running: Arc<Semaphore>,
    /// Turns true when the server stops: running commands are stopped.
    stopping: watch::Sender<bool>,
    stats: Stats,
    unauth: parking_lot::Mutex<UnauthBatch>,
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl ExecServer {
    pub fn new(cfg: ExecConfig) -> Result<Arc<ExecServer>> {
        let audit = Arc::new(AuditLog::open(&cfg.audit_log)?);
        let limits = &cfg.limits;
        Ok(Arc::new(ExecServer {
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            running: Arc::new(Semaphore::new(limits.max_running)),
            stopping: watch::channel(false).0,
            cfg,
            audit,
            seq: AtomicU64::new(0),
            boot: now_ms(),
            stats: Stats::default(),
            unauth: parking_lot::Mutex::new(UnauthBatch::default()),
        }))
    }

    fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    /// Appends and syncs one audit record on the blocking pool. An error
    /// says why it is not on disk; it is counted, and logged when the log
    /// goes from working to failing (not once per request).
    async fn audit(&self, event: &'static str, fields: Value) -> std::result::Result<(), String> {
        let log = self.audit.clone();
        let fields = object(fields);
        let r = match tokio::task::spawn_blocking(move || log.record(event, fields)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("audit writer: {e}")),
        };
        match &r {
            Ok(()) => {
                if self.stats.audit_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("audit log writable again");
                }
            }
            Err(e) => {
                self.stats.audit_failures.fetch_add(1, Ordering::Relaxed);
                if !self.stats.audit_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "audit log write failed: commands are refused until it works again");
                }
            }
        }
        r
    }

    /// The caller whose token this is. Every caller's token is compared
    /// (no early exit), each in time independent of the token's length.
    fn caller(&self, header: Option<&str>) -> Option<String> {
        let given = header?.strip_prefix("Bearer ")?.trim().as_bytes();
        let mut found = None;
        for (name, token) in &self.cfg.callers {
            if token.matches(given) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Counts an unauthenticated request for the next batch record.
    fn note_unauthenticated(&self, peer: SocketAddr) {
        self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
        let mut b = self.unauth.lock();
        if b.count == 0 {
            b.first = Some(peer);
            b.since_ms = now_ms();
        }
        b.count += 1;
        if b.peers.len() < UNAUTH_PEERS && !b.peers.contains(&peer.ip()) {
            b.peers.push(peer.ip());
        }
    }

    /// Writes the batch of unauthenticated requests, if any, as one record
    /// (and one log line).
    async fn flush_unauthenticated(&self) {
        let b = std::mem::take(&mut *self.unauth.lock());
        if b.count == 0 {
            return;
        }
        let peers: Vec<String> = b.peers.iter().map(|p| p.to_string()).collect();
        tracing::warn!(count = b.count, peers = ?peers, "unauthenticated exec requests refused");
        let _ = self
            .audit(
                "unauthenticated",
                json!({
                    "peer": b.first.map(|p| p.to_string()),
                    "count": b.count,
                    "peers": peers,
                    "since_unix_ms": b.since_ms,
                }),
            )
            .await;
    }

    fn metrics(&self) -> String {
        let s = &self.stats;
        let l = self.limits();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# TYPE ferry_exec_connections gauge\n");
        out.push_str(&format!(
            "ferry_exec_connections {}\n",
            l.max_connections - self.connections.available_permits()
        ));
        out.push_str("# TYPE ferry_exec_connections_refused_total counter\n");
        out.push_str(&format!(
            "ferry_exec_connections_refused_total {}\n",
            get(&s.connections_refused)
        ));
        out.push_str("# TYPE ferry_exec_running gauge\n");
        out.push_str(&format!(
            "ferry_exec_running {}\n",
            l.max_running - self.running.available_permits()
        ));
        out.push_str("# TYPE ferry_exec_requests_total counter\n");
        for (result, c) in [
            ("unauthenticated", &s.unauthenticated),
            ("bad_request", &s.bad_request),
            ("refused", &s.refused),
            ("busy", &s.busy),
            ("audit_failed", &s.audit_refused),
            ("spawn_failed", &s.spawn_failed),
            ("started", &s.started),
        ] {
            out.push_str(&format!(
                "ferry_exec_requests_total{{result=\"{result}\"}} {}\n",
                get(c)
            ));
        }
        out.push_str("# TYPE ferry_exec_audit_failures_total counter\n");
        out.push_str(&format!(
            "ferry_exec_audit_failures_total {}\n",
            get(&s.audit_failures)
        ));
        out
    }
}

/// Serves until `shutdown` turns true (or its sender is dropped), then
/// stops the running commands (TERM to each group, KILL after a grace) and
/// returns once they are reaped and on record, or after [`STOP_LIMIT`].
/// Takes a bound listener (tests bind port 0).
pub async fn serve(
    listener: TcpListener,
    srv: Arc<ExecServer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let flusher = {
        let srv = srv.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(srv.limits().unauthenticated_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                srv.flush_unauthenticated().await;
            }
        })
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "exec accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = srv.connections.clone().try_acquire_owned() else {
            srv.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            // One non-blocking write: a client over the cap never holds
            // this loop; if its buffer is full it just sees the close.
            let _ = stream.try_write(BUSY);
            continue;
        };
        tokio::spawn(serve_connection(srv.clone(), stream, peer, permit));
    }
    flusher.abort();
    srv.stopping.send_replace(true);
    let all = srv.limits().max_running as u32;
    if tokio::time::timeout(STOP_LIMIT, srv.running.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("exec server stopped with commands still being stopped");
    }
    srv.flush_unauthenticated().await;
}

async fn serve_connection(
    srv: Arc<ExecServer>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let limits = srv.limits().clone();
    let service = hyper::service::service_fn(move |req| {
        let srv = srv.clone();
        async move { Ok::<_, Infallible>(handle(srv, peer, req).await) }
    });
    let io = hyper_util::rt::TokioIo::new(StallGuard::new(stream, limits.write_timeout));
    // The timer makes the head deadline work; hyper starts it when it waits
    // for a request head, so it is also the idle limit between requests.
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%peer, error = %e, "exec connection ended");
    }
}

/// A connection whose writes fail once they make no progress for `limit`:
/// a caller that stops reading would otherwise hold its connection, and
/// its command's output, forever.
struct StallGuard {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallGuard {
    fn new(inner: TcpStream, limit: Duration) -> StallGuard {
        StallGuard {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Passes a write-side poll through, failing it once it has been
    /// pending for `limit`.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no write progress for {limit:?}"),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, r)
    }
}

fn json_resp(status: StatusCode, v: &Value) -> Response<RespBody> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecRequest {
    argv: Vec<String>,
    timeout_ms: Option<u64>,
}

async fn handle(
    srv: Arc<ExecServer>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<RespBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            return if srv.stats.audit_failing.load(Ordering::Relaxed) {
                json_resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"ok": false, "error": "the audit log cannot be written: commands are refused"}),
                )
            } else {
                json_resp(StatusCode::OK, &json!({"ok": true}))
            };
        }
        (&Method::GET, "/metrics") => {
            // Counters are for the operator: any caller's token, as the
            // routers' /metrics wants the admin token.
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if srv.caller(auth).is_none() {
                srv.note_unauthenticated(peer);
                return json_resp(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "missing or unknown bearer token"}),
                );
            }
            let mut r = Response::new(Either::Left(Full::new(Bytes::from(srv.metrics()))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        (&Method::POST, "/v1/exec") => {}
        (_, path) => {
            return json_resp(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("no route {} {path}", req.method())}),
            )
        }
    }
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(caller) = srv.caller(auth) else {
        srv.note_unauthenticated(peer);
        return json_resp(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "missing or unknown bearer token"}),
        );
    };
    let bad = |status: StatusCode, msg: String, argv: Option<Vec<String>>| {
        let srv = srv.clone();
        let caller = caller.clone();
        async move {
            srv.stats.bad_request.fetch_add(1, Ordering::Relaxed);
            let _ = srv
                .audit(
                    "bad_request",
                    json!({"peer": peer.to_string(), "caller": caller, "argv": argv, "reason": msg}),
                )
                .await;
            json_resp(status, &json!({ "error": msg }))
        }
    };
    let body = match read_body(req.into_body(), srv.limits().body_timeout).await {
        Ok(b) => b,
        Err((status, msg)) => return bad(status, msg, None).await,
    };
    let er: ExecRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("request body: {e}"), None).await,
    };
    if er.argv.is_empty() || er.argv.iter().any(|a| a.contains('\0')) {
        let msg = "argv: must be non-empty, with no NUL byte in any argument".to_string();
        return bad(StatusCode::BAD_REQUEST, msg, Some(er.argv)).await;
    }
    let refuse = |status: StatusCode, msg: String, counter: &'static str| {
        let srv = srv.clone();
        let caller = caller.clone();
        let argv = er.argv.clone();
        async move {
            let c = match counter {
                "busy" => &srv.stats.busy,
                _ => &srv.stats.refused,
            };
            c.fetch_add(1, Ordering::Relaxed);
            let _ = srv
                .audit(
                    "refused",
                    json!({"peer": peer.to_string(), "caller": caller, "argv": argv, "reason": msg}),
                )
                .await;
            let mut r = json_resp(status, &json!({"error": format!("{argv:?}: {msg}")}));
            if status == StatusCode::TOO_MANY_REQUESTS {
                r.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("5"),
                );
            }
            r
        }
    };
    let entry = match decide(&srv.cfg.allow, &caller, &er.argv) {
        Ok(e) => e.clone(),
        Err(r) => {
            let msg = match r {
                Refusal::NotAllowed => "not in this agent's allow-list".to_string(),
                Refusal::CallerNotAllowed => format!("allowed, but not for caller {caller:?}"),
            };
            return refuse(StatusCode::FORBIDDEN, msg, "refused").await;
        }
    };
    let Ok(permit) = srv.running.clone().try_acquire_owned() else {
        let msg = format!(
            "{} commands already running on this agent (limits.max_running); try again later",
            srv.limits().max_running
        );
        return refuse(StatusCode::TOO_MANY_REQUESTS, msg, "busy").await;
    };
    let timeout = er
        .timeout_ms
        .map_or(entry.max_timeout, Duration::from_millis)
        .min(entry.max_timeout);
    let id = format!(
        "{}-{}",
        srv.boot,
        srv.seq.fetch_add(1, Ordering::Relaxed) + 1
    );
    let run = Run {
        id,
        caller,
        peer,
        argv: er.argv,
        entry,
        timeout,
    };
    // The run is its own task from here: if the connection drops while the
    // audit is written or the command spawned, hyper drops this handler,
    // and the run must still end (stopped, reaped, on record).
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run.execute(srv.clone(), permit, ready_tx));
    match ready_rx.await {
        Ok(Ok(rx)) => {
            let mut r = Response::new(Either::Right(ChannelBody(rx)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-ndjson"),
            );
            r
        }
        Ok(Err((status, msg))) => json_resp(status, &json!({ "error": msg })),
        Err(_) => json_resp(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "the run ended before it started (see the agent's log)"}),
        ),
    }
}

/// The request body, at most [`MAX_BODY`] bytes within `limit`.
async fn read_body(
    body: Incoming,
    limit: Duration,
) -> std::result::Result<Bytes, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: larger than {MAX_BODY} bytes"),
        )
    };
    if body
        .size_hint()
        .exact()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(too_large());
    }
    match tokio::time::timeout(limit, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("request body: {e}"))),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("request body: not received within {limit:?} (limits.body_timeout)"),
        )),
    }
}

/// What the handler gets from a run: its output, or why it did not start.
type Ready = std::result::Result<mpsc::Receiver<Bytes>, (StatusCode, String)>;

/// One accepted request.
struct Run {
    id: String,
    caller: String,
    peer: SocketAddr,
    argv: Vec<String>,
    entry: AllowEntry,
    timeout: Duration,
}

/// How a command ended, as the caller and the audit log see it.
enum Ending {
    Exited(std::process::ExitStatus),
    TimedOut,
    CallerGone,
    /// The agent is stopping.
    Stopped,
}

impl Run {
    fn who(&self) -> Map<String, Value> {
        object(json!({
            "id": self.id,
            "caller": self.caller,
            "peer": self.peer.to_string(),
            "argv": self.argv,
            "shell": self.entry.shell,
        }))
    }

    /// Records the run as accepted, spawns the command, tells the handler
    /// (`ready`: the output channel, or the status refusing it), then
    /// streams the output until the command ends. `permit` (a
    /// `max_running` slot) is held until the command is reaped. Nothing
    /// runs unrecorded: the `accepted` record is on disk first.
    async fn execute(
        self,
        srv: Arc<ExecServer>,
        permit: OwnedSemaphorePermit,
        ready: tokio::sync::oneshot::Sender<Ready>,
    ) {
        let mut f = self.who();
        f.insert(
            "timeout_ms".into(),
            (self.timeout.as_millis() as u64).into(),
        );
        if let Err(e) = srv.audit("accepted", Value::Object(f)).await {
            srv.stats.audit_refused.fetch_add(1, Ordering::Relaxed);
            let msg = format!("not run: the audit log cannot be written ({e})");
            let _ = ready.send(Err((StatusCode::SERVICE_UNAVAILABLE, msg)));
            return;
        }
        let mut cmd = if self.entry.shell {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(self.entry.shell_line());
            c
        } else {
            let mut c = tokio::process::Command::new(&self.argv[0]);
            c.args(&self.argv[1..]);
            c
        };
        if let Some(cwd) = &self.entry.cwd {
            cmd.current_dir(cwd);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                srv.stats.spawn_failed.fetch_add(1, Ordering::Relaxed);
                let msg = format!("cannot start {:?}: {e}", self.argv[0]);
                let mut f = self.who();
                f.insert("reason".into(), msg.clone().into());
                let _ = srv.audit("spawn_failed", Value::Object(f)).await;
                let _ = ready.send(Err((StatusCode::UNPROCESSABLE_ENTITY, msg)));
                return;
            }
        };
        srv.stats.started.fetch_add(1, Ordering::Relaxed);
        let mut f = self.who();
        f.insert("pid".into(), child.id().into());
        f.insert(
            "timeout_ms".into(),
            (self.timeout.as_millis() as u64).into(),
        );
        // Best effort: the run is already on record as accepted.
        let _ = srv.audit("start", Value::Object(f)).await;
        let (tx, rx) = mpsc::channel::<Bytes>(OUTPUT_RECORDS);
        // A handler gone already drops `rx` here: `tx.closed()` below then
        // stops the command as for a caller that went away.
        let _ = ready.send(Ok(rx));
        let _permit = permit;
        let started = Instant::now();
        let mut pumps: Vec<tokio::task::JoinHandle<()>> = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(pump(o, "stdout", tx.clone()))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(pump(e, "stderr", tx.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let pid = child.id();
        let mut stopping = srv.stopping.subscribe();
        let ending = tokio::select! {
            st = child.wait() => match st {
                Ok(s) => Ending::Exited(s),
                Err(e) => {
                    tracing::error!(id = %self.id, error = %e, "waiting for a command failed");
                    Ending::CallerGone
                }
            },
            _ = tokio::time::sleep(self.timeout) => Ending::TimedOut,
            _ = tx.closed() => Ending::CallerGone,
            _ = stopping.wait_for(|s| *s) => Ending::Stopped,
        };
        let status = match ending {
            Ending::Exited(s) => {
                // What the command left running in its group goes too.
                kill_group(pid, rustix::process::Signal::KILL);
                Some(s)
            }
            _ => stop_group(&mut child, pid).await,
        };
        // Output still buffered in the pipes is passed on; a reader
        // whose pipe a process outside the group still holds is
        // stopped (its end of the pipe closes with it).
        let drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
        for p in &mut pumps {
            if tokio::time::timeout_at(drain_until, &mut *p).await.is_err() {
                p.abort();
                tracing::warn!(id = %self.id, "output still open after the command ended (a process that left its group?): reader stopped");
            }
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        let exit = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let timed_out = matches!(ending, Ending::TimedOut);
        let gone = matches!(ending, Ending::CallerGone);
        let agent_stopped = matches!(ending, Ending::Stopped);
        let last = json!({
            "exit": exit,
            "signal": signal,
            "timed_out": timed_out,
            "duration_ms": duration_ms,
        });
        // On record before the caller learns the result.
        let mut f = self.who();
        f.insert("exit".into(), exit.into());
        f.insert("signal".into(), signal.into());
        f.insert("timed_out".into(), timed_out.into());
        f.insert("caller_gone".into(), gone.into());
        f.insert("agent_stopped".into(), agent_stopped.into());
        f.insert("duration_ms".into(), duration_ms.into());
        let _ = srv.audit("end", Value::Object(f)).await;
        // A caller that stopped reading gets no more than the write
        // deadline to take the last record.
        let _ = tokio::time::timeout(
            srv.limits().write_timeout,
            tx.send(Bytes::from(format!("{last}\n"))),
        )
        .await;
    }
}

/// Sends `signal` to the process group led by `pid` (errors ignored: the
/// group may be gone already).
fn kill_group(pid: Option<u32>, signal: rustix::process::Signal) {
    if let Some(g) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(g, signal);
    }
}

/// TERM to the command's process group, KILL after a grace; the exit status.
async fn stop_group(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
) -> Option<std::process::ExitStatus> {
    kill_group(pid, rustix::process::Signal::TERM);
    if let Ok(Ok(s)) = tokio::time::timeout(KILL_GRACE, child.wait()).await {
        // The leader is gone; what it left in its group goes too.
        kill_group(pid, rustix::process::Signal::KILL);
        return Some(s);
    }
    kill_group(pid, rustix::process::Signal::KILL);
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// Sends each line of `r` as `{"stream": name, "line": ...}`.
async fn pump(r: impl AsyncRead + Unpin, name: &'static str, tx: mpsc::Sender<Bytes>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = json!({"stream": name, "line": String::from_utf8_lossy(&buf)});
        if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
            return;
        }
    }
}
