//! The one accept loop of the crate's listeners (the agent's sync port and
//! the metrics endpoint): non-blocking accepts with a short sleep, so the
//! loop notices its shutdown flag without a wake-up connection, and a
//! back-off on accept errors instead of a spin.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, SyncError};

/// How often a failing accept is logged at warn level (the others at debug).
pub(crate) const LOG_ACCEPT_ERRORS_EVERY: Duration = Duration::from_secs(60);

/// Accepts connections on `listener` and hands each to `accepted` until
/// `shutdown` is set. `failed` is called for each accept error, `tick`
/// after every round (for periodic work such as a summary log line).
pub(crate) fn accept_until(
    listener: &TcpListener,
    shutdown: &AtomicBool,
    what: &str,
    mut accepted: impl FnMut(TcpStream, SocketAddr),
    mut failed: impl FnMut(),
    mut tick: impl FnMut(),
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    listener.set_nonblocking(true).map_err(|e| SyncError::Net {
        peer: addr.clone(),
        source: e,
    })?;
    let mut backoff: Option<Duration> = None;
    // When an accept error was last logged: under descriptor pressure,
    // failures and successes alternate, and each failure must not be a line.
    let mut accept_logged: Option<Instant> = None;
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((s, peer)) => {
                backoff = None;
                accepted(s, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                // Out of descriptors (EMFILE) or memory: the connection stays
                // in the backlog and retrying at once would spin. Wait,
                // doubling up to a second, until connections ending free some.
                let wait = backoff.map_or(Duration::from_millis(20), |b| {
                    (b * 2).min(Duration::from_secs(1))
                });
                failed();
                if accept_logged.is_none_or(|t| t.elapsed() >= LOG_ACCEPT_ERRORS_EVERY) {
                    tracing::warn!(
                        error = %e,
                        listener = what,
                        "accept failed; retrying with backoff (more are counted in the minute's summary)"
                    );
                    accept_logged = Some(Instant::now());
                } else {
                    tracing::debug!(error = %e, listener = what, "accept failed again");
                }
                backoff = Some(wait);
                std::thread::sleep(wait);
            }
        }
        tick();
    }
    Ok(())
}
