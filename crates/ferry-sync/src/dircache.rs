//! Open directories of a receiving tree, and what a file created in each of
//! them gets as owner and permission bits.
//!
//! A small file costs the receiver about 28 µs of kernel time on ext4 (create,
//! write, set mtime, close), and an `fstat` to learn the new file's owner and
//! mode costs 2.4 µs more: a tenth of a first copy. The kernel's rules for a
//! new file are simple enough to know in advance ([`Creation`]), so the
//! receiver asks once per directory and checks the answer against the first
//! file it makes there; a filesystem that decides otherwise (root squash on
//! NFS, an LSM, an odd FUSE filesystem) turns the shortcut off for that
//! directory, and a default ACL keeps it off.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::manifest::Meta;
use crate::path::RelPath;

/// One open directory of the tree.
pub(crate) struct OpenDir {
    fd: OwnedFd,
    /// Learned at the first file created here (see [`OpenDir::created`]).
    creation: OnceLock<Option<Creation>>,
    /// [`UNCHECKED`], [`CHECKED`] or [`WRONG`].
    check: AtomicU8,
}

/// No file created here has been compared with the prediction yet.
const UNCHECKED: u8 = 0;
/// The first file created here had the owner and mode predicted.
const CHECKED: u8 = 1;
/// It did not: every new file here is looked at (`fstat`).
const WRONG: u8 = 2;

impl std::ops::Deref for OpenDir {
    type Target = OwnedFd;
    fn deref(&self) -> &OwnedFd {
        &self.fd
    }
}

impl AsFd for OpenDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Owner and permission bits of a file, as `fstat` tells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits and setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
}

/// What a regular file this process creates in a directory gets: its owner
/// is the process's effective uid, its group the directory's when the
/// directory is setgid and the process's effective gid otherwise, and its
/// permission bits those asked for less the umask. Unknown (`None` from
/// [`Creation::learn`]) when the directory has a default ACL (which replaces
/// the umask) or the umask cannot be read.
#[derive(Clone, Copy, Debug)]
struct Creation {
    uid: u32,
    gid: u32,
    umask: u32,
}

impl Creation {
    fn learn(dir: &OwnedFd) -> Option<Creation> {
        let umask = process_umask()?;
        let st = rustix::fs::fstat(dir).ok()?;
        match rustix::fs::fgetxattr(dir, "system.posix_acl_default", &mut [0u8; 0][..]) {
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => {}
            // An ACL, or no way to tell: look at every file.
            _ => return None,
        }
        let gid = if st.st_mode & 0o2000 != 0 {
            st.st_gid
        } else {
            rustix::process::getegid().as_raw()
        };
        Some(Creation {
            uid: rustix::process::geteuid().as_raw(),
            gid,
            umask,
        })
    }

    /// A new file asked to have `meta.mode`'s permission bits. Special bits
    /// (setuid, setgid, sticky) are not predicted: the kernel may drop them.
    fn predict(&self, meta: &Meta) -> Option<Owned> {
        if meta.mode & 0o7000 != 0 {
            return None;
        }
        Some(Owned {
            uid: self.uid,
            gid: self.gid,
            mode: meta.mode & 0o777 & !self.umask,
        })
    }
}

/// The process's umask, from /proc/self/status (reading it with umask(2)
/// would change it for a moment under other threads). Read once: nothing in
/// Ferry changes it.
fn process_umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

impl OpenDir {
    pub(crate) fn new(fd: OwnedFd) -> OpenDir {
        OpenDir {
            fd,
            creation: OnceLock::new(),
            check: AtomicU8::new(UNCHECKED),
        }
    }

    /// Owner and mode of `file`, just created here by this process (with
    /// `O_CREAT | O_EXCL` or `O_TMPFILE`, asking for `meta.mode & 0o777`):
    /// predicted, or from `fstat` for the first file of the directory (which
    /// checks the prediction) and wherever a prediction is not possible.
    pub(crate) fn created(&self, file: &impl AsFd, meta: &Meta) -> rustix::io::Result<Owned> {
        let check = self.check.load(Ordering::Relaxed);
        let predicted = match check {
            WRONG => None,
            _ => self
                .creation
                .get_or_init(|| Creation::learn(&self.fd))
                .and_then(|c| c.predict(meta)),
        };
        if let (Some(p), CHECKED) = (predicted, check) {
            return Ok(p);
        }
        let actual = stat_owned(file)?;
        if let Some(p) = predicted {
            let verdict = if p == actual { CHECKED } else { WRONG };
            // A concurrent first file may have found it wrong: keep WRONG.
            let _ = self.check.compare_exchange(
                UNCHECKED,
                verdict,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if verdict == WRONG {
                self.check.store(WRONG, Ordering::Relaxed);
            }
        }
        Ok(actual)
    }
}

/// Owner and mode of an open file.
pub(crate) fn stat_owned(file: &impl AsFd) -> rustix::io::Result<Owned> {
    let st = rustix::fs::fstat(file)?;
    Ok(Owned {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
    })
}

/// Open directories of the tree by relative path (`None` = the root), so a
/// small file costs no path walk and no `lstat` of every parent: the files
/// of one directory are created, linked and read relative to one descriptor.
/// Each directory is opened from its parent's descriptor with `O_NOFOLLOW |
/// O_DIRECTORY`, which is the same guarantee as
/// [`checked_parent`](crate::path::checked_parent) (no component is a
/// symlink) given by the kernel. Cleared when the tree deletes anything (a
/// directory may be gone or replaced) and at every flush (a pass's end), so
/// descriptors are not held between passes.
#[derive(Default)]
pub(crate) struct DirCache {
    map: Mutex<HashMap<Option<RelPath>, Arc<OpenDir>>>,
}

/// More open directories than this and the cache starts again.
const DIR_CACHE_MAX: usize = 1024;

impl DirCache {
    pub(crate) fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(crate) fn get(&self, dir: &Option<RelPath>) -> Option<Arc<OpenDir>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            .cloned()
    }

