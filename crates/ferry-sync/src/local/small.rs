//! Whole small files: unnamed files linked into place, temporary names
//! renamed into place, plain creates in staged directories.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use filetime::FileTime;
use rustix::fs::AtFlags;

use crate::dircache::{OpenDir, Owned};
use crate::error::{Result, SyncError};
use crate::manifest::Meta;
use crate::path::{temp_name, RelPath};

use super::{staged_at_or_above, times, unnamed_unsupported, LocalTree};

impl LocalTree {
    /// Gives an open file its owner, mode and mtime. The owner and mode are
    /// looked at first and set only when they differ: a file we just created
    /// usually has them already, and every chown or chmod is one more
    /// journalled inode update (a tenth of a small file's cost on ext4).
    pub(super) fn set_meta_file(&self, f: &File, path: &Path, meta: &Meta) -> Result<()> {
        let now =
            crate::dircache::stat_owned(f).map_err(|e| SyncError::io("stat", path, e.into()))?;
        self.set_meta_owned(f, path, meta, now)
    }

    /// [`Self::set_meta_file`] for a file whose owner and mode are known
    /// (`now`): one we just created (see [`OpenDir::created`]).
    pub(super) fn set_meta_owned(
        &self,
        f: &File,
        path: &Path,
        meta: &Meta,
        now: Owned,
    ) -> Result<()> {
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
    pub(super) fn set_link_meta(
        &self,
        dir: &OpenDir,
        name: &OsStr,
        meta: &Meta,
        shown: &Path,
    ) -> Result<()> {
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
    pub(super) fn put_file(&self, rel: &RelPath, meta: &Meta, data: &[u8]) -> Result<()> {
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
    pub(super) fn staged_file(
        &self,
        dir: &OpenDir,
        rel: &RelPath,
        meta: &Meta,
        data: &[u8],
    ) -> Result<()> {
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
    pub(super) fn rename_at(
        &self,
        dir: &OwnedFd,
        from: &OsStr,
        to: &OsStr,
        rel: &RelPath,
    ) -> Result<()> {
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
    pub(super) fn unnamed_file(
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
    pub(super) fn link_unnamed(
        &self,
        f: &File,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &RelPath,
    ) -> Result<()> {
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
}
