//! The wire protocol between `ferry sync` and `ferry agent`.
//!
//! Every message is one frame: a 4-byte big-endian length (of what follows), a
//! version byte ([`VERSION`]), a type byte, then the fields in a fixed order
//! (integers big-endian, byte strings as a 4-byte length and the bytes).
//!
//! The decoder is strict, because it faces the network: a frame longer than
//! [`MAX_FRAME`] is refused before it is read, every length is checked against
//! what is left, every path goes through [`RelPath::new`] (no `..`, no absolute
//! path, no NUL) and every name through [`RelPath::name`] (no `/`), enums
//! accept only known codes, and trailing bytes are an error. It never panics
//! (property-tested on arbitrary bytes).
//!
//! A session: the agent sends `Hello` (a random challenge), the client answers
//! `Auth` (its own challenge and a keyed BLAKE3 MAC over both), the agent
//! answers `AuthOk` with its own MAC (so the client knows the agent has the key
//! too), then the client sends `Open` for a volume. After that the client sends
//! requests; receiver operations (`Op`) are pipelined without answers, and a
//! `Flush` returns the first failure, if any.

use std::io::{Read, Write};

use crate::delta::{Chunk, Signature, STRONG_LEN};
use crate::endpoint::{Basis, Op};
use crate::error::{Result, SyncError};
use crate::manifest::{Entry, Kind, Meta, Mtime};
use crate::merkle::{Child, Digest};
use crate::path::RelPath;

/// Protocol version carried by every frame. Only ever grows.
pub const VERSION: u8 = 1;
pub use crate::limits::{
    MAX_BLOCK_SIZE, MAX_DATA, MAX_DELTA_BLOCK, MAX_FRAME, MAX_HANDSHAKE_FRAME, MIN_BLOCK_SIZE,
};
/// Prefix of an agent's error for a source file that vanished since the scan
/// (the client skips such a file instead of failing the pass).
pub const VANISHED: &str = "vanished: ";
/// Most children listed in one `Children` frame... and hashes in one part.
const MAX_LIST: usize = 1 << 20;

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello {
        nonce: [u8; 32],
    },
    Auth {
        nonce: [u8; 32],
        mac: [u8; 32],
    },
    AuthOk {
        mac: [u8; 32],
    },
    Open {
        volume: String,
        write: bool,
    },
    Ok,
    Error {
        message: String,
    },
    ScanReq {
        checksum: bool,
    },
    Entry(Entry),
    Temp(RelPath),
    ScanEnd {
        skipped: u64,
        root: Option<Meta>,
    },
    MerkleRootReq,
    MerkleRoot {
        root: Digest,
        count: u64,
    },
    ChildrenReq {
        dir: Option<RelPath>,
    },
    Children(Vec<Child>),
    BlockHashesReq {
        block_size: u32,
    },
    HashesPart(Vec<Digest>),
    HashesEnd {
        size: u64,
    },
    ReadReq {
        path: RelPath,
        sig: Option<Signature>,
    },
    ReadSmallReq {
        path: RelPath,
    },
    ReadBlockReq {
        index: u64,
        block_size: u32,
    },
    Chunk(Chunk),
    ReadEnd,
    FileData(Vec<u8>),
    SigReq {
        path: RelPath,
        basis: Basis,
        block_size: u32,
    },
    Sig(Option<Signature>),
    Op(Op),
    Flush,
    BlockPrepare {
        size: u64,
        block_size: u32,
    },
    BlockFinish {
        size: u64,
        block_size: u32,
    },
    /// `--watch`: take the changes recorded since the last request (the first
    /// one starts the watch). Answer: `ChangedPart`s, then `ChangesEnd`.
    ChangesReq,
    ChangedPart(Vec<RelPath>),
    /// `full`: walk the whole tree, for this reason (the parts are empty).
    ChangesEnd {
        full: Option<String>,
    },
    /// The next `ChangesReq` must answer a full walk, for this reason.
    WatchFull {
        reason: String,
    },
    /// Paths for the next `ScanPathsReq` (no answer; several parts allowed).
    ScanPathsPart(Vec<RelPath>),
    /// Scan the paths sent in `ScanPathsPart`s (see `manifest::scan_paths`);
    /// answered like `ScanReq`.
    ScanPathsReq {
        checksum: bool,
    },
}

