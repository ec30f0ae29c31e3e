//! The driver: one pass, repeated passes until convergence, verification.
//!
//! A pass scans both sides at once, compares, and sends the receiver a plan in
//! an order that keeps every step valid: deletions and type changes first,
//! then directories (path order puts parents first), then small files and
//! symlinks in parallel, then large files one at a time as deltas, then hard
//! links (their targets are in place by then), then directory metadata last
//! (writing a child changes its directory's mtime; a read-only directory can
//! only be made read-only after it has been filled).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::block::DEFAULT_BLOCK_SIZE;
use crate::delta::{block_size_for, Chunk};
use crate::endpoint::{Basis, Dest, Op, Source};
use crate::error::{Result, SyncError};
use crate::manifest::{Entry, Kind, Manifest, ScanOptions};
use crate::merkle::{self, Verdict};
use crate::path::RelPath;
use crate::watch::Changes;

/// What a pass does.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Remove entries of the destination that the source does not have.
    pub delete: bool,
    /// Compare content (BLAKE3) instead of size + mtime.
    pub checksum: bool,
    /// Keep owners (only meaningful when the receiver runs as root).
    pub owners: bool,
    /// Limit on data bytes sent per second.
    pub bwlimit: Option<u64>,
    /// Files at least this large that exist at the receiver go as a delta.
    pub delta_min: u64,
    /// Files up to this size go in a single frame.
    pub small_max: u64,
    /// Block mode block size.
    pub block_size: u32,
    /// `--watch`: passes after the first visit only what changed at the
    /// source (see [`crate::watch`]).
    pub watch: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            delete: false,
            checksum: false,
            owners: false,
            bwlimit: None,
            delta_min: 256 * 1024,
            small_max: 1024 * 1024,
            block_size: DEFAULT_BLOCK_SIZE,
            watch: false,
        }
    }
}

/// What a pass reports when it is done.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PassSummary {
    pub pass: u32,
    /// Scan time S (both sides, concurrently), seconds.
    pub scan_secs: f64,
    /// Entries (or blocks) visited at the source.
    pub entries: u64,
    /// Entries created, replaced or updated.
    pub changed_entries: u64,
    /// Changed bytes R: the size of the content that had to move.
    pub changed_bytes: u64,
    /// Literal bytes actually sent (after delta and holes).
    pub data_bytes: u64,
    /// Bytes on the network, both directions (0 for local-to-local).
    pub wire_sent: u64,
    pub wire_received: u64,
    pub deleted: u64,
    /// Source files that disappeared between scan and read (skipped).
    pub vanished: u64,
    /// Time spent after the scan, seconds.
    pub transfer_secs: f64,
    /// Transfer rate B, bytes per second of changed content.
    pub rate: f64,
    /// Predicted length of a final pass: S + R/B, seconds.
    pub predicted_final_secs: f64,
    /// `--watch`: the pass visited only the changed paths (and their parent
    /// directories); `entries` is how many source entries that was.
    pub watched: bool,
    /// `--watch`: why this pass walked the whole tree instead (first pass,
    /// watch overflow, inotify limit, failed earlier pass...).
    pub full_walk_reason: Option<String>,
    /// Follow mode: the destination this pass went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
}

/// Progress of a pass, for a progress bar or the orchestrator.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    PassStarted {
        pass: u32,
    },
    Scanned {
        pass: u32,
        source_entries: u64,
        dest_entries: u64,
        scan_secs: f64,
    },
    Planned {
        pass: u32,
        changed_entries: u64,
        changed_bytes: u64,
        deletions: u64,
    },
    Progress {
        pass: u32,
        done_entries: u64,
        done_bytes: u64,
        remaining_bytes: u64,
        wire_sent: u64,
        rate: f64,
    },
    /// `--watch`: this pass walks the whole tree instead of the changes.
    FullWalk {
        pass: u32,
        reason: String,
    },
    PassFinished {
        summary: PassSummary,
    },
    /// Follow mode: a destination failed; its changes are kept for a retry.
    DestDown {
        dest: String,
        error: String,
        retry_in_secs: f64,
    },
    Converged {
        ready: bool,
        reason: String,
        passes: u32,
        predicted_final_secs: f64,
    },
}

/// A callback for [`Event`]s; called from several threads.
pub type OnEvent<'a> = &'a (dyn Fn(&Event) + Sync);

