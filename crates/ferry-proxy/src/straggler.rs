//! Stragglers at a freeze: the requests of a site still in flight when it is
//! frozen, and the deadline after which those that could still write at the
//! source are cut (the design note: ARCHITECTURE.md, "Stragglers at a
//! freeze").
//!
//! Every forwarded request is registered under its site
//! ([`Stragglers::register`], an [`InFlight`]) with what it has done so far:
//! its request body is whole, its answer has begun. An answer that is
//! *committed* (the request body whole, the upstream's head received with a
//! fixed length) cannot carry a new write to the source: it leaves the
//! registry and stops counting in flight for its site, and streams on to its
//! client at the client's pace (a large download read slowly no longer holds
//! a freeze). At `[router] drain_timeout` after a site is frozen
//! ([`Stragglers::frozen`], from the admin API's site changes) each request
//! of the site still registered gets a [`verdict`]: an upload still
//! sending, a safe request still waiting for its answer (long polling) and an
//! answer streamed without a length (SSE, chunked) are cut (the upstream
//! connection is closed, so nothing more of them reaches the source; the
//! client gets a 503 with Retry-After, or a cut body); a request with a
//! whole body and an unsafe method whose answer has not begun is kept: its
//! application may be writing now, and closing its connection would not stop
//! that. It keeps the freeze from being acknowledged until it ends. An
//! upgraded connection (a WebSocket, [`InFlight::upgraded`]) is never
//! committed: either side may send at any time; it counts in flight until it
//! ends and is cut at the deadline (`upgrade`).
//! Cuts are counted by reason (`ferry_stragglers_cut_total`), per site in
//! the admin API's answer, and logged per site.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use ferry_model::{Epoch, Hostname, SiteState};
use ferry_router::{HostTable, SiteId, Tracked};
use http::Method;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::deadline::BoxError;
use crate::metrics::Metrics;
use crate::stats::CutCounts;
pub(crate) use crate::stats::CutReason;

/// What the drain deadline does with a request still registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Cut(CutReason),
    /// An unsafe request whose application may be writing: not cut (that
    /// would not stop the write), still counted in flight.
    Keep,
}

/// What the registry knows of a request when it judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The method is safe (GET, HEAD, OPTIONS, TRACE).
    pub safe: bool,
    /// The request body is whole at the upstream.
    pub sent: bool,
    /// The upstream's head arrived (an answer without a fixed length:
    /// committed answers are no longer registered).
    pub answered: bool,
    /// The upstream switched protocols (101): the connection is a tunnel.
    pub upgraded: bool,
}

/// The rule (pure, so it is tested alone).
pub(crate) fn verdict(p: Progress) -> Verdict {
    let Progress {
        safe,
        sent,
        answered,
        upgraded,
    } = p;
    if upgraded {
        return Verdict::Cut(CutReason::Upgrade);
    }
    match (sent, answered) {
        (false, _) => Verdict::Cut(CutReason::Upload),
        (true, true) => Verdict::Cut(CutReason::Stream),
        (true, false) if safe => Verdict::Cut(CutReason::LongPoll),
        (true, false) => Verdict::Keep,
    }
}

/// Cuts of one site at one freeze.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SiteCuts {
    pub deadline_passed: bool,
    pub cut: CutCounts,
    pub kept: u64,
}

impl SiteCuts {
    fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Cut(r) => self.cut[r as usize] += 1,
            Verdict::Keep => self.kept += 1,
        }
    }
}

/// Registries are sharded by site, so requests of different sites do not
/// contend for one lock.
const SHARDS: usize = 64;
/// Sites named one by one in the log of one deadline; the others are summed
/// up in one line.
const LOGGED_SITES: usize = 20;

