//! The server side: `ferry agent` serves named volumes over TCP.
//!
//! Each connection must prove it knows the pre-shared key (see [`crate::proto`])
//! before it can name a volume; a read-only volume refuses every receiver
//! operation. A session then runs the same [`LocalTree`] code as a local sync,
//! so the receiver's safety rules (validated paths, no write through a
//! symlink, temporary file + rename) hold for remote writers too.
//!
//! Ops are pipelined: after the first failure the agent skips the following
//! ops and reports the failure at the next `Flush` (or at the next request),
//! so nothing after a refused op is written.
//!
//! The port faces strangers, so everything before the key is proven is
//! small and short ([`Limits`]): frames of at most
//! [`proto::MAX_HANDSHAKE_FRAME`] bytes, one deadline for the whole
//! handshake (not per read: a peer trickling a byte at a time is cut), small
//! buffers, and a cap on open connections beyond which new ones are closed at
//! once with a "busy" error. Failures of unauthenticated connections are
//! counted and summed up in one log line a minute, not logged one by one.
//! Authenticated sessions are cut after [`Limits::idle_timeout`] without a
//! byte either way. Accept errors (out of descriptors) back off; a thread
//! that cannot be started refuses that connection only.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Deserialize;

use crate::endpoint::{Dest, Op, Source, Tree};
use crate::error::{Result, SyncError};
use crate::local::LocalTree;
use crate::manifest::{Kind, ScanOptions};
use crate::merkle::Digest;
use crate::path::RelPath;
use crate::proto::{self, Msg, VANISHED};
use crate::watch::{Changes, MAX_CHANGED_PATHS};

/// One served volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// A directory (file mode) or an image file / block device (block mode).
    pub path: PathBuf,
    pub read_only: bool,
    /// Whether a session may start an inotify watch here (`--watch`,
    /// `--follow` from this volume). A watch holds kernel memory and one of
    /// the user's few inotify instances for as long as the session lasts:
    /// off by default on read-only volumes, whose sessions otherwise change
    /// nothing.
    pub watch: bool,
}

/// The bounds of an agent facing the network (see the module docs and
/// examples/agent.toml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, in the handshake or in a session; more are
    /// closed at once with a "busy" error.
    pub max_connections: usize,
    /// Time from accept to an opened volume.
    pub handshake_timeout: Duration,
    /// An authenticated session that moves no byte for this long is closed.
    pub idle_timeout: Duration,
    /// Sessions holding an inotify watch at once.
    pub max_watches: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A sync uses one connection per agent side; a follow, one per
            // destination. 64 leaves room for a fleet update relaying to many
            // agents while bounding threads and the memory of sessions.
            max_connections: 64,
            // A handshake is three round trips: seconds even on a slow link.
            handshake_timeout: Duration::from_secs(10),
            // A client scanning a large tree of its own leaves the other
            // side's connection quiet for minutes.
            idle_timeout: Duration::from_secs(3600),
            // The default inotify limit is 128 instances per user.
            max_watches: 8,
        }
    }
}

/// A checked agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// The MAC key derived from the configured pre-shared key.
    pub key: [u8; 32],
    pub volumes: BTreeMap<String, Volume>,
    pub limits: Limits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: toml::Spanned<String>,
    key: Option<toml::Spanned<String>>,
    key_file: Option<toml::Spanned<String>>,
    max_connections: Option<toml::Spanned<u64>>,
    handshake_timeout_secs: Option<toml::Spanned<u64>>,
    idle_timeout_secs: Option<toml::Spanned<u64>>,
    max_watches: Option<toml::Spanned<u64>>,
    #[serde(default)]
    volumes: BTreeMap<toml::Spanned<String>, RawVolume>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    path: toml::Spanned<String>,
    #[serde(default)]
    read_only: bool,
    watch: Option<bool>,
}

