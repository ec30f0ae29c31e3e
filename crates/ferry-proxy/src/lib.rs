//! `ferry proxy`: the router ("predictor") that sends each site's traffic to
//! wherever the site lives right now.
//!
//! - [`Proxy`]: started from a validated [`ferry_config::Config`]; binds the
//!   traffic listeners (HTTP/1.1 and h2c) and the admin API, runs health checks,
//!   reloads without closing listeners, shuts down gracefully.
//! - TLS termination (`tls = true` listeners, `[tls]`): certificates chosen by
//!   SNI from `ferry_tls::CertStore`, the handshake and ALPN in `tls.rs`.
//! - Database tunnels (`[[tunnels]]`: TCP forwarding that learns who uses which
//!   database from MySQL logins) are in `tunnel.rs` and `mysql_handshake.rs`.
//! - The life of a request is in `forward.rs`; the admin API (JSON, bearer
//!   token, described in `docs/admin-api.yaml`) in `admin.rs`; site placements,
//!   states and epochs persist through a [`ferry_store::Store`].

#![forbid(unsafe_code)]

mod accesslog;
mod admin;
mod answers;
mod body;
mod client_hello;
mod control;
mod deadline;
mod forward;
mod galera;
mod galera_pool;
mod h1_server;
mod headers;
mod health;
mod hold;
mod joined;
mod linger;
mod listen;
mod metrics;
mod mysql_handshake;
mod passthrough;
mod proxy_protocol;
mod scale;
mod server;
mod settle;
mod state;
mod stats;
mod straggler;
mod tls;
mod tunnel;
mod tunnel_upgrade;
mod upstream;
mod upstream_h1;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ferry_config::Config;
use ferry_model::{Hostname, Placement};
use ferry_store::{SqliteStore, Store, StoreError};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The ClientHello reader of the SNI passthrough listeners, public for the
/// fuzz target (`fuzz/fuzz_targets/client_hello.rs`).
pub use client_hello::{Hello, HelloError, HelloParser};
/// The Galera node check of database tunnels (`[tunnels.galera]`), public
/// for its test on a real cluster (`tests/galera.rs`).
pub use galera::{galera_state, usable, GaleraError, GaleraNode, WsrepState};
/// Raises the process's open-file limit to its hard limit (`ferry proxy`
/// does at start).
pub use listen::raise_nofile_limit;
/// The database tunnel's login observer, for its fuzz target.
#[doc(hidden)]
pub use mysql_handshake::observe_in_chunks;
pub use state::ReloadReport;

use server::{ConnCount, ListenerHandle};
use state::Shared;

