//! The one accept loop of the router: HTTP listeners (`server.rs`),
//! passthrough listeners (`passthrough.rs`), database tunnels (`tunnel.rs`)
//! and the admin API (`admin/`) all accept through [`spawn`].
//!
//! - Connection caps ([`Cap`]): a connection holds a slot of its listener's
//!   cap (if it has one) and of the router's cap (traffic only; the admin API
//!   has its own small cap so it stays reachable) from accept to close. When
//!   a cap is full the loop stops accepting (counted once per pause in
//!   `ferry_accept_paused_total`) and new connections wait in the kernel's
//!   backlog, as HAProxy does at `maxconn`: the process never runs out of
//!   file descriptors for its own upstream connections and health checks.
//! - Accept errors (EMFILE, ENFILE, ENOBUFS...) back off from 10 ms,
//!   doubling to 1 s, instead of spinning; the first error of a streak is
//!   logged, then one line a minute while it lasts (counted in
//!   `ferry_accept_errors_total`).
//! - [`raise_nofile_limit`] and [`default_max_connections`]: the open-file
//!   limit the router runs with and the cap derived from it.
//! - [`Workers`]: the runtimes traffic listeners accept on, one
//!   current-thread runtime per thread (`ferry proxy --threads N`); each
//!   has its own `SO_REUSEPORT` socket of every traffic listener
//!   ([`bind_group`]), so a connection lives on one thread from accept to
//!   close and the kernel spreads new connections over the threads. A port
//!   another process listens on is refused, not shared (`claim`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::stats::ListenerKind;
use crate::ProxyError;

/// File descriptors kept out of the derived cap: the store, log files, the
/// certificate directory, listeners, health checks, the admin API's cap.
const RESERVED_FDS: u64 = 64;
/// First pause after a failed accept, and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// While accepts keep failing, one log line per this period.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// A bound on connections open at once.
#[derive(Clone)]
pub(crate) struct Cap {
    slots: Arc<Semaphore>,
    size: usize,
}

impl Cap {
    pub fn new(size: usize) -> Cap {
        // Semaphore::MAX_PERMITS is far above the config's 10,000,000.
        let size = size.clamp(1, Semaphore::MAX_PERMITS);
        Cap {
            slots: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots taken right now.
    pub fn used(&self) -> usize {
        self.size.saturating_sub(self.slots.available_permits())
    }
}

/// The open-file limit (soft) of this process, `None` when unlimited or
/// unknown.
pub(crate) fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft open-file limit to the hard one (systemd starts services
/// with 1024, far below what a router needs), and returns `(before, after)`.
/// Left alone when the soft limit is already the hard one.
pub fn raise_nofile_limit() -> std::io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current == now.maximum {
        return Ok((now.current, now.current));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        },
    )?;
    Ok((now.current, getrlimit(Resource::Nofile).current))
}

/// The router's connection cap when the config sets none, as HAProxy
/// derives `maxconn` from the open-file limit: each client connection may
/// need one upstream descriptor too, and some are kept for everything else.
pub(crate) fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .max(1),
        // Unlimited descriptors: the config's own upper bound.
        None => 10_000_000,
    }
}

/// Binds with SO_REUSEADDR so a restarted router rebinds at once.
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let socket = bind_std(addr, false)?;
    TcpListener::from_std(socket).map_err(|source| ProxyError::Bind { addr, source })
}

/// One socket of `addr` per worker runtime, each registered with its
/// worker's I/O driver. With more than one worker they are bound with
/// `SO_REUSEPORT` (the first resolves port 0, the others take its port), so
/// the kernel spreads new connections over the workers. Errors name the
/// configured address.
pub(crate) fn bind_group(
    addr: SocketAddr,
    workers: &Workers,
) -> Result<Vec<(Handle, TcpListener)>, ProxyError> {
    let io = |source| ProxyError::Bind { addr, source };
    let reuse_port = workers.count() > 1;
    let mut group = Vec::with_capacity(workers.count());
    let mut at = addr;
    if reuse_port {
        at = claim(addr)?;
    }
    for handle in workers.handles() {
        let socket = bind_std(at, reuse_port)?;
        at = socket.local_addr().map_err(io)?;
        // Registered with the worker's reactor, not the caller's.
        let _in = handle.enter();
        group.push((handle.clone(), TcpListener::from_std(socket).map_err(io)?));
    }
    Ok(group)
}

