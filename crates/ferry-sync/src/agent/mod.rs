//! The server side: `ferry agent` serves named volumes over TCP.
//!
//! Each connection must prove it knows the pre-shared key (see [`crate::proto`])
//! before it can name a volume; a read-only volume refuses every receiver
//! operation. A session then runs the same [`LocalTree`](crate::LocalTree) code as a local sync,
//! so the receiver's safety rules (validated paths, no write through a
//! symlink, temporary file + rename) hold for remote writers too.
//!
//! Ops are pipelined: after the first failure the agent skips the following
//! ops and reports the failure at the next `Flush` (or at the next request),
//! so nothing after a refused op is written.
//!
//! The port faces strangers, so everything before the key is proven is
//! small and short ([`Limits`]): frames of at most
//! [`proto::MAX_HANDSHAKE_FRAME`] bytes, one deadline for the whole
//! handshake (not per read: a peer trickling a byte at a time is cut), small
//! buffers, and a cap on open connections beyond which new ones are closed at
//! once with a "busy" error. Failures of unauthenticated connections are
//! counted and summed up in one log line a minute, not logged one by one.
//! Authenticated sessions are cut after [`Limits::idle_timeout`] without a
//! byte either way. Accept errors (out of descriptors) back off; a thread
//! that cannot be started refuses that connection only.
//!
//! Files: this one is the accept loop; `config` the agent's settings,
//! `stats` its counters (the minute's log line), `handshake` the proof of
//! the key and the volume's opening, `session` the request loop and its
//! batches of ops, `requests` what each request does.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Result, SyncError};
use crate::hash_cache::HashCache;
use crate::proto::{self, Msg};

mod config;
mod handshake;
mod requests;
mod session;
mod stats;

pub use config::{AgentConfig, Limits, Volume, MIN_KEY_LEN};
use handshake::handshake;
use session::session;
pub use stats::AgentStats;
use stats::{Closed, Refused, Slot, Summary};

/// Serves connections on `listener` until `shutdown` is set. Each connection
/// runs on its own thread, at most [`Limits::max_connections`] at once.
pub fn serve(
    listener: TcpListener,
    config: Arc<AgentConfig>,
    shutdown: Arc<AtomicBool>,
) -> Result<()> {
    serve_with_stats(listener, config, Arc::new(AgentStats::default()), shutdown)
}

/// [`serve`], counting into `stats` (which a metrics endpoint reads).
pub fn serve_with_stats(
    listener: TcpListener,
    config: Arc<AgentConfig>,
    counters: Arc<AgentStats>,
    shutdown: Arc<AtomicBool>,
) -> Result<()> {
    // One per agent: a file's kept hash serves every session that proves
    // its volume (the pre-copy's proof warms it, the flip's reuses it).
    let hashes = Arc::new(HashCache::new());
    let mut summary = Summary {
        at: Instant::now(),
        seen: [0; 5],
    };
    crate::accept::accept_until(
        &listener,
        &shutdown,
        "sync",
        |s, peer| accept_one(s, peer, &config, &counters, &hashes),
        || {
            counters.accept_failed.fetch_add(1, Ordering::Relaxed);
        },
        || summary.maybe_log(&counters),
    )
}

/// Starts a thread for a new connection, or refuses it at once when the
/// agent is full or no thread can be started; the accept loop goes on.
fn accept_one(
    s: TcpStream,
    peer: SocketAddr,
    config: &Arc<AgentConfig>,
    c: &Arc<AgentStats>,
    hashes: &Arc<HashCache>,
) {
    let max = config.limits.max_connections;
    let open = c.open.fetch_add(1, Ordering::AcqRel) + 1;
    let slot = Slot(c.clone());
    if open > max {
        c.refused(Refused::Busy);
        tracing::debug!(%peer, max, "connection refused: max_connections open");
        // One small frame into the new socket's empty send buffer: never
        // blocks the accept loop. The client shows it as the reason.
        let _ = s.set_nonblocking(true);
        let busy = Msg::Error {
            message: format!("busy: the agent has its {max} connections open (max_connections)"),
        };
        let _ = (&s).write_all(&proto::encode(&busy));
        return;
    }
    let (cfg, counters, hashes) = (config.clone(), c.clone(), hashes.clone());
    let spawned = std::thread::Builder::new()
        .name("ferry-agent-conn".into())
        .spawn(move || {
            let _slot = slot;
            connection(s, peer, &cfg, &counters, hashes);
        });
    // On failure the closure is dropped unrun: the socket closes and the
    // slot is given back.
    if let Err(e) = spawned {
        c.refused(Refused::NoThread);
        tracing::debug!(%peer, error = %e, "no thread for a connection: refused it");
    }
}

/// One connection: the handshake, then the session. Handshake failures are
/// strangers' doing: counted and logged at debug only.
fn connection(
    s: TcpStream,
    peer: SocketAddr,
    cfg: &AgentConfig,
    c: &Arc<AgentStats>,
    hashes: Arc<HashCache>,
) {
    let opened = match handshake(&s, cfg, c) {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            c.handshake_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, error = %e, "sync handshake failed");
            return;
        }
    };
    match session(s, cfg, c, opened, hashes) {
        Ok(()) => c.session_closed(Closed::Client),
        Err(SyncError::Net { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            c.session_closed(Closed::Idle);
            tracing::info!(%peer, idle = ?cfg.limits.idle_timeout, "sync session closed: no traffic");
        }
        Err(e) => {
            c.session_closed(Closed::Error);
            tracing::warn!(%peer, error = %e, "sync session ended with an error")
        }
    }
}
