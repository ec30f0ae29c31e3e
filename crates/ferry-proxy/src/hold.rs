//! Holding while a site is frozen (a cutover is copying its last changes):
//! one mechanism for requests (`forward.rs`) and passthrough connections
//! (`passthrough.rs`).
//!
//! A held request is counted as held for its site (what a cutover's drain
//! reads), registers a waiter, re-checks the site's state (so a change that
//! landed in between is not missed) and sleeps until the site changes
//! ([`Holds::wake`], called where site changes are applied:
//! `Shared::apply_sites`), the hold bound passes, or the client goes away.
//! Every wake-up looks the site up again: the change may have moved it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_model::SiteState;
use ferry_router::{HostTable, Route, SiteId, Tracked};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Waiters of frozen sites, by site.
#[derive(Default)]
pub(crate) struct Holds {
    waiters: Mutex<HashMap<SiteId, Arc<Notify>>>,
}

impl Holds {
    fn waiter(&self, site: SiteId) -> Arc<Notify> {
        Arc::clone(self.waiters.lock().entry(site).or_default())
    }

    /// Wakes everything held on `sites` (sites that were just added or
    /// changed), to look its site up again.
    pub fn wake(&self, sites: &[SiteId]) {
        let mut map = self.waiters.lock();
        if map.is_empty() {
            return;
        }
        for s in sites {
            if let Some(n) = map.remove(s) {
                n.notify_waiters();
            }
        }
    }
}

/// Why a hold gave no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unrouted {
    /// No site for the name and no default site.
    UnknownSite,
    /// The site was still frozen when the hold bound passed.
    StillFrozen,
    /// The client went away while held.
    ClientGone,
}

/// One lookup that waits while the site is frozen.
pub(crate) struct Hold<'a> {
    pub table: &'a Arc<HostTable>,
    pub holds: &'a Holds,
    /// The hold bound (`hold_max`), from the first time the site is seen frozen.
    pub max: Duration,
    /// Counts each request or connection that had to wait (once).
    pub held_total: &'a AtomicU64,
}

