//! Opening a side of a sync from where it lives: the one place that turns
//! an [`Endpoint`] (a local path or `ferry://HOST:PORT/VOLUME`) into a tree
//! to read from or write to, for `ferry sync`, the migration runbook and
//! the fleet's update runbook alike.
//!
//! What opening does, by role and mode: a local destination directory is
//! created (file mode; an image is created by the block pass itself); a
//! local source must be a directory (file mode) or exist (block mode), so
//! a mistyped path is refused before anything is scanned; an agent's
//! volume is connected to with the key and the deadlines given, for
//! writing when it is the destination.

use std::fmt;
use std::path::PathBuf;

use crate::endpoint::{Dest, Source};
use crate::engine::{run_pass, verify, Mode, SyncOptions};
use crate::error::{Result, SyncError};
use crate::local::LocalTree;
use crate::merkle::Verdict;
use crate::remote::{Deadlines, RemoteTree};

/// Where a side of a sync lives: a local path or `ferry://HOST:PORT/VOLUME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Local(PathBuf),
    Remote {
        host: String,
        port: u16,
        volume: String,
    },
}

impl Endpoint {
    /// Parses a command-line endpoint.
    pub fn parse(s: &str) -> Result<Endpoint> {
        let Some(rest) = s.strip_prefix("ferry://") else {
            return Ok(Endpoint::Local(PathBuf::from(s)));
        };
        let bad = |why: &str| {
            SyncError::Unsupported(format!("{s:?}: {why} (expected ferry://HOST:PORT/VOLUME)"))
        };
        let (hostport, volume) = rest.split_once('/').ok_or_else(|| bad("no volume"))?;
        if volume.is_empty() || volume.contains('/') {
            return Err(bad("the volume must be one name"));
        }
        let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        Ok(Endpoint::Remote {
            host: host.to_string(),
            port,
            volume: volume.to_string(),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Local(p) => write!(f, "{}", p.display()),
            Endpoint::Remote { host, port, volume } if host.contains(':') => {
                write!(f, "ferry://[{host}]:{port}/{volume}")
            }
            Endpoint::Remote { host, port, volume } => write!(f, "ferry://{host}:{port}/{volume}"),
        }
    }
}

/// Which side of a pass an endpoint is opened as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read from: a local tree must exist; an agent's volume is opened
    /// read-only.
    Source,
    /// Written to: a local directory is created; an agent's volume is
    /// opened for writing (refused on a read-only volume).
    Dest,
}

/// What opening an endpoint needs besides the endpoint.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The agents' key ([`crate::proto::derive_key`]); needed for a
    /// `ferry://` endpoint only.
    pub key: Option<[u8; 32]>,
    /// How long to wait on an agent.
    pub deadlines: Deadlines,
    /// File mode opens directories, block mode images.
    pub mode: Mode,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            key: None,
            deadlines: Deadlines::default(),
            mode: Mode::File,
        }
    }
}

/// An opened endpoint: a tree on this machine or an agent's volume.
pub enum EndpointTree {
    Local(Box<LocalTree>),
    Remote(RemoteTree),
}

impl Endpoint {
    /// Opens this endpoint as `role` (see the module docs for what that
    /// does for each kind of endpoint).
    pub fn open(&self, role: Role, opts: &OpenOptions) -> Result<EndpointTree> {
        match self {
            Endpoint::Local(p) => {
                match (role, opts.mode) {
                    (Role::Dest, Mode::File) => std::fs::create_dir_all(p)
                        .map_err(|e| SyncError::io("create destination", p, e))?,
                    (Role::Dest, Mode::Block) => {}
                    (Role::Source, Mode::File) if !p.is_dir() => {
                        return Err(SyncError::BadSource {
                            path: p.clone(),
                            reason: "not a directory (use --mode block for an image)",
                        })
                    }
                    (Role::Source, Mode::Block) if !p.exists() => {
                        return Err(SyncError::BadSource {
                            path: p.clone(),
                            reason: "no such image",
                        })
                    }
                    (Role::Source, _) => {}
                }
                Ok(EndpointTree::Local(Box::new(LocalTree::new(p))))
            }
            Endpoint::Remote { host, port, volume } => {
                let key = opts
                    .key
                    .as_ref()
                    .ok_or_else(|| SyncError::Auth(format!("no key for {host}")))?;
                let write = role == Role::Dest;
                RemoteTree::connect_with(host, *port, volume, key, write, &opts.deadlines)
                    .map(EndpointTree::Remote)
            }
        }
    }
}

impl EndpointTree {
    pub fn source(&self) -> &dyn Source {
        match self {
            EndpointTree::Local(t) => t.as_ref(),
            EndpointTree::Remote(t) => t,
        }
    }

