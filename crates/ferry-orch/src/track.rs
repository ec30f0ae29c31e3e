//! The tracking server: a small HTTP/1.1 server showing a migration live.
//!
//! Routes (GET only; any other method is 405, any other path 404):
//! - `/`: the live page ([`crate::report::render_html_with`] with `live`,
//!   and what the plan expected when [`Tracker::expected`] was given);
//! - `/v1/migration`: the [`MigrationStatus`] as JSON (503 while the source
//!   has none);
//! - `/v1/migration/events`: server-sent events; an `event: status` whose
//!   data is the rendered `<main>` fragment each time the status changes,
//!   and a `: keepalive` comment every 15 s;
//! - `/healthz`.
//!
//! The status source may be slow (it folds a SQLite journal), so it is
//! called on the blocking pool, and by one poller shared by all event
//! streams, only while at least one stream is open. [`Tracker`] counts the
//! open streams, so a test can wait for a browser instead of sleeping.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{interval, interval_at, Instant, MissedTickBehavior};

use crate::report::{self, Expected};
use crate::status::MigrationStatus;

/// Where the server reads the migration's status; `None` while there is none.
pub type StatusSource = Arc<dyn Fn() -> Option<MigrationStatus> + Send + Sync>;

/// Event streams open at once, by default; more are refused with 503.
pub const MAX_SUBSCRIBERS: usize = 64;
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// How often the status source is read while a stream is open.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// A comment on idle streams, so proxies and browsers keep them open.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// Frames queued for one stream; a client that falls this far behind is dropped.
const STREAM_QUEUE: usize = 8;
/// A client gets this long to send a request's head, so idle connections
/// do not hold a slot for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `serve` waits for open connections after shutdown.
const DRAIN_FOR: Duration = Duration::from_secs(5);

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

type Resp = Response<BoxBody<Bytes, Infallible>>;

/// The tracking server's settings and counters. Cheap to clone: clones
/// share the counters.
#[derive(Clone)]
pub struct Tracker {
    title: String,
    expected: Arc<Expected>,
    max_subscribers: usize,
    keepalive: Duration,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    subscribers: AtomicUsize,
    events_sent: AtomicU64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker {
            title: "Ferry migration".to_string(),
            expected: Arc::default(),
            max_subscribers: MAX_SUBSCRIBERS,
            keepalive: KEEPALIVE_EVERY,
            counters: Arc::default(),
        }
    }

    /// The page's title and heading.
    pub fn title(mut self, title: impl Into<String>) -> Tracker {
        self.title = title.into();
        self
    }

    /// What the plan expected (lanes, predicted freezes), shown beside
    /// what happened.
    pub fn expected(mut self, expected: Expected) -> Tracker {
        self.expected = Arc::new(expected);
        self
    }

    /// Event streams allowed at once (default [`MAX_SUBSCRIBERS`]).
    pub fn max_subscribers(mut self, n: usize) -> Tracker {
        self.max_subscribers = n;
        self
    }

    /// How often an idle stream gets a `: keepalive` comment (default
    /// [`KEEPALIVE_EVERY`]).
    pub fn keepalive_every(mut self, every: Duration) -> Tracker {
        self.keepalive = every;
        self
    }

    /// Event streams open now.
    pub fn subscribers(&self) -> usize {
        self.counters.subscribers.load(Ordering::SeqCst)
    }

    /// `status` events handed to streams so far (all streams together).
    pub fn events_sent(&self) -> u64 {
        self.counters.events_sent.load(Ordering::SeqCst)
    }

    /// Serves until `shutdown` becomes true (or its sender is dropped), then
    /// ends the event streams, lets requests under way finish (up to 5 s)
    /// and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        status: StatusSource,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let (frames_tx, frames) = watch::channel(None);
        let ctx = Arc::new(Ctx {
            tracker: self.clone(),
            status: Arc::clone(&status),
            frames,
            shutdown: shutdown.clone(),
        });
        let poller = tokio::spawn(poll_status(
            self.clone(),
            status,
            frames_tx,
            shutdown.clone(),
        ));
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stopped(&mut shutdown) => break,
            };
            let stream = tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors or the like: wait rather than spin.
                        tracing::warn!(error = %e, "tracking server: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stopped(&mut shutdown) => break,
            };
            while conns.try_join_next().is_some() {}
            let ctx = Arc::clone(&ctx);
            let mut conn_shutdown = shutdown.clone();
            conns.spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req| {
                    let ctx = Arc::clone(&ctx);
                    async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stopped(&mut conn_shutdown) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(DRAIN_FOR, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        poller.abort();
        Ok(())
    }
}

/// [`Tracker::serve`] with the default settings.
pub async fn serve(
    listener: TcpListener,
    status: StatusSource,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    Tracker::new().serve(listener, status, shutdown).await
}

struct Ctx {
    tracker: Tracker,
    status: StatusSource,
    /// The latest `status` event, rendered once for every stream.
    frames: watch::Receiver<Option<Bytes>>,
    shutdown: watch::Receiver<bool>,
}

/// Resolves once shutdown is asked for, or nobody can ask any more.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Reads the source on the blocking pool. A panicking source reads as none.
async fn fetch(status: &StatusSource) -> Option<MigrationStatus> {
    let status = Arc::clone(status);
    match tokio::task::spawn_blocking(move || status()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "tracking server: status source failed");
            None
        }
    }
}

