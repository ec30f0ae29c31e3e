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
//!
//! Files: `encode` (messages to frames), `decode` (the strict decoder),
//! `stream` (reading and writing frames on a connection, payloads apart),
//! `auth` (the handshake's MACs and the key).

use crate::delta::Chunk;
use crate::delta::Signature;
use crate::endpoint::{Basis, Op};
use crate::error::SyncError;
use crate::manifest::{Entry, Meta};
use crate::merkle::{Child, Digest};
use crate::path::RelPath;

mod auth;
mod decode;
mod encode;
mod stream;

pub use auth::{auth_mac, derive_key, mac_eq, read_key_file};
pub use decode::decode;
pub use encode::encode;
pub use stream::{read_msg, read_msg_max, write_msg};

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
    /// Room on the file system that holds the volume (statvfs of its root),
    /// for `ferry migrate check`. Answer: `Space`. An agent older than this
    /// frame refuses it as an unknown type and hangs up (see
    /// [`crate::remote::query_space`]).
    SpaceReq,
    Space(Space),
}

/// Room on the file system of a volume, as an unprivileged writer sees it
/// (statvfs: `f_bavail * f_frsize`, `f_favail`). The decoder refuses more
/// free than total. `inodes_total == 0`: the file system has no inode
/// limit (btrfs and others report 0 for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub bytes_free: u64,
    pub bytes_total: u64,
    pub inodes_free: u64,
    pub inodes_total: u64,
}

/// Frame type codes (the byte after the version). Only ever grow; a code
/// is never given a new meaning.
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
    pub const SPACE_REQ: u8 = 52;
    pub const SPACE: u8 = 53;
}

/// `SpaceReq`'s type code: an older agent names it when it refuses the
/// frame ("unknown message type 52"), which the client turns into "agent
/// too old".
pub(crate) const SPACE_REQ_TYPE: u8 = t::SPACE_REQ;

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
