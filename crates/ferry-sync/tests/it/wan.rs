//! Passes through a link with latency: a relay on loopback that holds every
//! chunk a fixed delay each way (the kernel here has no netem). Pins issue
//! 18: a pass read one small file per round trip from a source agent
//! (4,400 files took 76-111 s at a 12.9 ms round trip).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_sync::{run_pass, LocalTree, RemoteTree};

use crate::support::*;

/// A TCP relay on a free loopback port to `to`, holding each chunk `delay`
/// before passing it on, both ways. Stopped on drop (its connections end
/// with the peers').
struct DelayRelay {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl DelayRelay {
    fn start(to: u16, delay: Duration) -> DelayRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for s in [&client, &server] {
                    s.set_nodelay(true).unwrap();
                }
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    delay,
                );
                pump(server, client, delay);
            }
        });
        DelayRelay {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One direction: a reader that stamps each chunk, a writer that sends it
/// `delay` after the stamp (256 chunks in flight at most). An empty chunk
/// is the end of the stream.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx): (SyncSender<(Instant, Vec<u8>)>, Receiver<_>) = sync_channel(256);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; 64 * 1024];
        let n = from.read(&mut buf).unwrap_or(0);
        buf.truncate(n);
        if tx.send((Instant::now() + delay, buf)).is_err() || n == 0 {
            return;
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if chunk.is_empty() || to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn through(relay: &DelayRelay, volume: &str, write: bool) -> RemoteTree {
    RemoteTree::connect(
        "127.0.0.1",
        relay.port,
        volume,
        &ferry_sync::proto::derive_key(KEY),
        write,
    )
    .unwrap()
}

const FILES: usize = 500;
/// Each way: a round trip is 40 ms, so a round trip per file is 20 s.
const DELAY: Duration = Duration::from_millis(20);
/// A pass must take under a quarter of a round trip per file (it takes
/// well under a second plus the handshakes and scans).
fn bound() -> Duration {
    DELAY * 2 * FILES as u32 / 4
}

fn small_tree(root: &std::path::Path) {
    for i in 0..FILES {
        let d = root.join(format!("d{}", i / 100));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}.php")), bytes(i as u64, 4096)).unwrap();
    }
}

#[test]
fn a_pass_from_an_agent_over_a_wan_pays_no_round_trip_per_file() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    small_tree(&src);
    let agent = Agent::start(&[("www", &src, true)]);
    let relay = DelayRelay::start(agent.port, DELAY);
    let remote = through(&relay, "www", false);
    let d = LocalTree::new(&dst);
    let t0 = Instant::now();
    let p = run_pass(&remote, &d, &mirror_options(), 1, &no_events()).unwrap();
    let took = t0.elapsed();
    eprintln!("{FILES} files from an agent, 40 ms round trip: {took:?}");
    assert_eq!(p.changed_entries as usize, FILES + FILES / 100);
    assert_same(&src, &dst);
    assert!(
        took < bound(),
        "{took:?} for {FILES} files (bound {:?})",
        bound()
    );
}

#[test]
fn a_pass_between_two_agents_over_a_wan_pays_no_round_trip_per_file() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    small_tree(&src);
    std::fs::create_dir_all(&dst).unwrap();
    let from = Agent::start(&[("www", &src, true)]);
    let to = Agent::start(&[("www", &dst, false)]);
    let (r1, r2) = (
        DelayRelay::start(from.port, DELAY),
        DelayRelay::start(to.port, DELAY),
    );
    let (s, d) = (through(&r1, "www", false), through(&r2, "www", true));
    let t0 = Instant::now();
    run_pass(&s, &d, &mirror_options(), 1, &no_events()).unwrap();
    let took = t0.elapsed();
    eprintln!("{FILES} files agent to agent, 40 ms round trip each: {took:?}");
    assert_same(&src, &dst);
    assert!(
        took < bound(),
        "{took:?} for {FILES} files (bound {:?})",
        bound()
    );
}

#[test]
fn a_file_gone_since_the_scan_is_skipped_among_pipelined_reads() {
    let t = tmp();
    let (src, dst) = dirs(&t);
    small_tree(&src);
    let agent = Agent::start(&[("www", &src, true)]);
    let remote = agent.connect("www", false);
    let d = LocalTree::new(&dst);
    // Files vanish after the scan: the source's scan is taken by a wrapper
    // that deletes every tenth file once it has the manifest.
    let vanishing = Vanishing {
        inner: &remote,
        root: &src,
    };
    let p = run_pass(&vanishing, &d, &mirror_options(), 1, &no_events()).unwrap();
    assert_eq!(p.vanished as usize, FILES / 10);
    let p2 = run_pass(&remote, &d, &mirror_options(), 2, &no_events()).unwrap();
    assert_eq!(p2.vanished, 0);
    assert_same(&src, &dst);
}

/// A source whose every tenth file is deleted right after its scan.
struct Vanishing<'a> {
    inner: &'a RemoteTree,
    root: &'a std::path::Path,
}

impl ferry_sync::Tree for Vanishing<'_> {
    fn scan(&self, opts: &ferry_sync::ScanOptions) -> ferry_sync::Result<ferry_sync::Manifest> {
        let m = self.inner.scan(opts)?;
        for i in (0..FILES).step_by(10) {
            let p = self.root.join(format!("d{}/f{i}.php", i / 100));
            std::fs::remove_file(p).unwrap();
        }
        Ok(m)
    }
    fn scan_paths(
        &self,
        paths: &std::collections::BTreeSet<ferry_sync::RelPath>,
        opts: &ferry_sync::ScanOptions,
    ) -> ferry_sync::Result<ferry_sync::Manifest> {
        self.inner.scan_paths(paths, opts)
    }
    fn merkle_root(&self) -> ferry_sync::Result<(ferry_sync::Digest, u64)> {
        self.inner.merkle_root()
    }
    fn merkle_children(
        &self,
        dir: Option<&ferry_sync::RelPath>,
    ) -> ferry_sync::Result<Vec<ferry_sync::merkle::Child>> {
        self.inner.merkle_children(dir)
    }
    fn block_hashes(&self, bs: u32) -> ferry_sync::Result<(u64, Vec<ferry_sync::Digest>)> {
        self.inner.block_hashes(bs)
    }
}

impl ferry_sync::Source for Vanishing<'_> {
    fn read(
        &self,
        path: &ferry_sync::RelPath,
        sig: Option<&ferry_sync::delta::Signature>,
        out: &mut dyn FnMut(ferry_sync::delta::Chunk) -> ferry_sync::Result<()>,
    ) -> ferry_sync::Result<()> {
        self.inner.read(path, sig, out)
    }
    fn read_small(&self, path: &ferry_sync::RelPath, size: u64) -> ferry_sync::Result<Vec<u8>> {
        self.inner.read_small(path, size)
    }
    fn read_small_each(
        &self,
        files: &[(&ferry_sync::RelPath, u64)],
        out: &(dyn Fn(usize, ferry_sync::Result<Vec<u8>>) -> ferry_sync::Result<()> + Sync),
    ) -> ferry_sync::Result<()> {
        self.inner.read_small_each(files, out)
    }
    fn read_block(&self, index: u64, bs: u32) -> ferry_sync::Result<Vec<u8>> {
        self.inner.read_block(index, bs)
    }
    fn changes(&self) -> ferry_sync::Result<ferry_sync::Changes> {
        self.inner.changes()
    }
    fn watch_force_full(&self, reason: &str) -> ferry_sync::Result<()> {
        self.inner.watch_force_full(reason)
    }
}