/// What gives the allocator's freed pages back to the system now; set once by
/// the binary ([`set_release_freed`]), none by default.
static RELEASE_FREED: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the router calls after a bulk change of its site table (the
/// start's seeding, an admin batch of many sites): the `ferry` binary gives
/// its allocator's collection, which returns the pages the change's
/// temporary buffers held (the file read, the parsed list, the request
/// bodies). Without it they stay resident until the allocator's own delayed
/// purge, which runs only on later allocator activity. Called once; later
/// calls are ignored.
pub fn set_release_freed(release: fn()) {
    let _ = RELEASE_FREED.set(release);
}

/// Gives freed pages back, if the binary said how (never on a request's path:
/// only after a bulk change).
pub(crate) fn release_freed() {
    if let Some(release) = RELEASE_FREED.get() {
        release();
    }
}

/// One traffic listener's sockets, one per worker runtime.
type ListenerGroup = Vec<(tokio::runtime::Handle, tokio::net::TcpListener)>;

/// Why the proxy could not start, reload or apply a change.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ferry_config::ConfigError),
    #[error("site {host}: placement {placement} names no configured pool or remote")]
    UnknownPlacement {
        host: Hostname,
        placement: Placement,
    },
    #[error("cannot seed the site table: {0}")]
    Seed(String),
    #[error(transparent)]
    SitesFile(#[from] ferry_config::SitesFileError),
    #[error("access log {}: {source}", path.display())]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no config file to reload from (the proxy was started from an in-memory config)")]
    NoConfigFile,
    #[error("tls: {0}")]
    Tls(#[from] ferry_tls::TlsError),
    #[error("tls: indexing the certificate directory stopped: {0}")]
    TlsIndexing(String),
    #[error("cannot start {threads} worker thread(s): {source}")]
    Workers {
        threads: usize,
        source: std::io::Error,
    },
}

/// A running router.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<ListenerHandle>>,
    admin_addr: Option<SocketAddr>,
    health: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
    conns: Arc<ConnCount>,
    tunnels: Arc<tunnel::Tunnels>,
    /// `[[passthrough]]` listeners (SNI routing without terminating TLS).
    passthroughs: passthrough::Passthroughs,
    /// Certificates and TLS settings of `tls = true` listeners (`[tls]`).
    tls: Arc<ArcSwapOption<tls::TlsState>>,
    /// Serialises reloads (SIGHUP and the admin API may race).
    reloading: tokio::sync::Mutex<()>,
    /// `[router] max_connections`: every traffic, passthrough and tunnel
    /// connection holds a slot (fixed at start).
    traffic_cap: listen::Cap,
    /// `[pool.scale]` policies: their state, for the admin API and metrics.
    scale: Arc<scale::Scaling>,
    /// The runtimes traffic listeners accept and serve on (`--threads`).
    workers: listen::Workers,
}

impl Proxy {
    /// Opens the store named by the config and starts. With no `store`, the
    /// router keeps no copy of its sites beside the table (`state::NoStore`):
    /// changes made through the admin API are forgotten at restart.
    /// Traffic is served on the runtime this is called on only (see
    /// [`Proxy::start_threads`]).
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Proxy>, ProxyError> {
        Proxy::start_threads(config, config_path, 1).await
    }

    /// [`Proxy::start`] with traffic served by `threads` current-thread
    /// runtimes: the one this is called on (which also runs the admin API,
    /// health checks, tunnels and passthrough listeners) and `threads - 1`
    /// more on threads of their own, each accepting on its own
    /// `SO_REUSEPORT` socket of every traffic listener. A connection stays
    /// on the thread that accepted it; caps, metrics, reloads and shutdown
    /// cover all of them.
    pub async fn start_threads(
        config: Config,
        config_path: Option<PathBuf>,
        threads: usize,
    ) -> Result<Arc<Proxy>, ProxyError> {
        let store: Arc<dyn Store> = match &config.router.store {
            Some(path) => Arc::new(SqliteStore::open(path)?),
            None => Arc::new(state::NoStore),
        };
        let workers = listen::Workers::start(threads)
            .map_err(|source| ProxyError::Workers { threads, source })?;
        Proxy::start_on(config, config_path, store, workers).await
    }

    /// Starts with a given store (tests hand in their own).
    pub async fn start_with_store(
        config: Config,
        config_path: Option<PathBuf>,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Proxy>, ProxyError> {
        Proxy::start_on(config, config_path, store, listen::Workers::current()).await
    }

    async fn start_on(
        config: Config,
        config_path: Option<PathBuf>,
        store: Arc<dyn Store>,
        workers: listen::Workers,
    ) -> Result<Arc<Proxy>, ProxyError> {
        // Bind everything before serving anything, so a port conflict fails the
        // start without having half a router running.
        let mut bound = Vec::new();
        for spec in &config.listeners {
            bound.push((listen::bind_group(spec.listen, &workers)?, spec.clone()));
        }
        let admin_listener = match &config.admin {
            Some(a) => Some(listen::bind(a.listen)?),
            None => None,
        };
        let tls = match &config.tls {
            Some(s) => Some(Arc::new(tls::TlsState::open(s, None)?)),
            None => None,
        };
        let tls = Arc::new(ArcSwapOption::new(tls));
        let tunnels = tunnel::Tunnels::new();
        let prepared = tunnels.prepare(&config)?;
        let passthroughs = passthrough::Passthroughs::default();
        let prepared_passthroughs = passthroughs.prepare(&config)?;
        let tunnel_config = config.clone();
        let traffic_cap = listen::Cap::new(match config.router.max_connections {
            Some(n) => n,
            None => {
                let nofile = listen::nofile_limit();
                let n = listen::default_max_connections(nofile);
                tracing::info!(
                    max_connections = n,
                    open_file_limit = ?nofile,
                    "connection cap derived from the open-file limit ([router] max_connections sets it)"
                );
                n
            }
        });
        // [store] backend = "etcd": seeded from a snapshot (or the local copy).
        let (store, control) = control::choose(&config, store)?;
        let shared = Arc::new(Shared::new(config, config_path, store)?);
        // Servers that joined at run time before a restart are in the store.
        joined::restore(&shared)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        control::attach(&shared, control, &shutdown_rx)?;
        tunnels.set_accept_limits(traffic_cap.clone(), Arc::clone(&shared.metrics));
        tunnels.commit(prepared, &tunnel_config, &shutdown_rx);
        passthroughs.commit(
            prepared_passthroughs,
            &tunnel_config,
            &shared,
            &shutdown_rx,
            &traffic_cap,
        );
        tunnels.spawn_writer(shutdown_rx.clone());
        let conns = Arc::new(ConnCount::default());
        let mut listeners = Vec::new();
        for (l, spec) in bound {
            listeners.push(server::spawn_listener(
                Arc::clone(&shared),
                l,
                spec,
                shutdown_rx.clone(),
                Arc::clone(&conns),
                Arc::clone(&tls),
                traffic_cap.clone(),
            )?);
        }
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let health = health::spawn_checks(&shared);
        let scale = Arc::new(scale::Scaling::default());
        scale::spawn(Arc::clone(&shared), Arc::clone(&scale), shutdown_rx.clone());
        let proxy = Arc::new(Proxy {
            shared,
            listeners: Mutex::new(listeners),
            admin_addr,
            health: Mutex::new(health),
            shutdown,
            conns,
            tunnels,
            passthroughs,
            tls,
            reloading: tokio::sync::Mutex::new(()),
            traffic_cap,
            scale,
            workers,
        });
        if let Some(l) = admin_listener {
            admin::spawn(Arc::clone(&proxy), l, shutdown_rx);
        }
        for l in proxy.listen_addrs() {
            tracing::info!(listen = %l, "traffic listener ready");
        }
        if let Some(a) = admin_addr {
            tracing::info!(listen = %a, "admin API ready");
        }
        Ok(proxy)
    }

    /// Addresses the traffic listeners are bound to (port 0 resolved).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.lock().iter().map(|l| l.bound).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Address a database tunnel is bound to (port 0 resolved).
    pub fn tunnel_addr(&self, name: &str) -> Option<SocketAddr> {
        self.tunnels.get(name).and_then(|t| t.bound())
    }

    /// Addresses the `[[passthrough]]` listeners are bound to, in config
    /// order (port 0 resolved).
    pub fn passthrough_addrs(&self) -> Vec<SocketAddr> {
        self.passthroughs.bound()
    }

    /// Number of sites in the table.
    pub fn site_count(&self) -> usize {
        self.shared.table.len()
    }

    /// Re-reads the config file the proxy was started from and applies it.
    pub async fn reload_from_file(&self) -> Result<ReloadReport, ProxyError> {
        let path = self
            .shared
            .config
            .lock()
            .1
            .clone()
            .ok_or(ProxyError::NoConfigFile)?;
        let config = match ferry_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.shared
                    .metrics
                    .reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e.into());
            }
        };
        self.reload(config).await
    }

    /// Applies a new config. On error nothing changed and the running config stays.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, ProxyError> {
        let _one = self.reloading.lock().await;
        let running = self.shared.config.lock().0.router.max_connections;
        if config.router.max_connections != running {
            tracing::warn!(
                running = self.traffic_cap.size(),
                "[router] max_connections changes at the next start, not by a reload"
            );
        }
        // Bind new listeners first: if one cannot be bound, refuse the reload.
        let fresh = self.bind_new_listeners(&config)?;
        let prepared = self.tunnels.prepare(&config)?;
        let prepared_passthroughs = self.passthroughs.prepare(&config)?;
        let tls_next = self.reopen_tls(&config).await?;
        let tunnel_config = config.clone();
        let specs = config.listeners.clone();
        // Servers that joined at run time are in no config file: kept.
        let joined = joined::runtime_servers(&self.shared);
        let report = match self.shared.reload(config) {
            Ok(r) => r,
            Err(e) => {
                self.shared
                    .metrics
                    .reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        };
        joined::rejoin(&self.shared, joined);
        self.tls.store(tls_next);
        self.reconcile_listeners(&specs, fresh)?;
        self.tunnels
            .commit(prepared, &tunnel_config, &self.shutdown.subscribe());
        self.passthroughs.commit(
            prepared_passthroughs,
            &tunnel_config,
            &self.shared,
            &self.shutdown.subscribe(),
            &self.traffic_cap,
        );
        let mut health = self.health.lock();
        for t in health.drain(..) {
            t.abort();
        }
        *health = health::spawn_checks(&self.shared);
        self.shared
            .metrics
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(?report, "configuration reloaded");
        Ok(report)
    }

    /// Binds the listeners `config` adds (a running one is kept by its
    /// configured address).
    fn bind_new_listeners(
        &self,
        config: &Config,
    ) -> Result<Vec<(ListenerGroup, ferry_config::ListenerSpec)>, ProxyError> {
        let current: HashMap<SocketAddr, ()> = self
            .listeners
            .lock()
            .iter()
            .map(|l| (l.configured, ()))
            .collect();
        let mut fresh = Vec::new();
        for spec in &config.listeners {
            if !current.contains_key(&spec.listen) {
                fresh.push((
                    listen::bind_group(spec.listen, &self.workers)?,
                    spec.clone(),
                ));
            }
        }
        Ok(fresh)
    }

    /// The certificate directory indexed again: files added or removed since
    /// the start are seen, as after an HAProxy reload. On the blocking pool:
    /// 100,000 files take a second or two, and with `--threads 1` the
    /// runtime thread is every connection's thread.
    async fn reopen_tls(&self, config: &Config) -> Result<Option<Arc<tls::TlsState>>, ProxyError> {
        let Some(s) = config.tls.clone() else {
            return Ok(None);
        };
        let previous = self.tls.load_full();
        let open =
            tokio::task::spawn_blocking(move || tls::TlsState::open(&s, previous.as_deref()));
        match open.await {
            Ok(state) => Ok(Some(Arc::new(state?))),
            Err(e) => Err(ProxyError::TlsIndexing(e.to_string())),
        }
    }

    /// Keeps the traffic listeners `specs` still has (with their new
    /// settings), stops the others (open connections go on) and starts the
    /// freshly bound ones.
    fn reconcile_listeners(
        &self,
        specs: &[ferry_config::ListenerSpec],
        fresh: Vec<(ListenerGroup, ferry_config::ListenerSpec)>,
    ) -> Result<(), ProxyError> {
        let mut listeners = self.listeners.lock();
        listeners.retain(|l| {
            let keep = specs.iter().find(|s| s.listen == l.configured);
            match keep {
                Some(s) => {
                    if s.max_connections != l.spec.load().max_connections {
                        tracing::warn!(listen = %l.bound, "listener max_connections changes when the listener is bound again (restart, or remove and re-add it)");
                    }
                    l.spec.store(Arc::new(s.clone()));
                    true
                }
                None => {
                    tracing::info!(listen = %l.bound, "listener removed by reload");
                    let _ = l.stop.send(true);
                    false
                }
            }
        });
        for (l, spec) in fresh {
            let h = server::spawn_listener(
                Arc::clone(&self.shared),
                l,
                spec,
                self.shutdown.subscribe(),
                Arc::clone(&self.conns),
                Arc::clone(&self.tls),
                self.traffic_cap.clone(),
            )?;
            tracing::info!(listen = %h.bound, "listener added by reload");
            listeners.push(h);
        }
        Ok(())
    }

    /// Stops accepting, lets open connections finish for up to `grace`, then returns.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for t in self.health.lock().drain(..) {
            t.abort();
        }
        if tokio::time::timeout(grace, self.conns.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.conns.open(),
                "connections still open after the grace period"
            );
        }
    }
}

