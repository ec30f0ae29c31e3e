//! The control thread: keeps the table in step with etcd (watch from the
//! seeded revision + 1; a fresh snapshot and the difference applied after a
//! compaction or a lost watch), keeps the local copy, and keeps this router's
//! registration `P/routers/<name>` under its lease.
//!
//! A lost lease (etcd said it expired, or no keep-alive was answered within
//! the TTL: etcd unreachable, this process paused) means the orchestrator no
//! longer reads this router's acknowledgements, so the router stops trusting
//! its watch: it drops it, takes a fresh snapshot once etcd answers, and only
//! then registers again under a new lease. Meanwhile sites in motion (frozen
//! in its table) stay held (then 503), settled ones serve: a settled site
//! cannot have been flipped without this router's acknowledgement, which a
//! router the orchestrator has seen owes until it is retired.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_model::{ChangeVerdict, Epoch, Hostname, SiteRecord, SiteState};
use ferry_router::{ApplyError, Outcome, SiteChange, SiteId};
use ferry_store::{Change, ChangeBatch, EtcdStore, Lease, Store, WatchError, LAYOUT_VERSION};

use super::store::{etcd_config, Control};
use crate::state::Shared;

/// How long one wait on the watch lasts; the registration and the shutdown
/// are looked at between waits.
const TICK: Duration = Duration::from_millis(50);
/// The registration is rewritten at most this often (and only when it changed).
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Pause after a failed connect, snapshot or watch start, doubling up to the max.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Sites applied per batch while a snapshot's difference is applied.
const DIFF_CHUNK: usize = 65_536;

/// Starts the control thread; it stops when `shutdown` turns true.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    control: Arc<Control>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The router's runtime (the thread is started from its start): what the
    // thread hands work to that needs one (the stragglers' drain timers).
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("ferry-control".into())
        .spawn(move || {
            let mut t = Thread::new(shared, control, shutdown);
            t.runtime = runtime;
            t.run()
        })
        .map(drop)
}

struct Thread {
    shared: Arc<Shared>,
    control: Arc<Control>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Frozen sites and their epochs (for the registration's in-flight counts).
    frozen: HashMap<Hostname, Epoch>,
    lease: Option<Lease>,
    /// `P/fleet/seen/<name>` written (and any retirement cleared) for this lease.
    noted_seen: bool,
    published: String,
    last_publish: Instant,
    /// The layout moved past this build: changes are no longer applied.
    halted: bool,
    runtime: Option<tokio::runtime::Handle>,
}

impl Thread {
    fn new(
        shared: Arc<Shared>,
        control: Arc<Control>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Thread {
        Thread {
            shared,
            control,
            shutdown,
            frozen: HashMap::new(),
            lease: None,
            noted_seen: false,
            published: String::new(),
            last_publish: Instant::now() - PUBLISH_EVERY,
            halted: false,
            runtime: None,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn run(mut self) {
        tracing::debug!("control thread started");
        self.rebuild_frozen();
        let mut retry = RETRY_MIN;
        // Seeded from a snapshot: bring the copy in step with it, then watch on.
        let mut from = self.control.seeded_at.load(Ordering::Acquire);
        if from > 0 {
            if let Some(etcd) = self.control.etcd.load_full() {
                self.sync_copy(&etcd, from);
            }
        }
        while !self.stopping() {
            // Cut from etcd, the watch broke first: the lease is judged here.
            if self.lease.as_ref().is_some_and(Lease::may_have_expired) {
                self.lease_lost();
                from = 0;
            }
            let etcd = match self.control.etcd.load_full() {
                Some(e) => e,
                None => match EtcdStore::connect(etcd_config(&self.control.settings)) {
                    Ok(e) => {
                        tracing::info!("etcd is reachable again: loading a snapshot");
                        let e = Arc::new(e);
                        self.control.etcd.store(Some(Arc::clone(&e)));
                        from = 0;
                        e
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd still unreachable");
                        self.pause(&mut retry);
                        continue;
                    }
                },
            };
            if from == 0 {
                match self.resnapshot(&etcd) {
                    Ok(r) => from = r,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load a snapshot from etcd; retrying");
                        self.pause(&mut retry);
                        continue;
                    }
                }
            }
            tracing::debug!(from = from + 1, "watching etcd");
            let mut watch = match etcd.watch_from(from + 1) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start watching etcd; retrying");
                    self.pause(&mut retry);
                    continue;
                }
            };
            retry = RETRY_MIN;
            loop {
                if self.stopping() {
                    return;
                }
                match watch.next(TICK) {
                    Ok(Some(batch)) => self.apply(batch),
                    Ok(None) => {}
                    Err(e) => {
                        self.watch_failed(&e);
                        from = 0;
                        break;
                    }
                }
                self.register(&etcd);
                if self.lease.as_ref().is_some_and(Lease::may_have_expired) {
                    self.lease_lost();
                    from = 0;
                    break;
                }
            }
        }
    }

