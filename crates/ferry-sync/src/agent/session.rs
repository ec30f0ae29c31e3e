//! An opened volume's session: the request loop, and the batches of
//! independent ops applied on the agent's worker threads.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::config::AgentConfig;
use super::handshake::Opened;
use super::requests::handle;
use super::stats::{AgentStats, ErrorKind, Metered, WatchSlot};
use crate::endpoint::{Dest, Op};
use crate::error::{Result, SyncError};
use crate::local::LocalTree;
use crate::manifest::Kind;
use crate::merkle::Digest;
use crate::path::RelPath;
use crate::proto::{self, Msg, VANISHED};

pub(super) struct Session<'a> {
    pub(super) tree: Arc<LocalTree>,
    pub(super) write: bool,
    pub(super) name: &'a str,
    /// Where watch slots come from and how many there are; `None` when the
    /// volume allows no watch.
    pub(super) watch: Option<(&'a Arc<AgentStats>, usize)>,
    pub(super) stats: &'a Arc<AgentStats>,
    /// Held while this session's tree has a watch.
    pub(super) watching: Option<WatchSlot>,
    pub(super) failed: Option<String>,
    /// Block mode: (size, block size, hashes of what the target holds).
    pub(super) block: Option<(u64, u32, Vec<Digest>)>,
    /// Paths received in `ScanPathsPart`s for the next `ScanPathsReq`.
    pub(super) scan_paths: BTreeSet<RelPath>,
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
pub(super) fn agent_pool() -> &'static rayon::ThreadPool {
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
    pub(super) fn watch(&mut self) -> Result<&LocalTree> {
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

    /// Records the first failed op of a run: later ops are skipped and the
    /// next request is answered with it.
    pub(super) fn fail_op(&mut self, why: String) {
        if self.failed.is_none() {
            self.stats.error(ErrorKind::Op);
            self.failed = Some(why);
        }
    }

    /// Waits for the batch on the worker threads, if any.
    fn wait_in_flight(&mut self) {
        if let Some(rx) = self.in_flight.take() {
            let failure = rx
                .recv()
                .unwrap_or_else(|_| Some("a worker thread stopped".into()));
            if let Some(f) = failure {
                self.fail_op(f);
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

/// Where a session's answers go: buffered, counted into the agent's bytes.
pub(super) type Out = BufWriter<Metered<TcpStream>>;

/// An opened volume's session: requests until the client hangs up, a
/// frame is refused, or nothing moves for [`Limits::idle_timeout`].
pub(super) fn session(
    s: TcpStream,
    cfg: &AgentConfig,
    c: &Arc<AgentStats>,
    opened: Opened,
    hashes: Arc<crate::hash_cache::HashCache>,
) -> Result<()> {
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
    let timed = Metered {
        inner: timed,
        stats: c.clone(),
    };
    let mut r = BufReader::with_capacity(256 * 1024, std::io::Cursor::new(leftover).chain(timed));
    let socket = Metered {
        inner: s.try_clone().map_err(net)?,
        stats: c.clone(),
    };
    let mut w = BufWriter::with_capacity(256 * 1024, socket);
    let send = |w: &mut Out, m: &Msg| -> Result<()> { proto::write_msg(w, m).map_err(net) };
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
    let _in_gauge = c.session_started();

    let mut sess = Session {
        tree: Arc::new(LocalTree::new(&vol.path).with_hash_cache(hashes)),
        write,
        name: &volume,
        watch: vol.watch.then_some((c, cfg.limits.max_watches)),
        stats: c,
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
        c.message(&m);
        let Some(m) = sess.queue(m) else { continue };
        // Pipelined frames get no answer; a failure waits for the next request.
        let is_op = matches!(m, Msg::Op(_) | Msg::Chunk(_) | Msg::ScanPathsPart(_));
        if let Err(e) = handle(&mut sess, m, &mut w) {
            if is_op {
                sess.fail_op(e.to_string());
            } else {
                c.error(ErrorKind::Request);
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
