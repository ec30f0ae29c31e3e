//! Proofs of equality: Merkle roots narrowed to the differing paths (file
//! mode), fresh block hashes (block mode).

use std::collections::HashMap;

use crate::endpoint::{Dest, Source, Tree};
use crate::error::Result;
use crate::manifest::Kind;
use crate::merkle::{self, Child, Verdict};
use crate::path::RelPath;

/// Proves the two trees equal (Merkle roots) or lists up to `limit` differing
/// paths.
pub fn verify(src: &dyn Source, dst: &dyn Dest, limit: usize) -> Result<Verdict> {
    narrow(src, dst, limit)
}

/// Block mode verification: fresh hashes of both sides (the digest file is not
/// trusted here), and the indexes of differing blocks.
pub fn verify_blocks(
    src: &dyn Source,
    dst: &dyn Dest,
    block_size: u32,
    limit: usize,
) -> Result<BlockVerdict> {
    let (ssize, a) = src.block_hashes(block_size)?;
    let (dsize, b) = dst.block_hashes(block_size)?;
    let mut differing = Vec::new();
    let n = a.len().max(b.len());
    let mut count = 0u64;
    for i in 0..n {
        if a.get(i) != b.get(i) {
            count += 1;
            if differing.len() < limit {
                differing.push(i as u64);
            }
        }
    }
    Ok(BlockVerdict {
        source_root: block_root(ssize, &a),
        dest_root: block_root(dsize, &b),
        blocks: a.len() as u64,
        differing,
        differing_count: count,
    })
}

/// Root over the block hashes (and the size, so a truncated copy differs).
pub fn block_root(size: u64, hashes: &[merkle::Digest]) -> merkle::Digest {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for d in hashes {
        h.update(d);
    }
    *h.finalize().as_bytes()
}

/// The outcome of a block verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockVerdict {
    pub source_root: merkle::Digest,
    pub dest_root: merkle::Digest,
    pub blocks: u64,
    pub differing: Vec<u64>,
    pub differing_count: u64,
}

impl BlockVerdict {
    pub fn equal(&self) -> bool {
        self.source_root == self.dest_root
    }
}

/// Computes both sides' Merkle roots and nothing else: ahead of a proof
/// that must be quick (the flip's), it leaves each side's kept content
/// hashes ([`crate::HashCache`], an agent's) warm, so that proof hashes only
/// what changes in between. Returns whether the roots were equal.
pub fn warm_proof(src: &dyn Source, dst: &dyn Dest) -> Result<bool> {
    let ((sr, _), (dr, _)) = roots(src, dst)?;
    Ok(sr == dr)
}

/// Both sides' roots, computed at once (each on its own machine through an
/// agent): the proof takes the longer of the two, not their sum.
fn roots(src: &dyn Tree, dst: &dyn Tree) -> Result<((merkle::Digest, u64), (merkle::Digest, u64))> {
    let (s, d) = std::thread::scope(|scope| {
        let s = scope.spawn(|| src.merkle_root());
        let d = dst.merkle_root();
        (s.join(), d)
    });
    let s = match s {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    Ok((s, d?))
}

/// Compares two trees: roots first, then narrows down to the differing paths.
fn narrow(src: &dyn Tree, dst: &dyn Tree, limit: usize) -> Result<Verdict> {
    let ((sr, scount), (dr, _)) = roots(src, dst)?;
    let mut v = Verdict {
        source_root: sr,
        dest_root: dr,
        entries: scount,
        differing: Vec::new(),
        truncated: false,
    };
    if sr == dr {
        return Ok(v);
    }
    let mut todo: Vec<Option<RelPath>> = vec![None];
    while let Some(dir) = todo.pop() {
        let a = src.merkle_children(dir.as_ref())?;
        let b = dst.merkle_children(dir.as_ref())?;
        let bm: HashMap<&[u8], &Child> = b.iter().map(|c| (c.name.as_slice(), c)).collect();
        let am: HashMap<&[u8], &Child> = a.iter().map(|c| (c.name.as_slice(), c)).collect();
        let report = |name: &[u8], v: &mut Verdict| -> Result<()> {
            let p = match &dir {
                Some(d) => d.join(name)?,
                None => RelPath::name(name)?,
            };
            if v.differing.len() < limit {
                v.differing.push(p);
            } else {
                v.truncated = true;
            }
            Ok(())
        };
        for c in &a {
            match bm.get(c.name.as_slice()) {
                None => report(&c.name, &mut v)?,
                Some(d) if d.hash == c.hash => {}
                Some(d) if c.kind == Kind::Dir && d.kind == Kind::Dir => {
                    if c.own != d.own {
                        report(&c.name, &mut v)?;
                    }
                    let p = match &dir {
                        Some(x) => x.join(&c.name)?,
                        None => RelPath::name(&c.name)?,
                    };
                    todo.push(Some(p));
                }
                Some(_) => report(&c.name, &mut v)?,
            }
        }
        for c in &b {
            if !am.contains_key(c.name.as_slice()) {
                report(&c.name, &mut v)?;
            }
        }
    }
    v.differing.sort();
    Ok(v)
}
