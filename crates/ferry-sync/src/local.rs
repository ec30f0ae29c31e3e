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

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use filetime::FileTime;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::beneath::open_read_at;
use crate::block;
use crate::delta::{self, Chunk, Signature};
use crate::dircache::{DirCache, OpenDir, Owned};
use crate::endpoint::{Basis, Dest, Op, Source, Tree};
use crate::error::{Result, SyncError};
use crate::manifest::{self, Kind, Manifest, Meta, ScanOptions};
use crate::merkle::{Child, Digest, MerkleTree};
use crate::path::{checked_parent, stage_name, temp_name, RelPath, STAGE_MARKER};
use crate::watch::{Changes, Watch};

/// True when this process may set owners (effective uid 0).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A file being received in pieces.
struct Open {
    rel: RelPath,
    meta: Meta,
    /// The file's open directory, its temporary name there and its name.
    dir: std::sync::Arc<OpenDir>,
    tmp: Vec<u8>,
    name: Vec<u8>,
    /// Where the file is, for messages.
    shown: PathBuf,
    file: File,
    basis: Option<(File, u64)>,
    /// A renamed partial file used as basis, removed after the commit.
    basis_tmp: Option<Vec<u8>>,
    pos: u64,
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
}

/// Access and modification time both set to the entry's mtime.
fn times(meta: &Meta) -> rustix::fs::Timestamps {
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
fn remove_at(dir: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
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
fn staged_at_or_above(staged: &std::collections::HashMap<RelPath, Vec<u8>>, dir: &RelPath) -> bool {
    dir.and_ancestors().any(|c| staged.contains_key(&c))
}

/// Errors of `open(O_TMPFILE)` meaning "not here" rather than a failure.
fn unnamed_unsupported(e: rustix::io::Errno) -> bool {
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
        }
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

    /// [`Source::read_small`] reading at most `max` bytes: a file larger
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

    /// Gives an open file its owner, mode and mtime. The owner and mode are
    /// looked at first and set only when they differ: a file we just created
    /// usually has them already, and every chown or chmod is one more
    /// journalled inode update (a tenth of a small file's cost on ext4).
    fn set_meta_file(&self, f: &File, path: &Path, meta: &Meta) -> Result<()> {
        let now =
            crate::dircache::stat_owned(f).map_err(|e| SyncError::io("stat", path, e.into()))?;
        self.set_meta_owned(f, path, meta, now)
    }

    /// [`Self::set_meta_file`] for a file whose owner and mode are known
    /// (`now`): one we just created (see [`OpenDir::created`]).
    fn set_meta_owned(&self, f: &File, path: &Path, meta: &Meta, now: Owned) -> Result<()> {
        let mut chowned = false;
        if self.chown && (now.uid != meta.uid || now.gid != meta.gid) {
            std::os::unix::fs::fchown(f, Some(meta.uid), Some(meta.gid))
                .map_err(|e| SyncError::io("chown", path, e))?;
            chowned = true;
        }
        // After chown: chown clears setuid/setgid bits, so the mode goes last.
        if chowned || now.mode != (meta.mode & 0o7777) {
            f.set_permissions(std::fs::Permissions::from_mode(meta.mode))
                .map_err(|e| SyncError::io("chmod", path, e))?;
        }
        let t = FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos);
        filetime::set_file_handle_times(f, None, Some(t))
            .map_err(|e| SyncError::io("set mtime", path, e))
    }

    /// Owner (as root) and mtime of the symlink `name` in `dir`, not of what
    /// it points to (a symlink's mode means nothing on Linux).
    fn set_link_meta(&self, dir: &OpenDir, name: &OsStr, meta: &Meta, shown: &Path) -> Result<()> {
        if self.chown {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| SyncError::io("chown", shown, e.into()))?;
        }
        rustix::fs::utimensat(dir, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| SyncError::io("set mtime", shown, e.into()))
    }

    /// A whole small file, written relative to its open directory (no path
    /// walk, no `lstat` of the parents; see [`DirCache`]).
    fn put_file(&self, rel: &RelPath, meta: &Meta, data: &[u8]) -> Result<()> {
        use rustix::fs::{Mode, OFlags};
        let dir = self.open_dir(&rel.parent())?;
        {
            // Held while the file is written: a reveal waits for it, so a
            // staged directory never appears with a file half written.
            let staged = self.staged.read().unwrap_or_else(|p| p.into_inner());
            if !staged.is_empty()
                && rel
                    .parent()
                    .is_some_and(|p| staged_at_or_above(&staged, &p))
            {
                return self.staged_file(&dir, rel, meta, data);
            }
        }
        let name = OsStr::from_bytes(rel.file_name());
        let tmp = temp_name(rel, "part");
        let tmp = OsStr::from_bytes(&tmp);
        if self.unnamed_files.load(Ordering::Relaxed) {
            if let Some(f) = self.unnamed_file(&dir, rel, meta, data)? {
                // The name exists: link the finished file under its temporary
                // name, then rename over the old one (atomic for readers).
                self.link_unnamed(&f, &dir, tmp, rel)?;
                return self.rename_at(&dir, tmp, name, rel);
            }
            if self.unnamed_files.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        let fd = rustix::fs::openat(
            &*dir,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SyncError::io("create temporary file", rel.under(&self.root), e.into()))?;
        let mut f = File::from(fd);
        f.write_all(data)
            .map_err(|e| SyncError::io("write", rel.under(&self.root), e))?;
        self.set_meta_file(&f, &rel.under(&self.root), meta)?;
        drop(f);
        self.rename_at(&dir, tmp, name, rel)
    }

    /// A whole small file in a staged directory, which nobody can see yet:
    /// written under its own name, no unnamed file and no link (a quarter
    /// less of ext4's work per file). A file that fails half way is removed,
    /// so the scan after an interruption never lists half a file (one cut
    /// short by a crash has neither the size nor the mtime of its source
    /// and is sent again).
    fn staged_file(&self, dir: &OpenDir, rel: &RelPath, meta: &Meta, data: &[u8]) -> Result<()> {
        use rustix::fs::{Mode, OFlags};
        let name = OsStr::from_bytes(rel.file_name());
        let full = rel.under(&self.root);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(meta.mode & 0o777);
        // New, usually; a resumed pass may find a part written before.
        let (fd, fresh) = match rustix::fs::openat(dir, name, flags | OFlags::EXCL, mode) {
            Ok(fd) => (fd, true),
            Err(rustix::io::Errno::EXIST) => (
                rustix::fs::openat(dir, name, flags | OFlags::TRUNC, mode)
                    .map_err(|e| SyncError::io("create", &full, e.into()))?,
                false,
            ),
            Err(e) => return Err(SyncError::io("create", &full, e.into())),
        };
        let mut f = File::from(fd);
        let r = f
            .write_all(data)
            .map_err(|e| SyncError::io("write", &full, e))
            .and_then(|()| match fresh {
                true => {
                    let now = dir
                        .created(&f, meta)
                        .map_err(|e| SyncError::io("stat", &full, e.into()))?;
                    self.set_meta_owned(&f, &full, meta, now)
                }
                false => self.set_meta_file(&f, &full, meta),
            });
        if r.is_err() {
            let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
        }
        r
    }

    /// Renames `from` to `to` inside the open directory `dir`.
    fn rename_at(&self, dir: &OwnedFd, from: &OsStr, to: &OsStr, rel: &RelPath) -> Result<()> {
        rustix::fs::renameat(dir, from, dir, to)
            .map_err(|e| SyncError::io("rename into place", rel.under(&self.root), e.into()))
    }

    /// Writes a small file as an unnamed file (`O_TMPFILE`) in the open
    /// directory `dir` and links it as `rel` when complete: readers never see
    /// it half written, and there is no temporary name to create and rename
    /// away, which is about a third of a small file's cost on ext4. It is
    /// created with its final permission bits (nobody can open it by name
    /// before the link), so usually no chmod follows. Returns the file when
    /// `rel` already exists (the caller replaces it); returns `None` when
    /// done, or after switching unnamed files off for this tree when the
    /// filesystem or our privileges do not allow them.
    fn unnamed_file(
        &self,
        dir: &OpenDir,
        rel: &RelPath,
        meta: &Meta,
        data: &[u8],
    ) -> Result<Option<File>> {
        use rustix::fs::{Mode, OFlags};
        let fd = match rustix::fs::openat(
            dir,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(meta.mode & 0o777),
        ) {
            Ok(fd) => fd,
            Err(e) if unnamed_unsupported(e) => {
                self.unnamed_files.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => {
                let parent = rel
                    .parent()
                    .map_or(self.root.clone(), |p| p.under(&self.root));
                return Err(SyncError::io("create unnamed file", &parent, e.into()));
            }
        };
        let mut f = File::from(fd);
        let full = rel.under(&self.root);
        f.write_all(data)
            .map_err(|e| SyncError::io("write", &full, e))?;
        let now = dir
            .created(&f, meta)
            .map_err(|e| SyncError::io("stat", &full, e.into()))?;
        self.set_meta_owned(&f, &full, meta, now)?;
        match self.link_unnamed(&f, dir, OsStr::from_bytes(rel.file_name()), rel) {
            Ok(()) => Ok(None),
            Err(SyncError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(Some(f))
            }
            Err(e) => {
                if self.unnamed_files.load(Ordering::Relaxed) {
                    Err(e)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Gives the unnamed file `f` the name `name` in `dir` (`rel` names it in
    /// errors). `AT_EMPTY_PATH` needs CAP_DAC_READ_SEARCH; without it the
    /// kernel answers ENOENT and the file's /proc/self/fd link does the same
    /// job. A leftover temporary name from an interrupted pass is replaced.
    fn link_unnamed(&self, f: &File, dir: &OwnedFd, name: &OsStr, rel: &RelPath) -> Result<()> {
        use rustix::fs::{AtFlags, CWD};
        let link = || match rustix::fs::linkat(f, "", dir, name, AtFlags::EMPTY_PATH) {
            Err(rustix::io::Errno::NOENT) => {
                use std::os::fd::AsRawFd;
                let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
                rustix::fs::linkat(CWD, proc_path.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
            }
            r => r,
        };
        let mut r = link();
        if r == Err(rustix::io::Errno::EXIST) && crate::path::is_temp_name(name.as_bytes()) {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
            r = link();
        }
        let err = match r {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if err != rustix::io::Errno::EXIST {
            // Without /proc or with a filesystem that refuses: named
            // temporary files from now on (this file is retried that way).
            self.unnamed_files.store(false, Ordering::Relaxed);
        }
        Err(SyncError::io(
            "link into place",
            rel.under(&self.root),
            err.into(),
        ))
    }

    fn begin(&self, rel: RelPath, meta: Meta, basis: Basis) -> Result<()> {
        use rustix::fs::{Mode, OFlags};
        let (dir, name) = self.at(&rel)?;
        let shown = rel.under(&self.root);
        let tmp = temp_name(&rel, "part");
        let mut basis_tmp = None;
        let basis_file = match basis {
            Basis::None => None,
            Basis::Target => Some(
                open_read_at(&*dir, OsStr::from_bytes(&name))
                    .map_err(|e| SyncError::io("open", &shown, e.into()))?,
            ),
            Basis::Partial => {
                let b = temp_name(&rel, "basis");
                rustix::fs::renameat(&*dir, OsStr::from_bytes(&tmp), &*dir, OsStr::from_bytes(&b))
                    .map_err(|e| SyncError::io("rename into place", &shown, e.into()))?;
                let f = open_read_at(&*dir, OsStr::from_bytes(&b))
                    .map_err(|e| SyncError::io("open", &shown, e.into()))?;
                basis_tmp = Some(b);
                Some(f)
            }
        };
        let basis = match basis_file {
            Some(f) => {
                let f = File::from(f);
                let len = f
                    .metadata()
                    .map_err(|e| SyncError::io("stat basis", &shown, e))?
                    .len();
                Some((f, len))
            }
            None => None,
        };
        let file = rustix::fs::openat(
            &*dir,
            OsStr::from_bytes(&tmp),
            OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SyncError::io("create temporary file", &shown, e.into()))?;
        let mut g = self.lock_open();
        if let Some(old) = g.take() {
            // A Begin without the Commit of the previous file: the sender gave
            // up on it; its temporary file stays as a resumable partial.
            drop(old);
        }
        *g = Some(Open {
            rel,
            meta,
            dir,
            tmp,
            name,
            shown,
            file: File::from(file),
            basis,
            basis_tmp,
            pos: 0,
        });
        Ok(())
    }

    fn chunk(&self, c: Chunk) -> Result<()> {
        let mut g = self.lock_open();
        let o = g
            .as_mut()
            .ok_or_else(|| SyncError::Protocol("file data without Begin".into()))?;
        match c {
            Chunk::Data(d) => {
                o.file
                    .write_all_at(&d, o.pos)
                    .map_err(|e| SyncError::io("write", &o.shown, e))?;
                o.pos += d.len() as u64;
            }
            // A hole: nothing to write; the final set_len gives the size.
            Chunk::Zero(n) => o.pos += n,
            Chunk::Copy { offset, len } => {
                let (basis, blen) = o.basis.as_ref().ok_or_else(|| SyncError::Corrupt {
                    path: o.rel.to_string(),
                    message: "block copy without a basis file".into(),
                })?;
                if offset.checked_add(len).is_none_or(|end| end > *blen) {
                    return Err(SyncError::Corrupt {
                        path: o.rel.to_string(),
                        message: format!("copy {offset}+{len} beyond basis length {blen}"),
                    });
                }
                let mut buf = vec![0u8; (len as usize).min(1 << 20)];
                let mut done = 0u64;
                while done < len {
                    let n = ((len - done) as usize).min(buf.len());
                    basis
                        .read_exact_at(&mut buf[..n], offset + done)
                        .map_err(|e| SyncError::io("read basis", &o.shown, e))?;
                    o.file
                        .write_all_at(&buf[..n], o.pos)
                        .map_err(|e| SyncError::io("write", &o.shown, e))?;
                    o.pos += n as u64;
                    done += n as u64;
                }
            }
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        let o = self
            .lock_open()
            .take()
            .ok_or_else(|| SyncError::Protocol("Commit without Begin".into()))?;
        o.file
            .set_len(o.pos)
            .map_err(|e| SyncError::io("set length", &o.shown, e))?;
        self.set_meta_file(&o.file, &o.shown, &o.meta)?;
        drop(o.file);
        rustix::fs::renameat(
            &*o.dir,
            OsStr::from_bytes(&o.tmp),
            &*o.dir,
            OsStr::from_bytes(&o.name),
        )
        .map_err(|e| SyncError::io("rename into place", &o.shown, e.into()))?;
        if let Some(b) = o.basis_tmp {
            let _ = rustix::fs::unlinkat(&*o.dir, OsStr::from_bytes(&b), AtFlags::empty());
        }
        Ok(())
    }

    fn symlink(&self, rel: &RelPath, target: &[u8], meta: &Meta) -> Result<()> {
        let (dir, name) = self.at(rel)?;
        let shown = rel.under(&self.root);
        let tmp = temp_name(rel, "part");
        let tmp = OsStr::from_bytes(&tmp);
        let _ = rustix::fs::unlinkat(&*dir, tmp, AtFlags::empty());
        rustix::fs::symlinkat(OsStr::from_bytes(target), &*dir, tmp)
            .map_err(|e| SyncError::io("symlink", &shown, e.into()))?;
        self.set_link_meta(&dir, tmp, meta, &shown)?;
        rustix::fs::renameat(&*dir, tmp, &*dir, OsStr::from_bytes(&name))
            .map_err(|e| SyncError::io("rename into place", &shown, e.into()))
    }

    fn hardlink(&self, rel: &RelPath, to: &RelPath) -> Result<()> {
        let (dir, name) = self.at(rel)?;
        let (to_dir, to_name) = self.at(to)?;
        let shown = rel.under(&self.root);
        let st = rustix::fs::statat(
            &*to_dir,
            OsStr::from_bytes(&to_name),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| SyncError::io("lstat link target", to.under(&self.root), e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(SyncError::Corrupt {
                path: rel.to_string(),
                message: format!("hard link target {to} is not a regular file"),
            });
        }
        let tmp = temp_name(rel, "part");
        let tmp = OsStr::from_bytes(&tmp);
        let _ = rustix::fs::unlinkat(&*dir, tmp, AtFlags::empty());
        // linkat without AT_SYMLINK_FOLLOW links the name itself, never
        // what a symlink put there since the check would point to.
        rustix::fs::linkat(
            &*to_dir,
            OsStr::from_bytes(&to_name),
            &*dir,
            tmp,
            AtFlags::empty(),
        )
        .map_err(|e| SyncError::io("link", &shown, e.into()))?;
        rustix::fs::renameat(&*dir, tmp, &*dir, OsStr::from_bytes(&name))
            .map_err(|e| SyncError::io("rename into place", &shown, e.into()))
    }

    /// The open parent directory of `rel` and the name `rel` has in it on
    /// disk (the hidden name when `rel` is a staged directory). Every
    /// receiver op works relative to these: no path is walked again after
    /// the directories were opened without following symlinks.
    fn at(&self, rel: &RelPath) -> Result<(std::sync::Arc<OpenDir>, Vec<u8>)> {
        let dir = self.open_dir(&rel.parent())?;
        let name = match self
            .staged
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
        {
            Some(hidden) => hidden.clone(),
            None => rel.file_name().to_vec(),
        };
        Ok((dir, name))
    }

    /// A directory new to this tree is staged: built under a hidden name
    /// and given its name when the pass reaches directory metadata (see
    /// [`LocalTree::reveal`]). Directories below a staged one are made in
    /// place: nobody can see them yet either.
    fn mkdir(&self, rel: &RelPath) -> Result<()> {
        let (dir, name) = self.at(rel)?;
        match rustix::fs::statat(&*dir, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => Ok(()),
            Ok(_) => Err(SyncError::NotADirectory {
                path: rel.to_string(),
                component: rel.to_string(),
                what: "something else",
            }),
            Err(rustix::io::Errno::NOENT) => {
                let in_stage = rel.parent().is_some_and(|p| {
                    staged_at_or_above(&self.staged.read().unwrap_or_else(|p| p.into_inner()), &p)
                });
                if in_stage {
                    return rustix::fs::mkdirat(
                        &*dir,
                        OsStr::from_bytes(&name),
                        Mode::from_raw_mode(0o777),
                    )
                    .map_err(|e| SyncError::io("mkdir", rel.under(&self.root), e.into()));
                }
                self.stage_dir(&dir, rel)
            }
            Err(e) => Err(SyncError::io("lstat", rel.under(&self.root), e.into())),
        }
    }

    fn stage_dir(&self, dir: &OwnedFd, rel: &RelPath) -> Result<()> {
        let hidden = stage_name(rel);
        let shown = rel.under(&self.root);
        // A leftover the scan did not list (no marker, or a watched pass):
        // what it holds was never compared with the source, so it goes.
        remove_at(dir, &hidden).map_err(|e| SyncError::io("remove leftover", &shown, e))?;
        rustix::fs::mkdirat(dir, OsStr::from_bytes(&hidden), Mode::from_raw_mode(0o777))
            .map_err(|e| SyncError::io("mkdir", &shown, e.into()))?;
        let hdir = rustix::fs::openat(
            dir,
            OsStr::from_bytes(&hidden),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SyncError::io("open directory", &shown, e.into()))?;
        let marker = rustix::fs::openat(
            &hdir,
            OsStr::from_bytes(STAGE_MARKER),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SyncError::io("create", &shown, e.into()))?;
        File::from(marker)
            .write_all(rel.file_name())
            .map_err(|e| SyncError::io("write", &shown, e))?;
        self.staged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.clone(), hidden);
        Ok(())
    }

    /// Gives every staged directory its name (its marker removed first).
    /// Called when directory metadata arrives, which the sender sends after
    /// all content, and at a flush (a pass's end): by then every file in
    /// them is whole (taking the write lock waits for any small file still
    /// being written in one). A name that appeared meanwhile is not
    /// replaced: the staged directory stays hidden and the error says so.
    fn reveal(&self) -> Result<()> {
        let staged: Vec<(RelPath, Vec<u8>)> = self
            .staged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let mut first_err = None;
        for (rel, hidden) in staged {
            let r = (|| -> Result<()> {
                let shown = rel.under(&self.root);
                let dir = self.open_dir(&rel.parent())?;
                let hdir = rustix::fs::openat(
                    &*dir,
                    OsStr::from_bytes(&hidden),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| SyncError::io("open directory", &shown, e.into()))?;
                match rustix::fs::unlinkat(&hdir, OsStr::from_bytes(STAGE_MARKER), AtFlags::empty())
                {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(SyncError::io("remove", &shown, e.into())),
                }
                rustix::fs::renameat_with(
                    &*dir,
                    OsStr::from_bytes(&hidden),
                    &*dir,
                    OsStr::from_bytes(rel.file_name()),
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(|e| SyncError::io("rename into place", &shown, e.into()))
            })();
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Where `rel` is on disk: below (or at) a staged directory, the hidden
    /// name takes the place of the staged component.
    fn on_disk<'r>(&self, rel: &'r RelPath) -> std::borrow::Cow<'r, RelPath> {
        let m = self.staged.read().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return std::borrow::Cow::Borrowed(rel);
        }
        let mut cur = Some(rel.clone());
        while let Some(c) = cur {
            if let Some(hidden) = m.get(&c) {
                let mut b = match c.parent() {
                    Some(p) => [p.as_bytes(), b"/"].concat(),
                    None => Vec::new(),
                };
                b.extend_from_slice(hidden);
                b.extend_from_slice(&rel.as_bytes()[c.as_bytes().len()..]);
                if let Ok(r) = RelPath::new(b) {
                    return std::borrow::Cow::Owned(r);
                }
                break;
            }
            cur = c.parent();
        }
        std::borrow::Cow::Borrowed(rel)
    }

    fn set_meta(&self, rel: &RelPath, kind: Kind, meta: &Meta) -> Result<()> {
        if kind == Kind::Dir {
            // Directory metadata comes after all content: staged directories
            // are complete (and their own metadata must land on the real name).
            self.reveal()?;
        }
        let (dir, name) = self.at(rel)?;
        let name = OsStr::from_bytes(&name);
        let shown = rel.under(&self.root);
        let st = rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| SyncError::io("lstat", &shown, e.into()))?;
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let open = |flags: OFlags| {
            rustix::fs::openat(
                &*dir,
                name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map(File::from)
            .map_err(|e| SyncError::io("open", &shown, e.into()))
        };
        match kind {
            Kind::File if ft == rustix::fs::FileType::RegularFile => {
                self.set_meta_file(&open(OFlags::RDONLY)?, &shown, meta)
            }
            Kind::Dir if ft.is_dir() => {
                // Opened without following a link: the metadata lands on the
                // directory that was looked at, whatever is renamed meanwhile.
                self.set_meta_file(&open(OFlags::RDONLY | OFlags::DIRECTORY)?, &shown, meta)
            }
            Kind::Symlink if ft == rustix::fs::FileType::Symlink => {
                self.set_link_meta(&dir, name, meta, &shown)
            }
            _ => Err(SyncError::Corrupt {
                path: rel.to_string(),
                message: format!("expected a {kind:?} to set metadata on"),
            }),
        }
    }

    fn set_root_meta(&self, meta: &Meta) -> Result<()> {
        self.reveal()?;
        let root = &self.root;
        if self.chown {
            std::os::unix::fs::chown(root, Some(meta.uid), Some(meta.gid))
                .map_err(|e| SyncError::io("chown", root, e))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(meta.mode))
            .map_err(|e| SyncError::io("chmod", root, e))?;
        let t = FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos);
        filetime::set_file_mtime(root, t).map_err(|e| SyncError::io("set mtime", root, e))
    }

    fn delete(&self, rel: &RelPath) -> Result<()> {
        // A directory under this name may go, or be replaced by something else.
        self.dirs.clear();
        let (dir, name) = self.at(rel)?;
        // Staged directories at or below it go with it.
        self.staged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(rel));
        remove_at(&dir, &name).map_err(|e| SyncError::io("delete", rel.under(&self.root), e))
    }

    fn image_path(&self) -> &Path {
        &self.root
    }
}

impl Tree for LocalTree {
    fn scan(&self, opts: &ScanOptions) -> Result<Manifest> {
        // A pass starts: directories opened in an earlier one may have been
        // renamed or replaced since (as a source, nothing else clears them).
        self.dirs.clear();
        let m = manifest::scan(&self.root, opts)?;
        if opts.staged {
            // What this tree stages from now on is what is on disk: a failed
            // earlier pass's staging is listed again by its markers.
            *self.staged.write().unwrap_or_else(|p| p.into_inner()) =
                m.staged.iter().cloned().collect();
        }
        Ok(m)
    }

    fn scan_paths(
        &self,
        paths: &std::collections::BTreeSet<RelPath>,
        opts: &ScanOptions,
    ) -> Result<Manifest> {
        self.dirs.clear();
        manifest::scan_paths(&self.root, paths, opts)
    }

    fn merkle_root(&self) -> Result<(Digest, u64)> {
        let m = manifest::scan(
            &self.root,
            &ScanOptions {
                checksum: true,
                staged: false,
            },
        )?;
        let t = MerkleTree::build(&m);
        let out = (t.root, t.count);
        *self.merkle.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(out)
    }

    fn merkle_children(&self, dir: Option<&RelPath>) -> Result<Vec<Child>> {
        let g = self.merkle.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(t) => Ok(t.children(dir)),
            None => Err(SyncError::Protocol(
                "merkle_children before merkle_root".into(),
            )),
        }
    }

    fn block_hashes(&self, block_size: u32) -> Result<(u64, Vec<Digest>)> {
        block::hash_image(self.image_path(), block_size)
    }
}

impl Source for LocalTree {
    fn read(
        &self,
        path: &RelPath,
        sig: Option<&Signature>,
        out: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        // Through the open parent chain (O_NOFOLLOW at every component, see
        // [`DirCache`]): a parent swapped for a symlink since the scan must
        // not make a read-only volume serve what the link points to (#5 of
        // issue 15: `lnk -> /etc`, then `ReadReq lnk/shadow`).
        let dir = self.open_dir(&path.parent())?;
        let f = open_read_at(&*dir, OsStr::from_bytes(path.file_name()))
            .map(File::from)
            .map_err(|e| SyncError::io("open", path.under(&self.root), e.into()))?;
        match sig {
            Some(s) => delta::delta(std::io::BufReader::new(f), s, out),
            None => delta::whole(f, out).map(|_| ()),
        }
    }

    /// Read relative to the file's open directory (see [`DirCache`]), into a
    /// buffer one byte larger than the scanned size: no path walk, no fstat,
    /// and one read when the size is still the scanned one (a second read
    /// only to hear "end of file" is a sixth of reading a small file).
    fn read_small(&self, path: &RelPath, size: u64) -> Result<Vec<u8>> {
        self.read_small_max(path, size, usize::MAX)
    }

    fn read_block(&self, index: u64, block_size: u32) -> Result<Vec<u8>> {
        block::read_block(self.image_path(), index, block_size)
    }

    fn read_blocks(&self, index: u64, count: u64, block_size: u32) -> Result<Vec<u8>> {
        block::read_blocks(self.image_path(), index, count, block_size)
    }

    fn changes(&self) -> Result<Changes> {
        let mut g = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(w) => Ok(w.take()),
            None => {
                let w = Box::new(Watch::start(&self.root)?);
                let c = w.take();
                *g = Some(w);
                Ok(c)
            }
        }
    }

    fn watch_force_full(&self, reason: &str) -> Result<()> {
        // Without a watch the next `changes` starts one: a full walk anyway.
        if let Some(w) = self
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            w.force_full(reason);
        }
        Ok(())
    }
}

impl Dest for LocalTree {
    fn signature(
        &self,
        path: &RelPath,
        basis: Basis,
        block_size: u32,
    ) -> Result<Option<Signature>> {
        let (dir, name) = self.at(path)?;
        let p = path.under(&self.root);
        let name = match basis {
            Basis::None => return Ok(None),
            Basis::Target => name,
            Basis::Partial => temp_name(path, "part"),
        };
        let f = match open_read_at(&*dir, OsStr::from_bytes(&name)) {
            Ok(f) => File::from(f),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(SyncError::io("open basis", &p, e.into())),
        };
        // At most what one `Sig` frame holds: a tiny block size asked of a
        // large file describes its beginning only (still a valid basis; the
        // rest travels as data) instead of costing gigabytes.
        let cap = delta::MAX_SIG_BLOCKS.saturating_mul(u64::from(block_size.max(1)));
        let sig = delta::signature(std::io::BufReader::new(f.take(cap)), block_size)
            .map_err(|e| SyncError::io("read basis", &p, e))?;
        Ok(Some(sig))
    }

    fn apply(&self, op: Op) -> Result<()> {
        match op {
            Op::Mkdir { path } => self.mkdir(&path),
            Op::Symlink { path, target, meta } => self.symlink(&path, &target, &meta),
            Op::Hardlink { path, to } => self.hardlink(&path, &to),
            Op::SetMeta { path, kind, meta } => self.set_meta(&path, kind, &meta),
            Op::Delete { path } => self.delete(&path),
            Op::PutFile { path, meta, data } => self.put_file(&path, &meta, &data),
            Op::Begin { path, meta, basis } => self.begin(path, meta, basis),
            Op::Chunk(c) => self.chunk(c),
            Op::Commit => self.commit(),
            Op::RootMeta { meta } => self.set_root_meta(&meta),
            Op::Block { offset, data } => {
                let image = self.image.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match image {
                    Some(w) => w.write(offset, &data),
                    None => block::write_block(self.image_path(), offset, &data),
                }
            }
        }
    }

    fn flush(&self) -> Result<()> {
        // Not held between passes (an idle agent must not keep a volume busy).
        self.dirs.clear();
        self.reveal()
    }

    fn block_prepare(&self, size: u64, block_size: u32) -> Result<Vec<Digest>> {
        let hashes = block::prepare_target(self.image_path(), size, block_size)?;
        let writer = block::ImageWriter::open(self.image_path())?;
        *self.image.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer.into());
        Ok(hashes)
    }

    fn block_finish(&self, size: u64, block_size: u32, hashes: &[Digest]) -> Result<()> {
        self.image.lock().unwrap_or_else(|p| p.into_inner()).take();
        block::finish_target(self.image_path(), size, block_size, hashes)
    }
}
