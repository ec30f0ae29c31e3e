//! SNI passthrough: TLS connections routed by the server name of their
//! ClientHello and spliced, still encrypted, to wherever the site lives.
//!
//! - [`Passthroughs`]: the `[[passthrough]]` listeners, bound and swapped by
//!   [`Passthroughs::prepare`] + [`Passthroughs::commit`] at start and reload.
//! - Accepting (connection caps, back-off) is `listen.rs`'s.
//! - A connection: PROXY v2 header first when the listener is fed by another
//!   router (refused unless the peer is in `trusted_networks`); then the ClientHello is read into a buffer (`client_hello.rs`,
//!   bounded in time and size) and nothing more is read from the client until
//!   an upstream is connected; the site's state is honoured (frozen: held,
//!   maintenance: the terminator or a clean close); the upstream gets a PROXY
//!   v2 header if it wants one, then the buffered bytes, then both directions
//!   are copied until both sides are done or nothing moved for `idle_timeout`.
//! - Counting: a connection counts as held while its site is frozen, and as in
//!   flight for its site only while it is being set up (from the lookup to the
//!   ClientHello written upstream). An open passthrough connection is not
//!   counted: TLS connections live for minutes and would hold a cutover's
//!   drain forever. Bytes a client sends on an open connection during a freeze
//!   go to the old placement; a site moved by passthrough is only fenced for
//!   new connections.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ferry_config::{Config, PassthroughSpec};
use ferry_model::{Hostname, SiteState};
use ferry_router::{Pick, Route};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client_hello::{Hello, HelloError, HelloParser};
use crate::hold::{Hold, Unrouted};
use crate::listen::{self, Cap};
use crate::state::{Hop, Shared};
use crate::stats::{ListenerKind, OpenGauge, PassthroughOutcome};
use crate::{deadline, proxy_protocol, ProxyError};

/// How long a refused client may take to close its side after ours, so the
/// close is a FIN both ways and not a reset.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// One running passthrough listener (its accept loop is `listen.rs`'s);
/// dropping it stops accepting, open connections go on.
struct PassthroughListener {
    configured: SocketAddr,
    bound: SocketAddr,
    spec: Arc<ArcSwap<PassthroughSpec>>,
    stop: watch::Sender<bool>,
}

impl Drop for PassthroughListener {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Listeners bound for a config but not serving yet (see [`Passthroughs::commit`]).
pub(crate) struct Prepared {
    /// For each spec of the config, in order: a fresh listener, or `None` when
    /// a running one is kept.
    fresh: Vec<Option<TcpListener>>,
}

/// Every passthrough listener of the running config.
#[derive(Default)]
pub(crate) struct Passthroughs {
    loops: Mutex<Vec<PassthroughListener>>,
}

impl Passthroughs {
    /// Addresses the listeners are bound to, in config order (port 0 resolved).
    pub fn bound(&self) -> Vec<SocketAddr> {
        self.loops.lock().iter().map(|l| l.bound).collect()
    }

    /// Which running loop (by index) each spec of `config` keeps, if any: the
    /// first unclaimed loop with the same configured address.
    fn matching(&self, config: &Config) -> Vec<Option<usize>> {
        let loops = self.loops.lock();
        let mut claimed = vec![false; loops.len()];
        config
            .passthroughs
            .iter()
            .map(|spec| {
                let i = loops
                    .iter()
                    .enumerate()
                    .position(|(i, l)| !claimed[i] && l.configured == spec.listen)?;
                claimed[i] = true;
                Some(i)
            })
            .collect()
    }

    /// Binds the addresses `config` adds, so a port conflict refuses the start
    /// or reload before anything changed.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, ProxyError> {
        let mut fresh = Vec::with_capacity(config.passthroughs.len());
        for (spec, kept) in config.passthroughs.iter().zip(self.matching(config)) {
            fresh.push(match kept {
                Some(_) => None,
                None => Some(listen::bind(spec.listen)?),
            });
        }
        Ok(Prepared { fresh })
    }

