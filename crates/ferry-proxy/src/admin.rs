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

// Helpers here return the error response itself; it is built once per refused
// call, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ferry_model::{Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};
use ferry_router::{ApplyError, Outcome, SiteChange, SiteId};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::LengthLimitError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::deadline::{BodyDeadline, SendDeadline};
use crate::listen::{self, Cap, Kind};
use crate::server::{serve_http, HttpLimits};
use crate::state::AdminAuth;
use crate::stats::Stalled;
use crate::tls::Alpn;
use crate::{Proxy, ProxyError};

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
        Kind::Admin,
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
    let io = SendDeadline::new(stream, settings.body_timeout, Arc::clone(&metrics));
    drop(settings);
    let handler = move |req| {
        let proxy = Arc::clone(&proxy);
        async move { handle(&proxy, req).await }
    };
    serve_http(
        io,
        peer,
        Alpn::Http1,
        false,
        limits,
        handler,
        metrics,
        shutdown,
    )
    .await;
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    json_resp(status, &json!({ "error": msg.to_string() }))
}

async fn handle(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Unauthenticated: what load balancers poll; it says nothing but "up".
    if method == Method::GET && path == "/healthz" {
        return json_resp(StatusCode::OK, &json!({"ok": true}));
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
    if method == Method::GET && path == "/metrics" {
        return metrics(proxy);
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
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (Method::GET, ["v1", "status"]) => status(proxy),
        (Method::GET, ["v1", "sites"]) => list_sites(proxy, &query),
        (Method::POST, ["v1", "sites"]) => put_batch(proxy, &body),
        (Method::POST, ["v1", "sites", "query"]) => query_sites(proxy, &body),
        (Method::POST, ["v1", "sites", "remove"]) => remove_batch(proxy, &body),
        (Method::GET, ["v1", "sites", host]) => get_site(proxy, host),
        (Method::PUT, ["v1", "sites", host]) => put_one(proxy, host, &body),
        (Method::DELETE, ["v1", "sites", host]) => delete_one(proxy, host),
        (Method::GET, ["v1", "pools"]) => pools(proxy),
        (Method::PUT, ["v1", "pools", pool, "servers", server]) => {
            set_server(proxy, pool, server, &body)
        }
        (Method::POST, ["v1", "pools", pool, "servers"]) => add_server(proxy, pool, &body),
        (Method::DELETE, ["v1", "pools", pool, "servers", server]) => {
            remove_server(proxy, pool, server)
        }
        (Method::GET, ["v1", "tunnels"]) => list_tunnels(proxy),
        (Method::POST, ["v1", "tunnels", "uses", "export"]) => export_uses(proxy),
        (Method::GET, ["v1", "tunnels", name]) => {
            with_tunnel(proxy, name, |t| json_resp(StatusCode::OK, &t.json()))
        }
        (Method::PUT, ["v1", "tunnels", name]) => repoint_tunnel(proxy, name, &body),
        (Method::GET, ["v1", "tunnels", name, "uses"]) => {
            with_tunnel(proxy, name, |t| json_resp(StatusCode::OK, &t.uses_json()))
        }
        (Method::GET, ["v1", "certs"]) => list_certs(proxy),
        (Method::PUT, ["v1", "certs", name]) => put_cert(proxy, name, &body),
        (Method::DELETE, ["v1", "certs", name]) => delete_cert(proxy, name),
        (Method::POST, ["v1", "reload"]) => match proxy.reload_from_file().await {
            Ok(r) => json_resp(StatusCode::OK, &json!({ "reloaded": r })),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (_, ["v1", ..]) => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

fn metrics(proxy: &Proxy) -> Resp {
    let shared = &proxy.shared;
    let mut out = String::with_capacity(8192);
    shared.metrics.render(&mut out);
    let (held, in_flight) = shared.table.total_counters();
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP ferry_sites Sites in the table.\n# TYPE ferry_sites gauge\nferry_sites {}",
        shared.table.len()
    );
    let _ = writeln!(out, "# HELP ferry_site_table_bytes Approximate heap bytes of the site table.\n# TYPE ferry_site_table_bytes gauge\nferry_site_table_bytes {}", shared.table.heap_bytes());
    let _ = writeln!(out, "# HELP ferry_held_requests Requests held right now (frozen sites).\n# TYPE ferry_held_requests gauge\nferry_held_requests {held}");
    let _ = writeln!(out, "# HELP ferry_in_flight_requests Requests forwarded and not yet finished.\n# TYPE ferry_in_flight_requests gauge\nferry_in_flight_requests {in_flight}");
    let _ = writeln!(out, "# HELP ferry_max_connections The router's connection cap ([router] max_connections or derived from the open-file limit).\n# TYPE ferry_max_connections gauge\nferry_max_connections {}", proxy.traffic_cap.size());
    let _ = writeln!(out, "# HELP ferry_connection_slots_used Connections holding a slot of the router's cap (traffic, passthrough, tunnels).\n# TYPE ferry_connection_slots_used gauge\nferry_connection_slots_used {}", proxy.traffic_cap.used());
    let _ = writeln!(out, "# HELP ferry_open_connections Client connections open.\n# TYPE ferry_open_connections gauge\nferry_open_connections {}", proxy.conns.open());
    let _ = writeln!(out, "# HELP ferry_access_log_dropped_total Access log lines dropped because the writer fell behind.\n# TYPE ferry_access_log_dropped_total counter\nferry_access_log_dropped_total {}", shared.access_log.load().dropped.load(std::sync::atomic::Ordering::Relaxed));
    let _ = writeln!(
        out,
        "# HELP ferry_server_up Server health (1 up, 0 down).\n# TYPE ferry_server_up gauge"
    );
    let pools = shared.pools.load();
    let mut names: Vec<_> = pools.pools.keys().collect();
    names.sort();
    for name in &names {
        for s in &pools.pools[*name].pool.servers {
            let _ = writeln!(
                out,
                "ferry_server_up{{pool=\"{name}\",server=\"{}\"}} {}",
                s.name,
                u8::from(s.is_healthy())
            );
        }
    }
    let _ = writeln!(out, "# HELP ferry_server_ready Server administrative state is ready (1) or drain/maint (0).\n# TYPE ferry_server_ready gauge");
    for name in &names {
        for s in &pools.pools[*name].pool.servers {
            let _ = writeln!(
                out,
                "ferry_server_ready{{pool=\"{name}\",server=\"{}\",state=\"{}\"}} {}",
                s.name,
                s.state().as_str(),
                u8::from(s.state() == ServerState::Ready)
            );
        }
    }
    let _ = writeln!(out, "# HELP ferry_server_active_requests Requests in progress per server.\n# TYPE ferry_server_active_requests gauge");
    for name in &names {
        for s in &pools.pools[*name].pool.servers {
            let _ = writeln!(
                out,
                "ferry_server_active_requests{{pool=\"{name}\",server=\"{}\"}} {}",
                s.name,
                s.active_requests()
            );
        }
    }
    proxy.tunnels.render_metrics(&mut out);
    if let Some(tls) = proxy.tls.load().as_deref() {
        crate::tls::render_store(&tls.store, &mut out);
    }
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

fn status(proxy: &Proxy) -> Resp {
    let s = &proxy.shared;
    let (held, in_flight) = s.table.total_counters();
    json_resp(
        StatusCode::OK,
        &json!({
            "name": s.settings.load().name,
            "sites": s.table.len(),
            "held": held,
            "in_flight": in_flight,
            "listeners": proxy.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "open_connections": proxy.conns.open(),
            "requests_total": s.metrics.requests_total(),
        }),
    )
}

fn parse_host(raw: &str) -> Result<Hostname, Resp> {
    let decoded = percent_decode(raw);
    Hostname::parse(&decoded)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("site {decoded:?}: {e}")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && s.is_char_boundary(i + 3) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn site_json(proxy: &Proxy, rec: &SiteRecord, id: Option<SiteId>) -> Value {
    let (held, in_flight) = id.map(|i| proxy.shared.table.counters(i)).unwrap_or((0, 0));
    json!({
        "host": rec.host,
        "placement": rec.placement.to_string(),
        "state": rec.state,
        "epoch": rec.epoch,
        "held": held,
        "in_flight": in_flight,
    })
}

fn get_site(proxy: &Proxy, raw: &str) -> Resp {
    let host = match parse_host(raw) {
        Ok(h) => h,
        Err(r) => return r,
    };
    match proxy.shared.table.get(&host) {
        Some(route) => {
            let rec = SiteRecord {
                host,
                placement: (*route.placement).clone(),
                state: route.state,
                epoch: route.epoch,
            };
            json_resp(StatusCode::OK, &site_json(proxy, &rec, Some(route.site)))
        }
        None => error(StatusCode::NOT_FOUND, format!("no site {host}")),
    }
}

fn list_sites(proxy: &Proxy, query: &str) -> Resp {
    let mut limit = 1000usize;
    let mut offset = 0usize;
    let mut prefix = String::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => match v.parse() {
                Ok(n) => limit = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit={v:?} is not a number"),
                    )
                }
            },
            "offset" => match v.parse() {
                Ok(n) => offset = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("offset={v:?} is not a number"),
                    )
                }
            },
            "prefix" => prefix = percent_decode(v),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {other:?}"),
                )
            }
        }
    }
    let mut recs = proxy.shared.table.records();
    recs.retain(|r| r.host.as_str().starts_with(&prefix));
    recs.sort_by(|a, b| a.host.cmp(&b.host));
    let total = recs.len();
    let page: Vec<Value> = recs
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| json!({"host": r.host, "placement": r.placement.to_string(), "state": r.state, "epoch": r.epoch}))
        .collect();
    json_resp(StatusCode::OK, &json!({ "total": total, "sites": page }))
}

