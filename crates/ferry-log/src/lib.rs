//! Logs that can never fill a disk or stall the process (seed 000's lesson:
//! an error logger whose errors caused more errors until the disk was full).
//!
//! [`init`] installs the process's one tracing subscriber:
//! - [`RateLimit`]: per log statement, the first `rate` lines a second are
//!   written, the rest counted, then one "suppressed K similar log lines"
//!   line per statement and second;
//! - a lossy non-blocking writer: lines are queued (at most [`QUEUE_LINES`])
//!   for a writer thread; when the pipe, terminal or disk does not keep up,
//!   lines are dropped and counted, the caller never waits;
//! - every line cut at [`MAX_LINE`] bytes (a path or header from the network
//!   cannot make one line large), so the queue is bounded in bytes too;
//! - stderr, or [`RotatingFile`]: a file with a size cap and numbered old
//!   files.
//!
//! [`counters`] exposes the numbers for `/metrics`.

mod ratelimit;
mod rotate;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use ratelimit::RateLimit;
pub use rotate::RotatingFile;

/// Longest line written; longer ones are cut and marked.
pub const MAX_LINE: usize = 8 * 1024;
/// Lines waiting for the writer thread at most (so at most
/// `QUEUE_LINES x MAX_LINE` = 64 MiB in the worst case, far less in practice).
pub const QUEUE_LINES: usize = 8 * 1024;

/// What the logging machinery lost, for `/metrics`.
pub struct Counters {
    /// Lines not written because their statement was over its rate.
    pub suppressed: AtomicU64,
    /// Lines lost because the output did not keep up or a write failed.
    pub dropped: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    suppressed: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

static QUEUE: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Lines suppressed by the rate limit and lines dropped (queue full or write
/// failed) since the process started.
pub fn counters() -> (u64, u64) {
    let queue_dropped = QUEUE.get().map_or(0, |c| c.dropped_lines() as u64);
    (
        COUNTERS.suppressed.load(Ordering::Relaxed),
        COUNTERS.dropped.load(Ordering::Relaxed) + queue_dropped,
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Text,
    Json,
}

/// How the process logs.
#[derive(Clone, Debug)]
pub struct Options {
    /// A tracing filter ("info", "ferry_proxy=debug"); RUST_LOG overrides it.
    pub filter: String,
    pub format: Format,
    /// Lines per statement per second (0: no limit).
    pub rate: u32,
    /// Write here instead of stderr, rotating at `max_size` bytes.
    pub file: Option<PathBuf>,
    pub max_size: u64,
    /// Old files kept next to `file` (NAME.1 ... NAME.KEEP).
    pub keep: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file {}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
}

/// Keeps the writer thread; dropping it flushes what is queued.
pub struct Guard {
    _worker: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the subscriber for the whole process (once; a second call, as in
/// tests, leaves the first in place).
pub fn init(opts: &Options) -> Result<Guard, LogError> {
    let out: Box<dyn Write + Send> = match &opts.file {
        Some(path) => Box::new(RotatingFile::open(path, opts.max_size, opts.keep).map_err(
            |source| LogError::File {
                path: path.clone(),
                source,
            },
        )?),
        None => Box::new(Swallow(io::stderr())),
    };
    let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("ferry-log")
        .finish(out);
    let _ = QUEUE.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&opts.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let limit = RateLimit::new(opts.rate);
    let make = Truncating(writer);
    let ansi = opts.file.is_none() && io::IsTerminal::is_terminal(&io::stderr());
    let layer = match opts.format {
        Format::Text => tracing_subscriber::fmt::layer()
            .with_writer(make)
            .with_ansi(ansi)
            .with_filter(filter.and(limit.clone()))
            .boxed(),
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(make)
            .with_filter(filter.and(limit.clone()))
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .is_ok()
    {
        limit.spawn_reporter();
    }
    Ok(Guard { _worker: worker })
}

/// stderr whose failures (a closed or full pipe) count the line as dropped
/// instead of reaching the writer thread as errors.
struct Swallow<W>(W);

impl<W: Write> Write for Swallow<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.write_all(buf).is_err() {
            COUNTERS.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Cuts every line at [`MAX_LINE`] bytes before it is queued.
#[derive(Clone)]
struct Truncating<W>(W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Truncating<W> {
    type Writer = TruncatingWriter<W::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        TruncatingWriter(self.0.make_writer())
    }
}

pub struct TruncatingWriter<W>(W);

impl<W: Write> Write for TruncatingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() <= MAX_LINE {
            return self.0.write(buf);
        }
        let mut cut = truncate_line(buf);
        cut.extend_from_slice(b"... [line cut]\n");
        self.0.write_all(&cut)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The first [`MAX_LINE`] bytes of `buf`, ending on a UTF-8 boundary.
fn truncate_line(buf: &[u8]) -> Vec<u8> {
    let mut end = MAX_LINE.min(buf.len());
    // Back up over continuation bytes (10xxxxxx) so no character is split.
    while end > 0 && end < buf.len() && (buf[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    buf[..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let mut line = "é".repeat(MAX_LINE).into_bytes();
        line.push(b'\n');
        let cut = truncate_line(&line);
        assert!(cut.len() <= MAX_LINE);
        assert!(std::str::from_utf8(&cut).is_ok());
        let mut out = Vec::new();
        TruncatingWriter(&mut out).write_all(&line).unwrap();
        assert!(out.len() < MAX_LINE + 32);
        assert!(out.ends_with(b"[line cut]\n"));
    }
}
