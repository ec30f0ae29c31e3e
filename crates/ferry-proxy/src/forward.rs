//! The life of a request, as named phases ([`handle`] -> `route_request`):
//! `request_host`, `via_of` (loops), `find_site` (held while frozen,
//! `hold.rs`), `maintenance_answer`, then `forward_local` (`choose_pool` by
//! path rule, a server by tier, `send_to_server`, one retry elsewhere when an
//! idempotent request could not reach its server) or `forward_remote`. An
//! [`Exchange`] carries what forwarding needs; headers are `headers.rs`'s.
//! An HTTP/1.1 upgrade goes the same way; on the upstream's 101 `respond`
//! attaches a tunnel that `handle` runs (`tunnel_upgrade.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_model::{Hostname, SiteState};
use ferry_router::{match_rule, Pick, Pool, Route, Tracked};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};

use crate::accesslog::Entry;
use crate::answers::{no_server, text, unavailable};
use crate::body::ProxyBody;
use crate::deadline::BodyDeadline;
use crate::headers::{
    outgoing_head, outgoing_parts, request_head, strip_hop_by_hop, switching_protocols_headers,
    upgrade_asked, ConnInfo, UpgradeAsk, FERRY_VIA,
};
use crate::hold::{Hold, Unrouted};
use crate::metrics::Histogram;
use crate::state::{Hop, Settings, Shared};
use crate::stats::Stalled;
use crate::straggler::{Cuttable, InFlight};
use crate::tunnel_upgrade::{self, PendingTunnel};
use crate::upstream::{UpBody, UpstreamBody, UpstreamError};

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

/// The future of one request, boxed where it is made.
pub(crate) type Handling =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// Entry point for every request on a traffic listener. The request's
/// future (several KB: every phase's state, the upstream exchange, its
/// timers) is put in its box here, once: hyper and the service layers
/// around it then move a pointer, where they moved (memcpy) the whole
/// future two or three times a request.
pub(crate) fn handle(shared: Arc<Shared>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Handling {
    Box::pin(handle_request(shared, conn, req.map(ReqBody::Hyper)))
}

/// A request read without hyper (`h1_server.rs`), which has no body: the
/// same phases as [`handle`], boxed for the same reason (the connection's
/// task then moves a pointer while it also watches the client's socket).
pub(crate) fn handle_bodiless(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<()>,
) -> Handling {
    Box::pin(handle_request(shared, conn, req.map(|()| ReqBody::None)))
}

/// A client request's body: hyper's, or none.
pub(crate) enum ReqBody {
    Hyper(Incoming),
    None,
}

impl ReqBody {
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Hyper(b) => b.is_end_stream(),
            ReqBody::None => true,
        }
    }
}

