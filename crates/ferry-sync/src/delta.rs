//! rsync-style delta transfer: the receiver sends a [`Signature`] of the file it
//! already has (a weak rolling checksum and a BLAKE3 strong hash per block); the
//! sender slides a window over the new content and emits [`Chunk`]s: copies of
//! blocks the receiver has, and literal bytes for the rest.
//!
//! The weak checksum is rsync's (two 16-bit sums, updated in O(1) per byte), so
//! unchanged blocks are found at any offset, not only at block boundaries. The
//! strong hash is 16 bytes of BLAKE3, checked on every weak hit.

use std::collections::HashMap;
use std::io::Read;

use rayon::prelude::*;

use crate::error::{Result, SyncError};

/// Bytes of the strong hash kept per block (128 bits: collisions are not a
/// practical concern, and the whole-file verification catches any).
pub const STRONG_LEN: usize = 16;

/// Size of the pieces literal data is sent in.
pub const CHUNK: usize = 256 * 1024;

/// One piece of a file's new content, as sent to the receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Literal bytes.
    Data(Vec<u8>),
    /// `len` zero bytes (written as a hole: sparse files stay sparse).
    Zero(u64),
    /// `len` bytes taken from the receiver's basis file at `offset`.
    Copy { offset: u64, len: u64 },
}

/// The receiver's description of its basis file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    pub block_size: u32,
    /// Length of the basis file.
    pub len: u64,
    pub weak: Vec<u32>,
    pub strong: Vec<[u8; STRONG_LEN]>,
}

/// Most blocks in a signature: (4 + 16) bytes each, so one `Sig` frame
/// ([`crate::limits::MAX_FRAME`]) always holds it. The receiver describes at
/// most this many blocks of its basis, whatever block size is asked.
pub const MAX_SIG_BLOCKS: u64 = 400_000;

/// Block size for a file of `len` bytes: about the square root (as rsync), so
/// the signature and the per-change overhead both stay small, and never more
/// than ~200,000 blocks so a signature fits a frame, up to the largest block
/// an agent accepts ([`crate::limits::MAX_DELTA_BLOCK`]).
pub fn block_size_for(len: u64) -> u32 {
    let sqrt = (len as f64).sqrt() as u64;
    let bs = sqrt.div_ceil(1024) * 1024;
    let bs = bs.clamp(2048, 128 * 1024).max(len / 200_000);
    bs.min(u64::from(crate::limits::MAX_DELTA_BLOCK)) as u32
}

/// rsync's rolling checksum.
#[derive(Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(data: &[u8]) -> Rolling {
        let mut a: u32 = 0;
        let mut b: u32 = 0;
        let n = data.len() as u32;
        for (i, &x) in data.iter().enumerate() {
            a = a.wrapping_add(x as u32);
            b = b.wrapping_add((n - i as u32).wrapping_mul(x as u32));
        }
        Rolling { a, b, len: n }
    }
    fn digest(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
    fn roll(&mut self, out: u8, inn: u8) {
        self.a = self.a.wrapping_sub(out as u32).wrapping_add(inn as u32);
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(out as u32))
            .wrapping_add(self.a);
    }
}

fn strong(data: &[u8]) -> [u8; STRONG_LEN] {
    let h = blake3::hash(data);
    let mut out = [0u8; STRONG_LEN];
    out.copy_from_slice(&h.as_bytes()[..STRONG_LEN]);
    out
}

