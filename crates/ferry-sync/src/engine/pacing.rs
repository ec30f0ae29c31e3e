//! Pacing and progress shared by the workers of a pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Event, OnEvent};

/// Paces data to `rate` bytes per second.
pub(super) struct Limiter {
    rate: Option<u64>,
    start: Instant,
    sent: AtomicU64,
}

impl Limiter {
    pub(super) fn new(rate: Option<u64>) -> Limiter {
        Limiter {
            rate,
            start: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }
    pub(super) fn take(&self, n: u64) {
        let total = self.sent.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            let el = self.start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
    }
}

/// Counters shared by the workers of a pass.
pub(super) struct Progress<'a> {
    pass: u32,
    total: u64,
    done_entries: AtomicU64,
    done_bytes: AtomicU64,
    pub(super) data: AtomicU64,
    last: Mutex<Instant>,
    start: Instant,
    on_event: OnEvent<'a>,
    wire: &'a (dyn Fn() -> u64 + Sync),
}

impl<'a> Progress<'a> {
    /// Progress of one pass that will move `total` bytes, starting now.
    pub(super) fn new(
        pass: u32,
        total: u64,
        start: Instant,
        on_event: OnEvent<'a>,
        wire: &'a (dyn Fn() -> u64 + Sync),
    ) -> Self {
        Progress {
            pass,
            total,
            done_entries: AtomicU64::new(0),
            done_bytes: AtomicU64::new(0),
            data: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            start,
            on_event,
            wire,
        }
    }

    pub(super) fn add(&self, entries: u64, bytes: u64) {
        self.done_entries.fetch_add(entries, Ordering::Relaxed);
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.maybe_emit(false);
    }
    pub(super) fn maybe_emit(&self, force: bool) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.elapsed() < Duration::from_millis(100) {
                return;
            }
            *last = Instant::now();
        }
        let done = self.done_bytes.load(Ordering::Relaxed);
        let el = self.start.elapsed().as_secs_f64();
        (self.on_event)(&Event::Progress {
            pass: self.pass,
            done_entries: self.done_entries.load(Ordering::Relaxed),
            done_bytes: done,
            remaining_bytes: self.total.saturating_sub(done),
            wire_sent: (self.wire)(),
            rate: if el > 0.0 { done as f64 / el } else { 0.0 },
        });
    }
}
