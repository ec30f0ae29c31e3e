//! Filers: each side opened (an agent's handshake with the key, a local
//! path), and room at the destination (statvfs of a local path, the agent's
//! free-space query for a `ferry://` volume).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_sync::Tree as _;

use super::{CheckLine, CheckReport, UnitNumbers, Verdict};
use crate::config::FilerSpec;
use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// Each filer the units use: its source readable, its destination
/// writable, and room at the destination.
pub(super) async fn filers(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
    timeout: Duration,
) {
    let mut needs: BTreeMap<String, Need> = BTreeMap::new();
    for u in units {
        let size = numbers.get(&u.id).and_then(|n| n.size.as_ref());
        for f in crate::runbook::unit_filers(u) {
            let n = needs.entry(f).or_default();
            n.bytes = n.bytes.saturating_add(size.map_or(0, |s| s.file_bytes));
            n.files = n.files.saturating_add(size.map_or(0, |s| s.files));
        }
    }
    for (name, need) in &needs {
        let Some(spec) = inputs.cfg.filers.get(name) else {
            continue; // RunInputs::load checked every filer is described
        };
        let src = side(name, spec, &spec.source, false, timeout).await;
        r.lines.push(src);
        let dst = side(name, spec, &spec.destination, true, timeout).await;
        let dst_ok = dst.verdict == Verdict::Ok;
        r.lines.push(dst);
        if dst_ok {
            room(r, name, spec, &spec.destination, *need, timeout).await;
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

/// Free space at the destination against the bytes (and files against
/// inodes) of the units that use the filer (the plan counts per unit, not
/// per filer: for a unit of several filers this asks for more than the
/// filer needs). A local path is asked with statvfs; an agent's volume with
/// the sync protocol's free-space query, on a connection of its own.
async fn room(
    r: &mut CheckReport,
    name: &str,
    spec: &FilerSpec,
    at: &str,
    need: Need,
    timeout: Duration,
) {
    let at_name = format!("{name} destination");
    let endpoint =
        ferry_sync::Endpoint::parse(at).unwrap_or(ferry_sync::Endpoint::Local(PathBuf::new()));
    let (space, shown) = match endpoint {
        ferry_sync::Endpoint::Remote { host, port, volume } => {
            let Some(key) = spec.key else {
                return; // the side's line said so
            };
            let asked = tokio::task::spawn_blocking(move || {
                let d = ferry_sync::Deadlines {
                    connect: timeout,
                    handshake: timeout,
                    idle: timeout,
                };
                ferry_sync::query_space(&host, port, &volume, &key, &d)
            })
            .await;
            match asked {
                Ok(Ok(s)) => (s, format!("the agent's volume {at}")),
                Ok(Err(e)) => {
                    let fix = if matches!(e, ferry_sync::SyncError::Unsupported(_)) {
                        "upgrade `ferry agent` on the destination filer, or check the free space there by hand (df -h, df -i)"
                    } else {
                        "check the free space on the destination filer by hand (df -h, df -i)"
                    };
                    r.push(
                        "room",
                        at_name,
                        Verdict::Unchecked,
                        format!("the units need {}; {e}", need.show()),
                        fix,
                    );
                    return;
                }
                Err(e) => {
                    r.push(
                        "room",
                        at_name,
                        Verdict::Unchecked,
                        format!("the units need {}; the query stopped: {e}", need.show()),
                        "run the check again",
                    );
                    return;
                }
            }
        }
        ferry_sync::Endpoint::Local(path) => {
            let Some(existing) = nearest_existing(&path) else {
                return;
            };
            match rustix::fs::statvfs(&existing) {
                Ok(s) => {
                    let bytes = |b: u64| b.saturating_mul(s.f_frsize);
                    let space = ferry_sync::Space {
                        bytes_free: bytes(s.f_bavail),
                        bytes_total: bytes(s.f_blocks),
                        inodes_free: s.f_favail,
                        inodes_total: s.f_files,
                    };
                    (space, existing.display().to_string())
                }
                Err(e) => {
                    r.push(
                        "room",
                        at_name,
                        Verdict::Unchecked,
                        format!("statvfs {}: {e}", existing.display()),
                        "check the free space by hand (df -h, df -i)",
                    );
                    return;
                }
            }
        }
    };
    judge(r, at_name, &shown, &space, need);
}

/// What the units that use a filer hold, from the plan.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Need {
    pub bytes: u64,
    pub files: u64,
}

impl Need {
    fn show(&self) -> String {
        format!("{} bytes in {} files", self.bytes, self.files)
    }
}

/// The rule, the same for a local path and an agent's volume: failed when
/// the bytes, or the files, do not fit in what is free (a file system with
/// no inode limit reports 0 inodes in all and is not asked for files).
fn judge(r: &mut CheckReport, at_name: String, shown: &str, s: &ferry_sync::Space, need: Need) {
    let bytes_ok = s.bytes_free >= need.bytes;
    let inodes_ok = s.inodes_total == 0 || s.inodes_free >= need.files;
    let inodes = if s.inodes_total == 0 {
        "no inode limit".to_string()
    } else {
        format!("{} inodes free", s.inodes_free)
    };
    let verdict = if bytes_ok && inodes_ok {
        Verdict::Ok
    } else {
        Verdict::Failed
    };
    let short = match (bytes_ok, inodes_ok) {
        (false, false) => " (too few bytes and inodes)",
        (false, true) => " (too few bytes)",
        (true, false) => " (too few inodes)",
        (true, true) => "",
    };
    r.push(
        "room",
        at_name,
        verdict,
        format!(
            "{} bytes free and {inodes} at {shown}, the units need {}{short}",
            s.bytes_free,
            need.show()
        ),
        "free space (or inodes) at the destination, or move fewer units (--only)",
    );
}
