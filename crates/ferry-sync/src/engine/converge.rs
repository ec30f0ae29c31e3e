//! Converging passes: repeat until a final pass is predicted to fit the
//! freeze budget, or stop and say why not.

use std::time::Duration;

use super::{run_block_pass, run_pass, Event, Mode, OnEvent, PassSummary, SyncOptions};
use crate::endpoint::{Dest, Source};
use crate::error::Result;

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
