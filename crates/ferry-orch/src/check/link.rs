//! `--measure-link`: a bounded read from each filer's source, and each
//! unit's timeline at the measured rate; and, from the walk that finds the
//! files to read, what a file-mode freeze costs per file (the figure to
//! plan with: `ferry plan --freeze-per-file`).

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
    let mut per_file: Option<f64> = None;
    for (name, dirs) in dirs {
        let Some(spec) = inputs.cfg.filers.get(&name) else {
            continue;
        };
        let at = format!("{name} source");
        let (source, key) = (spec.source.clone(), spec.key);
        let sampled =
            tokio::task::spawn_blocking(move || sample(&source, key, &dirs, timeout)).await;
        if let Ok(Ok(s)) = &sampled {
            if let Some(cost) = freeze_per_file(s.walked, s.walk_took) {
                per_file = Some(per_file.map_or(cost, |c: f64| c.max(cost)));
                r.push(
                    "link",
                    format!("{name} walk"),
                    Verdict::Ok,
                    format!(
                        "walked {} entries in {:.2} s: a file-mode freeze costs about {:.0} µs a file here",
                        s.walked,
                        s.walk_took.as_secs_f64(),
                        cost * 1e6
                    ),
                    "",
                );
            }
        }
        match sampled.map(|s| s.map(|s| (s.bytes, s.took))) {
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
    if let Some(cost) = per_file {
        r.push(
            "link",
            "freeze per file",
            Verdict::Ok,
            format!(
                "the slowest filer's walk: plan file-mode copies with `ferry plan --copy-mode files --freeze-per-file {:.0}us`",
                (cost * 1e6).ceil()
            ),
            "",
        );
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

/// A file-mode freeze walks each file twice (the final pass, then the proof
/// at the flip, whose content hashes are kept from the pre-copy for files
/// that did not change), both ends at once: twice the slower end's walk.
/// The source's walk stands for both ends (the destination may be empty
/// before the pre-copy). None when too few entries were walked to say.
fn freeze_per_file(walked: u64, took: Duration) -> Option<f64> {
    (walked >= 100).then(|| 2.0 * took.as_secs_f64() / walked as f64)
}

/// What [`sample`] measured.
struct Sample {
    /// Bytes read, and the time the reads took.
    bytes: u64,
    took: Duration,
    /// Entries the walk of the units' directories listed, and its time.
    walked: u64,
    walk_took: Duration,
}

/// Walks the units' `dirs` at `source` (timed), then reads whole files of
/// them until [`LINK_SAMPLE`] bytes or `timeout`.
fn sample(
    source: &str,
    key: Option<[u8; 32]>,
    dirs: &BTreeSet<String>,
    timeout: Duration,
) -> ferry_sync::Result<Sample> {
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
    let walk_start = std::time::Instant::now();
    let m = tree.scan_paths(&paths, &ferry_sync::ScanOptions::default())?;
    let walk_took = walk_start.elapsed();
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
    Ok(Sample {
        bytes,
        took: start.elapsed(),
        walked: m.entries.len() as u64,
        walk_took,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_freeze_pays_two_walks_a_file_and_needs_a_sample() {
        let c = freeze_per_file(50_000, Duration::from_millis(500)).unwrap();
        assert!((c - 20e-6).abs() < 1e-12, "{c}");
        assert_eq!(freeze_per_file(10, Duration::from_millis(1)), None);
    }
}
