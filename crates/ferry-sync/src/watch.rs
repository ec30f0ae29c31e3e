//! Change recording for `--watch` and follow mode: a [`Watch`] on the source
//! tree (inotify through the `notify` crate, recursive) collects the paths that
//! changed between passes, so a pass after the first visits only those (see
//! [`crate::manifest::scan_paths`]).
//!
//! Whenever the record cannot be trusted to be complete, [`Watch::take`]
//! answers [`Changes::Full`] with the reason instead of a list, and the pass
//! walks the whole tree: the first pass (nothing recorded before the watch
//! existed), an inotify queue overflow (notify's rescan flag), a directory the
//! watch could not cover (the inotify watch limit), an error from the watch, a
//! barrier that did not come back in time, or a caller's
//! [`Watch::force_full`] (a failed pass, or a test).
//!
//! Delivery barrier: events reach us on notify's thread, a little after the
//! write. Before answering, `take` touches a file in a private directory
//! watched by the same inotify instance and waits for its event; the kernel
//! queue is FIFO, so once the barrier is seen every earlier change is recorded.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use crate::error::{Result, SyncError};
use crate::path::RelPath;

/// How long `take` waits for its barrier before giving up on the record.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);
/// A change list longer than this is not worth keeping: walk everything.
pub const MAX_CHANGED_PATHS: usize = 1_000_000;

/// What changed at the source since the previous pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// The record is not complete: walk the whole tree. Says why.
    Full { reason: String },
    /// Only these paths (with their subtrees and ancestors) need a visit.
    Paths(BTreeSet<RelPath>),
}

impl Changes {
    /// No change at all.
    pub fn none() -> Changes {
        Changes::Paths(BTreeSet::new())
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Changes::Paths(p) if p.is_empty())
    }

    /// Adds `other` to `self` (a full walk absorbs any list; the first
    /// reason is kept).
    pub fn merge(&mut self, other: Changes) {
        match (&mut *self, other) {
            (Changes::Full { .. }, _) => {}
            (_, full @ Changes::Full { .. }) => *self = full,
            (Changes::Paths(a), Changes::Paths(b)) => {
                a.extend(b);
                if a.len() > MAX_CHANGED_PATHS {
                    *self = Changes::Full {
                        reason: format!("more than {MAX_CHANGED_PATHS} changed paths"),
                    };
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    paths: BTreeSet<RelPath>,
    full: Option<String>,
    barrier_seen: u64,
}

impl State {
    fn force_full(&mut self, reason: String) {
        self.full.get_or_insert(reason);
    }
}

struct Shared {
    state: Mutex<State>,
    barrier: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a set and flags; a panic elsewhere cannot leave it
        // half-updated in a way that matters (worst case: one more full walk).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A recursive watch on a source tree. Dropping it stops the watch.
pub struct Watch {
    root: PathBuf,
    shared: Arc<Shared>,
    barrier_dir: PathBuf,
    barrier_seq: AtomicU64,
    watcher: Mutex<notify::RecommendedWatcher>,
}

fn watch_error(root: &Path, e: notify::Error) -> SyncError {
    SyncError::io("watch", root, std::io::Error::other(e.to_string()))
}

impl Watch {
    /// Starts watching `root`. The first [`Watch::take`] answers
    /// [`Changes::Full`] (nothing was recorded before now). A tree the watch
    /// cannot cover completely (inotify limits) still gives a `Watch`, whose
    /// every answer is a full walk saying why.
    pub fn start(root: &Path) -> Result<Watch> {
        let root = root
            .canonicalize()
            .map_err(|e| SyncError::io("resolve watched root", root, e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                full: Some("first pass: the watch starts now".into()),
                ..State::default()
            }),
            barrier: Condvar::new(),
        });
        let barrier_dir = make_barrier_dir()?;
        let (h_root, h_barrier, h_shared) = (root.clone(), barrier_dir.clone(), shared.clone());
        let handler = move |res: notify::Result<notify::Event>| {
            record(&h_shared, &h_root, &h_barrier, res);
        };
        // Symlinks are never followed: a link to `/` must not make us watch
        // the whole machine, and what a link points to is not part of the tree.
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher =
            notify::RecommendedWatcher::new(handler, config).map_err(|e| watch_error(&root, e))?;
        watcher
            .watch(&barrier_dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(&barrier_dir, e))?;
        if let Err(e) = watcher.watch(&root, RecursiveMode::Recursive) {
            // Typically the inotify watch limit: keep going with full walks.
            shared.lock().full = Some(format!(
                "the watch could not cover the whole tree ({e}); raise fs.inotify.max_user_watches"
            ));
            tracing::warn!(root = %root.display(), error = %e, "incomplete watch: every pass walks the whole tree");
        }
        Ok(Watch {
            root,
            shared,
            barrier_dir,
            barrier_seq: AtomicU64::new(0),
            watcher: Mutex::new(watcher),
        })
    }

    /// The watched root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the next [`Watch::take`] answer a full walk (the record of a
    /// failed pass is lost, or a test wants to provoke the fallback).
    pub fn force_full(&self, reason: &str) {
        self.shared.lock().force_full(reason.to_string());
    }

    /// What changed since the previous call (or since the start), after
    /// waiting for every event already queued by the kernel.
    pub fn take(&self) -> Changes {
        if let Err(reason) = self.barrier() {
            self.force_full(&reason);
        }
        let (paths, full) = {
            let mut st = self.shared.lock();
            (std::mem::take(&mut st.paths), st.full.take())
        };
        if let Some(reason) = full {
            return Changes::Full { reason };
        }
        // A directory that appeared may hold entries created before notify
        // added its watch; the pass walks it whole. Adding the watch here
        // (again: notify merges it) before that walk closes the gap, and
        // tells us when the inotify limit leaves it uncovered.
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        for p in &paths {
            let full = p.under(&self.root);
            let is_dir = std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir());
            if is_dir {
                if let Err(e) = watcher.watch(&full, RecursiveMode::Recursive) {
                    if !matches!(e.kind, notify::ErrorKind::PathNotFound) {
                        self.force_full(&format!(
                            "the watch could not cover new directory {p} ({e})"
                        ));
                    }
                }
            }
        }
        Changes::Paths(paths)
    }

    /// Touches a barrier file and waits until its event has been recorded.
    fn barrier(&self) -> std::result::Result<(), String> {
        let seq = self.barrier_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let f = self.barrier_dir.join(format!("b{seq}"));
        std::fs::write(&f, b"")
            .map_err(|e| format!("cannot write the watch barrier {}: {e}", f.display()))?;
        let _ = std::fs::remove_file(&f);
        let deadline = Instant::now() + BARRIER_TIMEOUT;
        let mut st = self.shared.lock();
        while st.barrier_seen < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the watch did not deliver its events within {BARRIER_TIMEOUT:?}"
                ));
            }
            st = self
                .shared
                .barrier
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Unwatch first: removing a watched directory makes notify complain
        // about a watch the kernel already dropped.
        let _ = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwatch(&self.barrier_dir);
        let _ = std::fs::remove_dir_all(&self.barrier_dir);
    }
}

