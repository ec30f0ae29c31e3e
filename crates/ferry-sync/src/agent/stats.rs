//! What the agent counts: open connections and watches (the caps), what
//! sessions did (bytes, files, blocks, operations, requests), refusals and
//! failures. The refusals are summed up in one log line a minute; all of
//! it is served to Prometheus by [`AgentStats::render`] (see
//! [`crate::metrics_http`]).
//!
//! Labels are bounded by construction: each labelled counter is a fixed
//! array indexed by a closed list of names (no path, volume or peer is
//! ever a label).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::endpoint::Op;
use crate::proto::Msg;

/// Why a connection was refused a session.
#[derive(Clone, Copy)]
pub(super) enum Refused {
    /// `max_connections` were open.
    Busy = 0,
    /// No thread could be started for it.
    NoThread = 1,
    /// It named a volume the agent does not serve.
    UnknownVolume = 2,
    /// It asked to write to a read-only volume.
    ReadOnly = 3,
}
const REFUSED: [&str; 4] = ["busy", "no_thread", "unknown_volume", "read_only"];

/// How a session ended.
#[derive(Clone, Copy)]
pub(super) enum Closed {
    /// The client hung up.
    Client = 0,
    /// Nothing moved for `idle_timeout`.
    Idle = 1,
    /// A refused frame or a network error.
    Error = 2,
}
const CLOSED: [&str; 3] = ["client", "idle", "error"];

/// Receiver ops, by the `op` label.
const OPS: [&str; 11] = [
    "mkdir",
    "symlink",
    "hardlink",
    "set_meta",
    "delete",
    "put_file",
    "begin",
    "chunk",
    "commit",
    "root_meta",
    "block",
];

fn op_index(op: &Op) -> usize {
    match op {
        Op::Mkdir { .. } => 0,
        Op::Symlink { .. } => 1,
        Op::Hardlink { .. } => 2,
        Op::SetMeta { .. } => 3,
        Op::Delete { .. } => 4,
        Op::PutFile { .. } => 5,
        Op::Begin { .. } => 6,
        Op::Chunk(_) => 7,
        Op::Commit => 8,
        Op::RootMeta { .. } => 9,
        Op::Block { .. } => 10,
    }
}

/// Requests, by the `request` label.
const REQUESTS: [&str; 15] = [
    "scan",
    "scan_paths",
    "merkle_root",
    "children",
    "block_hashes",
    "read",
    "read_small",
    "read_block",
    "signature",
    "block_prepare",
    "block_finish",
    "changes",
    "watch_full",
    "flush",
    "space",
];

fn request_index(m: &Msg) -> Option<usize> {
    Some(match m {
        Msg::ScanReq { .. } => 0,
        Msg::ScanPathsReq { .. } => 1,
        Msg::MerkleRootReq => 2,
        Msg::ChildrenReq { .. } => 3,
        Msg::BlockHashesReq { .. } => 4,
        Msg::ReadReq { .. } => 5,
        Msg::ReadSmallReq { .. } => 6,
        Msg::ReadBlockReq { .. } => 7,
        Msg::SigReq { .. } => 8,
        Msg::BlockPrepare { .. } => 9,
        Msg::BlockFinish { .. } => 10,
        Msg::ChangesReq => 11,
        Msg::WatchFull { .. } => 12,
        Msg::Flush => 13,
        Msg::SpaceReq => 14,
        _ => return None,
    })
}

/// Errors, by the `kind` label: a request answered with an error, or a
/// receiver op that failed (reported at the next request).
#[derive(Clone, Copy)]
pub(super) enum ErrorKind {
    Request = 0,
    Op = 1,
}
const ERRORS: [&str; 2] = ["request", "op"];

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// The agent's counters and gauges, shared by the accept loop, every
/// connection and the metrics endpoint.
pub struct AgentStats {
    /// Connections open now, in the handshake or in a session.
    pub(super) open: AtomicUsize,
    /// Sessions (key proven, volume opened) open now.
    pub(super) sessions: AtomicUsize,
    /// Sessions holding an inotify watch now.
    pub(super) watches: AtomicUsize,
    accepted: AtomicU64,
    refused: [AtomicU64; 4],
    closed: [AtomicU64; 3],
    pub(super) handshake_failed: AtomicU64,
    pub(super) accept_failed: AtomicU64,
    errors: [AtomicU64; 2],
    pub(super) received_bytes: AtomicU64,
    pub(super) sent_bytes: AtomicU64,
    files_sent: AtomicU64,
    blocks_sent: AtomicU64,
    files_written: AtomicU64,
    blocks_written: AtomicU64,
    ops: [AtomicU64; 11],
    requests: [AtomicU64; 15],
    /// Unix time (seconds) the last session ended; 0: none yet.
    last_session_end: AtomicU64,
}