/// A site change as the API accepts it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteBody {
    #[serde(default)]
    host: Option<String>,
    placement: String,
    #[serde(default)]
    state: SiteState,
    epoch: u64,
}

fn to_record(proxy: &Proxy, host: Hostname, b: SiteBody) -> Result<SiteRecord, String> {
    let placement = Placement::parse(&b.placement).ok_or_else(|| {
        format!(
            "site {host}: placement {:?} is not \"pool:NAME\" or \"remote:NAME\"",
            b.placement
        )
    })?;
    if !proxy.shared.check_placement(&placement) {
        return Err(format!(
            "site {host}: placement {placement} names no configured pool or remote"
        ));
    }
    Ok(SiteRecord {
        host,
        placement,
        state: b.state,
        epoch: Epoch(b.epoch),
    })
}

fn apply(proxy: &Proxy, records: Vec<SiteRecord>) -> Resp {
    let shared = &proxy.shared;
    let changes = records
        .into_iter()
        .map(|record| SiteChange {
            record,
            extras: None,
        })
        .collect();
    match shared.apply_sites(changes) {
        Ok(outcomes) => {
            let count = |k: Outcome| outcomes.iter().filter(|(_, o)| *o == k).count();
            json_resp(
                StatusCode::OK,
                &json!({
                    "added": count(Outcome::Added),
                    "changed": count(Outcome::Changed),
                    "unchanged": count(Outcome::Unchanged),
                }),
            )
        }
        Err(ApplyError::Stale(list)) => {
            let sites: Vec<Value> = list
                .iter()
                .take(100)
                .map(|(h, cur, given)| json!({"host": h, "current_epoch": cur, "given_epoch": given}))
                .collect();
            json_resp(
                StatusCode::CONFLICT,
                &json!({
                    "error": format!("stale epoch for {} site(s); nothing was changed", list.len()),
                    "stale": sites,
                }),
            )
        }
        Err(ApplyError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(ApplyError::Persist(e)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, ProxyError::Store(e))
        }
    }
}

