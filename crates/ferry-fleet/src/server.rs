//! The exec server an agent runs: HTTP/1.1 on its own address (the sync
//! port speaks a binary protocol in blocking threads; commands want
//! streaming and timeouts, which hyper and tokio give for free).
//!
//! `POST /v1/exec` with `Authorization: Bearer TOKEN` and
//! `{"argv": [...], "timeout_ms": N}`:
//! - 401 no or unknown token; 400 unreadable body; 403 not in the
//!   allow-list (or not for this caller); 422 the program cannot start;
//! - 200 `application/x-ndjson`: one `{"stream": "stdout"|"stderr",
//!   "line": ...}` per output line as it comes, then one
//!   `{"exit": N|null, "signal": N|null, "timed_out": bool, "duration_ms": N}`.
//!
//! Every request, refused or run, is in the audit log. A command runs in its
//! own process group, which is killed (TERM, then KILL after a grace) when
//! its timeout passes or when the caller goes away, so a killed `ferry
//! update` leaves nothing running behind it. `GET /healthz` answers 200.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::allow::{decide, AllowEntry, Refusal};
use crate::audit::AuditLog;
use crate::error::Result;
use crate::exec_config::ExecConfig;

/// Largest request body (an argument vector).
const MAX_BODY: usize = 64 * 1024;
/// Longest output line sent as one record; longer lines are split.
const MAX_LINE: usize = 64 * 1024;
/// Between TERM and KILL when a command is stopped.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long output still in the pipes is awaited once the command ended (a
/// background child of the command may hold them open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

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

/// The state of a running exec server.
pub struct ExecServer {
    cfg: ExecConfig,
    audit: AuditLog,
    seq: AtomicU64,
    /// Distinguishes this agent's run ids from an earlier process's.
    boot: u64,
}

impl ExecServer {
    pub fn new(cfg: ExecConfig) -> Result<Arc<ExecServer>> {
        let audit = AuditLog::open(&cfg.audit_log)?;
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Arc::new(ExecServer {
            cfg,
            audit,
            seq: AtomicU64::new(0),
            boot,
        }))
    }

    fn audit(&self, event: &str, fields: Value) {
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if let Err(e) = self.audit.record(event, fields) {
            // The request goes on: refusing every command because the log's
            // disk is full would stop the very fix. The operator sees it.
            tracing::error!(error = %e, "audit log write failed");
        }
    }

    /// The caller whose token this is (each token compared in constant time).
    fn caller(&self, header: Option<&str>) -> Option<String> {
        let given = header?.strip_prefix("Bearer ")?.trim().as_bytes();
        let mut found = None;
        for (name, token) in &self.cfg.callers {
            if constant_time_eq(given, token.as_bytes()) {
                found = Some(name.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves until `shutdown` turns true. Takes a bound listener (tests bind
/// port 0).
pub async fn serve(
    listener: TcpListener,
    srv: Arc<ExecServer>,
    mut shutdown: watch::Receiver<bool>,
) {
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
            _ = shutdown.changed() => return,
        };
        let srv = srv.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let srv = srv.clone();
                async move { Ok::<_, Infallible>(handle(srv, peer, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(%peer, error = %e, "exec connection ended");
            }
        });
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
        (&Method::GET, "/healthz") => return json_resp(StatusCode::OK, &json!({"ok": true})),
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
        srv.audit("unauthenticated", json!({"peer": peer.to_string()}));
        return json_resp(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "missing or unknown bearer token"}),
        );
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg = format!("request body: {e} (at most {MAX_BODY} bytes)");
            srv.audit(
                "bad_request",
                json!({"peer": peer.to_string(), "caller": caller, "reason": msg}),
            );
            return json_resp(StatusCode::BAD_REQUEST, &json!({ "error": msg }));
        }
    };
    let er: ExecRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("request body: {e}");
            srv.audit(
                "bad_request",
                json!({"peer": peer.to_string(), "caller": caller, "reason": msg}),
            );
            return json_resp(StatusCode::BAD_REQUEST, &json!({ "error": msg }));
        }
    };
    if er.argv.is_empty() || er.argv.iter().any(|a| a.contains('\0')) {
        let msg = "argv: must be non-empty, with no NUL byte in any argument";
        srv.audit(
            "bad_request",
            json!({"peer": peer.to_string(), "caller": caller, "argv": er.argv, "reason": msg}),
        );
        return json_resp(StatusCode::BAD_REQUEST, &json!({ "error": msg }));
    }
    let entry = match decide(&srv.cfg.allow, &caller, &er.argv) {
        Ok(e) => e.clone(),
        Err(r) => {
            let msg = match r {
                Refusal::NotAllowed => "not in this agent's allow-list".to_string(),
                Refusal::CallerNotAllowed => format!("allowed, but not for caller {caller:?}"),
            };
            srv.audit(
                "refused",
                json!({"peer": peer.to_string(), "caller": caller, "argv": er.argv, "reason": msg}),
            );
            return json_resp(
                StatusCode::FORBIDDEN,
                &json!({"error": format!("{:?}: {msg}", er.argv)}),
            );
        }
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
    match run.start(&srv) {
        Ok(rx) => {
            let mut r = Response::new(Either::Right(ChannelBody(rx)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-ndjson"),
            );
            r
        }
        Err(msg) => json_resp(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "error": msg })),
    }
}

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
}