/// The registry of forwarded requests, by site, and the freezes' drains.
pub(crate) struct Stragglers {
    shards: Box<[Mutex<Shard>]>,
    next_id: AtomicU64,
    /// Frozen sites: the epoch, the host (for the log) and the cuts so far.
    drains: Mutex<HashMap<SiteId, Drain>>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Shard {
    /// Weak: a request leaves when its last handle goes (or when its answer
    /// is committed).
    entries: hashbrown::HashMap<u64, Weak<Entry>>,
    /// Sites whose drain deadline passed at this epoch: a request registered
    /// later but routed before that freeze (an older epoch) is cut at once.
    past_deadline: hashbrown::HashMap<SiteId, Epoch>,
}

struct Drain {
    epoch: Epoch,
    host: String,
    cuts: SiteCuts,
}

/// One request as the registry sees it.
struct Entry {
    id: u64,
    owner: Arc<Stragglers>,
    site: SiteId,
    safe: bool,
    /// The request body is whole at the upstream.
    sent: AtomicBool,
    /// The upstream's head arrived (and the answer is not committed).
    answered: AtomicBool,
    /// The upstream switched protocols: a tunnel now.
    upgraded: AtomicBool,
    cut: AtomicBool,
    /// The request body's and the answer's pollers, woken by a cut.
    wakers: Mutex<[Option<Waker>; 2]>,
    /// The wait for the answer, woken by a cut.
    notify: tokio::sync::Notify,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.owner.leave(self.site, self.id);
    }
}

impl Entry {
    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
        self.notify.notify_waiters();
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    fn progress(&self) -> Progress {
        Progress {
            safe: self.safe,
            sent: self.sent.load(Ordering::Acquire),
            answered: self.answered.load(Ordering::Acquire),
            upgraded: self.upgraded.load(Ordering::Acquire),
        }
    }

    /// Registers `cx` in `slot`, then says whether the request was cut (in
    /// that order, so a cut in between is not missed).
    fn poll_cut(&self, slot: usize, cx: &Context<'_>) -> bool {
        {
            let mut w = self.wakers.lock();
            match &mut w[slot] {
                Some(old) if old.will_wake(cx.waker()) => {}
                s => *s = Some(cx.waker().clone()),
            }
        }
        self.is_cut()
    }
}

/// A registered request (its handles: the request body, the wait for the
/// answer, the answer's body); it leaves the registry when the last goes.
#[derive(Clone)]
pub(crate) struct InFlight {
    entry: Arc<Entry>,
}

/// The request body sent upstream and the answer's body: a cut makes them
/// fail, which closes the upstream connection.
#[derive(Debug, thiserror::Error)]
#[error("cut at the freeze's drain deadline (drain_timeout): it could still write at the source")]
pub(crate) struct CutAtDrain;

impl Stragglers {
    pub fn new(metrics: Arc<Metrics>) -> Stragglers {
        Stragglers {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(0),
            drains: Mutex::default(),
            metrics,
        }
    }

    fn shard(&self, site: SiteId) -> &Mutex<Shard> {
        &self.shards[site.0 as usize % SHARDS]
    }

    fn leave(&self, site: SiteId, id: u64) {
        self.shard(site).lock().entries.remove(&id);
    }

