//! The run's one bandwidth budget (`--bwlimit`): a token bucket shared by
//! every copy job of every lane, so two lanes copying at once share the
//! link the plan was given instead of each taking all of it.
//!
//! ferry-sync paces one pass on its own (`SyncOptions::bwlimit`); a budget
//! across passes running in several threads is the runbook's business, so
//! it sits here, in front of each job's destination ([`Budgeted`]): every
//! data byte an op carries (a small file, a streamed chunk, a block) is
//! taken from the bucket before the op goes on. Directories, links,
//! deletions and metadata carry no data and pass freely; so do the
//! scans and Merkle reads, which are small next to the data.
//!
//! A frozen unit's final copy goes first: while one runs ([`Budget::freezing`]),
//! the other lanes' pre-copies ([`Priority::Background`]) wait before their
//! next data op, so the freeze has the whole link and its duration is the
//! one the plan predicted for it alone. Pre-copies wait at most one freeze
//! at a time (each is bounded by `max_freeze`); a night whose freezes
//! leave no room between them stalls its next units' pre-copies, which
//! delays their freezes in turn, so the link is never idle for long.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ferry_sync::delta::{Chunk, Signature};
use ferry_sync::merkle::{Child, Digest};
use ferry_sync::{Basis, Dest, Manifest, Op, RelPath, ScanOptions, Tree};

/// The most a bucket saves up while idle: a tenth of a second at its rate
/// (at least 64 KiB), so a pause never turns into a burst above the link.
const BURST: Duration = Duration::from_millis(100);
const MIN_BURST: f64 = 64.0 * 1024.0;

/// A token bucket of `rate` bytes per second, shared by threads. A taker
/// that finds the bucket short takes anyway (the bucket goes into debt) and
/// sleeps until the debt is paid at `rate`, so the bytes let through by
/// time t never exceed the burst plus `rate` x t, however many threads take.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    state: Mutex<Bucket>,
    /// Final copies running now; background takers wait while it is not 0.
    freezing: Mutex<usize>,
    thawed: Condvar,
}

/// Whose bytes these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Priority {
    /// A frozen unit's final copy: goes first.
    Freeze,
    /// A pre-copy: waits while a final copy runs.
    Background,
}

/// A final copy running; dropping it lets the pre-copies go on.
pub(super) struct Freezing<'a>(&'a Budget);

impl Drop for Freezing<'_> {
    fn drop(&mut self) {
        let mut n = self.0.freezing.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.thawed.notify_all();
        }
    }
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now; negative: owed.
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A budget of `bytes_per_s` (0 is treated as 1: never unlimited by accident).
    pub fn new(bytes_per_s: u64) -> Budget {
        let rate = bytes_per_s.max(1) as f64;
        let burst = (rate * BURST.as_secs_f64()).max(MIN_BURST);
        Budget {
            rate,
            burst,
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
            freezing: Mutex::new(0),
            thawed: Condvar::new(),
        }
    }

    /// Marks a final copy as running until the guard is dropped.
    pub(super) fn freezing(&self) -> Freezing<'_> {
        *self.freezing.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Freezing(self)
    }

    /// Blocks this (replicator) thread while a final copy runs.
    fn wait_for_freezes(&self) {
        let mut n = self.freezing.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.thawed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// How long a taker of `n` bytes must wait now (the bucket is charged).
    fn charge(&self, n: u64, now: Instant) -> Duration {
        // A poisoned lock only means another copy thread panicked while
        // holding two numbers: they are still numbers.
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        b.tokens -= n as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.rate)
        }
    }

    /// Takes `n` bytes of `priority`, sleeping this (replicator) thread
    /// until they may go.
    pub(super) fn take(&self, n: u64, priority: Priority) {
        if n == 0 {
            return;
        }
        if priority == Priority::Background {
            self.wait_for_freezes();
        }
        let wait = self.charge(n, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// The data bytes `op` carries.
fn data_bytes(op: &Op) -> u64 {
    match op {
        Op::PutFile { data, .. } => data.len() as u64,
        Op::Chunk(Chunk::Data(d)) => d.len() as u64,
        Op::Block { data, .. } => data.len() as u64,
        _ => 0,
    }
}

/// A job's destination whose data ops are paced by the run's budget.
pub(super) struct Budgeted<'a> {
    pub(super) inner: &'a dyn Dest,
    pub(super) budget: &'a Budget,
    pub(super) priority: Priority,
}

impl Tree for Budgeted<'_> {
    fn scan(&self, opts: &ScanOptions) -> ferry_sync::Result<Manifest> {
        self.inner.scan(opts)
    }
    fn scan_paths(
        &self,
        paths: &BTreeSet<RelPath>,
        opts: &ScanOptions,
    ) -> ferry_sync::Result<Manifest> {
        self.inner.scan_paths(paths, opts)
    }
    fn merkle_root(&self) -> ferry_sync::Result<(Digest, u64)> {
        self.inner.merkle_root()
    }
    fn merkle_children(&self, dir: Option<&RelPath>) -> ferry_sync::Result<Vec<Child>> {
        self.inner.merkle_children(dir)
    }
    fn wire_bytes(&self) -> (u64, u64) {
        self.inner.wire_bytes()
    }
    fn block_hashes(&self, block_size: u32) -> ferry_sync::Result<(u64, Vec<Digest>)> {
        self.inner.block_hashes(block_size)
    }
}

