//! The local copy (`[store] local_copy`): a SQLite store holding what this
//! router applied from etcd, and the revision it reached, so the router can
//! start while etcd is unreachable.
//!
//! The rule for serving from it (docs/control-plane.md, "Starting from the
//! local copy"): every record is loaded as it is in the copy, so a site whose
//! record is frozen stays frozen (requests held, then refused with 503) and
//! only settled sites (active or in maintenance) serve. This is safe because
//! the copy is written *before* the router publishes the revision that
//! covers a change (its acknowledgement), and a unit is flipped only after
//! every router the migration knows acknowledged its freeze: a site the copy
//! holds settled at epoch E was never frozen past E with this router's
//! acknowledgement, so no flip moved it while the router was away. A copy
//! whose writes failed is marked unusable (its revision file removed) rather
//! than trusted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_model::{Hostname, SiteRecord};
use ferry_store::{JoinedServer, SqliteStore, Store, StoreError};

use crate::ProxyError;

/// Records written to the copy per transaction while it is brought in step
/// with a snapshot.
const SYNC_CHUNK: usize = 50_000;

pub(crate) struct LocalCopy {
    path: PathBuf,
    /// `<local_copy>.revision`: the etcd revision the copy holds, written
    /// after the records (a copy without it is never served from).
    revision_path: PathBuf,
    store: SqliteStore,
    /// A write failed since the last full sync: the copy is behind, so it was
    /// marked unusable and is not written again until the next snapshot.
    broken: AtomicBool,
}

impl LocalCopy {
    pub fn open(path: &Path) -> Result<LocalCopy, ProxyError> {
        let store = SqliteStore::open(path)?;
        let mut name = path.as_os_str().to_owned();
        name.push(".revision");
        Ok(LocalCopy {
            path: path.to_path_buf(),
            revision_path: PathBuf::from(name),
            store,
            broken: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// The revision the copy holds; 0 when it was never brought in step with
    /// etcd or was marked unusable.
    pub fn revision(&self) -> i64 {
        std::fs::read_to_string(&self.revision_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether a start may serve from it.
    pub fn usable(&self) -> bool {
        self.revision() > 0
    }

    /// Records the revision the copy reached (after its records).
    pub fn set_revision(&self, revision: i64) {
        if self.broken.load(Ordering::Acquire) {
            return;
        }
        let tmp = self.revision_path.with_extension("revision.tmp");
        let res = std::fs::write(&tmp, format!("{revision}\n"))
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.revision_path));
        if let Err(e) = res {
            self.fail(&StoreError::Etcd {
                op: "write the local copy's revision",
                source: e.into(),
            });
        }
    }

    /// Marks the copy unusable after a failed write (until the next sync).
    fn fail(&self, e: &StoreError) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!(
                copy = %self.path.display(),
                error = %e,
                "the local copy cannot be written: marked unusable (a start while etcd is \
                 unreachable will not serve from it) until the next snapshot"
            );
        }
        let _ = std::fs::remove_file(&self.revision_path);
    }

    /// Runs a write unless the copy is broken; a failure breaks it.
    pub fn write(&self, f: impl FnOnce(&SqliteStore) -> Result<(), StoreError>) {
        if self.broken.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = f(&self.store) {
            self.fail(&e);
        }
    }

    /// Brings the copy in step with a snapshot (`sites` in any order) at
    /// `revision`: writes what differs, removes what etcd no longer has.
    pub fn sync(
        &self,
        mut sites: Vec<SiteRecord>,
        joined: &[JoinedServer],
        states: &[(String, String, ferry_model::ServerState)],
        revision: i64,
    ) {
        // The revision goes first: a crash in the middle leaves no revision,
        // so no start trusts a half-synced copy.
        let _ = std::fs::remove_file(&self.revision_path);
        self.broken.store(false, Ordering::Release);
        let res = (|| -> Result<(), StoreError> {
            let mut held = self.store.sites()?;
            held.sort_unstable_by(|a, b| a.host.cmp(&b.host));
            sites.sort_unstable_by(|a, b| a.host.cmp(&b.host));
            let mut put: Vec<SiteRecord> = Vec::new();
            let mut gone: Vec<Hostname> = Vec::new();
            let mut old = held.into_iter().peekable();
            for r in sites {
                while let Some(o) = old.next_if(|o| o.host < r.host) {
                    gone.push(o.host);
                }
                match old.next_if(|o| o.host == r.host) {
                    Some(o) if o == r => {}
                    _ => put.push(r),
                }
            }
            gone.extend(old.map(|o| o.host));
            for chunk in put.chunks(SYNC_CHUNK) {
                self.store.put_sites(chunk)?;
            }
            for chunk in gone.chunks(SYNC_CHUNK) {
                self.store.remove_sites(chunk)?;
            }
            let kept = self.store.joined_servers()?;
            for k in &kept {
                if !joined.iter().any(|j| j.pool == k.pool && j.name == k.name) {
                    self.store.remove_joined_server(&k.pool, &k.name)?;
                }
            }
            for j in joined {
                self.store.put_joined_server(j)?;
            }
            for (pool, server, state) in states {
                self.store.put_server_state(pool, server, *state)?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => self.set_revision(revision),
            Err(e) => self.fail(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::{Epoch, Placement, SiteState};

    fn rec(host: &str, state: SiteState, epoch: u64) -> SiteRecord {
        SiteRecord {
            host: Hostname::parse(host).unwrap(),
            placement: Placement::parse("pool:web").unwrap(),
            state,
            epoch: Epoch(epoch),
        }
    }

    /// A sync writes what differs, removes what etcd no longer has, and
    /// records the revision last; a copy never synced is not usable.
    #[test]
    fn sync_brings_the_copy_in_step_and_records_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let copy = LocalCopy::open(&dir.path().join("copy.db")).unwrap();
        assert!(!copy.usable());
        copy.sync(
            vec![
                rec("b.example", SiteState::Frozen, 2),
                rec("a.example", SiteState::Active, 1),
            ],
            &[],
            &[],
            7,
        );
        assert_eq!(copy.revision(), 7);
        assert!(copy.usable());
        copy.write(|s| s.put_sites(&[rec("c.example", SiteState::Active, 1)]));
        copy.sync(
            vec![
                rec("a.example", SiteState::Maintenance, 3),
                rec("d.example", SiteState::Active, 1),
            ],
            &[],
            &[],
            9,
        );
        let held = copy.store().sites().unwrap();
        assert_eq!(
            held,
            vec![
                rec("a.example", SiteState::Maintenance, 3),
                rec("d.example", SiteState::Active, 1),
            ]
        );
        assert_eq!(copy.revision(), 9);
        // Reopened (a restart), the copy and its revision are there.
        drop(copy);
        let again = LocalCopy::open(&dir.path().join("copy.db")).unwrap();
        assert_eq!(again.revision(), 9);
        assert_eq!(again.store().sites().unwrap().len(), 2);
    }
}
