//! Copy jobs: the replicator (ferry-sync: std I/O + rayon) driven off the
//! async threads, one job at a time per unit (lanes copy at the same time).
//! Each call opens both ends afresh, so a replayed step starts from what is
//! on disk. With a run budget (`--bwlimit`), every job's data goes through
//! it ([`Budgeted`]): the lanes share one link.

use std::sync::Arc;

use crate::config::MigrateConfig;
use crate::error::{OrchError, Result};
use ferry_sync::{
    Endpoint, EndpointTree, Mode, OpenOptions, PassSummary, Role, SyncError, SyncOptions,
};

use super::budget::{Budget, Budgeted, Priority};
use super::unit::Job;

/// The run's shared budget, handed to each job's thread.
pub(super) type SharedBudget = Option<Arc<Budget>>;

/// Opens both ends of a job through ferry-sync's one way of opening a side
/// (a local destination directory is created in file mode; an agent's
/// volume is connected with the job's key).
fn open_both(
    job: &Job,
    mode: Mode,
) -> std::result::Result<(EndpointTree, EndpointTree), SyncError> {
    let opts = OpenOptions {
        key: job.key,
        mode,
        ..OpenOptions::default()
    };
    let source = Endpoint::parse(&job.from)?.open(Role::Source, &opts)?;
    let dest = Endpoint::parse(&job.to)?.open(Role::Dest, &opts)?;
    Ok((source, dest))
}

/// The replicator's options for the runbook's copies.
pub(super) fn sync_opts(checksum: bool) -> SyncOptions {
    SyncOptions {
        delete: true,
        checksum,
        // Owners can only be set by root; elsewhere comparing them would
        // make every pass see changes it cannot apply.
        owners: ferry_sync::local::running_as_root(),
        ..Default::default()
    }
}

/// `d`'s destination, behind the budget when there is one.
fn with_budget<T>(
    d: &EndpointTree,
    budget: &SharedBudget,
    priority: Priority,
    f: impl FnOnce(&dyn ferry_sync::Dest) -> T,
) -> T {
    match budget {
        Some(b) => f(&Budgeted {
            inner: d.dest(),
            budget: b,
            priority,
        }),
        None => f(d.dest()),
    }
}

/// One pass of `mode`, numbered `n`.
fn pass(
    s: &EndpointTree,
    d: &EndpointTree,
    o: &SyncOptions,
    mode: Mode,
    n: u32,
    budget: &SharedBudget,
    priority: Priority,
) -> std::result::Result<PassSummary, SyncError> {
    with_budget(d, budget, priority, |dest| match mode {
        Mode::File => ferry_sync::run_pass(s.source(), dest, o, n, &|_| {}),
        Mode::Block => ferry_sync::run_block_pass(s.source(), dest, o, n, &|_| {}),
    })
}

/// The first pass of a job alone (so a failpoint can sit after it).
pub(super) async fn first_pass(
    job: &Job,
    mode: Mode,
    opts: &SyncOptions,
    budget: &SharedBudget,
) -> Result<PassSummary> {
    let (j, o, b) = (job.clone(), opts.clone(), budget.clone());
    blocking(job, move || {
        let (s, d) = open_both(&j, mode)?;
        pass(&s, &d, &o, mode, 1, &b, Priority::Background)
    })
    .await
}

/// Converging passes until the next one fits the freeze budget (or not);
/// then, in file mode with an agent at either end, both ends' Merkle roots
/// are computed once so the agents keep every file's content hash and the
/// proof at the flip hashes only what changed since (see `final_pass`).
pub(super) async fn converge(
    job: &Job,
    cfg: &MigrateConfig,
    opts: &SyncOptions,
    budget: &SharedBudget,
) -> Result<ferry_sync::Convergence> {
    let mode = cfg.copy.mode;
    let conv = ferry_sync::ConvergeOptions {
        max_freeze: cfg.freeze.max_freeze,
        max_passes: cfg.copy.max_passes,
    };
    let (j, o, b) = (job.clone(), opts.clone(), budget.clone());
    blocking(job, move || {
        let (s, d) = open_both(&j, mode)?;
        let c = with_budget(&d, &b, Priority::Background, |dest| {
            ferry_sync::converge(s.source(), dest, &o, mode, &conv, &|_| {})
        })?;
        if mode == Mode::File && keeps_hashes(&j) {
            // Only a warm-up: the proof that counts is at the flip.
            if let Err(e) = ferry_sync::warm_proof(s.source(), d.dest()) {
                tracing::warn!(job = %j.label, error = %e, "warming the content hashes failed; the proof at the flip hashes every file");
            }
        }
        Ok(c)
    })
    .await
}