/// Shortest pre-shared key accepted.
pub const MIN_KEY_LEN: usize = 16;

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| SyncError::io("read config", path, e))?;
        AgentConfig::parse(&text, path)
    }

    /// Checks config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig> {
        let err = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            SyncError::Config {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| err(e.span().unwrap_or(0..0), e.message().to_string()))?;
        let listen: SocketAddr = raw.listen.get_ref().parse().map_err(|e| {
            err(
                raw.listen.span(),
                format!(
                    "listen: {:?} is not an address:port ({e})",
                    raw.listen.get_ref()
                ),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let psk = match (&raw.key, &raw.key_file) {
            (Some(k), None) => ferry_secret::Secret::new("key", k.get_ref().clone())
                .map_err(|e| err(k.span(), e.to_string()))?,
            // Refused unless only its owner may read it (as ssh does with
            // a private key): a key others can read is no secret.
            (None, Some(f)) => ferry_secret::read_file("key_file", &base.join(f.get_ref()))
                .map_err(|e| err(f.span(), e.to_string()))?,
            (Some(k), Some(_)) => {
                return Err(err(k.span(), "set key or key_file, not both".into()))
            }
            (None, None) => return Err(err(0..0, "missing key (or key_file)".into())),
        };
        if psk.expose().len() < MIN_KEY_LEN {
            let span = raw
                .key
                .as_ref()
                .or(raw.key_file.as_ref())
                .map_or(0..0, |k| k.span());
            return Err(err(
                span,
                format!("the key must be at least {MIN_KEY_LEN} characters"),
            ));
        }
        let mut volumes = BTreeMap::new();
        for (name, v) in raw.volumes {
            let n = name.get_ref();
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(err(
                    name.span(),
                    format!("volume name {n:?}: use letters, digits, '-', '_', '.'"),
                ));
            }
            if v.path.get_ref().is_empty() {
                return Err(err(v.path.span(), format!("volume {n}: empty path")));
            }
            volumes.insert(
                n.clone(),
                Volume {
                    path: base.join(v.path.get_ref()),
                    read_only: v.read_only,
                    watch: v.watch.unwrap_or(!v.read_only),
                },
            );
        }
        if volumes.is_empty() {
            return Err(err(0..0, "no [volumes.NAME] defined".into()));
        }
        let mut limits = Limits::default();
        let count = |v: &Option<toml::Spanned<u64>>, name: &str, max: u64| match v {
            None => Ok(None),
            Some(n) if (1..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref())),
            Some(n) => Err(err(
                n.span(),
                format!("{name}: {} is not between 1 and {max}", n.get_ref()),
            )),
        };
        if let Some(n) = count(&raw.max_connections, "max_connections", 100_000)? {
            limits.max_connections = n as usize;
        }
        if let Some(n) = count(&raw.max_watches, "max_watches", 100_000)? {
            limits.max_watches = n as usize;
        }
        if let Some(n) = count(&raw.handshake_timeout_secs, "handshake_timeout_secs", 3600)? {
            limits.handshake_timeout = Duration::from_secs(n);
        }
        if let Some(n) = count(&raw.idle_timeout_secs, "idle_timeout_secs", 7 * 86400)? {
            limits.idle_timeout = Duration::from_secs(n);
        }
        Ok(AgentConfig {
            listen,
            key: proto::derive_key(psk.expose()),
            volumes,
            limits,
        })
    }
}

/// What the accept loop counts; see [`Summary`].
#[derive(Default)]
struct Counters {
    /// Connections open now, in the handshake or in a session.
    open: AtomicUsize,
    /// Sessions holding an inotify watch now.
    watches: AtomicUsize,
    refused_busy: AtomicU64,
    handshake_failed: AtomicU64,
    thread_failed: AtomicU64,
    idle_closed: AtomicU64,
    accept_failed: AtomicU64,
}

impl Counters {
    fn totals(&self) -> [u64; 5] {
        [
            self.refused_busy.load(Ordering::Relaxed),
            self.handshake_failed.load(Ordering::Relaxed),
            self.thread_failed.load(Ordering::Relaxed),
            self.idle_closed.load(Ordering::Relaxed),
            self.accept_failed.load(Ordering::Relaxed),
        ]
    }
}