mod t {
    pub const HELLO: u8 = 1;
    pub const AUTH: u8 = 2;
    pub const AUTH_OK: u8 = 3;
    pub const OPEN: u8 = 4;
    pub const OK: u8 = 5;
    pub const ERROR: u8 = 6;
    pub const SCAN_REQ: u8 = 10;
    pub const ENTRY: u8 = 11;
    pub const TEMP: u8 = 12;
    pub const SCAN_END: u8 = 13;
    pub const MERKLE_ROOT_REQ: u8 = 14;
    pub const MERKLE_ROOT: u8 = 15;
    pub const CHILDREN_REQ: u8 = 16;
    pub const CHILDREN: u8 = 17;
    pub const BLOCK_HASHES_REQ: u8 = 18;
    pub const HASHES_PART: u8 = 19;
    pub const HASHES_END: u8 = 20;
    pub const READ_REQ: u8 = 21;
    pub const READ_SMALL_REQ: u8 = 22;
    pub const READ_BLOCK_REQ: u8 = 23;
    pub const CHUNK_DATA: u8 = 24;
    pub const CHUNK_ZERO: u8 = 25;
    pub const CHUNK_COPY: u8 = 26;
    pub const READ_END: u8 = 27;
    pub const FILE_DATA: u8 = 28;
    pub const SIG_REQ: u8 = 30;
    pub const SIG: u8 = 31;
    pub const OP_MKDIR: u8 = 32;
    pub const OP_SYMLINK: u8 = 33;
    pub const OP_HARDLINK: u8 = 34;
    pub const OP_SET_META: u8 = 35;
    pub const OP_DELETE: u8 = 36;
    pub const OP_PUT_FILE: u8 = 37;
    pub const OP_BEGIN: u8 = 38;
    pub const OP_COMMIT: u8 = 39;
    pub const OP_BLOCK: u8 = 40;
    pub const OP_ROOT_META: u8 = 41;
    pub const FLUSH: u8 = 42;
    pub const BLOCK_PREPARE: u8 = 43;
    pub const BLOCK_FINISH: u8 = 44;
    pub const CHANGES_REQ: u8 = 45;
    pub const CHANGED_PART: u8 = 46;
    pub const CHANGES_END: u8 = 47;
    pub const WATCH_FULL: u8 = 48;
    pub const SCAN_PATHS_PART: u8 = 49;
    pub const SCAN_PATHS_REQ: u8 = 50;
    /// A run of whole blocks (`Op::Block`). A new code rather than a new
    /// meaning of `OP_BLOCK`: an agent that only knows single blocks refuses
    /// the frame instead of recording one hash for the whole run.
    pub const OP_BLOCK_RUN: u8 = 51;
}

/// Largest total of path bytes put in one `ChangedPart` / `ScanPathsPart`.
pub const PATHS_PART_BYTES: usize = 4 * 1024 * 1024;

/// Splits `paths` into frame-sized parts.
pub fn path_parts<'a>(paths: impl IntoIterator<Item = &'a RelPath>) -> Vec<Vec<RelPath>> {
    let mut parts = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for p in paths {
        if bytes + p.as_bytes().len() + 4 > PATHS_PART_BYTES && !cur.is_empty() {
            parts.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += p.as_bytes().len() + 4;
        cur.push(p.clone());
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

fn bad(what: impl Into<String>) -> SyncError {
    SyncError::Protocol(what.into())
}

// ---------------------------------------------------------------- encoding

/// A frame being encoded: `0` holds everything up to a payload, `1` the
/// payload (file data at the end of a frame), kept apart so it is written
/// from where it is instead of copied in (see [`write_msg`]).
struct W<'a>(Vec<u8>, &'a [u8]);

impl<'a> W<'a> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(v as u8);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.raw(v);
    }
    /// Like `bytes`, for the last field of a frame.
    fn payload(&mut self, v: &'a [u8]) {
        self.u32(v.len() as u32);
        self.1 = v;
    }
    fn path(&mut self, p: &RelPath) {
        self.bytes(p.as_bytes());
    }
    fn paths(&mut self, ps: &[RelPath]) {
        self.u32(ps.len() as u32);
        for p in ps {
            self.path(p);
        }
    }
    fn meta(&mut self, m: &Meta) {
        self.u32(m.mode);
        self.u32(m.uid);
        self.u32(m.gid);
        self.i64(m.mtime.secs);
        self.u32(m.mtime.nanos);
    }
    fn sig(&mut self, s: &Signature) {
        self.u32(s.block_size);
        self.u64(s.len);
        self.u32(s.weak.len() as u32);
        for (w, st) in s.weak.iter().zip(&s.strong) {
            self.u32(*w);
            self.raw(st);
        }
    }
}

