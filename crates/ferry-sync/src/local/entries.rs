//! Directories (staged and revealed), symlinks, hard links, metadata and
//! deletions, each relative to its open parent directory.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use filetime::FileTime;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::dircache::OpenDir;
use crate::error::{Result, SyncError};
use crate::manifest::{Kind, Meta};
use crate::path::{stage_name, temp_name, RelPath, STAGE_MARKER};

use super::{remove_at, staged_at_or_above, LocalTree};

impl LocalTree {
    pub(super) fn symlink(&self, rel: &RelPath, target: &[u8], meta: &Meta) -> Result<()> {
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

    pub(super) fn hardlink(&self, rel: &RelPath, to: &RelPath) -> Result<()> {
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
    pub(super) fn at(&self, rel: &RelPath) -> Result<(std::sync::Arc<OpenDir>, Vec<u8>)> {
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
    pub(super) fn mkdir(&self, rel: &RelPath) -> Result<()> {
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

    pub(super) fn stage_dir(&self, dir: &OwnedFd, rel: &RelPath) -> Result<()> {
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
    pub(super) fn reveal(&self) -> Result<()> {
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
    pub(super) fn on_disk<'r>(&self, rel: &'r RelPath) -> std::borrow::Cow<'r, RelPath> {
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

    pub(super) fn set_meta(&self, rel: &RelPath, kind: Kind, meta: &Meta) -> Result<()> {
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

    pub(super) fn set_root_meta(&self, meta: &Meta) -> Result<()> {
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

    pub(super) fn delete(&self, rel: &RelPath) -> Result<()> {
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
}