fn put_one(proxy: &Proxy, raw: &str, body: &[u8]) -> Resp {
    let host = match parse_host(raw) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let b: SiteBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if let Some(h) = &b.host {
        if Hostname::parse(h).ok().as_ref() != Some(&host) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body names host {h:?} but the path names {host}"),
            );
        }
    }
    match to_record(proxy, host, b) {
        Ok(rec) => apply(proxy, vec![rec]),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    sites: Vec<SiteBody>,
}

fn put_batch(proxy: &Proxy, body: &[u8]) -> Resp {
    let b: BatchBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let mut records = Vec::with_capacity(b.sites.len());
    for (i, s) in b.sites.into_iter().enumerate() {
        let Some(raw) = s.host.clone() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("sites[{i}]: missing \"host\""),
            );
        };
        let host = match Hostname::parse(&raw) {
            Ok(h) => h,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("sites[{i}]: host {raw:?}: {e}"),
                )
            }
        };
        match to_record(proxy, host, s) {
            Ok(r) => records.push(r),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("sites[{i}]: {e}")),
        }
    }
    apply(proxy, records)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsBody {
    hosts: Vec<String>,
}

fn parse_hosts(body: &[u8]) -> Result<Vec<Hostname>, Resp> {
    let b: HostsBody = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(b.hosts.len());
    for (i, raw) in b.hosts.iter().enumerate() {
        let h = Hostname::parse(raw)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("hosts[{i}]: {raw:?}: {e}")))?;
        if seen.insert(h.clone()) {
            out.push(h);
        }
    }
    Ok(out)
}