/// A connection's place under [`Limits::max_connections`], given back when
/// its thread ends (or when it never starts).
struct Slot(Arc<Counters>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A session's place under [`Limits::max_watches`].
struct WatchSlot(Arc<Counters>);

impl WatchSlot {
    fn take(c: &Arc<Counters>, max: usize) -> Option<WatchSlot> {
        c.watches
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WatchSlot(c.clone()))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One log line a minute with the connections refused or cut since the
/// last, instead of a line per connection: a stranger opening thousands of
/// connections must not write thousands of lines (#8 of issue 15).
struct Summary {
    at: Instant,
    seen: [u64; 5],
}

impl Summary {
    const EVERY: Duration = Duration::from_secs(60);

    fn maybe_log(&mut self, c: &Counters) {
        if self.at.elapsed() < Self::EVERY {
            return;
        }
        self.at = Instant::now();
        let now = c.totals();
        let d: Vec<u64> = now.iter().zip(self.seen).map(|(n, s)| n - s).collect();
        self.seen = now;
        let open = c.open.load(Ordering::Relaxed);
        let msg = "sync connections refused or cut in the last minute";
        // Busy refusals, thread and accept failures turn away clients that
        // may hold the key; failed handshakes are mostly strangers and probes.
        if d[0] > 0 || d[2] > 0 || d[4] > 0 {
            tracing::warn!(
                refused_busy = d[0],
                handshake_failed = d[1],
                thread_failed = d[2],
                idle_closed = d[3],
                accept_failed = d[4],
                open,
                "{msg}"
            );
        } else if d.iter().any(|n| *n > 0) {
            tracing::info!(handshake_failed = d[1], idle_closed = d[3], open, "{msg}");
        }
    }
}

/// Serves connections on `listener` until `shutdown` is set. Each connection
/// runs on its own thread, at most [`Limits::max_connections`] at once.
pub fn serve(
    listener: TcpListener,
    config: Arc<AgentConfig>,
    shutdown: Arc<AtomicBool>,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Non-blocking accept with a short sleep: the loop notices `shutdown`
    // without a wake-up connection.
    listener.set_nonblocking(true).map_err(|e| SyncError::Net {
        peer: addr.clone(),
        source: e,
    })?;
    let counters = Arc::new(Counters::default());
    let mut summary = Summary {
        at: Instant::now(),
        seen: [0; 5],
    };
    let mut backoff: Option<Duration> = None;
    // When an accept error was last logged: under descriptor pressure,
    // failures and successes alternate, and each failure must not be a line.
    let mut accept_logged: Option<Instant> = None;
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, peer)) => {
                backoff = None;
                accept_one(s, peer, &config, &counters);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                // Out of descriptors (EMFILE) or memory: the connection stays
                // in the backlog and retrying at once would spin. Wait,
                // doubling up to a second, until sessions ending free some.
                let wait = backoff.map_or(Duration::from_millis(20), |b| {
                    (b * 2).min(Duration::from_secs(1))
                });
                counters.accept_failed.fetch_add(1, Ordering::Relaxed);
                if accept_logged.is_none_or(|t| t.elapsed() >= Summary::EVERY) {
                    tracing::warn!(
                        error = %e,
                        "accept failed; retrying with backoff (more are counted in the minute's summary)"
                    );
                    accept_logged = Some(Instant::now());
                } else {
                    tracing::debug!(error = %e, "accept failed again");
                }
                backoff = Some(wait);
                std::thread::sleep(wait);
            }
        }
        summary.maybe_log(&counters);
    }
    Ok(())
}

/// Starts a thread for a new connection, or refuses it at once when the
/// agent is full or no thread can be started; the accept loop goes on.
fn accept_one(s: TcpStream, peer: SocketAddr, config: &Arc<AgentConfig>, c: &Arc<Counters>) {
    let max = config.limits.max_connections;
    let open = c.open.fetch_add(1, Ordering::AcqRel) + 1;
    let slot = Slot(c.clone());
    if open > max {
        c.refused_busy.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, max, "connection refused: max_connections open");
        // One small frame into the new socket's empty send buffer: never
        // blocks the accept loop. The client shows it as the reason.
        let _ = s.set_nonblocking(true);
        let busy = Msg::Error {
            message: format!("busy: the agent has its {max} connections open (max_connections)"),
        };
        let _ = (&s).write_all(&proto::encode(&busy));
        return;
    }
    let (cfg, counters) = (config.clone(), c.clone());
    let spawned = std::thread::Builder::new()
        .name("ferry-agent-conn".into())
        .spawn(move || {
            let _slot = slot;
            connection(s, peer, &cfg, &counters);
        });
    // On failure the closure is dropped unrun: the socket closes and the
    // slot is given back.
    if let Err(e) = spawned {
        c.thread_failed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, error = %e, "no thread for a connection: refused it");
    }
}