    pub fn dest(&self) -> &dyn Dest {
        match self {
            EndpointTree::Local(t) => t.as_ref(),
            EndpointTree::Remote(t) => t,
        }
    }

    /// The tree as an owned destination (follow mode keeps one per thread).
    pub fn into_dest(self) -> Box<dyn Dest + Send> {
        match self {
            EndpointTree::Local(t) => t,
            EndpointTree::Remote(t) => Box::new(t),
        }
    }
}

/// Passes [`full_sync_verified`] runs at most.
pub const FULL_SYNC_PASSES: u32 = 3;

/// What [`full_sync_verified`] did.
#[derive(Debug)]
pub struct FullSync {
    pub passes: u32,
    /// Entries the passes changed at the destination, all passes together.
    pub changed_entries: u64,
    /// The last verification: equal, unless the source kept changing
    /// through every pass.
    pub verdict: Verdict,
}

/// A full copy proved equal, as the update runbook's level-1 sync and a
/// joining front server (`ferry agent --join-files-from`) need it: a pass
/// with deletions from `src` to `dst`, then the Merkle verification; while
/// it finds differences (files changed at the source meanwhile), another
/// pass, up to [`FULL_SYNC_PASSES`]. The caller decides what a verdict
/// still not equal means. Blocking, as the engine.
pub fn full_sync_verified(
    src: &EndpointTree,
    dst: &EndpointTree,
    opts: &SyncOptions,
) -> Result<FullSync> {
    let opts = SyncOptions {
        delete: true,
        ..opts.clone()
    };
    let mut changed_entries = 0;
    let mut passes = 0;
    loop {
        passes += 1;
        let sum = run_pass(src.source(), dst.dest(), &opts, passes, &|_| {})?;
        changed_entries += sum.changed_entries;
        let verdict = verify(src.source(), dst.dest(), 20)?;
        if verdict.equal() || passes == FULL_SYNC_PASSES {
            return Ok(FullSync {
                passes,
                changed_entries,
                verdict,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_destination_is_created_and_a_missing_source_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = Endpoint::Local(tmp.path().join("a/b"));
        dst.open(Role::Dest, &OpenOptions::default()).unwrap();
        assert!(tmp.path().join("a/b").is_dir());
        let missing = Endpoint::Local(tmp.path().join("nope"));
        let e = missing
            .open(Role::Source, &OpenOptions::default())
            .err()
            .unwrap();
        assert!(matches!(e, SyncError::BadSource { .. }), "{e}");
        assert!(e
            .to_string()
            .ends_with("not a directory (use --mode block for an image)"));
        let block = OpenOptions {
            mode: Mode::Block,
            ..OpenOptions::default()
        };
        let e = missing.open(Role::Source, &block).err().unwrap();
        assert!(e.to_string().ends_with("no such image"), "{e}");
        // A block destination is created by the pass, not here.
        Endpoint::Local(tmp.path().join("img"))
            .open(Role::Dest, &block)
            .unwrap();
        assert!(!tmp.path().join("img").exists());
    }

    #[test]
    fn a_remote_endpoint_without_a_key_is_refused_before_connecting() {
        let e = Endpoint::parse("ferry://127.0.0.1:1/vol").unwrap();
        let err = e.open(Role::Source, &OpenOptions::default()).err().unwrap();
        assert!(matches!(err, SyncError::Auth(_)), "{err}");
    }

    #[test]
    fn a_full_sync_copies_deletes_and_proves_equal() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, d) = (tmp.path().join("s"), tmp.path().join("d"));
        std::fs::create_dir_all(s.join("media")).unwrap();
        std::fs::write(s.join("media/a.jpg"), b"aaa").unwrap();
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("stale.txt"), b"old").unwrap();
        let opts = OpenOptions::default();
        let src = Endpoint::Local(s).open(Role::Source, &opts).unwrap();
        let dst = Endpoint::Local(d.clone()).open(Role::Dest, &opts).unwrap();
        let done = full_sync_verified(&src, &dst, &SyncOptions::default()).unwrap();
        assert!(done.verdict.equal(), "{:?}", done.verdict.differing);
        assert_eq!(done.passes, 1);
        assert_eq!(std::fs::read(d.join("media/a.jpg")).unwrap(), b"aaa");
        assert!(!d.join("stale.txt").exists());
    }

    #[test]
    fn endpoints_print_as_they_are_written() {
        for s in ["ferry://h:7000/v", "ferry://[::1]:7000/v", "/srv/x"] {
            assert_eq!(Endpoint::parse(s).unwrap().to_string(), s);
        }
    }
}
