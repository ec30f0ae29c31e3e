//! Opening a path below a directory without following any symbolic link and
//! without leaving it: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
//! where the kernel has it (Linux 5.6+), an `O_NOFOLLOW` walk of every
//! component from the directory's descriptor otherwise.
//!
//! Used where a read is named by a path that the tree's owner can change
//! between our scan and our open (a directory swapped for a link to `/etc`):
//! each component is checked by the open itself, not by an earlier `lstat`.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::path::RelPath;

/// Whether `openat2` is worth trying: the first ENOSYS (an old kernel, or a
/// seccomp filter that does not know it) turns it off for this process.
static OPENAT2: AtomicBool = AtomicBool::new(true);

/// Opens `rel` below the directory `root` with `flags` (`O_NOFOLLOW` and
/// `O_CLOEXEC` are added). A symlink at any component is refused (`ELOOP`),
/// as is a component that is not a directory (`ENOTDIR`).
pub(crate) fn open(root: impl AsFd, rel: &RelPath, flags: OFlags) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let path = OsStr::from_bytes(rel.as_bytes());
        // EAGAIN: a rename somewhere in the filesystem raced the lookup (the
        // kernel refuses rather than risk an escape); a few tries, then the
        // walk below, which has no such refusal.
        for _ in 0..4 {
            match rustix::fs::openat2(&root, path, flags, Mode::empty(), how) {
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => {
                    OPENAT2.store(false, Ordering::Relaxed);
                    break;
                }
                r => return r,
            }
        }
    }
    walk(root, rel, flags)
}

/// The same without `openat2`: every directory on the way is opened from
/// its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`.
fn walk(root: impl AsFd, rel: &RelPath, flags: OFlags) -> Result<OwnedFd, Errno> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    if let Some(parent) = rel.parent() {
        for c in parent.as_bytes().split(|&b| b == b'/') {
            let next = match &dir {
                Some(d) => rustix::fs::openat(d, OsStr::from_bytes(c), dir_flags, Mode::empty()),
                None => rustix::fs::openat(&root, OsStr::from_bytes(c), dir_flags, Mode::empty()),
            }?;
            dir = Some(next);
        }
    }
    let name = OsStr::from_bytes(rel.file_name());
    match &dir {
        Some(d) => rustix::fs::openat(d, name, flags, Mode::empty()),
        None => rustix::fs::openat(&root, name, flags, Mode::empty()),
    }
}

/// Whether `O_NOATIME` is still worth asking for: the kernel allows it only
/// to a file's owner or a process with CAP_FOWNER; the first refusal turns it
/// off for this process.
static NOATIME: AtomicBool = AtomicBool::new(true);

/// Opens `name` in `dir` for reading, without following a symlink there, and
/// without updating its access time where allowed: reading a whole tree must
/// not dirty the inode of every file not read in the last day (relatime),
/// which costs a journal write per file and changes the source.
pub(crate) fn open_read_at(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if NOATIME.load(Ordering::Relaxed) {
        match rustix::fs::openat(&dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => NOATIME.store(false, Ordering::Relaxed),
            r => return r,
        }
    }
    rustix::fs::openat(&dir, name, flags, Mode::empty())
}

/// Opens `rel` below the directory `root` for reading, through the parent
/// chain without following any symlink ([`open`]), without
/// touching its access time where allowed (see [`open_read_at`]).
pub(crate) fn open_read_beneath(root: impl AsFd, rel: &RelPath) -> Result<OwnedFd, Errno> {
    if NOATIME.load(Ordering::Relaxed) {
        match open(&root, rel, OFlags::RDONLY | OFlags::NOATIME) {
            Err(Errno::PERM) => NOATIME.store(false, Ordering::Relaxed),
            r => return r,
        }
    }
    open(root, rel, OFlags::RDONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes()).unwrap()
    }

    /// Both ways refuse a symlinked parent and a symlink at the end, and
    /// open what is really below the root.
    #[test]
    fn links_anywhere_on_the_path_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::fs::write(root.join("d/f"), b"f").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("lnk")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("d/last")).unwrap();
        let fd =
            rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for walk_only in [false, true] {
            let open = |p: &str| match walk_only {
                false => open(&fd, &rel(p), OFlags::RDONLY),
                true => walk(&fd, &rel(p), OFlags::RDONLY | OFlags::NOFOLLOW),
            };
            assert!(open("d/f").is_ok());
            // A linked parent: ELOOP from openat2, ENOTDIR from the walk
            // (O_NOFOLLOW | O_DIRECTORY on a link).
            let e = open("lnk/secret").unwrap_err();
            assert!(
                [Errno::LOOP, Errno::NOTDIR].contains(&e),
                "{walk_only}: {e}"
            );
            assert_eq!(open("d/last").unwrap_err(), Errno::LOOP, "{walk_only}");
            assert_eq!(open("d/f/x").unwrap_err(), Errno::NOTDIR, "{walk_only}");
        }
    }
}
