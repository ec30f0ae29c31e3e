//! The free-space query (`SpaceReq` / `Space`): a real agent answers the
//! statvfs of its volume's root (a small tmpfs, so the totals are known
//! exactly), and an agent older than the query gives "agent too old", not
//! a hang.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_sync::proto::{self, Msg};
use ferry_sync::{Deadlines, SyncError, Tree as _};

use crate::support::*;

/// A tmpfs mounted for one test, unmounted (lazily) when dropped. Needs
/// root (the test command runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs ({opts}) on {} failed: this test needs root",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn deadlines() -> Deadlines {
    Deadlines {
        connect: Duration::from_secs(10),
        handshake: Duration::from_secs(10),
        idle: Duration::from_secs(10),
    }
}

#[test]
fn an_agent_answers_the_room_of_its_volume() {
    let t = tmp();
    let small = Tmpfs::mount(&t.path().join("small"), "size=4m,nr_inodes=64,mode=0755");
    std::fs::write(small.0.join("a"), vec![7u8; 1 << 20]).unwrap();
    let agent = Agent::start(&[("v", &small.0, false), ("ro", &small.0, true)]);
    let key = proto::derive_key(KEY);
    let s = ferry_sync::query_space("127.0.0.1", agent.port, "v", &key, &deadlines()).unwrap();
    assert_eq!(s.bytes_total, 4 << 20, "{s:?}");
    assert_eq!(s.inodes_total, 64, "{s:?}");
    // One MiB written, one inode for it and one for the root.
    assert_eq!(s.bytes_free, 3 << 20, "{s:?}");
    assert_eq!(s.inodes_free, 62, "{s:?}");
    // A read-only volume answers too (the query writes nothing), and on
    // the same connection as other requests.
    let ro = agent.connect("ro", false);
    assert_eq!(ro.space().unwrap(), s);
    assert_eq!(
        ro.merkle_root().unwrap().1,
        1,
        "the session goes on after the query"
    );
    assert!(agent
        .stats
        .render()
        .contains("ferry_agent_requests_total{request=\"space\"} 2"));
    drop(ro);
    drop(agent);
}

/// What an agent from before the query sends when it gets a frame type it
/// does not know: its decoder's refusal, then it hangs up.
const OLD_AGENT_REFUSAL: &str =
    "protocol error: refused frame: protocol error: unknown message type 52";

#[test]
fn an_agent_older_than_the_query_is_said_to_be_too_old() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let key = proto::derive_key(KEY);
    let old = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = &s;
        let send = |w: &mut &std::net::TcpStream, m: &Msg| {
            w.write_all(&proto::encode(m)).unwrap();
        };
        let nonce = [9u8; 32];
        send(&mut w, &Msg::Hello { nonce });
        let Some(Ok(Msg::Auth { nonce: cn, .. })) = proto::read_msg(&mut r).unwrap() else {
            panic!("no Auth");
        };
        send(
            &mut w,
            &Msg::AuthOk {
                mac: proto::auth_mac(&key, "server", &cn, &nonce),
            },
        );
        let Some(Ok(Msg::Open { .. })) = proto::read_msg(&mut r).unwrap() else {
            panic!("no Open");
        };
        send(&mut w, &Msg::Ok);
        // The query: a frame this agent's decoder would not know.
        let Some(Ok(Msg::SpaceReq)) = proto::read_msg(&mut r).unwrap() else {
            panic!("no SpaceReq");
        };
        send(
            &mut w,
            &Msg::Error {
                message: OLD_AGENT_REFUSAL.into(),
            },
        );
        // ... and hangs up.
    });
    let started = Instant::now();
    let e = ferry_sync::query_space("127.0.0.1", port, "v", &key, &deadlines()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(60), "{e}");
    assert!(matches!(e, SyncError::Unsupported(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("agent too old for a free-space query"),
        "{e}"
    );
    old.join().unwrap();
}