/// One connection: the handshake, then the session. Handshake failures are
/// strangers' doing: counted and logged at debug only.
fn connection(s: TcpStream, peer: SocketAddr, cfg: &AgentConfig, c: &Arc<Counters>) {
    let opened = match handshake(&s, cfg) {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            c.handshake_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "sync handshake failed");
            return;
        }
    };
    match session(s, cfg, c, opened) {
        Ok(()) => {}
        Err(SyncError::Net { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            c.idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, idle = ?cfg.limits.idle_timeout, "sync session closed: no traffic");
        }
        Err(e) => tracing::warn!(%peer, error = %e, "sync session ended with an error"),
    }
}

/// A socket whose reads all end by one deadline (the handshake's: a peer
/// sending a byte at a time cannot stretch it), or without one, each within
/// the socket's own read timeout.
struct Timed {
    s: TcpStream,
    until: Option<Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(until) = self.until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake deadline passed",
                ));
            }
            self.s.set_read_timeout(Some(left))?;
        }
        self.s.read(buf)
    }
}

/// A connection that proved the key and opened a volume.
struct Opened {
    /// The handshake's reader: its buffer may hold bytes already sent.
    r: BufReader<Timed>,
    volume: String,
    vol: Volume,
    write: bool,
}

/// Hello, Auth, AuthOk, Open, all within [`Limits::handshake_timeout`] and
/// in frames of at most [`proto::MAX_HANDSHAKE_FRAME`] bytes. `Ok(None)`:
/// the volume was refused (and the client told why).
fn handshake(s: &TcpStream, cfg: &AgentConfig) -> Result<Option<Opened>> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let net = |source| SyncError::Net {
        peer: peer.clone(),
        source,
    };
    s.set_nodelay(true).map_err(net)?;
    s.set_nonblocking(false).map_err(net)?;
    let limit = cfg.limits.handshake_timeout;
    s.set_write_timeout(Some(limit)).map_err(net)?;
    // Small buffers: nothing larger than a handshake frame is read (or
    // reserved) before the peer proved it knows the key.
    let mut r = BufReader::with_capacity(
        proto::MAX_HANDSHAKE_FRAME,
        Timed {
            s: s.try_clone().map_err(net)?,
            until: Some(Instant::now() + limit),
        },
    );
    let send = |m: &Msg| -> Result<()> { (&*s).write_all(&proto::encode(m)).map_err(net) };
    let recv = |r: &mut BufReader<Timed>| -> Result<Option<Msg>> {
        match proto::read_msg_max(r, proto::MAX_HANDSHAKE_FRAME).map_err(net)? {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(SyncError::Protocol(format!("refused frame: {e}"))),
        }
    };

    let nonce = random32()?;
    send(&Msg::Hello { nonce })?;
    let client_nonce = match recv(&mut r) {
        Ok(Some(Msg::Auth { nonce: cn, mac })) => {
            let want = proto::auth_mac(&cfg.key, "client", &nonce, &cn);
            if !proto::mac_eq(&mac, &want) {
                let _ = send(&Msg::Error {
                    message: "authentication failed: wrong key".into(),
                });
                return Err(SyncError::Auth(format!("{peer}: wrong key")));
            }
            cn
        }
        Ok(_) | Err(SyncError::Protocol(_)) => {
            let _ = send(&Msg::Error {
                message: "authentication required".into(),
            });
            return Err(SyncError::Auth(format!("{peer}: no valid Auth message")));
        }
        Err(e) => return Err(e),
    };
    send(&Msg::AuthOk {
        mac: proto::auth_mac(&cfg.key, "server", &client_nonce, &nonce),
    })?;
    let (volume, write) = match recv(&mut r)? {
        Some(Msg::Open { volume, write }) => (volume, write),
        _ => return Err(SyncError::Protocol(format!("{peer}: expected Open"))),
    };
    let Some(vol) = cfg.volumes.get(&volume) else {
        send(&Msg::Error {
            message: format!("unknown volume {volume:?}"),
        })?;
        return Ok(None);
    };
    if write && vol.read_only {
        send(&Msg::Error {
            message: format!("volume {volume:?} is read-only"),
        })?;
        return Ok(None);
    }
    send(&Msg::Ok)?;
    Ok(Some(Opened {
        r,
        vol: vol.clone(),
        volume,
        write,
    }))
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| SyncError::Auth(format!("no randomness: {e}")))?;
    Ok(b)
}

