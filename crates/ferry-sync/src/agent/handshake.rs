//! Before the key is proven: Hello, Auth, AuthOk, Open, in small frames
//! and within one deadline.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::config::{AgentConfig, Volume};
use super::stats::{AgentStats, Refused};
use crate::error::{Result, SyncError};
use crate::proto::{self, Msg};

/// A socket whose reads all end by one deadline (the handshake's: a peer
/// sending a byte at a time cannot stretch it), or without one, each within
/// the socket's own read timeout.
pub(super) struct Timed {
    s: TcpStream,
    pub(super) until: Option<Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(until) = self.until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake deadline passed",
                ));
            }
            self.s.set_read_timeout(Some(left))?;
        }
        self.s.read(buf)
    }
}

/// A connection that proved the key and opened a volume.
pub(super) struct Opened {
    /// The handshake's reader: its buffer may hold bytes already sent.
    pub(super) r: BufReader<Timed>,
    pub(super) volume: String,
    pub(super) vol: Volume,
    pub(super) write: bool,
}

/// Hello, Auth, AuthOk, Open, all within [`Limits::handshake_timeout`] and
/// in frames of at most [`proto::MAX_HANDSHAKE_FRAME`] bytes. `Ok(None)`:
/// the volume was refused (and the client told why).
pub(super) fn handshake(
    s: &TcpStream,
    cfg: &AgentConfig,
    stats: &AgentStats,
) -> Result<Option<Opened>> {
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let net = |source| SyncError::Net {
        peer: peer.clone(),
        source,
    };
    s.set_nodelay(true).map_err(net)?;
    s.set_nonblocking(false).map_err(net)?;
    let limit = cfg.limits.handshake_timeout;
    s.set_write_timeout(Some(limit)).map_err(net)?;
    // Small buffers: nothing larger than a handshake frame is read (or
    // reserved) before the peer proved it knows the key.
    let mut r = BufReader::with_capacity(
        proto::MAX_HANDSHAKE_FRAME,
        Timed {
            s: s.try_clone().map_err(net)?,
            until: Some(Instant::now() + limit),
        },
    );
    let send = |m: &Msg| -> Result<()> { (&*s).write_all(&proto::encode(m)).map_err(net) };
    let recv = |r: &mut BufReader<Timed>| -> Result<Option<Msg>> {
        match proto::read_msg_max(r, proto::MAX_HANDSHAKE_FRAME).map_err(net)? {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(SyncError::Protocol(format!("refused frame: {e}"))),
        }
    };

    let nonce = random32()?;
    send(&Msg::Hello { nonce })?;
    let client_nonce = match recv(&mut r) {
        Ok(Some(Msg::Auth { nonce: cn, mac })) => {
            let want = proto::auth_mac(&cfg.key, "client", &nonce, &cn);
            if !proto::mac_eq(&mac, &want) {
                let _ = send(&Msg::Error {
                    message: "authentication failed: wrong key".into(),
                });
                return Err(SyncError::Auth(format!("{peer}: wrong key")));
            }
            cn
        }
        Ok(_) | Err(SyncError::Protocol(_)) => {
            let _ = send(&Msg::Error {
                message: "authentication required".into(),
            });
            return Err(SyncError::Auth(format!("{peer}: no valid Auth message")));
        }
        Err(e) => return Err(e),
    };
    send(&Msg::AuthOk {
        mac: proto::auth_mac(&cfg.key, "server", &client_nonce, &nonce),
    })?;
    let (volume, write) = match recv(&mut r)? {
        Some(Msg::Open { volume, write }) => (volume, write),
        _ => return Err(SyncError::Protocol(format!("{peer}: expected Open"))),
    };
    let Some(vol) = cfg.volumes.get(&volume) else {
        stats.refused(Refused::UnknownVolume);
        send(&Msg::Error {
            message: format!("unknown volume {volume:?}"),
        })?;
        return Ok(None);
    };
    if write && vol.read_only {
        stats.refused(Refused::ReadOnly);
        send(&Msg::Error {
            message: format!("volume {volume:?} is read-only"),
        })?;
        return Ok(None);
    }
    send(&Msg::Ok)?;
    Ok(Some(Opened {
        r,
        vol: vol.clone(),
        volume,
        write,
    }))
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| SyncError::Auth(format!("no randomness: {e}")))?;
    Ok(b)
}
