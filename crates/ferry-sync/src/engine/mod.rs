//! The driver: one pass, repeated passes until convergence, verification.
//!
//! A pass scans both sides at once, compares, and sends the receiver a plan in
//! an order that keeps every step valid: deletions and type changes first,
//! then directories (path order puts parents first), then small files and
//! symlinks in parallel, then large files one at a time as deltas, then hard
//! links (their targets are in place by then), then directory metadata last
//! (writing a child changes its directory's mtime; a read-only directory can
//! only be made read-only after it has been filled).
//!
//! - `file_pass`: one file-mode pass ([`run_pass`], [`run_pass_over`]) as
//!   named steps: scan, plan, send in order, summarise;
//! - `block_pass`: one block-mode pass ([`run_block_pass`]);
//! - `converge`: passes until the predicted final pass fits ([`converge()`]);
//! - `verify`: Merkle and block proofs of equality ([`verify()`],
//!   [`verify_blocks`]);
//! - `pacing`: the bandwidth limiter and the progress counters.

use serde::Serialize;

use crate::block::DEFAULT_BLOCK_SIZE;
use crate::endpoint::{Dest, Source};

mod block_pass;
mod converge;
mod file_pass;
mod pacing;
mod verify;

pub use block_pass::run_block_pass;
pub use converge::{converge, ConvergeOptions, Convergence};
pub use file_pass::{run_pass, run_pass_over};
pub use verify::{block_root, verify, verify_blocks, warm_proof, BlockVerdict};

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

/// File or block mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    File,
    Block,
}

/// Bytes on the network so far, (sent, received), over both sides.
fn wire(src: &dyn Source, dst: &dyn Dest) -> (u64, u64) {
    // Bytes we sent are what we wrote to either peer; same for received.
    let (a_out, a_in) = src.wire_bytes();
    let (b_out, b_in) = dst.wire_bytes();
    (a_out + b_out, a_in + b_in)
}
