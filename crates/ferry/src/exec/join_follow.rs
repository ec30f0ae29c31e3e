//! `ferry agent --join … --join-follow`: once the joined server is ready,
//! it keeps following the pool's primary (ferry-sync's follow mode, as
//! `ferry sync --follow`) into its document root until the agent stops, so
//! a file saved at the primary reaches it within about a second.
//!
//! Two parts. The follower thread runs `ferry_sync::follow` from the
//! primary's volume into the document root; when the primary is lost (its
//! watch or a read fails, which ends `follow`) it reconnects with a
//! doubling back-off (250 ms to 5 s), and every reconnection starts with a
//! full walk, so what was missed is caught up in one pass. It reports
//! whether the copy is in step (true after each successful pass, false
//! after each failure) through a watch channel. The keeper task turns that
//! into the server's state at the routers, by a bounded rule: out of step
//! for `stale_after` (`--join-stale-after`) drains the server; the next
//! successful pass makes it ready again. Every failure, drain and return
//! is logged with the counts so far.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_sync::{
    Endpoint, EndpointTree, Event, FollowDest, FollowOptions, OpenOptions, Role, SyncOptions,
};
use tokio::sync::watch;

/// First and longest wait before reconnecting to a lost primary.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the follower counted: logged with every change of state, and
/// served by the agent's `--metrics-listen`.
#[derive(Default)]
pub(crate) struct Counts {
    /// Passes that brought the copy in step.
    passes: AtomicU64,
    /// Follows that ended on an error (the primary lost) and passes that
    /// failed.
    failures: AtomicU64,
    /// Times the server was drained for being out of step too long.
    drains: AtomicU64,
    /// Whether the last pass succeeded (set true at start: the copy was
    /// just verified).
    in_step: AtomicBool,
}

impl Counts {
    /// The counts in Prometheus' text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "passes_total",
                "counter",
                "Follow passes that brought the joined server's copy in step.",
                self.passes.load(Ordering::Relaxed),
            ),
            (
                "failures_total",
                "counter",
                "Follows that lost the primary and passes that failed.",
                self.failures.load(Ordering::Relaxed),
            ),
            (
                "drains_total",
                "counter",
                "Times the joined server was drained for being out of step too long.",
                self.drains.load(Ordering::Relaxed),
            ),
            (
                "in_step",
                "gauge",
                "1 while the joined server's copy is in step with the primary.",
                u64::from(self.in_step.load(Ordering::Relaxed)),
            ),
        ] {
            out.push_str(&format!(
                "# HELP ferry_join_follow_{name} {help}\n# TYPE ferry_join_follow_{name} {kind}\nferry_join_follow_{name} {value}\n"
            ));
        }
        out
    }
}

/// Where the routers know this server.
pub(super) struct Membership {
    pub(super) routers: Vec<ferry_fleet::runbook::Router>,
    pub(super) pool: String,
    pub(super) name: String,
}

/// A running follower and its keeper.
pub(super) struct Follower {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Follower {
    /// Starts following `from` into `to` (the copy is in step now: it was
    /// just verified), and the keeper of the server's state at `m`'s
    /// routers.
    pub(super) fn start(
        from: Endpoint,
        to: PathBuf,
        key: [u8; 32],
        stale_after: Duration,
        m: Membership,
        counts: Arc<Counts>,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        counts.in_step.store(true, Ordering::Relaxed);
        let (in_step, rx) = watch::channel(true);
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::Builder::new()
                .name("join-follow".into())
                .spawn(move || follow_loop(&from, &to, key, &stop, &in_step, &counts))?
        };
        let m = Arc::new(m);
        let http = ferry_orch::router::Http::new();
        let set_state = move |state: &'static str| {
            let (m, http) = (m.clone(), http.clone());
            async move { set_all(&http, &m, state).await }
        };
        let keeper = tokio::spawn(keep_state(rx, stale_after, counts, set_state));
        Ok(Follower {
            stop,
            thread,
            keeper,
        })
    }

    /// Stops changing the server's state: called before leaving the pool,
    /// so no `ready` races the leave's drain. The follower goes on (the
    /// requests still in flight are served from a fresh copy) until
    /// [`Follower::stop`].
    pub(super) fn stop_keeper(&self) {
        self.keeper.abort();
    }

    /// Stops the follower (after its current pass) and waits for it.
    pub(super) async fn stop(self) {
        self.keeper.abort();
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => tracing::info!("stopped following the primary"),
            _ => tracing::error!("the follower thread panicked"),
        }
    }
}

