//! What a tree holds: one [`Entry`] per path, found by a parallel walk.
//!
//! The walk never follows symbolic links: each directory is opened from its
//! parent's descriptor with `O_NOFOLLOW` and listed through that descriptor,
//! entries are `lstat`ed relative to it, and content is hashed through the
//! parent chain ([`crate::beneath`]), so a directory swapped for a link to
//! `/etc` mid-walk is refused, never listed or read through. It reads each
//! directory on a rayon worker so a tree of many small directories uses
//! every core, and returns entries sorted by path bytes, which puts every
//! directory before its contents.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rayon::prelude::*;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{Result, SyncError};
use crate::hash_cache::HashCache;
use crate::path::{is_temp_name, stage_name, RelPath, STAGE_MARKER};

/// The type of an entry. Other types (sockets, fifos, devices) are skipped by
/// the walk and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
        }
    }
    pub(crate) fn from_code(c: u8) -> Option<Kind> {
        match c {
            1 => Some(Kind::File),
            2 => Some(Kind::Dir),
            3 => Some(Kind::Symlink),
            _ => None,
        }
    }
}

/// A modification time with nanoseconds (what the file system keeps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

/// Metadata the receiver applies: permission bits, owner, modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Mtime,
}

/// One path of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    pub meta: Meta,
    /// Bytes for files, link text length for symlinks, 0 for directories.
    pub size: u64,
    /// The link text of a symlink (never followed).
    pub target: Option<Vec<u8>>,
    /// BLAKE3 of the content, when the scan was asked for checksums.
    pub hash: Option<[u8; 32]>,
    /// (device, inode) and link count, to find hard links within the tree.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u32,
}

/// A whole tree, sorted by path, plus what the walk skipped.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub entries: Vec<Entry>,
    /// Receiver-owned temporary names found in the tree (cleaned after a pass).
    pub temps: Vec<RelPath>,
    /// With [`ScanOptions::staged`]: hidden directories listed as if in place,
    /// as (path listed, hidden name in the same parent). Not on the wire.
    pub staged: Vec<(RelPath, Vec<u8>)>,
    /// Entries of unsupported types (fifos, sockets, devices) that were skipped.
    pub skipped: u64,
    /// Metadata of the root directory itself.
    pub root: Option<Meta>,
}

impl Manifest {
    /// Index by path.
    pub fn index(&self) -> HashMap<&RelPath, &Entry> {
        self.entries.iter().map(|e| (&e.path, e)).collect()
    }

    /// Total bytes of regular files.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .sum()
    }

    /// For each file that shares its inode with an earlier file of the tree (in
    /// path order), the path of that first file: the hard links to recreate.
    pub fn hard_link_leaders(&self) -> HashMap<RelPath, RelPath> {
        let mut first: HashMap<(u64, u64), &RelPath> = HashMap::new();
        let mut out = HashMap::new();
        for e in &self.entries {
            if e.kind == Kind::File && e.nlink > 1 {
                match first.get(&(e.dev, e.ino)) {
                    Some(leader) => {
                        out.insert(e.path.clone(), (*leader).clone());
                    }
                    None => {
                        first.insert((e.dev, e.ino), &e.path);
                    }
                }
            }
        }
        out
    }
}

/// What a scan computes beyond metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanOptions {
    /// Hash the content of every file (BLAKE3): `--checksum` and verification.
    pub checksum: bool,
    /// The receiver's scan before a pass: directories an interrupted pass was
    /// building hidden (see `LocalTree`, "staged directories") are listed as
    /// if in place, so what already arrived in them is not sent again. Never
    /// set for a proof of equality, which sees only what readers see. Not on
    /// the wire: an agent sets it for scans of a session opened for writing.
    pub staged: bool,
}

pub(crate) fn mtime_of(md: &Metadata) -> Mtime {
    Mtime {
        secs: md.mtime(),
        // nanos is always in 0..1e9 on Linux; clamp instead of trusting it.
        nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

pub(crate) fn meta_of(md: &Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: mtime_of(md),
    }
}

/// Builds the entry for `name` in the open directory `dir`, `lstat`ed as
/// `st` (`full` names it in errors). Returns `None` for types the replicator
/// does not carry.
// `stat`'s field types are the kernel's longs, which differ between
// architectures: the `from`s are identities here, conversions elsewhere.
#[allow(clippy::useless_conversion)]
pub(crate) fn entry_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    full: &Path,
    rel: RelPath,
    st: &Stat,
) -> Result<Option<Entry>> {
    let ft = FileType::from_raw_mode(st.st_mode);
    let (kind, size, target) = if ft == FileType::RegularFile {
        (Kind::File, st.st_size as u64, None)
    } else if ft == FileType::Directory {
        (Kind::Dir, 0, None)
    } else if ft == FileType::Symlink {
        let t = rustix::fs::readlinkat(dir, name, Vec::new())
            .map_err(|e| SyncError::io("readlink", full, e.into()))?
            .into_bytes();
        (Kind::Symlink, t.len() as u64, Some(t))
    } else {
        return Ok(None);
    };
    Ok(Some(Entry {
        path: rel,
        kind,
        meta: Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: Mtime {
                secs: i64::from(st.st_mtime),
                // nanos is always in 0..1e9 on Linux; clamp instead of
                // trusting it.
                nanos: u64::from(st.st_mtime_nsec).min(999_999_999) as u32,
            },
        },
        size,
        target,
        hash: None,
        dev: u64::from(st.st_dev),
        ino: u64::from(st.st_ino),
        nlink: u64::from(st.st_nlink).min(u64::from(u32::MAX)) as u32,
    }))
}

