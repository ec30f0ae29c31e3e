//! [`EtcdBacked`]: the router's store with `[store] backend = "etcd"`, and
//! [`Control`], what the store, the control thread and the admin API share.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ferry_config::EtcdSettings;
use ferry_model::{Hostname, ServerState, SiteRecord};
use ferry_store::{
    EtcdAuth, EtcdConfig, EtcdStore, EtcdTlsConfig, JoinedServer, SqliteStore, Store, StoreError,
};
use parking_lot::{Condvar, Mutex};

use super::copy::LocalCopy;
use crate::ProxyError;

/// Longest an admin answer waits for the router's own watch to apply its write.
const AWAIT_APPLIED: Duration = Duration::from_secs(5);

/// State shared by the store, the control thread and the admin API.
pub(crate) struct Control {
    /// `None` while etcd was unreachable at start (serving from the local
    /// copy); the control thread connects and sets it.
    pub etcd: ArcSwapOption<EtcdStore>,
    pub settings: EtcdSettings,
    pub router: String,
    pub copy: Option<LocalCopy>,
    /// The revision of the snapshot the table was seeded from (0: from the
    /// local copy, or not yet).
    pub seeded_at: AtomicI64,
    /// Newest revision this router's table has applied.
    applied: Mutex<i64>,
    applied_cv: Condvar,
    /// Newest revision written by this router's admin API.
    written: AtomicI64,
    pub resnapshots: AtomicU64,
    pub batches: AtomicU64,
    /// Records from etcd that the table refused as older than its own.
    pub stale_skipped: AtomicU64,
    /// Whether the router started from the local copy and has not yet caught
    /// up with etcd.
    pub from_copy: AtomicBool,
    /// Whether `P/routers/<name>` is in place under a lease that cannot have
    /// expired yet (false from a lost lease until a fresh snapshot and a new
    /// registration).
    pub registered: AtomicBool,
    /// Leases lost (expired, or no keep-alive answered within the TTL).
    pub leases_lost: AtomicU64,
}

impl Control {
    pub fn applied(&self) -> i64 {
        *self.applied.lock()
    }

    pub fn set_applied(&self, revision: i64) {
        let mut a = self.applied.lock();
        if revision > *a {
            *a = revision;
            self.applied_cv.notify_all();
        }
    }

    fn note_written(&self, revision: i64) {
        self.written.fetch_max(revision, Ordering::AcqRel);
    }

    /// Waits until the applied revision reaches this router's last write
    /// (bounded: a watch that is behind makes the answer late, not lost; the
    /// write is in etcd either way).
    pub fn await_written(&self) {
        let want = self.written.load(Ordering::Acquire);
        let deadline = Instant::now() + AWAIT_APPLIED;
        let mut a = self.applied.lock();
        while *a < want {
            if self.applied_cv.wait_until(&mut a, deadline).timed_out() {
                tracing::warn!(
                    written = want,
                    applied = *a,
                    "an admin write is in etcd but this router's watch has not applied it yet"
                );
                return;
            }
        }
    }

    fn etcd(&self, op: &'static str) -> Result<Arc<EtcdStore>, StoreError> {
        self.etcd
            .load_full()
            .ok_or_else(|| StoreError::Unavailable {
                op,
                after: Duration::ZERO,
                last: "etcd was unreachable at start and is not reconnected yet \
                   (the router serves settled sites from its local copy)"
                    .into(),
            })
    }
}

impl crate::state::ControlPlane for Control {
    fn await_written(&self) {
        Control::await_written(self);
    }

    fn render_metrics(&self, out: &mut String) {
        super::watcher::render_metrics(self, out);
    }
}

/// The etcd client's settings from `[store]`.
pub(crate) fn etcd_config(s: &EtcdSettings) -> EtcdConfig {
    let mut cfg = EtcdConfig::new(s.endpoints.clone(), s.prefix.clone());
    cfg.request_timeout = s.request_timeout;
    cfg.auth = s.auth.as_ref().map(|(user, password)| EtcdAuth {
        user: user.clone(),
        password: password.expose().to_string(),
    });
    cfg.tls = s.tls.as_ref().map(|t| EtcdTlsConfig {
        ca: t.ca.clone(),
        identity: t
            .identity
            .as_ref()
            .map(|(c, k)| (c.clone(), k.expose().to_string())),
    });
    cfg
}