    fn pause(&self, retry: &mut Duration) {
        let until = Instant::now() + *retry;
        while Instant::now() < until && !self.stopping() {
            std::thread::sleep(TICK);
        }
        *retry = (*retry * 2).min(RETRY_MAX);
    }

    /// The registration may be gone: nothing this router publishes counts
    /// until it registered again, and what it applied since the lease
    /// lapsed is not trusted: the watch is dropped and the next registration
    /// follows a fresh snapshot.
    fn lease_lost(&mut self) {
        self.lease = None;
        self.published.clear();
        self.control.registered.store(false, Ordering::Release);
        self.control.leases_lost.fetch_add(1, Ordering::Relaxed);
        self.control.resnapshots.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            frozen_sites = self.frozen.len(),
            "this router's registration lease may have expired (no keep-alive answered within \
             its TTL): frozen sites stay held, settled ones serve; registering again after a \
             fresh snapshot once etcd answers"
        );
    }

    fn watch_failed(&self, e: &WatchError) {
        self.control.resnapshots.fetch_add(1, Ordering::Relaxed);
        match e {
            WatchError::Compacted { .. } => tracing::warn!(
                error = %e,
                "the watch fell behind etcd's compaction: taking a fresh snapshot"
            ),
            _ => tracing::warn!(error = %e, "the watch on etcd broke: taking a fresh snapshot"),
        }
    }

    /// A fresh snapshot; the table takes its difference (an older epoch never
    /// overwrites a newer one; sites etcd no longer has are removed).
    fn resnapshot(&mut self, etcd: &EtcdStore) -> Result<i64, ferry_store::StoreError> {
        let snap = etcd.snapshot()?;
        let table = &self.shared.table;
        let changes: Vec<SiteRecord> = snap
            .sites
            .iter()
            .filter(|r| self.wanted(r))
            .cloned()
            .collect();
        let gone: Vec<Hostname> = {
            let in_etcd: hashbrown::HashSet<&str> =
                snap.sites.iter().map(|r| r.host.as_str()).collect();
            table
                .records()
                .into_iter()
                .filter(|r| !in_etcd.contains(r.host.as_str()))
                .map(|r| r.host)
                .collect()
        };
        let (changed, removed) = (changes.len(), gone.len());
        for chunk in changes.chunks(DIFF_CHUNK) {
            self.apply_records(chunk.to_vec());
        }
        self.remove(&gone);
        for (pool, server, state) in etcd.server_states()? {
            self.set_server_state(&pool, &server, state);
        }
        self.control.from_copy.store(false, Ordering::Release);
        self.rebuild_frozen();
        self.sync_copy_with(etcd, snap.sites, snap.revision);
        self.control.set_applied(snap.revision);
        tracing::info!(
            revision = snap.revision,
            changed,
            removed,
            "snapshot from etcd applied; watching from the next revision"
        );
        Ok(snap.revision)
    }

    fn sync_copy(&self, etcd: &EtcdStore, revision: i64) {
        if self.control.copy.is_some() {
            self.sync_copy_with(etcd, self.shared.table.records(), revision);
        }
    }

