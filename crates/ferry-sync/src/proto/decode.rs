//! The strict decoder: frames to messages, every length and code checked.

use super::{bad, t, Msg, Space, MAX_LIST, VERSION};
use crate::delta::{Chunk, Signature, STRONG_LEN};
use crate::endpoint::{Basis, Op};
use crate::error::Result;
use crate::limits::{MAX_BLOCK_SIZE, MAX_DATA, MAX_DELTA_BLOCK, MIN_BLOCK_SIZE};
use crate::manifest::{Entry, Kind, Meta, Mtime};
use crate::merkle::Child;
use crate::path::RelPath;

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
pub(super) fn decode_parts(head: &[u8], payload: Option<Vec<u8>>) -> Result<Msg> {
    let mut r = R(head, payload);
    let v = r.u8()?;
    if v != VERSION {
        return Err(bad(format!("unsupported protocol version {v}")));
    }
    let ty = r.u8()?;
    // One arm per type code: with `encode_parts`, this is the table of the
    // protocol (fields in order, each with its bound); the larger bodies
    // are `R` methods.
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
        t::ERROR => Msg::Error { message: r.text()? },
        t::SCAN_REQ => Msg::ScanReq {
            checksum: r.bool()?,
        },
        t::ENTRY => Msg::Entry(r.entry()?),
        t::TEMP => Msg::Temp(r.path()?),
        t::SCAN_END => Msg::ScanEnd {
            skipped: r.u64()?,
            root: r.opt(R::meta)?,
        },
        t::MERKLE_ROOT_REQ => Msg::MerkleRootReq,
        t::MERKLE_ROOT => Msg::MerkleRoot {
            root: r.arr()?,
            count: r.u64()?,
        },
        t::CHILDREN_REQ => Msg::ChildrenReq {
            dir: r.opt(R::path)?,
        },
        t::CHILDREN => Msg::Children(r.children()?),
        t::BLOCK_HASHES_REQ => Msg::BlockHashesReq {
            block_size: r.block_size()?,
        },
        t::HASHES_PART => Msg::HashesPart(r.hashes()?),
        t::HASHES_END => Msg::HashesEnd { size: r.u64()? },
        t::READ_REQ => Msg::ReadReq {
            path: r.path()?,
            sig: r.opt(R::sig)?,
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
        t::SIG => Msg::Sig(r.opt(R::sig)?),
        t::OP_MKDIR
        | t::OP_SYMLINK
        | t::OP_HARDLINK
        | t::OP_SET_META
        | t::OP_DELETE
        | t::OP_PUT_FILE
        | t::OP_BEGIN
        | t::OP_COMMIT
        | t::OP_ROOT_META
        | t::OP_BLOCK
        | t::OP_BLOCK_RUN => Msg::Op(r.op(ty)?),
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
            full: r.opt(R::text)?,
        },
        t::WATCH_FULL => Msg::WatchFull { reason: r.text()? },
        t::SCAN_PATHS_PART => Msg::ScanPathsPart(r.paths()?),
        t::SCAN_PATHS_REQ => Msg::ScanPathsReq {
            checksum: r.bool()?,
        },
        t::SPACE_REQ => Msg::SpaceReq,
        t::SPACE => Msg::Space(r.space()?),
        other => return Err(bad(format!("unknown message type {other}"))),
    };
    r.end()?;
    Ok(m)
}

/// The messages with more than a few fields.
impl R<'_> {
    /// A presence flag, then the value when there is one.
    fn opt<T>(&mut self, get: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.bool()? {
            get(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// An error or reason text (lossy UTF-8, at most 64 KiB).
    fn text(&mut self) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes(64 * 1024)?).into_owned())
    }

    fn entry(&mut self) -> Result<Entry> {
        let path = self.path()?;
        let kind = self.kind()?;
        let meta = self.meta()?;
        let size = self.u64()?;
        let target = self.opt(|r| Ok(r.bytes(crate::path::MAX_PATH_LEN)?.to_vec()))?;
        if target.is_some() != (kind == Kind::Symlink) {
            return Err(bad("link text present iff the entry is a symlink"));
        }
        let hash = self.opt(R::arr)?;
        Ok(Entry {
            path,
            kind,
            meta,
            size,
            target,
            hash,
            dev: self.u64()?,
            ino: self.u64()?,
            nlink: self.u32()?,
        })
    }

    /// Free at most total, for bytes and for inodes.
    fn space(&mut self) -> Result<Space> {
        let s = Space {
            bytes_free: self.u64()?,
            bytes_total: self.u64()?,
            inodes_free: self.u64()?,
            inodes_total: self.u64()?,
        };
        if s.bytes_free > s.bytes_total || s.inodes_free > s.inodes_total {
            return Err(bad(format!(
                "free space ({} bytes, {} inodes) exceeds the total ({} bytes, {} inodes)",
                s.bytes_free, s.inodes_free, s.bytes_total, s.inodes_total
            )));
        }
        Ok(s)
    }

    fn children(&mut self) -> Result<Vec<Child>> {
        let n = self.u32()? as usize;
        // Each child takes more than 69 bytes (a name's length and bytes,
        // its kind, two hashes): no huge allocation from a small frame.
        if n > MAX_LIST || n > self.0.len() / 69 {
            return Err(bad("children count exceeds the frame"));
        }
        let mut list = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.bytes(crate::path::MAX_NAME_LEN)?;
            RelPath::name(name)?;
            list.push(Child {
                name: name.to_vec(),
                kind: self.kind()?,
                own: self.arr()?,
                hash: self.arr()?,
            });
        }
        Ok(list)
    }

    fn hashes(&mut self) -> Result<Vec<[u8; 32]>> {
        let n = self.u32()? as usize;
        if n > MAX_LIST || n > self.0.len() / 32 {
            return Err(bad("hash count exceeds the frame"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.arr()?);
        }
        Ok(v)
    }

    /// A receiver op of type code `ty` (chunks travel as read chunks).
    fn op(&mut self, ty: u8) -> Result<Op> {
        Ok(match ty {
            t::OP_MKDIR => Op::Mkdir { path: self.path()? },
            t::OP_SYMLINK => {
                let path = self.path()?;
                let target = self.bytes(crate::path::MAX_PATH_LEN)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(bad("symlink text empty or with NUL"));
                }
                Op::Symlink {
                    path,
                    target: target.to_vec(),
                    meta: self.meta()?,
                }
            }
            t::OP_HARDLINK => Op::Hardlink {
                path: self.path()?,
                to: self.path()?,
            },
            t::OP_SET_META => Op::SetMeta {
                path: self.path()?,
                kind: self.kind()?,
                meta: self.meta()?,
            },
            t::OP_DELETE => Op::Delete { path: self.path()? },
            t::OP_PUT_FILE => Op::PutFile {
                path: self.path()?,
                meta: self.meta()?,
                data: self.payload(MAX_DATA)?,
            },
            t::OP_BEGIN => Op::Begin {
                path: self.path()?,
                meta: self.meta()?,
                basis: self.basis()?,
            },
            t::OP_COMMIT => Op::Commit,
            t::OP_ROOT_META => Op::RootMeta { meta: self.meta()? },
            t::OP_BLOCK | t::OP_BLOCK_RUN => Op::Block {
                offset: self.u64()?,
                data: self.payload(MAX_DATA)?,
            },
            other => return Err(bad(format!("unknown message type {other}"))),
        })
    }
}