impl Hold<'_> {
    /// The route of `host` once its site is not frozen. `client_gone`
    /// completes when the client has gone away (never, for a client that
    /// cannot be watched): a held client that hangs up stops being held, so
    /// it does not keep a cutover's drain waiting for nobody.
    pub async fn route(
        &self,
        host: &str,
        client_gone: impl Future<Output = ()>,
    ) -> Result<Route, Unrouted> {
        let mut client_gone = std::pin::pin!(client_gone);
        // Counted as held (and the bound fixed) the first time it waits.
        let mut held: Option<(Tracked, Instant)> = None;
        loop {
            let route = self.table.lookup(host).ok_or(Unrouted::UnknownSite)?;
            if route.state != SiteState::Frozen {
                return Ok(route);
            }
            let deadline = match &held {
                Some((_, d)) => *d,
                None => {
                    self.held_total.fetch_add(1, Ordering::Relaxed);
                    let d = Instant::now() + self.max;
                    held = Some((self.table.track(route.site, true), d));
                    d
                }
            };
            let notify = self.holds.waiter(route.site);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check after registering, so a change that landed in between is not missed.
            if self.table.state_of(route.site) != Some((SiteState::Frozen, route.epoch)) {
                continue;
            }
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => {
                    if woken.is_err() {
                        return Err(Unrouted::StillFrozen);
                    }
                }
                () = &mut client_gone => return Err(Unrouted::ClientGone),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::{Epoch, Hostname, Placement, SiteRecord};
    use ferry_router::{Outcome, SiteChange};
    use std::future::pending;

    const HOLD_MAX: Duration = Duration::from_secs(30);

    fn change(host: &str, state: SiteState, epoch: u64, pool: &str) -> SiteChange {
        SiteChange {
            record: SiteRecord {
                host: Hostname::parse(host).expect("host"),
                placement: Placement::Pool(pool.into()),
                state,
                epoch: Epoch(epoch),
            },
            extras: None,
        }
    }

    /// Applies a change and wakes its holds, as `Shared::apply_sites` does.
    fn apply(table: &HostTable, holds: &Holds, c: SiteChange) {
        let out = table
            .apply(vec![c], |_| Ok::<_, std::convert::Infallible>(()))
            .expect("apply");
        let changed: Vec<SiteId> = out
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Added | Outcome::Changed))
            .map(|(id, _)| *id)
            .collect();
        holds.wake(&changed);
    }

    struct World {
        table: Arc<HostTable>,
        holds: Holds,
        held_total: AtomicU64,
    }

    impl World {
        fn new() -> World {
            World {
                table: Arc::new(HostTable::new()),
                holds: Holds::default(),
                held_total: AtomicU64::new(0),
            }
        }

        fn hold(&self) -> Hold<'_> {
            Hold {
                table: &self.table,
                holds: &self.holds,
                max: HOLD_MAX,
                held_total: &self.held_total,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_site_is_routed_without_waiting() {
        let w = World::new();
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Active, 1, "p"),
        );
        let route = w.hold().route("a.com", pending()).await.expect("route");
        assert_eq!(route.state, SiteState::Active);
        assert_eq!(w.held_total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_host_is_not_routed() {
        let w = World::new();
        let got = w.hold().route("nowhere.com", pending()).await;
        assert_eq!(got.err(), Some(Unrouted::UnknownSite));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_site_is_held_until_its_change_is_applied() {
        let w = Arc::new(World::new());
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Frozen, 1, "old"),
        );
        let site = w.table.lookup("a.com").expect("site").site;
        let held = tokio::spawn({
            let w = Arc::clone(&w);
            async move {
                let started = Instant::now();
                let r = w.hold().route("a.com", pending()).await;
                (r, started.elapsed())
            }
        });
        // Let the hold register (paused time: nothing else moves the clock).
        while w.table.counters(site).0 == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!held.is_finished());
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Active, 2, "new"),
        );
        let (route, waited) = held.await.expect("task");
        let route = route.expect("route");
        assert_eq!(route.state, SiteState::Active);
        assert_eq!(*route.placement, Placement::Pool("new".into()));
        assert!(waited >= Duration::from_secs(5) && waited < HOLD_MAX);
        assert_eq!(w.held_total.load(Ordering::Relaxed), 1);
        assert_eq!(w.table.counters(site).0, 0, "no longer counted as held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_site_still_frozen_after_the_bound_is_not_routed() {
        let w = World::new();
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Frozen, 1, "p"),
        );
        let started = Instant::now();
        let got = w.hold().route("a.com", pending()).await;
        assert_eq!(got.err(), Some(Unrouted::StillFrozen));
        assert_eq!(started.elapsed(), HOLD_MAX);
        assert_eq!(w.held_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_that_keeps_the_site_frozen_keeps_the_bound() {
        let w = Arc::new(World::new());
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Frozen, 1, "p"),
        );
        let site = w.table.lookup("a.com").expect("site").site;
        let started = Instant::now();
        let held = tokio::spawn({
            let w = Arc::clone(&w);
            async move { w.hold().route("a.com", pending()).await }
        });
        while w.table.counters(site).0 == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        // Woken, looked up again, still frozen: held on, to the first bound.
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Frozen, 2, "q"),
        );
        let got = held.await.expect("task");
        assert_eq!(got.err(), Some(Unrouted::StillFrozen));
        assert_eq!(started.elapsed(), HOLD_MAX);
        assert_eq!(w.held_total.load(Ordering::Relaxed), 1, "counted once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_stops_being_held() {
        let w = World::new();
        apply(
            &w.table,
            &w.holds,
            change("a.com", SiteState::Frozen, 1, "p"),
        );
        let site = w.table.lookup("a.com").expect("site").site;
        let gone = tokio::time::sleep(Duration::from_secs(3));
        let got = w.hold().route("a.com", gone).await;
        assert_eq!(got.err(), Some(Unrouted::ClientGone));
        assert_eq!(w.table.counters(site).0, 0);
    }
}
