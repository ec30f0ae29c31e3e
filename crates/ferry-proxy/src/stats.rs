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
