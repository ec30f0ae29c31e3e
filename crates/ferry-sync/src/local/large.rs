//! A large file received in pieces: `Begin`, `Chunk`s over a basis (the
//! old file or an interrupted pass's partial copy), `Commit`.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rustix::fs::AtFlags;

use crate::beneath::open_read_at;
use crate::delta::Chunk;
use crate::dircache::OpenDir;
use crate::endpoint::Basis;
use crate::error::{Result, SyncError};
use crate::manifest::Meta;
use crate::path::{temp_name, RelPath};

use super::LocalTree;

/// A file being received in pieces.
pub(super) struct Open {
    rel: RelPath,
    meta: Meta,
    /// The file's open directory, its temporary name there and its name.
    dir: std::sync::Arc<OpenDir>,
    tmp: Vec<u8>,
    name: Vec<u8>,
    /// Where the file is, for messages.
    shown: PathBuf,
    file: File,
    basis: Option<(File, u64)>,
    /// A renamed partial file used as basis, removed after the commit.
    basis_tmp: Option<Vec<u8>>,
    pos: u64,
}

impl LocalTree {
    pub(super) fn begin(&self, rel: RelPath, meta: Meta, basis: Basis) -> Result<()> {
        use rustix::fs::{Mode, OFlags};
        let (dir, name) = self.at(&rel)?;
        let shown = rel.under(&self.root);
        let tmp = temp_name(&rel, "part");
        let mut basis_tmp = None;
        let basis_file = match basis {
            Basis::None => None,
            Basis::Target => Some(
                open_read_at(&*dir, OsStr::from_bytes(&name))
                    .map_err(|e| SyncError::io("open", &shown, e.into()))?,
            ),
            Basis::Partial => {
                let b = temp_name(&rel, "basis");
                rustix::fs::renameat(&*dir, OsStr::from_bytes(&tmp), &*dir, OsStr::from_bytes(&b))
                    .map_err(|e| SyncError::io("rename into place", &shown, e.into()))?;
                let f = open_read_at(&*dir, OsStr::from_bytes(&b))
                    .map_err(|e| SyncError::io("open", &shown, e.into()))?;
                basis_tmp = Some(b);
                Some(f)
            }
        };
        let basis = match basis_file {
            Some(f) => {
                let f = File::from(f);
                let len = f
                    .metadata()
                    .map_err(|e| SyncError::io("stat basis", &shown, e))?
                    .len();
                Some((f, len))
            }
            None => None,
        };
        let file = rustix::fs::openat(
            &*dir,
            OsStr::from_bytes(&tmp),
            OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SyncError::io("create temporary file", &shown, e.into()))?;
        let mut g = self.lock_open();
        if let Some(old) = g.take() {
            // A Begin without the Commit of the previous file: the sender gave
            // up on it; its temporary file stays as a resumable partial.
            drop(old);
        }
        *g = Some(Open {
            rel,
            meta,
            dir,
            tmp,
            name,
            shown,
            file: File::from(file),
            basis,
            basis_tmp,
            pos: 0,
        });
        Ok(())
    }

    pub(super) fn chunk(&self, c: Chunk) -> Result<()> {
        let mut g = self.lock_open();
        let o = g
            .as_mut()
            .ok_or_else(|| SyncError::Protocol("file data without Begin".into()))?;
        match c {
            Chunk::Data(d) => {
                o.file
                    .write_all_at(&d, o.pos)
                    .map_err(|e| SyncError::io("write", &o.shown, e))?;
                o.pos += d.len() as u64;
            }
            // A hole: nothing to write; the final set_len gives the size.
            Chunk::Zero(n) => o.pos += n,
            Chunk::Copy { offset, len } => {
                let (basis, blen) = o.basis.as_ref().ok_or_else(|| SyncError::Corrupt {
                    path: o.rel.to_string(),
                    message: "block copy without a basis file".into(),
                })?;
                if offset.checked_add(len).is_none_or(|end| end > *blen) {
                    return Err(SyncError::Corrupt {
                        path: o.rel.to_string(),
                        message: format!("copy {offset}+{len} beyond basis length {blen}"),
                    });
                }
                let mut buf = vec![0u8; (len as usize).min(1 << 20)];
                let mut done = 0u64;
                while done < len {
                    let n = ((len - done) as usize).min(buf.len());
                    basis
                        .read_exact_at(&mut buf[..n], offset + done)
                        .map_err(|e| SyncError::io("read basis", &o.shown, e))?;
                    o.file
                        .write_all_at(&buf[..n], o.pos)
                        .map_err(|e| SyncError::io("write", &o.shown, e))?;
                    o.pos += n as u64;
                    done += n as u64;
                }
            }
        }
        Ok(())
    }

    pub(super) fn commit(&self) -> Result<()> {
        let o = self
            .lock_open()
            .take()
            .ok_or_else(|| SyncError::Protocol("Commit without Begin".into()))?;
        o.file
            .set_len(o.pos)
            .map_err(|e| SyncError::io("set length", &o.shown, e))?;
        self.set_meta_file(&o.file, &o.shown, &o.meta)?;
        drop(o.file);
        rustix::fs::renameat(
            &*o.dir,
            OsStr::from_bytes(&o.tmp),
            &*o.dir,
            OsStr::from_bytes(&o.name),
        )
        .map_err(|e| SyncError::io("rename into place", &o.shown, e.into()))?;
        if let Some(b) = o.basis_tmp {
            let _ = rustix::fs::unlinkat(&*o.dir, OsStr::from_bytes(&b), AtFlags::empty());
        }
        Ok(())
    }
}
