//! The two sides of a pass, as traits, so the same driver runs local-to-local,
//! local-to-agent, agent-to-local (and agent-to-agent, relayed).
//!
//! A [`Dest`] is driven by a sequence of [`Op`]s. The same ops are the frames a
//! remote receiver gets, so what the wire carries is exactly what a local
//! receiver executes.

use rayon::prelude::*;

use crate::delta::{Chunk, Signature};
use crate::error::Result;
use crate::manifest::{Kind, Manifest, Meta, ScanOptions};
use crate::merkle::{Child, Digest};
use crate::path::RelPath;
use crate::watch::Changes;
use std::collections::BTreeSet;

/// Which file a delta is computed against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Plain whole-file transfer.
    None,
    /// The receiver's current version of the file.
    Target,
    /// The partial temporary file an interrupted pass left behind (resume).
    Partial,
}

/// One instruction for a receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a directory (or keep an existing one); its final mode and time are
    /// set by a later `SetMeta`, so a read-only directory can still be filled.
    Mkdir {
        path: RelPath,
    },
    /// Create or replace a symbolic link with this link text.
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        meta: Meta,
    },
    /// Make `path` a hard link to `to` (a file already in place).
    Hardlink {
        path: RelPath,
        to: RelPath,
    },
    /// Set mode, owner and mtime of an existing entry of this kind.
    SetMeta {
        path: RelPath,
        kind: Kind,
        meta: Meta,
    },
    /// Remove a file, link or whole directory.
    Delete {
        path: RelPath,
    },
    /// A whole small file in one piece.
    PutFile {
        path: RelPath,
        meta: Meta,
        data: Vec<u8>,
    },
    /// Start a streamed file; `Chunk`s follow, then `Commit`.
    Begin {
        path: RelPath,
        meta: Meta,
        basis: Basis,
    },
    Chunk(Chunk),
    /// Finish the streamed file: metadata, then rename into place.
    Commit,
    /// Set mode, owner and mtime of the root directory of the tree.
    RootMeta {
        meta: Meta,
    },
    /// Block mode: write `data` at byte `offset` of the target: one or more
    /// whole blocks starting on a block boundary (only the image's last block
    /// may be short).
    Block {
        offset: u64,
        data: Vec<u8>,
    },
}

/// What both sides can do: describe their tree and prove its content.
pub trait Tree: Sync {
    /// Walks the tree.
    fn scan(&self, opts: &ScanOptions) -> Result<Manifest>;
    /// Walks only `paths` (whole subtrees for directories) and their ancestor
    /// directories: what a watched pass visits (see
    /// [`crate::manifest::scan_paths`]).
    fn scan_paths(&self, paths: &BTreeSet<RelPath>, opts: &ScanOptions) -> Result<Manifest>;
    /// Computes (and keeps for [`Tree::merkle_children`]) the Merkle tree of the
    /// content; returns the root and the number of entries.
    fn merkle_root(&self) -> Result<(Digest, u64)>;
    /// Children of a directory of the last computed Merkle tree (`None`: root).
    fn merkle_children(&self, dir: Option<&RelPath>) -> Result<Vec<Child>>;
    /// Bytes sent and received on the network so far (0 for a local tree).
    fn wire_bytes(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Block mode: size of the image and BLAKE3 of each block.
    fn block_hashes(&self, block_size: u32) -> Result<(u64, Vec<Digest>)>;
}

/// The sending side.
pub trait Source: Tree {
    /// Streams the content of a file, as a delta against `sig` when given.
    fn read(
        &self,
        path: &RelPath,
        sig: Option<&Signature>,
        out: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()>;
    /// A whole small file. `size` is what the scan saw (0: unknown): a
    /// file that still has exactly that many bytes is not asked for more
    /// (one read, not two); one that grew is read to its end.
    fn read_small(&self, path: &RelPath, size: u64) -> Result<Vec<u8>>;
    /// Many small files (path, size the scan saw), each handed to `out`
    /// with its index in `files`, in no set order; the first error `out`
    /// returns ends the reads (files not read yet are not handed over).
    /// The default reads them on rayon's threads with
    /// [`Source::read_small`]; a source behind a round trip keeps many
    /// reads outstanding instead of waiting for each.
    fn read_small_each(
        &self,
        files: &[(&RelPath, u64)],
        out: &(dyn Fn(usize, Result<Vec<u8>>) -> Result<()> + Sync),
    ) -> Result<()> {
        files
            .par_iter()
            .enumerate()
            .try_for_each(|(i, (path, size))| out(i, self.read_small(path, *size)))
    }
    /// Block mode: the content of blocks `index` (the last one may be short).
    fn read_block(&self, index: u64, block_size: u32) -> Result<Vec<u8>>;
    /// Block mode: `count` consecutive blocks from `index`, back to back.
    fn read_blocks(&self, index: u64, count: u64, block_size: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for i in index..index + count {
            out.extend_from_slice(&self.read_block(i, block_size)?);
        }
        Ok(out)
    }
    /// `--watch`: what changed since the previous call. The first call starts
    /// recording (on the source's machine) and answers a full walk.
    fn changes(&self) -> Result<Changes>;
    /// Makes the next [`Source::changes`] answer a full walk, saying `reason`
    /// (the changes taken for a failed pass are lost).
    fn watch_force_full(&self, reason: &str) -> Result<()>;
}

/// The receiving side.
pub trait Dest: Tree {
    /// Signature of the basis file for a delta, `None` if it does not exist.
    fn signature(&self, path: &RelPath, basis: Basis, block_size: u32)
        -> Result<Option<Signature>>;
    /// Executes one op. A remote receiver may report the failure of an op at
    /// the next [`Dest::flush`] instead (ops are pipelined).
    fn apply(&self, op: Op) -> Result<()>;
    /// Waits until every op sent so far is applied; returns the first failure.
    fn flush(&self) -> Result<()>;
    /// Block mode: make the target `size` bytes and return the hashes of what it
    /// holds now (from the digest file when still valid).
    fn block_prepare(&self, size: u64, block_size: u32) -> Result<Vec<Digest>>;
    /// Block mode: durably finish the pass and record `hashes` as the digest.
    fn block_finish(&self, size: u64, block_size: u32, hashes: &[Digest]) -> Result<()>;
}
