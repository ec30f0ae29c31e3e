//! Attacks on `ferry agent`'s sync port (issue 15, #5-#8 and what was seen
//! with them), replayed against the real binary on loopback: strangers
//! holding connections and claiming large frames, a read-only session
//! reaching through a symlinked parent, asking for huge blocks or starting
//! watches, a key file others can read, more connections than the cap.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_sync::delta::Chunk;
use ferry_sync::{proto, RelPath, RemoteTree, Source, SyncError, Tree};

use crate::report;
use crate::support::procs::{free_port, FERRY};

const KEY: &str = "abuse-sync-key-0123456789";
/// Only there to catch hangs.
const LIMIT: Duration = Duration::from_secs(60);
/// The agent's default handshake deadline.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A running `ferry agent`, killed (by pid) and reaped when dropped.
struct Agent {
    child: Child,
    pid: u32,
    port: u16,
    stderr: PathBuf,
}

impl Agent {
    /// Starts `ferry agent` in `dir` with `rest` (volumes, limits) after the
    /// listen address and the key; ready once it logs that it listens.
    fn start(dir: &Path, rest: &str) -> Agent {
        Agent::start_with_files(dir, rest, None)
    }

    /// With `nofile`: at most that many open descriptors (prlimit).
    fn start_with_files(dir: &Path, rest: &str, nofile: Option<u32>) -> Agent {
        let port = free_port();
        let cfg = dir.join("agent.toml");
        let text = format!("listen = \"127.0.0.1:{port}\"\nkey = \"{KEY}\"\n{rest}");
        fs::write(&cfg, text).expect("writing agent.toml");
        let stderr = dir.join("agent.stderr");
        let mut cmd = match nofile {
            None => Command::new(FERRY),
            Some(n) => {
                // prlimit sets the limit and execs: the pid is the agent's.
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}")).arg("--").arg(FERRY);
                c
            }
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("creating agent.stderr"))
            .spawn()
            .expect("starting ferry agent");
        let pid = child.id();
        let mut agent = Agent {
            child,
            pid,
            port,
            stderr,
        };
        let end = Instant::now() + LIMIT;
        while !agent.log().contains("ferry agent listening") {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("ferry agent exited ({status}):\n{}", agent.log());
            }
            assert!(Instant::now() < end, "agent not ready:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Peak resident memory so far (VmHWM), KiB.
    fn peak_kib(&self) -> u64 {
        report::status_kib(self.pid, "VmHWM:")
    }

    fn connect(&self, volume: &str, write: bool) -> Result<RemoteTree, SyncError> {
        RemoteTree::connect(
            "127.0.0.1",
            self.port,
            volume,
            &proto::derive_key(KEY),
            write,
        )
    }

    /// Runs `ferry sync SRC ferry://agent/VOLUME` (a user's push) and says
    /// whether it succeeded.
    fn push(&self, src: &Path, volume: &str) -> bool {
        let out = Command::new(FERRY)
            .args(["sync", "--delete"])
            .arg(src)
            .arg(format!("ferry://127.0.0.1:{}/{volume}", self.port))
            .env("FERRY_SYNC_KEY", KEY)
            .env_remove("FERRY_SYNC_KEY_FILE")
            .output()
            .expect("running ferry sync");
        if !out.status.success() {
            eprintln!("ferry sync: {}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A source tree for the normal pushes, and the agent's writable volume.
fn trees(t: &Path) -> (PathBuf, PathBuf) {
    let (src, www) = (t.join("src"), t.join("www"));
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(&www).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("d/f{i}")), vec![i as u8; 3000]).unwrap();
    }
    (src, www)
}

/// Connects and reads the agent's Hello (so the connection is in the
/// handshake, not in the backlog).
fn stranger(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the agent");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut hello = [0u8; 38];
    s.read_exact(&mut hello).expect("the agent's Hello");
    s
}

/// Whether the agent closed `s`: reads what it sends (an error frame) until
/// the end, waiting at most `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let end = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// #6: 48 strangers each claim an 8 MiB frame before authenticating and
/// send all of it but the last bytes. The agent reserved and filled 8 MiB
/// per connection (21 MB -> 529 MB). Now a frame over 512 bytes is refused
/// before anything is reserved: the peak stays small, every connection is
/// closed, and a user's push works meanwhile.
#[test]
fn sync_preauth_frames_claiming_8_mib_do_not_grow_the_agent() {
    let t = tempfile::tempdir().unwrap();
    let (src, www) = trees(t.path());
    let agent = Agent::start(
        t.path(),
        &format!("[volumes.www]\npath = \"{}\"\n", www.display()),
    );
    let before = report::rss_kib(agent.pid);
    let lines_before = agent.log().lines().count();
    let port = agent.port;
    let attackers: Vec<_> = (0..48)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = stranger(port);
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let frame = 8 * 1024 * 1024u32;
                let mut sent = 0usize;
                let head = [&frame.to_be_bytes()[..], &[proto::VERSION, 2]].concat();
                if s.write_all(&head).is_ok() {
                    let piece = vec![0u8; 64 * 1024];
                    while sent + piece.len() < frame as usize - 64 {
                        if s.write_all(&piece).is_err() {
                            break;
                        }
                        sent += piece.len();
                    }
                }
                // Held open, the frame unfinished: only the agent can end it.
                let start = Instant::now();
                let closed = closed_within(&mut s, HANDSHAKE + Duration::from_secs(20));
                (closed, start.elapsed(), sent)
            })
        })
        .collect();
    let served = agent.push(&src, "www");
    let results: Vec<(bool, Duration, usize)> =
        attackers.into_iter().map(|a| a.join().unwrap()).collect();
    let growth_mb = agent.peak_kib().saturating_sub(before) / 1024;
    let open = results.iter().filter(|r| !r.0).count();
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    let accepted_mb = results.iter().map(|r| r.2).sum::<usize>() >> 20;
    let lines = agent.log().lines().count() - lines_before;
    report::row(
        "sync: 48 unauthenticated connections claiming 8 MiB frames",
        &format!(
            "{open} left open, slowest cut {slowest:.1?}, attackers wrote {accepted_mb} MB, \
             peak +{growth_mb} MB, {lines} log lines"
        ),
        report::rss_kib(agent.pid),
        served,
    );
    assert!(served, "a user's push failed during the attack");
    assert_eq!(open, 0, "connections the agent never closed");
    assert!(growth_mb < 100, "the agent grew by {growth_mb} MB");
    assert!(
        lines < 10,
        "{lines} log lines for 48 strangers:\n{}",
        agent.log()
    );
}