impl Default for AgentStats {
    fn default() -> AgentStats {
        AgentStats {
            open: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: counters(),
            closed: counters(),
            handshake_failed: AtomicU64::new(0),
            accept_failed: AtomicU64::new(0),
            errors: counters(),
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            files_sent: AtomicU64::new(0),
            blocks_sent: AtomicU64::new(0),
            files_written: AtomicU64::new(0),
            blocks_written: AtomicU64::new(0),
            ops: counters(),
            requests: counters(),
            last_session_end: AtomicU64::new(0),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl AgentStats {
    pub(super) fn refused(&self, why: Refused) {
        add(&self.refused[why as usize], 1);
    }
    pub(super) fn error(&self, kind: ErrorKind) {
        add(&self.errors[kind as usize], 1);
    }
    pub(super) fn file_sent(&self) {
        add(&self.files_sent, 1);
    }
    pub(super) fn blocks_sent(&self, n: u64) {
        add(&self.blocks_sent, n);
    }
    pub(super) fn blocks_written(&self, n: u64) {
        add(&self.blocks_written, n);
    }

    /// A message of a session, counted by kind as it arrives.
    pub(super) fn message(&self, m: &Msg) {
        let op = match m {
            Msg::Op(op) => Some(op_index(op)),
            Msg::Chunk(_) => Some(7),
            _ => None,
        };
        if let Some(i) = op {
            add(&self.ops[i], 1);
            // A whole small file, or a large one's last piece.
            if matches!(m, Msg::Op(Op::PutFile { .. } | Op::Commit)) {
                add(&self.files_written, 1);
            }
        } else if let Some(i) = request_index(m) {
            add(&self.requests[i], 1);
        }
    }

    /// A session begins; it is counted as ended when the guard drops.
    pub(super) fn session_started(self: &Arc<Self>) -> SessionGuard {
        add(&self.accepted, 1);
        self.sessions.fetch_add(1, Ordering::AcqRel);
        SessionGuard(self.clone())
    }

    pub(super) fn session_closed(&self, how: Closed) {
        add(&self.closed[how as usize], 1);
    }

    /// The refusals and failures the minute's log line sums up.
    fn totals(&self) -> [u64; 5] {
        [
            self.refused[Refused::Busy as usize].load(Ordering::Relaxed),
            self.handshake_failed.load(Ordering::Relaxed),
            self.refused[Refused::NoThread as usize].load(Ordering::Relaxed),
            self.closed[Closed::Idle as usize].load(Ordering::Relaxed),
            self.accept_failed.load(Ordering::Relaxed),
        ]
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter and
    /// gauge, each labelled series present from the start (at 0), so a
    /// rate or an alert has a series before the first event.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_gauges(&mut out);
        self.render_counters(&mut out);
        self.render_labelled(&mut out);
        out
    }

    fn render_gauges(&self, out: &mut String) {
        let gauges: [(&str, &str, u64); 4] = [
            (
                "connections_open",
                "Connections open now, in the handshake or in a session.",
                self.open.load(Ordering::Relaxed) as u64,
            ),
            (
                "sessions_active",
                "Sessions (key proven, volume opened) open now.",
                self.sessions.load(Ordering::Relaxed) as u64,
            ),
            (
                "watches_active",
                "Sessions holding an inotify watch now.",
                self.watches.load(Ordering::Relaxed) as u64,
            ),
            (
                "last_session_end_timestamp_seconds",
                "Unix time the last session ended (0: none since the start).",
                self.last_session_end.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            metric(out, name, "gauge", help);
            let _ = writeln!(out, "ferry_agent_{name} {v}");
        }
    }

    fn render_counters(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let plain: [(&str, &str, &AtomicU64); 9] = [
            (
                "sessions_accepted_total",
                "Sessions opened (key proven, volume served).",
                &self.accepted,
            ),
            (
                "handshake_failures_total",
                "Connections that did not prove the key (wrong key, bad frame, deadline).",
                &self.handshake_failed,
            ),
            (
                "accept_errors_total",
                "Failed accepts (out of descriptors or memory).",
                &self.accept_failed,
            ),
            (
                "received_bytes_total",
                "Bytes received in sessions.",
                &self.received_bytes,
            ),
            (
                "sent_bytes_total",
                "Bytes sent in sessions.",
                &self.sent_bytes,
            ),
            (
                "files_sent_total",
                "Files read for a client (streamed or small reads).",
                &self.files_sent,
            ),
            (
                "blocks_sent_total",
                "Image blocks read for a client.",
                &self.blocks_sent,
            ),
            (
                "files_written_total",
                "Files received (whole small files and committed large ones).",
                &self.files_written,
            ),
            (
                "blocks_written_total",
                "Image blocks received.",
                &self.blocks_written,
            ),
        ];
        for (name, help, c) in plain {
            metric(out, name, "counter", help);
            let _ = writeln!(out, "ferry_agent_{name} {}", load(c));
        }
    }

    fn render_labelled(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let labelled: [Labelled<'_>; 5] = [
            (
                "sessions_refused_total",
                "Connections refused a session, by reason.",
                "reason",
                &REFUSED,
                &self.refused,
            ),
            (
                "sessions_closed_total",
                "Sessions ended, by how.",
                "how",
                &CLOSED,
                &self.closed,
            ),
            (
                "errors_total",
                "Requests answered with an error and receiver ops that failed.",
                "kind",
                &ERRORS,
                &self.errors,
            ),
            (
                "operations_total",
                "Receiver operations received, by kind.",
                "op",
                &OPS,
                &self.ops,
            ),
            (
                "requests_total",
                "Requests received, by kind.",
                "request",
                &REQUESTS,
                &self.requests,
            ),
        ];
        for (name, help, label, values, counters) in labelled {
            metric(out, name, "counter", help);
            for (v, c) in values.iter().zip(counters) {
                let _ = writeln!(out, "ferry_agent_{name}{{{label}=\"{v}\"}} {}", load(c));
            }
        }
    }
}

/// A counter with one label: (name, help, label, its values, their counters).
type Labelled<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], &'a [AtomicU64]);

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP ferry_agent_{name} {help}");
    let _ = writeln!(out, "# TYPE ferry_agent_{name} {kind}");
}

/// A session in the `sessions_active` gauge; on drop it leaves it and
/// stamps the last session's end.
pub(super) struct SessionGuard(Arc<AgentStats>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::AcqRel);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.0.last_session_end.store(now, Ordering::Relaxed);
    }
}