fn basis_code(b: Basis) -> u8 {
    match b {
        Basis::None => 0,
        Basis::Target => 1,
        Basis::Partial => 2,
    }
}

/// Encodes a message as a whole frame (length prefix included).
pub fn encode(m: &Msg) -> Vec<u8> {
    let (mut head, payload) = encode_parts(m);
    head.extend_from_slice(payload);
    head
}

/// A frame as its head and its trailing payload (empty for most messages):
/// the two written one after the other are the frame.
fn encode_parts(m: &Msg) -> (Vec<u8>, &[u8]) {
    let mut w = W(vec![0, 0, 0, 0, VERSION], &[]);
    match m {
        Msg::Hello { nonce } => {
            w.u8(t::HELLO);
            w.raw(nonce);
        }
        Msg::Auth { nonce, mac } => {
            w.u8(t::AUTH);
            w.raw(nonce);
            w.raw(mac);
        }
        Msg::AuthOk { mac } => {
            w.u8(t::AUTH_OK);
            w.raw(mac);
        }
        Msg::Open { volume, write } => {
            w.u8(t::OPEN);
            w.bytes(volume.as_bytes());
            w.bool(*write);
        }
        Msg::Ok => w.u8(t::OK),
        Msg::Error { message } => {
            w.u8(t::ERROR);
            w.bytes(message.as_bytes());
        }
        Msg::ScanReq { checksum } => {
            w.u8(t::SCAN_REQ);
            w.bool(*checksum);
        }
        Msg::Entry(e) => {
            w.u8(t::ENTRY);
            w.path(&e.path);
            w.u8(e.kind.code());
            w.meta(&e.meta);
            w.u64(e.size);
            match &e.target {
                Some(t) => {
                    w.bool(true);
                    w.bytes(t);
                }
                None => w.bool(false),
            }
            match &e.hash {
                Some(h) => {
                    w.bool(true);
                    w.raw(h);
                }
                None => w.bool(false),
            }
            w.u64(e.dev);
            w.u64(e.ino);
            w.u32(e.nlink);
        }
        Msg::Temp(p) => {
            w.u8(t::TEMP);
            w.path(p);
        }
        Msg::ScanEnd { skipped, root } => {
            w.u8(t::SCAN_END);
            w.u64(*skipped);
            match root {
                Some(m) => {
                    w.bool(true);
                    w.meta(m);
                }
                None => w.bool(false),
            }
        }
        Msg::MerkleRootReq => w.u8(t::MERKLE_ROOT_REQ),
        Msg::MerkleRoot { root, count } => {
            w.u8(t::MERKLE_ROOT);
            w.raw(root);
            w.u64(*count);
        }
        Msg::ChildrenReq { dir } => {
            w.u8(t::CHILDREN_REQ);
            match dir {
                Some(d) => {
                    w.bool(true);
                    w.path(d);
                }
                None => w.bool(false),
            }
        }
        Msg::Children(list) => {
            w.u8(t::CHILDREN);
            w.u32(list.len() as u32);
            for c in list {
                w.bytes(&c.name);
                w.u8(c.kind.code());
                w.raw(&c.own);
                w.raw(&c.hash);
            }
        }
        Msg::BlockHashesReq { block_size } => {
            w.u8(t::BLOCK_HASHES_REQ);
            w.u32(*block_size);
        }
        Msg::HashesPart(h) => {
            w.u8(t::HASHES_PART);
            w.u32(h.len() as u32);
            for d in h {
                w.raw(d);
            }
        }
        Msg::HashesEnd { size } => {
            w.u8(t::HASHES_END);
            w.u64(*size);
        }
        Msg::ReadReq { path, sig } => {
            w.u8(t::READ_REQ);
            w.path(path);
            match sig {
                Some(s) => {
                    w.bool(true);
                    w.sig(s);
                }
                None => w.bool(false),
            }
        }
        Msg::ReadSmallReq { path } => {
            w.u8(t::READ_SMALL_REQ);
            w.path(path);
        }
        Msg::ReadBlockReq { index, block_size } => {
            w.u8(t::READ_BLOCK_REQ);
            w.u64(*index);
            w.u32(*block_size);
        }
        Msg::Chunk(c) | Msg::Op(Op::Chunk(c)) => match c {
            Chunk::Data(d) => {
                w.u8(t::CHUNK_DATA);
                w.payload(d);
            }
            Chunk::Zero(n) => {
                w.u8(t::CHUNK_ZERO);
                w.u64(*n);
            }
            Chunk::Copy { offset, len } => {
                w.u8(t::CHUNK_COPY);
                w.u64(*offset);
                w.u64(*len);
            }
        },
        Msg::ReadEnd => w.u8(t::READ_END),
        Msg::FileData(d) => {
            w.u8(t::FILE_DATA);
            w.payload(d);
        }
        Msg::SigReq {
            path,
            basis,
            block_size,
        } => {
            w.u8(t::SIG_REQ);
            w.path(path);
            w.u8(basis_code(*basis));
            w.u32(*block_size);
        }
        Msg::Sig(s) => {
            w.u8(t::SIG);
            match s {
                Some(s) => {
                    w.bool(true);
                    w.sig(s);
                }
                None => w.bool(false),
            }
        }
        Msg::Op(op) => match op {
            Op::Mkdir { path } => {
                w.u8(t::OP_MKDIR);
                w.path(path);
            }
            Op::Symlink { path, target, meta } => {
                w.u8(t::OP_SYMLINK);
                w.path(path);
                w.bytes(target);
                w.meta(meta);
            }
            Op::Hardlink { path, to } => {
                w.u8(t::OP_HARDLINK);
                w.path(path);
                w.path(to);
            }
            Op::SetMeta { path, kind, meta } => {
                w.u8(t::OP_SET_META);
                w.path(path);
                w.u8(kind.code());
                w.meta(meta);
            }
            Op::Delete { path } => {
                w.u8(t::OP_DELETE);
                w.path(path);
            }
            Op::PutFile { path, meta, data } => {
                w.u8(t::OP_PUT_FILE);
                w.path(path);
                w.meta(meta);
                w.payload(data);
            }
            Op::Begin { path, meta, basis } => {
                w.u8(t::OP_BEGIN);
                w.path(path);
                w.meta(meta);
                w.u8(basis_code(*basis));
            }
            // Encoded by the `Msg::Chunk` arm above (same frames); never here.
            Op::Chunk(_) => {}
            Op::Commit => w.u8(t::OP_COMMIT),
            Op::RootMeta { meta } => {
                w.u8(t::OP_ROOT_META);
                w.meta(meta);
            }
            Op::Block { offset, data } => {
                w.u8(t::OP_BLOCK_RUN);
                w.u64(*offset);
                w.payload(data);
            }
        },
        Msg::Flush => w.u8(t::FLUSH),
        Msg::BlockPrepare { size, block_size } => {
            w.u8(t::BLOCK_PREPARE);
            w.u64(*size);
            w.u32(*block_size);
        }
        Msg::BlockFinish { size, block_size } => {
            w.u8(t::BLOCK_FINISH);
            w.u64(*size);
            w.u32(*block_size);
        }
        Msg::ChangesReq => w.u8(t::CHANGES_REQ),
        Msg::ChangedPart(paths) => {
            w.u8(t::CHANGED_PART);
            w.paths(paths);
        }
        Msg::ChangesEnd { full } => {
            w.u8(t::CHANGES_END);
            match full {
                Some(r) => {
                    w.bool(true);
                    w.bytes(r.as_bytes());
                }
                None => w.bool(false),
            }
        }
        Msg::WatchFull { reason } => {
            w.u8(t::WATCH_FULL);
            w.bytes(reason.as_bytes());
        }
        Msg::ScanPathsPart(paths) => {
            w.u8(t::SCAN_PATHS_PART);
            w.paths(paths);
        }
        Msg::ScanPathsReq { checksum } => {
            w.u8(t::SCAN_PATHS_REQ);
            w.bool(*checksum);
        }
    }
    let len = (w.0.len() - 4 + w.1.len()) as u32;
    w.0[..4].copy_from_slice(&len.to_be_bytes());
    (w.0, w.1)
}

