//! Headers on the way through the router: what the listener knows of the
//! client connection ([`ConnInfo`]), hop-by-hop headers removed both ways,
//! and the client's address and protocol passed on to the upstream
//! (`X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`; believed from the
//! client only on trusted listeners), `ferry-via` for router hops.
//!
//! `Upgrade` is hop-by-hop, but an HTTP/1.1 upgrade the router proxies
//! ([`upgrade_asked`]: a WebSocket or another protocol, never `h2c`) keeps
//! it on the way up and on the upstream's 101 on the way back, with
//! `Connection: upgrade` (`tunnel_upgrade.rs` splices the two connections).

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Uri, Version};

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
    /// Ends when the connection's upgraded tunnel ends (at most one: an
    /// upgraded HTTP/1.1 connection carries no more requests). The
    /// connection's task waits for it, so the tunnel keeps the connection's
    /// slot (`max_connections`, shutdown's drain).
    tunnel: parking_lot::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
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
            tunnel: parking_lot::Mutex::new(None),
        }
    }

    /// A tunnel starts on this connection: it holds the sender until it ends.
    pub fn tunnel_started(&self) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.tunnel.lock() = Some(rx);
        tx
    }

    /// Resolves when the connection's tunnel ends (at once without one).
    pub async fn tunnel_ended(&self) {
        let rx = self.tunnel.lock().take();
        if let Some(rx) = rx {
            // An error is the sender dropped: the tunnel ended too.
            let _ = rx.await;
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

/// What a client request asks of `Upgrade` (RFC 9110 7.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeAsk {
    /// No upgrade: a plain request.
    None,
    /// An HTTP/1.1 upgrade to pass on (`Connection: upgrade` and `Upgrade`
    /// with a protocol other than h2c, no request body).
    Forward,
    /// An upgrade the router does not pass on: `h2c` (the router speaks
    /// HTTP/2 to clients itself and HTTP/1.1 upstream; a tunnelled h2c
    /// would skip its per-request routing and limits), or an upgrade with
    /// a request body. `Upgrade` is stripped and the request goes on as a
    /// plain one, which RFC 9110 allows (a server may ignore an upgrade);
    /// nginx does the same without `proxy_set_header Upgrade`.
    Ignored,
}

/// Whether `headers` of a request in `version` ask for an upgrade the router
/// passes on; `has_body`: the request carries a body.
pub(crate) fn upgrade_asked(version: Version, headers: &HeaderMap, has_body: bool) -> UpgradeAsk {
    // HTTP/1.0 has no upgrade; HTTP/2 forbids the header (RFC 9113 8.2.2;
    // its extended CONNECT, RFC 8441, is not offered).
    if version != Version::HTTP_11 {
        return UpgradeAsk::None;
    }
    let mut protocols = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    if protocols.peek().is_none() {
        return UpgradeAsk::None;
    }
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_says_upgrade {
        // `Upgrade` without `Connection: upgrade` is not an upgrade request
        // (a proxy before us would have removed the pair together).
        return UpgradeAsk::None;
    }
    let h2c = |p: &str| {
        let name = p.split('/').next().unwrap_or(p).trim();
        name.eq_ignore_ascii_case("h2c")
    };
    if has_body || protocols.any(h2c) {
        return UpgradeAsk::Ignored;
    }
    UpgradeAsk::Forward
}

static CONNECTION_UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// Puts back what an upgrade needs after hop-by-hop headers were dropped:
/// the `Upgrade` values `from` had and `Connection: upgrade`.
fn keep_upgrade(from: &HeaderMap, to: &mut HeaderMap) {
    for v in from.get_all(header::UPGRADE) {
        to.append(header::UPGRADE, v.clone());
    }
    to.insert(header::CONNECTION, CONNECTION_UPGRADE.clone());
}

/// The upstream's 101 on its way to the client: hop-by-hop headers removed
/// but the upgrade's own (`Upgrade`, `Connection: upgrade`).
pub(crate) fn switching_protocols_headers(headers: &mut HeaderMap) {
    let upgrade: HeaderMap = headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| (header::UPGRADE, v.clone()))
        .collect();
    strip_hop_by_hop(headers);
    keep_upgrade(&upgrade, headers);
}

