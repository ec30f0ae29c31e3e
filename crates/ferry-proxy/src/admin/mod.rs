//! The admin API: JSON over HTTP/1.1 on its own address, bearer-token auth.
//! Every change is validated whole before anything is applied; a refused call
//! changes nothing. The schema is in `docs/admin-api.yaml`.
//!
//! Authentication fails closed: every call but `/healthz` needs the token
//! (`/metrics` too: it names pools, servers and database nodes), compared
//! by `ferry_secret::Secret::matches` (constant time, no length leak); only
//! `insecure_no_auth` on a loopback address opens it. Connections go
//! through the shared accept loop with the API's own cap (`[admin]
//! max_connections`) and get the router's client deadlines.
//!
//! The routes and their bodies are `ferry-admin-api`'s (the types `ferry
//! ctl`, the orchestrator and the fleet use): requests are read into them
//! and answers written from them. One file per resource: [`sites`],
//! [`pools`], [`certs`], [`tunnels`], [`router`] (status, metrics, reload).

// Helpers here return the error response itself; it is built once per refused
// call, so its size does not matter.
#![allow(clippy::result_large_err)]

mod certs;
mod pools;
mod router;
mod sites;
mod tunnels;

use std::sync::Arc;

use bytes::Bytes;
use ferry_admin_api::router::{ErrorBody, Health};
use ferry_admin_api::routes;
use ferry_admin_api::Route;
use ferry_model::Hostname;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::LengthLimitError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::deadline::{BodyDeadline, SendDeadline};
use crate::listen::{self, Cap};
use crate::server::{serve_http, HttpContext, HttpLimits};
use crate::state::AdminAuth;
use crate::stats::{ListenerKind, Stalled};
use crate::tls::Alpn;
use crate::Proxy;

/// Largest admin request body: room for ~100k sites in one batch.
const MAX_BODY: usize = 32 * 1024 * 1024;

type Resp = Response<Full<Bytes>>;

pub(crate) fn spawn(proxy: Arc<Proxy>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let cap = proxy
        .shared
        .config
        .lock()
        .0
        .admin
        .as_ref()
        .map_or(1, |a| a.max_connections);
    let metrics = Arc::clone(&proxy.shared.metrics);
    let conn_shutdown = shutdown.clone();
    listen::spawn(
        ListenerKind::Admin,
        listener,
        vec![Cap::new(cap)],
        metrics,
        None,
        shutdown,
        move |stream, peer| {
            let proxy = Arc::clone(&proxy);
            let shutdown = conn_shutdown.clone();
            async move { serve(proxy, stream, peer, shutdown).await }
        },
    );
}

async fn serve(
    proxy: Arc<Proxy>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let settings = proxy.shared.settings.load_full();
    // hyper's head timer starts at once: a silent connection is closed
    // after header_timeout like a slow head.
    let limits = HttpLimits {
        header_timeout: settings.header_timeout,
        keepalive_timeout: settings.keepalive_timeout,
    };
    let metrics = Arc::clone(&proxy.shared.metrics);
    let unread = crate::settle::Unread::of(&stream);
    let io = SendDeadline::new(stream, settings.body_timeout, Arc::clone(&metrics));
    drop(settings);
    let handler = move |req| {
        let proxy = Arc::clone(&proxy);
        async move { handle(&proxy, req).await }
    };
    let cx = HttpContext {
        peer,
        proto: Alpn::Http1,
        tls: false,
        limits,
        metrics,
        shutdown,
        unread,
    };
    serve_http(io, handler, cx).await;
}

/// An answer: `v` as JSON with `status`.
fn answer<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    // Serialising these plain structs cannot fail; if it ever did, the
    // caller gets a 500 rather than a panic.
    let (status, text) = match serde_json::to_string(v) {
        Ok(t) => (status, t),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\": \"cannot encode the answer: {e}\"}}"),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(text + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn ok<T: Serialize>(v: &T) -> Resp {
    answer(StatusCode::OK, v)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    answer(
        status,
        &ErrorBody {
            error: msg.to_string(),
        },
    )
}

/// A request body as `T`, or the 400 that says why not.
fn read_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Resp> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

async fn handle(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Unauthenticated: what load balancers poll; it says nothing but "up".
    if method == Method::GET && path == "/healthz" {
        return ok(&Health { ok: true });
    }
    let allowed = match &**proxy.shared.admin_auth.load() {
        AdminAuth::Token(expected) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
                .unwrap_or(b"");
            expected.matches(given)
        }
        AdminAuth::Open => true,
        AdminAuth::Nobody => false,
    };
    if !allowed {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let Some((route, args)) = Route::resolve(method.as_str(), &path) else {
        return error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    // Answered before the body is read, as they take none.
    match route {
        Route::Healthz => return ok(&Health { ok: true }),
        Route::Metrics => return router::metrics(proxy),
        _ => {}
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let body_timeout = proxy.shared.settings.load().body_timeout;
    let body = BodyDeadline::new(
        req.into_body(),
        body_timeout,
        Stalled::ClientSend,
        Arc::clone(&proxy.shared.metrics),
    );
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"))
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    // `resolve` gives as many arguments as the route's path has.
    let arg = |i: usize| args.get(i).copied().unwrap_or("");
    // Exhaustive: a route added to ferry-admin-api is served here or this
    // does not compile.
    match route {
        Route::Healthz => ok(&Health { ok: true }),
        Route::Metrics => router::metrics(proxy),
        Route::Status => router::status(proxy),
        Route::Reload => router::reload(proxy).await,
        Route::ListSites => sites::list(proxy, &query),
        Route::ApplySites => sites::put_batch(proxy, &body),
        Route::QuerySites => sites::query(proxy, &body),
        Route::RemoveSites => sites::remove_batch(proxy, &body),
        Route::GetSite => sites::get(proxy, arg(0)),
        Route::PutSite => sites::put_one(proxy, arg(0), &body),
        Route::DeleteSite => sites::delete_one(proxy, arg(0)),
        Route::ListPools => pools::list(proxy),
        Route::SetServer => pools::set_server(proxy, arg(0), arg(1), &body),
        Route::AddServer => pools::add_server(proxy, arg(0), &body),
        Route::RemoveServer => pools::remove_server(proxy, arg(0), arg(1)),
        Route::ListTunnels => tunnels::list(proxy),
        Route::GetTunnel => tunnels::get(proxy, arg(0)),
        Route::RepointTunnel => tunnels::repoint(proxy, arg(0), &body),
        Route::TunnelUses => tunnels::uses(proxy, arg(0)),
        Route::ExportUses => tunnels::export_uses(proxy),
        Route::ListCerts => certs::list(proxy),
        Route::PutCert => certs::put(proxy, arg(0), &body),
        Route::DeleteCert => certs::delete(proxy, arg(0)),
    }
}

fn parse_host(raw: &str) -> Result<Hostname, Resp> {
    let decoded = routes::decode(raw);
    Hostname::parse(&decoded)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("site {decoded:?}: {e}")))
}