/// #6: strangers sending a valid-sized Auth frame one byte every half
/// second. Each byte reset the agent's per-read timeout, so such a
/// connection (and its thread) was held forever. Now one deadline covers
/// the whole handshake: all are cut by it, and a user's push still works.
#[test]
fn sync_trickled_handshakes_are_cut_by_one_deadline() {
    let t = tempfile::tempdir().unwrap();
    let (src, www) = trees(t.path());
    let agent = Agent::start(
        t.path(),
        &format!("[volumes.www]\npath = \"{}\"\n", www.display()),
    );
    let port = agent.port;
    let attackers: Vec<_> = (0..48)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = stranger(port);
                let start = Instant::now();
                // An Auth frame is 66 bytes: never complete within the wait.
                let frame = [&66u32.to_be_bytes()[..], &[proto::VERSION, 2]].concat();
                for b in frame.iter().chain(std::iter::repeat(&0u8)) {
                    if s.write_all(&[*b]).is_err()
                        || closed_within(&mut s, Duration::from_millis(500))
                    {
                        return Some(start.elapsed());
                    }
                    if start.elapsed() > HANDSHAKE + Duration::from_secs(20) {
                        return None;
                    }
                }
                None
            })
        })
        .collect();
    let served = agent.push(&src, "www");
    let cut: Vec<Option<Duration>> = attackers.into_iter().map(|a| a.join().unwrap()).collect();
    let open = cut.iter().filter(|c| c.is_none()).count();
    let slowest = cut.iter().flatten().max().copied().unwrap_or_default();
    report::row(
        "sync: 48 handshakes trickled a byte per 0.5 s",
        &format!("{open} still open after 30 s, slowest cut {slowest:.1?}"),
        report::rss_kib(agent.pid),
        served,
    );
    assert!(served, "a user's push failed during the attack");
    assert_eq!(
        open, 0,
        "trickling connections outlived the handshake deadline"
    );
    assert!(
        slowest < HANDSHAKE + Duration::from_secs(10),
        "cut only after {slowest:?}"
    );
}