/// A connection's place under [`Limits::max_connections`], given back when
/// its thread ends (or when it never starts).
///
/// [`Limits::max_connections`]: super::Limits::max_connections
pub(super) struct Slot(pub(super) Arc<AgentStats>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's place under [`Limits::max_watches`].
///
/// [`Limits::max_watches`]: super::Limits::max_watches
pub(super) struct WatchSlot(Arc<AgentStats>);

impl WatchSlot {
    pub(super) fn take(c: &Arc<AgentStats>, max: usize) -> Option<WatchSlot> {
        c.watches
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WatchSlot(c.clone()))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that adds what it reads or writes to the agent's byte counters.
pub(super) struct Metered<T> {
    pub(super) inner: T,
    pub(super) stats: Arc<AgentStats>,
}

impl<T: std::io::Read> std::io::Read for Metered<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        add(&self.stats.received_bytes, n as u64);
        Ok(n)
    }
}

impl<T: std::io::Write> std::io::Write for Metered<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        add(&self.stats.sent_bytes, n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One log line a minute with the connections refused or cut since the
/// last, instead of a line per connection: a stranger opening thousands of
/// connections must not write thousands of lines (#8 of issue 15).
pub(super) struct Summary {
    pub(super) at: Instant,
    pub(super) seen: [u64; 5],
}

impl Summary {
    const EVERY: Duration = crate::accept::LOG_ACCEPT_ERRORS_EVERY;

    pub(super) fn maybe_log(&mut self, c: &AgentStats) {
        if self.at.elapsed() < Self::EVERY {
            return;
        }
        self.at = Instant::now();
        let now = c.totals();
        let d: Vec<u64> = now.iter().zip(self.seen).map(|(n, s)| n - s).collect();
        self.seen = now;
        let open = c.open.load(Ordering::Relaxed);
        let msg = "sync connections refused or cut in the last minute";
        // Busy refusals, thread and accept failures turn away clients that
        // may hold the key; failed handshakes are mostly strangers and probes.
        if d[0] > 0 || d[2] > 0 || d[4] > 0 {
            tracing::warn!(
                refused_busy = d[0],
                handshake_failed = d[1],
                thread_failed = d[2],
                idle_closed = d[3],
                accept_failed = d[4],
                open,
                "{msg}"
            );
        } else if d.iter().any(|n| *n > 0) {
            tracing::info!(handshake_failed = d[1], idle_closed = d[3], open, "{msg}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_present_from_the_start_and_named_by_the_conventions() {
        let s = AgentStats::default();
        let text = s.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert_eq!(value, "0", "{line}");
            assert!(name.starts_with("ferry_agent_"), "{line}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            if line.ends_with("counter") {
                assert!(name.ends_with("_total"), "{line}");
            } else {
                assert!(!name.ends_with("_total"), "{line}");
            }
        }
        assert!(text.contains("ferry_agent_sessions_refused_total{reason=\"busy\"} 0"));
        assert!(text.contains("ferry_agent_operations_total{op=\"put_file\"} 0"));
    }

    #[test]
    fn messages_are_counted_by_kind() {
        let s = Arc::new(AgentStats::default());
        s.message(&Msg::Flush);
        s.message(&Msg::Op(Op::Commit));
        s.refused(Refused::ReadOnly);
        {
            let _g = s.session_started();
            assert!(s.render().contains("ferry_agent_sessions_active 1"));
        }
        let text = s.render();
        assert!(text.contains("ferry_agent_requests_total{request=\"flush\"} 1"));
        assert!(text.contains("ferry_agent_operations_total{op=\"commit\"} 1"));
        assert!(text.contains("ferry_agent_files_written_total 1"));
        assert!(text.contains("ferry_agent_sessions_refused_total{reason=\"read_only\"} 1"));
        assert!(text.contains("ferry_agent_sessions_active 0"));
        assert!(!text.contains("ferry_agent_last_session_end_timestamp_seconds 0"));
    }
}