async fn handle_request(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<ReqBody>,
) -> Result<Response<ProxyBody>, Infallible> {
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
    let Routed {
        mut resp,
        host,
        state,
        upstream,
    } = route_request(&shared, &conn, req, log_parts.is_some()).await;
    shared.metrics.request(state, resp.status().as_u16());
    if let Some(tunnel) = tunnel_upgrade::take(&mut resp) {
        // The access log line waits for the tunnel's end: its bytes and
        // its whole duration.
        let logger = shared.access_log.load_full();
        let client = conn.client;
        let site_state = state.map(SiteState::as_str).unwrap_or("-");
        let holds_connection = conn.tunnel_started();
        tokio::spawn(async move {
            let done = tunnel.run().await;
            drop(holds_connection);
            tracing::debug!(
                %client,
                host = %host,
                to_upstream = done.to_upstream,
                to_client = done.to_client,
                end = ?done.end,
                elapsed = ?start.elapsed(),
                "upgraded connection ended"
            );
            if let Some((method, path, version, referer, user_agent)) = log_parts {
                logger.log(Entry {
                    client,
                    method,
                    host,
                    path,
                    version,
                    status: StatusCode::SWITCHING_PROTOCOLS.as_u16(),
                    bytes: Some(done.to_client),
                    referer,
                    user_agent,
                    upstream,
                    duration: start.elapsed(),
                    site_state,
                });
            }
        });
        return Ok(resp);
    }
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

/// What `handle` counts and logs of a request.
struct Routed {
    resp: Response<ProxyBody>,
    /// The host as the access log shows it (empty when the log is off).
    host: String,
    state: Option<SiteState>,
    /// `pool/server`, `pool:NAME` or `remote:DC`; "-" when not forwarded.
    upstream: String,
}

impl Routed {
    /// A request answered by the router itself.
    fn answered(resp: Response<ProxyBody>, host: String, state: Option<SiteState>) -> Routed {
        Routed {
            resp,
            host,
            state,
            upstream: "-".into(),
        }
    }
}

/// The phases of a request: its host, the loop check, the site (held while
/// frozen), maintenance, then the placement it is forwarded to.
async fn route_request(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    mut req: Request<ReqBody>,
    log: bool,
) -> Routed {
    let settings = shared.settings.load_full();
    let host = match request_host(&req) {
        Ok(h) => h,
        Err(msg) => {
            count(&shared.metrics.bad_requests);
            let resp = text(StatusCode::BAD_REQUEST, &msg);
            return Routed::answered(resp, "-".into(), None);
        }
    };
    // The host as the access log shows it; nothing to copy when it is off.
    let host_str = if log {
        host.as_str().to_string()
    } else {
        String::new()
    };
    if req.method() == Method::CONNECT {
        // A forward proxy's method: no site is reached by it, and a 2xx
        // from an upstream would hand over its connection. HTTP/2's
        // extended CONNECT (RFC 8441, WebSockets over HTTP/2) is not
        // offered either, so a client uses HTTP/1.1 for those.
        count(&shared.metrics.bad_requests);
        let msg = "CONNECT is not served: the router is not a forward proxy";
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, msg);
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Routed::answered(resp, host_str, None);
    }
    let via = via_of(&req, &settings.name);
    if via == Via::ThisRouter {
        count(&shared.metrics.loops);
        let resp = text(
            StatusCode::LOOP_DETECTED,
            "request already crossed this router",
        );
        return Routed::answered(resp, host_str, None);
    }
    let sent_on = via == Via::OtherRouter && conn.trusted;
    let route = match shared.drained_by_sender(sent_on, &host) {
        Some(route) => route,
        None => match find_site(shared, &settings, &host).await {
            Ok(route) => route,
            Err((resp, state)) => return Routed::answered(resp, host_str, state),
        },
    };
    if let Some(resp) = maintenance_answer(&settings, conn, &route) {
        return Routed::answered(resp, host_str, Some(SiteState::Maintenance));
    }
    let straggler = shared.stragglers.register(
        route.site,
        route.epoch,
        req.method(),
        req.body().is_end_stream(),
    );
    // Taken only for an upgrade passed on: hyper then hands over the client
    // connection after our 101.
    let client_upgrade =
        match upgrade_asked(req.version(), req.headers(), !req.body().is_end_stream()) {
            UpgradeAsk::Forward => Some(hyper::upgrade::on(&mut req)),
            UpgradeAsk::None | UpgradeAsk::Ignored => None,
        };
    let exchange = Exchange {
        shared,
        settings: &settings,
        conn,
        host: host.as_str(),
        in_flight: shared.table.track(route.site, false),
        straggler: straggler.clone(),
        want_label: log,
        client_upgrade,
    };
    // Cut at a freeze's drain deadline while it still waits for its answer
    // (`straggler.rs`): the exchange is dropped, the upstream connection with it.
    // Pinned where it is made: `unless_cut` and its `select!` then move a
    // pointer, not the exchange's state (a memcpy of its whole size each).
    let forwarded = std::pin::pin!(async {
        match shared.hop(&route.placement) {
            Hop::Local(pool_name) => forward_local(exchange, &route, pool_name, req).await,
            Hop::Remote(dc) if via == Via::OtherRouter => {
                // The other router sent it here because it thinks the site lives
                // here; we think it lives there. Refuse rather than ping-pong.
                count(&shared.metrics.loops);
                let msg = format!("site {host} is placed in {dc} by both routers");
                (
                    text(StatusCode::LOOP_DETECTED, &msg),
                    format!("remote:{dc}"),
                )
            }
            // Boxed: unboxed, this rarer path's state (a dial with a PROXY
            // header, the pooled client) would be part of every request's
            // future, which is moved whole.
            Hop::Remote(dc) => Box::pin(forward_remote(exchange, &dc, req)).await,
        }
    });
    let (resp, upstream) = match straggler.unless_cut(forwarded).await {
        Some(forwarded) => forwarded,
        None => (crate::answers::cut_answer(settings.retry_after), "-".into()),
    };
    Routed {
        resp,
        host: host_str,
        state: Some(route.state),
        upstream,
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The request's host: the Host header, or the authority of an absolute
/// URI (HTTP/2); or why the request is refused.
fn request_host<B>(req: &Request<B>) -> Result<Hostname, String> {
    // Request smuggling (both Content-Length and Transfer-Encoding): hyper's
    // HTTP/1 parser drops Content-Length, reads the body as chunked and closes
    // the connection after the response (RFC 9112 6.1, HAProxy does the same),
    // so nothing hidden in the body is ever parsed as a second request.
    let raw = match req.headers().get(header::HOST) {
        Some(h) => h
            .to_str()
            .map_err(|_| "Host header is not visible ASCII".to_string())?,
        None => match req.uri().authority() {
            Some(a) => a.as_str(),
            None => return Err("request has no Host header".into()),
        },
    };
    Hostname::from_host_header(raw).map_err(|e| format!("bad Host header: {e}"))
}

/// Which routers a request crossed before this one (`ferry-via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// None: it came from a client.
    Client,
    /// Another router forwarded it.
    OtherRouter,
    /// It already crossed this router: a loop.
    ThisRouter,
}

fn via_of<B>(req: &Request<B>, me: &str) -> Via {
    let mut via = Via::Client;
    for names in req
        .headers()
        .get_all(&FERRY_VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        if names.split(',').any(|n| n.trim() == me) {
            return Via::ThisRouter;
        }
        via = Via::OtherRouter;
    }
    via
}

/// The site of `host`, held while it is frozen (`hold.rs`); or the answer
/// and the site state to count it under: 404 for no site, 503 when it
/// stayed frozen for `hold_max`.
async fn find_site(
    shared: &Shared,
    settings: &Settings,
    host: &Hostname,
) -> Result<Route, (Response<ProxyBody>, Option<SiteState>)> {
    let hold = Hold {
        table: &shared.table,
        holds: &shared.holds,
        max: settings.hold_max,
        held_total: &shared.metrics.held_total,
    };
    // A request cannot tell that its client left: hyper drops it then.
    match hold.route(host.as_str(), std::future::pending()).await {
        Ok(route) => Ok(route),
        Err(Unrouted::UnknownSite) => {
            let msg = format!("no site for host {host}");
            Err((text(StatusCode::NOT_FOUND, &msg), None))
        }
        Err(Unrouted::StillFrozen | Unrouted::ClientGone) => {
            count(&shared.metrics.hold_timeouts);
            let msg = "site is being moved; retry shortly";
            let resp = unavailable(settings.retry_after, None, msg);
            Err((resp, Some(SiteState::Frozen)))
        }
    }
}

/// The maintenance answer (503, Retry-After, the site's page) of a site in
/// maintenance, unless the client is in `operator_networks`.
fn maintenance_answer(
    settings: &Settings,
    conn: &ConnInfo,
    route: &Route,
) -> Option<Response<ProxyBody>> {
    if route.state != SiteState::Maintenance {
        return None;
    }
    let client = conn.client.ip();
    if settings
        .operator_networks
        .iter()
        .any(|n| n.contains(&client))
    {
        return None;
    }
    let page = route
        .extras
        .as_ref()
        .and_then(|x| x.maintenance_page.as_deref())
        .unwrap_or(&settings.maintenance_page);
    Some(unavailable(settings.retry_after, Some(page), ""))
}

/// One request on its way to an upstream: what forwarding it needs besides
/// the request itself.
struct Exchange<'a> {
    shared: &'a Arc<Shared>,
    settings: &'a Settings,
    conn: &'a ConnInfo,
    host: &'a str,
    /// Counts the request in flight for its site until its response body ends.
    in_flight: Tracked,
    /// Registered for a freeze's drain deadline (`straggler.rs`).
    straggler: InFlight,
    /// The access log wants the upstream label.
    want_label: bool,
    /// The client connection, when the request is an upgrade passed on
    /// (`headers::upgrade_asked`).
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Exchange<'_> {
    /// The client's request body, cut if it stops for `body_timeout`.
    fn client_body(&self, body: Incoming) -> BodyDeadline<Cuttable<Incoming>> {
        BodyDeadline::new(
            self.straggler.request_body(body),
            self.settings.body_timeout,
            Stalled::ClientSend,
            Arc::clone(&self.shared.metrics),
        )
    }

    /// The upstream's response, handed to the client: hop-by-hop headers
    /// removed, the body cut if it stalls, the request counted in flight
    /// (and on its server) until the body ends.
    fn respond(mut self, resp: Response<UpstreamBody>, pick: Option<Pick>) -> Response<ProxyBody> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match self.client_upgrade.take() {
                Some(client) => self.switch_protocols(resp, client, pick),
                // Not asked (an HTTP/2 or HTTP/1.0 client, h2c refused):
                // the connection it switched cannot be handed to the client.
                None => text(
                    StatusCode::BAD_GATEWAY,
                    "upstream server switched protocols the request did not ask for",
                ),
            };
        }
        let (shared, settings) = (self.shared, self.settings);
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // A committed answer stops counting in flight (`straggler.rs`).
        let (body, in_flight) = self.straggler.answered(body, self.in_flight);
        let body = BodyDeadline::new(
            body,
            settings.body_timeout,
            Stalled::Upstream,
            Arc::clone(&shared.metrics),
        );
        let body = if self.conn.h2 {
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
                _in_flight: in_flight,
                _server: pick,
            }
        };
        Response::from_parts(parts, body)
    }
}

