//! Database tunnels: plain TCP port forwarding from a local address to a
//! database server, re-pointable at run time, that learns who uses which
//! database from the MySQL logins passing through.
//!
//! - [`Tunnels`]: every configured tunnel by name; bound and swapped as a whole
//!   by [`Tunnels::prepare`] + [`Tunnels::commit`] at start and reload.
//! - A connection reads its upstream once, when it opens: re-pointing a tunnel
//!   (admin API) sends new connections elsewhere and leaves open ones alone.
//! - Observation (`mysql_handshake`) reads copies of the bytes after they were
//!   read and before they are written on: it never changes or holds the stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use ferry_admin_api::tunnels as api;
use ferry_config::{Config, TunnelSpec};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::galera_pool::GaleraPool;
use crate::mysql_handshake::{Login, Observer, Verdict};
use crate::ProxyError;

/// How often the observed-uses file is rewritten when something new was seen.
const USES_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// Counters of one tunnel, kept across reloads while its name stays.
#[derive(Default)]
pub(crate) struct TunnelStats {
    pub connections: AtomicU64,
    pub open: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Connections refused because no Galera node was usable.
    pub no_usable_node: AtomicU64,
    /// Logins by outcome, in [`OUTCOMES`] order.
    logins: [AtomicU64; 5],
}

/// How a connection's login ended, as counted in metrics and the admin API.
const OUTCOMES: [&str; 5] = ["accepted", "refused", "tls", "unobserved", "off"];

impl TunnelStats {
    fn login(&self, outcome: usize) {
        self.logins[outcome].fetch_add(1, Ordering::Relaxed);
    }
}

/// A metric family of per-tunnel values: name, type, help, value.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TunnelStats) -> u64,
);

/// Client address -> user -> database (`None`: none chosen) -> accepted logins.
type UseCounts = BTreeMap<IpAddr, BTreeMap<String, BTreeMap<Option<String>, u64>>>;

pub(crate) struct Tunnel {
    pub spec: ArcSwap<TunnelSpec>,
    /// Where new connections go; the admin API may change it.
    pub upstream: ArcSwap<String>,
    pub stats: TunnelStats,
    uses: Mutex<UseCounts>,
    accept: Mutex<Option<TunnelListener>>,
    /// The Galera check and the sender that stops it (dropping it does).
    galera: Mutex<Option<(Arc<GaleraPool>, watch::Sender<bool>)>>,
}

