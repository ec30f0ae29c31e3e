//! Relative paths inside a volume, and the checks that keep the receiver inside
//! its root.
//!
//! A [`RelPath`] is bytes (Unix names need not be UTF-8) with `/` between
//! components. It is validated once, when built: no empty path, no leading `/`,
//! no empty, `.` or `..` component, no NUL. Every path that arrives in a frame is
//! built through [`RelPath::new`], so the rest of the code never sees a bad one.
//!
//! The receiver opens each directory under the root with `O_NOFOLLOW |
//! O_DIRECTORY` from its parent's descriptor and works relative to it, so a
//! symlink planted in the tree (by a user of the site, or by an earlier bad
//! transfer) can never redirect a write outside the volume; when that open
//! is refused, [`checked_parent`] inspects the components with
//! `symlink_metadata` to name the one at fault.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, SyncError};

/// Longest relative path accepted (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single name accepted (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;

/// A validated relative path (see the module docs).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

fn unsafe_path(bytes: &[u8], reason: &'static str) -> SyncError {
    SyncError::UnsafePath {
        path: String::from_utf8_lossy(bytes).into_owned(),
        reason,
    }
}

impl RelPath {
    /// Validates `bytes` as a relative path.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<RelPath> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(unsafe_path(&bytes, "empty path"));
        }
        if bytes.len() > MAX_PATH_LEN {
            return Err(unsafe_path(&bytes, "path too long"));
        }
        if bytes.contains(&0) {
            return Err(unsafe_path(&bytes, "NUL byte in path"));
        }
        if bytes[0] == b'/' {
            return Err(unsafe_path(&bytes, "absolute path"));
        }
        for c in bytes.split(|&b| b == b'/') {
            match c {
                b"" => return Err(unsafe_path(&bytes, "empty component")),
                b"." => return Err(unsafe_path(&bytes, "'.' component")),
                b".." => return Err(unsafe_path(&bytes, "'..' component")),
                _ if c.len() > MAX_NAME_LEN => return Err(unsafe_path(&bytes, "name too long")),
                _ => {}
            }
        }
        Ok(RelPath(bytes))
    }

    /// Validates one name (a single component: no `/` allowed inside it).
    pub fn name(bytes: &[u8]) -> Result<RelPath> {
        if bytes.contains(&b'/') {
            return Err(unsafe_path(bytes, "'/' inside a name"));
        }
        RelPath::new(bytes)
    }

    /// `self/name`, where `name` is one validated component.
    pub fn join(&self, name: &[u8]) -> Result<RelPath> {
        let name = RelPath::name(name)?;
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.0.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(&name.0);
        RelPath::new(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a `Path` relative to a root.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The parent directory, `None` for a top-level name.
    pub fn parent(&self) -> Option<RelPath> {
        let i = self.0.iter().rposition(|&b| b == b'/')?;
        Some(RelPath(self.0[..i].to_vec()))
    }

    /// The path itself, then each directory above it up to the top-level
    /// name (the root, which has no `RelPath`, is not included).
    pub fn and_ancestors(&self) -> impl Iterator<Item = RelPath> {
        std::iter::successors(Some(self.clone()), RelPath::parent)
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Number of components (used to order deletions deepest first).
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|&&b| b == b'/').count() + 1
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0[other.0.len()] == b'/')
    }

    /// Where this path lives under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(self.as_path())
    }
}

/// Checks that every directory from `root` down to the parent of `rel` exists and
/// is a real directory (not a symlink), and returns the full parent path.
/// The root itself is trusted (it comes from the operator's configuration).
pub fn checked_parent(root: &Path, rel: &RelPath) -> Result<PathBuf> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.as_bytes().split(|&b| b == b'/') {
            cur.push(OsStr::from_bytes(c));
            let md = std::fs::symlink_metadata(&cur)
                .map_err(|e| SyncError::io("lstat parent", &cur, e))?;
            let ft = md.file_type();
            if !ft.is_dir() {
                return Err(SyncError::NotADirectory {
                    path: rel.to_string(),
                    component: String::from_utf8_lossy(c).into_owned(),
                    what: if ft.is_symlink() {
                        "a symbolic link"
                    } else {
                        "not a directory"
                    },
                });
            }
        }
    }
    Ok(cur)
}

/// The receiver's temporary name for `rel`: fixed length (a long name cannot
/// overflow NAME_MAX), deterministic (a resumed pass finds the partial file of
/// an interrupted one), and hidden.
pub fn temp_name(rel: &RelPath, suffix: &str) -> Vec<u8> {
    let h = blake3::hash(rel.as_bytes());
    let hex = h.to_hex();
    format!(".~ferry.{}.{suffix}", &hex[..32]).into_bytes()
}

/// True for names the receiver creates for itself (temporary and basis
/// files, staged directories).
pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(b".~ferry.")
        && (name.ends_with(b".part") || name.ends_with(b".basis") || name.ends_with(b".dir"))
}

/// The hidden name under which the receiver builds the new directory `rel`
/// before it appears whole (see `LocalTree`, "staged directories").
pub fn stage_name(rel: &RelPath) -> Vec<u8> {
    temp_name(rel, "dir")
}

/// Inside a staged directory: a file holding the name it will have, so the
/// scan after an interruption can list what already arrived in it. Removed
/// before the directory appears.
pub const STAGE_MARKER: &[u8] = b".~ferry.name.part";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_run_from_the_path_up_to_its_top_level_name() {
        let p = RelPath::new(b"a/b c/d").unwrap();
        let got: Vec<Vec<u8>> = p.and_ancestors().map(|a| a.as_bytes().to_vec()).collect();
        assert_eq!(got, [&b"a/b c/d"[..], b"a/b c", b"a"]);
        let top = RelPath::new(b"x").unwrap();
        assert_eq!(top.and_ancestors().count(), 1);
    }

    #[test]
    fn accepts_odd_but_safe_names() {
        for p in [
            &b"a"[..],
            b"a b/c",
            b"-rf",
            b"x\ny",
            "caf\u{e9}/\u{1f600}".as_bytes(),
            b"..a/b..",
            b".hidden",
        ] {
            RelPath::new(p).unwrap();
        }
    }

    #[test]
    fn parent_and_name() {
        let p = RelPath::new(&b"a/b/c"[..]).unwrap();
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        assert_eq!(p.file_name(), b"c");
        assert_eq!(p.depth(), 3);
        assert!(p.starts_with(&RelPath::new(&b"a/b"[..]).unwrap()));
        assert!(!p.starts_with(&RelPath::new(&b"a/bc"[..]).unwrap()));
    }
}