/// #5: on a read-only volume holding `lnk -> <a directory outside>`, a
/// `ReadReq lnk/secret` returned the outside file. A site owner who swaps a
/// parent for a link between scan and read would get root-only files
/// copied into his own tree. Now the read goes through the parent chain
/// without following links: refused, nothing of the secret travels.
#[test]
fn sync_read_through_a_symlinked_parent_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (outside, vol) = (t.path().join("outside"), t.path().join("vol"));
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(&vol).unwrap();
    fs::write(outside.join("secret"), b"TOP-SECRET").unwrap();
    fs::write(vol.join("ok.txt"), b"public").unwrap();
    std::os::unix::fs::symlink(&outside, vol.join("lnk")).unwrap();
    let agent = Agent::start(
        t.path(),
        &format!(
            "[volumes.ro]\npath = \"{}\"\nread_only = true\n",
            vol.display()
        ),
    );
    let tree = agent.connect("ro", false).expect("opening the volume");
    let mut got = Vec::new();
    let secret = RelPath::new(&b"lnk/secret"[..]).unwrap();
    let read = tree.read(&secret, None, &mut |c| {
        if let Chunk::Data(d) = c {
            got.extend_from_slice(&d);
        }
        Ok(())
    });
    let small = tree.read_small(&secret, 0);
    // The same session still serves what is inside.
    let ok = tree.read_small(&RelPath::new(&b"ok.txt"[..]).unwrap(), 6);
    let served = ok.as_deref().ok() == Some(&b"public"[..]);
    report::row(
        "sync: ReadReq lnk/secret, lnk -> outside, read-only volume",
        &match &read {
            Ok(()) => format!("served {} bytes of the outside file", got.len()),
            Err(e) => format!("refused: {e}"),
        },
        report::rss_kib(agent.pid),
        served,
    );
    assert!(read.is_err(), "read through the link was served");
    assert!(got.is_empty(), "outside bytes travelled");
    assert!(small.is_err(), "small read through the link was served");
    assert!(
        read.unwrap_err().to_string().contains("lnk"),
        "the error names the link"
    );
    assert!(served, "ok.txt: {ok:?}");
}

/// #7: a read-only session asking block hashes with 16 MiB blocks made the
/// agent read 64 blocks per task (~1 GiB). Now block sizes above 4 MiB are
/// refused with a message naming the range, and hashing at the largest
/// allowed size reads 4 MiB per task.
#[test]
fn sync_block_hashes_with_huge_blocks_are_refused_and_hashing_stays_small() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    // Sparse: the agent reads zeros, the disk holds nothing.
    fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
    let agent = Agent::start(
        t.path(),
        &format!(
            "[volumes.img]\npath = \"{}\"\nread_only = true\n",
            img.display()
        ),
    );
    let before = report::rss_kib(agent.pid);
    let huge = agent
        .connect("img", false)
        .expect("opening the image")
        .block_hashes(16 << 20);
    let largest = agent
        .connect("img", false)
        .expect("opening the image")
        .block_hashes(4 << 20);
    let growth_mb = agent.peak_kib().saturating_sub(before) / 1024;
    let served = largest
        .as_ref()
        .is_ok_and(|(size, h)| *size == 512 << 20 && h.len() == 128);
    report::row(
        "sync: BlockHashesReq 16 MiB blocks on a read-only 512 MiB image",
        &match &huge {
            Ok(_) => format!("answered; peak +{growth_mb} MB"),
            Err(e) => format!("refused ({e}); 4 MiB blocks: peak +{growth_mb} MB"),
        },
        report::rss_kib(agent.pid),
        served,
    );
    let e = huge.expect_err("16 MiB blocks were hashed");
    assert!(e.to_string().contains("block size"), "{e}");
    assert!(served, "4 MiB blocks: {largest:?}");
    assert!(growth_mb < 100, "the agent grew by {growth_mb} MB");
}

