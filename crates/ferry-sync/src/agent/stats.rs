//! What the agent counts: open connections and watches (the caps), and
//! refusals and failures, summed up in one log line a minute.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the accept loop counts; see [`Summary`].
#[derive(Default)]
pub(super) struct Counters {
    /// Connections open now, in the handshake or in a session.
    pub(super) open: AtomicUsize,
    /// Sessions holding an inotify watch now.
    pub(super) watches: AtomicUsize,
    pub(super) refused_busy: AtomicU64,
    pub(super) handshake_failed: AtomicU64,
    pub(super) thread_failed: AtomicU64,
    pub(super) idle_closed: AtomicU64,
    pub(super) accept_failed: AtomicU64,
}

impl Counters {
    fn totals(&self) -> [u64; 5] {
        [
            self.refused_busy.load(Ordering::Relaxed),
            self.handshake_failed.load(Ordering::Relaxed),
            self.thread_failed.load(Ordering::Relaxed),
            self.idle_closed.load(Ordering::Relaxed),
            self.accept_failed.load(Ordering::Relaxed),
        ]
    }
}

/// A connection's place under [`Limits::max_connections`], given back when
/// its thread ends (or when it never starts).
pub(super) struct Slot(pub(super) Arc<Counters>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's place under [`Limits::max_watches`].
pub(super) struct WatchSlot(Arc<Counters>);

impl WatchSlot {
    pub(super) fn take(c: &Arc<Counters>, max: usize) -> Option<WatchSlot> {
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

/// One log line a minute with the connections refused or cut since the
/// last, instead of a line per connection: a stranger opening thousands of
/// connections must not write thousands of lines (#8 of issue 15).
pub(super) struct Summary {
    pub(super) at: Instant,
    pub(super) seen: [u64; 5],
}

impl Summary {
    pub(super) const EVERY: Duration = Duration::from_secs(60);

    pub(super) fn maybe_log(&mut self, c: &Counters) {
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
