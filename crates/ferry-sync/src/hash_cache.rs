//! Content hashes kept between proofs of equality, so the proof at a flip
//! hashes only what changed since the last one.
//!
//! A Merkle root needs the BLAKE3 of every file on both sides: 55,000 small
//! files took 2.1 s between two agents on loopback, inside a freeze. The
//! orchestrator computes the roots once during the pre-copy, where time is
//! cheap; what was hashed then is remembered here under the file's identity
//! and change stamp, and the proof at the flip reuses it for every file whose
//! stamp did not move.
//!
//! What makes a reused hash as good as a fresh one: the key is the inode
//! (device, inode number) and the stamp is (size, mtime, ctime) read before
//! and after the content was read. Every change to a file's content through
//! the file system sets its ctime to the current time, and no system call
//! sets ctime to a chosen value, so a file whose stamp is unchanged has the
//! content that was hashed. Two cases could defeat that, and are closed:
//! - a write in the same clock tick as the ctime we saw (ctime has the
//!   kernel's coarse clock granularity): a hash is kept only when the file's
//!   ctime is [`SETTLED`] older than the moment its read began, so any later
//!   write gets a later ctime;
//! - an inode number reused by a new file: the new file's ctime is its
//!   creation time, later than any kept stamp for that number.
//!
//! What stays assumed: the wall clock is not set back by more than
//! [`SETTLED`] between the two proofs, and nothing writes the device under
//! the file system. Memory is bounded by [`MAX_ENTRIES`] (about 100 MB when
//! full): a full cache is emptied and starts over (the next proof hashes
//! everything again, as before the cache existed).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::Stat;

use crate::error::{Result, SyncError};
use crate::path::RelPath;

/// A BLAKE3 hash: [`crate::merkle::Digest`], named here without importing
/// merkle (which reads manifests, which use this cache).
type Digest = [u8; 32];

/// How much older than the start of its read a file's ctime must be for its
/// hash to be kept (far above the kernel's timestamp tick).
pub const SETTLED: Duration = Duration::from_secs(1);

/// Files remembered at most (one agent, all its volumes).
pub const MAX_ENTRIES: usize = 1_000_000;

/// What must be unchanged for a kept hash to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

// `stat`'s field types are the kernel's longs, which differ between
// architectures: the `from`s are identities here, conversions elsewhere.
#[allow(clippy::useless_conversion)]
impl Stamp {
    fn of(st: &Stat) -> Stamp {
        Stamp {
            dev: u64::from(st.st_dev),
            ino: u64::from(st.st_ino),
            size: st.st_size as u64,
            mtime: (i64::from(st.st_mtime), st.st_mtime_nsec as i64),
            ctime: (i64::from(st.st_ctime), st.st_ctime_nsec as i64),
        }
    }

    /// Whether the ctime is [`SETTLED`] before `started`.
    fn settled_before(&self, started: SystemTime) -> bool {
        let Ok(now) = started.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            // Before 1970: nothing to compare with; not kept.
            return false;
        };
        let ctime = Duration::new(secs, nanos.clamp(0, 999_999_999) as u32);
        ctime + SETTLED < now
    }
}

/// Hashes of files by inode, valid while their stamp is unchanged. Shared
/// by the sessions of one agent (or the trees of one process).
#[derive(Debug, Default)]
pub struct HashCache {
    known: Mutex<HashMap<(u64, u64), (Stamp, Digest)>>,
}

impl HashCache {
    pub fn new() -> HashCache {
        HashCache::default()
    }

    /// Files remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), (Stamp, Digest)>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (inserts are single calls): the map is still sound.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept hash of the file `lstat` saw as `st`, if its stamp is the
    /// one it had when hashed.
    pub(crate) fn lookup(&self, st: &Stat) -> Option<Digest> {
        let now = Stamp::of(st);
        match self.lock().get(&(now.dev, now.ino)) {
            Some((kept, hash)) if *kept == now => Some(*hash),
            _ => None,
        }
    }

    fn keep(&self, stamp: Stamp, hash: Digest) {
        let mut known = self.lock();
        if known.len() >= MAX_ENTRIES && !known.contains_key(&(stamp.dev, stamp.ino)) {
            tracing::info!(
                entries = known.len(),
                "content hash cache full: emptied (the next proof hashes every file again)"
            );
            known.clear();
        }
        known.insert((stamp.dev, stamp.ino), (stamp, hash));
    }

    /// BLAKE3 of the file `rel` below `root` (as [`crate::manifest::hash_file`]),
    /// kept when the file did not change while it was read and its last
    /// change is settled.
    pub(crate) fn hash_file(&self, root: impl AsFd, rel: &RelPath, shown: &Path) -> Result<Digest> {
        self.hash_file_from(SystemTime::now(), root, rel, shown)
    }

