//! `--measure-link`: a bounded read from each filer's source, and each
//! unit's timeline at the measured rate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{CheckReport, UnitNumbers, Verdict, LINK_SAMPLE};
use crate::plan::PlanUnit;
use crate::runbook::RunInputs;

/// `--measure-link`: per filer, the rate of a bounded read of the units'
/// hosting directories from its source (files of at most [`LINK_SAMPLE`]
/// bytes, until that many were read or `timeout` passed); per unit, its
/// pre-copy and final copy at the slowest rate of its filers, and its
/// freeze with that final copy against `max_freeze`.
pub(super) async fn link(
    r: &mut CheckReport,
    inputs: &RunInputs,
    units: &[&PlanUnit],
    numbers: &BTreeMap<String, UnitNumbers>,
    timeout: Duration,
) {
    let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for u in units {
        for h in &u.hostings {
            dirs.entry(h.filer.clone())
                .or_default()
                .insert(h.directory.trim_matches('/').to_string());
        }
    }
    let mut rates: BTreeMap<String, f64> = BTreeMap::new();
    for (name, dirs) in dirs {
        let Some(spec) = inputs.cfg.filers.get(&name) else {
            continue;
        };
        let at = format!("{name} source");
        let (source, key) = (spec.source.clone(), spec.key);
        let sampled =
            tokio::task::spawn_blocking(move || sample(&source, key, &dirs, timeout)).await;
        match sampled {
            Ok(Ok((bytes, took))) if bytes > 0 => {
                let rate = bytes as f64 / took.as_secs_f64().max(1e-6);
                rates.insert(name.clone(), rate);
                r.push(
                    "link",
                    at,
                    Verdict::Ok,
                    format!(
                        "read {bytes} bytes in {:.2} s: {:.0} bytes/s from {}",
                        took.as_secs_f64(),
                        rate,
                        spec.source
                    ),
                    "",
                );
            }
            Ok(Ok(_)) => r.push(
                "link",
                at,
                Verdict::Unchecked,
                "no file to read in the units' directories".into(),
                "nothing to do: there is nothing to copy either",
            ),
            Ok(Err(e)) => r.push(
                "link",
                at,
                Verdict::Failed,
                format!("reading from {}: {e}", spec.source),
                "see the filer's line above",
            ),
            Err(e) => r.push(
                "link",
                at,
                Verdict::Failed,
                format!("the read stopped: {e}"),
                "run the check again",
            ),
        }
    }
    let max = inputs.cfg.freeze.max_freeze.as_secs_f64();
    for u in units {
        let Some(rate) = crate::runbook::unit_filers(u)
            .iter()
            .filter_map(|f| rates.get(f).copied())
            .reduce(f64::min)
        else {
            continue;
        };
        let n = numbers.get(&u.id);
        let file_bytes = n.and_then(|n| n.size.as_ref()).map_or(0, |s| s.file_bytes);
        let Some(f) = n.and_then(|n| n.freeze.as_ref()) else {
            continue;
        };
        let final_s = f.final_bytes / rate;
        let freeze_s = f.total_s - f.final_copy_s + final_s;
        let verdict = if freeze_s <= max {
            Verdict::Ok
        } else {
            Verdict::Failed
        };
        r.push(
            "timeline",
            u.id.as_str(),
            verdict,
            format!(
                "at the measured {rate:.0} bytes/s: pre-copy {:.1} s, final copy {final_s:.1} s (planned {:.1} s), freeze {freeze_s:.1} s (planned {:.1} s, max_freeze {max:.0} s)",
                file_bytes as f64 / rate,
                f.final_copy_s,
                f.total_s
            ),
            "the link is slower than the plan assumed: plan again with the measured --bandwidth",
        );
    }
}

/// Reads whole files of `dirs` from `source` until [`LINK_SAMPLE`] bytes
/// or `timeout`: (bytes read, time taken by the reads).
fn sample(
    source: &str,
    key: Option<[u8; 32]>,
    dirs: &BTreeSet<String>,
    timeout: Duration,
) -> ferry_sync::Result<(u64, Duration)> {
    let tree: Box<dyn ferry_sync::Source> = match ferry_sync::Endpoint::parse(source)? {
        ferry_sync::Endpoint::Local(p) => Box::new(ferry_sync::LocalTree::new(p)),
        ferry_sync::Endpoint::Remote { host, port, volume } => {
            let key = key.ok_or_else(|| ferry_sync::SyncError::Auth("no key".into()))?;
            let d = ferry_sync::Deadlines {
                connect: timeout,
                handshake: timeout,
                idle: timeout,
            };
            Box::new(ferry_sync::RemoteTree::connect_with(
                &host, port, &volume, &key, false, &d,
            )?)
        }
    };
    let paths = dirs
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| ferry_sync::RelPath::new(d.as_bytes().to_vec()))
        .collect::<ferry_sync::Result<BTreeSet<_>>>()?;
    let m = tree.scan_paths(&paths, &ferry_sync::ScanOptions::default())?;
    let start = std::time::Instant::now();
    let mut bytes = 0u64;
    for e in &m.entries {
        if bytes >= LINK_SAMPLE || start.elapsed() >= timeout {
            break;
        }
        if e.kind != ferry_sync::Kind::File || e.size == 0 || e.size > LINK_SAMPLE {
            continue;
        }
        tree.read(&e.path, None, &mut |c| {
            if let ferry_sync::delta::Chunk::Data(d) = c {
                bytes += d.len() as u64;
            }
            Ok(())
        })?;
    }
    Ok((bytes, start.elapsed()))
}
