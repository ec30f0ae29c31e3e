//! The router as a whole: `/metrics`, `/v1/status`, `/v1/reload`.

use std::fmt::Write;

use bytes::Bytes;
use ferry_admin_api::router::{ReloadReport, Reloaded, Status};
use ferry_model::ServerState;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use super::{error, ok, Resp};
use crate::Proxy;

pub(super) fn status(proxy: &Proxy) -> Resp {
    let s = &proxy.shared;
    let (held, in_flight) = s.table.total_counters();
    ok(&Status {
        name: s.settings.load().name.clone(),
        sites: s.table.len() as u64,
        held,
        in_flight,
        listeners: proxy.listen_addrs().iter().map(|a| a.to_string()).collect(),
        open_connections: proxy.conns.open() as u64,
        requests_total: s.metrics.requests_total(),
    })
}

pub(super) async fn reload(proxy: &Proxy) -> Resp {
    match proxy.reload_from_file().await {
        Ok(r) => ok(&Reloaded {
            reloaded: ReloadReport {
                sites_added: r.sites_added,
                sites_changed: r.sites_changed,
                sites_removed: r.sites_removed,
                pools: r.pools,
            },
        }),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The Prometheus text: the registry's metrics, then the gauges read at
/// scrape time (table, connections, servers, tunnels, certificates).
pub(super) fn metrics(proxy: &Proxy) -> Resp {
    let shared = &proxy.shared;
    let mut out = String::with_capacity(8192);
    shared.metrics.render(&mut out);
    proxy.scale.render(&mut out);
    let (held, in_flight) = shared.table.total_counters();
    let _ = writeln!(
        out,
        "# HELP ferry_sites Sites in the table.\n# TYPE ferry_sites gauge\nferry_sites {}",
        shared.table.len()
    );
    let _ = writeln!(out, "# HELP ferry_site_table_bytes Approximate heap bytes of the site table.\n# TYPE ferry_site_table_bytes gauge\nferry_site_table_bytes {}", shared.table.heap_bytes());
    let _ = writeln!(out, "# HELP ferry_held_requests Requests held right now (frozen sites).\n# TYPE ferry_held_requests gauge\nferry_held_requests {held}");
    let _ = writeln!(out, "# HELP ferry_in_flight_requests Requests forwarded that could still write at the source: not yet answered, or answered without a fixed length (a freeze waits for them).\n# TYPE ferry_in_flight_requests gauge\nferry_in_flight_requests {in_flight}");
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
    crate::control::metrics(shared, &mut out);
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
