//! Proof of equality: a Merkle tree over (relative path, type, mode, size,
//! mtime, content hash), shaped like the directory tree.
//!
//! A directory's hash covers its own metadata and the sorted (name, hash) list
//! of its children, so equal roots prove equal trees, and a mismatch is
//! narrowed by descending only into children whose hashes differ: the cost of
//! finding one changed file is the depth of the tree, not its size (the
//! narrowing, which asks both sides level by level, is `engine::verify`).
//! Owners are left out on purpose: a copy made without root cannot keep them,
//! and the invariant the orchestrator needs is about content.

use std::collections::HashMap;

use crate::manifest::{Entry, Kind, Manifest};
use crate::path::RelPath;

/// A BLAKE3 hash.
pub type Digest = [u8; 32];

/// One child in a directory's Merkle node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub name: Vec<u8>,
    pub kind: Kind,
    /// Hash of the child's own metadata and content (or, for a directory, its
    /// own metadata only).
    pub own: Digest,
    /// Hash of the whole subtree (equal to `own` for non-directories).
    pub hash: Digest,
}

/// The Merkle tree of one side.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    pub root: Digest,
    pub count: u64,
    children: HashMap<Option<RelPath>, Vec<Child>>,
}

fn own_hash(e: &Entry) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&[e.kind.code()]);
    h.update(&e.meta.mode.to_le_bytes());
    h.update(&e.size.to_le_bytes());
    // Directory times are left out: a directory's mtime moves whenever a child
    // is added or removed, so it says nothing the children's hashes do not.
    if e.kind != Kind::Dir {
        h.update(&e.meta.mtime.secs.to_le_bytes());
        h.update(&e.meta.mtime.nanos.to_le_bytes());
    }
    match e.kind {
        Kind::File => h.update(&e.hash.unwrap_or([0; 32])),
        Kind::Symlink => h.update(e.target.as_deref().unwrap_or(b"")),
        Kind::Dir => h.update(b"dir"),
    };
    *h.finalize().as_bytes()
}

fn dir_hash(own: Option<&Digest>, children: &mut [Child]) -> Digest {
    children.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = blake3::Hasher::new();
    if let Some(o) = own {
        h.update(o);
    }
    for c in children.iter() {
        h.update(&(c.name.len() as u32).to_le_bytes());
        h.update(&c.name);
        h.update(&c.hash);
    }
    *h.finalize().as_bytes()
}

impl MerkleTree {
    /// Builds the tree from a manifest scanned with checksums.
    pub fn build(m: &Manifest) -> MerkleTree {
        let mut children: HashMap<Option<RelPath>, Vec<Child>> = HashMap::new();
        // Reverse path order visits every child before its parent (a parent's
        // path is a prefix of its children's, so it sorts first).
        for e in m.entries.iter().rev() {
            let own = own_hash(e);
            let hash = if e.kind == Kind::Dir {
                let mut list = children.remove(&Some(e.path.clone())).unwrap_or_default();
                let h = dir_hash(Some(&own), &mut list);
                children.insert(Some(e.path.clone()), list);
                h
            } else {
                own
            };
            children.entry(e.path.parent()).or_default().push(Child {
                name: e.path.file_name().to_vec(),
                kind: e.kind,
                own,
                hash,
            });
        }
        let mut top = children.remove(&None).unwrap_or_default();
        let root = dir_hash(None, &mut top);
        children.insert(None, top);
        MerkleTree {
            root,
            count: m.entries.len() as u64,
            children,
        }
    }

    /// The children of a directory (empty if unknown).
    pub fn children(&self, dir: Option<&RelPath>) -> Vec<Child> {
        self.children
            .get(&dir.cloned())
            .cloned()
            .unwrap_or_default()
    }
}

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub source_root: Digest,
    pub dest_root: Digest,
    pub entries: u64,
    /// Paths that differ (at most `limit`), empty when the roots match.
    pub differing: Vec<RelPath>,
    /// True when more differences exist than were listed.
    pub truncated: bool,
}

impl Verdict {
    pub fn equal(&self) -> bool {
        self.source_root == self.dest_root
    }
}
