//! [`EtcdStore`]: the control store in an etcd v3 cluster (cargo feature `etcd`).
//!
//! Key layout, value encoding, revisions, batch atomicity and compatibility are
//! described in `docs/control-plane.md`; this module is the one implementation of
//! them. In short, under a prefix `P`:
//!
//! ```text
//! P/schema                  "1"                  (LAYOUT_VERSION, written once)
//! P/sites/<host>            "<epoch> <a|m|f> <placement>"   e.g. "42 f pool:web"
//! P/servers/<pool>/<server> "ready" | "drain" | "maint"      ('/' and '%' escaped)
//! ```
//!
//! The [`Store`] trait is synchronous (the router calls it from its admin path,
//! the SQLite backend blocks on disk). etcd-client is async (tonic), so the store
//! owns a small tokio runtime (one worker thread, `ferry-etcd`) and every trait
//! call hands its future to that runtime and waits on a channel. Waiting on a
//! channel, unlike `Runtime::block_on`, works from any thread, including a
//! worker of the caller's own tokio runtime (ferry-proxy's admin handlers), so
//! the SQLite backend and every caller stay exactly as they were. Every RPC is
//! bounded by [`EtcdConfig::request_timeout`]: a lost quorum is an
//! [`StoreError::Unavailable`] after that long, never a hang.
//!
//! By concern: `keys.rs` the key layout and the value encoding; `client.rs`
//! the runtime bridge, RPCs with retries and errors; `snapshot.rs` paging the
//! sites at one revision; `txn.rs` chunked and epoch-judged writes.

mod client;
mod fleet;
mod keys;
mod snapshot;
mod txn;
mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use ferry_model::{Hostname, ServerState, SiteRecord};

use crate::{JoinedServer, Store, StoreError};
use client::{etcd_err, wait};
pub use fleet::Fleet;
use keys::{encode_site, Keys};
pub use watch::{Change, ChangeBatch, Lease, Watch, WatchError};

/// HTTP/2 pings on the client's connection: how a silently dead member (a
/// cut link) is noticed, at most interval + timeout after it went. Not
/// below etcd's `--grpc-keepalive-min-time` (5 s by default): a client that
/// pings faster while etcd has nothing to send is cut off ("too many
/// pings"), and every router then lost its idle watch and re-read the whole
/// table (bench/control-plane saw 3-5 fresh snapshots of 3M sites in 40 s).
pub(super) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);
pub(super) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The key layout this build writes and the newest it reads (`P/schema`). Raise
/// it only for a change an older router must not read as version 1, together with
/// docs/control-plane.md's compatibility section.
pub const LAYOUT_VERSION: u32 = 1;

/// How an [`EtcdStore`] reaches its cluster and where its keys live.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://10.0.0.1:2379`); requests are spread
    /// over them and a dead one is skipped.
    pub endpoints: Vec<String>,
    /// Every key of this store starts with it (`/ferry`, `/ferry/dc1`); a trailing
    /// `/` is ignored. Two stores with different prefixes share nothing.
    pub prefix: String,
    /// Bound on one RPC, its retries on an unavailable member included. A lost
    /// quorum shows up as [`StoreError::Unavailable`] after this long.
    pub request_timeout: Duration,
    /// Bound on opening a connection to one member.
    pub connect_timeout: Duration,
    /// Operations in one transaction; must not exceed the cluster's
    /// `--max-txn-ops` (etcd's default: 128). A batch within it is one
    /// transaction (atomic, seen whole or not at all); a larger one is cut.
    pub max_txn_ops: usize,
    /// Bytes of keys and values in one transaction; must stay under the cluster's
    /// `--max-request-bytes` (etcd's default: 1.5 MiB) with room for framing.
    pub max_txn_bytes: usize,
    /// Keys per page of a snapshot read ([`EtcdStore::snapshot`]).
    pub page_size: usize,
    /// etcd authentication: user and password.
    pub auth: Option<EtcdAuth>,
    /// TLS to the members: the CA's PEM, and this client's certificate and
    /// key (PEM) when the cluster asks for them.
    pub tls: Option<EtcdTlsConfig>,
}

/// etcd's user and password ([`EtcdConfig::auth`]); `Debug` shows the user only.
#[derive(Clone)]
pub struct EtcdAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// PEM of the TLS settings of [`EtcdConfig::tls`].
#[derive(Clone)]
pub struct EtcdTlsConfig {
    pub ca: String,
    pub identity: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTlsConfig")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// Defaults that fit an etcd started with its own defaults.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_txn_ops: 128,
            max_txn_bytes: 1024 * 1024,
            page_size: 10_000,
            auth: None,
            tls: None,
        }
    }
}

/// Every site record at one etcd revision: a consistent snapshot, however many
/// pages it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The revision read. A watch started at `revision + 1` misses nothing.
    pub revision: i64,
    /// In host order.
    pub sites: Vec<SiteRecord>,
}

