//! One file-mode pass, as named steps: scan both sides ([`scan_for_pass`]),
//! decide what each entry needs ([`Plan::classify`]), send it in an order
//! that keeps every op valid ([`Sender`]), and summarise (S, R, B and the
//! predicted final pass).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::pacing::{Limiter, Progress};
use super::{wire, Event, OnEvent, PassSummary, SyncOptions};
use crate::delta::{block_size_for, Chunk};
use crate::endpoint::{Basis, Dest, Op, Source};
use crate::error::{Result, SyncError};
use crate::manifest::{Entry, Kind, Manifest, ScanOptions};
use crate::path::RelPath;
use crate::watch::Changes;

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

/// What the scan step found: both manifests, and why the pass walked
/// everything when it was given changes.
struct Scanned {
    source: Manifest,
    dest: Manifest,
    full_walk_reason: Option<String>,
}

/// Step 1: scans both sides, over `changes` when there are some.
fn scan_for_pass(
    src: &dyn Source,
    dst: &dyn Dest,
    opts: &SyncOptions,
    changes: Option<&Changes>,
) -> Result<Scanned> {
    let scan_opts = ScanOptions {
        checksum: opts.checksum,
        staged: false,
    };
    let full = |reason: String| -> Result<Scanned> {
        let (source, dest) = scan_both(src, dst, None, &scan_opts)?;
        Ok(Scanned {
            source,
            dest,
            full_walk_reason: Some(reason),
        })
    };
    match changes {
        Some(Changes::Paths(paths)) => {
            let (source, dest) = scan_both(src, dst, Some(paths), &scan_opts)?;
            // A hard-linked file written through one name changed under its
            // other names too, which the record does not list.
            if source
                .entries
                .iter()
                .any(|e| e.kind == Kind::File && e.nlink > 1)
            {
                return full("a hard-linked file changed".to_string());
            }
            Ok(Scanned {
                source,
                dest,
                full_walk_reason: None,
            })
        }
        Some(Changes::Full { reason }) => full(reason.clone()),
        None => {
            let (source, dest) = scan_both(src, dst, None, &scan_opts)?;
            Ok(Scanned {
                source,
                dest,
                full_walk_reason: None,
            })
        }
    }
}

/// The parents of the paths a pass adds, replaces or removes (`None` = the
/// root): their metadata is set again after (their mtime moved).
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

/// The destination as this pass will leave it after its deletions.
struct DestView<'a> {
    index: HashMap<&'a RelPath, &'a Entry>,
    deleted: HashSet<&'a RelPath>,
}

impl<'a> DestView<'a> {
    fn new(dest: &'a Manifest, deletes: &'a [RelPath]) -> DestView<'a> {
        DestView {
            index: dest.index(),
            deleted: deletes.iter().collect(),
        }
    }

    /// The destination's entry at `p`, unless the deletions remove it
    /// (itself or with a directory above it).
    fn present(&self, p: &RelPath) -> Option<&'a Entry> {
        let gone =
            || !self.deleted.is_empty() && p.and_ancestors().any(|c| self.deleted.contains(&c));
        self.index.get(p).copied().filter(|_| !gone())
    }
}

/// Step 2a: what the destination loses: extraneous entries (with `delete`)
/// and entries whose type changes. Only the topmost of a removed subtree:
/// removing it removes the rest.
fn deletions(source: &Manifest, dest: &Manifest, delete: bool) -> Vec<RelPath> {
    // Only the destination's entries are looked up in it (none on a first
    // copy, where building it was a tenth of the time between scan and send).
    let sidx = match dest.entries.is_empty() {
        true => HashMap::new(),
        false => source.index(),
    };
    let mut deletes: Vec<RelPath> = Vec::new();
    for d in &dest.entries {
        let remove = match sidx.get(&d.path) {
            None => delete,
            Some(s) => s.kind != d.kind,
        };
        if remove && !deletes.last().is_some_and(|p| d.path.starts_with(p)) {
            deletes.push(d.path.clone());
        }
    }
    deletes
}

