//! Follow mode (`ferry sync --follow SRC DST1 DST2 ...`): after a first full
//! pass to every destination, every change at the source reaches every
//! destination within about a second.
//!
//! One [`Source::changes`] record feeds all destinations. The source is
//! polled every [`FollowOptions::debounce`] (so a burst of writes becomes one
//! pass) and the changes go to one thread per destination, which keeps its
//! own pending [`Changes`] (what changed since it was last in sync) and runs a
//! pass over them, so a slow or dead destination holds back no other. A
//! destination whose pass fails is dropped (its connection closed), keeps its
//! pending set, and is retried with exponential backoff; when it answers
//! again, one pass over everything it missed catches it up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::endpoint::{Dest, Source};
use crate::engine::{run_pass_over, Event, OnEvent, SyncOptions};
use crate::error::Result;
use crate::watch::Changes;

/// Timing of follow mode.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// How often the source's changes are collected; writes within one
    /// interval travel in one pass.
    pub debounce: Duration,
    /// First retry delay for a destination that failed; doubles up to
    /// `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            debounce: Duration::from_millis(150),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// A destination of follow mode: a name for events and a way to (re)connect.
pub struct FollowDest<'a> {
    pub name: String,
    pub connect: Box<dyn Fn() -> Result<Box<dyn Dest + Send>> + Sync + 'a>,
}

struct DestState<'a, 'b> {
    d: &'b FollowDest<'a>,
    conn: Option<Box<dyn Dest + Send>>,
    pending: Changes,
    passes: u32,
    next_try: Instant,
    backoff: Duration,
}

impl DestState<'_, '_> {
    /// Connects if needed and runs one pass over the pending changes.
    fn sync(&mut self, src: &dyn Source, opts: &SyncOptions, on_event: OnEvent<'_>) -> Result<()> {
        if self.conn.is_none() {
            self.conn = Some((self.d.connect)()?);
        }
        let Some(dst) = self.conn.as_deref() else {
            return Ok(());
        };
        self.passes += 1;
        let name = &self.d.name;
        // Pass events name their destination, so a reader can tell them apart.
        let tagged = |e: &Event| match e {
            Event::PassFinished { summary } => {
                let mut s = summary.clone();
                s.dest = Some(name.clone());
                on_event(&Event::PassFinished { summary: s });
            }
            e => on_event(e),
        };
        run_pass_over(src, dst, opts, self.passes, Some(&self.pending), &tagged)?;
        self.pending = Changes::none();
        Ok(())
    }
}

/// Follows `src` to every destination in `dests` until `stop` is set. Returns
/// an error only if the source fails (its watch or a read); destination
/// failures are retried.
pub fn follow(
    src: &dyn Source,
    dests: &[FollowDest<'_>],
    opts: &SyncOptions,
    fopts: &FollowOptions,
    stop: &AtomicBool,
    on_event: OnEvent<'_>,
) -> Result<()> {
    // Starts the watch: everything after this instant is recorded, and the
    // first answer is a full walk for every destination.
    let first = src.changes()?;
    std::thread::scope(|sc| {
        // One thread per destination, so one that hangs (a connect to a host
        // that does not answer) holds back neither the others nor the polling.
        let mut txs = Vec::with_capacity(dests.len());
        for d in dests {
            let (tx, rx) = mpsc::channel::<Changes>();
            txs.push(tx);
            let state = DestState {
                d,
                conn: None,
                pending: first.clone(),
                passes: 0,
                next_try: Instant::now(),
                backoff: fopts.retry_min,
            };
            sc.spawn(move || dest_loop(state, rx, src, opts, fopts, on_event));
        }
        // Returning drops the senders: every destination thread ends after
        // its current pass, and the scope waits for them.
        poll_source(src, fopts, stop, &txs)
    })
}

/// Collects the source's changes every `debounce` and hands them to every
/// destination, until `stop`.
fn poll_source(
    src: &dyn Source,
    fopts: &FollowOptions,
    stop: &AtomicBool,
    txs: &[mpsc::Sender<Changes>],
) -> Result<()> {
    let mut last_poll = Instant::now();
    loop {
        // Sleep out the interval in short steps so a stop is noticed quickly.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = fopts.debounce.saturating_sub(last_poll.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(STEP));
        }
        last_poll = Instant::now();
        let c = src.changes()?;
        if !c.is_empty() {
            for tx in txs {
                // A destination thread only ends when we do.
                let _ = tx.send(c.clone());
            }
        }
    }
}

/// How often a waiting thread looks at its stop condition.
const STEP: Duration = Duration::from_millis(50);

/// One destination: pass over what it missed whenever there is something and
/// it is due; on failure, back off and keep the changes.
fn dest_loop(
    mut s: DestState<'_, '_>,
    rx: mpsc::Receiver<Changes>,
    src: &dyn Source,
    opts: &SyncOptions,
    fopts: &FollowOptions,
    on_event: OnEvent<'_>,
) {
    loop {
        loop {
            match rx.try_recv() {
                Ok(c) => s.pending.merge(c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        if !s.pending.is_empty() && s.next_try <= now {
            match s.sync(src, opts, on_event) {
                Ok(()) => s.backoff = fopts.retry_min,
                Err(e) => {
                    s.conn = None;
                    s.next_try = Instant::now() + s.backoff;
                    on_event(&Event::DestDown {
                        dest: s.d.name.clone(),
                        error: e.to_string(),
                        retry_in_secs: s.backoff.as_secs_f64(),
                    });
                    tracing::warn!(dest = %s.d.name, error = %e, "destination failed; will retry");
                    s.backoff = (s.backoff * 2).min(fopts.retry_max);
                }
            }
            continue;
        }
        let wait = if s.pending.is_empty() {
            STEP
        } else {
            s.next_try.saturating_duration_since(now).min(STEP)
        };
        match rx.recv_timeout(wait) {
            Ok(c) => s.pending.merge(c),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