/// `lstat` of `name` in the open directory `dir`.
fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::result::Result<Stat, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// BLAKE3 of the content of the file `rel` below the open directory `root`
/// (`shown` names it in errors). Opened through the parent chain without
/// following links: a directory swapped for a symlink since the walk does
/// not lead the hash (which travels) out of the tree.
pub fn hash_file(root: impl std::os::fd::AsFd, rel: &RelPath, shown: &Path) -> Result<[u8; 32]> {
    let mut f = crate::beneath::open_read_beneath(root, rel)
        .map(std::fs::File::from)
        .map_err(|e| SyncError::io("open", shown, e.into()))?;
    crate::hash_cache::hash_reader(&mut f, shown)
}

#[derive(Default)]
struct Walked {
    entries: Vec<Entry>,
    temps: Vec<RelPath>,
    skipped: u64,
    staged: Vec<(RelPath, Vec<u8>)>,
}

impl Walked {
    fn extend(&mut self, w: Walked) {
        self.entries.extend(w.entries);
        self.temps.extend(w.temps);
        self.skipped += w.skipped;
        self.staged.extend(w.staged);
    }
}

/// The name a staged directory will have, read from the marker inside it;
/// `None` unless the marker is there, names a valid name, and the hidden
/// name is the one the receiver would give that name (a stray or forged
/// directory is only a leftover).
fn staged_name(parent: Option<&RelPath>, dir: BorrowedFd<'_>, hidden: &[u8]) -> Option<RelPath> {
    let hdir =
        rustix::fs::openat(dir, OsStr::from_bytes(hidden), dir_flags(), Mode::empty()).ok()?;
    let f = rustix::fs::openat(
        &hdir,
        OsStr::from_bytes(STAGE_MARKER),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut marker = Vec::new();
    // A name, not a file to stream: no more than a name may hold.
    std::fs::File::from(f)
        .take(crate::path::MAX_NAME_LEN as u64 + 1)
        .read_to_end(&mut marker)
        .ok()?;
    let rel = match parent {
        Some(d) => d.join(&marker).ok()?,
        None => RelPath::name(&marker).ok()?,
    };
    (stage_name(&rel) == hidden).then_some(rel)
}

/// Flags of a directory opened for the walk: never through a symlink.
fn dir_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Reads one open directory (`fd`, `full` on disk for messages, listed as
/// `dir`) and recurses into its subdirectories in parallel, each opened
/// from this one's descriptor with `O_NOFOLLOW`: a directory swapped for a
/// symlink during the walk is refused, never listed through. With
/// `staged`, a hidden directory an interrupted pass was building is walked
/// as the directory it will become, unless a real one of that name exists.
/// With `hashes`, a file whose kept hash still holds gets it at once (see
/// [`HashCache`]); the others are hashed by [`finish`].
fn walk_dir(
    fd: OwnedFd,
    full: &Path,
    dir: Option<&RelPath>,
    staged: bool,
    hashes: Option<&HashCache>,
) -> Result<Walked> {
    let mut rd = Dir::new(fd).map_err(|e| SyncError::io("read directory", full, e.into()))?;
    let mut out = Walked::default();
    // (listed as, name on disk, staged)
    let mut subdirs: Vec<(RelPath, Vec<u8>, bool)> = Vec::new();
    let mut hidden_dirs = Vec::new();
    let mut names = std::collections::HashSet::new();
    // Entries are collected first: the listing borrows the directory.
    let mut listed = Vec::new();
    while let Some(de) = rd.read() {
        let de = de.map_err(|e| SyncError::io("read directory", full, e.into()))?;
        let name = de.file_name().to_bytes();
        if name != b"." && name != b".." {
            listed.push(name.to_vec());
        }
    }
    let fd = rd
        .fd()
        .map_err(|e| SyncError::io("read directory", full, e.into()))?;
    for name in &listed {
        let name = &name[..];
        if name == STAGE_MARKER {
            // Inside a staged directory: the receiver's own note.
            continue;
        }
        let rel = match dir {
            Some(d) => d.join(name)?,
            None => RelPath::name(name)?,
        };
        if is_temp_name(name) {
            if staged && name.ends_with(b".dir") {
                hidden_dirs.push((rel, name.to_vec()));
            } else {
                out.temps.push(rel);
            }
            continue;
        }
        let p = full.join(OsStr::from_bytes(name));
        // A file removed between readdir and lstat is simply not part of the
        // tree. The lstat is relative to the open directory (no walk of the
        // whole path for every entry).
        let st = match lstat_at(fd, OsStr::from_bytes(name)) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(SyncError::io("lstat", &p, e.into())),
        };
        if staged {
            names.insert(rel.clone());
        }
        match entry_at(fd, OsStr::from_bytes(name), &p, rel.clone(), &st)? {
            Some(mut e) => {
                if let (Kind::File, Some(c)) = (e.kind, hashes) {
                    e.hash = c.lookup(&st);
                }
                if e.kind == Kind::Dir {
                    subdirs.push((rel, name.to_vec(), staged));
                }
                out.entries.push(e);
            }
            None => out.skipped += 1,
        }
    }
    for (temp, hidden) in hidden_dirs {
        let st = lstat_at(fd, OsStr::from_bytes(&hidden)).ok();
        let listed = staged_name(dir, fd, &hidden).filter(|r| !names.contains(r));
        match (listed, st) {
            (Some(rel), Some(st)) if FileType::from_raw_mode(st.st_mode).is_dir() => {
                let p = full.join(OsStr::from_bytes(&hidden));
                if let Some(e) = entry_at(fd, OsStr::from_bytes(&hidden), &p, rel.clone(), &st)? {
                    out.entries.push(e);
                }
                out.staged.push((rel.clone(), hidden.clone()));
                // Nothing inside a staged directory is staged again (new
                // directories there are made in place): a hidden one inside
                // is a leftover.
                subdirs.push((rel, hidden, false));
            }
            _ => out.temps.push(temp),
        }
    }
    let children: Vec<Result<Walked>> = subdirs
        .par_iter()
        .map(|(d, name, staged)| {
            let p = full.join(OsStr::from_bytes(name));
            let sub = rustix::fs::openat(fd, OsStr::from_bytes(name), dir_flags(), Mode::empty())
                .map_err(|e| SyncError::io("open directory", &p, e.into()))?;
            walk_dir(sub, &p, Some(d), *staged, hashes)
        })
        .collect();
    for c in children {
        out.extend(c?);
    }
    Ok(out)
}

/// Opens the root of a walk (its own path may hold links: it is configured).
fn open_root(root: &Path) -> Result<OwnedFd> {
    use rustix::fs::OFlags;
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SyncError::io("open directory", root, e.into()))
}

