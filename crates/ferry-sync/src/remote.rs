//! The client side of a connection to a `ferry agent`: [`RemoteTree`] is a
//! [`Source`] and a [`Dest`] whose work happens on the agent's machine.
//!
//! One TCP connection per tree, shared by the driver's threads under a mutex.
//! Receiver ops are written without waiting for an answer (the agent applies
//! them in order and reports the first failure at the next flush), so a tree of
//! many small files costs no round trip per file.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::delta::{Chunk, Signature};
use crate::endpoint::{Basis, Dest, Op, Source, Tree};
use crate::error::{Result, SyncError};
use crate::manifest::{Manifest, ScanOptions};
use crate::merkle::{Child, Digest};
use crate::path::RelPath;
use crate::proto::{self, Msg, Space, VANISHED};
use crate::read_ahead::{self, WINDOW};
use crate::watch::Changes;

struct Counting<T> {
    inner: T,
    n: Arc<AtomicU64>,
}

impl<T: Read> Read for Counting<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

impl<T: Write> Write for Counting<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Conn {
    r: BufReader<Counting<TcpStream>>,
    w: BufWriter<Counting<TcpStream>>,
}

/// How long a client waits on an agent: the TCP connect, the handshake (a
/// hung or wrong peer is refused instead of hanging `ferry sync` or a
/// migration's pre-copy), and then any one read or write (as long as the
/// agent's own idle timeout, so a slow answer is never cut by the client first).
#[derive(Clone, Debug)]
pub struct Deadlines {
    pub connect: std::time::Duration,
    pub handshake: std::time::Duration,
    pub idle: std::time::Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            connect: std::time::Duration::from_secs(10),
            handshake: std::time::Duration::from_secs(30),
            idle: std::time::Duration::from_secs(3600),
        }
    }
}

/// A volume served by a remote agent.
pub struct RemoteTree {
    peer: String,
    conn: Mutex<Conn>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| SyncError::Auth(format!("no randomness: {e}")))?;
    Ok(b)
}

impl RemoteTree {
    /// Connects, authenticates with `key` (see [`proto::derive_key`]) and opens
    /// `volume`, for writing when `write`.
    pub fn connect(
        host: &str,
        port: u16,
        volume: &str,
        key: &[u8; 32],
        write: bool,
    ) -> Result<RemoteTree> {
        RemoteTree::connect_with(host, port, volume, key, write, &Deadlines::default())
    }

