//! Block mode: an image file or block device copied as fixed-size blocks.
//!
//! Both sides hash their blocks with BLAKE3 in parallel (groups of blocks read
//! with `pread` on every core); only blocks whose hashes differ travel, and the
//! receiver writes them in place. The receiver keeps a digest file beside an
//! image (`NAME.ferry-digest`) recording the hashes and the image's size and
//! mtime after the last pass, so a repeat pass does not re-read an unchanged
//! target. Block devices have no trustworthy mtime: they are always re-hashed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Result, SyncError};
use crate::manifest::mtime_of;
use crate::merkle::Digest;

/// Default block size: 64 KiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Bytes read and hashed by one task (64 blocks of the default size): the
/// memory of hashing is this times the worker threads, whatever the block
/// size (it was 64 blocks: 1 GiB a task at 16 MiB blocks).
const GROUP_BYTES: u64 = crate::limits::MAX_BLOCK_SIZE as u64;
/// Most blocks an image may have: their hashes (32 bytes each, 256 MiB at
/// most) are held for a whole pass. An image of 512 GiB at the default
/// block size; larger ones need larger blocks.
pub const MAX_BLOCKS: u64 = 1 << 23;
const DIGEST_MAGIC: &[u8; 8] = b"FERRYDG1";

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn open_read(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| SyncError::io("open image", path, e))
}

/// Size of an image file or block device.
fn size_of(f: &File, path: &Path) -> Result<u64> {
    let md = f
        .metadata()
        .map_err(|e| SyncError::io("stat image", path, e))?;
    if md.file_type().is_file() {
        return Ok(md.len());
    }
    // Block devices report length 0 in stat; seeking to the end gives the size.
    let mut f = f;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
        .map_err(|e| SyncError::io("size of device", path, e))
}

