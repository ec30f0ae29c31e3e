//! Prometheus metrics, kept in atomics and rendered in the text exposition format.
//! Hand-rolled because the hot path only increments fixed counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_model::SiteState;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

/// Upstream latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far per bucket (upper bound in seconds, not
    /// cumulative) and in all; a scale policy's `p95_latency` reads them.
    pub fn counts(&self) -> (Vec<(f64, u64)>, u64) {
        let per_bucket = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        (per_bucket, self.count.load(Ordering::Relaxed))
    }
}

/// Status classes 1xx..5xx, by site state (active, maintenance, frozen, none).
#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; 4],
    pub retries: AtomicU64,
    pub held_total: AtomicU64,
    pub hold_timeouts: AtomicU64,
    pub loops: AtomicU64,
    pub bad_requests: AtomicU64,
    pub proxy_header_errors: AtomicU64,
    pub connections: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub tls: crate::stats::TlsCounters,
    /// `[[passthrough]]` connections by outcome.
    pub passthrough: crate::stats::PassthroughStats,
    /// Accept loops: open connections, cap pauses, accept errors.
    pub accept: crate::stats::AcceptStats,
    /// Body stalls, idle keep-alive closes, silent connections.
    pub deadlines: crate::stats::DeadlineStats,
    /// Requests cut at freezes' drain deadlines (`straggler.rs`).
    pub stragglers: crate::stats::StragglerCounts,
    /// Upgraded connections (WebSockets): open, total, bytes, ends.
    pub upgrades: crate::stats::UpgradeStats,
    /// Lingering closes of HTTP/1.1 connections (`linger.rs`).
    pub lingering: crate::stats::LingerStats,
    upstream: RwLock<HashMap<String, Arc<Histogram>>>,
}

impl Metrics {
    pub fn request(&self, state: Option<SiteState>, status: u16) {
        let s = match state {
            Some(SiteState::Active) => 0,
            Some(SiteState::Maintenance) => 1,
            Some(SiteState::Frozen) => 2,
            None => 3,
        };
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests[s][class].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency histogram of a pool (or `remote:NAME`), created on first use.
    pub fn upstream(&self, pool: &str) -> Arc<Histogram> {
        if let Some(h) = self.upstream.read().get(pool) {
            return Arc::clone(h);
        }
        let mut map = self.upstream.write();
        Arc::clone(map.entry(pool.to_string()).or_default())
    }

    pub fn requests_total(&self) -> u64 {
        self.requests
            .iter()
            .flatten()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn render(&self, out: &mut String) {
        let states = ["active", "maintenance", "frozen", "none"];
        let _ = writeln!(
            out,
            "# HELP ferry_requests_total Requests answered, by status class and site state."
        );
        let _ = writeln!(out, "# TYPE ferry_requests_total counter");
        for (si, st) in states.iter().enumerate() {
            for class in 0..5 {
                let v = self.requests[si][class].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "ferry_requests_total{{class=\"{}xx\",state=\"{st}\"}} {v}",
                    class + 1
                );
            }
        }
        let counters = [
            (
                "ferry_upstream_retries_total",
                "Idempotent requests retried on another server.",
                &self.retries,
            ),
            (
                "ferry_held_requests_total",
                "Requests held because their site was frozen.",
                &self.held_total,
            ),
            (
                "ferry_hold_timeouts_total",
                "Held requests answered 503 after hold_max.",
                &self.hold_timeouts,
            ),
            (
                "ferry_loops_detected_total",
                "Requests refused with 508 Loop Detected.",
                &self.loops,
            ),
            (
                "ferry_bad_requests_total",
                "Requests refused as malformed.",
                &self.bad_requests,
            ),
            (
                "ferry_proxy_header_errors_total",
                "Connections closed for a bad PROXY header.",
                &self.proxy_header_errors,
            ),
            (
                "ferry_connections_total",
                "Client connections accepted.",
                &self.connections,
            ),
            (
                "ferry_reloads_total",
                "Configuration reloads applied.",
                &self.reloads,
            ),
            (
                "ferry_reload_failures_total",
                "Configuration reloads refused.",
                &self.reload_failures,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        }
        // The process's own log (ferry-log): what its limits kept out.
        let (suppressed, dropped) = ferry_log::counters();
        let _ = writeln!(out, "# HELP ferry_log_lines_suppressed_total Log lines not written because their statement was over --log-rate (a summary line says how many).\n# TYPE ferry_log_lines_suppressed_total counter\nferry_log_lines_suppressed_total {suppressed}");
        let _ = writeln!(out, "# HELP ferry_log_lines_dropped_total Log lines lost because the output (pipe, disk) did not keep up or failed.\n# TYPE ferry_log_lines_dropped_total counter\nferry_log_lines_dropped_total {dropped}");
        self.tls.render(out);
        self.passthrough.render(out);
        self.accept.render(out);
        self.deadlines.render(out);
        self.stragglers.render(out);
        self.upgrades.render(out);
        self.lingering.render(out);
        let map = self.upstream.read();
        let mut pools: Vec<_> = map.iter().collect();
        pools.sort_by(|a, b| a.0.cmp(b.0));
        let _ = writeln!(
            out,
            "# HELP ferry_upstream_duration_seconds Time to the upstream response head, per pool."
        );
        let _ = writeln!(out, "# TYPE ferry_upstream_duration_seconds histogram");
        for (pool, h) in pools {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "ferry_upstream_duration_seconds_bucket{{pool=\"{pool}\",le=\"{b}\"}} {cumulative}");
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "ferry_upstream_duration_seconds_bucket{{pool=\"{pool}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "ferry_upstream_duration_seconds_sum{{pool=\"{pool}\"}} {}",
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "ferry_upstream_duration_seconds_count{{pool=\"{pool}\"}} {count}"
            );
        }
    }
}