/// The headers only a trusted peer (another router) may send: from anyone
/// else they are dropped and set by this router.
fn is_forwarding(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR
        || name == header::FORWARDED
        || name == FERRY_VIA
        || name == X_FORWARDED_PROTO
}

/// Where the headers of an outgoing head go: a map (hyper's client) or
/// the request's bytes on the wire (`upstream_h1.rs`). Each header comes
/// once, in order; none of them is already there.
pub(crate) trait HeadSink {
    fn header(&mut self, name: &HeaderName, value: &HeaderValue);
}

impl HeadSink for HeaderMap {
    fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.append(name.clone(), value.clone());
    }
}

/// The headers sent upstream for the client's request `parts`, into
/// `sink`: hop-by-hop headers dropped, Host set, the client named in
/// X-Forwarded-For, X-Forwarded-Proto and Forwarded (kept as they came
/// from a trusted peer). With `upgrade` ([`UpgradeAsk::Forward`])
/// `Upgrade` and `Connection: upgrade` go up too.
pub(crate) fn outgoing_headers<S: HeadSink>(
    parts: &Parts,
    conn: &ConnInfo,
    host: &str,
    upgrade: bool,
    sink: &mut S,
) {
    // A name comparison per header, no lookup, tells whether `Connection` is there.
    let named = if parts.headers.keys().any(|n| n == header::CONNECTION) {
        connection_named(&parts.headers)
    } else {
        Vec::new()
    };
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
        sink.header(name, value);
    }
    if upgrade {
        for v in parts.headers.get_all(header::UPGRADE) {
            sink.header(&header::UPGRADE, v);
        }
        sink.header(&header::CONNECTION, &CONNECTION_UPGRADE);
    }
    if !has_host {
        if let Ok(v) = HeaderValue::from_str(host) {
            sink.header(&header::HOST, &v);
        }
    }
    // A trusted peer (another router) already named the client, and knows
    // how the client reached it.
    if !has_xff {
        sink.header(&X_FORWARDED_FOR, &conn.client_ip_header);
    }
    let proto = if conn.tls { "https" } else { "http" };
    if !has_xfp {
        sink.header(&X_FORWARDED_PROTO, &HeaderValue::from_static(proto));
    }
    if !has_fwd {
        if let Some(v) = forwarded(conn, host, proto) {
            sink.header(&header::FORWARDED, &v);
        }
    }
}

/// The request target sent upstream: origin form (HTTP/2 requests arrive
/// in absolute form; HTTP/1 upstreams want origin form).
pub(crate) fn origin_form(uri: &Uri) -> &str {
    match uri.path_and_query() {
        Some(pq) => pq.as_str(),
        None => "/",
    }
}

/// The request head for `parts` as it goes upstream: the same headers as
/// hyper's client would send ([`outgoing_headers`]), written straight
/// into the bytes of the head, for `upstream_h1.rs`.
pub(crate) fn request_head(parts: &Parts, conn: &ConnInfo, host: &str) -> Vec<u8> {
    struct Wire {
        out: Vec<u8>,
        has_length: bool,
    }
    impl HeadSink for Wire {
        fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
            self.has_length |= name == header::CONTENT_LENGTH;
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }
    let target = origin_form(&parts.uri);
    let mut wire = Wire {
        out: Vec::with_capacity(256 + target.len() + 48 * parts.headers.len()),
        has_length: false,
    };
    wire.out.extend_from_slice(parts.method.as_str().as_bytes());
    wire.out.push(b' ');
    wire.out.extend_from_slice(target.as_bytes());
    wire.out.extend_from_slice(b" HTTP/1.1\r\n");
    outgoing_headers(parts, conn, host, false, &mut wire);
    // This path carries no body; a method whose request has one by
    // definition says it is empty (as hyper's client does).
    if !wire.has_length && matches!(parts.method, Method::PUT | Method::POST | Method::PATCH) {
        wire.out.extend_from_slice(b"content-length: 0\r\n");
    }
    wire.out.extend_from_slice(b"\r\n");
    wire.out
}