struct Session<'a> {
    tree: Arc<LocalTree>,
    write: bool,
    name: &'a str,
    /// Where watch slots come from and how many there are; `None` when the
    /// volume allows no watch.
    watch: Option<(&'a Arc<Counters>, usize)>,
    /// Held while this session's tree has a watch.
    watching: Option<WatchSlot>,
    failed: Option<String>,
    /// Block mode: (size, block size, hashes of what the target holds).
    block: Option<(u64, u32, Vec<Digest>)>,
    /// Paths received in `ScanPathsPart`s for the next `ScanPathsReq`.
    scan_paths: BTreeSet<RelPath>,
    /// Independent ops (whole small files, symlinks, file metadata) waiting
    /// to be applied in parallel; see [`Batch`].
    batch: Batch,
    /// The batch being applied on the worker threads while this session
    /// reads the next one; answers its first failure, if any.
    in_flight: Option<std::sync::mpsc::Receiver<Option<String>>>,
}

/// Ops that touch one entry each and need no order among themselves (the
/// sender itself issues them from parallel workers): whole small files,
/// symlinks and metadata of files and links. The session collects a run of
/// them and applies it on several threads, so the receiver is not one
/// syscall chain at a time. Any other message first applies the whole batch
/// (a barrier): directories are made before, directory metadata is set
/// after, and a request sees every earlier op done. A path appears at most
/// once in a batch (a repeat applies the batch first).
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    paths: HashSet<RelPath>,
    bytes: usize,
}

/// A batch is applied when it holds this many ops or data bytes.
const BATCH_OPS: usize = 512;
const BATCH_BYTES: usize = 32 << 20;

impl Batch {
    /// The path of an op that may join a batch.
    fn batchable(op: &Op) -> Option<&RelPath> {
        match op {
            Op::PutFile { path, .. } | Op::Symlink { path, .. } => Some(path),
            Op::SetMeta { path, kind, .. } if *kind != Kind::Dir => Some(path),
            _ => None,
        }
    }
}

/// The agent's own worker threads for applying runs of ops and hashing
/// blocks. Not rayon's global pool: a client in the same process (tests, or
/// a relay between two agents) sends from global-pool workers and blocks on
/// the socket until the agent reads; an agent waiting for those same workers
/// would never read again.
fn agent_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("ferry-agent-{i}"))
            .build()
            .expect("starting the agent's worker threads")
    })
}

