//! The life of a request: find the site, honour its state (maintenance, frozen),
//! choose a pool by path rule and a server by tier, forward, retry once elsewhere
//! when an idempotent request could not reach its server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_model::{Hostname, Placement, SiteState};
use ferry_router::{match_rule, Pick, Route};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};

use crate::accesslog::Entry;
use crate::body::ProxyBody;
use crate::deadline::BodyDeadline;
use crate::hold::{Hold, Unrouted};
use crate::state::Shared;
use crate::stats::Stalled;
use crate::upstream::{UpBody, UpstreamError};

/// Header a router adds when it forwards to another DC's router, naming itself.
/// A router that receives it and would forward again answers 508 instead.
pub(crate) const VIA_HEADER: &str = "ferry-via";

/// What the listener knows about the connection a request came on.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    /// The client: the peer, or the source named by a trusted PROXY header.
    pub client: SocketAddr,
    pub trusted: bool,
    /// Upstream connections this client connection has used.
    pub affinity: Arc<crate::upstream::Affinity>,
    /// `X-Forwarded-For` and `Forwarded` values for this client, built once per
    /// connection rather than per request.
    pub client_ip_header: HeaderValue,
    /// `for=` part of `Forwarded` (RFC 7239 quoting for IPv6).
    pub forwarded_for: Box<str>,
    /// The client connection is TLS: `proto=https` and `X-Forwarded-Proto: https`.
    pub tls: bool,
    /// The client speaks HTTP/2: response bodies are watched for a client
    /// that stops granting flow-control window (`body.rs`).
    pub h2: bool,
}