    /// Applies `config`: stops listeners it no longer has (their open
    /// connections go on), updates the settings of kept ones, starts new ones.
    pub fn commit(
        &self,
        prepared: Prepared,
        config: &Config,
        shared: &Arc<Shared>,
        shutdown: &watch::Receiver<bool>,
        traffic: &Cap,
    ) {
        let matching = self.matching(config);
        let mut loops = self.loops.lock();
        let mut old: Vec<Option<PassthroughListener>> = loops.drain(..).map(Some).collect();
        let mut next = Vec::with_capacity(config.passthroughs.len());
        for ((spec, kept), listener) in config.passthroughs.iter().zip(matching).zip(prepared.fresh)
        {
            if let Some(l) = kept.and_then(|i| old.get_mut(i)).and_then(Option::take) {
                if l.spec.load().max_connections != spec.max_connections {
                    tracing::warn!(listen = %l.bound, "passthrough max_connections changes when the listener is bound again");
                }
                l.spec.store(Arc::new(spec.clone()));
                next.push(l);
                continue;
            }
            let Some(listener) = listener else { continue };
            let Ok(bound) = listener.local_addr() else {
                continue;
            };
            let (stop, stop_rx) = watch::channel(false);
            let spec = Arc::new(ArcSwap::from_pointee(spec.clone()));
            let mut caps = Vec::with_capacity(2);
            if let Some(n) = spec.load().max_connections {
                caps.push(Cap::new(n));
            }
            caps.push(traffic.clone());
            let serve_shared = Arc::clone(shared);
            let serve_spec = Arc::clone(&spec);
            listen::spawn(
                ListenerKind::Passthrough,
                listener,
                caps,
                Arc::clone(&shared.metrics),
                Some(stop_rx),
                shutdown.clone(),
                move |stream, peer| {
                    let shared = Arc::clone(&serve_shared);
                    let spec = serve_spec.load_full();
                    async move { serve(&shared, &spec, stream, peer).await }
                },
            );
            tracing::info!(listen = %bound, "passthrough listener ready");
            next.push(PassthroughListener {
                configured: spec.load().listen,
                bound,
                spec,
                stop,
            });
        }
        // Loops left in `old` are dropped here, which stops them.
        for l in old.iter().flatten() {
            tracing::info!(listen = %l.bound, "passthrough listener removed");
        }
        *loops = next;
    }
}