impl Exchange<'_> {
    /// The upstream's 101 to an upgrade: answered 101 to the client, with
    /// the tunnel that splices both connections attached (`handle` runs
    /// it). The request stays registered, marked upgraded, and in flight
    /// for its site until the tunnel ends.
    fn switch_protocols(
        self,
        mut resp: Response<UpstreamBody>,
        client: hyper::upgrade::OnUpgrade,
        pick: Option<Pick>,
    ) -> Response<ProxyBody> {
        let upstream = hyper::upgrade::on(&mut resp);
        let (mut parts, _empty) = resp.into_parts();
        switching_protocols_headers(&mut parts.headers);
        self.straggler.upgraded();
        let idle = self.shared.config.lock().0.router.tunnel_idle_timeout;
        let mut answer = Response::from_parts(parts, ProxyBody::full(Bytes::new()));
        tunnel_upgrade::attach(
            &mut answer,
            PendingTunnel {
                client,
                upstream,
                straggler: self.straggler,
                in_flight: self.in_flight,
                server: pick,
                idle,
                metrics: Arc::clone(&self.shared.metrics),
            },
        );
        answer
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The pool a request goes to, with what the request path needs of it.
struct PoolTarget {
    pool: Arc<Pool>,
    /// Connect failures in a row that mark a server down (0: no passive check).
    passive_fall: u32,
    histogram: Arc<Histogram>,
}

/// The pool of a request to `pool:NAME`: the longest matching path rule of
/// the site, then of the pool, else the pool itself. Err: the name of a
/// pool that does not exist (a rule names it).
fn choose_pool(
    shared: &Shared,
    route: &Route,
    pool_name: &str,
    path: &str,
) -> Result<PoolTarget, String> {
    let pools = shared.pools.load();
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
        return Err(target_name.to_string());
    };
    Ok(PoolTarget {
        pool: Arc::clone(&entry.pool),
        passive_fall: entry.passive_fall,
        histogram: Arc::clone(&entry.histogram),
    })
}