// Last in the file: scripts/code-size.py reads a file up to its first
// `#[cfg(test)] mod`.

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream on loopback answering "ok" to everything.
    async fn upstream() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(|_req| async {
                    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"));
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    fn config(upstream: SocketAddr, listeners: &[&str]) -> Config {
        let mut text = String::from("[router]\nname = \"dc1\"\ndefault_site = \"a.com\"\n");
        for l in listeners {
            text += &format!("\n[[listener]]\nlisten = \"{l}\"\n");
        }
        text += &format!(
            "\n[[pool]]\nname = \"web\"\n[[pool.server]]\nname = \"s\"\naddress = \"{upstream}\"\n\n\
             [[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n"
        );
        ferry_config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    /// One request on a new connection: the status line, or the error.
    async fn get(addr: SocketAddr) -> Result<String, std::io::Error> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.com\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    /// `n` requests at once, each on its own connection: their status lines.
    async fn get_many(addr: SocketAddr, n: usize) -> Vec<String> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(get(addr));
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap().unwrap());
        }
        out
    }

    /// Waits until nothing listens on `addr` any more (the accept loops end
    /// on their own threads); panics after 30 s.
    async fn wait_refused(addr: SocketAddr, what: &str) {
        let refused = async {
            loop {
                match tokio::net::TcpStream::connect(addr).await {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), refused)
            .await
            .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn threads_share_each_listener_its_caps_metrics_reloads_and_shutdown() {
        let up = upstream().await;
        let proxy = Proxy::start_threads(config(up, &["127.0.0.1:0"]), None, 3)
            .await
            .unwrap();
        assert_eq!(proxy.workers.count(), 3);
        let first = proxy.listen_addrs()[0];
        // Connections from many source ports: the kernel spreads them over
        // the three sockets of the listener; every one is answered.
        for a in get_many(first, 60).await {
            assert_eq!(a, "HTTP/1.1 200 OK");
        }
        assert_eq!(proxy.shared.metrics.connections.load(Ordering::Relaxed), 60);
        // A listener added by a reload gets a socket on every thread; the
        // one removed is closed on every thread (no socket left to answer).
        let second = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        proxy
            .reload(config(up, &[&second.to_string()]))
            .await
            .unwrap();
        assert_eq!(proxy.listen_addrs(), [second]);
        for a in get_many(second, 30).await {
            assert_eq!(a, "HTTP/1.1 200 OK");
        }
        // Refused once the last of the listener's sockets is closed.
        wait_refused(first, "the removed listener closes on every thread").await;
        // Shutdown waits for a connection open on a worker thread.
        let mut open = tokio::net::TcpStream::connect(second).await.unwrap();
        open.write_all(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"ok") {
            let mut buf = [0u8; 256];
            let n = open.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        let shutdown = proxy.shutdown(Duration::from_secs(30));
        tokio::pin!(shutdown);
        // Still open (keep-alive): the graceful shutdown closes it, then returns.
        tokio::time::timeout(Duration::from_secs(30), &mut shutdown)
            .await
            .expect("shutdown drains the connection on a worker thread");
        assert_eq!(proxy.conns.open(), 0);
        wait_refused(second, "still accepting after shutdown").await;
    }
}