fn make_barrier_dir() -> Result<PathBuf> {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| SyncError::Unsupported(format!("no randomness: {e}")))?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let base = std::env::temp_dir();
    let base = base.canonicalize().unwrap_or(base);
    let dir = base.join(format!(".ferry-watch-{}-{hex}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| SyncError::io("create watch barrier", &dir, e))?;
    Ok(dir)
}

/// Records one notification. Reads do not count (our own pass opens every
/// file it sends); anything else under the root marks its path.
fn record(shared: &Shared, root: &Path, barrier_dir: &Path, res: notify::Result<notify::Event>) {
    let ev = match res {
        Ok(ev) => ev,
        Err(e) => {
            shared
                .lock()
                .force_full(format!("the watch reported an error: {e}"));
            return;
        }
    };
    if ev.need_rescan() {
        shared
            .lock()
            .force_full("the watch overflowed (inotify queue full)".into());
        return;
    }
    if let EventKind::Access(a) = ev.kind {
        if a != AccessKind::Close(AccessMode::Write) {
            return;
        }
    }
    let mut st = shared.lock();
    for p in &ev.paths {
        if let Ok(name) = p.strip_prefix(barrier_dir) {
            let seq = name
                .to_str()
                .and_then(|n| n.strip_prefix('b'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                st.barrier_seen = st.barrier_seen.max(seq);
                shared.barrier.notify_all();
            }
            continue;
        }
        let Ok(rel) = p.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            // The root itself: its metadata is compared by every pass, but
            // if it was moved or removed the list means nothing any more.
            if matches!(
                ev.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            ) {
                st.force_full("the watched root was moved or removed".into());
            }
            continue;
        }
        match RelPath::new(rel.as_os_str().as_bytes()) {
            Ok(r) => {
                st.paths.insert(r);
                if st.paths.len() > MAX_CHANGED_PATHS {
                    st.paths.clear();
                    st.force_full(format!("more than {MAX_CHANGED_PATHS} changed paths"));
                }
            }
            Err(e) => st.force_full(format!("unusable changed path: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, Flag};

    fn shared() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            barrier: Condvar::new(),
        }
    }

    #[test]
    fn an_overflow_event_forces_a_full_walk() {
        let s = shared();
        let ev = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        record(&s, Path::new("/r"), Path::new("/b"), Ok(ev));
        assert!(s.lock().full.as_deref().unwrap().contains("overflowed"));
    }

    #[test]
    fn reads_are_ignored_and_writes_recorded() {
        let s = shared();
        let open = notify::Event::new(EventKind::Access(AccessKind::Open(AccessMode::Any)))
            .add_path("/r/a".into());
        record(&s, Path::new("/r"), Path::new("/b"), Ok(open));
        assert!(s.lock().paths.is_empty());
        let create = notify::Event::new(EventKind::Create(CreateKind::File))
            .add_path("/r/a/b".into())
            .add_path("/elsewhere/x".into());
        record(&s, Path::new("/r"), Path::new("/b"), Ok(create));
        let st = s.lock();
        assert_eq!(st.paths.len(), 1);
        assert!(st.full.is_none());
    }

    #[test]
    fn merge_keeps_the_full_walk() {
        let mut a = Changes::none();
        a.merge(Changes::Paths([RelPath::new("x").unwrap()].into()));
        a.merge(Changes::Full { reason: "r".into() });
        a.merge(Changes::none());
        assert_eq!(a, Changes::Full { reason: "r".into() });
    }
}