impl Run {
    fn who(&self) -> Map<String, Value> {
        let v = json!({
            "id": self.id,
            "caller": self.caller,
            "peer": self.peer.to_string(),
            "argv": self.argv,
            "shell": self.entry.shell,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// Spawns the command and the task that streams its output.
    fn start(self, srv: &Arc<ExecServer>) -> std::result::Result<mpsc::Receiver<Bytes>, String> {
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
                let msg = format!("cannot start {:?}: {e}", self.argv[0]);
                let mut f = self.who();
                f.insert("reason".into(), msg.clone().into());
                srv.audit("spawn_failed", Value::Object(f));
                return Err(msg);
            }
        };
        let mut f = self.who();
        f.insert("pid".into(), child.id().into());
        f.insert(
            "timeout_ms".into(),
            (self.timeout.as_millis() as u64).into(),
        );
        srv.audit("start", Value::Object(f));
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let srv = srv.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let pumps = [
                child
                    .stdout
                    .take()
                    .map(|o| tokio::spawn(pump(o, "stdout", tx.clone()))),
                child
                    .stderr
                    .take()
                    .map(|e| tokio::spawn(pump(e, "stderr", tx.clone()))),
            ];
            let pid = child.id();
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
            };
            let status = match ending {
                Ending::Exited(s) => Some(s),
                _ => stop_group(&mut child, pid).await,
            };
            for p in pumps.into_iter().flatten() {
                if tokio::time::timeout(DRAIN_AFTER_EXIT, p).await.is_err() {
                    tracing::warn!(id = %self.id, "output still open after the command ended (a background process?)");
                }
            }
            let duration_ms = started.elapsed().as_millis() as u64;
            let exit = status.and_then(|s| s.code());
            let signal = status.and_then(|s| s.signal());
            let timed_out = matches!(ending, Ending::TimedOut);
            let gone = matches!(ending, Ending::CallerGone);
            let last = json!({
                "exit": exit,
                "signal": signal,
                "timed_out": timed_out,
                "duration_ms": duration_ms,
            });
            let _ = tx.send(Bytes::from(format!("{last}\n"))).await;
            let mut f = self.who();
            f.insert("exit".into(), exit.into());
            f.insert("signal".into(), signal.into());
            f.insert("timed_out".into(), timed_out.into());
            f.insert("caller_gone".into(), gone.into());
            f.insert("duration_ms".into(), duration_ms.into());
            srv.audit("end", Value::Object(f));
        });
        Ok(rx)
    }
}

/// TERM to the command's process group, KILL after a grace; the exit status.
async fn stop_group(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
) -> Option<std::process::ExitStatus> {
    let group = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32));
    if let Some(g) = group {
        let _ = rustix::process::kill_process_group(g, rustix::process::Signal::TERM);
    }
    if let Ok(Ok(s)) = tokio::time::timeout(KILL_GRACE, child.wait()).await {
        if let Some(g) = group {
            // The leader is gone; what it left in its group goes too.
            let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
        }
        return Some(s);
    }
    if let Some(g) = group {
        let _ = rustix::process::kill_process_group(g, rustix::process::Signal::KILL);
    }
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