/// What [`EtcdStore::apply_sites`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The revision a watch must have applied to hold every record of the
    /// batch as etcd now stores it: the newest transaction written, or the
    /// newest revision of the records read when nothing changed (0: none).
    pub revision: i64,
    /// Records written (their epoch was newer than the stored one, or the host was new).
    pub changed: usize,
    /// Records that were no-ops (same epoch, same content as stored).
    pub unchanged: usize,
}

/// The control store in etcd. See the module documentation.
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// `Some` until drop, which stops it without waiting (dropping a runtime
    /// inside another one's worker would panic).
    runtime: Option<tokio::runtime::Runtime>,
}

struct Inner {
    client: Client,
    cfg: EtcdConfig,
    keys: Keys,
    conflicts: AtomicU64,
    /// When [`Inner::reconnect`] last replaced the connections.
    reconnected: std::sync::Mutex<Option<std::time::Instant>>,
}

impl EtcdStore {
    /// Connects to the cluster and checks (or writes, on an empty prefix) the
    /// layout version. A prefix written by a newer Ferry is refused.
    pub fn connect(cfg: EtcdConfig) -> Result<EtcdStore, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(StoreError::Etcd {
                op: "connect",
                source: "no etcd endpoints given".into(),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferry-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                op: "start the etcd client's runtime",
                source: e.into(),
            })?;
        let options = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            // No per-request timeout in tonic: `Inner::call` bounds each request
            // and its retries together by `request_timeout`.
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            // A member cut from the leader answers "no leader" at once instead
            // of holding the request until its own timeout.
            .with_require_leader(true);
        let options = match &cfg.auth {
            Some(a) => options.with_user(a.user.clone(), a.password.clone()),
            None => options,
        };
        let options = match &cfg.tls {
            Some(t) => {
                let mut tls = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(t.ca.as_bytes()));
                if let Some((cert, key)) = &t.identity {
                    tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
                }
                options.with_tls(tls)
            }
            None => options,
        };
        let endpoints = cfg.endpoints.clone();
        let connected = wait(&runtime, "connect", async move {
            Client::connect(endpoints, Some(options))
                .await
                .map_err(|e| etcd_err("connect", e))
        });
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                // Not a plain drop: it waits for the runtime's threads, which
                // panics inside the caller's own runtime (`ferry migrate`
                // given a wrong etcd password did).
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let keys = Keys::new(&cfg.prefix);
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                cfg,
                keys,
                conflicts: AtomicU64::new(0),
                reconnected: std::sync::Mutex::new(None),
            }),
            runtime: Some(runtime),
        };
        store.run(|inner| async move { inner.check_layout().await })?;
        Ok(store)
    }

    /// Every site at one revision (the latest), read in pages of
    /// [`EtcdConfig::page_size`] all at that revision.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.run(|inner| async move { inner.snapshot(0).await })
    }

    /// Every site as it was at `revision` (fails once etcd has compacted it).
    pub fn snapshot_at(&self, revision: i64) -> Result<Snapshot, StoreError> {
        self.run(move |inner| async move { inner.snapshot(revision).await })
    }

    /// Writes `records` under the epoch rule ([`SiteRecord::judge`]), judged
    /// against what etcd holds inside the transaction that writes them: each
    /// record's key is compared with the revision it was judged at, so a writer
    /// racing on the same sites makes the transaction fail, and the records are
    /// judged again against the winner's. A stale record refuses the whole batch
    /// ([`StoreError::Stale`]); a host named twice is judged in order.
    ///
    /// A batch that fits one transaction ([`EtcdConfig::max_txn_ops`],
    /// [`EtcdConfig::max_txn_bytes`]) is all or nothing. A larger one is judged
    /// whole first (a stale record found then writes nothing), then written
    /// chunk by chunk; a chunk made stale by a racing writer in between stops it
    /// with [`StoreError::Partial`] (earlier chunks stay; sending the same batch
    /// again is safe, their records are no-ops).
    pub fn apply_sites(&self, records: &[SiteRecord]) -> Result<Applied, StoreError> {
        let encoded = records
            .iter()
            .map(|r| Ok((r.clone(), encode_site(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.run(move |inner| async move { inner.apply_sites(encoded).await })
    }

    /// Transactions of [`EtcdStore::apply_sites`] refused by their compare because
    /// another writer changed a key in between (each was judged again).
    pub fn conflicts(&self) -> u64 {
        self.inner.conflicts.load(Ordering::Relaxed)
    }

    /// The store's settings.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.cfg
    }

    /// The key `P/<rest>` of this store's prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.inner.keys.prefix)
    }

    /// Runs one request of the caller's own (keys it keeps under
    /// [`EtcdStore::key`]: the orchestrator's lease and journal) with the
    /// store's client on its runtime, retried while the cluster is unavailable
    /// and bounded by [`EtcdConfig::request_timeout`] like the store's own calls.
    /// `f` may be called more than once: what it sends must be safe to repeat.
    pub fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.run(move |inner| async move { inner.call(op, f).await })
    }

    /// Runs `f`'s future on the store's runtime and waits for it.
    fn run<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            // Only `drop` takes the runtime, and nothing runs after it.
            .expect("the etcd store's runtime lives until drop");
        wait(runtime, "run a request", f(self.inner.clone()))
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        self.snapshot().map(|s| s.sites)
    }

    fn site(&self, host: &Hostname) -> Result<Option<SiteRecord>, StoreError> {
        let key = self.inner.keys.site(host.as_str());
        self.run(|inner| async move {
            let resp = inner
                .call("read a site", |mut c| {
                    let key = key.clone();
                    async move { c.get(key, None).await }
                })
                .await?;
            match resp.kvs().first() {
                Some(kv) => inner.decode_site(kv).map(Some),
                None => Ok(None),
            }
        })
    }

    fn put_sites(&self, records: &[SiteRecord]) -> Result<(), StoreError> {
        // Encode everything first: an unstorable record refuses the batch before
        // anything is sent. Later records for a host win (etcd refuses a key twice
        // in one transaction).
        let mut last: std::collections::HashMap<&str, usize> = Default::default();
        for (i, r) in records.iter().enumerate() {
            last.insert(r.host.as_str(), i);
        }
        let mut ops = Vec::with_capacity(last.len());
        for (i, r) in records.iter().enumerate() {
            let value = encode_site(r)?;
            if last.get(r.host.as_str()) == Some(&i) {
                ops.push((self.inner.keys.site(r.host.as_str()), Some(value)));
            }
        }
        self.run(|inner| async move { inner.write_chunked("write sites", ops).await })
    }

    fn remove_sites(&self, hosts: &[Hostname]) -> Result<(), StoreError> {
        let mut keys: Vec<String> = hosts
            .iter()
            .map(|h| self.inner.keys.site(h.as_str()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let ops = keys.into_iter().map(|k| (k, None)).collect();
        self.run(|inner| async move { inner.write_chunked("remove sites", ops).await })
    }

    fn server_states(&self) -> Result<Vec<(String, String, ServerState)>, StoreError> {
        self.run(|inner| async move {
            let (start, end) = inner.keys.servers_range();
            let resp = inner
                .call("read server states", |mut c| {
                    let (start, end) = (start.clone(), end.clone());
                    async move { c.get(start, Some(GetOptions::new().with_range(end))).await }
                })
                .await?;
            let mut out = resp
                .kvs()
                .iter()
                .map(|kv| inner.decode_server_state(kv))
                .collect::<Result<Vec<_>, _>>()?;
            // Key order is not (pool, server) order when a name has a byte below '/'.
            out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            Ok(out)
        })
    }

    fn put_server_state(
        &self,
        pool: &str,
        server: &str,
        state: ServerState,
    ) -> Result<(), StoreError> {
        let key = self.inner.keys.server(pool, server);
        self.run(move |inner| async move {
            inner
                .call("write a server state", |mut c| {
                    let key = key.clone();
                    async move { c.put(key, state.as_str(), None).await }
                })
                .await
                .map(drop)
        })
    }

    fn joined_servers(&self) -> Result<Vec<JoinedServer>, StoreError> {
        self.run(|inner| async move {
            let (start, end) = inner.keys.pools_range();
            let resp = inner
                .call("read joined servers", |mut c| {
                    let (start, end) = (start.clone(), end.clone());
                    async move { c.get(start, Some(GetOptions::new().with_range(end))).await }
                })
                .await?;
            let mut out = resp
                .kvs()
                .iter()
                .filter_map(|kv| inner.decode_joined(kv).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by(|a, b| (&a.pool, &a.name).cmp(&(&b.pool, &b.name)));
            Ok(out)
        })
    }

    fn put_joined_server(&self, s: &JoinedServer) -> Result<(), StoreError> {
        let key = self.inner.keys.joined(&s.pool, &s.name);
        // "ADDRESS TIER WEIGHT": three plain fields, no JSON needed.
        let value = format!("{} {} {}", s.address, s.tier, s.weight);
        self.run(move |inner| async move {
            inner
                .call("write a joined server", |mut c| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { c.put(key, value, None).await }
                })
                .await
                .map(drop)
        })
    }

    fn remove_joined_server(&self, pool: &str, name: &str) -> Result<(), StoreError> {
        let key = self.inner.keys.joined(pool, name);
        self.run(move |inner| async move {
            inner
                .call("remove a joined server", |mut c| {
                    let key = key.clone();
                    async move { c.delete(key, None).await }
                })
                .await
                .map(drop)
        })
    }
}