    /// Registers a request of `site` about to be forwarded, routed by the
    /// site's record at `epoch`; `body_done`: it has no request body (or an
    /// empty one).
    pub fn register(
        self: &Arc<Self>,
        site: SiteId,
        epoch: Epoch,
        method: &Method,
        body_done: bool,
    ) -> InFlight {
        let safe = matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            id,
            owner: Arc::clone(self),
            site,
            safe,
            sent: AtomicBool::new(body_done),
            answered: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            wakers: Mutex::new([None, None]),
            notify: tokio::sync::Notify::new(),
        });
        let late = {
            let mut shard = self.shard(site).lock();
            shard.entries.insert(id, Arc::downgrade(&entry));
            // Only a request routed before the freeze is late: one routed
            // by a newer record (a held request released by the unfreeze
            // or the flip, which may reach here before `settled` runs) is not.
            shard
                .past_deadline
                .get(&site)
                .is_some_and(|&frozen_at| epoch < frozen_at)
        };
        let reg = InFlight { entry };
        if late {
            // Routed just before the freeze, registered after its deadline.
            let v = reg.verdict();
            if let Verdict::Cut(_) = v {
                reg.entry.cut();
            }
            self.record(site, v);
        }
        reg
    }

    /// After site changes were applied (by the admin API, or any other path
    /// that changes sites at run time): the sites of `hosts` now frozen get
    /// their drain deadline, `after` from now (a replay of the same freeze
    /// keeps the first); the others lose theirs.
    pub fn note(self: &Arc<Self>, table: &Arc<HostTable>, hosts: &[Hostname], after: Duration) {
        let mut frozen = Vec::new();
        let mut settled = Vec::new();
        for h in hosts {
            match table.get(h) {
                Some(r) if r.state == SiteState::Frozen => {
                    frozen.push((r.site, r.epoch, h.to_string()));
                }
                Some(r) => settled.push(r.site),
                None => {}
            }
        }
        self.settled(&settled);
        self.frozen(table, frozen, after);
    }

    /// Sites just frozen (or frozen again, at a new epoch): their drain
    /// deadline is `after` from now. Replays of the same freeze change nothing.
    pub fn frozen(
        self: &Arc<Self>,
        table: &Arc<HostTable>,
        sites: Vec<(SiteId, Epoch, String)>,
        after: Duration,
    ) {
        let mut armed = Vec::new();
        {
            let mut drains = self.drains.lock();
            for (site, epoch, host) in sites {
                if drains.get(&site).is_some_and(|d| d.epoch == epoch) {
                    continue;
                }
                drains.insert(
                    site,
                    Drain {
                        epoch,
                        host,
                        cuts: SiteCuts::default(),
                    },
                );
                self.shard(site).lock().past_deadline.remove(&site);
                armed.push((site, epoch));
            }
        }
        if armed.is_empty() {
            return;
        }
        let (me, table) = (Arc::clone(self), Arc::clone(table));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(after).await;
                    me.deadline(&table, &armed);
                });
            }
            // Called from a thread of its own (the etcd watcher): a thread
            // for the deadline too (freezes are few).
            Err(_) => {
                let spawned = std::thread::Builder::new()
                    .name("ferry-drain".into())
                    .spawn(move || {
                        std::thread::sleep(after);
                        me.deadline(&table, &armed);
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "no thread for a freeze's drain deadline: nothing will be cut");
                }
            }
        }
    }

    /// Sites no longer frozen (flipped, abandoned, removed): their drains end.
    pub fn settled(&self, sites: &[SiteId]) {
        let mut drains = self.drains.lock();
        for site in sites {
            if drains.remove(site).is_some() {
                self.shard(*site).lock().past_deadline.remove(site);
            }
        }
    }

    /// The cuts of `site` at the freeze of `epoch` (None: no drain at that
    /// epoch, e.g. the site is not frozen).
    pub fn cuts(&self, site: SiteId, epoch: Epoch) -> Option<SiteCuts> {
        let drains = self.drains.lock();
        drains
            .get(&site)
            .filter(|d| d.epoch == epoch)
            .map(|d| d.cuts)
    }

    /// The drain deadline of `sites` (frozen at `epoch` each): every request
    /// still registered gets its verdict, the cuts are counted and logged.
    fn deadline(&self, table: &HostTable, sites: &[(SiteId, Epoch)]) {
        let mut logged = 0usize;
        let mut rest = (0usize, SiteCuts::default());
        for &(site, epoch) in sites {
            // Flipped or frozen again meanwhile: that change owns the site now.
            if table.state_of(site) != Some((SiteState::Frozen, epoch)) {
                continue;
            }
            let mut cuts = SiteCuts {
                deadline_passed: true,
                ..SiteCuts::default()
            };
            let of_site: Vec<Arc<Entry>> = {
                let mut shard = self.shard(site).lock();
                shard.past_deadline.insert(site, epoch);
                shard
                    .entries
                    .values()
                    .filter_map(Weak::upgrade)
                    .filter(|e| e.site == site)
                    .collect()
            };
            // Outside the lock: the last handle of an entry leaves the shard.
            for e in of_site {
                let v = verdict(e.progress());
                if let Verdict::Cut(_) = v {
                    e.cut();
                }
                cuts.count(v);
            }
            self.metrics.stragglers.add(&cuts.cut, cuts.kept);
            let host = {
                let mut drains = self.drains.lock();
                match drains.get_mut(&site).filter(|d| d.epoch == epoch) {
                    Some(d) => {
                        d.cuts.deadline_passed = true;
                        for (a, b) in d.cuts.cut.iter_mut().zip(cuts.cut) {
                            *a += b;
                        }
                        d.cuts.kept += cuts.kept;
                        d.host.clone()
                    }
                    None => continue,
                }
            };
            if cuts.cut == CutCounts::default() && cuts.kept == 0 {
                continue;
            }
            if logged < LOGGED_SITES {
                logged += 1;
                let [upload, long_poll, stream, upgrade] = cuts.cut;
                tracing::warn!(
                    site = %host,
                    epoch = epoch.0,
                    upload,
                    long_poll,
                    stream,
                    upgrade,
                    kept = cuts.kept,
                    "freeze drain deadline: requests that could still write at the source were cut"
                );
            } else {
                rest.0 += 1;
                for (a, b) in rest.1.cut.iter_mut().zip(cuts.cut) {
                    *a += b;
                }
                rest.1.kept += cuts.kept;
            }
        }
        if rest.0 > 0 {
            let [upload, long_poll, stream, upgrade] = rest.1.cut;
            tracing::warn!(
                sites = rest.0,
                upload,
                long_poll,
                stream,
                upgrade,
                kept = rest.1.kept,
                "freeze drain deadline: more sites had requests cut (totals; per site in the admin API)"
            );
        }
    }

    /// A request that met a passed deadline as it registered.
    fn record(&self, site: SiteId, v: Verdict) {
        let mut one = SiteCuts::default();
        one.count(v);
        self.metrics.stragglers.add(&one.cut, one.kept);
        if let Some(d) = self.drains.lock().get_mut(&site) {
            d.cuts.count(v);
        }
    }
}