fn query_sites(proxy: &Proxy, body: &[u8]) -> Resp {
    let hosts = match parse_hosts(body) {
        Ok(h) => h,
        Err(r) => return r,
    };
    let sites: Vec<Value> = hosts
        .into_iter()
        .map(|h| match proxy.shared.table.get(&h) {
            Some(route) => {
                let rec = SiteRecord {
                    host: h,
                    placement: (*route.placement).clone(),
                    state: route.state,
                    epoch: route.epoch,
                };
                site_json(proxy, &rec, Some(route.site))
            }
            None => json!({"host": h, "absent": true}),
        })
        .collect();
    json_resp(StatusCode::OK, &json!({ "sites": sites }))
}

fn remove(proxy: &Proxy, hosts: Vec<Hostname>) -> Result<usize, Resp> {
    let shared = &proxy.shared;
    let _config = shared.config.lock();
    match shared
        .table
        .remove(&hosts, |h| shared.store.remove_sites(h))
    {
        Ok(out) => Ok(out.iter().filter(|(_, o)| *o == Outcome::Removed).count()),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

fn remove_batch(proxy: &Proxy, body: &[u8]) -> Resp {
    match parse_hosts(body).and_then(|h| remove(proxy, h)) {
        Ok(n) => json_resp(StatusCode::OK, &json!({ "removed": n })),
        Err(r) => r,
    }
}

fn delete_one(proxy: &Proxy, raw: &str) -> Resp {
    let host = match parse_host(raw) {
        Ok(h) => h,
        Err(r) => return r,
    };
    match remove(proxy, vec![host.clone()]) {
        Ok(0) => error(StatusCode::NOT_FOUND, format!("no site {host}")),
        Ok(n) => json_resp(StatusCode::OK, &json!({ "removed": n })),
        Err(r) => r,
    }
}

fn pools(proxy: &Proxy) -> Resp {
    let pools = proxy.shared.pools.load();
    let mut names: Vec<_> = pools.pools.keys().collect();
    names.sort();
    let list: Vec<Value> = names
        .into_iter()
        .map(|n| {
            let p = &pools.pools[n].pool;
            json!({
                "name": p.name,
                "serving_tier": p.serving_tier(),
                "servers": p.servers.iter().map(|s| json!({
                    "name": s.name,
                    "address": s.address.to_string(),
                    "tier": s.tier,
                    "weight": s.weight,
                    "state": s.state().as_str(),
                    "healthy": s.is_healthy(),
                    "active": s.active_requests(),
                    "served": s.served(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_resp(StatusCode::OK, &json!({ "pools": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerBody {
    state: ServerState,
}

fn set_server(proxy: &Proxy, pool: &str, server: &str, body: &[u8]) -> Resp {
    let b: ServerBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    match proxy.shared.set_server_state(pool, server, b.state) {
        Ok(true) => json_resp(
            StatusCode::OK,
            &json!({"pool": pool, "server": server, "state": b.state}),
        ),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no server {server} in pool {pool}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A server joining a pool at run time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServerBody {
    name: String,
    address: std::net::SocketAddr,
    #[serde(default)]
    tier: u8,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    state: ServerState,
}

fn one() -> u32 {
    1
}

fn runtime_server_error(e: crate::state::RuntimeServerError) -> Resp {
    use crate::state::RuntimeServerError as E;
    let status = match &e {
        E::NoPool(_) | E::NoServer(_) => StatusCode::NOT_FOUND,
        E::Exists(_) | E::NotDrained { .. } => StatusCode::CONFLICT,
    };
    error(status, e)
}

fn add_server(proxy: &Proxy, pool: &str, body: &[u8]) -> Resp {
    let b: NewServerBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let name_ok = !b.name.is_empty()
        && b.name.len() <= 64
        && b.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return error(
            StatusCode::BAD_REQUEST,
            format!("name {:?}: 1-64 letters, digits, '-', '_', '.'", b.name),
        );
    }
    let server = ferry_router::Server::new(b.name.clone(), b.address, b.tier, b.weight, b.state);
    match proxy.shared.add_server(pool, server) {
        Ok(()) => {
            tracing::info!(%pool, server = %b.name, address = %b.address, tier = b.tier, "server joined");
            json_resp(
                StatusCode::CREATED,
                &json!({"pool": pool, "server": b.name, "address": b.address.to_string(), "tier": b.tier, "state": b.state}),
            )
        }
        Err(e) => runtime_server_error(e),
    }
}

fn remove_server(proxy: &Proxy, pool: &str, server: &str) -> Resp {
    match proxy.shared.remove_server(pool, server) {
        Ok(()) => {
            tracing::info!(%pool, %server, "server left");
            json_resp(StatusCode::OK, &json!({"pool": pool, "removed": server}))
        }
        Err(e) => runtime_server_error(e),
    }
}

fn list_tunnels(proxy: &Proxy) -> Resp {
    let tunnels: Vec<Value> = proxy.tunnels.all().iter().map(|t| t.json()).collect();
    json_resp(StatusCode::OK, &json!({ "tunnels": tunnels }))
}

fn with_tunnel(proxy: &Proxy, raw: &str, f: impl FnOnce(&crate::tunnel::Tunnel) -> Resp) -> Resp {
    let name = percent_decode(raw);
    match proxy.tunnels.get(&name) {
        Some(t) => f(&t),
        None => error(StatusCode::NOT_FOUND, format!("no tunnel named {name:?}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepointBody {
    upstream: Option<Value>,
}

/// Points a tunnel's new connections at another server; open ones keep theirs.
fn repoint_tunnel(proxy: &Proxy, raw: &str, body: &[u8]) -> Resp {
    with_tunnel(proxy, raw, |t| {
        let b: RepointBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body: {e} (expected {{\"upstream\": \"HOST:PORT\"}})"),
                )
            }
        };
        let upstream = match b.upstream {
            Some(Value::String(s)) => s,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "upstream: must be a string \"HOST:PORT\"",
                )
            }
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "upstream: missing (expected \"HOST:PORT\")",
                )
            }
        };
        if let Err(why) = ferry_config::check_host_port(&upstream) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("upstream: {upstream:?} {why}"),
            );
        }
        let old = t.upstream.swap(Arc::new(upstream.clone()));
        tracing::info!(tunnel = %t.spec.load().name, from = %old, to = %upstream, "tunnel re-pointed");
        json_resp(StatusCode::OK, &t.json())
    })
}

/// Writes the observed uses to `observed_uses_file` (when configured) and
/// returns them either way.
fn export_uses(proxy: &Proxy) -> Resp {
    match proxy.tunnels.export() {
        Ok((path, lines)) => {
            let uses: Vec<Value> = lines
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            json_resp(
                StatusCode::OK,
                &json!({
                    "written": path.map(|p| p.display().to_string()),
                    "lines": lines.len(),
                    "uses": uses,
                }),
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the observed uses file: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("%2A.a.com"), "*.a.com");
        assert_eq!(super::percent_decode("a%2"), "a%2");
        assert_eq!(super::percent_decode("%"), "%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }
}

/// The certificate store, or the answer for a router without `[tls]`.
fn cert_store(proxy: &Proxy) -> Result<Arc<ferry_tls::CertStore>, Resp> {
    match proxy.tls.load().as_deref() {
        Some(t) => Ok(Arc::clone(&t.store)),
        None => Err(error(
            StatusCode::NOT_FOUND,
            "TLS is not configured on this router (no [tls] section)",
        )),
    }
}

fn list_certs(proxy: &Proxy) -> Resp {
    let store = match cert_store(proxy) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let certs: Vec<Value> = store
        .list()
        .into_iter()
        .map(|c| json!({"name": c.name, "hosts": c.hosts, "default": c.default, "key_cached": c.key_cached}))
        .collect();
    json_resp(
        StatusCode::OK,
        &json!({ "total": certs.len(), "certificates": certs }),
    )
}

/// `PUT /v1/certs/{name}` body: `{"chain": PEM, "key": PEM}`, or PEM text
/// holding the chain and the key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertBody {
    chain: String,
    key: String,
}

fn put_cert(proxy: &Proxy, raw_name: &str, body: &[u8]) -> Resp {
    let store = match cert_store(proxy) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = percent_decode(raw_name);
    let json_body = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let (chain, key) = if json_body {
        match serde_json::from_slice::<CertBody>(body) {
            Ok(b) => (b.chain.into_bytes(), b.key.into_bytes()),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "certificate {name}: body is not {{\"chain\": PEM, \"key\": PEM}}: {e}"
                    ),
                )
            }
        }
    } else {
        (body.to_vec(), body.to_vec())
    };
    match store.put(&name, &chain, &key) {
        Ok((hosts, replaced)) => {
            tracing::info!(cert = %name, ?hosts, replaced, "certificate stored");
            json_resp(
                StatusCode::OK,
                &json!({ "name": name, "hosts": hosts, "replaced": replaced }),
            )
        }
        Err(e) => error(cert_error_status(&e), e),
    }
}

fn delete_cert(proxy: &Proxy, raw_name: &str) -> Resp {
    let store = match cert_store(proxy) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = percent_decode(raw_name);
    match store.remove(&name) {
        Ok(()) => {
            tracing::info!(cert = %name, "certificate removed");
            json_resp(StatusCode::OK, &json!({ "removed": name }))
        }
        Err(e) => error(cert_error_status(&e), e),
    }
}

fn cert_error_status(e: &ferry_tls::TlsError) -> StatusCode {
    use ferry_tls::TlsError as E;
    match e {
        E::Invalid { .. } | E::BadName { .. } => StatusCode::BAD_REQUEST,
        E::NotFound { .. } => StatusCode::NOT_FOUND,
        E::IsDefault { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