impl Session<'_> {
    /// The tree, once this session may watch it: the volume allows watches
    /// and a slot under `max_watches` is free (held until the session ends).
    fn watch(&mut self) -> Result<&LocalTree> {
        if self.watching.is_none() {
            let Some((counters, max)) = self.watch else {
                return Err(SyncError::Unsupported(format!(
                    "volume {:?} allows no watch (set watch = true for it in the agent's config)",
                    self.name
                )));
            };
            let slot = WatchSlot::take(counters, max).ok_or_else(|| {
                SyncError::Unsupported(format!(
                    "the agent already has its {max} watches (max_watches); walk the tree instead"
                ))
            })?;
            self.watching = Some(slot);
        }
        Ok(&self.tree)
    }

    /// Applies the pending batch in parallel and waits for it (a barrier);
    /// the first failure becomes the session's failure (reported at the next
    /// request).
    fn apply_batch(&mut self) {
        self.start_batch();
        self.wait_in_flight();
    }

    /// Waits for the batch on the worker threads, if any.
    fn wait_in_flight(&mut self) {
        if let Some(rx) = self.in_flight.take() {
            let failure = rx
                .recv()
                .unwrap_or_else(|_| Some("a worker thread stopped".into()));
            if let Some(f) = failure {
                self.failed.get_or_insert(f);
            }
        }
    }

    /// Hands the pending batch to the worker threads and returns: the
    /// session reads and decodes the next batch meanwhile, so the workers
    /// do not wait for the socket (at most two batches are held). The
    /// previous batch finishes first: a path may be in consecutive batches,
    /// and nothing after a failed op may be written.
    fn start_batch(&mut self) {
        self.wait_in_flight();
        if self.batch.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.batch.ops);
        self.batch.paths.clear();
        self.batch.bytes = 0;
        if self.failed.is_some() {
            return;
        }
        let tree = self.tree.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        agent_pool().spawn(move || {
            let failed: Mutex<Option<String>> = Mutex::new(None);
            ops.into_par_iter().with_max_len(1).for_each(|op| {
                if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    return;
                }
                if let Err(e) = tree.apply(op) {
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e.to_string());
                }
            });
            let _ = tx.send(failed.into_inner().unwrap_or_else(|p| p.into_inner()));
        });
        self.in_flight = Some(rx);
    }

    /// Queues `m` if it is a batchable op of a writable session; gives it
    /// back otherwise (after applying the batch, which it must follow).
    fn queue(&mut self, m: Msg) -> Option<Msg> {
        if let Msg::Op(op) = &m {
            if let Some(p) = Batch::batchable(op).filter(|_| self.write) {
                if self.batch.paths.contains(p) {
                    self.apply_batch();
                }
                let Msg::Op(op) = m else { unreachable!() };
                if self.failed.is_some() {
                    // Nothing after a failed op is written.
                    return None;
                }
                let path = Batch::batchable(&op)
                    .cloned()
                    .unwrap_or_else(|| unreachable!());
                if let Op::PutFile { data, .. } = &op {
                    self.batch.bytes += data.len();
                }
                self.batch.paths.insert(path);
                self.batch.ops.push(op);
                if self.batch.ops.len() >= BATCH_OPS || self.batch.bytes >= BATCH_BYTES {
                    self.start_batch();
                }
                return None;
            }
        }
        self.apply_batch();
        Some(m)
    }
}

/// An opened volume's session: requests until the client hangs up, a
/// frame is refused, or nothing moves for [`Limits::idle_timeout`].
fn session(s: TcpStream, cfg: &AgentConfig, c: &Arc<Counters>, opened: Opened) -> Result<()> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let net = |source| SyncError::Net {
        peer: peer.clone(),
        source,
    };
    let Opened {
        r,
        volume,
        vol,
        write,
    } = opened;
    // From here each read and write may wait up to the idle timeout (a
    // large scan between requests is quiet for a while).
    let leftover = r.buffer().to_vec();
    let mut timed = r.into_inner();
    timed.until = None;
    let idle = cfg.limits.idle_timeout;
    s.set_read_timeout(Some(idle)).map_err(net)?;
    s.set_write_timeout(Some(idle)).map_err(net)?;
    let mut r = BufReader::with_capacity(256 * 1024, std::io::Cursor::new(leftover).chain(timed));
    let mut w = BufWriter::with_capacity(256 * 1024, s.try_clone().map_err(net)?);
    let send = |w: &mut BufWriter<TcpStream>, m: &Msg| -> Result<()> {
        proto::write_msg(w, m).map_err(net)
    };
    // Any frame the decoder refuses (bad path, bad length, unknown type)
    // becomes a Protocol error: the stream cannot be trusted after it.
    let recv = |r: &mut BufReader<_>| -> Result<Option<Msg>> {
        match proto::read_msg(r).map_err(net)? {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(SyncError::Protocol(format!("refused frame: {e}"))),
        }
    };
    tracing::info!(%peer, volume, write, "sync session opened");

    let mut sess = Session {
        tree: Arc::new(LocalTree::new(&vol.path)),
        write,
        name: &volume,
        watch: vol.watch.then_some((c, cfg.limits.max_watches)),
        watching: None,
        failed: None,
        block: None,
        scan_paths: BTreeSet::new(),
        batch: Batch::default(),
        in_flight: None,
    };
    loop {
        let m = match recv(&mut r) {
            Ok(Some(m)) => m,
            Ok(None) => {
                sess.apply_batch();
                return Ok(());
            }
            Err(e @ SyncError::Protocol(_)) => {
                sess.apply_batch();
                // A malformed frame: say why and hang up; the stream cannot be
                // trusted any further.
                let _ = send(
                    &mut w,
                    &Msg::Error {
                        message: e.to_string(),
                    },
                );
                let _ = w.flush();
                return Err(e);
            }
            Err(e) => {
                sess.apply_batch();
                return Err(e);
            }
        };
        let Some(m) = sess.queue(m) else { continue };
        // Pipelined frames get no answer; a failure waits for the next request.
        let is_op = matches!(m, Msg::Op(_) | Msg::Chunk(_) | Msg::ScanPathsPart(_));
        if let Err(e) = handle(&mut sess, m, &mut w) {
            if is_op {
                sess.failed.get_or_insert(e.to_string());
            } else {
                send(
                    &mut w,
                    &Msg::Error {
                        message: if e.is_not_found() {
                            format!("{VANISHED}{e}")
                        } else {
                            e.to_string()
                        },
                    },
                )?;
            }
        }
        if !is_op {
            w.flush().map_err(net)?;
        }
    }
}