impl InFlight {
    fn verdict(&self) -> Verdict {
        verdict(self.entry.progress())
    }

    /// The upstream switched protocols (101): from now on the request is a
    /// tunnel either side may write into at any time, never committed. It
    /// stays registered while this handle lives; a cut ends
    /// [`unless_cut`](Self::unless_cut) around the splice.
    pub fn upgraded(&self) {
        self.entry.upgraded.store(true, Ordering::Release);
    }

    /// The request body on its way upstream, failing when the request is cut.
    pub fn request_body<B>(&self, body: B) -> Cuttable<B> {
        Cuttable {
            inner: body,
            entry: Some(Arc::clone(&self.entry)),
            role: Role::Request,
            _reg: None,
        }
    }

    /// `exchange` (the wait for the upstream's answer), unless the request is
    /// cut first: then `None`, the exchange is dropped (and with it the
    /// upstream connection).
    pub async fn unless_cut<T>(&self, exchange: impl Future<Output = T>) -> Option<T> {
        let cut = async {
            loop {
                let notified = self.entry.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.entry.is_cut() {
                    return;
                }
                notified.await;
            }
        };
        tokio::select! {
            biased;
            () = cut => None,
            t = exchange => Some(t),
        }
    }

    /// The upstream's answer arrived. Committed (request body whole, a
    /// fixed length): it cannot carry a write any more; it leaves the
    /// registry and stops counting in flight (`tracked` is dropped). Else it
    /// stays registered, and counted, until its body ends or is cut.
    pub fn answered<B: Body>(self, body: B, tracked: Tracked) -> (Cuttable<B>, Option<Tracked>) {
        let sent = self.entry.sent.load(Ordering::Acquire);
        if sent && body.size_hint().exact().is_some() {
            let e = &self.entry;
            e.owner.leave(e.site, e.id);
            let plain = Cuttable {
                inner: body,
                entry: None,
                role: Role::Response,
                _reg: None,
            };
            return (plain, None);
        }
        self.entry.answered.store(true, Ordering::Release);
        let entry = Some(Arc::clone(&self.entry));
        let body = Cuttable {
            inner: body,
            entry,
            role: Role::Response,
            _reg: Some(self),
        };
        (body, Some(tracked))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Request = 0,
    Response = 1,
}

/// A body that fails once its request is cut (a request body also records
/// that it went out whole). Without an entry (a committed answer) it only
/// passes frames on.
pub(crate) struct Cuttable<B> {
    inner: B,
    entry: Option<Arc<Entry>>,
    role: Role,
    /// An answer keeps its request registered until it is dropped.
    _reg: Option<InFlight>,
}

impl<B: Body> Cuttable<B> {
    fn note_end(&self) {
        if self.role == Role::Request && self.inner.is_end_stream() {
            if let Some(e) = &self.entry {
                e.sent.store(true, Ordering::Release);
            }
        }
    }
}

impl<B> Body for Cuttable<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = &this.entry {
            if e.poll_cut(this.role as usize, cx) {
                this.entry = None;
                this._reg = None;
                return Poll::Ready(Some(Err(Box::new(CutAtDrain))));
            }
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let (Role::Request, Some(e)) = (this.role, &this.entry) {
                    e.sent.store(true, Ordering::Release);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.note_end(),
            _ => {}
        }
        r.map(|o| o.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.note_end();
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule of a request that did not switch protocols.
    fn plain(safe: bool, sent: bool, answered: bool) -> Verdict {
        verdict(Progress {
            safe,
            sent,
            answered,
            upgraded: false,
        })
    }

    #[test]
    fn the_rule() {
        use CutReason::*;
        let verdict = plain;
        // An upload still sending is cut, whatever its method or answer.
        for safe in [true, false] {
            for answered in [true, false] {
                assert_eq!(verdict(safe, false, answered), Verdict::Cut(Upload));
            }
        }
        // Waiting for an answer: a safe request (long polling) is cut; an
        // unsafe one may be writing now and is kept.
        assert_eq!(verdict(true, true, false), Verdict::Cut(LongPoll));
        assert_eq!(verdict(false, true, false), Verdict::Keep);
        // An answer without a fixed length, still streaming: cut.
        assert_eq!(verdict(true, true, true), Verdict::Cut(Stream));
        assert_eq!(verdict(false, true, true), Verdict::Cut(Stream));
        // An upgraded connection may write at any time: always cut.
        for safe in [true, false] {
            let p = Progress {
                safe,
                sent: true,
                answered: false,
                upgraded: true,
            };
            assert_eq!(super::verdict(p), Verdict::Cut(Upgrade));
        }
    }

    use ferry_model::{Placement, SiteRecord};
    use ferry_router::SiteChange;

    /// A table with `a.com` frozen at `epoch`, and a registry.
    fn world(epoch: u64) -> (Arc<HostTable>, Arc<Stragglers>, SiteId) {
        let table = Arc::new(HostTable::new());
        set(&table, SiteState::Frozen, epoch);
        let site = table.lookup("a.com").expect("site").site;
        let reg = Arc::new(Stragglers::new(Arc::new(Metrics::default())));
        (table, reg, site)
    }

    fn set(table: &HostTable, state: SiteState, epoch: u64) {
        let change = SiteChange {
            record: SiteRecord {
                host: Hostname::parse("a.com").expect("host"),
                placement: Placement::Pool("p".into()),
                state,
                epoch: Epoch(epoch),
            },
            extras: None,
        };
        table
            .apply(vec![change], |_| Ok::<_, std::convert::Infallible>(()))
            .expect("apply");
    }

    const DRAIN: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_what_could_write_and_keeps_a_write_being_handled() {
        let (table, reg, site) = world(2);
        let poll = reg.register(site, Epoch(1), &Method::GET, true);
        let order = reg.register(site, Epoch(1), &Method::POST, true);
        let upload = reg.register(site, Epoch(1), &Method::PUT, false);
        let websocket = reg.register(site, Epoch(1), &Method::GET, true);
        websocket.upgraded();
        reg.frozen(&table, vec![(site, Epoch(2), "a.com".into())], DRAIN);
        assert_eq!(reg.cuts(site, Epoch(2)), Some(SiteCuts::default()));
        tokio::time::sleep(DRAIN - Duration::from_millis(1)).await;
        assert!(!poll.entry.is_cut(), "nothing is cut before the deadline");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(poll.entry.is_cut() && upload.entry.is_cut() && websocket.entry.is_cut());
        assert!(!order.entry.is_cut(), "a write being handled is kept");
        let cuts = reg.cuts(site, Epoch(2)).expect("a drain");
        assert!(cuts.deadline_passed);
        assert_eq!((cuts.cut, cuts.kept), ([1, 1, 0, 1], 1));
        assert_eq!(reg.metrics.stragglers.cut(CutReason::Upgrade), 1);
        assert_eq!(reg.metrics.stragglers.cut(CutReason::LongPoll), 1);
        // The wait for the answer ends at once for a request already cut.
        assert_eq!(poll.unless_cut(std::future::pending::<()>()).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_registered_after_the_deadline_is_judged_at_once() {
        let (table, reg, site) = world(2);
        reg.frozen(&table, vec![(site, Epoch(2), "a.com".into())], DRAIN);
        tokio::time::sleep(DRAIN * 2).await;
        let late = reg.register(site, Epoch(1), &Method::GET, true);
        assert!(late.entry.is_cut());
        assert_eq!(reg.cuts(site, Epoch(2)).expect("a drain").cut, [0, 1, 0, 0]);
    }

    /// The demo's stop-router fault: the deadline passed at the destination
    /// while the orchestrator abandoned the freeze; the unfreeze wakes the
    /// held requests, which register before `settled` runs. They were routed
    /// by the new record: not late. One routed before the freeze still is.
    #[tokio::test(start_paused = true)]
    async fn a_request_released_by_the_unfreeze_is_not_late() {
        let (table, reg, site) = world(2);
        reg.frozen(&table, vec![(site, Epoch(2), "a.com".into())], DRAIN);
        tokio::time::sleep(DRAIN * 2).await;
        set(&table, SiteState::Active, 3);
        let released = reg.register(site, Epoch(3), &Method::GET, true);
        let before = reg.register(site, Epoch(1), &Method::GET, true);
        assert!(!released.entry.is_cut(), "released by the unfreeze");
        assert!(before.entry.is_cut(), "routed before the freeze");
        reg.settled(&[site]);
        assert_eq!(reg.cuts(site, Epoch(2)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_freeze_keeps_its_deadline_and_a_flip_ends_it() {
        let (table, reg, site) = world(2);
        let poll = reg.register(site, Epoch(1), &Method::GET, true);
        reg.frozen(&table, vec![(site, Epoch(2), "a.com".into())], DRAIN);
        tokio::time::sleep(DRAIN / 2).await;
        // The orchestrator sends the same freeze again: same deadline.
        reg.frozen(&table, vec![(site, Epoch(2), "a.com".into())], DRAIN);
        tokio::time::sleep(DRAIN / 2 + Duration::from_millis(1)).await;
        assert!(poll.entry.is_cut());
        // Flipped before the deadline of a new freeze: nothing is cut.
        set(&table, SiteState::Frozen, 3);
        reg.frozen(&table, vec![(site, Epoch(3), "a.com".into())], DRAIN);
        let other = reg.register(site, Epoch(1), &Method::GET, true);
        set(&table, SiteState::Active, 4);
        reg.settled(&[site]);
        tokio::time::sleep(DRAIN * 2).await;
        assert!(!other.entry.is_cut());
        assert_eq!(reg.cuts(site, Epoch(3)), None);
        // And a request of an active site is never judged late.
        let fresh = reg.register(site, Epoch(4), &Method::GET, true);
        assert!(!fresh.entry.is_cut());
    }

    #[test]
    fn a_request_leaves_the_registry_with_its_last_handle() {
        let (_table, reg, site) = world(1);
        let r = reg.register(site, Epoch(1), &Method::GET, true);
        let second = r.clone();
        drop(r);
        assert_eq!(reg.shard(site).lock().entries.len(), 1);
        drop(second);
        assert!(reg.shard(site).lock().entries.is_empty());
    }

    #[test]
    fn the_counters_render_every_reason() {
        let c = crate::stats::StragglerCounts::default();
        let mut cuts = SiteCuts::default();
        cuts.count(Verdict::Cut(CutReason::Stream));
        cuts.count(Verdict::Keep);
        c.add(&cuts.cut, cuts.kept);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("ferry_stragglers_cut_total{reason=\"upload\"} 0"));
        assert!(out.contains("ferry_stragglers_cut_total{reason=\"stream\"} 1"));
        assert!(out.contains("ferry_stragglers_cut_total{reason=\"upgrade\"} 0"));
        assert!(out.contains("ferry_stragglers_kept_total 1"));
    }
}