/// Forwards to a server of the request's pool. A request that can be sent
/// twice (idempotent, no body) gets one more server when the first could
/// not be reached or died before answering.
async fn forward_local(
    exchange: Exchange<'_>,
    route: &Route,
    pool_name: &str,
    req: Request<ReqBody>,
) -> (Response<ProxyBody>, String) {
    let target = match choose_pool(exchange.shared, route, pool_name, req.uri().path()) {
        Ok(t) => t,
        Err(missing) => {
            let msg = format!("pool {missing} does not exist");
            let answer = text(StatusCode::SERVICE_UNAVAILABLE, &msg);
            return (answer, format!("pool:{missing}"));
        }
    };
    let pool_name = target.pool.name.as_str();
    let (parts, body) = req.into_parts();
    // A request without a body can be sent twice; one with a body is only
    // retried if the body is known to be empty.
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut body = Some(body);
    // Allocated only when a server fails (a retry), not per request.
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let Some(pick) = target.pool.pick(&tried) else {
            let answer = no_server(pool_name, tried.is_empty(), exchange.settings.retry_after);
            return (answer, format!("pool:{pool_name}"));
        };
        let out_body: UpBody = if replayable {
            Either::Right(Empty::new())
        } else {
            match body.take() {
                Some(ReqBody::Hyper(b)) => Either::Left(exchange.client_body(b)),
                Some(ReqBody::None) | None => Either::Right(Empty::new()),
            }
        };
        let result = send_to_server(&exchange, &target, &pick, &parts, out_body).await;
        // Only the access log and debug logs use the label; skip the allocation otherwise.
        let label = if exchange.want_label || tracing::enabled!(tracing::Level::DEBUG) {
            format!("{}/{}", pool_name, pick.server.name)
        } else {
            String::new()
        };
        match result {
            Ok(resp) => return (exchange.respond(resp, Some(pick)), label),
            Err(e) => {
                // Not reached, or the server died under the request (reset,
                // closed before any response byte): replaying is safe only
                // for an idempotent request without a body, once, elsewhere
                // (HAProxy's retry-on empty-response). A timeout is not retried.
                let retryable = matches!(e, UpstreamError::Connect(_) | UpstreamError::Exchange(_));
                if replayable && retryable {
                    tried.push(pick.index);
                    if tried.len() < 2 {
                        count(&exchange.shared.metrics.retries);
                        continue;
                    }
                }
                return (failed_upstream(&e, &label), label);
            }
        }
    }
}

