//! Headers on the way through the router: what the listener knows of the
//! client connection ([`ConnInfo`]), hop-by-hop headers removed both ways,
//! and the client's address and protocol passed on to the upstream
//! (`X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`; believed from the
//! client only on trusted listeners), `ferry-via` for router hops.

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};

/// Header a router adds when it forwards to another DC's router, naming itself.
/// A router that receives it and would forward again answers 508 instead.
pub(crate) const VIA_HEADER: &str = "ferry-via";

/// What the listener knows about the connection a request came on (shared
/// by its requests behind an `Arc`: nothing is copied per request).
pub(crate) struct ConnInfo {
    /// The client: the peer, or the source named by a trusted PROXY header.
    pub client: SocketAddr,
    pub trusted: bool,
    /// Upstream connections this client connection has used.
    pub affinity: crate::upstream::Affinity,
    /// `X-Forwarded-For` and `Forwarded` values for this client, built once per
    /// connection rather than per request.
    pub client_ip_header: HeaderValue,
    /// `for=` part of `Forwarded` (RFC 7239 quoting for IPv6).
    pub forwarded_for: Box<str>,
    /// The whole `Forwarded` value for the first host this connection's
    /// requests went to (a keep-alive connection rarely has another): built
    /// once, then shared. Set once, read without a lock.
    forwarded_first: OnceLock<(Box<str>, HeaderValue)>,
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
            affinity,
            client_ip_header: value(ip.to_string()),
            forwarded_for: format!("for={for_}").into(),
            forwarded_first: OnceLock::new(),
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

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// The other headers a message's `Connection` header names (RFC 9110
/// 7.6.1), those that are not hop-by-hop anyway; empty (no allocation)
/// for the usual `Connection: keep-alive` or `close`.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let fixed = token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(token));
        if fixed || token.is_empty() {
            continue;
        }
        if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(n);
        }
    }
    named
}

/// Removes the hop-by-hop headers (and those `Connection` names). One
/// pass over the names finds them: most messages have none, or only
/// `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if present[0] {
        for n in connection_named(headers) {
            headers.remove(n);
        }
    }
    for (h, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(h);
        }
    }
}

/// The headers only a trusted peer (another router) may send: from anyone
/// else they are dropped and set by this router.
fn is_forwarding(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR
        || name == header::FORWARDED
        || name == FERRY_VIA
        || name == X_FORWARDED_PROTO
}

/// The head sent upstream for the client's request `parts`, which are left
/// as they are (a retry builds its head from them again): hop-by-hop
/// headers dropped, Host set, the client named in X-Forwarded-For,
/// X-Forwarded-Proto and Forwarded (kept as they came from a trusted
/// peer), origin-form URI, HTTP/1.1. The headers are copied once into a
/// map sized for the additions (values are shared, not copied).
pub(crate) fn outgoing_head(parts: &Parts, conn: &ConnInfo, host: &str) -> Parts {
    // A name comparison per header, no lookup, tells whether `Connection` is there.
    let named = if parts.headers.keys().any(|n| n == header::CONNECTION) {
        connection_named(&parts.headers)
    } else {
        Vec::new()
    };
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    let (mut has_host, mut has_xff, mut has_xfp, mut has_fwd) = (false, false, false, false);
    for (name, value) in &parts.headers {
        if is_hop_by_hop(name) || (!named.is_empty() && named.contains(name)) {
            continue;
        }
        if is_forwarding(name) {
            if !conn.trusted {
                continue;
            }
            has_xff |= name == X_FORWARDED_FOR;
            has_xfp |= name == X_FORWARDED_PROTO;
            has_fwd |= name == header::FORWARDED;
        }
        has_host |= name == header::HOST;
        headers.append(name.clone(), value.clone());
    }
    if !has_host {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, v);
        }
    }
    // A trusted peer (another router) already named the client, and knows
    // how the client reached it.
    if !has_xff {
        headers.insert(&X_FORWARDED_FOR, conn.client_ip_header.clone());
    }
    let proto = if conn.tls { "https" } else { "http" };
    if !has_xfp {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !has_fwd {
        if let Some(v) = forwarded(conn, host, proto) {
            headers.insert(header::FORWARDED, v);
        }
    }
    // HTTP/2 requests arrive in absolute form; HTTP/1 upstreams want origin form.
    let uri = match parts.uri.authority() {
        Some(_) => {
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            Uri::builder()
                .path_and_query(pq)
                .build()
                .unwrap_or_else(|_| parts.uri.clone())
        }
        None => parts.uri.clone(),
    };
    let (mut out, ()) = Request::new(()).into_parts();
    out.method = parts.method.clone();
    out.uri = uri;
    out.version = Version::HTTP_11;
    out.headers = headers;
    out.extensions = parts.extensions.clone();
    out
}

