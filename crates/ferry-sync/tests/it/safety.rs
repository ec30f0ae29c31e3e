//! Path safety: every refusal the receiver must make, each its own test, sent
//! as raw frames to a real agent (what a hostile or buggy peer would send).

use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::Path;

use ferry_sync::proto::{self, Msg};
use ferry_sync::{Kind, Meta, Op, RelPath};

use crate::support::*;

struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    fn open(agent: &Agent, volume: &str, write: bool) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
        let mut raw = Raw {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let key = proto::derive_key(KEY);
        let Msg::Hello { nonce: sn } = raw.recv() else {
            panic!("no hello")
        };
        let cn = [7u8; 32];
        raw.send_msg(&Msg::Auth {
            nonce: cn,
            mac: proto::auth_mac(&key, "client", &sn, &cn),
        });
        assert!(matches!(raw.recv(), Msg::AuthOk { .. }));
        raw.send_msg(&Msg::Open {
            volume: volume.into(),
            write,
        });
        assert_eq!(raw.recv(), Msg::Ok);
        raw
    }
    fn send_msg(&mut self, m: &Msg) {
        self.w.write_all(&proto::encode(m)).unwrap();
    }
    fn send_raw(&mut self, body: &[u8]) {
        self.w
            .write_all(&(body.len() as u32).to_be_bytes())
            .unwrap();
        self.w.write_all(body).unwrap();
    }
    fn recv(&mut self) -> Msg {
        proto::read_msg(&mut self.r).unwrap().unwrap().unwrap()
    }
    /// Flushes and returns the agent's error message (panics on success).
    fn expect_error(&mut self) -> String {
        // The connection may already be closed after a malformed frame.
        let _ = self.w.write_all(&proto::encode(&Msg::Flush));
        match self.recv() {
            Msg::Error { message } => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }
    /// Reads the answer to `BlockPrepare`: false for a part, true at the end.
    fn recv_hashes_end(&mut self) -> bool {
        match self.recv() {
            Msg::HashesPart(_) => false,
            Msg::HashesEnd { .. } => true,
            other => panic!("expected block hashes, got {other:?}"),
        }
    }
    fn expect_ok(&mut self) {
        self.send_msg(&Msg::Flush);
        assert_eq!(self.recv(), Msg::Ok);
    }
}

/// A PutFile frame body with arbitrary path bytes (bypassing RelPath checks).
fn put_file_body(path: &[u8]) -> Vec<u8> {
    let mut b = vec![proto::VERSION, 37];
    b.extend_from_slice(&(path.len() as u32).to_be_bytes());
    b.extend_from_slice(path);
    for v in [0o644u32, 0, 0] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&4u32.to_be_bytes());
    b.extend_from_slice(b"evil");
    b
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        ..Default::default()
    }
}

fn rel(s: &str) -> RelPath {
    RelPath::new(s.as_bytes()).unwrap()
}

/// The op that writes `data` at `path` in one piece.
fn put_file(path: &str, data: &[u8]) -> Msg {
    Msg::Op(Op::PutFile {
        path: rel(path),
        meta: meta(),
        data: data.to_vec(),
    })
}

/// A volume with an `outside` directory next to it, and symlinks planted in
/// the volume pointing there.
fn setup() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    Agent,
) {
    let t = tmp();
    let vol = t.path().join("vol");
    let outside = t.path().join("outside");
    fs::create_dir_all(&vol).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    symlink(&outside, vol.join("link")).unwrap();
    symlink(outside.join("secret"), vol.join("f")).unwrap();
    let agent = Agent::start(&[("v", &vol, false)]);
    (t, vol, outside, agent)
}

fn outside_untouched(outside: &Path) {
    let names: Vec<_> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"secret");
}

