//! One block-mode pass: hash both sides, send only the blocks that differ.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rayon::prelude::*;

use super::pacing::{Limiter, Progress};
use super::{wire, Event, OnEvent, PassSummary, SyncOptions};
use crate::endpoint::{Dest, Op, Source};
use crate::error::Result;

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

/// One block-mode pass from the image `src` to `dst`: hashes both sides at
/// once, sends the differing blocks as runs, then records the hashes.
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
