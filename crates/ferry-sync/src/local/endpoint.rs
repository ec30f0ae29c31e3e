//! [`LocalTree`] as a [`Tree`], a [`Source`] and a [`Dest`].

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use crate::beneath::open_read_at;
use crate::block;
use crate::delta::{self, Chunk, Signature};
use crate::endpoint::{Basis, Dest, Op, Source, Tree};
use crate::error::{Result, SyncError};
use crate::manifest::{self, Manifest, ScanOptions};
use crate::merkle::{Child, Digest, MerkleTree};
use crate::path::{temp_name, RelPath};
use crate::watch::{Changes, Watch};

use super::LocalTree;

impl Tree for LocalTree {
    fn scan(&self, opts: &ScanOptions) -> Result<Manifest> {
        // A pass starts: directories opened in an earlier one may have been
        // renamed or replaced since (as a source, nothing else clears them).
        self.dirs.clear();
        let m = manifest::scan(&self.root, opts)?;
        if opts.staged {
            // What this tree stages from now on is what is on disk: a failed
            // earlier pass's staging is listed again by its markers.
            *self.staged.write().unwrap_or_else(|p| p.into_inner()) =
                m.staged.iter().cloned().collect();
        }
        Ok(m)
    }

    fn scan_paths(
        &self,
        paths: &std::collections::BTreeSet<RelPath>,
        opts: &ScanOptions,
    ) -> Result<Manifest> {
        self.dirs.clear();
        manifest::scan_paths(&self.root, paths, opts)
    }

    fn merkle_root(&self) -> Result<(Digest, u64)> {
        let m = match &self.hashes {
            Some(c) => manifest::scan_hashed(&self.root, c)?,
            None => manifest::scan(
                &self.root,
                &ScanOptions {
                    checksum: true,
                    staged: false,
                },
            )?,
        };
        let t = MerkleTree::build(&m);
        let out = (t.root, t.count);
        *self.merkle.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(out)
    }

    fn merkle_children(&self, dir: Option<&RelPath>) -> Result<Vec<Child>> {
        let g = self.merkle.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(t) => Ok(t.children(dir)),
            None => Err(SyncError::Protocol(
                "merkle_children before merkle_root".into(),
            )),
        }
    }

    fn block_hashes(&self, block_size: u32) -> Result<(u64, Vec<Digest>)> {
        block::hash_image(self.image_path(), block_size)
    }
}

impl Source for LocalTree {
    fn read(
        &self,
        path: &RelPath,
        sig: Option<&Signature>,
        out: &mut dyn FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        // Through the open parent chain (O_NOFOLLOW at every component, see
        // [`DirCache`]): a parent swapped for a symlink since the scan must
        // not make a read-only volume serve what the link points to (#5 of
        // issue 15: `lnk -> /etc`, then `ReadReq lnk/shadow`).
        let dir = self.open_dir(&path.parent())?;
        let f = open_read_at(&*dir, OsStr::from_bytes(path.file_name()))
            .map(File::from)
            .map_err(|e| SyncError::io("open", path.under(&self.root), e.into()))?;
        match sig {
            Some(s) => delta::delta(std::io::BufReader::new(f), s, out),
            None => delta::whole(f, out).map(|_| ()),
        }
    }

    /// Read relative to the file's open directory (see `DirCache`), into a
    /// buffer one byte larger than the scanned size: no path walk, no fstat,
    /// and one read when the size is still the scanned one (a second read
    /// only to hear "end of file" is a sixth of reading a small file).
    fn read_small(&self, path: &RelPath, size: u64) -> Result<Vec<u8>> {
        self.read_small_max(path, size, usize::MAX)
    }

    fn read_block(&self, index: u64, block_size: u32) -> Result<Vec<u8>> {
        block::read_block(self.image_path(), index, block_size)
    }

    fn read_blocks(&self, index: u64, count: u64, block_size: u32) -> Result<Vec<u8>> {
        block::read_blocks(self.image_path(), index, count, block_size)
    }

    fn changes(&self) -> Result<Changes> {
        let mut g = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(w) => Ok(w.take()),
            None => {
                let w = Box::new(Watch::start(&self.root)?);
                let c = w.take();
                *g = Some(w);
                Ok(c)
            }
        }
    }

    fn watch_force_full(&self, reason: &str) -> Result<()> {
        // Without a watch the next `changes` starts one: a full walk anyway.
        if let Some(w) = self
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            w.force_full(reason);
        }
        Ok(())
    }
}

impl Dest for LocalTree {
    fn signature(
        &self,
        path: &RelPath,
        basis: Basis,
        block_size: u32,
    ) -> Result<Option<Signature>> {
        let (dir, name) = self.at(path)?;
        let p = path.under(&self.root);
        let name = match basis {
            Basis::None => return Ok(None),
            Basis::Target => name,
            Basis::Partial => temp_name(path, "part"),
        };
        let f = match open_read_at(&*dir, OsStr::from_bytes(&name)) {
            Ok(f) => File::from(f),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(SyncError::io("open basis", &p, e.into())),
        };
        // At most what one `Sig` frame holds: a tiny block size asked of a
        // large file describes its beginning only (still a valid basis; the
        // rest travels as data) instead of costing gigabytes.
        let cap = delta::MAX_SIG_BLOCKS.saturating_mul(u64::from(block_size.max(1)));
        let sig = delta::signature(std::io::BufReader::new(f.take(cap)), block_size)
            .map_err(|e| SyncError::io("read basis", &p, e))?;
        Ok(Some(sig))
    }

    fn apply(&self, op: Op) -> Result<()> {
        match op {
            Op::Mkdir { path } => self.mkdir(&path),
            Op::Symlink { path, target, meta } => self.symlink(&path, &target, &meta),
            Op::Hardlink { path, to } => self.hardlink(&path, &to),
            Op::SetMeta { path, kind, meta } => self.set_meta(&path, kind, &meta),
            Op::Delete { path } => self.delete(&path),
            Op::PutFile { path, meta, data } => self.put_file(&path, &meta, &data),
            Op::Begin { path, meta, basis } => self.begin(path, meta, basis),
            Op::Chunk(c) => self.chunk(c),
            Op::Commit => self.commit(),
            Op::RootMeta { meta } => self.set_root_meta(&meta),
            Op::Block { offset, data } => {
                let image = self.image.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match image {
                    Some(w) => w.write(offset, &data),
                    None => block::write_block(self.image_path(), offset, &data),
                }
            }
        }
    }

    fn flush(&self) -> Result<()> {
        // Not held between passes (an idle agent must not keep a volume busy).
        self.dirs.clear();
        self.reveal()
    }

    fn block_prepare(&self, size: u64, block_size: u32) -> Result<Vec<Digest>> {
        let hashes = block::prepare_target(self.image_path(), size, block_size)?;
        let writer = block::ImageWriter::open(self.image_path())?;
        *self.image.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer.into());
        Ok(hashes)
    }

    fn block_finish(&self, size: u64, block_size: u32, hashes: &[Digest]) -> Result<()> {
        self.image.lock().unwrap_or_else(|p| p.into_inner()).take();
        block::finish_target(self.image_path(), size, block_size, hashes)
    }
}