/// Seen with #5-#7: a session on a read-only volume could start an inotify
/// watch (kernel memory and one of the user's few inotify instances, held
/// as long as the connection). Now a volume allows watches only when its
/// config says so, which read-only volumes do not by default.
#[test]
fn sync_read_only_volume_refuses_to_start_a_watch() {
    let t = tempfile::tempdir().unwrap();
    let vol = t.path().join("vol");
    fs::create_dir_all(vol.join("d")).unwrap();
    let agent = Agent::start(
        t.path(),
        &format!(
            "[volumes.ro]\npath = \"{}\"\nread_only = true\n",
            vol.display()
        ),
    );
    let tree = agent.connect("ro", false).expect("opening the volume");
    let watch = tree.changes();
    let scan = tree.scan(&Default::default());
    let served = scan.is_ok_and(|m| m.entries.len() == 1);
    report::row(
        "sync: ChangesReq (start a watch) on a read-only volume",
        &match &watch {
            Ok(_) => "watch started".to_string(),
            Err(e) => format!("refused: {e}"),
        },
        report::rss_kib(agent.pid),
        served,
    );
    let e = watch.expect_err("a read-only volume started a watch");
    assert!(e.to_string().contains("watch = true"), "{e}");
    assert!(served, "the session went on after the refusal");
}

/// The agent took a key file any local user could read. Now it refuses to
/// start, naming the file and the fix, until only its owner can read it.
#[test]
fn sync_agent_refuses_a_key_file_others_can_read() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("agent.key");
    fs::write(&key, format!("{KEY}\n")).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = t.path().join("agent.toml");
    fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\nkey_file = \"agent.key\"\n[volumes.www]\npath = \"{}\"\n",
            free_port(),
            t.path().display()
        ),
    )
    .unwrap();
    let check = || {
        Command::new(FERRY)
            .args(["agent", "--check", "--config"])
            .arg(&cfg)
            .output()
            .expect("running ferry agent --check")
    };
    let open = check();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let private = check();
    let said = String::from_utf8_lossy(&open.stderr).into_owned();
    report::row(
        "sync: agent key_file with mode 0644",
        &match open.status.code() {
            Some(0) => "accepted".to_string(),
            c => format!("refused (exit {c:?})"),
        },
        0,
        private.status.success(),
    );
    assert_eq!(
        open.status.code(),
        Some(2),
        "a 0644 key file was accepted: {said}"
    );
    assert!(
        said.contains("agent.key") && said.contains("chmod 600"),
        "{said}"
    );
    assert!(
        private.status.success(),
        "{}",
        String::from_utf8_lossy(&private.stderr)
    );
}

/// The agent started a thread for every connection, with no cap. Now past
/// `max_connections` a connection is told "busy" and closed at once (not
/// queued), and a push works again as soon as connections close.
#[test]
fn sync_connections_beyond_the_cap_are_refused_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, www) = trees(t.path());
    let agent = Agent::start(
        t.path(),
        &format!(
            "max_connections = 4\n[volumes.www]\npath = \"{}\"\n",
            www.display()
        ),
    );
    let held: Vec<TcpStream> = (0..4).map(|_| stranger(agent.port)).collect();
    let start = Instant::now();
    let mut extra = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    extra.set_read_timeout(Some(LIMIT)).unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    let took = start.elapsed();
    // The frame's text: what a client shows.
    let answer = String::from_utf8_lossy(&answer);
    let answer = answer
        .find("busy")
        .map_or(&*answer, |i| &answer[i..])
        .to_string();
    drop(held);
    // The slots come back as the agent sees the connections close.
    let end = Instant::now() + LIMIT;
    let served = loop {
        if agent.push(&src, "www") {
            break true;
        }
        if Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    report::row(
        "sync: 5th connection with max_connections = 4",
        &format!("closed after {took:.1?}: {answer:?}"),
        report::rss_kib(agent.pid),
        served,
    );
    assert!(answer.contains("busy"), "{answer:?}");
    assert!(took < Duration::from_secs(5), "refused only after {took:?}");
    assert!(served, "no push after the connections closed");
}