/// The one poller behind every event stream: while any stream is open, reads
/// the status every 250 ms and publishes a rendered frame when it changed.
/// With no stream open it reads nothing and forgets the last frame, so the
/// next stream never starts with a stale one.
async fn poll_status(
    tracker: Tracker,
    status: StatusSource,
    frames: watch::Sender<Option<Bytes>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = interval(POLL_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Option<MigrationStatus> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => return,
        }
        if tracker.subscribers() == 0 {
            if last.take().is_some() {
                frames.send_replace(None);
            }
            continue;
        }
        let Some(s) = fetch(&status).await else {
            continue;
        };
        if last.as_ref() == Some(&s) {
            continue;
        }
        let frame = sse_event("status", &report::render_main_with(&s, &tracker.expected));
        last = Some(s);
        frames.send_replace(Some(frame));
    }
}

/// One server-sent event; every line of `data` gets its own `data:` field.
fn sse_event(event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + data.len() / 16 + 32);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in data.split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

async fn handle(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if !matches!(
        path,
        "/" | "/v1/migration" | "/v1/migration/events" | "/healthz" | "/metrics"
    ) {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    }
    if req.method() != Method::GET {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} not allowed; use GET", req.method()),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/" => page(ctx).await,
        "/v1/migration" => match fetch(&ctx.status).await {
            Some(s) => match serde_json::to_vec(&s) {
                Ok(body) => with_type(full(StatusCode::OK, body), "application/json"),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no migration status yet"),
        },
        "/v1/migration/events" => events(ctx),
        "/metrics" => match fetch(&ctx.status).await {
            Some(s) => with_type(
                full(StatusCode::OK, crate::metrics::render(&s)),
                "text/plain; version=0.0.4",
            ),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no migration status yet"),
        },
        _ => with_type(full(StatusCode::OK, "{\"ok\":true}\n"), "application/json"),
    }
}

async fn page(ctx: &Ctx) -> Resp {
    let title = &ctx.tracker.title;
    let (code, html) = match fetch(&ctx.status).await {
        Some(s) => (
            StatusCode::OK,
            report::render_html_with(&s, &ctx.tracker.expected, title, true),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            report::render_page(
                title,
                &report::render_empty_main("No migration status yet."),
                true,
            ),
        ),
    };
    let mut r = with_type(full(code, html), "text/html; charset=utf-8");
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// One open event stream, counted in [`Tracker::subscribers`] while alive.
struct Subscriber {
    counters: Arc<Counters>,
}

impl Subscriber {
    fn try_new(tracker: &Tracker) -> Option<Subscriber> {
        let max = tracker.max_subscribers;
        tracker
            .counters
            .subscribers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Subscriber {
            counters: Arc::clone(&tracker.counters),
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.counters.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn events(ctx: &Arc<Ctx>) -> Resp {
    let Some(sub) = Subscriber::try_new(&ctx.tracker) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open; try again later",
        );
    };
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    tokio::spawn(stream_events(
        sub,
        ctx.tracker.keepalive,
        ctx.frames.clone(),
        ctx.shutdown.clone(),
        tx,
    ));
    let mut r = Response::new(EventBody { rx }.boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Feeds one stream: the current frame, every new one, keepalives; ends at
/// shutdown, when the client goes away, or when it stops reading.
async fn stream_events(
    sub: Subscriber,
    keepalive_every: Duration,
    mut frames: watch::Receiver<Option<Bytes>>,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
) {
    // Reconnect after 2 s when the stream breaks.
    if tx.try_send(Bytes::from_static(b"retry: 2000\n\n")).is_err() {
        return;
    }
    let current = frames.borrow_and_update().clone();
    if let Some(frame) = current {
        if tx.try_send(frame).is_err() {
            return;
        }
        sub.counters.events_sent.fetch_add(1, Ordering::SeqCst);
    }
    let mut keepalive = interval_at(Instant::now() + keepalive_every, keepalive_every);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            _ = tx.closed() => break,
            _ = keepalive.tick() => match tx.try_send(Bytes::from_static(b": keepalive\n\n")) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            },
            changed = frames.changed() => {
                if changed.is_err() {
                    break;
                }
                let frame = frames.borrow_and_update().clone();
                if let Some(frame) = frame {
                    // A full queue means the client stopped reading: drop it
                    // (the browser reconnects and gets the current page).
                    if tx.try_send(frame).is_err() {
                        break;
                    }
                    sub.counters.events_sent.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A response body fed by a channel; ends when the sender is dropped.
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn full(code: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = code;
    r
}

fn with_type(mut r: Resp, content_type: &'static str) -> Resp {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Resp {
    let body = json!({ "error": msg.to_string() }).to_string() + "\n";
    with_type(full(code, body), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_event_prefixes_every_line() {
        let b = sse_event("status", "<main>\n<p>a</p>\r\n</main>");
        assert_eq!(
            &b[..],
            b"event: status\ndata: <main>\ndata: <p>a</p>\ndata: \ndata: </main>\n\n"
        );
    }

    #[test]
    fn subscribers_are_bounded_and_released() {
        let t = Tracker::new().max_subscribers(2);
        let a = Subscriber::try_new(&t).unwrap();
        let _b = Subscriber::try_new(&t).unwrap();
        assert!(Subscriber::try_new(&t).is_none());
        assert_eq!(t.subscribers(), 2);
        drop(a);
        assert_eq!(t.subscribers(), 1);
        assert!(Subscriber::try_new(&t).is_some());
    }
}
