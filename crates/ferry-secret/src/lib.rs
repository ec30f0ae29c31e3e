//! Secrets: admin tokens, caller tokens, agent keys, database passwords.
//!
//! One rule for every secret Ferry reads, wherever it is configured:
//! - [`read_file`] refuses a file that belongs to another user than the one
//!   running Ferry (or root), and one that others may read or write: a secret
//!   on disk is only as secret as its mode. PostgreSQL's rule for its TLS key,
//!   which fits services: a file of Ferry's own user must be 0600 or less (as
//!   ssh wants of a private key); a file of root may also be read by its group
//!   (0640, `root:ferry`: the service reads it and cannot change it). The
//!   content is trimmed (a trailing newline from `echo` is not part of it) and
//!   must not be empty.
//! - [`Secret`] never prints its value (`Debug` shows its length class only)
//!   and compares with [`Secret::matches`] in time independent of where the
//!   presented value differs and of the stored value's length: both sides are
//!   hashed with BLAKE3 first and the digests compared in constant time, so a
//!   timing probe learns neither a prefix nor the length.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Largest secret file read: a token, key or password is a line, not a file
/// to stream; a larger file is a mistake in the configuration.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what}: cannot read {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what}: {path} has mode {mode:04o}, too open for a secret{}: chmod 600 {path} \
         (or, for a file owned by root, 640 so that only the service's group reads it)",
        if *root_owned { " (others may read or the group may write it)" } else { " (group or others have access)" }
    )]
    TooOpen {
        what: String,
        path: PathBuf,
        mode: u32,
        root_owned: bool,
    },
    #[error(
        "{what}: {path} belongs to uid {owner}, not to the user running ferry (uid {me}) or \
         root; another user could change it (chown it to uid {me})"
    )]
    WrongOwner {
        what: String,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error("{what}: {path} is not a regular file")]
    NotAFile { what: String, path: PathBuf },
    #[error("{what}: {path} is larger than {MAX_FILE} bytes; a secret file holds one line")]
    TooLarge { what: String, path: PathBuf },
    #[error("{what} is empty")]
    Empty { what: String },
}

/// A secret value. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret {
    value: String,
}

impl Secret {
    /// A secret given inline (a config value, an environment variable).
    /// `what` names it in the error ("admin token").
    pub fn new(what: &str, value: impl Into<String>) -> Result<Secret, SecretError> {
        let value = value.into();
        if value.is_empty() {
            return Err(SecretError::Empty { what: what.into() });
        }
        Ok(Secret { value })
    }

    /// The value, for the places that must send it (an HTTP header, a login).
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Whether `presented` is this secret, in time that depends on neither
    /// the position of the first difference nor the stored length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        // blake3::Hash's equality is constant-time by design.
        blake3::hash(presented) == blake3::hash(self.value.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.matches(other.value.as_bytes())
    }
}

/// Reads the secret held in `path` under the rule above. `what` names the
/// setting in errors ("admin token_file").
pub fn read_file(what: &str, path: &Path) -> Result<Secret, SecretError> {
    let io = |source| SecretError::Io {
        what: what.into(),
        path: path.to_path_buf(),
        source,
    };
    // The checks are made on the opened file (fstat), so the file read is the
    // file checked even if the path is swapped in between.
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_meta(what, path, &meta)?;
    let mut text = String::new();
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE {
        return Err(SecretError::TooLarge {
            what: what.into(),
            path: path.to_path_buf(),
        });
    }
    Secret::new(what, text.trim())
}

/// The checks of [`read_file`] on a file's metadata, for callers that open
/// the file themselves (a TLS private key, a store of keys).
pub fn check_meta(what: &str, path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretError> {
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            what: what.into(),
            path: path.to_path_buf(),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(SecretError::WrongOwner {
            what: what.into(),
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    // Root's file may be read by its group (the service's), never written.
    let root_owned = meta.uid() == 0 && me != 0;
    let forbidden = if root_owned { 0o037 } else { 0o077 };
    if mode & forbidden != 0 {
        return Err(SecretError::TooOpen {
            what: what.into(),
            path: path.to_path_buf(),
            mode,
            root_owned,
        });
    }
    Ok(())
}

/// Writes a secret file (a token generated for the user, a private key
/// uploaded through the API) so that only the owner can read it: created with
/// mode 0600 from the start, never widened afterwards, synced before return.
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: narrow it too.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(content)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_private_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "t", "s3cret-token\n", 0o600);
        let s = read_file("admin token_file", &p).unwrap();
        assert_eq!(s.expose(), "s3cret-token");
        let p = file(dir.path(), "r", "abc", 0o400);
        assert!(read_file("key_file", &p).is_ok());
    }

    #[test]
    fn a_file_open_to_group_or_others_is_refused_naming_mode_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o666] {
            let p = file(dir.path(), "t", "token", mode);
            let e = read_file("admin token_file", &p).unwrap_err().to_string();
            assert!(e.contains("admin token_file"), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn empty_missing_directory_and_huge_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "e", " \n", 0o600);
        assert!(matches!(read_file("x", &p), Err(SecretError::Empty { .. })));
        assert!(matches!(
            read_file("x", &dir.path().join("missing")),
            Err(SecretError::Io { .. })
        ));
        assert!(matches!(
            read_file("x", dir.path()),
            Err(SecretError::NotAFile { .. })
        ));
        let p = file(dir.path(), "h", &"a".repeat(70_000), 0o600);
        assert!(matches!(
            read_file("x", &p),
            Err(SecretError::TooLarge { .. })
        ));
    }

    #[test]
    fn matches_only_the_exact_value() {
        let s = Secret::new("t", "abcdef").unwrap();
        assert!(s.matches(b"abcdef"));
        for wrong in [&b""[..], b"abcde", b"abcdefg", b"abcdeF", b"xbcdef"] {
            assert!(!s.matches(wrong));
        }
        assert!(Secret::new("t", "").is_err());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn write_private_creates_and_narrows_to_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "k", "old", 0o644);
        write_private(&p, b"new key").unwrap();
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new key");
        let q = dir.path().join("fresh");
        write_private(&q, b"k").unwrap();
        assert_eq!(
            std::fs::metadata(&q).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
