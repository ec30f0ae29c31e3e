//! The routes of the exec server, and the checks a `POST /v1/exec` passes
//! in order before its command runs: the caller's token, the body, the
//! allow-list, a `max_running` slot. Every refusal after the token is on
//! the audit log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::run::Run;
use super::{ChannelBody, ExecServer, RespBody, MAX_BODY};
use crate::allow::{decide, AllowEntry, Refusal};

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
pub(super) struct ExecRequest {
    pub(super) argv: Vec<String>,
    pub(super) timeout_ms: Option<u64>,
}

pub(super) async fn handle(
    srv: Arc<ExecServer>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<RespBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => healthz(&srv),
        (&Method::GET, "/metrics") => metrics(&srv, peer, &req),
        (&Method::POST, "/v1/exec") => exec(srv, peer, req).await,
        (_, path) => json_resp(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no route {} {path}", req.method())}),
        ),
    }
}

fn healthz(srv: &ExecServer) -> Response<RespBody> {
    if srv.stats.audit_failing.load(Ordering::Relaxed) {
        json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ok": false, "error": "the audit log cannot be written: commands are refused"}),
        )
    } else {
        json_resp(StatusCode::OK, &json!({"ok": true}))
    }
}

fn metrics(srv: &ExecServer, peer: SocketAddr, req: &Request<Incoming>) -> Response<RespBody> {
    // Counters are for the operator: any caller's token, as the routers'
    // /metrics wants the admin token.
    if srv.caller(bearer(req)).is_none() {
        srv.note_unauthenticated(peer);
        return unauthorized();
    }
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(srv.metrics()))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn unauthorized() -> Response<RespBody> {
    json_resp(
        StatusCode::UNAUTHORIZED,
        &json!({"error": "missing or unknown bearer token"}),
    )
}

async fn exec(
    srv: Arc<ExecServer>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let Some(caller) = srv.caller(bearer(&req)) else {
        srv.note_unauthenticated(peer);
        return unauthorized();
    };
    let asker = Asker {
        srv: &srv,
        peer,
        caller: &caller,
    };
    let er = match read_exec_request(&srv, req).await {
        Ok(er) => er,
        Err(bad) => return asker.bad_request(bad).await,
    };
    let (entry, permit) = match asker.admit(&er.argv).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let run = Run::new(&srv, caller, peer, er, entry);
    start(srv, run, permit).await
}

/// A request refused before its argv was checked against the allow-list.
struct BadRequest {
    status: StatusCode,
    msg: String,
    /// The argv, when the body was read as far as it.
    argv: Option<Vec<String>>,
}

/// The body of `POST /v1/exec`, read within the limits and checked.
async fn read_exec_request(
    srv: &ExecServer,
    req: Request<Incoming>,
) -> Result<ExecRequest, BadRequest> {
    let bad = |status, msg| BadRequest {
        status,
        msg,
        argv: None,
    };
    let body = read_body(req.into_body(), srv.limits().body_timeout)
        .await
        .map_err(|(status, msg)| bad(status, msg))?;
    let er: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("request body: {e}")))?;
    if er.argv.is_empty() || er.argv.iter().any(|a| a.contains('\0')) {
        return Err(BadRequest {
            status: StatusCode::BAD_REQUEST,
            msg: "argv: must be non-empty, with no NUL byte in any argument".to_string(),
            argv: Some(er.argv),
        });
    }
    Ok(er)
}

/// An authenticated caller on one connection: whom refusals are recorded for.
struct Asker<'a> {
    srv: &'a ExecServer,
    peer: SocketAddr,
    caller: &'a str,
}

impl Asker<'_> {
    /// Puts a refused request on the audit log. Best effort: the refusal is
    /// answered either way, and a failing log is counted by `audit`.
    async fn record(&self, event: &'static str, argv: Value, reason: &str) {
        let _ = self
            .srv
            .audit(
                event,
                json!({"peer": self.peer.to_string(), "caller": self.caller, "argv": argv, "reason": reason}),
            )
            .await;
    }

    async fn bad_request(&self, bad: BadRequest) -> Response<RespBody> {
        let BadRequest { status, msg, argv } = bad;
        self.srv.stats.bad_request.fetch_add(1, Ordering::Relaxed);
        self.record("bad_request", json!(argv), &msg).await;
        json_resp(status, &json!({ "error": msg }))
    }

    /// The allow-list entry for `argv` and a `max_running` slot, or the
    /// answer refusing them (on record).
    async fn admit(
        &self,
        argv: &[String],
    ) -> Result<(AllowEntry, OwnedSemaphorePermit), Response<RespBody>> {
        let srv = self.srv;
        let entry = match decide(&srv.cfg.allow, self.caller, argv) {
            Ok(e) => e.clone(),
            Err(r) => {
                let msg = match r {
                    Refusal::NotAllowed => "not in this agent's allow-list".to_string(),
                    Refusal::CallerNotAllowed => {
                        format!("allowed, but not for caller {:?}", self.caller)
                    }
                };
                let counter = &srv.stats.refused;
                return Err(self.refuse(argv, StatusCode::FORBIDDEN, msg, counter).await);
            }
        };
        let Ok(permit) = srv.running.clone().try_acquire_owned() else {
            let msg = format!(
                "{} commands already running on this agent (limits.max_running); try again later",
                srv.limits().max_running
            );
            let counter = &srv.stats.busy;
            return Err(self
                .refuse(argv, StatusCode::TOO_MANY_REQUESTS, msg, counter)
                .await);
        };
        Ok((entry, permit))
    }

    async fn refuse(
        &self,
        argv: &[String],
        status: StatusCode,
        msg: String,
        counter: &AtomicU64,
    ) -> Response<RespBody> {
        counter.fetch_add(1, Ordering::Relaxed);
        self.record("refused", json!(argv), &msg).await;
        let mut r = json_resp(status, &json!({"error": format!("{argv:?}: {msg}")}));
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
        }
        r
    }
}

/// Starts `run` as its own task and answers with its output stream, or
/// with why it did not start.
async fn start(srv: Arc<ExecServer>, run: Run, permit: OwnedSemaphorePermit) -> Response<RespBody> {
    // The run is its own task from here: if the connection drops while the
    // audit is written or the command spawned, hyper drops this handler,
    // and the run must still end (stopped, reaped, on record).
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run.execute(srv, permit, ready_tx));
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
