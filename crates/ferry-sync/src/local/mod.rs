//! The local side of a pass: a [`LocalTree`] that reads a directory (a source)
//! and receives into it (a destination). The agent wraps the same type, so a
//! remote receiver runs exactly this code.
//!
//! Receiving rules, each a defence against a known failure:
//! - every path is a validated [`RelPath`], and every receiver op works
//!   relative to its parent directory, opened from the root one component at
//!   a time with `O_NOFOLLOW | O_DIRECTORY` ([`DirCache`]): no write follows a
//!   symlink in the tree, and no path is walked again between the check and
//!   the use (a symlink planted meanwhile cannot redirect it);
//! - file content goes to a hidden temporary name opened with `O_NOFOLLOW`, gets
//!   its metadata, and is renamed into place: readers never see half a file;
//! - the temporary name is deterministic, so an interrupted transfer of a large
//!   file is the basis of the next attempt (only the missing part travels);
//! - staged directories: a directory new to the tree is built under a hidden
//!   name (`.~ferry.<hash>.dir`, with a marker file naming it) and renamed to
//!   its name when the pass reaches directory metadata, after all content.
//!   Files inside are written under their own names directly: nobody can see
//!   them before the whole directory appears, and it saves a quarter of
//!   ext4's work per file on a first copy. The receiver's scan before a pass
//!   lists an interrupted pass's staged directories as if in place (by their
//!   markers), so what arrived is not sent again; a proof of equality never
//!   does (it sees what readers see);
//! - the open directories are kept for the pass: no path walk and no `lstat`
//!   of every parent per small file.
//!
//! Files: this one holds the tree and its directory cache; `small` writes
//! whole small files; `large` receives a large file in pieces; `entries`
//! makes directories, links, metadata and deletions; `endpoint` is the
//! tree as a [`Tree`](crate::Tree), a [`Source`](crate::Source) and a
//! [`Dest`](crate::Dest).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::AtFlags;

use crate::beneath::open_read_at;
use crate::block;
use crate::dircache::{DirCache, OpenDir};
use crate::error::{Result, SyncError};
use crate::manifest::Meta;
use crate::merkle::MerkleTree;
use crate::path::{checked_parent, RelPath};
use crate::watch::Watch;

mod endpoint;
mod entries;
mod large;
mod small;

use large::Open;

/// True when this process may set owners (effective uid 0).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A directory tree on this machine, as a source, a destination, or both.
pub struct LocalTree {
    root: PathBuf,
    /// Ownership is kept only when we are root (anyone else gets EPERM).
    chown: bool,
    open: Mutex<Option<Open>>,
    merkle: Mutex<Option<MerkleTree>>,
    /// `--watch`: started by the first [`Source::changes`]. Boxed: most trees
    /// never watch, and the watcher is large.
    watch: Mutex<Option<Box<Watch>>>,
    /// Block mode: the target image between `block_prepare` and `block_finish`.
    image: Mutex<Option<std::sync::Arc<block::ImageWriter>>>,
    /// Small files are written as unnamed files (`O_TMPFILE`) and linked into
    /// place; switched off at the first sign the filesystem cannot.
    unnamed_files: std::sync::atomic::AtomicBool,
    /// Open directories, for the small-file path (see [`DirCache`]).
    dirs: DirCache,
    /// Staged directories: listed path -> hidden name in the same parent
    /// (see the module docs).
    staged: std::sync::RwLock<std::collections::HashMap<RelPath, Vec<u8>>>,
    /// Content hashes kept between proofs of equality (see [`crate::HashCache`]);
    /// without it every proof hashes every file.
    hashes: Option<std::sync::Arc<crate::hash_cache::HashCache>>,
}

/// Access and modification time both set to the entry's mtime.
pub(super) fn times(meta: &Meta) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: meta.mtime.secs,
        tv_nsec: meta.mtime.nanos as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Removes `name` in the open directory `dir`, a whole directory tree if it
/// is one, without following symlinks; gone already is fine. The tree is
/// removed through the directory's /proc/self/fd link, so no path above
/// `dir` is walked again (std's remove_dir_all then works relative to open
/// descriptors and never follows a link inside).
pub(super) fn remove_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
    let name = OsStr::from_bytes(name);
    let r = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
            use std::os::fd::AsRawFd;
            let p = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
            std::fs::remove_dir_all(p)
        }
        Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into),
        Err(e) => Err(e.into()),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// True when `dir` or one of its ancestors is a staged directory in `staged`.
pub(super) fn staged_at_or_above(
    staged: &std::collections::HashMap<RelPath, Vec<u8>>,
    dir: &RelPath,
) -> bool {
    dir.and_ancestors().any(|c| staged.contains_key(&c))
}

