//! Tree generators, the independent equality checks and an in-process agent.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferry_sync::{AgentConfig, Event, RemoteTree, SyncOptions, Volume};

pub const KEY: &str = "test-key-0123456789abcdef";

/// A mirror pass: what the source lacks is deleted, owners are kept.
pub fn mirror_options() -> SyncOptions {
    SyncOptions {
        delete: true,
        owners: true,
        ..Default::default()
    }
}

pub fn no_events() -> impl Fn(&Event) + Sync {
    |_e: &Event| {}
}

/// Deterministic pseudo-random bytes (BLAKE3 XOF: fast even in debug builds).
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// A tree with everything that is hard to copy right.
pub fn make_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    for d in 0..8 {
        let dir = root.join(format!("dir{d}"));
        fs::create_dir_all(dir.join("sub")).unwrap();
        for f in 0..25 {
            let n = 1 + (d * 31 + f * 17) % 8192;
            fs::write(
                dir.join(format!("f{f}.php")),
                bytes((d * 100 + f) as u64, n),
            )
            .unwrap();
        }
        fs::write(dir.join("sub/deep.txt"), b"deep").unwrap();
    }
    // Big file (goes through the streamed path).
    fs::write(root.join("big.bin"), bytes(7, 3 * 1024 * 1024 + 123)).unwrap();
    // Odd names.
    for name in [
        "with space",
        "caf\u{e9} \u{2713} \u{1f600}",
        "new\nline",
        "-leading-dash",
        "--rf",
        " leading space",
        "tab\there",
    ] {
        fs::write(root.join(name), name.as_bytes()).unwrap();
    }
    fs::create_dir_all(root.join("dir with space/-dash dir")).unwrap();
    fs::write(root.join("dir with space/-dash dir/x"), b"x").unwrap();
    // Symlinks: relative, absolute, dangling, to a directory, pointing outside.
    symlink("dir0/f1.php", root.join("link-rel")).unwrap();
    symlink("/etc/passwd", root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    symlink("dir1", root.join("link-dir")).unwrap();
    symlink("../../outside", root.join("dir2/link-out")).unwrap();
    // Empty directories, nested.
    fs::create_dir_all(root.join("empty/a/b")).unwrap();
    fs::create_dir_all(root.join("empty2")).unwrap();
    // Sparse file: 8 MiB with a few bytes of data.
    {
        let f = fs::File::create(root.join("sparse.img")).unwrap();
        f.set_len(8 * 1024 * 1024).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"hello", 4 * 1024 * 1024).unwrap();
    }
    // Hard links.
    fs::write(root.join("hl-a"), b"shared inode").unwrap();
    fs::hard_link(root.join("hl-a"), root.join("hl-b")).unwrap();
    fs::hard_link(root.join("hl-a"), root.join("dir3/hl-c")).unwrap();
    // Modes, including a read-only file and a read-only directory.
    fs::set_permissions(root.join("dir0/f0.php"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("dir0/f2.php"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(root.join("dir0/f3.php"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(root.join("ro-dir")).unwrap();
    fs::write(root.join("ro-dir/inside"), b"inside").unwrap();
    fs::set_permissions(root.join("ro-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    // An empty file.
    fs::write(root.join("empty-file"), b"").unwrap();
}

/// Runs rsync in dry-run checksum mode and returns what it would change.
pub fn rsync_diff(src: &Path, dst: &Path, flags: &str) -> String {
    let out = Command::new("rsync")
        .arg(flags)
        .arg("--itemize-changes")
        .arg("--delete")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // `-r` without `-l` mentions symlinks it does not compare.
        .filter(|l| !l.starts_with("skipping non-regular file"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts the independent checks agree the trees are equal.
pub fn assert_same(src: &Path, dst: &Path) {
    let a = rsync_diff(src, dst, "-rcn");
    assert!(a.is_empty(), "rsync -rcn found differences:\n{a}");
    // Stricter: permissions, times (directories too), links, hard links, owners.
    let b = rsync_diff(src, dst, "-aHcn");
    assert!(b.is_empty(), "rsync -aHcn found differences:\n{b}");
    let d = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        d.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&d.stdout)
    );
}

/// An agent serving volumes on a free loopback port, stopped on drop.
pub struct Agent {
    pub port: u16,
    /// What the agent counts (its metrics).
    pub stats: Arc<ferry_sync::AgentStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(volumes: &[(&str, &Path, bool)]) -> Agent {
        Agent::start_with(volumes, Default::default())
    }

    /// An agent with these limits.
    pub fn start_with(volumes: &[(&str, &Path, bool)], limits: ferry_sync::agent::Limits) -> Agent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = AgentConfig {
            listen: listener.local_addr().unwrap(),
            key: ferry_sync::proto::derive_key(KEY),
            volumes: volumes
                .iter()
                .map(|(n, p, ro)| {
                    (
                        n.to_string(),
                        Volume {
                            path: p.to_path_buf(),
                            read_only: *ro,
                            // The watch tests watch sources of either kind.
                            watch: true,
                        },
                    )
                })
                .collect(),
            limits,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let stats = Arc::new(ferry_sync::AgentStats::default());
        let st2 = stats.clone();
        let thread = std::thread::spawn(move || {
            ferry_sync::serve_with_stats(listener, Arc::new(cfg), st2, s2).unwrap();
        });
        Agent {
            port,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    pub fn connect(&self, volume: &str, write: bool) -> RemoteTree {
        RemoteTree::connect(
            "127.0.0.1",
            self.port,
            volume,
            &ferry_sync::proto::derive_key(KEY),
            write,
        )
        .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn dirs(t: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    let s = t.path().join("src");
    let d = t.path().join("dst");
    fs::create_dir_all(&d).unwrap();
    (s, d)
}

/// Serialises the tests that load the machine (a 50,000-file tree) with the
/// ones that measure rates (converging passes): on 2 cores the first would
/// make the second's predictions miss their budget.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}