// ---------------------------------------------------------------- decoding

/// A frame being decoded; `1`: its payload when read apart (see
/// [`read_msg`]).
struct R<'a>(&'a [u8], Option<Vec<u8>>);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("frame ends early"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(bad(format!("bad boolean {v}"))),
        }
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    fn bytes(&mut self, max: usize) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(bad(format!(
                "field of {n} bytes exceeds the limit of {max}"
            )));
        }
        self.take(n)
    }
    fn path(&mut self) -> Result<RelPath> {
        RelPath::new(self.bytes(crate::path::MAX_PATH_LEN)?)
    }
    fn paths(&mut self) -> Result<Vec<RelPath>> {
        let n = self.u32()? as usize;
        // Each path takes at least 5 bytes (length and one byte).
        if n > MAX_LIST || n > self.0.len() / 5 {
            return Err(bad("path count exceeds the frame"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.path()?);
        }
        Ok(v)
    }
    fn kind(&mut self) -> Result<Kind> {
        let c = self.u8()?;
        Kind::from_code(c).ok_or_else(|| bad(format!("unknown entry type {c}")))
    }
    fn basis(&mut self) -> Result<Basis> {
        match self.u8()? {
            0 => Ok(Basis::None),
            1 => Ok(Basis::Target),
            2 => Ok(Basis::Partial),
            v => Err(bad(format!("unknown basis {v}"))),
        }
    }
    fn meta(&mut self) -> Result<Meta> {
        let mode = self.u32()?;
        if mode & !0o7777 != 0 {
            return Err(bad(format!("mode {mode:o} has bits beyond 07777")));
        }
        let uid = self.u32()?;
        let gid = self.u32()?;
        let secs = self.i64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(bad(format!("nanoseconds {nanos} out of range")));
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime: Mtime { secs, nanos },
        })
    }
    fn sig(&mut self) -> Result<Signature> {
        let block_size = self.u32()?;
        let len = self.u64()?;
        let n = self.u32()? as usize;
        // Each block takes 4 + STRONG_LEN bytes: the count cannot exceed what
        // is left, so no huge allocation from a small frame.
        if n > self.0.len() / (4 + STRONG_LEN) {
            return Err(bad("signature block count exceeds the frame"));
        }
        if block_size == 0 && n > 0 {
            return Err(bad("signature with zero block size"));
        }
        delta_block(block_size)?;
        let mut s = Signature {
            block_size,
            len,
            weak: Vec::with_capacity(n),
            strong: Vec::with_capacity(n),
        };
        for _ in 0..n {
            s.weak.push(self.u32()?);
            s.strong.push(self.arr()?);
        }
        Ok(s)
    }
    /// A payload field (file data, always its frame's last field): from the
    /// frame, or the buffer it was read into apart.
    fn payload(&mut self, max: usize) -> Result<Vec<u8>> {
        let Some(v) = self.1.take() else {
            return Ok(self.bytes(max)?.to_vec());
        };
        let n = self.u32()? as usize;
        if n > max {
            return Err(bad(format!(
                "field of {n} bytes exceeds the limit of {max}"
            )));
        }
        if n != v.len() || !self.0.is_empty() {
            return Err(bad("payload does not end its frame"));
        }
        Ok(v)
    }
    /// A block mode block size (see [`MIN_BLOCK_SIZE`]).
    fn block_size(&mut self) -> Result<u32> {
        let bs = self.u32()?;
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
            return Err(bad(format!(
                "block size {bs} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
            )));
        }
        Ok(bs)
    }
    fn end(&self) -> Result<()> {
        if self.1.is_some() {
            Err(bad("payload in a message that has none"))
        } else if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} trailing bytes in frame", self.0.len())))
        }
    }
}