fn check_block_size(bs: u32) -> Result<u64> {
    use crate::limits::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
        return Err(SyncError::Unsupported(format!(
            "block size {bs} must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        )));
    }
    Ok(bs as u64)
}

/// Refuses an image of `size` bytes with more than [`MAX_BLOCKS`] blocks of
/// `bs` (their hashes would not fit the memory bound of a session).
fn check_blocks(path: &Path, size: u64, bs: u64) -> Result<u64> {
    let blocks = size.div_ceil(bs);
    if blocks > MAX_BLOCKS {
        let need = size.div_ceil(MAX_BLOCKS).next_power_of_two();
        return Err(SyncError::Unsupported(format!(
            "{}: {size} bytes are {blocks} blocks of {bs}, more than the {MAX_BLOCKS} a pass may \
             hold; use a block size of at least {need}",
            path.display()
        )));
    }
    Ok(blocks)
}

/// Hashes every block of an image in parallel.
pub fn hash_image(path: &Path, block_size: u32) -> Result<(u64, Vec<Digest>)> {
    let bs = check_block_size(block_size)?;
    let f = open_read(path)?;
    let size = size_of(&f, path)?;
    let blocks = check_blocks(path, size, bs)?;
    // A task hashes GROUP_BYTES of whole blocks (check_block_size keeps a
    // block no larger than that).
    let group = (GROUP_BYTES / bs).max(1);
    let groups: Vec<Result<Vec<Digest>>> = (0..blocks.div_ceil(group))
        .into_par_iter()
        .map(|g| {
            let first = g * group;
            let last = (first + group).min(blocks);
            let start = first * bs;
            let end = (last * bs).min(size);
            let mut buf = vec![0u8; (end - start) as usize];
            f.read_exact_at(&mut buf, start)
                .map_err(|e| SyncError::io("read image", path, e))?;
            Ok(buf
                .chunks(bs as usize)
                .map(|b| *blake3::hash(b).as_bytes())
                .collect())
        })
        .collect();
    let mut out = Vec::with_capacity(blocks as usize);
    for g in groups {
        out.extend(g?);
    }
    Ok((size, out))
}

/// Reads block `index` (the last block may be short).
pub fn read_block(path: &Path, index: u64, block_size: u32) -> Result<Vec<u8>> {
    let bs = check_block_size(block_size)?;
    let f = open_read(path)?;
    let size = size_of(&f, path)?;
    let start = index
        .checked_mul(bs)
        .filter(|s| *s < size)
        .ok_or_else(|| SyncError::Corrupt {
            path: path.display().to_string(),
            message: format!("block {index} beyond the end of the image"),
        })?;
    let mut buf = vec![0u8; (size - start).min(bs) as usize];
    f.read_exact_at(&mut buf, start)
        .map_err(|e| SyncError::io("read image", path, e))?;
    Ok(buf)
}

/// Reads `count` consecutive blocks from `index` with one `pread` (the last
/// block of the image may be short).
pub fn read_blocks(path: &Path, index: u64, count: u64, block_size: u32) -> Result<Vec<u8>> {
    let bs = check_block_size(block_size)?;
    let f = open_read(path)?;
    let size = size_of(&f, path)?;
    let start = index
        .checked_mul(bs)
        .filter(|s| *s < size && count > 0)
        .ok_or_else(|| SyncError::Corrupt {
            path: path.display().to_string(),
            message: format!("blocks {index}+{count} beyond the end of the image"),
        })?;
    let len = count.saturating_mul(bs).min(size - start);
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, start)
        .map_err(|e| SyncError::io("read image", path, e))?;
    Ok(buf)
}

/// Bytes written between two kicks of background writeback.
const WRITEBACK_EVERY: u64 = 64 * 1024 * 1024;

/// The target image of a pass, open from `prepare` to `finish`: blocks are
/// written with `pwrite` on one descriptor (no open per block), and every
/// [`WRITEBACK_EVERY`] bytes a background `fdatasync` starts writing back what
/// is already there, so the final flush does not find the whole image dirty.
pub struct ImageWriter {
    path: PathBuf,
    file: std::sync::Arc<File>,
    size: u64,
    written: std::sync::atomic::AtomicU64,
    flushing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ImageWriter {
    pub fn open(path: &Path) -> Result<ImageWriter> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(nofollow())
            .open(path)
            .map_err(|e| SyncError::io("open target", path, e))?;
        let size = size_of(&file, path)?;
        Ok(ImageWriter {
            path: path.to_path_buf(),
            file: std::sync::Arc::new(file),
            size,
            written: 0.into(),
            flushing: std::sync::Arc::new(false.into()),
        })
    }

    /// Writes `data` at `offset`, which must lie inside the target.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        use std::sync::atomic::Ordering;
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(SyncError::Corrupt {
                    path: self.path.display().to_string(),
                    message: format!(
                        "block at {offset} of {} bytes beyond the target's {} bytes",
                        data.len(),
                        self.size
                    ),
                })
            }
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| SyncError::io("write block", &self.path, e))?;
        let n = data.len() as u64;
        let before = self.written.fetch_add(n, Ordering::Relaxed);
        if before / WRITEBACK_EVERY != (before + n) / WRITEBACK_EVERY
            && !self.flushing.swap(true, Ordering::AcqRel)
        {
            let (file, flag) = (self.file.clone(), self.flushing.clone());
            // Best effort: an error here shows again at the final fsync.
            std::thread::spawn(move || {
                let _ = file.sync_data();
                flag.store(false, Ordering::Release);
            });
        }
        Ok(())
    }
}

/// Writes one block in place at `offset`. The write must lie inside the
/// target, whose size [`prepare_target`] fixed.
pub fn write_block(path: &Path, offset: u64, data: &[u8]) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| SyncError::io("open target", path, e))?;
    let size = size_of(&f, path)?;
    match offset.checked_add(data.len() as u64) {
        Some(end) if end <= size => f
            .write_all_at(data, offset)
            .map_err(|e| SyncError::io("write block", path, e)),
        _ => Err(SyncError::Corrupt {
            path: path.display().to_string(),
            message: format!(
                "block at {offset} of {} bytes beyond the target's {size} bytes",
                data.len()
            ),
        }),
    }
}

fn digest_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".ferry-digest");
    PathBuf::from(s)
}

fn digest_header(block_size: u32, size: u64, md: &std::fs::Metadata) -> Vec<u8> {
    let t = mtime_of(md);
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(DIGEST_MAGIC);
    h.extend_from_slice(&block_size.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&md.len().to_le_bytes());
    h.extend_from_slice(&md.ino().to_le_bytes());
    h.extend_from_slice(&t.secs.to_le_bytes());
    h.extend_from_slice(&t.nanos.to_le_bytes());
    h
}