fn refused_raw(path: &[u8], want: &str) {
    let (_t, vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_raw(&put_file_body(path));
    let e = raw.expect_error();
    assert!(e.contains(want), "{e}");
    outside_untouched(&outside);
    assert!(!vol.join("evil").exists());
}

#[test]
fn refuses_dotdot_component() {
    refused_raw(b"../outside/evil", "'..' component");
}

#[test]
fn refuses_dotdot_deeper_in_the_path() {
    refused_raw(b"a/../../outside/evil", "'..' component");
}

#[test]
fn refuses_absolute_path() {
    refused_raw(b"/tmp/ferry-evil", "absolute path");
    assert!(!Path::new("/tmp/ferry-evil").exists());
}

#[test]
fn refuses_nul_in_path() {
    refused_raw(b"evil\0.txt", "NUL");
}

#[test]
fn refuses_empty_and_dot_components() {
    refused_raw(b"a//evil", "empty component");
    refused_raw(b"./evil", "'.' component");
    refused_raw(b"", "empty path");
}

#[test]
fn refuses_slash_inside_a_name_field() {
    // Children lists carry single names: a '/' there is refused by the decoder.
    let mut b = vec![proto::VERSION, 17];
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(b"a/b");
    b.push(1);
    b.extend_from_slice(&[0u8; 64]);
    let e = proto::decode(&b).unwrap_err();
    assert!(e.to_string().contains("'/' inside a name"), "{e}");
    assert!(RelPath::name(b"a/b").is_err());
}

#[test]
fn refuses_oversized_frame_before_reading_it() {
    let (_t, _vol, _outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.w.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
    match raw.recv() {
        Msg::Error { message } => assert!(message.contains("exceeds the limit"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn refuses_to_write_through_a_symlinked_directory() {
    let (_t, _vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&put_file("link/evil", b"evil"));
    let e = raw.expect_error();
    assert!(e.contains("symbolic link"), "{e}");
    outside_untouched(&outside);
}

/// The receiver keeps its directories open during a pass (no path walk per
/// file). A directory swapped for a symlink to the outside in the middle of a
/// pass must not redirect a write there (it lands in the directory that was
/// opened, inside the volume), and after the pass (the flush closes them) the
/// swapped path is refused like any planted symlink.
#[test]
fn a_directory_swapped_for_a_symlink_mid_pass_never_redirects_a_write() {
    let (_t, vol, outside, agent) = setup();
    fs::create_dir(vol.join("d")).unwrap();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&put_file("d/first", b"first"));
    // A read is a barrier (the file above is written before it is answered)
    // that leaves the pass open.
    raw.send_msg(&Msg::ReadSmallReq {
        path: rel("d/first"),
    });
    assert_eq!(raw.recv(), Msg::FileData(b"first".to_vec()));
    fs::rename(vol.join("d"), vol.join("moved")).unwrap();
    symlink(&outside, vol.join("d")).unwrap();
    raw.send_msg(&put_file("d/second", b"second"));
    raw.expect_ok();
    outside_untouched(&outside);
    assert_eq!(fs::read(vol.join("moved/second")).unwrap(), b"second");
    raw.send_msg(&put_file("d/third", b"third"));
    let e = raw.expect_error();
    assert!(e.contains("symbolic link"), "{e}");
    outside_untouched(&outside);
}

/// The same for a large file streamed in pieces: its directory is swapped
/// for a symlink to the outside between its data and its commit; the file
/// still lands in the directory it was started in.
#[test]
fn a_streamed_file_whose_directory_is_swapped_mid_file_stays_inside() {
    let (_t, vol, outside, agent) = setup();
    fs::create_dir(vol.join("d")).unwrap();
    fs::write(vol.join("d/first"), b"first").unwrap();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Begin {
        path: rel("d/big"),
        meta: meta(),
        basis: ferry_sync::Basis::None,
    }));
    raw.send_msg(&Msg::Chunk(ferry_sync::delta::Chunk::Data(b"big".to_vec())));
    raw.send_msg(&Msg::ReadSmallReq {
        path: rel("d/first"),
    });
    assert_eq!(raw.recv(), Msg::FileData(b"first".to_vec()));
    fs::rename(vol.join("d"), vol.join("moved")).unwrap();
    symlink(&outside, vol.join("d")).unwrap();
    raw.send_msg(&Msg::Op(Op::Commit));
    raw.expect_ok();
    outside_untouched(&outside);
    assert_eq!(fs::read(vol.join("moved/big")).unwrap(), b"big");
}

#[test]
fn refuses_streamed_file_through_a_symlinked_directory() {
    let (_t, _vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Begin {
        path: rel("link/evil"),
        meta: meta(),
        basis: ferry_sync::Basis::None,
    }));
    raw.send_msg(&Msg::Chunk(ferry_sync::delta::Chunk::Data(
        b"evil".to_vec(),
    )));
    raw.send_msg(&Msg::Op(Op::Commit));
    let e = raw.expect_error();
    assert!(e.contains("symbolic link"), "{e}");
    outside_untouched(&outside);
}

#[test]
fn replaces_a_planted_symlink_instead_of_writing_through_it() {
    let (_t, vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&put_file("f", b"new"));
    raw.expect_ok();
    outside_untouched(&outside);
    assert!(fs::symlink_metadata(vol.join("f")).unwrap().is_file());
    assert_eq!(fs::read(vol.join("f")).unwrap(), b"new");
}

#[test]
fn refuses_metadata_change_through_a_planted_symlink() {
    let (_t, _vol, outside, agent) = setup();
    let before = fs::metadata(outside.join("secret")).unwrap();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::SetMeta {
        path: rel("f"),
        kind: Kind::File,
        meta: Meta {
            mode: 0o777,
            ..Default::default()
        },
    }));
    let e = raw.expect_error();
    assert!(e.contains("expected a File"), "{e}");
    let after = fs::metadata(outside.join("secret")).unwrap();
    assert_eq!(before.permissions(), after.permissions());
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
}

