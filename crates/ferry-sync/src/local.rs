//! The local side of a pass: a [`LocalTree`] that reads a directory (a source)
//! and receives into it (a destination). The agent wraps the same type, so a
//! remote receiver runs exactly this code.
//!
//! Receiving rules, each a defence against a known failure:
//! - every path is a validated [`RelPath`] and every parent directory is checked
//!   with `lstat` ([`checked_parent`]): no write follows a symlink in the tree;
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
//! - small files are created, linked and read relative to open directories
//!   ([`DirCache`]): no path walk and no `lstat` of every parent per file.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use filetime::FileTime;

use crate::block;
use crate::delta::{self, Chunk, Signature};
use crate::endpoint::{Basis, Dest, Op, Source, Tree};
use crate::error::{Result, SyncError};
use crate::manifest::{self, Kind, Manifest, Meta, ScanOptions};
use crate::merkle::{Child, Digest, MerkleTree};
use crate::path::{checked_parent, stage_name, temp_name, RelPath, STAGE_MARKER};
use crate::watch::{Changes, Watch};

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// True when this process may set owners (effective uid 0).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `O_NOATIME` is still worth asking for: the kernel allows it only
/// to a file's owner or a process with CAP_FOWNER; the first refusal turns it
/// off for this process.
static NOATIME: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Opens `name` in `dir` for reading, without following a symlink there, and
/// without updating its access time where allowed: reading a whole tree must
/// not dirty the inode of every file not read in the last day (relatime),
/// which costs a journal write per file and changes the source.
pub(crate) fn open_read_at(
    dir: impl std::os::fd::AsFd,
    name: &OsStr,
) -> std::result::Result<OwnedFd, rustix::io::Errno> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if NOATIME.load(Ordering::Relaxed) {
        match rustix::fs::openat(&dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(rustix::io::Errno::PERM) => NOATIME.store(false, Ordering::Relaxed),
            r => return r,
        }
    }
    rustix::fs::openat(&dir, name, flags, Mode::empty())
}

/// Opens a file for reading without following a symlink at the last
/// component (and without touching its access time; see [`open_read_at`]).
pub(crate) fn open_nofollow(path: &Path) -> Result<File> {
    open_read_at(rustix::fs::CWD, path.as_os_str())
        .map(File::from)
        .map_err(|e| SyncError::io("open", path, e.into()))
}

/// A file being received in pieces.
struct Open {
    rel: RelPath,
    meta: Meta,
    tmp: PathBuf,
    final_path: PathBuf,
    file: File,
    basis: Option<(File, u64)>,
    /// A renamed partial file used as basis, removed after the commit.
    basis_tmp: Option<PathBuf>,
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

/// Open directories of the tree by relative path (`None` = the root), so a
/// small file costs no path walk and no `lstat` of every parent: the files
/// of one directory are created, linked and read relative to one descriptor.
/// Each directory is opened from its parent's descriptor with `O_NOFOLLOW |
/// O_DIRECTORY`, which is the same guarantee as [`checked_parent`] (no
/// component is a symlink) given by the kernel. Cleared when this tree
/// deletes anything (a directory may be gone or replaced) and at every
/// flush (a pass's end), so descriptors are not held between passes.
#[derive(Default)]
struct DirCache {
    map: Mutex<std::collections::HashMap<Option<RelPath>, std::sync::Arc<OwnedFd>>>,
}

/// More open directories than this and the cache starts again.
const DIR_CACHE_MAX: usize = 1024;

impl DirCache {
    fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn get(&self, dir: &Option<RelPath>) -> Option<std::sync::Arc<OwnedFd>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            .cloned()
    }

    fn put(&self, dir: Option<RelPath>, fd: std::sync::Arc<OwnedFd>) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= DIR_CACHE_MAX {
            m.clear();
        }
        m.insert(dir, fd);
    }
}