/// Connects to etcd (or, when it is unreachable and a local copy exists,
/// prepares to serve from the copy) and returns the store the router starts
/// with.
pub(crate) fn open(
    s: &EtcdSettings,
    router: &str,
) -> Result<(Arc<Control>, Arc<dyn Store>), ProxyError> {
    let copy = match &s.local_copy {
        Some(path) => Some(LocalCopy::open(path)?),
        None => None,
    };
    let etcd = match EtcdStore::connect(etcd_config(s)) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => match &copy {
            Some(c) if c.usable() => {
                tracing::warn!(
                    error = %e,
                    copy = %c.path().display(),
                    revision = c.revision(),
                    "etcd is unreachable: starting from the local copy (settled sites serve, \
                     frozen ones stay held); the control thread keeps trying etcd"
                );
                None
            }
            _ => return Err(ProxyError::Store(e)),
        },
    };
    let from_copy = etcd.is_none();
    let control = Arc::new(Control {
        etcd: ArcSwapOption::new(etcd),
        settings: s.clone(),
        router: router.to_string(),
        copy,
        seeded_at: AtomicI64::new(0),
        applied: Mutex::new(0),
        applied_cv: Condvar::new(),
        written: AtomicI64::new(0),
        resnapshots: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        stale_skipped: AtomicU64::new(0),
        from_copy: AtomicBool::new(from_copy),
        registered: AtomicBool::new(false),
        leases_lost: AtomicU64::new(0),
    });
    let store: Arc<dyn Store> = Arc::new(EtcdBacked {
        control: Arc::clone(&control),
    });
    Ok((control, store))
}

/// The router's [`Store`] on etcd: reads from etcd (a snapshot at one
/// revision), or from the local copy while etcd was unreachable at start;
/// writes to etcd, judged on epochs there, then to the local copy.
pub(crate) struct EtcdBacked {
    control: Arc<Control>,
}

impl EtcdBacked {
    /// etcd has the write; a failed copy write marks the copy unusable.
    fn copy_write(&self, f: impl FnOnce(&SqliteStore) -> Result<(), StoreError>) {
        if let Some(c) = &self.control.copy {
            c.write(f);
        }
    }
}

impl Store for EtcdBacked {
    fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        match self.control.etcd.load_full() {
            Some(etcd) => {
                let snap = etcd.snapshot()?;
                self.control
                    .seeded_at
                    .store(snap.revision, Ordering::Release);
                self.control.set_applied(snap.revision);
                Ok(snap.sites)
            }
            None => match &self.control.copy {
                Some(c) => c.store().sites(),
                None => self.control.etcd("read sites").map(|_| Vec::new()),
            },
        }
    }

    fn site(&self, host: &Hostname) -> Result<Option<SiteRecord>, StoreError> {
        self.control.etcd("read a site")?.site(host)
    }

    fn put_sites(&self, records: &[SiteRecord]) -> Result<(), StoreError> {
        let applied = self.control.etcd("write sites")?.apply_sites(records)?;
        self.control.note_written(applied.revision);
        self.copy_write(|c| c.put_sites(records));
        Ok(())
    }

    fn remove_sites(&self, hosts: &[Hostname]) -> Result<(), StoreError> {
        let etcd = self.control.etcd("remove sites")?;
        etcd.remove_sites(hosts)?;
        // A delete's revision: the newest one now (the watch delivers it).
        if let Ok(r) = etcd.revision() {
            self.control.note_written(r);
        }
        self.copy_write(|c| c.remove_sites(hosts));
        Ok(())
    }

    fn server_states(&self) -> Result<Vec<(String, String, ServerState)>, StoreError> {
        match (self.control.etcd.load_full(), &self.control.copy) {
            (Some(etcd), _) => etcd.server_states(),
            (None, Some(c)) => c.store().server_states(),
            (None, None) => Ok(Vec::new()),
        }
    }

    fn put_server_state(
        &self,
        pool: &str,
        server: &str,
        state: ServerState,
    ) -> Result<(), StoreError> {
        self.control
            .etcd("write a server state")?
            .put_server_state(pool, server, state)?;
        self.copy_write(|c| c.put_server_state(pool, server, state));
        Ok(())
    }

    fn joined_servers(&self) -> Result<Vec<JoinedServer>, StoreError> {
        match (self.control.etcd.load_full(), &self.control.copy) {
            (Some(etcd), _) => etcd.joined_servers(),
            (None, Some(c)) => c.store().joined_servers(),
            (None, None) => Ok(Vec::new()),
        }
    }

    fn put_joined_server(&self, server: &JoinedServer) -> Result<(), StoreError> {
        self.control
            .etcd("write a joined server")?
            .put_joined_server(server)?;
        self.copy_write(|c| c.put_joined_server(server));
        Ok(())
    }

    fn remove_joined_server(&self, pool: &str, name: &str) -> Result<(), StoreError> {
        self.control
            .etcd("remove a joined server")?
            .remove_joined_server(pool, name)?;
        self.copy_write(|c| c.remove_joined_server(pool, name));
        Ok(())
    }
}