/// Whether either end of `job` is an agent, which keeps content hashes
/// between sessions (a local tree opened per call keeps none).
fn keeps_hashes(job: &Job) -> bool {
    [&job.from, &job.to]
        .iter()
        .any(|e| matches!(Endpoint::parse(e), Ok(Endpoint::Remote { .. })))
}

/// The final copy of a frozen job: one pass. It copies what the traffic
/// wrote before the freeze; the sites are held now, so nothing moves while
/// it runs. Anything that moved anyway is seen by the proof that follows
/// (`verify` walks both ends again) and fails the unit: the second pass a
/// freeze used to run whenever the first changed anything (with traffic,
/// every freeze) only repeated that walk, and hid such a write instead of
/// reporting it.
pub(super) async fn final_pass(
    job: &Job,
    mode: Mode,
    opts: &SyncOptions,
    budget: &SharedBudget,
) -> Result<PassSummary> {
    let (j, o, bud) = (job.clone(), opts.clone(), budget.clone());
    blocking(job, move || {
        // The other lanes' pre-copies wait while this runs.
        let _freezing = bud.as_deref().map(Budget::freezing);
        let (s, d) = open_both(&j, mode)?;
        pass(&s, &d, &o, mode, 1, &bud, Priority::Freeze)
    })
    .await
}

/// What the Merkle comparison of a job's two ends found.
pub(super) struct Verified {
    pub(super) equal: bool,
    /// The source's root, hex.
    pub(super) root: String,
    /// The first differing paths (file mode) or blocks (block mode).
    pub(super) differing: Vec<String>,
}

/// Compares the job's two ends by Merkle root (the first 10 differences).
/// Both ends hash at once; an agent reuses the content hash of every file
/// whose inode, size, mtime and ctime did not move since the pre-copy's
/// roots (`ferry_sync::HashCache`), so at a flip only what changed since is
/// read.
pub(super) async fn verify(job: &Job, mode: Mode, block_size: u32) -> Result<Verified> {
    let j = job.clone();
    blocking(job, move || {
        let (s, d) = open_both(&j, mode)?;
        Ok(match mode {
            Mode::File => {
                let v = ferry_sync::verify(s.source(), d.dest(), 10)?;
                Verified {
                    equal: v.equal(),
                    root: hex(&v.source_root),
                    differing: v.differing.iter().map(|p| p.to_string()).collect(),
                }
            }
            Mode::Block => {
                let v = ferry_sync::verify_blocks(s.source(), d.dest(), block_size, 10)?;
                Verified {
                    equal: v.equal(),
                    root: hex(&v.source_root),
                    differing: v.differing.iter().map(|b| format!("block {b}")).collect(),
                }
            }
        })
    })
    .await
}

/// Runs replicator work (std I/O + rayon) off the async threads.
async fn blocking<T: Send + 'static>(
    job: &Job,
    f: impl FnOnce() -> std::result::Result<T, SyncError> + Send + 'static,
) -> Result<T> {
    let label = job.label.clone();
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|source| OrchError::Sync { job: label, source }),
        Err(e) => Err(OrchError::Sync {
            job: label,
            source: SyncError::Protocol(format!("copy thread failed: {e}")),
        }),
    }
}

fn hex(d: &[u8; 32]) -> String {
    blake3::Hash::from(*d).to_hex().to_string()
}