/// The port `addr` names (or, for port 0, a free one) if no other socket
/// listens on it. `SO_REUSEPORT` alone would let this router join the
/// listening group of another process of the same user on that port (a
/// second router started by mistake, a test's port chosen twice) and share
/// its connections without a word: each would get some of the other's
/// traffic. A socket without the option cannot bind where anything listens,
/// so it claims the port first and is closed just before the group binds.
/// The window between the two is a few system calls; a second router
/// racing into it exactly is not guarded against.
fn claim(addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let probe = bind_unlistened(addr)?;
    probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| ProxyError::Bind {
            addr,
            source: std::io::Error::other("the claimed port has no address"),
        })
}

/// A socket bound to `addr` with `SO_REUSEADDR` (a restarted router's
/// connections in TIME_WAIT do not block it) but not `SO_REUSEPORT`, and
/// not listening: dropped, it leaves the port free.
fn bind_unlistened(addr: SocketAddr) -> Result<socket2::Socket, ProxyError> {
    let io = |source| ProxyError::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(io)?;
    }
    socket.bind(&addr.into()).map_err(io)?;
    Ok(socket)
}

fn bind_std(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, ProxyError> {
    let io = |source| ProxyError::Bind { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(io)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(io)?;
    }
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&addr.into()).map_err(io)?;
    socket.listen(4096).map_err(io)?;
    Ok(socket.into())
}

/// The runtimes traffic connections are served on. The first is the
/// runtime the router was started on (the admin API, health checks,
/// tunnels and passthrough listeners run there too); the others are
/// current-thread runtimes on threads of their own, stopped when the
/// `Workers` is dropped (their open connections are dropped with them:
/// [`crate::Proxy::shutdown`] drains first).
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Dropped to stop the worker threads.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Only the runtime this is called on (`--threads 1`, and tests).
    pub fn current() -> Workers {
        Workers {
            handles: vec![Handle::current()],
            _stop: Vec::new(),
        }
    }

    /// The runtime this is called on and `threads - 1` more, each a
    /// current-thread runtime on a thread named `ferry-worker-N`.
    pub fn start(threads: usize) -> std::io::Result<Workers> {
        let mut workers = Workers::current();
        for n in 1..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers._stop.push(stop);
            std::thread::Builder::new()
                .name(format!("ferry-worker-{n}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                    // Dropping the runtime drops the tasks still on it.
                    drop(runtime);
                })?;
        }
        Ok(workers)
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// Starts accepting on `listener` until `stop` or `shutdown` changes. Each
/// connection holds a slot of every cap in `caps` until `serve` returns.
pub(crate) fn spawn<F, Fut>(
    kind: ListenerKind,
    listener: TcpListener,
    caps: Vec<Cap>,
    stats: Arc<crate::metrics::Metrics>,
    stop: Option<watch::Receiver<bool>>,
    shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on = Handle::current();
    spawn_on(&on, kind, listener, caps, stats, stop, shutdown, serve)
}

/// [`spawn`] on the runtime `on` (the one `listener` is registered with):
/// the accept loop and its connections run there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_on<F, Fut>(
    on: &Handle,
    kind: ListenerKind,
    listener: TcpListener,
    caps: Vec<Cap>,
    stats: Arc<crate::metrics::Metrics>,
    mut stop: Option<watch::Receiver<bool>>,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    on.spawn(async move {
        let k = kind.index();
        let mut backoff = Backoff::default();
        loop {
            // Slots first, so a full router stops accepting instead of
            // accepting and closing.
            let mut permits: Vec<OwnedSemaphorePermit> = Vec::with_capacity(caps.len());
            for cap in &caps {
                let permit = match Arc::clone(&cap.slots).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        stats.accept.paused[k].fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listen = ?local, cap = cap.size, "connection cap reached: accepting paused");
                        tokio::select! {
                            p = Arc::clone(&cap.slots).acquire_owned() => match p {
                                Ok(p) => p,
                                // Never closed; a closed cap would end the loop.
                                Err(_) => return,
                            },
                            _ = stopped(&mut stop) => return,
                            _ = shutdown.changed() => return,
                        }
                    }
                };
                permits.push(permit);
            }
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopped(&mut stop) => return,
                _ = shutdown.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    stats.accept.errors[k].fetch_add(1, Ordering::Relaxed);
                    let pause = backoff.failed(&e, local);
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped(&mut stop) => return,
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
            };
            backoff.succeeded(local);
            let stats = Arc::clone(&stats);
            stats.accept.open[k].fetch_add(1, Ordering::Relaxed);
            let work = serve(stream, peer);
            tokio::spawn(async move {
                work.await;
                stats.accept.open[k].fetch_sub(1, Ordering::Relaxed);
                drop(permits);
            });
        }
    });
}