/// Computes the signature of everything `r` yields. Blocks are hashed in
/// parallel, a few megabytes at a time.
pub fn signature(mut r: impl Read, block_size: u32) -> std::io::Result<Signature> {
    let bs = block_size.max(1) as usize;
    let per_batch = (8 * 1024 * 1024 / bs).max(1);
    let mut sig = Signature {
        block_size: bs as u32,
        ..Default::default()
    };
    let mut buf = vec![0u8; bs * per_batch];
    loop {
        let n = read_full(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        sig.len += n as u64;
        // Only whole blocks are matched; a short tail travels as literal bytes.
        let full = n / bs;
        let hashes: Vec<(u32, [u8; STRONG_LEN])> = buf[..full * bs]
            .par_chunks(bs)
            .map(|b| (Rolling::new(b).digest(), strong(b)))
            .collect();
        for (w, s) in hashes {
            sig.weak.push(w);
            sig.strong.push(s);
        }
        if n < buf.len() {
            break;
        }
    }
    Ok(sig)
}

/// Reads until `buf` is full or the end; returns the count.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Emits literal bytes, turning all-zero pieces into holes.
fn emit_literal(data: &[u8], out: &mut dyn FnMut(Chunk) -> Result<()>) -> Result<()> {
    for piece in data.chunks(CHUNK) {
        if piece.iter().all(|&b| b == 0) {
            out(Chunk::Zero(piece.len() as u64))?;
        } else {
            out(Chunk::Data(piece.to_vec()))?;
        }
    }
    Ok(())
}

/// Streams the whole of `r` as chunks (no basis).
pub fn whole(mut r: impl Read, out: &mut dyn FnMut(Chunk) -> Result<()>) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = read_full(&mut r, &mut buf)
            .map_err(|e| SyncError::Protocol(format!("read source: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        emit_literal(&buf[..n], out)?;
        if n < buf.len() {
            break;
        }
    }
    Ok(total)
}

/// Streams `r` as a delta against `sig`.
pub fn delta(
    mut r: impl Read,
    sig: &Signature,
    out: &mut dyn FnMut(Chunk) -> Result<()>,
) -> Result<()> {
    let bs = sig.block_size as usize;
    if bs == 0 || sig.weak.is_empty() {
        whole(r, out)?;
        return Ok(());
    }
    let mut table: HashMap<u32, Vec<usize>> = HashMap::with_capacity(sig.weak.len());
    for (i, w) in sig.weak.iter().enumerate() {
        table.entry(*w).or_default().push(i);
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut eof = false;
    let mut start = 0usize; // window start in buf
    let mut lit = 0usize; // first byte of the pending literal in buf
    let mut rolling: Option<Rolling> = None;
    let mut pending: Option<(u64, u64)> = None; // a copy being extended
    let flush_copy = |pending: &mut Option<(u64, u64)>,
                      out: &mut dyn FnMut(Chunk) -> Result<()>|
     -> Result<()> {
        if let Some((offset, len)) = pending.take() {
            out(Chunk::Copy { offset, len })?;
        }
        Ok(())
    };
    let mut tmp = vec![0u8; 1024 * 1024];
    loop {
        if buf.len() < start + bs && !eof {
            // Drop what was already emitted, then read more.
            buf.drain(..lit);
            start -= lit;
            lit = 0;
            let n = read_full(&mut r, &mut tmp)
                .map_err(|e| SyncError::Protocol(format!("read source: {e}")))?;
            if n < tmp.len() {
                eof = true;
            }
            buf.extend_from_slice(&tmp[..n]);
            continue;
        }
        if buf.len() < start + bs {
            break;
        }
        let window = &buf[start..start + bs];
        let roll = match rolling {
            Some(r) => r,
            None => Rolling::new(window),
        };
        let mut matched = None;
        if let Some(cands) = table.get(&roll.digest()) {
            let s = strong(window);
            matched = cands.iter().copied().find(|&j| sig.strong[j] == s);
        }
        if let Some(j) = matched {
            if lit < start {
                flush_copy(&mut pending, out)?;
                emit_literal(&buf[lit..start], out)?;
            }
            let offset = j as u64 * bs as u64;
            pending = match pending {
                Some((o, l)) if o + l == offset => Some((o, l + bs as u64)),
                other => {
                    flush_copy(&mut other.clone(), out)?;
                    Some((offset, bs as u64))
                }
            };
            start += bs;
            lit = start;
            rolling = None;
            continue;
        }
        if start + bs < buf.len() {
            let mut next = roll;
            next.roll(buf[start], buf[start + bs]);
            rolling = Some(next);
        } else {
            rolling = None;
        }
        start += 1;
        if start - lit >= CHUNK {
            flush_copy(&mut pending, out)?;
            emit_literal(&buf[lit..start], out)?;
            lit = start;
        }
    }
    flush_copy(&mut pending, out)?;
    if lit < buf.len() {
        emit_literal(&buf[lit..], out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn apply(basis: &[u8], chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Chunk::Data(d) => out.extend_from_slice(d),
                Chunk::Zero(n) => out.extend(std::iter::repeat_n(0, *n as usize)),
                Chunk::Copy { offset, len } => {
                    out.extend_from_slice(&basis[*offset as usize..(*offset + *len) as usize])
                }
            }
        }
        out
    }

    fn roundtrip(old: &[u8], new: &[u8], bs: u32) -> (Vec<u8>, u64) {
        let sig = signature(old, bs).unwrap();
        let mut chunks = Vec::new();
        delta(new, &sig, &mut |c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
        let literal = chunks
            .iter()
            .map(|c| match c {
                Chunk::Data(d) => d.len() as u64,
                _ => 0,
            })
            .sum();
        (apply(old, &chunks), literal)
    }

    #[test]
    fn rolling_matches_fresh_computation() {
        let d = pseudo(5000, 1);
        let mut r = Rolling::new(&d[0..1000]);
        for i in 0..3000 {
            r.roll(d[i], d[i + 1000]);
            assert_eq!(r.digest(), Rolling::new(&d[i + 1..i + 1001]).digest());
        }
    }

    #[test]
    fn identical_content_is_all_copies() {
        let d = pseudo(100_000, 2);
        let (out, lit) = roundtrip(&d, &d, 2048);
        assert_eq!(out, d);
        assert!(lit < 2048, "only the tail is literal, got {lit}");
    }

    #[test]
    fn insertion_shifts_are_found() {
        let old = pseudo(200_000, 3);
        let mut new = old.clone();
        new.splice(50_000..50_000, b"inserted bytes here".iter().copied());
        new.drain(150_000..150_100);
        let (out, lit) = roundtrip(&old, &new, 2048);
        assert_eq!(out, new);
        assert!(lit < 4 * 2048 + 2048, "literal {lit}");
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for (a, b) in [
            (&b""[..], &b""[..]),
            (b"", b"abc"),
            (b"abc", b""),
            (b"abc", b"abd"),
        ] {
            assert_eq!(roundtrip(a, b, 2048).0, b);
        }
    }

    #[test]
    fn zeros_become_holes() {
        let d = vec![0u8; 3 * CHUNK];
        let mut chunks = Vec::new();
        whole(&d[..], &mut |c| {
            chunks.push(c);
            Ok(())
        })
        .unwrap();
        assert!(chunks.iter().all(|c| matches!(c, Chunk::Zero(_))));
    }
}
