//! [`EtcdStore`]: the control store in an etcd v3 cluster (cargo feature `etcd`).
//!
//! Key layout, value encoding, revisions, batch atomicity and compatibility are
//! described in `docs/control-plane.md`; this file is the one implementation of
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

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, KeyValue,
    Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use ferry_model::{ChangeVerdict, Epoch, Hostname, Placement, ServerState, SiteRecord, SiteState};

use crate::{JoinedServer, Store, StoreError};

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
    /// The revision of the last transaction written (or read, if nothing changed).
    pub revision: i64,
    /// Records written (their epoch was newer than the stored one, or the host was new).
    pub changed: usize,
    /// Records that were no-ops (same epoch, same content as stored).
    pub unchanged: usize,
}

/// Attempts of one chunk of [`EtcdStore::apply_sites`] when another writer keeps
/// changing the same keys between our read and our write.
const APPLY_ATTEMPTS: u32 = 16;

/// Attempts of a snapshot whose revision is compacted while it is being paged.
const SNAPSHOT_ATTEMPTS: u32 = 3;

/// A snapshot cuts the rest of a range when more than this many pages remain
/// in it (see `Inner::snapshot_once`).
const SPLIT_PAGES: usize = 4;

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
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut from the leader answers "no leader" at once instead
            // of holding the request until its own timeout.
            .with_require_leader(true);
        let endpoints = cfg.endpoints.clone();
        let client = wait(&runtime, "connect", async move {
            Client::connect(endpoints, Some(options))
                .await
                .map_err(|e| etcd_err("connect", e))
        })?;
        let keys = Keys::new(&cfg.prefix);
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                cfg,
                keys,
                conflicts: AtomicU64::new(0),
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

/// Spawns `fut` on `runtime` and waits for its answer on a plain channel (see the
/// module documentation for why not `block_on`).
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    op: &'static str,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(StoreError::Etcd {
            op,
            source: "the etcd client's runtime stopped before answering".into(),
        })
    })
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

/// One planned write of [`Inner::apply_sites`]: the records of one chunk after
/// judging, and the mod revisions they were judged against.
struct Judged {
    /// `(key, mod_revision seen (0: absent))` of every host of the chunk.
    seen: Vec<(String, i64)>,
    /// `(key, value)` to write.
    puts: Vec<(String, String)>,
    unchanged: usize,
    revision: i64,
}