/// A tunnel's running listener (its accept loop is `listen.rs`'s); dropping
/// it stops accepting, open connections go on.
struct TunnelListener {
    configured: SocketAddr,
    bound: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Drop for TunnelListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Tunnel {
    pub fn bound(&self) -> Option<SocketAddr> {
        self.accept.lock().as_ref().map(|a| a.bound)
    }

    fn galera_pool(&self) -> Option<Arc<GaleraPool>> {
        self.galera.lock().as_ref().map(|(p, _)| Arc::clone(p))
    }

    /// Starts the Galera check when the spec has one and it is not running;
    /// stops it when the spec has none.
    fn sync_galera(self: &Arc<Self>, shutdown: &watch::Receiver<bool>) {
        let wanted = self.spec.load().galera.is_some();
        let mut slot = self.galera.lock();
        if !wanted {
            // Dropping the sender stops the loop.
            drop(slot.take());
            return;
        }
        if slot.is_some() {
            return;
        }
        let pool = GaleraPool::new();
        let (stop, stop_rx) = watch::channel(false);
        let tunnel = Arc::clone(self);
        pool.spawn(
            move || {
                let spec = tunnel.spec.load();
                let check = spec.galera.clone()?;
                let first = tunnel.upstream.load().to_string();
                let mut order = vec![first.clone()];
                order.extend(check.nodes.iter().filter(|n| **n != first).cloned());
                Some((order, check, spec.connect_timeout))
            },
            stop_rx,
            shutdown.clone(),
        );
        *slot = Some((pool, stop));
    }

    /// The tunnel as the admin API shows it (`GET /v1/tunnels/{tunnel}`).
    pub fn view(&self) -> api::Tunnel {
        let spec = self.spec.load();
        let s = &self.stats;
        api::Tunnel {
            name: spec.name.clone(),
            listen: self.bound().map(|a| a.to_string()),
            upstream: self.upstream.load().to_string(),
            configured_upstream: spec.upstream.clone(),
            server: spec.server.clone(),
            observe: spec.observe,
            connections_total: s.connections.load(Ordering::Relaxed),
            open_connections: s.open.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            bytes_to_upstream: s.bytes_to_upstream.load(Ordering::Relaxed),
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
            idle_closed: s.idle_closed.load(Ordering::Relaxed),
            no_usable_node: s.no_usable_node.load(Ordering::Relaxed),
            logins: OUTCOMES
                .iter()
                .zip(&s.logins)
                .map(|(k, v)| ((*k).to_string(), v.load(Ordering::Relaxed)))
                .collect(),
            galera: self.galera_pool().map(|p| p.view()),
        }
    }

    /// Every (client, user, database) seen, with its count of accepted
    /// logins (`GET /v1/tunnels/{tunnel}/uses`).
    pub fn uses_view(&self) -> api::TunnelUses {
        let uses = self
            .uses
            .lock()
            .iter()
            .flat_map(|(client, users)| {
                users.iter().flat_map(move |(user, dbs)| {
                    dbs.iter().map(move |(database, n)| api::TunnelUse {
                        client: client.to_string(),
                        user: user.clone(),
                        database: database.clone(),
                        connections: *n,
                    })
                })
            })
            .collect();
        let spec = self.spec.load();
        api::TunnelUses {
            tunnel: spec.name.clone(),
            server: spec.server.clone(),
            uses,
        }
    }

    /// Distinct (`database@server`, client) of accepted logins that named a database.
    fn use_pairs(&self) -> BTreeSet<(String, String)> {
        let server = self.spec.load().server.clone();
        let mut pairs = BTreeSet::new();
        for (client, users) in self.uses.lock().iter() {
            for db in users.values().flat_map(|d| d.keys()).flatten() {
                pairs.insert((format!("{db}@{server}"), client.to_string()));
            }
        }
        pairs
    }

    fn record(&self, client: IpAddr, login: Login) -> bool {
        let mut uses = self.uses.lock();
        let dbs = uses
            .entry(client)
            .or_default()
            .entry(login.user)
            .or_default();
        let fresh = !dbs.contains_key(&login.database);
        *dbs.entry(login.database).or_default() += 1;
        fresh
    }
}

/// Tunnels bound for a config but not yet serving (see [`Tunnels::commit`]).
pub(crate) struct Prepared {
    fresh: HashMap<String, (TcpListener, SocketAddr)>,
}

/// Every tunnel of the running config.
pub(crate) struct Tunnels {
    map: Mutex<BTreeMap<String, Arc<Tunnel>>>,
    uses_file: Mutex<Option<PathBuf>>,
    /// (database, client) lines found in the uses file when it was first
    /// configured: what earlier runs (or removed tunnels) saw stays in the
    /// file, since the planner needs every dependency ever observed.
    carried: Mutex<BTreeSet<(String, String)>>,
    /// Bumped when a new (client, user, database) is seen; the writer compares.
    generation: Arc<AtomicU64>,
    /// The router's connection cap and the metrics of the shared accept
    /// loop (`listen.rs`), set once at start.
    accept_limits: Mutex<Option<(crate::listen::Cap, Arc<crate::metrics::Metrics>)>>,
}

impl Tunnels {
    pub fn new() -> Arc<Tunnels> {
        Arc::new(Tunnels {
            map: Mutex::new(BTreeMap::new()),
            uses_file: Mutex::new(None),
            carried: Mutex::new(BTreeSet::new()),
            generation: Arc::new(AtomicU64::new(0)),
            accept_limits: Mutex::new(None),
        })
    }

    /// Tunnel connections count against the router's connection cap.
    pub fn set_accept_limits(
        &self,
        cap: crate::listen::Cap,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        *self.accept_limits.lock() = Some((cap, metrics));
    }

    pub fn get(&self, name: &str) -> Option<Arc<Tunnel>> {
        self.map.lock().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        self.map.lock().values().cloned().collect()
    }

