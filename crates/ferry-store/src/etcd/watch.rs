//! Watching the prefix from a revision on (a router keeps its table in step
//! with etcd), and the leases a router registers under.
//!
//! A watch covers all of `P/` and hands out one [`ChangeBatch`] per etcd
//! revision that touched sites, server states or joined servers. Keys outside
//! those (router registrations, orchestrator runs) move the revision but make
//! no batch: routers republish their applied revision when it changes, and a
//! router's own registration must not wake every router into republishing.
//! A compacted start revision, a watch cancelled by etcd (leader lost with
//! `require_leader`) or a broken stream is a [`WatchError`]: the caller takes a
//! fresh snapshot, never resumes past a gap.

use std::time::Duration;

use etcd_client::{EventType, KeyValue, PutOptions, WatchOptions};
use ferry_model::{Hostname, ServerState, SiteRecord};
use tokio::sync::mpsc;

use super::keys::decode_site_kv;
use super::{EtcdStore, Inner};
use crate::{JoinedServer, StoreError};

/// Batches buffered between the watch task and its reader. A reader that falls
/// this far behind stops reading from etcd (gRPC flow control holds the rest).
const WATCH_BUFFER: usize = 256;

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A site was written (its record as etcd now holds it).
    Site(SiteRecord),
    /// A site's key was deleted.
    SiteRemoved(Hostname),
    /// A server's administrative state was set.
    ServerState {
        pool: String,
        server: String,
        state: ServerState,
    },
    /// A server joined a pool at run time.
    Joined(JoinedServer),
    /// A joined server was forgotten (`pool`, `name`).
    JoinedRemoved { pool: String, name: String },
    /// `P/schema` moved to a layout this build may not understand.
    Layout(String),
}

/// The changes of one etcd revision (one transaction), in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBatch {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// Why a watch stopped. Every variant means: take a fresh snapshot, apply the
/// difference, watch again from its revision + 1.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The revision asked for (or one the watch had not yet delivered) was
    /// compacted: the changes in between are gone.
    #[error(
        "watch from revision {from} is behind etcd's compaction (compacted up to {compacted})"
    )]
    Compacted { from: i64, compacted: i64 },
    /// The watch stream ended, failed or was cancelled by etcd (a member that
    /// lost its leader cancels watches that require one).
    #[error("watch lost: {0}")]
    Lost(String),
    /// A value under the prefix does not decode.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running watch: [`Watch::next`] hands out batches in revision order.
/// Dropping it cancels the watch.
pub struct Watch {
    rx: mpsc::Receiver<Result<ChangeBatch, WatchError>>,
    task: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
}

impl Watch {
    /// The next batch, waiting up to `timeout` (`Ok(None)`: nothing yet). After
    /// an error the watch is over; start another from a fresh snapshot. Call it
    /// from a thread outside any tokio runtime (it waits on the store's own).
    pub fn next(&mut self, timeout: Duration) -> Result<Option<ChangeBatch>, WatchError> {
        let rx = &mut self.rx;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, rx.recv()).await })
        {
            Err(_) => Ok(None),
            Ok(Some(r)) => r.map(Some),
            Ok(None) => Err(WatchError::Lost("the watch task stopped".into())),
        }
    }

    /// The next batch, for async callers (`None`: the watch task stopped).
    pub async fn recv(&mut self) -> Option<Result<ChangeBatch, WatchError>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease kept alive by a task on the store's runtime, with the keys put under
/// it. Dropping it revokes the lease (its keys go at once); a process killed
/// without dropping it loses them when the TTL runs out.
pub struct Lease {
    id: i64,
    store: std::sync::Arc<Inner>,
    keeper: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Until when etcd surely still holds the lease: the send time of the
    /// last keep-alive etcd answered, plus the TTL it granted (a keep-alive
    /// sent earlier than the leader received it, so this is never late).
    valid_until: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
}