impl Inner {
    /// Runs one RPC with `client`, retrying while the cluster is unavailable
    /// (a member down, no leader yet) until [`EtcdConfig::request_timeout`].
    /// Every Ferry write is safe to send twice (a put of the same value; a
    /// transaction whose compare fails the second time and is judged again).
    async fn call<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let after = self.cfg.request_timeout;
        let deadline = Instant::now() + after;
        let mut backoff = Duration::from_millis(20);
        let mut last = String::from("no answer");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if is_transient(&e) => last = e.to_string(),
                Ok(Err(e)) => return Err(etcd_err(op, e)),
                Err(_) => {}
            }
            if Instant::now() + backoff >= deadline {
                return Err(StoreError::Unavailable { op, after, last });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(op, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Writes the layout version on an empty prefix, or checks the one there.
    async fn check_layout(&self) -> Result<(), StoreError> {
        let key = self.keys.schema();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), LAYOUT_VERSION.to_string(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.txn("check the layout version", txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let raw = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        let found = std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                corrupt(
                    format!("layout version at {key}"),
                    format!(
                        "{:?} is not a version number",
                        String::from_utf8_lossy(&raw)
                    ),
                )
            })?;
        if found > LAYOUT_VERSION {
            return Err(StoreError::NewerLayout {
                prefix: self.keys.prefix.clone(),
                found,
                supported: LAYOUT_VERSION,
            });
        }
        Ok(())
    }

    async fn snapshot(&self, at: i64) -> Result<Snapshot, StoreError> {
        let mut attempt = 1;
        loop {
            match self.snapshot_once(at).await {
                // The first page's revision was compacted while we paged; a
                // fresh snapshot is at a newer one. (A revision the caller named
                // stays compacted: no retry.)
                Err(StoreError::Etcd { source, .. })
                    if at == 0
                        && attempt < SNAPSHOT_ATTEMPTS
                        && source.to_string().contains("compacted") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Pages through the sites at one revision. etcd (3.4) walks every key from
    /// a page's start to its range end to answer each page (it counts them), so
    /// paging one range of N keys costs O(N^2 / page). When a page says that
    /// much more than [`SPLIT_PAGES`] pages remain, the rest of its range is cut
    /// at keys guessed from the page's own spread ([`split_points`]: about 4,
    /// 16, 64... pages further), and each part is paged on its own, in key
    /// order. A wrong guess only costs a bigger or smaller part, never a key.
    async fn snapshot_once(&self, at: i64) -> Result<Snapshot, StoreError> {
        let (start, end) = self.keys.sites_range();
        let page = self.cfg.page_size.max(1);
        let limit = i64::try_from(page).unwrap_or(i64::MAX);
        let mut revision = at;
        let mut sites = Vec::new();
        let mut decoding = None;
        // Ranges still to read, the next one on top.
        let mut todo = vec![(start.into_bytes(), end.into_bytes())];
        while let Some((mut from, mut to)) = todo.pop() {
            loop {
                let mut resp: GetResponse = self
                    .call("read sites", |mut c| {
                        let (from, to) = (from.clone(), to.clone());
                        let options = GetOptions::new()
                            .with_range(to)
                            .with_limit(limit)
                            .with_revision(revision);
                        async move { c.get(from, Some(options)).await }
                    })
                    .await?;
                if revision <= 0 {
                    // Every later page is read at the first page's revision.
                    revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                }
                let (more, count) = (resp.more(), resp.count());
                let kvs = resp.take_kvs();
                let next = match (kvs.first(), kvs.last()) {
                    (Some(first), Some(last)) if more => {
                        // The next key after the last one read.
                        from = last.key().to_vec();
                        from.push(0);
                        let left = usize::try_from(count)
                            .unwrap_or(0)
                            .saturating_sub(kvs.len());
                        if left > SPLIT_PAGES * page {
                            let points = split_points(first.key(), last.key(), &to);
                            let mut upper = to.clone();
                            for p in points.iter().rev() {
                                todo.push((p.clone(), upper));
                                upper = p.clone();
                            }
                            to = upper;
                        }
                        true
                    }
                    _ => false,
                };
                // Decode this page on another thread while the next one is
                // fetched; pages are joined in order.
                if let Some(previous) = decoding.take() {
                    sites.extend(join_decoded(previous).await?);
                }
                let sites_start = self.keys.sites_start();
                decoding = Some(tokio::task::spawn_blocking(move || {
                    kvs.iter()
                        .map(|kv| decode_site_kv(&sites_start, kv))
                        .collect::<Result<Vec<_>, _>>()
                }));
                if !next {
                    break;
                }
            }
        }
        if let Some(previous) = decoding.take() {
            sites.extend(join_decoded(previous).await?);
        }
        Ok(Snapshot { revision, sites })
    }

    /// Puts (`Some(value)`) and deletes (`None`) in as few transactions as the
    /// limits allow, in order. Nothing is judged.
    async fn write_chunked(
        &self,
        op: &'static str,
        ops: Vec<(String, Option<String>)>,
    ) -> Result<(), StoreError> {
        let chunks = self.chunks(&ops, |(k, v)| k.len() + v.as_ref().map_or(0, String::len));
        let total = ops.len();
        let mut written = 0;
        for chunk in chunks {
            let txn_ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => TxnOp::put(k.as_str(), v.as_str(), None),
                    None => TxnOp::delete(k.as_str(), None::<DeleteOptions>),
                })
                .collect();
            if let Err(e) = self.txn(op, Txn::new().and_then(txn_ops)).await {
                return Err(partial(written, total, e));
            }
            written += chunk.len();
        }
        Ok(())
    }

    /// Cuts `items` into runs that fit one transaction each.
    fn chunks<'a, T>(&self, items: &'a [T], size: impl Fn(&T) -> usize) -> Vec<&'a [T]> {
        let max_ops = self.cfg.max_txn_ops.max(1);
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, item) in items.iter().enumerate() {
            let n = size(item);
            if i > start && (i - start >= max_ops || bytes + n > self.cfg.max_txn_bytes) {
                out.push(&items[start..i]);
                (start, bytes) = (i, 0);
            }
            bytes += n;
        }
        if start < items.len() {
            out.push(&items[start..]);
        }
        out
    }

    async fn apply_sites(&self, records: Vec<(SiteRecord, String)>) -> Result<Applied, StoreError> {
        // All records of a host in one chunk, in their order: the chunks are cut
        // over hosts, each carrying its records.
        let mut by_host: Vec<(String, Vec<(SiteRecord, String)>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for (record, value) in records {
            let key = self.keys.site(record.host.as_str());
            let i = *index.entry(key.clone()).or_insert_with(|| {
                by_host.push((key, Vec::new()));
                by_host.len() - 1
            });
            by_host[i].1.push((record, value));
        }
        let chunks = self.chunks(&by_host, |(k, rs)| {
            k.len() + rs.last().map_or(0, |(_, v)| v.len())
        });
        let mut applied = Applied {
            revision: 0,
            changed: 0,
            unchanged: 0,
        };
        if chunks.len() > 1 {
            // Judge the whole batch before writing any of it.
            for chunk in &chunks {
                self.judge(chunk).await?;
            }
        }
        let total: usize = by_host.len();
        let mut written = 0;
        for chunk in &chunks {
            let done = match self.apply_chunk(chunk).await {
                Ok(done) => done,
                Err(e) => return Err(partial(written, total, e)),
            };
            written += chunk.len();
            applied.revision = done.revision;
            applied.changed += done.puts.len();
            applied.unchanged += done.unchanged;
        }
        Ok(applied)
    }

    /// Judges one chunk and writes it in one transaction guarded by the revisions
    /// it was judged at; judges again when another writer got there first.
    async fn apply_chunk(
        &self,
        chunk: &[(String, Vec<(SiteRecord, String)>)],
    ) -> Result<Judged, StoreError> {
        for _ in 0..APPLY_ATTEMPTS {
            let judged = self.judge(chunk).await?;
            if judged.puts.is_empty() {
                return Ok(judged);
            }
            let compares: Vec<Compare> = judged
                .seen
                .iter()
                .map(|(k, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
                .collect();
            let puts: Vec<TxnOp> = judged
                .puts
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                .collect();
            let resp = self
                .txn("write sites", Txn::new().when(compares).and_then(puts))
                .await?;
            if resp.succeeded() {
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(Judged { revision, ..judged });
            }
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        Err(StoreError::Contended {
            op: "write sites",
            attempts: APPLY_ATTEMPTS,
        })
    }

    /// Reads the chunk's keys at one revision (one transaction of gets) and
    /// applies the epoch rule record by record.
    async fn judge(
        &self,
        chunk: &[(String, Vec<(SiteRecord, String)>)],
    ) -> Result<Judged, StoreError> {
        let gets: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, _)| TxnOp::get(k.as_str(), None))
            .collect();
        let resp = self
            .txn("read sites to judge", Txn::new().and_then(gets))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let stored = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let mut judged = Judged {
            seen: Vec::with_capacity(chunk.len()),
            puts: Vec::new(),
            unchanged: 0,
            revision,
        };
        for ((key, records), kv) in chunk.iter().zip(stored) {
            let mut current = kv.as_ref().map(|kv| self.decode_site(kv)).transpose()?;
            judged
                .seen
                .push((key.clone(), kv.as_ref().map_or(0, KeyValue::mod_revision)));
            let mut put = None;
            for (record, value) in records {
                let verdict = current
                    .as_ref()
                    .map_or(ChangeVerdict::Apply, |c| c.judge(record));
                match verdict {
                    ChangeVerdict::Apply => {
                        current = Some(record.clone());
                        put = Some(value);
                    }
                    ChangeVerdict::NoOp => judged.unchanged += 1,
                    ChangeVerdict::Stale => {
                        return Err(StoreError::Stale {
                            host: record.host.clone(),
                            stored: current.map_or(Epoch(0), |c| c.epoch),
                            incoming: record.epoch,
                        })
                    }
                }
            }
            if let Some(value) = put {
                judged.puts.push((key.clone(), value.clone()));
            }
        }
        Ok(judged)
    }

    fn decode_site(&self, kv: &KeyValue) -> Result<SiteRecord, StoreError> {
        decode_site_kv(&self.keys.sites_start(), kv)
    }

    /// A joined server from a key under `P/pools/`; `None` for the other
    /// keys a later layout may keep there.
    fn decode_joined(&self, kv: &KeyValue) -> Result<Option<JoinedServer>, StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        let what = || format!("joined server key {key:?}");
        let rest = key
            .strip_prefix(&self.keys.pools_start())
            .ok_or_else(|| corrupt(what(), "outside the pools prefix"))?;
        let Some((pool, name)) = rest.split_once("/joined/") else {
            return Ok(None);
        };
        let raw = String::from_utf8_lossy(kv.value());
        let mut f = raw.split(' ');
        let bad = || {
            corrupt(
                what(),
                format!("value {raw:?} is not \"ADDRESS TIER WEIGHT\""),
            )
        };
        let (Some(address), Some(tier), Some(weight), None) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            return Err(bad());
        };
        Ok(Some(JoinedServer {
            pool: unescape(pool),
            name: unescape(name),
            address: address.parse().map_err(|_| bad())?,
            tier: tier.parse().map_err(|_| bad())?,
            weight: weight.parse().map_err(|_| bad())?,
        }))
    }

    fn decode_server_state(
        &self,
        kv: &KeyValue,
    ) -> Result<(String, String, ServerState), StoreError> {
        let key = String::from_utf8_lossy(kv.key());
        let what = || format!("server state key {key:?}");
        let rest = key
            .strip_prefix(&self.keys.servers_start())
            .ok_or_else(|| corrupt(what(), "outside the servers prefix"))?;
        let (pool, server) = rest
            .split_once('/')
            .ok_or_else(|| corrupt(what(), "not POOL/SERVER"))?;
        let (pool, server) = (unescape(pool), unescape(server));
        let raw = String::from_utf8_lossy(kv.value());
        let state = [ServerState::Ready, ServerState::Drain, ServerState::Maint]
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| corrupt(what(), format!("unknown state {raw:?}")))?;
        Ok((pool, server, state))
    }
}

