//! Headers on the way through the router: what the listener knows of the
//! client connection ([`ConnInfo`]), hop-by-hop headers removed both ways,
//! and the client's address and protocol passed on to the upstream
//! (`X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`; believed from the
//! client only on trusted listeners), `ferry-via` for router hops.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

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

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static FERRY_VIA: HeaderName = HeaderName::from_static(VIA_HEADER);

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

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Prepares the outgoing head: hop-by-hop headers removed, Host set, the client
/// address appended to X-Forwarded-For and Forwarded. With `absolute_to`, the
/// URI is made absolute for a pooled client that dials by URI; without, it is
/// left in (or brought to) origin form for a connection we already hold.
pub(crate) fn outgoing_parts(
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