/// True when `dir` or one of its ancestors is a staged directory in `staged`.
fn staged_at_or_above(staged: &std::collections::HashMap<RelPath, Vec<u8>>, dir: &RelPath) -> bool {
    let mut cur = Some(dir.clone());
    while let Some(c) = cur {
        if staged.contains_key(&c) {
            return true;
        }
        cur = c.parent();
    }
    false
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
    fn open_dir(&self, dir: &Option<RelPath>) -> Result<std::sync::Arc<OwnedFd>> {
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
                        checked_parent(&self.root, &self.on_disk(&probe))?;
                        return Err(SyncError::io(
                            "open directory",
                            d.under(&self.root),
                            e.into(),
                        ));
                    }
                }
            }
        };
        let fd = std::sync::Arc::new(fd);
        self.dirs.put(dir.clone(), fd.clone());
        Ok(fd)
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
        let st = rustix::fs::fstat(f).map_err(|e| SyncError::io("stat", path, e.into()))?;
        let mut chowned = false;
        if self.chown && (st.st_uid != meta.uid || st.st_gid != meta.gid) {
            std::os::unix::fs::fchown(f, Some(meta.uid), Some(meta.gid))
                .map_err(|e| SyncError::io("chown", path, e))?;
            chowned = true;
        }
        // After chown: chown clears setuid/setgid bits, so the mode goes last.
        if chowned || (st.st_mode & 0o7777) != (meta.mode & 0o7777) {
            f.set_permissions(std::fs::Permissions::from_mode(meta.mode))
                .map_err(|e| SyncError::io("chmod", path, e))?;
        }
        let t = FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos);
        filetime::set_file_handle_times(f, None, Some(t))
            .map_err(|e| SyncError::io("set mtime", path, e))
    }

    fn create_tmp(&self, tmp: &Path) -> Result<File> {
        OpenOptions::new()
            .write(true)
            .read(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(tmp)
            .map_err(|e| SyncError::io("create temporary file", tmp, e))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        std::fs::rename(from, to).map_err(|e| SyncError::io("rename into place", to, e))
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
    fn staged_file(&self, dir: &OwnedFd, rel: &RelPath, meta: &Meta, data: &[u8]) -> Result<()> {
        use rustix::fs::{Mode, OFlags};
        let name = OsStr::from_bytes(rel.file_name());
        let full = rel.under(&self.root);
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(meta.mode & 0o777),
        )
        .map_err(|e| SyncError::io("create", &full, e.into()))?;
        let mut f = File::from(fd);
        let r = f
            .write_all(data)
            .map_err(|e| SyncError::io("write", &full, e))
            .and_then(|()| self.set_meta_file(&f, &full, meta));
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
        dir: &OwnedFd,
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
        self.set_meta_file(&f, &full, meta)?;
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
        let parent = checked_parent(&self.root, &self.on_disk(&rel))?;
        let tmp = parent.join(OsStr::from_bytes(&temp_name(&rel, "part")));
        let full = parent.join(OsStr::from_bytes(rel.file_name()));
        let mut basis_tmp = None;
        let basis_file = match basis {
            Basis::None => None,
            Basis::Target => Some(open_nofollow(&full)?),
            Basis::Partial => {
                let b = parent.join(OsStr::from_bytes(&temp_name(&rel, "basis")));
                self.rename(&tmp, &b)?;
                let f = open_nofollow(&b)?;
                basis_tmp = Some(b);
                Some(f)
            }
        };
        let basis = match basis_file {
            Some(f) => {
                let len = f
                    .metadata()
                    .map_err(|e| SyncError::io("stat basis", &full, e))?
                    .len();
                Some((f, len))
            }
            None => None,
        };
        let file = self.create_tmp(&tmp)?;
        let mut g = self.lock_open();
        if let Some(old) = g.take() {
            // A Begin without the Commit of the previous file: the sender gave
            // up on it; its temporary file stays as a resumable partial.
            drop(old);
        }
        *g = Some(Open {
            rel,
            meta,
            tmp,
            final_path: full,
            file,
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
                    .map_err(|e| SyncError::io("write", &o.tmp, e))?;
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
                        .map_err(|e| SyncError::io("read basis", &o.final_path, e))?;
                    o.file
                        .write_all_at(&buf[..n], o.pos)
                        .map_err(|e| SyncError::io("write", &o.tmp, e))?;
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
            .map_err(|e| SyncError::io("set length", &o.tmp, e))?;
        self.set_meta_file(&o.file, &o.tmp, &o.meta)?;
        drop(o.file);
        self.rename(&o.tmp, &o.final_path)?;
        if let Some(b) = o.basis_tmp {
            let _ = std::fs::remove_file(b);
        }
        Ok(())
    }

    fn symlink(&self, rel: &RelPath, target: &[u8], meta: &Meta) -> Result<()> {
        let parent = checked_parent(&self.root, &self.on_disk(rel))?;
        let tmp = parent.join(OsStr::from_bytes(&temp_name(rel, "part")));
        let full = parent.join(OsStr::from_bytes(rel.file_name()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)
            .map_err(|e| SyncError::io("symlink", &tmp, e))?;
        if self.chown {
            std::os::unix::fs::lchown(&tmp, Some(meta.uid), Some(meta.gid))
                .map_err(|e| SyncError::io("chown", &tmp, e))?;
        }
        let t = FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos);
        filetime::set_symlink_file_times(&tmp, t, t)
            .map_err(|e| SyncError::io("set mtime", &tmp, e))?;
        self.rename(&tmp, &full)
    }

    fn hardlink(&self, rel: &RelPath, to: &RelPath) -> Result<()> {
        let parent = checked_parent(&self.root, &self.on_disk(rel))?;
        let to_full =
            checked_parent(&self.root, &self.on_disk(to))?.join(OsStr::from_bytes(to.file_name()));
        let md = std::fs::symlink_metadata(&to_full)
            .map_err(|e| SyncError::io("lstat link target", &to_full, e))?;
        if !md.file_type().is_file() {
            return Err(SyncError::Corrupt {
                path: rel.to_string(),
                message: format!("hard link target {to} is not a regular file"),
            });
        }
        let tmp = parent.join(OsStr::from_bytes(&temp_name(rel, "part")));
        let full = parent.join(OsStr::from_bytes(rel.file_name()));
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(&to_full, &tmp).map_err(|e| SyncError::io("link", &tmp, e))?;
        self.rename(&tmp, &full)
    }

    /// A directory new to this tree is staged: built under a hidden name
    /// and given its name when the pass reaches directory metadata (see
    /// [`LocalTree::reveal`]). Directories below a staged one are made in
    /// place: nobody can see them yet either.
    fn mkdir(&self, rel: &RelPath) -> Result<()> {
        let on_disk = self.on_disk(rel);
        let parent = checked_parent(&self.root, &on_disk)?;
        let full = parent.join(OsStr::from_bytes(on_disk.file_name()));
        match std::fs::symlink_metadata(&full) {
            Ok(md) if md.is_dir() => Ok(()),
            Ok(_) => Err(SyncError::NotADirectory {
                path: rel.to_string(),
                component: rel.to_string(),
                what: "something else",
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if matches!(on_disk, std::borrow::Cow::Owned(_)) {
                    return std::fs::create_dir(&full)
                        .map_err(|e| SyncError::io("mkdir", &full, e));
                }
                self.stage_dir(&parent, rel)
            }
            Err(e) => Err(SyncError::io("lstat", &full, e)),
        }
    }

    fn stage_dir(&self, parent: &Path, rel: &RelPath) -> Result<()> {
        let hidden = stage_name(rel);
        let hp = parent.join(OsStr::from_bytes(&hidden));
        // A leftover the scan did not list (no marker, or a watched pass):
        // what it holds was never compared with the source, so it goes.
        let gone = match std::fs::symlink_metadata(&hp) {
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&hp),
            Ok(_) => std::fs::remove_file(&hp),
            Err(e) => Err(e),
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SyncError::io("remove leftover", &hp, e));
            }
            _ => {}
        }
        std::fs::create_dir(&hp).map_err(|e| SyncError::io("mkdir", &hp, e))?;
        let marker = hp.join(OsStr::from_bytes(STAGE_MARKER));
        std::fs::write(&marker, rel.file_name()).map_err(|e| SyncError::io("write", &marker, e))?;
        self.staged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.clone(), hidden);
        Ok(())
    }

    /// Gives every staged directory its name (its marker removed first).
    /// Called when directory metadata arrives, which the sender sends after
    /// all content, and at a flush (a pass's end): by then every file in
    /// them is whole. A name that appeared meanwhile is not replaced: the
    /// staged directory stays hidden and the error says so.
    fn reveal(&self) -> Result<()> {
        let mut m = self.staged.write().unwrap_or_else(|p| p.into_inner());
        let mut first_err = None;
        for (rel, hidden) in m.drain() {
            let r = (|| -> Result<()> {
                let parent = checked_parent(&self.root, &rel)?;
                let hp = parent.join(OsStr::from_bytes(&hidden));
                let marker = hp.join(OsStr::from_bytes(STAGE_MARKER));
                match std::fs::remove_file(&marker) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(SyncError::io("remove", &marker, e));
                    }
                    _ => {}
                }
                let full = parent.join(OsStr::from_bytes(rel.file_name()));
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &hp,
                    rustix::fs::CWD,
                    &full,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(|e| SyncError::io("rename into place", &full, e.into()))
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
        let parent = checked_parent(&self.root, &self.on_disk(rel))?;
        let full = parent.join(OsStr::from_bytes(rel.file_name()));
        let md = std::fs::symlink_metadata(&full).map_err(|e| SyncError::io("lstat", &full, e))?;
        let ft = md.file_type();
        let t = FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos);
        match kind {
            Kind::File if ft.is_file() => {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(nofollow())
                    .open(&full)
                    .map_err(|e| SyncError::io("open", &full, e))?;
                self.set_meta_file(&f, &full, meta)
            }
            Kind::Dir if ft.is_dir() => {
                if self.chown {
                    std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid))
                        .map_err(|e| SyncError::io("chown", &full, e))?;
                }
                // lstat said directory, so chmod (which follows links) acts on it.
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(meta.mode))
                    .map_err(|e| SyncError::io("chmod", &full, e))?;
                filetime::set_symlink_file_times(&full, t, t)
                    .map_err(|e| SyncError::io("set mtime", &full, e))
            }
            Kind::Symlink if ft.is_symlink() => {
                if self.chown {
                    std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid))
                        .map_err(|e| SyncError::io("chown", &full, e))?;
                }
                filetime::set_symlink_file_times(&full, t, t)
                    .map_err(|e| SyncError::io("set mtime", &full, e))
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
        let on_disk = self.on_disk(rel).into_owned();
        let parent = checked_parent(&self.root, &on_disk)?;
        let full = parent.join(OsStr::from_bytes(on_disk.file_name()));
        self.staged
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(rel);
        let r = match std::fs::symlink_metadata(&full) {
            // remove_dir_all does not follow symlinks inside the directory.
            Ok(md) if md.is_dir() => std::fs::remove_dir_all(&full),
            Ok(_) => std::fs::remove_file(&full),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SyncError::io("delete", &full, e)),
        }
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
        let full = path.under(&self.root);
        let f = open_nofollow(&full)?;
        match sig {
            Some(s) => delta::delta(std::io::BufReader::new(f), s, out),
            None => delta::whole(f, out).map(|_| ()),
        }
    }

    /// Read relative to the file's open directory (see [`DirCache`]), into a
    /// buffer that holds most small files whole: no path walk and no fstat.
    fn read_small(&self, path: &RelPath) -> Result<Vec<u8>> {
        let dir = self.open_dir(&path.parent())?;
        let fd = open_read_at(&*dir, OsStr::from_bytes(path.file_name()))
            .map_err(|e| SyncError::io("open", path.under(&self.root), e.into()))?;
        // Not read_to_end: on a File it asks fstat for the size first.
        let mut v = Vec::with_capacity(16 << 10);
        loop {
            if v.len() == v.capacity() {
                v.reserve(v.len());
            }
            match rustix::io::read(&fd, rustix::buffer::spare_capacity(&mut v)) {
                Ok(0) => return Ok(v),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(SyncError::io("read", path.under(&self.root), e.into())),
            }
        }
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
        let parent = checked_parent(&self.root, &self.on_disk(path))?;
        let p = match basis {
            Basis::None => return Ok(None),
            Basis::Target => parent.join(OsStr::from_bytes(path.file_name())),
            Basis::Partial => parent.join(OsStr::from_bytes(&temp_name(path, "part"))),
        };
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(nofollow())
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SyncError::io("open basis", &p, e)),
        };
        let sig = delta::signature(std::io::BufReader::new(f), block_size)
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