/// Out of descriptors (EMFILE), the agent logged a warning every 100 ms for
/// as long as it lasted. Now it backs off (20 ms doubling to 1 s), says so
/// once, and accepts again by itself once descriptors are free: a push
/// that arrives meanwhile waits in the backlog and completes.
#[test]
fn sync_out_of_descriptors_backs_off_and_recovers() {
    let t = tempfile::tempdir().unwrap();
    let (src, www) = trees(t.path());
    let agent = Agent::start_with_files(
        t.path(),
        &format!("[volumes.www]\npath = \"{}\"\n", www.display()),
        Some(64),
    );
    // Strangers until one gets no Hello: the agent cannot accept. Each
    // holds two descriptors there until the handshake deadline.
    let mut held = Vec::new();
    let mut exhausted = false;
    for _ in 0..64 {
        let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut hello = [0u8; 38];
        let answered = s.read_exact(&mut hello).is_ok();
        held.push(s);
        if !answered {
            exhausted = true;
            break;
        }
    }
    // A push while the agent has no descriptor may be refused; one after
    // the strangers' handshake deadline must pass, without a restart.
    let start = Instant::now();
    let mut refused = 0;
    let served = loop {
        if agent.push(&src, "www") {
            break true;
        }
        refused += 1;
        if start.elapsed() > LIMIT {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let took = start.elapsed();
    let log = agent.log();
    let accept_lines = log.lines().filter(|l| l.contains("accept failed")).count();
    report::row(
        "sync: agent out of descriptors (nofile 64, strangers held)",
        &format!(
            "{} strangers; {refused} pushes refused, then done after {took:.1?}; \
             {accept_lines} accept-error log lines",
            held.len()
        ),
        report::rss_kib(agent.pid),
        served,
    );
    assert!(exhausted, "64 connections never exhausted the descriptors");
    assert!(served, "no push once descriptors were free:\n{log}");
    assert!(accept_lines <= 3, "{accept_lines} lines:\n{log}");
}

/// A read-only session could make the agent hold a whole file in memory: a
/// small read (`ReadSmallReq`) of a 1 GiB file was read whole before being
/// refused as too large for a frame, and a basis signature (`SigReq`) asked
/// with 1-byte blocks of a 16 MiB file held 16 million block hashes. Now a
/// small read stops one byte past the frame's limit, and a signature
/// describes at most what one frame holds.
#[test]
fn sync_reads_that_would_hold_a_whole_file_are_bounded() {
    let t = tempfile::tempdir().unwrap();
    let vol = t.path().join("vol");
    fs::create_dir_all(&vol).unwrap();
    for (name, len) in [("big.bin", 1u64 << 30), ("basis.bin", 16 << 20)] {
        fs::File::create(vol.join(name))
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    let agent = Agent::start(
        t.path(),
        &format!(
            "[volumes.ro]\npath = \"{}\"\nread_only = true\n",
            vol.display()
        ),
    );
    let before = report::rss_kib(agent.pid);
    let tree = agent.connect("ro", false).expect("opening the volume");
    let small = tree.read_small(&RelPath::new(&b"big.bin"[..]).unwrap(), 0);
    // The refusal ends nothing: the session goes on.
    let sig = ferry_sync::Dest::signature(
        &tree,
        &RelPath::new(&b"basis.bin"[..]).unwrap(),
        ferry_sync::Basis::Target,
        1,
    );
    let growth_mb = agent.peak_kib().saturating_sub(before) / 1024;
    let served = matches!(&sig, Ok(Some(s)) if s.len > 0);
    report::row(
        "sync: ReadSmallReq of 1 GiB + SigReq with 1-byte blocks of 16 MiB",
        &format!(
            "small read: {}; signature: {}; peak +{growth_mb} MB",
            match &small {
                Ok(d) => format!("{} bytes served", d.len()),
                Err(e) => format!("refused ({e})"),
            },
            match &sig {
                Ok(Some(s)) => format!("{} blocks", s.weak.len()),
                other => format!("{other:?}"),
            }
        ),
        report::rss_kib(agent.pid),
        served,
    );
    let e = small.expect_err("1 GiB in one small read");
    assert!(e.to_string().contains("too large"), "{e}");
    assert!(served, "{sig:?}");
    assert!(growth_mb < 100, "the agent grew by {growth_mb} MB");
}