/// Follows the primary until `stop`, reconnecting with back-off when it is
/// lost. Blocking (ferry-sync's engine is synchronous).
fn follow_loop(
    from: &Endpoint,
    to: &std::path::Path,
    key: [u8; 32],
    stop: &AtomicBool,
    in_step: &watch::Sender<bool>,
    counts: &Counts,
) {
    let opts = OpenOptions {
        key: Some(key),
        ..OpenOptions::default()
    };
    let sync = SyncOptions {
        delete: true,
        watch: true,
        ..SyncOptions::default()
    };
    let dest = Endpoint::Local(to.to_path_buf());
    let dests = [FollowDest {
        name: to.display().to_string(),
        connect: Box::new(|| dest.open(Role::Dest, &opts).map(EndpointTree::into_dest)),
    }];
    // Set by a successful pass: the back-off starts over after a follow
    // that did some work.
    let passed = AtomicBool::new(false);
    let on_event = |e: &Event| match e {
        Event::PassFinished { summary } => {
            let n = counts.passes.fetch_add(1, Ordering::Relaxed) + 1;
            passed.store(true, Ordering::Relaxed);
            if !*in_step.borrow() {
                tracing::info!(passes = n, "follower: the copy is in step again");
            }
            tracing::debug!(changed = summary.changed_entries, "follower: pass");
            counts.in_step.store(true, Ordering::Relaxed);
            in_step.send_replace(true);
        }
        Event::DestDown { .. } => {
            // follow() logs the error and retries this destination itself.
            counts.failures.fetch_add(1, Ordering::Relaxed);
            counts.in_step.store(false, Ordering::Relaxed);
            in_step.send_replace(false);
        }
        _ => {}
    };
    let mut backoff = RETRY_MIN;
    tracing::info!(from = %from, to = %to.display(), "following the primary");
    while !stop.load(Ordering::Relaxed) {
        let followed = from.open(Role::Source, &opts).and_then(|src| {
            ferry_sync::follow(
                src.source(),
                &dests,
                &sync,
                &FollowOptions::default(),
                stop,
                &on_event,
            )
        });
        let Err(e) = followed else { return };
        counts.in_step.store(false, Ordering::Relaxed);
        in_step.send_replace(false);
        let failures = counts.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if passed.swap(false, Ordering::Relaxed) {
            backoff = RETRY_MIN;
        }
        tracing::warn!(from = %from, error = %e, retry_in_secs = backoff.as_secs_f64(), failures, "follower: lost the primary; retrying");
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Drains the server (`set_state("drain")`, at every router) once its copy
/// has been out of step for `stale_after`, and makes it ready again at the
/// next successful pass. Ends when the follower does (or is aborted by the
/// leave).
async fn keep_state<F, Fut>(
    mut rx: watch::Receiver<bool>,
    stale_after: Duration,
    counts: Arc<Counts>,
    set_state: F,
) where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        if rx.wait_for(|ok| !*ok).await.is_err() {
            return;
        }
        let since = Instant::now();
        let back = tokio::select! {
            r = rx.wait_for(|ok| *ok) => Some(r.is_ok()),
            _ = tokio::time::sleep(stale_after) => None,
        };
        match back {
            Some(true) => continue,
            Some(false) => return,
            None => {}
        }
        let drains = counts.drains.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            out_of_step_secs = since.elapsed().as_secs_f64(),
            drains,
            failures = counts.failures.load(Ordering::Relaxed),
            "follower: the copy is out of step for too long: draining until it is in step again"
        );
        set_state("drain").await;
        if rx.wait_for(|ok| *ok).await.is_err() {
            return;
        }
        tracing::info!(
            out_of_step_secs = since.elapsed().as_secs_f64(),
            drains,
            "follower: in step again: taking traffic"
        );
        set_state("ready").await;
    }
}

/// Sets the server's state at every router; a router that refuses is
/// logged (the next change of state tries again).
async fn set_all(http: &ferry_orch::router::Http, m: &Membership, state: &str) {
    for r in &m.routers {
        match ferry_fleet::routers::set_server(http, r, &m.pool, &m.name, state).await {
            Ok(()) => {
                tracing::info!(router = %r.admin, pool = %m.pool, name = %m.name, state, "follower: server state set")
            }
            Err(e) => {
                tracing::error!(router = %r.admin, error = %e, state, "follower: setting the server's state failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The keeper with a recording `set_state`. Real time, in tenths of a
    /// second with wide margins (the binary's tests have no paused clock).
    type Recorded = Arc<Mutex<Vec<&'static str>>>;

    fn keeper(
        stale_after: Duration,
    ) -> (
        watch::Sender<bool>,
        Recorded,
        Arc<Counts>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(true);
        let set = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Counts::default());
        let s = set.clone();
        let task = tokio::spawn(keep_state(rx, stale_after, counts.clone(), move |state| {
            s.lock().unwrap().push(state);
            async {}
        }));
        (tx, set, counts, task)
    }

    async fn settle(d: Duration) {
        tokio::time::sleep(d).await;
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn a_short_loss_drains_nothing_a_long_one_drains_until_the_next_pass() {
        let ms = Duration::from_millis;
        let (tx, set, counts, task) = keeper(ms(600));
        // Lost for a moment, then a pass: no drain.
        tx.send_replace(false);
        settle(ms(100)).await;
        tx.send_replace(true);
        settle(ms(900)).await;
        assert!(set.lock().unwrap().is_empty());
        // Lost for longer than the bound: drained once, however long it lasts.
        tx.send_replace(false);
        settle(ms(1200)).await;
        assert_eq!(*set.lock().unwrap(), ["drain"]);
        settle(ms(800)).await;
        assert_eq!(*set.lock().unwrap(), ["drain"]);
        // The next pass: ready again.
        tx.send_replace(true);
        settle(ms(200)).await;
        assert_eq!(*set.lock().unwrap(), ["drain", "ready"]);
        assert_eq!(counts.drains.load(Ordering::Relaxed), 1);
        // The follower gone, the keeper ends.
        drop(tx);
        task.await.unwrap();
    }

    #[test]
    fn the_counts_render_as_prometheus_text() {
        let c = Counts::default();
        c.passes.store(3, Ordering::Relaxed);
        c.in_step.store(true, Ordering::Relaxed);
        let text = c.render();
        assert!(
            text.contains("\nferry_join_follow_passes_total 3\n"),
            "{text}"
        );
        assert!(text.contains("\nferry_join_follow_in_step 1\n"), "{text}");
        assert!(
            text.contains("# TYPE ferry_join_follow_drains_total counter"),
            "{text}"
        );
    }
}
