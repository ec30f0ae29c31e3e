//! The plan of a rehearsal: `ferry plan` run as a child on the generated
//! inventory, with the link and lanes of the rehearsal and the freeze and
//! pre-copy models fitted on this kind of machine (issue 18: freezes
//! within 20 % of their prediction).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::Options;

/// What a freeze of this rehearsal costs besides its files: the journal's
/// writes, the routers' stores and the orchestrator's calls on one machine.
/// Fitted with the two constants below to 44 freezes of units of 224 to
/// 27,504 files at 5 ms each way (BENCHMARKS.md, "ferry rehearse", issue 18).
const FREEZE_FIXED: Duration = Duration::from_millis(200);

/// Round trips across the link every freeze waits for: the freeze and the
/// drain query at the source routers, the proof at the source agent, the
/// flip at the source routers (each a call on an open connection).
const FREEZE_ROUND_TRIPS: u32 = 4;

/// CPU time a file of the unit costs a freeze (`ferry plan
/// --freeze-per-file` on one core): the final pass walks it at both agents
/// and the proof at the flip reads its kept hash. The debug build (tests,
/// most rehearsals) takes about 4 times the release build's. Measured on 2
/// vCPUs (BENCHMARKS.md, "ferry rehearse", issue 18): debug, 4 lanes, 330
/// us a file of wall time (2 freezes a core); release (earlier runs, 2
/// lanes: 1 a core), 35 us. `ferry migrate check --measure-link`
/// measures it on a real fleet.
const FREEZE_CPU_PER_FILE_US: f64 = if cfg!(debug_assertions) { 165.0 } else { 35.0 };

/// What a unit's pre-copy costs besides its files and bytes: the copy
/// sessions with both agents (opened for the first pass, again for the
/// converging passes and the warm-up of the proof's hashes), the journal's
/// writes. Fitted with the two constants below to 12 pre-copies of 224 to
/// 11,004 files at 5 ms each way, 4 at once (BENCHMARKS.md, "ferry
/// rehearse", issue 18); one run at 20 ms gave the round trips.
const PRECOPY_FIXED: Duration = Duration::from_millis(1240);

/// Round trips across the link a pre-copy waits for besides its files'
/// (sessions, handshakes, the end of each pass): about 6 (0.17 s more at
/// 20 ms than at 5 ms each way, 224-file units).
const PRECOPY_ROUND_TRIPS: u32 = 6;

/// CPU time a file of the unit costs its pre-copy (`ferry plan
/// --precopy-per-file` on one core): the first pass walks, reads and
/// hashes it at both agents, the converging passes walk it again, the
/// warm-up hashes it for the proof. Debug, 4 lanes on 2 vCPUs: about 1 ms
/// of wall time a file (2 pre-copies a core); release (earlier 2-lane runs,
/// 1 a core, 55,004 files in 10.1-10.5 s): 160 us.
const PRECOPY_CPU_PER_FILE_US: f64 = if cfg!(debug_assertions) { 500.0 } else { 160.0 };

/// What a unit's database server adds to its freeze (`--databases`: one
/// server a unit, 2 small databases): the accounts locked and sessions
/// ended at the source, the destination waited for at the freeze position,
/// the rows changed since the online check compared, the accounts copied at
/// the flip; a fixed part and the mover's statements to the source across
/// the link. Debug build, 4 lanes on 2 vCPUs (BENCHMARKS.md, "ferry
/// rehearse", databases): about 1.4 s over the files-only model at 1 ms
/// each way, 2.2 s at 5 ms.
const DB_FREEZE_FIXED: Duration = Duration::from_millis(1200);
const DB_FREEZE_ROUND_TRIPS: u32 = 90;

/// What a unit's database server adds to its pre-copy: the first copy
/// (a snapshot, 4 tables), the catch-up, the online check of every row.
/// Debug build: about 4.5 s over the files-only model.
const DB_PRECOPY: Duration = Duration::from_millis(4500);

/// `ferry plan`'s freeze and pre-copy models for this rehearsal: each a
/// fixed cost and round trips at its latency, and a file's CPU time shared
/// by the units that run at once (one per lane, at most one per filer)
/// over this machine's cores, where both datacenters run.
fn freeze_plan_args(opts: &Options) -> [String; 8] {
    let mut overhead = FREEZE_FIXED + opts.latency * 2 * FREEZE_ROUND_TRIPS;
    let mut precopy = PRECOPY_FIXED + opts.latency * 2 * PRECOPY_ROUND_TRIPS;
    if opts.databases > 0 && opts.partition.is_none() {
        overhead += DB_FREEZE_FIXED + opts.latency * 2 * DB_FREEZE_ROUND_TRIPS;
        precopy += DB_PRECOPY;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let at_once = opts.lanes.min(opts.filers).max(1);
    let share = f64::from(at_once) / cores as f64;
    let per_file_us = FREEZE_CPU_PER_FILE_US * share;
    let precopy_per_file_us = PRECOPY_CPU_PER_FILE_US * share;
    [
        "--freeze-overhead".to_string(),
        format!("{}ms", overhead.as_millis()),
        "--freeze-per-file".to_string(),
        format!("{per_file_us:.1}us"),
        "--precopy-overhead".to_string(),
        format!("{}ms", precopy.as_millis()),
        "--precopy-per-file".to_string(),
        format!("{precopy_per_file_us:.1}us"),
    ]
}

/// `ferry plan` as a child, with the link and lanes of this rehearsal and
/// its freeze and pre-copy models (`freeze_plan_args`, written first in
/// the plan's log).
/// Units are whole filers (its copy jobs are per filer), copied file by
/// file, as its migrate.toml says (`mode = "file"`).
pub(crate) async fn run_plan(
    exe: &Path,
    opts: &Options,
    inventory: &Path,
    plan: &Path,
    log: &Path,
) -> anyhow::Result<()> {
    let freeze = freeze_plan_args(opts);
    let out = tokio::process::Command::new(exe)
        .arg("plan")
        .arg("--inventory")
        .arg(inventory)
        .args(["--constraints", "filer,declared-db", "--copy-mode", "files"])
        .args(&freeze)
        .arg("--bandwidth")
        .arg(format!("{}B/s", opts.rate_bytes))
        .arg("--parallel")
        .arg(opts.lanes.to_string())
        .args(["--json", "--out"])
        .arg(plan)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running ferry plan")?;
    let flags = format!("freeze and pre-copy model: {}\n", freeze.join(" "));
    std::fs::write(
        log,
        [flags.as_bytes(), &out.stdout[..], &out.stderr[..]].concat(),
    )?;
    if !out.status.success() || !plan.is_file() {
        bail!(
            "ferry plan failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