/// The metadata of a scan's root, which must be a directory.
fn root_metadata(root: &Path) -> Result<std::fs::Metadata> {
    let md = std::fs::metadata(root).map_err(|e| SyncError::io("stat root", root, e))?;
    if !md.is_dir() {
        return Err(SyncError::io(
            "scan",
            root,
            std::io::Error::other("not a directory"),
        ));
    }
    Ok(md)
}

/// Walks the tree under `root` (the root itself is not an entry).
pub fn scan(root: &Path, opts: &ScanOptions) -> Result<Manifest> {
    let md = root_metadata(root)?;
    // Staged content cannot be hashed by its listed path: a checksum scan
    // lists staged directories as leftovers (what they hold is sent again).
    let root_fd = open_root(root)?;
    let listing =
        rustix::io::dup(&root_fd).map_err(|e| SyncError::io("open directory", root, e.into()))?;
    let w = walk_dir(listing, root, None, opts.staged && !opts.checksum, None)?;
    finish(root, &root_fd, w, &md, opts, None)
}

/// A checksum scan (what a proof of equality needs) that takes the hashes
/// `hashes` kept for files unchanged since, and keeps the new ones there.
pub fn scan_hashed(root: &Path, hashes: &HashCache) -> Result<Manifest> {
    let md = root_metadata(root)?;
    let root_fd = open_root(root)?;
    let listing =
        rustix::io::dup(&root_fd).map_err(|e| SyncError::io("open directory", root, e.into()))?;
    let w = walk_dir(listing, root, None, false, Some(hashes))?;
    let opts = ScanOptions {
        checksum: true,
        staged: false,
    };
    finish(root, &root_fd, w, &md, &opts, Some(hashes))
}