/// Keys after `last`, before `to`, in increasing order, that cut the keys after a
/// page `first..=last` into parts of about 4, 16, 64... pages if the keys
/// continue as densely as in the page. Keys are read as big-endian numbers of
/// 16 bytes starting 8 bytes before the first byte where `first` and `last`
/// differ: the 8 bytes above let the cuts carry into the next prefixes
/// (`site0001999` is followed by `site0002000`, far away in base 256).
fn split_points(first: &[u8], last: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
    let shared = first
        .iter()
        .zip(last)
        .take_while(|(a, b)| a == b)
        .count()
        .saturating_sub(8);
    let window = |key: &[u8]| {
        let mut bytes = [0u8; 16];
        for (b, k) in bytes.iter_mut().zip(key.iter().skip(shared)) {
            *b = *k;
        }
        u128::from_be_bytes(bytes)
    };
    let (f, l) = (window(first), window(last));
    let Some(spread) = l.checked_sub(f).filter(|d| *d > 0) else {
        return Vec::new();
    };
    let mut points = Vec::new();
    let mut step = spread.saturating_mul(4);
    // Each point is above `last` inside the window, so above every key read.
    while let Some(n) = l.checked_add(step) {
        let mut key = last[..shared].to_vec();
        key.extend_from_slice(&n.to_be_bytes());
        if key.as_slice() >= to {
            break;
        }
        points.push(key);
        match step.checked_mul(4) {
            Some(next) => step = next,
            None => break,
        }
    }
    points
}