/// `Forwarded: for=CLIENT;host=HOST;proto=PROTO`: the connection's
/// first host's value is kept and shared, another host's built anew.
fn forwarded(conn: &ConnInfo, host: &str, proto: &str) -> Option<HeaderValue> {
    if let Some((first, v)) = conn.forwarded_first.get() {
        if **first == *host {
            return Some(v.clone());
        }
    }
    let v = forwarded_value(conn, host, proto)?;
    let _ = conn.forwarded_first.set((host.into(), v.clone()));
    Some(v)
}

/// The `Forwarded` value, built in one buffer.
fn forwarded_value(conn: &ConnInfo, host: &str, proto: &str) -> Option<HeaderValue> {
    let mut v = BytesMut::with_capacity(conn.forwarded_for.len() + host.len() + proto.len() + 13);
    v.extend_from_slice(conn.forwarded_for.as_bytes());
    v.extend_from_slice(b";host=");
    v.extend_from_slice(host.as_bytes());
    v.extend_from_slice(b";proto=");
    v.extend_from_slice(proto.as_bytes());
    HeaderValue::from_maybe_shared(v.freeze()).ok()
}

/// Prepares the outgoing head in place ([`outgoing_head`]); with
/// `absolute_to`, the URI is made absolute for a pooled client that dials
/// by URI.
pub(crate) fn outgoing_parts(
    parts: &mut Parts,
    conn: &ConnInfo,
    host: &str,
    absolute_to: Option<SocketAddr>,
) {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    *parts = outgoing_head(parts, conn, host);
    if let Some(target) = absolute_to {
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(target.to_string())
            .path_and_query(pq)
            .build()
        {
            parts.uri = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(trusted: bool) -> ConnInfo {
        let up = crate::upstream::Upstream::new(std::time::Duration::from_secs(1));
        ConnInfo::new(
            "192.0.2.7:4000".parse().unwrap(),
            trusted,
            false,
            up.affinity(),
        )
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_client_cannot_name_itself_and_hop_by_hop_headers_stay_here() {
        let parts = request(
            "/p?q=1",
            &[
                ("host", "a.com"),
                ("connection", "keep-alive, x-secret"),
                ("keep-alive", "timeout=5"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("ferry-via", "dc9"),
                ("accept", "a"),
                ("accept", "b"),
            ],
        );
        let out = outgoing_head(&parts, &conn(false), "a.com");
        for gone in ["connection", "keep-alive", "x-secret", "te", "ferry-via"] {
            assert!(out.headers.get(gone).is_none(), "{gone} passed on");
        }
        assert_eq!(all(&out.headers, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(all(&out.headers, "x-forwarded-proto"), ["http"]);
        assert_eq!(
            all(&out.headers, "forwarded"),
            ["for=192.0.2.7;host=a.com;proto=http"]
        );
        assert_eq!(all(&out.headers, "accept"), ["a", "b"]);
        // The connection's next request, for another host, names that host.
        let c = conn(false);
        for host in ["a.com", "b.com", "a.com"] {
            let out = outgoing_head(&request("/", &[]), &c, host);
            let want = format!("for=192.0.2.7;host={host};proto=http");
            assert_eq!(all(&out.headers, "forwarded"), [want]);
        }
        assert_eq!(all(&out.headers, "host"), ["a.com"]);
        assert_eq!(out.uri, "/p?q=1");
        assert_eq!(out.version, Version::HTTP_11);
        // The client's head is untouched, for a retry.
        assert_eq!(all(&parts.headers, "x-secret"), ["1"]);
    }

    #[tokio::test]
    async fn a_trusted_router_keeps_what_it_said_of_the_client() {
        let parts = request(
            "http://a.com/x",
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("forwarded", "for=198.51.100.1;host=a.com;proto=https"),
                ("x-forwarded-proto", "https"),
                ("ferry-via", "dc2"),
            ],
        );
        let out = outgoing_head(&parts, &conn(true), "a.com");
        assert_eq!(all(&out.headers, "x-forwarded-for"), ["198.51.100.1"]);
        assert_eq!(all(&out.headers, "x-forwarded-proto"), ["https"]);
        assert_eq!(
            all(&out.headers, "forwarded"),
            ["for=198.51.100.1;host=a.com;proto=https"]
        );
        assert_eq!(all(&out.headers, "ferry-via"), ["dc2"]);
        // HTTP/2's absolute form: Host from the authority, origin-form URI.
        assert_eq!(all(&out.headers, "host"), ["a.com"]);
        assert_eq!(out.uri, "/x");
    }

    #[test]
    fn a_response_loses_its_hop_by_hop_headers_only() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=60"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_LENGTH));
    }
}