    /// [`HashCache::hash_file`] with the read's start given (tests move it).
    fn hash_file_from(
        &self,
        started: SystemTime,
        root: impl AsFd,
        rel: &RelPath,
        shown: &Path,
    ) -> Result<Digest> {
        let fd = crate::beneath::open_read_beneath(root, rel)
            .map_err(|e| SyncError::io("open", shown, e.into()))?;
        let stat = |fd: &std::os::fd::OwnedFd| {
            rustix::fs::fstat(fd)
                .map(|st| Stamp::of(&st))
                .map_err(|e| SyncError::io("fstat", shown, e.into()))
        };
        let before = stat(&fd)?;
        let mut f = std::fs::File::from(fd);
        let hash = hash_reader(&mut f, shown)?;
        let after = stat(&std::os::fd::OwnedFd::from(f))?;
        if before == after && before.settled_before(started) {
            self.keep(before, hash);
        }
        Ok(hash)
    }
}

/// BLAKE3 of everything `f` holds from where it stands.
pub(crate) fn hash_reader(f: &mut std::fs::File, shown: &Path) -> Result<Digest> {
    // One buffer per thread: a fresh zeroed 256 KiB buffer per file cost
    // more than reading and hashing a small file.
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut h = blake3::Hasher::new();
    BUF.with_borrow_mut(|buf| -> Result<()> {
        if buf.is_empty() {
            buf.resize(256 * 1024, 0);
        }
        loop {
            let n = f.read(buf).map_err(|e| SyncError::io("read", shown, e))?;
            if n == 0 {
                return Ok(());
            }
            h.update(&buf[..n]);
        }
    })?;
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_fd(dir: &Path) -> std::os::fd::OwnedFd {
        rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    fn lstat(p: &Path) -> Stat {
        rustix::fs::lstat(p).unwrap()
    }

    fn hash(c: &HashCache, dir: &Path, name: &str, started: SystemTime) -> Digest {
        let rel = RelPath::name(name.as_bytes()).unwrap();
        c.hash_file_from(started, root_fd(dir), &rel, &dir.join(name))
            .unwrap()
    }

    #[test]
    fn a_fresh_file_is_hashed_but_not_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"hello").unwrap();
        let c = HashCache::new();
        let h = hash(&c, d.path(), "a", SystemTime::now());
        assert_eq!(h, *blake3::hash(b"hello").as_bytes());
        // Written just now: a write in the same tick would not move ctime.
        assert!(c.is_empty());
        assert_eq!(c.lookup(&lstat(&d.path().join("a"))), None);
    }

    #[test]
    fn a_settled_file_is_kept_after_its_hash() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"hello").unwrap();
        let c = HashCache::new();
        // ctime cannot be set into the past: the read starts "later" instead.
        let later = SystemTime::now() + Duration::from_secs(2);
        let h = hash(&c, d.path(), "a", later);
        assert_eq!(c.lookup(&lstat(&d.path().join("a"))), Some(h));
    }

    #[test]
    fn a_kept_hash_is_reused_until_the_file_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        std::fs::write(&p, b"hello").unwrap();
        let c = HashCache::new();
        // As if hashed well after the last change.
        let st = lstat(&p);
        c.keep(Stamp::of(&st), *blake3::hash(b"hello").as_bytes());
        assert_eq!(c.lookup(&st), Some(*blake3::hash(b"hello").as_bytes()));
        // Same size, mtime put back: ctime still moves, the hash is dropped.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, b"HELLO").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let now = lstat(&p);
        assert_eq!(now.st_size, st.st_size);
        assert_eq!(
            c.lookup(&now),
            None,
            "a rewritten file must be hashed again"
        );
    }

    #[test]
    fn settled_means_a_second_before_the_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a");
        std::fs::write(&p, b"x").unwrap();
        let s = Stamp::of(&lstat(&p));
        assert!(!s.settled_before(SystemTime::now()));
        assert!(s.settled_before(SystemTime::now() + Duration::from_secs(2)));
    }

    #[test]
    fn a_full_cache_starts_over() {
        let c = HashCache::new();
        let stamp = |ino| Stamp {
            dev: 1,
            ino,
            size: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        };
        for i in 0..MAX_ENTRIES as u64 {
            c.keep(stamp(i), [0; 32]);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.keep(stamp(0), [1; 32]);
        assert_eq!(c.len(), MAX_ENTRIES, "replacing an entry keeps the rest");
        c.keep(stamp(u64::MAX), [0; 32]);
        assert_eq!(c.len(), 1);
    }
}
