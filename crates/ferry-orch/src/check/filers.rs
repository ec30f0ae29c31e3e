//! Filers: each side opened (an agent's handshake with the key, a local
//! path), and room at a local destination.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_sync::Tree as _;

use super::{CheckLine, CheckReport, UnitNumbers, Verdict};
use crate::config::FilerSpec;
use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// Each filer the units use: its source readable, its destination
/// writable, and room at a local destination.
pub(super) async fn filers(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
    timeout: Duration,
) {
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for u in units {
        let b = numbers
            .get(&u.id)
            .and_then(|n| n.size.as_ref())
            .map_or(0, |s| s.file_bytes);
        for f in crate::runbook::unit_filers(u) {
            *bytes.entry(f).or_default() += b;
        }
    }
    for (name, need) in &bytes {
        let Some(spec) = inputs.cfg.filers.get(name) else {
            continue; // RunInputs::load checked every filer is described
        };
        let src = side(name, spec, &spec.source, false, timeout).await;
        r.lines.push(src);
        let dst = side(name, spec, &spec.destination, true, timeout).await;
        let dst_ok = dst.verdict == Verdict::Ok;
        r.lines.push(dst);
        if dst_ok {
            room(r, name, &spec.destination, *need);
        }
    }
}

/// One side of a filer: an agent's volume opened with the key (for
/// writing at the destination: the agent refuses a read-only volume at the
/// handshake) and scanned for no path; a local directory read.
async fn side(name: &str, spec: &FilerSpec, at: &str, dest: bool, timeout: Duration) -> CheckLine {
    let which = if dest { "destination" } else { "source" };
    let line = |verdict, why: String, fix: &str| CheckLine {
        what: "filer".into(),
        at: format!("{name} {which}"),
        verdict,
        why,
        fix: if verdict == Verdict::Ok {
            String::new()
        } else {
            fix.into()
        },
    };
    let endpoint = match ferry_sync::Endpoint::parse(at) {
        Ok(e) => e,
        Err(e) => {
            return line(
                Verdict::Failed,
                e.to_string(),
                "correct the filer's address",
            )
        }
    };
    match endpoint {
        ferry_sync::Endpoint::Remote { host, port, volume } => {
            let Some(key) = spec.key else {
                return line(
                    Verdict::Failed,
                    format!("{at}: no key to open the agent's volume"),
                    "set [filers.NAME] key or key_file to the agents' pre-shared key",
                );
            };
            let shown = at.to_string();
            let asked = tokio::task::spawn_blocking(move || {
                let d = ferry_sync::Deadlines {
                    connect: timeout,
                    handshake: timeout,
                    idle: timeout,
                };
                let t = ferry_sync::RemoteTree::connect_with(&host, port, &volume, &key, dest, &d)?;
                t.scan_paths(&BTreeSet::new(), &ferry_sync::ScanOptions::default())
                    .map(|_| ())
            })
            .await;
            match asked {
                Ok(Ok(())) => line(
                    Verdict::Ok,
                    format!(
                        "{shown}: the agent took the key and opened the volume{}",
                        if dest { " for writing" } else { "" }
                    ),
                    "",
                ),
                Ok(Err(e)) => {
                    let fix = match &e {
                        ferry_sync::SyncError::Auth(_) => {
                            "the agent refused the key: set [filers.NAME] key to the agent's key"
                        }
                        ferry_sync::SyncError::Net { .. } => {
                            "start the agent (`ferry agent`), or correct the filer's ferry://HOST:PORT"
                        }
                        _ => "see the agent's answer (volume name, read_only in its agent.toml)",
                    };
                    line(Verdict::Failed, format!("{shown}: {e}"), fix)
                }
                Err(e) => line(
                    Verdict::Failed,
                    format!("{shown}: the check stopped: {e}"),
                    "run the check again",
                ),
            }
        }
        ferry_sync::Endpoint::Local(path) => {
            if !dest {
                return match std::fs::read_dir(&path) {
                    Ok(_) => line(
                        Verdict::Ok,
                        format!("{} is a readable directory", path.display()),
                        "",
                    ),
                    Err(e) => line(
                        Verdict::Failed,
                        format!("{}: {e}", path.display()),
                        "correct the filer's source path, or mount it here",
                    ),
                };
            }
            // The run creates the directory at prepare: its nearest
            // existing ancestor must take it.
            let Some(existing) = nearest_existing(&path) else {
                return line(
                    Verdict::Failed,
                    format!("{}: no part of the path exists", path.display()),
                    "correct the filer's destination path",
                );
            };
            match rustix::fs::access(&existing, rustix::fs::Access::WRITE_OK) {
                Ok(()) => line(
                    Verdict::Ok,
                    format!("{} is writable", existing.display()),
                    "",
                ),
                Err(e) => line(
                    Verdict::Failed,
                    format!("{} is not writable: {e}", existing.display()),
                    "make it writable by the orchestrator's user",
                ),
            }
        }
    }
}

fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut p = path;
    loop {
        if p.exists() {
            return Some(p.to_path_buf());
        }
        p = p.parent()?;
        if p.as_os_str().is_empty() {
            return Some(PathBuf::from("."));
        }
    }
}

/// Free space at a local destination against the bytes of the units that
/// use the filer (the plan counts bytes per unit, not per filer: for a unit
/// of several filers this asks for more than the filer needs). An agent's
/// volume cannot be asked: the sync protocol has no free-space query.
fn room(r: &mut CheckReport, name: &str, at: &str, need: u64) {
    let at_name = format!("{name} destination");
    let ferry_sync::Endpoint::Local(path) =
        ferry_sync::Endpoint::parse(at).unwrap_or(ferry_sync::Endpoint::Local(PathBuf::new()))
    else {
        r.push(
            "room",
            at_name,
            Verdict::Unchecked,
            format!("the units need {need} bytes; the agent protocol has no free-space query"),
            "check the free space on the destination filer by hand (df)",
        );
        return;
    };
    let Some(existing) = nearest_existing(&path) else {
        return;
    };
    match rustix::fs::statvfs(&existing) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let verdict = if free >= need {
                Verdict::Ok
            } else {
                Verdict::Failed
            };
            r.push(
                "room",
                at_name,
                verdict,
                format!(
                    "{free} bytes free at {}, the units need {need}",
                    existing.display()
                ),
                "free space at the destination, or move fewer units (--only)",
            );
        }
        Err(e) => r.push(
            "room",
            at_name,
            Verdict::Unchecked,
            format!("statvfs {}: {e}", existing.display()),
            "check the free space by hand (df)",
        ),
    }
}