/// Errors of `open(O_TMPFILE)` meaning "not here" rather than a failure.
pub(super) fn unnamed_unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::OPNOTSUPP, Errno::ISDIR, Errno::INVAL, Errno::NOSYS].contains(&e)
}

impl LocalTree {
    /// A tree rooted at `root` (a directory, or an image file in block mode).
    pub fn new(root: impl Into<PathBuf>) -> LocalTree {
        LocalTree {
            root: root.into(),
            chown: running_as_root(),
            open: Mutex::new(None),
            merkle: Mutex::new(None),
            watch: Mutex::new(None),
            image: Mutex::new(None),
            unnamed_files: true.into(),
            dirs: DirCache::default(),
            staged: Default::default(),
            hashes: None,
        }
    }

    /// This tree's proofs of equality take and keep content hashes in
    /// `hashes` (shared with other trees of the same process).
    pub fn with_hash_cache(
        mut self,
        hashes: std::sync::Arc<crate::hash_cache::HashCache>,
    ) -> LocalTree {
        self.hashes = Some(hashes);
        self
    }

    /// The open directory `dir` (`None` = the root); see [`DirCache`]. A
    /// component that is a symlink or not a directory is refused with the
    /// same error [`checked_parent`] gives.
    fn open_dir(&self, dir: &Option<RelPath>) -> Result<std::sync::Arc<OpenDir>> {
        use rustix::fs::{Mode, OFlags};
        if let Some(fd) = self.dirs.get(dir) {
            return Ok(fd);
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match dir {
            None => rustix::fs::open(&self.root, flags, Mode::empty())
                .map_err(|e| SyncError::io("open directory", &self.root, e.into()))?,
            Some(d) => {
                let parent = self.open_dir(&d.parent())?;
                let name = match self.staged.read().unwrap_or_else(|p| p.into_inner()).get(d) {
                    Some(hidden) => hidden.clone(),
                    None => d.file_name().to_vec(),
                };
                match rustix::fs::openat(
                    &*parent,
                    OsStr::from_bytes(&name),
                    flags | OFlags::NOFOLLOW,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(e) => {
                        // Let the path check name the offending component;
                        // anything else is the open's own error.
                        let probe = d.join(b"x")?;
                        checked_parent(&self.root, &self.on_disk(&probe)).map_err(|e| match e {
                            // Named by the directory, not by the probe.
                            SyncError::NotADirectory {
                                component, what, ..
                            } => SyncError::NotADirectory {
                                path: d.to_string(),
                                component,
                                what,
                            },
                            e => e,
                        })?;
                        return Err(SyncError::io(
                            "open directory",
                            d.under(&self.root),
                            e.into(),
                        ));
                    }
                }
            }
        };
        let open = std::sync::Arc::new(OpenDir::new(fd));
        self.dirs.put(dir.clone(), open.clone());
        Ok(open)
    }

    /// [`Source::read_small`](crate::Source::read_small) reading at most `max` bytes: a file larger
    /// than that is refused once `max` is passed, not read whole into memory
    /// (the agent answers a small read with one frame: a read-only session
    /// asking for a 10 GB file must not cost 10 GB).
    pub fn read_small_max(&self, path: &RelPath, size: u64, max: usize) -> Result<Vec<u8>> {
        let dir = self.open_dir(&path.parent())?;
        let fd = open_read_at(&*dir, OsStr::from_bytes(path.file_name()))
            .map_err(|e| SyncError::io("open", path.under(&self.root), e.into()))?;
        // Not read_to_end: on a File it asks fstat for the size first.
        let expect = usize::try_from(size).unwrap_or(usize::MAX);
        let mut v = match size {
            0 => Vec::with_capacity(16 << 10),
            _ => Vec::with_capacity(expect.saturating_add(1).min(crate::limits::MAX_DATA + 1)),
        };
        loop {
            if v.len() == v.capacity() {
                // Doubling, but never more than one byte past `max` (enough
                // to know the file is larger).
                let room = v
                    .len()
                    .max(4096)
                    .min(max.saturating_add(1).saturating_sub(v.len()));
                v.reserve_exact(room.max(1));
            }
            match rustix::io::read(&fd, rustix::buffer::spare_capacity(&mut v)) {
                Ok(0) => return Ok(v),
                // The buffer had room for more: this is all there is.
                Ok(_) if size > 0 && v.len() == expect && v.len() < v.capacity() => return Ok(v),
                Ok(_) if v.len() > max => {
                    return Err(SyncError::Unsupported(format!(
                        "{path}: more than {max} bytes, too large for a single read"
                    )))
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(SyncError::io("read", path.under(&self.root), e.into())),
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        // A panic while holding the lock leaves a half-received file at most;
        // the temporary name keeps it invisible, so the state is still usable.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn image_path(&self) -> &Path {
        &self.root
    }
}