    pub(crate) fn put(&self, dir: Option<RelPath>, open: Arc<OpenDir>) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= DIR_CACHE_MAX {
            m.clear();
        }
        m.insert(dir, open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Mtime;
    use std::os::unix::fs::PermissionsExt;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: Mtime { secs: 0, nanos: 0 },
        }
    }

    fn create(dir: &OpenDir, name: &str, mode: u32) -> OwnedFd {
        use rustix::fs::{Mode, OFlags};
        rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )
        .unwrap()
    }

    fn open(path: &std::path::Path) -> OpenDir {
        use rustix::fs::{Mode, OFlags};
        OpenDir::new(
            rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
        )
    }

    #[test]
    fn predictions_agree_with_what_the_kernel_does() {
        let t = tempfile::tempdir().unwrap();
        let dir = open(t.path());
        for (i, mode) in [0o644, 0o600, 0o777, 0o664, 0o400, 0o4755, 0o1777]
            .into_iter()
            .enumerate()
        {
            let f = create(&dir, &format!("f{i}"), mode);
            let got = dir.created(&f, &meta(mode)).unwrap();
            assert_eq!(got, stat_owned(&f).unwrap(), "mode {mode:o}");
        }
        // The first file checked the prediction and found it right.
        assert_eq!(dir.check.load(Ordering::Relaxed), CHECKED);
    }

    #[test]
    fn a_setgid_directory_gives_its_group() {
        let t = tempfile::tempdir().unwrap();
        let sub = t.path().join("g");
        std::fs::create_dir(&sub).unwrap();
        if rustix::process::geteuid().is_root() {
            // A group that is not ours: new files must get it, not ours.
            std::os::unix::fs::chown(&sub, None, Some(4242)).unwrap();
        }
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let dir = open(&sub);
        for i in 0..3 {
            let f = create(&dir, &format!("f{i}"), 0o640);
            assert_eq!(
                dir.created(&f, &meta(0o640)).unwrap(),
                stat_owned(&f).unwrap()
            );
        }
        assert_eq!(dir.check.load(Ordering::Relaxed), CHECKED);
    }

    #[test]
    fn a_default_acl_means_every_new_file_is_looked_at() {
        let t = tempfile::tempdir().unwrap();
        // system.posix_acl_default: version 2, then (tag, perm, id) entries
        // user::rwx group::rwx other::rwx. New files then get the bits asked
        // for, without the umask.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for tag in [0x01u16, 0x04, 0x20] {
            acl.extend(tag.to_le_bytes());
            acl.extend(7u16.to_le_bytes());
            acl.extend(u32::MAX.to_le_bytes());
        }
        rustix::fs::setxattr(
            t.path(),
            "system.posix_acl_default",
            &acl,
            rustix::fs::XattrFlags::empty(),
        )
        .expect("a filesystem with POSIX ACLs for the temporary directory");
        let dir = open(t.path());
        let f = create(&dir, "f", 0o666);
        let got = dir.created(&f, &meta(0o666)).unwrap();
        assert_eq!(got, stat_owned(&f).unwrap());
        assert_eq!(got.mode, 0o666, "the ACL, not the umask, decided");
        assert_eq!(dir.check.load(Ordering::Relaxed), UNCHECKED);
        assert!(dir.creation.get().unwrap().is_none());
    }

    #[test]
    fn a_wrong_prediction_turns_the_shortcut_off_for_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let dir = open(t.path());
        let f = create(&dir, "f", 0o644);
        // As if the filesystem had given the file other bits than asked.
        rustix::fs::fchmod(&f, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        assert_eq!(dir.created(&f, &meta(0o644)).unwrap().mode, 0o600);
        assert_eq!(dir.check.load(Ordering::Relaxed), WRONG);
        let g = create(&dir, "g", 0o644);
        rustix::fs::fchmod(&g, rustix::fs::Mode::from_raw_mode(0o640)).unwrap();
        assert_eq!(dir.created(&g, &meta(0o644)).unwrap().mode, 0o640);
    }
}