impl Lease {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Whether etcd said the lease expired (a keep-alive came too late): the
    /// keys under it are gone; register again with a new lease.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the lease may have expired by now: etcd said so, or no
    /// keep-alive was answered within the TTL (etcd unreachable, this
    /// process paused). Judged on this process's own clock, so it turns true
    /// no later than etcd expires the lease, even while etcd cannot answer.
    pub fn may_have_expired(&self) -> bool {
        self.is_lost()
            || self
                .valid_until
                .lock()
                .map_or(true, |until| std::time::Instant::now() >= *until)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
        let (inner, id) = (self.store.clone(), self.id);
        // Best effort and bounded: a revoke that does not arrive leaves the key
        // until the TTL.
        self.runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), async move {
                let mut c = inner.client.clone();
                c.lease_revoke(id).await
            })
            .await;
        });
    }
}

impl EtcdStore {
    /// Watches `P/` from `revision` (a snapshot's revision + 1) on.
    pub fn watch_from(&self, revision: i64) -> Result<Watch, StoreError> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the etcd store's runtime lives until drop");
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let inner = self.inner.clone();
        // Opening the stream is one call with retries; its errors are the
        // caller's (etcd unavailable), not the watch's.
        let stream = super::client::wait(runtime, "start a watch", {
            let inner = inner.clone();
            async move {
                let (start, end) = inner.keys.all_range();
                inner
                    .call("start a watch", |mut c| {
                        let (start, end) = (start.clone(), end.clone());
                        let options = WatchOptions::new()
                            .with_range(end)
                            .with_start_revision(revision)
                            .with_progress_notify();
                        async move { c.watch(start, Some(options)).await }
                    })
                    .await
            }
        })?;
        let task = runtime.spawn(async move {
            run_watch(inner, stream, revision, tx).await;
        });
        Ok(Watch {
            rx,
            task,
            runtime: runtime.handle().clone(),
        })
    }

    /// The newest revision of the cluster (a cheap read of one key).
    pub fn revision(&self) -> Result<i64, StoreError> {
        self.run(|inner| async move {
            let key = inner.keys.schema();
            let resp = inner
                .call("read the revision", |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
        })
    }

    /// Compacts etcd's history up to `revision` (operators and tests; etcd's
    /// own `--auto-compaction-*` does it in production).
    pub fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.run(move |inner| async move {
            inner
                .call(
                    "compact",
                    |mut c| async move { c.compact(revision, None).await },
                )
                .await
                .map(drop)
        })
    }

    /// Grants a lease of `ttl` (whole seconds) and keeps it alive from the
    /// store's runtime (a keep-alive every third of the TTL).
    pub fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let asked = std::time::Instant::now();
        let id = self.run(move |inner| async move {
            let resp = inner
                .call("grant a lease", |mut c| async move {
                    c.lease_grant(secs, None).await
                })
                .await?;
            Ok(resp.id())
        })?;
        let runtime = self
            .runtime
            .as_ref()
            .expect("the etcd store's runtime lives until drop");
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let valid_until = std::sync::Arc::new(std::sync::Mutex::new(
            asked + Duration::from_secs(secs.unsigned_abs()),
        ));
        let keeper = runtime.spawn(keep_alive(
            self.inner.clone(),
            id,
            ttl.max(Duration::from_secs(1)),
            lost.clone(),
            valid_until.clone(),
        ));
        Ok(Lease {
            id,
            store: self.inner.clone(),
            keeper,
            runtime: runtime.handle().clone(),
            lost,
            valid_until,
        })
    }

    /// Puts `P/routers/<name>` = `value` under `lease`.
    pub fn put_registration(
        &self,
        name: &str,
        value: &str,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let key = self.inner.keys.router(name);
        let (value, id) = (value.to_string(), lease.id);
        self.run(move |inner| async move {
            inner
                .call("register the router", |mut c| {
                    let (key, value) = (key.clone(), value.clone());
                    async move {
                        c.put(key, value, Some(PutOptions::new().with_lease(id)))
                            .await
                    }
                })
                .await
                .map(drop)
        })
    }

    /// `P/routers/<name>`'s value, if registered.
    pub fn registration(&self, name: &str) -> Result<Option<String>, StoreError> {
        let key = self.inner.keys.router(name);
        self.run(move |inner| async move {
            let resp = inner
                .call("read a registration", |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
        })
    }
}