/// One try at one server; its connect result feeds the passive health check.
async fn send_to_server(
    exchange: &Exchange<'_>,
    target: &PoolTarget,
    pick: &Pick,
    parts: &http::request::Parts,
    body: UpBody,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let upgrade = exchange.client_upgrade.is_some();
    let t0 = Instant::now();
    let upstream = &exchange.shared.upstream;
    let (addr, timeout) = (pick.server.address, exchange.settings.request_timeout);
    // No body and no upgrade (a request that may go twice): spoken by
    // `upstream_h1` in this task; the rest through hyper's client.
    let result = if !upgrade && matches!(body, Either::Right(_)) && parts.method != Method::CONNECT
    {
        let head = request_head(parts, exchange.conn, exchange.host);
        let head_request = parts.method == Method::HEAD;
        upstream
            .send_own(&exchange.conn.affinity, addr, &head, head_request, timeout)
            .await
    } else {
        let head = outgoing_head(parts, exchange.conn, exchange.host, upgrade);
        let req = Request::from_parts(head, body);
        upstream
            .send_affine(&exchange.conn.affinity, addr, req, timeout)
            .await
            .map(|r| r.map(UpstreamBody::Hyper))
    };
    match &result {
        Ok(_) => {
            pick.server.record_connect(true, target.passive_fall);
            target.histogram.observe(t0.elapsed().as_secs_f64());
        }
        Err(UpstreamError::Connect(e)) => {
            if pick.server.record_connect(false, target.passive_fall) == Some(false) {
                tracing::warn!(pool = %target.pool.name, server = %pick.server.name, error = %e, "server marked down by failed connections");
            }
        }
        Err(_) => {}
    }
    result
}

/// The answer to a request whose server failed it (not retried).
fn failed_upstream(e: &UpstreamError, label: &str) -> Response<ProxyBody> {
    match e {
        UpstreamError::Connect(e) => {
            tracing::debug!(server = %label, error = %e, "upstream connect failed");
            text(
                StatusCode::BAD_GATEWAY,
                "could not connect to the upstream server",
            )
        }
        UpstreamError::Exchange(e) => {
            tracing::debug!(server = %label, error = %e, "upstream exchange failed");
            text(StatusCode::BAD_GATEWAY, "upstream server failed to answer")
        }
        UpstreamError::Timeout => text(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream server did not answer in time",
        ),
    }
}