#[test]
fn refuses_delta_basis_that_is_a_planted_symlink() {
    let (_t, _vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Begin {
        path: rel("f"),
        meta: meta(),
        basis: ferry_sync::Basis::Target,
    }));
    raw.send_msg(&Msg::Chunk(ferry_sync::delta::Chunk::Copy {
        offset: 0,
        len: 6,
    }));
    raw.send_msg(&Msg::Op(Op::Commit));
    let e = raw.expect_error();
    assert!(e.contains("open"), "{e}");
    outside_untouched(&outside);
}

#[test]
fn refuses_hard_link_to_a_file_outside() {
    let (_t, vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Hardlink {
        path: rel("stolen"),
        to: rel("link/secret"),
    }));
    let e = raw.expect_error();
    assert!(e.contains("symbolic link"), "{e}");
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Hardlink {
        path: rel("stolen"),
        to: rel("f"),
    }));
    let e = raw.expect_error();
    assert!(e.contains("not a regular file"), "{e}");
    assert!(!vol.join("stolen").exists());
    outside_untouched(&outside);
}

#[test]
fn refuses_delete_through_a_symlinked_directory() {
    let (_t, _vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Delete {
        path: rel("link/secret"),
    }));
    let e = raw.expect_error();
    assert!(e.contains("symbolic link"), "{e}");
    outside_untouched(&outside);
}

#[test]
fn refuses_mkdir_through_a_symlinked_directory() {
    let (_t, _vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Mkdir {
        path: rel("link/newdir"),
    }));
    let e = raw.expect_error();
    assert!(e.contains("symbolic link"), "{e}");
    outside_untouched(&outside);
}

#[test]
fn refuses_copy_beyond_the_basis() {
    let (_t, vol, _outside, agent) = setup();
    fs::write(vol.join("small"), b"0123456789").unwrap();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&Msg::Op(Op::Begin {
        path: rel("small"),
        meta: meta(),
        basis: ferry_sync::Basis::Target,
    }));
    raw.send_msg(&Msg::Chunk(ferry_sync::delta::Chunk::Copy {
        offset: 5,
        len: u64::MAX,
    }));
    raw.send_msg(&Msg::Op(Op::Commit));
    let e = raw.expect_error();
    assert!(e.contains("beyond basis"), "{e}");
    assert_eq!(fs::read(vol.join("small")).unwrap(), b"0123456789");
}

/// Ops of one run (independent small files) are applied on several threads,
/// so a valid op of the same run may complete beside a refused one; every
/// op after the run (the mkdir is a barrier) is dropped.
#[test]
fn nothing_is_written_after_a_refused_op() {
    let (_t, vol, outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", true);
    raw.send_msg(&put_file("link/evil", b"evil"));
    raw.send_msg(&Msg::Op(Op::Mkdir { path: rel("d") }));
    raw.send_msg(&put_file("after", b"after"));
    raw.expect_error();
    assert!(!vol.join("d").exists());
    assert!(!vol.join("after").exists());
    outside_untouched(&outside);
}

#[test]
fn refuses_writes_on_a_session_opened_for_reading() {
    let (_t, vol, _outside, agent) = setup();
    let mut raw = Raw::open(&agent, "v", false);
    raw.send_msg(&put_file("x", b"x"));
    let e = raw.expect_error();
    assert!(e.contains("opened for reading"), "{e}");
    assert!(!vol.join("x").exists());
}

#[test]
fn refuses_requests_before_authentication() {
    let (_t, vol, _outside, agent) = setup();
    let s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    assert!(matches!(
        proto::read_msg(&mut r).unwrap().unwrap().unwrap(),
        Msg::Hello { .. }
    ));
    w.write_all(&proto::encode(&Msg::Open {
        volume: "v".into(),
        write: true,
    }))
    .unwrap();
    match proto::read_msg(&mut r).unwrap().unwrap().unwrap() {
        Msg::Error { message } => assert!(message.contains("authentication required")),
        other => panic!("{other:?}"),
    }
    w.write_all(&proto::encode(&put_file("x", b"x"))).ok();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!vol.join("x").exists());
}

