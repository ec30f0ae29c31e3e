//! What each message of a session does: receiver ops (checked, then
//! applied to the tree) and requests (answered).

use rayon::prelude::*;

use super::session::{agent_pool, Out, Session};
use crate::endpoint::{Dest, Op, Source, Tree};
use crate::error::{Result, SyncError};
use crate::manifest::ScanOptions;
use crate::merkle::Digest;
use crate::proto::{self, Msg};
use crate::watch::{Changes, MAX_CHANGED_PATHS};

/// The peer's write failed (the client hung up or stopped reading).
fn io(e: std::io::Error) -> SyncError {
    SyncError::Net {
        peer: "client".into(),
        source: e,
    }
}

fn send(w: &mut Out, m: &Msg) -> Result<()> {
    proto::write_msg(w, m).map_err(io)
}

/// One message of a session: a receiver op is applied (no answer), any
/// other message is a request and is answered.
pub(super) fn handle(sess: &mut Session<'_>, m: Msg, w: &mut Out) -> Result<()> {
    match m {
        Msg::Op(op) => apply_op(sess, op),
        Msg::Chunk(c) => apply_op(sess, Op::Chunk(c)),
        m => {
            // A request after a failed op gets the failure: the client
            // learns early.
            if let Some(f) = sess.failed.take() {
                return Err(SyncError::Remote(f));
            }
            answer(sess, m, w)
        }
    }
}

/// A receiver op: skipped after a failure (reported at the next request),
/// refused on a read-only session, and a block run checked first.
fn apply_op(sess: &mut Session<'_>, op: Op) -> Result<()> {
    if sess.failed.is_some() {
        return Ok(());
    }
    if !sess.write {
        return Err(read_only(sess));
    }
    if let Op::Block { offset, data } = &op {
        record_block_run(sess, *offset, data)?;
    }
    sess.tree.apply(op)
}

fn read_only(sess: &Session<'_>) -> SyncError {
    SyncError::Unsupported(format!("volume {:?} was opened for reading", sess.name))
}

/// Checks that a run of blocks is whole blocks inside the prepared target
/// and records their hashes: the hashes of what is written, not the
/// sender's claim (a run is hashed on every core).
fn record_block_run(sess: &mut Session<'_>, offset: u64, data: &[u8]) -> Result<()> {
    let Some((size, bs, hashes)) = sess.block.as_mut() else {
        return Err(SyncError::Protocol("block before BlockPrepare".into()));
    };
    let bsz = *bs as u64;
    let first = (offset / bsz) as usize;
    let count = (data.len() as u64).div_ceil(bsz) as usize;
    let end = offset.checked_add(data.len() as u64);
    // Whole blocks; only a run that ends the image may end short.
    let whole = (data.len() as u64).is_multiple_of(bsz) || end == Some(*size);
    let inside = end.is_some_and(|e| e <= *size);
    if !offset.is_multiple_of(bsz) || data.is_empty() || !whole || !inside {
        return Err(SyncError::Protocol(format!(
            "blocks at {offset} ({} bytes) are not whole blocks inside the target",
            data.len()
        )));
    }
    agent_pool().install(|| {
        hashes[first..first + count]
            .par_iter_mut()
            .zip(data.par_chunks(*bs as usize))
            .for_each(|(h, b)| *h = *blake3::hash(b).as_bytes())
    });
    sess.stats.blocks_written(count as u64);
    Ok(())
}

/// Answers a request. One arm per request type: the list is the agent's
/// side of the protocol, kept whole so it reads against `Msg`.
fn answer(sess: &mut Session<'_>, m: Msg, w: &mut Out) -> Result<()> {
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
        Msg::ScanPathsReq { checksum } => {
            let paths = std::mem::take(&mut sess.scan_paths);
            let opts = ScanOptions {
                checksum,
                staged: false,
            };
            send_manifest(w, sess.tree.scan_paths(&paths, &opts)?)
        }
        // A session opened for writing is a receiver: its scan is the one
        // before a pass (see ScanOptions::staged).
        Msg::ScanReq { checksum } => {
            let opts = ScanOptions {
                checksum,
                staged: sess.write,
            };
            send_manifest(w, sess.tree.scan(&opts)?)
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
            sess.stats.file_sent();
            send(w, &Msg::ReadEnd)
        }
        Msg::ReadSmallReq { path } => {
            let d = sess.tree.read_small_max(&path, 0, proto::MAX_DATA)?;
            sess.stats.file_sent();
            send(w, &Msg::FileData(d))
        }
        Msg::ReadBlockReq { index, block_size } => {
            let d = sess.tree.read_block(index, block_size)?;
            sess.stats.blocks_sent(1);
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
                return Err(read_only(sess));
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
        Msg::SpaceReq => send(w, &Msg::Space(space(sess)?)),
        other => Err(SyncError::Protocol(format!(
            "unexpected message in a session: {:?}",
            std::mem::discriminant(&other)
        ))),
    }
}

/// statvfs of the volume's root: what an unprivileged writer may still use
/// (`f_bavail`, `f_favail`), not the root-reserved blocks.
fn space(sess: &Session<'_>) -> Result<proto::Space> {
    let root = sess.tree.root();
    let s = rustix::fs::statvfs(root)
        .map_err(|e| SyncError::io("statvfs", root, std::io::Error::from(e)))?;
    let bytes = |blocks: u64| blocks.saturating_mul(s.f_frsize);
    // Some file systems report more available than total inodes (or none
    // at all): clamped, so the answer passes the client's decoder.
    Ok(proto::Space {
        bytes_free: bytes(s.f_bavail).min(bytes(s.f_blocks)),
        bytes_total: bytes(s.f_blocks),
        inodes_free: s.f_favail.min(s.f_files),
        inodes_total: s.f_files,
    })
}

/// A scan's answer: its entries, the temporary files it found, the end.
fn send_manifest(w: &mut Out, man: crate::manifest::Manifest) -> Result<()> {
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

fn send_hashes(w: &mut Out, size: u64, h: &[Digest]) -> Result<()> {
    for part in h.chunks(65536) {
        proto::write_msg(w, &Msg::HashesPart(part.to_vec())).map_err(io)?;
    }
    proto::write_msg(w, &Msg::HashesEnd { size }).map_err(io)
}