/// The keys of one prefix.
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }

    fn sites_start(&self) -> String {
        format!("{}/sites/", self.prefix)
    }

    /// `[start, end)` of every site key ('0' is the byte after '/').
    fn sites_range(&self) -> (String, String) {
        (self.sites_start(), format!("{}/sites0", self.prefix))
    }

    fn site(&self, host: &str) -> String {
        format!("{}/sites/{host}", self.prefix)
    }

    fn servers_start(&self) -> String {
        format!("{}/servers/", self.prefix)
    }

    fn servers_range(&self) -> (String, String) {
        (self.servers_start(), format!("{}/servers0", self.prefix))
    }

    /// Pools' run-time state: `P/pools/<pool>/joined/<server>` so far.
    fn pools_start(&self) -> String {
        format!("{}/pools/", self.prefix)
    }

    fn pools_range(&self) -> (String, String) {
        (self.pools_start(), format!("{}/pools0", self.prefix))
    }

    fn joined(&self, pool: &str, name: &str) -> String {
        format!(
            "{}/pools/{}/joined/{}",
            self.prefix,
            escape(pool),
            escape(name)
        )
    }

    fn server(&self, pool: &str, server: &str) -> String {
        format!(
            "{}/servers/{}/{}",
            self.prefix,
            escape(pool),
            escape(server)
        )
    }
}