/// A run of blocks must be whole blocks starting on a boundary inside the
/// target (only the image's last block may be short); anything else is
/// refused and the image keeps its bytes.
#[test]
fn refuses_block_runs_that_are_not_whole_blocks_inside_the_target() {
    let t = tmp();
    let img = t.path().join("disk.img");
    let bs = 4096u32;
    let size = 3 * bs as u64 + 100;
    fs::write(&img, vec![0u8; size as usize]).unwrap();
    let agent = Agent::start(&[("img", &img, false)]);
    let bad: [(u64, usize); 4] = [
        (1, 4096),                // not on a boundary
        (4096, 100),              // short, and not the last block
        (3 * 4096, 4096),         // longer than the last block
        (2 * 4096, 2 * 4096 + 1), // runs past the end
    ];
    for (offset, len) in bad {
        let mut raw = Raw::open(&agent, "img", true);
        raw.send_msg(&Msg::BlockPrepare {
            size,
            block_size: bs,
        });
        while !raw.recv_hashes_end() {}
        raw.send_msg(&Msg::Op(Op::Block {
            offset,
            data: vec![0xAB; len],
        }));
        let e = raw.expect_error();
        assert!(e.contains("not whole blocks"), "{offset}+{len}: {e}");
        assert!(fs::read(&img).unwrap().iter().all(|b| *b == 0));
    }
    // A valid run of two blocks plus the short last one is accepted.
    let mut raw = Raw::open(&agent, "img", true);
    raw.send_msg(&Msg::BlockPrepare {
        size,
        block_size: bs,
    });
    while !raw.recv_hashes_end() {}
    raw.send_msg(&Msg::Op(Op::Block {
        offset: 4096,
        data: vec![0xCD; 2 * 4096 + 100],
    }));
    raw.expect_ok();
    let got = fs::read(&img).unwrap();
    assert!(got[..4096].iter().all(|b| *b == 0));
    assert!(got[4096..].iter().all(|b| *b == 0xCD));
}

/// Reads go through the parent chain without following links too (#5 of
/// issue 15): a parent swapped for a link to a directory outside the tree
/// is refused for a streamed read, a small read and a checksum scan's hash,
/// and nothing of the outside file is returned.
#[test]
fn reads_never_follow_a_symlinked_parent_out_of_the_tree() {
    use ferry_sync::{LocalTree, ScanOptions, Source, Tree};
    let t = tmp();
    let (outside, vol) = (t.path().join("outside"), t.path().join("vol"));
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(vol.join("d")).unwrap();
    fs::write(outside.join("secret"), b"TOP-SECRET").unwrap();
    fs::write(vol.join("d/secret"), b"inside").unwrap();
    let tree = LocalTree::new(&vol);
    // Scanned while `d` is a directory, read after it became a link.
    let man = tree
        .scan(&ScanOptions {
            checksum: false,
            staged: false,
        })
        .unwrap();
    assert_eq!(man.entries.len(), 2);
    fs::rename(vol.join("d"), t.path().join("moved")).unwrap();
    symlink(&outside, vol.join("d")).unwrap();
    let secret = rel("d/secret");
    let mut got = Vec::new();
    let e = tree
        .read(&secret, None, &mut |c| {
            if let ferry_sync::delta::Chunk::Data(d) = c {
                got.extend_from_slice(&d);
            }
            Ok(())
        })
        .unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(got.is_empty());
    assert!(tree.read_small(&secret, 0).is_err());
    // A checksum scan hashes only what is below the root (the link is an
    // entry of its own, never walked into).
    let sums = LocalTree::new(&vol)
        .scan(&ScanOptions {
            checksum: true,
            staged: false,
        })
        .unwrap();
    assert!(sums.entries.iter().all(|e| e.path != secret), "{sums:?}");
}
