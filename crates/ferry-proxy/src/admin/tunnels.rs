//! `/v1/tunnels...`: database tunnels, who used them, and re-pointing one.

use std::sync::Arc;

use ferry_admin_api::routes;
use ferry_admin_api::tunnels::{ObservedUse, TunnelList, UsesExport};
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{error, ok, Resp};
use crate::tunnel::Tunnel;
use crate::Proxy;

pub(super) fn list(proxy: &Proxy) -> Resp {
    let tunnels = proxy.tunnels.all().iter().map(|t| t.view()).collect();
    ok(&TunnelList { tunnels })
}

pub(super) fn get(proxy: &Proxy, raw: &str) -> Resp {
    with_tunnel(proxy, raw, |t| ok(&t.view()))
}

pub(super) fn uses(proxy: &Proxy, raw: &str) -> Resp {
    with_tunnel(proxy, raw, |t| ok(&t.uses_view()))
}

fn with_tunnel(proxy: &Proxy, raw: &str, f: impl FnOnce(&Tunnel) -> Resp) -> Resp {
    let name = routes::decode(raw);
    match proxy.tunnels.get(&name) {
        Some(t) => f(&t),
        None => error(StatusCode::NOT_FOUND, format!("no tunnel named {name:?}")),
    }
}

/// The body of `PUT /v1/tunnels/{tunnel}` (`ferry_admin_api::tunnels::Repoint`
/// on the wire), read loosely so that a refusal starts with the field's
/// name (`upstream: missing`, `upstream: must be a string`) as documented.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepointBody {
    upstream: Option<Value>,
}

/// Points a tunnel's new connections at another server; open ones keep theirs.
pub(super) fn repoint(proxy: &Proxy, raw: &str, body: &[u8]) -> Resp {
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
        ok(&t.view())
    })
}

/// Writes the observed uses to `observed_uses_file` (when configured) and
/// returns them either way.
pub(super) fn export_uses(proxy: &Proxy) -> Resp {
    match proxy.tunnels.export() {
        Ok((path, lines)) => ok(&UsesExport {
            written: path.map(|p| p.display().to_string()),
            lines: lines.len() as u64,
            uses: lines
                .iter()
                .filter_map(|l| serde_json::from_str::<ObservedUse>(l).ok())
                .collect(),
        }),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the observed uses file: {e}"),
        ),
    }
}