/// `%` and `/` as `%25` and `%2F`, so a name never splits the key.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (ch, len) = if tail.starts_with("%2F") {
            ('/', 3)
        } else if tail.starts_with("%25") {
            ('%', 3)
        } else {
            ('%', 1)
        };
        out.push(ch);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

fn state_letter(state: SiteState) -> char {
    match state {
        SiteState::Active => 'a',
        SiteState::Maintenance => 'm',
        SiteState::Frozen => 'f',
    }
}

// Names every variant, so a new state in ferry-model fails to read back and the
// conformance suite says so.
fn state_from_letter(letter: &str) -> Option<SiteState> {
    [SiteState::Active, SiteState::Maintenance, SiteState::Frozen]
        .into_iter()
        .find(|s| letter.len() == 1 && letter.starts_with(state_letter(*s)))
}

/// A site's key and value; `sites_start` is `P/sites/`.
fn decode_site_kv(sites_start: &str, kv: &KeyValue) -> Result<SiteRecord, StoreError> {
    let key = kv.key();
    let raw_host = key
        .strip_prefix(sites_start.as_bytes())
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| {
            corrupt(
                format!("site key {:?}", String::from_utf8_lossy(key)),
                "outside the sites prefix, or not UTF-8",
            )
        })?;
    decode_site(raw_host, kv.value())
}

/// The records of a page decoded by `spawn_blocking`.
async fn join_decoded(
    task: tokio::task::JoinHandle<Result<Vec<SiteRecord>, StoreError>>,
) -> Result<Vec<SiteRecord>, StoreError> {
    task.await.map_err(|e| StoreError::Etcd {
        op: "decode sites",
        source: e.into(),
    })?
}

/// `"<epoch> <state letter> <placement>"`: the placement last, so a name with
/// spaces needs no quoting.
fn encode_site(record: &SiteRecord) -> Result<String, StoreError> {
    let placement = record.placement.to_string();
    if Placement::parse(&placement).as_ref() != Some(&record.placement) {
        return Err(StoreError::Unstorable {
            host: record.host.clone(),
            why: format!("placement {placement:?} would not read back"),
        });
    }
    Ok(format!(
        "{} {} {placement}",
        record.epoch.0,
        state_letter(record.state)
    ))
}

fn decode_site(raw_host: &str, value: &[u8]) -> Result<SiteRecord, StoreError> {
    let what = || format!("site {raw_host:?}");
    let host = Hostname::parse(raw_host).map_err(|e| corrupt(what(), e.to_string()))?;
    if host.as_str() != raw_host {
        return Err(corrupt(
            what(),
            format!("host is not in normal form (expected {host:?})"),
        ));
    }
    let text = std::str::from_utf8(value).map_err(|e| corrupt(what(), e.to_string()))?;
    let mut fields = text.splitn(3, ' ');
    let (Some(epoch), Some(state), Some(placement)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(corrupt(
            what(),
            format!("value {text:?} is not \"EPOCH STATE PLACEMENT\""),
        ));
    };
    let epoch = epoch
        .parse::<u64>()
        .map_err(|_| corrupt(what(), format!("epoch {epoch:?} is not a number")))?;
    let state = state_from_letter(state)
        .ok_or_else(|| corrupt(what(), format!("unknown state {state:?}")))?;
    let placement = Placement::parse(placement).ok_or_else(|| {
        corrupt(
            what(),
            format!("placement {placement:?} is not pool:NAME or remote:NAME"),
        )
    })?;
    Ok(SiteRecord {
        host,
        placement,
        state,
        epoch: Epoch(epoch),
    })
}

