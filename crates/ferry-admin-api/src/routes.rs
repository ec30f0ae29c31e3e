//! Every route of the admin API, and the paths of one call.
//!
//! [`ROUTES`] is the list the server dispatches and `docs/admin-api.yaml`
//! documents (a test checks both against it); the functions below build the
//! path of one call with its names percent-encoded.

/// A route: method and path template (`{name}` for a path segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

const fn r(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

pub const HEALTHZ: Route = r("GET", "/healthz");
pub const METRICS: Route = r("GET", "/metrics");
pub const STATUS: Route = r("GET", "/v1/status");
pub const LIST_SITES: Route = r("GET", "/v1/sites");
pub const APPLY_SITES: Route = r("POST", "/v1/sites");
pub const QUERY_SITES: Route = r("POST", "/v1/sites/query");
pub const REMOVE_SITES: Route = r("POST", "/v1/sites/remove");
pub const GET_SITE: Route = r("GET", "/v1/sites/{host}");
pub const PUT_SITE: Route = r("PUT", "/v1/sites/{host}");
pub const DELETE_SITE: Route = r("DELETE", "/v1/sites/{host}");
pub const LIST_POOLS: Route = r("GET", "/v1/pools");
pub const ADD_SERVER: Route = r("POST", "/v1/pools/{pool}/servers");
pub const SET_SERVER: Route = r("PUT", "/v1/pools/{pool}/servers/{server}");
pub const REMOVE_SERVER: Route = r("DELETE", "/v1/pools/{pool}/servers/{server}");
pub const LIST_CERTS: Route = r("GET", "/v1/certs");
pub const PUT_CERT: Route = r("PUT", "/v1/certs/{name}");
pub const DELETE_CERT: Route = r("DELETE", "/v1/certs/{name}");
pub const LIST_TUNNELS: Route = r("GET", "/v1/tunnels");
pub const GET_TUNNEL: Route = r("GET", "/v1/tunnels/{tunnel}");
pub const REPOINT_TUNNEL: Route = r("PUT", "/v1/tunnels/{tunnel}");
pub const TUNNEL_USES: Route = r("GET", "/v1/tunnels/{tunnel}/uses");
pub const EXPORT_USES: Route = r("POST", "/v1/tunnels/uses/export");
pub const RELOAD: Route = r("POST", "/v1/reload");

/// Every route, in the order of `docs/admin-api.yaml`.
pub const ROUTES: &[Route] = &[
    HEALTHZ,
    METRICS,
    STATUS,
    LIST_SITES,
    APPLY_SITES,
    QUERY_SITES,
    REMOVE_SITES,
    GET_SITE,
    PUT_SITE,
    DELETE_SITE,
    LIST_POOLS,
    SET_SERVER,
    REMOVE_SERVER,
    ADD_SERVER,
    LIST_CERTS,
    PUT_CERT,
    DELETE_CERT,
    LIST_TUNNELS,
    GET_TUNNEL,
    REPOINT_TUNNEL,
    TUNNEL_USES,
    EXPORT_USES,
    RELOAD,
];

impl Route {
    /// The path with each `{...}` replaced, in order, by one of `args`
    /// (percent-encoded).
    pub fn path_with(&self, args: &[&str]) -> String {
        let mut out = String::with_capacity(self.path.len() + 32);
        let mut args = args.iter();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
            out.push_str(&encode(args.next().copied().unwrap_or("")));
            rest = &rest[close..];
        }
        out.push_str(rest);
        out
    }

    /// `METHOD /path` with the arguments, as errors name a call.
    pub fn call(&self, args: &[&str]) -> String {
        format!("{} {}", self.method, self.path_with(args))
    }
}

/// Percent-encodes a path segment: everything but RFC 3986's unreserved
/// characters (so `*.example.com` becomes `%2A.example.com`; the router
/// decodes hosts, certificate and tunnel names).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value (as [`encode`]).
pub(crate) fn encode_query(value: &str) -> String {
    encode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_filled_and_encoded() {
        assert_eq!(
            GET_SITE.path_with(&["*.a.com"]),
            "/v1/sites/%2A.a.com",
            "the router decodes %2A"
        );
        assert_eq!(
            SET_SERVER.path_with(&["web", "s-1"]),
            "/v1/pools/web/servers/s-1"
        );
        assert_eq!(STATUS.path_with(&[]), "/v1/status");
        assert_eq!(DELETE_CERT.call(&["shop.a"]), "DELETE /v1/certs/shop.a");
    }

    #[test]
    fn routes_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{r:?} twice");
        }
    }
}