/// Resolves when `stop` says so (or its sender is gone); never without one.
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.changed().await;
        }
        None => std::future::pending().await,
    }
}

/// Errors about one connection that died in the backlog: the next accept
/// is fine, no pause needed.
fn is_per_connection(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// The pause after failed accepts and when to say so.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
    failures: u64,
    logged: Option<Instant>,
}

impl Backoff {
    fn failed(&mut self, e: &std::io::Error, local: Option<SocketAddr>) -> Duration {
        let pause = self.next.unwrap_or(BACKOFF_MIN);
        self.next = Some((pause * 2).min(BACKOFF_MAX));
        self.failures += 1;
        let due = self.logged.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY);
        if due {
            self.logged = Some(Instant::now());
            tracing::warn!(
                listen = ?local,
                error = %e,
                failures = self.failures,
                "accept failed: backing off (10 ms doubling to 1 s) until it works again"
            );
        }
        pause
    }

    fn succeeded(&mut self, local: Option<SocketAddr>) {
        if self.failures > 0 {
            tracing::info!(listen = ?local, failures = self.failures, "accepting again");
            *self = Backoff::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let e = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..9).map(|_| b.failed(&e, None).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded(None);
        assert_eq!(b.failed(&e, None), BACKOFF_MIN);
    }

    #[tokio::test]
    async fn a_port_another_router_listens_on_is_refused_not_shared() {
        // Another router of the same user, listening with SO_REUSEPORT: the
        // kernel would let a second group join it and split the clients.
        let other = bind_std("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let taken = other.local_addr().unwrap();
        let workers = Workers::start(2).unwrap();
        match bind_group(taken, &workers) {
            Err(ProxyError::Bind { addr, source }) => {
                assert_eq!(addr, taken);
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("{taken} was joined, not refused"),
        }
        // A free port: one socket per worker, all on the port chosen.
        let group = bind_group("127.0.0.1:0".parse().unwrap(), &workers).unwrap();
        let ports: Vec<u16> = group
            .iter()
            .map(|(_, l)| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0], ports[1]);
        assert_ne!(ports[0], taken.port());
    }

    #[test]
    fn derived_cap_leaves_room_for_upstreams_and_the_rest() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(10)), 1);
        assert_eq!(default_max_connections(None), 10_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cap_pauses_accepting_until_a_connection_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let cap = Cap::new(1);
        let (_stop_tx, stop) = watch::channel(false);
        let stop = Some(stop);
        let (_shut_tx, shutdown) = watch::channel(false);
        let (release_tx, release_rx) = watch::channel(false);
        let (served_tx, mut served_rx) = tokio::sync::mpsc::unbounded_channel();
        spawn(
            ListenerKind::Http,
            listener,
            vec![cap.clone()],
            Arc::clone(&metrics),
            stop,
            shutdown,
            move |_s, peer| {
                let mut release = release_rx.clone();
                let served = served_tx.clone();
                async move {
                    let _ = served.send(peer);
                    let _ = release.wait_for(|r| *r).await;
                }
            },
        );
        let _a = TcpStream::connect(addr).await.unwrap();
        served_rx.recv().await.unwrap();
        // The second connection completes in the kernel's backlog but is
        // not served while the first holds the only slot.
        let _b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(served_rx.try_recv().is_err(), "served beyond the cap");
        assert_eq!(cap.used(), 1);
        assert_eq!(metrics.accept.paused[0].load(Ordering::Relaxed), 1);
        release_tx.send(true).unwrap();
        served_rx.recv().await.unwrap();
    }
}