/// Refuses a delta block size over [`MAX_DELTA_BLOCK`].
fn delta_block(bs: u32) -> Result<u32> {
    if bs > MAX_DELTA_BLOCK {
        return Err(bad(format!(
            "delta block size {bs} exceeds the limit of {MAX_DELTA_BLOCK}"
        )));
    }
    Ok(bs)
}

/// Decodes one frame body (what follows the length prefix).
pub fn decode(body: &[u8]) -> Result<Msg> {
    decode_parts(body, None)
}

/// Decodes a frame read as its head and, apart, its payload.
fn decode_parts(head: &[u8], payload: Option<Vec<u8>>) -> Result<Msg> {
    let mut r = R(head, payload);
    let v = r.u8()?;
    if v != VERSION {
        return Err(bad(format!("unsupported protocol version {v}")));
    }
    let ty = r.u8()?;
    let m = match ty {
        t::HELLO => Msg::Hello { nonce: r.arr()? },
        t::AUTH => Msg::Auth {
            nonce: r.arr()?,
            mac: r.arr()?,
        },
        t::AUTH_OK => Msg::AuthOk { mac: r.arr()? },
        t::OPEN => {
            let v = r.bytes(256)?;
            let volume = std::str::from_utf8(v)
                .map_err(|_| bad("volume name is not UTF-8"))?
                .to_string();
            Msg::Open {
                volume,
                write: r.bool()?,
            }
        }
        t::OK => Msg::Ok,
        t::ERROR => Msg::Error {
            message: String::from_utf8_lossy(r.bytes(64 * 1024)?).into_owned(),
        },
        t::SCAN_REQ => Msg::ScanReq {
            checksum: r.bool()?,
        },
        t::ENTRY => {
            let path = r.path()?;
            let kind = r.kind()?;
            let meta = r.meta()?;
            let size = r.u64()?;
            let target = if r.bool()? {
                Some(r.bytes(crate::path::MAX_PATH_LEN)?.to_vec())
            } else {
                None
            };
            if target.is_some() != (kind == Kind::Symlink) {
                return Err(bad("link text present iff the entry is a symlink"));
            }
            let hash = if r.bool()? { Some(r.arr()?) } else { None };
            Msg::Entry(Entry {
                path,
                kind,
                meta,
                size,
                target,
                hash,
                dev: r.u64()?,
                ino: r.u64()?,
                nlink: r.u32()?,
            })
        }
        t::TEMP => Msg::Temp(r.path()?),
        t::SCAN_END => Msg::ScanEnd {
            skipped: r.u64()?,
            root: if r.bool()? { Some(r.meta()?) } else { None },
        },
        t::MERKLE_ROOT_REQ => Msg::MerkleRootReq,
        t::MERKLE_ROOT => Msg::MerkleRoot {
            root: r.arr()?,
            count: r.u64()?,
        },
        t::CHILDREN_REQ => Msg::ChildrenReq {
            dir: if r.bool()? { Some(r.path()?) } else { None },
        },
        t::CHILDREN => {
            let n = r.u32()? as usize;
            if n > MAX_LIST || n > r.0.len() / 69 {
                return Err(bad("children count exceeds the frame"));
            }
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.bytes(crate::path::MAX_NAME_LEN)?;
                RelPath::name(name)?;
                list.push(Child {
                    name: name.to_vec(),
                    kind: r.kind()?,
                    own: r.arr()?,
                    hash: r.arr()?,
                });
            }
            Msg::Children(list)
        }
        t::BLOCK_HASHES_REQ => Msg::BlockHashesReq {
            block_size: r.block_size()?,
        },
        t::HASHES_PART => {
            let n = r.u32()? as usize;
            if n > MAX_LIST || n > r.0.len() / 32 {
                return Err(bad("hash count exceeds the frame"));
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(r.arr()?);
            }
            Msg::HashesPart(v)
        }
        t::HASHES_END => Msg::HashesEnd { size: r.u64()? },
        t::READ_REQ => Msg::ReadReq {
            path: r.path()?,
            sig: if r.bool()? { Some(r.sig()?) } else { None },
        },
        t::READ_SMALL_REQ => Msg::ReadSmallReq { path: r.path()? },
        t::READ_BLOCK_REQ => Msg::ReadBlockReq {
            index: r.u64()?,
            block_size: r.block_size()?,
        },
        t::CHUNK_DATA => Msg::Chunk(Chunk::Data(r.payload(MAX_DATA)?)),
        t::CHUNK_ZERO => Msg::Chunk(Chunk::Zero(r.u64()?)),
        t::CHUNK_COPY => Msg::Chunk(Chunk::Copy {
            offset: r.u64()?,
            len: r.u64()?,
        }),
        t::READ_END => Msg::ReadEnd,
        t::FILE_DATA => Msg::FileData(r.payload(MAX_DATA)?),
        t::SIG_REQ => Msg::SigReq {
            path: r.path()?,
            basis: r.basis()?,
            block_size: delta_block(r.u32()?)?,
        },
        t::SIG => Msg::Sig(if r.bool()? { Some(r.sig()?) } else { None }),
        t::OP_MKDIR => Msg::Op(Op::Mkdir { path: r.path()? }),
        t::OP_SYMLINK => {
            let path = r.path()?;
            let target = r.bytes(crate::path::MAX_PATH_LEN)?;
            if target.is_empty() || target.contains(&0) {
                return Err(bad("symlink text empty or with NUL"));
            }
            Msg::Op(Op::Symlink {
                path,
                target: target.to_vec(),
                meta: r.meta()?,
            })
        }
        t::OP_HARDLINK => Msg::Op(Op::Hardlink {
            path: r.path()?,
            to: r.path()?,
        }),
        t::OP_SET_META => Msg::Op(Op::SetMeta {
            path: r.path()?,
            kind: r.kind()?,
            meta: r.meta()?,
        }),
        t::OP_DELETE => Msg::Op(Op::Delete { path: r.path()? }),
        t::OP_PUT_FILE => Msg::Op(Op::PutFile {
            path: r.path()?,
            meta: r.meta()?,
            data: r.payload(MAX_DATA)?,
        }),
        t::OP_BEGIN => Msg::Op(Op::Begin {
            path: r.path()?,
            meta: r.meta()?,
            basis: r.basis()?,
        }),
        t::OP_COMMIT => Msg::Op(Op::Commit),
        t::OP_ROOT_META => Msg::Op(Op::RootMeta { meta: r.meta()? }),
        t::OP_BLOCK | t::OP_BLOCK_RUN => Msg::Op(Op::Block {
            offset: r.u64()?,
            data: r.payload(MAX_DATA)?,
        }),
        t::FLUSH => Msg::Flush,
        t::BLOCK_PREPARE => Msg::BlockPrepare {
            size: r.u64()?,
            block_size: r.block_size()?,
        },
        t::BLOCK_FINISH => Msg::BlockFinish {
            size: r.u64()?,
            block_size: r.block_size()?,
        },
        t::CHANGES_REQ => Msg::ChangesReq,
        t::CHANGED_PART => Msg::ChangedPart(r.paths()?),
        t::CHANGES_END => Msg::ChangesEnd {
            full: if r.bool()? {
                Some(String::from_utf8_lossy(r.bytes(64 * 1024)?).into_owned())
            } else {
                None
            },
        },
        t::WATCH_FULL => Msg::WatchFull {
            reason: String::from_utf8_lossy(r.bytes(64 * 1024)?).into_owned(),
        },
        t::SCAN_PATHS_PART => Msg::ScanPathsPart(r.paths()?),
        t::SCAN_PATHS_REQ => Msg::ScanPathsReq {
            checksum: r.bool()?,
        },
        other => return Err(bad(format!("unknown message type {other}"))),
    };
    r.end()?;
    Ok(m)
}