/// Forwards to the router of another datacenter, naming ourselves in
/// `ferry-via` so it can refuse to send the request back.
async fn forward_remote(
    exchange: Exchange<'_>,
    dc: &str,
    req: Request<ReqBody>,
) -> (Response<ProxyBody>, String) {
    let (shared, settings) = (exchange.shared, exchange.settings);
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
    outgoing_parts(
        &mut parts,
        exchange.conn,
        exchange.host,
        Some(remote.address),
        exchange.client_upgrade.is_some(),
    );
    let via = match parts.headers.get(&FERRY_VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", settings.name),
        None => settings.name.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        parts.headers.insert(&FERRY_VIA, v);
    }
    let body = match body {
        ReqBody::Hyper(b) => Either::Left(exchange.client_body(b)),
        ReqBody::None => Either::Right(Empty::new()),
    };
    let req = Request::from_parts(parts, body);
    let t0 = Instant::now();
    let result = if remote.proxy_protocol {
        let client = exchange.conn.client;
        shared
            .upstream
            .send_with_proxy_header(remote.address, client, req, settings.request_timeout)
            .await
    } else {
        shared.upstream.send(req, settings.request_timeout).await
    };
    match result {
        Ok(resp) => {
            histogram.observe(t0.elapsed().as_secs_f64());
            (exchange.respond(resp.map(UpstreamBody::Hyper), None), label)
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

/// The request path inside the crate: a client speaks HTTP/1.1 over an
/// in-memory pipe to hyper serving [`handle`], which forwards to a real
/// upstream on loopback (as linkerd2-proxy tests a layer: no binary, no
/// listener of ours).
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use ferry_model::{Epoch, SiteRecord};
    use ferry_router::SiteChange;
    use ferry_store::SqliteStore;
    use http::HeaderMap;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    /// The address requests come from.
    const CLIENT: &str = "192.0.2.7:40000";

    /// An upstream answering every request with what it saw: its own name,
    /// the Host and X-Forwarded-For it got. Counts the connections it accepted.
    struct Upstream {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
    }

    async fn upstream(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string()
                    };
                    let text = format!("{name} host={} xff={}", h("host"), h("x-forwarded-for"));
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    // Hop-by-hop: must not reach the client.
                    resp.headers_mut()
                        .insert("keep-alive", HeaderValue::from_static("timeout=5"));
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Upstream { addr, connections }
    }

    /// A closed port: connecting to it fails at once.
    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    fn shared(config: &str) -> Arc<Shared> {
        let config = ferry_config::parse(config, Path::new("test.toml")).expect("config");
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        Arc::new(Shared::new(config, None, store).expect("shared"))
    }

    fn router(servers: &[(&str, SocketAddr, u8)]) -> Arc<Shared> {
        let mut text = String::from(
            "[router]\nname = \"dc1\"\nhold_max = \"30s\"\nretry_after = 7\n\
             operator_networks = [\"10.0.0.0/8\"]\n\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[pool]]\nname = \"web\"\n",
        );
        for (name, addr, tier) in servers {
            text += &format!(
                "\n[[pool.server]]\nname = \"{name}\"\naddress = \"{addr}\"\ntier = {tier}\n"
            );
        }
        for (host, state) in [
            ("a.com", "active"),
            ("frozen.com", "frozen"),
            ("down.com", "maintenance"),
        ] {
            text += &format!(
                "\n[[site]]\nhost = \"{host}\"\nplacement = \"pool:web\"\nstate = \"{state}\"\n"
            );
        }
        shared(&text)
    }

    /// One client connection to the router, from `client`.
    async fn connect(
        shared: &Arc<Shared>,
        client: &str,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let (client_io, router_io) = tokio::io::duplex(64 * 1024);
        let conn = Arc::new(ConnInfo::new(
            client.parse().expect("client address"),
            false,
            false,
            shared.upstream.affinity(),
        ));
        let shared = Arc::clone(shared);
        let svc = service_fn(move |req| handle(Arc::clone(&shared), conn.clone(), req));
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(router_io), svc),
        );
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender
    }

    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        host: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get("/page");
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[test]
    fn a_request_future_is_a_pointer_for_hyper_to_move() {
        // hyper moves the service's future (into its slot, through the
        // service layers): a pointer, not the request's whole state.
        fn returned_size<F, A, B, C, R>(_: F) -> usize
        where
            F: Fn(A, B, C) -> R,
        {
            std::mem::size_of::<R>()
        }
        let size = returned_size(handle);
        assert!(size <= 16, "the future of a request is {size} bytes");
    }

    #[tokio::test]
    async fn a_request_goes_to_its_pool_server_with_the_client_named() {
        let up = upstream("up1").await;
        let shared = router(&[("a", up.addr, 0)]);
        let mut client = connect(&shared, CLIENT).await;
        let (status, headers, body) = get(&mut client, Some("a.com"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "up1 host=a.com xff=192.0.2.7");
        assert!(
            headers.get("keep-alive").is_none(),
            "hop-by-hop header passed on"
        );
        // Keep-alive: the client's next request reuses its upstream connection.
        let (status, _, _) = get(&mut client, Some("a.com"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
        assert_eq!(
            shared.table.total_counters(),
            (0, 0),
            "nothing left in flight"
        );
    }

    #[tokio::test]
    async fn an_unknown_host_is_404_and_a_missing_host_400() {
        let up = upstream("up1").await;
        let shared = router(&[("a", up.addr, 0)]);
        let mut client = connect(&shared, CLIENT).await;
        let (status, _, body) = get(&mut client, Some("nowhere.com"), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, "no site for host nowhere.com\n");
        let (status, _, body) = get(&mut client, None, &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "request has no Host header\n");
        assert_eq!(shared.metrics.bad_requests.load(Ordering::Relaxed), 1);
        assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_site_in_maintenance_answers_503_except_to_operators() {
        let up = upstream("up1").await;
        let shared = router(&[("a", up.addr, 0)]);
        let mut client = connect(&shared, CLIENT).await;
        let (status, headers, body) = get(&mut client, Some("down.com"), &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "7");
        assert_eq!(body, crate::state::BUILTIN_MAINTENANCE_PAGE);
        let mut operator = connect(&shared, "10.1.2.3:5000").await;
        let (status, _, body) = get(&mut operator, Some("down.com"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "up1 host=down.com xff=10.1.2.3");
    }

    #[tokio::test]
    async fn a_frozen_site_is_held_until_the_change_is_applied() {
        let old = upstream("old").await;
        let new = upstream("new").await;
        let text = format!(
            "[router]\nname = \"dc1\"\nhold_max = \"60s\"\n\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
             [[pool]]\nname = \"old\"\n[[pool.server]]\nname = \"a\"\naddress = \"{}\"\n\n\
             [[pool]]\nname = \"new\"\n[[pool.server]]\nname = \"b\"\naddress = \"{}\"\n\n\
             [[site]]\nhost = \"a.com\"\nplacement = \"pool:old\"\nstate = \"frozen\"\nepoch = 1\n",
            old.addr, new.addr
        );
        let shared = shared(&text);
        let mut client = connect(&shared, CLIENT).await;
        let held = tokio::spawn(async move { get(&mut client, Some("a.com"), &[]).await });
        // Held: counted for the site (what a cutover's drain reads).
        let wait_held = async {
            while shared.table.total_counters().0 == 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait_held)
            .await
            .expect("the request is held");
        assert!(!held.is_finished());
        let moved = SiteChange {
            record: SiteRecord {
                host: ferry_model::Hostname::parse("a.com").expect("host"),
                placement: ferry_model::Placement::Pool("new".into()),
                state: SiteState::Active,
                epoch: Epoch(2),
            },
            extras: None,
        };
        shared.apply_sites(vec![moved]).expect("apply");
        let (status, _, body) = held.await.expect("task");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "new host=a.com xff=192.0.2.7", "looked up again");
        assert_eq!(old.connections.load(Ordering::SeqCst), 0);
        assert_eq!(shared.metrics.held_total.load(Ordering::Relaxed), 1);
        assert_eq!(shared.table.total_counters(), (0, 0));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_once_on_the_next() {
        let up = upstream("up1").await;
        let shared = router(&[("dead", closed_port().await, 0), ("a", up.addr, 1)]);
        let mut client = connect(&shared, CLIENT).await;
        let (status, _, body) = get(&mut client, Some("a.com"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "up1 host=a.com xff=192.0.2.7");
        assert_eq!(shared.metrics.retries.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_request_that_already_crossed_this_router_is_refused() {
        let up = upstream("up1").await;
        let shared = router(&[("a", up.addr, 0)]);
        let mut client = connect(&shared, CLIENT).await;
        let via = [(crate::headers::VIA_HEADER, "dc2, dc1")];
        let (status, _, _) = get(&mut client, Some("a.com"), &via).await;
        assert_eq!(status, StatusCode::LOOP_DETECTED);
        assert_eq!(shared.metrics.loops.load(Ordering::Relaxed), 1);
        assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    }

    /// An upstream that switches to an echo after a 101 (to any `Upgrade`),
    /// and records each request head it got.
    async fn upgrading_upstream() -> (SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let head = read_head(&mut stream).await;
                    seen.lock().push(head.to_ascii_lowercase());
                    // `/always`: a 101 whatever the request asked.
                    let always = head.starts_with("GET /always ");
                    if !always && !head.to_ascii_lowercase().contains("upgrade: echo") {
                        let _ = stream
                            .write_all(
                                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\nKeep-Alive: timeout=5\r\n\r\n")
                        .await;
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                // Half-close passed on: end our side too.
                                let _ = stream.shutdown().await;
                                return;
                            }
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, heads)
    }

    async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A raw client connection to the router served with upgrades (as
    /// `server.rs` serves traffic), and the task running the tunnel `handle`
    /// spawns.
    fn raw_connect(shared: &Arc<Shared>) -> tokio::io::DuplexStream {
        let (client_io, router_io) = tokio::io::duplex(64 * 1024);
        let conn = Arc::new(ConnInfo::new(
            CLIENT.parse().expect("client address"),
            false,
            false,
            shared.upstream.affinity(),
        ));
        let shared = Arc::clone(shared);
        let svc = service_fn(move |req| handle(Arc::clone(&shared), conn.clone(), req));
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(router_io), svc)
                .with_upgrades(),
        );
        client_io
    }

    #[tokio::test]
    async fn an_upgrade_is_spliced_after_the_101_and_half_closes_pass_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, heads) = upgrading_upstream().await;
        let shared = router(&[("a", addr, 0)]);
        let mut client = raw_connect(&shared);
        client
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: a.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .expect("write");
        let head = read_head(&mut client).await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("upgrade: echo") && head.contains("connection: upgrade"),
            "{head}"
        );
        assert!(
            !head.contains("keep-alive"),
            "hop-by-hop header passed on: {head}"
        );
        let up = heads.lock()[0].clone();
        assert!(
            up.contains("upgrade: echo") && up.contains("connection: upgrade"),
            "{up}"
        );
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.expect("echo");
        assert_eq!(&got, b"ping");
        assert_eq!(
            shared.table.total_counters().1,
            1,
            "the tunnel is in flight"
        );
        // Our end of stream reaches the upstream, whose own end comes back.
        client.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the tunnel ends")
            .expect("read");
        assert!(rest.is_empty());
        let wait = async {
            while shared.metrics.upgrades.open.load(Ordering::Relaxed) != 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("closed");
        let u = &shared.metrics.upgrades;
        assert_eq!(u.total.load(Ordering::Relaxed), 1);
        assert_eq!(u.bytes_to_upstream.load(Ordering::Relaxed), 4);
        assert_eq!(u.bytes_to_client.load(Ordering::Relaxed), 4);
        assert_eq!(u.ends(crate::stats::TunnelEnd::Closed), 1);
        assert_eq!(shared.table.total_counters(), (0, 0));
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_a_plain_answer_and_an_unasked_101_a_502() {
        use tokio::io::AsyncWriteExt;
        let (addr, heads) = upgrading_upstream().await;
        let shared = router(&[("a", addr, 0)]);
        // Not a protocol the upstream speaks: its 426 comes back as it is.
        let mut client = raw_connect(&shared);
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: a.com\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n",
            )
            .await
            .expect("write");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{head}");
        // `Upgrade: echo` without `Connection: upgrade` is no upgrade: the
        // router strips it, so the upstream answers 426 again.
        let mut client = raw_connect(&shared);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a.com\r\nUpgrade: echo\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{head}");
        assert!(!heads.lock()[1].contains("upgrade:"), "{:?}", heads.lock());
        // A 101 to a request that asked for no upgrade: 502, the upstream's
        // switched connection is not handed to the client.
        let mut client = raw_connect(&shared);
        client
            .write_all(b"GET /always HTTP/1.1\r\nHost: a.com\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert_eq!(shared.metrics.upgrades.total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_client_that_never_reads_stops_the_upstream_at_bounded_buffers() {
        use tokio::io::AsyncWriteExt;
        // After its 101 the upstream writes as fast as it can, until a
        // write has waited a second: then the router holds what it had.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flood = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            read_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: flood\r\n\r\n")
                .await
                .expect("101");
            let chunk = vec![7u8; 64 * 1024];
            let mut written = 0usize;
            loop {
                match tokio::time::timeout(Duration::from_secs(1), stream.write_all(&chunk)).await {
                    Ok(Ok(())) => written += chunk.len(),
                    Ok(Err(e)) => panic!("the router closed the tunnel: {e}"),
                    Err(_) => return written,
                }
                assert!(written < 256 << 20, "256 MiB taken without a reader");
            }
        });
        let shared = router(&[("a", addr, 0)]);
        let mut client = raw_connect(&shared);
        client
            .write_all(
                b"GET / HTTP/1.1\r\nHost: a.com\r\nConnection: upgrade\r\nUpgrade: flood\r\n\r\n",
            )
            .await
            .expect("write");
        let written = tokio::time::timeout(Duration::from_secs(60), flood)
            .await
            .expect("the upstream's writes stop")
            .expect("upstream task");
        // The client's pipe (64 KiB), the splice's buffer and the kernel's
        // loopback socket buffers: nothing grows with what the upstream sends.
        eprintln!("the upstream wrote {written} bytes before its writes stopped");
        assert!(written < 32 << 20, "{written} bytes taken without a reader");
        let taken = shared
            .metrics
            .upgrades
            .bytes_to_client
            .load(Ordering::Relaxed);
        assert!(taken <= written as u64);
        drop(client);
    }

    #[tokio::test]
    async fn connect_is_refused_with_405() {
        use tokio::io::AsyncWriteExt;
        let up = upstream("up1").await;
        let shared = router(&[("a", up.addr, 0)]);
        let mut client = raw_connect(&shared);
        client
            .write_all(b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        assert_eq!(up.connections.load(Ordering::SeqCst), 0);
    }
}