impl Dest for Budgeted<'_> {
    fn signature(
        &self,
        path: &RelPath,
        basis: Basis,
        block_size: u32,
    ) -> ferry_sync::Result<Option<Signature>> {
        self.inner.signature(path, basis, block_size)
    }
    fn apply(&self, op: Op) -> ferry_sync::Result<()> {
        self.budget.take(data_bytes(&op), self.priority);
        self.inner.apply(op)
    }
    fn flush(&self) -> ferry_sync::Result<()> {
        self.inner.flush()
    }
    fn block_prepare(&self, size: u64, block_size: u32) -> ferry_sync::Result<Vec<Digest>> {
        self.inner.block_prepare(size, block_size)
    }
    fn block_finish(
        &self,
        size: u64,
        block_size: u32,
        hashes: &[Digest],
    ) -> ferry_sync::Result<()> {
        self.inner.block_finish(size, block_size, hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_is_paid_at_the_rate_whatever_the_takers() {
        let b = Budget::new(1000);
        let t0 = Instant::now();
        // The burst (64 KiB minimum) goes at once.
        assert_eq!(b.charge(64 * 1024, t0), Duration::ZERO);
        // Then every byte waits its turn: two takers of 500 B queue behind
        // each other (the second waits for both).
        assert_eq!(b.charge(500, t0), Duration::from_millis(500));
        assert_eq!(b.charge(500, t0), Duration::from_secs(1));
        // A second later one of those seconds is paid.
        assert_eq!(
            b.charge(0, t0 + Duration::from_secs(1)),
            Duration::from_secs(0)
        );
    }

    #[test]
    fn an_idle_bucket_saves_up_only_its_burst() {
        let b = Budget::new(10 * 1024 * 1024);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        // A minute idle saves 0.1 s worth (1 MiB), not 600 MiB.
        assert_eq!(b.charge(1024 * 1024, later), Duration::ZERO);
        assert!(b.charge(1024 * 1024, later) > Duration::from_millis(99));
    }

    #[test]
    fn pre_copies_wait_while_a_final_copy_runs() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{mpsc, Arc};
        let b = Arc::new(Budget::new(u64::MAX / 2));
        let freeze = b.freezing();
        // A final copy's bytes go while it runs.
        b.take(1, Priority::Freeze);
        let went = Arc::new(AtomicBool::new(false));
        let (asked, asked_rx) = mpsc::channel();
        let pre_copy = {
            let (b, went) = (Arc::clone(&b), Arc::clone(&went));
            std::thread::spawn(move || {
                asked.send(()).expect("channel");
                b.take(1, Priority::Background);
                went.store(true, Ordering::SeqCst);
            })
        };
        asked_rx.recv().expect("the pre-copy asked");
        // It stays blocked however long the final copy runs (a generous
        // look, not a synchronisation: the assertion after the drop is
        // the one that must hold).
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !went.load(Ordering::SeqCst),
            "a pre-copy went during a freeze"
        );
        drop(freeze);
        pre_copy.join().expect("the pre-copy thread");
        assert!(went.load(Ordering::SeqCst));
        // With no freeze, background bytes go at once.
        b.take(1, Priority::Background);
    }

    #[test]
    fn only_data_is_counted() {
        let p = RelPath::new("a").unwrap();
        assert_eq!(data_bytes(&Op::Mkdir { path: p.clone() }), 0);
        assert_eq!(data_bytes(&Op::Chunk(Chunk::Data(vec![0; 7]))), 7);
        assert_eq!(data_bytes(&Op::Chunk(Chunk::Zero(1 << 20))), 0);
        assert_eq!(
            data_bytes(&Op::Block {
                offset: 0,
                data: vec![0; 9]
            }),
            9
        );
    }
}