/// Sorts the walked entries (parents first) and hashes them if asked.
fn finish(
    root: &Path,
    root_fd: &OwnedFd,
    w: Walked,
    root_md: &Metadata,
    opts: &ScanOptions,
    hashes: Option<&HashCache>,
) -> Result<Manifest> {
    let mut entries = w.entries;
    entries.par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    if opts.checksum {
        entries
            .par_iter_mut()
            .filter(|e| e.kind == Kind::File && e.hash.is_none())
            .try_for_each(|e| -> Result<()> {
                let shown = e.path.under(root);
                e.hash = Some(match hashes {
                    Some(c) => c.hash_file(root_fd, &e.path, &shown)?,
                    None => hash_file(root_fd, &e.path, &shown)?,
                });
                Ok(())
            })?;
    }
    Ok(Manifest {
        entries,
        temps: w.temps,
        staged: w.staged,
        skipped: w.skipped,
        root: Some(meta_of(root_md)),
    })
}

/// Walks only part of the tree under `root`: each of `paths` (with its whole
/// subtree when it is a directory here) and the directories above them. Both
/// sides of a watched pass scan the same `paths`, so comparing the two partial
/// manifests finds exactly what changed there: a path gone from the source is
/// extraneous at the destination, a new directory is copied whole, and the
/// ancestors carry the directory times that the change moved.
///
/// A path below something that is not a real directory here (a symlink, a
/// file, nothing) is not part of this tree and is left out.
pub fn scan_paths(
    root: &Path,
    paths: &std::collections::BTreeSet<RelPath>,
    opts: &ScanOptions,
) -> Result<Manifest> {
    let md = root_metadata(root)?;
    let root_fd = open_root(root)?;
    let in_set = |p: &RelPath| {
        let mut cur = p.parent();
        while let Some(c) = cur {
            if paths.contains(&c) {
                return true;
            }
            cur = c.parent();
        }
        false
    };
    // A path under another listed path is covered by that one's walk.
    let tops: Vec<&RelPath> = paths.iter().filter(|p| !in_set(p)).collect();
    let mut ancestors = std::collections::BTreeSet::new();
    for p in &tops {
        let mut cur = p.parent();
        while let Some(c) = cur {
            cur = c.parent();
            if !ancestors.insert(c) {
                break;
            }
        }
    }
    let mut out = Walked::default();
    // Path order puts parents first: a broken ancestor is known before its
    // descendants are looked at.
    let mut not_dirs: Vec<&RelPath> = Vec::new();
    for a in &ancestors {
        if not_dirs.iter().any(|b| a.starts_with(b)) {
            continue;
        }
        match lstat_entry(root, &root_fd, a)? {
            Some(e) => {
                if e.kind != Kind::Dir {
                    not_dirs.push(a);
                }
                out.entries.push(e);
            }
            None => not_dirs.push(a),
        }
    }
    let visits: Vec<Result<Walked>> = tops
        .par_iter()
        .filter(|p| !not_dirs.iter().any(|b| p.starts_with(b)))
        .map(|p| -> Result<Walked> {
            let mut w = Walked::default();
            if is_temp_name(p.file_name()) {
                w.temps.push((*p).clone());
                return Ok(w);
            }
            let Some(e) = lstat_entry(root, &root_fd, p)? else {
                return Ok(w);
            };
            let dir = e.kind == Kind::Dir;
            w.entries.push(e);
            if dir {
                // Watched passes never list staged directories: one found
                // here is a leftover, removed after the pass.
                let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY;
                let full = p.under(root);
                let fd = match crate::beneath::open(&root_fd, p, flags) {
                    Ok(fd) => fd,
                    // Removed, or no longer a directory (a symlink now),
                    // while we looked: not part of the tree.
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(w),
                    Err(e) => return Err(SyncError::io("open directory", &full, e.into())),
                };
                match walk_dir(fd, &full, Some(p), false, None) {
                    Ok(sub) => w.extend(sub),
                    // Removed while we looked: simply not part of the tree.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(w)
        })
        .collect();
    for v in visits {
        out.extend(v?);
    }
    finish(root, &root_fd, out, &md, opts, None)
}

/// The entry of one path (`None`: absent, below something that is not a
/// directory, or a type the replicator skips). Its parent is opened from
/// the root without following links, then the path is looked at from there.
fn lstat_entry(root: &Path, root_fd: &OwnedFd, p: &RelPath) -> Result<Option<Entry>> {
    let full = p.under(root);
    let parent = match p.parent() {
        None => None,
        Some(d) => match crate::beneath::open(root_fd, &d, OFlags::DIRECTORY) {
            Ok(fd) => Some(fd),
            // Gone, or a component is no directory (a file, a link): not
            // in the tree.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
            Err(e) => return Err(SyncError::io("open directory", &full, e.into())),
        },
    };
    let dir = parent.as_ref().unwrap_or(root_fd).as_fd();
    let name = OsStr::from_bytes(p.file_name());
    match lstat_at(dir, name) {
        Ok(st) => entry_at(dir, name, &full, p.clone(), &st),
        // Gone meanwhile: not in the tree.
        Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
        Err(e) => Err(SyncError::io("lstat", &full, e.into())),
    }
}