/// A member down, no leader, a connection refused or reset: worth retrying
/// within the request timeout. Anything else (a refused request, a compacted
/// revision) is final.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) && !s.message().contains("too many operations")
                && !s.message().contains("request is too large")
        }
        _ => false,
    }
}

fn etcd_err(op: &'static str, e: etcd_client::Error) -> StoreError {
    StoreError::Etcd {
        op,
        source: Box::new(e),
    }
}

fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: what.into(),
        detail: detail.into(),
    }
}

/// `e` as the failure of a batch of which `written` of `total` items are already
/// in etcd; plain `e` when none are.
fn partial(written: usize, total: usize, e: StoreError) -> StoreError {
    if written == 0 {
        e
    } else {
        StoreError::Partial {
            written,
            total,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, placement: &str, state: SiteState, epoch: u64) -> SiteRecord {
        SiteRecord {
            host: Hostname::parse(host).unwrap(),
            placement: Placement::parse(placement).unwrap(),
            state,
            epoch: Epoch(epoch),
        }
    }

    #[test]
    fn site_values_round_trip_and_stay_small() {
        for r in [
            rec("a.example.com", "pool:web", SiteState::Active, 0),
            rec("*.b.example", "remote:dc 2", SiteState::Frozen, u64::MAX),
            rec("c.example", "pool:a:b", SiteState::Maintenance, 42),
        ] {
            let v = encode_site(&r).unwrap();
            assert_eq!(decode_site(r.host.as_str(), v.as_bytes()).unwrap(), r);
        }
        let v = encode_site(&rec("a.example.com", "pool:web", SiteState::Frozen, 42)).unwrap();
        assert_eq!(v, "42 f pool:web");
    }

    #[test]
    fn corrupt_values_are_named() {
        for bad in [
            "",
            "1 a",
            "x a pool:web",
            "1 z pool:web",
            "1 a web",
            "1 af pool:w",
        ] {
            let err = decode_site("a.example.com", bad.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { what, .. } if what.contains("a.example.com")),
                "{bad:?}: {err}"
            );
        }
        assert!(decode_site("A.example.com", b"1 a pool:web").is_err());
    }

    #[test]
    fn split_points_grow_and_stay_inside_the_range() {
        let first = b"/p/sites/site0001000.example.com";
        let last = b"/p/sites/site0001999.example.com";
        let to = b"/p/sites0";
        let points = split_points(first, last, to);
        assert!(!points.is_empty());
        let mut prev = last.to_vec();
        for p in &points {
            assert!(p.as_slice() > prev.as_slice() && p.as_slice() < to.as_slice());
            prev = p.clone();
        }
        // Cuts go past the page's shared prefix, up to the end of the range.
        assert!(points
            .iter()
            .any(|p| p.as_slice() > b"/p/sites/site0002".as_slice()));
        assert!(points
            .iter()
            .any(|p| p.as_slice() > b"/p/sites/sitf".as_slice()));
        // No spread in the window, no cut.
        assert!(split_points(b"/a", b"/a", to).is_empty());
        let near = b"/p/sites/site0002";
        assert!(split_points(first, last, near)
            .iter()
            .all(|p| p.as_slice() > last.as_slice() && p.as_slice() < near.as_slice()));
    }

    #[test]
    fn server_names_are_escaped_in_keys() {
        let keys = Keys::new("/ferry/");
        assert_eq!(keys.server("a/b", "c%d"), "/ferry/servers/a%2Fb/c%25d");
        assert_eq!(unescape("a%2Fb"), "a/b");
        assert_eq!(unescape("c%25d"), "c%d");
        assert_eq!(unescape(&escape("%2F/")), "%2F/");
    }
}
