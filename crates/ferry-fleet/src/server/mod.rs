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
//!
//! Here: the server's state, its counters and the accept loop; `handle.rs`
//! the routes and the checks a request passes before it runs; `run.rs` one
//! accepted command from its `accepted` record to its `end`; `stall.rs` the
//! write deadline of a connection.

mod handle;
mod run;
mod stall;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferry_journal::now_ms;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::audit::AuditLog;
use crate::error::Result;
use crate::exec_config::{ExecConfig, Limits};
use handle::handle;
use stall::StallGuard;

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

/// Serves one connection: HTTP/1.1 under the head deadline and the write deadline.
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
