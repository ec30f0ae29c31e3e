//! Per-kind rate limit on log lines: a kind is one log statement (its
//! callsite), so a flood from one failing peer cannot drown the others.
//!
//! The first `burst` events of a kind in each second are written; the rest are
//! counted and dropped, and a reporter thread writes one "suppressed K similar
//! lines" line per kind and second that had any. Remote peers decide how often
//! a statement fires (a refused connection, a failed tunnel dial); this bounds
//! what they can make us write to `burst` x (number of statements) lines a
//! second, whatever they do.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::layer::{Context, Filter};

use crate::COUNTERS;

/// The target of the reporter's own lines; never limited (there is at most
/// one such line per kind and second, and the kinds are the program's log
/// statements: a finite set).
pub(crate) const REPORT_TARGET: &str = "ferry_log::suppressed";

struct Bucket {
    /// Start of the current one-second window.
    window: Instant,
    /// Events seen in the window.
    seen: u32,
    /// Events dropped since the last report.
    suppressed: u64,
    meta: &'static Metadata<'static>,
}

#[derive(Clone)]
pub struct RateLimit {
    burst: u32,
    buckets: Arc<Mutex<HashMap<Identifier, Bucket>>>,
}

impl RateLimit {
    /// `burst` events per kind and second (0: no limit).
    pub fn new(burst: u32) -> RateLimit {
        RateLimit {
            burst,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether an event of this kind may be written now (counts it either way).
    /// Kinds that were never registered (or the reporter's own) always pass.
    pub(crate) fn admit(&self, kind: &Identifier, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        let Some(b) = buckets.get_mut(kind) else {
            return true;
        };
        if now.duration_since(b.window) >= Duration::from_secs(1) {
            b.window = now;
            b.seen = 0;
        }
        b.seen = b.seen.saturating_add(1);
        if b.seen <= self.burst {
            true
        } else {
            b.suppressed += 1;
            COUNTERS.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Takes the counts of suppressed events since the last call, per kind.
    pub(crate) fn take_suppressed(&self) -> Vec<(&'static Metadata<'static>, u64)> {
        let mut buckets = self.buckets.lock();
        buckets
            .values_mut()
            .filter(|b| b.suppressed > 0)
            .map(|b| (b.meta, std::mem::take(&mut b.suppressed)))
            .collect()
    }

    /// Writes one line per kind that had suppressed events, every second, for
    /// the life of the process. The lines go through the same subscriber.
    pub(crate) fn spawn_reporter(&self) {
        let me = self.clone();
        // A reporter that cannot start only loses the summaries; the limit
        // itself still holds.
        let _ = std::thread::Builder::new()
            .name("ferry-log-report".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                for (meta, n) in me.take_suppressed() {
                    tracing::warn!(
                        target: "ferry_log::suppressed",
                        suppressed = n,
                        kind = %format_args!(
                            "{}:{}",
                            meta.file().unwrap_or("?"),
                            meta.line().unwrap_or(0)
                        ),
                        "suppressed {n} similar log lines in the last second ({}: {})",
                        meta.target(),
                        meta.name(),
                    );
                }
            });
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Only events are limited; spans pass.
        if self.burst == 0 || !meta.is_event() {
            return true;
        }
        self.admit(&meta.callsite(), Instant::now())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.burst == 0 || !meta.is_event() || meta.target() == REPORT_TARGET {
            return Interest::always();
        }
        // The bucket is made here, where the metadata is known to be
        // 'static, so the reporter can name the statement later.
        self.buckets
            .lock()
            .entry(meta.callsite())
            .or_insert_with(|| Bucket {
                window: Instant::now(),
                seen: 0,
                suppressed: 0,
                meta,
            });
        // Ask again for every event: the answer changes with time.
        Interest::sometimes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_gets_its_burst_per_second_then_is_counted() {
        let rl = RateLimit::new(3);
        let cs = tracing::callsite::Identifier(&TEST_CALLSITE);
        rl.buckets.lock().insert(
            cs.clone(),
            Bucket {
                window: Instant::now(),
                seen: 0,
                suppressed: 0,
                meta: &TEST_META,
            },
        );
        let t0 = Instant::now();
        let admitted = (0..10).filter(|_| rl.admit(&cs, t0)).count();
        assert_eq!(admitted, 3);
        let taken = rl.take_suppressed();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1, 7);
        assert!(rl.take_suppressed().is_empty(), "counts are taken once");
        // The next second has a new burst.
        let t1 = t0 + Duration::from_millis(1001);
        let admitted = (0..10).filter(|_| rl.admit(&cs, t1)).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn zero_means_no_limit() {
        let rl = RateLimit::new(0);
        let cs = tracing::callsite::Identifier(&TEST_CALLSITE);
        assert!((0..1000).all(|_| rl.admit(&cs, Instant::now())));
    }

    struct TestCallsite;
    impl tracing::Callsite for TestCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            &TEST_META
        }
    }
    static TEST_CALLSITE: TestCallsite = TestCallsite;
    static TEST_META: Metadata<'static> = Metadata::new(
        "test event",
        "ferry_log::tests",
        tracing::Level::WARN,
        None,
        None,
        None,
        tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&TEST_CALLSITE)),
        tracing::metadata::Kind::EVENT,
    );
}
