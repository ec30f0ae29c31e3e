//! The access log: one line per request, in combined format or JSON lines,
//! written by a background thread so a slow disk never stalls a request.
//!
//! Bounded, because a client chooses what goes in it: fields that come from
//! the request (method, path, Referer, User-Agent, upstream) are cut to a few
//! KiB, and the queue to the writer holds at most [`MAX_QUEUED_BYTES`] (and
//! [`MAX_QUEUED_ENTRIES`]); past that, and when a write fails (a full disk),
//! entries are dropped and counted (`ferry_access_log_dropped_total`). The
//! file is reopened at every reload (SIGHUP), which is how logrotate's
//! `postrotate` hands over a new file.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
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

/// Bytes of entries waiting for the writer at most (fields counted by length).
pub(crate) const MAX_QUEUED_BYTES: usize = 8 << 20;
/// Entries waiting for the writer at most.
pub(crate) const MAX_QUEUED_ENTRIES: usize = 65_536;
/// Longest path (with query) kept in a line; nginx's default large header
/// buffer is 8 KiB for the whole request line.
const MAX_PATH: usize = 4096;
/// Longest Referer, User-Agent, method or upstream kept in a line.
const MAX_FIELD: usize = 512;
/// Bytes an entry costs besides its strings (addresses, numbers, the line's
/// fixed text), so a flood of empty requests is bounded too.
const ENTRY_OVERHEAD: usize = 160;

pub(crate) struct AccessLogger {
    tx: Option<SyncSender<(Entry, usize)>>,
    queued: Arc<AtomicUsize>,
    pub dropped: Arc<AtomicU64>,
}

impl Entry {
    /// Cuts every field a client chooses to its bound; returns what the
    /// entry then weighs in the queue.
    fn bound(&mut self) -> usize {
        cut(&mut self.method, MAX_FIELD);
        cut(&mut self.path, MAX_PATH);
        cut(&mut self.referer, MAX_FIELD);
        cut(&mut self.user_agent, MAX_FIELD);
        cut(&mut self.upstream, MAX_FIELD);
        cut(&mut self.host, MAX_FIELD);
        // Weighed by what the strings hold, not what they show.
        ENTRY_OVERHEAD
            + self.method.capacity()
            + self.path.capacity()
            + self.referer.capacity()
            + self.user_agent.capacity()
            + self.upstream.capacity()
            + self.host.capacity()
    }
}

/// Shortens `s` to at most `max` bytes on a character boundary, marking the cut.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
    // truncate keeps the allocation: give the rest back, or a queued entry
    // still holds the client's 60 KB.
    s.shrink_to_fit();
}

impl AccessLogger {
    pub fn open(target: &AccessLog, format: AccessLogFormat) -> Result<AccessLogger, ProxyError> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => {
                return Ok(AccessLogger {
                    tx: None,
                    queued: Arc::new(AtomicUsize::new(0)),
                    dropped: Arc::new(AtomicU64::new(0)),
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
        let (tx, rx) = sync_channel::<(Entry, usize)>(MAX_QUEUED_ENTRIES);
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (q, d) = (queued.clone(), dropped.clone());
        std::thread::Builder::new()
            .name("ferry-access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::new(out);
                // Whether the entry reached the buffer; a failed write is
                // counted as lost.
                let put = |w: &mut std::io::BufWriter<_>, (e, size): (Entry, usize)| {
                    q.fetch_sub(size, Ordering::Relaxed);
                    let ok = write_entry(w, &e, format).is_ok();
                    if !ok {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    u64::from(ok)
                };
                while let Ok(first) = rx.recv() {
                    let mut pending = put(&mut w, first);
                    while let Ok(e) = rx.try_recv() {
                        pending += put(&mut w, e);
                    }
                    // A failed flush (a full disk) leaves at most the
                    // buffer's 8 KiB waiting for the next try; the lines of
                    // this batch are counted as lost.
                    if w.flush().is_err() {
                        d.fetch_add(pending, Ordering::Relaxed);
                    }
                }
            })
            .map_err(|source| ProxyError::AccessLog {
                path: "access log thread".into(),
                source,
            })?;
        Ok(AccessLogger {
            tx: Some(tx),
            queued,
            dropped,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, mut e: Entry) {
        let Some(tx) = &self.tx else { return };
        let size = e.bound();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tx.try_send((e, size)).is_err() {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
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
    use super::*;

    fn entry(path: String, ua: String) -> Entry {
        Entry {
            client: SocketAddr::from(([127, 0, 0, 1], 1)),
            method: "GET".into(),
            host: "a.example".into(),
            path,
            version: "HTTP/1.1",
            status: 200,
            bytes: Some(1),
            referer: String::new(),
            user_agent: ua,
            upstream: "app1".into(),
            duration: Duration::from_millis(1),
            site_state: "active",
        }
    }

    #[test]
    fn client_fields_are_cut_and_weighed() {
        let mut e = entry(format!("/{}", "é".repeat(60_000)), "u".repeat(60_000));
        let size = e.bound();
        assert!(e.path.len() <= MAX_PATH && e.path.ends_with("..."));
        assert!(e.user_agent.len() <= MAX_FIELD);
        assert!(size < MAX_PATH + 6 * MAX_FIELD + ENTRY_OVERHEAD);
        assert!(
            e.path.capacity() <= MAX_PATH,
            "the cut string gave its memory back"
        );
        let mut small = entry("/".into(), String::new());
        assert!(small.bound() < ENTRY_OVERHEAD + 64);
    }

    #[test]
    fn a_stalled_writer_bounds_the_queue_in_bytes() {
        // The writer thread blocks on a pipe nobody reads: the queue must
        // stop at MAX_QUEUED_BYTES and count the rest as dropped.
        let (tx, rx) = sync_channel::<(Entry, usize)>(MAX_QUEUED_ENTRIES);
        let logger = AccessLogger {
            tx: Some(tx),
            queued: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..10_000 {
            logger.log(entry(
                "/".to_string() + &"p".repeat(60_000),
                "u".repeat(60_000),
            ));
        }
        let queued = logger.queued.load(Ordering::Relaxed);
        assert!(queued <= MAX_QUEUED_BYTES, "{queued}");
        let kept = rx.try_iter().count();
        assert!(kept < 10_000 && kept > 100, "{kept}");
        assert_eq!(
            logger.dropped.load(Ordering::Relaxed) as usize,
            10_000 - kept
        );
    }

    #[test]
    fn clf_time_formats_utc() {
        assert_eq!(super::clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(super::clf_time(971_186_136), "10/Oct/2000:13:55:36 +0000");
        assert_eq!(super::clf_time(1_709_208_000), "29/Feb/2024:12:00:00 +0000");
    }
}