    fn sync_copy_with(&self, etcd: &EtcdStore, sites: Vec<SiteRecord>, revision: i64) {
        let Some(copy) = &self.control.copy else {
            return;
        };
        let (joined, states) = match (etcd.joined_servers(), etcd.server_states()) {
            (Ok(j), Ok(s)) => (j, s),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read pools from etcd for the local copy");
                return;
            }
        };
        let started = Instant::now();
        copy.sync(sites, &joined, &states, revision);
        tracing::info!(
            revision,
            copy = %copy.path().display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local copy in step with etcd"
        );
    }

    /// Whether `r` from etcd changes the table: a new site or a newer epoch.
    /// A record older than the table's is counted and skipped, never applied.
    fn wanted(&self, r: &SiteRecord) -> bool {
        match self.shared.table.record(&r.host) {
            None => true,
            Some(cur) => match cur.judge(r) {
                ChangeVerdict::Apply => true,
                ChangeVerdict::NoOp => false,
                ChangeVerdict::Stale => {
                    self.control.stale_skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        site = %r.host,
                        table_epoch = cur.epoch.0,
                        etcd_epoch = r.epoch.0,
                        "etcd holds an older epoch than this router: the router keeps its own"
                    );
                    false
                }
            },
        }
    }

    fn apply(&mut self, batch: ChangeBatch) {
        if self.halted {
            return;
        }
        let mut records = Vec::new();
        let mut gone = Vec::new();
        for change in batch.changes {
            match change {
                Change::Site(r) => {
                    if self.wanted(&r) {
                        records.push(r);
                    }
                }
                Change::SiteRemoved(h) => gone.push(h),
                Change::ServerState {
                    pool,
                    server,
                    state,
                } => {
                    self.set_server_state(&pool, &server, state);
                    if let Some(c) = &self.control.copy {
                        c.write(|s| s.put_server_state(&pool, &server, state));
                    }
                }
                Change::Joined(j) => {
                    if let Some(c) = &self.control.copy {
                        c.write(|s| s.put_joined_server(&j));
                    }
                    tracing::info!(pool = %j.pool, server = %j.name, "a server joined in etcd (this router adds it at its next start, or when joined to it)");
                }
                Change::JoinedRemoved { pool, name } => {
                    if let Some(c) = &self.control.copy {
                        c.write(|s| s.remove_joined_server(&pool, &name));
                    }
                }
                Change::Layout(v) => {
                    if v.trim().parse::<u32>().map_or(true, |v| v > LAYOUT_VERSION) {
                        tracing::error!(layout = %v, supported = LAYOUT_VERSION, "etcd's key layout moved past this build: no further change is applied (the router keeps serving what it has); upgrade this router");
                        self.halted = true;
                        return;
                    }
                }
            }
        }
        self.apply_records(records);
        self.remove(&gone);
        self.control.batches.fetch_add(1, Ordering::Relaxed);
        self.control.set_applied(batch.revision);
    }

    /// Applies records from etcd to the table (the local copy first), then
    /// wakes the requests held on them.
    fn apply_records(&mut self, mut records: Vec<SiteRecord>) {
        if records.is_empty() {
            return;
        }
        for _ in 0..3 {
            let changes: Vec<SiteChange> = records
                .iter()
                .map(|r| SiteChange {
                    record: r.clone(),
                    extras: None,
                })
                .collect();
            let result = {
                // Serialised with reloads and admin changes, as theirs are.
                let _config = self.shared.config.lock();
                self.shared.table.apply(changes, |recs| {
                    if let Some(c) = &self.control.copy {
                        c.write(|s| s.put_sites(recs));
                    }
                    Ok::<(), std::convert::Infallible>(())
                })
            };
            match result {
                Ok(outcomes) => {
                    let woken: Vec<SiteId> = outcomes
                        .iter()
                        .filter(|(_, o)| matches!(o, Outcome::Added | Outcome::Changed))
                        .map(|(id, _)| *id)
                        .collect();
                    self.shared.holds.wake(&woken);
                    // A freeze that arrives by the watch gets its drain
                    // deadline here, as one through the admin API does.
                    let hosts: Vec<Hostname> = records.iter().map(|r| r.host.clone()).collect();
                    let drain = self.shared.settings.load().drain_timeout;
                    // Its timer runs on the router's runtime.
                    let _runtime = self.runtime.as_ref().map(|h| h.enter());
                    self.shared
                        .stragglers
                        .note(&self.shared.table, &hosts, drain);
                    for r in &records {
                        if r.state == SiteState::Frozen {
                            self.frozen.insert(r.host.clone(), r.epoch);
                        } else {
                            self.frozen.remove(&r.host);
                        }
                    }
                    return;
                }
                // Another writer (an admin change) got in between: judge again.
                Err(ApplyError::Stale(_)) => {
                    records.retain(|r| self.wanted(r));
                    if records.is_empty() {
                        return;
                    }
                }
                Err(ApplyError::Invalid(e)) => {
                    tracing::error!(error = %e, sites = records.len(), "records from etcd refused by the table");
                    return;
                }
                Err(ApplyError::Persist(never)) => match never {},
            }
        }
    }

    fn remove(&mut self, hosts: &[Hostname]) {
        if hosts.is_empty() {
            return;
        }
        let _config = self.shared.config.lock();
        let _ = self.shared.remove_sites_locked(hosts, |h| {
            if let Some(c) = &self.control.copy {
                c.write(|s| s.remove_sites(h));
            }
            Ok::<(), std::convert::Infallible>(())
        });
        for h in hosts {
            self.frozen.remove(h);
        }
    }

    fn set_server_state(&self, pool: &str, server: &str, state: ferry_model::ServerState) {
        let pools = self.shared.pools.load();
        if let Some(s) = pools.pools.get(pool).and_then(|p| p.pool.server(server)) {
            s.set_state(state);
        }
    }

    fn rebuild_frozen(&mut self) {
        self.frozen = self
            .shared
            .table
            .records()
            .into_iter()
            .filter(|r| r.state == SiteState::Frozen)
            .map(|r| (r.host, r.epoch))
            .collect();
    }

    /// `P/routers/<name>`: `{"revision":R,"frozen":{"EPOCH":IN_FLIGHT,...}}`,
    /// rewritten when it changes (at most every [`PUBLISH_EVERY`]), under a
    /// lease kept alive from the store's runtime. The local copy's revision is
    /// written first: what the router acknowledges is in its copy.
    fn register(&mut self, etcd: &EtcdStore) {
        if self.last_publish.elapsed() < PUBLISH_EVERY {
            return;
        }
        self.last_publish = Instant::now();
        if self.lease.is_none() {
            match etcd.grant_lease(self.control.settings.lease_ttl) {
                Ok(l) => self.lease = Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a lease for the registration");
                    return;
                }
            }
            self.noted_seen = false;
        }
        if !self.noted_seen {
            // Seen before registered: from now on every freeze waits for
            // this router until an operator retires it. A retirement is
            // cleared: a router that registers again serves again, so it
            // must acknowledge again.
            let seen = serde_json::json!({ "first_ms": now_ms() }).to_string();
            match etcd.note_seen(&self.control.router, &seen) {
                Ok(was_retired) => {
                    self.noted_seen = true;
                    if was_retired {
                        tracing::warn!(
                            router = %self.control.router,
                            "this router was retired and registers again: no longer retired \
                             (freezes wait for its acknowledgement again)"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record this router as seen in etcd");
                    return;
                }
            }
        }
        let revision = self.control.applied();
        let mut per_epoch: std::collections::BTreeMap<u64, u64> = Default::default();
        for (host, epoch) in &self.frozen {
            let in_flight = self
                .shared
                .table
                .get(host)
                .map_or(0, |r| self.shared.table.counters(r.site).1);
            *per_epoch.entry(epoch.0).or_default() += u64::from(in_flight);
        }
        let frozen: serde_json::Map<String, serde_json::Value> = per_epoch
            .into_iter()
            .map(|(e, n)| (e.to_string(), n.into()))
            .collect();
        let value = serde_json::json!({ "revision": revision, "frozen": frozen }).to_string();
        if value == self.published {
            return;
        }
        if let Some(copy) = &self.control.copy {
            copy.set_revision(revision);
        }
        let Some(lease) = &self.lease else { return };
        match etcd.put_registration(&self.control.router, &value, lease) {
            Ok(()) => {
                self.published = value;
                if !self.control.registered.swap(true, Ordering::AcqRel) {
                    tracing::info!(revision, "registered in etcd");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot update this router's registration"),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The control plane's Prometheus lines (`/metrics`).
pub(crate) fn render_metrics(control: &Control, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP ferry_store_applied_revision The etcd revision this router's table has applied.\n# TYPE ferry_store_applied_revision gauge\nferry_store_applied_revision {}", control.applied());
    let _ = writeln!(out, "# HELP ferry_store_resnapshots_total Fresh snapshots taken after a compaction or a lost watch.\n# TYPE ferry_store_resnapshots_total counter\nferry_store_resnapshots_total {}", control.resnapshots.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP ferry_store_watch_batches_total Revisions applied from the watch.\n# TYPE ferry_store_watch_batches_total counter\nferry_store_watch_batches_total {}", control.batches.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP ferry_store_stale_skipped_total Records from etcd older than the router's own, skipped.\n# TYPE ferry_store_stale_skipped_total counter\nferry_store_stale_skipped_total {}", control.stale_skipped.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP ferry_store_registered 1 while this router's registration is in etcd under a live lease.\n# TYPE ferry_store_registered gauge\nferry_store_registered {}", u8::from(control.registered.load(Ordering::Relaxed)));
    let _ = writeln!(out, "# HELP ferry_store_leases_lost_total Registration leases lost (expired, or no keep-alive answered within the TTL).\n# TYPE ferry_store_leases_lost_total counter\nferry_store_leases_lost_total {}", control.leases_lost.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP ferry_store_from_copy 1 while the router serves from its local copy (etcd unreachable since start).\n# TYPE ferry_store_from_copy gauge\nferry_store_from_copy {}", u8::from(control.from_copy.load(Ordering::Relaxed)));
}