    /// [`RemoteTree::connect`] with other deadlines than the defaults.
    pub fn connect_with(
        host: &str,
        port: u16,
        volume: &str,
        key: &[u8; 32],
        write: bool,
        deadlines: &Deadlines,
    ) -> Result<RemoteTree> {
        let peer = format!("{host}:{port}");
        let net = |source| SyncError::Net {
            peer: peer.clone(),
            source,
        };
        // Every address the name resolves to, each within the connect deadline.
        let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(net)?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, deadlines.connect) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let s = stream.ok_or_else(|| net(last))?;
        s.set_nodelay(true).map_err(net)?;
        // The handshake is three small frames: an agent that does not
        // answer them in time is hung or is not an agent.
        s.set_read_timeout(Some(deadlines.handshake)).map_err(net)?;
        s.set_write_timeout(Some(deadlines.handshake))
            .map_err(net)?;
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let r = BufReader::with_capacity(
            256 * 1024,
            Counting {
                inner: s.try_clone().map_err(net)?,
                n: received.clone(),
            },
        );
        let w = BufWriter::with_capacity(
            256 * 1024,
            Counting {
                inner: s,
                n: sent.clone(),
            },
        );
        let t = RemoteTree {
            peer: peer.clone(),
            conn: Mutex::new(Conn { r, w }),
            sent,
            received,
        };
        t.handshake(volume, key, write)?;
        // After it, an answer may take minutes (a Merkle root of a large
        // volume): bounded by the agent's own idle timeout, not less.
        {
            let conn = t
                .conn
                .lock()
                .map_err(|_| SyncError::Protocol("connection lock poisoned".into()))?;
            let s = &conn.w.get_ref().inner;
            s.set_read_timeout(Some(deadlines.idle)).map_err(net)?;
            s.set_write_timeout(Some(deadlines.idle)).map_err(net)?;
        }
        Ok(t)
    }

    fn handshake(&self, volume: &str, key: &[u8; 32], write: bool) -> Result<()> {
        let mut c = self.lock();
        let server_nonce = match self.recv(&mut c)? {
            Msg::Hello { nonce } => nonce,
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected Hello, got {other:?}"
                )))
            }
        };
        let nonce = random32()?;
        let mac = proto::auth_mac(key, "client", &server_nonce, &nonce);
        self.send(&mut c, &Msg::Auth { nonce, mac })?;
        self.flush_w(&mut c)?;
        match self.recv(&mut c) {
            Ok(Msg::AuthOk { mac }) => {
                let want = proto::auth_mac(key, "server", &nonce, &server_nonce);
                if !proto::mac_eq(&mac, &want) {
                    return Err(SyncError::Auth(format!(
                        "{}: the agent does not know the key",
                        self.peer
                    )));
                }
            }
            Ok(other) => {
                return Err(SyncError::Protocol(format!(
                    "expected AuthOk, got {other:?}"
                )))
            }
            Err(SyncError::Remote(m)) => {
                return Err(SyncError::Auth(format!("{}: {m}", self.peer)))
            }
            Err(e) => return Err(e),
        }
        self.send(
            &mut c,
            &Msg::Open {
                volume: volume.to_string(),
                write,
            },
        )?;
        self.flush_w(&mut c)?;
        match self.recv(&mut c)? {
            Msg::Ok => Ok(()),
            other => Err(SyncError::Protocol(format!("expected Ok, got {other:?}"))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A thread that panicked mid-frame leaves the stream out of step; the
        // next read then fails with a protocol error, which is what we want.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn net(&self, source: std::io::Error) -> SyncError {
        SyncError::Net {
            peer: self.peer.clone(),
            source,
        }
    }

    fn send(&self, c: &mut Conn, m: &Msg) -> Result<()> {
        proto::write_msg(&mut c.w, m).map_err(|e| self.net(e))
    }

    fn flush_w(&self, c: &mut Conn) -> Result<()> {
        c.w.flush().map_err(|e| self.net(e))
    }

    /// Reads one message; an agent's `Error` becomes `SyncError::Remote`.
    fn recv(&self, c: &mut Conn) -> Result<Msg> {
        match proto::read_msg(&mut c.r).map_err(|e| self.net(e))? {
            None => Err(self.net(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the agent",
            ))),
            Some(Ok(Msg::Error { message })) => Err(SyncError::Remote(message)),
            Some(m) => m,
        }
    }

    /// Sends a request and hands each answer to `f` until it returns true.
    fn call(&self, req: &Msg, mut f: impl FnMut(Msg) -> Result<bool>) -> Result<()> {
        let mut c = self.lock();
        self.send(&mut c, req)?;
        self.flush_w(&mut c)?;
        loop {
            let m = self.recv(&mut c)?;
            if f(m)? {
                return Ok(());
            }
        }
    }

    fn unexpected(m: &Msg) -> SyncError {
        SyncError::Protocol(format!("unexpected answer {:?}", std::mem::discriminant(m)))
    }

    /// Sends a scan request and collects the manifest it streams back.
    fn scan_with(&self, req: &Msg) -> Result<Manifest> {
        let mut m = Manifest::default();
        self.call(req, |msg| match msg {
            Msg::Entry(e) => {
                m.entries.push(e);
                Ok(false)
            }
            Msg::Temp(p) => {
                m.temps.push(p);
                Ok(false)
            }
            Msg::ScanEnd { skipped, root } => {
                m.skipped = skipped;
                m.root = root;
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })?;
        // The engine relies on path order (parents first); do not trust the peer.
        if !m.entries.windows(2).all(|w| w[0].path < w[1].path) {
            m.entries.sort_by(|a, b| a.path.cmp(&b.path));
            m.entries.dedup_by(|a, b| a.path == b.path);
        }
        Ok(m)
    }

    /// Room on the file system of the volume (statvfs at the agent). An
    /// agent older than the query refuses the frame as an unknown type and
    /// hangs up: that comes back as [`SyncError::Unsupported`] saying the
    /// agent is too old, and this tree's connection is closed, so ask on a
    /// connection of its own (see [`query_space`]).
    pub fn space(&self) -> Result<Space> {
        let mut out = None;
        let asked = self.call(&Msg::SpaceReq, |m| match m {
            Msg::Space(s) => {
                out = Some(s);
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        });
        match asked {
            Err(SyncError::Remote(m)) if m.contains(&format!("unknown message type {}", proto::SPACE_REQ_TYPE)) => {
                Err(SyncError::Unsupported(format!(
                    "{}: agent too old for a free-space query (it refused the frame: {m}); upgrade `ferry agent` there",
                    self.peer
                )))
            }
            Err(e) => Err(e),
            Ok(()) => out.ok_or_else(|| SyncError::Protocol("no Space answer".into())),
        }
    }

    fn hashes(&self, req: &Msg) -> Result<(u64, Vec<Digest>)> {
        let mut out = Vec::new();
        let mut size = 0;
        self.call(req, |m| match m {
            Msg::HashesPart(h) => {
                out.extend(h);
                Ok(false)
            }
            Msg::HashesEnd { size: s } => {
                size = s;
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })?;
        Ok((size, out))
    }
}

/// Opens `volume` for reading on its own connection and asks its room
/// ([`RemoteTree::space`]): an older agent that hangs up on the query ends
/// only this connection.
pub fn query_space(
    host: &str,
    port: u16,
    volume: &str,
    key: &[u8; 32],
    deadlines: &Deadlines,
) -> Result<Space> {
    RemoteTree::connect_with(host, port, volume, key, false, deadlines)?.space()
}

impl Tree for RemoteTree {
    fn scan(&self, opts: &ScanOptions) -> Result<Manifest> {
        self.scan_with(&Msg::ScanReq {
            checksum: opts.checksum,
        })
    }

    fn scan_paths(
        &self,
        paths: &std::collections::BTreeSet<RelPath>,
        opts: &ScanOptions,
    ) -> Result<Manifest> {
        {
            // The parts need no answer; the request below flushes them.
            let mut c = self.lock();
            for part in proto::path_parts(paths) {
                self.send(&mut c, &Msg::ScanPathsPart(part))?;
            }
        }
        self.scan_with(&Msg::ScanPathsReq {
            checksum: opts.checksum,
        })
    }

    fn merkle_root(&self) -> Result<(Digest, u64)> {
        let mut out = None;
        self.call(&Msg::MerkleRootReq, |m| match m {
            Msg::MerkleRoot { root, count } => {
                out = Some((root, count));
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })?;
        out.ok_or_else(|| SyncError::Protocol("no Merkle root".into()))
    }

    fn merkle_children(&self, dir: Option<&RelPath>) -> Result<Vec<Child>> {
        let mut out = Vec::new();
        self.call(&Msg::ChildrenReq { dir: dir.cloned() }, |m| match m {
            Msg::Children(c) => {
                out = c;
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })?;
        Ok(out)
    }

    fn wire_bytes(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    fn block_hashes(&self, block_size: u32) -> Result<(u64, Vec<Digest>)> {
        self.hashes(&Msg::BlockHashesReq { block_size })
    }
}

/// The agent's "not found" comes back as text: made a `NotFound` read error
/// again, so a file that vanished since the scan is skipped, not fatal.
fn vanished_as_not_found(e: SyncError, path: &RelPath) -> SyncError {
    match e {
        SyncError::Remote(m) if m.starts_with(VANISHED) => SyncError::io(
            "read",
            path.as_path(),
            std::io::Error::new(std::io::ErrorKind::NotFound, m),
        ),
        e => e,
    }
}

impl Source for RemoteTree {
    fn read(
        &self,
        path: &RelPath,
        sig: Option<&Signature>,
        out: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        let mut failed = None;
        self.call(
            &Msg::ReadReq {
                path: path.clone(),
                sig: sig.cloned(),
            },
            |m| match m {
                Msg::Chunk(c) => {
                    // Keep reading after a local failure so the stream stays
                    // in step; report the failure at the end.
                    if failed.is_none() {
                        if let Err(e) = out(c) {
                            failed = Some(e);
                        }
                    }
                    Ok(false)
                }
                Msg::ReadEnd => Ok(true),
                m => Err(Self::unexpected(&m)),
            },
        )
        .map_err(|e| vanished_as_not_found(e, path))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn read_small(&self, path: &RelPath, _size: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.call(&Msg::ReadSmallReq { path: path.clone() }, |m| match m {
            Msg::FileData(d) => {
                out = d;
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })
        .map_err(|e| vanished_as_not_found(e, path))?;
        Ok(out)
    }

    /// A window of `ReadSmallReq`s outstanding ([`crate::read_ahead`]):
    /// a round trip per window, not per file.
    fn read_small_each(
        &self,
        files: &[(&RelPath, u64)],
        out: &(dyn Fn(usize, Result<Vec<u8>>) -> Result<()> + Sync),
    ) -> Result<()> {
        let mut c = self.lock();
        let socket = c.w.get_ref().inner.try_clone().map_err(|e| self.net(e))?;
        let hang_up = move || {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        };
        let Conn { r, w } = &mut *c;
        let mut each = |i: usize, read: Result<Vec<u8>>| {
            out(i, read.map_err(|e| vanished_as_not_found(e, files[i].0)))
        };
        read_ahead::read_small_files(&self.peer, r, w, files, WINDOW, &mut each, &hang_up)
    }

    fn read_block(&self, index: u64, block_size: u32) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.call(&Msg::ReadBlockReq { index, block_size }, |m| match m {
            Msg::FileData(d) => {
                out = d;
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })?;
        Ok(out)
    }

    fn changes(&self) -> Result<Changes> {
        // The watch runs in the agent's session, on the source's machine.
        let mut paths = std::collections::BTreeSet::new();
        let mut full = None;
        self.call(&Msg::ChangesReq, |m| match m {
            Msg::ChangedPart(p) => {
                paths.extend(p);
                Ok(false)
            }
            Msg::ChangesEnd { full: f } => {
                full = f;
                Ok(true)
            }
            m => Err(Self::unexpected(&m)),
        })?;
        Ok(match full {
            Some(reason) => Changes::Full {
                reason: format!("{}: {reason}", self.peer),
            },
            None => Changes::Paths(paths),
        })
    }

    fn watch_force_full(&self, reason: &str) -> Result<()> {
        self.call(
            &Msg::WatchFull {
                reason: reason.to_string(),
            },
            |m| match m {
                Msg::Ok => Ok(true),
                m => Err(Self::unexpected(&m)),
            },
        )
    }
}

impl Dest for RemoteTree {
    fn signature(
        &self,
        path: &RelPath,
        basis: Basis,
        block_size: u32,
    ) -> Result<Option<Signature>> {
        let mut out = None;
        self.call(
            &Msg::SigReq {
                path: path.clone(),
                basis,
                block_size,
            },
            |m| match m {
                Msg::Sig(s) => {
                    out = s;
                    Ok(true)
                }
                m => Err(Self::unexpected(&m)),
            },
        )?;
        Ok(out)
    }

    fn apply(&self, op: Op) -> Result<()> {
        let mut c = self.lock();
        self.send(&mut c, &Msg::Op(op))
    }

    fn flush(&self) -> Result<()> {
        self.call(&Msg::Flush, |m| match m {
            Msg::Ok => Ok(true),
            m => Err(Self::unexpected(&m)),
        })
    }

    fn block_prepare(&self, size: u64, block_size: u32) -> Result<Vec<Digest>> {
        Ok(self.hashes(&Msg::BlockPrepare { size, block_size })?.1)
    }

    fn block_finish(&self, size: u64, block_size: u32, _hashes: &[Digest]) -> Result<()> {
        // The agent records the hashes of the blocks it actually wrote; it does
        // not take the sender's word for what its disk holds.
        self.call(&Msg::BlockFinish { size, block_size }, |m| match m {
            Msg::Ok => Ok(true),
            m => Err(Self::unexpected(&m)),
        })
    }
}
