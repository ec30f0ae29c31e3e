//! The certificate store: the index of a directory, the bounded cache of parsed
//! keys, run-time changes, and the rustls resolver on top.

use std::fs;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::index::{Found, Index, SlotId};
use crate::names::check_cert_name;
use crate::pair::{has_key_block, leaf_names, CertPair};
use crate::TlsError;

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Directory of `NAME.pem` files (chain, then key or a `NAME.key` beside).
    /// Certificates added through the API are written here too, so they
    /// survive a restart.
    pub dir: PathBuf,
    /// Certificate (by name) for clients whose SNI matches none, or that send none.
    pub default_cert: Option<String>,
    /// Parsed keys kept in memory; the least recently used is dropped first.
    pub key_cache: usize,
}

/// Counters and sizes for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub certificates: usize,
    pub cached_keys: usize,
    pub key_cache_capacity: usize,
    /// Handshakes served from the key cache.
    pub cache_hits: u64,
    /// Keys read and parsed from their file.
    pub key_loads: u64,
    /// Keys that could not be read or did not match (the handshake failed).
    pub key_load_failures: u64,
    /// Handshakes for a name no certificate answers, with no default.
    pub no_certificate: u64,
    /// Approximate heap bytes of the name index.
    pub index_bytes: usize,
}

/// One certificate as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub name: String,
    pub hosts: Vec<String>,
    pub default: bool,
    pub key_cached: bool,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    loads: AtomicU64,
    failures: AtomicU64,
    no_certificate: AtomicU64,
}

/// Certificates by name, answering rustls's "which certificate for this
/// ClientHello". Shared (`Arc`) by every TLS listener and the admin API.
pub struct CertStore {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    index: RwLock<Index>,
    /// Keyed by slot; the generation tells a key of a replaced certificate
    /// from the current one.
    cache: Mutex<LruCache<SlotId, (u64, Arc<CertifiedKey>)>>,
    /// Serialises changes: a file write and its index update go together.
    changes: Mutex<()>,
    counters: Counters,
    /// Certificates whose key could not be loaded, by slot, with the
    /// generation and when: a broken file is read again (and logged) at most
    /// once per [`RETRY_BROKEN`], not on every handshake a client opens.
    broken: Mutex<std::collections::HashMap<SlotId, (u64, Instant)>>,
}

/// How long a certificate whose key failed to load is not read again.
/// Replacing it through the API (a new generation) retries at once.
pub const RETRY_BROKEN: Duration = Duration::from_secs(10);

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("certificates", &self.index.read().len())
            .finish()
    }
}

