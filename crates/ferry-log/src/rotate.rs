//! A log file with a size cap: when the next line would take the file past
//! `max_size`, it is renamed `NAME.1` (older ones shift to `NAME.2` ...
//! `NAME.KEEP`, the oldest is removed) and a new file is started. So the
//! files of one log never take more than about `max_size x (keep + 1)`,
//! whatever is logged, and no outside tool is needed.
//!
//! A write that fails (a full disk, a file removed under us) drops the line
//! and counts it; it never blocks or panics, and the next write tries again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::COUNTERS;

pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`. Fails only if the file cannot be opened at
    /// all, so a wrong path is an error at start, not silence later.
    pub fn open(path: &Path, max_size: u64, keep: u32) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_size: max_size.max(1024),
            keep,
            file: Some(file),
            size,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            // No old files kept: start the same file again from empty.
            let f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .create(true)
                .mode(0o640)
                .open(&self.path)?;
            self.file = Some(f);
            self.size = 0;
            return Ok(());
        }
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        // Oldest first, so nothing is overwritten before it has moved.
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = Some(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }

    fn write_line(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.file = Some(open_append(&self.path)?);
            self.size = self
                .file
                .as_ref()
                .map_or(0, |f| f.metadata().map_or(0, |m| m.len()));
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(_e) = self.write_line(buf) {
            // A full disk or a vanished file: the line is lost and counted.
            // Reopen on the next line (the file may have been removed).
            COUNTERS.dropped.fetch_add(1, Ordering::Relaxed);
            self.file = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // 0640: logs name clients and sites; not for every local user.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_at_the_cap_and_keep_at_most_keep_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.log");
        let mut f = RotatingFile::open(&path, 4096, 2).unwrap();
        let line = [b'x'; 99];
        for _ in 0..1000 {
            f.write_all(&line).unwrap();
            f.write_all(b"\n").unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ferry.log", "ferry.log.1", "ferry.log.2"]);
        for n in &names {
            let len = std::fs::metadata(dir.path().join(n)).unwrap().len();
            assert!(len <= 4096, "{n} is {len} bytes");
        }
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(&path, 2048, 0).unwrap();
        for _ in 0..100 {
            f.write_all(&[b'y'; 100]).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 2048);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
