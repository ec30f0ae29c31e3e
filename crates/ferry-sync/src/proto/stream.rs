//! Frames on a connection: a frame's head is read first and file data
//! straight into a buffer of its own; a payload is written from where it is.

use std::io::{Read, Write};

use super::decode::{decode, decode_parts};
use super::encode::encode_parts;
use super::{bad, t, Msg, VERSION};
use crate::error::Result;
use crate::limits::MAX_FRAME;

/// Reads one frame and decodes it. `Ok(None)` at a clean end of stream.
pub fn read_msg(r: &mut impl Read) -> std::io::Result<Option<Result<Msg>>> {
    read_msg_max(r, MAX_FRAME)
}

/// [`read_msg`] refusing frames longer than `max` (at most [`MAX_FRAME`])
/// before reading or reserving anything for them: the agent reads the
/// handshake with [`MAX_HANDSHAKE_FRAME`](crate::limits::MAX_HANDSHAKE_FRAME).
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