impl CertStore {
    /// Indexes every `*.pem` of `opts.dir` by the DNS names of its leaf
    /// certificate. Keys are not parsed here (only checked to be present), so
    /// opening costs one read and one X.509 parse per file. A file that cannot
    /// be read, holds no certificate or no key, or a default that names no
    /// file, stops the open with an error naming it.
    pub fn open(opts: &StoreOptions) -> Result<CertStore, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let dir_err = |source| TlsError::ReadDir {
            path: opts.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&opts.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            // Temporary files of an interrupted API write start with a dot.
            if file_name.starts_with('.') {
                continue;
            }
            if let Some(stem) = file_name.strip_suffix(".pem") {
                check_cert_name(stem)?;
                names.push(stem.to_string());
            }
        }
        // Sorted, so that when two files claim a name the outcome does not
        // depend on the directory's order: the later name has it.
        names.sort_unstable();
        let mut index = Index::default();
        // Private keys that group or others may read: counted and named once
        // (a directory of a million certificates must not log a million lines).
        let (mut open_keys, mut first_open_key) = (0usize, None);
        for name in &names {
            let path = pem_path(&opts.dir, name);
            let pem = fs::read(&path).map_err(|source| TlsError::ReadFile {
                name: name.clone(),
                path: path.clone(),
                source,
            })?;
            let (hosts, not_after) = leaf_names(name, &pem)?;
            let separate_key = !has_key_block(&pem);
            if separate_key && !key_path(&opts.dir, name).is_file() {
                return Err(TlsError::Invalid {
                    name: name.clone(),
                    problem: format!(
                        "no PRIVATE KEY block in {} and no {}",
                        path.display(),
                        key_path(&opts.dir, name).display()
                    ),
                });
            }
            let key_file = if separate_key {
                key_path(&opts.dir, name)
            } else {
                path
            };
            if is_open_to_others(&key_file) {
                open_keys += 1;
                first_open_key.get_or_insert(key_file);
            }
            let found = index.insert(name, hosts, separate_key);
            index.set_not_after(found.id, not_after);
        }
        if let Some(first) = first_open_key {
            tracing::warn!(
                keys = open_keys,
                first = %first.display(),
                "private keys readable by group or others in the certificate directory; chmod 600 them"
            );
        }
        if let Some(d) = &opts.default_cert {
            if index.by_name(d).is_none() {
                return Err(TlsError::NoDefault {
                    name: d.clone(),
                    dir: opts.dir.clone(),
                });
            }
        }
        index.set_default(opts.default_cert.as_deref());
        let capacity = NonZeroUsize::new(opts.key_cache).unwrap_or(NonZeroUsize::MIN);
        Ok(CertStore {
            dir: opts.dir.clone(),
            provider,
            index: RwLock::new(index),
            cache: Mutex::new(LruCache::new(capacity)),
            changes: Mutex::new(()),
            counters: Counters::default(),
            broken: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The crypto provider keys are parsed with (ring).
    pub fn provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.provider)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.index.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The certificate and key for an SNI name (`None`: the client sent none),
    /// parsed now if it is not in the cache.
    pub fn key_for(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = self.index.read().lookup(sni);
        let Some(found) = found else {
            self.counters.no_certificate.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if let Some((generation, key)) = self.cache.lock().get(&found.id) {
            if *generation == found.generation {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Arc::clone(key));
            }
        }
        self.load(found)
    }

    /// Whether a handshake for `sni` would find its key parsed already (also
    /// true when no certificate answers the name: there is nothing to load).
    /// The listener reads the ClientHello first and, when this is false,
    /// loads the key on the blocking pool, so a disk read never stalls the
    /// other connections of a runtime thread.
    pub fn is_cached(&self, sni: Option<&str>) -> bool {
        let Some(found) = self.index.read().lookup(sni) else {
            return true;
        };
        self.cache
            .lock()
            .peek(&found.id)
            .is_some_and(|(generation, _)| *generation == found.generation)
    }

    /// Reads and checks a certificate's files and caches its key. Runs outside
    /// every lock: a slow disk delays this handshake, not the others.
    fn load(&self, found: Found) -> Option<Arc<CertifiedKey>> {
        let (name, separate_key) = {
            let index = self.index.read();
            let slot = index.slot(found.id)?;
            (slot.name.to_string(), slot.separate_key)
        };
        if let Some((generation, when)) = self.broken.lock().get(&found.id) {
            if *generation == found.generation && when.elapsed() < RETRY_BROKEN {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
        match self.read_pair(&name, separate_key) {
            Ok(pair) => {
                self.broken.lock().remove(&found.id);
                let key = pair.key;
                self.cache
                    .lock()
                    .put(found.id, (found.generation, Arc::clone(&key)));
                Some(key)
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                self.broken
                    .lock()
                    .insert(found.id, (found.generation, Instant::now()));
                tracing::warn!(
                    error = %e,
                    retry_in_s = RETRY_BROKEN.as_secs(),
                    "cannot load a certificate for a handshake; handshakes for its names fail until it is fixed"
                );
                None
            }
        }
    }

    fn read_pair(&self, name: &str, separate_key: bool) -> Result<CertPair, TlsError> {
        let read = |path: PathBuf| {
            fs::read(&path).map_err(|source| TlsError::ReadFile {
                name: name.to_string(),
                path,
                source,
            })
        };
        let pem = read(pem_path(&self.dir, name))?;
        // The PEM may have gained its key since the index was read (an API
        // replacement of a certificate that had a NAME.key): it wins.
        let key = if separate_key && !has_key_block(&pem) {
            read(key_path(&self.dir, name))?
        } else {
            pem.clone()
        };
        CertPair::parse(name, &pem, &key, &self.provider)
    }

    /// Adds or replaces certificate `name` with a checked pair: written to
    /// `NAME.pem` in the directory (a temporary file renamed over the old one),
    /// then indexed, its key cached. New handshakes use it at once; open
    /// connections keep the certificate they were made with. Returns the
    /// names it answers and whether it replaced one.
    pub fn put(
        &self,
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(Vec<String>, bool), TlsError> {
        check_cert_name(name)?;
        let pair = CertPair::parse(name, chain_pem, key_pem, &self.provider)?;
        let _one = self.changes.lock();
        let old = self.index.read().by_name(name).map(|(_, s)| s.separate_key);
        self.write_pem(name, chain_pem, key_pem)?;
        if old == Some(true) {
            // The new PEM carries its key; a stale NAME.key would only confuse
            // a reader of the directory.
            let _ = fs::remove_file(key_path(&self.dir, name));
        }
        let names = pair.names();
        let found = {
            let mut index = self.index.write();
            let found = index.insert(name, pair.hosts, false);
            index.set_not_after(found.id, pair.not_after);
            found
        };
        self.cache
            .lock()
            .put(found.id, (found.generation, pair.key));
        Ok((names, old.is_some()))
    }

    fn write_pem(&self, name: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let path = pem_path(&self.dir, name);
        let tmp = self.dir.join(format!(".{name}.pem.tmp"));
        let err = |source| TlsError::Write {
            name: name.to_string(),
            path: path.clone(),
            source,
        };
        let write = || -> std::io::Result<()> {
            // The file holds a private key: readable by its owner only, from
            // its creation on (a leftover temporary file of another mode is
            // removed first, so its mode is not inherited).
            let _ = fs::remove_file(&tmp);
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?
            };
            f.write_all(chain_pem)?;
            if !chain_pem.ends_with(b"\n") {
                f.write_all(b"\n")?;
            }
            // The key may have come in the same text as the chain.
            if !has_key_block(chain_pem) {
                f.write_all(key_pem)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // Makes the rename durable; a directory that cannot be opened
            // for sync (some filesystems) does not make the write fail.
            if let Ok(d) = fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
    }

    /// Removes certificate `name` (its files and its index entry). The default
    /// certificate cannot be removed.
    pub fn remove(&self, name: &str) -> Result<(), TlsError> {
        check_cert_name(name)?;
        let _one = self.changes.lock();
        let separate_key = {
            let index = self.index.read();
            if index.default_name() == Some(name) {
                return Err(TlsError::IsDefault {
                    name: name.to_string(),
                });
            }
            match index.by_name(name) {
                Some((_, s)) => s.separate_key,
                None => {
                    return Err(TlsError::NotFound {
                        name: name.to_string(),
                    })
                }
            }
        };
        let path = pem_path(&self.dir, name);
        fs::remove_file(&path).map_err(|source| TlsError::Write {
            name: name.to_string(),
            path,
            source,
        })?;
        if separate_key {
            let _ = fs::remove_file(key_path(&self.dir, name));
        }
        if let Some(id) = self.index.write().remove(name) {
            self.cache.lock().pop(&id);
        }
        Ok(())
    }

    /// Every certificate, sorted by name.
    pub fn list(&self) -> Vec<CertInfo> {
        let index = self.index.read();
        let cache = self.cache.lock();
        let mut out: Vec<CertInfo> = index
            .slots()
            .map(|(id, s)| CertInfo {
                name: s.name.to_string(),
                hosts: s.hosts.iter().map(|h| h.display()).collect(),
                default: index.default_name() == Some(&*s.name),
                key_cached: cache
                    .peek(&id)
                    .is_some_and(|(generation, _)| *generation == s.generation),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// How the certificates stand at `now` (Unix seconds) with a window of
    /// `within` seconds: the earliest expiry, how many have expired, how many
    /// expire within the window.
    pub fn expiry(&self, now: u64, within: u64) -> crate::Expiry {
        self.index.read().expiry(now, within)
    }

    pub fn stats(&self) -> StoreStats {
        let (certificates, index_bytes) = {
            let index = self.index.read();
            (index.len(), index.heap_bytes())
        };
        let (cached_keys, key_cache_capacity) = {
            let cache = self.cache.lock();
            (cache.len(), cache.cap().get())
        };
        StoreStats {
            certificates,
            cached_keys,
            key_cache_capacity,
            cache_hits: self.counters.hits.load(Ordering::Relaxed),
            key_loads: self.counters.loads.load(Ordering::Relaxed),
            key_load_failures: self.counters.failures.load(Ordering::Relaxed),
            no_certificate: self.counters.no_certificate.load(Ordering::Relaxed),
            index_bytes,
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key_for(client_hello.server_name())
    }
}

/// Whether group or others have any access to `path` (0 on error: the read
/// itself reports that).
fn is_open_to_others(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).is_ok_and(|m| m.mode() & 0o077 != 0)
}

fn pem_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::issue;

    fn opts(dir: &Path, default: Option<&str>, cache: usize) -> StoreOptions {
        StoreOptions {
            dir: dir.to_path_buf(),
            default_cert: default.map(str::to_string),
            key_cache: cache,
        }
    }

    fn leaf_names_of(key: &CertifiedKey) -> Vec<HostKeyText> {
        let ee = webpki::EndEntityCert::try_from(&key.cert[0]).unwrap();
        ee.valid_dns_names().map(str::to_string).collect()
    }
    type HostKeyText = String;

    #[test]
    fn directory_is_indexed_and_keys_load_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(&["a.test", "www.a.test"]);
        fs::write(dir.path().join("a.pem"), a.bundle()).unwrap();
        let star = issue(&["*.b.test"]);
        fs::write(dir.path().join("star-b.pem"), &star.chain).unwrap();
        fs::write(dir.path().join("star-b.key"), &star.key).unwrap();
        let d = issue(&["default.test"]);
        fs::write(dir.path().join("default.pem"), d.bundle()).unwrap();
        fs::write(dir.path().join("README"), "not a certificate").unwrap();

        let store = CertStore::open(&opts(dir.path(), Some("default"), 2)).unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(store.stats().key_loads, 0, "no key parsed at open");
        let k = store.key_for(Some("www.a.test")).unwrap();
        assert_eq!(leaf_names_of(&k), ["a.test", "www.a.test"]);
        let k = store.key_for(Some("x.b.test")).unwrap();
        assert_eq!(leaf_names_of(&k), ["*.b.test"]);
        let k = store.key_for(Some("nothing.test")).unwrap();
        assert_eq!(leaf_names_of(&k), ["default.test"]);
        assert_eq!(store.stats().key_loads, 3);
        // Capacity 2: the least recently used (a) was dropped.
        store.key_for(Some("x.b.test")).unwrap();
        assert_eq!(store.stats().cache_hits, 1);
        assert_eq!(store.stats().cached_keys, 2);
        store.key_for(Some("a.test")).unwrap();
        assert_eq!(store.stats().key_loads, 4);
    }

    #[test]
    fn open_names_the_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(&["a.test"]);
        fs::write(dir.path().join("nokey.pem"), &a.chain).unwrap();
        let e = CertStore::open(&opts(dir.path(), None, 10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("certificate nokey: no PRIVATE KEY block"), "{e}");

        fs::write(dir.path().join("nokey.pem"), "hello").unwrap();
        let e = CertStore::open(&opts(dir.path(), None, 10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("certificate nokey: no CERTIFICATE block"), "{e}");

        fs::remove_file(dir.path().join("nokey.pem")).unwrap();
        let e = CertStore::open(&opts(dir.path(), Some("missing"), 10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("default certificate \"missing\""), "{e}");
    }

    #[test]
    fn a_key_written_through_the_api_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = issue(&["default.example"]);
        fs::write(dir.path().join("default.pem"), d.bundle()).unwrap();
        let store = CertStore::open(&opts(dir.path(), Some("default"), 4)).unwrap();
        let a = issue(&["a.example"]);
        // A leftover temporary file of a wider mode must not lend its mode.
        fs::write(dir.path().join(".a.pem.tmp"), "junk").unwrap();
        store
            .put("a", a.chain.as_bytes(), a.key.as_bytes())
            .unwrap();
        let mode = fs::metadata(dir.path().join("a.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }

    #[test]
    fn a_broken_key_is_not_read_again_on_every_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(&["a.example"]);
        let other = issue(&["a.example"]);
        // The chain of one certificate with the key of another: indexed (a
        // key block is there), refused when the handshake parses the pair.
        fs::write(
            dir.path().join("a.pem"),
            format!("{}{}", a.chain, other.key),
        )
        .unwrap();
        let store = CertStore::open(&opts(dir.path(), None, 4)).unwrap();
        for _ in 0..100 {
            assert!(store.key_for(Some("a.example")).is_none());
        }
        let st = store.stats();
        assert_eq!(st.key_loads, 1, "the file was read once, not per handshake");
        assert_eq!(st.key_load_failures, 100);
        // A replacement through the API is a new generation: used at once.
        store
            .put("a", a.chain.as_bytes(), a.key.as_bytes())
            .unwrap();
        assert!(store.key_for(Some("a.example")).is_some());
    }

    #[test]
    fn expiry_counts_expired_and_expiring_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let cert = |names: &[&str], y: i32, m: u8, d: u8| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(
                names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            p.not_after = rcgen::date_time_ymd(y, m, d);
            let c = p.self_signed(&key).unwrap();
            format!("{}{}", c.pem(), key.serialize_pem())
        };
        fs::write(dir.path().join("old.pem"), cert(&["old.test"], 2020, 1, 1)).unwrap();
        fs::write(
            dir.path().join("soon.pem"),
            cert(&["soon.test"], 2030, 1, 10),
        )
        .unwrap();
        fs::write(
            dir.path().join("late.pem"),
            cert(&["late.test"], 2040, 1, 1),
        )
        .unwrap();
        let store = CertStore::open(&opts(dir.path(), None, 4)).unwrap();
        // 2030-01-01T00:00:00Z, a window of 30 days.
        let now = 1_893_456_000;
        let e = store.expiry(now, 30 * 86_400);
        assert_eq!((e.expired, e.expiring), (1, 1));
        assert_eq!(e.earliest, Some(1_577_836_800), "2020-01-01");
        // A replacement through the API carries its own date.
        let new = issue(&["old.test"]);
        store
            .put("old", new.chain.as_bytes(), new.key.as_bytes())
            .unwrap();
        assert_eq!(store.expiry(now, 30 * 86_400).expired, 0);
    }

    #[test]
    fn put_replace_remove() {
        let dir = tempfile::tempdir().unwrap();
        let d = issue(&["default.test"]);
        fs::write(dir.path().join("default.pem"), d.bundle()).unwrap();
        let store = CertStore::open(&opts(dir.path(), Some("default"), 10)).unwrap();

        let v1 = issue(&["shop.test"]);
        let (names, replaced) = store
            .put("shop", v1.chain.as_bytes(), v1.key.as_bytes())
            .unwrap();
        assert_eq!(names, ["shop.test"]);
        assert!(!replaced);
        let k1 = store.key_for(Some("shop.test")).unwrap();
        assert_eq!(k1.cert[0], v1.der());
        assert_eq!(store.stats().key_loads, 0, "a put caches its key");

        // A mismatched pair changes nothing.
        let other = issue(&["shop.test"]);
        let e = store
            .put("shop", v1.chain.as_bytes(), other.key.as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        assert_eq!(store.key_for(Some("shop.test")).unwrap().cert[0], v1.der());
        assert_eq!(
            fs::read_to_string(dir.path().join("shop.pem")).unwrap(),
            format!("{}{}", v1.chain, v1.key)
        );

        let v2 = issue(&["shop.test", "www.shop.test"]);
        let (_, replaced) = store
            .put("shop", v2.chain.as_bytes(), v2.key.as_bytes())
            .unwrap();
        assert!(replaced);
        assert_eq!(
            store.key_for(Some("www.shop.test")).unwrap().cert[0],
            v2.der()
        );
        // The old key object stays valid for whoever holds it (open connections).
        assert_eq!(k1.cert[0], v1.der());

        // Survives a restart: the directory holds it.
        let again = CertStore::open(&opts(dir.path(), Some("default"), 10)).unwrap();
        assert_eq!(again.key_for(Some("shop.test")).unwrap().cert[0], v2.der());

        assert!(matches!(
            store.remove("default"),
            Err(TlsError::IsDefault { .. })
        ));
        assert!(matches!(
            store.remove("nope"),
            Err(TlsError::NotFound { .. })
        ));
        store.remove("shop").unwrap();
        assert!(!dir.path().join("shop.pem").exists());
        assert_eq!(
            store.key_for(Some("shop.test")).unwrap().cert[0],
            d.der(),
            "the default answers once the certificate is gone"
        );
        let list = store.list();
        assert_eq!(list.len(), 1);
        assert!(list[0].default);
        assert!(matches!(
            store.put("../x", b"", b""),
            Err(TlsError::BadName { .. })
        ));
    }

    #[test]
    fn is_cached_tells_a_cold_key_from_a_parsed_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = issue(&["a.test"]);
        fs::write(dir.path().join("a.pem"), a.bundle()).unwrap();
        let store = CertStore::open(&opts(dir.path(), None, 10)).unwrap();
        assert!(!store.is_cached(Some("a.test")), "nothing parsed at open");
        assert!(store.stats().key_loads == 0);
        assert!(store.key_for(Some("a.test")).is_some());
        assert!(store.is_cached(Some("a.test")));
        // No certificate answers: nothing to load ahead of the handshake.
        assert!(store.is_cached(Some("other.test")));
        assert!(store.is_cached(None));
        // A replacement is cached by put itself (the pair was just checked).
        let b = issue(&["a.test"]);
        store
            .put("a", b.chain.as_bytes(), b.key.as_bytes())
            .unwrap();
        assert!(store.is_cached(Some("a.test")));
    }

    #[test]
    fn server_config_offers_h2_and_http11() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(CertStore::open(&opts(dir.path(), None, 10)).unwrap());
        let cfg = crate::server_config(store, 100, true).unwrap();
        assert_eq!(cfg.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