/// Step 2b: what every source entry needs at the destination.
struct Plan<'m> {
    mkdirs: Vec<&'m Entry>,
    /// Small files and symlinks, with whether their content travels (else
    /// only their metadata).
    small: Vec<(&'m Entry, bool)>,
    /// Large files, with whether the destination has the file (a basis).
    large: Vec<(&'m Entry, bool)>,
    /// Hard-link followers (their leader is sent as a file).
    links: Vec<&'m Entry>,
    touched_dirs: Touched,
    changed_bytes: u64,
    changed_entries: u64,
}

impl<'m> Plan<'m> {
    fn classify(
        source: &'m Manifest,
        dest: &Manifest,
        view: &DestView<'_>,
        deletes: &[RelPath],
        leaders: &HashMap<RelPath, RelPath>,
        opts: &SyncOptions,
    ) -> Plan<'m> {
        let mut plan = Plan {
            mkdirs: Vec::new(),
            small: Vec::new(),
            large: Vec::new(),
            links: Vec::new(),
            // Only directories the destination had can need their metadata
            // again: new ones get theirs anyway, so on a first copy only the
            // root is tracked (saves a parent path and a hash per file).
            touched_dirs: Touched {
                set: HashSet::new(),
                all: !dest.entries.is_empty(),
            },
            changed_bytes: 0,
            changed_entries: 0,
        };
        for p in deletes {
            plan.touched_dirs.insert(p);
        }
        for s in &source.entries {
            let d = view.present(&s.path);
            match s.kind {
                Kind::Dir => {
                    if d.is_none() {
                        plan.mkdirs.push(s);
                        plan.changed_entries += 1;
                        plan.touched_dirs.insert(&s.path);
                    }
                }
                Kind::Symlink => plan.symlink(s, d, opts),
                Kind::File if leaders.contains_key(&s.path) => plan.links.push(s),
                Kind::File => plan.file(s, d, opts),
            }
        }
        plan
    }

    fn symlink(&mut self, s: &'m Entry, d: Option<&Entry>, opts: &SyncOptions) {
        let need = match d {
            None => true,
            Some(d) => d.target != s.target,
        };
        if need {
            self.small.push((s, true));
            self.changed_entries += 1;
            self.changed_bytes += s.size;
            self.touched_dirs.insert(&s.path);
        } else if d.is_some_and(|d| meta_changed(s, d, opts.owners)) {
            self.small.push((s, false));
            self.changed_entries += 1;
        }
    }

    fn file(&mut self, s: &'m Entry, d: Option<&Entry>, opts: &SyncOptions) {
        match d {
            Some(d) if !content_changed(s, d, opts.checksum) => {
                if meta_changed(s, d, opts.owners) {
                    self.small.push((s, false));
                    self.changed_entries += 1;
                }
            }
            _ => {
                self.changed_entries += 1;
                self.changed_bytes += s.size;
                self.touched_dirs.insert(&s.path);
                if s.size <= opts.small_max {
                    self.small.push((s, true));
                } else {
                    self.large.push((s, d.is_some()));
                }
            }
        }
    }
}

/// Step 3: sends the plan to the receiver, paced and counted.
struct Sender<'a> {
    src: &'a dyn Source,
    dst: &'a dyn Dest,
    opts: &'a SyncOptions,
    limiter: Limiter,
    progress: Progress<'a>,
    /// Source files gone between the scan and their read (skipped).
    vanished: AtomicU64,
}