fn handle(sess: &mut Session<'_>, m: Msg, w: &mut BufWriter<TcpStream>) -> Result<()> {
    let io = |e: std::io::Error| SyncError::Net {
        peer: "client".into(),
        source: e,
    };
    let send = |w: &mut BufWriter<TcpStream>, m: &Msg| proto::write_msg(w, m).map_err(io);
    let (op, m) = match m {
        Msg::Op(op) => (Some(op), None),
        Msg::Chunk(c) => (Some(Op::Chunk(c)), None),
        m => (None, Some(m)),
    };
    if let Some(op) = op {
        if sess.failed.is_some() {
            return Ok(());
        }
        if !sess.write {
            return Err(SyncError::Unsupported(format!(
                "volume {:?} was opened for reading",
                sess.name
            )));
        }
        if let Op::Block { offset, data } = &op {
            if let Some((size, bs, hashes)) = sess.block.as_mut() {
                let bsz = *bs as u64;
                let first = (offset / bsz) as usize;
                let count = (data.len() as u64).div_ceil(bsz) as usize;
                let end = offset.checked_add(data.len() as u64);
                // Whole blocks; only a run that ends the image may end short.
                let whole = (data.len() as u64).is_multiple_of(bsz) || end == Some(*size);
                let inside = end.is_some_and(|e| e <= *size);
                if offset % bsz != 0 || data.is_empty() || !whole || !inside {
                    return Err(SyncError::Protocol(format!(
                        "blocks at {offset} ({} bytes) are not whole blocks inside the target",
                        data.len()
                    )));
                }
                // The hashes of what was written, not the sender's claim; a
                // run is hashed on every core.
                agent_pool().install(|| {
                    hashes[first..first + count]
                        .par_iter_mut()
                        .zip(data.par_chunks(*bs as usize))
                        .for_each(|(h, b)| *h = *blake3::hash(b).as_bytes())
                });
            } else {
                return Err(SyncError::Protocol("block before BlockPrepare".into()));
            }
        }
        return sess.tree.apply(op);
    }
    // A request after a failed op gets the failure: the client learns early.
    if let Some(f) = sess.failed.take() {
        return Err(SyncError::Remote(f));
    }
    let Some(m) = m else { return Ok(()) };
    match m {
        Msg::Flush => {
            // The end of a pass: the tree lets go of the directories it
            // opened (the next pass looks at every path again).
            sess.tree.flush()?;
            send(w, &Msg::Ok)
        }
        Msg::ScanPathsPart(p) => {
            sess.scan_paths.extend(p);
            if sess.scan_paths.len() > MAX_CHANGED_PATHS {
                sess.scan_paths.clear();
                return Err(SyncError::Protocol(format!(
                    "more than {MAX_CHANGED_PATHS} paths to scan"
                )));
            }
            // No answer: the paths travel pipelined ahead of the request.
            Ok(())
        }
        Msg::ChangesReq => match sess.watch()?.changes()? {
            Changes::Full { reason } => send(w, &Msg::ChangesEnd { full: Some(reason) }),
            Changes::Paths(p) => {
                for part in proto::path_parts(&p) {
                    send(w, &Msg::ChangedPart(part))?;
                }
                send(w, &Msg::ChangesEnd { full: None })
            }
        },
        Msg::WatchFull { reason } => {
            sess.tree.watch_force_full(&reason)?;
            send(w, &Msg::Ok)
        }
        Msg::ScanReq { .. } | Msg::ScanPathsReq { .. } => {
            let man = match m {
                Msg::ScanPathsReq { checksum } => {
                    let paths = std::mem::take(&mut sess.scan_paths);
                    sess.tree.scan_paths(
                        &paths,
                        &ScanOptions {
                            checksum,
                            staged: false,
                        },
                    )?
                }
                // A session opened for writing is a receiver: its scan is the
                // one before a pass (see ScanOptions::staged).
                Msg::ScanReq { checksum } => sess.tree.scan(&ScanOptions {
                    checksum,
                    staged: sess.write,
                })?,
                _ => return Ok(()),
            };
            for e in man.entries {
                send(w, &Msg::Entry(e))?;
            }
            for t in man.temps {
                send(w, &Msg::Temp(t))?;
            }
            send(
                w,
                &Msg::ScanEnd {
                    skipped: man.skipped,
                    root: man.root,
                },
            )
        }
        Msg::MerkleRootReq => {
            let (root, count) = sess.tree.merkle_root()?;
            send(w, &Msg::MerkleRoot { root, count })
        }
        Msg::ChildrenReq { dir } => {
            let c = sess.tree.merkle_children(dir.as_ref())?;
            send(w, &Msg::Children(c))
        }
        Msg::BlockHashesReq { block_size } => {
            let (size, h) = sess.tree.block_hashes(block_size)?;
            send_hashes(w, size, &h)
        }
        Msg::ReadReq { path, sig } => {
            let mut out = |c| send(w, &Msg::Chunk(c));
            sess.tree.read(&path, sig.as_ref(), &mut out)?;
            send(w, &Msg::ReadEnd)
        }
        Msg::ReadSmallReq { path } => {
            let d = sess.tree.read_small_max(&path, 0, proto::MAX_DATA)?;
            send(w, &Msg::FileData(d))
        }
        Msg::ReadBlockReq { index, block_size } => {
            let d = sess.tree.read_block(index, block_size)?;
            send(w, &Msg::FileData(d))
        }
        Msg::SigReq {
            path,
            basis,
            block_size,
        } => {
            let s = sess.tree.signature(&path, basis, block_size)?;
            send(w, &Msg::Sig(s))
        }
        Msg::BlockPrepare { size, block_size } => {
            if !sess.write {
                return Err(SyncError::Unsupported(format!(
                    "volume {:?} was opened for reading",
                    sess.name
                )));
            }
            let h = sess.tree.block_prepare(size, block_size)?;
            send_hashes(w, size, &h)?;
            sess.block = Some((size, block_size, h));
            Ok(())
        }
        Msg::BlockFinish { size, block_size } => match sess.block.take() {
            Some((s, bs, h)) if s == size && bs == block_size => {
                sess.tree.block_finish(size, block_size, &h)?;
                send(w, &Msg::Ok)
            }
            _ => Err(SyncError::Protocol(
                "BlockFinish does not match BlockPrepare".into(),
            )),
        },
        other => Err(SyncError::Protocol(format!(
            "unexpected message in a session: {:?}",
            std::mem::discriminant(&other)
        ))),
    }
}

fn send_hashes(w: &mut BufWriter<TcpStream>, size: u64, h: &[Digest]) -> Result<()> {
    let io = |e: std::io::Error| SyncError::Net {
        peer: "client".into(),
        source: e,
    };
    for part in h.chunks(65536) {
        proto::write_msg(w, &Msg::HashesPart(part.to_vec())).map_err(io)?;
    }
    proto::write_msg(w, &Msg::HashesEnd { size }).map_err(io)
}
