//! Messages to frames.

use super::{t, Msg, VERSION};
use crate::delta::{Chunk, Signature};
use crate::endpoint::{Basis, Op};
use crate::manifest::{Entry, Meta};
use crate::merkle::Child;
use crate::path::RelPath;

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
pub(super) fn encode_parts(m: &Msg) -> (Vec<u8>, &[u8]) {
    let mut w = W(vec![0, 0, 0, 0, VERSION], &[]);
    // One arm per message: with `decode_parts`, this is the table of the
    // protocol (type code, then fields in order); the larger bodies are
    // `W` methods.
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
        Msg::Entry(e) => w.entry(e),
        Msg::Temp(p) => {
            w.u8(t::TEMP);
            w.path(p);
        }
        Msg::ScanEnd { skipped, root } => {
            w.u8(t::SCAN_END);
            w.u64(*skipped);
            w.opt(root.as_ref(), W::meta);
        }
        Msg::MerkleRootReq => w.u8(t::MERKLE_ROOT_REQ),
        Msg::MerkleRoot { root, count } => {
            w.u8(t::MERKLE_ROOT);
            w.raw(root);
            w.u64(*count);
        }
        Msg::ChildrenReq { dir } => {
            w.u8(t::CHILDREN_REQ);
            w.opt(dir.as_ref(), W::path);
        }
        Msg::Children(list) => w.children(list),
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
            w.opt(sig.as_ref(), W::sig);
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
        Msg::Chunk(c) | Msg::Op(Op::Chunk(c)) => w.chunk(c),
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
            w.opt(s.as_ref(), W::sig);
        }
        Msg::Op(op) => w.op(op),
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
            w.opt(full.as_ref(), |w, r| w.bytes(r.as_bytes()));
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
        Msg::SpaceReq => w.u8(t::SPACE_REQ),
        Msg::Space(s) => {
            w.u8(t::SPACE);
            w.u64(s.bytes_free);
            w.u64(s.bytes_total);
            w.u64(s.inodes_free);
            w.u64(s.inodes_total);
        }
    }
    let len = (w.0.len() - 4 + w.1.len()) as u32;
    w.0[..4].copy_from_slice(&len.to_be_bytes());
    (w.0, w.1)
}

/// The frames with more than a few fields.
impl<'a> W<'a> {
    /// A presence flag, then the value when there is one.
    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.bool(true);
                put(self, v);
            }
            None => self.bool(false),
        }
    }

    fn entry(&mut self, e: &Entry) {
        self.u8(t::ENTRY);
        self.path(&e.path);
        self.u8(e.kind.code());
        self.meta(&e.meta);
        self.u64(e.size);
        self.opt(e.target.as_ref(), |w, t| w.bytes(t));
        self.opt(e.hash.as_ref(), |w, h| w.raw(h));
        self.u64(e.dev);
        self.u64(e.ino);
        self.u32(e.nlink);
    }

    fn children(&mut self, list: &[Child]) {
        self.u8(t::CHILDREN);
        self.u32(list.len() as u32);
        for c in list {
            self.bytes(&c.name);
            self.u8(c.kind.code());
            self.raw(&c.own);
            self.raw(&c.hash);
        }
    }

    fn chunk(&mut self, c: &'a Chunk) {
        match c {
            Chunk::Data(d) => {
                self.u8(t::CHUNK_DATA);
                self.payload(d);
            }
            Chunk::Zero(n) => {
                self.u8(t::CHUNK_ZERO);
                self.u64(*n);
            }
            Chunk::Copy { offset, len } => {
                self.u8(t::CHUNK_COPY);
                self.u64(*offset);
                self.u64(*len);
            }
        }
    }

    /// A receiver op (chunks are `chunk`'s: the same frames as a read's).
    fn op(&mut self, op: &'a Op) {
        match op {
            Op::Mkdir { path } => {
                self.u8(t::OP_MKDIR);
                self.path(path);
            }
            Op::Symlink { path, target, meta } => {
                self.u8(t::OP_SYMLINK);
                self.path(path);
                self.bytes(target);
                self.meta(meta);
            }
            Op::Hardlink { path, to } => {
                self.u8(t::OP_HARDLINK);
                self.path(path);
                self.path(to);
            }
            Op::SetMeta { path, kind, meta } => {
                self.u8(t::OP_SET_META);
                self.path(path);
                self.u8(kind.code());
                self.meta(meta);
            }
            Op::Delete { path } => {
                self.u8(t::OP_DELETE);
                self.path(path);
            }
            Op::PutFile { path, meta, data } => {
                self.u8(t::OP_PUT_FILE);
                self.path(path);
                self.meta(meta);
                self.payload(data);
            }
            Op::Begin { path, meta, basis } => {
                self.u8(t::OP_BEGIN);
                self.path(path);
                self.meta(meta);
                self.u8(basis_code(*basis));
            }
            Op::Chunk(c) => self.chunk(c),
            Op::Commit => self.u8(t::OP_COMMIT),
            Op::RootMeta { meta } => {
                self.u8(t::OP_ROOT_META);
                self.meta(meta);
            }
            Op::Block { offset, data } => {
                self.u8(t::OP_BLOCK_RUN);
                self.u64(*offset);
                self.payload(data);
            }
        }
    }
}