impl Sender<'_> {
    /// Small files, symlinks and metadata-only updates. Links and metadata
    /// need nothing from the source and go out in parallel; file contents
    /// come through [`Source::read_small_each`] (a remote source keeps
    /// many reads outstanding, issue 18).
    fn small_files(&self, small: &[(&Entry, bool)]) -> Result<()> {
        let (files, rest): (Vec<_>, Vec<_>) = small
            .iter()
            .partition(|(s, content)| *content && s.kind == Kind::File);
        rest.par_iter().try_for_each(|(s, content)| -> Result<()> {
            let op = match (s.kind, content) {
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
            self.dst.apply(op)?;
            self.progress.add(1, if *content { s.size } else { 0 });
            Ok(())
        })?;
        let asked: Vec<(&RelPath, u64)> = files.iter().map(|(s, _)| (&s.path, s.size)).collect();
        self.src.read_small_each(&asked, &|i, read| {
            let s = files[i].0;
            let data = match read {
                Ok(d) => d,
                Err(e) if e.is_not_found() => {
                    self.vanished.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            self.limiter.take(data.len() as u64);
            self.progress
                .data
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            self.dst.apply(Op::PutFile {
                path: s.path.clone(),
                meta: s.meta,
                data,
            })?;
            self.progress.add(1, s.size);
            Ok(())
        })
    }

    /// Large files, one at a time, as deltas when the receiver has a basis.
    fn large_files(&self, large: &[(&Entry, bool)]) -> Result<()> {
        for (s, exists) in large {
            self.large_file(s, *exists)?;
        }
        Ok(())
    }

    fn large_file(&self, s: &Entry, exists: bool) -> Result<()> {
        let (src, dst) = (self.src, self.dst);
        let bs = block_size_for(s.size);
        let (basis, sig) = if exists && s.size >= self.opts.delta_min {
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
            self.limiter.take(n);
            self.progress.data.fetch_add(n, Ordering::Relaxed);
            dst.apply(Op::Chunk(c))?;
            self.progress.add(0, covered);
            Ok(())
        };
        match src.read(&s.path, sig.as_ref(), &mut emit) {
            Ok(()) => {}
            Err(e) if e.is_not_found() && !begun => {
                self.vanished.fetch_add(1, Ordering::Relaxed);
                return Ok(());
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
        self.progress.add(1, 0);
        Ok(())
    }

    /// Hard links: a follower is right if it shares the leader's inode at
    /// the receiver and the leader was not replaced in this pass.
    fn hard_links(
        &self,
        plan: &mut Plan<'_>,
        view: &DestView<'_>,
        leaders: &HashMap<RelPath, RelPath>,
    ) -> Result<()> {
        let rewritten: HashSet<&RelPath> = plan
            .small
            .iter()
            .filter(|(_, c)| *c)
            .map(|(s, _)| &s.path)
            .chain(plan.large.iter().map(|(s, _)| &s.path))
            .collect();
        for s in &plan.links {
            let Some(leader) = leaders.get(&s.path) else {
                continue;
            };
            let ok = !rewritten.contains(leader)
                && match (view.present(&s.path), view.present(leader)) {
                    (Some(d), Some(l)) => d.kind == Kind::File && d.ino == l.ino && d.dev == l.dev,
                    _ => false,
                };
            if !ok {
                self.dst.apply(Op::Hardlink {
                    path: s.path.clone(),
                    to: leader.clone(),
                })?;
                plan.changed_entries += 1;
                plan.touched_dirs.insert(&s.path);
                self.progress.add(1, 0);
            }
        }
        Ok(())
    }

    /// Directory metadata, last (writing a child moves its directory's
    /// mtime; a read-only directory can only be made so once filled).
    fn dir_metadata(
        &self,
        source: &Manifest,
        dest: &Manifest,
        view: &DestView<'_>,
        touched_dirs: &Touched,
    ) -> Result<()> {
        let owners = self.opts.owners;
        for s in source.entries.iter().filter(|e| e.kind == Kind::Dir) {
            let stale = match view.present(&s.path) {
                None => true,
                Some(d) => meta_changed(s, d, owners),
            };
            if stale || touched_dirs.set.contains(&Some(s.path.clone())) {
                self.dst.apply(Op::SetMeta {
                    path: s.path.clone(),
                    kind: Kind::Dir,
                    meta: s.meta,
                })?;
            }
        }
        if let Some(root) = source.root {
            let stale = dest.root.is_none_or(|d| {
                d.mtime != root.mtime
                    || d.mode != root.mode
                    || (owners && (d.uid != root.uid || d.gid != root.gid))
            });
            if stale || touched_dirs.set.contains(&None) {
                self.dst.apply(Op::RootMeta { meta: root })?;
            }
        }
        Ok(())
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
    let Scanned {
        source: sm,
        dest: dm,
        full_walk_reason,
    } = scan_for_pass(src, dst, opts, changes)?;
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

    let leaders = sm.hard_link_leaders();
    let deletes = deletions(&sm, &dm, opts.delete);
    let view = DestView::new(&dm, &deletes);
    let mut plan = Plan::classify(&sm, &dm, &view, &deletes, &leaders, opts);
    on_event(&Event::Planned {
        pass,
        changed_entries: plan.changed_entries,
        changed_bytes: plan.changed_bytes,
        deletions: deletes.len() as u64,
    });

    let wire_now = || {
        let (a, b) = wire(src, dst);
        (a + b).saturating_sub(wire0.0 + wire0.1)
    };
    let sender = Sender {
        src,
        dst,
        opts,
        limiter: Limiter::new(opts.bwlimit),
        progress: Progress::new(pass, plan.changed_bytes, t1, on_event, &wire_now),
        vanished: AtomicU64::new(0),
    };
    // The order keeps every op valid: deletions and type changes, then
    // directories (parents first), content, hard links (their targets are
    // in place), leftover temporaries, and directory metadata last.
    for p in &deletes {
        dst.apply(Op::Delete { path: p.clone() })?;
    }
    for s in &plan.mkdirs {
        dst.apply(Op::Mkdir {
            path: s.path.clone(),
        })?;
    }
    sender.small_files(&plan.small)?;
    sender.large_files(&plan.large)?;
    sender.hard_links(&mut plan, &view, &leaders)?;
    // Leftover temporary files of interrupted passes. A leftover staged
    // directory (killed before its marker was written) bears the hidden
    // name this pass staged the same directory under: staging already
    // replaced it, and deleting that name now would delete this pass's copy.
    let staged_now: HashSet<RelPath> = plan
        .mkdirs
        .iter()
        .filter_map(|s| {
            let hidden = crate::path::stage_name(&s.path);
            match s.path.parent() {
                Some(d) => d.join(&hidden).ok(),
                None => RelPath::name(&hidden).ok(),
            }
        })
        .collect();
    for t in dm.temps.iter().filter(|t| !staged_now.contains(*t)) {
        dst.apply(Op::Delete { path: t.clone() })?;
        plan.touched_dirs.insert(t);
    }
    sender.dir_metadata(&sm, &dm, &view, &plan.touched_dirs)?;
    dst.flush()?;
    sender.progress.maybe_emit(true);

    let (ws, wr) = wire(src, dst);
    let summary = PassSummary {
        pass,
        scan_secs: scan.as_secs_f64(),
        entries: sm.entries.len() as u64,
        changed_entries: plan.changed_entries,
        changed_bytes: plan.changed_bytes,
        data_bytes: sender.progress.data.load(Ordering::Relaxed),
        wire_sent: ws - wire0.0,
        wire_received: wr - wire0.1,
        deleted: deletes.len() as u64,
        vanished: sender.vanished.load(Ordering::Relaxed),
        watched,
        full_walk_reason,
        dest: None,
        ..timing(scan, t1.elapsed(), plan.changed_bytes)
    };
    on_event(&Event::PassFinished {
        summary: summary.clone(),
    });
    Ok(summary)
}

/// The timing part of a pass's summary: transfer time, rate B and the
/// predicted final pass S + R/B (infinite when bytes changed but none moved).
fn timing(scan: Duration, transfer: Duration, changed_bytes: u64) -> PassSummary {
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
    PassSummary {
        transfer_secs: transfer.as_secs_f64(),
        rate,
        predicted_final_secs: predicted,
        ..PassSummary::default()
    }
}