/// Where a connection goes once its site is known.
enum Target<'a> {
    Pool(&'a str),
    Remote(std::borrow::Cow<'a, str>),
    Terminator(SocketAddr),
}

/// An upstream connection ready for the splice.
struct Connected {
    stream: TcpStream,
    outcome: PassthroughOutcome,
    /// Counts the connection on its server (least_conn) while it is open.
    _pick: Option<Pick>,
}

async fn serve(shared: &Shared, spec: &PassthroughSpec, mut client: TcpStream, peer: SocketAddr) {
    let stats = &shared.metrics.passthrough;
    let mut upstream = match setup(shared, spec, &mut client, peer).await {
        Ok(c) => c,
        Err(outcome) => {
            stats.count(outcome);
            if outcome == PassthroughOutcome::MaintenanceClosed {
                close_cleanly(client).await;
            }
            return;
        }
    };
    stats.count(upstream.outcome);
    let _open = OpenGauge::enter(&stats.open);
    let _ = client.set_nodelay(true);
    let _ = upstream.stream.set_nodelay(true);
    // Half-closes are passed on; errors only end the splice.
    if deadline::splice(&mut client, &mut upstream.stream, spec.idle_timeout).await {
        stats.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything before the splice: the PROXY header, the ClientHello, the site,
/// its state, the upstream connection, and the buffered bytes sent on.
async fn setup(
    shared: &Shared,
    spec: &PassthroughSpec,
    client: &mut TcpStream,
    peer: SocketAddr,
) -> Result<Connected, PassthroughOutcome> {
    let deadline = Instant::now() + spec.client_hello_timeout;
    let mut source = peer;
    let mut destination = client.local_addr().unwrap_or(peer);
    if spec.proxy_protocol {
        // The header names the client, and so who passes maintenance as an
        // operator: only routers we know may send it.
        if !spec.trusted_networks.iter().any(|n| n.contains(&peer.ip())) {
            tracing::debug!(%peer, "passthrough: PROXY header expected from an untrusted peer: closed");
            return Err(PassthroughOutcome::UntrustedPeer);
        }
        let header = crate::settle::timeout_at(deadline, proxy_protocol::read(client))
            .await
            .map_err(|_| PassthroughOutcome::Timeout)?
            .map_err(|e| {
                tracing::debug!(%peer, error = %e, "passthrough: bad PROXY header");
                PassthroughOutcome::BadProxyHeader
            })?;
        source = header.source.unwrap_or(source);
        destination = header.destination.unwrap_or(destination);
    }
    let (hello, name) = read_client_hello(client, spec, deadline).await?;
    // The name routes like a Host header: same normalisation, and a wildcard
    // pattern is not a name anyone may ask for.
    let host = match Hostname::parse(&name) {
        Ok(h) if !name.contains('*') => h,
        _ => {
            tracing::debug!(%peer, sni = %name, "passthrough: server name is not a host name");
            return Err(PassthroughOutcome::Invalid);
        }
    };
    let route = hold_while_frozen(shared, spec, &host, client).await?;
    // Copied out rather than kept loaded across the awaits below.
    let (operator, connect_timeout) = {
        let settings = shared.settings.load();
        let operator = settings
            .operator_networks
            .iter()
            .any(|n| n.contains(&source.ip()));
        (operator, settings.connect_timeout)
    };
    let target = match (route.state, route.placement.as_ref()) {
        (SiteState::Maintenance, _) if !operator => match spec.maintenance_terminator {
            Some(addr) => Target::Terminator(addr),
            None => return Err(PassthroughOutcome::MaintenanceClosed),
        },
        (_, placement) => match shared.hop(placement) {
            Hop::Local(pool) => Target::Pool(pool),
            // Another router sent it here because it thinks the site lives
            // here; we think it lives there. Refuse rather than ping-pong.
            Hop::Remote(_) if spec.proxy_protocol => return Err(PassthroughOutcome::Loop),
            Hop::Remote(dc) => Target::Remote(dc),
        },
    };
    // In flight only while being set up (see the module comment).
    let _in_flight = shared.table.track(route.site, false);
    let mut connected = connect(shared, spec, &target, connect_timeout).await?;
    let send_proxy = match target {
        Target::Remote(_) => true,
        Target::Pool(_) | Target::Terminator(_) => spec.send_proxy,
    };
    let mut first = if send_proxy {
        proxy_protocol::encode(source, destination)
    } else {
        Vec::new()
    };
    first.extend_from_slice(&hello);
    if let Err(e) = connected.stream.write_all(&first).await {
        tracing::debug!(%peer, error = %e, "passthrough: upstream closed before the ClientHello");
        return Err(PassthroughOutcome::ConnectFailed);
    }
    Ok(connected)
}

/// Reads until the buffer holds a whole ClientHello and returns the bytes read
/// (to be sent on unchanged) and the server name.
async fn read_client_hello(
    client: &mut TcpStream,
    spec: &PassthroughSpec,
    deadline: Instant,
) -> Result<(Vec<u8>, String), PassthroughOutcome> {
    let limit = spec.max_client_hello;
    let mut parser = HelloParser::new(limit);
    let mut buf: Vec<u8> = Vec::with_capacity(2048.min(limit));
    loop {
        // Never read past the bound. Bytes after the ClientHello that came
        // in the same read are kept and sent on with it.
        let room = limit.saturating_sub(buf.len()).min(4096);
        let old = buf.len();
        buf.resize(old + room, 0);
        let n = match crate::settle::timeout_at(deadline, client.read(&mut buf[old..])).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Err(PassthroughOutcome::ClientClosed),
            Err(_) => return Err(PassthroughOutcome::Timeout),
        };
        buf.truncate(old + n);
        if n == 0 {
            return Err(PassthroughOutcome::ClientClosed);
        }
        match parser.parse(&buf) {
            Hello::NeedMore => {}
            Hello::Sni(name) => return Ok((buf, name)),
            Hello::NoSni => return Err(PassthroughOutcome::NoSni),
            Hello::Invalid(HelloError::TooLarge { .. }) => {
                return Err(PassthroughOutcome::TooLarge)
            }
            Hello::Invalid(e) => {
                tracing::debug!(error = %e, "passthrough: not a ClientHello");
                return Err(PassthroughOutcome::Invalid);
            }
        }
    }
}

/// Looks the site up; while it is frozen, waits (reading nothing more from the
/// client) until it changes or the hold bound passes, as requests are held
/// (`hold.rs`). A client that hangs up while held stops being held.
async fn hold_while_frozen(
    shared: &Shared,
    spec: &PassthroughSpec,
    host: &Hostname,
    client: &TcpStream,
) -> Result<Route, PassthroughOutcome> {
    let hold = Hold {
        table: &shared.table,
        holds: &shared.holds,
        max: spec.hold_max.unwrap_or(shared.settings.load().hold_max),
        held_total: &shared.metrics.passthrough.held,
    };
    let client_gone = async {
        // Peeking consumes nothing; once the client has sent more bytes
        // (early data), there is nothing more to learn from it and watching
        // stops.
        let mut probe = [0u8; 1];
        match client.peek(&mut probe).await {
            Ok(0) | Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    };
    hold.route(host.as_str(), client_gone)
        .await
        .map_err(|e| match e {
            Unrouted::UnknownSite => PassthroughOutcome::UnknownSite,
            Unrouted::StillFrozen => PassthroughOutcome::HoldTimeout,
            Unrouted::ClientGone => PassthroughOutcome::ClientClosed,
        })
}

async fn connect(
    shared: &Shared,
    spec: &PassthroughSpec,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<Connected, PassthroughOutcome> {
    let dial = |addr: SocketAddr| async move {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    };
    match target {
        Target::Terminator(addr) => match dial(*addr).await {
            Ok(stream) => Ok(Connected {
                stream,
                outcome: PassthroughOutcome::MaintenanceTerminator,
                _pick: None,
            }),
            Err(e) => {
                tracing::warn!(terminator = %addr, error = %e, "passthrough: maintenance terminator unreachable");
                Err(PassthroughOutcome::ConnectFailed)
            }
        },
        Target::Remote(dc) => {
            let addr = shared
                .remotes
                .load()
                .get(dc.as_ref())
                .and_then(|r| r.passthrough)
                .ok_or(PassthroughOutcome::NoServer)?;
            match dial(addr).await {
                Ok(stream) => Ok(Connected {
                    stream,
                    outcome: PassthroughOutcome::Remote,
                    _pick: None,
                }),
                Err(e) => {
                    tracing::warn!(remote = %dc, %addr, error = %e, "passthrough: remote router unreachable");
                    Err(PassthroughOutcome::ConnectFailed)
                }
            }
        }
        Target::Pool(name) => {
            let pool = {
                let pools = shared.pools.load();
                Arc::clone(
                    &pools
                        .pools
                        .get(*name)
                        .ok_or(PassthroughOutcome::NoServer)?
                        .pool,
                )
            };
            // As for requests: one more server when the first cannot be reached.
            // Failures do not feed the passive health check: that one is about
            // the servers' HTTP port, and a closed TLS port says nothing of it.
            let mut tried = Vec::with_capacity(2);
            while tried.len() < 2 {
                let Some(pick) = pool.pick(&tried) else { break };
                let addr = SocketAddr::new(pick.server.address.ip(), spec.backend_port);
                match dial(addr).await {
                    Ok(stream) => {
                        return Ok(Connected {
                            stream,
                            outcome: PassthroughOutcome::Local,
                            _pick: Some(pick),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(pool = %name, server = %pick.server.name, %addr, error = %e, "passthrough: server unreachable");
                        tried.push(pick.index);
                    }
                }
            }
            Err(if tried.is_empty() {
                PassthroughOutcome::NoServer
            } else {
                PassthroughOutcome::ConnectFailed
            })
        }
    }
}

/// Closes with a FIN rather than a reset: our side first, then whatever the
/// client still sends is read and dropped until it closes too (bounded).
async fn close_cleanly(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A passthrough connection inside the crate: real loopback sockets for the
/// client and the server, [`serve`] called on the accepted side.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_hello::build::{handshake, records, sni};
    use ferry_model::{Epoch, SiteRecord};
    use ferry_router::SiteChange;
    use ferry_store::SqliteStore;
    use std::path::Path;

    /// A ClientHello naming `name`, in one record.
    fn hello(name: &str) -> Vec<u8> {
        records(&handshake(&[], &[(0, sni(name))]), 16_384)
    }

    struct World {
        shared: Arc<Shared>,
        spec: Arc<PassthroughSpec>,
        /// The pool server's TLS port (`backend_port`).
        backend: TcpListener,
    }

    async fn world() -> World {
        let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = backend.local_addr().expect("addr").port();
        let text = format!(
            "[router]\nname = \"dc1\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
             [[passthrough]]\nlisten = \"127.0.0.1:0\"\nbackend_port = {port}\nhold_max = \"60s\"\n\n\
             [[pool]]\nname = \"web\"\n[[pool.server]]\nname = \"a\"\naddress = \"127.0.0.1:80\"\n\n\
             [[site]]\nhost = \"a.com\"\nplacement = \"pool:web\"\n\n\
             [[site]]\nhost = \"frozen.com\"\nplacement = \"pool:web\"\nstate = \"frozen\"\nepoch = 1\n"
        );
        let config = ferry_config::parse(&text, Path::new("test.toml")).expect("config");
        let spec = Arc::new(config.passthroughs[0].clone());
        let store = Arc::new(SqliteStore::in_memory().expect("store"));
        let shared = Arc::new(Shared::new(config, None, store).expect("shared"));
        World {
            shared,
            spec,
            backend,
        }
    }

    impl World {
        /// A client connected to the router; the router's side served.
        async fn connect(&self) -> (TcpStream, tokio::task::JoinHandle<()>) {
            let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let client = TcpStream::connect(front.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (accepted, peer) = front.accept().await.expect("accept");
            let (shared, spec) = (Arc::clone(&self.shared), Arc::clone(&self.spec));
            let served = tokio::spawn(async move { serve(&shared, &spec, accepted, peer).await });
            (client, served)
        }

        async fn wait_held(&self, n: u64) {
            let held = async {
                while self.shared.table.total_counters().0 != n {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), held)
                .await
                .expect("held count reached");
        }

        /// What the pool server receives first: exactly `len` bytes.
        async fn backend_reads(&self, len: usize) -> (TcpStream, Vec<u8>) {
            let (mut server, _) = self.backend.accept().await.expect("accept");
            let mut got = vec![0u8; len];
            server.read_exact(&mut got).await.expect("read");
            (server, got)
        }
    }

    #[tokio::test]
    async fn the_client_hello_goes_on_unchanged_then_bytes_flow_both_ways() {
        let w = world().await;
        let (mut client, _served) = w.connect().await;
        let h = hello("a.com");
        client.write_all(&h).await.expect("write");
        let (mut server, got) = w.backend_reads(h.len()).await;
        assert_eq!(got, h);
        server.write_all(b"server hello").await.expect("write");
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"server hello");
    }

    #[tokio::test]
    async fn a_frozen_site_is_held_until_the_change_is_applied() {
        let w = world().await;
        let (mut client, _served) = w.connect().await;
        let h = hello("frozen.com");
        client.write_all(&h).await.expect("write");
        w.wait_held(1).await;
        let change = SiteChange {
            record: SiteRecord {
                host: Hostname::parse("frozen.com").expect("host"),
                placement: ferry_model::Placement::Pool("web".into()),
                state: SiteState::Active,
                epoch: Epoch(2),
            },
            extras: None,
        };
        w.shared.apply_sites(vec![change]).expect("apply");
        let (_server, got) = w.backend_reads(h.len()).await;
        assert_eq!(got, h);
        w.wait_held(0).await;
        assert_eq!(w.shared.metrics.passthrough.held.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_held_client_that_hangs_up_stops_being_held() {
        let w = world().await;
        let (mut client, served) = w.connect().await;
        client.write_all(&hello("frozen.com")).await.expect("write");
        w.wait_held(1).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("served ends")
            .expect("task");
        assert_eq!(w.shared.table.total_counters(), (0, 0));
    }

    #[tokio::test]
    async fn an_unknown_name_is_closed() {
        let w = world().await;
        let (mut client, served) = w.connect().await;
        client
            .write_all(&hello("nowhere.com"))
            .await
            .expect("write");
        served.await.expect("task");
        let mut rest = Vec::new();
        let n = client.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "nothing sent back");
    }
}