/// Paces data to `rate` bytes per second.
struct Limiter {
    rate: Option<u64>,
    start: Instant,
    sent: AtomicU64,
}

impl Limiter {
    fn new(rate: Option<u64>) -> Limiter {
        Limiter {
            rate,
            start: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }
    fn take(&self, n: u64) {
        let total = self.sent.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            let el = self.start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
    }
}

/// Counters shared by the workers of a pass.
struct Progress<'a> {
    pass: u32,
    total: u64,
    done_entries: AtomicU64,
    done_bytes: AtomicU64,
    data: AtomicU64,
    last: Mutex<Instant>,
    start: Instant,
    on_event: OnEvent<'a>,
    wire: &'a (dyn Fn() -> u64 + Sync),
}

impl<'a> Progress<'a> {
    /// Progress of one pass that will move `total` bytes, starting now.
    fn new(
        pass: u32,
        total: u64,
        start: Instant,
        on_event: OnEvent<'a>,
        wire: &'a (dyn Fn() -> u64 + Sync),
    ) -> Self {
        Progress {
            pass,
            total,
            done_entries: AtomicU64::new(0),
            done_bytes: AtomicU64::new(0),
            data: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
            start,
            on_event,
            wire,
        }
    }

    fn add(&self, entries: u64, bytes: u64) {
        self.done_entries.fetch_add(entries, Ordering::Relaxed);
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.maybe_emit(false);
    }
    fn maybe_emit(&self, force: bool) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.elapsed() < Duration::from_millis(100) {
                return;
            }
            *last = Instant::now();
        }
        let done = self.done_bytes.load(Ordering::Relaxed);
        let el = self.start.elapsed().as_secs_f64();
        (self.on_event)(&Event::Progress {
            pass: self.pass,
            done_entries: self.done_entries.load(Ordering::Relaxed),
            done_bytes: done,
            remaining_bytes: self.total.saturating_sub(done),
            wire_sent: (self.wire)(),
            rate: if el > 0.0 { done as f64 / el } else { 0.0 },
        });
    }
}

fn content_changed(s: &Entry, d: &Entry, checksum: bool) -> bool {
    s.size != d.size
        || (checksum && s.hash != d.hash)
        || (!checksum && s.meta.mtime != d.meta.mtime)
}

fn meta_changed(s: &Entry, d: &Entry, owners: bool) -> bool {
    s.meta.mtime != d.meta.mtime
        || (s.kind != Kind::Symlink && s.meta.mode != d.meta.mode)
        || (owners && (s.meta.uid != d.meta.uid || s.meta.gid != d.meta.gid))
}

/// Runs one pass from `src` to `dst`. With [`SyncOptions::watch`], the pass
/// takes the source's [`Changes`] and visits only those (the first pass, and
/// any pass after the record was lost, walks everything and says why).
pub fn run_pass(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &SyncOptions,
    pass: u32,
    on_event: OnEvent<'_>,
) -> Result<PassSummary> {
    if !opts.watch {
        return run_pass_over(src, dst, opts, pass, None, on_event);
    }
    let changes = src.changes()?;
    run_pass_over(src, dst, opts, pass, Some(&changes), on_event).inspect_err(|e| {
        // The changes taken for this pass are not applied everywhere; only a
        // full walk is sure to find them again.
        let _ = src.watch_force_full(&format!("pass {pass} failed: {e}"));
    })
}

/// Scans both sides at once: the whole trees, or only `paths`.
fn scan_both(
    src: &dyn Source,
    dst: &dyn Dest,
    paths: Option<&BTreeSet<RelPath>>,
    scan_opts: &ScanOptions,
) -> Result<(Manifest, Manifest)> {
    let (sm, dm) = std::thread::scope(|s| {
        let a = s.spawn(|| match paths {
            Some(p) => src.scan_paths(p, scan_opts),
            None => src.scan(scan_opts),
        });
        // The receiver's full scan lists what an interrupted pass already
        // built in hidden directories (see ScanOptions::staged).
        let dst_opts = ScanOptions {
            staged: true,
            ..*scan_opts
        };
        let b = match paths {
            Some(p) => dst.scan_paths(p, scan_opts),
            None => dst.scan(&dst_opts),
        };
        let a = a
            .join()
            .unwrap_or_else(|_| Err(SyncError::Protocol("source scan panicked".into())));
        (a, b)
    });
    Ok((sm?, dm?))
}