impl ConnInfo {
    pub fn new(
        client: SocketAddr,
        trusted: bool,
        tls: bool,
        affinity: crate::upstream::Affinity,
    ) -> ConnInfo {
        let ip = client.ip();
        let for_ = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            // RFC 7239: IPv6 addresses are bracketed and quoted.
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        // An IP address and these fixed parts are always valid header text.
        let value =
            |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            client,
            trusted,
            affinity: Arc::new(affinity),
            client_ip_header: value(ip.to_string()),
            forwarded_for: format!("for={for_}").into(),
            tls,
            h2: false,
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FERRY_VIA: HeaderName = HeaderName::from_static(VIA_HEADER);

/// Looked up by `HeaderName`, not by string: a string lookup parses the name
/// again on every call (measurable on the request path).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        if headers.contains_key(h) {
            headers.remove(h);
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

fn text(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn unavailable(retry_after: u32, html: Option<&str>, msg: &str) -> Response<ProxyBody> {
    let mut r = match html {
        Some(page) => {
            let mut r = Response::new(ProxyBody::full(Bytes::copy_from_slice(page.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        None => text(StatusCode::SERVICE_UNAVAILABLE, msg),
    };
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Entry point for every request on a traffic listener.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let start = Instant::now();
    let logger = shared.access_log.load();
    let log_parts = logger.enabled().then(|| {
        let h = |n| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        (
            req.method().to_string(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            version_str(req.version()),
            h(header::REFERER),
            h(header::USER_AGENT),
        )
    });
    let (resp, host, state, upstream) =
        route_request(&shared, &conn, req, log_parts.is_some()).await;
    shared.metrics.request(state, resp.status().as_u16());
    if let Some((method, path, version, referer, user_agent)) = log_parts {
        logger.log(Entry {
            client: conn.client,
            method,
            host,
            path,
            version,
            status: resp.status().as_u16(),
            bytes: resp.body().size_hint().exact(),
            referer,
            user_agent,
            upstream,
            duration: start.elapsed(),
            site_state: state.map(SiteState::as_str).unwrap_or("-"),
        });
    }
    Ok(resp)
}

type Routed = (Response<ProxyBody>, String, Option<SiteState>, String);

async fn route_request(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    log: bool,
) -> Routed {
    let settings = shared.settings.load_full();
    let bad = |msg: &str| {
        shared
            .metrics
            .bad_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (
            text(StatusCode::BAD_REQUEST, msg),
            "-".to_string(),
            None,
            "-".to_string(),
        )
    };

    // Request smuggling (both Content-Length and Transfer-Encoding): hyper's
    // HTTP/1 parser drops Content-Length, reads the body as chunked and closes
    // the connection after the response (RFC 9112 6.1, HAProxy does the same),
    // so nothing hidden in the body is ever parsed as a second request.
    let raw_host = match req.headers().get(header::HOST) {
        Some(h) => match h.to_str() {
            Ok(s) => s,
            Err(_) => return bad("Host header is not visible ASCII"),
        },
        None => match req.uri().authority() {
            Some(a) => a.as_str(),
            None => return bad("request has no Host header"),
        },
    };
    let host = match Hostname::from_host_header(raw_host) {
        Ok(h) => h,
        Err(e) => return bad(&format!("bad Host header: {e}")),
    };
    // The host as the access log shows it; nothing to copy when it is off.
    let host_str = if log {
        host.as_str().to_string()
    } else {
        String::new()
    };
    let crossed = req
        .headers()
        .get_all(&FERRY_VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>();
    if crossed
        .iter()
        .flat_map(|v| v.split(','))
        .any(|n| n.trim() == settings.name)
    {
        shared
            .metrics
            .loops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            text(
                StatusCode::LOOP_DETECTED,
                "request already crossed this router",
            ),
            host_str,
            None,
            "-".into(),
        );
    }
    let has_crossed = !crossed.is_empty();

    // Find the site; if it is frozen, hold the request (`hold.rs`).
    let hold = Hold {
        table: &shared.table,
        holds: &shared.holds,
        max: settings.hold_max,
        held_total: &shared.metrics.held_total,
    };
    // A request cannot tell that its client left: hyper drops it then.
    let route = match hold.route(host.as_str(), std::future::pending()).await {
        Ok(route) => route,
        Err(Unrouted::UnknownSite) => {
            return (
                text(StatusCode::NOT_FOUND, &format!("no site for host {host}")),
                host_str,
                None,
                "-".into(),
            );
        }
        Err(Unrouted::StillFrozen | Unrouted::ClientGone) => {
            shared
                .metrics
                .hold_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (
                unavailable(
                    settings.retry_after,
                    None,
                    "site is being moved; retry shortly",
                ),
                host_str,
                Some(SiteState::Frozen),
                "-".into(),
            );
        }
    };
    let state = if route.state == SiteState::Maintenance {
        if !settings
            .operator_networks
            .iter()
            .any(|n| n.contains(&conn.client.ip()))
        {
            let page = route
                .extras
                .as_ref()
                .and_then(|x| x.maintenance_page.as_deref())
                .unwrap_or(&settings.maintenance_page);
            return (
                unavailable(settings.retry_after, Some(page), ""),
                host_str,
                Some(SiteState::Maintenance),
                "-".into(),
            );
        }
        SiteState::Maintenance
    } else {
        route.state
    };

    let in_flight = shared.table.track(route.site, false);
    let (resp, upstream) = match route.placement.as_ref() {
        Placement::Pool(pool_name) => {
            forward_local(
                shared,
                &settings,
                conn,
                &route,
                pool_name,
                host.as_str(),
                req,
                in_flight,
                log,
            )
            .await
        }
        Placement::Remote(dc) => {
            if has_crossed {
                // The other router sent it here because it thinks the site lives
                // here; we think it lives there. Refuse rather than ping-pong.
                shared
                    .metrics
                    .loops
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    text(
                        StatusCode::LOOP_DETECTED,
                        &format!("site {host} is placed in {dc} by both routers"),
                    ),
                    format!("remote:{dc}"),
                )
            } else {
                forward_remote(shared, &settings, conn, dc, host.as_str(), req, in_flight).await
            }
        }
    };
    (resp, host_str, Some(state), upstream)
}

/// The client's request body, cut if it stops for `body_timeout`.
fn client_body(
    shared: &Shared,
    settings: &crate::state::Settings,
    body: Incoming,
) -> BodyDeadline<Incoming> {
    BodyDeadline::new(
        body,
        settings.body_timeout,
        Stalled::ClientSend,
        Arc::clone(&shared.metrics),
    )
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Prepares the outgoing head: hop-by-hop headers removed, Host set, the client
/// address appended to X-Forwarded-For and Forwarded. With `absolute_to`, the
/// URI is made absolute for a pooled client that dials by URI; without, it is
/// left in (or brought to) origin form for a connection we already hold.
fn outgoing_parts(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    host: &str,
    absolute_to: Option<SocketAddr>,
) {
    strip_hop_by_hop(&mut parts.headers);
    if !conn.trusted {
        // Only another router may tell us who the client is.
        parts.headers.remove(&X_FORWARDED_FOR);
        parts.headers.remove(header::FORWARDED);
        parts.headers.remove(&FERRY_VIA);
        parts.headers.remove(&X_FORWARDED_PROTO);
    }
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        // A trusted peer (another router) already named the client.
        Some(_) if conn.trusted => {}
        Some(prev) => {
            if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {}", conn.client.ip())) {
                parts.headers.insert(&X_FORWARDED_FOR, v);
            }
        }
        None => {
            parts
                .headers
                .insert(&X_FORWARDED_FOR, conn.client_ip_header.clone());
        }
    }
    let proto = if conn.tls { "https" } else { "http" };
    // A trusted peer (another router) knows how the client reached it.
    if !(conn.trusted && parts.headers.contains_key(&X_FORWARDED_PROTO)) {
        parts
            .headers
            .insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(conn.trusted && parts.headers.contains_key(header::FORWARDED)) {
        let value = format!("{};host={host};proto={proto}", conn.forwarded_for);
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(header::FORWARDED, v);
        }
    }
    match absolute_to {
        Some(target) => {
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            if let Ok(uri) = Uri::builder()
                .scheme("http")
                .authority(target.to_string())
                .path_and_query(pq)
                .build()
            {
                parts.uri = uri;
            }
        }
        // HTTP/2 requests arrive in absolute form; HTTP/1 upstreams want origin form.
        None if parts.uri.authority().is_some() => {
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
                parts.uri = uri;
            }
        }
        None => {}
    }
    parts.version = Version::HTTP_11;
}

fn response_from(
    shared: &Shared,
    settings: &crate::state::Settings,
    conn: &ConnInfo,
    resp: Response<Incoming>,
    in_flight: ferry_router::Tracked,
    pick: Option<Pick>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = BodyDeadline::new(
        body,
        settings.body_timeout,
        Stalled::Upstream,
        Arc::clone(&shared.metrics),
    );
    let body = if conn.h2 {
        ProxyBody::watched(
            body,
            in_flight,
            pick,
            settings.body_timeout,
            Arc::clone(&shared.metrics),
        )
    } else {
        ProxyBody::Upstream {
            body,
            _in_flight: Some(in_flight),
            _server: pick,
        }
    };
    Response::from_parts(parts, body)
}

#[allow(clippy::too_many_arguments)]
async fn forward_local(
    shared: &Arc<Shared>,
    settings: &crate::state::Settings,
    conn: &ConnInfo,
    route: &Route,
    pool_name: &str,
    host: &str,
    req: Request<Incoming>,
    in_flight: ferry_router::Tracked,
    want_label: bool,
) -> (Response<ProxyBody>, String) {
    let pools = shared.pools.load();
    let path = req.uri().path();
    // Site rules first, then the placement pool's own rules.
    let target_name = route
        .extras
        .as_ref()
        .and_then(|x| match_rule(&x.rules, path))
        .or_else(|| {
            pools
                .pools
                .get(pool_name)
                .and_then(|p| match_rule(&p.pool.rules, path))
        })
        .unwrap_or(pool_name);
    let Some(entry) = pools.pools.get(target_name) else {
        return (
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("pool {target_name} does not exist"),
            ),
            format!("pool:{target_name}"),
        );
    };
    let pool = Arc::clone(&entry.pool);
    let passive_fall = entry.passive_fall;
    let histogram = Arc::clone(&entry.histogram);
    drop(pools);
    let target_name = pool.name.as_str();

    let (parts, body) = req.into_parts();
    // A request without a body can be sent twice; one with a body is only
    // retried if the body is known to be empty.
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut body = Some(body);
    let mut tried: Vec<usize> = Vec::with_capacity(2);
    loop {
        let Some(pick) = pool.pick(&tried) else {
            let msg = if tried.is_empty() {
                format!("no server of pool {target_name} is available")
            } else {
                format!("no other server of pool {target_name} could be reached")
            };
            let status = if tried.is_empty() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::BAD_GATEWAY
            };
            let mut r = text(status, &msg);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(settings.retry_after));
            }
            return (r, format!("pool:{target_name}"));
        };
        let addr = pick.server.address;
        let mut p = parts.clone();
        outgoing_parts(&mut p, conn, host, None);
        let out_body: UpBody = if replayable {
            Either::Right(Empty::new())
        } else {
            match body.take() {
                Some(b) => Either::Left(client_body(shared, settings, b)),
                None => Either::Right(Empty::new()),
            }
        };
        let t0 = Instant::now();
        let result = shared
            .upstream
            .send_affine(
                &conn.affinity,
                addr,
                Request::from_parts(p, out_body),
                settings.request_timeout,
            )
            .await;
        // Only the access log and debug logs use the label; skip the allocation otherwise.
        let upstream_label = if want_label || tracing::enabled!(tracing::Level::DEBUG) {
            format!("{}/{}", target_name, pick.server.name)
        } else {
            String::new()
        };
        match result {
            Ok(resp) => {
                pick.server.record_connect(true, passive_fall);
                histogram.observe(t0.elapsed().as_secs_f64());
                return (
                    response_from(shared, settings, conn, resp, in_flight, Some(pick)),
                    upstream_label,
                );
            }
            Err(UpstreamError::Connect(e)) => {
                if pick.server.record_connect(false, passive_fall) == Some(false) {
                    tracing::warn!(pool = %target_name, server = %pick.server.name, error = %e, "server marked down by failed connections");
                }
                tried.push(pick.index);
                if replayable && tried.len() < 2 {
                    shared
                        .metrics
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                tracing::debug!(server = %upstream_label, error = %e, "upstream connect failed");
                return (
                    text(
                        StatusCode::BAD_GATEWAY,
                        "could not connect to the upstream server",
                    ),
                    upstream_label,
                );
            }
            Err(UpstreamError::Exchange(e)) => {
                // The server died under the request (reset, closed before any
                // response byte). Replaying is safe only for an idempotent request
                // without a body: do it once, elsewhere (HAProxy's
                // retry-on empty-response).
                tried.push(pick.index);
                if replayable && tried.len() < 2 {
                    shared
                        .metrics
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                tracing::debug!(server = %upstream_label, error = %e, "upstream exchange failed");
                return (
                    text(StatusCode::BAD_GATEWAY, "upstream server failed to answer"),
                    upstream_label,
                );
            }
            Err(UpstreamError::Timeout) => {
                return (
                    text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream server did not answer in time",
                    ),
                    upstream_label,
                );
            }
        }
    }
}

async fn forward_remote(
    shared: &Arc<Shared>,
    settings: &crate::state::Settings,
    conn: &ConnInfo,
    dc: &str,
    host: &str,
    req: Request<Incoming>,
    in_flight: ferry_router::Tracked,
) -> (Response<ProxyBody>, String) {
    let label = format!("remote:{dc}");
    let Some(remote) = shared.remotes.load().get(dc).cloned() else {
        return (
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("remote {dc} is not configured"),
            ),
            label,
        );
    };
    let histogram = shared.metrics.upstream(&label);
    let (mut parts, body) = req.into_parts();
    outgoing_parts(&mut parts, conn, host, Some(remote.address));
    // Name ourselves so the next router can refuse to send it back.
    let via = match parts.headers.get(&FERRY_VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", settings.name),
        None => settings.name.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        parts.headers.insert(&FERRY_VIA, v);
    }
    let req = Request::from_parts(parts, Either::Left(client_body(shared, settings, body)));
    let t0 = Instant::now();
    let result = if remote.proxy_protocol {
        shared
            .upstream
            .send_with_proxy_header(remote.address, conn.client, req, settings.request_timeout)
            .await
    } else {
        shared.upstream.send(req, settings.request_timeout).await
    };
    match result {
        Ok(resp) => {
            histogram.observe(t0.elapsed().as_secs_f64());
            (
                response_from(shared, settings, conn, resp, in_flight, None),
                label,
            )
        }
        Err(UpstreamError::Timeout) => (
            text(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("router of {dc} did not answer in time"),
            ),
            label,
        ),
        Err(e) => {
            tracing::debug!(remote = %dc, error = ?e, "forward to remote router failed");
            (
                text(
                    StatusCode::BAD_GATEWAY,
                    &format!("could not reach the router of {dc}"),
                ),
                label,
            )
        }
    }
}
