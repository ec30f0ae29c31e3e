//! The abuse suite's table. A test that has replayed an attack calls `row`;
//! when `FERRY_ABUSE_REPORT` names a file (as `bench/abuse/run.sh` sets it),
//! the row is appended there as one tab-separated line, else it only goes to
//! the test's output.

use std::io::Write;

/// Resident memory of process `pid` in KiB (VmRSS), 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A KiB figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), 0 when the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Records one replayed attack: what was tried, what the attacker saw,
/// the target's RSS afterwards (KiB) and whether normal requests were served
/// while it ran.
pub fn row(attack: &str, result: &str, rss_kib: u64, served: bool) {
    let line = format!(
        "{attack}\t{result}\t{} MB\t{}",
        rss_kib / 1024,
        if served { "yes" } else { "NO" }
    );
    eprintln!("abuse: {line}");
    if let Ok(path) = std::env::var("FERRY_ABUSE_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