/// Reads the digest file if it still describes the target exactly.
fn read_digest(path: &Path, block_size: u32, size: u64) -> Option<Vec<Digest>> {
    let md = std::fs::symlink_metadata(path).ok()?;
    if !md.file_type().is_file() {
        return None;
    }
    let mut data = Vec::new();
    File::open(digest_path(path))
        .ok()?
        .read_to_end(&mut data)
        .ok()?;
    let header = digest_header(block_size, size, &md);
    let body = data.strip_prefix(header.as_slice())?;
    let (hashes, check) = body.split_at(body.len().checked_sub(32)?);
    let mut h = blake3::Hasher::new();
    h.update(&header);
    h.update(hashes);
    if h.finalize().as_bytes() != check || hashes.len() % 32 != 0 {
        return None;
    }
    let out: Vec<Digest> = hashes
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect();
    (out.len() as u64 == size.div_ceil(block_size as u64)).then_some(out)
}

/// The block hashes of `size` zero bytes.
fn zero_hashes(size: u64, block_size: u32) -> Vec<Digest> {
    let bs = block_size as u64;
    let full = *blake3::hash(&vec![0u8; block_size as usize]).as_bytes();
    let mut out = vec![full; (size / bs) as usize];
    if !size.is_multiple_of(bs) {
        out.push(*blake3::hash(&vec![0u8; (size % bs) as usize]).as_bytes());
    }
    out
}

/// Makes the target `size` bytes long (creating an image file if missing) and
/// returns the hashes of what it holds.
pub fn prepare_target(path: &Path, size: u64, block_size: u32) -> Result<Vec<Digest>> {
    let bs = check_block_size(block_size)?;
    // Before anything is created or resized.
    check_blocks(path, size, bs)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| SyncError::io("open target", path, e))?;
    let md = f
        .metadata()
        .map_err(|e| SyncError::io("stat target", path, e))?;
    let mut all_zero = false;
    if md.file_type().is_file() {
        if md.len() != size {
            f.set_len(size)
                .map_err(|e| SyncError::io("resize target", path, e))?;
            // An empty (new) file grown by set_len is one hole: every block
            // reads as zeros, no need to read it to know its hashes.
            all_zero = md.len() == 0;
        }
    } else {
        let have = size_of(&f, path)?;
        if have != size {
            return Err(SyncError::Unsupported(format!(
                "{}: target device has {have} bytes, source has {size}",
                path.display()
            )));
        }
    }
    drop(f);
    if all_zero {
        return Ok(zero_hashes(size, block_size));
    }
    if let Some(d) = read_digest(path, block_size, size) {
        return Ok(d);
    }
    Ok(hash_image(path, block_size)?.1)
}

/// Flushes the target to disk and records its digest.
pub fn finish_target(path: &Path, size: u64, block_size: u32, hashes: &[Digest]) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nofollow())
        .open(path)
        .map_err(|e| SyncError::io("open target", path, e))?;
    f.sync_all()
        .map_err(|e| SyncError::io("fsync target", path, e))?;
    let md = f
        .metadata()
        .map_err(|e| SyncError::io("stat target", path, e))?;
    if !md.file_type().is_file() {
        return Ok(());
    }
    let header = digest_header(block_size, size, &md);
    let mut h = blake3::Hasher::new();
    h.update(&header);
    let mut data = header.clone();
    for d in hashes {
        h.update(d);
        data.extend_from_slice(d);
    }
    data.extend_from_slice(h.finalize().as_bytes());
    let dp = digest_path(path);
    let tmp = digest_path(&dp);
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nofollow())
        .open(&tmp)
        .map_err(|e| SyncError::io("write digest", &tmp, e))?;
    out.write_all(&data)
        .map_err(|e| SyncError::io("write digest", &tmp, e))?;
    std::fs::rename(&tmp, &dp).map_err(|e| SyncError::io("write digest", &dp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_target_has_the_hashes_of_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let size = 3 * 4096 + 100;
        let got = prepare_target(&p, size, 4096).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), size);
        assert_eq!(got, hash_image(&p, 4096).unwrap().1);
        assert_eq!(got.len(), 4);
        // A non-empty target is read, not assumed to be zeros.
        write_block(&p, 4096, &[7u8; 4096]).unwrap();
        let again = prepare_target(&p, size, 4096).unwrap();
        assert_eq!(again, hash_image(&p, 4096).unwrap().1);
        assert_ne!(again[1], got[1]);
    }
}
