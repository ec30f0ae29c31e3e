//! The counters that the connection-handling modules keep for `/metrics`, and
//! how each group renders. A leaf: the modules that count depend on it, and
//! `metrics.rs` renders from it, so rendering never depends on the code that
//! counts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which side stopped moving, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stalled {
    /// The client stopped reading its response.
    ClientReceive,
    /// The client stopped sending its request body.
    ClientSend,
    /// The server stopped sending its response body.
    Upstream,
}

const STALLS: [(Stalled, &str); 3] = [
    (Stalled::ClientReceive, "client_receive"),
    (Stalled::ClientSend, "client_send"),
    (Stalled::Upstream, "upstream"),
];

/// Deadline counters: body stalls, idle keep-alive closes, silent connections.
#[derive(Default)]
pub(crate) struct DeadlineStats {
    stalls: [AtomicU64; STALLS.len()],
    /// Client connections closed after `keepalive_timeout` without a request.
    pub idle_closed: AtomicU64,
    /// Client connections closed before their first bytes arrived.
    pub first_byte_timeouts: AtomicU64,
}

impl DeadlineStats {
    pub fn count(&self, s: Stalled) {
        if let Some(i) = STALLS.iter().position(|(x, _)| *x == s) {
            self.stalls[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn stalls(&self, s: Stalled) -> u64 {
        STALLS
            .iter()
            .position(|(x, _)| *x == s)
            .map_or(0, |i| self.stalls[i].load(Ordering::Relaxed))
    }

    pub fn render(&self, out: &mut String) {
        let name = "ferry_body_timeouts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests cut because a body moved no byte for body_timeout, by who stopped.\n# TYPE {name} counter"
        );
        for ((_, label), v) in STALLS.iter().zip(&self.stalls) {
            let _ = writeln!(
                out,
                "{name}{{stalled=\"{label}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "ferry_keepalive_closed_total",
                "Client connections closed after keepalive_timeout without a request.",
                &self.idle_closed,
            ),
            (
                "ferry_first_byte_timeouts_total",
                "Client connections closed because they sent nothing within first_byte_timeout.",
                &self.first_byte_timeouts,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// How a lingering close ended (`linger.rs`), as counted in
/// `ferry_lingering_closes_total{ended=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LingerEnd {
    /// The client closed its side: every byte it sent was read.
    ClientClosed,
    /// The client sent nothing for the quiet bound.
    Quiet,
    /// The time bound passed while the client was still sending.
    TimeLimit,
    /// The byte bound was read while the client was still sending.
    ByteLimit,
    /// Reading failed (the client reset the connection).
    Error,
}

const LINGER_ENDS: [(LingerEnd, &str); 5] = [
    (LingerEnd::ClientClosed, "client_closed"),
    (LingerEnd::Quiet, "quiet"),
    (LingerEnd::TimeLimit, "time_limit"),
    (LingerEnd::ByteLimit, "byte_limit"),
    (LingerEnd::Error, "error"),
];

/// Lingering closes of HTTP/1.1 client connections, by how they ended, and
/// the request bytes they read and discarded.
#[derive(Default)]
pub(crate) struct LingerStats {
    ends: [AtomicU64; LINGER_ENDS.len()],
    discarded: AtomicU64,
}

impl LingerStats {
    pub fn count(&self, end: LingerEnd, discarded: u64) {
        if let Some(i) = LINGER_ENDS.iter().position(|(x, _)| *x == end) {
            self.ends[i].fetch_add(1, Ordering::Relaxed);
        }
        self.discarded.fetch_add(discarded, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn ended(&self, end: LingerEnd) -> u64 {
        LINGER_ENDS
            .iter()
            .position(|(x, _)| *x == end)
            .map_or(0, |i| self.ends[i].load(Ordering::Relaxed))
    }

    pub fn render(&self, out: &mut String) {
        let name = "ferry_lingering_closes_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP/1.1 client connections closed by the router that read what the client still sent before closing, by how that ended.\n# TYPE {name} counter"
        );
        for ((_, label), v) in LINGER_ENDS.iter().zip(&self.ends) {
            let _ = writeln!(
                out,
                "{name}{{ended=\"{label}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = "ferry_lingering_discarded_bytes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Bytes read and discarded by lingering closes (request bodies the router answered without reading).\n# TYPE {name} counter\n{name} {}",
            self.discarded.load(Ordering::Relaxed)
        );
    }
}

/// What a listener serves, for the metrics' `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    Http,
    Passthrough,
    Tunnel,
    Admin,
}

const KINDS: [(ListenerKind, &str); 4] = [
    (ListenerKind::Http, "http"),
    (ListenerKind::Passthrough, "passthrough"),
    (ListenerKind::Tunnel, "tunnel"),
    (ListenerKind::Admin, "admin"),
];

impl ListenerKind {
    pub fn index(self) -> usize {
        KINDS.iter().position(|(k, _)| *k == self).unwrap_or(0)
    }
}

/// Accept counters by listener kind (`listen.rs`).
#[derive(Default)]
pub(crate) struct AcceptStats {
    pub open: [AtomicU64; KINDS.len()],
    pub paused: [AtomicU64; KINDS.len()],
    pub errors: [AtomicU64; KINDS.len()],
}

impl AcceptStats {
    pub fn render(&self, out: &mut String) {
        let series: [(&str, &str, &str, &[AtomicU64; KINDS.len()]); 3] = [
            (
                "ferry_open_connections_by_kind",
                "gauge",
                "Connections open, by listener kind.",
                &self.open,
            ),
            (
                "ferry_accept_paused_total",
                "counter",
                "Times an accept loop stopped accepting because a connection cap was full.",
                &self.paused,
            ),
            (
                "ferry_accept_errors_total",
                "counter",
                "Failed accepts (out of file descriptors and the like), each followed by a back-off.",
                &self.errors,
            ),
        ];
        for (name, kind, help, values) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((_, label), v) in KINDS.iter().zip(values) {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{label}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// How a passthrough connection ended its setup, as counted in
/// `ferry_passthrough_connections_total{result=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassthroughOutcome {
    /// Spliced to a server of the site's pool.
    Local,
    /// Spliced to the router of another datacenter.
    Remote,
    /// Site in maintenance, spliced to the maintenance terminator.
    MaintenanceTerminator,
    /// Site in maintenance and no terminator: closed.
    MaintenanceClosed,
    /// Site still frozen after the hold bound.
    HoldTimeout,
    NoSni,
    /// Not a TLS ClientHello, or a malformed one, or a bad server name.
    Invalid,
    TooLarge,
    /// No complete ClientHello (or PROXY header) within the bound.
    Timeout,
    /// The client closed before its ClientHello was complete.
    ClientClosed,
    /// No site for the name and no default site.
    UnknownSite,
    /// A connection from another router for a site this router also places remote.
    Loop,
    /// No server, pool or passthrough address to send it to.
    NoServer,
    ConnectFailed,
    BadProxyHeader,
    /// `proxy_protocol = true` and the peer is not in `trusted_networks`.
    UntrustedPeer,
}

const OUTCOMES: [(PassthroughOutcome, &str); 16] = [
    (PassthroughOutcome::Local, "local"),
    (PassthroughOutcome::Remote, "remote"),
    (
        PassthroughOutcome::MaintenanceTerminator,
        "maintenance_terminator",
    ),
    (PassthroughOutcome::MaintenanceClosed, "maintenance_closed"),
    (PassthroughOutcome::HoldTimeout, "hold_timeout"),
    (PassthroughOutcome::NoSni, "no_sni"),
    (PassthroughOutcome::Invalid, "invalid"),
    (PassthroughOutcome::TooLarge, "too_large"),
    (PassthroughOutcome::Timeout, "timeout"),
    (PassthroughOutcome::ClientClosed, "client_closed"),
    (PassthroughOutcome::UnknownSite, "unknown_site"),
    (PassthroughOutcome::Loop, "loop"),
    (PassthroughOutcome::NoServer, "no_server"),
    (PassthroughOutcome::ConnectFailed, "connect_failed"),
    (PassthroughOutcome::BadProxyHeader, "bad_proxy_header"),
    (PassthroughOutcome::UntrustedPeer, "untrusted_peer"),
];

/// Counters of every passthrough listener together (`passthrough.rs`).
#[derive(Default)]
pub(crate) struct PassthroughStats {
    results: [AtomicU64; OUTCOMES.len()],
    /// Connections held because their site was frozen.
    pub held: AtomicU64,
    /// Connections spliced and still open.
    pub open: AtomicU64,
    /// Spliced connections closed after `idle_timeout`.
    pub idle_closed: AtomicU64,
}

impl PassthroughStats {
    pub fn count(&self, outcome: PassthroughOutcome) {
        if let Some(i) = OUTCOMES.iter().position(|(o, _)| *o == outcome) {
            self.results[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self, out: &mut String) {
        let name = "ferry_passthrough_connections_total";
        let _ = writeln!(
            out,
            "# HELP {name} Passthrough connections by how their setup ended.\n# TYPE {name} counter"
        );
        for ((_, label), v) in OUTCOMES.iter().zip(&self.results) {
            let _ = writeln!(
                out,
                "{name}{{result=\"{label}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let name = "ferry_passthrough_held_total";
        let _ = writeln!(
            out,
            "# HELP {name} Passthrough connections held because their site was frozen.\n# TYPE {name} counter\n{name} {}",
            self.held.load(Ordering::Relaxed)
        );
        let name = "ferry_passthrough_idle_closed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Spliced passthrough connections closed after idle_timeout without a byte either way.\n# TYPE {name} counter\n{name} {}",
            self.idle_closed.load(Ordering::Relaxed)
        );
        let name = "ferry_passthrough_open_connections";
        let _ = writeln!(
            out,
            "# HELP {name} Passthrough connections spliced and still open.\n# TYPE {name} gauge\n{name} {}",
            self.open.load(Ordering::Relaxed)
        );
    }
}

/// Handshake outcomes, for `ferry_tls_handshakes_total{result}`.
#[derive(Default)]
pub(crate) struct TlsCounters {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub timeout: AtomicU64,
    pub alpn_h2: AtomicU64,
    pub tls13: AtomicU64,
    pub resumed: AtomicU64,
}

impl TlsCounters {
    pub fn render(&self, out: &mut String) {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP ferry_tls_handshakes_total TLS handshakes on traffic listeners, by result.\n# TYPE ferry_tls_handshakes_total counter\nferry_tls_handshakes_total{{result=\"ok\"}} {}\nferry_tls_handshakes_total{{result=\"failed\"}} {}\nferry_tls_handshakes_total{{result=\"timeout\"}} {}",
            v(&self.ok),
            v(&self.failed),
            v(&self.timeout)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_tls_alpn_h2_total TLS handshakes that negotiated HTTP/2.\n# TYPE ferry_tls_alpn_h2_total counter\nferry_tls_alpn_h2_total {}",
            v(&self.alpn_h2)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_tls13_handshakes_total TLS handshakes that negotiated TLS 1.3 (the rest are 1.2).\n# TYPE ferry_tls13_handshakes_total counter\nferry_tls13_handshakes_total {}",
            v(&self.tls13)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_tls_resumed_handshakes_total TLS handshakes that resumed a session (ticket or session id).\n# TYPE ferry_tls_resumed_handshakes_total counter\nferry_tls_resumed_handshakes_total {}",
            v(&self.resumed)
        );
    }
}

/// One open connection counted on a gauge until dropped (so a connection
/// whose task is cancelled is uncounted too).
pub(crate) struct OpenGauge<'a>(&'a AtomicU64);

impl<'a> OpenGauge<'a> {
    pub fn enter(gauge: &'a AtomicU64) -> OpenGauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenGauge(gauge)
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a request was cut at a freeze's drain deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutReason {
    /// Its request body was still on its way to the source.
    Upload,
    /// A safe request (GET, HEAD, OPTIONS, TRACE) still waiting for its answer.
    LongPoll,
    /// An answer without a fixed length (SSE, chunked): the application is
    /// still producing it.
    Stream,
    /// An upgraded connection (a WebSocket): either side may send at any
    /// time, so it is never committed.
    Upgrade,
}

/// Cut counts indexed by `CutReason as usize`.
pub(crate) type CutCounts = [u64; CutReason::ALL.len()];

impl CutReason {
    pub const ALL: [CutReason; 4] = [
        CutReason::Upload,
        CutReason::LongPoll,
        CutReason::Stream,
        CutReason::Upgrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CutReason::Upload => "upload",
            CutReason::LongPoll => "long_poll",
            CutReason::Stream => "stream",
            CutReason::Upgrade => "upgrade",
        }
    }
}

/// `ferry_stragglers_cut_total{reason}` and `ferry_stragglers_kept_total`.
#[derive(Default)]
pub(crate) struct StragglerCounts {
    cut: [AtomicU64; CutReason::ALL.len()],
    kept: AtomicU64,
}

impl StragglerCounts {
    /// Adds one drain's cuts (indexed by `CutReason as usize`) and kept requests.
    pub fn add(&self, cut: &CutCounts, kept: u64) {
        for (n, total) in cut.iter().zip(&self.cut) {
            total.fetch_add(*n, Ordering::Relaxed);
        }
        self.kept.fetch_add(kept, Ordering::Relaxed);
    }

    pub fn cut(&self, r: CutReason) -> u64 {
        self.cut[r as usize].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP ferry_stragglers_cut_total Requests cut at a freeze's drain deadline because they could still write at the source, by reason.\n# TYPE ferry_stragglers_cut_total counter");
        for r in CutReason::ALL {
            let _ = writeln!(
                out,
                "ferry_stragglers_cut_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.cut(r)
            );
        }
        let _ = writeln!(out, "# HELP ferry_stragglers_kept_total Unsafe requests still waiting for their answer at a freeze's drain deadline: not cut (their application may be writing), still in flight.\n# TYPE ferry_stragglers_kept_total counter\nferry_stragglers_kept_total {}", self.kept.load(Ordering::Relaxed));
    }
}

/// How an upgraded connection's tunnel ended, for
/// `ferry_upgrades_closed_total{how}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Both sides finished (or one failed).
    Closed,
    /// No byte either way for `tunnel_idle_timeout`.
    Idle,
    /// Cut at a freeze's drain deadline.
    Cut,
    /// The client or the upstream never finished switching protocols.
    Failed,
}

const TUNNEL_ENDS: [(TunnelEnd, &str); 4] = [
    (TunnelEnd::Closed, "closed"),
    (TunnelEnd::Idle, "idle"),
    (TunnelEnd::Cut, "cut"),
    (TunnelEnd::Failed, "failed"),
];

/// Upgraded connections (WebSockets) through the HTTP router
/// (`tunnel_upgrade.rs`).
#[derive(Default)]
pub(crate) struct UpgradeStats {
    /// Upgrades the upstream accepted (101) and the router spliced.
    pub total: AtomicU64,
    /// Tunnels open now.
    pub open: AtomicU64,
    /// Bytes from the client to the upstream, and back, after the 101.
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_client: AtomicU64,
    ends: [AtomicU64; TUNNEL_ENDS.len()],
}

impl UpgradeStats {
    pub fn ended(&self, how: TunnelEnd) {
        if let Some(i) = TUNNEL_ENDS.iter().position(|(e, _)| *e == how) {
            self.ends[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    pub fn ends(&self, how: TunnelEnd) -> u64 {
        TUNNEL_ENDS
            .iter()
            .position(|(e, _)| *e == how)
            .map_or(0, |i| self.ends[i].load(Ordering::Relaxed))
    }

    pub fn render(&self, out: &mut String) {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP ferry_upgrades_total HTTP/1.1 upgrades (WebSockets) the upstream accepted with 101, spliced by the router.\n# TYPE ferry_upgrades_total counter\nferry_upgrades_total {}",
            v(&self.total)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_upgrades_open Upgraded connections open now.\n# TYPE ferry_upgrades_open gauge\nferry_upgrades_open {}",
            v(&self.open)
        );
        let name = "ferry_upgrade_bytes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Bytes through upgraded connections after the 101, by direction.\n# TYPE {name} counter\n{name}{{direction=\"to_upstream\"}} {}\n{name}{{direction=\"to_client\"}} {}",
            v(&self.bytes_to_upstream),
            v(&self.bytes_to_client)
        );
        let name = "ferry_upgrades_closed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Upgraded connections ended, by how: closed by a side, idle for tunnel_idle_timeout, cut at a freeze's drain deadline, or failed to switch.\n# TYPE {name} counter"
        );
        for ((_, label), c) in TUNNEL_ENDS.iter().zip(&self.ends) {
            let _ = writeln!(out, "{name}{{how=\"{label}\"}} {}", v(c));
        }
    }
}