    /// Binds the listen addresses `config` adds (or moves), so a port conflict
    /// refuses the start or reload before anything changed.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, ProxyError> {
        let map = self.map.lock();
        let mut fresh = HashMap::new();
        for spec in &config.tunnels {
            let same = map.get(&spec.name).is_some_and(|t| {
                t.accept
                    .lock()
                    .as_ref()
                    .is_some_and(|a| a.configured == spec.listen)
            });
            if !same {
                let l = crate::listen::bind(spec.listen)?;
                let bound = l.local_addr().map_err(|source| ProxyError::Bind {
                    addr: spec.listen,
                    source,
                })?;
                fresh.insert(spec.name.clone(), (l, bound));
            }
        }
        Ok(Prepared { fresh })
    }

    /// Applies `config`: removes tunnels it no longer names (their open
    /// connections finish on their own), adds new ones, and updates the rest.
    /// An upstream changed through the admin API survives a reload that left
    /// the tunnel's configured upstream as it was.
    pub fn commit(&self, prepared: Prepared, config: &Config, shutdown: &watch::Receiver<bool>) {
        let mut prepared = prepared.fresh;
        let mut map = self.map.lock();
        let mut removed = Vec::new();
        map.retain(|name, t| {
            let keep = config.tunnels.iter().any(|t| &t.name == name);
            if !keep {
                removed.push(Arc::clone(t));
                // The accept loop and the Galera check hold the tunnel too:
                // stop them explicitly (dropping the handles sends the stop).
                drop(t.accept.lock().take());
                drop(t.galera.lock().take());
                tracing::info!(tunnel = %name, "tunnel removed");
            }
            keep
        });
        for spec in &config.tunnels {
            let tunnel = match map.get(&spec.name) {
                Some(t) => {
                    let old = t.spec.load_full();
                    if old.upstream != spec.upstream {
                        t.upstream.store(Arc::new(spec.upstream.clone()));
                    }
                    t.spec.store(Arc::new(spec.clone()));
                    Arc::clone(t)
                }
                None => {
                    let t = Arc::new(Tunnel {
                        spec: ArcSwap::from_pointee(spec.clone()),
                        upstream: ArcSwap::from_pointee(spec.upstream.clone()),
                        stats: TunnelStats::default(),
                        uses: Mutex::new(BTreeMap::new()),
                        accept: Mutex::new(None),
                        galera: Mutex::new(None),
                    });
                    map.insert(spec.name.clone(), Arc::clone(&t));
                    t
                }
            };
            tunnel.sync_galera(shutdown);
            if let Some((listener, bound)) = prepared.remove(&spec.name) {
                let (stop, stop_rx) = watch::channel(false);
                // Replacing the loop drops the old one, which stops it.
                *tunnel.accept.lock() = Some(TunnelListener {
                    configured: spec.listen,
                    bound,
                    stop,
                });
                tracing::info!(tunnel = %spec.name, listen = %bound, upstream = %tunnel.upstream.load(), "tunnel ready");
                self.spawn_accept(&tunnel, listener, stop_rx, shutdown.clone());
            }
        }
        // Removed tunnels' uses stay in the export.
        for t in &removed {
            self.carried.lock().extend(t.use_pairs());
        }
        let mut file = self.uses_file.lock();
        if *file != config.router.observed_uses_file {
            if let Some(path) = &config.router.observed_uses_file {
                self.carried.lock().extend(read_uses_file(path));
            }
            file.clone_from(&config.router.observed_uses_file);
        }
    }

    fn spawn_accept(
        &self,
        tunnel: &Arc<Tunnel>,
        listener: TcpListener,
        stop: watch::Receiver<bool>,
        shutdown: watch::Receiver<bool>,
    ) {
        let tunnel = Arc::clone(tunnel);
        let generation = Arc::clone(&self.generation);
        let (caps, metrics) = match self.accept_limits.lock().clone() {
            Some((cap, metrics)) => (vec![cap], metrics),
            None => (Vec::new(), Arc::default()),
        };
        // The shared accept loop: connection cap, back-off on accept errors.
        crate::listen::spawn(
            crate::stats::ListenerKind::Tunnel,
            listener,
            caps,
            metrics,
            Some(stop),
            shutdown,
            move |stream, peer| {
                let tunnel = Arc::clone(&tunnel);
                let generation = Arc::clone(&generation);
                async move { serve(&tunnel, stream, peer, &generation).await }
            },
        );
    }

