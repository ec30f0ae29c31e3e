//! The agent's audit log: one JSON object per line, appended (O_APPEND, one
//! `write` per record, so concurrent records never interleave), flushed to
//! disk (fdatasync) before `record` returns. The server calls it on tokio's
//! blocking pool and runs a command only once its `accepted` record is on
//! disk: a run that started is on record even if the agent dies during it,
//! and a full disk refuses commands instead of running them unrecorded.
//!
//! Events: `unauthenticated` (one record per interval: count, peers),
//! `bad_request`, `refused`, `accepted`, `spawn_failed`, `start` (pid),
//! `end` (exit code or signal, timed out, caller gone, agent stopped,
//! duration).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::error::{FleetError, Result};

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| FleetError::io("open audit log", path, e))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends `{"time", "unix_ms", "event", ...fields}`.
    pub fn record(&self, event: &str, fields: Map<String, Value>) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut obj = Map::new();
        obj.insert(
            "time".into(),
            rfc3339(now.as_secs(), now.subsec_millis()).into(),
        );
        obj.insert("unix_ms".into(), (now.as_millis() as u64).into());
        obj.insert("event".into(), event.into());
        obj.extend(fields);
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let mut f = self.file.lock();
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| FleetError::io("write audit log", &self.path, e))
    }
}

/// `2026-11-23T22:57:41.123Z` from Unix seconds (UTC; the proleptic
/// Gregorian calendar, days to civil date as in H. Hinnant's algorithm).
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_474_661, 123), "2026-11-23T22:57:41.123Z");
    }

    #[test]
    fn records_are_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        let log = AuditLog::open(&p).unwrap();
        let mut f = Map::new();
        f.insert("caller".into(), "ops".into());
        log.record("start", f.clone()).unwrap();
        log.record("end", f).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["event"], "end");
        assert_eq!(lines[0]["caller"], "ops");
    }
}