/// Reads one frame and decodes it. `Ok(None)` at a clean end of stream.
pub fn read_msg(r: &mut impl Read) -> std::io::Result<Option<Result<Msg>>> {
    read_msg_max(r, MAX_FRAME)
}

/// [`read_msg`] refusing frames longer than `max` (at most [`MAX_FRAME`])
/// before reading or reserving anything for them: the agent reads the
/// handshake with [`MAX_HANDSHAKE_FRAME`].
pub fn read_msg_max(r: &mut impl Read, max: usize) -> std::io::Result<Option<Result<Msg>>> {
    let max = max.min(MAX_FRAME);
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Ok(Some(Err(bad(format!(
            "frame of {n} bytes exceeds the limit of {max}"
        )))));
    }
    // The head, then a payload straight into its own buffer: file data is
    // copied once from the socket's buffer, not into a frame and out again.
    let mut head = Vec::with_capacity(64);
    if let Some(len) = read_head(r, n, &mut head)? {
        let mut data = Vec::with_capacity(len);
        read_into(r, len, &mut data)?;
        return Ok(Some(decode_parts(&head, Some(data))));
    }
    read_into(r, n - head.len(), &mut head)?;
    Ok(Some(decode(&head)))
}

/// Appends exactly `n` bytes from `r` to `v`, into spare capacity (zeroing a
/// buffer only to overwrite it was a tenth of the agent's reading thread).
fn read_into(r: &mut impl Read, n: usize, v: &mut Vec<u8>) -> std::io::Result<()> {
    v.reserve(n);
    let want = v.len() + n;
    r.take(n as u64).read_to_end(v)?;
    if v.len() < want {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads the head of an `n`-byte frame whose last field is a payload (file
/// data) into `head`, up to and including the payload's length, and returns
/// that length. Any other frame, or one whose lengths do not add up, returns
/// `None` with what was read so far in `head` (the decoder then sees the
/// whole frame and names what is wrong).
fn read_head(r: &mut impl Read, n: usize, head: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut more = |head: &mut Vec<u8>, k: usize| -> std::io::Result<bool> {
        if head.len() + k > n {
            return Ok(false);
        }
        read_into(r, k, head)?;
        Ok(true)
    };
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if !more(head, 2)? || head[0] != VERSION {
        return Ok(None);
    }
    let before_len = match head[1] {
        t::FILE_DATA | t::CHUNK_DATA => 0,
        t::OP_BLOCK | t::OP_BLOCK_RUN => 8,
        t::OP_PUT_FILE => {
            if !more(head, 4)? {
                return Ok(None);
            }
            let path = be32(&head[2..6]);
            if path > crate::path::MAX_PATH_LEN {
                return Ok(None);
            }
            path + 24
        }
        _ => return Ok(None),
    };
    if !more(head, before_len + 4)? {
        return Ok(None);
    }
    let len = be32(&head[head.len() - 4..]);
    Ok((head.len() + len == n).then_some(len))
}

/// Encodes and writes one message; file data goes to `w` from where it is
/// (one copy less per byte sent).
pub fn write_msg(w: &mut impl Write, m: &Msg) -> std::io::Result<()> {
    let (head, payload) = encode_parts(m);
    w.write_all(&head)?;
    w.write_all(payload)
}

/// The MAC a side proves knowledge of the key with. `role` separates the two
/// directions so one side's answer can never be replayed as the other's.
pub fn auth_mac(key: &[u8; 32], role: &str, a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"ferry-sync auth v1 ");
    h.update(role.as_bytes());
    h.update(a);
    h.update(b);
    *h.finalize().as_bytes()
}

/// Derives the 32-byte MAC key from the configured pre-shared key text.
pub fn derive_key(psk: &str) -> [u8; 32] {
    blake3::derive_key("ferry-sync 2025 pre-shared key v1", psk.as_bytes())
}

/// Reads a pre-shared key from `path` under ferry-secret's rule (readable
/// by its owner only, trimmed, not empty) and derives the MAC key; `what`
/// names the setting in errors.
pub fn read_key_file(what: &str, path: &std::path::Path) -> Result<[u8; 32]> {
    let psk = ferry_secret::read_file(what, path)?;
    Ok(derive_key(psk.expose()))
}

/// Constant-time equality of two MACs (fixed length: nothing to leak).
pub fn mac_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}