    /// Distinct (database, client) pairs of accepted logins that named a
    /// database, as the inventory's `observed_uses.jsonl` lines.
    pub fn observed_uses_lines(&self) -> Vec<String> {
        let mut pairs = self.carried.lock().clone();
        for t in self.all() {
            pairs.extend(t.use_pairs());
        }
        pairs
            .into_iter()
            .map(|(database, client)| json!({ "database": database, "client": client }).to_string())
            .collect()
    }

    pub fn uses_file(&self) -> Option<PathBuf> {
        self.uses_file.lock().clone()
    }

    /// Writes the observed uses to the configured file (temp file + rename,
    /// so `ferry plan` never reads half a file). Returns the path and line count.
    pub fn export(&self) -> io::Result<(Option<PathBuf>, Vec<String>)> {
        let lines = self.observed_uses_lines();
        let Some(path) = self.uses_file() else {
            return Ok((None, lines));
        };
        write_atomically(&path, &lines)?;
        Ok((Some(path), lines))
    }

    /// Rewrites the observed-uses file whenever something new was seen, until
    /// `shutdown`; then once more.
    pub fn spawn_writer(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let tunnels = Arc::clone(self);
        tokio::spawn(async move {
            let mut written = 0;
            loop {
                let stop = tokio::select! {
                    _ = tokio::time::sleep(USES_FLUSH_INTERVAL) => false,
                    _ = shutdown.changed() => true,
                };
                let now = tunnels.generation.load(Ordering::Acquire);
                if now != written {
                    match tunnels.export() {
                        Ok(_) => written = now,
                        Err(e) => tracing::warn!(error = %e, "cannot write the observed uses file"),
                    }
                }
                if stop {
                    break;
                }
            }
        });
    }