/// The parents of the paths a pass adds, replaces or removes (`None` = the
/// root); see `run_pass_over`.
struct Touched {
    set: HashSet<Option<RelPath>>,
    /// Every parent, or only the root (a destination that had no entries).
    all: bool,
}

impl Touched {
    fn insert(&mut self, p: &RelPath) {
        if self.all || !p.as_bytes().contains(&b'/') {
            self.set.insert(p.parent());
        }
    }
}

/// Runs one pass over `changes` (`None`: an ordinary full pass). Follow mode
/// uses this directly with the changes it keeps for each destination.
pub fn run_pass_over(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &SyncOptions,
    pass: u32,
    changes: Option<&Changes>,
    on_event: OnEvent<'_>,
) -> Result<PassSummary> {
    on_event(&Event::PassStarted { pass });
    let wire0 = wire(src, dst);
    let t0 = Instant::now();
    let scan_opts = ScanOptions {
        checksum: opts.checksum,
        staged: false,
    };
    let mut full_walk_reason = None;
    let (sm, dm) = match changes {
        Some(Changes::Paths(paths)) => {
            let (sm, dm) = scan_both(src, dst, Some(paths), &scan_opts)?;
            // A hard-linked file written through one name changed under its
            // other names too, which the record does not list.
            if sm
                .entries
                .iter()
                .any(|e| e.kind == Kind::File && e.nlink > 1)
            {
                full_walk_reason = Some("a hard-linked file changed".to_string());
                scan_both(src, dst, None, &scan_opts)?
            } else {
                (sm, dm)
            }
        }
        Some(Changes::Full { reason }) => {
            full_walk_reason = Some(reason.clone());
            scan_both(src, dst, None, &scan_opts)?
        }
        None => scan_both(src, dst, None, &scan_opts)?,
    };
    let watched = changes.is_some() && full_walk_reason.is_none();
    if let Some(reason) = &full_walk_reason {
        on_event(&Event::FullWalk {
            pass,
            reason: reason.clone(),
        });
    }
    let scan = t0.elapsed();
    on_event(&Event::Scanned {
        pass,
        source_entries: sm.entries.len() as u64,
        dest_entries: dm.entries.len() as u64,
        scan_secs: scan.as_secs_f64(),
    });
    let t1 = Instant::now();

    let didx = dm.index();
    // Only the destination's entries are looked up in it (none on a first
    // copy, where building it was a tenth of the time between scan and send).
    let sidx = match dm.entries.is_empty() {
        true => HashMap::new(),
        false => sm.index(),
    };
    let leaders = sm.hard_link_leaders();

    // 1. Deletions: extraneous entries (with --delete) and type changes.
    let mut deletes: Vec<RelPath> = Vec::new();
    for d in &dm.entries {
        let remove = match sidx.get(&d.path) {
            None => opts.delete,
            Some(s) => s.kind != d.kind,
        };
        // Only the topmost of a removed subtree: removing it removes the rest.
        if remove && !deletes.last().is_some_and(|p| d.path.starts_with(p)) {
            deletes.push(d.path.clone());
        }
    }
    let deleted: HashSet<&RelPath> = deletes.iter().collect();
    // Removed by the deletions, itself or with a directory above it?
    let gone = |p: &RelPath| -> bool {
        !deleted.is_empty() && p.and_ancestors().any(|c| deleted.contains(&c))
    };
    let present = |p: &RelPath| -> Option<&Entry> { didx.get(p).copied().filter(|_| !gone(p)) };

    // 2. Classify every source entry.
    let mut mkdirs = Vec::new();
    let mut small = Vec::new(); // (entry, op kind)
    let mut large = Vec::new();
    let mut links = Vec::new();
    // Directories whose entries this pass changes: their metadata is set
    // again after (their mtime moved). Only directories the destination had
    // can need it: new ones get theirs anyway, so on a first copy only the
    // root is tracked (saves a parent path and a hash per file).
    let mut touched_dirs = Touched {
        set: HashSet::new(),
        all: !dm.entries.is_empty(),
    };
    let mut changed_bytes = 0u64;
    let mut changed_entries = 0u64;
    for p in &deletes {
        touched_dirs.insert(p);
    }
    for s in &sm.entries {
        let d = present(&s.path);
        match s.kind {
            Kind::Dir => {
                if d.is_none() {
                    mkdirs.push(s);
                    changed_entries += 1;
                    touched_dirs.insert(&s.path);
                }
            }
            Kind::Symlink => {
                let need = match d {
                    None => true,
                    Some(d) => d.target != s.target,
                };
                if need {
                    small.push((s, true));
                    changed_entries += 1;
                    changed_bytes += s.size;
                    touched_dirs.insert(&s.path);
                } else if d.is_some_and(|d| meta_changed(s, d, opts.owners)) {
                    small.push((s, false));
                    changed_entries += 1;
                }
            }
            Kind::File => {
                if leaders.contains_key(&s.path) {
                    links.push(s);
                    continue;
                }
                match d {
                    Some(d) if !content_changed(s, d, opts.checksum) => {
                        if meta_changed(s, d, opts.owners) {
                            small.push((s, false));
                            changed_entries += 1;
                        }
                    }
                    _ => {
                        changed_entries += 1;
                        changed_bytes += s.size;
                        touched_dirs.insert(&s.path);
                        if s.size <= opts.small_max {
                            small.push((s, true));
                        } else {
                            large.push((s, d.is_some()));
                        }
                    }
                }
            }
        }
    }
    on_event(&Event::Planned {
        pass,
        changed_entries,
        changed_bytes,
        deletions: deletes.len() as u64,
    });

    let limiter = Limiter::new(opts.bwlimit);
    let wire_now = || {
        let (a, b) = wire(src, dst);
        (a + b).saturating_sub(wire0.0 + wire0.1)
    };
    let progress = Progress::new(pass, changed_bytes, t1, on_event, &wire_now);
    let vanished = AtomicU64::new(0);

    for p in &deletes {
        dst.apply(Op::Delete { path: p.clone() })?;
    }
    for s in &mkdirs {
        dst.apply(Op::Mkdir {
            path: s.path.clone(),
        })?;
    }

    // 3. Small files, symlinks and metadata-only updates, in parallel.
    small
        .par_iter()
        .try_for_each(|(s, content)| -> Result<()> {
            let op = match (s.kind, content) {
                (Kind::File, true) => {
                    let data = match src.read_small(&s.path, s.size) {
                        Ok(d) => d,
                        Err(e) if e.is_not_found() => {
                            vanished.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    };
                    limiter.take(data.len() as u64);
                    progress
                        .data
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    Op::PutFile {
                        path: s.path.clone(),
                        meta: s.meta,
                        data,
                    }
                }
                (Kind::Symlink, true) => Op::Symlink {
                    path: s.path.clone(),
                    target: s.target.clone().unwrap_or_default(),
                    meta: s.meta,
                },
                _ => Op::SetMeta {
                    path: s.path.clone(),
                    kind: s.kind,
                    meta: s.meta,
                },
            };
            dst.apply(op)?;
            progress.add(1, if *content { s.size } else { 0 });
            Ok(())
        })?;

    // 4. Large files, one at a time, as deltas when the receiver has a basis.
    for (s, exists) in &large {
        let bs = block_size_for(s.size);
        let (basis, sig) = if *exists && s.size >= opts.delta_min {
            (Basis::Target, dst.signature(&s.path, Basis::Target, bs)?)
        } else {
            // An interrupted earlier pass may have left a partial copy.
            (Basis::Partial, dst.signature(&s.path, Basis::Partial, bs)?)
        };
        let basis = if sig.is_some() { basis } else { Basis::None };
        let mut begun = false;
        let mut emit = |c: Chunk| -> Result<()> {
            if !begun {
                dst.apply(Op::Begin {
                    path: s.path.clone(),
                    meta: s.meta,
                    basis,
                })?;
                begun = true;
            }
            let n = match &c {
                Chunk::Data(d) => d.len() as u64,
                _ => 0,
            };
            let covered = match &c {
                Chunk::Data(d) => d.len() as u64,
                Chunk::Zero(n) => *n,
                Chunk::Copy { len, .. } => *len,
            };
            limiter.take(n);
            progress.data.fetch_add(n, Ordering::Relaxed);
            dst.apply(Op::Chunk(c))?;
            progress.add(0, covered);
            Ok(())
        };
        match src.read(&s.path, sig.as_ref(), &mut emit) {
            Ok(()) => {}
            Err(e) if e.is_not_found() && !begun => {
                vanished.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(e) => return Err(e),
        }
        if !begun {
            // The file is empty now (it shrank since the scan).
            dst.apply(Op::Begin {
                path: s.path.clone(),
                meta: s.meta,
                basis: Basis::None,
            })?;
        }
        dst.apply(Op::Commit)?;
        progress.add(1, 0);
    }

    // 5. Hard links: a follower is right if it shares the leader's inode at the
    // receiver and the leader was not replaced in this pass.
    let rewritten: HashSet<&RelPath> = small
        .iter()
        .filter(|(_, c)| *c)
        .map(|(s, _)| &s.path)
        .chain(large.iter().map(|(s, _)| &s.path))
        .collect();
    for s in &links {
        let Some(leader) = leaders.get(&s.path) else {
            continue;
        };
        let ok = !rewritten.contains(leader)
            && match (present(&s.path), present(leader)) {
                (Some(d), Some(l)) => d.kind == Kind::File && d.ino == l.ino && d.dev == l.dev,
                _ => false,
            };
        if !ok {
            dst.apply(Op::Hardlink {
                path: s.path.clone(),
                to: leader.clone(),
            })?;
            changed_entries += 1;
            touched_dirs.insert(&s.path);
            progress.add(1, 0);
        }
    }

    // 6. Leftover temporary files of interrupted passes.
    for t in &dm.temps {
        dst.apply(Op::Delete { path: t.clone() })?;
        touched_dirs.insert(t);
    }

    // 7. Directory metadata, last.
    for s in sm.entries.iter().filter(|e| e.kind == Kind::Dir) {
        let stale = match present(&s.path) {
            None => true,
            Some(d) => meta_changed(s, d, opts.owners),
        };
        if stale || touched_dirs.set.contains(&Some(s.path.clone())) {
            dst.apply(Op::SetMeta {
                path: s.path.clone(),
                kind: Kind::Dir,
                meta: s.meta,
            })?;
        }
    }
    if let Some(root) = sm.root {
        let stale = dm.root.is_none_or(|d| {
            d.mtime != root.mtime
                || d.mode != root.mode
                || (opts.owners && (d.uid != root.uid || d.gid != root.gid))
        });
        if stale || touched_dirs.set.contains(&None) {
            dst.apply(Op::RootMeta { meta: root })?;
        }
    }
    dst.flush()?;
    progress.maybe_emit(true);

    let transfer = t1.elapsed();
    let (ws, wr) = wire(src, dst);
    let rate = if transfer.as_secs_f64() > 0.0 {
        changed_bytes as f64 / transfer.as_secs_f64()
    } else {
        0.0
    };
    let predicted = if changed_bytes == 0 {
        scan.as_secs_f64()
    } else if rate > 0.0 {
        scan.as_secs_f64() + changed_bytes as f64 / rate
    } else {
        f64::INFINITY
    };
    let summary = PassSummary {
        pass,
        scan_secs: scan.as_secs_f64(),
        entries: sm.entries.len() as u64,
        changed_entries,
        changed_bytes,
        data_bytes: progress.data.load(Ordering::Relaxed),
        wire_sent: ws - wire0.0,
        wire_received: wr - wire0.1,
        deleted: deletes.len() as u64,
        vanished: vanished.load(Ordering::Relaxed),
        transfer_secs: transfer.as_secs_f64(),
        rate,
        predicted_final_secs: predicted,
        watched,
        full_walk_reason,
        dest: None,
    };
    on_event(&Event::PassFinished {
        summary: summary.clone(),
    });
    Ok(summary)
}

fn wire(src: &dyn Source, dst: &dyn Dest) -> (u64, u64) {
    // Bytes we sent are what we wrote to either peer; same for received.
    let (a_out, a_in) = src.wire_bytes();
    let (b_out, b_in) = dst.wire_bytes();
    (a_out + b_out, a_in + b_in)
}

/// One block-mode pass: hash both sides, send only the blocks that differ.
/// Largest run of consecutive blocks sent as one op (well under the 4 MiB
/// frame limit).
const RUN_BYTES: u64 = 1024 * 1024;

/// Groups sorted block indexes into runs `(first, count)` of consecutive
/// blocks, at most `max` long.
fn block_runs(sorted: &[u64], max: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &i in sorted {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == i && *count < max => *count += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

pub fn run_block_pass(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &SyncOptions,
    pass: u32,
    on_event: OnEvent<'_>,
) -> Result<PassSummary> {
    on_event(&Event::PassStarted { pass });
    let wire0 = wire(src, dst);
    let bs = opts.block_size;
    let t0 = Instant::now();
    let (size, shashes) = src.block_hashes(bs)?;
    let dhashes = dst.block_prepare(size, bs)?;
    let scan = t0.elapsed();
    on_event(&Event::Scanned {
        pass,
        source_entries: shashes.len() as u64,
        dest_entries: dhashes.len() as u64,
        scan_secs: scan.as_secs_f64(),
    });
    let t1 = Instant::now();
    let differing: Vec<u64> = (0..shashes.len())
        .filter(|&i| dhashes.get(i) != Some(&shashes[i]))
        .map(|i| i as u64)
        .collect();
    let changed_bytes: u64 = differing
        .iter()
        .map(|&i| (size - i * bs as u64).min(bs as u64))
        .sum();
    on_event(&Event::Planned {
        pass,
        changed_entries: differing.len() as u64,
        changed_bytes,
        deletions: 0,
    });
    let limiter = Limiter::new(opts.bwlimit);
    let wire_now = || {
        let (a, b) = wire(src, dst);
        (a + b).saturating_sub(wire0.0 + wire0.1)
    };
    let progress = Progress::new(pass, changed_bytes, t1, on_event, &wire_now);
    // Consecutive differing blocks travel as one run (one read, one frame,
    // one write) of up to RUN_BYTES; runs are read in parallel and the
    // receiver gets them as they come.
    let runs = block_runs(&differing, (RUN_BYTES / bs as u64).max(1));
    runs.par_iter().try_for_each(|&(i, count)| -> Result<()> {
        let data = src.read_blocks(i, count, bs)?;
        let n = data.len() as u64;
        limiter.take(n);
        dst.apply(Op::Block {
            offset: i * bs as u64,
            data,
        })?;
        progress.data.fetch_add(n, Ordering::Relaxed);
        progress.add(count, n);
        Ok(())
    })?;
    dst.flush()?;
    dst.block_finish(size, bs, &shashes)?;
    dst.flush()?;
    let transfer = t1.elapsed();
    let rate = if transfer.as_secs_f64() > 0.0 {
        changed_bytes as f64 / transfer.as_secs_f64()
    } else {
        0.0
    };
    let (ws, wr) = wire(src, dst);
    let summary = PassSummary {
        pass,
        scan_secs: scan.as_secs_f64(),
        entries: shashes.len() as u64,
        changed_entries: differing.len() as u64,
        changed_bytes,
        data_bytes: progress.data.load(Ordering::Relaxed),
        wire_sent: ws - wire0.0,
        wire_received: wr - wire0.1,
        deleted: 0,
        vanished: 0,
        transfer_secs: transfer.as_secs_f64(),
        rate,
        predicted_final_secs: if changed_bytes == 0 || rate <= 0.0 {
            scan.as_secs_f64()
        } else {
            scan.as_secs_f64() + changed_bytes as f64 / rate
        },
        ..PassSummary::default()
    };
    on_event(&Event::PassFinished {
        summary: summary.clone(),
    });
    Ok(summary)
}

/// File or block mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    File,
    Block,
}

/// When to stop repeating passes.
#[derive(Clone, Debug)]
pub struct ConvergeOptions {
    /// The freeze budget: ready once a final pass is predicted to fit.
    pub max_freeze: Duration,
    /// Give up after this many passes.
    pub max_passes: u32,
}

/// How a converging run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Convergence {
    pub ready: bool,
    /// Why it stopped, with the numbers.
    pub reason: String,
    pub passes: Vec<PassSummary>,
}

/// Repeats passes until the predicted final pass fits `max_freeze` ("ready"),
/// or the changed bytes R have not shrunk for two passes, or the pass limit is
/// reached ("not converging"): the QEMU and Xen pre-copy criteria.
pub fn converge(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &SyncOptions,
    mode: Mode,
    conv: &ConvergeOptions,
    on_event: OnEvent<'_>,
) -> Result<Convergence> {
    let mut passes: Vec<PassSummary> = Vec::new();
    let mut not_shrunk = 0u32;
    let limit = conv.max_freeze.as_secs_f64();
    let out = loop {
        let n = passes.len() as u32 + 1;
        let s = match mode {
            Mode::File => run_pass(src, dst, opts, n, on_event)?,
            Mode::Block => run_block_pass(src, dst, opts, n, on_event)?,
        };
        // The first pass is the bulk copy; shrinking is judged from pass 2 on.
        if passes.len() >= 2 {
            let prev = &passes[passes.len() - 1];
            if s.changed_bytes >= prev.changed_bytes {
                not_shrunk += 1;
            } else {
                not_shrunk = 0;
            }
        }
        let predicted = s.predicted_final_secs;
        let (r, rate, scan) = (s.changed_bytes, s.rate, s.scan_secs);
        passes.push(s);
        if predicted <= limit {
            break Convergence {
                ready: true,
                reason: format!(
                    "ready after {n} passes: predicted final pass {predicted:.3}s <= max freeze {limit:.3}s (S={scan:.3}s, R={r} B, B={rate:.0} B/s)"
                ),
                passes,
            };
        }
        if not_shrunk >= 2 {
            break Convergence {
                ready: false,
                reason: format!(
                    "not converging: changed bytes R has not shrunk for two passes (last R={r} B, B={rate:.0} B/s, S={scan:.3}s, predicted final pass {predicted:.3}s > max freeze {limit:.3}s)"
                ),
                passes,
            };
        }
        if n >= conv.max_passes {
            break Convergence {
                ready: false,
                reason: format!(
                    "not converging: pass limit {n} reached (last R={r} B, B={rate:.0} B/s, S={scan:.3}s, predicted final pass {predicted:.3}s > max freeze {limit:.3}s)"
                ),
                passes,
            };
        }
    };
    on_event(&Event::Converged {
        ready: out.ready,
        reason: out.reason.clone(),
        passes: out.passes.len() as u32,
        predicted_final_secs: out.passes.last().map_or(0.0, |p| p.predicted_final_secs),
    });
    Ok(out)
}

/// Proves the two trees equal (Merkle roots) or lists up to `limit` differing
/// paths.
pub fn verify(src: &dyn Source, dst: &dyn Dest, limit: usize) -> Result<Verdict> {
    merkle::verify(src, dst, limit)
}

/// Block mode verification: fresh hashes of both sides (the digest file is not
/// trusted here), and the indexes of differing blocks.
pub fn verify_blocks(
    src: &dyn Source,
    dst: &dyn Dest,
    block_size: u32,
    limit: usize,
) -> Result<BlockVerdict> {
    let (ssize, a) = src.block_hashes(block_size)?;
    let (dsize, b) = dst.block_hashes(block_size)?;
    let mut differing = Vec::new();
    let n = a.len().max(b.len());
    let mut count = 0u64;
    for i in 0..n {
        if a.get(i) != b.get(i) {
            count += 1;
            if differing.len() < limit {
                differing.push(i as u64);
            }
        }
    }
    Ok(BlockVerdict {
        source_root: block_root(ssize, &a),
        dest_root: block_root(dsize, &b),
        blocks: a.len() as u64,
        differing,
        differing_count: count,
    })
}

/// Root over the block hashes (and the size, so a truncated copy differs).
pub fn block_root(size: u64, hashes: &[merkle::Digest]) -> merkle::Digest {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for d in hashes {
        h.update(d);
    }
    *h.finalize().as_bytes()
}

/// The outcome of a block verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockVerdict {
    pub source_root: merkle::Digest,
    pub dest_root: merkle::Digest,
    pub blocks: u64,
    pub differing: Vec<u64>,
    pub differing_count: u64,
}

impl BlockVerdict {
    pub fn equal(&self) -> bool {
        self.source_root == self.dest_root
    }
}

#[cfg(test)]
mod block_run_tests {
    use super::block_runs;

    #[test]
    fn consecutive_blocks_form_runs_up_to_the_limit() {
        assert_eq!(block_runs(&[], 4), vec![]);
        assert_eq!(
            block_runs(&[0, 1, 2, 5, 6, 9], 4),
            vec![(0, 3), (5, 2), (9, 1)]
        );
        assert_eq!(
            block_runs(&[0, 1, 2, 3, 4, 5, 6, 7, 8], 4),
            vec![(0, 4), (4, 4), (8, 1)]
        );
        assert_eq!(block_runs(&[3, 4], 1), vec![(3, 1), (4, 1)]);
    }
}