/// The head sent upstream for the client's request `parts`, which are left
/// as they are (a retry builds its head from them again): the headers of
/// [`outgoing_headers`], copied once into a map sized for the additions
/// (values are shared, not copied), origin-form URI, HTTP/1.1.
pub(crate) fn outgoing_head(parts: &Parts, conn: &ConnInfo, host: &str, upgrade: bool) -> Parts {
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
    outgoing_headers(parts, conn, host, upgrade, &mut headers);
    let uri = match parts.uri.authority() {
        Some(_) => Uri::builder()
            .path_and_query(origin_form(&parts.uri))
            .build()
            .unwrap_or_else(|_| parts.uri.clone()),
        None => parts.uri.clone(),
    };
    let (mut out, ()) = Request::new(()).into_parts();
    out.method = parts.method.clone();
    out.uri = uri;
    out.version = Version::HTTP_11;
    out.headers = headers;
    out.extensions = parts.extensions.clone();
    // The client connection's upgrade is the router's to take, not the
    // upstream request's.
    out.extensions.remove::<hyper::upgrade::OnUpgrade>();
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
    upgrade: bool,
) {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    *parts = outgoing_head(parts, conn, host, upgrade);
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
        let out = outgoing_head(&parts, &conn(false), "a.com", false);
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
            let out = outgoing_head(&request("/", &[]), &c, host, false);
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
        let out = outgoing_head(&parts, &conn(true), "a.com", false);
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

    fn map(headers: &[(&str, &str)]) -> HeaderMap {
        request("/", headers).headers
    }

    #[test]
    fn an_upgrade_is_passed_on_only_as_http_1_1_with_both_headers() {
        use UpgradeAsk::*;
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        let v11 = Version::HTTP_11;
        assert_eq!(upgrade_asked(v11, &map(&ws), false), Forward);
        // Other protocols too, several values, any case.
        let other = [("connection", "UPGRADE"), ("upgrade", "foo/2, bar")];
        assert_eq!(upgrade_asked(v11, &map(&other), false), Forward);
        // One header without the other is no upgrade.
        assert_eq!(upgrade_asked(v11, &map(&ws[1..]), false), None);
        let no_upgrade = [("connection", "upgrade")];
        assert_eq!(upgrade_asked(v11, &map(&no_upgrade), false), None);
        let empty = [("connection", "upgrade"), ("upgrade", " ")];
        assert_eq!(upgrade_asked(v11, &map(&empty), false), None);
        // HTTP/1.0 and HTTP/2 have no upgrade.
        assert_eq!(upgrade_asked(Version::HTTP_10, &map(&ws), false), None);
        assert_eq!(upgrade_asked(Version::HTTP_2, &map(&ws), false), None);
        // h2c, alone or among others, and an upgrade with a body: ignored.
        for h2c in ["h2c", "H2C", "websocket, h2c"] {
            let h = [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", h2c)];
            assert_eq!(upgrade_asked(v11, &map(&h), false), Ignored, "{h2c}");
        }
        assert_eq!(upgrade_asked(v11, &map(&ws), true), Ignored);
    }

    #[tokio::test]
    async fn an_upgrade_keeps_its_headers_on_the_way_up_and_a_plain_request_does_not() {
        let parts = request(
            "/chat",
            &[
                ("host", "a.com"),
                ("connection", "Upgrade, x-secret"),
                ("upgrade", "websocket"),
                ("x-secret", "1"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
            ],
        );
        let up = outgoing_head(&parts, &conn(false), "a.com", true);
        assert_eq!(all(&up.headers, "upgrade"), ["websocket"]);
        assert_eq!(all(&up.headers, "connection"), ["upgrade"]);
        assert!(up.headers.get("x-secret").is_none(), "named by Connection");
        assert_eq!(all(&up.headers, "sec-websocket-version"), ["13"]);
        let plain = outgoing_head(&parts, &conn(false), "a.com", false);
        assert!(plain.headers.get("upgrade").is_none());
        assert!(plain.headers.get("connection").is_none());
    }

    #[test]
    fn a_101_keeps_its_upgrade_and_loses_the_other_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        switching_protocols_headers(&mut h);
        assert_eq!(all(&h, "upgrade"), ["websocket"]);
        assert_eq!(all(&h, "connection"), ["upgrade"]);
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.len(), 3);
    }
}