    pub fn render_metrics(&self, out: &mut String) {
        let tunnels = self.all();
        let series: [Series; 7] = [
            (
                "ferry_tunnel_connections_total",
                "counter",
                "Connections accepted by a database tunnel.",
                |s| s.connections.load(Ordering::Relaxed),
            ),
            (
                "ferry_tunnel_open_connections",
                "gauge",
                "Database tunnel connections open.",
                |s| s.open.load(Ordering::Relaxed),
            ),
            (
                "ferry_tunnel_connect_failures_total",
                "counter",
                "Tunnel connections whose upstream could not be reached.",
                |s| s.connect_failures.load(Ordering::Relaxed),
            ),
            (
                "ferry_tunnel_idle_closed_total",
                "counter",
                "Tunnel connections closed after idle_timeout.",
                |s| s.idle_closed.load(Ordering::Relaxed),
            ),
            (
                "ferry_tunnel_no_usable_node_total",
                "counter",
                "Tunnel connections refused because no Galera node was usable.",
                |s| s.no_usable_node.load(Ordering::Relaxed),
            ),
            (
                "ferry_tunnel_bytes_to_upstream_total",
                "counter",
                "Bytes forwarded from clients to the database server.",
                |s| s.bytes_to_upstream.load(Ordering::Relaxed),
            ),
            (
                "ferry_tunnel_bytes_to_client_total",
                "counter",
                "Bytes forwarded from the database server to clients.",
                |s| s.bytes_to_client.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for t in &tunnels {
                let tunnel = &t.spec.load().name;
                let _ = writeln!(out, "{name}{{tunnel=\"{tunnel}\"}} {}", get(&t.stats));
            }
        }
        let name = "ferry_tunnel_logins_total";
        let _ = writeln!(out, "# HELP {name} MySQL logins through a tunnel, by outcome (off: observe = false).\n# TYPE {name} counter");
        for t in &tunnels {
            let tunnel = &t.spec.load().name;
            for (outcome, v) in OUTCOMES.iter().zip(&t.stats.logins) {
                let _ = writeln!(
                    out,
                    "{name}{{tunnel=\"{tunnel}\",outcome=\"{outcome}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        let name = "ferry_tunnel_galera_node_usable";
        let _ = writeln!(out, "# HELP {name} 1 if the last check found the Galera node usable (Synced, primary, ready).\n# TYPE {name} gauge");
        for t in &tunnels {
            let Some(pool) = t.galera_pool() else {
                continue;
            };
            let tunnel = &t.spec.load().name;
            for n in pool.node_states() {
                let _ = writeln!(
                    out,
                    "{name}{{tunnel=\"{tunnel}\",node=\"{}\"}} {}",
                    n.addr,
                    u8::from(n.usable)
                );
            }
        }
    }
}

/// The (database, client) lines of an existing uses file; a missing file or a
/// line that is not ours is skipped (the file is rewritten whole anyway).
fn read_uses_file(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<api::ObservedUse>(l).ok())
        .map(|u| (u.database, u.client))
        .collect()
}

/// Replaces `path` whole: a temporary file with a name no one can guess or
/// plant in advance (pid, time, counter; created exclusively, so an existing
/// file or symlink there is never followed), synced, renamed over the old
/// one, and the rename made durable. A reader (or `ferry plan`) sees the old
/// file or the new one, never half of one, even across a power cut.
fn write_atomically(path: &Path, lines: &[String]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{nanos:x}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// One client connection: connect to the tunnel's current upstream, then copy
/// both ways (`deadline::splice`: half-close passed on) until both sides are
/// done or nothing moved for `idle_timeout`.
async fn serve(tunnel: &Tunnel, client: TcpStream, peer: SocketAddr, generation: &AtomicU64) {
    let stats = &tunnel.stats;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _open = crate::stats::OpenGauge::enter(&stats.open);
    let spec = tunnel.spec.load_full();
    // Read once: a re-point (or the Galera check choosing another node)
    // later does not move this connection.
    let upstream = match tunnel.galera_pool() {
        None => tunnel.upstream.load_full(),
        Some(pool) => match pool.pick(spec.connect_timeout).await {
            Some(node) => node,
            None => {
                stats.no_usable_node.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tunnel = %spec.name, "no usable Galera node: connection refused");
                return;
            }
        },
    };
    let server = match tokio::time::timeout(
        spec.connect_timeout,
        TcpStream::connect(upstream.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tunnel = %spec.name, %upstream, error = %e, "tunnel upstream refused the connection");
            return;
        }
        Err(_) => {
            stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tunnel = %spec.name, %upstream, timeout = ?spec.connect_timeout, "tunnel upstream connect timed out");
            return;
        }
    };
    // Database traffic is small request/response packets: Nagle would add
    // latency to every query.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if !spec.observe {
        stats.login(4);
    }
    let watch = Watch {
        observer: Mutex::new(spec.observe.then(Observer::default)),
        observing: AtomicBool::new(spec.observe),
        tunnel,
        peer: peer.ip(),
        generation,
    };
    let mut client = Tap {
        inner: client,
        watch: &watch,
        from_client: true,
        bytes: &stats.bytes_to_upstream,
    };
    let mut server = Tap {
        inner: server,
        watch: &watch,
        from_client: false,
        bytes: &stats.bytes_to_client,
    };
    if crate::deadline::splice(&mut client, &mut server, spec.idle_timeout).await {
        stats.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
    // A connection that closed before its login was decided is unobserved.
    if watch.observing.load(Ordering::Acquire) {
        stats.login(3);
    }
}

/// Counts a decided login and records an accepted one as a use.
fn decide(watch: &Watch<'_>, verdict: Verdict) {
    let stats = &watch.tunnel.stats;
    match verdict {
        Verdict::Accepted(login) => {
            stats.login(0);
            if watch.tunnel.record(watch.peer, login) {
                watch.generation.fetch_add(1, Ordering::Release);
            }
        }
        Verdict::Refused(_) => stats.login(1),
        Verdict::Tls => stats.login(2),
        Verdict::Unobserved | Verdict::Pending => stats.login(3),
    }
}

/// What both directions of a connection share.
struct Watch<'a> {
    observer: Mutex<Option<Observer>>,
    /// False once the login is decided, so later reads skip the lock.
    observing: AtomicBool,
    tunnel: &'a Tunnel,
    peer: IpAddr,
    generation: &'a AtomicU64,
}