async fn keep_alive(
    inner: std::sync::Arc<Inner>,
    id: i64,
    ttl: Duration,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    valid_until: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
) {
    let every = ttl / 3;
    loop {
        // A fresh stream each round: a broken one (member restarted) costs
        // one round, not the lease.
        let round = async {
            let mut c = inner.client.clone();
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            loop {
                let sent = std::time::Instant::now();
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(resp) if resp.ttl() <= 0 => return Ok::<bool, etcd_client::Error>(true),
                    Some(resp) => {
                        if let Ok(mut until) = valid_until.lock() {
                            *until = sent + Duration::from_secs(resp.ttl().unsigned_abs());
                        }
                    }
                    None => return Ok(false),
                }
                tokio::time::sleep(every).await;
            }
        };
        match tokio::time::timeout(ttl * 4, round).await {
            Ok(Ok(true)) => {
                lost.store(true, std::sync::atomic::Ordering::Release);
                return;
            }
            Ok(Ok(false)) | Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(every.min(Duration::from_millis(500))).await;
            }
        }
    }
}

async fn run_watch(
    inner: std::sync::Arc<Inner>,
    mut stream: etcd_client::WatchStream,
    from: i64,
    tx: mpsc::Sender<Result<ChangeBatch, WatchError>>,
) {
    let mut next = from;
    let result: Result<(), WatchError> = async {
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(WatchError::Lost("etcd closed the watch stream".into())),
                Err(e) => return Err(WatchError::Lost(e.to_string())),
            };
            if resp.compact_revision() > 0 {
                return Err(WatchError::Compacted {
                    from: next,
                    compacted: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(WatchError::Lost(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                )));
            }
            // Events come in revision order; one transaction's events share
            // its revision.
            let mut batch: Option<ChangeBatch> = None;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let rev = kv.mod_revision();
                if batch.as_ref().is_some_and(|b| b.revision != rev) {
                    send(&tx, batch.take()).await?;
                }
                next = rev + 1;
                if let Some(change) = inner.decode_change(kv, event.event_type())? {
                    batch
                        .get_or_insert_with(|| ChangeBatch {
                            revision: rev,
                            changes: Vec::new(),
                        })
                        .changes
                        .push(change);
                }
            }
            send(&tx, batch).await?;
        }
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

async fn send(
    tx: &mpsc::Sender<Result<ChangeBatch, WatchError>>,
    batch: Option<ChangeBatch>,
) -> Result<(), WatchError> {
    match batch {
        Some(b) if !b.changes.is_empty() => tx
            .send(Ok(b))
            .await
            .map_err(|_| WatchError::Lost("the watch's reader is gone".into())),
        _ => Ok(()),
    }
}

impl Inner {
    /// What a watched key's event means; `None` for keys outside sites,
    /// servers, pools and the schema.
    fn decode_change(&self, kv: &KeyValue, kind: EventType) -> Result<Option<Change>, WatchError> {
        let key = kv.key();
        let sites = self.keys.sites_start();
        if key.starts_with(sites.as_bytes()) {
            return Ok(Some(match kind {
                EventType::Put => Change::Site(decode_site_kv(&sites, kv)?),
                EventType::Delete => {
                    let raw = std::str::from_utf8(&key[sites.len()..]).unwrap_or_default();
                    let host = Hostname::parse(raw).map_err(|e| StoreError::Corrupt {
                        what: format!("deleted site key {raw:?}"),
                        detail: e.to_string(),
                    })?;
                    Change::SiteRemoved(host)
                }
            }));
        }
        if key == self.keys.schema().as_bytes() {
            return Ok(match kind {
                EventType::Put => Some(Change::Layout(
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )),
                EventType::Delete => None,
            });
        }
        let (servers, _) = self.keys.servers_range();
        if key.starts_with(servers.as_bytes()) {
            return Ok(match kind {
                EventType::Put => {
                    let (pool, server, state) = self.decode_server_state(kv)?;
                    Some(Change::ServerState {
                        pool,
                        server,
                        state,
                    })
                }
                // Nothing deletes server states; a delete by hand leaves the
                // server's state as it is.
                EventType::Delete => None,
            });
        }
        let (pools, _) = self.keys.pools_range();
        if key.starts_with(pools.as_bytes()) {
            return Ok(match kind {
                EventType::Put => self.decode_joined(kv)?.map(Change::Joined),
                EventType::Delete => self
                    .keys
                    .joined_of(kv.key())
                    .map(|(pool, name)| Change::JoinedRemoved { pool, name }),
            });
        }
        Ok(None)
    }
}
