//! Every route of the admin API, and the paths of one call.
//!
//! [`Route`] is the list: the server dispatches with an exhaustive `match`
//! on it (a route added here does not compile until it is served), the
//! client has one method per route, and `docs/admin-api.yaml` documents
//! each (tests check both).

/// A route of the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Healthz,
    Metrics,
    Status,
    ListSites,
    ApplySites,
    QuerySites,
    RemoveSites,
    GetSite,
    PutSite,
    DeleteSite,
    ListPools,
    SetServer,
    RemoveServer,
    AddServer,
    ListCerts,
    PutCert,
    DeleteCert,
    ListTunnels,
    GetTunnel,
    RepointTunnel,
    TunnelUses,
    ExportUses,
    Reload,
}

impl Route {
    /// Every route, in the order of `docs/admin-api.yaml`.
    pub const ALL: [Route; 23] = [
        Route::Healthz,
        Route::Metrics,
        Route::Status,
        Route::ListSites,
        Route::ApplySites,
        Route::QuerySites,
        Route::RemoveSites,
        Route::GetSite,
        Route::PutSite,
        Route::DeleteSite,
        Route::ListPools,
        Route::SetServer,
        Route::RemoveServer,
        Route::AddServer,
        Route::ListCerts,
        Route::PutCert,
        Route::DeleteCert,
        Route::ListTunnels,
        Route::GetTunnel,
        Route::RepointTunnel,
        Route::TunnelUses,
        Route::ExportUses,
        Route::Reload,
    ];

    /// Method and path template (`{name}` for a path segment).
    pub const fn spec(self) -> (&'static str, &'static str) {
        match self {
            Route::Healthz => ("GET", "/healthz"),
            Route::Metrics => ("GET", "/metrics"),
            Route::Status => ("GET", "/v1/status"),
            Route::ListSites => ("GET", "/v1/sites"),
            Route::ApplySites => ("POST", "/v1/sites"),
            Route::QuerySites => ("POST", "/v1/sites/query"),
            Route::RemoveSites => ("POST", "/v1/sites/remove"),
            Route::GetSite => ("GET", "/v1/sites/{host}"),
            Route::PutSite => ("PUT", "/v1/sites/{host}"),
            Route::DeleteSite => ("DELETE", "/v1/sites/{host}"),
            Route::ListPools => ("GET", "/v1/pools"),
            Route::SetServer => ("PUT", "/v1/pools/{pool}/servers/{server}"),
            Route::RemoveServer => ("DELETE", "/v1/pools/{pool}/servers/{server}"),
            Route::AddServer => ("POST", "/v1/pools/{pool}/servers"),
            Route::ListCerts => ("GET", "/v1/certs"),
            Route::PutCert => ("PUT", "/v1/certs/{name}"),
            Route::DeleteCert => ("DELETE", "/v1/certs/{name}"),
            Route::ListTunnels => ("GET", "/v1/tunnels"),
            Route::GetTunnel => ("GET", "/v1/tunnels/{tunnel}"),
            Route::RepointTunnel => ("PUT", "/v1/tunnels/{tunnel}"),
            Route::TunnelUses => ("GET", "/v1/tunnels/{tunnel}/uses"),
            Route::ExportUses => ("POST", "/v1/tunnels/uses/export"),
            Route::Reload => ("POST", "/v1/reload"),
        }
    }

    pub const fn method(self) -> &'static str {
        self.spec().0
    }

    pub const fn path(self) -> &'static str {
        self.spec().1
    }

    /// The route `method` and `path` (no query string) call, with the path's
    /// arguments as they appear in it (still percent-encoded). Literal
    /// segments win over arguments: `/v1/sites/query` is never a site.
    pub fn resolve<'p>(method: &str, path: &'p str) -> Option<(Route, Vec<&'p str>)> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        Route::ALL.into_iter().find_map(|r| {
            if r.method() != method {
                return None;
            }
            let tmpl: Vec<&str> = r.path().trim_matches('/').split('/').collect();
            if tmpl.len() != segs.len() {
                return None;
            }
            let mut args = Vec::new();
            for (t, s) in tmpl.iter().zip(&segs) {
                if t.starts_with('{') {
                    args.push(*s);
                } else if t != s {
                    return None;
                }
            }
            Some((r, args))
        })
    }

    /// The path with each `{...}` replaced, in order, by one of `args`
    /// (percent-encoded).
    pub fn path_with(self, args: &[&str]) -> String {
        let mut out = String::with_capacity(self.path().len() + 32);
        let mut args = args.iter();
        let mut rest = self.path();
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
    pub fn call(self, args: &[&str]) -> String {
        format!("{} {}", self.method(), self.path_with(args))
    }
}

/// Percent-encodes a path segment or query value: everything but RFC 3986's
/// unreserved characters (so `*.example.com` becomes `%2A.example.com`; the
/// router decodes hosts, certificate and tunnel names with [`decode`]).
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

/// Reverses [`encode`] (and any other `%XX`); a `%` not followed by two hex
/// digits stays as it is, and bytes that are not UTF-8 are replaced.
pub fn decode(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_reverses_encoding_and_keeps_stray_percents() {
        assert_eq!(decode("%2A.a.com"), "*.a.com");
        assert_eq!(decode(&encode("p@ss:w/rd%")), "p@ss:w/rd%");
        assert_eq!(decode("a%2"), "a%2");
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%zz"), "%zz");
    }

    #[test]
    fn paths_are_filled_and_encoded() {
        assert_eq!(
            Route::GetSite.path_with(&["*.a.com"]),
            "/v1/sites/%2A.a.com",
            "the router decodes %2A"
        );
        assert_eq!(
            Route::SetServer.path_with(&["web", "s-1"]),
            "/v1/pools/web/servers/s-1"
        );
        assert_eq!(Route::Status.path_with(&[]), "/v1/status");
        assert_eq!(
            Route::DeleteCert.call(&["shop.a"]),
            "DELETE /v1/certs/shop.a"
        );
    }

    #[test]
    fn every_route_resolves_to_itself_and_literals_win() {
        let mut seen = std::collections::HashSet::new();
        for r in Route::ALL {
            assert!(seen.insert(r.spec()), "{r:?} twice");
            let path = r.path_with(&["x", "y"]);
            let (found, args) = Route::resolve(r.method(), &path).expect("resolves");
            assert_eq!(found, r, "{path}");
            assert_eq!(args.len(), r.path().matches('{').count());
        }
        assert_eq!(
            Route::resolve("POST", "/v1/tunnels/uses/export").map(|r| r.0),
            Some(Route::ExportUses)
        );
        assert_eq!(
            Route::resolve("GET", "/v1/sites/%2A.a.com"),
            Some((Route::GetSite, vec!["%2A.a.com"]))
        );
        assert_eq!(Route::resolve("PATCH", "/v1/status"), None);
        assert_eq!(Route::resolve("GET", "/v1/nothing"), None);
    }
}
