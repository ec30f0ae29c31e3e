//! The access log: one line per request, in combined format or JSON lines,
//! written by a background thread so a slow disk never stalls a request.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use ferry_config::{AccessLog, AccessLogFormat};

use crate::ProxyError;

/// One finished request.
pub(crate) struct Entry {
    pub client: SocketAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub version: &'static str,
    pub status: u16,
    pub bytes: Option<u64>,
    pub referer: String,
    pub user_agent: String,
    pub upstream: String,
    pub duration: Duration,
    pub site_state: &'static str,
}

pub(crate) struct AccessLogger {
    tx: Option<SyncSender<Entry>>,
    pub dropped: AtomicU64,
}

impl AccessLogger {
    pub fn open(target: &AccessLog, format: AccessLogFormat) -> Result<AccessLogger, ProxyError> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => {
                return Ok(AccessLogger {
                    tx: None,
                    dropped: AtomicU64::new(0),
                })
            }
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::Stderr => Box::new(std::io::stderr()),
            AccessLog::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ProxyError::AccessLog {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        // Bounded: under a flood, lines are dropped (and counted) rather than
        // letting memory grow or requests wait on the log.
        let (tx, rx) = sync_channel::<Entry>(65_536);
        std::thread::Builder::new()
            .name("ferry-access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::new(out);
                while let Ok(first) = rx.recv() {
                    let _ = write_entry(&mut w, &first, format);
                    while let Ok(e) = rx.try_recv() {
                        let _ = write_entry(&mut w, &e, format);
                    }
                    let _ = w.flush();
                }
            })
            .map_err(|source| ProxyError::AccessLog {
                path: "access log thread".into(),
                source,
            })?;
        Ok(AccessLogger {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, e: Entry) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(e) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_entry(w: &mut impl Write, e: &Entry, format: AccessLogFormat) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    match format {
        AccessLogFormat::Combined => {
            let bytes = e.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
            writeln!(
                w,
                "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" host={} upstream={} state={} ms={:.3}",
                e.client.ip(),
                clf_time(now.as_secs()),
                e.method,
                e.path,
                e.version,
                e.status,
                bytes,
                e.referer.replace('"', "%22"),
                e.user_agent.replace('"', "%22"),
                e.host,
                e.upstream,
                e.site_state,
                e.duration.as_secs_f64() * 1000.0
            )
        }
        AccessLogFormat::Json => {
            let v = serde_json::json!({
                "ts": now.as_secs_f64(),
                "client": e.client.ip().to_string(),
                "method": e.method,
                "host": e.host,
                "path": e.path,
                "version": e.version,
                "status": e.status,
                "bytes": e.bytes,
                "referer": e.referer,
                "user_agent": e.user_agent,
                "upstream": e.upstream,
                "site_state": e.site_state,
                "duration_ms": e.duration.as_secs_f64() * 1000.0,
            });
            writeln!(w, "{v}")
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000` from Unix seconds (UTC), without a date crate.
fn clf_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn clf_time_formats_utc() {
        assert_eq!(super::clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(super::clf_time(971_186_136), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(super::clf_time(1_709_208_000), "29/Feb/2024:12:00:00 +0000");
    }
}