impl Watch<'_> {
    fn observe(&self, from_client: bool, bytes: &[u8]) {
        if !self.observing.load(Ordering::Acquire) {
            return;
        }
        let mut guard = self.observer.lock();
        let Some(o) = guard.as_mut() else { return };
        if from_client {
            o.client_bytes(bytes);
        } else {
            o.server_bytes(bytes);
        }
        if o.is_done() {
            let verdict = o.verdict().clone();
            *guard = None;
            self.observing.store(false, Ordering::Release);
            drop(guard);
            decide(self, verdict);
        }
    }
}

/// A stream whose reads are counted and shown to the observer.
/// Writes pass straight through.
struct Tap<'a> {
    inner: TcpStream,
    watch: &'a Watch<'a>,
    from_client: bool,
    bytes: &'a AtomicU64,
}

impl AsyncRead for Tap<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.bytes.fetch_add(new.len() as u64, Ordering::Relaxed);
            this.watch.observe(this.from_client, new);
        }
        r
    }
}

impl AsyncWrite for Tap<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel() -> Tunnel {
        let spec = TunnelSpec {
            name: "sql002".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: "10.0.0.1:3306".into(),
            server: "sql002-1".into(),
            observe: true,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            galera: None,
        };
        let t = Tunnel {
            spec: ArcSwap::from_pointee(spec),
            upstream: ArcSwap::from_pointee("10.0.0.2:3306".to_string()),
            stats: TunnelStats::default(),
            uses: Mutex::new(BTreeMap::new()),
            accept: Mutex::new(None),
            galera: Mutex::new(None),
        };
        t.stats.connections.store(7, Ordering::Relaxed);
        t.stats.open.store(2, Ordering::Relaxed);
        t.stats.bytes_to_client.store(900, Ordering::Relaxed);
        t.stats.no_usable_node.store(1, Ordering::Relaxed);
        t.stats.login(0);
        t.stats.login(0);
        t.stats.login(3);
        for (client, user, db) in [
            ("127.0.0.1", "app", None),
            ("127.0.0.1", "app", Some("shopdb")),
            ("10.9.9.9", "report", Some("blogdb")),
            ("127.0.0.1", "app", Some("shopdb")),
        ] {
            t.record(
                client.parse().unwrap(),
                Login {
                    user: user.into(),
                    database: db.map(str::to_string),
                },
            );
        }
        t
    }

    /// The answers keep the fields and values routers have always sent.
    #[test]
    fn the_admin_views_keep_their_wire_shape() {
        let t = tunnel();
        let (stop, _stop_rx) = watch::channel(false);
        *t.galera.lock() = Some((GaleraPool::new(), stop));
        assert_eq!(
            serde_json::to_value(t.view()).unwrap(),
            json!({
                "name": "sql002", "listen": null, "upstream": "10.0.0.2:3306",
                "configured_upstream": "10.0.0.1:3306", "server": "sql002-1",
                "observe": true, "connections_total": 7, "open_connections": 2,
                "connect_failures": 0, "bytes_to_upstream": 0, "bytes_to_client": 900,
                "idle_closed": 0, "no_usable_node": 1,
                "logins": {"accepted": 2, "refused": 0, "tls": 0, "unobserved": 1, "off": 0},
                "galera": {"chosen": null, "nodes": []},
            })
        );
        assert_eq!(
            serde_json::to_value(t.uses_view()).unwrap(),
            json!({
                "tunnel": "sql002", "server": "sql002-1",
                "uses": [
                    {"client": "10.9.9.9", "user": "report", "database": "blogdb", "connections": 1},
                    {"client": "127.0.0.1", "user": "app", "database": null, "connections": 1},
                    {"client": "127.0.0.1", "user": "app", "database": "shopdb", "connections": 2},
                ],
            })
        );
    }
}
